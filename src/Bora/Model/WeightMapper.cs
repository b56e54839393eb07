using Bora.Formats;
using Bora.Numerics;
using Bora.Numerics.Quant;

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
/// <para>
/// Packing (<see cref="PackAtLoad"/>, on by default where the CPU runs packed kernels, AVX2 and up): formats with
/// a packed 16-row layout (<see cref="QuantizedMatrix.CanPack"/>; each has AVX2 and AVX-512 kernels) are not mapped but read once from the file with
/// positional reads (<see cref="RandomAccess"/>: the bytes pass through the page cache, which is not the process's
/// memory) into a reused 4 MiB staging buffer, chunk by chunk, and packed from there into their own buffer of the same
/// size. Peak memory stays at the packed matrices plus the staging, about the file's size, as with the mapping; decode then
/// streams each matrix front to back at memory speed instead of gathering rows per product.
/// </para>
/// </summary>
public sealed class WeightMapper : IDisposable
{
    /// <summary>Bytes read and packed at a time (whole 16-row groups, at least one): the staging buffer's size.</summary>
    private const long StagingBytes = 4 << 20;

    /// <summary>Bytes of each tensor's start compared between the store and the mapping, to be sure they are the same bytes.</summary>
    private const int CheckBytes = 64;

    private readonly Dictionary<string, WeightStorage?> _maps = new(StringComparer.Ordinal); // null: not mappable
    private readonly Dictionary<string, Microsoft.Win32.SafeHandles.SafeFileHandle?> _files = new(StringComparer.Ordinal); // null: not readable
    private readonly Lock _gate = new();
    private readonly Lock _stagingGate = new();
    private byte[]? _staging; // pinned; one tensor's stored bytes on their way to being packed
    private readonly List<WeightStorage> _packed = []; // the packed matrices' buffers, released by Dispose

    /// <summary>A mapper that packs where the CPU runs the packed kernels (<see cref="DefaultPackAtLoad"/>).</summary>
    public WeightMapper()
        : this(DefaultPackAtLoad)
    {
    }

    /// <summary>A mapper that packs formats with a packed layout when <paramref name="packAtLoad"/> is true, else maps everything.</summary>
    public WeightMapper(bool packAtLoad) => PackAtLoad = packAtLoad;

    /// <summary>
    /// Whether formats with a packed layout are packed at load (see the class summary) rather than read in place.
    /// </summary>
    public bool PackAtLoad { get; }

    /// <summary>
    /// True when the best instruction set is AVX2 or above (every packed format has kernels there; below, products over
    /// the packed groups would run the scalar twin, so packing would not pay) and the environment variable BORA_PACK is
    /// not "0" (benchmarks compare both).
    /// </summary>
    public static bool DefaultPackAtLoad =>
        QuantDot.Best >= QuantIsa.Avx2 && Environment.GetEnvironmentVariable("BORA_PACK") != "0";

    /// <summary>Bytes of matrix data read from the files and packed (<see cref="PackAtLoad"/>).</summary>
    public long PackedBytes { get; private set; }

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
        if (PackAtLoad && source.RowOrder is null && QuantizedMatrix.CanPack(type) && size <= Array.MaxLength)
        {
            var packed = ReadAndPack(store, source, start, size);
            lock (_gate)
            {
                PackedBytes += size;
                _packed.Add(packed.Storage);
            }
            return packed;
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

    /// <summary>
    /// Reads bytes [start, start + size) of the tensor (from its file with positional reads when the file holds the
    /// store's bytes, else from the store) chunk by chunk (<see cref="StagingBytes"/>, whole 16-row groups) into the
    /// staging buffer, and packs each chunk into a new packed matrix.
    /// </summary>
    private unsafe QuantizedMatrix ReadAndPack(ITensorStore store, MatrixSource source, long start, long size)
    {
        var info = source.Tensor;
        var packed = QuantizedMatrix.AllocatePacked(info.Type, source.Rows, source.Cols);
        long rowBytes = size / Math.Max(1, source.Rows);
        int chunkRows = (int)Math.Max(16, StagingBytes / Math.Max(1, rowBytes) / 16 * 16);
        var file = File(store, info);
        lock (_stagingGate)
        {
            long need = Math.Min(size, chunkRows * rowBytes);
            if (_staging is null || _staging.LongLength < need)
            {
                _staging = null; // the old buffer may go before the larger one is allocated
                _staging = GC.AllocateUninitializedArray<byte>((int)need, pinned: true);
            }
            for (int r0 = 0; r0 < source.Rows; r0 += chunkRows)
            {
                int rows = Math.Min(chunkRows, source.Rows - r0);
                var dst = _staging.AsSpan(0, (int)(rows * rowBytes));
                long from = start + r0 * rowBytes;
                if (file is not null)
                {
                    int done = ReadAt(file, dst, info.Offset + from);
                    if (done < dst.Length)
                    {
                        throw ModelFormatException.In(info.SourcePath, $"tensor '{info.Name}': the file ended {dst.Length - done} bytes before the tensor's end");
                    }
                }
                else
                {
                    store.GetBytes(info).Slice((int)from, dst.Length).CopyTo(dst);
                }
                fixed (byte* p = dst)
                {
                    try
                    {
                        packed.PackRows(r0, rows, p);
                    }
                    catch (InvalidDataException e)
                    {
                        throw ModelFormatException.In(info.SourcePath, $"tensor '{info.Name}': {e.Message}; the file is damaged or was written by a faulty quantizer (quantize it again from the source weights)");
                    }
                }
            }
        }
        return packed;
    }

    /// <summary>
    /// The cached per-file resource of <paramref name="path"/> (opened once by <paramref name="open"/>), or null when the
    /// file is absent or cannot be opened (remembered too).
    /// </summary>
    private T? Open<T>(Dictionary<string, T?> cache, string path, Func<string, T> open)
        where T : class
    {
        lock (_gate)
        {
            if (!cache.TryGetValue(path, out var value))
            {
                try
                {
                    value = System.IO.File.Exists(path) ? open(path) : null;
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException)
                {
                    value = null;
                }
                cache[path] = value;
            }
            return value;
        }
    }

    /// <summary>Reads into <paramref name="dst"/> from <paramref name="offset"/> until it is full or the file ends; returns the bytes read.</summary>
    private static int ReadAt(Microsoft.Win32.SafeHandles.SafeFileHandle file, Span<byte> dst, long offset)
    {
        int done = 0;
        while (done < dst.Length && RandomAccess.Read(file, dst[done..], offset + done) is int n && n > 0)
        {
            done += n;
        }
        return done;
    }

    /// <summary>A read handle on the tensor's file, or null when it cannot be opened or does not hold the store's bytes there.</summary>
    private Microsoft.Win32.SafeHandles.SafeFileHandle? File(ITensorStore store, TensorInfo info)
    {
        var file = Open(_files, info.SourcePath, path => System.IO.File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read));
        if (file is null || info.Offset < 0 || info.ByteLength < 0)
        {
            return null;
        }
        if (store is Formats.Gguf.GgufFile or Formats.Safetensors.SafetensorsFile or Formats.Safetensors.ShardedSafetensors)
        {
            // Bora's own file readers: a tensor's offset is its file offset by construction. Not comparing spares a
            // touch of the store's mapping per tensor, which maps a whole page-cache folio (up to megabytes where the
            // page cache uses huge folios) into this process for bytes that are only ever read through the packed copy.
            return file;
        }
        int check = (int)Math.Min(CheckBytes, info.ByteLength);
        Span<byte> head = stackalloc byte[CheckBytes];
        head = head[..check];
        return ReadAt(file, head, info.Offset) == check && head.SequenceEqual(store.GetBytes(info with { ByteLength = check })) ? file : null;
    }

    /// <summary>The mapping of the tensor's file, or null when it cannot be mapped or does not hold the store's bytes.</summary>
    private unsafe WeightStorage? Map(ITensorStore store, TensorInfo info)
    {
        var map = Open(_maps, info.SourcePath, WeightStorage.MapFile);
        if (map is null || info.Offset < 0 || info.ByteLength < 0 || info.Offset > map.Length || info.ByteLength > map.Length - info.Offset)
        {
            return null;
        }
        int check = (int)Math.Min(CheckBytes, info.ByteLength);
        var stored = store.GetBytes(info with { ByteLength = check });
        return stored.SequenceEqual(new ReadOnlySpan<byte>(map.Pointer(info.Offset, check), check)) ? map : null;
    }

    /// <summary>Drops the staging buffer of <see cref="PackAtLoad"/> (call once the model is loaded).</summary>
    public void ReleaseStaging()
    {
        lock (_stagingGate)
        {
            _staging = null;
        }
    }

    /// <summary>Unmaps every file and releases the packed buffers now; matrices built by this mapper must not be used afterwards.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            foreach (var m in _maps.Values)
            {
                m?.Dispose();
            }
            _maps.Clear();
            foreach (var f in _files.Values)
            {
                f?.Dispose();
            }
            _files.Clear();
            foreach (var p in _packed)
            {
                p.Dispose();
            }
            _packed.Clear();
            _staging = null;
        }
    }
}
