namespace Bora.Formats.Safetensors;

/// <summary>Opens a safetensors checkpoint given a file or a Hugging Face model folder.</summary>
public static class SafetensorsStore
{
    /// <summary>
    /// Opens <paramref name="folderOrFile"/>: a <c>*.index.json</c> file opens as <see cref="ShardedSafetensors"/>,
    /// any other file as <see cref="SafetensorsFile"/>. A folder is searched in this order:
    /// <c>model.safetensors.index.json</c>, <c>model.safetensors</c>, <c>consolidated.safetensors</c>, a single
    /// <c>*.safetensors.index.json</c>, then all <c>*.safetensors</c> files (one opens alone, several open together).
    /// </summary>
    /// <exception cref="ModelFormatException">Nothing to open, an ambiguous folder, or a bad file.</exception>
    public static ITensorStore Open(string folderOrFile)
    {
        if (File.Exists(folderOrFile))
        {
            return folderOrFile.EndsWith(".index.json", StringComparison.OrdinalIgnoreCase)
                ? ShardedSafetensors.Open(folderOrFile)
                : SafetensorsFile.Open(folderOrFile);
        }
        if (!Directory.Exists(folderOrFile))
        {
            throw ModelFormatException.In(folderOrFile, "no such file or folder");
        }
        string index = Path.Combine(folderOrFile, "model.safetensors.index.json");
        if (File.Exists(index))
        {
            return ShardedSafetensors.Open(index);
        }
        foreach (var single in new[] { "model.safetensors", "consolidated.safetensors" })
        {
            string p = Path.Combine(folderOrFile, single);
            if (File.Exists(p))
            {
                return SafetensorsFile.Open(p);
            }
        }
        var indexes = Directory.GetFiles(folderOrFile, "*.safetensors.index.json");
        if (indexes.Length == 1)
        {
            return ShardedSafetensors.Open(indexes[0]);
        }
        if (indexes.Length > 1)
        {
            throw ModelFormatException.In(folderOrFile, "the folder holds several index files (" + string.Join(", ", indexes.Select(Path.GetFileName)) + "); open one of them");
        }
        var files = Directory.GetFiles(folderOrFile, "*.safetensors");
        return files.Length switch
        {
            0 => throw ModelFormatException.In(folderOrFile, "the folder holds no *.safetensors file and no model.safetensors.index.json"),
            1 => SafetensorsFile.Open(files[0]),
            _ => ShardedSafetensors.OpenFiles(folderOrFile, files),
        };
    }
}
