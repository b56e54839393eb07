using System.Text;
namespace Bora.Tokenizers;

/// <summary>
/// What decoding does with control/special tokens (&lt;s&gt;, [INST], ...), as mistral-common's
/// <c>SpecialTokenPolicy</c> (IGNORE = 0, KEEP = 1, RAISE = 2).
/// </summary>
public enum SpecialTokenPolicy
{
    /// <summary>Leave them out: the plain decoded text (the default).</summary>
    Ignore = 0,

    /// <summary>Keep them: SentencePiece joins every token's piece (control tokens and U+2581 as in the vocabulary); Tekken writes the special token's text.</summary>
    Keep = 1,

    /// <summary>A special token is an error; otherwise the plain decoded text.</summary>
    Raise = 2,
}

/// <summary>Decoding with a <see cref="SpecialTokenPolicy"/>, as mistral-common's SentencePieceTokenizer.decode does.</summary>
public static class SpecialTokenDecoding
{
    /// <summary>
    /// Decodes ids. <see cref="SpecialTokenPolicy.Ignore"/>: <see cref="ITokenizer.Decode"/>.
    /// <see cref="SpecialTokenPolicy.Keep"/>: the pieces joined, e.g. "&lt;s&gt;[INST]▁Hi[/INST]" (mistral-common's
    /// text of a rendered request). <see cref="SpecialTokenPolicy.Raise"/>: <see cref="ITokenizer.Decode"/>, or an
    /// <see cref="InvalidOperationException"/> naming the first control token.
    /// </summary>
    public static string Decode(this ITokenizer tokenizer, ReadOnlySpan<TokenId> ids, SpecialTokenPolicy policy)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        switch (policy)
        {
            case SpecialTokenPolicy.Ignore:
                return tokenizer.Decode(ids);
            case SpecialTokenPolicy.Keep:
                var sb = new StringBuilder();
                foreach (var id in ids)
                {
                    sb.Append(tokenizer.PieceOf(id));
                }
                return sb.ToString();
            case SpecialTokenPolicy.Raise:
                for (int i = 0; i < ids.Length; i++)
                {
                    if (tokenizer.IsControl(ids[i]))
                    {
                        throw new InvalidOperationException(
                            $"decoding met the special token {tokenizer.PieceOf(ids[i])} (id {ids[i].Value}) at position {i} with special-token policy Raise");
                    }
                }
                return tokenizer.Decode(ids);
            default:
                throw new ArgumentOutOfRangeException(nameof(policy), policy, "expected Ignore, Keep or Raise");
        }
    }
}
