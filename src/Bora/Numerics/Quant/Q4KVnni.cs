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
/// itself (<see cref="EmitPacked"/>); 2 to 63 tokens keep the managed tiles over the packed group (session 8's generated
/// version of those, which unpacked everything per tile of up to 4 tokens, measured slower).
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
            if (nb == 0 || (!expanded && TN.Value > 1))
            {
                Q4KPacked.Kernel.Tile<TN>(false, src, nb, tok, data, y, n, rows, partial);
                return;
            }
            if (!expanded)
            {
                // One token over the packed group (decode).
                var one = GeneratedKernels.Get(GeneratedKernel.Q4KPacked1, 1, nb, EmitPacked);
                float* result = stackalloc float[16];
                one(src, tok[0].Q, tok[0].D, (float*)data[0], nb, result);
                GeneratedKernels.CopyResults(result, 1, y, n, rows);
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

    /// <summary>
    /// The 1-token tile over a packed group (<see cref="Q4KPacked"/>'s layout, <see cref="Q4KPacked.SuperBytes"/> bytes
    /// per super-block): the 6-bit scales and mins are unpacked in registers per super-block, as the managed tile does
    /// (for byte i of each row's 12 scale bytes in dwords A, B, C: sc[i] = A_i &amp; 63, sc[4 + i] = (C_i &amp; 15) |
    /// (A_i &gt;&gt; 6) &lt;&lt; 4, m[i] = B_i &amp; 63, m[4 + i] = (C_i &gt;&gt; 4) | (B_i &gt;&gt; 6) &lt;&lt; 4, here as
    /// int32 lanes: sc[4 + i] = ((C &gt;&gt; 8i) &amp; 15) | ((A &gt;&gt; (8i + 2)) &amp; 48)), then per sub-block s the 8 nibble planes
    /// of chunk s / 2 (low nibbles for even s, high for odd) go through 8 vpdpbusd, one vpmulld by sc[s] and one vpaddd.
    /// Arguments as the expanded tile's, rdi = the packed group. Registers: zmm0 the accumulator, 1 isum, 2 the byte mask
    /// 0x0F, 3..5 the int32 masks 63, 15, 48, 6 / 7 / 14 the scale dwords A, B, C, 8..11 the sub-block sums (4 in flight),
    /// 12, 13, 15 scratch (d, dmin, m[s]), 16..23 sc[0..7], 24..31 the planes. Each sub-block's 8 vpdpbusd go to two
    /// sums (even and odd k) to halve the dependent chain (3% faster than one sum).
    /// <para>Measured (1 thread, tiered compilation on after 3000 warm-up calls, alternating BORA_GENERATED_KERNELS=0 /
    /// 1): in L2, a (352, 4096) product 27.2-27.5 / 20.8-21.0 us; streamed from memory (<c>bench/Bora.Bench stream
    /// --type q4_k --threads 1</c>, 64 matrices of (4096, 4096), 4 pairs, two of them before the split into two sums) 19.9-22.5 / 22.9-24.4 GB/s.</para>
    /// </summary>
    internal static X64Emitter EmitPacked(int tokens, int nb)
    {
        ArgumentOutOfRangeException.ThrowIfNotEqual(tokens, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(nb, 1);
        const int Acc = 0, Isum = 1, Nibbles = 2, Six = 3, Four = 4, High2 = 5, A = 6, B = 7, C = 14, Sc = 16, Plane = 24;
        var e = new X64Emitter();
        e.BroadcastConstant(Nibbles, 0x0F0F0F0F);
        e.BroadcastConstant(Six, 63);
        e.BroadcastConstant(Four, 15);
        e.BroadcastConstant(High2, 48);
        e.Pxord(Acc, Acc, Acc);
        int loop = e.Position;
        e.Pxord(Isum, Isum, Isum);
        e.LoadPs(A, Gpr.Rdi, 64);
        e.LoadPs(B, Gpr.Rdi, 128);
        e.LoadPs(C, Gpr.Rdi, 192);
        for (int i = 0; i < 4; i++)
        {
            e.PsrldImm(Sc + i, A, (byte)(8 * i));
            e.Pandd(Sc + i, Sc + i, Six);
            e.PsrldImm(12, C, (byte)(8 * i));
            e.Pandd(12, 12, Four);
            e.PsrldImm(13, A, (byte)(8 * i + 2));
            e.Pandd(13, 13, High2);
            e.Pord(Sc + 4 + i, 12, 13);
        }
        for (int sub = 0; sub < 8; sub++)
        {
            int chunk = sub / 2, sum = 8 + sub % 4;
            for (int k = 0; k < 8; k++)
            {
                e.LoadPs(Plane + k, Gpr.Rdi, 256 + 512 * chunk + 64 * k);
                if (sub % 2 == 1)
                {
                    e.PsrlwImm(Plane + k, Plane + k, 4);
                }
                e.Pandd(Plane + k, Plane + k, Nibbles);
            }
            int sumA = 8 + sub % 2, sumB = 10 + sub % 2;
            sum = sumA;
            e.Pxord(sumA, sumA, sumA);
            e.Pxord(sumB, sumB, sumB);
            for (int k = 0; k < 8; k++)
            {
                e.DpbusdBroadcast(k % 2 == 0 ? sumA : sumB, Plane + k, Gpr.Rsi, 32 * sub + 4 * k);
            }
            e.Paddd(sum, sumA, sumB);
            e.Pmulld(sum, sum, Sc + sub);
            e.Paddd(Isum, Isum, sum);
        }
        // acc = fma(d, float(isum) d_x, acc), then acc = fma(-(dmin m[s]), d_x sum(x of s), acc) for s = 0..7.
        e.CvtPhToPs(12, Gpr.Rdi, 0);
        e.CvtDqToPs(Isum, Isum);
        e.MulPsBroadcast(Isum, Isum, Gpr.Rdx, 0);
        e.Fmadd231(Acc, 12, Isum);
        e.CvtPhToPs(13, Gpr.Rdi, 32);
        for (int sub = 0; sub < 8; sub++)
        {
            int i = sub % 4;
            if (sub < 4)
            {
                e.PsrldImm(15, B, (byte)(8 * i));
                e.Pandd(15, 15, Six);
            }
            else
            {
                e.PsrldImm(15, C, (byte)(8 * i + 4));
                e.Pandd(15, 15, Four);
                e.PsrldImm(12, B, (byte)(8 * i + 2));
                e.Pandd(12, 12, High2);
                e.Pord(15, 15, 12);
            }
            e.CvtDqToPs(15, 15);
            e.MulPs(15, 13, 15);
            e.FnmaddBroadcast231(Acc, 15, Gpr.Rcx, 4 * sub);
        }
        GeneratedKernels.NextStep(e, loop, weights: (int)Q4KPacked.SuperBytes, quants: 256, scales: 4, data: 32);
        GeneratedKernels.StoreAndReturn(e, 1);
        return e;
    }
}
