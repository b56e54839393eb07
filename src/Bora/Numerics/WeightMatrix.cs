namespace Bora.Numerics;

/// <summary>
/// A read-only weight matrix W of shape (Rows, Cols) = (out_features, in_features), the layout of
/// a PyTorch linear layer. Products compute y = W x per token. Subclasses hold the data in any
/// storage type (float32 here; quantized blocks later) and must give the same results within the
/// precision of that storage.
/// Letters: N = <see cref="Rows"/>, K = <see cref="Cols"/>, T = tokens.
/// </summary>
public abstract class WeightMatrix
{
    protected WeightMatrix(int rows, int cols)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        Rows = rows;
        Cols = cols;
    }

    /// <summary>N: output features.</summary>
    public int Rows { get; }

    /// <summary>K: input features.</summary>
    public int Cols { get; }

    /// <summary>Shape as text, "(N, K)", for messages.</summary>
    public string ShapeText => $"({Rows}, {Cols})";

    /// <summary>y = W x for one token. x: (K), y: (N).</summary>
    public abstract void MatVec(ReadOnlySpan<float> x, Span<float> y);

    /// <summary>
    /// y[t] = W x[t] for <paramref name="tokens"/> tokens at once. x: (T, K) row-major, y: (T, N)
    /// row-major. Implementations read each weight row once per tile of tokens.
    /// </summary>
    public abstract void MatMul(ReadOnlySpan<float> x, Span<float> y, int tokens);

    /// <summary>Copies row <paramref name="row"/> (K values) to <paramref name="dst"/>, converted to float32.</summary>
    public abstract void ReadRow(int row, Span<float> dst);

    /// <summary>Throws unless x is (K) and y is (N).</summary>
    protected void CheckMatVec(ReadOnlySpan<float> x, Span<float> y)
    {
        if (x.Length != Cols || y.Length != Rows)
        {
            throw new ArgumentException($"MatVec of a {ShapeText} matrix needs x of {Cols} and y of {Rows} values; got {x.Length} and {y.Length}");
        }
    }

    /// <summary>Throws unless x is (T, K) and y is (T, N).</summary>
    protected void CheckMatMul(ReadOnlySpan<float> x, Span<float> y, int tokens)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        if ((long)x.Length != (long)tokens * Cols || (long)y.Length != (long)tokens * Rows)
        {
            throw new ArgumentException($"MatMul of a {ShapeText} matrix over {tokens} tokens needs x of {(long)tokens * Cols} and y of {(long)tokens * Rows} values; got {x.Length} and {y.Length}");
        }
    }

    /// <summary>Throws unless the row index is in range and dst holds K values.</summary>
    protected void CheckReadRow(int row, Span<float> dst)
    {
        if ((uint)row >= (uint)Rows)
        {
            throw new ArgumentOutOfRangeException(nameof(row), row, $"row of a {ShapeText} matrix");
        }
        if (dst.Length != Cols)
        {
            throw new ArgumentException($"ReadRow of a {ShapeText} matrix needs a destination of {Cols} values; got {dst.Length}");
        }
    }
}
