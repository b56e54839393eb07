using Bora.Loading;
using Xunit.Abstractions;

namespace Bora.Reference.Tests.Engine;

/// <summary>
/// A Hugging Face repo id resolves to its snapshot in the local hub cache
/// (<c>$HF_HUB_CACHE/models--org--name/snapshots/REV</c>, REV read from <c>refs/main</c>), so models that
/// huggingface_hub (or any HF tool) downloaded load by name.
/// </summary>
[Collection(nameof(HubCacheTests))] // sets a process-wide environment variable
public sealed class HubCacheTests(ITestOutputHelper output)
{
    [Fact]
    public void RepoIdLoadsFromTheHubCacheSnapshot()
    {
        if (!File.Exists(TestPaths.Shared("models", "stories260K", "stories260K.gguf")))
        {
            output.WriteLine("skipped: stories260K is absent");
            return;
        }
        var cache = TestPaths.NewTempDir("hub");
        const string Revision = "0123456789abcdef0123456789abcdef01234567";
        var repo = Path.Combine(cache, "models--karpathy--tinyllamas");
        var snapshot = Path.Combine(repo, "snapshots", Revision);
        Directory.CreateDirectory(snapshot);
        Directory.CreateDirectory(Path.Combine(repo, "refs"));
        File.WriteAllText(Path.Combine(repo, "refs", "main"), Revision + "\n");
        Stories260KTests.WriteHuggingFaceFolder(snapshot);

        var previous = Environment.GetEnvironmentVariable("HF_HUB_CACHE");
        try
        {
            Environment.SetEnvironmentVariable("HF_HUB_CACHE", cache);
            var source = ModelSource.Resolve("karpathy/tinyllamas");
            Assert.Equal(snapshot, source.Path);
            Assert.Equal(CheckpointLayout.HuggingFace, source.Layout);
            var model = ModelLoader.Load("karpathy/tinyllamas");
            Assert.Equal(512, model.Config.VocabSize);

            // An id that is not cached is a clear "not found", naming what was looked for.
            var e = Assert.Throws<FileNotFoundException>(() => ModelSource.Resolve("karpathy/not-there"));
            Assert.Contains("karpathy/not-there", e.Message, StringComparison.Ordinal);
        }
        finally
        {
            Environment.SetEnvironmentVariable("HF_HUB_CACHE", previous);
            Directory.Delete(cache, recursive: true);
        }
    }
}
