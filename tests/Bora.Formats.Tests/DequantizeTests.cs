using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Formats.Tests;

/// <summary>
/// Dequantization against hand-built blocks whose expected values are worked out from the ggml block
/// definitions (ggml-common.h), not from the implementation.
/// </summary>
[Trait("Category", "Kernels")]
public class DequantizeTests
{
    // IEEE half bit patterns of a few exact scales.
    private const ushort HalfQuarter = 0x3400; // 0.25
    private const ushort HalfHalf = 0x3800;    // 0.5
    private const ushort HalfOne = 0x3C00;     // 1.0
    private const ushort HalfTwo = 0x4000;     // 2.0

    private static void PutHalf(byte[] b, int at, ushort bits)
    {
        b[at] = (byte)bits;
        b[at + 1] = (byte)(bits >> 8);
    }

    private static float[] Dequant(DType t, byte[] src)
    {
        var y = new float[src.Length / DTypeInfo.BlockBytes(t) * DTypeInfo.BlockElements(t)];
        BlockDequantizer.ToFloat32(t, src, y);
        var scalar = new float[y.Length];
        BlockDequantizer.ToFloat32Scalar(t, src, scalar);
        Assert.Equal(scalar, y);
        return y;
    }

    [Fact]
    public void Q8_0_is_d_times_int8()
    {
        var b = new byte[34];
        PutHalf(b, 0, HalfHalf);
        for (int j = 0; j < 32; j++)
        {
            b[2 + j] = (byte)(sbyte)(j * 9 - 128 + (j == 31 ? -24 : 0)); // -128, -119, ..., 127 at j = 31 (279-128-24)
        }
        var y = Dequant(DType.Q8_0, b);
        Assert.Equal(-64f, y[0]);            // -128 * 0.5
        Assert.Equal(-59.5f, y[1]);          // -119 * 0.5
        Assert.Equal(63.5f, y[31]);          // 127 * 0.5
        for (int j = 0; j < 32; j++)
        {
            Assert.Equal((sbyte)b[2 + j] * 0.5f, y[j]);
        }
    }

    [Fact]
    public void Q4_0_low_nibbles_first_half_high_nibbles_second_half()
    {
        var b = new byte[18];
        PutHalf(b, 0, HalfTwo);
        for (int j = 0; j < 16; j++)
        {
            b[2 + j] = (byte)(j | ((15 - j) << 4));
        }
        var y = Dequant(DType.Q4_0, b);
        // element j = (j - 8) * 2, element j + 16 = ((15 - j) - 8) * 2
        Assert.Equal(-16f, y[0]);
        Assert.Equal(14f, y[15]);
        Assert.Equal(14f, y[16]);
        Assert.Equal(-16f, y[31]);
        for (int j = 0; j < 16; j++)
        {
            Assert.Equal((j - 8) * 2f, y[j]);
            Assert.Equal((7 - j) * 2f, y[j + 16]);
        }
    }

    // Scales / mins of the 8 Q4_K sub-blocks and their hand-packed 12 bytes (get_scale_min_k4 layout):
    // sc = {1, 2, 3, 4, 17, 33, 49, 63}, m = {0, 1, 2, 3, 16, 32, 48, 62}.
    // bytes 0..3 = sc[0..3] | (sc[4..7] >> 4) << 6; bytes 4..7 = m[0..3] | (m[4..7] >> 4) << 6;
    // bytes 8..11 = (sc[4..7] & 15) | (m[4..7] & 15) << 4.
    private static readonly int[] Q4KScales = [1, 2, 3, 4, 17, 33, 49, 63];
    private static readonly int[] Q4KMins = [0, 1, 2, 3, 16, 32, 48, 62];
    private static readonly byte[] Q4KPacked = [0x41, 0x82, 0xC3, 0xC4, 0x40, 0x81, 0xC2, 0xC3, 0x01, 0x01, 0x01, 0xEF];

    [Fact]
    public void Q4_K_scale_min_unpacking_matches_hand_packing()
    {
        for (int j = 0; j < 8; j++)
        {
            var (sc, m) = BlockDequantizer.ScaleMinK4(j, Q4KPacked);
            Assert.Equal(Q4KScales[j], sc);
            Assert.Equal(Q4KMins[j], m);
        }
    }

    [Fact]
    public void Q4_K_is_d_sc_q_minus_dmin_m()
    {
        var b = new byte[144];
        PutHalf(b, 0, HalfOne);  // d
        PutHalf(b, 2, HalfHalf); // dmin
        Q4KPacked.CopyTo(b, 4);
        for (int c = 0; c < 4; c++)
        {
            for (int l = 0; l < 32; l++)
            {
                b[16 + 32 * c + l] = (byte)((l % 16) | (((l * 7) % 16) << 4));
            }
        }
        var y = Dequant(DType.Q4_K, b);
        for (int c = 0; c < 4; c++)
        {
            for (int l = 0; l < 32; l++)
            {
                int s0 = 2 * c, s1 = 2 * c + 1;
                Assert.Equal(1f * Q4KScales[s0] * (l % 16) - 0.5f * Q4KMins[s0], y[64 * c + l]);
                Assert.Equal(1f * Q4KScales[s1] * ((l * 7) % 16) - 0.5f * Q4KMins[s1], y[64 * c + 32 + l]);
            }
        }
        // Spot values: sub-block 7 (c = 3, high nibbles), l = 3: q = 21 % 16 = 5 -> 63 * 5 - 0.5 * 62 = 284.
        Assert.Equal(284f, y[64 * 3 + 32 + 3]);
    }

    [Fact]
    public void Q6_K_single_nonzero_element_lands_where_the_layout_says()
    {
        // All ql/qh zero -> q = -32 everywhere, except element 200 = 128*1 + 32*2 + 8 (h = 1, k = 2, l = 8):
        // its low nibble is the HIGH nibble of ql[64 + 8] and its high bits are bits 4..5 of qh[32 + 8].
        var b = new byte[210];
        b[72] = 0xA0;  // high nibble 10
        b[128 + 40] = 0x30; // bits 4..5 = 3
        for (int s = 0; s < 16; s++)
        {
            b[192 + s] = (byte)(sbyte)(s - 8);
        }
        PutHalf(b, 208, HalfQuarter);
        var y = Dequant(DType.Q6_K, b);
        for (int e = 0; e < 256; e++)
        {
            int q = e == 200 ? (10 | (3 << 4)) - 32 : -32; // 58 - 32 = 26
            float expected = 0.25f * (e / 16 - 8) * q;
            Assert.Equal(expected, y[e]);
        }
        Assert.Equal(0.25f * 4 * 26, y[200]); // scale index 200 / 16 = 12 -> 12 - 8 = 4
    }

    [Fact]
    public void Q6_K_full_pattern_from_block_definition()
    {
        // Fill every element with q(e) = (5e mod 64) - 32 following dequantize_row_q6_K's loop structure:
        // for half h, l in 0..31: y[l] <- ql[l] low | qh[l] bits 0-1; y[l+32] <- ql[l+32] low | bits 2-3;
        // y[l+64] <- ql[l] high | bits 4-5; y[l+96] <- ql[l+32] high | bits 6-7.
        static int Q(int e) => (5 * e) % 64;
        var b = new byte[210];
        for (int h = 0; h < 2; h++)
        {
            for (int l = 0; l < 32; l++)
            {
                int e = 128 * h + l;
                b[64 * h + l] = (byte)((Q(e) & 15) | ((Q(e + 64) & 15) << 4));
                b[64 * h + l + 32] = (byte)((Q(e + 32) & 15) | ((Q(e + 96) & 15) << 4));
                b[128 + 32 * h + l] = (byte)((Q(e) >> 4) | ((Q(e + 32) >> 4) << 2) | ((Q(e + 64) >> 4) << 4) | ((Q(e + 96) >> 4) << 6));
            }
        }
        for (int s = 0; s < 16; s++)
        {
            b[192 + s] = (byte)(sbyte)(3 * s - 20);
        }
        PutHalf(b, 208, HalfHalf);
        var y = Dequant(DType.Q6_K, b);
        for (int e = 0; e < 256; e++)
        {
            Assert.Equal(0.5f * (3 * (e / 16) - 20) * (Q(e) - 32), y[e]);
        }
    }

    [Fact]
    public void F16_and_BF16_known_bit_patterns()
    {
        var f16 = new byte[] { 0x00, 0x3C, 0x00, 0xC0, 0x01, 0x00, 0xFF, 0x7B }; // 1, -2, 2^-24, 65504
        Assert.Equal([1f, -2f, MathF.Pow(2, -24), 65504f], Dequant(DType.F16, f16));
        var bf16 = new byte[] { 0x80, 0x3F, 0x49, 0x40, 0x80, 0xFF }; // 1, 3.140625, -inf
        Assert.Equal([1f, 3.140625f, float.NegativeInfinity], Dequant(DType.BF16, bf16));
    }

    [Fact]
    public void Partial_blocks_and_wrong_destination_are_rejected()
    {
        Assert.Throws<ArgumentException>(() => BlockDequantizer.ToFloat32(DType.Q8_0, new byte[35], new float[32]));
        Assert.Throws<ArgumentException>(() => BlockDequantizer.ToFloat32(DType.Q4_K, new byte[144], new float[255]));
    }

    /// <summary>Random block bytes whose f16 scales are finite (so results compare bit for bit).</summary>
    private static byte[] RandomBlocks(DType t, int blocks, Random rng)
    {
        int bb = DTypeInfo.BlockBytes(t);
        var b = new byte[blocks * bb];
        rng.NextBytes(b);
        for (int i = 0; i < blocks; i++)
        {
            int[] halfAt = t switch
            {
                DType.Q8_0 or DType.Q4_0 => [0],
                DType.Q4_K => [0, 2],
                DType.Q6_K => [208],
                DType.F16 => [0],
                _ => [],
            };
            foreach (int at in halfAt)
            {
                PutHalf(b, i * bb + at, BitConverter.HalfToUInt16Bits((Half)(rng.NextSingle() * 4 - 2)));
            }
        }
        return b;
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    [InlineData(DType.Q8_0)]
    [InlineData(DType.Q4_0)]
    [InlineData(DType.Q4_K)]
    [InlineData(DType.Q6_K)]
    public void Vectorized_path_equals_scalar_twin_for_every_length(DType t)
    {
        var rng = new Random(1234 + (int)t);
        int maxBlocks = DTypeInfo.BlockElements(t) == 1 ? 256 : 9;
        for (int n = 0; n <= maxBlocks; n++)
        {
            var src = RandomBlocks(t, n, rng);
            if (t == DType.BF16)
            {
                for (int i = 0; i < src.Length; i += 2)
                {
                    src[i + 1] &= 0x7F ^ 0x40; // keep exponents small: finite values only
                }
            }
            int elems = n * DTypeInfo.BlockElements(t);
            var fast = new float[elems];
            var slow = new float[elems];
            BlockDequantizer.ToFloat32(t, src, fast);
            BlockDequantizer.ToFloat32Scalar(t, src, slow);
            for (int i = 0; i < elems; i++)
            {
                Assert.Equal(BitConverter.SingleToUInt32Bits(slow[i]), BitConverter.SingleToUInt32Bits(fast[i]));
            }
        }
    }
}
