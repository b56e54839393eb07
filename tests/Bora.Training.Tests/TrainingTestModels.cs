using System.Numerics;
using Bora.Generation;
using Bora.Model;

namespace Bora.Training.Tests;

/// <summary>Tiny configs and O(1)-scaled random parameters for the training tests.</summary>
internal static class TrainingTestModels
{
    /// <summary>Dense GQA: D 16, 2 layers, 4 query heads and 2 kv heads of 6 (Hq * Dh = 24 != D), F 20, V 23.</summary>
    public static ModelConfig Dense(int? window = null, bool tied = false) => new()
    {
        Dim = 16,
        NLayers = 2,
        NHeads = 4,
        NKvHeads = 2,
        HeadDim = 6,
        HiddenDim = 20,
        VocabSize = 23,
        NormEps = 1e-5f,
        RopeTheta = 10000f,
        SlidingWindow = window,
        MaxSeqLen = 64,
        TiedEmbeddings = tied,
    };

    /// <summary>The dense config with 4 experts, 2 per token.</summary>
    public static ModelConfig Moe(int? window = null, bool tied = false) => Dense(window, tied) with { NExperts = 4, NExpertsPerToken = 2 };

    /// <summary>
    /// Parameters with scales that keep activations O(1) (so every gradient is far from zero): matrices
    /// uniform ±sqrt(3 / in), the embedding uniform ±1, norm weights 1 ± 0.2.
    /// </summary>
    public static ModelParameters<T> Random<T>(ModelConfig c, ulong seed)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        var p = ModelParameters<T>.Initialize(c, seed);
        var rng = new Xoshiro256StarStar(seed + 1);
        foreach (var t in p.All)
        {
            double scale = t.Shape.Length == 1 ? 0.2 : t == p.TokenEmbedding ? 1.0 : Math.Sqrt(3.0 / t.Shape[1]);
            for (int i = 0; i < t.Length; i++)
            {
                double u = (rng.NextDouble() * 2 - 1) * scale;
                t.Data[i] = T.CreateTruncating(t.Shape.Length == 1 ? 1 + u : u);
            }
        }
        return p;
    }

    /// <summary>Copies values between parameter sets of the same config (e.g. float to double).</summary>
    public static ModelParameters<TTo> Convert<TFrom, TTo>(ModelParameters<TFrom> src)
        where TFrom : unmanaged, IFloatingPointIeee754<TFrom>
        where TTo : unmanaged, IFloatingPointIeee754<TTo>
    {
        var dst = ModelParameters<TTo>.Initialize(src.Config, 0);
        for (int k = 0; k < src.All.Count; k++)
        {
            for (int i = 0; i < src.All[k].Length; i++)
            {
                dst.All[k].Data[i] = TTo.CreateTruncating(src.All[k].Data[i]);
            }
        }
        return dst;
    }

    public static int[] Tokens(int n, int vocab, ulong seed)
    {
        var rng = new Xoshiro256StarStar(seed);
        return [.. Enumerable.Range(0, n).Select(_ => (int)(rng.NextUInt64() % (ulong)vocab))];
    }
}
