using Bora.Numerics;
using Bora.Numerics.Jit;

namespace Bora.Model.Tests.QuantKernels;

/// <summary>
/// <see cref="HalfRowTile"/>'s generated code: rows long enough to go through K in chunks give the same bits as the
/// one-row-at-a-time code (each row's sums take the same steps in the same order), and both match a double-precision
/// dot product.
/// </summary>
[Trait("Category", "Kernels")]
public sealed unsafe class HalfRowTileTests
{
    /// <summary>
    /// Relative to sum |w x|: the tile sums K float32 terms in 64 lanes, so a row may differ from the exact sum by a
    /// few roundings of the running lane sums (at most ~K / 64 * 6e-8 each, here 2e-5 for K = 14336).
    /// </summary>
    private const double SumOrderTolerance = 1e-4;

    [Theory]
    [InlineData(14336)] // 224 steps: 4 chunks of 56 (the Mistral 7B FFN's down projection)
    [InlineData(8320)] // 130 steps: 5 chunks of 26
    [InlineData(4288)] // 67 steps: no divisor, one row at a time
    [InlineData(4096)] // 64 steps: fits, one row at a time
    public void ChunkedRowsEqualTheOneRowAtATimeCodeBitForBit(int k)
    {
        if (!GeneratedKernels.IsSupported)
        {
            return; // no executable pages or no AVX-512 here: the managed kernels run instead (HalfMatrixTests)
        }
        var rng = new Random(k);
        int rows = HalfRowTile.Rows;
        var w = new ushort[rows * k];
        for (int i = 0; i < w.Length; i++)
        {
            w[i] = BitConverter.HalfToUInt16Bits((Half)(rng.NextDouble() * 2 - 1));
        }
        var x = new float[k];
        for (int i = 0; i < k; i++)
        {
            x[i] = (float)(rng.NextDouble() * 2 - 1);
        }
        var chunked = Sums(HalfRowTile.Emit(rows, k / 64), w, x, k);
        var plain = Sums(HalfRowTile.Emit(rows, k / 64, chunkSteps: int.MaxValue), w, x, k);
        Assert.Equal(plain, chunked);
        for (int r = 0; r < rows; r++)
        {
            double exact = 0, magnitude = 0;
            for (int i = 0; i < k; i++)
            {
                double term = (double)(float)BitConverter.UInt16BitsToHalf(w[r * k + i]) * x[i];
                exact += term;
                magnitude += Math.Abs(term);
            }
            double got = chunked.Skip(64 * r).Take(64).Sum(v => (double)v);
            Assert.True(Math.Abs(got - exact) <= SumOrderTolerance * magnitude, $"K = {k}, row {r}: {got} against {exact}");
        }
    }

    private static float[] Sums(X64Emitter code, ushort[] w, float[] x, int k)
    {
        var f = (delegate* unmanaged[SuppressGCTransition]<byte*, sbyte*, float*, float*, long, float*, void>)ExecutableMemory.TryCreate(code.Code);
        Assert.True(f != null);
        var sums = new float[64 * HalfRowTile.Rows];
        fixed (ushort* pw = w)
        fixed (float* px = x, ps = sums)
        {
            f((byte*)pw, (sbyte*)px, null, null, k / 64, ps);
        }
        return sums;
    }
}
