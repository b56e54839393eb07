using Bora.Tokenizers;

namespace Bora.Generation;

/// <summary>One alternative of a sampling step: a token and its log-probability.</summary>
public readonly record struct TopLogprob(TokenId Id, float Logprob);

/// <summary>
/// The log-probability of a generated token and the <see cref="Top"/> most likely tokens of that step
/// (descending, ties by ascending id), all under the raw model distribution (see <see cref="Logprobs"/>).
/// </summary>
public sealed record TokenLogprob(TokenId Id, float Logprob, IReadOnlyList<TopLogprob> Top);

/// <summary>
/// Log-probabilities as OpenAI's <c>logprobs</c> reports them. The distribution is the model's raw
/// log-softmax over the whole vocabulary, before temperature, penalties, top-k/top-p/min-p and constraint
/// masks (vLLM's default, "raw logprobs"): the numbers describe the model, not the sampler's settings, and
/// a token forced by a constraint may show a low log-probability.
/// </summary>
public static class Logprobs
{
    /// <summary>Most alternatives per token (OpenAI's limit for top_logprobs).</summary>
    public const int MaxTop = 20;

    /// <summary>
    /// log softmax(<paramref name="logits"/>)[<paramref name="chosen"/>] and the <paramref name="top"/>
    /// (0 .. <see cref="MaxTop"/>) largest entries. log softmax(x)_i = x_i - (m + ln sum_j exp(x_j - m)), m = max x.
    /// Example: logits [0, ln 3] give log-probabilities [ln 1/4, ln 3/4] = [-1.386, -0.288].
    /// </summary>
    public static TokenLogprob Compute(ReadOnlySpan<float> logits, TokenId chosen, int top)
    {
        if ((uint)chosen.Value >= (uint)logits.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(chosen), chosen.Value, $"expected a token id in [0, {logits.Length})");
        }
        ArgumentOutOfRangeException.ThrowIfNegative(top);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(top, MaxTop);
        float max = float.NegativeInfinity;
        foreach (float l in logits)
        {
            max = MathF.Max(max, l);
        }
        double sum = 0;
        foreach (float l in logits)
        {
            sum += Math.Exp(l - max);
        }
        float logZ = (float)(max + Math.Log(sum));

        // Keep the k best in a small sorted array (descending logit, ties by ascending id): O(V * k) worst, O(V) typical.
        int k = Math.Min(top, logits.Length);
        Span<int> best = stackalloc int[Math.Max(k, 1)];
        int count = 0;
        for (int i = 0; i < logits.Length && k > 0; i++)
        {
            float l = logits[i];
            if (count == k && !(l > logits[best[k - 1]]))
            {
                continue; // not better than the worst kept (equal loses: higher id)
            }
            int j = count < k ? count++ : k - 1;
            while (j > 0 && l > logits[best[j - 1]])
            {
                best[j] = best[j - 1];
                j--;
            }
            best[j] = i;
        }
        var alternatives = new TopLogprob[count];
        for (int i = 0; i < count; i++)
        {
            alternatives[i] = new TopLogprob(new TokenId(best[i]), logits[best[i]] - logZ);
        }
        return new TokenLogprob(chosen, logits[chosen.Value] - logZ, alternatives);
    }
}
