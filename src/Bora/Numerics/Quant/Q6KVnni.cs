using Bora.Numerics.Jit;

namespace Bora.Numerics.Quant;

/// <summary>
/// Q6_K products over <see cref="Q6KPacked"/>'s groups with AVX-512 VNNI's vpdpbusd, generated as machine code at first
/// use (<see cref="X64Emitter"/>), one function per (tokens 1..4, super-blocks per row); a product runs tiles of up to
/// 4 tokens over each group. The managed tiles build each u = q + 32 from ql and qh in 7 instructions per vector and
/// sum with vpmaddubsw in int16 (4 per 16 values and token, then 3 adds, an offset subtraction and a vpmaddwd by the
/// scale); here u takes 2.5 instructions per vector with GFNI (1 with vgf2p8affineqb for the qh bits, one vpternlogd
/// to merge, half a shift for the ql high nibbles), and a sub-block's sum is 4 vpdpbusd, one vpmulld by its scale and
/// one vpaddd per token.
/// <para>Arithmetic per (row, token), as <see cref="Q6KPacked"/>: per super-block isum = sum_j sc[j] (sum of
/// (u - 32) x over sub-block j of 16 values) exactly (each sub-block's sum starts from the token's -32 (sum of x),
/// <see cref="Q8Activations.PrepareNegatedOffsets"/>, and adds u x), then acc = fma(d, float(isum) d_x, acc): the same
/// integers and float operations, so the results equal <see cref="Q6KPacked.RunScalar"/> bit for bit.</para>
/// <para>Tile (16 rows of one group, all super-blocks, T tokens): rdi = the packed group, rsi = token 0's quants, rdx =
/// its d_x per super-block, rcx = its negated offsets (16 int32 per super-block; token t's rows follow at t 256 nb,
/// t 4 nb and t 64 nb bytes), r8 = nb, r9 = 16 T floats out. Per super-block, for (h, p) = (0, 0), (0, 1), (1, 0),
/// (1, 1) the four sub-blocks j = 8h + 2k + p (k = 0..3) are summed together (for 3 or 4 tokens in two passes, k = 0, 1
/// then 2, 3): for i = 0..3 one ql vector L0 (values 128h + 16p + 4i.. of k = 0 in its low nibbles, k = 2 in its high
/// ones), one L1 (k = 1, 3) and one qh vector Q (bits 2k, 2k + 1 of each byte for k), u_k = the nibble with Q's bit
/// pair k moved to bits 4, 5. Registers in <see cref="Emit"/>.</para>
/// <para>Measured (1 thread): (352, 4096) less (32, 4096) in L2 (the l2 scratch tool of the notes): 1 token 22.2 us
/// against 39.9 (managed), 2 tokens 32.6 against 52.5, 4 tokens 57.8 against 79.2, 8 tokens 114.4 against 138.3; the
/// tile alone, 22 groups of (16, 4096) in L2: 18.4 us against 35.2, 21.5 with the shift-and-mask qh bits used where
/// GFNI is missing; streamed from memory (<c>bench/Bora.Bench stream --type q6_k --threads 1</c>, 64 (4096, 4096)
/// matrices): 90-94% of the read against 69-73% (managed), once the layout put each (h, p)'s vectors one after the
/// other (over the file's order, ql then qh, the tile read 40% of the read, software prefetch or not). 2 threads,
/// <c>bench matmul --types q6_k --shapes w1 --compare-packed 1</c>, GFLOP/s generated / managed: 48 tokens 491 / 436,
/// 128 tokens 520 / 452, 512 tokens 511 / 499, so the generated tiles take every token count.</para>
/// Letters: nb = super-blocks per row, h = half (128 values), k = 32-value quarter of a half, p = 16-value half of a
/// quarter (sub-block j = 8h + 2k + p), i = 4-value group of a sub-block, T = tokens.
/// </summary>
internal static unsafe class Q6KVnni
{
    /// <summary>zmm17: the byte mask 0x30 (the qh pair's place in u).</summary>
    private const int Mask30 = 17;

    /// <summary>zmm18..20: the GFNI bit matrices of k = 0, 1, 3.</summary>
    private const int BitMatrices = 18;

    private const int ScaleOffset = 64;

    /// <summary>Whether the CPU has GFNI (CPUID leaf 7, ECX bit 8): the qh bits take one vgf2p8affineqb instead of a shift and a mask.</summary>
    internal static bool HasGfni { get; } = GeneratedKernels.IsSupported && (System.Runtime.Intrinsics.X86.X86Base.CpuId(7, 0).Ecx & (1 << 8)) != 0;

    /// <summary>Whether <see cref="Run"/> takes the GFNI tile (the default where <see cref="HasGfni"/>); tests turn it off to check the other one.</summary>
    internal static bool UseGfni { get; set; } = HasGfni;

    /// <summary>Most tokens of one tile: 4 tokens x 2 sub-block sums (or 2 x 4) beside the u vectors and constants.</summary>
    internal const int TileTokens = 4;

    /// <summary>Once per product: the negated offset sums the tile starts each sub-block from.</summary>
    public static void Prepare(Q8Activations act) => act.PrepareNegatedOffsets(32);

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16), t in [0, tokens), after <see cref="Prepare"/>; nb at least 1.
    /// Tiles of up to <see cref="TileTokens"/> tokens, each rebuilding u from the packed group (in L1 or L2 after the
    /// first tile).
    /// </summary>
    public static void Run(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        bool gfni = UseGfni && HasGfni;
        var full = tokens >= TileTokens ? Tile(TileTokens, nb, gfni) : null;
        var tail = tokens % TileTokens != 0 ? Tile(tokens % TileTokens, nb, gfni) : null;
        byte* offsets = (byte*)act.NegatedOffsets(0); // NegatedOffsets(1) below only gives the stride between tokens
        PackedLayouts.RunGeneratedTiles(full, tail, TileTokens, packed, Q6KPacked.GroupBytes(nb), nb, n, act,
            offsets, (byte*)act.NegatedOffsets(1) - offsets, tokens, y, r0, r1);
    }

    private static delegate* unmanaged[SuppressGCTransition]<byte*, sbyte*, float*, float*, long, float*, void> Tile(int tokens, int nb, bool gfni) =>
        gfni
            ? GeneratedKernels.Get(GeneratedKernel.Q6KGfni, tokens, nb, (t, b) => Emit(t, b, gfni: true))
            : GeneratedKernels.Get(GeneratedKernel.Q6K, tokens, nb, (t, b) => Emit(t, b, gfni: false));

    /// <summary>The tile's code for 1..4 tokens (see the class summary); <paramref name="gfni"/> false moves the qh bits with shifts and masks.</summary>
    internal static X64Emitter Emit(int tokens, int nb, bool gfni)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokens, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(tokens, TileTokens);
        ArgumentOutOfRangeException.ThrowIfLessThan(nb, 1);
        // Registers: zmm0..3 the accumulators of tokens 0..T-1, 4..7 their isum, 8..15 the sub-block sums (token t, k),
        // 16 / 17 the byte masks 0x0F / 0x30, 18..20 the GFNI bit matrices, 21 / 22 / 23 L0 / L1 / Q, 24..27 u of the
        // pass's k, 28 a shifted ql vector, 29 one scale, 30 d.
        const int Acc = 0, Isum = 4, Sum = 8, M0F = 16, L0 = 21, L1 = 22, Q = 23, U = 24, Shifted = 28, Scale = 29, D = 30;
        // Sub-blocks k per pass over a (h, p)'s 12 vectors: all four for up to 2 tokens; k = 0, 1 (low nibbles) then 2, 3
        // (high nibbles, the vectors read again from L1) for 3 or 4, so that T x (k per pass) sums fit in 8 registers.
        int perPass = tokens <= 2 ? 4 : 2;
        int qStride = 256 * nb, dStride = 4 * nb, offStride = 64 * nb; // bytes from token t's rows to token t + 1's
        // vpternlogd u, nibbles, 0x0F: bits 0..3 from the nibbles, bits 4..7 from u (0xD8 = c ? b : a); u has zeros in
        // bits 6, 7 and the qh pair in bits 4, 5 (from GFNI, also copies in bits 0, 1 that the merge drops).
        const byte Merge = 0xD8;
        var e = new X64Emitter();
        e.BroadcastConstant(M0F, 0x0F0F0F0F);
        e.BroadcastConstant(Mask30, 0x30303030);
        if (gfni)
        {
            // Rows of each byte's bit matrix (byte 7 - b of a qword gives result bit b): bit 2k to 4 (byte 3), 2k + 1 to
            // 5 (byte 2). The dword broadcast repeats them in bytes 7 and 6 (result bits 0, 1), which the merge drops.
            e.BroadcastConstant(BitMatrices + 0, 0x01020000);
            e.BroadcastConstant(BitMatrices + 1, 0x04080000);
            e.BroadcastConstant(BitMatrices + 2, 0x40800000);
        }
        for (int t = 0; t < tokens; t++)
        {
            e.Pxord(Acc + t, Acc + t, Acc + t);
        }
        int loop = e.Position;
        for (int t = 0; t < tokens; t++)
        {
            e.Pxord(Isum + t, Isum + t, Isum + t);
        }
        // Per (h, p): the sub-blocks j = 8h + 2k + p from the 12 vectors that follow each other in the packed layout
        // (for i = 0..3: ql vectors 16h + 4p + i and 16h + 8 + 4p + i, qh vector 8h + 4p + i), so a super-block is read
        // as one forward stream.
        for (int hp = 0; hp < 4; hp++)
        {
            int h = hp >> 1, p = hp & 1;
            for (int k0 = 0; k0 < 4; k0 += perPass)
            {
                for (int t = 0; t < tokens; t++)
                {
                    for (int kk = 0; kk < perPass; kk++)
                    {
                        // -32 (sum of x over the sub-block)
                        e.BroadcastSs(Sum + perPass * t + kk, Gpr.Rcx, t * offStride + 4 * SubBlock(h, k0 + kk, p));
                    }
                }
                for (int i = 0; i < 4; i++)
                {
                    int q = 4 * p + i;
                    e.LoadPs(L0, Gpr.Rdi, Q6KPacked.LowVectorOffset(16 * h + q));
                    e.LoadPs(L1, Gpr.Rdi, Q6KPacked.LowVectorOffset(16 * h + 8 + q));
                    e.LoadPs(Q, Gpr.Rdi, Q6KPacked.HighVectorOffset(8 * h + q));
                    for (int kk = 0; kk < perPass; kk++)
                    {
                        // u of k = 0, 1 from the low nibbles of L0, L1, of k = 2, 3 from their high nibbles.
                        int k = k0 + kk;
                        HighBits(e, U + kk, Q, k, gfni);
                        int nibbles = k % 2 == 0 ? L0 : L1;
                        if (k >= 2)
                        {
                            e.PsrldImm(Shifted, nibbles, 4);
                            nibbles = Shifted;
                        }
                        e.Pternlogd(U + kk, nibbles, M0F, Merge);
                    }
                    for (int t = 0; t < tokens; t++)
                    {
                        for (int kk = 0; kk < perPass; kk++)
                        {
                            e.DpbusdBroadcast(Sum + perPass * t + kk, U + kk, Gpr.Rsi, t * qStride + 16 * SubBlock(h, k0 + kk, p) + 4 * i);
                        }
                    }
                }
                for (int kk = 0; kk < perPass; kk++)
                {
                    // sc[j] is byte j % 4 of scale vector j / 4, sign-extended: to the top byte, then shifted down arithmetically.
                    int j = SubBlock(h, k0 + kk, p), b = j & 3;
                    e.LoadPs(Scale, Gpr.Rdi, ScaleOffset + 64 * (j >> 2));
                    if (b != 3)
                    {
                        e.PslldImm(Scale, Scale, (byte)(24 - 8 * b));
                    }
                    e.PsradImm(Scale, Scale, 24);
                    for (int t = 0; t < tokens; t++)
                    {
                        e.Pmulld(Sum + perPass * t + kk, Sum + perPass * t + kk, Scale);
                        e.Paddd(Isum + t, Isum + t, Sum + perPass * t + kk);
                    }
                }
            }
        }
        e.CvtPhToPs(D, Gpr.Rdi, 0);
        for (int t = 0; t < tokens; t++)
        {
            e.CvtDqToPs(Isum + t, Isum + t);
            e.MulPsBroadcast(Isum + t, Isum + t, Gpr.Rdx, t * dStride);
            e.Fmadd231(Acc + t, D, Isum + t);
        }
        GeneratedKernels.NextStep(e, loop, weights: Q6KPacked.SuperBytes, quants: 256, scales: 4, data: 64);
        GeneratedKernels.StoreAndReturn(e, tokens);
        return e;
    }

    /// <summary>
    /// dst = qh vector <paramref name="q"/>'s bit pair k (bits 2k, 2k + 1 of each byte) at bits 4, 5, zeros in bits 6, 7
    /// (bits 0..3 are dropped by the merge): one vgf2p8affineqb with k's bit matrix (k = 2 needs only the mask), or a
    /// dword shift and the mask (bits carried across bytes land outside 4, 5).
    /// </summary>
    private static void HighBits(X64Emitter e, int dst, int q, int k, bool gfni)
    {
        if (k == 2)
        {
            e.Pandd(dst, q, Mask30);
        }
        else if (gfni)
        {
            e.Gf2p8Affine(dst, q, BitMatrices + (k == 3 ? 2 : k));
        }
        else
        {
            if (k == 3)
            {
                e.PsrldImm(dst, q, 2);
            }
            else
            {
                e.PslldImm(dst, q, (byte)(4 - 2 * k));
            }
            e.Pandd(dst, dst, Mask30);
        }
    }

    /// <summary>Sub-block j = 8h + 2k + p (values 16j..16j + 15 of the super-block).</summary>
    private static int SubBlock(int h, int k, int p) => 8 * h + 2 * k + p;
}
