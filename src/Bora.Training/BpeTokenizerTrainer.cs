using System.Globalization;
using System.Text;
using Bora.Tokenizers;

namespace Bora.Training;

/// <summary>Settings of <see cref="BpeTokenizerTrainer"/>.</summary>
public sealed record BpeTrainerOptions
{
    /// <summary>Fraction of character occurrences the alphabet must cover; rarer characters are left to byte fallback (SentencePiece's character_coverage).</summary>
    public double CharacterCoverage { get; init; } = 0.9995;

    /// <summary>Longest piece, in characters (SentencePiece's max_sentencepiece_length).</summary>
    public int MaxPieceLength { get; init; } = 16;
}

/// <summary>
/// Trains a SentencePiece-style BPE vocabulary and writes it as a SentencePiece <c>tokenizer.model</c>
/// (a ModelProto protocol buffer) that Bora's <see cref="SentencePieceTokenizer"/> and Google's
/// sentencepiece both load. Layout, as Llama / Mistral v1 models: 0 &lt;unk&gt;, 1 &lt;s&gt;, 2 &lt;/s&gt;,
/// 3 .. 258 the byte pieces &lt;0x00&gt; .. &lt;0xFF&gt;, then the merged pieces in merge order (score -k for
/// the k-th merge, so encoding replays the merges in training order), then the single characters of
/// the alphabet (lower scores). Normalisation is SentencePiece's identity with add_dummy_prefix,
/// remove_extra_whitespaces and escape_whitespaces (space → U+2581).
/// <para>
/// Training: each line is normalised as above and split into words, each starting at a U+2581; words
/// are counted; then the most frequent adjacent pair of symbols (ties: the lexicographically smaller
/// merged piece) is merged everywhere, until the vocabulary is full. Merges never cross words and
/// never involve a character outside the alphabet.
/// </para>
/// </summary>
public static class BpeTokenizerTrainer
{
    /// <summary>Ids and pieces reserved before the learned ones: unk, bos, eos and 256 bytes.</summary>
    public const int ReservedPieces = 3 + 256;

    private const char Space = '\u2581';

    /// <summary>Learns a vocabulary of exactly <paramref name="vocabSize"/> pieces from the lines of text.</summary>
    public static IReadOnlyList<SentencePieceEntry> Train(IEnumerable<string> lines, int vocabSize, BpeTrainerOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(lines);
        options ??= new BpeTrainerOptions();
        // Words and their counts.
        var wordCounts = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var raw in lines)
        {
            var line = Normalize(raw);
            int start = 0;
            for (int i = 1; i <= line.Length; i++)
            {
                if (i == line.Length || line[i] == Space)
                {
                    if (i > start)
                    {
                        var w = line[start..i];
                        wordCounts[w] = wordCounts.GetValueOrDefault(w) + 1;
                    }
                    start = i;
                }
            }
        }
        // Alphabet: the most frequent characters (runes) up to the coverage.
        var charCounts = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var (w, n) in wordCounts)
        {
            foreach (var r in w.EnumerateRunes())
            {
                var s = r.ToString();
                charCounts[s] = charCounts.GetValueOrDefault(s) + n;
            }
        }
        long totalChars = charCounts.Values.Sum();
        var alphabet = new List<string>();
        long covered = 0;
        foreach (var (c, n) in charCounts.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal))
        {
            if (alphabet.Count > 0 && covered >= options.CharacterCoverage * totalChars)
            {
                break;
            }
            alphabet.Add(c);
            covered += n;
        }
        int merges = vocabSize - ReservedPieces - alphabet.Count;
        if (merges < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(vocabSize), vocabSize,
                $"the vocabulary needs at least {ReservedPieces + alphabet.Count} pieces ({ReservedPieces} reserved + an alphabet of {alphabet.Count} characters)");
        }

        // Symbols: 0 .. alphabet-1 are characters; merges append. -1 marks a character outside the alphabet.
        var symbols = new List<string>(alphabet);
        var symbolLength = alphabet.Select(_ => 1).ToList();
        var charId = alphabet.Select((c, i) => (c, i)).ToDictionary(x => x.c, x => x.i, StringComparer.Ordinal);
        var words = new List<int[]>();
        var counts = new List<long>();
        foreach (var (w, n) in wordCounts.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            words.Add([.. w.EnumerateRunes().Select(r => charId.TryGetValue(r.ToString(), out var id) ? id : -1)]);
            counts.Add(n);
        }
        var pairCounts = new Dictionary<(int, int), long>();
        var pairWords = new Dictionary<(int, int), HashSet<int>>();
        void Account(int wi, int sign)
        {
            var w = words[wi];
            for (int i = 0; i + 1 < w.Length; i++)
            {
                if (w[i] < 0 || w[i + 1] < 0)
                {
                    continue;
                }
                var key = (w[i], w[i + 1]);
                pairCounts[key] = pairCounts.GetValueOrDefault(key) + sign * counts[wi];
                if (sign > 0)
                {
                    if (!pairWords.TryGetValue(key, out var set))
                    {
                        pairWords[key] = set = [];
                    }
                    set.Add(wi);
                }
            }
        }
        for (int wi = 0; wi < words.Count; wi++)
        {
            Account(wi, +1);
        }
        var learned = new List<string>();
        while (learned.Count < merges)
        {
            (int, int) best = (-1, -1);
            long bestCount = 0;
            string? bestPiece = null;
            foreach (var (key, n) in pairCounts)
            {
                if (n <= 0 || n < bestCount || symbolLength[key.Item1] + symbolLength[key.Item2] > options.MaxPieceLength)
                {
                    continue;
                }
                var piece = symbols[key.Item1] + symbols[key.Item2];
                if (n > bestCount || string.CompareOrdinal(piece, bestPiece) < 0)
                {
                    (best, bestCount, bestPiece) = (key, n, piece);
                }
            }
            if (bestPiece is null)
            {
                break; // nothing left to merge: the vocabulary is padded below
            }
            int id = symbols.Count;
            symbols.Add(bestPiece);
            symbolLength.Add(symbolLength[best.Item1] + symbolLength[best.Item2]);
            learned.Add(bestPiece);
            foreach (int wi in pairWords[best].ToArray())
            {
                Account(wi, -1);
                var w = words[wi];
                var merged = new List<int>(w.Length);
                for (int i = 0; i < w.Length; i++)
                {
                    if (i + 1 < w.Length && w[i] == best.Item1 && w[i + 1] == best.Item2)
                    {
                        merged.Add(id);
                        i++;
                    }
                    else
                    {
                        merged.Add(w[i]);
                    }
                }
                words[wi] = [.. merged];
                Account(wi, +1);
            }
            pairCounts.Remove(best);
            pairWords.Remove(best);
        }

        var entries = new List<SentencePieceEntry>
        {
            new("<unk>", 0, SentencePieceType.Unknown),
            new("<s>", 0, SentencePieceType.Control),
            new("</s>", 0, SentencePieceType.Control),
        };
        for (int b = 0; b < 256; b++)
        {
            entries.Add(new(string.Create(CultureInfo.InvariantCulture, $"<0x{b:X2}>"), 0, SentencePieceType.Byte));
        }
        var seen = new HashSet<string>(StringComparer.Ordinal);
        int k = 0;
        foreach (var piece in learned.Concat(alphabet))
        {
            if (seen.Add(piece))
            {
                entries.Add(new(piece, -k, SentencePieceType.Normal));
                k++;
            }
        }
        // Fewer distinct pieces than asked (tiny corpus): pad with unused pieces so the size is exact.
        for (int i = 0; entries.Count < vocabSize; i++)
        {
            entries.Add(new(string.Create(CultureInfo.InvariantCulture, $"<unused{i}>"), -k - i, SentencePieceType.Unused));
        }
        return entries;
    }

    /// <summary>SentencePiece's identity normalisation: trim, collapse runs of spaces, prefix one space, spaces to U+2581.</summary>
    public static string Normalize(string line)
    {
        ArgumentNullException.ThrowIfNull(line);
        var sb = new StringBuilder(line.Length + 1);
        sb.Append(Space);
        bool pendingSpace = false;
        foreach (char ch in line.Trim(' '))
        {
            if (ch == ' ')
            {
                pendingSpace = true;
                continue;
            }
            if (pendingSpace)
            {
                sb.Append(Space);
                pendingSpace = false;
            }
            sb.Append(ch);
        }
        return sb.Length == 1 ? "" : sb.ToString();
    }

    /// <summary>Writes the vocabulary as a SentencePiece ModelProto (BPE, byte fallback, identity normaliser).</summary>
    public static byte[] ToModelProto(IReadOnlyList<SentencePieceEntry> pieces)
    {
        ArgumentNullException.ThrowIfNull(pieces);
        var model = new ProtoWriter();
        foreach (var p in pieces)
        {
            var sp = new ProtoWriter();
            sp.String(1, p.Piece);
            sp.Float(2, p.Score);
            sp.Varint(3, (ulong)p.Type);
            model.Message(1, sp);
        }
        var trainer = new ProtoWriter();
        trainer.Varint(3, 2);                       // model_type = BPE
        trainer.Varint(4, (ulong)pieces.Count);     // vocab_size
        trainer.Varint(35, 1);                      // byte_fallback
        trainer.Varint(40, 0);                      // unk_id
        trainer.Varint(41, 1);                      // bos_id
        trainer.Varint(42, 2);                      // eos_id
        trainer.Varint(43, unchecked((ulong)-1L));  // pad_id = -1 (int32 negative: 10-byte varint)
        model.Message(2, trainer);
        var normalizer = new ProtoWriter();
        normalizer.String(1, "identity");
        normalizer.Varint(3, 1);                    // add_dummy_prefix
        normalizer.Varint(4, 1);                    // remove_extra_whitespaces
        normalizer.Varint(5, 1);                    // escape_whitespaces
        model.Message(3, normalizer);
        return model.ToArray();
    }

    /// <summary>Trains on the lines of <paramref name="corpusFile"/> and writes <paramref name="modelFile"/> (tmp then rename).</summary>
    public static IReadOnlyList<SentencePieceEntry> TrainFile(string corpusFile, int vocabSize, string modelFile, BpeTrainerOptions? options = null)
    {
        if (!File.Exists(corpusFile))
        {
            throw new FileNotFoundException($"{corpusFile}: no such data file");
        }
        var pieces = Train(File.ReadLines(corpusFile), vocabSize, options);
        var tmp = modelFile + ".tmp";
        File.WriteAllBytes(tmp, ToModelProto(pieces));
        File.Move(tmp, modelFile, overwrite: true);
        return pieces;
    }

    /// <summary>The protocol-buffer wire format, just the field kinds a ModelProto needs.</summary>
    private sealed class ProtoWriter
    {
        private readonly MemoryStream _s = new();

        public void Varint(int field, ulong value)
        {
            Raw((ulong)field << 3);
            Raw(value);
        }

        public void Float(int field, float value)
        {
            Raw(((ulong)field << 3) | 5);
            Span<byte> b = stackalloc byte[4];
            System.Buffers.Binary.BinaryPrimitives.WriteSingleLittleEndian(b, value);
            _s.Write(b);
        }

        public void String(int field, string value) => Bytes(field, Encoding.UTF8.GetBytes(value));

        public void Message(int field, ProtoWriter inner) => Bytes(field, inner.ToArray());

        public byte[] ToArray() => _s.ToArray();

        private void Bytes(int field, byte[] value)
        {
            Raw(((ulong)field << 3) | 2);
            Raw((ulong)value.Length);
            _s.Write(value);
        }

        private void Raw(ulong v)
        {
            while (v >= 0x80)
            {
                _s.WriteByte((byte)(v | 0x80));
                v >>= 7;
            }
            _s.WriteByte((byte)v);
        }
    }
}
