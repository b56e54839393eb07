using Bora.Model;
using Bora.Serving;
using Bora.Tokenizers;

namespace Bora.Server.Tests;

public class BatchedForwardTests
{
    /// <summary>
    /// Max-abs logit difference allowed between batched/paged and single/contiguous runs. The kernels
    /// compute every row with the same operation order whatever the batch, so today the results are
    /// bitwise equal; 1e-5 (about 100 float32 ulps at logits of magnitude ~1) leaves room for a kernel
    /// that reorders sums by batch size, and is far below any difference that changes a sampled token.
    /// </summary>
    private const float BatchTolerance = 1e-5f;

    private const int BlockSize = 4;

    public static TheoryData<string, KvCacheType> Configs => new()
    {
        { "dense", KvCacheType.F16 }, { "window5", KvCacheType.F16 }, { "moe", KvCacheType.F16 },
        { "dense", KvCacheType.F32 }, { "window5", KvCacheType.F32 }, { "moe", KvCacheType.F32 },
    };

    private static ModelConfig ConfigOf(string name) => name switch
    {
        "dense" => RandomModels.Dense(),
        "window5" => RandomModels.Dense(window: 5),
        _ => RandomModels.Moe(),
    };

    private static TokenId[] Tokens(int n, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, n).Select(_ => new TokenId(rng.Next(64)))];
    }

    private static float MaxAbs(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        Assert.Equal(a.Length, b.Length);
        float m = 0;
        for (int i = 0; i < a.Length; i++)
        {
            m = MathF.Max(m, MathF.Abs(a[i] - b[i]));
        }
        return m;
    }

    [Theory]
    [MemberData(nameof(Configs))]
    public void Paged_cache_gives_the_logits_of_the_contiguous_cache_over_chunks_and_decodes(string name, KvCacheType kvType)
    {
        var c = ConfigOf(name);
        var model = RandomModels.Build(c, 11, kvType);
        var tokens = Tokens(40, 3);
        int[] chunks = [7, 1, 12, 1, 1, 9, 1, 8];
        var store = new PagedKvStore(c.NLayers, c.NKvHeads * c.HeadDim, 64, BlockSize, model.KvType);
        var table = Enumerable.Range(0, 10).Select(i => 63 - i * 5).ToList(); // 63, 58, ...: scrambled blocks
        var contiguous = model.CreateCache(64);
        int pos = 0;
        var expected = new float[c.VocabSize];
        var actual = new float[c.VocabSize];
        foreach (int n in chunks)
        {
            var chunk = tokens.AsMemory(pos, n);
            model.Forward(chunk.Span, contiguous, expected);
            if (c.SlidingWindow is { } w)
            {
                // Release (as the block manager does) blocks wholly below pos - W + 1: the paged cache must not need them.
                for (int i = 0; (i + 1) * BlockSize <= pos - w + 1; i++)
                {
                    table[i] = -1;
                }
            }
            var paged = new PagedKvCache(store, table, pos, 64);
            model.ForwardBatch([new BatchEntry(chunk, paged, actual)]);
            pos += n;
            Assert.Equal(pos, paged.Length);
            Assert.True(MaxAbs(expected, actual) <= BatchTolerance, $"{name}: chunk ending at {pos} differs by {MaxAbs(expected, actual)}");
        }
    }

    [Theory]
    [MemberData(nameof(Configs))]
    public void A_batch_of_sequences_gives_each_the_logits_it_gets_alone(string name, KvCacheType kvType) => BatchEqualsAlone(name, scale: 1, kvType);

    [Fact]
    public void A_large_batch_takes_the_parallel_paths_and_still_matches() => BatchEqualsAlone("dense", scale: 8, KvCacheType.F16);

    private static void BatchEqualsAlone(string name, int scale, KvCacheType kvType)
    {
        var c = ConfigOf(name);
        var model = RandomModels.Build(c, 5, kvType);
        int kv = c.NKvHeads * c.HeadDim;
        // (history already in the cache, tokens run in the batched step, wants logits)
        (int History, int Run, bool Logits)[] shape = [(0, 9 * scale, true), (13 * scale, 1, true), (6, 5 * scale, false), (20 * scale, 1, true), (0, 1, true)];
        var store = new PagedKvStore(c.NLayers, kv, 512, BlockSize, model.KvType);
        var aloneStore = new PagedKvStore(c.NLayers, kv, 512, BlockSize, model.KvType);
        var entries = new List<BatchEntry>();
        var expected = new List<float[]>();
        int nextBlock = 0;
        for (int i = 0; i < shape.Length; i++)
        {
            var (history, run, logits) = shape[i];
            var all = Tokens(history + run, 100 + i);
            int blocks = (history + run + BlockSize - 1) / BlockSize;
            var table = Enumerable.Range(nextBlock, blocks).Reverse().ToList();
            nextBlock += blocks;
            var cache = new PagedKvCache(store, table, 0, 512);
            var alone = new PagedKvCache(aloneStore, table, 0, 512);
            var contiguous = model.CreateCache(512);
            if (history > 0)
            {
                model.ForwardBatch([new BatchEntry(all.AsMemory(0, history), cache, Memory<float>.Empty)]);
                model.Forward(all.AsSpan(0, history), contiguous, new float[c.VocabSize]);
            }
            var single = new float[c.VocabSize];
            model.Forward(all.AsSpan(history), contiguous, single);
            var viaBatchOfOne = new float[c.VocabSize];
            if (history > 0)
            {
                model.ForwardBatch([new BatchEntry(all.AsMemory(0, history), alone, Memory<float>.Empty)]);
            }
            model.ForwardBatch([new BatchEntry(all.AsMemory(history), alone, viaBatchOfOne)]);
            Assert.True(MaxAbs(single, viaBatchOfOne) <= BatchTolerance);
            expected.Add(single);
            entries.Add(new BatchEntry(all.AsMemory(history), cache, logits ? new float[c.VocabSize] : Memory<float>.Empty));
        }
        model.ForwardBatch(entries);
        for (int i = 0; i < shape.Length; i++)
        {
            Assert.Equal(shape[i].History + shape[i].Run, entries[i].Cache.Length);
            if (shape[i].Logits)
            {
                float d = MaxAbs(expected[i], entries[i].Logits.Span);
                Assert.True(d <= BatchTolerance, $"{name}: sequence {i} differs by {d} in the batch");
            }
        }
    }

    [Fact]
    public void A_sequence_reusing_cached_prefix_blocks_matches_one_computed_from_scratch()
    {
        var c = RandomModels.Dense();
        var model = RandomModels.Build(c, 9);
        var store = new PagedKvStore(c.NLayers, c.NKvHeads * c.HeadDim, 32, BlockSize, model.KvType);
        var a = Tokens(12, 1);
        var b = a.Take(8).Concat(Tokens(5, 2)).ToArray();
        var tableA = new List<int> { 3, 1, 4 };
        model.ForwardBatch([new BatchEntry(a, new PagedKvCache(store, tableA, 0, 64), Memory<float>.Empty)]);
        var tableB = new List<int> { 3, 1, 10, 11 };  // blocks 3 and 1 hold positions 0..7 of the shared prefix
        var reused = new float[c.VocabSize];
        model.ForwardBatch([new BatchEntry(b.AsMemory(8), new PagedKvCache(store, tableB, 8, 64), reused)]);
        var scratch = new float[c.VocabSize];
        model.Forward(b, model.CreateCache(64), scratch);
        Assert.True(MaxAbs(scratch, reused) <= BatchTolerance);
    }

    [Fact]
    public void Bad_batches_are_refused_with_clear_messages()
    {
        var c = RandomModels.Dense();
        var model = RandomModels.Build(c, 1);
        var store = new PagedKvStore(c.NLayers, c.NKvHeads * c.HeadDim, 8, BlockSize, model.KvType);
        var cache = new PagedKvCache(store, [0, 1], 0, 8);
        Assert.Throws<ArgumentException>(() => model.ForwardBatch([new BatchEntry(Array.Empty<TokenId>(), cache, Memory<float>.Empty)]));
        Assert.Throws<ArgumentException>(() => model.ForwardBatch([new BatchEntry(Tokens(2, 1), cache, new float[3])]));
        Assert.Throws<ArgumentException>(() => model.ForwardBatch([new BatchEntry(Tokens(1, 1), cache, Memory<float>.Empty), new BatchEntry(Tokens(1, 1), cache, Memory<float>.Empty)]));
        Assert.Throws<ContextLengthExceededException>(() => model.ForwardBatch([new BatchEntry(Tokens(9, 1), cache, Memory<float>.Empty)]));
        Assert.Throws<ArgumentOutOfRangeException>(() => model.ForwardBatch([new BatchEntry(new[] { new TokenId(64) }, cache, Memory<float>.Empty)]));
        var other = new PagedKvCache(new PagedKvStore(1, 24, 4, 4, model.KvType), [0], 0, 4);
        Assert.Throws<ArgumentException>(() => model.ForwardBatch([new BatchEntry(Tokens(1, 1), other, Memory<float>.Empty)]));
        // A write past the allocated blocks is an error, not silent corruption.
        Assert.Throws<InvalidOperationException>(() => model.ForwardBatch([new BatchEntry(Tokens(8, 1), new PagedKvCache(store, [0], 0, 8), Memory<float>.Empty)]));
        Assert.Equal(0, cache.Length);
    }

    [Fact]
    public void Pool_sizing_from_MiB()
    {
        // F32: 2 (k, v) * 32 layers * 16 positions * 1024 * 4 bytes = 4 MiB per block: 1024 MiB hold 256 blocks.
        Assert.Equal(4L * 1024 * 1024, PagedKvStore.BytesPerBlock(32, 1024, 16, KvCacheType.F32));
        Assert.Equal(256, PagedKvStore.BlocksForMiB(1024, 32, 1024, 16, KvCacheType.F32));
        Assert.Equal(1, PagedKvStore.BlocksForMiB(1, 32, 1024, 16, KvCacheType.F32));
        // F16: 2 bytes a value, 2 MiB per block: the same MiB hold twice the blocks.
        Assert.Equal(2L * 1024 * 1024, PagedKvStore.BytesPerBlock(32, 1024, 16, KvCacheType.F16));
        Assert.Equal(512, PagedKvStore.BlocksForMiB(1024, 32, 1024, 16, KvCacheType.F16));
        Assert.Equal(1, PagedKvStore.BlocksForMiB(1, 32, 1024, 16, KvCacheType.F16));
    }

    [Fact]
    public void An_F16_store_has_half_the_bytes_of_an_F32_store()
    {
        var f32 = new PagedKvStore(2, 24, 8, 4, KvCacheType.F32);
        var f16 = new PagedKvStore(2, 24, 8, 4, KvCacheType.F16);
        Assert.Equal(8 * PagedKvStore.BytesPerBlock(2, 24, 4, KvCacheType.F32), f32.Bytes);
        Assert.Equal(f32.Bytes / 2, f16.Bytes);
        Assert.Equal(KvCacheType.F16, f16.KvType);
    }

    [Fact]
    public void A_store_of_another_KV_type_than_the_model_is_refused()
    {
        var c = RandomModels.Dense();
        var model = RandomModels.Build(c, 1); // F16, the default
        Assert.Equal(KvCacheType.F16, model.KvType);
        var cache = new PagedKvCache(new PagedKvStore(c.NLayers, c.NKvHeads * c.HeadDim, 8, BlockSize, KvCacheType.F32), [0, 1], 0, 8);
        var ex = Assert.Throws<ArgumentException>(() => model.ForwardBatch([new BatchEntry(Tokens(2, 1), cache, Memory<float>.Empty)]));
        Assert.Contains("F32", ex.Message, StringComparison.Ordinal);
        Assert.Equal(0, cache.Length);
    }
}
