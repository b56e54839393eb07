using System.Diagnostics;
using System.Text.Json;

namespace Bora.Clients.Tests;

/// <summary>
/// Runs tests/tools/sdk-clients/sdk_clients.mjs (the npm packages openai and @mistralai/mistralai) with node.
/// Needs <c>node</c> on PATH (the tests skip without it); installs the pinned packages with <c>npm ci</c> when
/// node_modules is absent (clean checkouts, CI).
/// </summary>
internal static class NodeSdk
{
    private static readonly Lock InstallLock = new();

    public static string ToolDir => Path.Combine(TestPaths.RepoRoot, "tests", "tools", "sdk-clients");

    public static string? Node { get; } = FindOnPath("node");

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
        var (code, stdout, stderr) = Exec(Node!, [Path.Combine(ToolDir, "sdk_clients.mjs"), JsonSerializer.Serialize(request)], TimeSpan.FromMinutes(2));
        Assert.True(code == 0, $"node sdk_clients.mjs {scenario} failed with exit code {code}: {stderr}");
        return JsonDocument.Parse(stdout).RootElement.Clone();
    }

    /// <summary>Fails with the SDK's error when the scenario threw.</summary>
    public static JsonElement Ok(JsonElement result)
    {
        Assert.False(result.TryGetProperty("error", out var e), $"the SDK threw: {e}");
        return result;
    }

    private static void EnsureInstalled()
    {
        Assert.True(Node is not null, SkipMessage);
        lock (InstallLock)
        {
            if (Directory.Exists(Path.Combine(ToolDir, "node_modules", "openai")) && Directory.Exists(Path.Combine(ToolDir, "node_modules", "@mistralai", "mistralai")))
            {
                return;
            }
            var npm = FindOnPath("npm") ?? Path.Combine(Path.GetDirectoryName(Node)!, "npm");
            Assert.True(File.Exists(npm), $"node is at {Node} but npm was not found; run `npm ci` in {ToolDir}");
            var (code, _, stderr) = Exec(npm, ["ci", "--no-audit", "--no-fund"], TimeSpan.FromMinutes(5));
            Assert.True(code == 0, $"`npm ci` in {ToolDir} failed with exit code {code}: {stderr}");
        }
    }

    private static (int Code, string Stdout, string Stderr) Exec(string exe, string[] args, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(exe)
        {
            WorkingDirectory = ToolDir,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start " + exe);
        var stderrTask = p.StandardError.ReadToEndAsync();
        var stdoutTask = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{exe} {string.Join(' ', args)} did not finish within {timeout}");
        }
        return (p.ExitCode, stdoutTask.Result, stderrTask.Result);
    }

    private static string? FindOnPath(string name)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            var candidate = Path.Combine(dir, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
            if (OperatingSystem.IsWindows() && File.Exists(candidate + ".exe"))
            {
                return candidate + ".exe";
            }
        }
        return null;
    }
}
