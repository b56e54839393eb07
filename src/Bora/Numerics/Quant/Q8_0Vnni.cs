using Bora.Numerics.Jit;

namespace Bora.Numerics.Quant;

/// <summary>
/// Q8_0 products over the packed 16-row groups of <see cref="Q8_0Packed"/> with AVX-512 VNNI's vpdpbusd, which .NET 10
/// has no intrinsic for on CPUs without AVX10 (AMD Zen 4, Intel Ice Lake to Sapphire Rapids): the tile is generated
/// as machine code at first use (<see cref="X64Emitter"/>), one function per (tokens, blocks per row), and called
/// through a function pointer. vpdpbusd adds four u8 x s8 products straight into int32, so a stored quant
/// u = w + 128 (0..255) needs no split into nibble planes: per token and block, 8 vpdpbusd (the token's 4-byte groups
/// broadcast from memory) instead of 16 vpmaddubsw, 14 int16 adds and 2 vpmaddwd.
/// <para>Arithmetic per (row, token), over the blocks in order, as <see cref="Q8_0Packed"/>: p = sum u x (exact int32),
/// then acc = fma(d_w, fms(p, d_x, 128 d_x sum x), acc), with the same fused instructions (vfmsub213ps, vfmadd231ps),
/// so the results equal <see cref="Q8_0Packed.RunScalar"/> bit for bit (the tests assert it).</para>
/// <para>Generated tile, tokens T (1..8), blocks nb: arguments rdi = the group, rsi = token 0's quants, rdx = its d_x,
/// rcx = its 128 d_x sum x (token t's rows follow at t 32 nb and t 4 nb bytes), r8 = nb / 2 block pairs, r9 = 16 T
/// floats out. Registers: zmm0..T-1 the accumulators, zmm8..8+T-1 the int32 sums p, zmm16 the rows' d_w, zmm17..20
/// the broadcast d_x, zmm24..31 the block's 8 quant vectors (vector j: values 4j..4j+3 of the 16 rows).</para>
/// Letters: N = rows, K = cols, T = tokens, nb = K / 32.
/// </summary>
internal static unsafe class Q8_0Vnni
{
    /// <summary>Tokens per tile: 8 accumulators and 8 sums beside the block's 8 quant vectors.</summary>
    private const int TileTokens = 8;

    /// <summary>As <see cref="Q8_0Packed"/>'s sweep: weights of the groups a tile of tokens sweeps before the next tile.</summary>
    private const long SweepBytes = 512 * 1024;

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16; r1 a multiple of 16 or n), t in [0, tokens), needs
    /// <see cref="GeneratedKernels.IsSupported"/> and <see cref="Q8_0Packed.Prepare"/>. packed: the matrix's first group; y: (T, N).
    /// </summary>
    public static void Run(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        if (nb == 0)
        {
            Q8_0Packed.Run(packed, nb, n, act, tokens, y, r0, r1);
            return;
        }
        if (tokens <= 0 || r0 >= r1)
        {
            return;
        }
        long groupBytes = Q8_0Packed.GroupBytes(nb);
        int sweepRows = Q8_0Packed.GroupRows * (int)Math.Clamp(SweepBytes / groupBytes, 1, 64);
        float* results = stackalloc float[TileTokens * Q8_0Packed.GroupRows];
        for (int s0 = r0; s0 < r1; s0 += sweepRows)
        {
            int s1 = Math.Min(r1, s0 + sweepRows);
            for (int t0 = 0; t0 < tokens; t0 += TileTokens)
            {
                int tt = Math.Min(TileTokens, tokens - t0);
                var tile = GeneratedKernels.Get(GeneratedKernel.Q8_0, tt, nb, Emit);
                var row = act.Row(t0);
                float* ds = act.OffsetSums(t0);
                for (int g0 = s0; g0 < s1; g0 += Q8_0Packed.GroupRows)
                {
                    int rows = Math.Min(Q8_0Packed.GroupRows, s1 - g0);
                    tile(packed + g0 / Q8_0Packed.GroupRows * groupBytes, row.Q, row.D, ds, nb / 2, results);
                    GeneratedKernels.CopyResults(results, tt, y + (long)t0 * n + g0, n, rows);
                }
            }
        }
    }

    /// <summary>The tile's code (see the class summary for its registers and arguments).</summary>
    internal static X64Emitter Emit(int tokens, int nb)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokens, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(tokens, TileTokens);
        ArgumentOutOfRangeException.ThrowIfLessThan(nb, 1);
        int qStride = 32 * nb, dStride = 4 * nb; // bytes from token t's row to token t + 1's
        var e = new X64Emitter();
        for (int t = 0; t < tokens; t++)
        {
            e.Pxord(t, t, t);
        }
        if (nb >= 2)
        {
            int loop = e.Position;
            if (tokens > 1)
            {
                // The pair 2 blocks ahead (17 lines cover its 1088 bytes): the first tile of a sweep reads the group
                // from memory, as Q8_0Packed's tiles do.
                for (int line = 0; line < 17; line++)
                {
                    e.Prefetch(Gpr.Rdi, 2 * 1088 + 64 * line);
                }
            }
            Block(e, tokens, qStride, dStride, quants: 0, scales: 512, x: 0, d: 0);
            Block(e, tokens, qStride, dStride, quants: 544 + 32, scales: 544, x: 32, d: 4);
            GeneratedKernels.NextStep(e, loop, weights: 1088, quants: 64, scales: 8, data: 8);
        }
        if (nb % 2 == 1)
        {
            Block(e, tokens, qStride, dStride, quants: 0, scales: 512, x: 0, d: 0);
        }
        GeneratedKernels.StoreAndReturn(e, tokens);
        return e;
    }

    /// <summary>
    /// One block for every token: 8 quant loads, the d_w halves widened, per token p = 8 vpdpbusd from zero, then
    /// acc = fma(d_w, fms(float(p), d_x, ds), acc). Offsets in bytes from rdi (group), rsi (quants), rdx / rcx (d_x / ds).
    /// </summary>
    private static void Block(X64Emitter e, int tokens, int qStride, int dStride, int quants, int scales, int x, int d)
    {
        for (int j = 0; j < 8; j++)
        {
            e.LoadPs(24 + j, Gpr.Rdi, quants + 64 * j);
        }
        e.CvtPhToPs(16, Gpr.Rdi, scales);
        Tokens(e, tokens, qStride, dStride, x, d);
    }

    /// <summary>
    /// The tokens' part of a block, shared with <see cref="Q4_0Vnni"/>: per token t, p = 8 vpdpbusd of zmm24..31 (vector j:
    /// values 4j..4j+3 of the 16 rows, unsigned) with t's 4-byte groups at rsi + t qStride + x + 4j, then
    /// acc_t = fma(d_w (zmm16), fms(float(p), d_x, ds), acc_t) with d_x at rdx + t dStride + d and ds at rcx + the same.
    /// </summary>
    internal static void Tokens(X64Emitter e, int tokens, int qStride, int dStride, int x, int d)
    {
        for (int t = 0; t < tokens; t++)
        {
            e.Pxord(8 + t, 8 + t, 8 + t);
        }
        for (int j = 0; j < 8; j++)
        {
            for (int t = 0; t < tokens; t++)
            {
                e.DpbusdBroadcast(8 + t, 24 + j, Gpr.Rsi, t * qStride + x + 4 * j);
            }
        }
        for (int t = 0; t < tokens; t++)
        {
            int dx = 17 + (t & 3);
            e.CvtDqToPs(8 + t, 8 + t);
            e.BroadcastSs(dx, Gpr.Rdx, t * dStride + d);
            e.FmsubBroadcast(8 + t, dx, Gpr.Rcx, t * dStride + d);
            e.Fmadd231(t, 16, 8 + t);
        }
    }
}
