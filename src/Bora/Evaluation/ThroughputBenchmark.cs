using System.Diagnostics;
using Bora.Model;
using Bora.Tokenizers;

namespace Bora.Evaluation;

/// <summary>One timed run: prompt tokens per second (one forward call over the whole prompt) and decode tokens per second (one call per generated token).</summary>
public readonly record struct ThroughputSample(double PrefillTokensPerSecond, double DecodeTokensPerSecond);

/// <summary>
/// Prefill and decode speed of a causal LM, the way llama-bench's pp / tg tests measure them: a prompt of random
/// token ids (BOS first) run in one call from an empty cache, then greedy decoding of G tokens one call at a time
/// (the first from the prompt's logits). Weights' values do not change the speed, so random-weight files do.
/// </summary>
public static class ThroughputBenchmark
{
    /// <summary><paramref name="count"/> deterministic pseudo-random ids in [0, vocab), BOS first.</summary>
    public static TokenId[] RandomPrompt(int vocab, int count, TokenId bos, int seed = 1234)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        var rng = new Random(seed);
        var ids = new TokenId[count];
        ids[0] = bos;
        for (int i = 1; i < count; i++)
        {
            ids[i] = new TokenId(rng.Next(vocab));
        }
        return ids;
    }

    /// <summary>Runs the prompt, then <paramref name="genTokens"/> greedy decode steps, timing each phase.</summary>
    public static ThroughputSample Run(ICausalLM model, ReadOnlySpan<TokenId> prompt, int genTokens)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentOutOfRangeException.ThrowIfLessThan(genTokens, 1);
        int v = model.Config.VocabSize;
        var cache = model.CreateCache(prompt.Length + genTokens);
        var logits = new float[v];
        long t0 = Stopwatch.GetTimestamp();
        model.Forward(prompt, cache, logits);
        double prefill = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        Span<TokenId> next = stackalloc TokenId[1];
        t0 = Stopwatch.GetTimestamp();
        for (int i = 0; i < genTokens; i++)
        {
            next[0] = new TokenId(System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits));
            model.Forward(next, cache, logits);
        }
        double decode = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        return new ThroughputSample(prompt.Length / prefill, genTokens / decode);
    }

    /// <summary>The median (the mean of the middle two for an even count).</summary>
    public static double Median(IEnumerable<double> values)
    {
        var a = values.Order().ToArray();
        if (a.Length == 0)
        {
            return double.NaN;
        }
        return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
    }
}
