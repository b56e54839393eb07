using System.Text.Json;

namespace Bora.Clients.Tests;

/// <summary>
/// Runs tests/tools/sdk-clients/sdk_clients.mjs (the npm packages openai and @mistralai/mistralai) with node.
/// Needs <c>node</c> on PATH (the tests skip without it); installs the pinned packages with <c>npm ci</c> when
/// node_modules is absent (clean checkouts, CI).
/// </summary>
internal static class NodeSdk
{
    public static string ToolDir => Path.Combine(TestPaths.RepoRoot, "tests", "tools", "sdk-clients");

    public static string? Node { get; } = ExternalProcess.FindOnPath("node");

    public const string SkipMessage = "skipped: `node` is not on PATH; the JavaScript SDK tests need Node.js 20+ (npm installs openai and @mistralai/mistralai from tests/tools/sdk-clients)";

    /// <summary>Runs one scenario against <paramref name="live"/> and returns the JSON object the script printed.</summary>
    public static JsonElement Run(Live live, string scenario, object? extra = null)
    {
        EnsureInstalled();
        var request = new Dictionary<string, object?>
        {
            ["scenario"] = scenario,
            ["baseUrl"] = live.BaseUrl,
            ["key"] = Live.Key,
            ["model"] = live.ModelId,
        };
        if (extra is not null)
        {
            foreach (var p in JsonSerializer.SerializeToElement(extra).EnumerateObject())
            {
                request[p.Name] = p.Value;
            }
        }
        var (code, stdout, stderr) = ExternalProcess.Run(Node!, [Path.Combine(ToolDir, "sdk_clients.mjs"), JsonSerializer.Serialize(request)], TimeSpan.FromMinutes(2), ToolDir);
        Assert.True(code == 0, $"node sdk_clients.mjs {scenario} failed with exit code {code}: {stderr}");
        return JsonDocument.Parse(stdout).RootElement.Clone();
    }

    /// <summary>Fails with the SDK's error when the scenario threw.</summary>
    public static JsonElement Ok(JsonElement result)
    {
        Assert.False(result.TryGetProperty("error", out var e), $"the SDK threw: {e}");
        return result;
    }

    private static void EnsureInstalled() =>
        ExternalProcess.EnsureNpmPackages(Node, SkipMessage, ToolDir, "openai", "@mistralai/mistralai");
}
