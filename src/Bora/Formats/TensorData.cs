using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Formats;

/// <summary>
/// A tensor to be written by <see cref="Gguf.GgufWriter"/> or <see cref="Safetensors.SafetensorsWriter"/>:
/// a name, a stored type, an outermost-first shape and the raw stored bytes.
/// </summary>
public sealed class TensorData
{
    private TensorData(string name, DType type, long[] shape, ReadOnlyMemory<byte> bytes)
    {
        Name = name;
        Type = type;
        Shape = shape;
        Bytes = bytes;
    }

    public string Name { get; }

    public DType Type { get; }

    /// <summary>Outermost-first dimensions.</summary>
    public long[] Shape { get; }

    /// <summary>The data in <see cref="Type"/>'s stored layout, outermost-first row-major.</summary>
    public ReadOnlyMemory<byte> Bytes { get; }

    /// <summary>Wraps bytes already in <paramref name="type"/>'s layout; their length must match the shape.</summary>
    /// <exception cref="ArgumentException">A non-positive dimension, a partial block or a length mismatch.</exception>
    public static TensorData FromBytes(string name, DType type, long[] shape, ReadOnlyMemory<byte> bytes)
    {
        long expected = ExpectedBytes(name, type, shape);
        if (bytes.Length != expected)
        {
            throw new ArgumentException($"tensor '{name}' {type} {ShapeText(shape)} needs {expected} bytes but got {bytes.Length}", nameof(bytes));
        }
        return new TensorData(name, type, (long[])shape.Clone(), bytes);
    }

    /// <summary>
    /// Converts float32 values (outermost-first row-major) to <paramref name="type"/> with the reference
    /// quantizers of <see cref="BlockQuantizer"/>.
    /// </summary>
    /// <exception cref="ArgumentException">A non-positive dimension, a partial block or a length mismatch.</exception>
    public static TensorData FromFloat32(string name, DType type, long[] shape, ReadOnlySpan<float> values)
    {
        ExpectedBytes(name, type, shape);
        long count = Count(shape);
        if (values.Length != count)
        {
            throw new ArgumentException($"tensor '{name}' {ShapeText(shape)} has {count} elements but got {values.Length} values", nameof(values));
        }
        return new TensorData(name, type, (long[])shape.Clone(), BlockQuantizer.FromFloat32(type, values));
    }

    private static long ExpectedBytes(string name, DType type, long[] shape)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        foreach (var dim in shape)
        {
            if (dim <= 0)
            {
                throw new ArgumentException($"tensor '{name}' has a non-positive dimension in {ShapeText(shape)}", nameof(shape));
            }
        }
        int be = DTypeInfo.BlockElements(type);
        if (shape.Length > 0 && shape[^1] % be != 0)
        {
            throw new ArgumentException($"tensor '{name}' {type}: the innermost dimension {shape[^1]} is not a multiple of the block size {be}", nameof(shape));
        }
        return DTypeInfo.ByteSize(type, Count(shape))
            ?? throw new ArgumentException($"tensor '{name}' {type} {ShapeText(shape)} is not a whole number of blocks", nameof(shape));
    }

    private static long Count(long[] shape)
    {
        long n = 1;
        foreach (var d in shape)
        {
            n = checked(n * d);
        }
        return n;
    }

    private static string ShapeText(long[] shape) => "(" + string.Join(", ", shape) + ")";
}
