using Bora.Numerics;
using Bora.Tokenizers;

namespace Bora.Model.Tests;

public class TransformerTests
{
    /// <summary>
    /// Same model, different batching (decode vs prefill vs chunks): only float32 summation order
    /// differs (MatMul tiles vs MatVec, softmax over the same keys). Logits are O(1-10).
    /// </summary>
    private const float BatchingTolerance = 2e-4f;

    /// <summary>
    /// float32 Transformer vs the double-precision naive reference, logits O(1-10) after 2 layers. The reference keeps
    /// keys and values in full precision, so the tests against it run the Transformer with an F32 KV cache.
    /// </summary>
    private const float ReferenceTolerance = 2e-3f;

    [Fact]
    public void Random_model_logits_are_well_conditioned()
    {
        var w = TestModels.Random(TestModels.Dense(), seed: 1);
        var logits = TestModels.Prefill(new Transformer(w), TestModels.Tokens(20, 50, 2));
        float maxAbs = logits.Max(MathF.Abs);
        Assert.InRange(maxAbs, 0.5f, 50f);
    }

    [Theory]
    [InlineData(false, KvCacheType.F16)]
    [InlineData(true, KvCacheType.F16)]
    [InlineData(false, KvCacheType.F32)]
    [InlineData(true, KvCacheType.F32)]
    public void Decode_token_by_token_equals_prefill_and_uneven_chunks(bool moe, KvCacheType kvType)
    {
        var config = moe ? TestModels.Moe() : TestModels.Dense();
        var model = new Transformer(TestModels.Random(config, seed: 3)) { KvType = kvType };
        var tokens = TestModels.Tokens(40, config.VocabSize, 4);
        int v = config.VocabSize;
        var prefill = TestModels.Prefill(model, tokens);

        var cache = model.CreateCache(64);
        var step = new float[v];
        for (int i = 0; i < tokens.Length; i++)
        {
            model.Forward(tokens.AsSpan(i, 1), cache, step);
            TestModels.AssertClose(prefill.AsSpan(i * v, v), step, BatchingTolerance, $"decode position {i}");
        }
        Assert.Equal(40, cache.Length);

        cache.Clear();
        int start = 0;
        foreach (int n in new[] { 3, 11, 1, 17, 8 })
        {
            var chunk = new float[n * v];
            model.Forward(tokens.AsSpan(start, n), cache, chunk);
            TestModels.AssertClose(prefill.AsSpan(start * v, n * v), chunk, BatchingTolerance, $"chunk at {start}");
            start += n;
        }

        // The same model split internally into passes of 7 tokens.
        var split = new Transformer(model.Weights) { MaxTokensPerPass = 7, KvType = kvType };
        TestModels.AssertClose(prefill, TestModels.Prefill(split, tokens), BatchingTolerance, "passes of 7");

        // Last-position logits only.
        var last = new float[v];
        model.Forward(tokens, model.CreateCache(40), last);
        TestModels.AssertClose(prefill.AsSpan(39 * v, v), last, BatchingTolerance, "last position");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Transformer_equals_naive_reference(bool moe)
    {
        var config = moe ? TestModels.Moe() : TestModels.Dense();
        var w = TestModels.Random(config, seed: 5);
        var tokens = TestModels.Tokens(24, config.VocabSize, 6);
        var expected = NaiveReference.Forward(w, [.. tokens.Select(t => t.Value)]);
        TestModels.AssertClose(expected, TestModels.Prefill(new Transformer(w) { KvType = KvCacheType.F32 }, tokens), ReferenceTolerance, "prefill vs reference");
    }

    [Fact]
    public void Tied_embeddings_equal_reference()
    {
        var w = TestModels.Random(TestModels.Dense(layers: 1, headDim: 8), seed: 15, tied: true);
        Assert.Same(w.TokenEmbedding, w.Output);
        var tokens = TestModels.Tokens(10, 50, 16);
        TestModels.AssertClose(NaiveReference.Forward(w, [.. tokens.Select(t => t.Value)]), TestModels.Prefill(new Transformer(w) { KvType = KvCacheType.F32 }, tokens), ReferenceTolerance, "tied");
    }

    /// <summary>
    /// F32: every way of running the tokens against the double-precision banded reference. F16: the reference keeps
    /// full-precision keys, so decode and chunks through the rolling cache are held to the model's own one-shot prefill
    /// (its pass rows rounded to half exactly as the cache rounds them) at <see cref="BatchingTolerance"/>.
    /// </summary>
    [Theory]
    [InlineData(KvCacheType.F32)]
    [InlineData(KvCacheType.F16)]
    public void Sliding_window_of_16_over_100_tokens_equals_banded_reference(KvCacheType kvType)
    {
        const int Window = 16;
        // Dh 16 so the longer passes take the parallel attention path too.
        var config = TestModels.Dense(window: Window, headDim: 16);
        var w = TestModels.Random(config, seed: 7);
        var model = new Transformer(w) { KvType = kvType };
        var tokens = TestModels.Tokens(100, config.VocabSize, 8);
        int v = config.VocabSize;
        var expected = kvType == KvCacheType.F32 ? NaiveReference.Forward(w, [.. tokens.Select(t => t.Value)]) : TestModels.Prefill(model, tokens);
        float tolerance = kvType == KvCacheType.F32 ? ReferenceTolerance : BatchingTolerance;

        // Token by token.
        var cache = model.CreateCache(128);
        var rolling = Assert.IsType<RollingKvCache>(cache);
        Assert.Equal(Window, rolling.Capacity);
        var step = new float[v];
        for (int i = 0; i < tokens.Length; i++)
        {
            model.Forward(tokens.AsSpan(i, 1), cache, step);
            Assert.True(rolling.HeldPositions <= Window);
            TestModels.AssertClose(expected.AsSpan(i * v, v), step, tolerance, $"decode position {i}");
        }
        Assert.Equal(Window, rolling.HeldPositions);
        Assert.Equal(100 - Window, rolling.OldestPosition);
        Assert.Throws<InvalidOperationException>(() => rolling.KeyRow(0, 100 - Window - 1)); // evicted

        // Chunks longer than the window (and one short), then decode on top.
        cache.Clear();
        int start = 0;
        foreach (int n in new[] { 37, 5, 40, 18 })
        {
            var chunk = new float[n * v];
            model.Forward(tokens.AsSpan(start, n), cache, chunk);
            Assert.True(rolling.HeldPositions <= Window);
            TestModels.AssertClose(expected.AsSpan(start * v, n * v), chunk, tolerance, $"chunk at {start}");
            start += n;
        }

        // One-shot 100-token prefill.
        TestModels.AssertClose(expected, TestModels.Prefill(model, tokens), tolerance, "one-shot prefill");

        // The window really matters: full attention gives different logits past position W.
        var full = TestModels.Prefill(new Transformer(new TransformerWeights
        {
            Config = config with { SlidingWindow = null },
            TokenEmbedding = w.TokenEmbedding,
            Layers = w.Layers,
            FinalNorm = w.FinalNorm,
            Output = w.Output,
        })
        { KvType = kvType }, tokens);
        TestModels.AssertClose(expected.AsSpan(0, Window * v), full.AsSpan(0, Window * v), tolerance, "first W positions");
        Assert.True(TestModels.MaxAbsDiff(expected.AsSpan(Window * v), full.AsSpan(Window * v)) > 100 * ReferenceTolerance);
    }

    [Fact]
    public void Moe_with_identical_experts_equals_dense_ffn()
    {
        var dense = TestModels.Random(TestModels.Dense(), seed: 9);
        var rng = new Random(10);
        var moeConfig = dense.Config with { NExperts = 4, NExpertsPerToken = 2 };
        var moe = new TransformerWeights
        {
            Config = moeConfig,
            TokenEmbedding = dense.TokenEmbedding,
            FinalNorm = dense.FinalNorm,
            Output = dense.Output,
            Layers = [.. dense.Layers.Select(l => new LayerWeights
            {
                AttentionNorm = l.AttentionNorm,
                Wq = l.Wq,
                Wk = l.Wk,
                Wv = l.Wv,
                Wo = l.Wo,
                FfnNorm = l.FfnNorm,
                Moe = new MoeWeights
                {
                    Router = new F32Matrix(TestModels.Uniform(rng, 4 * 32, 1f), 4, 32),
                    Experts = [.. Enumerable.Repeat(l.FeedForward!, 4)],
                },
            })],
        };
        var tokens = TestModels.Tokens(30, 50, 11);
        TestModels.AssertClose(TestModels.Prefill(new Transformer(dense), tokens), TestModels.Prefill(new Transformer(moe), tokens), BatchingTolerance, "MoE of identical experts");
    }

    [Fact]
    public void Routing_picks_top_k_and_softmaxes_the_selected_logits()
    {
        Span<int> experts = stackalloc int[2];
        Span<float> weights = stackalloc float[2];
        MoeRouting.Route([0f, MathF.Log(3), -5f, 0f], experts, weights);
        Assert.Equal([1, 0], experts.ToArray()); // tie between 0 and 3 goes to the lower index
        TestModels.AssertClose([0.75f, 0.25f], weights, 1e-6f, "weights");

        MoeRouting.Route([1f, 3f, 2f, 3f], experts, weights);
        Assert.Equal([1, 3], experts.ToArray());
        TestModels.AssertClose([0.5f, 0.5f], weights, 1e-6f, "tie weights");

        // Top 3 of 8: logits 2, 1, 0.5 -> softmax = e^x / (e^2 + e^1 + e^0.5).
        Span<int> e3 = stackalloc int[3];
        Span<float> w3 = stackalloc float[3];
        MoeRouting.Route([0f, 1f, -1f, 2f, 0.5f, -3f, 0.2f, 0.1f], e3, w3);
        Assert.Equal([3, 1, 4], e3.ToArray());
        double z = Math.Exp(2) + Math.Exp(1) + Math.Exp(0.5);
        TestModels.AssertClose([(float)(Math.Exp(2) / z), (float)(Math.Exp(1) / z), (float)(Math.Exp(0.5) / z)], w3, 1e-6f, "top-3 weights");
    }

    [Fact]
    public void CreateCache_picks_rolling_or_full()
    {
        Assert.IsType<FullKvCache>(new Transformer(TestModels.Random(TestModels.Dense(), 1)).CreateCache(10));
        var rolling = Assert.IsType<RollingKvCache>(new Transformer(TestModels.Random(TestModels.Dense(window: 8), 1)).CreateCache(100));
        Assert.Equal(8, rolling.Capacity);
        Assert.Equal(100, rolling.MaxLength);
        var small = Assert.IsType<RollingKvCache>(new Transformer(TestModels.Random(TestModels.Dense(window: 8), 1)).CreateCache(5));
        Assert.Equal(5, small.Capacity);
    }

    [Fact]
    public void Rolling_cache_slots_follow_the_worked_example()
    {
        // W = 4 after 6 tokens: slot 0 = position 4, slot 1 = 5, slot 2 = 2, slot 3 = 3.
        var model = new Transformer(TestModels.Random(TestModels.Dense(window: 4, layers: 1), 1));
        var cache = Assert.IsType<RollingKvCache>(model.CreateCache(16));
        model.Forward(TestModels.Tokens(6, 50, 1), cache, new float[50]);
        Assert.Equal(2, cache.OldestPosition);
        Assert.Equal([4, 5, 2, 3], new[] { 0, 1, 2, 3 }.Select(slot => Enumerable.Range(2, 4).Single(p => cache.SlotOf(p) == slot)).ToArray());
    }

    [Fact]
    public void Forward_rejects_bad_calls()
    {
        var model = new Transformer(TestModels.Random(TestModels.Dense(), 1));
        var cache = model.CreateCache(8);
        var logits = new float[50];
        var ex = Assert.Throws<ContextLengthExceededException>(() => model.Forward(TestModels.Tokens(9, 50, 1), cache, logits));
        Assert.Contains("at most 8", ex.Message);
        model.Forward(TestModels.Tokens(8, 50, 1), cache, logits);
        Assert.Throws<ContextLengthExceededException>(() => model.Forward(TestModels.Tokens(1, 50, 1), cache, logits));
        Assert.Equal(8, cache.Length);

        cache.Clear();
        Assert.Throws<ArgumentOutOfRangeException>(() => model.Forward([new TokenId(50)], cache, logits));
        Assert.Throws<ArgumentException>(() => model.Forward(TestModels.Tokens(2, 50, 1), cache, new float[70]));
        Assert.Throws<ArgumentException>(() => model.Forward([], cache, logits));
        var other = new Transformer(TestModels.Random(TestModels.Dense(layers: 1), 1)).CreateCache(8);
        Assert.Throws<ArgumentException>(() => model.Forward(TestModels.Tokens(1, 50, 1), other, logits));
        // A cache of another element type than the model's KvType (F16 by default) is refused.
        var f32 = new FullKvCache(model.Config.NLayers, model.Config.NKvHeads * model.Config.HeadDim, 8, KvCacheType.F32);
        var typeError = Assert.Throws<ArgumentException>(() => model.Forward(TestModels.Tokens(1, 50, 1), f32, logits));
        Assert.Contains("F32", typeError.Message, StringComparison.Ordinal);
        Assert.Equal(0, f32.Length);
        Assert.Equal(0, cache.Length);
    }

    [Fact]
    public void Constructor_rejects_weights_that_do_not_match_the_config()
    {
        var w = TestModels.Random(TestModels.Dense(), 1);
        var bad = new TransformerWeights
        {
            Config = w.Config,
            TokenEmbedding = w.TokenEmbedding,
            Layers = w.Layers,
            FinalNorm = w.FinalNorm,
            Output = new F32Matrix(new float[49 * 32], 49, 32),
        };
        var ex = Assert.Throws<ArgumentException>(() => new Transformer(bad));
        Assert.Contains("Output has shape (49, 32); expected (50, 32)", ex.Message);
    }
}
