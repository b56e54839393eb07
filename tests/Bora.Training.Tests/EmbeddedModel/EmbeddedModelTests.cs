using Bora.Cli;
using Bora.Loading;
using Bora.Tokenizers;

namespace Bora.Training.Tests.EmbeddedModel;

/// <summary>
/// The embedded default model, models/bora-kjv: its shape, its validation perplexity on the held-out end of
/// the King James Bible (so a regression in loading, tokenization or the forward pass fails), and the CLI
/// using it when no --model is given. Numbers come from models/bora-kjv/README.md.
/// </summary>
public sealed class EmbeddedModelTests
{
    /// <summary>--val-fraction of the training recipe: the last 5% of the corpus's tokens are never trained on.</summary>
    private const double ValidationFraction = 0.05;

    /// <summary>
    /// Validation windows of T = 256 tokens evaluated (4,096 tokens): the same windows as the training run's
    /// "validation loss" line (--eval-batches 16), which keeps the test around a second.
    /// </summary>
    private const int Windows = 16;

    /// <summary>
    /// Perplexity measured on those 16 windows by this test's inference forward pass when the model was committed
    /// (README.md, "Validation"); the training log's last validation loss gives the same value.
    /// </summary>
    private const double MeasuredPerplexity = 34.970;

    /// <summary>The bound the test asserts: the measured perplexity x 1.05, recorded in README.md.</summary>
    private const double PerplexityBound = 36.72;

    /// <summary>
    /// Mean cross-entropy of the inference forward pass (F32 kernels, KV cache) against the training forward
    /// pass on the same windows: both are float32 with different summation orders; they agreed to 5 decimals
    /// (3.55450 both) when measured, so 1e-3 leaves room for other SIMD widths and thread counts.
    /// </summary>
    private const double TrainingInferenceLossTolerance = 1e-3;

    /// <summary>Largest committed weight file: the issue asks for at most ~10 MB of weights.</summary>
    private const long MaxWeightBytes = 10_000_000;

    private static string ModelFolder => Path.Combine(TestPaths.RepoRoot, "models", "bora-kjv");

    private static string Corpus => TestPaths.Shared("corpus", "kjv.txt");

    [Fact]
    public void Embedded_model_is_a_small_mixtral_with_its_own_tokenizer()
    {
        var loaded = ModelLoader.Load(ModelFolder);
        var c = loaded.Config;
        Assert.True(c.NExperts >= 4, $"experts: {c.NExperts}");
        Assert.Equal(2, c.NExpertsPerToken);
        Assert.True(c.NKvHeads < c.NHeads, $"grouped-query attention: {c.NHeads} query heads, {c.NKvHeads} KV heads");
        Assert.NotNull(c.SlidingWindow);
        Assert.True(c.SlidingWindow < c.MaxSeqLen, $"window {c.SlidingWindow}, context {c.MaxSeqLen}");
        Assert.Equal(c.VocabSize, loaded.Tokenizer.VocabSize);
        long bytes = new FileInfo(Path.Combine(ModelFolder, "consolidated.safetensors")).Length;
        Assert.True(bytes <= MaxWeightBytes, $"weights are {bytes} bytes");
        // Weights only: no optimizer moments in the committed file.
        using var store = ModelLoader.OpenWeights(loaded.Source);
        Assert.DoesNotContain(store.Tensors, t => t.Name.StartsWith("optimizer.", StringComparison.Ordinal));
        // Its own BPE vocabulary: common King James words are single pieces.
        Assert.Single(loaded.Tokenizer.Encode(" LORD", addBos: false));
        Assert.Single(loaded.Tokenizer.Encode(" unto", addBos: false));
    }

    [Fact]
    public void Validation_perplexity_on_held_out_kjv_is_below_the_recorded_bound()
    {
        if (!File.Exists(Corpus))
        {
            Console.WriteLine($"skipped: {Corpus} is absent");
            return;
        }
        var loaded = ModelLoader.Load(ModelFolder);
        // The split of the recipe: the corpus tokenized exactly as `bora train` does, last 5% held out.
        var data = TokenDataset.Split(TrainCommand.Tokenize(Corpus, loaded.Tokenizer), ValidationFraction);
        int t = loaded.Config.MaxSeqLen;
        Assert.True(data.Validation.Length > Windows * t + 1, $"validation has {data.Validation.Length} tokens");

        double inference = InferenceLoss(loaded, data.Validation, t, Windows);
        double training = TrainingLoss(data.Validation, t, Windows);
        double perplexity = Math.Exp(inference);
        Console.WriteLine($"bora-kjv validation: {Windows} x {t} tokens, loss {inference:F5} (training forward {training:F5}), perplexity {perplexity:F3}");
        Assert.InRange(Math.Abs(inference - training), 0, TrainingInferenceLossTolerance);
        Assert.True(perplexity < PerplexityBound, $"validation perplexity {perplexity:F3} is not below the bound {PerplexityBound} (measured {MeasuredPerplexity} when committed)");
    }

    [Fact]
    public void Validation_text_lies_after_the_tokenizers_training_text()
    {
        if (!File.Exists(Corpus))
        {
            Console.WriteLine($"skipped: {Corpus} is absent");
            return;
        }
        var tokenizer = ModelLoader.LoadTokenizer(Path.Combine(ModelFolder, "tokenizer.model"));
        var data = TokenDataset.Split(TrainCommand.Tokenize(Corpus, tokenizer), ValidationFraction);
        // The first whole line of the validation tokens, found in the corpus (the tokenizer collapses the
        // verse lines' leading double space, so it is matched without it: "16 For by him ...\n").
        var head = tokenizer.Decode([.. data.Validation.Take(200).Select(id => new TokenId(id))]);
        var lines = head.Split('\n');
        Assert.True(lines.Length >= 3, $"no whole line in the first 200 validation tokens: '{head}'");
        var firstLine = lines[1].Trim();
        var text = File.ReadAllText(Corpus);
        int at = text.IndexOf(" " + firstLine + "\n", StringComparison.Ordinal);
        Assert.True(at >= 0, $"validation line not found in the corpus: '{firstLine}'");
        // The tokenizer was trained on the text before "Philippians 1" (README.md, "Recipe").
        int tokenizerEnd = text.IndexOf("\nPhilippians 1\n", StringComparison.Ordinal);
        Assert.True(tokenizerEnd > 0 && at > tokenizerEnd, $"validation starts at char {at}, the tokenizer's text ends at {tokenizerEnd}");
    }

    [Fact]
    public void Generate_without_model_uses_the_embedded_model()
    {
        // The build copies models/bora-kjv next to the assemblies (here: the test's output folder).
        Assert.True(File.Exists(Path.Combine(AppContext.BaseDirectory, "models", "bora-kjv", "consolidated.safetensors")));
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int rc = Program.Run(["generate", "--prompt", "In the beginning", "--max-tokens", "40", "--seed", "1"], stdout, stderr, TextReader.Null);
        Assert.True(rc == 0, stderr.ToString());
        Assert.Contains("embedded default model bora-kjv", stderr.ToString(), StringComparison.Ordinal);
        Assert.Contains("40 generated", stderr.ToString(), StringComparison.Ordinal);
        var text = stdout.ToString();
        Assert.StartsWith("In the beginning", text, StringComparison.Ordinal);
        var continuation = text["In the beginning".Length..];
        Assert.True(continuation.Count(char.IsLetter) >= 40, $"continuation: '{continuation}'");
    }

    [Fact]
    public void Missing_embedded_model_is_a_clear_error()
    {
        var dir = TestPaths.NewTempDir("no-default-model");
        try
        {
            var e = Assert.Throws<DirectoryNotFoundException>(() => DefaultModel.Locate(dir));
            Assert.Contains("--model", e.Message, StringComparison.Ordinal);
            Assert.Contains(Path.Combine(dir, "models", "bora-kjv"), e.Message, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Explicit_model_overrides_the_embedded_one()
    {
        var gguf = TestPaths.Shared("models", "stories260K", "stories260K.gguf");
        if (!File.Exists(gguf))
        {
            Console.WriteLine($"skipped: {gguf} is absent");
            return;
        }
        var stderr = new StringWriter();
        Assert.Equal(0, Program.Run(["generate", "--model", gguf, "--prompt", "Once", "--max-tokens", "4", "--seed", "1"], new StringWriter(), stderr, TextReader.Null));
        Assert.DoesNotContain("embedded default model", stderr.ToString(), StringComparison.Ordinal);
    }

    /// <summary>
    /// Mean next-token cross-entropy (nats) of the inference model over <paramref name="windows"/> consecutive
    /// non-overlapping windows of <paramref name="t"/> tokens, each run from an empty cache (window w: tokens
    /// w*t .. w*t+t-1 predict w*t+1 .. w*t+t), as <see cref="Trainer.ValidationLoss"/> windows them.
    /// </summary>
    private static double InferenceLoss(LoadedModel loaded, int[] tokens, int t, int windows)
    {
        int v = loaded.Config.VocabSize;
        var logits = new float[t * v]; // (T, V)
        var ids = new TokenId[t];
        double sum = 0;
        for (int w = 0; w < windows; w++)
        {
            for (int i = 0; i < t; i++)
            {
                ids[i] = new TokenId(tokens[w * t + i]);
            }
            var cache = loaded.Model.CreateCache(t);
            loaded.Model.Forward(ids, cache, logits);
            for (int i = 0; i < t; i++)
            {
                sum += CrossEntropy(logits.AsSpan(i * v, v), tokens[w * t + i + 1]);
            }
        }
        return sum / (windows * t);
    }

    /// <summary>The same windows through the training forward pass (weights read by <see cref="Checkpoint.LoadParameters"/>).</summary>
    private static double TrainingLoss(int[] tokens, int t, int windows)
    {
        var model = new TrainingModel<float>(Checkpoint.LoadParameters(ModelFolder), 1, t);
        double sum = 0;
        for (int w = 0; w < windows; w++)
        {
            model.Forward(tokens.AsSpan(w * t, t), tokens.AsSpan(w * t + 1, t));
            sum += model.CrossEntropy;
        }
        return sum / windows;
    }

    /// <summary>-log softmax(logits)[target], in double.</summary>
    private static double CrossEntropy(ReadOnlySpan<float> logits, int target)
    {
        double max = double.NegativeInfinity;
        foreach (var x in logits)
        {
            max = Math.Max(max, x);
        }
        double z = 0;
        foreach (var x in logits)
        {
            z += Math.Exp(x - max);
        }
        return Math.Log(z) + max - logits[target];
    }
}
