using System.Buffers.Binary;

namespace Bora.Numerics.Quant;

/// <summary>
/// Reference (deterministic, scalar) conversion of float32 data to the stored types. Block layouts are
/// described on <see cref="BlockDequantizer"/>.
/// <list type="bullet">
/// <item>F16 and BF16 round to nearest, ties to even.</item>
/// <item>Q8_0 and Q4_0 reproduce llama.cpp's quantize_row_q8_0_ref / quantize_row_q4_0_ref bit for bit.</item>
/// <item>Q4_K and Q6_K use a simple (not llama.cpp's search-based) scale choice with the documented error bounds
/// <see cref="Q4KErrorBound"/> and <see cref="Q6KErrorBound"/>; llama.cpp reads the result like any other file.</item>
/// </list>
/// </summary>
public static class BlockQuantizer
{
    /// <summary>
    /// Q4_K: per 256-element super-block, every |x - dequant(x)| is at most this fraction of
    /// R = max(0, max x) - min(0, min x). Derivation: each 32-element sub-block gets step s = (hi - lo) / 15,
    /// stored as d * sc with d = max s / 63 (so |d * sc - s| &lt;= d / 2); rounding costs at most half a step
    /// (&lt;= 31.75 d) and clipping at q = 15 at most 7.5 d, the 6-bit min adds dmin / 2 with dmin &lt;= R / 63;
    /// 32 d + dmin / 2 &lt;= R * (32 / 945 + 1 / 126) = 0.0418 R. Holds while d and dmin are normal fp16 numbers.
    /// </summary>
    public const float Q4KErrorBound = 0.045f;

    /// <summary>
    /// Q6_K: per 256-element super-block, every |x - dequant(x)| is at most this fraction of A = max |x|.
    /// Derivation: each 16-element sub-block gets step s = m / -32 (m its largest-magnitude value), stored as
    /// d * sc with d = max |s| / 127; rounding costs half a step, clipping at q = 31 at most one step plus
    /// 16 d; |s| + 16.5 d &lt;= A / 32 * (1 + 16.5 / 127) = 0.0353 A. Holds while d is a normal fp16 number.
    /// </summary>
    public const float Q6KErrorBound = 0.036f;

    /// <summary>
    /// Converts float32 values to <paramref name="type"/>. <paramref name="src"/> must be a whole number of
    /// blocks and <paramref name="dst"/> exactly their byte size.
    /// </summary>
    /// <exception cref="ArgumentException">Partial block or a destination of the wrong length.</exception>
    public static void FromFloat32(DType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        int be = DTypeInfo.BlockElements(type);
        int bb = DTypeInfo.BlockBytes(type);
        if (src.Length % be != 0)
        {
            throw new ArgumentException($"{src.Length} elements is not a whole number of {type} blocks of {be}", nameof(src));
        }
        int blocks = src.Length / be;
        if ((long)blocks * bb != dst.Length)
        {
            throw new ArgumentException($"{blocks} {type} blocks take {(long)blocks * bb} bytes but the destination has {dst.Length}", nameof(dst));
        }
        for (int b = 0; b < blocks; b++)
        {
            var x = src.Slice(b * be, be);
            var y = dst.Slice(b * bb, bb);
            switch (type)
            {
                case DType.F32:
                    BinaryPrimitives.WriteSingleLittleEndian(y, x[0]);
                    break;
                case DType.F16:
                    BinaryPrimitives.WriteHalfLittleEndian(y, (Half)x[0]);
                    break;
                case DType.BF16:
                    BinaryPrimitives.WriteUInt16LittleEndian(y, Bf16.FromSingle(x[0]));
                    break;
                case DType.Q8_0:
                    QuantizeQ8_0Block(x, y);
                    break;
                case DType.Q4_0:
                    QuantizeQ4_0Block(x, y);
                    break;
                case DType.Q4_K:
                    QuantizeQ4KBlock(x, y);
                    break;
                case DType.Q6_K:
                    QuantizeQ6KBlock(x, y);
                    break;
                default:
                    throw new ArgumentOutOfRangeException(nameof(type), type, "unknown dtype");
            }
        }
    }

    /// <summary>Converts float32 values to a new array of <paramref name="type"/> bytes.</summary>
    public static byte[] FromFloat32(DType type, ReadOnlySpan<float> src)
    {
        long? size = DTypeInfo.ByteSize(type, src.Length)
            ?? throw new ArgumentException($"{src.Length} elements is not a whole number of {type} blocks", nameof(src));
        var dst = new byte[size.Value];
        FromFloat32(type, src, dst);
        return dst;
    }

    // d = amax / 127, q = round-half-away(x / d): as quantize_row_q8_0_ref.
    private static void QuantizeQ8_0Block(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0f;
        for (int j = 0; j < 32; j++)
        {
            amax = Math.Max(amax, MathF.Abs(x[j]));
        }
        float d = amax / 127f;
        float id = d != 0f ? 1.0f / d : 0f;
        BinaryPrimitives.WriteHalfLittleEndian(y, (Half)d);
        for (int j = 0; j < 32; j++)
        {
            y[2 + j] = (byte)(sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
        }
    }

    // d = (signed value of largest magnitude) / -8; q = min(15, trunc(x / d + 8.5)): as quantize_row_q4_0_ref.
    private static void QuantizeQ4_0Block(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0f, max = 0f;
        for (int j = 0; j < 32; j++)
        {
            float a = MathF.Abs(x[j]);
            if (amax < a)
            {
                amax = a;
                max = x[j];
            }
        }
        float d = max / -8f;
        float id = d != 0f ? 1.0f / d : 0f;
        BinaryPrimitives.WriteHalfLittleEndian(y, (Half)d);
        for (int j = 0; j < 16; j++)
        {
            float x0 = x[j] * id;
            float x1 = x[16 + j] * id;
            int q0 = Math.Min(15, (int)(sbyte)(int)(x0 + 8.5f));
            int q1 = Math.Min(15, (int)(sbyte)(int)(x1 + 8.5f));
            y[2 + j] = (byte)(q0 | (q1 << 4));
        }
    }

    private static void QuantizeQ4KBlock(ReadOnlySpan<float> x, Span<byte> y)
    {
        // x: 256 elements = 8 sub-blocks (s) of 32; y: 144 bytes.
        Span<float> step = stackalloc float[8];
        Span<float> offset = stackalloc float[8];
        float maxStep = 0f, maxOffset = 0f;
        for (int s = 0; s < 8; s++)
        {
            var xs = x.Slice(32 * s, 32);
            float lo = 0f, hi = xs[0];
            for (int l = 0; l < 32; l++)
            {
                lo = Math.Min(lo, xs[l]);
                hi = Math.Max(hi, xs[l]);
            }
            step[s] = (hi - lo) / 15f; // x = step * q - offset with q in 0..15
            offset[s] = -lo;
            maxStep = Math.Max(maxStep, step[s]);
            maxOffset = Math.Max(maxOffset, offset[s]);
        }
        float d = (float)(Half)(maxStep / 63f);
        float dmin = (float)(Half)(maxOffset / 63f);
        BinaryPrimitives.WriteHalfLittleEndian(y, (Half)d);
        BinaryPrimitives.WriteHalfLittleEndian(y[2..], (Half)dmin);
        Span<int> sc = stackalloc int[8];
        Span<int> mn = stackalloc int[8];
        for (int s = 0; s < 8; s++)
        {
            sc[s] = d > 0f ? Math.Clamp((int)MathF.Round(step[s] / d), 0, 63) : 0;
            mn[s] = dmin > 0f ? Math.Clamp((int)MathF.Round(offset[s] / dmin), 0, 63) : 0;
        }
        var packed = y.Slice(4, 12);
        for (int j = 0; j < 4; j++)
        {
            // sub-blocks 0..3: low 6 bits of packed[j] / packed[j + 4]; sub-blocks 4..7: nibbles of packed[j + 8]
            // plus their top 2 bits in the top 2 bits of packed[j] (scale) and packed[j + 4] (min).
            packed[j] = (byte)(sc[j] | ((sc[j + 4] >> 4) << 6));
            packed[j + 4] = (byte)(mn[j] | ((mn[j + 4] >> 4) << 6));
            packed[j + 8] = (byte)((sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4));
        }
        var qs = y.Slice(16, 128);
        qs.Clear();
        for (int s = 0; s < 8; s++)
        {
            // Recompute the effective step / offset exactly as the dequantizer does.
            float st = d * sc[s];
            float off = dmin * mn[s];
            int c = s / 2, shift = (s & 1) * 4;
            for (int l = 0; l < 32; l++)
            {
                int q = st > 0f ? Math.Clamp((int)MathF.Round((x[32 * s + l] + off) / st), 0, 15) : 0;
                qs[32 * c + l] |= (byte)(q << shift);
            }
        }
    }

    private static void QuantizeQ6KBlock(ReadOnlySpan<float> x, Span<byte> y)
    {
        // x: 256 elements = 16 sub-blocks of 16; y: 210 bytes (ql 128, qh 64, scales 16, d 2).
        Span<float> step = stackalloc float[16];
        float maxAbsStep = 0f;
        for (int s = 0; s < 16; s++)
        {
            float amax = 0f, max = 0f;
            for (int l = 0; l < 16; l++)
            {
                float v = x[16 * s + l];
                if (MathF.Abs(v) > amax)
                {
                    amax = MathF.Abs(v);
                    max = v;
                }
            }
            step[s] = max / -32f; // the largest-magnitude value maps to q = -32
            maxAbsStep = Math.Max(maxAbsStep, MathF.Abs(step[s]));
        }
        float d = (float)(Half)(maxAbsStep / 127f);
        BinaryPrimitives.WriteHalfLittleEndian(y[208..], (Half)d);
        var ql = y[..128];
        var qh = y.Slice(128, 64);
        ql.Clear();
        qh.Clear();
        for (int s = 0; s < 16; s++)
        {
            int sc = d > 0f ? Math.Clamp((int)MathF.Round(step[s] / d), -128, 127) : 0;
            y[192 + s] = (byte)(sbyte)sc;
            float st = d * sc;
            for (int l = 0; l < 16; l++)
            {
                int e = 16 * s + l;
                int q = st != 0f ? Math.Clamp((int)MathF.Round(x[e] / st), -32, 31) + 32 : 32;
                // e = 128h + 32k + i: low nibble in ql[64h + i + 32(k & 1)] (high half when k >= 2),
                // high 2 bits in qh[32h + i] at bit 2k.
                int h = e / 128, k = (e % 128) / 32, i = e % 32;
                ql[64 * h + i + 32 * (k & 1)] |= (byte)((q & 0x0F) << (k >= 2 ? 4 : 0));
                qh[32 * h + i] |= (byte)((q >> 4) << (2 * k));
            }
        }
    }
}
