using Bora.Model;
using Bora.Numerics;

namespace Bora.Server.Tests;

/// <summary>Tiny random-weight transformers (weights uniform ±sqrt(3 / fan_in) so activations stay O(1)).</summary>
internal static class RandomModels
{
    /// <summary>D 32, 2 layers, 4 query heads, 2 kv heads of 12, F 40, V 64.</summary>
    public static ModelConfig Dense(int? window = null) => new()
    {
        Dim = 32,
        NLayers = 2,
        NHeads = 4,
        NKvHeads = 2,
        HeadDim = 12,
        HiddenDim = 40,
        VocabSize = 64,
        SlidingWindow = window,
        MaxSeqLen = 512,
    };

    public static ModelConfig Moe() => Dense() with { NExperts = 4, NExpertsPerToken = 2 };

    public static Transformer Build(ModelConfig c, int seed, KvCacheType kvType = KvCacheType.F16)
    {
        var rng = new Random(seed);
        float[] U(int n, float scale) => [.. Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * scale)];
        F32Matrix Lin(int rows, int cols) => new(U(rows * cols, MathF.Sqrt(3f / cols)), rows, cols);
        float[] Norm() => [.. U(c.Dim, 0.2f).Select(x => 1 + x)];
        FeedForwardWeights Ffn() => new() { W1 = Lin(c.HiddenDim, c.Dim), W2 = Lin(c.Dim, c.HiddenDim), W3 = Lin(c.HiddenDim, c.Dim) };
        int q = c.NHeads * c.HeadDim, kv = c.NKvHeads * c.HeadDim;
        var layers = Enumerable.Range(0, c.NLayers).Select(_ => new LayerWeights
        {
            AttentionNorm = Norm(),
            Wq = Lin(q, c.Dim),
            Wk = Lin(kv, c.Dim),
            Wv = Lin(kv, c.Dim),
            Wo = Lin(c.Dim, q),
            FfnNorm = Norm(),
            FeedForward = c.IsMoE ? null : Ffn(),
            Moe = c.IsMoE ? new MoeWeights { Router = Lin(c.NExperts, c.Dim), Experts = [.. Enumerable.Range(0, c.NExperts).Select(_ => Ffn())] } : null,
        }).ToList();
        return new Transformer(new TransformerWeights
        {
            Config = c,
            TokenEmbedding = new F32Matrix(U(c.VocabSize * c.Dim, 1f), c.VocabSize, c.Dim),
            Layers = layers,
            FinalNorm = Norm(),
            Output = Lin(c.VocabSize, c.Dim),
        })
        { KvType = kvType };
    }
}
