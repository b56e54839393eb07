using System.Runtime.Intrinsics;
using Bora.Numerics.Jit;

namespace Bora.Numerics;

/// <summary>
/// IEEE half rows times one float32 vector (decode's <see cref="HalfMatrix"/> product) with a tile generated at first
/// use (<see cref="X64Emitter"/>, one function per row length): AVX-512's vcvtph2ps widens 16 halves per instruction
/// exactly (infinities, NaN and subnormals included), where .NET 10 has no intrinsic for it and the managed kernel
/// widens by unpacks, shifts and masks and checks each row for infinities. Per 64 values: four vcvtph2ps from memory and
/// four fused multiply-adds with x (also from memory) into four sums. vcvtph2ps is the limit: alone it widens about 60
/// GB/s of halves in L2 on one core of the AVX-512 box, and the tile computes 54-59 (44-59 with x loaded by a separate
/// instruction; 1 thread, 96 rows of 4096 in L2, best of 15, five runs).
/// <para>The tile takes <see cref="Rows"/> rows one after the other, which is one stream through memory since the rows
/// are contiguous: taking 2 or 4 rows side by side (one x load for all of them) computed faster in cache but streamed
/// slower from memory, rows 8 KiB apart (1 thread, 40 (4096, 4096) matrices, read probe 29-30 GB/s: 1 row at a time
/// 23-24 GB/s, 2 side by side 15-16, 4 side by side 18-19).</para>
/// <para>Generated tile, K = 64 steps values per row: arguments rdi = the first row, rsi = x (K floats), r8 = steps,
/// r9 = 64 Rows floats out (row r's four sums, over values 64i + 16j .. + 15 for sum j, at r9 + 256 r + 64 j); rdx and
/// rcx are not read. Registers: zmm0..3 the sums, 16..19 the widened values (rows in chunks: see Emit). The caller adds each row's sums
/// and their lanes.</para>
/// <para>The sum runs in another order than the managed kernel's, so results agree with it within summation-order
/// rounding, not bit for bit.</para>
/// Letters: K = cols, r = row of the tile, j = sum (0..3).
/// </summary>
internal static unsafe class HalfRowTile
{
    /// <summary>Rows per tile call.</summary>
    public const int Rows = 4;

    /// <summary>Whether rows of <paramref name="k"/> values can take the tile on this machine and configuration.</summary>
    public static bool Covers(int k) => k > 0 && k % 64 == 0 && Quant.QuantDispatch.UseGeneratedKernels;

    /// <summary>
    /// y[r] = W[r] · x for r in [r0, r0 + 4 q) (q = the whole tiles in [r0, r1)); returns the first row not done. w: (N, K)
    /// halves, x: (K), y: (N).
    /// </summary>
    public static int Run(ushort* w, float* x, float* y, int k, int r0, int r1)
    {
        var tile = GeneratedKernels.Get(GeneratedKernel.F16Rows4, Rows, k / 64, Emit);
        float* sums = stackalloc float[Rows * 64];
        int r = r0;
        for (; r + Rows <= r1; r += Rows)
        {
            tile((byte*)(w + (long)r * k), (sbyte*)x, null, null, k / 64, sums);
            for (int i = 0; i < Rows; i++)
            {
                float* s = sums + 64 * i;
                y[r + i] = Vector512.Sum((Vector512.Load(s) + Vector512.Load(s + 16)) + (Vector512.Load(s + 32) + Vector512.Load(s + 48)));
            }
        }
        return r;
    }

    /// <summary>The tile's code for rows of 64 <paramref name="steps"/> values, in chunks of at most <see cref="DefaultChunkSteps"/> steps.</summary>
    internal static X64Emitter Emit(int rows, int steps) => Emit(rows, steps, DefaultChunkSteps);

    /// <summary>Steps of x (64 values, 256 bytes each) that fit L1 with the rows streaming through it: 16 KiB.</summary>
    internal const int DefaultChunkSteps = 64;

    /// <summary>
    /// The tile's code for rows of 64 <paramref name="steps"/> values (see the class summary). Rows longer than
    /// <paramref name="chunkSteps"/> steps (x no longer fits L1: 4096 values are 16 KiB) go through K in chunks that do,
    /// each chunk over rows 0 and 1 side by side (one x load for both), then rows 2 and 3 (16 sums, zmm0..15; widened
    /// values in 16..23, x in 24..27), when the steps divide into chunks of 8 to <paramref name="chunkSteps"/> steps;
    /// each row's sums take the same steps in the same order, so the results equal the one-row-at-a-time code bit for
    /// bit. Measured streaming 1 GiB of (N, 14336) rows at one thread (the fy scratch harness of the notes, medians of
    /// 5, three rounds in each of three runs): one row at a time 10.9-12.9 GB/s, 4 chunks of 3584 values a row at a
    /// time 14.4-15.4, those chunks two rows side by side 14.2-17.2 (this code); (N, 4096) rows, which take the plain
    /// code, stream at 20-21 (two rows side by side over the whole row: 12-14).
    /// </summary>
    internal static X64Emitter Emit(int rows, int steps, int chunkSteps)
    {
        ArgumentOutOfRangeException.ThrowIfNotEqual(rows, Rows);
        ArgumentOutOfRangeException.ThrowIfLessThan(steps, 1);
        int chunks = Chunks(steps, chunkSteps);
        var e = new X64Emitter();
        if (chunks == 1)
        {
            for (int r = 0; r < Rows; r++)
            {
                for (int j = 0; j < 4; j++)
                {
                    e.Pxord(j, j, j);
                }
                Steps(e, 0);
                for (int j = 0; j < 4; j++)
                {
                    e.StorePs(Gpr.R9, 256 * r + 64 * j, j);
                }
                e.AddImm(Gpr.Rsi, -256 * steps); // back to x[0]
                e.AddImm(Gpr.R8, steps);
            }
            e.VzeroupperRet();
            return e;
        }
        int per = steps / chunks, rowBytes = 128 * steps;
        for (int j = 0; j < 4 * Rows; j++)
        {
            e.Pxord(j, j, j);
        }
        e.AddImm(Gpr.R8, per - steps); // the loop counter runs over one chunk
        for (int c = 0; c < chunks; c++)
        {
            for (int pair = 0; pair < Rows / 2; pair++)
            {
                // Rows 2 pair and 2 pair + 1 side by side, one x load for both.
                int loop = e.Position;
                for (int j = 0; j < 4; j++)
                {
                    e.LoadPs(24 + j, Gpr.Rsi, 64 * j);
                    e.CvtPhToPs(16 + j, Gpr.Rdi, 32 * j);
                    e.CvtPhToPs(20 + j, Gpr.Rdi, rowBytes + 32 * j);
                    e.Fmadd231(8 * pair + j, 16 + j, 24 + j);
                    e.Fmadd231(8 * pair + 4 + j, 20 + j, 24 + j);
                }
                e.AddImm(Gpr.Rdi, 128);
                e.AddImm(Gpr.Rsi, 256);
                e.Dec(Gpr.R8);
                e.JnzBack(loop);
                e.AddImm(Gpr.R8, per);
                e.AddImm(Gpr.Rsi, -256 * per); // back to the chunk's x
                e.AddImm(Gpr.Rdi, 2 * rowBytes - 128 * per); // the next pair, same chunk
            }
            e.AddImm(Gpr.Rdi, -Rows * rowBytes + 128 * per); // row 0, next chunk
            e.AddImm(Gpr.Rsi, 256 * per);
        }
        for (int r = 0; r < Rows; r++)
        {
            for (int j = 0; j < 4; j++)
            {
                e.StorePs(Gpr.R9, 256 * r + 64 * j, 4 * r + j);
            }
        }
        e.VzeroupperRet();
        return e;
    }

    /// <summary>Chunks of K for rows of <paramref name="steps"/> steps: 1, or the fewest chunks of 8 to <paramref name="chunkSteps"/> steps that divide the row.</summary>
    private static int Chunks(int steps, int chunkSteps)
    {
        for (int c = (steps + chunkSteps - 1) / chunkSteps; c > 1 && steps / c >= 8; c++)
        {
            if (steps % c == 0)
            {
                return c;
            }
        }
        return 1;
    }

    /// <summary>The loop over r8 steps of one row: sums zmm[first..first + 3] += widened rdi values times x at rsi; rdi and rsi run on.</summary>
    private static void Steps(X64Emitter e, int first)
    {
        int loop = e.Position;
        for (int j = 0; j < 4; j++)
        {
            e.CvtPhToPs(16 + j, Gpr.Rdi, 32 * j);
            e.Fmadd231Mem(first + j, 16 + j, Gpr.Rsi, 64 * j); // x straight from memory, one instruction fewer per 16 values
        }
        e.AddImm(Gpr.Rdi, 128); // one row after the other: rdi runs on into the next row
        e.AddImm(Gpr.Rsi, 256);
        e.Dec(Gpr.R8);
        e.JnzBack(loop);
    }
}
