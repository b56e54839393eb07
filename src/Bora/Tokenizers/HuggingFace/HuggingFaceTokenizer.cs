using System.Globalization;
using System.Text;
using System.Text.Json;
using Bora.Formats;

namespace Bora.Tokenizers.HuggingFace;

/// <summary>
/// A Hugging Face <c>tokenizer.json</c> of the SentencePiece-style BPE kind (Llama, Mistral 7B, Mixtral):
/// model BPE with <c>vocab</c> + <c>merges</c> and <c>byte_fallback</c>, normalizer <c>Prepend</c>/<c>Replace</c>
/// (or none) and pre-tokenizer <c>Metaspace</c> (or none), decoder <c>Replace</c>/<c>ByteFallback</c>/<c>Fuse</c>/
/// <c>Strip</c> or <c>Metaspace</c>, and <c>added_tokens</c>. It follows the Hugging Face tokenizers library
/// (tokenizers/src/models/bpe, pre_tokenizers/metaspace.rs, normalizers, decoders). Other component types are
/// rejected at load with a <see cref="ModelFormatException"/> naming them.
/// </summary>
/// <remarks>
/// <para><b>Encoding</b>: the text is normalized (Prepend adds its string to non-empty text; Replace replaces a
/// literal string), then Metaspace replaces ' ' with U+2581 and prepends U+2581 according to its
/// <c>prepend_scheme</c> — "always" and "first" only when the text does not already start with U+2581 — and,
/// with <c>split</c>, cuts before every U+2581. Each piece is split into characters (a character missing from
/// the vocabulary becomes its UTF-8 &lt;0xXX&gt; tokens with byte_fallback, else &lt;unk&gt;, consecutive ones
/// fused with fuse_unk); then the adjacent pair with the lowest merge rank (its line in <c>merges</c>) is merged
/// repeatedly, leftmost first on equal rank.</para>
/// <para><b>Control tokens never come from text</b>: added tokens marked <c>special</c> (&lt;s&gt;, [INST], ...) are
/// not matched in the input (Hugging Face would match them; Bora only emits them through the chat renderer).
/// Non-special added tokens are matched in the raw text, leftmost and longest first, like SentencePiece's
/// user-defined pieces.</para>
/// <para><b>Difference from SentencePiece</b>: Metaspace's "first"/"always" schemes do not add the dummy
/// space when the text already starts with a space, so " Hello" encodes as "▁Hello" here and as "▁▁Hello" in
/// SentencePiece (Mistral 7B v0.1's tokenizer.json and tokenizer.model really do differ there). Loading with
/// <c>sentencePiecePrefix: true</c> always prepends the space to non-empty text, which makes this tokenizer give
/// SentencePiece's ids.</para>
/// <para><b>Decoding</b> skips special tokens and applies the decoder chain of the file.</para>
/// <para>Instances are immutable and safe to use from several threads.</para>
/// </remarks>
public sealed class HuggingFaceTokenizer : ITokenizer
{
    /// <summary>Largest tokenizer.json accepted (the largest known SentencePiece-style ones are a few MB).</summary>
    public const long MaxFileBytes = 256L << 20;

    private const char Meta = '\u2581';

    private enum Prepend
    {
        Always,
        First,
        Never,
    }

    private abstract record Step;

    private sealed record PrependStep(string Text) : Step;

    private sealed record ReplaceStep(string Pattern, string Content) : Step;

    private sealed record StripStep(char Content, int Start, int Stop) : Step;

    private sealed record ByteFallbackStep : Step;

    private sealed record FuseStep : Step;

    private sealed record MetaspaceDecodeStep(char Replacement, bool StripFirst) : Step;

    private readonly string _source;
    private readonly string[] _pieces;                      // (V) token text per id
    private readonly bool[] _special;                       // (V) special added token
    private readonly Dictionary<string, int> _vocab;        // BPE vocabulary (model.vocab)
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _vocabLookup;
    private readonly Dictionary<long, (int Rank, int Id)> _merges; // (left id << 32 | right id) -> rank, merged id
    private readonly int[] _byteIds = new int[256];         // (256) id of <0xXX>, -1 when absent
    private readonly int[] _byteValue;                      // (V) byte of a <0xXX> token, -1 otherwise
    private readonly List<string> _userTokens;              // non-special added tokens, longest first
    private readonly int _unkId, _bosId, _eosId;
    private readonly bool _byteFallback, _fuseUnk, _ignoreMerges;
    private readonly Step[] _normalizer;
    private readonly bool _hasMetaspace, _metaSplit, _sentencePiecePrefix;
    private readonly char _metaReplacement;
    private readonly Prepend _metaPrepend;
    private readonly Step[] _decoder;
    private readonly bool _stripsLeadingSpace;

    private HuggingFaceTokenizer(string source, JsonElement root, bool sentencePiecePrefix)
    {
        _source = source;
        _sentencePiecePrefix = sentencePiecePrefix;
        var model = Prop(root, "model", JsonValueKind.Object, "the tokenizer.json root");
        string type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "(none)";
        if (type != "BPE")
        {
            throw Bad($"model.type is \"{type}\"; only \"BPE\" is supported (Unigram, WordPiece and WordLevel are not)");
        }
        foreach (var name in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
        {
            if (model.TryGetProperty(name, out var sub) && sub.ValueKind == JsonValueKind.String && sub.GetString()!.Length > 0)
            {
                throw Bad($"model.{name} = \"{sub.GetString()}\" is not supported (only SentencePiece-style BPE without subword markers)");
            }
        }
        if (model.TryGetProperty("dropout", out var dropout) && dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() != 0)
        {
            throw Bad($"model.dropout = {dropout.GetRawText()} is not supported (encoding must be deterministic)");
        }
        _byteFallback = Bool(model, "byte_fallback");
        _fuseUnk = Bool(model, "fuse_unk");
        _ignoreMerges = Bool(model, "ignore_merges");

        // Vocabulary: model.vocab ids must be 0..N-1; added tokens may extend it.
        var vocab = Prop(model, "vocab", JsonValueKind.Object, "model");
        _vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        var byId = new Dictionary<int, string>();
        foreach (var p in vocab.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0)
            {
                throw Bad($"model.vocab[\"{p.Name}\"] = {p.Value.GetRawText()}; expected a non-negative integer id");
            }
            if (!byId.TryAdd(id, p.Name))
            {
                throw Bad($"model.vocab gives id {id} to both \"{byId[id]}\" and \"{p.Name}\"");
            }
            _vocab[p.Name] = id;
        }
        var specialIds = new HashSet<int>();
        var user = new List<string>();
        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
        {
            int k = 0;
            foreach (var a in added.EnumerateArray())
            {
                string where = $"added_tokens[{k++}]";
                var idEl = Prop(a, "id", JsonValueKind.Number, where);
                if (!idEl.TryGetInt32(out int id) || id < 0)
                {
                    throw Bad($"{where}.id = {idEl.GetRawText()}; expected a non-negative integer");
                }
                string content = Prop(a, "content", JsonValueKind.String, where).GetString()!;
                if (content.Length == 0)
                {
                    throw Bad($"{where}.content is empty");
                }
                if (byId.TryGetValue(id, out var existing) && existing != content)
                {
                    throw Bad($"{where} gives id {id} to \"{content}\" but model.vocab has \"{existing}\" there");
                }
                byId[id] = content;
                if (Bool(a, "special"))
                {
                    specialIds.Add(id);
                }
                else
                {
                    user.Add(content);
                }
            }
        }
        int v = byId.Count == 0 ? 0 : byId.Keys.Max() + 1;
        if (v == 0)
        {
            throw Bad("the vocabulary is empty");
        }
        if (byId.Count != v)
        {
            int missing = Enumerable.Range(0, v).First(i => !byId.ContainsKey(i));
            throw Bad($"token ids are not contiguous: no token has id {missing} (ids run up to {v - 1})");
        }
        _pieces = new string[v];
        _special = new bool[v];
        _byteValue = new int[v];
        Array.Fill(_byteIds, -1);
        for (int i = 0; i < v; i++)
        {
            _pieces[i] = byId[i];
            _special[i] = specialIds.Contains(i);
            _byteValue[i] = ByteOfPiece(_pieces[i]);
            if (_byteValue[i] >= 0 && _vocab.ContainsKey(_pieces[i]))
            {
                _byteIds[_byteValue[i]] = i;
            }
        }
        _vocabLookup = _vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        _userTokens = user.Distinct(StringComparer.Ordinal).OrderByDescending(s => s.Length).ToList();

        _unkId = -1;
        if (model.TryGetProperty("unk_token", out var unk) && unk.ValueKind == JsonValueKind.String)
        {
            _unkId = _vocab.TryGetValue(unk.GetString()!, out int u) ? u
                : throw Bad($"model.unk_token \"{unk.GetString()}\" is not in model.vocab");
        }
        if (_unkId < 0 && !(_byteFallback && Array.IndexOf(_byteIds, -1) < 0))
        {
            throw Bad("model.unk_token is null and byte_fallback does not cover all 256 bytes: some text could not be encoded");
        }

        // Merges: "left right" strings or [left, right] pairs; the rank is the position.
        var merges = Prop(model, "merges", JsonValueKind.Array, "model");
        _merges = new Dictionary<long, (int, int)>(merges.GetArrayLength());
        int rank = 0;
        foreach (var m in merges.EnumerateArray())
        {
            string left, right;
            if (m.ValueKind == JsonValueKind.String)
            {
                string s = m.GetString()!;
                var parts = s.Split(' ');
                if (parts.Length != 2)
                {
                    throw Bad($"model.merges[{rank}] = \"{s}\"; expected two tokens separated by one space");
                }
                (left, right) = (parts[0], parts[1]);
            }
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2 && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
            {
                (left, right) = (m[0].GetString()!, m[1].GetString()!);
            }
            else
            {
                throw Bad($"model.merges[{rank}] = {m.GetRawText()}; expected \"left right\" or [\"left\", \"right\"]");
            }
            int l = VocabId(left, rank), r = VocabId(right, rank), merged = VocabId(left + right, rank);
            _merges.TryAdd(((long)l << 32) | (uint)r, (rank, merged));
            rank++;
        }

        _bosId = FindSpecial(root, "<s>", first: true);
        _eosId = FindSpecial(root, "</s>", first: false);

        // Normalizer.
        _normalizer = root.TryGetProperty("normalizer", out var norm) && norm.ValueKind != JsonValueKind.Null
            ? Flatten(norm, "normalizer", ParseNormalizer) : [];

        // Pre-tokenizer.
        _metaPrepend = Prepend.Never;
        if (root.TryGetProperty("pre_tokenizer", out var pre) && pre.ValueKind != JsonValueKind.Null)
        {
            var steps = pre.TryGetProperty("type", out var pt) && pt.GetString() == "Sequence"
                ? Prop(pre, "pretokenizers", JsonValueKind.Array, "pre_tokenizer").EnumerateArray().ToList()
                : [pre];
            foreach (var s in steps)
            {
                string st = TypeOf(s, "pre_tokenizer");
                if (st != "Metaspace" || _hasMetaspace)
                {
                    throw Bad($"pre_tokenizer type \"{st}\" is not supported (only one Metaspace, as SentencePiece-style tokenizers use)");
                }
                _hasMetaspace = true;
                _metaReplacement = ReplacementChar(s, "pre_tokenizer");
                _metaSplit = !s.TryGetProperty("split", out var split) || split.ValueKind != JsonValueKind.False;
                _metaPrepend = ParsePrepend(s, "pre_tokenizer");
            }
        }

        // Decoder.
        _decoder = root.TryGetProperty("decoder", out var dec) && dec.ValueKind != JsonValueKind.Null
            ? Flatten(dec, "decoder", ParseDecoder) : [];
        _stripsLeadingSpace = _decoder.Any(d => d is StripStep { Content: ' ', Start: > 0 } or MetaspaceDecodeStep { StripFirst: true });
    }

    /// <summary>Loads a tokenizer.json file.</summary>
    /// <param name="path">The file.</param>
    /// <param name="sentencePiecePrefix">Always prepend U+2581 to non-empty text, as SentencePiece's dummy prefix does
    /// under a Metaspace pre-tokenizer (see the class remarks); false follows the file's settings exactly. A Prepend
    /// normalizer always prepends already.</param>
    /// <exception cref="ModelFormatException">The file is not valid JSON or uses a component this class does not implement.</exception>
    public static HuggingFaceTokenizer Load(string path, bool sentencePiecePrefix = false)
    {
        ArgumentNullException.ThrowIfNull(path);
        var info = new FileInfo(path);
        if (!info.Exists)
        {
            throw new FileNotFoundException($"{path}: no such tokenizer file", path);
        }
        if (info.Length > MaxFileBytes)
        {
            throw ModelFormatException.In(path, $"the file is {info.Length} bytes; at most {MaxFileBytes} are accepted for a tokenizer.json");
        }
        return Parse(File.ReadAllText(path), path, sentencePiecePrefix);
    }

    /// <summary>Parses tokenizer.json text; <paramref name="source"/> names it in error messages.</summary>
    /// <exception cref="ModelFormatException">The text is not valid JSON or uses a component this class does not implement.</exception>
    public static HuggingFaceTokenizer Parse(string json, string source = "tokenizer.json", bool sentencePiecePrefix = false)
    {
        ArgumentNullException.ThrowIfNull(json);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 256 });
        }
        catch (JsonException e)
        {
            throw ModelFormatException.In(source, $"not valid JSON: {e.Message}");
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw ModelFormatException.In(source, "the root must be a JSON object");
            }
            return new HuggingFaceTokenizer(source, doc.RootElement, sentencePiecePrefix);
        }
    }

    // ------------------------------------------------------------------ loading helpers

    private ModelFormatException Bad(string problem) => ModelFormatException.In(_source, problem);

    private JsonElement Prop(JsonElement e, string name, JsonValueKind kind, string where)
    {
        if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(name, out var v) || v.ValueKind != kind)
        {
            throw Bad($"{where} needs \"{name}\" of JSON type {kind}");
        }
        return v;
    }

    private static bool Bool(JsonElement e, string name) => e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.True;

    private string TypeOf(JsonElement e, string where) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String
            ? t.GetString()! : throw Bad($"{where} has no \"type\"");

    private int VocabId(string piece, int rank) => _vocab.TryGetValue(piece, out int id)
        ? id : throw Bad($"model.merges[{rank}] uses \"{piece}\", which is not in model.vocab");

    private Step[] Flatten(JsonElement e, string where, Func<JsonElement, string, Step> parse)
    {
        string type = TypeOf(e, where);
        if (type != "Sequence")
        {
            return [parse(e, where)];
        }
        string listName = where == "normalizer" ? "normalizers" : "decoders";
        return Prop(e, listName, JsonValueKind.Array, where).EnumerateArray().SelectMany(x => Flatten(x, where, parse)).ToArray();
    }

    private Step ParseNormalizer(JsonElement e, string where) => TypeOf(e, where) switch
    {
        "Prepend" => new PrependStep(Prop(e, "prepend", JsonValueKind.String, "Prepend normalizer").GetString()!),
        "Replace" => ParseReplace(e, "Replace normalizer"),
        var other => throw Bad($"normalizer type \"{other}\" is not supported (supported: Prepend, Replace with a String pattern, Sequence)"),
    };

    private Step ParseDecoder(JsonElement e, string where)
    {
        switch (TypeOf(e, where))
        {
            case "Replace":
                return ParseReplace(e, "Replace decoder");
            case "ByteFallback":
                return new ByteFallbackStep();
            case "Fuse":
                return new FuseStep();
            case "Strip":
                string content = Prop(e, "content", JsonValueKind.String, "Strip decoder").GetString()!;
                if (content.Length != 1)
                {
                    throw Bad($"Strip decoder content \"{content}\" must be one character");
                }
                return new StripStep(content[0], Prop(e, "start", JsonValueKind.Number, "Strip decoder").GetInt32(), Prop(e, "stop", JsonValueKind.Number, "Strip decoder").GetInt32());
            case "Metaspace":
                return new MetaspaceDecodeStep(ReplacementChar(e, "Metaspace decoder"), ParsePrepend(e, "Metaspace decoder") != Prepend.Never);
            case var other:
                throw Bad($"decoder type \"{other}\" is not supported (supported: Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence)");
        }
    }

    private ReplaceStep ParseReplace(JsonElement e, string where)
    {
        var pattern = Prop(e, "pattern", JsonValueKind.Object, where);
        if (!pattern.TryGetProperty("String", out var s) || s.ValueKind != JsonValueKind.String || s.GetString()!.Length == 0)
        {
            throw Bad($"{where}: only a non-empty {{\"String\": ...}} pattern is supported, not {pattern.GetRawText()} (regex patterns are not)");
        }
        return new ReplaceStep(s.GetString()!, Prop(e, "content", JsonValueKind.String, where).GetString()!);
    }

    private char ReplacementChar(JsonElement e, string where)
    {
        string r = e.TryGetProperty("replacement", out var rep) && rep.ValueKind == JsonValueKind.String ? rep.GetString()! : Meta.ToString();
        return r.Length == 1 ? r[0] : throw Bad($"{where} replacement \"{r}\" must be one UTF-16 character");
    }

    private Prepend ParsePrepend(JsonElement e, string where)
    {
        if (e.TryGetProperty("prepend_scheme", out var ps) && ps.ValueKind == JsonValueKind.String)
        {
            return ps.GetString() switch
            {
                "always" => Prepend.Always,
                "first" => Prepend.First,
                "never" => Prepend.Never,
                var other => throw Bad($"{where} prepend_scheme \"{other}\" is unknown (expected always, first or never)"),
            };
        }
        // Files older than prepend_scheme have add_prefix_space (true meant "always").
        return e.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.False ? Prepend.Never : Prepend.Always;
    }

    private int FindSpecial(JsonElement root, string fallback, bool first)
    {
        // BOS: the first special token of the post-processor's single template, when there is one.
        if (first && root.TryGetProperty("post_processor", out var pp) && pp.ValueKind == JsonValueKind.Object
            && pp.TryGetProperty("single", out var single) && single.ValueKind == JsonValueKind.Array)
        {
            foreach (var item in single.EnumerateArray())
            {
                if (item.TryGetProperty("SpecialToken", out var st) && st.TryGetProperty("id", out var sid) && sid.ValueKind == JsonValueKind.String)
                {
                    int id = Array.IndexOf(_pieces, sid.GetString());
                    if (id >= 0)
                    {
                        return id;
                    }
                }
                break;
            }
        }
        int found = Array.IndexOf(_pieces, fallback);
        return found >= 0 ? found : throw Bad($"no \"{fallback}\" token: this tokenizer needs {(first ? "a BOS" : "an EOS")} token");
    }

    /// <summary>"&lt;0x0A&gt;" → 10 (upper-case hex as the converters write it); -1 otherwise.</summary>
    private static int ByteOfPiece(string piece)
    {
        if (piece.Length != 6 || !piece.StartsWith("<0x", StringComparison.Ordinal) || piece[5] != '>')
        {
            return -1;
        }
        return int.TryParse(piece.AsSpan(3, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int b)
               && piece.AsSpan(3, 2).ToString() == piece.AsSpan(3, 2).ToString().ToUpperInvariant() ? b : -1;
    }

    // ------------------------------------------------------------------ ITokenizer

    /// <inheritdoc/>
    public int VocabSize => _pieces.Length;

    /// <inheritdoc/>
    public TokenId Bos => new(_bosId);

    /// <inheritdoc/>
    public TokenId Eos => new(_eosId);

    /// <summary>Whether this instance always prepends SentencePiece's dummy space (see <see cref="Load"/>).</summary>
    public bool SentencePiecePrefix => _sentencePiecePrefix;

    /// <inheritdoc/>
    public string PieceOf(TokenId id) => _pieces[CheckId(id)];

    /// <inheritdoc/>
    public bool IsControl(TokenId id) => _special[CheckId(id)];

    private int CheckId(TokenId id) => (uint)id.Value < (uint)_pieces.Length
        ? id.Value : throw new ArgumentOutOfRangeException(nameof(id), id.Value, $"token id out of range 0..{_pieces.Length - 1}");

    /// <inheritdoc/>
    public TokenId[] Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        text = ReplaceLoneSurrogates(text);
        var ids = new List<int>(text.Length / 3 + 2);
        if (addBos)
        {
            ids.Add(_bosId);
        }
        // Split on non-special added tokens (matched in the raw text), leftmost then longest.
        int pos = 0, segStart = 0;
        while (pos < text.Length)
        {
            string? match = null;
            if (_userTokens.Count > 0)
            {
                foreach (var u in _userTokens)
                {
                    if (string.CompareOrdinal(text, pos, u, 0, u.Length) == 0)
                    {
                        match = u;
                        break;
                    }
                }
            }
            if (match is null)
            {
                pos++;
                continue;
            }
            EncodeSegment(text[segStart..pos], segStart == 0, ids);
            ids.Add(_vocab.TryGetValue(match, out int mid) ? mid : Array.IndexOf(_pieces, match));
            pos += match.Length;
            segStart = pos;
        }
        EncodeSegment(text[segStart..], segStart == 0, ids);
        return ids.Select(i => new TokenId(i)).ToArray();
    }

    private void EncodeSegment(string s, bool atStart, List<int> ids)
    {
        if (s.Length == 0)
        {
            return;
        }
        foreach (var step in _normalizer)
        {
            s = step switch
            {
                PrependStep p => s.Length > 0 ? p.Text + s : s,
                ReplaceStep r => s.Replace(r.Pattern, r.Content, StringComparison.Ordinal),
                _ => s,
            };
        }
        if (_hasMetaspace)
        {
            s = s.Replace(' ', _metaReplacement);
            bool prepend = _sentencePiecePrefix
                || (_metaPrepend == Prepend.Always && !s.StartsWith(_metaReplacement))
                || (_metaPrepend == Prepend.First && atStart && !s.StartsWith(_metaReplacement));
            if (prepend && s.Length > 0)
            {
                s = _metaReplacement + s;
            }
        }
        if (!_hasMetaspace || !_metaSplit)
        {
            EncodeWord(s, ids);
            return;
        }
        // Metaspace split: a new word starts at every replacement character (kept with the word that follows).
        int start = 0;
        for (int i = 1; i <= s.Length; i++)
        {
            if (i == s.Length || s[i] == _metaReplacement)
            {
                EncodeWord(s[start..i], ids);
                start = i;
            }
        }
    }

    /// <summary>BPE of one word: characters (with byte fallback / unk), then merges by lowest rank, leftmost first.</summary>
    private void EncodeWord(string word, List<int> ids)
    {
        if (word.Length == 0)
        {
            return;
        }
        if (_ignoreMerges && _vocabLookup.TryGetValue(word, out int whole))
        {
            ids.Add(whole);
            return;
        }
        // Symbols as a doubly linked list over arrays. (S = symbols)
        var sym = new List<int>(word.Length);   // (S) token id
        Span<byte> utf8 = stackalloc byte[4];
        bool lastWasUnk = false;
        for (int i = 0; i < word.Length;)
        {
            int len = char.IsHighSurrogate(word[i]) && i + 1 < word.Length ? 2 : 1;
            var ch = word.AsSpan(i, len);
            i += len;
            if (_vocabLookup.TryGetValue(ch, out int id))
            {
                sym.Add(id);
                lastWasUnk = false;
                continue;
            }
            if (_byteFallback)
            {
                int n = Encoding.UTF8.GetBytes(ch, utf8);
                bool all = true;
                for (int k = 0; k < n; k++)
                {
                    all &= _byteIds[utf8[k]] >= 0;
                }
                if (all)
                {
                    for (int k = 0; k < n; k++)
                    {
                        sym.Add(_byteIds[utf8[k]]);
                    }
                    lastWasUnk = false;
                    continue;
                }
            }
            if (!(lastWasUnk && _fuseUnk))
            {
                sym.Add(_unkId);
            }
            lastWasUnk = true;
        }

        int count = sym.Count;
        var prev = new int[count];  // (S) -1 for the first
        var next = new int[count];  // (S) -1 for the last
        var alive = new bool[count];
        for (int i = 0; i < count; i++)
        {
            prev[i] = i - 1;
            next[i] = i + 1 < count ? i + 1 : -1;
            alive[i] = true;
        }
        var ids2 = sym.ToArray();
        var queue = new PriorityQueue<int, (int Rank, int Pos)>();
        for (int i = 0; i + 1 < count; i++)
        {
            if (_merges.TryGetValue(Key(ids2[i], ids2[i + 1]), out var m))
            {
                queue.Enqueue(i, (m.Rank, i));
            }
        }
        while (queue.TryDequeue(out int pos, out var pri))
        {
            int right = next[pos];
            if (!alive[pos] || right < 0 || !_merges.TryGetValue(Key(ids2[pos], ids2[right]), out var m) || m.Rank != pri.Rank)
            {
                continue; // stale: one side was merged since this pair was queued
            }
            ids2[pos] = m.Id;
            alive[right] = false;
            next[pos] = next[right];
            if (next[right] >= 0)
            {
                prev[next[right]] = pos;
            }
            if (prev[pos] >= 0 && _merges.TryGetValue(Key(ids2[prev[pos]], ids2[pos]), out var ml))
            {
                queue.Enqueue(prev[pos], (ml.Rank, prev[pos]));
            }
            if (next[pos] >= 0 && _merges.TryGetValue(Key(ids2[pos], ids2[next[pos]]), out var mr))
            {
                queue.Enqueue(pos, (mr.Rank, pos));
            }
        }
        for (int i = 0; i >= 0 && i < count; i = next[i])
        {
            ids.Add(ids2[i]);
        }

        static long Key(int l, int r) => ((long)l << 32) | (uint)r;
    }

    private static string ReplaceLoneSurrogates(string s)
    {
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsSurrogate(s[i]))
            {
                return Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(s));
            }
        }
        return s;
    }

    /// <inheritdoc/>
    public string Decode(ReadOnlySpan<TokenId> ids)
    {
        var tokens = new List<string>(ids.Length);
        foreach (var id in ids)
        {
            if (!_special[CheckId(id)])
            {
                tokens.Add(_pieces[id.Value]);
            }
        }
        foreach (var step in _decoder)
        {
            tokens = Apply(step, tokens);
        }
        return string.Concat(tokens);
    }

    private List<string> Apply(Step step, List<string> tokens)
    {
        switch (step)
        {
            case ReplaceStep r:
                return tokens.Select(t => t.Replace(r.Pattern, r.Content, StringComparison.Ordinal)).ToList();
            case FuseStep:
                return [string.Concat(tokens)];
            case StripStep st:
                return tokens.Select(t =>
                {
                    int a = 0, b = t.Length;
                    while (a < st.Start && a < b && t[a] == st.Content)
                    {
                        a++;
                    }
                    for (int k = 0; k < st.Stop && b > a && t[b - 1] == st.Content; k++)
                    {
                        b--;
                    }
                    return t[a..b];
                }).ToList();
            case MetaspaceDecodeStep md:
                return tokens.Select((t, i) => i == 0 && md.StripFirst
                    ? t.Replace(md.Replacement.ToString(), "", StringComparison.Ordinal)
                    : t.Replace(md.Replacement, ' ')).ToList();
            case ByteFallbackStep:
                var result = new List<string>(tokens.Count);
                var pending = new List<byte>();
                void FlushBytes()
                {
                    if (pending.Count == 0)
                    {
                        return;
                    }
                    try
                    {
                        result.Add(new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(pending.ToArray()));
                    }
                    catch (DecoderFallbackException)
                    {
                        result.AddRange(Enumerable.Repeat("\uFFFD", pending.Count));
                    }
                    pending.Clear();
                }
                foreach (var t in tokens)
                {
                    int b = ByteOfPiece(t);
                    if (b >= 0)
                    {
                        pending.Add((byte)b);
                    }
                    else
                    {
                        FlushBytes();
                        result.Add(t);
                    }
                }
                FlushBytes();
                return result;
            default:
                return tokens;
        }
    }

    /// <inheritdoc/>
    /// <remarks>Special tokens give nothing, byte tokens their byte, others their text with U+2581 as ' ', minus
    /// the leading space the decoder strips when <paramref name="previous"/> is null or BOS.</remarks>
    public byte[] TokenBytes(TokenId id, TokenId? previous)
    {
        int i = CheckId(id);
        if (_special[i])
        {
            return [];
        }
        if (_byteValue[i] >= 0 && _decoder.Any(d => d is ByteFallbackStep))
        {
            return [(byte)_byteValue[i]];
        }
        string text = _pieces[i].Replace(_hasMetaspace ? _metaReplacement : Meta, ' ');
        bool atStart = previous is null || previous.Value.Value == _bosId;
        if (atStart && _stripsLeadingSpace && text.StartsWith(' '))
        {
            text = text[1..];
        }
        return Encoding.UTF8.GetBytes(text);
    }
}
