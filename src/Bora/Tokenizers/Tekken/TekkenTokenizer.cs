using System.Buffers;
using System.Diagnostics;
using System.Text;

namespace Bora.Tokenizers.Tekken;

/// <summary>
/// Mistral's Tekken tokenizer (Mistral NeMo and later): tiktoken-style byte-level BPE after a regex
/// pre-split, exactly as mistral-common's <c>Tekkenizer</c>.
/// </summary>
/// <remarks>
/// <para>Ids: special tokens take ids 0..S-1 (S = default_num_special_tokens; &lt;unk&gt;=0, &lt;s&gt;=1,
/// &lt;/s&gt;=2, [INST]=3, ... as the file says); the ordinary token of BPE rank r has id r + S; ids run
/// up to <see cref="VocabSize"/> - 1 (= default_vocab_size - 1).
/// Example (Mistral NeMo, S = 1000): "Hello world" is ranks [21177, 3304] -> ids [22177, 4304].</para>
/// <para>Encoding splits the text with the file's regex (see <see cref="TekkenPreTokenizer"/>), turns each
/// piece into UTF-8 and merges it with <see cref="BytePairMerge"/>. Text that spells a special token
/// ("[INST]", "&lt;s&gt;") is encoded as ordinary bytes: encoding never produces special tokens.
/// Lone surrogates encode as U+FFFD, as in tiktoken.</para>
/// <para>Decoding concatenates token bytes and decodes UTF-8 with U+FFFD for invalid sequences; like
/// mistral-common, each run of ordinary tokens between special tokens is decoded on its own.
/// Tekken has no dummy prefix: a token's bytes do not depend on the token before it.</para>
/// <para>Thread safety: immutable after <see cref="Load"/>; all methods may be called concurrently.</para>
/// </remarks>
public sealed class TekkenTokenizer : ITokenizer
{
    private readonly ByteRankTable _ranks;
    private readonly TekkenSpecialToken[] _specials;
    private readonly Dictionary<string, int> _specialIds;
    private readonly TekkenPreTokenizer _preTokenizer;

    private TekkenTokenizer(string path, TekkenFile file)
    {
        FilePath = path;
        _ranks = file.Ranks;
        _specials = file.Specials;
        _specialIds = _specials.ToDictionary(s => s.Text, s => s.Id, StringComparer.Ordinal);
        _preTokenizer = new TekkenPreTokenizer(file.Pattern);
        Pattern = file.Pattern;
        VocabSize = file.VocabSize;
        Version = file.Version;
        Bos = new TokenId(_specialIds["<s>"]);
        Eos = new TokenId(_specialIds["</s>"]);
    }

    /// <summary>
    /// Loads and validates a mistral-common <c>tekken.json</c>.
    /// </summary>
    /// <exception cref="FileNotFoundException">No file at <paramref name="tekkenJsonPath"/>.</exception>
    /// <exception cref="Formats.ModelFormatException">The file is not a usable Tekken tokenizer; the message
    /// names the file, the field and what was expected.</exception>
    public static TekkenTokenizer Load(string tekkenJsonPath) => new(tekkenJsonPath, TekkenFile.Read(tekkenJsonPath));

    /// <summary>The file this tokenizer was loaded from.</summary>
    public string FilePath { get; }

    /// <summary>config.pattern as written in the file (tiktoken / Rust regex syntax).</summary>
    public string Pattern { get; }

    /// <summary>config.version, e.g. "v3".</summary>
    public string Version { get; }

    /// <summary>default_vocab_size: all ids are below this.</summary>
    public int VocabSize { get; }

    /// <summary>default_num_special_tokens: ids below this are special tokens; rank r has id r + this.</summary>
    public int NumSpecialTokens => _specials.Length;

    /// <summary>The special tokens, index = id (file order, padded with "&lt;SPECIAL_i&gt;").</summary>
    public IReadOnlyList<TekkenSpecialToken> SpecialTokens => _specials;

    /// <summary>&lt;s&gt;.</summary>
    public TokenId Bos { get; }

    /// <summary>&lt;/s&gt;.</summary>
    public TokenId Eos { get; }

    /// <summary>The id of the special token with text <paramref name="text"/> (e.g. "[INST]"), or null.</summary>
    public TokenId? SpecialTokenId(string text) => _specialIds.TryGetValue(text, out var id) ? new TokenId(id) : null;

    /// <inheritdoc />
    public TokenId[] Encode(string text, bool addBos) => Encode(text, addBos, addEos: false);

    /// <summary>Encodes <paramref name="text"/>, optionally between BOS and EOS (mistral-common <c>encode(s, bos, eos)</c>).</summary>
    public TokenId[] Encode(string text, bool addBos, bool addEos)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ranks = new List<int>(text.Length / 3 + 4);
        EncodeRanks(text, ranks);
        var ids = new TokenId[ranks.Count + (addBos ? 1 : 0) + (addEos ? 1 : 0)];
        var k = 0;
        if (addBos)
        {
            ids[k++] = Bos;
        }
        var offset = NumSpecialTokens;
        foreach (var r in ranks)
        {
            ids[k++] = new TokenId(r + offset);
        }
        if (addEos)
        {
            ids[k] = Eos;
        }
        return ids;
    }

    /// <inheritdoc />
    public string Decode(ReadOnlySpan<TokenId> ids) => Decode(ids, SpecialTokenPolicy.Ignore);

    /// <summary>
    /// Decodes ids to text; <paramref name="policy"/> says what special tokens do (skipped, kept as
    /// their text, or an <see cref="ArgumentException"/>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">An id is negative or not below <see cref="VocabSize"/>.</exception>
    public string Decode(ReadOnlySpan<TokenId> ids, SpecialTokenPolicy policy)
    {
        var sb = new StringBuilder(ids.Length * 4);
        var run = new ArrayBufferWriter<byte>(Math.Max(16, ids.Length * 4));
        for (var i = 0; i < ids.Length; i++)
        {
            var id = CheckId(ids[i]);
            if (id >= NumSpecialTokens)
            {
                run.Write(_ranks.Bytes(id - NumSpecialTokens));
                continue;
            }
            Flush(sb, run);
            switch (policy)
            {
                case SpecialTokenPolicy.Ignore:
                    break;
                case SpecialTokenPolicy.Keep:
                    sb.Append(_specials[id].Text);
                    break;
                case SpecialTokenPolicy.Raise:
                    throw new ArgumentException($"ids[{i}] = {id} is the special token {_specials[id].Text}, which the Raise policy does not allow in decoding", nameof(ids));
                default:
                    throw new ArgumentOutOfRangeException(nameof(policy), policy, "unknown special-token policy");
            }
        }
        Flush(sb, run);
        return sb.ToString();

        static void Flush(StringBuilder sb, ArrayBufferWriter<byte> run)
        {
            if (run.WrittenCount > 0)
            {
                sb.Append(Encoding.UTF8.GetString(run.WrittenSpan));
                run.ResetWrittenCount();
            }
        }
    }

    /// <inheritdoc />
    /// <remarks>Tekken has no dummy prefix, so <paramref name="previous"/> does not matter; special tokens give no bytes.</remarks>
    public byte[] TokenBytes(TokenId id, TokenId? previous) => TokenBytes(id, SpecialTokenPolicy.Ignore);

    /// <summary>
    /// The bytes of one token (mistral-common <c>id_to_byte_piece</c>): ordinary tokens their bytes,
    /// special tokens nothing (Skip), their UTF-8 text (Keep) or an <see cref="ArgumentException"/> (Raise).
    /// </summary>
    public byte[] TokenBytes(TokenId id, SpecialTokenPolicy policy)
    {
        var i = CheckId(id);
        if (i >= NumSpecialTokens)
        {
            return _ranks.Bytes(i - NumSpecialTokens).ToArray();
        }
        return policy switch
        {
            SpecialTokenPolicy.Ignore => [],
            SpecialTokenPolicy.Keep => Encoding.UTF8.GetBytes(_specials[i].Text),
            SpecialTokenPolicy.Raise => throw new ArgumentException($"{i} is the special token {_specials[i].Text}", nameof(id)),
            _ => throw new ArgumentOutOfRangeException(nameof(policy), policy, "unknown special-token policy"),
        };
    }

    /// <inheritdoc />
    /// <remarks>As mistral-common's <c>id_to_piece</c>: special tokens give their text, ordinary tokens their
    /// bytes decoded as UTF-8 (a token holding part of a multi-byte character shows U+FFFD).</remarks>
    public string PieceOf(TokenId id)
    {
        var i = CheckId(id);
        return i < NumSpecialTokens ? _specials[i].Text : Encoding.UTF8.GetString(_ranks.Bytes(i - NumSpecialTokens));
    }

    /// <inheritdoc />
    /// <remarks>True for every special token (all ids below <see cref="NumSpecialTokens"/>): mistral-common's
    /// decoding treats them all alike whatever their is_control flag (see <see cref="SpecialTokens"/> for it).</remarks>
    public bool IsControl(TokenId id) => CheckId(id) < NumSpecialTokens;

    /// <summary>
    /// Benchmark hook: encodes <paramref name="text"/> <paramref name="runs"/> times after one warm-up run
    /// and returns the best throughput in MB (10^6 UTF-8 bytes) per second and the token count.
    /// Example: <c>tok.TimeEncode(File.ReadAllText("../shared/testdata/corpus/kjv.txt"))</c>.
    /// </summary>
    public (double MegabytesPerSecond, int Tokens) TimeEncode(string text, int runs = 3)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(runs, 1);
        var megabytes = Encoding.UTF8.GetByteCount(text) / 1e6;
        var tokens = Encode(text, addBos: false).Length;
        var best = double.MaxValue;
        for (var i = 0; i < runs; i++)
        {
            var sw = Stopwatch.StartNew();
            Encode(text, addBos: false);
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
        }
        return (megabytes / best, tokens);
    }

    /// <summary>The BPE ranks (ids minus <see cref="NumSpecialTokens"/>) of <paramref name="text"/>.</summary>
    internal void EncodeRanks(string text, List<int> ranks)
    {
        var state = new EncodeState(text, _ranks, ranks);
        try
        {
            _preTokenizer.Split(text, ref state, static (ref EncodeState s, int start, int length) => s.Piece(start, length));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(state.Buffer);
        }
    }

    /// <summary>The pieces the pre-split regex cuts <paramref name="text"/> into, as (start, length) in UTF-16 units.</summary>
    internal List<(int Start, int Length)> SplitPieces(string text) => _preTokenizer.SplitToList(text);

    internal ByteRankTable Ranks => _ranks;

    private int CheckId(TokenId id)
    {
        if ((uint)id.Value >= (uint)VocabSize)
        {
            throw new ArgumentOutOfRangeException(nameof(id), id.Value, $"token id outside 0..{VocabSize - 1} of tokenizer {FilePath}");
        }
        return id.Value;
    }

    private struct EncodeState(string text, ByteRankTable table, List<int> output)
    {
        public byte[] Buffer = ArrayPool<byte>.Shared.Rent(1024);

        public void Piece(int start, int length)
        {
            var chars = text.AsSpan(start, length);
            var max = Encoding.UTF8.GetMaxByteCount(length);
            if (Buffer.Length < max)
            {
                ArrayPool<byte>.Shared.Return(Buffer);
                Buffer = ArrayPool<byte>.Shared.Rent(max);
            }
            var n = Encoding.UTF8.GetBytes(chars, Buffer);
            BytePairMerge.Encode(table, Buffer.AsSpan(0, n), output);
        }
    }
}
