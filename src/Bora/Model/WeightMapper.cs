using Bora.Formats;
using Bora.Numerics;

namespace Bora.Model;

/// <summary>
/// A <see cref="WeightMatrixFactory"/> (<see cref="Create"/>) that builds matrices over a memory mapping of the
/// checkpoint files instead of copies: GGUF block formats (Q8_0, Q4_0, Q4_K, Q6_K) become
/// <see cref="QuantizedMatrix"/> and F16 / BF16 become <see cref="HalfMatrix"/>, both reading the stored bytes
/// where they lie (the layouts on disk are the runtime layouts; GGUF aligns tensor data to 32 bytes, and the kernels
/// need no more than 2-byte alignment, which F16 / BF16 offsets are checked for). Other types are read as float32
/// (<see cref="WeightLoader.ReadF32Matrix"/>).
/// <para>
/// Each file (<see cref="TensorInfo.SourcePath"/>: one per shard) is mapped once, read-only, independently of the
/// tensor store, so the store may be closed after loading. Matrices keep their mapping alive; <see cref="Dispose"/>
/// unmaps at once (the matrices must not be used after). A matrix whose rows are re-ordered (HF Wq / Wk), whose file
/// cannot be mapped, or whose store's bytes do not come from its <see cref="TensorInfo.SourcePath"/> (an in-memory
/// store) is copied into a pinned buffer in its stored type, still unexpanded.
/// </para>
/// </summary>
public sealed class WeightMapper : IDisposable
{
    /// <summary>Bytes of each tensor's start compared between the store and the mapping, to be sure they are the same bytes.</summary>
    private const int CheckBytes = 64;

    private readonly Dictionary<string, WeightStorage?> _maps = new(StringComparer.Ordinal); // null: not mappable
    private readonly Lock _gate = new();

    /// <summary>Bytes of matrix data read in place from mappings.</summary>
    public long MappedBytes { get; private set; }

    /// <summary>Bytes of matrix data copied into pinned buffers (re-ordered rows, unmappable files).</summary>
    public long CopiedBytes { get; private set; }

    /// <summary>The mappings made so far (one per file).</summary>
    public IReadOnlyList<WeightStorage> Mappings
    {
        get
        {
            lock (_gate)
            {
                return [.. _maps.Values.OfType<WeightStorage>()];
            }
        }
    }

    /// <summary>Whether <paramref name="type"/> with <paramref name="cols"/> columns is kept unexpanded (block or 16-bit float).</summary>
    public static bool KeepsStoredType(DType type, int cols) =>
        type is DType.F16 or DType.BF16 || (QuantizedMatrix.IsSupported(type) && cols % DTypeInfo.BlockElements(type) == 0);

    /// <summary>Builds the matrix of <paramref name="source"/> (see the class summary).</summary>
    /// <exception cref="ModelFormatException">The tensor holds fewer bytes than the matrix needs.</exception>
    public WeightMatrix Create(ITensorStore store, MatrixSource source)
    {
        ArgumentNullException.ThrowIfNull(store);
        var info = source.Tensor;
        var type = info.Type;
        if (!KeepsStoredType(type, source.Cols))
        {
            return WeightLoader.ReadF32Matrix(store, source);
        }
        long rowBytes = DTypeInfo.ByteSize(type, source.Cols)!.Value;
        long size = rowBytes * source.Rows;
        long start = source.Slice >= 0 ? source.Slice * size : 0;
        if (start + size > info.ByteLength)
        {
            throw ModelFormatException.In(store.Path,
                $"tensor '{info.Name}' has {info.ByteLength} bytes of {type}; expected at least {start + size} for a ({source.Rows}, {source.Cols}) matrix{(source.Slice >= 0 ? $" at slice {source.Slice}" : "")}");
        }
        if (source.RowOrder is null && Map(store, info) is { } map && (info.Offset + start) % 2 == 0)
        {
            lock (_gate)
            {
                MappedBytes += size;
            }
            return Build(type, map, info.Offset + start, source.Rows, source.Cols);
        }

        var all = store.GetBytes(info);
        var copy = WeightStorage.Allocate(size);
        unsafe
        {
            var dst = new Span<byte>(copy.Pointer(0, size), (int)size);
            for (int r = 0; r < source.Rows; r++)
            {
                long from = start + (source.RowOrder?[r] ?? r) * rowBytes;
                all.Slice((int)from, (int)rowBytes).CopyTo(dst.Slice((int)(r * rowBytes), (int)rowBytes));
            }
        }
        lock (_gate)
        {
            CopiedBytes += size;
        }
        return Build(type, copy, 0, source.Rows, source.Cols);
    }

    private static WeightMatrix Build(DType type, WeightStorage storage, long offset, int rows, int cols) =>
        type is DType.F16 or DType.BF16
            ? new HalfMatrix(type, storage, offset, rows, cols)
            : new QuantizedMatrix(type, storage, offset, rows, cols);

    /// <summary>The mapping of the tensor's file, or null when it cannot be mapped or does not hold the store's bytes.</summary>
    private unsafe WeightStorage? Map(ITensorStore store, TensorInfo info)
    {
        WeightStorage? map;
        lock (_gate)
        {
            if (!_maps.TryGetValue(info.SourcePath, out map))
            {
                try
                {
                    map = File.Exists(info.SourcePath) ? WeightStorage.MapFile(info.SourcePath) : null;
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
                {
                    map = null;
                }
                _maps[info.SourcePath] = map;
            }
        }
        if (map is null || info.Offset < 0 || info.ByteLength < 0 || info.Offset > map.Length || info.ByteLength > map.Length - info.Offset)
        {
            return null;
        }
        int check = (int)Math.Min(CheckBytes, info.ByteLength);
        var stored = store.GetBytes(info with { ByteLength = check });
        return stored.SequenceEqual(new ReadOnlySpan<byte>(map.Pointer(info.Offset, check), check)) ? map : null;
    }

    /// <summary>Unmaps every file now; matrices built by this mapper must not be used afterwards.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            foreach (var m in _maps.Values)
            {
                m?.Dispose();
            }
            _maps.Clear();
        }
    }
}
