namespace Bora.Cli;

/// <summary>
/// Bora's embedded default model, <c>bora-kjv</c>: a small Mixtral trained by Bora on the King James Bible
/// (see models/bora-kjv/README.md). The build copies the repository's <c>models/bora-kjv</c> folder next to
/// Bora.Cli.dll, so <c>generate</c>, <c>chat</c> and <c>serve</c> work without <c>--model</c> on a fresh machine.
/// </summary>
internal static class DefaultModel
{
    /// <summary>The model's name, as the folder is called.</summary>
    public const string Name = "bora-kjv";

    /// <summary>The folder, relative to the directory that holds Bora.Cli.dll.</summary>
    public static readonly string RelativeFolder = Path.Combine("models", Name);

    /// <summary>
    /// The <c>--model</c> value when given; otherwise the embedded model's folder (after checking it is
    /// there), with a note on <paramref name="stderr"/> saying which model is used.
    /// </summary>
    public static string Resolve(CliArguments a, TextWriter stderr)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(stderr);
        if (a.Get("model") is { } model)
        {
            return model;
        }
        var folder = Locate(AppContext.BaseDirectory);
        stderr.WriteLine($"bora: no --model given; using the embedded default model {Name} (King James Bible, trained by Bora): {folder}");
        return folder;
    }

    /// <summary>
    /// The embedded model's folder under <paramref name="baseDirectory"/>; throws
    /// <see cref="DirectoryNotFoundException"/> naming the expected path when a file of it is missing.
    /// </summary>
    public static string Locate(string baseDirectory)
    {
        var folder = Path.GetFullPath(Path.Combine(baseDirectory, RelativeFolder));
        foreach (var file in new[] { "params.json", "consolidated.safetensors", "tokenizer.model" })
        {
            if (!File.Exists(Path.Combine(folder, file)))
            {
                throw new DirectoryNotFoundException(
                    $"no --model given and the embedded default model is missing: expected {Path.Combine(folder, file)} " +
                    $"(the build copies the repository's {RelativeFolder.Replace('\\', '/')} folder next to Bora.Cli.dll). " +
                    "Pass --model PATH, or rebuild Bora.Cli from a checkout that has the folder.");
            }
        }
        return folder;
    }
}
