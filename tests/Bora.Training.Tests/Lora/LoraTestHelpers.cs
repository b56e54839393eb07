using System.Numerics;
using Bora.Generation;
using Bora.Model;
using Bora.Model.Lora;
using Bora.Training.Lora;

namespace Bora.Training.Tests.Lora;

internal static class LoraTestHelpers
{
    /// <summary>Every module: the four attention projections and the FFN (every expert's in MoE configs).</summary>
    public static IReadOnlySet<LoraModule> AllTargets => LoraTargets.Parse("q,k,v,o,experts");

    /// <summary>Fills every B with uniform ±scale (B starts at zero, which would hide A's gradient and the adapter's effect).</summary>
    public static void RandomizeB<T>(LoraParameters<T> lora, ulong seed, double scale = 0.3)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        var rng = new Xoshiro256StarStar(seed);
        foreach (var (_, b) in lora.Factors.Values)
        {
            for (int i = 0; i < b.Length; i++)
            {
                b.Data[i] = T.CreateTruncating((2 * rng.NextDouble() - 1) * scale);
            }
        }
    }

    /// <summary>
    /// The logits of a Bora inference <see cref="Transformer"/> at every position of one sequence, (T, V), with an F32 KV
    /// cache (the training forward it is compared with keeps keys and values in float32).
    /// </summary>
    public static float[] InferenceLogits(TransformerWeights weights, int[] tokens)
    {
        var model = new Transformer(weights) { KvType = KvCacheType.F32 };
        var cache = model.CreateCache(tokens.Length);
        int v = weights.Config.VocabSize;
        var logits = new float[tokens.Length * v];
        for (int t = 0; t < tokens.Length; t++)
        {
            model.Forward([new Bora.Tokenizers.TokenId(tokens[t])], cache, logits.AsSpan(t * v, v));
        }
        return logits;
    }

    public static double MaxAbsDiff<TA, TB>(ReadOnlySpan<TA> a, ReadOnlySpan<TB> b)
        where TA : unmanaged, INumberBase<TA>
        where TB : unmanaged, INumberBase<TB>
    {
        Assert.Equal(a.Length, b.Length);
        double m = 0;
        for (int i = 0; i < a.Length; i++)
        {
            m = Math.Max(m, Math.Abs(double.CreateTruncating(a[i]) - double.CreateTruncating(b[i])));
        }
        return m;
    }
}
