using Bora.Formats;
using Bora.Numerics;

namespace Bora.Model;

/// <summary>The checkpoint tensor naming schemes <see cref="WeightLoader"/> recognises.</summary>
public enum WeightNaming
{
    /// <summary>transformers: model.embed_tokens.weight, model.layers.{i}.self_attn.q_proj.weight, ... (Wq/Wk rows permuted for rotate-half RoPE).</summary>
    HuggingFace,

    /// <summary>mistral-inference consolidated: tok_embeddings.weight, layers.{i}.attention.wq.weight, ...</summary>
    MistralConsolidated,

    /// <summary>GGUF llama: token_embd.weight, blk.{i}.attn_q.weight, ...</summary>
    Gguf,
}

/// <summary>
/// Where one weight matrix comes from: a (Rows, Cols) tensor, or slice <see cref="Slice"/> of an
/// (E, Rows, Cols) tensor (GGUF merged experts). When <see cref="RowOrder"/> is set, row r of the
/// matrix is stored row RowOrder[r] (the HF un-permutation of Wq/Wk).
/// </summary>
/// <param name="Tensor">The stored tensor.</param>
/// <param name="Slice">Outer index into a 3-D tensor, or -1 for a 2-D tensor.</param>
/// <param name="Rows">Rows of the matrix.</param>
/// <param name="Cols">Columns of the matrix.</param>
/// <param name="RowOrder">Stored row for each matrix row, or null for the stored order.</param>
public readonly record struct MatrixSource(TensorInfo Tensor, int Slice, int Rows, int Cols, int[]? RowOrder);

/// <summary>
/// Builds a <see cref="WeightMatrix"/> from its stored tensor. The default reads float32
/// (<see cref="ITensorStore.ReadFloat32"/>); a quantized implementation can keep the blocks instead.
/// </summary>
public delegate WeightMatrix WeightMatrixFactory(ITensorStore store, MatrixSource source);

/// <summary>
/// Loads <see cref="TransformerWeights"/> from a checkpoint in any of the <see cref="WeightNaming"/>
/// schemes, checking every tensor's shape against the config.
/// </summary>
public static class WeightLoader
{
    /// <summary>Names the scheme from the embedding tensor's name (or, failing that, the layer prefix).</summary>
    public static WeightNaming DetectNaming(ITensorStore store)
    {
        ArgumentNullException.ThrowIfNull(store);
        if (store.TryGetTensor("model.embed_tokens.weight", out _))
        {
            return WeightNaming.HuggingFace;
        }
        if (store.TryGetTensor("tok_embeddings.weight", out _))
        {
            return WeightNaming.MistralConsolidated;
        }
        if (store.TryGetTensor("token_embd.weight", out _))
        {
            return WeightNaming.Gguf;
        }
        foreach (var t in store.Tensors)
        {
            if (t.Name.StartsWith("model.layers.", StringComparison.Ordinal))
            {
                return WeightNaming.HuggingFace;
            }
            if (t.Name.StartsWith("layers.", StringComparison.Ordinal))
            {
                return WeightNaming.MistralConsolidated;
            }
            if (t.Name.StartsWith("blk.", StringComparison.Ordinal))
            {
                return WeightNaming.Gguf;
            }
        }
        throw ModelFormatException.In(store.Path,
            "cannot tell the tensor naming scheme: expected 'model.embed_tokens.weight' (Hugging Face), 'tok_embeddings.weight' (Mistral) or 'token_embd.weight' (GGUF)");
    }

    /// <summary>
    /// Reads all weights. Output is tied to the embedding when the output tensor is absent and either
    /// the config says tied or the checkpoint is GGUF (the returned Config then has TiedEmbeddings set).
    /// </summary>
    public static TransformerWeights Load(ITensorStore store, ModelConfig config, WeightMatrixFactory? matrixFactory = null)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(config);
        config.Validate(store.Path);
        var naming = DetectNaming(store);
        var reader = new Reader(store, naming, matrixFactory ?? new F32Factory().Create);
        return naming switch
        {
            WeightNaming.HuggingFace => LoadHf(reader, config),
            WeightNaming.MistralConsolidated => LoadMistral(reader, config),
            _ => LoadGguf(reader, config),
        };
    }

    /// <summary>The default factory: reads float32 and builds an <see cref="F32Matrix"/>.</summary>
    public static WeightMatrix ReadF32Matrix(ITensorStore store, MatrixSource source) => new F32Factory().Create(store, source);

    /// <summary>
    /// A factory that keeps GGUF block formats (Q8_0, Q4_0, Q4_K, Q6_K) as a <see cref="QuantizedMatrix"/> and
    /// F16 / BF16 as a <see cref="HalfMatrix"/>, reading them straight from a memory mapping of the file (no copy; see
    /// <see cref="WeightMapper"/>, one per store, kept alive by the matrices), and reads every other type as
    /// <see cref="ReadF32Matrix"/> does. Matrices with re-ordered rows (HF Wq / Wk) are copied, still unexpanded.
    /// </summary>
    public static WeightMatrix ReadQuantizedMatrix(ITensorStore store, MatrixSource source)
    {
        ArgumentNullException.ThrowIfNull(store);
        return s_mappers.GetValue(store, _ => new WeightMapper()).Create(store, source);
    }

    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<ITensorStore, WeightMapper> s_mappers = [];

    private static TransformerWeights LoadHf(Reader r, ModelConfig c) => Finish(r, c,
        "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
        Layers(r, c, "model.layers.", HfLayerNames, unpermuteQk: true,
            moe: (p, what) => PerTensorExperts(r, c, p + "block_sparse_moe.", what),
            ffn: (p, what) => PerExpert(r, c, p + "mlp.", "gate_proj.weight", "down_proj.weight", "up_proj.weight", what)),
        tieIfAbsent: c.TiedEmbeddings);

    private static TransformerWeights LoadMistral(Reader r, ModelConfig c) => Finish(r, c,
        "tok_embeddings.weight", "norm.weight", "output.weight",
        Layers(r, c, "layers.", MistralLayerNames, unpermuteQk: false,
            moe: (p, what) => PerTensorExperts(r, c, p + "feed_forward.", what),
            ffn: (p, what) => PerExpert(r, c, p + "feed_forward.", "w1.weight", "w2.weight", "w3.weight", what)),
        tieIfAbsent: c.TiedEmbeddings);

    private static TransformerWeights LoadGguf(Reader r, ModelConfig c) => Finish(r, c,
        "token_embd.weight", "output_norm.weight", "output.weight",
        Layers(r, c, "blk.", GgufLayerNames, unpermuteQk: false,
            moe: (p, what) => GgufExperts(r, c, p, what),
            ffn: (p, what) => PerExpert(r, c, p, "ffn_gate.weight", "ffn_down.weight", "ffn_up.weight", what)),
        tieIfAbsent: true);

    /// <summary>GGUF MoE: a router, and the experts either merged into one (E, rows, cols) tensor per matrix or one tensor each.</summary>
    private static MoeWeights GgufExperts(Reader r, ModelConfig c, string p, string what)
    {
        var router = r.Matrix(p + "ffn_gate_inp.weight", what + "router", c.NExperts, c.Dim);
        FeedForwardWeights[] experts;
        if (r.Has(p + "ffn_gate_exps.weight"))
        {
            // Slice each merged tensor for every expert in turn, so it is converted once.
            var w1 = Slices(r, p + "ffn_gate_exps.weight", $"{what}merged W1 (gate) experts", c.NExperts, c.HiddenDim, c.Dim);
            var w2 = Slices(r, p + "ffn_down_exps.weight", $"{what}merged W2 (down) experts", c.NExperts, c.Dim, c.HiddenDim);
            var w3 = Slices(r, p + "ffn_up_exps.weight", $"{what}merged W3 (up) experts", c.NExperts, c.HiddenDim, c.Dim);
            experts = [.. Enumerable.Range(0, c.NExperts).Select(e => new FeedForwardWeights { W1 = w1[e], W2 = w2[e], W3 = w3[e] })];
        }
        else
        {
            experts = [.. Enumerable.Range(0, c.NExperts).Select(e => PerExpert(r, c, p, $"ffn_gate.{e}.weight", $"ffn_down.{e}.weight", $"ffn_up.{e}.weight", $"{what}expert {e} "))];
        }
        return new MoeWeights { Router = router, Experts = experts };
    }

    /// <summary>
    /// Reads every layer <c>{layerPrefix}{i}.</c>: its feed-forward weights first (<paramref name="moe"/> for an MoE
    /// config, else <paramref name="ffn"/>, each given the layer's prefix and "layer i " for messages), then its norms
    /// and attention matrices named by <paramref name="n"/>. With <paramref name="unpermuteQk"/> the Wq/Wk rows are
    /// un-permuted from HF's rotate-half order.
    /// </summary>
    private static LayerWeights[] Layers(Reader r, ModelConfig c, string layerPrefix, LayerNames n, bool unpermuteQk,
        Func<string, string, MoeWeights> moe, Func<string, string, FeedForwardWeights> ffn)
    {
        var layers = new LayerWeights[c.NLayers];
        for (int i = 0; i < c.NLayers; i++)
        {
            string p = $"{layerPrefix}{i}.";
            string what = $"layer {i} ";
            MoeWeights? m = c.IsMoE ? moe(p, what) : null;
            FeedForwardWeights? f = c.IsMoE ? null : ffn(p, what);
            layers[i] = new LayerWeights
            {
                AttentionNorm = r.Vector(p + n.AttentionNorm, what + "attention norm", c.Dim),
                Wq = r.Matrix(p + n.Wq, what + "Wq", c.NHeads * c.HeadDim, c.Dim,
                    unpermuteQk ? HfRopePermutation.UnpermuteRowOrder(c.NHeads, c.NHeads * c.HeadDim) : null),
                Wk = r.Matrix(p + n.Wk, what + "Wk", c.NKvHeads * c.HeadDim, c.Dim,
                    unpermuteQk ? HfRopePermutation.UnpermuteRowOrder(c.NKvHeads, c.NKvHeads * c.HeadDim) : null),
                Wv = r.Matrix(p + n.Wv, what + "Wv", c.NKvHeads * c.HeadDim, c.Dim),
                Wo = r.Matrix(p + n.Wo, what + "Wo", c.Dim, c.NHeads * c.HeadDim),
                FfnNorm = r.Vector(p + n.FfnNorm, what + "FFN norm", c.Dim),
                FeedForward = f,
                Moe = m,
            };
        }
        return layers;
    }

    /// <summary>A layer's attention and norm tensor names (after the layer prefix) in one naming scheme.</summary>
    private sealed record LayerNames(string AttentionNorm, string Wq, string Wk, string Wv, string Wo, string FfnNorm);

    private static readonly LayerNames HfLayerNames = new("input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
        "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight");

    private static readonly LayerNames MistralLayerNames = new("attention_norm.weight", "attention.wq.weight", "attention.wk.weight",
        "attention.wv.weight", "attention.wo.weight", "ffn_norm.weight");

    private static readonly LayerNames GgufLayerNames = new("attn_norm.weight", "attn_q.weight", "attn_k.weight",
        "attn_v.weight", "attn_output.weight", "ffn_norm.weight");

    /// <summary>A router <c>{prefix}gate.weight</c> and one tensor per expert matrix, <c>{prefix}experts.{e}.w1.weight</c> ... (HF and Mistral MoE).</summary>
    private static MoeWeights PerTensorExperts(Reader r, ModelConfig c, string prefix, string what) => new()
    {
        Router = r.Matrix(prefix + "gate.weight", what + "router", c.NExperts, c.Dim),
        Experts = [.. Enumerable.Range(0, c.NExperts).Select(e => PerExpert(r, c, $"{prefix}experts.{e}.", "w1.weight", "w2.weight", "w3.weight", $"{what}expert {e} "))],
    };

    private static WeightMatrix[] Slices(Reader r, string name, string what, int experts, int rows, int cols) =>
        [.. Enumerable.Range(0, experts).Select(e => r.ExpertSlice(name, what, e, experts, rows, cols))];

    private static FeedForwardWeights PerExpert(Reader r, ModelConfig c, string prefix, string w1, string w2, string w3, string what) => new()
    {
        W1 = r.Matrix(prefix + w1, what + "W1 (gate)", c.HiddenDim, c.Dim),
        W2 = r.Matrix(prefix + w2, what + "W2 (down)", c.Dim, c.HiddenDim),
        W3 = r.Matrix(prefix + w3, what + "W3 (up)", c.HiddenDim, c.Dim),
    };

    private static TransformerWeights Finish(Reader r, ModelConfig c, string embedding, string norm, string output, LayerWeights[] layers, bool tieIfAbsent)
    {
        var emb = r.Matrix(embedding, "token embedding", c.VocabSize, c.Dim);
        bool tied = !r.Has(output) && tieIfAbsent;
        var weights = new TransformerWeights
        {
            Config = tied ? c with { TiedEmbeddings = true } : c,
            TokenEmbedding = emb,
            Layers = layers,
            FinalNorm = r.Vector(norm, "final norm", c.Dim),
            Output = tied ? emb : r.Matrix(output, "output head", c.VocabSize, c.Dim),
        };
        weights.Validate();
        return weights;
    }

    /// <summary>Looks tensors up by name and checks their shapes, with messages naming the file, tensor and scheme.</summary>
    private sealed class Reader(ITensorStore store, WeightNaming naming, WeightMatrixFactory factory)
    {
        public bool Has(string name) => store.TryGetTensor(name, out _);

        public float[] Vector(string name, string what, int n)
        {
            var info = Get(name, what);
            CheckShape(info, what, [n]);
            var data = store.ReadFloat32(info);
            if (data.Length != n)
            {
                throw ModelFormatException.In(store.Path, $"tensor '{name}' ({what}) read back {data.Length} values; expected {n}");
            }
            return data;
        }

        public WeightMatrix Matrix(string name, string what, int rows, int cols, int[]? rowOrder = null)
        {
            var info = Get(name, what);
            CheckShape(info, what, [rows, cols]);
            return Build(new MatrixSource(info, -1, rows, cols, rowOrder), name, what);
        }

        public WeightMatrix ExpertSlice(string name, string what, int expert, int experts, int rows, int cols)
        {
            var info = Get(name, what);
            CheckShape(info, what, [experts, rows, cols]);
            return Build(new MatrixSource(info, expert, rows, cols, null), name, what);
        }

        private WeightMatrix Build(MatrixSource source, string name, string what)
        {
            var m = factory(store, source);
            if (m.Rows != source.Rows || m.Cols != source.Cols)
            {
                throw ModelFormatException.In(store.Path, $"tensor '{name}' ({what}) was built as {m.ShapeText}; expected ({source.Rows}, {source.Cols})");
            }
            return m;
        }

        private TensorInfo Get(string name, string what)
        {
            if (!store.TryGetTensor(name, out var info))
            {
                throw ModelFormatException.In(store.Path, $"tensor '{name}' ({what}) is missing; the checkpoint uses the {Describe(naming)} naming scheme");
            }
            return info;
        }

        private void CheckShape(TensorInfo info, string what, long[] expected)
        {
            if (!info.Shape.AsSpan().SequenceEqual(expected))
            {
                throw ModelFormatException.In(store.Path, $"tensor '{info.Name}' ({what}) has shape {info.ShapeText}; expected ({string.Join(", ", expected)})");
            }
        }

        private static string Describe(WeightNaming n) => n switch
        {
            WeightNaming.HuggingFace => "Hugging Face",
            WeightNaming.MistralConsolidated => "Mistral consolidated",
            _ => "GGUF llama",
        };
    }

    /// <summary>
    /// Float32 matrices from <see cref="ITensorStore.ReadFloat32"/>. Keeps the last tensor read so
    /// the E slices of a merged GGUF expert tensor convert it once, not E times.
    /// </summary>
    private sealed class F32Factory
    {
        private string? _lastName;
        private float[]? _lastData;

        public WeightMatrix Create(ITensorStore store, MatrixSource source)
        {
            float[] all;
            if (_lastName == source.Tensor.Name && _lastData is not null)
            {
                all = _lastData;
            }
            else
            {
                all = store.ReadFloat32(source.Tensor);
                (_lastName, _lastData) = source.Slice >= 0 ? (source.Tensor.Name, all) : (null, null);
            }
            long size = (long)source.Rows * source.Cols;
            long start = source.Slice >= 0 ? source.Slice * size : 0;
            if (start + size > all.LongLength)
            {
                throw ModelFormatException.In(store.Path, $"tensor '{source.Tensor.Name}' read back {all.LongLength} values; expected at least {start + size}");
            }
            float[] data;
            if (source.Slice < 0 && source.RowOrder is null && all.LongLength == size)
            {
                data = all;
            }
            else
            {
                data = new float[size];
                var src = all.AsSpan((int)start, (int)size);
                for (int r = 0; r < source.Rows; r++)
                {
                    int from = source.RowOrder?[r] ?? r;
                    src.Slice(from * source.Cols, source.Cols).CopyTo(data.AsSpan(r * source.Cols, source.Cols));
                }
            }
            return new F32Matrix(data, source.Rows, source.Cols);
        }
    }
}
