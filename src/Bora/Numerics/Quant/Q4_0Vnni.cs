using Bora.Numerics.Jit;

namespace Bora.Numerics.Quant;

/// <summary>
/// Q4_0 products over the packed 16-row groups of <see cref="Q4_0Packed"/> with AVX-512 VNNI's vpdpbusd, generated at
/// first use as <see cref="Q8_0Vnni"/> is (one function per tokens and blocks per row): per block, the 4 stored vectors
/// split once per tile into 8 nibble planes (and; shift + and), then per token 8 vpdpbusd add the plane x activation
/// dot products straight into int32, where the managed tile spends 8 vpmaddubsw, 7 int16 adds, 8 broadcasts and a
/// vpmaddwd. The float part is <see cref="Q8_0Vnni.Tokens"/>'s (the same fused instructions as the managed tile), so
/// the results equal <see cref="Q4_0Packed.RunScalar"/> bit for bit.
/// <para>Generated tile, tokens T (1..8), blocks nb: arguments rdi = the group (blocks of
/// <see cref="Q4_0Packed.BlockGroupBytes"/> bytes: 4 quant vectors, vector d holding quant bytes 4d..4d+3 of every row,
/// then the 16 f16 d_w), rsi = token 0's quants, rdx = its d_x, rcx = its 8 d_x sum x (token t's rows follow at
/// t 32 nb and t 4 nb bytes), r8 = nb, r9 = 16 T floats out. Registers: zmm0..7 the accumulators, 8..15 the int32 sums,
/// 16 d_w, 17..20 broadcast d_x, 21 and 22 a stored vector and its shifted copy, 23 the nibble mask, 24..31 the planes
/// (plane j: values 4j..4j+3 of the 16 rows: the low nibbles of vector j for j &lt; 4, the high ones of vector j - 4).</para>
/// <para>1-token products (decode) take these tiles too since session 9. Session 8 had kept them on the managed tile
/// (<c>matmul --types q4_0 --shapes w1 --compare-packed 1</c>, 1 thread: 1.05-1.17 ms managed / 1.16-1.24 generated),
/// but that matrix (33 MB) sits half in the 32 MB L3, and those runs may have timed callers still at tier 0. Measured again
/// with <c>DOTNET_TieredCompilation=0</c>, 1 thread, alternating (managed / generated): the same product 1.05-1.14 /
/// 1.01-1.07 ms (3 pairs); in L2 (a (352, 4096) product less a (32, 4096) one) 55 / 87-95 GB/s; streamed from memory
/// (18 matrices of (16384, 4096), 690 MB) 92-95 % / 98-100 % of a plain read of the same bytes (2 pairs).</para>
/// Letters: T = tokens, nb = K / 32 blocks per row.
/// </summary>
internal static unsafe class Q4_0Vnni
{
    private const int TileTokens = 8;

    /// <summary>Blocks ahead that tiles of 2 tokens or more prefetch, as <see cref="Q4_0Packed"/>'s tiles (its measurements).</summary>
    private const int PrefetchBlocks = 4;

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16), t in [0, tokens), needs <see cref="GeneratedKernels.IsSupported"/>
    /// and <see cref="Q4_0Packed.Prepare"/>. Each group is swept by tiles of up to 8 tokens (it stays in L2 across them).
    /// </summary>
    public static void Run(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        if (nb == 0)
        {
            Q4_0Packed.Run(packed, nb, n, act, tokens, y, r0, r1);
            return;
        }
        // The two tiles this product needs, looked up once (a tile call is only a few microseconds).
        var full = tokens >= TileTokens ? GeneratedKernels.Get(GeneratedKernel.Q4_0, TileTokens, nb, Emit) : null;
        var tail = tokens % TileTokens != 0 ? GeneratedKernels.Get(GeneratedKernel.Q4_0, tokens % TileTokens, nb, Emit) : null;
        byte* sums = (byte*)act.OffsetSums(0); // OffsetSums(1) below only gives the stride between tokens
        PackedLayouts.RunGeneratedTiles(full, tail, TileTokens, packed, Q4_0Packed.GroupBytes(nb), nb, n, act,
            sums, (byte*)act.OffsetSums(1) - sums, tokens, y, r0, r1);
    }

    /// <summary>The tile's code (see the class summary for its registers and arguments).</summary>
    internal static X64Emitter Emit(int tokens, int nb)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tokens, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(tokens, TileTokens);
        ArgumentOutOfRangeException.ThrowIfLessThan(nb, 1);
        const int Block = Q4_0Packed.BlockGroupBytes, Nibbles = 23;
        var e = new X64Emitter();
        e.BroadcastConstant(Nibbles, 0x0F0F0F0F);
        for (int t = 0; t < tokens; t++)
        {
            e.Pxord(t, t, t);
        }
        int loop = e.Position;
        if (tokens > 1)
        {
            for (int line = 0; line < 5; line++)
            {
                e.Prefetch(Gpr.Rdi, PrefetchBlocks * Block + 64 * line);
            }
        }
        for (int v = 0; v < 4; v++)
        {
            e.LoadPs(21, Gpr.Rdi, 64 * v);
            e.Pandd(24 + v, 21, Nibbles);
            e.PsrlwImm(22, 21, 4);
            e.Pandd(28 + v, 22, Nibbles);
        }
        e.CvtPhToPs(16, Gpr.Rdi, 256);
        Q8_0Vnni.Tokens(e, tokens, qStride: 32 * nb, dStride: 4 * nb, x: 0, d: 0);
        GeneratedKernels.NextStep(e, loop, weights: Block, quants: 32, scales: 4, data: 4);
        GeneratedKernels.StoreAndReturn(e, tokens);
        return e;
    }
}
