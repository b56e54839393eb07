using Bora.Numerics;

namespace Bora.Formats;

/// <summary>
/// One stored tensor. <see cref="Shape"/> is outermost-first (PyTorch order: a weight of a
/// linear layer is (out_features, in_features)); GGUF's innermost-first ne[] is reversed by its reader.
/// </summary>
/// <param name="Name">The name as stored in the checkpoint.</param>
/// <param name="Type">Element type.</param>
/// <param name="Shape">Outermost-first dimensions.</param>
/// <param name="Offset">Byte offset of the data within <see cref="SourcePath"/>.</param>
/// <param name="ByteLength">Bytes of data.</param>
/// <param name="SourcePath">The file holding the data (one shard of a sharded checkpoint).</param>
public sealed record TensorInfo(string Name, DType Type, long[] Shape, long Offset, long ByteLength, string SourcePath)
{
    /// <summary>Product of the dimensions.</summary>
    public long ElementCount
    {
        get
        {
            long n = 1;
            foreach (var d in Shape)
            {
                n *= d;
            }
            return n;
        }
    }

    public string ShapeText => "(" + string.Join(", ", Shape) + ")";
}
