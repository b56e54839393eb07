using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Bora.Numerics.Quant;

/// <summary>
/// Converts stored blocks (GGUF / ggml layouts, little-endian) to float32.
/// Byte layouts of one block (offsets in bytes, "f16" is IEEE half):
/// <list type="bullet">
/// <item>Q8_0 (34 B, 32 elements): [0,2) f16 d; [2,34) int8 q[32]; x[j] = q[j] * d.</item>
/// <item>Q4_0 (18 B, 32 elements): [0,2) f16 d; [2,18) qs[16]; x[j] = ((qs[j] &amp; 15) - 8) * d and
/// x[j + 16] = ((qs[j] &gt;&gt; 4) - 8) * d for j in 0..15.</item>
/// <item>Q4_K (144 B, 256 elements = 8 sub-blocks of 32): [0,2) f16 d; [2,4) f16 dmin; [4,16) 12 bytes of
/// packed 6-bit scales sc[8] and mins m[8] (see <see cref="ScaleMinK4"/>); [16,144) qs[128].
/// Chunk c (0..3) of 64 elements uses qs[32c .. 32c+32): the low nibbles are sub-block 2c, the high nibbles
/// sub-block 2c+1; x = d * sc[s] * q - dmin * m[s].</item>
/// <item>Q6_K (210 B, 256 elements = 16 sub-blocks of 16): [0,128) ql (low 4 bits); [128,192) qh (high 2 bits);
/// [192,208) int8 scales[16]; [208,210) f16 d. Element e = 128h + 32k + l (h in 0..1, k in 0..3, l in 0..31)
/// takes its low nibble from ql[64h + l + 32(k &amp; 1)] (low nibble for k &lt; 2, high nibble for k &gt;= 2), its
/// high 2 bits from qh[32h + l] bits (2k, 2k+1); q = (low | high &lt;&lt; 4) - 32; x = d * scales[e / 16] * q.</item>
/// </list>
/// Worked example (Q6_K, e = 200): h = 1, k = 2, l = 8: low nibble = high nibble of ql[64 + 8] = ql[72],
/// high bits = bits 4..5 of qh[32 + 8] = qh[40], scale = scales[12].
/// </summary>
public static class BlockDequantizer
{
    /// <summary>
    /// Converts whole blocks of <paramref name="type"/> to float32. <paramref name="src"/> must hold a whole
    /// number of blocks and <paramref name="dst"/> exactly their element count.
    /// </summary>
    /// <exception cref="ArgumentException">Partial block or a destination of the wrong length.</exception>
    public static void ToFloat32(DType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        int blocks = CheckLengths(type, src, dst);
        switch (type)
        {
            case DType.F32:
                MemoryMarshal.Cast<byte, float>(src).CopyTo(dst);
                break;
            case DType.F16:
                TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(src), dst);
                break;
            case DType.BF16:
                Bf16Vector(src, dst);
                break;
            case DType.Q8_0:
                Q8_0Vector(src, dst, blocks);
                break;
            case DType.Q4_0:
                Q4_0Vector(src, dst, blocks);
                break;
            default:
                ToFloat32Scalar(type, src, dst);
                break;
        }
    }

    /// <summary>The plain scalar twin of <see cref="ToFloat32"/>; tests assert both agree bit for bit.</summary>
    internal static void ToFloat32Scalar(DType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        int blocks = CheckLengths(type, src, dst);
        switch (type)
        {
            case DType.F32:
                for (int i = 0; i < blocks; i++)
                {
                    dst[i] = BinaryPrimitives.ReadSingleLittleEndian(src[(4 * i)..]);
                }
                break;
            case DType.F16:
                for (int i = 0; i < blocks; i++)
                {
                    dst[i] = (float)BinaryPrimitives.ReadHalfLittleEndian(src[(2 * i)..]);
                }
                break;
            case DType.BF16:
                for (int i = 0; i < blocks; i++)
                {
                    dst[i] = Bf16.ToSingle(BinaryPrimitives.ReadUInt16LittleEndian(src[(2 * i)..]));
                }
                break;
            case DType.Q8_0:
                for (int b = 0; b < blocks; b++)
                {
                    var blk = src.Slice(b * 34, 34);
                    var y = dst.Slice(b * 32, 32);
                    float d = ReadHalf(blk, 0);
                    for (int j = 0; j < 32; j++)
                    {
                        y[j] = (sbyte)blk[2 + j] * d;
                    }
                }
                break;
            case DType.Q4_0:
                for (int b = 0; b < blocks; b++)
                {
                    var blk = src.Slice(b * 18, 18);
                    var y = dst.Slice(b * 32, 32);
                    float d = ReadHalf(blk, 0);
                    for (int j = 0; j < 16; j++)
                    {
                        int q = blk[2 + j];
                        y[j] = ((q & 0x0F) - 8) * d;
                        y[j + 16] = ((q >> 4) - 8) * d;
                    }
                }
                break;
            case DType.Q4_K:
                for (int b = 0; b < blocks; b++)
                {
                    DequantQ4K(src.Slice(b * 144, 144), dst.Slice(b * 256, 256));
                }
                break;
            case DType.Q6_K:
                for (int b = 0; b < blocks; b++)
                {
                    DequantQ6K(src.Slice(b * 210, 210), dst.Slice(b * 256, 256));
                }
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "unknown dtype");
        }
    }

    /// <summary>
    /// Unpacks the 6-bit scale and min of sub-block <paramref name="j"/> (0..7) from the 12 packed bytes
    /// <paramref name="s"/> of a Q4_K block. Sub-blocks 0..3 keep scale and min in the low 6 bits of s[j] and
    /// s[j+4]; sub-blocks 4..7 keep their low 4 bits in the low / high nibble of s[j+4] and their top 2 bits in
    /// the top 2 bits of s[j-4] (scale) and s[j] (min).
    /// Example: j = 5: scale = (s[9] &amp; 15) | (s[1] &gt;&gt; 6) &lt;&lt; 4, min = (s[9] &gt;&gt; 4) | (s[5] &gt;&gt; 6) &lt;&lt; 4.
    /// </summary>
    internal static (int Scale, int Min) ScaleMinK4(int j, ReadOnlySpan<byte> s)
    {
        if (j < 4)
        {
            return (s[j] & 63, s[j + 4] & 63);
        }
        return ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }

    private static void DequantQ4K(ReadOnlySpan<byte> blk, Span<float> y)
    {
        // blk: 144 bytes; y: 256 elements.
        float d = ReadHalf(blk, 0);
        float dmin = ReadHalf(blk, 2);
        var scales = blk.Slice(4, 12);
        var qs = blk.Slice(16, 128);
        for (int c = 0; c < 4; c++)
        {
            var (sc1, m1i) = ScaleMinK4(2 * c, scales);
            var (sc2, m2i) = ScaleMinK4(2 * c + 1, scales);
            float d1 = d * sc1, m1 = dmin * m1i;
            float d2 = d * sc2, m2 = dmin * m2i;
            var q = qs.Slice(32 * c, 32);
            var y1 = y.Slice(64 * c, 32);
            var y2 = y.Slice(64 * c + 32, 32);
            for (int l = 0; l < 32; l++)
            {
                y1[l] = d1 * (q[l] & 0x0F) - m1;
                y2[l] = d2 * (q[l] >> 4) - m2;
            }
        }
    }

    private static void DequantQ6K(ReadOnlySpan<byte> blk, Span<float> y)
    {
        // blk: 210 bytes; y: 256 elements.
        float d = ReadHalf(blk, 208);
        var scales = MemoryMarshal.Cast<byte, sbyte>(blk.Slice(192, 16));
        for (int h = 0; h < 2; h++)
        {
            var ql = blk.Slice(64 * h, 64);
            var qh = blk.Slice(128 + 32 * h, 32);
            var sc = scales.Slice(8 * h, 8);
            var yh = y.Slice(128 * h, 128);
            for (int l = 0; l < 32; l++)
            {
                int @is = l / 16;
                int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                yh[l] = d * sc[@is + 0] * q1;
                yh[l + 32] = d * sc[@is + 2] * q2;
                yh[l + 64] = d * sc[@is + 4] * q3;
                yh[l + 96] = d * sc[@is + 6] * q4;
            }
        }
    }

    private static void Bf16Vector(ReadOnlySpan<byte> src, Span<float> dst)
    {
        var bits = MemoryMarshal.Cast<byte, ushort>(src);
        var outBits = MemoryMarshal.Cast<float, uint>(dst);
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 16 <= bits.Length; i += 16)
            {
                var v = Vector256.Create(bits.Slice(i, 16));
                var (lo, hi) = Vector256.Widen(v);
                Vector256.ShiftLeft(lo, 16).CopyTo(outBits.Slice(i, 8));
                Vector256.ShiftLeft(hi, 16).CopyTo(outBits.Slice(i + 8, 8));
            }
        }
        for (; i < bits.Length; i++)
        {
            outBits[i] = (uint)bits[i] << 16;
        }
    }

    private static void Q8_0Vector(ReadOnlySpan<byte> src, Span<float> dst, int blocks)
    {
        if (!Vector256.IsHardwareAccelerated)
        {
            ToFloat32Scalar(DType.Q8_0, src, dst);
            return;
        }
        for (int b = 0; b < blocks; b++)
        {
            var blk = src.Slice(b * 34, 34);
            var y = dst.Slice(b * 32, 32);
            var vd = Vector256.Create(ReadHalf(blk, 0));
            var q = Vector256.Create(MemoryMarshal.Cast<byte, sbyte>(blk.Slice(2, 32)));
            var (q16a, q16b) = Vector256.Widen(q);
            StoreScaled(q16a, vd, y[..16]);
            StoreScaled(q16b, vd, y[16..]);
        }
    }

    private static void Q4_0Vector(ReadOnlySpan<byte> src, Span<float> dst, int blocks)
    {
        if (!Vector128.IsHardwareAccelerated || !Vector256.IsHardwareAccelerated)
        {
            ToFloat32Scalar(DType.Q4_0, src, dst);
            return;
        }
        var mask = Vector128.Create((byte)0x0F);
        var eight = Vector128.Create((sbyte)8);
        for (int b = 0; b < blocks; b++)
        {
            var blk = src.Slice(b * 18, 18);
            var y = dst.Slice(b * 32, 32);
            var vd = Vector256.Create(ReadHalf(blk, 0));
            var qs = Vector128.Create(blk.Slice(2, 16));
            // low nibbles -> elements 0..15, high nibbles -> elements 16..31
            var lo = (qs & mask).AsSByte() - eight;
            var hi = Vector128.ShiftRightLogical(qs, 4).AsSByte() - eight;
            StoreScaled(Vector256.WidenLower(lo.ToVector256()), vd, y[..16]);
            StoreScaled(Vector256.WidenLower(hi.ToVector256()), vd, y[16..]);
        }
    }

    /// <summary>Writes 16 floats: float(q[i]) * d.</summary>
    private static void StoreScaled(Vector256<short> q16, Vector256<float> d, Span<float> y)
    {
        var (a, b) = Vector256.Widen(q16);
        (Vector256.ConvertToSingle(a) * d).CopyTo(y[..8]);
        (Vector256.ConvertToSingle(b) * d).CopyTo(y.Slice(8, 8));
    }

    private static float ReadHalf(ReadOnlySpan<byte> blk, int offset) =>
        (float)BinaryPrimitives.ReadHalfLittleEndian(blk[offset..]);

    private static int CheckLengths(DType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        int bb = DTypeInfo.BlockBytes(type);
        int be = DTypeInfo.BlockElements(type);
        if (src.Length % bb != 0)
        {
            throw new ArgumentException($"{src.Length} bytes is not a whole number of {type} blocks of {bb} bytes", nameof(src));
        }
        int blocks = src.Length / bb;
        if ((long)blocks * be != dst.Length)
        {
            throw new ArgumentException($"{blocks} {type} blocks hold {(long)blocks * be} elements but the destination has {dst.Length}", nameof(dst));
        }
        return blocks;
    }
}
