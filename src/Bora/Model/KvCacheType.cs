using Bora.Numerics;

namespace Bora.Model;

/// <summary>
/// Element type of a KV cache's rows. <see cref="F16"/> (the default, as llama.cpp's <c>--cache-type-k/-v f16</c>)
/// stores IEEE halves, half the bytes of <see cref="F32"/>: keys and values are rounded to nearest even on the way in
/// and widened exactly on the way out.
/// </summary>
public enum KvCacheType
{
    /// <summary>float32 rows (4 bytes a value).</summary>
    F32,

    /// <summary>IEEE half rows (2 bytes a value).</summary>
    F16,
}

/// <summary>Sizes and names of <see cref="KvCacheType"/> values.</summary>
public static class KvCacheTypes
{
    /// <summary>Bytes of one stored value: 4 for F32, 2 for F16.</summary>
    public static int ElementBytes(this KvCacheType type) => type switch
    {
        KvCacheType.F32 => sizeof(float),
        KvCacheType.F16 => 2,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "expected F32 or F16"),
    };

    /// <summary>Parses "f16" / "f32" (any case), as the <c>--kv-type</c> flags take them; null for anything else.</summary>
    public static KvCacheType? TryParse(string? text) => text?.ToLowerInvariant() switch
    {
        "f16" => KvCacheType.F16,
        "f32" => KvCacheType.F32,
        _ => null,
    };
}

/// <summary>
/// One key or value row of a KV cache (Hkv * Dh values, or a slice of them), as stored: float32 for an
/// <see cref="KvCacheType.F32"/> cache, which the reader can use in place (<see cref="TryGetFloats"/>), or IEEE halves
/// for <see cref="KvCacheType.F16"/>, which <see cref="CopyTo"/> / <see cref="AsFloats"/> widen. Only valid until the
/// cache is written again.
/// <code>
/// var key = cache.KeyRow(layer, position).AsFloats(scratch); // in place for F32, converted into scratch for F16
/// </code>
/// </summary>
public readonly ref struct KvRow
{
    private readonly ReadOnlySpan<float> _floats;
    private readonly ReadOnlySpan<Half> _halves;

    /// <summary>A float32 row.</summary>
    public KvRow(ReadOnlySpan<float> floats)
    {
        _floats = floats;
        Type = KvCacheType.F32;
    }

    /// <summary>A half row.</summary>
    public KvRow(ReadOnlySpan<Half> halves)
        : this(halves, finite: false)
    {
    }

    /// <summary>
    /// A half row; <paramref name="finite"/> true promises that none of its halves is an infinity or a NaN (the store
    /// checked them as they were written), which lets readers widen them with fewer operations.
    /// </summary>
    public KvRow(ReadOnlySpan<Half> halves, bool finite)
    {
        _halves = halves;
        Type = KvCacheType.F16;
        HalvesFinite = finite;
    }

    /// <summary>How the row is stored.</summary>
    public KvCacheType Type { get; }

    /// <summary>Whether the row is F16 and its store promised that every half is finite (no infinity, no NaN).</summary>
    public bool HalvesFinite { get; }

    /// <summary>Values in the row.</summary>
    public int Length => Type == KvCacheType.F32 ? _floats.Length : _halves.Length;

    /// <summary>The stored floats of an F32 row (no copy); false for an F16 row.</summary>
    public bool TryGetFloats(out ReadOnlySpan<float> floats)
    {
        floats = _floats;
        return Type == KvCacheType.F32;
    }

    /// <summary>The stored halves of an F16 row (no copy); false for an F32 row.</summary>
    public bool TryGetHalves(out ReadOnlySpan<Half> halves)
    {
        halves = _halves;
        return Type == KvCacheType.F16;
    }

    /// <summary>Values [start, start + length) of the row, stored as the row is.</summary>
    public KvRow Slice(int start, int length) => Type == KvCacheType.F32 ? new(_floats.Slice(start, length)) : new(_halves.Slice(start, length), HalvesFinite);

    /// <summary>Writes the row's values as float32 to dst[0 .. Length) (a copy for F32, exact widening for F16).</summary>
    public void CopyTo(Span<float> dst)
    {
        if (Type == KvCacheType.F32)
        {
            _floats.CopyTo(dst);
        }
        else
        {
            HalfConversion.ToSingle(_halves, dst);
        }
    }

    /// <summary>The row as float32: the stored span itself for F32, else <paramref name="scratch"/>[0 .. Length) after widening into it.</summary>
    public ReadOnlySpan<float> AsFloats(Span<float> scratch)
    {
        if (Type == KvCacheType.F32)
        {
            return _floats;
        }
        var dst = scratch[..Length];
        HalfConversion.ToSingle(_halves, dst);
        return dst;
    }
}
