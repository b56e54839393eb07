using System.Runtime.Intrinsics;
using Bora.Numerics;

namespace Bora.Model.Tests.QuantKernels;

/// <summary>The vector half &lt;-&gt; float32 conversions against their scalar twins, bit for bit, over lengths 0..256.</summary>
[Trait("Category", "Kernels")]
public sealed class HalfConversionTests
{
    /// <summary>Halves of every kind: normals, subnormals, ±0, ±inf, NaN, the extremes.</summary>
    private static Half[] Halves(int n, int seed)
    {
        var rng = new Random(seed);
        ushort[] special = [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE01, 0x7C01, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00];
        return [.. Enumerable.Range(0, n).Select(i => BitConverter.UInt16BitsToHalf(rng.Next(3) == 0 ? special[rng.Next(special.Length)] : (ushort)rng.Next(65536)))];
    }

    /// <summary>Equal bits, or both NaN (a NaN's payload is not part of the contract).</summary>
    private static void AssertSame(float expected, float actual, string what)
    {
        if (!(float.IsNaN(expected) && float.IsNaN(actual)))
        {
            Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(actual), $"{what}: expected {expected} ({BitConverter.SingleToInt32Bits(expected):X8}), got {actual} ({BitConverter.SingleToInt32Bits(actual):X8})");
        }
    }

    [Fact]
    public void ToSingle_matches_the_scalar_twin_for_every_length_and_kind()
    {
        for (int n = 0; n <= 256; n++)
        {
            var src = Halves(n, n);
            var expected = new float[n + 1];
            var actual = new float[n + 1];
            expected[n] = actual[n] = 123f; // the value after the span stays
            HalfConversion.ToSingleScalar(src, expected);
            HalfConversion.ToSingle(src, actual);
            for (int i = 0; i <= n; i++)
            {
                AssertSame(expected[i], actual[i], $"n = {n}, i = {i}, half bits {(i < n ? BitConverter.HalfToUInt16Bits(src[i]) : 0):X4}");
            }
        }
    }

    [Fact]
    public void Every_half_widens_exactly()
    {
        var all = Enumerable.Range(0, 65536).Select(b => BitConverter.UInt16BitsToHalf((ushort)b)).ToArray();
        var actual = new float[all.Length];
        HalfConversion.ToSingle(all, actual);
        for (int i = 0; i < all.Length; i++)
        {
            AssertSame((float)all[i], actual[i], $"half bits {i:X4}");
        }
    }

    [Fact]
    public unsafe void Every_finite_half_widens_exactly_without_the_special_lanes()
    {
        // All 63488 finite halves (exponent below 31), 8 (AVX2) or 16 (AVX-512) at a time.
        var finite = Enumerable.Range(0, 65536).Where(b => (b & 0x7C00) != 0x7C00).Select(b => (short)b).ToArray();
        Assert.Equal(63488, finite.Length);
        fixed (short* p = finite)
        {
            for (int i = 0; i < finite.Length; i += 16)
            {
                for (int k = 0; k < 16; k++)
                {
                    float expected = (float)BitConverter.Int16BitsToHalf(finite[i + k]);
                    if (System.Runtime.Intrinsics.X86.Avx2.IsSupported)
                    {
                        AssertSame(expected, HalfConversion.WidenFinite256(Vector128.Load(p + i + k / 8 * 8)).GetElement(k % 8), $"256: half bits {finite[i + k]:X4}");
                    }
                    if (System.Runtime.Intrinsics.X86.Avx512F.IsSupported)
                    {
                        AssertSame(expected, HalfConversion.WidenFinite512(Vector256.Load(p + i)).GetElement(k), $"512: half bits {finite[i + k]:X4}");
                    }
                }
            }
        }
    }

    [Fact]
    public void AnyNonFinite_finds_an_infinity_or_a_NaN_at_every_place()
    {
        ushort[] nonFinite = [0x7C00, 0xFC00, 0x7E00, 0xFE01, 0x7C01, 0xFFFF];
        var rng = new Random(9);
        for (int n = 0; n <= 64; n++)
        {
            // Finite halves of every kind, the largest and the subnormals included.
            var src = Enumerable.Range(0, n).Select(_ => BitConverter.UInt16BitsToHalf((ushort)(rng.Next(65536) & ~(rng.Next(2) == 0 ? 0x4000 : 0x0400)))).ToArray();
            Assert.False(HalfConversion.AnyNonFinite(src), $"n = {n}: all finite");
            for (int i = 0; i < n; i++)
            {
                var copy = (Half[])src.Clone();
                copy[i] = BitConverter.UInt16BitsToHalf(nonFinite[rng.Next(nonFinite.Length)]);
                Assert.True(HalfConversion.AnyNonFinite(copy), $"n = {n}, non-finite at {i}");
            }
        }
    }

    [Fact]
    public void ToHalf_and_RoundToHalf_match_the_scalar_twin()
    {
        var rng = new Random(5);
        float[] special = [0f, -0f, float.PositiveInfinity, float.NegativeInfinity, float.NaN, 1e-6f, -6e-8f, 2e-8f, 65504f, 65519f, 65520f, 1e9f, 1 + 1f / 2048, 1 + 3f / 2048, float.Epsilon];
        for (int n = 0; n <= 256; n++)
        {
            var src = Enumerable.Range(0, n).Select(_ => rng.Next(4) == 0 ? special[rng.Next(special.Length)] : (float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-30, 20)))).ToArray();
            var expected = new Half[n];
            var actual = new Half[n];
            HalfConversion.ToHalfScalar(src, expected);
            HalfConversion.ToHalf(src, actual);
            var rounded = (float[])src.Clone();
            HalfConversion.RoundToHalf(rounded);
            for (int i = 0; i < n; i++)
            {
                AssertSame((float)expected[i], (float)actual[i], $"n = {n}, x = {src[i]}");
                AssertSame((float)expected[i], rounded[i], $"rounded, n = {n}, x = {src[i]}");
            }
        }
        // RoundToHalf runs in chunks of 256: a longer span is rounded throughout.
        var longer = Enumerable.Range(0, 1000).Select(i => 1 + i / 3000f).ToArray();
        var copy = (float[])longer.Clone();
        HalfConversion.RoundToHalf(longer);
        Assert.Equal(copy.Select(x => (float)(Half)x), longer);
    }

    [Fact]
    public void Short_destinations_are_refused()
    {
        Assert.Throws<ArgumentException>(() => HalfConversion.ToSingle(new Half[4], new float[3]));
        Assert.Throws<ArgumentException>(() => HalfConversion.ToHalf(new float[4], new Half[3]));
    }
}
