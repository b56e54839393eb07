using Xunit.Abstractions;

namespace Bora.Model.Tests;

/// <summary>
/// The F16 KV cache: rows read back as (float)(Half)x, half the bytes of F32, and logits within half-precision
/// rounding of the F32 cache's (but not equal: the F16 path is really taken).
/// </summary>
public sealed class KvCacheTypeTests(ITestOutputHelper output)
{
    /// <summary>
    /// Largest |logit(F16 cache) - logit(F32 cache)| relative to the largest |logit|. Each stored key and value is
    /// rounded with relative error at most 2^-11 = 4.9e-4; scores, softmax weights and outputs average many such errors,
    /// and the 2 layers pass them on through the residual stream. Measured on these models (largest of prefill and
    /// decode, relative to the largest logit): 3.4e-4 (dense), 4.1e-4 (MoE), 3.7e-4 (window 8), i.e. about 0.8 x 2^-11;
    /// the bound is 6x the largest measurement. Reading an F16 row's bits as floats, or a row rounded twice or not at
    /// all on one path, is an error of order 1e-2 or more.
    /// </summary>
    private const float RelativeF16LogitTolerance = 2.5e-3f;

    public static TheoryData<string> Models => ["dense", "moe", "window"];

    private static ModelConfig ConfigOf(string name) => name switch
    {
        "dense" => TestModels.Dense(),
        "moe" => TestModels.Moe(),
        _ => TestModels.Dense(window: 8),
    };

    [Fact]
    public void An_F16_row_reads_back_as_the_half_of_each_value()
    {
        const int Layers = 2, KvDim = 24, Slots = 5;
        var rng = new Random(3);
        var f16 = new FullKvCache(Layers, KvDim, Slots, KvCacheType.F16);
        var f32 = new FullKvCache(Layers, KvDim, Slots, KvCacheType.F32);
        // Values that round (random), ties, subnormal halves, beyond the largest half, infinities, zeros.
        float[] special = [0f, -0f, float.PositiveInfinity, float.NegativeInfinity, 1e-6f, -3e-7f, 6e-8f, 65504f, 65520f, 1e6f, 1 + 1f / 2048, 1 + 3f / 2048];
        var keys = new float[Slots][];
        var values = new float[Slots][];
        for (int pos = 0; pos < Slots; pos++)
        {
            keys[pos] = [.. Enumerable.Range(0, KvDim).Select(i => i < special.Length && pos == 0 ? special[i] : (float)(rng.NextDouble() * 20 - 10))];
            values[pos] = [.. Enumerable.Range(0, KvDim).Select(i => i < special.Length && pos == 1 ? special[i] : (float)(rng.NextDouble() * 2e-4 - 1e-4))];
            for (int l = 0; l < Layers; l++)
            {
                f16.Write(l, pos, keys[pos], values[pos]);
                f32.Write(l, pos, keys[pos], values[pos]);
            }
        }
        f16.Advance(Slots);
        f32.Advance(Slots);
        var got = new float[KvDim];
        for (int l = 0; l < Layers; l++)
        {
            for (int pos = 0; pos < Slots; pos++)
            {
                var key = f16.KeyRow(l, pos);
                Assert.Equal(KvCacheType.F16, key.Type);
                Assert.False(key.TryGetFloats(out _));
                Assert.True(key.TryGetHalves(out var halves));
                key.CopyTo(got);
                for (int i = 0; i < KvDim; i++)
                {
                    Assert.Equal((Half)keys[pos][i], halves[i]);
                    Assert.Equal(BitConverter.SingleToInt32Bits((float)(Half)keys[pos][i]), BitConverter.SingleToInt32Bits(got[i]));
                }
                var value = f16.ValueRow(l, pos).AsFloats(got);
                for (int i = 0; i < KvDim; i++)
                {
                    Assert.Equal(BitConverter.SingleToInt32Bits((float)(Half)values[pos][i]), BitConverter.SingleToInt32Bits(value[i]));
                }
                // A slice converts only its values.
                var slice = f16.ValueRow(l, pos).Slice(12, 12).AsFloats(new float[12]);
                Assert.Equal(value.Slice(12, 12).ToArray(), slice.ToArray());
                // F32 rows are the stored floats themselves.
                Assert.True(f32.KeyRow(l, pos).TryGetFloats(out var floats));
                Assert.Equal(keys[pos], floats.ToArray());
            }
        }
        // The subnormal half 6e-8 (2^-24 = 5.96e-8) survives; 1 + 1/2048 ties to even (1).
        Assert.Equal((float)Math.Pow(2, -24), f16.ValueRow(0, 1).AsFloats(got)[6]);
        Assert.Equal(1f, f16.ValueRow(0, 1).AsFloats(got)[10]);
        Assert.Equal(float.PositiveInfinity, f16.ValueRow(0, 1).AsFloats(got)[9]);
    }

    [Fact]
    public void An_F16_cache_promises_finite_rows_until_it_holds_an_infinity()
    {
        const int Layers = 2, KvDim = 16;
        var cache = new FullKvCache(Layers, KvDim, 8, KvCacheType.F16);
        var rng = new Random(4);
        float[] Row(float scale) => [.. Enumerable.Range(0, KvDim).Select(_ => (float)(rng.NextDouble() * 2 - 1) * scale)];
        // 65504 (the largest half), 65519 (rounds down to it) and subnormals are finite.
        float[] extremes = [65504f, -65519f, 6e-8f, -0f, .. Row(1f)[4..]];
        for (int pos = 0; pos < 3; pos++)
        {
            for (int l = 0; l < Layers; l++)
            {
                cache.Write(l, pos, pos == 1 ? extremes : Row(100f), Row(1f));
            }
        }
        cache.Advance(3);
        for (int pos = 0; pos < 3; pos++)
        {
            Assert.True(cache.KeyRow(1, pos).HalvesFinite);
            Assert.True(cache.ValueRow(0, pos).HalvesFinite);
            Assert.True(cache.ValueRow(0, pos).Slice(8, 8).HalvesFinite);
        }
        // 65520 rounds to +inf: from then on no row of any layer is promised finite, the earlier ones included.
        var value = Row(1f);
        value[5] = 65520f;
        cache.Write(0, 3, Row(1f), value);
        cache.Write(1, 3, Row(1f), Row(1f));
        cache.Advance(1);
        for (int pos = 0; pos < 4; pos++)
        {
            for (int l = 0; l < Layers; l++)
            {
                Assert.False(cache.KeyRow(l, pos).HalvesFinite);
                Assert.False(cache.ValueRow(l, pos).HalvesFinite);
            }
        }
        Assert.Equal(float.PositiveInfinity, cache.ValueRow(0, 3).AsFloats(new float[KvDim])[5]);
        // A NaN in a key does the same; F32 rows and halves handed in by others promise nothing.
        var other = new FullKvCache(1, KvDim, 2, KvCacheType.F16);
        var key = Row(1f);
        key[0] = float.NaN;
        other.Write(0, 0, key, Row(1f));
        other.Advance(1);
        Assert.False(other.KeyRow(0, 0).HalvesFinite);
        var f32 = new FullKvCache(1, KvDim, 2, KvCacheType.F32);
        f32.Write(0, 0, Row(1f), Row(1f));
        f32.Advance(1);
        Assert.False(f32.KeyRow(0, 0).HalvesFinite);
        Assert.False(new KvRow(new Half[4]).HalvesFinite);
    }

    [Fact]
    public void An_F16_cache_has_half_the_bytes()
    {
        var f32 = new FullKvCache(3, 40, 100, KvCacheType.F32);
        var f16 = new FullKvCache(3, 40, 100, KvCacheType.F16);
        Assert.Equal(2L * 3 * 100 * 40 * sizeof(float), f32.Bytes);
        Assert.Equal(f32.Bytes / 2, f16.Bytes);
        var rolling = new RollingKvCache(3, 40, 16, 100, KvCacheType.F16);
        Assert.Equal(2L * 3 * 16 * 40 * 2, rolling.Bytes);
        var model = new Transformer(TestModels.Random(TestModels.Dense(), 1));
        Assert.Equal(KvCacheType.F16, model.KvType); // llama.cpp's default
        Assert.Equal(KvCacheType.F16, Assert.IsType<FullKvCache>(model.CreateCache(8)).KvType);
        Assert.Equal(KvCacheType.F32, Assert.IsType<FullKvCache>(new Transformer(model.Weights) { KvType = KvCacheType.F32 }.CreateCache(8)).KvType);
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void F16_logits_are_within_half_rounding_of_F32_logits(string name)
    {
        var config = ConfigOf(name);
        var w = TestModels.Random(config, seed: 21);
        var f16 = new Transformer(w) { KvType = KvCacheType.F16 };
        var f32 = new Transformer(w) { KvType = KvCacheType.F32 };
        var tokens = TestModels.Tokens(40, config.VocabSize, 22);
        int v = config.VocabSize;
        var a = TestModels.Prefill(f32, tokens);
        var b = TestModels.Prefill(f16, tokens);
        float scale = a.Max(MathF.Abs);
        float prefill = TestModels.MaxAbsDiff(a, b) / scale;
        // Decode on top of a 30-token prefill: keys and values from the caches.
        var c32 = f32.CreateCache(64);
        var c16 = f16.CreateCache(64);
        var l32 = new float[v];
        var l16 = new float[v];
        f32.Forward(tokens.AsSpan(0, 30), c32, l32);
        f16.Forward(tokens.AsSpan(0, 30), c16, l16);
        float decode = 0;
        for (int i = 30; i < 40; i++)
        {
            f32.Forward(tokens.AsSpan(i, 1), c32, l32);
            f16.Forward(tokens.AsSpan(i, 1), c16, l16);
            decode = MathF.Max(decode, TestModels.MaxAbsDiff(l32, l16) / l32.Max(MathF.Abs));
        }
        output.WriteLine($"{name}: F16 vs F32 relative logit difference: prefill {prefill:G3}, decode {decode:G3}");
        Assert.InRange(prefill, float.Epsilon, RelativeF16LogitTolerance);
        Assert.InRange(decode, float.Epsilon, RelativeF16LogitTolerance);
    }
}
