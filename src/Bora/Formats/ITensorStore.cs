namespace Bora.Formats;

/// <summary>
/// Read access to the tensors of a checkpoint (one GGUF file, one safetensors file, or the shards
/// of a sharded safetensors checkpoint). Data stays memory-mapped; spans are valid until disposal.
/// </summary>
public interface ITensorStore : IDisposable
{
    /// <summary>Path of the file (or index file) the store was opened from, for messages.</summary>
    string Path { get; }

    /// <summary>All tensors, in file order.</summary>
    IReadOnlyList<TensorInfo> Tensors { get; }

    bool TryGetTensor(string name, out TensorInfo info);

    /// <summary>Raw bytes of a tensor, in its stored type.</summary>
    ReadOnlySpan<byte> GetBytes(TensorInfo info);

    /// <summary>The tensor converted to float32, outermost-first row-major.</summary>
    float[] ReadFloat32(TensorInfo info);
}
