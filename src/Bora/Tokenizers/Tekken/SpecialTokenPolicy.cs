namespace Bora.Tokenizers.Tekken;

/// <summary>
/// What decoding does with special tokens (ids below the special-token count: &lt;s&gt;, [INST], ...),
/// as mistral-common's <c>SpecialTokenPolicy</c> (IGNORE = 0, KEEP = 1, RAISE = 2).
/// </summary>
public enum SpecialTokenPolicy
{
    /// <summary>Special tokens contribute nothing (mistral-common IGNORE; the default).</summary>
    Skip = 0,

    /// <summary>Special tokens appear as their text, e.g. "[INST]" (mistral-common KEEP).</summary>
    Keep = 1,

    /// <summary>A special token is an error: <see cref="ArgumentException"/> (mistral-common RAISE).</summary>
    Raise = 2,
}

/// <summary>One special token of a Tekken file: id (= rank) <paramref name="Id"/>, its text and control flag.</summary>
public readonly record struct TekkenSpecialToken(int Id, string Text, bool IsControl);
