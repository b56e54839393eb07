using Bora.Numerics;
using Bora.Tokenizers;

namespace Bora.Model.Tests;

/// <summary>Tiny random-weight models and checkpoints built in memory.</summary>
internal static class TestModels
{
    /// <summary>A dense GQA config: D 32, 2 layers, 4 query heads, 2 kv heads of 12 (Hq * Dh = 48 != D), F 40, V 50.</summary>
    public static ModelConfig Dense(int? window = null, int layers = 2, int headDim = 12) => new()
    {
        Dim = 32,
        NLayers = layers,
        NHeads = 4,
        NKvHeads = 2,
        HeadDim = headDim,
        HiddenDim = 40,
        VocabSize = 50,
        NormEps = 1e-5f,
        RopeTheta = 10000f,
        SlidingWindow = window,
        MaxSeqLen = 256,
    };

    /// <summary>The dense config with 4 experts, 2 per token.</summary>
    public static ModelConfig Moe(int? window = null) => Dense(window) with { NExperts = 4, NExpertsPerToken = 2 };

    /// <summary>
    /// Random weights with scales that keep activations and logits O(1): linear weights uniform in
    /// ±sqrt(3 / in) (unit variance out for unit variance in), norms 1 ± 0.2, embeddings uniform ±1.
    /// </summary>
    public static TransformerWeights Random(ModelConfig c, int seed, bool tied = false)
    {
        var rng = new Random(seed);
        int d = c.Dim, q = c.NHeads * c.HeadDim, kv = c.NKvHeads * c.HeadDim, f = c.HiddenDim;
        F32Matrix Lin(int rows, int cols) => new(Uniform(rng, rows * cols, MathF.Sqrt(3f / cols)), rows, cols);
        float[] Norm() => [.. Uniform(rng, d, 0.2f).Select(x => 1 + x)];
        FeedForwardWeights Ffn() => new() { W1 = Lin(f, d), W2 = Lin(d, f), W3 = Lin(f, d) };
        var emb = new F32Matrix(Uniform(rng, c.VocabSize * d, 1f), c.VocabSize, d);
        var layers = new List<LayerWeights>();
        for (int i = 0; i < c.NLayers; i++)
        {
            layers.Add(new LayerWeights
            {
                AttentionNorm = Norm(),
                Wq = Lin(q, d),
                Wk = Lin(kv, d),
                Wv = Lin(kv, d),
                Wo = Lin(d, q),
                FfnNorm = Norm(),
                FeedForward = c.IsMoE ? null : Ffn(),
                Moe = c.IsMoE ? new MoeWeights { Router = Lin(c.NExperts, d), Experts = [.. Enumerable.Range(0, c.NExperts).Select(_ => Ffn())] } : null,
            });
        }
        return new TransformerWeights
        {
            Config = c with { TiedEmbeddings = tied },
            TokenEmbedding = emb,
            Layers = layers,
            FinalNorm = Norm(),
            Output = tied ? emb : Lin(c.VocabSize, d),
        };
    }

    public static float[] Uniform(Random rng, int n, float scale)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++)
        {
            a[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        }
        return a;
    }

    public static TokenId[] Tokens(int n, int vocab, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, n).Select(_ => new TokenId(rng.Next(vocab)))];
    }

    /// <summary>All-position logits (T, V) of a one-shot forward from an empty cache.</summary>
    public static float[] Prefill(ICausalLM model, TokenId[] tokens)
    {
        var logits = new float[tokens.Length * model.Config.VocabSize];
        model.Forward(tokens, model.CreateCache(Math.Max(tokens.Length, 1)), logits);
        return logits;
    }

    public static float[] Dense(WeightMatrix m)
    {
        var a = new float[m.Rows * m.Cols];
        for (int r = 0; r < m.Rows; r++)
        {
            m.ReadRow(r, a.AsSpan(r * m.Cols, m.Cols));
        }
        return a;
    }

    public static float MaxAbsDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        Assert.Equal(a.Length, b.Length);
        float m = 0;
        for (int i = 0; i < a.Length; i++)
        {
            float d = MathF.Abs(a[i] - b[i]);
            m = float.IsNaN(d) ? float.PositiveInfinity : Math.Max(m, d);
        }
        return m;
    }

    public static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, float tolerance, string what)
    {
        float diff = MaxAbsDiff(expected, actual);
        Assert.True(diff <= tolerance, $"{what}: max |diff| {diff} > {tolerance}");
    }
}
