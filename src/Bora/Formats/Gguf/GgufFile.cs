using System.Buffers.Binary;
using System.Text;
using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Formats.Gguf;

/// <summary>
/// A GGUF (v2 or v3, little-endian) checkpoint: metadata plus memory-mapped tensors.
/// Layout: "GGUF", u32 version, u64 tensor count, u64 metadata count, metadata entries (string key, u32 type,
/// value), tensor infos (string name, u32 n_dims, i64 ne[n_dims] innermost-first, u32 ggml type, u64 offset
/// relative to the data section), padding to <see cref="Alignment"/>, then the data section.
/// Strings are a u64 byte length followed by UTF-8 bytes.
/// <para>
/// Metadata values are represented as: integer scalars -> <see cref="long"/> (a uint64 above long.MaxValue ->
/// <see cref="ulong"/>), float32 -> <see cref="float"/>, float64 -> <see cref="double"/>, bool, string; arrays ->
/// string[], long[] (any integer element type; ulong[] when a uint64 element exceeds long.MaxValue), float[],
/// double[], bool[], object[] (array of arrays).
/// </para>
/// Every field is validated before anything is allocated from it; a bad file raises
/// <see cref="ModelFormatException"/> naming the file and the problem.
/// </summary>
public sealed class GgufFile : ITensorStore
{
    /// <summary>"GGUF" read as a little-endian u32.</summary>
    private const uint Magic = 0x46554747;
    private const int DefaultAlignment = 32;
    private const int MaxArrayDepth = 16;
    private const int HeaderBytes = 24;
    private const long MinKvBytes = 8 + 4 + 1;          // empty key, type, 1-byte value
    private const long MinTensorInfoBytes = 8 + 4 + 8 + 4 + 8; // empty name, n_dims, one dim, type, offset

    private readonly MappedFile _map;
    private readonly Dictionary<string, TensorInfo> _byName;

    private GgufFile(MappedFile map, uint version, int alignment, long dataOffset,
        Dictionary<string, object> metadata, Dictionary<string, GgufValueKind> kinds, List<TensorInfo> tensors)
    {
        _map = map;
        Version = version;
        Alignment = alignment;
        DataOffset = dataOffset;
        Metadata = metadata;
        MetadataKinds = kinds;
        Tensors = tensors;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    /// <inheritdoc/>
    public string Path => _map.Path;

    /// <summary>GGUF version (2 or 3).</summary>
    public uint Version { get; }

    /// <summary>Absolute file offset of the data section (tensor offsets are relative to it).</summary>
    public long DataOffset { get; }

    /// <summary><c>general.alignment</c>, or 32 when absent.</summary>
    public int Alignment { get; }

    /// <summary>All metadata in file order; see the class summary for the value representation.</summary>
    public IReadOnlyDictionary<string, object> Metadata { get; }

    /// <summary>The stored GGUF type of every metadata value (needed to rewrite it with the same widths).</summary>
    public IReadOnlyDictionary<string, GgufValueKind> MetadataKinds { get; }

    /// <inheritdoc/>
    public IReadOnlyList<TensorInfo> Tensors { get; }

    /// <summary>Opens and validates a GGUF file; its data stays mapped until disposal.</summary>
    /// <exception cref="ModelFormatException">The file is missing, truncated, corrupt or uses unsupported features.</exception>
    public static GgufFile Open(string path)
    {
        var map = MappedFile.Open(path);
        try
        {
            return Parse(map);
        }
        catch
        {
            map.Dispose();
            throw;
        }
    }

    /// <inheritdoc/>
    public bool TryGetTensor(string name, out TensorInfo info) => _byName.TryGetValue(name, out info!);

    /// <inheritdoc/>
    public ReadOnlySpan<byte> GetBytes(TensorInfo info) => _map.Span(info.Offset, info.ByteLength);

    /// <inheritdoc/>
    public float[] ReadFloat32(TensorInfo info)
    {
        long n = info.ElementCount;
        if (n > Array.MaxLength)
        {
            throw ModelFormatException.In(Path, $"tensor '{info.Name}' has {n} elements, more than one float32 array can hold");
        }
        var result = new float[n];
        BlockDequantizer.ToFloat32(info.Type, GetBytes(info), result);
        return result;
    }

    public void Dispose() => _map.Dispose();

    // ---- typed metadata accessors -------------------------------------------------------------------------

    /// <summary>A string value.</summary>
    /// <exception cref="ModelFormatException">Missing, or not a string.</exception>
    public string GetString(string key) => Get<string>(key, "a string");

    /// <summary>An integer value of any width (a uint64 must fit in a long).</summary>
    /// <exception cref="ModelFormatException">Missing, or not an integer that fits in a long.</exception>
    public long GetInt64(string key) => TryGetInt64(key, out long v) ? v : throw Expected(key, "an integer");

    /// <summary>A float32 value (a float64 value is narrowed).</summary>
    /// <exception cref="ModelFormatException">Missing, or not a float.</exception>
    public float GetFloat32(string key) => TryGetFloat32(key, out float v) ? v : throw Expected(key, "a float32");

    /// <summary>A bool value.</summary>
    /// <exception cref="ModelFormatException">Missing, or not a bool.</exception>
    public bool GetBool(string key) => Get<bool>(key, "a bool");

    /// <summary>An array of strings.</summary>
    /// <exception cref="ModelFormatException">Missing, or not an array of strings.</exception>
    public string[] GetStringArray(string key) => Get<string[]>(key, "an array of strings");

    /// <summary>An array of integers of any width.</summary>
    /// <exception cref="ModelFormatException">Missing, or not an array of integers that fit in a long.</exception>
    public long[] GetInt64Array(string key) => Get<long[]>(key, "an array of integers");

    /// <summary>An array of float32 values (a float64 array is narrowed).</summary>
    /// <exception cref="ModelFormatException">Missing, or not an array of floats.</exception>
    public float[] GetFloat32Array(string key)
    {
        if (Metadata.TryGetValue(key, out var v))
        {
            if (v is float[] f)
            {
                return f;
            }
            if (v is double[] d)
            {
                return Array.ConvertAll(d, x => (float)x);
            }
        }
        throw Expected(key, "an array of float32");
    }

    /// <summary>A string value, or false when the key is absent.</summary>
    /// <exception cref="ModelFormatException">Present but not a string.</exception>
    public bool TryGetString(string key, out string value) => TryGet(key, "a string", out value);

    /// <summary>An integer value, or false when the key is absent.</summary>
    /// <exception cref="ModelFormatException">Present but not an integer that fits in a long.</exception>
    public bool TryGetInt64(string key, out long value)
    {
        value = 0;
        if (!Metadata.TryGetValue(key, out var v))
        {
            return false;
        }
        value = v is long l ? l : throw Expected(key, "an integer");
        return true;
    }

    /// <summary>A float value (float32, or float64 narrowed), or false when the key is absent.</summary>
    /// <exception cref="ModelFormatException">Present but not a float.</exception>
    public bool TryGetFloat32(string key, out float value)
    {
        value = 0;
        if (!Metadata.TryGetValue(key, out var v))
        {
            return false;
        }
        value = v switch
        {
            float f => f,
            double d => (float)d,
            _ => throw Expected(key, "a float32"),
        };
        return true;
    }

    private T Get<T>(string key, string expected) => TryGet(key, expected, out T value) ? value : throw Expected(key, expected);

    private bool TryGet<T>(string key, string expected, out T value)
    {
        value = default!;
        if (!Metadata.TryGetValue(key, out var v))
        {
            return false;
        }
        value = v is T t ? t : throw Expected(key, expected);
        return true;
    }

    private ModelFormatException Expected(string key, string expected)
    {
        if (!Metadata.TryGetValue(key, out var v))
        {
            return ModelFormatException.In(Path, $"metadata key '{key}' is missing (expected {expected})");
        }
        var kind = MetadataKinds[key];
        string actual = kind.ElementType is { } e ? $"an array of {e}" : kind.Type.ToString();
        return ModelFormatException.In(Path, $"metadata key '{key}' is {actual} ({v}), expected {expected}");
    }

    // ---- parsing -------------------------------------------------------------------------------------------

    private static GgufFile Parse(MappedFile map)
    {
        string path = map.Path;
        long fileLength = map.Length;
        if (fileLength < HeaderBytes)
        {
            if (fileLength >= 4 && BinaryPrimitives.ReadUInt32LittleEndian(map.Span(0, 4)) != Magic)
            {
                throw ModelFormatException.In(path, "not a GGUF file (the first 4 bytes are not \"GGUF\")");
            }
            throw ModelFormatException.In(path, $"truncated: the file has {fileLength} bytes, less than the {HeaderBytes}-byte GGUF header");
        }
        var r = new Reader(map.Span(0, Math.Min(fileLength, int.MaxValue)), path, fileLength);

        uint magic = r.U32("magic");
        if (magic != Magic)
        {
            throw ModelFormatException.In(path, $"not a GGUF file (the first 4 bytes are 0x{magic:X8} little-endian, expected \"GGUF\")");
        }
        uint version = r.U32("version");
        if (version is not (2 or 3))
        {
            string why = version == 1
                ? "GGUF version 1 is not supported (only versions 2 and 3)"
                : (version & 0xFFFF) == 0
                    ? $"GGUF version 0x{version:X8} looks byte-swapped: big-endian GGUF files are not supported (only little-endian versions 2 and 3)"
                    : $"GGUF version {version} is not supported (only versions 2 and 3)";
            throw ModelFormatException.In(path, why);
        }
        ulong tensorCount = r.U64("tensor count");
        ulong kvCount = r.U64("metadata count");
        long rest = fileLength - HeaderBytes;
        if (kvCount > (ulong)(rest / MinKvBytes))
        {
            throw ModelFormatException.In(path, $"metadata count {kvCount} is implausible for a file of {fileLength} bytes (each entry takes at least {MinKvBytes} bytes)");
        }
        if (tensorCount > (ulong)(rest / MinTensorInfoBytes)
            || (long)kvCount * MinKvBytes + (long)tensorCount * MinTensorInfoBytes > rest)
        {
            throw ModelFormatException.In(path, $"tensor count {tensorCount} with {kvCount} metadata entries is implausible for a file of {fileLength} bytes (each tensor info takes at least {MinTensorInfoBytes} bytes)");
        }

        var metadata = new Dictionary<string, object>((int)kvCount, StringComparer.Ordinal);
        var kinds = new Dictionary<string, GgufValueKind>((int)kvCount, StringComparer.Ordinal);
        for (long i = 0; i < (long)kvCount; i++)
        {
            string key = r.String($"key of metadata entry {i}");
            if (metadata.ContainsKey(key))
            {
                throw ModelFormatException.In(path, $"duplicate metadata key '{key}'");
            }
            uint type = r.U32($"type of metadata key '{key}'");
            var value = ReadValue(ref r, type, key, 0, out var kind);
            metadata.Add(key, value);
            kinds.Add(key, kind);
        }

        int alignment = DefaultAlignment;
        if (metadata.TryGetValue("general.alignment", out var alignValue))
        {
            if (alignValue is not long a || a <= 0 || a > 1 << 30 || (a & (a - 1)) != 0)
            {
                throw ModelFormatException.In(path, $"general.alignment is {alignValue} ({kinds["general.alignment"].Type}), expected a power of two between 1 and 2^30");
            }
            alignment = (int)a;
        }

        var pending = new List<(string Name, DType Type, long[] Shape, ulong RelOffset, long Bytes)>((int)tensorCount);
        var names = new HashSet<string>(StringComparer.Ordinal);
        for (long i = 0; i < (long)tensorCount; i++)
        {
            string name = r.String($"name of tensor {i}");
            if (!names.Add(name))
            {
                throw ModelFormatException.In(path, $"duplicate tensor name '{name}'");
            }
            uint nDims = r.U32($"n_dims of tensor '{name}'");
            if (nDims is < 1 or > 4)
            {
                throw ModelFormatException.In(path, $"tensor '{name}' has n_dims {nDims}, expected 1 to 4");
            }
            var ne = new long[nDims]; // innermost-first
            long count = 1;
            for (int j = 0; j < nDims; j++)
            {
                ulong raw = r.U64($"dimension {j} of tensor '{name}'");
                if (raw == 0 || raw > long.MaxValue)
                {
                    throw ModelFormatException.In(path, $"tensor '{name}' dimension ne[{j}] is {(long)raw}, expected a positive size");
                }
                ne[j] = (long)raw;
                if (count > long.MaxValue / ne[j])
                {
                    throw ModelFormatException.In(path, $"tensor '{name}' shape ne=[{string.Join(", ", ne.Take(j + 1))}] has more elements than a 64-bit count can hold");
                }
                count *= ne[j];
            }
            uint typeId = r.U32($"type of tensor '{name}'");
            var dtype = GgmlType.ToDType(typeId)
                ?? throw ModelFormatException.In(path, $"tensor '{name}' has ggml type id {typeId} ({GgmlType.Name(typeId)}), which is not supported (supported: F32=0, F16=1, Q4_0=2, Q8_0=8, Q4_K=12, Q6_K=14, BF16=30)");
            int be = DTypeInfo.BlockElements(dtype);
            if (ne[0] % be != 0)
            {
                throw ModelFormatException.In(path, $"tensor '{name}' of type {dtype} has {ne[0]} elements per row (ne[0]), not a whole number of {be}-element blocks");
            }
            long bytes = DTypeInfo.ByteSize(dtype, count)
                ?? throw ModelFormatException.In(path, $"tensor '{name}' of type {dtype} with {count} elements has a byte size beyond 64 bits");
            ulong rel = r.U64($"data offset of tensor '{name}'");
            var shape = (long[])ne.Clone();
            Array.Reverse(shape); // outermost-first
            pending.Add((name, dtype, shape, rel, bytes));
        }

        long dataOffset = AlignUp(r.Position, alignment);
        var tensors = new List<TensorInfo>(pending.Count);
        foreach (var (name, dtype, shape, rel, bytes) in pending)
        {
            if (rel % (ulong)alignment != 0)
            {
                throw ModelFormatException.In(path, $"tensor '{name}' data offset {rel} is not a multiple of the alignment {alignment}");
            }
            if (rel > (ulong)(long.MaxValue - dataOffset) || (long)rel + dataOffset > long.MaxValue - bytes
                || dataOffset + (long)rel + bytes > fileLength)
            {
                decimal start = dataOffset + (decimal)rel;
                throw ModelFormatException.In(path, $"tensor '{name}' data [offset {start}, {start + bytes}) lies beyond the end of the file ({fileLength} bytes)");
            }
            tensors.Add(new TensorInfo(name, dtype, shape, dataOffset + (long)rel, bytes, path));
        }
        var byOffset = tensors.OrderBy(t => t.Offset).ToList();
        for (int i = 1; i < byOffset.Count; i++)
        {
            var a = byOffset[i - 1];
            var b = byOffset[i];
            if (b.Offset < a.Offset + a.ByteLength)
            {
                throw ModelFormatException.In(path, $"tensors '{a.Name}' [offset {a.Offset}, {a.Offset + a.ByteLength}) and '{b.Name}' [offset {b.Offset}, {b.Offset + b.ByteLength}) overlap");
            }
        }
        return new GgufFile(map, version, alignment, dataOffset, metadata, kinds, tensors);
    }

    private static long AlignUp(long x, long alignment) => (x + alignment - 1) / alignment * alignment;

    private static int MinSize(uint type) => (GgufValueType)type switch
    {
        GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
        GgufValueType.UInt16 or GgufValueType.Int16 => 2,
        GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
        GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 or GgufValueType.String => 8,
        GgufValueType.Array => 12,
        _ => 0,
    };

    private static object ReadValue(ref Reader r, uint type, string key, int depth, out GgufValueKind kind)
    {
        kind = new GgufValueKind((GgufValueType)type);
        switch ((GgufValueType)type)
        {
            case GgufValueType.UInt8: return (long)r.U8(key);
            case GgufValueType.Int8: return (long)(sbyte)r.U8(key);
            case GgufValueType.UInt16: return (long)r.U16(key);
            case GgufValueType.Int16: return (long)(short)r.U16(key);
            case GgufValueType.UInt32: return (long)r.U32(key);
            case GgufValueType.Int32: return (long)(int)r.U32(key);
            case GgufValueType.UInt64:
                {
                    ulong u = r.U64(key);
                    return u > long.MaxValue ? u : (long)u;
                }
            case GgufValueType.Int64: return (long)r.U64(key);
            case GgufValueType.Float32: return BitConverter.UInt32BitsToSingle(r.U32(key));
            case GgufValueType.Float64: return BitConverter.UInt64BitsToDouble(r.U64(key));
            case GgufValueType.Bool: return r.Bool(key);
            case GgufValueType.String: return r.String($"value of metadata key '{key}'");
            case GgufValueType.Array:
                {
                    if (depth >= MaxArrayDepth)
                    {
                        throw ModelFormatException.In(r.Path, $"metadata key '{key}' nests arrays deeper than {MaxArrayDepth} levels");
                    }
                    uint elem = r.U32($"element type of metadata key '{key}'");
                    int min = MinSize(elem);
                    if (min == 0)
                    {
                        throw ModelFormatException.In(r.Path, $"metadata key '{key}' is an array of invalid GGUF type {elem}");
                    }
                    ulong n = r.U64($"length of array '{key}'");
                    if (n > (ulong)(r.Remaining / min))
                    {
                        throw ModelFormatException.In(r.Path, $"metadata key '{key}' claims {n} array elements of {(GgufValueType)elem} (at least {min} bytes each) but only {r.Remaining} bytes remain in the file");
                    }
                    kind = new GgufValueKind(GgufValueType.Array, (GgufValueType)elem);
                    return ReadArray(ref r, elem, (int)n, key, depth);
                }
            default:
                throw ModelFormatException.In(r.Path, $"metadata key '{key}' has invalid GGUF value type {type}");
        }
    }

    private static object ReadArray(ref Reader r, uint elem, int n, string key, int depth)
    {
        switch ((GgufValueType)elem)
        {
            case GgufValueType.Float32:
                {
                    var a = new float[n];
                    for (int i = 0; i < n; i++)
                    {
                        a[i] = BitConverter.UInt32BitsToSingle(r.U32(key));
                    }
                    return a;
                }
            case GgufValueType.Float64:
                {
                    var a = new double[n];
                    for (int i = 0; i < n; i++)
                    {
                        a[i] = BitConverter.UInt64BitsToDouble(r.U64(key));
                    }
                    return a;
                }
            case GgufValueType.Bool:
                {
                    var a = new bool[n];
                    for (int i = 0; i < n; i++)
                    {
                        a[i] = r.Bool(key);
                    }
                    return a;
                }
            case GgufValueType.String:
                {
                    var a = new string[n];
                    for (int i = 0; i < n; i++)
                    {
                        a[i] = r.String($"element {i} of array '{key}'");
                    }
                    return a;
                }
            case GgufValueType.Array:
                {
                    var a = new object[n];
                    for (int i = 0; i < n; i++)
                    {
                        a[i] = ReadValue(ref r, (uint)GgufValueType.Array, $"{key}[{i}]", depth + 1, out _);
                    }
                    return a;
                }
            default:
                {
                    var a = new long[n];
                    ulong[]? big = null;
                    for (int i = 0; i < n; i++)
                    {
                        object v = ReadValue(ref r, elem, key, depth + 1, out _);
                        if (v is ulong u)
                        {
                            big ??= Array.ConvertAll(a, x => (ulong)x);
                            big[i] = u;
                        }
                        else
                        {
                            a[i] = (long)v;
                            if (big is not null)
                            {
                                big[i] = (ulong)a[i];
                            }
                        }
                    }
                    return big is not null ? big : a;
                }
        }
    }

    /// <summary>Bounds-checked little-endian cursor over the header.</summary>
    private ref struct Reader
    {
        private readonly ReadOnlySpan<byte> _buf;
        private readonly long _fileLength;
        private int _pos;

        public Reader(ReadOnlySpan<byte> buf, string path, long fileLength)
        {
            _buf = buf;
            Path = path;
            _fileLength = fileLength;
            _pos = 0;
        }

        public string Path { get; }

        public readonly long Position => _pos;

        public readonly long Remaining => _buf.Length - _pos;

        public byte U8(string what) => Take(1, what)[0];

        public ushort U16(string what) => BinaryPrimitives.ReadUInt16LittleEndian(Take(2, what));

        public uint U32(string what) => BinaryPrimitives.ReadUInt32LittleEndian(Take(4, what));

        public ulong U64(string what) => BinaryPrimitives.ReadUInt64LittleEndian(Take(8, what));

        public bool Bool(string what)
        {
            byte b = U8(what);
            return b switch
            {
                0 => false,
                1 => true,
                _ => throw ModelFormatException.In(Path, $"bool value of '{what}' at offset {_pos - 1} is {b}, expected 0 or 1"),
            };
        }

        public string String(string what)
        {
            int at = _pos;
            ulong len = U64(what);
            if (len > (ulong)Remaining)
            {
                throw ModelFormatException.In(Path, $"truncated or corrupt: {what} at offset {at} claims a string of {len} bytes but only {Remaining} bytes remain in the file");
            }
            return Encoding.UTF8.GetString(Take((int)len, what));
        }

        private ReadOnlySpan<byte> Take(int n, string what)
        {
            if (n > _buf.Length - _pos)
            {
                throw ModelFormatException.In(Path, $"truncated: the file ends (at {_fileLength} bytes) while reading {what} at offset {_pos}");
            }
            var s = _buf.Slice(_pos, n);
            _pos += n;
            return s;
        }
    }
}
