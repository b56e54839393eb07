using System.Buffers.Binary;
using System.Text;
using Bora.Formats;
using Bora.Tokenizers;

namespace Bora.Evaluation;

/// <summary>
/// llama.cpp's base log-probability file (written by <c>llama-perplexity --kl-divergence-base FILE</c>, read with
/// <c>--kl-divergence</c>), so a base computed by either program can be used by the other. Layout, little-endian:
/// "_logits_", u32 n_ctx N, i32 n_vocab V, i32 n_chunk C, i32 tokens[C * N], then for each chunk N - 1 - N/2 rows of
/// nv = 2 * ((V + 1) / 2) + 4 u16: the first four hold two float32 (scale, min_log_prob) and then V codes q with
/// log p(i) = scale * q + min_log_prob (q = 0 for every log-probability at or below max - 16).
/// Letters: N = context, V = vocabulary, C = chunks, S = scored rows per chunk.
/// </summary>
public static class LogitsFile
{
    private static readonly byte[] Magic = Encoding.ASCII.GetBytes("_logits_");

    /// <summary>u16 per stored row.</summary>
    public static int RowWords(int vocab) => 2 * ((vocab + 1) / 2) + 4;

    /// <summary>Encodes one row of logits (V) into <paramref name="row"/> (nv u16), as llama.cpp's log_softmax does.</summary>
    public static void EncodeRow(ReadOnlySpan<float> logits, Span<ushort> row)
    {
        float max = System.Numerics.Tensors.TensorPrimitives.Max(logits);
        float min = Math.Max(System.Numerics.Tensors.TensorPrimitives.Min(logits), max - 16);
        double sumExp = 0;
        foreach (float l in logits)
        {
            sumExp += MathF.Exp(l - max);
        }
        float logSumExp = (float)Math.Log(sumExp);
        float minLogProb = min - max - logSumExp;
        float scale = (max - min) / 65535f;
        row.Clear();
        Span<byte> header = stackalloc byte[8];
        BinaryPrimitives.WriteSingleLittleEndian(header, scale);
        BinaryPrimitives.WriteSingleLittleEndian(header[4..], minLogProb);
        for (int i = 0; i < 4; i++)
        {
            row[i] = BinaryPrimitives.ReadUInt16LittleEndian(header.Slice(2 * i, 2));
        }
        if (scale != 0)
        {
            float inv = 1 / scale;
            for (int i = 0; i < logits.Length; i++)
            {
                row[4 + i] = logits[i] > min ? (ushort)Math.Clamp(MathF.Round(inv * (logits[i] - min), MidpointRounding.ToEven), 0, 65535) : (ushort)0;
            }
        }
    }

    /// <summary>Decodes one stored row (nv u16) into log-probabilities (V).</summary>
    public static void DecodeRow(ReadOnlySpan<ushort> row, Span<float> logProbs)
    {
        Span<byte> header = stackalloc byte[8];
        for (int i = 0; i < 4; i++)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(header.Slice(2 * i, 2), row[i]);
        }
        float scale = BinaryPrimitives.ReadSingleLittleEndian(header);
        float minLogProb = BinaryPrimitives.ReadSingleLittleEndian(header[4..]);
        for (int i = 0; i < logProbs.Length; i++)
        {
            logProbs[i] = scale * row[4 + i] + minLogProb;
        }
    }

    /// <summary>A base file opened for reading: its context, vocabulary, chunks and tokens; <see cref="Chunk"/> reads one chunk's rows.</summary>
    public sealed class Reader : IDisposable
    {
        private readonly FileStream _fs;
        private readonly long _dataStart;

        private Reader(FileStream fs, int context, int vocab, int chunks, TokenId[] tokens, long dataStart)
        {
            _fs = fs;
            Context = context;
            Vocab = vocab;
            Chunks = chunks;
            Tokens = tokens;
            _dataStart = dataStart;
        }

        public int Context { get; }

        public int Vocab { get; }

        public int Chunks { get; }

        /// <summary>The C * N tokens the base was computed on (chunk starts not yet replaced by BOS).</summary>
        public TokenId[] Tokens { get; }

        /// <summary>Opens and validates <paramref name="path"/> (sizes are checked against the file length before anything is allocated).</summary>
        /// <exception cref="ModelFormatException">Not such a file, or truncated.</exception>
        public static Reader Open(string path)
        {
            var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
            try
            {
                Span<byte> head = stackalloc byte[20];
                if (fs.ReadAtLeast(head, 20, throwOnEndOfStream: false) < 20 || !head[..8].SequenceEqual(Magic))
                {
                    throw ModelFormatException.In(path, "not a log-probability file: expected the '_logits_' header of llama-perplexity --kl-divergence-base");
                }
                uint n = BinaryPrimitives.ReadUInt32LittleEndian(head[8..]);
                int v = BinaryPrimitives.ReadInt32LittleEndian(head[12..]);
                int c = BinaryPrimitives.ReadInt32LittleEndian(head[16..]);
                if (n is < 4 or > 1 << 20 || v is < 1 or > 1 << 24 || c is < 1 or > 1 << 24)
                {
                    throw ModelFormatException.In(path, $"header n_ctx={n}, n_vocab={v}, n_chunk={c} is out of range");
                }
                long tokenBytes = 4L * n * c;
                long rowsBytes = 2L * RowWords(v) * (n - 1 - n / 2) * c;
                if (fs.Length < 20 + tokenBytes + rowsBytes)
                {
                    throw ModelFormatException.In(path, $"the file has {fs.Length} bytes; n_ctx={n}, n_vocab={v}, n_chunk={c} need {20 + tokenBytes + rowsBytes}");
                }
                var raw = new byte[tokenBytes];
                fs.ReadExactly(raw);
                var tokens = new TokenId[n * c];
                for (int i = 0; i < tokens.Length; i++)
                {
                    int id = BinaryPrimitives.ReadInt32LittleEndian(raw.AsSpan(4 * i));
                    tokens[i] = id >= 0 && id < v ? new TokenId(id) : throw ModelFormatException.In(path, $"token {i} is {id}; expected an id in [0, {v})");
                }
                return new Reader(fs, (int)n, v, c, tokens, fs.Position);
            }
            catch
            {
                fs.Dispose();
                throw;
            }
        }

        /// <summary>Chunk <paramref name="chunk"/>'s base log-probabilities, (S, V).</summary>
        public float[] Chunk(int chunk)
        {
            ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)chunk, (uint)Chunks, nameof(chunk));
            int s = Context - 1 - Context / 2, nv = RowWords(Vocab);
            var raw = new byte[2L * nv * s];
            _fs.Position = _dataStart + chunk * raw.LongLength;
            _fs.ReadExactly(raw);
            var words = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(raw);
            var result = new float[(long)s * Vocab];
            for (int r = 0; r < s; r++)
            {
                DecodeRow(words.Slice(r * nv, nv), result.AsSpan(r * Vocab, Vocab));
            }
            return result;
        }

        public void Dispose() => _fs.Dispose();
    }
}

/// <summary>Writes a <see cref="LogitsFile"/> chunk by chunk (to PATH.tmp, renamed over PATH by <see cref="Finish"/>).</summary>
public sealed class LogitsFileWriter(string path) : IDisposable
{
    private FileStream? _fs;
    private int _vocab;

    /// <summary>Writes the header and the C * N tokens.</summary>
    public void Begin(int context, int vocab, ReadOnlySpan<TokenId> tokens)
    {
        _fs = new FileStream(path + ".tmp", FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16);
        _vocab = vocab;
        Span<byte> head = stackalloc byte[20];
        Encoding.ASCII.GetBytes("_logits_", head);
        BinaryPrimitives.WriteUInt32LittleEndian(head[8..], (uint)context);
        BinaryPrimitives.WriteInt32LittleEndian(head[12..], vocab);
        BinaryPrimitives.WriteInt32LittleEndian(head[16..], tokens.Length / context);
        _fs.Write(head);
        var raw = new byte[4 * tokens.Length];
        for (int i = 0; i < tokens.Length; i++)
        {
            BinaryPrimitives.WriteInt32LittleEndian(raw.AsSpan(4 * i), tokens[i].Value);
        }
        _fs.Write(raw);
    }

    /// <summary>Appends one chunk's <paramref name="rows"/> scored logits rows, (S, V).</summary>
    public void AddChunk(ReadOnlySpan<float> logits, int rows)
    {
        var fs = _fs ?? throw new InvalidOperationException("Begin was not called");
        int nv = LogitsFile.RowWords(_vocab);
        var words = new ushort[nv];
        var bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(words.AsSpan());
        for (int r = 0; r < rows; r++)
        {
            LogitsFile.EncodeRow(logits.Slice(r * _vocab, _vocab), words);
            fs.Write(bytes);
        }
    }

    /// <summary>Closes the file and renames it into place.</summary>
    public void Finish()
    {
        if (_fs is null)
        {
            return;
        }
        _fs.Dispose();
        _fs = null;
        File.Move(path + ".tmp", path, overwrite: true);
    }

    public void Dispose()
    {
        if (_fs is not null)
        {
            _fs.Dispose();
            _fs = null;
            File.Delete(path + ".tmp");
        }
    }
}
