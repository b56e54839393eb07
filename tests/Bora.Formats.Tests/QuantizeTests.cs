using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Formats.Tests;

[Trait("Category", "Kernels")]
public class QuantizeTests
{
    /// <summary>
    /// Q8_0: q = round(x / d) with d = amax / 127 costs d / 2; storing d as f16 moves every q * d by at most
    /// 127 * d * 2^-11. Bound = amax * (0.5 + 127 / 2048) / 127.
    /// </summary>
    private const float Q8_0BoundOfAmax = (0.5f + 127f / 2048f) / 127f;

    /// <summary>
    /// Q4_0: d = max / -8, q = trunc(x / d + 8.5) clamped to 15: one full step |d| = amax / 8 where the clamp
    /// bites, plus f16 rounding of d (8 steps * 2^-11). Bound = amax * (1 + 8 / 2048) / 8.
    /// </summary>
    private const float Q4_0BoundOfAmax = (1f + 8f / 2048f) / 8f;

    /// <summary>F16 round-to-nearest: relative error at most 2^-11 for normal values.</summary>
    private const float F16RelativeBound = 1f / 2048;

    /// <summary>BF16 round-to-nearest: relative error at most 2^-8 (7 stored mantissa bits).</summary>
    private const float Bf16RelativeBound = 1f / 256;

    private static float[] RoundTrip(DType t, float[] x)
    {
        var bytes = BlockQuantizer.FromFloat32(t, x);
        var y = new float[x.Length];
        BlockDequantizer.ToFloat32(t, bytes, y);
        return y;
    }

    private static float[] RandomValues(int n, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++)
        {
            // Mix of gaussian-ish values and occasional outliers, like real weights.
            float g = (rng.NextSingle() + rng.NextSingle() + rng.NextSingle() - 1.5f) * scale;
            x[i] = rng.Next(50) == 0 ? g * 6 : g;
        }
        return x;
    }

    [Fact]
    public void Q8_0_matches_llama_cpp_reference_rounding()
    {
        var x = new float[32];
        x[0] = 127f;    // amax -> d = 1, id = 1
        x[1] = -63.5f;  // roundf: half away from zero -> -64
        x[2] = 2.5f;    // -> 3 (not the even 2)
        x[3] = 0.49f;   // -> 0
        x[4] = -0.5f;   // -> -1
        var b = BlockQuantizer.FromFloat32(DType.Q8_0, x);
        Assert.Equal(0x00, b[0]); // f16 1.0 = 0x3C00
        Assert.Equal(0x3C, b[1]);
        Assert.Equal([127, -64, 3, 0, -1, 0], b.Skip(2).Take(6).Select(v => (int)(sbyte)v));
    }

    [Fact]
    public void Q4_0_matches_llama_cpp_reference_rounding()
    {
        var x = new float[32];
        x[0] = -16f;  // largest magnitude, negative: d = -16 / -8 = 2, id = 0.5 -> q = trunc(-8 + 8.5) = 0
        x[1] = 3f;    // 1.5 + 8.5 = 10
        x[2] = 1f;    // 0.5 + 8.5 = 9
        x[3] = -1f;   // -0.5 + 8.5 = 8
        x[16] = 15f;  // 7.5 + 8.5 = 16 -> clamped to 15
        x[17] = 16f;  // 8 + 8.5 = 16.5 -> 16 -> 15 (same magnitude as x[0] but later: d keeps x[0]'s sign)
        x[18] = -2.9f; // -1.45 + 8.5 = 7.05 -> 7
        var b = BlockQuantizer.FromFloat32(DType.Q4_0, x);
        Assert.Equal(0x00, b[0]); // f16 2.0 = 0x4000
        Assert.Equal(0x40, b[1]);
        int Lo(int j) => b[2 + j] & 15;
        int Hi(int j) => b[2 + j] >> 4;
        Assert.Equal([0, 10, 9, 8, 8], new[] { Lo(0), Lo(1), Lo(2), Lo(3), Lo(4) }); // zeros -> 8
        Assert.Equal([15, 15, 7, 8], new[] { Hi(0), Hi(1), Hi(2), Hi(3) });
    }

    [Fact]
    public void All_zero_blocks_quantize_to_zero()
    {
        foreach (var t in new[] { DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q6_K })
        {
            Assert.All(RoundTrip(t, new float[256]), v => Assert.Equal(0f, v));
        }
    }

    private static void AssertBlockBound(DType t, float[] x, Func<ReadOnlySpan<float>, float> bound)
    {
        var y = RoundTrip(t, x);
        int be = DTypeInfo.BlockElements(t);
        for (int b = 0; b < x.Length / be; b++)
        {
            float limit = bound(x.AsSpan(b * be, be));
            for (int i = b * be; i < (b + 1) * be; i++)
            {
                Assert.True(MathF.Abs(x[i] - y[i]) <= limit, $"{t} element {i}: {x[i]} -> {y[i]}, error above bound {limit}");
            }
        }
    }

    private static float Amax(ReadOnlySpan<float> x)
    {
        float a = 0;
        foreach (var v in x)
        {
            a = MathF.Max(a, MathF.Abs(v));
        }
        return a;
    }

    private static float Range0(ReadOnlySpan<float> x)
    {
        float lo = 0, hi = 0;
        foreach (var v in x)
        {
            lo = MathF.Min(lo, v);
            hi = MathF.Max(hi, v);
        }
        return hi - lo;
    }

    [Theory]
    [InlineData(1f)]
    [InlineData(0.02f)]
    [InlineData(300f)]
    public void Round_trips_stay_within_documented_bounds(float scale)
    {
        var x = RandomValues(256 * 12, 7, scale);
        AssertBlockBound(DType.Q8_0, x, b => Amax(b) * Q8_0BoundOfAmax);
        AssertBlockBound(DType.Q4_0, x, b => Amax(b) * Q4_0BoundOfAmax);
        AssertBlockBound(DType.Q4_K, x, b => Range0(b) * BlockQuantizer.Q4KErrorBound);
        AssertBlockBound(DType.Q6_K, x, b => Amax(b) * BlockQuantizer.Q6KErrorBound);
        var f16 = RoundTrip(DType.F16, x);
        var bf16 = RoundTrip(DType.BF16, x);
        for (int i = 0; i < x.Length; i++)
        {
            Assert.True(MathF.Abs(f16[i] - x[i]) <= MathF.Abs(x[i]) * F16RelativeBound + 6e-8f, $"F16 {x[i]} -> {f16[i]}");
            Assert.True(MathF.Abs(bf16[i] - x[i]) <= MathF.Abs(x[i]) * Bf16RelativeBound, $"BF16 {x[i]} -> {bf16[i]}");
        }
    }

    [Fact]
    public void K_quants_are_far_better_than_their_worst_case_on_typical_data()
    {
        // Normalized MSE (error energy / signal energy): a loose sanity check that the scales are sensible.
        // 4-bit uniform quantization of a +-3 sigma range gives roughly (6 sigma / 15)^2 / 12 / sigma^2 ~ 0.013;
        // 6-bit ~ 0.001. Allow 3x.
        const float Q4KNmseLimit = 0.04f;
        const float Q6KNmseLimit = 0.003f;
        var x = RandomValues(256 * 16, 11);
        Assert.True(Nmse(x, RoundTrip(DType.Q4_K, x)) < Q4KNmseLimit);
        Assert.True(Nmse(x, RoundTrip(DType.Q6_K, x)) < Q6KNmseLimit);
    }

    private static float Nmse(float[] x, float[] y)
    {
        double e = 0, s = 0;
        for (int i = 0; i < x.Length; i++)
        {
            e += (x[i] - y[i]) * (double)(x[i] - y[i]);
            s += x[i] * (double)x[i];
        }
        return (float)(e / s);
    }

    [Fact]
    public void Bf16_rounds_to_nearest_even()
    {
        Assert.Equal(0x3F80, Bf16.FromSingle(BitConverter.UInt32BitsToSingle(0x3F808000))); // tie, even stays
        Assert.Equal(0x3F82, Bf16.FromSingle(BitConverter.UInt32BitsToSingle(0x3F818000))); // tie, odd rounds up
        Assert.Equal(0x3F81, Bf16.FromSingle(BitConverter.UInt32BitsToSingle(0x3F808001))); // above tie
        Assert.Equal(0x3F80, Bf16.FromSingle(BitConverter.UInt32BitsToSingle(0x3F807FFF))); // below tie
        Assert.True(float.IsNaN(Bf16.ToSingle(Bf16.FromSingle(float.NaN))));
        Assert.Equal(0x7F80, Bf16.FromSingle(float.PositiveInfinity));
    }

    [Fact]
    public void F16_conversion_rounds_to_nearest_even()
    {
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even -> 1.
        var b = BlockQuantizer.FromFloat32(DType.F16, [1f + MathF.Pow(2, -11), 1f + 3 * MathF.Pow(2, -11)]);
        Assert.Equal([0x00, 0x3C, 0x02, 0x3C], b);
    }
}
