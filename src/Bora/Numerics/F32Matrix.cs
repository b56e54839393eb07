using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;

namespace Bora.Numerics;

/// <summary>
/// A float32 weight matrix over a row-major float[] of Rows * Cols values.
/// Letters: N = rows (outputs), K = cols (inputs), T = tokens.
/// </summary>
public sealed class F32Matrix : WeightMatrix
{
    /// <summary>Rows per micro-kernel step (each loaded x vector is reused for this many weight rows).</summary>
    private const int MicroRows = 4;

    /// <summary>Tokens per micro-kernel step (each loaded weight vector is reused for this many tokens).</summary>
    private const int MicroTokens = 2;

    /// <summary>Tokens per tile: a row block is swept once per tile, so it is read from memory once and from cache after.</summary>
    private const int TokenTile = 16;

    /// <summary>Multiply-adds below which a product runs on the calling thread.</summary>
    private const long ParallelThreshold = 1L << 18;

    private readonly float[] _data; // (N, K)

    /// <summary>Wraps <paramref name="data"/> (not copied) as a (rows, cols) matrix.</summary>
    public F32Matrix(float[] data, int rows, int cols) : base(rows, cols)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (data.LongLength != (long)rows * cols)
        {
            throw new ArgumentException($"a ({rows}, {cols}) matrix needs {(long)rows * cols} values; got {data.LongLength}", nameof(data));
        }
        _data = data;
    }

    /// <summary>The values, row-major (N, K). Not a copy.</summary>
    public ReadOnlySpan<float> Data => _data;

    /// <summary>Row <paramref name="row"/> as a span (K).</summary>
    public ReadOnlySpan<float> Row(int row) => _data.AsSpan(row * Cols, Cols);

    public override void ReadRow(int row, Span<float> dst)
    {
        CheckReadRow(row, dst);
        Row(row).CopyTo(dst);
    }

    public override void MatVec(ReadOnlySpan<float> x, Span<float> y)
    {
        CheckMatVec(x, y);
        MatMul(x, y, 1);
    }

    public override unsafe void MatMul(ReadOnlySpan<float> x, Span<float> y, int tokens)
    {
        CheckMatMul(x, y, tokens);
        if (tokens == 0 || Rows == 0)
        {
            return;
        }
        int n = Rows, k = Cols;
        fixed (float* px = x)
        fixed (float* py = y)
        fixed (float* pw = _data)
        {
            long work = (long)n * k * tokens;
            int blockRows = ChooseBlockRows(n, work);
            int blocks = (n + blockRows - 1) / blockRows;
            if (blocks == 1)
            {
                RowBlock(pw, px, py, n, k, tokens, 0, n);
                return;
            }
            var job = t_job ??= new Job();
            job.Set(pw, px, py, n, k, tokens, blockRows);
            try
            {
                NumericsThreads.For(blocks, job.RunItem);
            }
            finally
            {
                job.Set(null, null, null, 0, 0, 0, 0);
            }
        }
    }

    [ThreadStatic]
    private static Job? t_job;

    /// <summary>One product's arguments for the worker pool (the caller keeps the buffers fixed); reused per calling thread, so no allocation per call.</summary>
    private sealed unsafe class Job
    {
        private float* _w, _x, _y;
        private int _n, _k, _tokens, _blockRows;

        public Job() => RunItem = Run;

        /// <summary><see cref="Run"/> as a cached delegate.</summary>
        public Action<int> RunItem { get; }

        public void Set(float* w, float* x, float* y, int n, int k, int tokens, int blockRows)
        {
            _w = w;
            _x = x;
            _y = y;
            (_n, _k, _tokens, _blockRows) = (n, k, tokens, blockRows);
        }

        /// <summary>Row block b: rows [b * blockRows, min(N, (b + 1) * blockRows)).</summary>
        private void Run(int b)
        {
            int r0 = b * _blockRows;
            RowBlock(_w, _x, _y, _n, _k, _tokens, r0, Math.Min(_n, r0 + _blockRows));
        }
    }

    /// <summary>
    /// Rows per parallel block: the whole matrix when small, else about 4 blocks per thread (the pool's threads claim
    /// them in turn), a multiple of 16 rows so no two threads write one 64-byte line of a token's output.
    /// </summary>
    private static int ChooseBlockRows(int n, long work)
    {
        int threads = NumericsThreads.MaxThreads;
        if (work < ParallelThreshold || threads == 1)
        {
            return n;
        }
        int target = (n + 4 * threads - 1) / (4 * threads);
        return Math.Max(16, (target + 15) / 16 * 16);
    }

    /// <summary>
    /// y[t, r] for r in [r0, r1) and all tokens: tiles of <see cref="TokenTile"/> tokens sweep the row
    /// block, which stays in cache across the tile; inside, 4 rows x 2 tokens per micro-kernel step.
    /// </summary>
    private static unsafe void RowBlock(float* w, float* x, float* y, int n, int k, int tokens, int r0, int r1)
    {
        for (int t0 = 0; t0 < tokens; t0 += TokenTile)
        {
            int t1 = Math.Min(tokens, t0 + TokenTile);
            int r = r0;
            for (; r + MicroRows <= r1; r += MicroRows)
            {
                int t = t0;
                for (; t + MicroTokens <= t1; t += MicroTokens)
                {
                    Micro4x2(w + (long)r * k, x + (long)t * k, k, y + (long)t * n + r, n);
                }
                for (; t < t1; t++)
                {
                    Micro4x1(w + (long)r * k, x + (long)t * k, k, y + (long)t * n + r);
                }
            }
            for (; r < r1; r++)
            {
                var row = new ReadOnlySpan<float>(w + (long)r * k, k);
                for (int t = t0; t < t1; t++)
                {
                    y[(long)t * n + r] = TensorPrimitives.Dot(row, new ReadOnlySpan<float>(x + (long)t * k, k));
                }
            }
        }
    }

    /// <summary>Four rows (stride k) dotted with two tokens (stride k); writes y[0..3] and y[n..n+3] (also HalfMatrix's converted panels).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe void Micro4x2(float* w, float* x, int k, float* y, int n)
    {
        int vl = Vector<float>.Count;
        Vector<float> a00 = default, a10 = default, a20 = default, a30 = default;
        Vector<float> a01 = default, a11 = default, a21 = default, a31 = default;
        float* w0 = w, w1 = w + k, w2 = w + 2 * k, w3 = w + 3 * k;
        float* x0 = x, x1 = x + k;
        int i = 0;
        for (; i + vl <= k; i += vl)
        {
            var v0 = Vector.Load(x0 + i);
            var v1 = Vector.Load(x1 + i);
            var wv = Vector.Load(w0 + i);
            a00 = Vector.FusedMultiplyAdd(wv, v0, a00);
            a01 = Vector.FusedMultiplyAdd(wv, v1, a01);
            wv = Vector.Load(w1 + i);
            a10 = Vector.FusedMultiplyAdd(wv, v0, a10);
            a11 = Vector.FusedMultiplyAdd(wv, v1, a11);
            wv = Vector.Load(w2 + i);
            a20 = Vector.FusedMultiplyAdd(wv, v0, a20);
            a21 = Vector.FusedMultiplyAdd(wv, v1, a21);
            wv = Vector.Load(w3 + i);
            a30 = Vector.FusedMultiplyAdd(wv, v0, a30);
            a31 = Vector.FusedMultiplyAdd(wv, v1, a31);
        }
        float s00 = Vector.Sum(a00), s10 = Vector.Sum(a10), s20 = Vector.Sum(a20), s30 = Vector.Sum(a30);
        float s01 = Vector.Sum(a01), s11 = Vector.Sum(a11), s21 = Vector.Sum(a21), s31 = Vector.Sum(a31);
        for (; i < k; i++)
        {
            float xv0 = x0[i], xv1 = x1[i];
            s00 += w0[i] * xv0; s01 += w0[i] * xv1;
            s10 += w1[i] * xv0; s11 += w1[i] * xv1;
            s20 += w2[i] * xv0; s21 += w2[i] * xv1;
            s30 += w3[i] * xv0; s31 += w3[i] * xv1;
        }
        y[0] = s00; y[1] = s10; y[2] = s20; y[3] = s30;
        y[n] = s01; y[n + 1] = s11; y[n + 2] = s21; y[n + 3] = s31;
    }

    /// <summary>Four rows (stride k) dotted with one token; writes y[0..3] (also HalfMatrix's converted panels).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe void Micro4x1(float* w, float* x, int k, float* y)
    {
        int vl = Vector<float>.Count;
        Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
        float* w0 = w, w1 = w + k, w2 = w + 2 * k, w3 = w + 3 * k;
        int i = 0;
        for (; i + vl <= k; i += vl)
        {
            var v = Vector.Load(x + i);
            a0 = Vector.FusedMultiplyAdd(Vector.Load(w0 + i), v, a0);
            a1 = Vector.FusedMultiplyAdd(Vector.Load(w1 + i), v, a1);
            a2 = Vector.FusedMultiplyAdd(Vector.Load(w2 + i), v, a2);
            a3 = Vector.FusedMultiplyAdd(Vector.Load(w3 + i), v, a3);
        }
        float s0 = Vector.Sum(a0), s1 = Vector.Sum(a1), s2 = Vector.Sum(a2), s3 = Vector.Sum(a3);
        for (; i < k; i++)
        {
            float xv = x[i];
            s0 += w0[i] * xv; s1 += w1[i] * xv; s2 += w2[i] * xv; s3 += w3[i] * xv;
        }
        y[0] = s0; y[1] = s1; y[2] = s2; y[3] = s3;
    }

    /// <summary>
    /// Scalar twin of <see cref="MatMul"/>: y[t, r] = sum_c w[r, c] * x[t, c] with plain loops.
    /// w: (N, K), x: (T, K), y: (T, N).
    /// </summary>
    public static void MatMulScalar(ReadOnlySpan<float> w, int rows, int cols, ReadOnlySpan<float> x, Span<float> y, int tokens)
    {
        for (int t = 0; t < tokens; t++)
        {
            for (int r = 0; r < rows; r++)
            {
                float s = 0;
                for (int c = 0; c < cols; c++)
                {
                    s += w[r * cols + c] * x[t * cols + c];
                }
                y[t * rows + r] = s;
            }
        }
    }
}
