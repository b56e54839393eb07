using System.Text.Json;
using System.Text.RegularExpressions;
using Bora.Formats;
using Bora.Formats.Gguf;
using Bora.Tokenizers;
using Bora.Tokenizers.Tekken;

namespace Bora.Chat;

/// <summary>
/// mistral-common's instruct tokenizer versions (the chat format a model was trained with).
/// v1: [INST] as text; v2: control tokens, tools before the last user message, tool history dropped;
/// v3: tool call ids, tool history kept; v7: [SYSTEM_PROMPT] and [TOOL_CONTENT].
/// </summary>
public enum TokenizerVersion
{
    V1 = 1,
    V2 = 2,
    V3 = 3,
    V7 = 7,
}

/// <summary>
/// Finds the <see cref="TokenizerVersion"/> of a tokenizer from what its model folder says: the file name
/// (<c>tokenizer.model.v3</c>), tekken.json's <c>config.version</c>, Hugging Face <c>tokenizer_config.json</c>
/// hints (chat_template, added tokens), GGUF metadata (<c>tokenizer.chat_template</c>, <c>tokenizer.ggml.pre</c>)
/// and the control tokens of the vocabulary.
/// </summary>
public static partial class TokenizerVersions
{
    [GeneratedRegex(@"\.model\.v(\d+)(m\d+)?$", RegexOptions.CultureInvariant)]
    private static partial Regex VersionSuffix();

    /// <summary>
    /// The version a file name states, as mistral-common's <c>get_spm_version</c> reads it:
    /// <c>*.model.vN</c> (optionally with a multimodal suffix such as <c>v7m1</c>) is vN; a plain <c>*.model</c>
    /// is v1. Null for other names (tokenizer.json, .gguf, ...).
    /// </summary>
    /// <exception cref="ChatRequestException">The name states a version this renderer does not know (v11, v13, ...).</exception>
    public static TokenizerVersion? FromFileName(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        string name = Path.GetFileName(path);
        var m = VersionSuffix().Match(name);
        if (m.Success)
        {
            int n = int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
            return n switch
            {
                1 => TokenizerVersion.V1,
                2 => TokenizerVersion.V2,
                3 => TokenizerVersion.V3,
                7 => TokenizerVersion.V7,
                _ => throw new ChatRequestException($"{name}: tokenizer version v{n} is not supported by the chat renderer (supported: v1, v2, v3, v7)"),
            };
        }
        return name.EndsWith(".model", StringComparison.Ordinal) ? TokenizerVersion.V1 : null;
    }

    /// <summary>
    /// The version the control pieces of a vocabulary imply: [SYSTEM_PROMPT] → v7; [PREFIX]/[SUFFIX] or [IMG]
    /// (added in v3) → v3; [INST] → v2; none → v1.
    /// </summary>
    public static TokenizerVersion FromVocabulary(ITokenizer tokenizer)
    {
        var controls = ControlTokens.Of(tokenizer);
        return FromControlNames(controls.Contains) ?? TokenizerVersion.V1;
    }

    /// <summary>
    /// The version the names of a vocabulary's control (special) tokens imply: [SYSTEM_PROMPT] → v7;
    /// [PREFIX]/[SUFFIX] or [IMG] (added in v3) → v3; [INST] → v2; none of them → null.
    /// </summary>
    public static TokenizerVersion? FromControlNames(Func<string, bool> has)
    {
        ArgumentNullException.ThrowIfNull(has);
        if (has("[SYSTEM_PROMPT]"))
        {
            return TokenizerVersion.V7;
        }
        if (has("[SUFFIX]") || has("[PREFIX]") || has("[IMG]"))
        {
            return TokenizerVersion.V3;
        }
        return has("[INST]") ? TokenizerVersion.V2 : null;
    }

    /// <summary>
    /// The version a tekken.json's <c>config.version</c> states ("v3" for Mistral NeMo's tekken 240718, "v7", ...).
    /// Unlike the vocabulary (whose default special-token list has [SYSTEM_PROMPT] from v3 on), it is exact.
    /// </summary>
    /// <exception cref="ChatRequestException">A version this renderer does not know (v11, v13, ...): rendering
    /// it as another version would give the model a prompt it was not trained on.</exception>
    public static TokenizerVersion FromTekkenVersion(string version, string source)
    {
        ArgumentNullException.ThrowIfNull(version);
        return version switch
        {
            "v1" => TokenizerVersion.V1,
            "v2" => TokenizerVersion.V2,
            "v3" => TokenizerVersion.V3,
            "v7" => TokenizerVersion.V7,
            _ => throw new ChatRequestException($"{source}: config.version is \"{version}\"; the chat renderer supports Tekken versions v3 and v7 (and v1, v2); newer formats are not implemented"),
        };
    }

    /// <summary>
    /// What a Jinja chat template (Hugging Face <c>chat_template</c>, GGUF <c>tokenizer.chat_template</c>) reveals:
    /// [SYSTEM_PROMPT] → v7; tool tokens ([AVAILABLE_TOOLS], [TOOL_CALLS], [TOOL_RESULTS]) with tool call ids
    /// (<c>call_id</c>, as Mistral 7B Instruct v0.3's and Mixtral 8x22B's templates write them) → v3; tool tokens
    /// without ids → v2; otherwise null ([INST] alone does not tell v1 from v2: the vocabulary does).
    /// </summary>
    public static TokenizerVersion? FromChatTemplate(string? template)
    {
        if (string.IsNullOrEmpty(template))
        {
            return null;
        }
        if (template.Contains("[SYSTEM_PROMPT]", StringComparison.Ordinal))
        {
            return TokenizerVersion.V7;
        }
        bool tools = template.Contains("[AVAILABLE_TOOLS]", StringComparison.Ordinal)
            || template.Contains("[TOOL_CALLS]", StringComparison.Ordinal)
            || template.Contains("[TOOL_RESULTS]", StringComparison.Ordinal);
        if (!tools)
        {
            return null;
        }
        return template.Contains("call_id", StringComparison.Ordinal) ? TokenizerVersion.V3 : TokenizerVersion.V2;
    }

    /// <summary>Largest size of a tokenizer_config.json read for hints (Mistral's are about 100 KB).</summary>
    public const long MaxTokenizerConfigBytes = 64L << 20;

    /// <summary>
    /// Hints of a Hugging Face <c>tokenizer_config.json</c>: its <c>chat_template</c> (a string, or a list of
    /// {name, template}) through <see cref="FromChatTemplate"/>, and the special tokens of
    /// <c>added_tokens_decoder</c> through <see cref="FromControlNames"/>; the later version of the two, or null.
    /// </summary>
    /// <exception cref="ModelFormatException">The file is too large or not a JSON object.</exception>
    public static TokenizerVersion? FromTokenizerConfig(string path)
    {
        var info = new FileInfo(path);
        if (info.Length > MaxTokenizerConfigBytes)
        {
            throw ModelFormatException.In(path, $"tokenizer_config.json is {info.Length} bytes; expected at most {MaxTokenizerConfigBytes}");
        }
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(path));
        }
        catch (JsonException e)
        {
            throw new ModelFormatException($"{path}: not valid JSON ({e.Message})", e);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw ModelFormatException.In(path, $"expected a JSON object, found {root.ValueKind}");
            }
            TokenizerVersion? fromTemplate = null;
            if (root.TryGetProperty("chat_template", out var t))
            {
                if (t.ValueKind == JsonValueKind.String)
                {
                    fromTemplate = FromChatTemplate(t.GetString());
                }
                else if (t.ValueKind == JsonValueKind.Array)
                {
                    foreach (var named in t.EnumerateArray())
                    {
                        if (named.ValueKind == JsonValueKind.Object && named.TryGetProperty("template", out var body) && body.ValueKind == JsonValueKind.String)
                        {
                            fromTemplate = Max(fromTemplate, FromChatTemplate(body.GetString()));
                        }
                    }
                }
            }
            var special = new HashSet<string>(StringComparer.Ordinal);
            if (root.TryGetProperty("added_tokens_decoder", out var added) && added.ValueKind == JsonValueKind.Object)
            {
                foreach (var token in added.EnumerateObject())
                {
                    if (token.Value.ValueKind == JsonValueKind.Object
                        && token.Value.TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.String
                        && token.Value.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True)
                    {
                        special.Add(content.GetString()!);
                    }
                }
            }
            return Max(fromTemplate, FromControlNames(special.Contains));
        }
    }

    /// <summary>
    /// Hints of GGUF metadata: <c>tokenizer.chat_template</c> through <see cref="FromChatTemplate"/>; a
    /// <c>tokenizer.ggml.pre</c> of "tekken" (llama.cpp's name for Mistral's Tekken pre-tokenizer) means at least v3.
    /// </summary>
    public static TokenizerVersion? FromGgufMetadata(IReadOnlyDictionary<string, object> metadata)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        TokenizerVersion? v = metadata.TryGetValue("tokenizer.chat_template", out var t) && t is string template
            ? FromChatTemplate(template)
            : null;
        if (metadata.TryGetValue("tokenizer.ggml.pre", out var pre) && pre is string preName && preName == "tekken")
        {
            v = Max(v, TokenizerVersion.V3);
        }
        return v;
    }

    /// <summary>
    /// The version of a model's tokenizer, from what its folder says, in this order:
    /// <list type="number">
    /// <item>a file name that states it (<c>*.model.vN</c>, see <see cref="FromFileName"/>);</item>
    /// <item>for a Tekken tokenizer, tekken.json's <c>config.version</c> (<see cref="FromTekkenVersion"/>);</item>
    /// <item>otherwise the latest of: the vocabulary's control tokens (<see cref="FromVocabulary"/>), the hints of
    /// a <c>tokenizer_config.json</c> next to the file (<see cref="FromTokenizerConfig"/>), and for a .gguf
    /// file its metadata (<see cref="FromGgufMetadata"/>). A plain <c>tokenizer.model</c> (which
    /// mistral-common's file naming would call v1) is treated the same way, since Hugging Face folders hold v3
    /// vocabularies under that name.</item>
    /// </list>
    /// Example: Mistral 7B Instruct v0.3's Hugging Face tokenizer.json has the v2 control tokens ([INST],
    /// [TOOL_CALLS], ...) but no [IMG]/[PREFIX]; its tokenizer_config.json chat_template writes tool call ids,
    /// so the result is v3.
    /// </summary>
    /// <param name="tokenizerPath">The tokenizer file (or a .gguf file, or the folder holding them); null when
    /// unknown: only the vocabulary decides then.</param>
    /// <param name="tokenizer">The tokenizer loaded from it.</param>
    public static TokenizerVersion Detect(string? tokenizerPath, ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        if (tokenizerPath is not null && !Directory.Exists(tokenizerPath)
            && VersionSuffix().IsMatch(Path.GetFileName(tokenizerPath)) && FromFileName(tokenizerPath) is { } named)
        {
            return named;
        }
        if (tokenizer is TekkenTokenizer tekken)
        {
            return FromTekkenVersion(tekken.Version, tekken.FilePath);
        }
        TokenizerVersion v = FromVocabulary(tokenizer);
        if (tokenizerPath is null)
        {
            return v;
        }
        string? folder = Directory.Exists(tokenizerPath) ? tokenizerPath : Path.GetDirectoryName(Path.GetFullPath(tokenizerPath));
        string? config = folder is null ? null : Path.Combine(folder, "tokenizer_config.json");
        if (config is not null && File.Exists(config))
        {
            v = Max(v, FromTokenizerConfig(config)) ?? v;
        }
        if (File.Exists(tokenizerPath) && tokenizerPath.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase))
        {
            using var gguf = GgufFile.Open(tokenizerPath);
            v = Max(v, FromGgufMetadata(gguf.Metadata)) ?? v;
        }
        return v;
    }

    private static TokenizerVersion? Max(TokenizerVersion? a, TokenizerVersion? b) =>
        a is null ? b : b is null ? a : (TokenizerVersion)Math.Max((int)a.Value, (int)b.Value);
}

/// <summary>The control pieces of a vocabulary by their text ("[INST]" → id), found once by scanning the ids.</summary>
public sealed class ControlTokens
{
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<ITokenizer, ControlTokens> Cache = new();
    private readonly Dictionary<string, TokenId> _byPiece = new(StringComparer.Ordinal);

    private ControlTokens(ITokenizer tokenizer)
    {
        for (int i = 0; i < tokenizer.VocabSize; i++)
        {
            var id = new TokenId(i);
            if (tokenizer.IsControl(id))
            {
                _byPiece.TryAdd(tokenizer.PieceOf(id), id);
            }
        }
    }

    /// <summary>The control tokens of a tokenizer (cached per instance).</summary>
    public static ControlTokens Of(ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        return Cache.GetValue(tokenizer, t => new ControlTokens(t));
    }

    /// <summary>Whether the vocabulary has this control piece.</summary>
    public bool Contains(string piece) => _byPiece.ContainsKey(piece);

    /// <summary>Looks a control piece up.</summary>
    public bool TryGet(string piece, out TokenId id) => _byPiece.TryGetValue(piece, out id);

    /// <summary>The id of a control piece.</summary>
    /// <exception cref="ChatRequestException">The vocabulary has no such control piece.</exception>
    public TokenId Get(string piece, string purpose) => _byPiece.TryGetValue(piece, out var id)
        ? id
        : throw new ChatRequestException($"the tokenizer has no control token {piece}, which {purpose} needs");
}
