using System.Text.Json;
using Xunit.Abstractions;

namespace Bora.Reference.Tests.Quality;

/// <summary>The CLI verbs of this area end to end: quantize, perplexity (plain, --save-base / --kl-base) and bench.</summary>
public sealed class QualityCliTests(ITestOutputHelper output)
{
    private static readonly string Stories = TestPaths.Shared("models", "stories260K", "stories260K.gguf");
    private static readonly string Corpus = TestPaths.Shared("corpus", "tinystories_validation_100.txt");

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Bora.Cli.Program.Run(args, stdout, stderr, TextReader.Null);
        return (code, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public void QuantizePerplexityAndBenchRunEndToEnd()
    {
        if (!File.Exists(Stories) || !File.Exists(Corpus))
        {
            output.WriteLine("skipped: stories260K or the corpus is absent");
            return;
        }
        var dir = TestPaths.NewTempDir("quality-cli");
        string q8 = Path.Combine(dir, "q8.gguf");
        var q = Run("quantize", Stories, q8, "--type", "q8_0", "--threads", "2", "--eval-file", Corpus, "--ctx", "64", "--chunks", "2");
        output.WriteLine(q.Out + q.Err);
        Assert.Equal(0, q.Code);
        Assert.True(File.Exists(q8));
        Assert.Contains("fallback F16", q.Out, StringComparison.Ordinal); // ffn_down rows of 172
        Assert.Contains("mean KL", q.Out, StringComparison.Ordinal);
        Assert.Contains("100.0%", q.Err, StringComparison.Ordinal); // the progress bar reached the end

        var bad = Run("quantize", Stories, Path.Combine(dir, "x.gguf"), "--type", "q5_1");
        Assert.Equal(2, bad.Code);
        Assert.Contains("q4_k", bad.Err, StringComparison.Ordinal);

        string basePath = Path.Combine(dir, "base.kld");
        var ppl = Run("perplexity", "--model", Stories, "--file", Corpus, "--ctx", "64", "--chunks", "3", "--save-base", basePath);
        Assert.Equal(0, ppl.Code);
        Assert.Matches(@"\[1\][0-9.]+,\[2\][0-9.]+,\[3\][0-9.]+,", ppl.Out);
        Assert.Matches(@"Final estimate: PPL = [0-9.]+ \+/- [0-9.]+", ppl.Out);
        var kl = Run("perplexity", "--model", q8, "--kl-base", basePath);
        Assert.Equal(0, kl.Code);
        Assert.Contains("Mean KLD", kl.Out, StringComparison.Ordinal);
        Assert.Equal(2, Run("perplexity", "--model", q8, "--kl-base", basePath, "--kl-reference", Stories).Code);

        var bench = Run("bench", "--model", q8, "--threads", "1", "--prompt-tokens", "16", "--gen-tokens", "4", "--repeats", "1", "--json");
        Assert.Equal(0, bench.Code);
        using var json = JsonDocument.Parse(bench.Out);
        Assert.True(json.RootElement.GetProperty("bora").GetProperty("prefill_tok_s").GetDouble() > 0);
        Assert.True(json.RootElement.GetProperty("bora").GetProperty("decode_tok_s").GetDouble() > 0);
        Assert.Equal(2, Run("bench", "--model", q8, "--compare-llama-cpp").Code);
        Directory.Delete(dir, recursive: true);
    }
}
