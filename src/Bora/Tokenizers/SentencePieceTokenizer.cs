using System.Globalization;
using System.Text;
using Bora.Formats;

namespace Bora.Tokenizers;

/// <summary>
/// A SentencePiece BPE tokenizer that reproduces Google's SentencePiece (v0.1.97: normalizer.cc,
/// bpe_model.cc, model_interface.cc, sentencepiece_processor.cc) id for id, for the vocabularies of
/// Llama/Mistral models (Mistral v1/v3/v7, llama2.c tok512).
/// </summary>
/// <remarks>
/// <para><b>Normalization</b> (identity rules only: a model with a precompiled_charsmap is rejected):
/// with remove_extra_whitespaces, leading spaces are dropped, runs of spaces collapse to one and trailing
/// spaces are dropped; text that is empty (or only spaces, with remove_extra_whitespaces) encodes to no
/// tokens at all; then a dummy U+2581 is prepended (add_dummy_prefix; appended instead with
/// treat_whitespace_as_suffix) and every ' ' becomes U+2581 (escape_whitespaces). Tabs, newlines and
/// other characters are kept as they are. User-defined pieces found in the text are copied verbatim.</para>
/// <para><b>BPE</b>: the text is split into characters (a user-defined piece is one frozen symbol); then,
/// repeatedly, the adjacent pair whose concatenation is a vocabulary piece (normal, user-defined or unused)
/// of highest score is merged, ties going to the leftmost pair. A priority queue holds the candidate pairs
/// (stale ones are skipped when popped), so encoding is O(n log n). A merged piece of type UNUSED is split
/// back into the two parts it was last registered from. A character with no piece becomes the &lt;0xXX&gt;
/// pieces of its UTF-8 bytes with byte_fallback, else &lt;unk&gt; (a run of unknown characters gives one
/// &lt;unk&gt;). Control pieces (&lt;s&gt;, [INST], ...) are never matched in text.</para>
/// <para><b>C# strings</b>: SentencePiece works on UTF-8 bytes. A lone UTF-16 surrogate cannot be
/// encoded as UTF-8; it is replaced by U+FFFD first, exactly as <see cref="Encoding.UTF8"/> would
/// convert the string, so "a\uD800b" encodes like "a\uFFFDb".</para>
/// <para><b>Decoding</b>: pieces are concatenated with U+2581 shown as ' '; a leading U+2581 of the first
/// visible piece is dropped (the dummy prefix); control pieces are invisible; &lt;unk&gt; shows as the
/// model's unk_surface (" \u2047 " by default); runs of byte pieces are decoded as UTF-8 where every byte
/// that does not start a valid character becomes one U+FFFD.</para>
/// <para>Instances are immutable and safe to use from several threads.</para>
/// </remarks>
public sealed class SentencePieceTokenizer : ITokenizer
{
    /// <summary>U+2581 LOWER ONE EIGHTH BLOCK, which stands for a space inside pieces.</summary>
    public const char SpaceSymbol = '\u2581';

    /// <summary>SentencePiece's default unk_surface: " \u2047 ".</summary>
    public const string DefaultUnkSurface = " \u2047 ";

    private static readonly byte[] ReplacementCharUtf8 = [0xEF, 0xBF, 0xBD];

    private readonly string _source;
    private readonly string[] _pieces;                 // (V) piece text per id
    private readonly float[] _scores;                  // (V) merge score per id
    private readonly SentencePieceType[] _types;       // (V) piece type per id
    private readonly Dictionary<string, int> _normal;  // NORMAL, USER_DEFINED, UNUSED pieces (SentencePiece's pieces_)
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _normalLookup;
    private readonly Dictionary<string, int> _reserved; // UNKNOWN, CONTROL, BYTE pieces (reserved_id_map_)
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _reservedLookup;
    private readonly HashSet<string> _userDefined;
    private readonly HashSet<string>.AlternateLookup<ReadOnlySpan<char>> _userDefinedLookup;
    private readonly int _userDefinedMaxChars;
    private readonly HashSet<char> _userDefinedFirstChars = [];
    private readonly int[] _byteIds = new int[256];    // (256) id of <0xXX>, -1 when absent
    private readonly int[] _byteValue;                 // (V) byte of a BYTE piece, -1 otherwise
    private readonly int[] _decodeId;                  // (V) PieceToId(IdToPiece(id)): usually id itself
    private readonly byte[][] _surface;                // (V) UTF-8 of the piece with U+2581 -> ' '
    private readonly bool[] _startsWithSpaceSymbol;    // (V) piece starts with U+2581
    private readonly byte[] _unkSurface;
    private readonly int _unkId, _bosId, _eosId;
    private readonly bool _byteFallback, _addDummyPrefix, _removeExtraWhitespaces, _escapeWhitespaces, _treatWhitespaceAsSuffix;
    private readonly bool _hasUnused;

    /// <summary>Options of a vocabulary given as arrays (GGUF metadata or similar).</summary>
    private readonly record struct Options(
        int Bos, int Eos, bool ByteFallback, bool AddDummyPrefix, bool RemoveExtraWhitespaces,
        bool EscapeWhitespaces, bool TreatWhitespaceAsSuffix, string UnkSurface);

    private SentencePieceTokenizer(string source, string[] pieces, float[] scores, SentencePieceType[] types, Options o)
    {
        _source = source;
        _pieces = pieces;
        _scores = scores;
        _types = types;
        _bosId = o.Bos;
        _eosId = o.Eos;
        _byteFallback = o.ByteFallback;
        _addDummyPrefix = o.AddDummyPrefix;
        _removeExtraWhitespaces = o.RemoveExtraWhitespaces;
        _escapeWhitespaces = o.EscapeWhitespaces;
        _treatWhitespaceAsSuffix = o.TreatWhitespaceAsSuffix;
        _unkSurface = Encoding.UTF8.GetBytes(o.UnkSurface);

        int v = pieces.Length;
        _normal = new Dictionary<string, int>(v, StringComparer.Ordinal);
        _reserved = new Dictionary<string, int>(StringComparer.Ordinal);
        _userDefined = new HashSet<string>(StringComparer.Ordinal);
        _byteValue = new int[v];
        Array.Fill(_byteIds, -1);
        _unkId = -1;

        // Mirrors ModelInterface::InitializePieces: the same checks, in the same order.
        for (int i = 0; i < v; i++)
        {
            string piece = pieces[i];
            SentencePieceType type = types[i];
            _byteValue[i] = -1;
            if (string.IsNullOrEmpty(piece))
            {
                throw Bad($"piece {i} is empty (SentencePiece requires non-empty pieces)");
            }
            bool isNormal = type is SentencePieceType.Normal or SentencePieceType.UserDefined or SentencePieceType.Unused;
            var map = isNormal ? _normal : _reserved;
            if (!map.TryAdd(piece, i))
            {
                throw Bad($"piece {i} \"{piece}\" is already defined as piece {map[piece]}");
            }
            if (type == SentencePieceType.UserDefined)
            {
                _userDefined.Add(piece);
                _userDefinedFirstChars.Add(piece[0]);
                _userDefinedMaxChars = Math.Max(_userDefinedMaxChars, piece.Length);
            }
            if (type == SentencePieceType.Unused)
            {
                _hasUnused = true;
            }
            if (type == SentencePieceType.Unknown)
            {
                if (_unkId >= 0)
                {
                    throw Bad($"piece {i} \"{piece}\" is a second UNKNOWN piece (piece {_unkId} is already <unk>)");
                }
                _unkId = i;
            }
            if (type == SentencePieceType.Byte)
            {
                if (!_byteFallback)
                {
                    throw Bad($"byte piece {i} \"{piece}\" is found although byte_fallback is false");
                }
                int b = PieceToByte(piece);
                if (b < 0)
                {
                    throw Bad($"byte piece {i} \"{piece}\" is invalid (expected <0x00> .. <0xFF>, upper-case hex)");
                }
                _byteIds[b] = i;
                _byteValue[i] = b;
            }
        }
        if (_unkId < 0)
        {
            throw Bad("no piece has type UNKNOWN (2); a SentencePiece vocabulary needs exactly one <unk>");
        }
        if (_byteFallback && Array.IndexOf(_byteIds, -1) is int missing && missing >= 0)
        {
            throw Bad($"byte_fallback is true but there is no byte piece <0x{missing:X2}> (all 256 are required)");
        }
        CheckSpecialId("BOS", _bosId, v);
        CheckSpecialId("EOS", _eosId, v);

        _normalLookup = _normal.GetAlternateLookup<ReadOnlySpan<char>>();
        _reservedLookup = _reserved.GetAlternateLookup<ReadOnlySpan<char>>();
        _userDefinedLookup = _userDefined.GetAlternateLookup<ReadOnlySpan<char>>();

        _decodeId = new int[v];
        _surface = new byte[v][];
        _startsWithSpaceSymbol = new bool[v];
        for (int i = 0; i < v; i++)
        {
            _decodeId[i] = PieceToId(pieces[i]);
            _surface[i] = Encoding.UTF8.GetBytes(pieces[i].Replace(SpaceSymbol, ' '));
            _startsWithSpaceSymbol[i] = pieces[i][0] == SpaceSymbol;
        }
    }

    private void CheckSpecialId(string what, int id, int count)
    {
        if (id < 0 || id >= count)
        {
            throw Bad($"{what} id {id} is out of range; this tokenizer needs a {what} token with id in 0..{count - 1}");
        }
    }

    private ModelFormatException Bad(string problem) => ModelFormatException.In(_source, problem);

    /// <summary>Loads a SentencePiece BPE <c>.model</c> file.</summary>
    /// <exception cref="ModelFormatException">The file is malformed, is not BPE, or uses a normalization this class does not implement.</exception>
    public static SentencePieceTokenizer Load(string path) => FromModel(SentencePieceModel.Load(path));

    /// <summary>Builds the tokenizer of a parsed model.</summary>
    /// <exception cref="ModelFormatException">The model is not BPE, or uses a normalization this class does not implement.</exception>
    public static SentencePieceTokenizer FromModel(SentencePieceModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        string src = model.Source;
        if (model.ModelType != SentencePieceModel.ModelTypeBpe)
        {
            string name = model.ModelType switch
            {
                SentencePieceModel.ModelTypeUnigram => "UNIGRAM",
                SentencePieceModel.ModelTypeWord => "WORD",
                SentencePieceModel.ModelTypeChar => "CHAR",
                _ => "unknown",
            };
            throw ModelFormatException.In(src, $"trainer_spec.model_type = {model.ModelType} ({name}) is not supported; only BPE (2) models are");
        }
        if (model.PrecompiledCharsMap.Length != 0)
        {
            throw ModelFormatException.In(src, $"normalizer_spec \"{model.NormalizerName}\" has a {model.PrecompiledCharsMap.Length}-byte precompiled_charsmap; only identity normalization (an empty charsmap) is implemented");
        }
        if (model.DenormalizerCharsMapBytes != 0)
        {
            throw ModelFormatException.In(src, $"denormalizer_spec has a {model.DenormalizerCharsMapBytes}-byte precompiled_charsmap; denormalization is not implemented");
        }
        if (model.BosId < 0 || model.EosId < 0)
        {
            throw ModelFormatException.In(src, $"trainer_spec.bos_id = {model.BosId}, eos_id = {model.EosId}: this tokenizer needs both BOS and EOS tokens");
        }
        int v = model.Pieces.Count;
        var pieces = new string[v];
        var scores = new float[v];
        var types = new SentencePieceType[v];
        for (int i = 0; i < v; i++)
        {
            (pieces[i], scores[i], types[i]) = model.Pieces[i];
        }
        var tok = new SentencePieceTokenizer(src, pieces, scores, types, new Options(
            model.BosId, model.EosId, model.ByteFallback, model.AddDummyPrefix, model.RemoveExtraWhitespaces,
            model.EscapeWhitespaces, model.TreatWhitespaceAsSuffix, model.UnkSurface ?? DefaultUnkSurface));
        if (tok._unkId != model.UnkId)
        {
            throw ModelFormatException.In(src, $"trainer_spec.unk_id = {model.UnkId} but the UNKNOWN piece is {tok._unkId}");
        }
        return tok;
    }

    /// <summary>
    /// Builds the tokenizer from plain vocabulary arrays, as GGUF stores them (<c>tokenizer.ggml.tokens</c>,
    /// <c>.scores</c>, <c>.token_type</c>, <c>.bos_token_id</c>, <c>.eos_token_id</c>, <c>.unknown_token_id</c>,
    /// <c>.add_space_prefix</c>, <c>.remove_extra_whitespaces</c>).
    /// </summary>
    /// <param name="pieces">(V) piece text per id.</param>
    /// <param name="scores">(V) BPE merge scores; null means all zero.</param>
    /// <param name="tokenTypes">(V) 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.</param>
    /// <param name="bos">BOS id.</param>
    /// <param name="eos">EOS id.</param>
    /// <param name="unk">Unknown id; must be the one piece of type 2.</param>
    /// <param name="addDummyPrefix">Prepend a space (U+2581) to the text (SentencePiece's add_dummy_prefix; GGUF add_space_prefix).</param>
    /// <param name="removeExtraWhitespaces">Drop leading/trailing spaces and collapse runs (false for Mistral, true for llama2.c tok512).</param>
    /// <param name="byteFallback">Use &lt;0xXX&gt; pieces for unknown characters; null means "when byte pieces are present".</param>
    /// <param name="escapeWhitespaces">Replace spaces with U+2581 (true for every known model).</param>
    /// <param name="treatWhitespaceAsSuffix">Append the dummy space instead of prepending it.</param>
    /// <param name="unkSurface">What &lt;unk&gt; decodes to; null means SentencePiece's default " \u2047 ".</param>
    /// <param name="source">Names the vocabulary in error messages (e.g. the GGUF file path).</param>
    /// <exception cref="ModelFormatException">The arrays are inconsistent or the vocabulary is invalid.</exception>
    public static SentencePieceTokenizer FromVocabulary(
        string[] pieces, float[]? scores, int[] tokenTypes, int bos, int eos, int unk,
        bool addDummyPrefix = true, bool removeExtraWhitespaces = false, bool? byteFallback = null,
        bool escapeWhitespaces = true, bool treatWhitespaceAsSuffix = false, string? unkSurface = null,
        string source = "vocabulary")
    {
        ArgumentNullException.ThrowIfNull(pieces);
        ArgumentNullException.ThrowIfNull(tokenTypes);
        ArgumentNullException.ThrowIfNull(source);
        int v = pieces.Length;
        if (v == 0)
        {
            throw ModelFormatException.In(source, "the vocabulary is empty");
        }
        if (tokenTypes.Length != v || (scores is not null && scores.Length != v))
        {
            throw ModelFormatException.In(source, $"vocabulary arrays differ in length: {v} pieces, {scores?.Length.ToString(CultureInfo.InvariantCulture) ?? "no"} scores, {tokenTypes.Length} token types");
        }
        var types = new SentencePieceType[v];
        bool hasBytes = false;
        for (int i = 0; i < v; i++)
        {
            int t = tokenTypes[i];
            if (t is < 1 or > 6)
            {
                throw ModelFormatException.In(source, $"token {i} \"{pieces[i]}\" has type {t}; expected 1 (normal) .. 6 (byte)");
            }
            types[i] = (SentencePieceType)t;
            hasBytes |= t == (int)SentencePieceType.Byte;
        }
        var tok = new SentencePieceTokenizer(source, (string[])pieces.Clone(), scores is null ? new float[v] : (float[])scores.Clone(), types, new Options(
            bos, eos, byteFallback ?? hasBytes, addDummyPrefix, removeExtraWhitespaces, escapeWhitespaces,
            treatWhitespaceAsSuffix, unkSurface ?? DefaultUnkSurface));
        if (tok._unkId != unk)
        {
            throw ModelFormatException.In(source, $"unknown token id {unk} does not match the token of type UNKNOWN (2), which is {tok._unkId}");
        }
        return tok;
    }

    /// <inheritdoc/>
    public int VocabSize => _pieces.Length;

    /// <inheritdoc/>
    public TokenId Bos => new(_bosId);

    /// <inheritdoc/>
    public TokenId Eos => new(_eosId);

    /// <summary>The &lt;unk&gt; token.</summary>
    public TokenId Unk => new(_unkId);

    /// <summary>Whether unknown characters are encoded as &lt;0xXX&gt; byte pieces.</summary>
    public bool ByteFallback => _byteFallback;

    /// <summary>Whether a dummy space is prepended before encoding (and dropped from the first piece when decoding).</summary>
    public bool AddDummyPrefix => _addDummyPrefix;

    /// <summary>Whether leading, trailing and repeated spaces are removed before encoding.</summary>
    public bool RemoveExtraWhitespaces => _removeExtraWhitespaces;

    /// <summary>The type of a token.</summary>
    public SentencePieceType TypeOf(TokenId id) => _types[CheckId(id)];

    /// <summary>The BPE score of a token.</summary>
    public float ScoreOf(TokenId id) => _scores[CheckId(id)];

    /// <inheritdoc/>
    public string PieceOf(TokenId id) => _pieces[CheckId(id)];

    /// <inheritdoc/>
    public bool IsControl(TokenId id) => _types[CheckId(id)] == SentencePieceType.Control;

    /// <summary>The id of a piece string as SentencePiece's PieceToId finds it (control, unknown and byte
    /// pieces first, then the others); &lt;unk&gt; when absent.</summary>
    public TokenId IdOf(string piece)
    {
        ArgumentNullException.ThrowIfNull(piece);
        return new TokenId(PieceToId(piece));
    }

    private int CheckId(TokenId id)
    {
        if ((uint)id.Value >= (uint)_pieces.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(id), id.Value, $"token id out of range 0..{_pieces.Length - 1}");
        }
        return id.Value;
    }

    private int PieceToId(ReadOnlySpan<char> piece)
    {
        if (_reservedLookup.TryGetValue(piece, out int id))
        {
            return id;
        }
        return _normalLookup.TryGetValue(piece, out id) ? id : _unkId;
    }

    /// <summary>Parses "&lt;0xXX&gt;" (upper-case hex, as SentencePiece writes it); -1 otherwise.</summary>
    private static int PieceToByte(string piece)
    {
        if (piece.Length != 6 || !piece.StartsWith("<0x", StringComparison.Ordinal) || piece[5] != '>')
        {
            return -1;
        }
        int hi = HexUpper(piece[3]), lo = HexUpper(piece[4]);
        return hi < 0 || lo < 0 ? -1 : (hi << 4) | lo;

        static int HexUpper(char c) => c switch
        {
            >= '0' and <= '9' => c - '0',
            >= 'A' and <= 'F' => c - 'A' + 10,
            _ => -1,
        };
    }

    // ------------------------------------------------------------------ encoding

    /// <inheritdoc/>
    public TokenId[] Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 2 + 2);
        if (addBos)
        {
            ids.Add(_bosId);
        }
        EncodeInto(text, ids);
        var result = new TokenId[ids.Count];
        for (int i = 0; i < result.Length; i++)
        {
            result[i] = new TokenId(ids[i]);
        }
        return result;
    }

    /// <summary>Replaces lone UTF-16 surrogates by U+FFFD, as UTF-8 conversion does.</summary>
    internal static string ReplaceLoneSurrogates(string s)
    {
        char[]? copy = null;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                i++;
                continue;
            }
            if (char.IsSurrogate(c))
            {
                copy ??= s.ToCharArray();
                copy[i] = '\uFFFD';
            }
        }
        return copy is null ? s : new string(copy);
    }

    /// <summary>
    /// Length in chars of the next normalization/BPE unit at <paramref name="pos"/>: the longest
    /// user-defined piece starting there (<paramref name="userDefined"/> = true), else one code point.
    /// </summary>
    private int PrefixLength(string s, int pos, out bool userDefined)
    {
        if (_userDefinedMaxChars > 0 && _userDefinedFirstChars.Contains(s[pos]))
        {
            for (int len = Math.Min(_userDefinedMaxChars, s.Length - pos); len > 0; len--)
            {
                if (_userDefinedLookup.Contains(s.AsSpan(pos, len)))
                {
                    userDefined = true;
                    return len;
                }
            }
        }
        userDefined = false;
        return char.IsHighSurrogate(s[pos]) && pos + 1 < s.Length && char.IsLowSurrogate(s[pos + 1]) ? 2 : 1;
    }

    /// <summary>SentencePiece's Normalizer::Normalize with identity rules (see the class remarks).</summary>
    /// <example>"Hello  world" gives "\u2581Hello\u2581\u2581world" for Mistral (remove_extra_whitespaces off)
    /// and "\u2581Hello\u2581world" for tok512 (on).</example>
    internal string Normalize(string input)
    {
        input = ReplaceLoneSurrogates(input);
        int pos = 0;
        if (_removeExtraWhitespaces)
        {
            while (pos < input.Length)
            {
                int len = PrefixLength(input, pos, out _);
                if (len != 1 || input[pos] != ' ')
                {
                    break;
                }
                pos += len;
            }
        }
        if (pos >= input.Length)
        {
            return "";
        }
        char ws = _escapeWhitespaces ? SpaceSymbol : ' ';
        var sb = new StringBuilder(input.Length - pos + 2);
        if (!_treatWhitespaceAsSuffix && _addDummyPrefix)
        {
            sb.Append(ws);
        }
        bool isPrevSpace = _removeExtraWhitespaces;
        while (pos < input.Length)
        {
            int len = PrefixLength(input, pos, out _);
            int s = pos, e = pos + len;
            while (isPrevSpace && s < e && input[s] == ' ')
            {
                s++;
            }
            if (s < e)
            {
                for (int i = s; i < e; i++)
                {
                    char c = input[i];
                    sb.Append(_escapeWhitespaces && c == ' ' ? SpaceSymbol : c);
                }
                isPrevSpace = input[e - 1] == ' ';
            }
            pos = e;
            if (!_removeExtraWhitespaces)
            {
                isPrevSpace = false;
            }
        }
        if (_removeExtraWhitespaces)
        {
            while (sb.Length > 0 && sb[^1] == ws)
            {
                sb.Length--;
            }
        }
        if (_treatWhitespaceAsSuffix && _addDummyPrefix)
        {
            sb.Append(ws);
        }
        return sb.ToString();
    }

    /// <summary>A candidate merge of the adjacent symbols Left and Right (Size = their total length in chars).</summary>
    private readonly record struct Candidate(int Left, int Right, int Size, float Score);

    /// <summary>Highest score first; equal scores: leftmost first (SentencePiece's SymbolPairComparator).</summary>
    private sealed class CandidateOrder : IComparer<Candidate>
    {
        public static readonly CandidateOrder Instance = new();

        public int Compare(Candidate a, Candidate b)
        {
            if (a.Score > b.Score)
            {
                return -1;
            }
            if (a.Score < b.Score)
            {
                return 1;
            }
            return a.Left.CompareTo(b.Left);
        }
    }

    /// <summary>
    /// The symbols of the text being encoded as a doubly linked list over the normalized string
    /// (S = number of initial symbols): symbol i covers chars [Start[i], Start[i] + Length[i]);
    /// a merged-away symbol has Length 0.
    /// </summary>
    private sealed class Symbols(int capacity)
    {
        public readonly int[] Start = new int[capacity];   // (S)
        public readonly int[] Length = new int[capacity];  // (S)
        public readonly int[] Prev = new int[capacity];    // (S) -1 for the first
        public readonly int[] Next = new int[capacity];    // (S) -1 for the last
        public readonly bool[] Freeze = new bool[capacity]; // (S) user-defined: never merged
    }

    private void EncodeInto(string text, List<int> output)
    {
        string normalized = Normalize(text);
        if (normalized.Length == 0)
        {
            return;
        }

        // Split into characters (user-defined pieces are single frozen symbols).
        var sym = new Symbols(normalized.Length);
        int count = 0;
        for (int pos = 0; pos < normalized.Length;)
        {
            int len = PrefixLength(normalized, pos, out bool frozen);
            sym.Start[count] = pos;
            sym.Length[count] = len;
            sym.Freeze[count] = frozen;
            sym.Prev[count] = count - 1;
            pos += len;
            sym.Next[count] = pos < normalized.Length ? count + 1 : -1;
            count++;
        }

        var agenda = new PriorityQueue<Candidate, Candidate>(count, CandidateOrder.Instance);
        // Reverse merge rules for UNUSED pieces: merged piece -> the two parts it was last formed from.
        Dictionary<string, (string Left, string Right)>? revMerge = _hasUnused ? new(StringComparer.Ordinal) : null;

        void MaybeAddPair(int left, int right)
        {
            if (left == -1 || right == -1 || sym.Freeze[left] || sym.Freeze[right])
            {
                return;
            }
            int size = sym.Length[left] + sym.Length[right];
            var piece = normalized.AsSpan(sym.Start[left], size);
            if (!_normalLookup.TryGetValue(piece, out int id))
            {
                return;
            }
            var c = new Candidate(left, right, size, _scores[id]);
            agenda.Enqueue(c, c);
            if (revMerge is not null && _types[id] == SentencePieceType.Unused)
            {
                revMerge[piece.ToString()] = (
                    normalized.Substring(sym.Start[left], sym.Length[left]),
                    normalized.Substring(sym.Start[right], sym.Length[right]));
            }
        }

        for (int i = 1; i < count; i++)
        {
            MaybeAddPair(i - 1, i);
        }

        while (agenda.TryDequeue(out var top, out _))
        {
            int l = top.Left, r = top.Right;
            // Stale: one side was merged away or has grown since the pair was queued.
            if (sym.Length[l] == 0 || sym.Length[r] == 0 || sym.Length[l] + sym.Length[r] != top.Size)
            {
                continue;
            }
            sym.Length[l] += sym.Length[r];
            sym.Next[l] = sym.Next[r];
            if (sym.Next[r] >= 0)
            {
                sym.Prev[sym.Next[r]] = l;
            }
            sym.Length[r] = 0;
            MaybeAddPair(sym.Prev[l], l);
            MaybeAddPair(l, sym.Next[l]);
        }

        bool prevUnk = false;
        for (int i = 0; i != -1; i = sym.Next[i])
        {
            Resegment(normalized.AsSpan(sym.Start[i], sym.Length[i]), revMerge, output, ref prevUnk);
        }
    }

    private void Resegment(ReadOnlySpan<char> w, Dictionary<string, (string Left, string Right)>? revMerge, List<int> output, ref bool prevUnk)
    {
        int id = PieceToId(w);
        if (_types[id] == SentencePieceType.Unused && revMerge is not null
            && revMerge.GetAlternateLookup<ReadOnlySpan<char>>().TryGetValue(w, out var parts))
        {
            Resegment(parts.Left, revMerge, output, ref prevUnk);
            Resegment(parts.Right, revMerge, output, ref prevUnk);
            return;
        }
        Emit(w, id, output, ref prevUnk);
    }

    /// <summary>SentencePieceProcessor::PopulateSentencePieceText: byte fallback and merging of unknown runs.</summary>
    private void Emit(ReadOnlySpan<char> w, int id, List<int> output, ref bool prevUnk)
    {
        bool isUnk = _types[id] == SentencePieceType.Unknown;
        if (_types[id] == SentencePieceType.Control)
        {
            output.Add(id);
        }
        else if (isUnk && _byteFallback)
        {
            Span<byte> bytes = w.Length <= 64 ? stackalloc byte[w.Length * 3] : new byte[w.Length * 3];
            int n = Encoding.UTF8.GetBytes(w, bytes);
            for (int k = 0; k < n; k++)
            {
                output.Add(_byteIds[bytes[k]]);
            }
        }
        else if (!(prevUnk && isUnk))
        {
            output.Add(id);
        }
        prevUnk = isUnk;
    }

    // ------------------------------------------------------------------ decoding

    /// <inheritdoc/>
    /// <exception cref="ArgumentOutOfRangeException">An id is outside the vocabulary.</exception>
    public string Decode(ReadOnlySpan<TokenId> ids)
    {
        var text = new List<byte>(ids.Length * 4);
        int byteStart = 0;
        bool isBosWs = true;   // whether a leading U+2581 may still be consumed
        bool bosWsSeen = false;
        for (int i = 0; i < ids.Length; i++)
        {
            int id = _decodeId[CheckId(ids[i])];
            if (_types[id] == SentencePieceType.Byte)
            {
                continue;
            }
            AppendBytePieces(ids[byteStart..i], text);
            if (bosWsSeen || text.Count > 0)
            {
                isBosWs = false;
            }
            byteStart = i + 1;
            bosWsSeen = AppendPiece(id, isBosWs, text);
        }
        AppendBytePieces(ids[byteStart..], text);
        return Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(text));
    }

    /// <summary>Appends a non-byte piece's surface; returns whether it consumed the leading dummy space.</summary>
    private bool AppendPiece(int id, bool isBosWs, List<byte> text)
    {
        switch (_types[id])
        {
            case SentencePieceType.Control:
                return false;
            case SentencePieceType.Unknown:
                text.AddRange(_unkSurface);
                return false;
        }
        byte[] surface = _surface[id];
        bool hasBosWs = false;
        int skip = 0;
        if (isBosWs && (_addDummyPrefix || _removeExtraWhitespaces) && _startsWithSpaceSymbol[id])
        {
            skip = 1; // U+2581 became the single byte ' '
            hasBosWs = !_removeExtraWhitespaces;
        }
        text.AddRange(surface.AsSpan(skip));
        return hasBosWs;
    }

    /// <summary>Decodes a run of byte pieces as SentencePiece does: each byte that does not start a valid
    /// UTF-8 character becomes U+FFFD on its own.</summary>
    private void AppendBytePieces(ReadOnlySpan<TokenId> run, List<byte> text)
    {
        if (run.IsEmpty)
        {
            return;
        }
        Span<byte> bytes = run.Length <= 256 ? stackalloc byte[run.Length] : new byte[run.Length];
        for (int k = 0; k < run.Length; k++)
        {
            bytes[k] = (byte)_byteValue[_decodeId[run[k].Value]];
        }
        for (int offset = 0; offset < bytes.Length;)
        {
            if (IsValidUtf8Char(bytes[offset..], out int consumed))
            {
                text.AddRange(bytes.Slice(offset, consumed));
            }
            else
            {
                text.AddRange(ReplacementCharUtf8);
            }
            offset += consumed;
        }
    }

    /// <summary>
    /// SentencePiece's string_util::DecodeUTF8 + IsValidDecodeUTF8: whether <paramref name="s"/> starts with a
    /// well-formed UTF-8 character (no overlong forms, no surrogates, at most U+10FFFF); consumed = its length,
    /// or 1 when it is not valid.
    /// </summary>
    internal static bool IsValidUtf8Char(ReadOnlySpan<byte> s, out int consumed)
    {
        consumed = 1;
        byte b0 = s[0];
        if (b0 < 0x80)
        {
            return true;
        }
        static bool Trail(byte b) => (b & 0xC0) == 0x80;
        static bool ValidCodepoint(int c) => c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF);
        if (s.Length >= 2 && (b0 & 0xE0) == 0xC0)
        {
            int cp = ((b0 & 0x1F) << 6) | (s[1] & 0x3F);
            if (Trail(s[1]) && cp >= 0x80 && ValidCodepoint(cp))
            {
                consumed = 2;
                return true;
            }
        }
        else if (s.Length >= 3 && (b0 & 0xF0) == 0xE0)
        {
            int cp = ((b0 & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F);
            if (Trail(s[1]) && Trail(s[2]) && cp >= 0x800 && ValidCodepoint(cp))
            {
                consumed = 3;
                return true;
            }
        }
        else if (s.Length >= 4 && (b0 & 0xF8) == 0xF0)
        {
            int cp = ((b0 & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
            if (Trail(s[1]) && Trail(s[2]) && Trail(s[3]) && cp >= 0x10000 && ValidCodepoint(cp))
            {
                consumed = 4;
                return true;
            }
        }
        return false;
    }

    /// <inheritdoc/>
    /// <remarks>
    /// Control tokens give no bytes; a byte piece gives its single byte (the streaming detokenizer assembles
    /// UTF-8 across tokens); &lt;unk&gt; gives the unk surface; other pieces give their text with U+2581 as
    /// ' ', minus one leading space when <paramref name="previous"/> is null or BOS and the model adds a
    /// dummy prefix (or removes extra whitespace), as SentencePiece's decoder and llama2.c's run.c do.
    /// Concatenating these bytes equals <see cref="Decode"/> for well-formed output; they differ only where
    /// Decode replaces invalid byte sequences (U+FFFD per byte) or strips a space after leading control tokens
    /// other than BOS.
    /// </remarks>
    public byte[] TokenBytes(TokenId id, TokenId? previous)
    {
        int i = _decodeId[CheckId(id)];
        switch (_types[i])
        {
            case SentencePieceType.Control:
                return [];
            case SentencePieceType.Byte:
                return [(byte)_byteValue[i]];
            case SentencePieceType.Unknown:
                return (byte[])_unkSurface.Clone();
        }
        bool atStart = previous is null || previous.Value.Value == _bosId;
        if (atStart && (_addDummyPrefix || _removeExtraWhitespaces) && _startsWithSpaceSymbol[i])
        {
            return _surface[i].AsSpan(1).ToArray();
        }
        return (byte[])_surface[i].Clone();
    }
}
