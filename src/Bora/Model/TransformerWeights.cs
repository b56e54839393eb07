using Bora.Numerics;

namespace Bora.Model;

/// <summary>
/// SwiGLU feed-forward weights (one dense FFN, or one MoE expert): out = W2 (silu(W1 x) * (W3 x)).
/// </summary>
public sealed class FeedForwardWeights
{
    /// <summary>Gate projection, (F, D).</summary>
    public required WeightMatrix W1 { get; init; }

    /// <summary>Down projection, (D, F).</summary>
    public required WeightMatrix W2 { get; init; }

    /// <summary>Up projection, (F, D).</summary>
    public required WeightMatrix W3 { get; init; }
}

/// <summary>Sparse mixture-of-experts weights: a router and E experts.</summary>
public sealed class MoeWeights
{
    /// <summary>Router (gate) logits, (E, D).</summary>
    public required WeightMatrix Router { get; init; }

    /// <summary>E experts.</summary>
    public required IReadOnlyList<FeedForwardWeights> Experts { get; init; }
}

/// <summary>One transformer block. Exactly one of <see cref="FeedForward"/> and <see cref="Moe"/> is set.</summary>
public sealed class LayerWeights
{
    /// <summary>RMSNorm weight before attention, (D).</summary>
    public required float[] AttentionNorm { get; init; }

    /// <summary>(Hq * Dh, D); rows in interleaved-pair RoPE order.</summary>
    public required WeightMatrix Wq { get; init; }

    /// <summary>(Hkv * Dh, D); rows in interleaved-pair RoPE order.</summary>
    public required WeightMatrix Wk { get; init; }

    /// <summary>(Hkv * Dh, D).</summary>
    public required WeightMatrix Wv { get; init; }

    /// <summary>(D, Hq * Dh).</summary>
    public required WeightMatrix Wo { get; init; }

    /// <summary>RMSNorm weight before the feed-forward, (D).</summary>
    public required float[] FfnNorm { get; init; }

    /// <summary>Dense SwiGLU feed-forward, or null in an MoE layer.</summary>
    public FeedForwardWeights? FeedForward { get; init; }

    /// <summary>Mixture of experts, or null in a dense layer.</summary>
    public MoeWeights? Moe { get; init; }
}

/// <summary>
/// All weights of a Mistral-family decoder under Bora's own names (independent of any checkpoint's
/// naming). Letters as in <see cref="ModelConfig"/>.
/// </summary>
public sealed class TransformerWeights
{
    public required ModelConfig Config { get; init; }

    /// <summary>(V, D); row v is the embedding of token v.</summary>
    public required WeightMatrix TokenEmbedding { get; init; }

    /// <summary>L blocks.</summary>
    public required IReadOnlyList<LayerWeights> Layers { get; init; }

    /// <summary>Final RMSNorm weight, (D).</summary>
    public required float[] FinalNorm { get; init; }

    /// <summary>Output head, (V, D); the same object as <see cref="TokenEmbedding"/> when tied.</summary>
    public required WeightMatrix Output { get; init; }

    /// <summary>
    /// Throws <see cref="ArgumentException"/> naming the first weight whose shape differs from the config.
    /// </summary>
    public void Validate()
    {
        var c = Config;
        int d = c.Dim, q = c.NHeads * c.HeadDim, kv = c.NKvHeads * c.HeadDim, f = c.HiddenDim, v = c.VocabSize;
        Matrix("TokenEmbedding", TokenEmbedding, v, d);
        Matrix("Output", Output, v, d);
        Vector("FinalNorm", FinalNorm, d);
        if (Layers is null || Layers.Count != c.NLayers)
        {
            throw new ArgumentException($"weights hold {Layers?.Count ?? 0} layers; config expects {c.NLayers}");
        }
        for (int i = 0; i < Layers.Count; i++)
        {
            var l = Layers[i] ?? throw new ArgumentException($"layer {i} is null");
            string p = $"Layers[{i}].";
            Vector(p + "AttentionNorm", l.AttentionNorm, d);
            Matrix(p + "Wq", l.Wq, q, d);
            Matrix(p + "Wk", l.Wk, kv, d);
            Matrix(p + "Wv", l.Wv, kv, d);
            Matrix(p + "Wo", l.Wo, d, q);
            Vector(p + "FfnNorm", l.FfnNorm, d);
            if (c.IsMoE)
            {
                if (l.Moe is null || l.FeedForward is not null)
                {
                    throw new ArgumentException($"{p}: config has {c.NExperts} experts; expected Moe set and FeedForward null");
                }
                Matrix(p + "Moe.Router", l.Moe.Router, c.NExperts, d);
                if (l.Moe.Experts is null || l.Moe.Experts.Count != c.NExperts)
                {
                    throw new ArgumentException($"{p}Moe holds {l.Moe.Experts?.Count ?? 0} experts; config expects {c.NExperts}");
                }
                for (int e = 0; e < c.NExperts; e++)
                {
                    Ffn($"{p}Moe.Experts[{e}].", l.Moe.Experts[e], d, f);
                }
            }
            else
            {
                if (l.FeedForward is null || l.Moe is not null)
                {
                    throw new ArgumentException($"{p}: config is dense; expected FeedForward set and Moe null");
                }
                Ffn(p + "FeedForward.", l.FeedForward, d, f);
            }
        }
    }

    private static void Ffn(string name, FeedForwardWeights ffn, int d, int f)
    {
        if (ffn is null)
        {
            throw new ArgumentException($"{name} is null");
        }
        Matrix(name + "W1", ffn.W1, f, d);
        Matrix(name + "W2", ffn.W2, d, f);
        Matrix(name + "W3", ffn.W3, f, d);
    }

    private static void Matrix(string name, WeightMatrix m, int rows, int cols)
    {
        if (m is null || m.Rows != rows || m.Cols != cols)
        {
            throw new ArgumentException($"{name} has shape {m?.ShapeText ?? "null"}; expected ({rows}, {cols})");
        }
    }

    private static void Vector(string name, float[] v, int n)
    {
        if (v is null || v.Length != n)
        {
            throw new ArgumentException($"{name} has {v?.Length.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "null"} values; expected ({n})");
        }
    }
}
