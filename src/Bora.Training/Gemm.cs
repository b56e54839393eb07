using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Bora.Training;

/// <summary>
/// The one matrix product training needs, C = A · Bᵀ (every linear layer's forward, input gradient and
/// weight gradient reduce to it after a transpose). Letters: M = rows of A and C, N = rows of B =
/// columns of C, K = the shared inner width. A: (M, K), B: (N, K), C: (M, N), all row-major.
/// <para>
/// Determinism: C[i, j] is always the dot product of A row i and B row j summed in the same order
/// (Vector&lt;T&gt; lanes over K, then the lanes added low to high, then the scalar tail), computed by
/// exactly one task. Tasks own disjoint tiles of C, so the result does not depend on how many threads run.
/// </para>
/// </summary>
internal static class Gemm
{
    /// <summary>Multiply-adds below which a product runs on the calling thread.</summary>
    private const long ParallelThreshold = 1L << 15;

    /// <summary>Rows of C per tile (a multiple of the 4-row micro-kernel).</summary>
    private const int TileRows = 16;

    /// <summary>Columns of C per tile.</summary>
    private const int TileCols = 64;

    /// <summary>
    /// C = A · Bᵀ, or C += A · Bᵀ when <paramref name="accumulate"/>. Offsets address the first element
    /// of each operand in its array. Worked example: A = [[1, 2]], B = [[3, 4], [5, 6]] (M 1, N 2, K 2)
    /// gives C = [[1·3 + 2·4, 1·5 + 2·6]] = [[11, 17]].
    /// </summary>
    public static void ABt<T>(T[] a, int aOff, T[] b, int bOff, T[] c, int cOff, int m, int n, int k, bool accumulate, int maxThreads)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (m < 0 || n < 0 || k < 0 || (long)aOff + (long)m * k > a.Length || (long)bOff + (long)n * k > b.Length || (long)cOff + (long)m * n > c.Length)
        {
            throw new ArgumentException($"GEMM operands too small for M {m}, N {n}, K {k}");
        }
        if (m == 0 || n == 0)
        {
            return;
        }
        int tilesM = (m + TileRows - 1) / TileRows, tilesN = (n + TileCols - 1) / TileCols;
        int tiles = tilesM * tilesN;
        if (maxThreads <= 1 || tiles == 1 || (long)m * n * k < ParallelThreshold)
        {
            for (int t = 0; t < tiles; t++)
            {
                Tile(a, aOff, b, bOff, c, cOff, m, n, k, accumulate, t / tilesN, t % tilesN);
            }
            return;
        }
        Parallel.For(0, tiles, new ParallelOptions { MaxDegreeOfParallelism = maxThreads },
            t => Tile(a, aOff, b, bOff, c, cOff, m, n, k, accumulate, t / tilesN, t % tilesN));
    }

    private static void Tile<T>(T[] a, int aOff, T[] b, int bOff, T[] c, int cOff, int m, int n, int k, bool accumulate, int tm, int tn)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int i0 = tm * TileRows, i1 = Math.Min(m, i0 + TileRows);
        int j0 = tn * TileCols, j1 = Math.Min(n, j0 + TileCols);
        ref T ra = ref MemoryMarshal.GetArrayDataReference(a);
        ref T rb = ref MemoryMarshal.GetArrayDataReference(b);
        ref T rc = ref MemoryMarshal.GetArrayDataReference(c);
        int i = i0;
        for (; i + 4 <= i1; i += 4)
        {
            int j = j0;
            for (; j + 2 <= j1; j += 2)
            {
                Micro4x2(ref ra, aOff + i * k, ref rb, bOff + j * k, ref rc, cOff + i * n + j, n, k, accumulate);
            }
            for (; j < j1; j++)
            {
                for (int r = 0; r < 4; r++)
                {
                    Store(ref rc, cOff + (i + r) * n + j, Dot(ref ra, aOff + (i + r) * k, ref rb, bOff + j * k, k), accumulate);
                }
            }
        }
        for (; i < i1; i++)
        {
            for (int j = j0; j < j1; j++)
            {
                Store(ref rc, cOff + i * n + j, Dot(ref ra, aOff + i * k, ref rb, bOff + j * k, k), accumulate);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store<T>(ref T c, int index, T value, bool accumulate)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        ref T slot = ref Unsafe.Add(ref c, index);
        slot = accumulate ? slot + value : value;
    }

    /// <summary>Dot product of two K-long rows, summed in the canonical order (see the class remarks).</summary>
    private static T Dot<T>(ref T a, int ao, ref T b, int bo, int k)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int vc = Vector<T>.Count, x = 0;
        var acc = Vector<T>.Zero;
        for (; x + vc <= k; x += vc)
        {
            acc = Fma(Vector.LoadUnsafe(ref a, (nuint)(ao + x)), Vector.LoadUnsafe(ref b, (nuint)(bo + x)), acc);
        }
        T s = Lanes(acc);
        for (; x < k; x++)
        {
            s += Unsafe.Add(ref a, ao + x) * Unsafe.Add(ref b, bo + x);
        }
        return s;
    }

    /// <summary>a * b + c, fused for float and double (the same on every thread; the JIT drops the untaken branches).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<T> Fma<T>(Vector<T> a, Vector<T> b, Vector<T> c)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (typeof(T) == typeof(float))
        {
            var r = Vector.FusedMultiplyAdd(Unsafe.As<Vector<T>, Vector<float>>(ref a), Unsafe.As<Vector<T>, Vector<float>>(ref b), Unsafe.As<Vector<T>, Vector<float>>(ref c));
            return Unsafe.As<Vector<float>, Vector<T>>(ref r);
        }
        if (typeof(T) == typeof(double))
        {
            var r = Vector.FusedMultiplyAdd(Unsafe.As<Vector<T>, Vector<double>>(ref a), Unsafe.As<Vector<T>, Vector<double>>(ref b), Unsafe.As<Vector<T>, Vector<double>>(ref c));
            return Unsafe.As<Vector<double>, Vector<T>>(ref r);
        }
        return a * b + c;
    }

    /// <summary>Sum of the lanes, lane 0 first (fixed order: no dependence on the hardware's horizontal add).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static T Lanes<T>(Vector<T> v)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T s = T.Zero;
        for (int l = 0; l < Vector<T>.Count; l++)
        {
            s += v[l];
        }
        return s;
    }

    /// <summary>C rows i..i+3, columns j..j+1: eight dot products sharing their loads.</summary>
    private static void Micro4x2<T>(ref T a, int ao, ref T b, int bo, ref T c, int co, int n, int k, bool accumulate)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int vc = Vector<T>.Count, x = 0;
        Vector<T> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default;
        for (; x + vc <= k; x += vc)
        {
            var b0 = Vector.LoadUnsafe(ref b, (nuint)(bo + x));
            var b1 = Vector.LoadUnsafe(ref b, (nuint)(bo + k + x));
            var a0 = Vector.LoadUnsafe(ref a, (nuint)(ao + x));
            c00 = Fma(a0, b0, c00);
            c01 = Fma(a0, b1, c01);
            var a1 = Vector.LoadUnsafe(ref a, (nuint)(ao + k + x));
            c10 = Fma(a1, b0, c10);
            c11 = Fma(a1, b1, c11);
            var a2 = Vector.LoadUnsafe(ref a, (nuint)(ao + 2 * k + x));
            c20 = Fma(a2, b0, c20);
            c21 = Fma(a2, b1, c21);
            var a3 = Vector.LoadUnsafe(ref a, (nuint)(ao + 3 * k + x));
            c30 = Fma(a3, b0, c30);
            c31 = Fma(a3, b1, c31);
        }
        Span<T> s = [Lanes(c00), Lanes(c01), Lanes(c10), Lanes(c11), Lanes(c20), Lanes(c21), Lanes(c30), Lanes(c31)];
        for (; x < k; x++)
        {
            T b0 = Unsafe.Add(ref b, bo + x), b1 = Unsafe.Add(ref b, bo + k + x);
            for (int r = 0; r < 4; r++)
            {
                T av = Unsafe.Add(ref a, ao + r * k + x);
                s[2 * r] += av * b0;
                s[2 * r + 1] += av * b1;
            }
        }
        for (int r = 0; r < 4; r++)
        {
            Store(ref c, co + r * n, s[2 * r], accumulate);
            Store(ref c, co + r * n + 1, s[2 * r + 1], accumulate);
        }
    }

    /// <summary>dst (cols, rows) = srcᵀ for src (rows, cols) at the given offsets.</summary>
    public static void Transpose<T>(T[] src, int srcOff, int rows, int cols, T[] dst, int dstOff)
    {
        const int Block = 32;
        for (int r0 = 0; r0 < rows; r0 += Block)
        {
            for (int c0 = 0; c0 < cols; c0 += Block)
            {
                int r1 = Math.Min(rows, r0 + Block), c1 = Math.Min(cols, c0 + Block);
                for (int r = r0; r < r1; r++)
                {
                    for (int c = c0; c < c1; c++)
                    {
                        dst[dstOff + c * rows + r] = src[srcOff + r * cols + c];
                    }
                }
            }
        }
    }
}

/// <summary>Plain-loop twin of <see cref="Gemm"/> in double, the reference the tests compare against.</summary>
internal static class ScalarGemm
{
    /// <summary>C = A · Bᵀ (or +=) with double accumulation. Shapes as <see cref="Gemm.ABt"/>.</summary>
    public static void ABt(float[] a, float[] b, float[] c, int m, int n, int k, bool accumulate)
    {
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int x = 0; x < k; x++)
                {
                    s += (double)a[i * k + x] * b[j * k + x];
                }
                c[i * n + j] = (float)(accumulate ? c[i * n + j] + s : s);
            }
        }
    }
}
