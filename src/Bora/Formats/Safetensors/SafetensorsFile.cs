using System.Buffers.Binary;
using System.Text.Json;
using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Formats.Safetensors;

/// <summary>
/// One safetensors file: a u64 little-endian header length N, N bytes of JSON header
/// (<c>{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}</c>,
/// offsets relative to the end of the header), then the data. Supported dtypes: F32, F16, BF16.
/// The data stays memory-mapped. Tensors are listed in data-offset order.
/// </summary>
public sealed class SafetensorsFile : ITensorStore
{
    /// <summary>The reference implementation's limit on the header size (100 MB).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private readonly MappedFile _map;
    private readonly Dictionary<string, TensorInfo> _byName;

    private SafetensorsFile(MappedFile map, List<TensorInfo> tensors, Dictionary<string, string> metadata)
    {
        _map = map;
        Tensors = tensors;
        Metadata = metadata;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    /// <inheritdoc/>
    public string Path => _map.Path;

    /// <inheritdoc/>
    public IReadOnlyList<TensorInfo> Tensors { get; }

    /// <summary>The <c>__metadata__</c> string map (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Opens and validates a safetensors file.</summary>
    /// <exception cref="ModelFormatException">The file is missing, truncated, corrupt or holds unsupported dtypes.</exception>
    public static SafetensorsFile Open(string path)
    {
        var map = MappedFile.Open(path);
        try
        {
            var (tensors, metadata) = Parse(map);
            return new SafetensorsFile(map, tensors, metadata);
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
    public float[] ReadFloat32(TensorInfo info) => ReadFloat32(this, info);

    public void Dispose() => _map.Dispose();

    internal static float[] ReadFloat32(ITensorStore store, TensorInfo info)
    {
        long n = info.ElementCount;
        if (n > Array.MaxLength)
        {
            throw ModelFormatException.In(store.Path, $"tensor '{info.Name}' has {n} elements, more than one float32 array can hold");
        }
        var result = new float[n];
        BlockDequantizer.ToFloat32(info.Type, store.GetBytes(info), result);
        return result;
    }

    internal static DType? ParseDType(string s) => s switch
    {
        "F32" => DType.F32,
        "F16" => DType.F16,
        "BF16" => DType.BF16,
        _ => null,
    };

    internal static string DTypeName(DType t) => t switch
    {
        DType.F32 => "F32",
        DType.F16 => "F16",
        DType.BF16 => "BF16",
        _ => throw new ArgumentException($"safetensors stores only F32, F16 and BF16, not {t}", nameof(t)),
    };

    private static (List<TensorInfo>, Dictionary<string, string>) Parse(MappedFile map)
    {
        string path = map.Path;
        long fileLength = map.Length;
        if (fileLength < 8)
        {
            throw ModelFormatException.In(path, $"truncated: the file has {fileLength} bytes, less than the 8-byte safetensors header length");
        }
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(map.Span(0, 8));
        if (n > (ulong)(fileLength - 8))
        {
            throw ModelFormatException.In(path, $"header length {n} exceeds the {fileLength - 8} bytes that follow it in the file");
        }
        if (n > MaxHeaderBytes)
        {
            throw ModelFormatException.In(path, $"header length {n} exceeds the {MaxHeaderBytes}-byte limit of safetensors headers");
        }
        long dataStart = 8 + (long)n;
        long dataLength = fileLength - dataStart;

        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(map.Span(8, (long)n).ToArray());
        }
        catch (JsonException e)
        {
            throw ModelFormatException.In(path, "the header is not valid JSON: " + e.Message);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw ModelFormatException.In(path, $"the header is a JSON {root.ValueKind}, expected an object");
            }
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var tensors = new List<TensorInfo>();
            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (var prop in root.EnumerateObject())
            {
                if (!names.Add(prop.Name))
                {
                    throw ModelFormatException.In(path, $"duplicate tensor name '{prop.Name}' in the header");
                }
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind != JsonValueKind.Object)
                    {
                        throw ModelFormatException.In(path, "__metadata__ must be an object of strings");
                    }
                    foreach (var m in prop.Value.EnumerateObject())
                    {
                        metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String
                            ? m.Value.GetString()!
                            : throw ModelFormatException.In(path, $"__metadata__ value '{m.Name}' is a JSON {m.Value.ValueKind}, expected a string");
                    }
                    continue;
                }
                tensors.Add(ParseTensor(path, prop, dataStart, dataLength));
            }
            tensors.Sort((a, b) => a.Offset.CompareTo(b.Offset));
            for (int i = 1; i < tensors.Count; i++)
            {
                var a = tensors[i - 1];
                var b = tensors[i];
                if (b.Offset < a.Offset + a.ByteLength)
                {
                    throw ModelFormatException.In(path, $"tensors '{a.Name}' data_offsets [{a.Offset - dataStart}, {a.Offset - dataStart + a.ByteLength}) and '{b.Name}' [{b.Offset - dataStart}, {b.Offset - dataStart + b.ByteLength}) overlap");
                }
            }
            return (tensors, metadata);
        }
    }

    private static TensorInfo ParseTensor(string path, JsonProperty prop, long dataStart, long dataLength)
    {
        string name = prop.Name;
        var e = prop.Value;
        if (e.ValueKind != JsonValueKind.Object)
        {
            throw ModelFormatException.In(path, $"tensor '{name}' header entry is a JSON {e.ValueKind}, expected an object");
        }
        if (!e.TryGetProperty("dtype", out var dtypeEl) || dtypeEl.ValueKind != JsonValueKind.String)
        {
            throw ModelFormatException.In(path, $"tensor '{name}' has no string \"dtype\"");
        }
        string dtypeText = dtypeEl.GetString()!;
        var dtype = ParseDType(dtypeText)
            ?? throw ModelFormatException.In(path, $"tensor '{name}' has dtype {dtypeText}, which is not supported (supported: F32, F16, BF16)");
        if (!e.TryGetProperty("shape", out var shapeEl) || shapeEl.ValueKind != JsonValueKind.Array)
        {
            throw ModelFormatException.In(path, $"tensor '{name}' has no \"shape\" array");
        }
        var shape = new long[shapeEl.GetArrayLength()];
        long count = 1;
        int k = 0;
        foreach (var d in shapeEl.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
            {
                throw ModelFormatException.In(path, $"tensor '{name}' shape entry {k} is {d.GetRawText()}, expected a non-negative integer");
            }
            shape[k++] = dim;
            if (dim != 0 && count > long.MaxValue / dim)
            {
                throw ModelFormatException.In(path, $"tensor '{name}' shape {shapeEl.GetRawText()} has more elements than a 64-bit count can hold");
            }
            count *= dim;
        }
        if (!e.TryGetProperty("data_offsets", out var offEl) || offEl.ValueKind != JsonValueKind.Array || offEl.GetArrayLength() != 2
            || !offEl[0].TryGetInt64(out long begin) || !offEl[1].TryGetInt64(out long end) || begin < 0 || end < begin)
        {
            throw ModelFormatException.In(path, $"tensor '{name}' data_offsets must be [begin, end] with 0 <= begin <= end");
        }
        long? size = DTypeInfo.ByteSize(dtype, count);
        if (size is null || end - begin != size)
        {
            throw ModelFormatException.In(path, $"tensor '{name}' {dtypeText} shape {shapeEl.GetRawText()} needs {(size is null ? "more than 2^63" : size)} bytes but data_offsets [{begin}, {end}) span {end - begin}");
        }
        if (end > dataLength)
        {
            throw ModelFormatException.In(path, $"tensor '{name}' data_offsets [{begin}, {end}) lie beyond the end of the data section ({dataLength} bytes; file {dataStart + dataLength} bytes)");
        }
        return new TensorInfo(name, dtype, shape, dataStart + begin, end - begin, path);
    }
}
