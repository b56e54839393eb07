using Bora.Formats;
using Bora.Numerics;

namespace Bora.Model.Tests;

public class WeightLoaderTests
{
    /// <summary>A loaded checkpoint holds the very same floats, so logits agree exactly.</summary>
    private const float ExactTolerance = 0f;

    public enum Scheme { Hf, Mistral, Gguf, GgufMergedExperts }

    /// <summary>Writes <paramref name="w"/> as a checkpoint under the naming scheme (HF with Wq/Wk permuted).</summary>
    private static InMemoryTensorStore ToStore(TransformerWeights w, Scheme scheme, bool writeOutput = true)
    {
        var c = w.Config;
        var s = new InMemoryTensorStore($"memory://{scheme}");
        void M(string name, WeightMatrix m) => s.Add(name, TestModels.Dense(m), m.Rows, m.Cols);
        void V(string name, float[] v) => s.Add(name, (float[])v.Clone(), v.Length);
        (string Emb, string Norm, string Out) top = scheme switch
        {
            Scheme.Hf => ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"),
            Scheme.Mistral => ("tok_embeddings.weight", "norm.weight", "output.weight"),
            _ => ("token_embd.weight", "output_norm.weight", "output.weight"),
        };
        M(top.Emb, w.TokenEmbedding);
        V(top.Norm, w.FinalNorm);
        if (writeOutput)
        {
            M(top.Out, w.Output);
        }
        for (int i = 0; i < c.NLayers; i++)
        {
            var l = w.Layers[i];
            switch (scheme)
            {
                case Scheme.Hf:
                    {
                        string p = $"model.layers.{i}.";
                        V(p + "input_layernorm.weight", l.AttentionNorm);
                        V(p + "post_attention_layernorm.weight", l.FfnNorm);
                        s.Add(p + "self_attn.q_proj.weight", HfRopePermutation.Permute(TestModels.Dense(l.Wq), c.NHeads, l.Wq.Rows, l.Wq.Cols), l.Wq.Rows, l.Wq.Cols);
                        s.Add(p + "self_attn.k_proj.weight", HfRopePermutation.Permute(TestModels.Dense(l.Wk), c.NKvHeads, l.Wk.Rows, l.Wk.Cols), l.Wk.Rows, l.Wk.Cols);
                        M(p + "self_attn.v_proj.weight", l.Wv);
                        M(p + "self_attn.o_proj.weight", l.Wo);
                        if (l.Moe is { } moe)
                        {
                            M(p + "block_sparse_moe.gate.weight", moe.Router);
                            for (int e = 0; e < moe.Experts.Count; e++)
                            {
                                M($"{p}block_sparse_moe.experts.{e}.w1.weight", moe.Experts[e].W1);
                                M($"{p}block_sparse_moe.experts.{e}.w2.weight", moe.Experts[e].W2);
                                M($"{p}block_sparse_moe.experts.{e}.w3.weight", moe.Experts[e].W3);
                            }
                        }
                        else
                        {
                            M(p + "mlp.gate_proj.weight", l.FeedForward!.W1);
                            M(p + "mlp.down_proj.weight", l.FeedForward.W2);
                            M(p + "mlp.up_proj.weight", l.FeedForward.W3);
                        }
                        break;
                    }
                case Scheme.Mistral:
                    {
                        string p = $"layers.{i}.";
                        V(p + "attention_norm.weight", l.AttentionNorm);
                        V(p + "ffn_norm.weight", l.FfnNorm);
                        M(p + "attention.wq.weight", l.Wq);
                        M(p + "attention.wk.weight", l.Wk);
                        M(p + "attention.wv.weight", l.Wv);
                        M(p + "attention.wo.weight", l.Wo);
                        var experts = l.Moe?.Experts ?? [l.FeedForward!];
                        if (l.Moe is { } moe)
                        {
                            M(p + "feed_forward.gate.weight", moe.Router);
                        }
                        for (int e = 0; e < experts.Count; e++)
                        {
                            string q = l.Moe is null ? p + "feed_forward." : $"{p}feed_forward.experts.{e}.";
                            M(q + "w1.weight", experts[e].W1);
                            M(q + "w2.weight", experts[e].W2);
                            M(q + "w3.weight", experts[e].W3);
                        }
                        break;
                    }
                default:
                    {
                        string p = $"blk.{i}.";
                        V(p + "attn_norm.weight", l.AttentionNorm);
                        V(p + "ffn_norm.weight", l.FfnNorm);
                        M(p + "attn_q.weight", l.Wq);
                        M(p + "attn_k.weight", l.Wk);
                        M(p + "attn_v.weight", l.Wv);
                        M(p + "attn_output.weight", l.Wo);
                        if (l.Moe is { } moe)
                        {
                            M(p + "ffn_gate_inp.weight", moe.Router);
                            if (scheme == Scheme.GgufMergedExperts)
                            {
                                int n = moe.Experts.Count;
                                s.Add(p + "ffn_gate_exps.weight", [.. moe.Experts.SelectMany(e => TestModels.Dense(e.W1))], n, c.HiddenDim, c.Dim);
                                s.Add(p + "ffn_down_exps.weight", [.. moe.Experts.SelectMany(e => TestModels.Dense(e.W2))], n, c.Dim, c.HiddenDim);
                                s.Add(p + "ffn_up_exps.weight", [.. moe.Experts.SelectMany(e => TestModels.Dense(e.W3))], n, c.HiddenDim, c.Dim);
                            }
                            else
                            {
                                for (int e = 0; e < moe.Experts.Count; e++)
                                {
                                    M($"{p}ffn_gate.{e}.weight", moe.Experts[e].W1);
                                    M($"{p}ffn_down.{e}.weight", moe.Experts[e].W2);
                                    M($"{p}ffn_up.{e}.weight", moe.Experts[e].W3);
                                }
                            }
                        }
                        else
                        {
                            M(p + "ffn_gate.weight", l.FeedForward!.W1);
                            M(p + "ffn_down.weight", l.FeedForward.W2);
                            M(p + "ffn_up.weight", l.FeedForward.W3);
                        }
                        break;
                    }
            }
        }
        return s;
    }

    [Theory]
    [InlineData(false, Scheme.Hf, WeightNaming.HuggingFace)]
    [InlineData(false, Scheme.Mistral, WeightNaming.MistralConsolidated)]
    [InlineData(false, Scheme.Gguf, WeightNaming.Gguf)]
    [InlineData(true, Scheme.Hf, WeightNaming.HuggingFace)]
    [InlineData(true, Scheme.Mistral, WeightNaming.MistralConsolidated)]
    [InlineData(true, Scheme.Gguf, WeightNaming.Gguf)]
    [InlineData(true, Scheme.GgufMergedExperts, WeightNaming.Gguf)]
    public void Every_naming_scheme_loads_the_same_model(bool moe, Scheme scheme, WeightNaming naming)
    {
        var original = TestModels.Random(moe ? TestModels.Moe() : TestModels.Dense(), seed: 21);
        var tokens = TestModels.Tokens(12, 50, 22);
        var expected = TestModels.Prefill(new Transformer(original), tokens);
        using var store = ToStore(original, scheme);
        Assert.Equal(naming, WeightLoader.DetectNaming(store));
        var loaded = WeightLoader.Load(store, original.Config);
        Assert.False(loaded.Config.TiedEmbeddings);
        TestModels.AssertClose(expected, TestModels.Prefill(new Transformer(loaded), tokens), ExactTolerance, scheme.ToString());
    }

    [Fact]
    public void Hf_permuted_weights_without_unpermuting_give_different_logits()
    {
        // Guards the previous test: the permutation is not a no-op for this model.
        var original = TestModels.Random(TestModels.Dense(), seed: 23);
        using var store = ToStore(original, Scheme.Hf);
        var tokens = TestModels.Tokens(12, 50, 24);
        var raw = WeightLoader.Load(store, original.Config, (s, src) => new F32Matrix(s.ReadFloat32(src.Tensor), src.Rows, src.Cols));
        Assert.True(TestModels.MaxAbsDiff(TestModels.Prefill(new Transformer(original), tokens), TestModels.Prefill(new Transformer(raw), tokens)) > 1e-2f);
    }

    [Fact]
    public void Merged_gguf_experts_are_converted_once_per_tensor()
    {
        var original = TestModels.Random(TestModels.Moe(), seed: 25);
        using var store = ToStore(original, Scheme.GgufMergedExperts);
        WeightLoader.Load(store, original.Config);
        Assert.Equal(store.Tensors.Count, store.ReadCount);
    }

    [Fact]
    public void Absent_output_ties_for_gguf_and_when_the_config_says_so()
    {
        var original = TestModels.Random(TestModels.Dense(), seed: 26, tied: true);
        using var gguf = ToStore(original, Scheme.Gguf, writeOutput: false);
        var loaded = WeightLoader.Load(gguf, original.Config with { TiedEmbeddings = false });
        Assert.True(loaded.Config.TiedEmbeddings);
        Assert.Same(loaded.TokenEmbedding, loaded.Output);

        using var hf = ToStore(original, Scheme.Hf, writeOutput: false);
        var tiedHf = WeightLoader.Load(hf, original.Config);
        Assert.Same(tiedHf.TokenEmbedding, tiedHf.Output);
        var ex = Assert.Throws<ModelFormatException>(() => WeightLoader.Load(hf, original.Config with { TiedEmbeddings = false }));
        Assert.Contains("'lm_head.weight' (output head) is missing", ex.Message);
    }

    [Fact]
    public void Missing_tensor_names_it_and_the_scheme()
    {
        var original = TestModels.Random(TestModels.Moe(), seed: 27);
        using var store = ToStore(original, Scheme.Mistral);
        store.Remove("layers.1.feed_forward.experts.2.w3.weight");
        var ex = Assert.Throws<ModelFormatException>(() => WeightLoader.Load(store, original.Config));
        Assert.Equal("memory://Mistral: tensor 'layers.1.feed_forward.experts.2.w3.weight' (layer 1 expert 2 W3 (up)) is missing; the checkpoint uses the Mistral consolidated naming scheme", ex.Message);
    }

    [Fact]
    public void Shape_mismatch_names_tensor_shape_and_expected_shape()
    {
        var original = TestModels.Random(TestModels.Dense(), seed: 28);
        using var store = ToStore(original, Scheme.Gguf);
        store.Add("blk.0.attn_k.weight", new float[32 * 32], 32, 32);
        var ex = Assert.Throws<ModelFormatException>(() => WeightLoader.Load(store, original.Config));
        Assert.Equal("memory://Gguf: tensor 'blk.0.attn_k.weight' (layer 0 Wk) has shape (32, 32); expected (24, 32)", ex.Message);

        using var hf = ToStore(original, Scheme.Hf);
        hf.Add("model.norm.weight", new float[31], 31);
        Assert.Contains("'model.norm.weight' (final norm) has shape (31); expected (32)", Assert.Throws<ModelFormatException>(() => WeightLoader.Load(hf, original.Config)).Message);
    }

    [Fact]
    public void Unknown_naming_is_a_format_error()
    {
        using var store = new InMemoryTensorStore("memory://odd");
        store.Add("transformer.wte.weight", new float[4], 2, 2);
        var ex = Assert.Throws<ModelFormatException>(() => WeightLoader.DetectNaming(store));
        Assert.Contains("memory://odd", ex.Message);
        Assert.Contains("token_embd.weight", ex.Message);
    }

    [Fact]
    public void Permutation_round_trips_and_matches_the_worked_example()
    {
        // One head of Dh = 4, rows (a0, b0, a1, b1) -> HF rows (a0, a1, b0, b1).
        float[] w = [10, 11, 20, 21, 30, 31, 40, 41]; // rows a0=(10,11) b0=(20,21) a1=(30,31) b1=(40,41)
        Assert.Equal([10, 11, 30, 31, 20, 21, 40, 41], HfRopePermutation.Permute(w, 1, 4, 2));
        Assert.Equal([0, 3, 1, 4, 2, 5], HfRopePermutation.UnpermuteRowOrder(1, 6));

        var rng = new Random(29);
        foreach (var (heads, dh, cols) in new[] { (1, 2, 3), (4, 8, 5), (8, 128 / 8, 7), (3, 6, 1) })
        {
            var m = TestModels.Uniform(rng, heads * dh * cols, 1f);
            var p = HfRopePermutation.Permute(m, heads, heads * dh, cols);
            Assert.Equal(m, HfRopePermutation.Unpermute(p, heads, heads * dh, cols));
            if (dh > 2)
            {
                Assert.NotEqual(m, p);
            }
        }
        Assert.Throws<ArgumentException>(() => HfRopePermutation.Permute(new float[6], 2, 3, 2));
    }

    /// <summary>
    /// 16-bit weights: float32 products over the same widened values, summed in another order (see
    /// QuantKernels.HalfMatrixTests.SumOrderTolerance), relative to the largest logit.
    /// </summary>
    private const float HalfLogitTolerance = 1e-4f;

    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void Hf_safetensors_in_16_bits_load_as_half_matrices_over_the_mapped_file(DType type)
    {
        var original = TestModels.Random(TestModels.Dense(), seed: 25);
        using var memory = ToStore(original, Scheme.Hf);
        string dir = TestPaths.NewTempDir("st16");
        try
        {
            string path = Path.Combine(dir, "model.safetensors");
            Bora.Formats.Safetensors.SafetensorsWriter.Write(path, memory.Tensors.Select(t =>
                TensorData.FromFloat32(t.Name, t.Shape.Length == 1 ? DType.F32 : type, t.Shape, memory.ReadFloat32(t))));
            using var store = Bora.Formats.Safetensors.SafetensorsFile.Open(path);
            using var mapper = new WeightMapper();
            var halves = WeightLoader.Load(store, original.Config, mapper.Create);
            var widened = WeightLoader.Load(store, original.Config, WeightLoader.ReadF32Matrix);

            // Wq / Wk rows are un-permuted, so they are copied (still 16-bit); everything else is read in place.
            var wq = Assert.IsType<HalfMatrix>(halves.Layers[0].Wq);
            Assert.Null(wq.Storage.Path);
            Assert.Equal(type, wq.Type);
            Assert.Equal(Path.GetFullPath(path), Assert.IsType<HalfMatrix>(halves.Layers[1].Wv).Storage.Path);
            long qk = halves.Layers.Sum(l => 2L * (l.Wq.Rows * l.Wq.Cols + l.Wk.Rows * l.Wk.Cols));
            Assert.Equal(qk, mapper.CopiedBytes);
            long matrices = store.Tensors.Where(t => t.Shape.Length == 2).Sum(t => t.ByteLength);
            Assert.Equal(matrices - qk, mapper.MappedBytes);

            var tokens = TestModels.Tokens(12, 50, 26);
            var expected = TestModels.Prefill(new Transformer(widened), tokens);
            float scale = expected.Max(MathF.Abs);
            TestModels.AssertClose(expected, TestModels.Prefill(new Transformer(halves), tokens), HalfLogitTolerance * scale, $"{type} safetensors");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
