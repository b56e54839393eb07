namespace Bora.Model;

/// <summary>
/// The storage behind every KV cache: per layer, one key array and one value array of R rows of
/// Hkv * Dh floats, addressed by row. The contiguous caches map a position to a row (slot), the paged
/// store maps (block, offset) to row block * B + offset.
/// </summary>
internal sealed class KvRows
{
    private readonly float[][] _keys;   // L x (R, Hkv * Dh)
    private readonly float[][] _values; // L x (R, Hkv * Dh)

    /// <param name="layers">L.</param>
    /// <param name="rows">R: rows per layer.</param>
    /// <param name="kvDim">Hkv * Dh.</param>
    /// <param name="what">Names the cache in the error for a size no array can hold.</param>
    public KvRows(int layers, long rows, int kvDim, string what)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(layers);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(kvDim);
        long perLayer = rows * kvDim;
        if (perLayer > Array.MaxLength)
        {
            throw new ArgumentOutOfRangeException(nameof(rows), rows,
                $"{what}: {rows} rows x {kvDim} values per layer exceed the largest array ({Array.MaxLength} values); use a smaller cache or a shorter context");
        }
        KvDim = kvDim;
        _keys = new float[layers][];
        _values = new float[layers][];
        for (int l = 0; l < layers; l++)
        {
            _keys[l] = new float[perLayer];
            _values[l] = new float[perLayer];
        }
    }

    public int KvDim { get; }

    public Span<float> Key(int layer, int row) => _keys[layer].AsSpan(row * KvDim, KvDim);

    public Span<float> Value(int layer, int row) => _values[layer].AsSpan(row * KvDim, KvDim);
}
