using System.Numerics;
using Bora.Numerics;

namespace Bora.Training.Lora;

/// <summary>Reusable scratch arrays shared by the ops of one model (they run one at a time).</summary>
internal sealed class LoraScratch<T>
    where T : unmanaged
{
    private readonly Dictionary<string, T[]> _buffers = [];

    /// <summary>An array of at least n values (contents undefined).</summary>
    public T[] Get(string name, long n)
    {
        if (n > Array.MaxLength)
        {
            throw new ArgumentException($"scratch '{name}' of {n} values is too large");
        }
        if (!_buffers.TryGetValue(name, out var a) || a.Length < n)
        {
            a = new T[Math.Max(n, 1)];
            _buffers[name] = a;
        }
        return a;
    }
}

/// <summary>
/// A frozen dense weight W (out, in) held in a parameter's values: y = x Wᵀ, dx = dy W; W's gradient is not
/// computed. Letters: R = rows (tokens), O = out, I = in.
/// </summary>
internal sealed class FrozenDenseOp<T>(Parameter<T> weight, LoraScratch<T> scratch, int threads) : ILinearOp<T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly int _out = (int)weight.Shape[0], _in = (int)weight.Shape[1];

    public void Forward(T[] x, T[] y, int rows) =>
        Gemm.ABt(x, 0, weight.Data, 0, y, 0, rows, _out, _in, accumulate: false, threads);

    public void Backward(T[] x, T[] dy, T[] dx, int rows, bool accumulateDx)
    {
        var wt = scratch.Get("wt", (long)_in * _out); // (I, O)
        Gemm.Transpose(weight.Data, 0, _out, _in, wt, 0);
        Gemm.ABt(dy, 0, wt, 0, dx, 0, rows, _in, _out, accumulateDx, threads);
    }
}

/// <summary>
/// A frozen <see cref="WeightMatrix"/> W (out, in) of any storage — QLoRA when it is a
/// <see cref="QuantizedMatrix"/>: the forward runs the inference kernel (<see cref="WeightMatrix.MatMul"/>,
/// exactly what generation computes), the backward dequantizes W transposed into a scratch (I, O) for
/// dx = dy W, one matrix at a time, so the base is never held in float32 as a whole.
/// </summary>
internal sealed class FrozenMatrixOp(WeightMatrix weight, LoraScratch<float> scratch, int threads) : ILinearOp<float>
{
    /// <summary>Rows of W read per parallel work item.</summary>
    private const int RowBlock = 128;

    public void Forward(float[] x, float[] y, int rows) =>
        weight.MatMul(x.AsSpan(0, rows * weight.Cols), y.AsSpan(0, rows * weight.Rows), rows);

    public void Backward(float[] x, float[] dy, float[] dx, int rows, bool accumulateDx)
    {
        int o = weight.Rows, i = weight.Cols;
        var wt = scratch.Get("wt", (long)i * o); // (I, O) = Wᵀ dequantized
        int blocks = (o + RowBlock - 1) / RowBlock;
        // Each worker reuses one (RowBlock, I) buffer for its blocks: no large-object allocation per block.
        Parallel.For(0, blocks, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads) },
            () => new float[RowBlock * i],
            (blk, _, block) =>
            {
                int r0 = blk * RowBlock, n = Math.Min(RowBlock, o - r0);
                for (int r = 0; r < n; r++)
                {
                    weight.ReadRow(r0 + r, block.AsSpan(r * i, i)); // (n, I) rows r0 .. r0 + n of W
                }
                for (int c = 0; c < i; c++)
                {
                    int dst = c * o + r0;
                    for (int r = 0; r < n; r++)
                    {
                        wt[dst + r] = block[r * i + c];
                    }
                }
                return block;
            },
            _ => { });
        Gemm.ABt(dy, 0, wt, 0, dx, 0, rows, i, o, accumulateDx, threads);
    }
}

/// <summary>
/// LoRA over a frozen base op: W_eff = W + s B A with A (r, I), B (O, r), s = alpha / r.
/// <code>
/// forward:  u = x Aᵀ (R, r);  y = base(x) + s u Bᵀ
/// backward: g = dy B (R, r);  dx = base'(dy) + s g A
///           dB += s dyᵀ u  (O, r);   dA += s gᵀ x  (r, I)
/// </code>
/// u is recomputed in the backward (it costs R r I, small next to the base product). Every product is a
/// <see cref="Gemm.ABt{T}"/> on transposed copies, so the results do not depend on the thread count.
/// </summary>
internal sealed class LoraOp<T>(ILinearOp<T> baseOp, Parameter<T> a, Parameter<T> b, T scale, LoraScratch<T> scratch, int threads) : ILinearOp<T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly int _r = (int)a.Shape[0], _in = (int)a.Shape[1], _out = (int)b.Shape[0];

    public void Forward(T[] x, T[] y, int rows)
    {
        baseOp.Forward(x, y, rows);
        var u = scratch.Get("u", (long)rows * _r); // (R, r)
        Gemm.ABt(x, 0, a.Data, 0, u, 0, rows, _r, _in, accumulate: false, threads);
        Scale(u, rows * _r);
        Gemm.ABt(u, 0, b.Data, 0, y, 0, rows, _out, _r, accumulate: true, threads);
    }

    public void Backward(T[] x, T[] dy, T[] dx, int rows, bool accumulateDx)
    {
        baseOp.Backward(x, dy, dx, rows, accumulateDx);
        var bt = scratch.Get("bt", (long)_r * _out); // (r, O)
        Gemm.Transpose(b.Data, 0, _out, _r, bt, 0);
        var g = scratch.Get("g", (long)rows * _r); // (R, r) = s dy B
        Gemm.ABt(dy, 0, bt, 0, g, 0, rows, _r, _out, accumulate: false, threads);
        Scale(g, rows * _r);
        var at = scratch.Get("at", (long)_in * _r); // (I, r)
        Gemm.Transpose(a.Data, 0, _r, _in, at, 0);
        Gemm.ABt(g, 0, at, 0, dx, 0, rows, _in, _r, accumulate: true, threads);

        var u = scratch.Get("u", (long)rows * _r); // (R, r) = s x Aᵀ
        Gemm.ABt(x, 0, a.Data, 0, u, 0, rows, _r, _in, accumulate: false, threads);
        Scale(u, rows * _r);
        var dyt = scratch.Get("dyt", (long)_out * rows); // (O, R)
        var ut = scratch.Get("ut", (long)_r * rows);     // (r, R)
        Gemm.Transpose(dy, 0, rows, _out, dyt, 0);
        Gemm.Transpose(u, 0, rows, _r, ut, 0);
        Gemm.ABt(dyt, 0, ut, 0, b.Grad, 0, _out, _r, rows, accumulate: true, threads);
        var gt = scratch.Get("gt", (long)_r * rows);     // (r, R)
        var xt = scratch.Get("xt", (long)_in * rows);    // (I, R)
        Gemm.Transpose(g, 0, rows, _r, gt, 0);
        Gemm.Transpose(x, 0, rows, _in, xt, 0);
        Gemm.ABt(gt, 0, xt, 0, a.Grad, 0, _r, _in, rows, accumulate: true, threads);
    }

    private void Scale(T[] v, int n)
    {
        for (int i = 0; i < n; i++)
        {
            v[i] *= scale;
        }
    }
}
