using System.Runtime.CompilerServices;
using Bora.Numerics.Jit;

namespace Bora.Numerics.Quant;

/// <summary>
/// Q4_K products over expanded groups (<see cref="Q4KPacked"/>, from its <see cref="Q4KPacked.ExpandMinTokens"/> tokens
/// on) with AVX-512 VNNI's vpdpbusd, generated as machine code at first use (<see cref="X64Emitter"/>; .NET 10 has no
/// intrinsic for it on CPUs without AVX10), one function per (tokens, super-blocks per row). Per sub-block and token:
/// 8 vpdpbusd give the exact int32 sum of the sub-block's q x (the token's 4-byte groups broadcast from memory), one
/// vpmulld by the rows' sc[s] and one vpaddd add it to isum, where the managed tile spends 8 vpmaddubsw, 7 int16 adds,
/// 8 broadcasts and a vpmaddwd. Fewer tokens (decode, small batches) keep the managed tiles over the packed group.
/// <para>Arithmetic per (row, token), as <see cref="Q4KPacked"/>: per super-block isum = sum_s sc[s] (sum of q x of
/// sub-block s) exactly, acc = fma(d, float(isum) d_x, acc), then for s = 0..7 acc = fma(-(dmin m[s]), d_x sum(x of s),
/// acc); the same instructions in the same order, so the results equal <see cref="Q4KPacked.RunScalar"/> bit for bit.</para>
/// <para>Generated tile, tokens T (1..8), super-blocks nb: arguments rdi = the expanded group (super-blocks of
/// <see cref="Q4KPacked.ExpandedStride"/> bytes: 8 sub-blocks x 8 nibble vectors, then sc[s] as int32, dmin m[s] and
/// d as floats, 16 rows each), rsi = token 0's quants, rdx = its d_x, rcx = its 8 nb sub-block sums d_x sum x (token
/// t's rows follow at t 256 nb, t 4 nb and t 32 nb bytes), r8 = nb, r9 = 16 T floats out. Registers: zmm0..T-1 the
/// accumulators, zmm8.. isum, zmm16.. the sub-block sums (then d and dmin m), zmm24..31 a sub-block's nibble vectors
/// (vector j: values 4j..4j+3 of the 16 rows).</para>
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

        public static nint TokenData(Q8Activations act, int t) => (nint)act.SubBlockSums(t);

        public static void Expand(byte* g, int nb, byte* dst) => Q4KPacked.Expand(g, nb, dst, plainScales: true);

        [SkipLocalsInit] // the tile writes every result it reads back
        public static void Tile<TN>(bool expanded, byte* src, int nb, Q8Row* tok, nint* data, float* y, int n, int rows, float* partial)
            where TN : struct, ITokenCount
        {
            if (!expanded || nb == 0)
            {
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

    /// <summary>The tile's code (see the class summary for its registers and arguments).</summary>
    internal static X64Emitter Emit(int tokens, int nb)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokens, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(tokens, TileTokens);
        ArgumentOutOfRangeException.ThrowIfLessThan(nb, 1);
        int qStride = 256 * nb, dStride = 4 * nb, sumStride = 32 * nb; // bytes from token t's rows to token t + 1's
        int scales = (int)Q4KPacked.ExpandedScaleOffset, mins = (int)Q4KPacked.ExpandedMinOffset, d = (int)Q4KPacked.ExpandedDOffset;
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
        for (int s = 0; s < 8; s++)
        {
            e.LoadPs(17, Gpr.Rdi, mins + 64 * s);
            for (int t = 0; t < tokens; t++)
            {
                e.FnmaddBroadcast231(t, 17, Gpr.Rcx, t * sumStride + 4 * s);
            }
        }
        GeneratedKernels.NextStep(e, loop, weights: (int)Q4KPacked.ExpandedStride, quants: 256, scales: 4, data: 32);
        GeneratedKernels.StoreAndReturn(e, tokens);
        return e;
    }
}
