using System.Globalization;
using Bora.Evaluation;
using Bora.Loading;
using Bora.Numerics;
using Bora.Quantization;
using Bora.Reference.Tests.LlamaCpp;
using Bora.Tokenizers;
using Xunit.Abstractions;

namespace Bora.Reference.Tests.Quality;

/// <summary>
/// <see cref="PerplexityEvaluator"/> (<c>bora perplexity</c>) against llama.cpp: the same token ids, the same chunking
/// (llama-perplexity's: non-overlapping chunks of N, BOS at each chunk start, the second half scored), llama.cpp's
/// logits for each chunk from <see cref="LlamaCppReference.EvaluateAll"/>; and the KL-divergence modes.
/// </summary>
[Collection(LlamaCppCollection.Name)]
public sealed class PerplexityTests(ITestOutputHelper output)
{
    /// <summary>The bar: Bora's perplexity within 0.5% of llama.cpp's on the same file and context.</summary>
    private const double PerplexityRelativeTolerance = 0.005;

    /// <summary>The bar for Q8_0: perplexity within 1% of F32.</summary>
    private const double Q8PerplexityRelativeTolerance = 0.01;

    /// <summary>
    /// KL through llama.cpp's uint16 base file vs exact floats: each stored log-probability is off by at most half a
    /// step, 16 / 65535 / 2 = 1.2e-4 nats (and below max - 16 it is cut off), so the mean KL moves by at most about that.
    /// </summary>
    private const double StoredBaseKlTolerance = 2.5e-4;

    /// <summary>Context used: stories260K was trained on 256-token sequences.</summary>
    private const int Context = 128;

    /// <summary>Chunks evaluated (of 318 in the file at N = 128): 40 chunks, 2520 scored tokens, a few seconds per engine.</summary>
    private const int Chunks = 40;

    private static readonly string Stories = TestPaths.Shared("models", "stories260K", "stories260K.gguf");
    private static readonly string Corpus = TestPaths.Shared("corpus", "tinystories_validation_100.txt");

    [Fact]
    public void Stories260KPerplexityMatchesLlamaCpp()
    {
        if (!File.Exists(Stories) || !File.Exists(Corpus))
        {
            output.WriteLine("skipped: stories260K or the corpus is absent");
            return;
        }
        var text = File.ReadAllText(Corpus);
        var bora = ModelLoader.Load(Stories);
        var tokens = bora.Tokenizer.Encode(text, addBos: true);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        using var llama = new LlamaCppReference(Stories, contextSize: Context, threads: 2);
        Assert.Equal(llama.Tokenize(text, addBos: true), tokens.Select(t => t.Value));
        output.WriteLine($"llama.cpp load + tokenize: {sw.ElapsedMilliseconds} ms");

        var options = new PerplexityOptions(Context, Batch: Context, MaxChunks: Chunks);
        sw.Restart();
        var mine = PerplexityEvaluator.Evaluate(bora.Model, tokens, bora.Tokenizer.Bos, options);
        output.WriteLine($"Bora: {sw.ElapsedMilliseconds} ms");
        sw.Restart();

        // llama.cpp's number, computed the way llama-perplexity does from llama.cpp's own logits.
        var theirs = new NllAccumulator();
        int first = PerplexityEvaluator.FirstScored(Context);
        for (int c = 0; c < Chunks; c++)
        {
            int[] chunk = [.. PerplexityEvaluator.ChunkTokens(tokens, c, Context, new TokenId(llama.Bos)).Select(t => t.Value)];
            float[][] logits = llama.EvaluateAll(chunk);
            for (int i = first; i < Context - 1; i++)
            {
                theirs.Add(logits[i], chunk[i + 1]);
            }
        }
        output.WriteLine($"llama.cpp: {sw.ElapsedMilliseconds} ms");
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{tokens.Length} tokens, {Chunks} chunks of {Context}, {mine.ScoredTokens} scored: Bora PPL {mine.Perplexity:F4} ± {mine.StdError:F4}, llama.cpp {theirs.Perplexity:F4} ± {theirs.StdError:F4}"));
        Assert.Equal(theirs.Count, mine.ScoredTokens);
        Assert.Equal((long)Chunks * (Context - 1 - Context / 2), mine.ScoredTokens);
        Assert.InRange(mine.Perplexity / theirs.Perplexity - 1, -PerplexityRelativeTolerance, PerplexityRelativeTolerance);
        Assert.InRange(mine.StdError / theirs.StdError - 1, -0.05, 0.05);
    }

    [Fact]
    public void Q8QuantizedPerplexityAndKlDivergence()
    {
        if (!File.Exists(Stories) || !File.Exists(Corpus))
        {
            output.WriteLine("skipped: stories260K or the corpus is absent");
            return;
        }
        var dir = TestPaths.NewTempDir("ppl");
        string q8 = Path.Combine(dir, "q8.gguf");
        ModelQuantizer.Quantize(Stories, q8, DType.Q8_0, threads: 2);
        var f32 = ModelLoader.Load(Stories);
        var quant = ModelLoader.Load(q8);
        var tokens = f32.Tokenizer.Encode(File.ReadAllText(Corpus), addBos: true);
        var options = new PerplexityOptions(Context, Batch: 64, MaxChunks: Chunks / 4);

        // Perplexity of the base, saving its log-probabilities in llama.cpp's --kl-divergence-base format.
        string basePath = Path.Combine(dir, "base.kld");
        PerplexityResult basePpl;
        using (var writer = new LogitsFileWriter(basePath))
        {
            basePpl = PerplexityEvaluator.Evaluate(f32.Model, tokens, f32.Tokenizer.Bos, options, saveBase: writer);
        }

        var exact = PerplexityEvaluator.EvaluateKl(quant.Model, tokens, quant.Tokenizer.Bos, options, PerplexityEvaluator.ReferenceModel(f32.Model, 64));
        KlDivergenceResult stored;
        using (var reader = LogitsFile.Reader.Open(basePath))
        {
            Assert.Equal(Context, reader.Context);
            Assert.Equal(Chunks / 4, reader.Chunks);
            Assert.Equal(tokens.Take(Chunks / 4 * Context), reader.Tokens);
            stored = PerplexityEvaluator.EvaluateKl(quant.Model, reader.Tokens, quant.Tokenizer.Bos, options, (c, _) => reader.Chunk(c));
        }
        var self = PerplexityEvaluator.EvaluateKl(f32.Model, tokens, f32.Tokenizer.Bos, options, PerplexityEvaluator.ReferenceModel(f32.Model, 64));
        output.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"F32 PPL {basePpl.Perplexity:F4}; Q8_0 PPL {exact.Perplexity:F4} (base {exact.BasePerplexity:F4}), KL {exact.MeanKl:G4} ± {exact.MeanKlError:G3}, via stored base {stored.MeanKl:G4}, self KL {self.MeanKl:G3}, same top {exact.SameTop:P2}"));

        Assert.InRange(exact.Perplexity / basePpl.Perplexity - 1, -Q8PerplexityRelativeTolerance, Q8PerplexityRelativeTolerance);
        Assert.InRange(exact.BasePerplexity / basePpl.Perplexity - 1, -1e-6, 1e-6); // float vs double log-softmax of the base
        Assert.True(exact.MeanKl > 0, "quantization must move the distribution");
        Assert.InRange(self.MeanKl, -1e-6, 1e-6);
        Assert.Equal(1.0, self.SameTop);
        Assert.InRange(stored.MeanKl - exact.MeanKl, -StoredBaseKlTolerance, StoredBaseKlTolerance);
        Assert.Equal(exact.Perplexity, stored.Perplexity, 1e-9);
        Directory.Delete(dir, recursive: true);
    }

    [Fact]
    public void TooShortTextAndBadBaseFilesAreRefused()
    {
        Assert.Contains("at least 256", Assert.Throws<ArgumentException>(() => PerplexityEvaluator.ChunkCount(255, new PerplexityOptions(128))).Message, StringComparison.Ordinal);
        Assert.Equal(2, PerplexityEvaluator.ChunkCount(383, new PerplexityOptions(128)));
        Assert.Equal(1, PerplexityEvaluator.ChunkCount(1000, new PerplexityOptions(128, MaxChunks: 1)));
        var dir = TestPaths.NewTempDir("ppl-bad");
        string bad = Path.Combine(dir, "bad.kld");
        File.WriteAllBytes(bad, [.. "_logits_"u8, 128, 0, 0, 0, 0, 2, 0, 0, 1, 0, 0, 0]);
        Assert.Contains("need", Assert.Throws<Formats.ModelFormatException>(() => LogitsFile.Reader.Open(bad)).Message, StringComparison.Ordinal);
        File.WriteAllText(bad, "not a logits file at all");
        Assert.Contains("_logits_", Assert.Throws<Formats.ModelFormatException>(() => LogitsFile.Reader.Open(bad)).Message, StringComparison.Ordinal);
        Directory.Delete(dir, recursive: true);
    }
}
