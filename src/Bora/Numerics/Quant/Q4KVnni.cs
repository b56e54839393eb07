using Bora.Numerics.Jit;

namespace Bora.Numerics.Quant;

/// <summary>
/// Q4_K products over <see cref="Q4KPacked"/>'s groups with AVX-512 VNNI's vpdpbusd, generated as machine code at first
/// use (<see cref="X64Emitter"/>; .NET 10 has no intrinsic for it on CPUs without AVX10), one function per (tokens 1..4,
/// super-blocks per row); a product of any token count runs tiles of up to 4 tokens over each group (<see cref="Run"/>,
/// <see cref="Emit"/>). Per sub-block and token 8 vpdpbusd give the exact int32 sum of the sub-block's q x (the token's
/// 4-byte groups broadcast from memory), one vpmulld by the rows' sc[s] and one vpaddd add it to isum, where the
/// managed tiles spend 8 vpmaddubsw, 7 int16 adds, 8 broadcasts and a vpmaddwd.
/// <para>Arithmetic per (row, token), as <see cref="Q4KPacked"/>: per super-block the exact integers isum = sum_s sc[s]
/// (sum of q x of sub-block s) and msum = sum_s m[s] S[s] (S[s] the sum of the token's quants over s), then
/// acc = fma(d, float(isum) d_x, acc) and acc = fma(-dmin, float(msum) d_x, acc); the same float operations in the same
/// order, so the results equal <see cref="Q4KPacked.RunScalar"/> bit for bit.</para>
/// <para>Measured (2 threads, <c>bench/Bora.Bench matmul --types q4_k --shapes w1 --tokens T --threads 2
/// --compare-packed 1</c>, GFLOP/s): against the generated tiles of 8 tokens over groups expanded once per product
/// (masked nibbles, unpacked scales; session 8, removed here), T = 64: 607 / 497, 128: 618 / 507, 512: 654 / 556; so
/// these tiles take every token count. 1 thread, (352, 4096) less (32, 4096) in L2 (the l2 scratch tool of the notes),
/// GB/s of weights, generated / managed tiles: 2 tokens 58.3 / 26.3, 4 tokens 27.9 / 15.3, 8 tokens 12.2 / 8.9.</para>
/// Letters: T = tokens, nb = super-blocks per row, c = 64-value chunk, k = quant vector of a chunk, s = sub-block.
/// </summary>
internal static unsafe class Q4KVnni
{
    /// <summary>Most tokens of a tile over the packed group (<see cref="Emit"/>): 4 tokens' sums and accumulators beside the constants.</summary>
    internal const int TileTokens = 4;

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16), t in [0, tokens), over the packed groups in tiles of up to
    /// <see cref="TileTokens"/> tokens (<see cref="Emit"/>; the group comes from L1 or L2 after the first
    /// tile), after <see cref="Q4KPacked.Prepare"/>; nb at least 1. The tiles are looked up once per product (through
    /// <see cref="KPacked"/>'s per-group tile calls, the lookup and setup cost 12% of an in-cache 1-token product).
    /// </summary>
    public static void Run(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        var full = tokens >= TileTokens ? GeneratedKernels.Get(GeneratedKernel.Q4K, TileTokens, nb, Emit) : null;
        var tail = tokens % TileTokens != 0 ? GeneratedKernels.Get(GeneratedKernel.Q4K, tokens % TileTokens, nb, Emit) : null;
        byte* sums = (byte*)act.MinSums(0);
        PackedLayouts.RunGeneratedTiles(full, tail, TileTokens, packed, Q4KPacked.GroupBytes(nb), nb, n, act, sums,
            32L * nb, tokens, y, r0, r1);
    }

    /// <summary>
    /// The tile over a packed group (<see cref="Q4KPacked"/>'s layout, <see cref="Q4KPacked.SuperBytes"/> bytes per
    /// super-block) for 1 to <see cref="TileTokens"/> tokens. Per chunk c of 64 values (quant vectors 8c..8c + 7)
    /// each vector is loaded once and masked twice, for all the tokens: with 0x0F (the low nibbles, sub-block 2c) and
    /// with 0xF0 (the high nibbles in place, so sub-block 2c + 1's sums come out 16 times too large and need no shift);
    /// 8 vpdpbusd per sub-block and token (1 token: into two sums, even and odd k, half the dependent chain), then one
    /// vpmulld by the sub-block's scale and one vpaddd into isum_lo (even s) or isum_hi (odd s, 16 times too large).
    /// Per super-block and token isum = isum_lo + (isum_hi &gt;&gt; 4) (exact: isum_hi is a multiple of 16, and at most
    /// 16 * 4 * 63 * 60960 &lt; 2^31), then acc = fma(d, float(isum) d_x, acc): the managed tile's integers and floats.
    /// <para>The 6-bit scales and mins as bytes, from each row's 12 scale bytes in dwords A, B, C (byte i of each):
    /// sc[0..3] = A &amp; 0x3F3F3F3F, sc[4..7] = (C &amp; 0x0F0F0F0F) | ((A &gt;&gt; 2) &amp; 0x30303030), m[0..3] =
    /// B &amp; 0x3F3F3F3F, m[4..7] = ((C &gt;&gt; 4) &amp; 0x0F0F0F0F) | ((B &gt;&gt; 2) &amp; 0x30303030) (one vpternlogd
    /// each); each sc[s] to an int32 per row by one vpshufb (control: byte s % 4 of each dword, zero-extended) when its
    /// sums are done. The min term takes each token's sums of <see cref="Q8Activations.PrepareMinSums"/> as
    /// S = 128 hi + lo (signed bytes): msum = sum m lo + 128 sum m hi, 4 vpdpbusd, a shift and an add, then
    /// acc = fma(-dmin, float(msum) d_x, acc).</para>
    /// <para>Arguments: rdi = the packed group, rsi = token 0's quants, rdx = its d_x, rcx = its 8 nb min sums (token t's
    /// rows follow at t 256 nb, t 4 nb and t 32 nb bytes), r8 = nb, r9 = 16 T floats out. Registers: zmm0..3 the accumulators of tokens
    /// 0..T-1, 4..7 their isum_lo, 8..11 their isum_hi, 12..15 / 16..19 their low / high nibbles' sums (1 token: 12 / 13
    /// and 16 / 17 for even / odd k; then the min sums), 20 / 21 the byte masks 0x0F / 0xF0, 22..25 the vpshufb
    /// controls, 26 the byte mask 0x3F, 27 / 28 the scale bytes (then the min bytes), 29 one scale (first A, then d),
    /// 30 / 31 the loaded and the masked quant vector (first C, at the end B, C and dmin).</para>
    /// <para>Measured, 1 token (1 thread, 22 groups of (16, 4096) in L2, the tile called directly, best of 15, three
    /// runs): the version before (scales by shifts and masks into 16 sc[s] for even s, each quant vector read twice by
    /// vpandd from memory) 67-72 GB/s, this one 75-79, same bits. Each change alone gained little: the loads were the
    /// limit once the scale unpacking no longer was.</para>
    /// Letters: T = tokens, c = 64-value chunk, k = quant vector of a chunk, s = sub-block.
    /// </summary>
    internal static X64Emitter Emit(int tokens, int nb)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokens, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(tokens, TileTokens);
        ArgumentOutOfRangeException.ThrowIfLessThan(nb, 1);
        const int Acc = 0, IsumLo = 4, IsumHi = 8, LowSum = 12, HighSum = 16, Low = 20, High = 21, Control = 22, M3F = 26,
            ScaleBytes = 27, Scale = 29, Loaded = 30, Masked = 31;
        int qStride = 256 * nb, dStride = 4 * nb, sumStride = 32 * nb; // bytes from token t's rows to token t + 1's
        bool split = tokens == 1; // one token: even and odd k in two sums each (12 / 13 and 16 / 17)
        var e = new X64Emitter();
        e.BroadcastConstant(Low, 0x0F0F0F0F);
        e.BroadcastConstant(High, unchecked((int)0xF0F0F0F0));
        e.BroadcastConstant(M3F, 0x3F3F3F3F);
        // vpshufb picks bytes within 128-bit lanes: control j of dword r (r % 4 in its lane) = 4 (r % 4) + j, then
        // three bytes 0x80 (zero): the int32 byte offsets 0, 4, 8, 12 are the bytes of 0x0C080400 zero-extended.
        e.BroadcastConstant(Scale, 0x0C080400);
        e.Pmovzxbd(Loaded, Scale);
        for (int j = 0; j < 4; j++)
        {
            e.BroadcastConstant(Control + j, unchecked((int)(0x80808000u | (uint)j)));
            e.Paddd(Control + j, Control + j, Loaded);
        }
        for (int t = 0; t < tokens; t++)
        {
            e.Pxord(Acc + t, Acc + t, Acc + t);
        }
        int loop = e.Position;
        for (int t = 0; t < tokens; t++)
        {
            e.Pxord(IsumLo + t, IsumLo + t, IsumLo + t);
            e.Pxord(IsumHi + t, IsumHi + t, IsumHi + t);
        }
        e.LoadPs(Scale, Gpr.Rdi, 64); // A
        e.LoadPs(Loaded, Gpr.Rdi, 192); // C
        SixBitBytes(e, ScaleBytes, ScaleBytes + 1, Scale, Loaded, M3F, Low, highShift: 0, scratch: -1);
        for (int c = 0; c < 4; c++)
        {
            for (int t = 0; t < (split ? 2 : tokens); t++)
            {
                e.Pxord(LowSum + t, LowSum + t, LowSum + t);
                e.Pxord(HighSum + t, HighSum + t, HighSum + t);
            }
            for (int k = 0; k < 8; k++)
            {
                e.LoadPs(Loaded, Gpr.Rdi, 256 + 512 * c + 64 * k); // the quant vectors start at byte 256
                e.Pandd(Masked, Loaded, Low);
                e.Pandd(Loaded, Loaded, High);
                for (int t = 0; t < tokens; t++)
                {
                    int sum = split ? k % 2 : t;
                    e.DpbusdBroadcast(LowSum + sum, Masked, Gpr.Rsi, t * qStride + 64 * c + 4 * k);
                    e.DpbusdBroadcast(HighSum + sum, Loaded, Gpr.Rsi, t * qStride + 64 * c + 32 + 4 * k);
                }
            }
            if (split)
            {
                e.Paddd(LowSum, LowSum, LowSum + 1);
                e.Paddd(HighSum, HighSum, HighSum + 1);
            }
            for (int half = 0; half < 2; half++)
            {
                int s = 2 * c + half;
                e.Pshufb(Scale, s < 4 ? ScaleBytes : ScaleBytes + 1, Control + s % 4);
                for (int t = 0; t < tokens; t++)
                {
                    int sum = (half == 0 ? LowSum : HighSum) + t, isum = (half == 0 ? IsumLo : IsumHi) + t;
                    e.Pmulld(sum, sum, Scale);
                    e.Paddd(isum, isum, sum);
                }
            }
        }
        // acc = fma(d, float(isum) d_x, acc) per token.
        e.CvtPhToPs(Scale, Gpr.Rdi, 0);
        for (int t = 0; t < tokens; t++)
        {
            e.PsradImm(IsumHi + t, IsumHi + t, 4);
            e.Paddd(IsumLo + t, IsumLo + t, IsumHi + t);
            e.CvtDqToPs(IsumLo + t, IsumLo + t);
            e.MulPsBroadcast(IsumLo + t, IsumLo + t, Gpr.Rdx, t * dStride);
            e.Fmadd231(Acc + t, Scale, IsumLo + t);
        }
        // The min term: the min bytes, then per token msum and acc = fma(-dmin, float(msum) d_x, acc).
        e.LoadPs(Loaded, Gpr.Rdi, 128); // B
        e.LoadPs(Masked, Gpr.Rdi, 192); // C
        SixBitBytes(e, ScaleBytes, ScaleBytes + 1, Loaded, Masked, M3F, Low, highShift: 4, scratch: Scale);
        e.CvtPhToPs(Loaded, Gpr.Rdi, 32); // dmin
        for (int t = 0; t < tokens; t++)
        {
            int lo = LowSum + t, hi = HighSum + t, data = t * sumStride;
            e.Pxord(lo, lo, lo);
            e.Pxord(hi, hi, hi);
            e.DpbusdBroadcast(lo, ScaleBytes, Gpr.Rcx, data);
            e.DpbusdBroadcast(hi, ScaleBytes, Gpr.Rcx, data + 8);
            e.DpbusdBroadcast(lo, ScaleBytes + 1, Gpr.Rcx, data + 4);
            e.DpbusdBroadcast(hi, ScaleBytes + 1, Gpr.Rcx, data + 12);
            e.PslldImm(hi, hi, 7);
            e.Paddd(lo, lo, hi);
            e.CvtDqToPs(lo, lo);
            e.MulPsBroadcast(lo, lo, Gpr.Rdx, t * dStride);
            e.Fnmadd231(Acc + t, Loaded, lo);
        }
        GeneratedKernels.NextStep(e, loop, weights: (int)Q4KPacked.SuperBytes, quants: 256, scales: 4, data: 32);
        GeneratedKernels.StoreAndReturn(e, tokens);
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
