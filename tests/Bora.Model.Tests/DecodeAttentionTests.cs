using Bora.Serving;
using Bora.Tokenizers;

namespace Bora.Model.Tests;

/// <summary>
/// Decode steps (one pass row) split over key chunks (flash-decoding): against the per-query reference kernel over
/// many chunks, with and without a window, on the Dh = 128 vector path (G = 4 and G = 6 query heads per KV head) as
/// well as the generic one; and a decode row gives the same bits alone as batched with other sequences.
/// </summary>
[Trait("Category", "Kernels")]
public sealed class DecodeAttentionTests
{
    /// <summary>
    /// The chunks' softmax is merged by exp(m_c - M) rescaling and summed in another order than the per-query kernel:
    /// float32 rounding of O(1e-7) per operation, amplified through 2 layers, as in <see cref="TiledAttentionTests"/>,
    /// whose bound (1e-4 of the largest logit) this reuses; a dropped or doubled key or chunk is an error of order 1e-2.
    /// </summary>
    private const float RelativeLogitTolerance = 1e-4f;

    public static TheoryData<int, int, int, int?, int, KvCacheType> Shapes => new()
    {
        // heads, KV heads, Dh, window, prompt, cache type: 700 keys = 6 chunks of 128; window 300 = 3 chunks.
        { 8, 2, 128, null, 700, KvCacheType.F16 },
        { 8, 2, 128, 300, 700, KvCacheType.F16 },
        { 12, 2, 128, null, 300, KvCacheType.F16 },   // G = 6: 4 heads on the vector path, 2 on the generic one
        { 4, 2, 12, null, 700, KvCacheType.F16 },     // Dh = 12: the generic path only
        { 4, 1, 128, null, 2100, KvCacheType.F16 },   // above 16 chunks of 128: 132 keys per chunk
        { 8, 2, 128, 300, 700, KvCacheType.F32 },
        { 4, 2, 12, null, 700, KvCacheType.F32 },
        { 32, 8, 128, null, 700, KvCacheType.F16 },   // Mistral 7B's heads: the chunk softmax in vectors of 8 heads
        { 16, 2, 12, 300, 700, KvCacheType.F32 },     // 16 heads, G = 8, Dh = 12: vector softmax, generic products
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void DecodeStepsMatchThePerQueryKernel(int heads, int kvHeads, int headDim, int? window, int prompt, KvCacheType kvType)
    {
        var config = TestModels.Dense(window, headDim: headDim) with { NHeads = heads, NKvHeads = kvHeads, MaxSeqLen = prompt + 8 };
        var weights = TestModels.Random(config, seed: 41);
        var tiled = new Transformer(weights) { KvType = kvType };
        var reference = new Transformer(weights) { TiledAttention = false, KvType = kvType };
        var tokens = TestModels.Tokens(prompt, config.VocabSize, seed: 42);
        var c1 = tiled.CreateCache(prompt + 8);
        var c2 = reference.CreateCache(prompt + 8);
        var l1 = new float[config.VocabSize];
        var l2 = new float[config.VocabSize];
        tiled.Forward(tokens, c1, l1);
        reference.Forward(tokens, c2, l2);
        for (int step = 0; step < 3; step++)
        {
            TokenId[] next = [new TokenId((step * 11 + 3) % config.VocabSize)];
            tiled.Forward(next, c1, l1);
            reference.Forward(next, c2, l2);
            TestModels.AssertClose(l2, l1, RelativeLogitTolerance * l2.Max(MathF.Abs), $"decode step {step} after {prompt} tokens");
        }
    }

    /// <summary>
    /// An F16 cache that once held an infinity no longer promises finite rows, so the vector path widens its halves with
    /// the infinity lanes again: a value of 1e6 (+inf as a half) in a cached row reaches the logits as in the reference
    /// (not as the 65536 that the shorter widening would make of it), and so do the NaN rows that follow it.
    /// </summary>
    [Fact]
    public void AnInfinityInTheCacheReachesTheLogitsAsInTheReference()
    {
        const int Prompt = 300;
        var config = TestModels.Dense(null, headDim: 128) with { NHeads = 8, NKvHeads = 2, MaxSeqLen = Prompt + 8 };
        var weights = TestModels.Random(config, seed: 47);
        var tiled = new Transformer(weights) { KvType = KvCacheType.F16 };
        var reference = new Transformer(weights) { TiledAttention = false, KvType = KvCacheType.F16 };
        var tokens = TestModels.Tokens(Prompt, config.VocabSize, seed: 48);
        var c1 = Assert.IsType<FullKvCache>(tiled.CreateCache(Prompt + 8));
        var c2 = Assert.IsType<FullKvCache>(reference.CreateCache(Prompt + 8));
        var l1 = new float[config.VocabSize];
        var l2 = new float[config.VocabSize];
        tiled.Forward(tokens, c1, l1);
        reference.Forward(tokens, c2, l2);
        int kvDim = config.NKvHeads * config.HeadDim;
        var rng = new Random(49);
        var key = Enumerable.Range(0, kvDim).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        var value = Enumerable.Range(0, kvDim).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        value[kvDim / 2 + 7] = 1e6f;
        foreach (var cache in new[] { c1, c2 })
        {
            for (int l = 0; l < config.NLayers; l++)
            {
                cache.Write(l, Prompt, key, value);
            }
            cache.Advance(1);
        }
        // The vector path takes whole groups of 4 cached rows; the row holding the infinity (position 300) is in one
        // from the fifth step on (keys 300..303 cached, 304 the pass's own).
        for (int step = 0; step < 5; step++)
        {
            TokenId[] next = [new TokenId(5 + step)];
            tiled.Forward(next, c1, l1);
            reference.Forward(next, c2, l2);
            Assert.Contains(l2, x => !float.IsFinite(x));
            Assert.Equal(l2.Select(float.IsFinite), l1.Select(float.IsFinite));
        }
    }

    [Theory]
    [InlineData(KvCacheType.F16)]
    [InlineData(KvCacheType.F32)]
    public void ADecodeRowGivesTheSameBitsAloneAndBatched(KvCacheType kvType)
    {
        const int BlockSize = 16, Blocks = 47;
        var config = TestModels.Dense(headDim: 128) with { NHeads = 8, NKvHeads = 2, MaxSeqLen = 640 };
        var weights = TestModels.Random(config, seed: 43);
        var model = new Transformer(weights) { KvType = kvType };
        var a = TestModels.Tokens(500, config.VocabSize, seed: 44);
        var b = TestModels.Tokens(200, config.VocabSize, seed: 45);
        var c = TestModels.Tokens(5, config.VocabSize, seed: 46);
        (PagedKvCache A, PagedKvCache B, PagedKvCache C) Prefilled()
        {
            var store = new PagedKvStore(config.NLayers, config.NKvHeads * config.HeadDim, Blocks, BlockSize, model.KvType);
            var ca = new PagedKvCache(store, [.. Enumerable.Range(0, 32)], 0, 512);
            var cb = new PagedKvCache(store, [.. Enumerable.Range(32, 14)], 0, 224);
            var cc = new PagedKvCache(store, [.. Enumerable.Range(46, 1)], 0, 16);
            model.ForwardBatch([new BatchEntry(a, ca, Memory<float>.Empty)]);
            model.ForwardBatch([new BatchEntry(b, cb, Memory<float>.Empty)]);
            return (ca, cb, cc);
        }
        TokenId[] next = [new TokenId(7)];
        var alone = new float[config.VocabSize];
        var (a1, _, _) = Prefilled();
        model.ForwardBatch([new BatchEntry(next, a1, alone)]);

        var batched = new float[3 * config.VocabSize];
        var (a2, b2, c2) = Prefilled();
        model.ForwardBatch([
            new BatchEntry(c, c2, batched.AsMemory(0, config.VocabSize)),
            new BatchEntry(next, a2, batched.AsMemory(config.VocabSize, config.VocabSize)),
            new BatchEntry(next, b2, batched.AsMemory(2 * config.VocabSize, config.VocabSize)),
        ]);
        Assert.Equal(alone, batched.AsSpan(config.VocabSize, config.VocabSize).ToArray());
        Assert.NotEqual(alone, batched.AsSpan(2 * config.VocabSize, config.VocabSize).ToArray()); // B's row is its own
    }
}
