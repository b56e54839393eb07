using Bora.Formats.Gguf;
using Bora.Numerics;

namespace Bora.Model.Tests.Moe;

/// <summary>The grouped, batched MoE path: routing groups and quantized experts run in batches.</summary>
public sealed class MoeExecutionTests
{
    /// <summary>
    /// Prefill against token-by-token decode: the attention and the non-expert products see different batch shapes
    /// (activation blocks quantized per token either way, float summation orders differ), measured drift ~1e-5 of
    /// logits O(1); 1e-3 leaves a wide margin and still catches a wrong row, token or weight (errors O(1)).
    /// </summary>
    private const float BatchingTolerance = 1e-3f;

    [Fact]
    public void GroupByExpertFollowsTheWorkedExample()
    {
        int[] starts = new int[4], tokens = new int[4];
        float[] weights = new float[4];
        MoeRouting.GroupByExpert([2, 0, 2, 1], 2, starts, tokens, weights, [0.6f, 0.4f, 0.7f, 0.3f]);
        Assert.Equal([0, 1, 2, 4], starts);
        Assert.Equal([0, 1, 0, 1], tokens);
        Assert.Equal([0.4f, 0.3f, 0.6f, 0.7f], weights);
    }

    [Fact]
    public void GroupByExpertEqualsAScanPerExpert()
    {
        var rng = new Random(3);
        const int t = 57, a = 2, e = 8;
        var selected = new int[t * a];
        var sw = new float[t * a];
        for (int i = 0; i < t; i++)
        {
            selected[i * a] = rng.Next(e);
            selected[i * a + 1] = (selected[i * a] + 1 + rng.Next(e - 1)) % e;
            sw[i * a] = rng.NextSingle();
            sw[i * a + 1] = rng.NextSingle();
        }
        int[] starts = new int[e + 1], tokens = new int[t * a];
        float[] weights = new float[t * a];
        MoeRouting.GroupByExpert(selected, a, starts, tokens, weights, sw);
        int r = 0;
        for (int x = 0; x < e; x++)
        {
            Assert.Equal(r, starts[x]);
            for (int i = 0; i < t * a; i++)
            {
                if (selected[i] == x)
                {
                    Assert.Equal(i / a, tokens[r]);
                    Assert.Equal(sw[i], weights[r]);
                    r++;
                }
            }
        }
        Assert.Equal(t * a, starts[e]);
        Assert.Throws<ArgumentException>(() => MoeRouting.GroupByExpert([0, 9], 2, starts, tokens, weights, [1f, 1f]));
    }

    /// <summary>
    /// Quantized experts go through <see cref="QuantizedProductBatch"/>; the same experts behind a wrapper that hides
    /// the type run product by product. Both use the same kernels on the same rows, so the logits are identical.
    /// </summary>
    [Theory]
    [InlineData(DType.Q4_0, 1)]
    [InlineData(DType.Q4_0, 40)]
    [InlineData(DType.Q8_0, 40)]
    public void BatchedQuantizedExpertsEqualExpertsRunOneByOne(DType type, int tokens)
    {
        var (batched, plain) = QuantizedMoe(type, seed: 21);
        var ids = TestModels.Tokens(tokens, batched.Config.VocabSize, 22);
        var a = TestModels.Prefill(new Transformer(batched), ids);
        var b = TestModels.Prefill(new Transformer(plain), ids);
        Assert.Equal(b, a);
        Assert.Contains(a, v => v != 0);
    }

    [Fact]
    public void QuantizedMoePrefillEqualsTokenByTokenDecode()
    {
        var (w, _) = QuantizedMoe(DType.Q4_0, seed: 31);
        var ids = TestModels.Tokens(37, w.Config.VocabSize, 32);
        var model = new Transformer(w) { MaxTokensPerPass = 19 }; // uneven passes: 19 + 18 tokens
        var prefill = TestModels.Prefill(model, ids);
        var cache = model.CreateCache(64);
        var step = new float[w.Config.VocabSize * ids.Length];
        for (int i = 0; i < ids.Length; i++)
        {
            model.Forward(ids.AsSpan(i, 1), cache, step.AsSpan(i * w.Config.VocabSize, w.Config.VocabSize));
        }
        TestModels.AssertClose(prefill, step, BatchingTolerance, "quantized MoE prefill vs decode");
    }

    /// <summary>
    /// GGUF stacks the experts as ffn_*_exps (E, rows, cols); each expert matrix must be a view of its slice of the
    /// mapped file (expert e at the tensor's offset + e * rows * RowBytes), not a copy.
    /// </summary>
    [Fact]
    public void MergedGgufExpertsAreViewsIntoTheMappedFile()
    {
        if (!File.Exists(SyntheticTestModels.StoriesVocabulary))
        {
            Console.WriteLine("skipped: shared test data is absent");
            return;
        }
        var config = SyntheticTestModels.TinyMoe;
        string dir = TestPaths.NewTempDir("moe-mapped");
        string path = Path.Combine(dir, "moe-q4_0.gguf");
        try
        {
            SyntheticTestModels.WriteWithStoriesVocabulary(path, config, 3, DType.Q4_0);
            using var store = GgufFile.Open(path);
            using var mapper = new WeightMapper(packAtLoad: false);
            var w = WeightLoader.Load(store, config, mapper.Create);
            Assert.Equal(0, mapper.CopiedBytes);
            foreach (var (name, pick) in new (string, Func<FeedForwardWeights, WeightMatrix>)[] { ("ffn_gate_exps", x => x.W1), ("ffn_down_exps", x => x.W2), ("ffn_up_exps", x => x.W3) })
            {
                Assert.True(store.TryGetTensor($"blk.1.{name}.weight", out var info));
                for (int e = 0; e < config.NExperts; e++)
                {
                    var q = Assert.IsType<QuantizedMatrix>(pick(w.Layers[1].Moe!.Experts[e]));
                    Assert.Equal(Path.GetFullPath(path), Path.GetFullPath(q.Storage.Path!));
                    Assert.Equal(info.Offset + (long)e * q.Rows * q.RowBytes, q.StorageOffset);
                }
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// A 2-layer MoE of 8 experts (top 2), D 64, F 96, every expert matrix in <paramref name="type"/>; returns it and
    /// its twin whose expert matrices are the same objects behind <see cref="Opaque"/>.
    /// </summary>
    private static (TransformerWeights Batched, TransformerWeights Plain) QuantizedMoe(DType type, int seed)
    {
        var c = TestModels.Dense() with { Dim = 64, HiddenDim = 96, NHeads = 4, NKvHeads = 2, HeadDim = 16, NExperts = 8, NExpertsPerToken = 2 };
        var f32 = TestModels.Random(c, seed);
        var rng = new Random(seed + 1);
        QuantizedMatrix Q(int rows, int cols) => QuantizedMatrix.Quantize(type, TestModels.Uniform(rng, rows * cols, MathF.Sqrt(3f / cols)), rows, cols);
        var experts = f32.Layers.Select(_ => Enumerable.Range(0, c.NExperts)
            .Select(_ => new FeedForwardWeights { W1 = Q(c.HiddenDim, c.Dim), W2 = Q(c.Dim, c.HiddenDim), W3 = Q(c.HiddenDim, c.Dim) }).ToArray()).ToArray();
        TransformerWeights With(Func<FeedForwardWeights, FeedForwardWeights> wrap) => new()
        {
            Config = f32.Config,
            TokenEmbedding = f32.TokenEmbedding,
            FinalNorm = f32.FinalNorm,
            Output = f32.Output,
            Layers = [.. f32.Layers.Select((l, i) => new LayerWeights
            {
                AttentionNorm = l.AttentionNorm,
                Wq = l.Wq,
                Wk = l.Wk,
                Wv = l.Wv,
                Wo = l.Wo,
                FfnNorm = l.FfnNorm,
                Moe = new MoeWeights { Router = l.Moe!.Router, Experts = [.. experts[i].Select(wrap)] },
            })],
        };
        return (With(x => x), With(x => new FeedForwardWeights { W1 = new Opaque(x.W1), W2 = new Opaque(x.W2), W3 = new Opaque(x.W3) }));
    }

    /// <summary>Delegates to a matrix while hiding its type, so the MoE runs it product by product.</summary>
    private sealed class Opaque(WeightMatrix inner) : WeightMatrix(inner.Rows, inner.Cols)
    {
        public override void MatVec(ReadOnlySpan<float> x, Span<float> y) => inner.MatVec(x, y);

        public override void MatMul(ReadOnlySpan<float> x, Span<float> y, int tokens) => inner.MatMul(x, y, tokens);

        public override void ReadRow(int row, Span<float> dst) => inner.ReadRow(row, dst);
    }
}
