using Bora.Tokenizers;

namespace Bora.Model;

/// <summary>
/// Per-sequence key/value cache. <see cref="Length"/> is the number of positions already run
/// through the model; the next forward call starts at that position. Implementations may keep
/// fewer than <see cref="Length"/> positions (a rolling sliding-window cache keeps the last W).
/// </summary>
public interface IKvCache
{
    /// <summary>Positions processed so far (the position of the next token).</summary>
    int Length { get; }

    /// <summary>Most positions this cache can run (the context length).</summary>
    int MaxLength { get; }

    /// <summary>Forgets everything (Length becomes 0).</summary>
    void Clear();
}

/// <summary>A causal language model: tokens in, next-token logits out.</summary>
public interface ICausalLM
{
    ModelConfig Config { get; }

    /// <summary>An empty cache for one sequence of up to <paramref name="contextLength"/> positions.</summary>
    IKvCache CreateCache(int contextLength);

    /// <summary>
    /// Runs T = tokens.Length tokens at positions cache.Length .. cache.Length + T - 1, appends their
    /// keys and values to <paramref name="cache"/>, and writes logits: (T, V) for every position when
    /// <paramref name="logits"/> has T * V elements, or (V) for the last position when it has V.
    /// </summary>
    void Forward(ReadOnlySpan<TokenId> tokens, IKvCache cache, Span<float> logits);
}
