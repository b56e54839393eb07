using System.Text.Json;

namespace Bora.Formats.Safetensors;

/// <summary>
/// A checkpoint split over several safetensors files, described by a Hugging Face
/// <c>model.safetensors.index.json</c> (<c>{"metadata": {...}, "weight_map": {"tensor": "shard file"}}</c>).
/// Each shard is opened once; every mapped tensor must exist in its shard. Tensors are listed in
/// weight_map order.
/// </summary>
public sealed class ShardedSafetensors : ITensorStore
{
    private readonly Dictionary<string, SafetensorsFile> _shards; // full shard path -> file
    private readonly Dictionary<string, TensorInfo> _byName;

    private ShardedSafetensors(string path, Dictionary<string, SafetensorsFile> shards, List<TensorInfo> tensors)
    {
        Path = path;
        _shards = shards;
        Tensors = tensors;
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
    }

    /// <summary>The index file (or, for <see cref="OpenFiles"/>, the folder).</summary>
    public string Path { get; }

    /// <inheritdoc/>
    public IReadOnlyList<TensorInfo> Tensors { get; }

    /// <summary>The opened shard files.</summary>
    public IReadOnlyCollection<SafetensorsFile> Shards => _shards.Values;

    /// <summary>Opens a checkpoint from its index file.</summary>
    /// <exception cref="ModelFormatException">
    /// Bad index JSON, a missing shard file (named in the message), a bad shard, or a mapped tensor absent from its shard.
    /// </exception>
    public static ShardedSafetensors Open(string indexPath)
    {
        if (!File.Exists(indexPath))
        {
            throw ModelFormatException.In(indexPath, "file not found");
        }
        var map = ReadWeightMap(indexPath);
        string dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(indexPath))!;
        foreach (var group in map.GroupBy(m => m.Shard, StringComparer.Ordinal))
        {
            string shardPath = System.IO.Path.Combine(dir, group.Key);
            if (!File.Exists(shardPath))
            {
                throw ModelFormatException.In(indexPath, $"shard file '{group.Key}' (holding {group.Count()} tensors, e.g. '{group.First().Tensor}') is missing: {shardPath} does not exist");
            }
        }
        var shards = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        try
        {
            var tensors = new List<TensorInfo>(map.Count);
            foreach (var (tensor, shard) in map)
            {
                string shardPath = System.IO.Path.Combine(dir, shard);
                if (!shards.TryGetValue(shardPath, out var file))
                {
                    file = SafetensorsFile.Open(shardPath);
                    shards.Add(shardPath, file);
                }
                if (!file.TryGetTensor(tensor, out var info))
                {
                    throw ModelFormatException.In(indexPath, $"tensor '{tensor}' is mapped to shard '{shard}' but that shard does not contain it");
                }
                tensors.Add(info);
            }
            return new ShardedSafetensors(indexPath, shards, tensors);
        }
        catch
        {
            foreach (var s in shards.Values)
            {
                s.Dispose();
            }
            throw;
        }
    }

    /// <summary>
    /// Opens several safetensors files as one checkpoint without an index (tensor names must be unique across
    /// files); <paramref name="displayPath"/> names the set in messages.
    /// </summary>
    /// <exception cref="ModelFormatException">A bad file, or a tensor name present in two files.</exception>
    public static ShardedSafetensors OpenFiles(string displayPath, IEnumerable<string> files)
    {
        var shards = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        try
        {
            var tensors = new List<TensorInfo>();
            var owner = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var f in files.OrderBy(f => f, StringComparer.Ordinal))
            {
                var file = SafetensorsFile.Open(f);
                shards.Add(System.IO.Path.GetFullPath(f), file);
                foreach (var t in file.Tensors)
                {
                    if (!owner.TryAdd(t.Name, f))
                    {
                        throw ModelFormatException.In(displayPath, $"tensor '{t.Name}' is in both {owner[t.Name]} and {f}");
                    }
                    tensors.Add(t);
                }
            }
            return new ShardedSafetensors(displayPath, shards, tensors);
        }
        catch
        {
            foreach (var s in shards.Values)
            {
                s.Dispose();
            }
            throw;
        }
    }

    /// <inheritdoc/>
    public bool TryGetTensor(string name, out TensorInfo info) => _byName.TryGetValue(name, out info!);

    /// <inheritdoc/>
    public ReadOnlySpan<byte> GetBytes(TensorInfo info)
    {
        if (!_shards.TryGetValue(System.IO.Path.GetFullPath(info.SourcePath), out var file))
        {
            throw new ArgumentException($"tensor '{info.Name}' comes from {info.SourcePath}, which is not a shard of {Path}", nameof(info));
        }
        return file.GetBytes(info);
    }

    /// <inheritdoc/>
    public float[] ReadFloat32(TensorInfo info) => SafetensorsFile.ReadFloat32(this, info);

    public void Dispose()
    {
        foreach (var s in _shards.Values)
        {
            s.Dispose();
        }
    }

    internal static List<(string Tensor, string Shard)> ReadWeightMap(string indexPath)
    {
        long length = new FileInfo(indexPath).Length;
        if (length > SafetensorsFile.MaxHeaderBytes)
        {
            throw ModelFormatException.In(indexPath, $"index file of {length} bytes is implausibly large");
        }
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(indexPath));
        }
        catch (JsonException e)
        {
            throw ModelFormatException.In(indexPath, "not valid JSON: " + e.Message);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
            {
                throw ModelFormatException.In(indexPath, "expected a JSON object with a \"weight_map\" object");
            }
            var result = new List<(string, string)>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var p in wm.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                {
                    throw ModelFormatException.In(indexPath, $"weight_map entry '{p.Name}' is a JSON {p.Value.ValueKind}, expected a shard file name");
                }
                string shard = p.Value.GetString()!;
                if (shard.Length == 0 || System.IO.Path.IsPathRooted(shard) || shard.Split('/', '\\').Contains(".."))
                {
                    throw ModelFormatException.In(indexPath, $"weight_map entry '{p.Name}' names shard '{shard}', expected a file name relative to the index's folder");
                }
                if (!seen.Add(p.Name))
                {
                    throw ModelFormatException.In(indexPath, $"duplicate weight_map entry '{p.Name}'");
                }
                result.Add((p.Name, shard));
            }
            return result;
        }
    }
}
