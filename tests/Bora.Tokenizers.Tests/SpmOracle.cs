using System.Text;
using System.Text.Json;

namespace Bora.Tokenizers.Tests;

/// <summary>What Google's SentencePiece (via tests/tools/spm/spm_oracle.py) says for a batch.</summary>
internal sealed record OracleResult(string Version, int[][] EncodedIds, string[] EncodedText, string[] Decoded);

/// <summary>Runs the Python oracle once per batch (one process), with /usr/bin/python3.</summary>
internal static class SpmOracle
{
    public const string Python = "/usr/bin/python3";
    public const string InstallHint = "apt-get install -y python3-sentencepiece";

    public static string Script => Path.Combine(TestPaths.RepoRoot, "tests", "tools", "spm", "spm_oracle.py");

    public static OracleResult Run(string modelPath, IReadOnlyList<string> texts, IReadOnlyList<int[]> decodeIds)
    {
        Assert.True(File.Exists(Python), $"{Python} is missing; the SentencePiece oracle tests need it with the sentencepiece module ({InstallHint}).");
        string dir = TestPaths.NewTempDir("spm-oracle");
        try
        {
            string request = Path.Combine(dir, "request.json");
            // Every non-ASCII character escaped as \uXXXX, so the lone surrogates of the corpus survive.
            File.WriteAllText(request, OracleJson.Request(texts, decodeIds), new UTF8Encoding(false));
            var (code, stdout, stderr) = ExternalProcess.Run(Python, [Script, modelPath, request], TimeSpan.FromMinutes(2),
                timeoutMessage: $"the SentencePiece oracle did not finish within 2 minutes for {modelPath}");
            if (code == 3 || stderr.Contains("No module named", StringComparison.Ordinal))
            {
                Assert.Fail($"{Python} lacks Google's sentencepiece module; install it with `{InstallHint}`. ({stderr.Trim()})");
            }
            Assert.True(code == 0, $"spm_oracle.py failed with exit code {code} for {modelPath}: {stderr}");

            using var doc = JsonDocument.Parse(stdout);
            var root = doc.RootElement;
            var enc = root.GetProperty("encode");
            var ids = new int[enc.GetArrayLength()][];
            var texts2 = new string[ids.Length];
            int i = 0;
            foreach (var e in enc.EnumerateArray())
            {
                ids[i] = e.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32()).ToArray();
                texts2[i] = e.GetProperty("text").GetString()!;
                i++;
            }
            var decoded = root.GetProperty("decode").EnumerateArray().Select(x => x.GetString()!).ToArray();
            Assert.Equal(texts.Count, ids.Length);
            Assert.Equal(decodeIds.Count, decoded.Length);
            return new OracleResult(root.GetProperty("sentencepiece").GetString()!, ids, texts2, decoded);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
