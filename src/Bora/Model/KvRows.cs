using Bora.Numerics;

namespace Bora.Model;

/// <summary>
/// The storage behind every KV cache: per layer, one key array and one value array of R rows of
/// Hkv * Dh values, addressed by row, stored as float32 or as IEEE halves (<see cref="KvCacheType"/>). The contiguous
/// caches map a position to a row (slot), the paged store maps (block, offset) to row block * B + offset.
/// </summary>
internal sealed class KvRows
{
    private readonly float[][]? _keys;   // F32: L x (R, Hkv * Dh)
    private readonly float[][]? _values; // F32: L x (R, Hkv * Dh)
    private readonly Half[][]? _keyHalves;   // F16: L x (R, Hkv * Dh)
    private readonly Half[][]? _valueHalves; // F16: L x (R, Hkv * Dh)
    private bool _nonFinite; // an F16 row written so far held an infinity or a NaN (sticky)

    /// <param name="layers">L.</param>
    /// <param name="rows">R: rows per layer.</param>
    /// <param name="kvDim">Hkv * Dh.</param>
    /// <param name="type">Element type of the rows.</param>
    /// <param name="what">Names the cache in the error for a size no array can hold.</param>
    public KvRows(int layers, long rows, int kvDim, KvCacheType type, string what)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(layers);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(kvDim);
        int elementBytes = type.ElementBytes();
        long perLayer = rows * kvDim;
        if (perLayer > Array.MaxLength)
        {
            throw new ArgumentOutOfRangeException(nameof(rows), rows,
                $"{what}: {rows} rows x {kvDim} values per layer exceed the largest array ({Array.MaxLength} values); use a smaller cache or a shorter context");
        }
        KvDim = kvDim;
        Type = type;
        Bytes = 2L * layers * perLayer * elementBytes;
        if (type == KvCacheType.F32)
        {
            _keys = new float[layers][];
            _values = new float[layers][];
            for (int l = 0; l < layers; l++)
            {
                _keys[l] = new float[perLayer];
                _values[l] = new float[perLayer];
            }
        }
        else
        {
            _keyHalves = new Half[layers][];
            _valueHalves = new Half[layers][];
            for (int l = 0; l < layers; l++)
            {
                _keyHalves[l] = new Half[perLayer];
                _valueHalves[l] = new Half[perLayer];
            }
        }
    }

    public int KvDim { get; }

    public KvCacheType Type { get; }

    /// <summary>Bytes of all key and value arrays: 2 * L * R * KvDim * element size.</summary>
    public long Bytes { get; }

    public KvRow Key(int layer, int row) => _keys is not null
        ? new KvRow(_keys[layer].AsSpan(row * KvDim, KvDim))
        : new KvRow(_keyHalves![layer].AsSpan(row * KvDim, KvDim), !_nonFinite);

    public KvRow Value(int layer, int row) => _values is not null
        ? new KvRow(_values[layer].AsSpan(row * KvDim, KvDim))
        : new KvRow(_valueHalves![layer].AsSpan(row * KvDim, KvDim), !_nonFinite);

    /// <summary>
    /// Stores a key and a value row (KvDim each), rounded to half precision for F16. An F16 store hands out its rows
    /// as finite (<see cref="KvRow.HalvesFinite"/>) until a written row holds an infinity or a NaN (a value of
    /// magnitude 65520 or more rounds to an infinity; 65519 still rounds to 65504): from then on, for good, none of its
    /// rows is promised finite.
    /// </summary>
    public void Write(int layer, int row, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        if (key.Length != KvDim || value.Length != KvDim)
        {
            throw new ArgumentException($"a KV row has {KvDim} values; got a key of {key.Length} and a value of {value.Length}");
        }
        if (_keys is not null)
        {
            key.CopyTo(_keys[layer].AsSpan(row * KvDim, KvDim));
            value.CopyTo(_values![layer].AsSpan(row * KvDim, KvDim));
        }
        else
        {
            var keyHalves = _keyHalves![layer].AsSpan(row * KvDim, KvDim);
            var valueHalves = _valueHalves![layer].AsSpan(row * KvDim, KvDim);
            HalfConversion.ToHalf(key, keyHalves);
            HalfConversion.ToHalf(value, valueHalves);
            if (!_nonFinite && (HalfConversion.AnyNonFinite(keyHalves) || HalfConversion.AnyNonFinite(valueHalves)))
            {
                _nonFinite = true; // from now on every row reads as possibly non-finite (rows are rewritten in place)
            }
        }
    }
}
