using System.Buffers.Binary;
using System.Text.Json;

namespace Bora.Formats.Safetensors;

/// <summary>
/// Writes safetensors files the way Hugging Face does: JSON header (<c>__metadata__</c> first when given,
/// then the tensors in the given order with contiguous data_offsets) padded with spaces to a multiple of 8
/// bytes, then the data. Each file is written to <c>path + ".tmp"</c> and renamed. Only F32, F16 and BF16.
/// </summary>
public static class SafetensorsWriter
{
    /// <summary>The index file name <see cref="WriteSharded"/> writes.</summary>
    public const string IndexFileName = "model.safetensors.index.json";

    /// <summary>Writes one safetensors file.</summary>
    /// <exception cref="ArgumentException">A dtype other than F32/F16/BF16, or a duplicate tensor name.</exception>
    public static void Write(string path, IEnumerable<TensorData> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        var header = BuildHeader(list, metadata);
        string tmp = path + ".tmp";
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
            {
                Span<byte> len = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
                fs.Write(len);
                fs.Write(header);
                foreach (var t in list)
                {
                    fs.Write(t.Bytes.Span);
                }
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            File.Delete(tmp);
            throw;
        }
    }

    /// <summary>
    /// Writes the tensors as shards <c>model-00001-of-0000N.safetensors</c> of at most
    /// <paramref name="maxShardBytes"/> data bytes each (a larger tensor gets a shard of its own), in the given
    /// order, plus <see cref="IndexFileName"/> with <c>metadata.total_size</c> and a name-sorted weight_map.
    /// </summary>
    /// <returns>The path of the index file.</returns>
    public static string WriteSharded(string folder, IReadOnlyList<TensorData> tensors, long maxShardBytes,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxShardBytes);
        var groups = new List<List<TensorData>>();
        long current = 0;
        foreach (var t in tensors)
        {
            if (groups.Count == 0 || (current + t.Bytes.Length > maxShardBytes && current > 0))
            {
                groups.Add([]);
                current = 0;
            }
            groups[^1].Add(t);
            current += t.Bytes.Length;
        }
        if (groups.Count == 0)
        {
            groups.Add([]);
        }
        Directory.CreateDirectory(folder);
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        long total = 0;
        for (int i = 0; i < groups.Count; i++)
        {
            string name = $"model-{i + 1:D5}-of-{groups.Count:D5}.safetensors";
            Write(Path.Combine(folder, name), groups[i], metadata);
            foreach (var t in groups[i])
            {
                weightMap[t.Name] = name;
                total += t.Bytes.Length;
            }
        }
        string indexPath = Path.Combine(folder, IndexFileName);
        string tmp = indexPath + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write))
        using (var w = new Utf8JsonWriter(fs, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteStartObject("metadata");
            w.WriteNumber("total_size", total);
            w.WriteEndObject();
            w.WriteStartObject("weight_map");
            foreach (var (k, v) in weightMap)
            {
                w.WriteString(k, v);
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }
        File.Move(tmp, indexPath, overwrite: true);
        return indexPath;
    }

    private static byte[] BuildHeader(List<TensorData> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata)
                {
                    w.WriteString(k, v);
                }
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var t in tensors)
            {
                if (t.Name == "__metadata__" || !names.Add(t.Name))
                {
                    throw new ArgumentException($"duplicate or reserved tensor name '{t.Name}'", nameof(tensors));
                }
                w.WriteStartObject(t.Name);
                w.WriteString("dtype", SafetensorsFile.DTypeName(t.Type));
                w.WriteStartArray("shape");
                foreach (var d in t.Shape)
                {
                    w.WriteNumberValue(d);
                }
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + t.Bytes.Length);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += t.Bytes.Length;
            }
            w.WriteEndObject();
        }
        int pad = (int)((8 - ms.Length % 8) % 8);
        for (int i = 0; i < pad; i++)
        {
            ms.WriteByte((byte)' ');
        }
        return ms.ToArray();
    }
}
