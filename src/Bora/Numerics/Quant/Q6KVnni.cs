using Bora.Numerics.Jit;

namespace Bora.Numerics.Quant;

/// <summary>
/// 1-token Q6_K products (decode) over <see cref="Q6KPacked"/>'s groups with AVX-512 VNNI's vpdpbusd, generated as
/// machine code at first use (<see cref="X64Emitter"/>), one function per super-blocks per row. The managed tile builds
/// each u = q + 32 from ql and qh in 7 instructions per vector and sums with vpmaddubsw in int16 (4 per 16 values and
/// token, then 3 adds, an offset subtraction and a vpmaddwd by the scale); here u takes 2.5 instructions per vector
/// with GFNI (1 with vgf2p8affineqb for the qh bits, one vpternlogd to merge, half a shift for the ql high nibbles), and
/// a sub-block's sum is 4 vpdpbusd, one vpmulld by its scale and one vpaddd.
/// <para>Arithmetic per (row, token), as <see cref="Q6KPacked"/>: per super-block isum = sum_j sc[j] (sum of
/// (u - 32) x over sub-block j of 16 values) exactly (each sub-block's sum starts from the token's -32 (sum of x),
/// <see cref="Q8Activations.PrepareNegatedOffsets"/>, and adds u x), then acc = fma(d, float(isum) d_x, acc): the same
/// integers and float operations, so the results equal <see cref="Q6KPacked.RunScalar"/> bit for bit.</para>
/// <para>Tile (16 rows of one group, all super-blocks): rdi = the packed group, rsi = the token's quants, rdx = its
/// d_x per super-block, rcx = its negated offsets (16 int32 per super-block), r8 = nb, r9 = 16 floats out. Per
/// super-block, for (h, p) = (0, 0), (0, 1), (1, 0), (1, 1) the four sub-blocks j = 8h + 2k + p (k = 0..3) are summed
/// together: for i = 0..3 one ql vector L0 (values 128h + 16p + 4i.. of k = 0 in its low nibbles, k = 2 in its high
/// ones), one L1 (k = 1, 3) and one qh vector Q (bits 2k, 2k + 1 of each byte for k), u_k = the nibble with Q's bit
/// pair k moved to bits 4, 5. Registers: zmm0 the accumulator, 1 isum, 2 the byte mask 0x0F, 3 the byte mask 0x30,
/// 4..7 the sums of k = 0..3, 8 / 9 / 10 L0 / L1 / Q, 11..14 u for k = 0..3, 15 a shifted ql vector, 16..18 the GFNI
/// bit matrices of k = 0, 1, 3, 20..23 the scale vectors, 24 one scale, 30 d.</para>
/// <para>Measured (1 thread): 22 groups of (16, 4096) in L2, the tile called directly against <see cref="Q6KPacked.Run"/>,
/// median of 15: 18.4 us against 35.2 (managed), 21.5 with the shift-and-mask qh bits used where GFNI is missing;
/// streamed from memory (<c>bench/Bora.Bench stream --type q6_k --threads 1</c>, 64 (4096, 4096) matrices): 93-94% of
/// the read against 69-73% (managed), once the layout put each (h, p)'s vectors one after the other (over the file's
/// order, ql then qh, the tile read 40% of the read, software prefetch or not).</para>
/// Letters: nb = super-blocks per row, h = half (128 values), k = 32-value quarter of a half, p = 16-value half of a
/// quarter (sub-block j = 8h + 2k + p), i = 4-value group of a sub-block.
/// </summary>
internal static unsafe class Q6KVnni
{
    /// <summary>zmm3: the byte mask 0x30 (the qh pair's place in u).</summary>
    private const int Mask30 = 3;

    /// <summary>zmm16..18: the GFNI bit matrices of k = 0, 1, 3.</summary>
    private const int BitMatrices = 16;

    private const int ScaleOffset = 64;

    /// <summary>Whether the CPU has GFNI (CPUID leaf 7, ECX bit 8): the qh bits take one vgf2p8affineqb instead of a shift and a mask.</summary>
    internal static bool HasGfni { get; } = GeneratedKernels.IsSupported && (System.Runtime.Intrinsics.X86.X86Base.CpuId(7, 0).Ecx & (1 << 8)) != 0;

    /// <summary>Whether <see cref="Run"/> takes the GFNI tile (the default where <see cref="HasGfni"/>); tests turn it off to check the other one.</summary>
    internal static bool UseGfni { get; set; } = HasGfni;

    /// <summary>Once per product: the negated offset sums the tile starts each sub-block from (1-token products only).</summary>
    public static void Prepare(Q8Activations act) => act.PrepareNegatedOffsets(32);

    /// <summary>y[0, r] for r in [r0, r1) (r0 a multiple of 16) of a 1-token product, after <see cref="Prepare"/>; nb at least 1.</summary>
    public static void Run(byte* packed, int nb, int n, Q8Activations act, float* y, int r0, int r1)
    {
        var tile = UseGfni && HasGfni
            ? GeneratedKernels.Get(GeneratedKernel.Q6KGfni1, 1, nb, (t, b) => Emit(t, b, gfni: true))
            : GeneratedKernels.Get(GeneratedKernel.Q6K1, 1, nb, (t, b) => Emit(t, b, gfni: false));
        float* results = stackalloc float[Q6KPacked.GroupRows];
        var row = act.Row(0);
        float* offsets = (float*)act.NegatedOffsets(0);
        for (int g0 = r0; g0 < r1; g0 += Q6KPacked.GroupRows)
        {
            tile(packed + g0 / Q6KPacked.GroupRows * Q6KPacked.GroupBytes(nb), row.Q, row.D, offsets, nb, results);
            GeneratedKernels.CopyResults(results, 1, y + g0, n, Math.Min(Q6KPacked.GroupRows, r1 - g0));
        }
    }

    /// <summary>The tile's code (see the class summary); <paramref name="gfni"/> false moves the qh bits with shifts and masks.</summary>
    internal static X64Emitter Emit(int tokens, int nb, bool gfni)
    {
        ArgumentOutOfRangeException.ThrowIfNotEqual(tokens, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(nb, 1);
        const int Acc = 0, Isum = 1, M0F = 2, Sum = 4, L0 = 8, L1 = 9, Q = 10, U = 11, Shifted = 15, Scales = 20, Scale = 24, D = 30;
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
        e.Pxord(Acc, Acc, Acc);
        int loop = e.Position;
        e.Pxord(Isum, Isum, Isum);
        for (int v = 0; v < 4; v++)
        {
            e.LoadPs(Scales + v, Gpr.Rdi, ScaleOffset + 64 * v);
        }
        // Per (h, p): the four sub-blocks j = 8h + 2k + p (k = 0..3) together, from the 12 vectors that follow each other
        // in the packed layout (for i = 0..3: ql vectors 16h + 4p + i and 16h + 8 + 4p + i, qh vector 8h + 4p + i), so a
        // super-block is read as one forward stream.
        for (int hp = 0; hp < 4; hp++)
        {
            int h = hp >> 1, p = hp & 1;
            for (int k = 0; k < 4; k++)
            {
                e.BroadcastSs(Sum + k, Gpr.Rcx, 4 * SubBlock(h, k, p)); // -32 (sum of x over the sub-block)
            }
            for (int i = 0; i < 4; i++)
            {
                int q = 4 * p + i;
                e.LoadPs(L0, Gpr.Rdi, Q6KPacked.LowVectorOffset(16 * h + q));
                e.LoadPs(L1, Gpr.Rdi, Q6KPacked.LowVectorOffset(16 * h + 8 + q));
                e.LoadPs(Q, Gpr.Rdi, Q6KPacked.HighVectorOffset(8 * h + q));
                for (int k = 0; k < 4; k++)
                {
                    HighBits(e, U + k, Q, k, gfni);
                }
                // u of k = 0, 1 from the low nibbles of L0, L1, of k = 2, 3 from their high nibbles.
                e.Pternlogd(U + 0, L0, M0F, Merge);
                e.Pternlogd(U + 1, L1, M0F, Merge);
                e.PsrldImm(Shifted, L0, 4);
                e.Pternlogd(U + 2, Shifted, M0F, Merge);
                e.PsrldImm(Shifted, L1, 4);
                e.Pternlogd(U + 3, Shifted, M0F, Merge);
                for (int k = 0; k < 4; k++)
                {
                    e.DpbusdBroadcast(Sum + k, U + k, Gpr.Rsi, 16 * SubBlock(h, k, p) + 4 * i);
                }
            }
            for (int k = 0; k < 4; k++)
            {
                // sc[j] is byte j % 4 of scale vector j / 4, sign-extended: to the top byte, then shifted down arithmetically.
                int j = SubBlock(h, k, p), b = j & 3;
                if (b == 3)
                {
                    e.PsradImm(Scale, Scales + (j >> 2), 24);
                }
                else
                {
                    e.PslldImm(Scale, Scales + (j >> 2), (byte)(24 - 8 * b));
                    e.PsradImm(Scale, Scale, 24);
                }
                e.Pmulld(Sum + k, Sum + k, Scale);
                e.Paddd(Isum, Isum, Sum + k);
            }
        }
        e.CvtPhToPs(D, Gpr.Rdi, 0);
        e.CvtDqToPs(Isum, Isum);
        e.MulPsBroadcast(Isum, Isum, Gpr.Rdx, 0);
        e.Fmadd231(Acc, D, Isum);
        GeneratedKernels.NextStep(e, loop, weights: Q6KPacked.SuperBytes, quants: 256, scales: 4, data: 64);
        GeneratedKernels.StoreAndReturn(e, 1);
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
