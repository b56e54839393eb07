using System.Runtime.CompilerServices;
using Bora.Numerics.Jit;

namespace Bora.Numerics.Quant;

/// <summary>
/// Q4_K products over expanded groups (<see cref="Q4KPacked"/>, from its <see cref="Q4KPacked.ExpandMinTokens"/> tokens
/// on) with AVX-512 VNNI's vpdpbusd, generated as machine code at first use (<see cref="X64Emitter"/>; .NET 10 has no
/// intrinsic for it on CPUs without AVX10), one function per (tokens, super-blocks per row). Per sub-block and token:
/// 8 vpdpbusd give the exact int32 sum of the sub-block's q x (the token's 4-byte groups broadcast from memory), one
/// vpmulld by the rows' sc[s] and one vpaddd add it to isum, where the managed tile spends 8 vpmaddubsw, 7 int16 adds,
/// 8 broadcasts and a vpmaddwd. A 1-token product (decode) takes a second generated tile that reads the packed group
/// itself (<see cref="EmitPacked"/>, called from <see cref="RunOne"/>); 2 to 63 tokens keep the managed tiles over the packed group (session 8's generated
/// version of those, which unpacked everything per tile of up to 4 tokens, measured slower).
/// <para>Arithmetic per (row, token), as <see cref="Q4KPacked"/>: per super-block the exact integers isum = sum_s sc[s]
/// (sum of q x of sub-block s) and msum = sum_s m[s] S[s] (S[s] the sum of the token's quants over s), then
/// acc = fma(d, float(isum) d_x, acc) and acc = fma(-dmin, float(msum) d_x, acc); the same float operations in the same
/// order, so the results equal <see cref="Q4KPacked.RunScalar"/> bit for bit. msum takes 4 vpdpwssd of the rows' min
/// pairs with the token's broadcast pairs of S (<see cref="Q8Activations.PrepareMinSums"/>) in the expanded tile, and
/// 4 vpdpbusd of the min bytes with the bytes of S split as 128 hi + lo in the 1-token tile.</para>
/// <para>Generated tile, tokens T (1..8), super-blocks nb: arguments rdi = the expanded group (super-blocks of
/// <see cref="Q4KPacked.ExpandedStride"/> bytes: 8 sub-blocks x 8 nibble vectors, then sc[s] as int32, the 4 min pairs,
/// dmin and d as floats, 16 rows each), rsi = token 0's quants, rdx = its d_x, rcx = its 8 nb min sums
/// (<see cref="Q8Activations.MinSums"/>; token t's rows follow at t 256 nb, t 4 nb and t 32 nb bytes), r8 = nb, r9 =
/// 16 T floats out. Registers: zmm0..T-1 the accumulators, zmm8.. isum (then msum), zmm16.. the sub-block sums (then
/// d), zmm24..31 a sub-block's nibble vectors (then the min pairs and dmin; vector j: values 4j..4j+3 of the 16 rows).</para>
/// Letters: T = tokens, nb = super-blocks per row, s = sub-block (0..7), j = 4-value group (0..7).
/// </summary>
internal static unsafe class Q4KVnni
{
    /// <summary>Most tokens of a tile: KPacked's tiles of 8, 8 accumulators and 8 sums beside 8 nibble vectors.</summary>
    private const int TileTokens = 8;

    /// <summary><see cref="KPacked"/>'s view of this kernel: expanded groups run the generated tile, packed ones the managed tile.</summary>
    internal readonly struct Kernel : IKPackedKernel
    {
        public static long SuperBytes => Q4KPacked.SuperBytes;

        public static long ExpandedStride => Q4KPacked.ExpandedStride;

        public static int ExpandMinTokens => Q4KPacked.ExpandMinTokens;

        public static nint TokenData(Q8Activations act, int t) => (nint)act.MinSums(t);

        public static void Expand(byte* g, int nb, byte* dst) => Q4KPacked.Expand(g, nb, dst, plainScales: true);

        [SkipLocalsInit] // the tile writes every result it reads back
        public static void Tile<TN>(bool expanded, byte* src, int nb, Q8Row* tok, nint* data, float* y, int n, int rows, float* partial)
            where TN : struct, ITokenCount
        {
            if (nb == 0 || !expanded)
            {
                // 2 to 63 tokens (1 token takes RunOne, without KPacked's per-group calls).
                Q4KPacked.Kernel.Tile<TN>(false, src, nb, tok, data, y, n, rows, partial);
                return;
            }
            // KPacked's tiles hold tokens t0..t0 + TN - 1 in order (the repeated last entries only fill a short tile).
            var tile = GeneratedKernels.Get(GeneratedKernel.Q4K, TN.Value, nb, Emit);
            float* results = stackalloc float[TileTokens * 16];
            tile(src, tok[0].Q, tok[0].D, (float*)data[0], nb, results);
            GeneratedKernels.CopyResults(results, TN.Value, y, n, rows);
        }
    }

    /// <summary>
    /// y[0, r] for r in [r0, r1) (r0 a multiple of 16) of a 1-token product (decode) over packed groups, after
    /// <see cref="Q4KPacked.Prepare"/>; nb at least 1. The tile (<see cref="EmitPacked"/>) is looked up once per product:
    /// through <see cref="KPacked"/>'s tile calls, the lookup and per-group setup cost 12% of an in-cache product.
    /// </summary>
    public static void RunOne(byte* packed, int nb, int n, Q8Activations act, float* y, int r0, int r1)
    {
        var tile = GeneratedKernels.Get(GeneratedKernel.Q4KPacked1, 1, nb, EmitPacked);
        PackedLayouts.RunGeneratedTiles(tile, null, 1, packed, Q4KPacked.GroupBytes(nb), nb, n, act, (byte*)act.MinSums(0), 0, 1, y, r0, r1);
    }

    /// <summary>The tile's code (see the class summary for its registers and arguments).</summary>
    internal static X64Emitter Emit(int tokens, int nb)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokens, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(tokens, TileTokens);
        ArgumentOutOfRangeException.ThrowIfLessThan(nb, 1);
        int qStride = 256 * nb, dStride = 4 * nb, sumStride = 32 * nb; // bytes from token t's rows to token t + 1's
        int scales = (int)Q4KPacked.ExpandedScaleOffset, pairs = (int)Q4KPacked.ExpandedMinPairOffset,
            dmin = (int)Q4KPacked.ExpandedDminOffset, d = (int)Q4KPacked.ExpandedDOffset;
        var e = new X64Emitter();
        for (int t = 0; t < tokens; t++)
        {
            e.Pxord(t, t, t);
        }
        int loop = e.Position;
        for (int t = 0; t < tokens; t++)
        {
            e.Pxord(8 + t, 8 + t, 8 + t);
        }
        for (int s = 0; s < 8; s++)
        {
            for (int j = 0; j < 8; j++)
            {
                e.LoadPs(24 + j, Gpr.Rdi, 512 * s + 64 * j);
            }
            for (int t = 0; t < tokens; t++)
            {
                e.Pxord(16 + t, 16 + t, 16 + t);
            }
            for (int j = 0; j < 8; j++)
            {
                for (int t = 0; t < tokens; t++)
                {
                    e.DpbusdBroadcast(16 + t, 24 + j, Gpr.Rsi, t * qStride + 32 * s + 4 * j);
                }
            }
            for (int t = 0; t < tokens; t++)
            {
                e.PmulldMem(16 + t, 16 + t, Gpr.Rdi, scales + 64 * s);
                e.Paddd(8 + t, 8 + t, 16 + t);
            }
        }
        e.LoadPs(16, Gpr.Rdi, d);
        for (int t = 0; t < tokens; t++)
        {
            e.CvtDqToPs(8 + t, 8 + t);
            e.MulPsBroadcast(8 + t, 8 + t, Gpr.Rdx, t * dStride);
            e.Fmadd231(t, 16, 8 + t);
        }
        for (int i = 0; i < 4; i++)
        {
            e.LoadPs(24 + i, Gpr.Rdi, pairs + 64 * i);
        }
        e.LoadPs(28, Gpr.Rdi, dmin);
        for (int t = 0; t < tokens; t++)
        {
            e.Pxord(8 + t, 8 + t, 8 + t);
            for (int i = 0; i < 4; i++)
            {
                e.DpwssdBroadcast(8 + t, 24 + i, Gpr.Rcx, t * sumStride + 16 + 4 * i); // pair i of S at int32 4 + i
            }
            e.CvtDqToPs(8 + t, 8 + t);
            e.MulPsBroadcast(8 + t, 8 + t, Gpr.Rdx, t * dStride);
            e.Fnmadd231(t, 28, 8 + t);
        }
        GeneratedKernels.NextStep(e, loop, weights: (int)Q4KPacked.ExpandedStride, quants: 256, scales: 4, data: 32);
        GeneratedKernels.StoreAndReturn(e, tokens);
        return e;
    }

    /// <summary>
    /// The 1-token tile over a packed group (<see cref="Q4KPacked"/>'s layout, <see cref="Q4KPacked.SuperBytes"/> bytes
    /// per super-block). Per chunk c of 64 values (quant vectors 8c..8c + 7) each vector is loaded once and masked twice:
    /// with 0x0F (the low nibbles, sub-block 2c) and with 0xF0 (the high nibbles in place, so sub-block 2c + 1's sum
    /// comes out 16 times too large and needs no shift); 8 vpdpbusd per sub-block into two sums (even and odd k: half the
    /// dependent chain), then one vpmulld by its scale sc[s] and one vpaddd into isum_lo (even s) or isum_hi (odd s).
    /// Per super-block 16 isum = 16 isum_lo + isum_hi (exact: at most 16 * 8 * 63 * 60960 &lt; 2^31), and d times 1/16
    /// (exact for a float from an f16): fma(d / 16, float(16 isum) d_x, acc) rounds as fma(d, float(isum) d_x, acc), the
    /// same bits as the managed tile.
    /// <para>The 6-bit scales and mins as bytes, from each row's 12 scale bytes in dwords A, B, C (byte i of each):
    /// sc[0..3] = A &amp; 0x3F3F3F3F, sc[4..7] = (C &amp; 0x0F0F0F0F) | ((A &gt;&gt; 2) &amp; 0x30303030), m[0..3] =
    /// B &amp; 0x3F3F3F3F, m[4..7] = ((C &gt;&gt; 4) &amp; 0x0F0F0F0F) | ((B &gt;&gt; 2) &amp; 0x30303030) (one vpternlogd
    /// each); each sc[s] to an int32 per row by one vpshufb (control: byte s % 4 of each dword, zero-extended). The min
    /// term takes the token's sums of <see cref="Q8Activations.PrepareMinSums"/> as S = 128 hi + lo (signed bytes):
    /// msum = sum m lo + 128 sum m hi, 4 vpdpbusd, a shift and an add, then acc = fma(-dmin, float(msum) d_x, acc).</para>
    /// <para>Arguments as the expanded tile's, rdi = the packed group. Registers: zmm0 the accumulator, 1 / 8 isum_lo /
    /// isum_hi, 2 / 3 the byte masks 0x0F / 0xF0, 4..7 the vpshufb controls, 10 / 11 / 12 the scale dwords A, B, C,
    /// 13 / 14 the low nibbles' two sums, 15 / 26 the high nibbles', 16..23 the eight scales (then the min bytes and the
    /// two min sums), 24 / 25 the loaded and the masked vector, 27..29 scratch, 30 the byte mask 0x3F, 31 the float 1/16.</para>
    /// <para>Measured (1 thread, 22 groups of (16, 4096) in L2, the tile called directly, best of 15, three runs): the
    /// version before (scales by shifts and masks into 16 sc[s] for even s, each quant vector read twice by vpandd from
    /// memory) 67-72 GB/s, this one 75-79, same bits. Each change alone gained little: the loads were the limit once
    /// the scale unpacking no longer was.</para>
    /// </summary>
    internal static X64Emitter EmitPacked(int tokens, int nb)
    {
        ArgumentOutOfRangeException.ThrowIfNotEqual(tokens, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(nb, 1);
        const int Acc = 0, IsumLo = 1, Low = 2, High = 3, Control = 4, IsumHi = 8, A = 10, B = 11, C = 12, LowA = 13,
            LowB = 14, HighA = 15, HighB = 26, Q = 24, HighQ = 25, T1 = 27, T2 = 28, T3 = 29, M3F = 30, Sixteenth = 31,
            Sc = 16, MinLow = 16, MinHigh = 17, SumLo = 18, SumHi = 19;
        var e = new X64Emitter();
        e.BroadcastConstant(Low, 0x0F0F0F0F);
        e.BroadcastConstant(High, unchecked((int)0xF0F0F0F0));
        e.BroadcastConstant(Sixteenth, 0x3D800000); // 1/16f
        e.BroadcastConstant(M3F, 0x3F3F3F3F);
        // vpshufb picks bytes within 128-bit lanes: control j of dword r (r % 4 in its lane) = 4 (r % 4) + j, then
        // three bytes 0x80 (zero): the int32 byte offsets 0, 4, 8, 12 are the bytes of 0x0C080400 zero-extended.
        e.BroadcastConstant(T1, 0x0C080400);
        e.Pmovzxbd(T2, T1);
        for (int j = 0; j < 4; j++)
        {
            e.BroadcastConstant(Control + j, unchecked((int)(0x80808000u | (uint)j)));
            e.Paddd(Control + j, Control + j, T2);
        }
        e.Pxord(Acc, Acc, Acc);
        int loop = e.Position;
        e.Pxord(IsumLo, IsumLo, IsumLo);
        e.Pxord(IsumHi, IsumHi, IsumHi);
        e.LoadPs(A, Gpr.Rdi, 64);
        e.LoadPs(B, Gpr.Rdi, 128);
        e.LoadPs(C, Gpr.Rdi, 192);
        SixBitBytes(e, T1, T2, A, C, M3F, Low, highShift: 0, scratch: -1);
        for (int s = 0; s < 8; s++)
        {
            e.Pshufb(Sc + s, s < 4 ? T1 : T2, Control + s % 4);
        }
        for (int c = 0; c < 4; c++)
        {
            e.Pxord(LowA, LowA, LowA);
            e.Pxord(LowB, LowB, LowB);
            e.Pxord(HighA, HighA, HighA);
            e.Pxord(HighB, HighB, HighB);
            for (int k = 0; k < 8; k++)
            {
                e.LoadPs(HighQ, Gpr.Rdi, 256 + 512 * c + 64 * k); // the quant vectors start at byte 256
                e.Pandd(Q, HighQ, Low);
                e.Pandd(HighQ, HighQ, High);
                e.DpbusdBroadcast(k % 2 == 0 ? LowA : LowB, Q, Gpr.Rsi, 64 * c + 4 * k);
                e.DpbusdBroadcast(k % 2 == 0 ? HighA : HighB, HighQ, Gpr.Rsi, 64 * c + 32 + 4 * k);
            }
            e.Paddd(LowA, LowA, LowB);
            e.Pmulld(LowA, LowA, Sc + 2 * c);
            e.Paddd(IsumLo, IsumLo, LowA);
            e.Paddd(HighA, HighA, HighB);
            e.Pmulld(HighA, HighA, Sc + 2 * c + 1);
            e.Paddd(IsumHi, IsumHi, HighA);
        }
        e.PslldImm(IsumLo, IsumLo, 4);
        e.Paddd(IsumLo, IsumLo, IsumHi);
        e.CvtPhToPs(T1, Gpr.Rdi, 0);
        e.MulPs(T1, T1, Sixteenth);
        e.CvtDqToPs(IsumLo, IsumLo);
        e.MulPsBroadcast(IsumLo, IsumLo, Gpr.Rdx, 0);
        e.Fmadd231(Acc, T1, IsumLo);
        // The min term (the scale registers are free now).
        SixBitBytes(e, MinLow, MinHigh, B, C, M3F, Low, highShift: 4, scratch: T1);
        e.Pxord(SumLo, SumLo, SumLo);
        e.Pxord(SumHi, SumHi, SumHi);
        e.DpbusdBroadcast(SumLo, MinLow, Gpr.Rcx, 0);
        e.DpbusdBroadcast(SumHi, MinLow, Gpr.Rcx, 8);
        e.DpbusdBroadcast(SumLo, MinHigh, Gpr.Rcx, 4);
        e.DpbusdBroadcast(SumHi, MinHigh, Gpr.Rcx, 12);
        e.PslldImm(SumHi, SumHi, 7);
        e.Paddd(SumLo, SumLo, SumHi);
        e.CvtDqToPs(SumLo, SumLo);
        e.MulPsBroadcast(SumLo, SumLo, Gpr.Rdx, 0);
        e.CvtPhToPs(T3, Gpr.Rdi, 32);
        e.Fnmadd231(Acc, T3, SumLo);
        GeneratedKernels.NextStep(e, loop, weights: (int)Q4KPacked.SuperBytes, quants: 256, scales: 4, data: 32);
        GeneratedKernels.StoreAndReturn(e, 1);
        return e;
    }

    /// <summary>
    /// Eight 6-bit values of each row as bytes, from the dword A (scales) or B (mins), lowWord, and C: first = v[0..3] =
    /// lowWord &amp; 0x3F3F3F3F, second = v[4..7] = ((C &gt;&gt; highShift) &amp; 0x0F0F0F0F) | ((lowWord &gt;&gt; 2) &amp;
    /// 0x30303030), highShift 0 (scales) or 4 (mins, C shifted into <paramref name="scratch"/>). m3f / low: registers
    /// holding 0x3F3F3F3F / 0x0F0F0F0F.
    /// </summary>
    private static void SixBitBytes(X64Emitter e, int first, int second, int lowWord, int c, int m3f, int low, int highShift, int scratch)
    {
        e.Pandd(first, lowWord, m3f);
        e.PsrldImm(second, lowWord, 2);
        e.Pandd(second, second, m3f); // bits 4, 5 of each byte: bits 6, 7 of lowWord's; bits 0..3 go under the 0x0F mask
        if (highShift != 0)
        {
            e.PsrldImm(scratch, c, (byte)highShift);
            c = scratch;
        }
        e.Pternlogd(second, c, low, 0xD8); // (c & 0x0F) | (second & ~0x0F)
    }

}
