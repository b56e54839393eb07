using Bora.Formats;

namespace Bora.Loading;

/// <summary>How a checkpoint is laid out on disk.</summary>
public enum CheckpointLayout
{
    /// <summary>One GGUF file: config, tokenizer and weights together.</summary>
    Gguf,

    /// <summary>A Hugging Face folder: config.json, *.safetensors (maybe sharded), tokenizer.model / tokenizer.json.</summary>
    HuggingFace,

    /// <summary>Mistral's own folder: params.json, consolidated.safetensors, tokenizer.model.vN / tekken.json.</summary>
    Mistral,
}

/// <summary>
/// The files that make up one model, found from a path the user gave: a .gguf file, a model
/// folder of either layout, or a Hugging Face repo id present in the local hub cache
/// (<c>~/.cache/huggingface/hub/models--org--name/snapshots/REV</c>).
/// </summary>
/// <param name="Path">The resolved file or folder.</param>
/// <param name="Layout">Which layout it is.</param>
/// <param name="ConfigPath">config.json or params.json; the .gguf file itself for GGUF.</param>
/// <param name="WeightsPath">The .gguf file, or the folder holding the safetensors.</param>
/// <param name="TokenizerPath">The tokenizer file, or the .gguf file for an embedded vocabulary; null when none was found.</param>
public sealed record ModelSource(string Path, CheckpointLayout Layout, string ConfigPath, string WeightsPath, string? TokenizerPath)
{
    /// <summary>Tokenizer file names in order of preference.</summary>
    internal static readonly string[] TokenizerFileNames =
    [
        "tekken.json",
        "tokenizer.model.v7",
        "tokenizer.model.v3",
        "tokenizer.model.v2",
        "tokenizer.model.v1",
        "tokenizer.model",
        "tokenizer.json",
    ];

    /// <summary>Finds the files of the model at <paramref name="path"/>.</summary>
    public static ModelSource Resolve(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var resolved = ResolveHubCache(path) ?? path;
        if (File.Exists(resolved))
        {
            if (IsGgufFile(resolved))
            {
                return new ModelSource(resolved, CheckpointLayout.Gguf, resolved, resolved, resolved);
            }
            throw new ModelFormatException($"{resolved}: not a GGUF file (no 'GGUF' magic). Give a .gguf file or a model folder (config.json or params.json with *.safetensors).");
        }
        if (!Directory.Exists(resolved))
        {
            throw new FileNotFoundException($"{path}: no such file or folder. Give a .gguf file, a model folder, or a Hugging Face repo id present in the local hub cache.");
        }

        var paramsJson = System.IO.Path.Combine(resolved, "params.json");
        var configJson = System.IO.Path.Combine(resolved, "config.json");
        string? tokenizer = FindTokenizer(resolved);
        if (File.Exists(paramsJson))
        {
            return new ModelSource(resolved, CheckpointLayout.Mistral, paramsJson, resolved, tokenizer);
        }
        if (File.Exists(configJson))
        {
            return new ModelSource(resolved, CheckpointLayout.HuggingFace, configJson, resolved, tokenizer);
        }
        var ggufs = Directory.GetFiles(resolved, "*.gguf");
        if (ggufs.Length == 1)
        {
            return new ModelSource(ggufs[0], CheckpointLayout.Gguf, ggufs[0], ggufs[0], ggufs[0]);
        }
        throw new ModelFormatException(
            $"{resolved}: not a model folder: expected config.json (Hugging Face layout), params.json (Mistral layout) or a single .gguf file"
            + (ggufs.Length > 1 ? $", found {ggufs.Length} .gguf files: name one" : ""));
    }

    /// <summary>The preferred tokenizer file in a folder, or null.</summary>
    public static string? FindTokenizer(string folder)
    {
        foreach (var name in TokenizerFileNames)
        {
            var p = System.IO.Path.Combine(folder, name);
            if (File.Exists(p))
            {
                return p;
            }
        }
        return null;
    }

    internal static bool IsGgufFile(string path)
    {
        using var f = File.OpenRead(path);
        Span<byte> magic = stackalloc byte[4];
        return f.Read(magic) == 4 && magic.SequenceEqual("GGUF"u8);
    }

    /// <summary>
    /// Maps a repo id such as <c>mistralai/Mistral-7B-v0.1</c> to its snapshot folder in the
    /// Hugging Face hub cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub),
    /// following <c>refs/main</c>. Null when the path is not such an id or is not cached.
    /// </summary>
    internal static string? ResolveHubCache(string path)
    {
        if (File.Exists(path) || Directory.Exists(path))
        {
            return null;
        }
        var parts = path.Split('/');
        if (parts.Length != 2 || parts.Any(p => p.Length == 0 || p == "." || p == ".."))
        {
            return null;
        }
        var hubCache = Environment.GetEnvironmentVariable("HF_HUB_CACHE");
        if (string.IsNullOrEmpty(hubCache))
        {
            var hfHome = Environment.GetEnvironmentVariable("HF_HOME");
            hubCache = string.IsNullOrEmpty(hfHome)
                ? System.IO.Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "huggingface", "hub")
                : System.IO.Path.Combine(hfHome, "hub");
        }
        var repoDir = System.IO.Path.Combine(hubCache, $"models--{parts[0]}--{parts[1]}");
        var refFile = System.IO.Path.Combine(repoDir, "refs", "main");
        if (!File.Exists(refFile))
        {
            return null;
        }
        var snapshot = System.IO.Path.Combine(repoDir, "snapshots", File.ReadAllText(refFile).Trim());
        return Directory.Exists(snapshot) ? snapshot : null;
    }
}
