namespace Bora;

/// <summary>Locates the repository root and ../shared/testdata for tests.</summary>
internal static class TestPaths
{
    /// <summary>The repository root (the folder holding Directory.Build.props).</summary>
    public static string RepoRoot { get; } = FindRepoRoot();

    /// <summary>../shared/testdata relative to the repository root.</summary>
    public static string SharedTestData { get; } = Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared", "testdata"));

    /// <summary>A path under ../shared/testdata.</summary>
    public static string Shared(params string[] parts) => Path.Combine([SharedTestData, .. parts]);

    /// <summary>A fresh empty temporary folder, deleted by the caller or left in /tmp.</summary>
    public static string NewTempDir(string prefix)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"bora-{prefix}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        return dir;
    }

    private static string FindRepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Directory.Packages.props")))
        {
            dir = dir.Parent;
        }
        return dir?.FullName ?? throw new InvalidOperationException("repository root not found above " + AppContext.BaseDirectory);
    }
}
