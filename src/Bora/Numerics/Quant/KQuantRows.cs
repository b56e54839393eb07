using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Numerics.Quant;

/// <summary>
/// AVX-512 row kernels for the K formats (Q4_K, Q6_K; activations in blocks of 256): decode and small batches (every
/// (row, token) is one call of <see cref="Q4KRow"/> / <see cref="Q6KRow"/>, so results do not depend on the token count
/// or the threads). Per super-block the integer sums stay exact in int32 lanes (the 6-bit scales applied by vpmaddwd)
/// and are scaled once: acc += (d d_x) isum, and a second accumulator takes the min (Q4_K) or offset (Q6_K) term.
/// Letters: K = cols, nb = K / 256 super-blocks.
/// </summary>
internal static unsafe class KQuantRows
{
    /// <summary>Whether these kernels run a product of <paramref name="tokens"/> tokens of <paramref name="type"/> at <paramref name="isa"/>.</summary>
    public static bool Covers(DType type, QuantIsa isa, int tokens) =>
        isa == QuantIsa.Avx512 && (type == DType.Q6_K || (type == DType.Q4_K && !Q4KInterleaved.Covers(isa, tokens)));

    /// <summary>y[t, r] for r in [r0, r1), t in [0, tokens). w: (N, rowBytes) blocks; y: (T, N).</summary>
    public static void Run(DType type, byte* w, long rowBytes, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        for (int r = r0; r < r1; r++)
        {
            byte* row = w + r * rowBytes;
            if (r + 1 < r1)
            {
                Sse.Prefetch1(row + rowBytes); // the next row (one sequential stream overall)
            }
            for (int t = 0; t < tokens; t++)
            {
                y[(long)t * n + r] = type == DType.Q4_K ? Q4KRow(row, act.Row(t), nb) : Q6KRow(row, act.Row(t), nb);
            }
        }
    }

    /// <summary>
    /// The 8 6-bit scales (bytes 0..7) and mins (bytes 8..15) of a Q4_K super-block from its 12 packed bytes (words
    /// A = bytes 0..3, B = 4..7, C = 8..11): sc[0..3] = A &amp; 63, m[0..3] = B &amp; 63, sc[4..7] = (C &amp; 15) | (A &gt;&gt; 6) &lt;&lt; 4,
    /// m[4..7] = (C &gt;&gt; 4) | (B &gt;&gt; 6) &lt;&lt; 4, bytewise (as <see cref="BlockDequantizer.ScaleMinK4"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static (ulong Scales, ulong Mins) UnpackScalesK4(byte* packed)
    {
        uint a = Unsafe.ReadUnaligned<uint>(packed), b = Unsafe.ReadUnaligned<uint>(packed + 4), c = Unsafe.ReadUnaligned<uint>(packed + 8);
        uint sc4 = (c & 0x0F0F0F0F) | (((a >> 6) & 0x03030303) << 4);
        uint m4 = ((c >> 4) & 0x0F0F0F0F) | (((b >> 6) & 0x03030303) << 4);
        return ((a & 0x3F3F3F3F) | ((ulong)sc4 << 32), (b & 0x3F3F3F3F) | ((ulong)m4 << 32));
    }

    /// <summary>
    /// One Q4_K row with one token: per 64-value chunk c, the low nibbles of qs[32c..] are sub-block 2c and the high
    /// nibbles 2c + 1, in value order; vpmaddwd by (sc[2c] x 16, sc[2c + 1] x 16) gives the int32 sum of sc q x;
    /// the min term d_x dmin sum_s m[s] (sum of x over s) goes to a second accumulator.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float Q4KRow(byte* w, Q8Row a, int nb)
    {
        var acc = Vector512<float>.Zero;
        var mins = Vector256<float>.Zero;
        var i0 = Vector512.Create((short)0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1);
        var two = Vector512.Create((short)2);
        var mask = Vector512.Create((byte)0x0F);
        for (int b = 0; b < nb; b++)
        {
            byte* blk = w + 144L * b;
            var (scales, mn) = UnpackScalesK4(blk + 4);
            var sc16 = Avx2.ConvertToVector256Int16(Vector128.CreateScalar(scales).AsByte()).ToVector512Unsafe();
            sbyte* x = a.Q + 256L * b;
            var isum = Vector512<int>.Zero;
            var idx = i0;
            for (int c = 0; c < 4; c++)
            {
                var q = Vector256.Load(blk + 16 + 32 * c);
                var u = QuantDot.Combine(q, Vector256.ShiftRightLogical(q.AsUInt32(), 4).AsByte()) & mask;
                var h = Avx512BW.MultiplyAddAdjacent(u, Vector512.Load(x + 64 * c));
                isum += Avx512BW.MultiplyAddAdjacent(h, Avx512BW.PermuteVar32x16(sc16.AsInt16(), idx));
                idx += two;
            }
            float dx = a.D[b];
            acc = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(isum), Vector512.Create(QuantDot.Half(blk) * dx), acc);
            // m[s] paired with the two sums of 16 of sub-block s: (m0, m0, m1, m1, ..., m7, m7) . S16.
            var m16 = Avx2.ConvertToVector256Int16(Vector128.CreateScalar(mn).AsByte()).GetLower();
            var mPairs = Vector256.Create(Sse2.UnpackLow(m16, m16), Sse2.UnpackHigh(m16, m16));
            var ms = Avx2.MultiplyAddAdjacent(mPairs, Vector256.Load(a.S16 + 16L * b));
            mins = Fma.MultiplyAdd(Avx.ConvertToVector256Single(ms), Vector256.Create(QuantDot.Half(blk + 2) * dx), mins);
        }
        return Vector512.Sum(acc) - Vector256.Sum(mins);
    }

    /// <summary>
    /// One Q6_K row with one token: per half h and pair of quarters, the unsigned 6-bit u = q + 32 of 64 values in value
    /// order (low nibbles from ql, high 2 bits from qh), vpmaddubsw with x, vpmaddwd by the int8 scales of each 16;
    /// the offset 32 sum_g sc[g] (sum of x over g) goes to a second accumulator.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float Q6KRow(byte* w, Q8Row a, int nb)
    {
        var acc = Vector512<float>.Zero;
        var offsets = Vector256<float>.Zero;
        // Scale index patterns: chunk j (0..3) covers groups of 16 4j..4j+3, 8 int16 lanes each.
        var i0 = Vector512.Create((short)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
        var four = Vector512.Create((short)4);
        var m4 = Vector512.Create((byte)0x0F);
        var m2 = Vector512.Create((byte)0x03);
        for (int b = 0; b < nb; b++)
        {
            byte* blk = w + 210L * b;
            var sc16 = Avx2.ConvertToVector256Int16(Vector128.Load((sbyte*)(blk + 192)));
            sbyte* x = a.Q + 256L * b;
            var isum = Vector512<int>.Zero;
            var idx = i0;
            for (int h = 0; h < 2; h++)
            {
                var ql = QuantDot.Combine(Vector256.Load(blk + 64 * h), Vector256.Load(blk + 64 * h + 32));
                var qh = Vector256.Load(blk + 128 + 32 * h);
                // Quarters k = 0, 1: low nibbles; high bits at shifts 0 and 2.
                var hiA = QuantDot.Combine(qh, Vector256.ShiftRightLogical(qh.AsUInt32(), 2).AsByte()) & m2;
                var uA = (ql & m4) | Vector512.ShiftLeft(hiA.AsUInt32(), 4).AsByte();
                // Quarters k = 2, 3: high nibbles; high bits at shifts 4 and 6.
                var hiB = QuantDot.Combine(Vector256.ShiftRightLogical(qh.AsUInt32(), 4).AsByte(), Vector256.ShiftRightLogical(qh.AsUInt32(), 6).AsByte()) & m2;
                var uB = (Vector512.ShiftRightLogical(ql.AsUInt32(), 4).AsByte() & m4) | Vector512.ShiftLeft(hiB.AsUInt32(), 4).AsByte();
                var hA = Avx512BW.MultiplyAddAdjacent(uA, Vector512.Load(x + 128 * h));
                isum += Avx512BW.MultiplyAddAdjacent(hA, Avx512BW.PermuteVar32x16(sc16.ToVector512Unsafe(), idx));
                idx += four;
                var hB = Avx512BW.MultiplyAddAdjacent(uB, Vector512.Load(x + 128 * h + 64));
                isum += Avx512BW.MultiplyAddAdjacent(hB, Avx512BW.PermuteVar32x16(sc16.ToVector512Unsafe(), idx));
                idx += four;
            }
            float dd = QuantDot.Half(blk + 208) * a.D[b];
            acc = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(isum), Vector512.Create(dd), acc);
            var off = Avx2.MultiplyAddAdjacent(sc16, Vector256.Load(a.S16 + 16L * b));
            offsets = Fma.MultiplyAdd(Avx.ConvertToVector256Single(off), Vector256.Create(dd), offsets);
        }
        return Vector512.Sum(acc) - 32 * Vector256.Sum(offsets);
    }
}
