using Bora.Serving;
using Bora.Tokenizers;
using Xunit.Abstractions;

namespace Bora.Model.Tests;

/// <summary>The tiled online-softmax attention against the per-query reference kernel (<see cref="Transformer.TiledAttention"/> = false).</summary>
[Trait("Category", "Kernels")]
public sealed class TiledAttentionTests(ITestOutputHelper output)
{
    /// <summary>
    /// Same scores and values, but the softmax is accumulated tile by tile (rescaled by exp(m_old - m_new) when a
    /// later tile has a larger score) and summed in another order: float32 rounding of O(1e-7) per operation,
    /// amplified through 2 layers to the logits. Measured max |difference| below 5e-7 of the largest logit (T = 1..300); 1e-4 leaves
    /// a wide margin and still catches a dropped or doubled key, a wrong mask or a wrong head (errors of order 1e-2
    /// and more).
    /// </summary>
    private const float RelativeLogitTolerance = 1e-4f;

    public static TheoryData<int?> Windows => new() { null, 20 };

    public static TheoryData<int?, KvCacheType> WindowsAndKvTypes => new()
    {
        { null, KvCacheType.F16 }, { 20, KvCacheType.F16 }, { null, KvCacheType.F32 }, { 20, KvCacheType.F32 },
    };

    [Theory]
    [MemberData(nameof(Windows))]
    public void EveryPromptLengthUpTo300MatchesThePerQueryKernel(int? window)
    {
        var config = TestModels.Dense(window) with { MaxSeqLen = 512 };
        var weights = TestModels.Random(config, seed: 31);
        var tiled = new Transformer(weights);
        var reference = new Transformer(weights) { TiledAttention = false };
        var all = TestModels.Tokens(300, config.VocabSize, seed: 32);
        float worst = 0;
        for (int t = 1; t <= 300; t++)
        {
            var tokens = all[..t];
            var expected = TestModels.Prefill(reference, tokens);
            var actual = TestModels.Prefill(tiled, tokens);
            float scale = expected.Max(MathF.Abs);
            float diff = TestModels.MaxAbsDiff(expected, actual);
            worst = MathF.Max(worst, diff / scale);
            Assert.True(diff <= RelativeLogitTolerance * scale, $"window {window}, T = {t}: max |diff| {diff} of max |logit| {scale}");
        }
        output.WriteLine($"window {window?.ToString() ?? "none"}: worst relative logit difference over T = 1..300: {worst:G3}");
    }

    [Theory]
    [MemberData(nameof(WindowsAndKvTypes))]
    public void ChunkedPrefillAndDecodeMatchThePerQueryKernel(int? window, KvCacheType kvType)
    {
        var config = TestModels.Dense(window) with { MaxSeqLen = 512 };
        var weights = TestModels.Random(config, seed: 33);
        // Passes of 37 rows: later passes read the earlier positions from the cache (and, with a window, a rolling one).
        var tiled = new Transformer(weights) { MaxTokensPerPass = 37, KvType = kvType };
        var reference = new Transformer(weights) { TiledAttention = false, KvType = kvType };
        var tokens = TestModels.Tokens(150, config.VocabSize, seed: 34);
        var expected = TestModels.Prefill(reference, tokens);
        var actual = TestModels.Prefill(tiled, tokens);
        TestModels.AssertClose(expected, actual, RelativeLogitTolerance * expected.Max(MathF.Abs), "chunked prefill");

        // Decode steps after the prompt: one query row against the cache.
        var c1 = tiled.CreateCache(200);
        var c2 = reference.CreateCache(200);
        var l1 = new float[config.VocabSize];
        var l2 = new float[config.VocabSize];
        tiled.Forward(tokens, c1, l1);
        reference.Forward(tokens, c2, l2);
        for (int step = 0; step < 10; step++)
        {
            TokenId[] next = [new TokenId((step * 7) % config.VocabSize)];
            tiled.Forward(next, c1, l1);
            reference.Forward(next, c2, l2);
            TestModels.AssertClose(l2, l1, RelativeLogitTolerance * l2.Max(MathF.Abs), $"decode step {step}");
        }
    }

    /// <summary>(query heads, KV heads, head width): G = 4 (Mistral's), 6 (a query block of 64 and two of 16 lanes), 1.</summary>
    public static TheoryData<int, int, int, int?> WideShapes => new()
    {
        { 8, 2, 64, null }, { 8, 2, 64, 20 }, { 6, 1, 128, null }, { 6, 1, 128, 20 }, { 2, 2, 64, null }, { 2, 2, 64, 20 },
    };

    /// <summary>
    /// The prefill tile with queries in vector lanes (<c>AttendTileWide</c>: 512-bit vectors or AVX2 + FMA, Dh a
    /// multiple of 64) and the portable tile against the per-query kernel, one-shot prompts of 1..140 rows (query tiles
    /// of every fill, partial key tiles) and passes of 37 rows that read earlier positions from the cache. On a
    /// machine with neither (or with DOTNET_EnableAVX2=0) both tiled models take the portable path and the test checks
    /// that path twice.
    /// </summary>
    [Theory]
    [MemberData(nameof(WideShapes))]
    public void WideTilesMatchThePerQueryKernel(int heads, int kvHeads, int headDim, int? window)
    {
        var config = TestModels.Dense(window, headDim: headDim) with { NHeads = heads, NKvHeads = kvHeads, MaxSeqLen = 512 };
        var weights = TestModels.Random(config, seed: 38);
        var wide = new Transformer(weights);
        var portable = new Transformer(weights) { UseWideTiles = false };
        var chunked = new Transformer(weights) { MaxTokensPerPass = 37 };
        var reference = new Transformer(weights) { TiledAttention = false };
        var all = TestModels.Tokens(140, config.VocabSize, seed: 39);
        float worst = 0;
        for (int t = 1; t <= all.Length; t += t < 20 ? 1 : 7)
        {
            var tokens = all[..t];
            var expected = TestModels.Prefill(reference, tokens);
            float tolerance = RelativeLogitTolerance * expected.Max(MathF.Abs);
            foreach (var (model, name) in new[] { (wide, "wide"), (portable, "portable"), (chunked, "wide, passes of 37") })
            {
                var actual = TestModels.Prefill(model, tokens);
                worst = MathF.Max(worst, TestModels.MaxAbsDiff(expected, actual) / expected.Max(MathF.Abs));
                TestModels.AssertClose(expected, actual, tolerance, $"{name}, G = {heads / kvHeads}, Dh = {headDim}, window {window}, T = {t}");
            }
        }
        output.WriteLine($"G = {heads / kvHeads}, Dh = {headDim}, window {window?.ToString() ?? "none"}: worst relative logit difference {worst:G3}");
    }

    [Theory]
    [MemberData(nameof(WindowsAndKvTypes))]
    public void BatchedSequencesMatchThePerQueryKernel(int? window, KvCacheType kvType)
    {
        var config = TestModels.Dense(window) with { MaxSeqLen = 512 };
        var weights = TestModels.Random(config, seed: 35);
        var tiled = new Transformer(weights) { KvType = kvType };
        var reference = new Transformer(weights) { TiledAttention = false, KvType = kvType };
        var a = TestModels.Tokens(45, config.VocabSize, seed: 36);
        var b = TestModels.Tokens(30, config.VocabSize, seed: 37);
        float[] Run(Transformer m)
        {
            const int BlockSize = 16;
            var store = new PagedKvStore(config.NLayers, config.NKvHeads * config.HeadDim, blockCount: 16, BlockSize, m.KvType);
            int[] tableA = [0, 1, 2, 3, 4, 5, 6, 7], tableB = [8, 9, 10, 11, 12, 13, 14, 15];
            var ca = new PagedKvCache(store, tableA, 0, 128);
            var cb = new PagedKvCache(store, tableB, 0, 128);
            // B's first 25 tokens alone, then A's 45-token prompt batched with B's next 5 tokens.
            m.ForwardBatch([new BatchEntry(b.AsMemory(0, 25), cb, Memory<float>.Empty)]);
            var logits = new float[2 * config.VocabSize];
            m.ForwardBatch([
                new BatchEntry(a, ca, logits.AsMemory(0, config.VocabSize)),
                new BatchEntry(b.AsMemory(25, 5), cb, logits.AsMemory(config.VocabSize, config.VocabSize)),
            ]);
            return logits;
        }
        var expected = Run(reference);
        TestModels.AssertClose(expected, Run(tiled), RelativeLogitTolerance * expected.Max(MathF.Abs), "batched");
    }
}
