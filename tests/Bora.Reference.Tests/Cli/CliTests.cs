using System.Text.Json;
using Bora.Cli;
using Xunit.Abstractions;

namespace Bora.Reference.Tests.Cli;

/// <summary>The <c>bora</c> command end to end (in-process, through <see cref="Program.Run"/>).</summary>
public sealed class CliTests(ITestOutputHelper output)
{
    private static readonly string ModelDir = TestPaths.Shared("models", "stories260K");
    private static readonly string Gguf = Path.Combine(ModelDir, "stories260K.gguf");

    private static (int Code, string Out, string Err) Bora(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Program.Run(args, stdout, stderr, new StringReader(""));
        return (code, stdout.ToString(), stderr.ToString());
    }

    private bool Absent()
    {
        if (File.Exists(Gguf))
        {
            return false;
        }
        output.WriteLine($"skipped: {Gguf} is absent");
        return true;
    }

    [Fact]
    public void GenerateJson_EmptyPromptIsBosOnly_AndGreedyIsRunCsStory()
    {
        if (Absent())
        {
            return;
        }
        var (code, stdout, stderr) = Bora("generate", "--model", Gguf, "--prompt", "", "--temperature", "0", "--max-tokens", "256", "--json");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        var root = json.RootElement;
        Assert.Equal([1], root.GetProperty("prompt_tokens").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal(256, root.GetProperty("tokens").GetArrayLength());
        string expected = File.ReadAllText(Path.Combine(ModelDir, "runc-greedy-from-bos.txt")).TrimEnd('\n');
        Assert.Equal(expected, root.GetProperty("text").GetString());
    }

    /// <summary>--kv-type f32 and f16 both run; 32 greedy tokens of this model agree (its logit gaps are far above half rounding).</summary>
    [Fact]
    public void Generate_TakesEitherKvType()
    {
        if (Absent())
        {
            return;
        }
        string[] Tokens(string kvType)
        {
            var (code, stdout, stderr) = Bora("generate", "--model", Gguf, "--prompt", "Once upon a time", "--temperature", "0", "--max-tokens", "32", "--kv-type", kvType, "--json");
            Assert.True(code == 0, stderr);
            using var json = JsonDocument.Parse(stdout);
            return [.. json.RootElement.GetProperty("tokens").EnumerateArray().Select(e => e.GetRawText())];
        }
        var f32 = Tokens("f32");
        Assert.Equal(32, f32.Length);
        Assert.Equal(f32, Tokens("F16"));
    }

    [Fact]
    public void Generate_StreamsTextToStdout_AndSummaryToStderr()
    {
        if (Absent())
        {
            return;
        }
        var (code, stdout, stderr) = Bora("generate", "--model", Gguf, "--prompt", "Once upon a time", "--max-tokens", "20", "--seed", "42");
        Assert.True(code == 0, stderr);
        Assert.False(string.IsNullOrWhiteSpace(stdout));
        Assert.Contains("prefill", stderr, StringComparison.Ordinal);
        Assert.Contains("decode", stderr, StringComparison.Ordinal);
        Assert.Contains("tok/s", stderr, StringComparison.Ordinal);
        // Same seed, same text.
        var again = Bora("generate", "--model", Gguf, "--prompt", "Once upon a time", "--max-tokens", "20", "--seed", "42");
        Assert.Equal(stdout, again.Out);
    }

    [Fact]
    public void Generate_StopStringEndsTheText()
    {
        if (Absent())
        {
            return;
        }
        var (code, stdout, stderr) = Bora("generate", "--model", Gguf, "--prompt", "", "--temperature", "0", "--max-tokens", "256", "--stop", "Lily", "--json");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        // The greedy story is "Once upon a time, there was a little girl named Lily. ..."
        Assert.Equal("Once upon a time, there was a little girl named ", json.RootElement.GetProperty("text").GetString());
    }

    [Fact]
    public void Chat_AnswersEachLineUntilAnEmptyOne()
    {
        if (Absent())
        {
            return;
        }
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var stdin = new StringReader("Tell me a story\nAnd another one\n\nnever read\n");
        int code = Program.Run(["chat", "--model", Gguf, "--max-tokens", "16", "--temperature", "0"], stdout, stderr, stdin);
        Assert.True(code == 0, stderr.ToString());
        // Two answers, then the empty line ends the loop before "never read" is consumed.
        Assert.False(string.IsNullOrWhiteSpace(stdout.ToString()));
        Assert.Equal(3, stderr.ToString().Split("> ").Length - 1);
        Assert.Equal("never read", stdin.ReadLine());
    }

    [Fact]
    public void ChatRender_GoldenSampleOfMistralCommon()
    {
        var sample = TestPaths.Shared("tokenizers", "mistral", "mistral-common-samples", "get_weather_full");
        var model = TestPaths.Shared("tokenizers", "mistral", "mistral_instruct_tokenizer_240323.model.v3");
        if (!File.Exists(model))
        {
            output.WriteLine($"skipped: {model} is absent");
            return;
        }
        var (code, stdout, stderr) = Bora("chat-render", "--model", model, "--request", Path.Combine(sample, "sample.json"), "--json");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        using var expected = JsonDocument.Parse(File.ReadAllText(Path.Combine(sample, "tokens_v3.json")));
        Assert.Equal("v3", json.RootElement.GetProperty("version").GetString());
        Assert.Equal(
            expected.RootElement.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()),
            json.RootElement.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()));
    }

    [Fact]
    public void GenerateChat_RendersThePromptInTheModelsChatFormat()
    {
        if (Absent())
        {
            return;
        }
        var (code, stdout, stderr) = Bora("generate", "--model", Gguf, "--chat", "--prompt", "Hi", "--max-tokens", "4", "--json");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        // stories260K has no control tokens: Mistral's v1 format, "<s>[INST] Hi [/INST]" as text after BOS.
        var tokenize = Bora("tokenize", "--model", Gguf, "--text", "[INST] Hi [/INST]", "--json");
        using var ids = JsonDocument.Parse(tokenize.Out);
        Assert.Equal(
            ids.RootElement.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()),
            json.RootElement.GetProperty("prompt_tokens").EnumerateArray().Select(e => e.GetInt32()));
    }

    [Fact]
    public void TokenizeJson_MatchesTheTokenizer()
    {
        if (Absent())
        {
            return;
        }
        var (code, stdout, stderr) = Bora("tokenize", "--model", Gguf, "--text", "Hello world", "--json");
        Assert.True(code == 0, stderr);
        Assert.Equal("{\"ids\":[1,346,306,414,263,304,341]}", stdout.Trim());
        var noBos = Bora("tokenize", "--model", Path.Combine(ModelDir, "tok512.model"), "--text", "Hello world", "--json", "--no-bos");
        Assert.Equal("{\"ids\":[346,306,414,263,304,341]}", noBos.Out.Trim());
    }

    [Fact]
    public void Inspect_PrintsConfigTensorsAndParameterCount()
    {
        if (Absent())
        {
            return;
        }
        var (code, stdout, stderr) = Bora("inspect", Gguf);
        Assert.True(code == 0, stderr);
        Assert.Contains("dim=64 layers=5 heads=8 kv_heads=4 head_dim=8 hidden=172 vocab=512", stdout, StringComparison.Ordinal);
        Assert.Contains("blk.0.attn_k.weight", stdout, StringComparison.Ordinal);
        Assert.Contains("(32, 64)", stdout, StringComparison.Ordinal);
        // 292,800 parameters: 2 x 512 x 64 embeddings/output + 64 final norm + 5 layers x 45,632.
        Assert.Contains("292,800", stdout, StringComparison.Ordinal);

        var json = Bora("inspect", Gguf, "--json");
        using var doc = JsonDocument.Parse(json.Out);
        Assert.Equal(292_800, doc.RootElement.GetProperty("parameters").GetInt64());
        Assert.Equal(48, doc.RootElement.GetProperty("tensors").GetArrayLength());
    }

    [Fact]
    public void BadInput_GivesAClearMessageAndNonZeroExit()
    {
        var dir = TestPaths.NewTempDir("cli-bad");
        // A truncated GGUF: the header promises more than the file holds.
        var truncated = Path.Combine(dir, "truncated.gguf");
        if (File.Exists(Gguf))
        {
            File.WriteAllBytes(truncated, File.ReadAllBytes(Gguf)[..5000]);
            var (code, _, stderr) = Bora("generate", "--model", truncated, "--prompt", "hi");
            Assert.Equal(1, code);
            Assert.Contains(truncated, stderr, StringComparison.Ordinal);
        }
        var missing = Bora("generate", "--model", Path.Combine(dir, "nope.gguf"), "--prompt", "hi");
        Assert.Equal(1, missing.Code);
        Assert.Contains("nope.gguf", missing.Err, StringComparison.Ordinal);

        var notAModel = Path.Combine(dir, "empty-folder");
        Directory.CreateDirectory(notAModel);
        var folder = Bora("inspect", notAModel);
        Assert.Equal(1, folder.Code);
        Assert.Contains("config.json", folder.Err, StringComparison.Ordinal);

        var typo = Bora("generate", "--model", Gguf, "--temprature", "0.5");
        Assert.Equal(2, typo.Code);
        Assert.Contains("--temprature", typo.Err, StringComparison.Ordinal);

        var badNumber = Bora("generate", "--model", Gguf, "--top-p", "2");
        Assert.Equal(2, badNumber.Code);
        Assert.Contains("top", badNumber.Err, StringComparison.OrdinalIgnoreCase);

        var badKvType = Bora("generate", "--model", Gguf, "--prompt", "hi", "--kv-type", "q8_0");
        Assert.Equal(2, badKvType.Code);
        Assert.Contains("--kv-type 'q8_0'", badKvType.Err, StringComparison.Ordinal);
        Assert.Contains("f16 or f32", badKvType.Err, StringComparison.Ordinal);

        Assert.Equal(2, Bora("frobnicate").Code);
        Directory.Delete(dir, recursive: true);
    }
}
