using System.Numerics;
using Bora.Formats;
using Bora.Generation;
using Bora.Model;
using Bora.Numerics;

namespace Bora.Training;

/// <summary>
/// One trainable tensor: its checkpoint name (mistral-inference consolidated naming, so a saved model
/// is a normal Mistral-layout folder), its outermost-first shape, its values and its gradient.
/// </summary>
public sealed class Parameter<T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    public Parameter(string name, long[] shape, bool decay)
        : this(name, shape, decay, allocate: true)
    {
    }

    /// <summary>
    /// With <paramref name="allocate"/> false, Data and Grad are empty (a frozen weight whose products an
    /// <see cref="ILinearOp{T}"/> supplies); with <paramref name="allocateGrad"/> false only Grad is (a frozen
    /// weight read directly, such as the token embedding under LoRA: its gradient is skipped).
    /// </summary>
    internal Parameter(string name, long[] shape, bool decay, bool allocate, bool allocateGrad = true)
    {
        long n = 1;
        foreach (var d in shape)
        {
            n = checked(n * d);
        }
        Name = name;
        Shape = shape;
        Decay = decay;
        Data = allocate ? new T[n] : [];
        Grad = allocate && allocateGrad ? new T[n] : [];
    }

    /// <summary>Checkpoint tensor name, e.g. <c>layers.0.attention.wq.weight</c>.</summary>
    public string Name { get; }

    /// <summary>Outermost-first shape: (rows, cols) for matrices, (n) for norm weights.</summary>
    public long[] Shape { get; }

    /// <summary>True for matrices (weight decay applies); false for norm weights.</summary>
    public bool Decay { get; }

    /// <summary>Values, row-major.</summary>
    public T[] Data { get; }

    /// <summary>Gradient of the loss, same layout; accumulated by backward passes until cleared.</summary>
    public T[] Grad { get; }

    public int Length => Data.Length;
}

/// <summary>Trainable weights of one SwiGLU feed-forward (a dense FFN or one expert). Shapes as <see cref="FeedForwardWeights"/>.</summary>
public sealed class FfnParameters<T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>Gate, (F, D).</summary>
    public required Parameter<T> W1 { get; init; }

    /// <summary>Down, (D, F).</summary>
    public required Parameter<T> W2 { get; init; }

    /// <summary>Up, (F, D).</summary>
    public required Parameter<T> W3 { get; init; }
}

/// <summary>Trainable weights of one transformer block. Shapes as <see cref="LayerWeights"/>.</summary>
public sealed class LayerParameters<T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>(D).</summary>
    public required Parameter<T> AttentionNorm { get; init; }

    /// <summary>(Hq * Dh, D), interleaved-pair RoPE order.</summary>
    public required Parameter<T> Wq { get; init; }

    /// <summary>(Hkv * Dh, D), interleaved-pair RoPE order.</summary>
    public required Parameter<T> Wk { get; init; }

    /// <summary>(Hkv * Dh, D).</summary>
    public required Parameter<T> Wv { get; init; }

    /// <summary>(D, Hq * Dh).</summary>
    public required Parameter<T> Wo { get; init; }

    /// <summary>(D).</summary>
    public required Parameter<T> FfnNorm { get; init; }

    /// <summary>Dense FFN, or null in an MoE layer.</summary>
    public FfnParameters<T>? FeedForward { get; init; }

    /// <summary>Router, (E, D), or null in a dense layer.</summary>
    public Parameter<T>? Router { get; init; }

    /// <summary>E experts, empty in a dense layer.</summary>
    public IReadOnlyList<FfnParameters<T>> Experts { get; init; } = [];
}

/// <summary>
/// All trainable weights of a Mistral / Mixtral decoder, each with its gradient. Letters as in
/// <see cref="ModelConfig"/>. Built from a config with a seeded initialisation, or from loaded
/// <see cref="TransformerWeights"/>; converts back to <see cref="TransformerWeights"/> and to
/// safetensors tensors under mistral-inference names.
/// </summary>
public sealed class ModelParameters<T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    private ModelParameters(ModelConfig config, bool allocateMatrices = true)
    {
        Config = config;
        int d = config.Dim, q = config.NHeads * config.HeadDim, kv = config.NKvHeads * config.HeadDim, f = config.HiddenDim;
        var all = new List<Parameter<T>>();
        Parameter<T> Add(string name, bool decay, params long[] shape)
        {
            bool embedding = name == "tok_embeddings.weight";
            var p = new Parameter<T>(name, shape, decay, allocateMatrices || !decay || embedding, allocateGrad: allocateMatrices || !embedding);
            all.Add(p);
            return p;
        }
        FfnParameters<T> Ffn(string prefix) => new()
        {
            W1 = Add(prefix + "w1.weight", true, f, d),
            W2 = Add(prefix + "w2.weight", true, d, f),
            W3 = Add(prefix + "w3.weight", true, f, d),
        };
        TokenEmbedding = Add("tok_embeddings.weight", true, config.VocabSize, d);
        var layers = new LayerParameters<T>[config.NLayers];
        for (int i = 0; i < layers.Length; i++)
        {
            string p = $"layers.{i}.";
            // The Add calls run in written order, which fixes the order of the parameter list.
            layers[i] = new LayerParameters<T>
            {
                AttentionNorm = Add(p + "attention_norm.weight", false, d),
                Wq = Add(p + "attention.wq.weight", true, q, d),
                Wk = Add(p + "attention.wk.weight", true, kv, d),
                Wv = Add(p + "attention.wv.weight", true, kv, d),
                Wo = Add(p + "attention.wo.weight", true, d, q),
                FfnNorm = Add(p + "ffn_norm.weight", false, d),
                FeedForward = config.IsMoE ? null : Ffn(p + "feed_forward."),
                Router = config.IsMoE ? Add(p + "feed_forward.gate.weight", true, config.NExperts, d) : null,
                Experts = config.IsMoE ? [.. Enumerable.Range(0, config.NExperts).Select(e => Ffn($"{p}feed_forward.experts.{e}."))] : [],
            };
        }
        Layers = layers;
        FinalNorm = Add("norm.weight", false, d);
        Output = config.TiedEmbeddings ? TokenEmbedding : Add("output.weight", true, config.VocabSize, d);
        All = all;
    }

    public ModelConfig Config { get; }

    /// <summary>(V, D).</summary>
    public Parameter<T> TokenEmbedding { get; }

    public IReadOnlyList<LayerParameters<T>> Layers { get; }

    /// <summary>(D).</summary>
    public Parameter<T> FinalNorm { get; }

    /// <summary>(V, D); the same object as <see cref="TokenEmbedding"/> when the config ties them.</summary>
    public Parameter<T> Output { get; }

    /// <summary>Every distinct parameter once, in checkpoint order (a tied head is not repeated).</summary>
    public IReadOnlyList<Parameter<T>> All { get; }

    /// <summary>Total trainable values.</summary>
    public long Count => All.Sum(p => (long)p.Length);

    /// <summary>
    /// Fresh weights for <paramref name="config"/>: norms 1; every matrix normal(0, 0.02) (GPT-2), the
    /// projections back into the residual stream (Wo, W2) scaled by 1/sqrt(2L) as GPT-2 does. The
    /// normal draws come from xoshiro256** (Box-Muller), so a seed gives the same model on every runtime.
    /// </summary>
    public static ModelParameters<T> Initialize(ModelConfig config, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.Validate("model config");
        var m = new ModelParameters<T>(config);
        var rng = new Xoshiro256StarStar(seed);
        double residualStd = 0.02 / Math.Sqrt(2.0 * config.NLayers);
        foreach (var p in m.All)
        {
            if (!p.Decay)
            {
                p.Data.AsSpan().Fill(T.One);
                continue;
            }
            bool residual = p.Name.EndsWith("attention.wo.weight", StringComparison.Ordinal) || p.Name.EndsWith("w2.weight", StringComparison.Ordinal);
            double std = residual ? residualStd : 0.02;
            for (int i = 0; i < p.Length; i++)
            {
                p.Data[i] = T.CreateTruncating(Normal(rng) * std);
            }
        }
        return m;
    }

    /// <summary>
    /// Copies the token embedding and the norm weights of <paramref name="weights"/> and leaves every other
    /// matrix unallocated (Data and Grad empty; the embedding has no Grad either): for a <see cref="TrainingModel{T}"/> whose linear products all
    /// come from <see cref="ILinearOp{T}"/>s over the original (possibly quantized) matrices, as LoRA does.
    /// </summary>
    internal static ModelParameters<T> EmbeddingAndNormsFrom(TransformerWeights weights) => CopyFrom(weights, matrices: false);

    /// <summary>Copies the values of loaded weights (any storage type; read as float32).</summary>
    public static ModelParameters<T> FromWeights(TransformerWeights weights) => CopyFrom(weights, matrices: true);

    private static ModelParameters<T> CopyFrom(TransformerWeights weights, bool matrices)
    {
        ArgumentNullException.ThrowIfNull(weights);
        weights.Validate();
        var m = new ModelParameters<T>(weights.Config, matrices);
        static void Copy(WeightMatrix src, Parameter<T> dst)
        {
            if (dst.Data.Length == 0)
            {
                return; // unallocated frozen matrix
            }
            var row = new float[src.Cols];
            for (int r = 0; r < src.Rows; r++)
            {
                src.ReadRow(r, row);
                for (int c = 0; c < row.Length; c++)
                {
                    dst.Data[r * src.Cols + c] = T.CreateTruncating(row[c]);
                }
            }
        }
        static void CopyVec(float[] src, Parameter<T> dst)
        {
            for (int i = 0; i < src.Length; i++)
            {
                dst.Data[i] = T.CreateTruncating(src[i]);
            }
        }
        static void CopyFfn(FeedForwardWeights src, FfnParameters<T> dst)
        {
            Copy(src.W1, dst.W1);
            Copy(src.W2, dst.W2);
            Copy(src.W3, dst.W3);
        }
        Copy(weights.TokenEmbedding, m.TokenEmbedding);
        for (int i = 0; i < m.Layers.Count; i++)
        {
            var s = weights.Layers[i];
            var d = m.Layers[i];
            CopyVec(s.AttentionNorm, d.AttentionNorm);
            Copy(s.Wq, d.Wq);
            Copy(s.Wk, d.Wk);
            Copy(s.Wv, d.Wv);
            Copy(s.Wo, d.Wo);
            CopyVec(s.FfnNorm, d.FfnNorm);
            if (s.Moe is { } moe)
            {
                Copy(moe.Router, d.Router!);
                for (int e = 0; e < moe.Experts.Count; e++)
                {
                    CopyFfn(moe.Experts[e], d.Experts[e]);
                }
            }
            else
            {
                CopyFfn(s.FeedForward!, d.FeedForward!);
            }
        }
        CopyVec(weights.FinalNorm, m.FinalNorm);
        if (!weights.Config.TiedEmbeddings)
        {
            Copy(weights.Output, m.Output);
        }
        return m;
    }

    /// <summary>A float32 copy as <see cref="TransformerWeights"/> for Bora's inference <see cref="Transformer"/>.</summary>
    public TransformerWeights ToWeights()
    {
        float[] F(Parameter<T> p) => [.. p.Data.Select(float.CreateTruncating)];
        F32Matrix M(Parameter<T> p) => new(F(p), (int)p.Shape[0], (int)p.Shape[1]);
        FeedForwardWeights Ffn(FfnParameters<T> f) => new() { W1 = M(f.W1), W2 = M(f.W2), W3 = M(f.W3) };
        var emb = M(TokenEmbedding);
        return new TransformerWeights
        {
            Config = Config,
            TokenEmbedding = emb,
            Layers = [.. Layers.Select(l => new LayerWeights
            {
                AttentionNorm = F(l.AttentionNorm),
                Wq = M(l.Wq),
                Wk = M(l.Wk),
                Wv = M(l.Wv),
                Wo = M(l.Wo),
                FfnNorm = F(l.FfnNorm),
                FeedForward = l.FeedForward is { } f ? Ffn(f) : null,
                Moe = l.Router is { } r ? new MoeWeights { Router = M(r), Experts = [.. l.Experts.Select(Ffn)] } : null,
            })],
            FinalNorm = F(FinalNorm),
            Output = Config.TiedEmbeddings ? emb : M(Output),
        };
    }

    /// <summary>The weights as F32 safetensors tensors under their checkpoint names, in <see cref="All"/> order.</summary>
    public IEnumerable<TensorData> ToTensors(string prefix = "") =>
        All.Select(p => Tensor(prefix + p.Name, p.Shape, p.Data));

    /// <summary>Sets every gradient to zero.</summary>
    public void ZeroGrad()
    {
        foreach (var p in All)
        {
            Array.Clear(p.Grad);
        }
    }

    internal static TensorData Tensor(string name, long[] shape, T[] values)
    {
        var f = new float[values.Length];
        for (int i = 0; i < f.Length; i++)
        {
            f[i] = float.CreateTruncating(values[i]);
        }
        return TensorData.FromFloat32(name, DType.F32, shape, f);
    }

    private static double Normal(Xoshiro256StarStar rng)
    {
        double u1 = 1.0 - rng.NextDouble(); // (0, 1]
        double u2 = rng.NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }
}
