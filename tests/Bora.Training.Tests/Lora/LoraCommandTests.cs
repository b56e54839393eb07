using Bora.Cli;
using Bora.Loading;
using Bora.Model.Lora;
using Bora.Training.Lora;

namespace Bora.Training.Tests.Lora;

/// <summary><c>bora finetune</c>, <c>bora generate --lora</c> and <c>bora merge-lora</c> end to end.</summary>
public sealed class LoraCommandTests : IDisposable
{
    /// <summary>Merged F32 weights against the run-time adapter on the F32 base, as LoraAdapterTests.MergeTolerance.</summary>
    private const double MergeTolerance = 1e-4;

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "bora-lora-cli-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir))
        {
            Directory.Delete(_dir, recursive: true);
        }
    }

    [Fact]
    public void Finetune_then_generate_with_the_adapter_and_merge_it()
    {
        var gguf = TestPaths.Shared("models", "stories260K", "stories260K.gguf");
        if (!File.Exists(gguf))
        {
            Console.WriteLine("skipped: shared test data is absent");
            return;
        }
        Directory.CreateDirectory(_dir);
        var data = Path.Combine(_dir, "train.jsonl");
        File.WriteAllLines(data,
        [
            """{"messages": [{"role": "user", "content": "Who is Lily?"}, {"role": "assistant", "content": "Lily is a little girl."}]}""",
            "",
            """{"messages": [{"role": "user", "content": "What did Tom see?"}, {"role": "assistant", "content": "Tom saw a big dog."}]}""",
        ]);
        var adapter = Path.Combine(_dir, "adapter");
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int rc = Program.Run(["finetune", "--model", gguf, "--data", data, "--out", adapter, "--rank", "4", "--alpha", "8",
            "--targets", "q,k,v,o,ffn", "--steps", "3", "--lr", "1e-2", "--batch", "2", "--threads", "2"], stdout, stderr, TextReader.Null);
        Assert.True(rc == 0, stderr.ToString());
        Assert.Contains("step 3: train loss", stdout.ToString(), StringComparison.Ordinal);
        Assert.Contains("tok/s", stderr.ToString(), StringComparison.Ordinal);
        Assert.Contains("ETA", stderr.ToString(), StringComparison.Ordinal);
        Assert.True(File.Exists(Path.Combine(adapter, LoraAdapter.WeightsFileName)));
        Assert.True(File.Exists(Path.Combine(adapter, LoraAdapter.ConfigFileName)));

        var gen = new StringWriter();
        rc = Program.Run(["generate", "--model", gguf, "--lora", adapter, "--prompt", "Once", "--max-tokens", "4", "--seed", "1", "--json"], gen, stderr, TextReader.Null);
        Assert.True(rc == 0, stderr.ToString());
        Assert.Contains("\"tokens\"", gen.ToString(), StringComparison.Ordinal);

        var merged = Path.Combine(_dir, "merged");
        rc = Program.Run(["merge-lora", "--model", gguf, "--lora", adapter, "--out", merged], stdout, stderr, TextReader.Null);
        Assert.True(rc == 0, stderr.ToString());
        var baseModel = ModelLoader.Load(gguf);
        var withAdapter = baseModel.WithLora(adapter);
        var mergedModel = ModelLoader.Load(merged);
        int[] tokens = [1, 403, 407, 261, 378, 9, 30];
        var expected = LoraTestHelpers.InferenceLogits(withAdapter.Model.Weights, tokens);
        var actual = LoraTestHelpers.InferenceLogits(mergedModel.Model.Weights, tokens);
        Assert.True(LoraTestHelpers.MaxAbsDiff<float, float>(actual, expected) < MergeTolerance);
        Assert.True(LoraTestHelpers.MaxAbsDiff<float, float>(actual, LoraTestHelpers.InferenceLogits(baseModel.Model.Weights, tokens)) > 1e-3,
            "three steps at lr 1e-2 must move the logits");

        var err = new StringWriter();
        Assert.Equal(1, Program.Run(["merge-lora", "--model", gguf, "--lora", adapter, "--out", merged], stdout, err, TextReader.Null));
        Assert.Contains("already exists", err.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void Merging_into_a_safetensors_model_folder_matches_the_runtime_adapter()
    {
        var tokenizer = TestPaths.Shared("models", "stories260K", "tok512.model");
        if (!File.Exists(tokenizer))
        {
            Console.WriteLine("skipped: shared test data is absent");
            return;
        }
        var config = TrainingTestModels.Moe() with { VocabSize = 512 };
        var baseDir = Path.Combine(_dir, "base");
        Checkpoint.Save(baseDir, TrainingTestModels.Random<float>(config, 5), null, tokenizer);
        var lora = LoraParameters<float>.Create(config, LoraTestHelpers.AllTargets, 3, 6, 6);
        LoraTestHelpers.RandomizeB(lora, 7);
        var adapterDir = Path.Combine(_dir, "adapter");
        lora.ToAdapter(baseDir).Save(adapterDir, config);
        var outDir = Path.Combine(_dir, "merged");
        LoraMerge.Merge(baseDir, adapterDir, outDir);
        Assert.DoesNotContain(Directory.EnumerateDirectories(_dir), d => d.Contains(".tmp-", StringComparison.Ordinal));
        int[] tokens = [1, 5, 300, 42, 7, 8];
        var expected = LoraTestHelpers.InferenceLogits(ModelLoader.Load(baseDir).WithLora(adapterDir).Model.Weights, tokens);
        var actual = LoraTestHelpers.InferenceLogits(ModelLoader.Load(outDir).Model.Weights, tokens);
        Assert.True(LoraTestHelpers.MaxAbsDiff<float, float>(actual, expected) < MergeTolerance);
    }
}
