using Bora.Cli;
using Bora.Loading;

namespace Bora.Training.Tests;

public sealed class TrainCommandTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "bora-train-cli-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir))
        {
            Directory.Delete(_dir, recursive: true);
        }
    }

    [Fact]
    public void Train_writes_a_model_folder_that_generate_loads_and_resume_continues()
    {
        var tokenizer = TestPaths.Shared("models", "stories260K", "tok512.model");
        var corpus = TestPaths.Shared("corpus", "tinystories_validation_100.txt");
        if (!File.Exists(tokenizer) || !File.Exists(corpus))
        {
            Console.WriteLine("skipped: shared test data is absent");
            return;
        }
        Directory.CreateDirectory(_dir);
        var config = Path.Combine(_dir, "model.json");
        File.WriteAllText(config, """
            {"dim": 16, "n_layers": 1, "head_dim": 8, "hidden_dim": 24, "n_heads": 2, "n_kv_heads": 1, "norm_eps": 1e-5,
             "vocab_size": 512, "rope_theta": 10000, "max_seq_len": 64, "sliding_window": 8, "moe": {"num_experts": 4, "num_experts_per_tok": 2}}
            """);
        var outDir = Path.Combine(_dir, "out");
        string[] common = ["train", "--config", config, "--data", corpus, "--tokenizer", tokenizer, "--out", outDir,
            "--batch", "2", "--seq-len", "16", "--eval-every", "2", "--eval-batches", "2", "--threads", "2"];
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        Assert.Equal(0, Program.Run([.. common, "--steps", "2"], stdout, stderr, TextReader.Null));
        Assert.Contains("step 2: train loss", stdout.ToString(), StringComparison.Ordinal);
        Assert.Contains("tok/s", stderr.ToString(), StringComparison.Ordinal);
        Assert.Contains("ETA", stderr.ToString(), StringComparison.Ordinal);

        var loaded = ModelLoader.Load(outDir);
        Assert.Equal(4, loaded.Config.NExperts);
        Assert.Equal(8, loaded.Config.SlidingWindow);

        stdout = new StringWriter();
        stderr = new StringWriter();
        Assert.Equal(0, Program.Run([.. common, "--steps", "4", "--resume"], stdout, stderr, TextReader.Null));
        Assert.Contains("resumed", stderr.ToString(), StringComparison.Ordinal);
        Assert.Contains("step 4: train loss", stdout.ToString(), StringComparison.Ordinal);

        var gen = new StringWriter();
        Assert.Equal(0, Program.Run(["generate", "--model", outDir, "--prompt", "Once", "--max-tokens", "4", "--seed", "1"], gen, new StringWriter(), TextReader.Null));
    }

    [Fact]
    public void Missing_tokenizer_is_a_usage_error()
    {
        var stderr = new StringWriter();
        Assert.Equal(2, Program.Run(["train", "--config", "x.json", "--data", "c.txt", "--out", _dir], new StringWriter(), stderr, TextReader.Null));
        Assert.Contains("--tokenizer", stderr.ToString(), StringComparison.Ordinal);
    }
}
