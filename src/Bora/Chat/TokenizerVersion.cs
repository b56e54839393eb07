using System.Text.RegularExpressions;
using Bora.Tokenizers;

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

/// <summary>Finds the <see cref="TokenizerVersion"/> of a tokenizer from its file name or its vocabulary.</summary>
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
        if (controls.Contains("[SYSTEM_PROMPT]"))
        {
            return TokenizerVersion.V7;
        }
        if (controls.Contains("[SUFFIX]") || controls.Contains("[PREFIX]") || controls.Contains("[IMG]"))
        {
            return TokenizerVersion.V3;
        }
        return controls.Contains("[INST]") ? TokenizerVersion.V2 : TokenizerVersion.V1;
    }

    /// <summary>The version stated by the file name when it states one, else the one the vocabulary implies.</summary>
    public static TokenizerVersion Detect(string? tokenizerPath, ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        return (tokenizerPath is null ? null : FromFileName(tokenizerPath)) ?? FromVocabulary(tokenizer);
    }
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
