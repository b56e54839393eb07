using System.Buffers;
using Bora.Formats;
using Bora.Numerics;

namespace Bora.Quantization;

/// <summary>
/// Lets <see cref="Formats.Gguf.GgufWriter"/> write a model tensor by tensor without holding every tensor in
/// memory: a <see cref="TensorData"/> whose bytes are produced only when the writer reaches that tensor's data.
/// The writer reads each tensor's <see cref="Memory{T}.Length"/> while writing the header (which costs
/// nothing here) and its <see cref="Memory{T}.Span"/> once, in file order, while writing the data section;
/// that call runs the producer. The tensors made by one <see cref="LazyTensorSet"/> share one slot, so at most
/// one produced tensor is alive at a time (the previous one is released when the next is produced): peak
/// memory is the largest tensor, not the file.
/// </summary>
public sealed class LazyTensorSet
{
    private LazyBytes? _live;

    /// <summary>Called after each tensor is produced, with its name.</summary>
    public Action<string>? Produced { get; set; }

    /// <summary>
    /// A tensor of <paramref name="type"/> and <paramref name="shape"/> (outermost-first) whose bytes come from
    /// <paramref name="produce"/> when the writer needs them; the producer must return exactly the byte size
    /// of the shape in that type.
    /// </summary>
    /// <exception cref="ArgumentException">A shape that is not a whole number of blocks, or over 2 GiB of data.</exception>
    public TensorData Create(string name, DType type, long[] shape, Func<byte[]> produce)
    {
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(produce);
        long count = 1;
        foreach (var d in shape)
        {
            count = checked(count * d);
        }
        long bytes = DTypeInfo.ByteSize(type, count)
            ?? throw new ArgumentException($"tensor '{name}' {type} ({string.Join(", ", shape)}) is not a whole number of blocks", nameof(shape));
        if (bytes > Array.MaxLength)
        {
            throw new ArgumentException($"tensor '{name}' takes {bytes} bytes; one tensor is limited to {Array.MaxLength} bytes", nameof(shape));
        }
        var lazy = new LazyBytes(this, name, (int)bytes, produce);
        return TensorData.FromBytes(name, type, shape, lazy.Memory);
    }

    private sealed class LazyBytes(LazyTensorSet owner, string name, int length, Func<byte[]> produce) : MemoryManager<byte>
    {
        private byte[]? _data;

        public override Memory<byte> Memory => CreateMemory(length);

        public override Span<byte> GetSpan()
        {
            if (_data is null)
            {
                var data = produce();
                if (data.Length != length)
                {
                    throw new InvalidOperationException($"tensor '{name}': the producer returned {data.Length} bytes; expected {length}");
                }
                if (owner._live is { } previous && previous != this)
                {
                    previous._data = null;
                }
                _data = data;
                owner._live = this;
                owner.Produced?.Invoke(name);
            }
            return _data;
        }

        public override MemoryHandle Pin(int elementIndex = 0) =>
            throw new NotSupportedException("lazily produced tensor bytes cannot be pinned");

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing) => _data = null;
    }
}
