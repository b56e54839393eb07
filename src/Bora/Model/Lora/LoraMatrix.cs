using Bora.Numerics;

namespace Bora.Model.Lora;

/// <summary>
/// A weight matrix with a LoRA adapter applied at run time: y = W x + s B (A x), s = alpha / r, without
/// changing W (which may be quantized). Letters: N = out features (<see cref="WeightMatrix.Rows"/>),
/// K = in features, r = rank, T = tokens.
/// <para>Worked example: W = 0 (2, 2), A = (1, 1) (1, 2), B = (1, 2)ᵀ (2, 1), s = 0.5, x = (1, 3):
/// A x = 4, y = 0.5 · (4, 8) = (2, 4).</para>
/// </summary>
public sealed class LoraMatrix : WeightMatrix
{
    private readonly WeightMatrix _base;
    private readonly float[] _a; // (r, K)
    private readonly float[] _b; // (N, r)
    private readonly int _r;
    private readonly float _scale;

    /// <summary>Wraps <paramref name="baseMatrix"/> (N, K) with A (r, K), B (N, r) and scale s.</summary>
    public LoraMatrix(WeightMatrix baseMatrix, float[] a, float[] b, int rank, float scale)
        : base(baseMatrix?.Rows ?? 0, baseMatrix?.Cols ?? 0)
    {
        ArgumentNullException.ThrowIfNull(baseMatrix);
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rank);
        if (a.Length != (long)rank * Cols || b.Length != (long)Rows * rank)
        {
            throw new ArgumentException($"LoRA over a {baseMatrix.ShapeText} matrix with rank {rank} needs A ({rank}, {Cols}) and B ({Rows}, {rank}); got {a.Length} and {b.Length} values");
        }
        _base = baseMatrix;
        _a = a;
        _b = b;
        _r = rank;
        _scale = scale;
    }

    /// <summary>The wrapped matrix W.</summary>
    public WeightMatrix Base => _base;

    /// <inheritdoc/>
    public override void MatVec(ReadOnlySpan<float> x, Span<float> y)
    {
        CheckMatVec(x, y);
        _base.MatVec(x, y);
        AddDelta(x, y);
    }

    /// <inheritdoc/>
    public override void MatMul(ReadOnlySpan<float> x, Span<float> y, int tokens)
    {
        CheckMatMul(x, y, tokens);
        _base.MatMul(x, y, tokens);
        for (int t = 0; t < tokens; t++)
        {
            AddDelta(x.Slice(t * Cols, Cols), y.Slice(t * Rows, Rows));
        }
    }

    /// <summary>Row <paramref name="row"/> of W + s B A (the merged row).</summary>
    public override void ReadRow(int row, Span<float> dst)
    {
        CheckReadRow(row, dst);
        _base.ReadRow(row, dst);
        for (int k = 0; k < _r; k++)
        {
            float c = _scale * _b[row * _r + k];
            System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(_a.AsSpan(k * Cols, Cols), c, dst, dst);
        }
    }

    /// <summary>y (N) += s B (A x) for one token x (K).</summary>
    private void AddDelta(ReadOnlySpan<float> x, Span<float> y)
    {
        Span<float> u = _r <= 256 ? stackalloc float[_r] : new float[_r]; // (r) A x, times s
        for (int k = 0; k < _r; k++)
        {
            u[k] = _scale * System.Numerics.Tensors.TensorPrimitives.Dot(_a.AsSpan(k * Cols, Cols), x);
        }
        for (int n = 0; n < Rows; n++)
        {
            y[n] += System.Numerics.Tensors.TensorPrimitives.Dot(_b.AsSpan(n * _r, _r), u);
        }
    }
}
