using System.Diagnostics;

namespace Bora;

/// <summary>
/// Runs the external programs of the tests (Python and Node oracles, SDK scripts): finds them on PATH, installs a
/// tool folder's pinned npm packages, runs one with its output captured and a time limit.
/// </summary>
internal static class ExternalProcess
{
    private static readonly Lock InstallLock = new();

    /// <summary>The path of the executable <paramref name="name"/> in a PATH folder (also name.exe on Windows), or null.</summary>
    public static string? FindOnPath(string name)
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

    /// <summary>
    /// Runs <paramref name="exe"/> with <paramref name="args"/> (each one argument) and returns its exit code, stdout
    /// and stderr (read together, so neither pipe fills and blocks it). Past <paramref name="timeout"/> it kills the
    /// process tree and fails the test with <paramref name="timeoutMessage"/> (default: the command line and the limit).
    /// <paramref name="workingDirectory"/>: its working folder; null: this process's.
    /// </summary>
    public static (int Code, string Stdout, string Stderr) Run(string exe, IEnumerable<string> args, TimeSpan timeout, string? workingDirectory = null, string? timeoutMessage = null)
    {
        var psi = new ProcessStartInfo(exe)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (workingDirectory is not null)
        {
            psi.WorkingDirectory = workingDirectory;
        }
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
            Assert.Fail(timeoutMessage ?? $"{exe} {string.Join(' ', psi.ArgumentList)} did not finish within {timeout}");
        }
        return (p.ExitCode, stdoutTask.Result, stderrTask.Result);
    }

    /// <summary>
    /// Makes sure the npm packages of <paramref name="toolDir"/> are installed: when any of
    /// <paramref name="packages"/> is missing under its node_modules (clean checkouts, CI), runs <c>npm ci</c> there
    /// (the pinned versions of package-lock.json). Fails the test with <paramref name="skipMessage"/> when
    /// <paramref name="node"/> (node's path) is null.
    /// </summary>
    public static void EnsureNpmPackages(string? node, string skipMessage, string toolDir, params string[] packages)
    {
        Assert.True(node is not null, skipMessage);
        lock (InstallLock)
        {
            if (packages.All(p => Directory.Exists(Path.Combine([toolDir, "node_modules", .. p.Split('/')]))))
            {
                return;
            }
            var npm = FindOnPath("npm") ?? Path.Combine(Path.GetDirectoryName(node)!, "npm");
            Assert.True(File.Exists(npm), $"node is at {node} but npm was not found; run `npm ci` in {toolDir}");
            var (code, _, stderr) = Run(npm, ["ci", "--no-audit", "--no-fund"], TimeSpan.FromMinutes(5), toolDir);
            Assert.True(code == 0, $"`npm ci` in {toolDir} failed with exit code {code}: {stderr}");
        }
    }
}
