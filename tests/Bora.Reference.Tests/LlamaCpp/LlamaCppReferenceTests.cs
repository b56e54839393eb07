using System.Diagnostics;
using System.Text;
using Xunit.Abstractions;

namespace Bora.Reference.Tests.LlamaCpp;

/// <summary>Proves the llama.cpp harness on the real stories260K model.</summary>
[Collection(LlamaCppCollection.Name)]
public sealed class LlamaCppReferenceTests(ITestOutputHelper output)
{
    private static readonly string ModelDir = TestPaths.Shared("models", "stories260K");
    private static readonly string Gguf = Path.Combine(ModelDir, "stories260K.gguf");

    /// <summary>
    /// Batched (all positions at once) and incremental (one token at a time) evaluation use different
    /// llama.cpp graphs; on this tiny F32 model they agree to float rounding. Observed max-abs ~1e-5.
    /// </summary>
    private const float BatchVsIncrementalTolerance = 1e-4f;

    /// <summary>llama2.c run.c's default step count: positions 0..255, i.e. 256 tokens sampled after BOS.</summary>
    private const int RunCSteps = 256;

    private bool Skip()
    {
        if (File.Exists(Gguf))
        {
            return false;
        }
        output.WriteLine($"skipped: {Gguf} is absent");
        return true;
    }

    /// <summary>
    /// runc-greedy-from-bos.txt is run.c's stdout for `run stories260K.bin -z tok512.bin -t 0`: the pieces
    /// of the tokens sampled after BOS (the first piece's leading space dropped), until the next BOS or
    /// 256 steps (here the step limit cuts the story mid-sentence), then one "\n".
    /// </summary>
    [Fact]
    public void GreedyFromBos_ReproducesLlama2cRunC()
    {
        if (Skip())
        {
            return;
        }
        string expected = File.ReadAllText(Path.Combine(ModelDir, "runc-greedy-from-bos.txt"), Encoding.UTF8);
        var sw = Stopwatch.StartNew();
        using var llama = new LlamaCppReference(Gguf, contextSize: RunCSteps);
        Assert.Equal(512, llama.VocabSize);
        Assert.Equal(1, llama.Bos);
        Assert.Equal(2, llama.Eos);
        var (tokens, logits) = llama.GreedyDecode([llama.Bos], RunCSteps);
        output.WriteLine($"load + 256 greedy steps: {sw.Elapsed.TotalMilliseconds:F0} ms");

        int end = Array.IndexOf(tokens, llama.Bos);
        int[] story = end < 0 ? tokens : tokens[..end];
        string text = llama.Detokenize(story) + "\n";
        Assert.Equal(expected, text);
        Assert.Equal(RunCSteps, logits.Length);
        Assert.All(logits, row => Assert.Equal(llama.VocabSize, row.Length));
        for (int i = 0; i < tokens.Length; i++)
        {
            Assert.Equal(LlamaCppReference.ArgMax(logits[i]), tokens[i]);
        }
    }

    [Fact]
    public void EvaluateAll_MatchesIncrementalDecoding()
    {
        if (Skip())
        {
            return;
        }
        using var llama = new LlamaCppReference(Gguf, contextSize: 64);
        var (tokens, stepLogits) = llama.GreedyDecode([llama.Bos], 40);
        int[] sequence = [llama.Bos, .. tokens[..39]];
        float[][] all = llama.EvaluateAll(sequence); // (T)(V)
        Assert.Equal(sequence.Length, all.Length);
        float maxAbs = 0;
        for (int t = 0; t < sequence.Length; t++)
        {
            for (int v = 0; v < llama.VocabSize; v++)
            {
                maxAbs = Math.Max(maxAbs, Math.Abs(all[t][v] - stepLogits[t][v]));
            }
        }
        output.WriteLine($"max |batched - incremental| = {maxAbs:E2}");
        Assert.True(maxAbs < BatchVsIncrementalTolerance, $"max-abs {maxAbs} over tolerance {BatchVsIncrementalTolerance}");

        // A second call forgets the first: same input, bit-identical output.
        float[][] again = llama.EvaluateAll(sequence);
        Assert.Equal(all[^1], again[^1]);
    }

    [Fact]
    public void Tokenize_WithAndWithoutBos()
    {
        if (Skip())
        {
            return;
        }
        using var llama = new LlamaCppReference(Gguf, contextSize: 16);
        int[] withBos = llama.Tokenize("Once upon a time", addBos: true);
        int[] without = llama.Tokenize("Once upon a time", addBos: false);
        Assert.Equal(llama.Bos, withBos[0]);
        Assert.Equal(without, withBos[1..]);
        Assert.NotEqual(llama.Bos, without[0]);
        Assert.Equal("Once upon a time", llama.Detokenize(without));
        // The greedy story starts with these same words, so the tokenizer agrees with the model's own output.
        var (tokens, _) = llama.GreedyDecode([llama.Bos], without.Length);
        Assert.Equal(without, tokens);
        // Control-token text is not parsed when special parsing is off.
        Assert.DoesNotContain(llama.Bos, llama.Tokenize("<s>", addBos: false));
    }

    /// <summary>
    /// q4_k_m works on stories260K only through llama.cpp's fallbacks: no row of 64 or 172 columns
    /// divides into 256-element K-quant blocks, so the file holds q5_0/q8_0/f16 tensors and no Q4_K.
    /// </summary>
    [Fact]
    public void Quantize_Q4KM_ProducesLoadableModel()
    {
        if (Skip())
        {
            return;
        }
        string dir = TestPaths.NewTempDir("llamacpp-quant");
        try
        {
            string outPath = Path.Combine(dir, "stories260K-q4_k_m.gguf");
            var sw = Stopwatch.StartNew();
            LlamaCppReference.Quantize(Gguf, outPath, "q4_k_m");
            output.WriteLine($"q4_k_m: {sw.Elapsed.TotalMilliseconds:F0} ms, {new FileInfo(outPath).Length} bytes (F32: {new FileInfo(Gguf).Length})");
            Assert.True(new FileInfo(outPath).Length < new FileInfo(Gguf).Length / 2);
            using var llama = new LlamaCppReference(outPath, contextSize: 32);
            var (tokens, _) = llama.GreedyDecode([llama.Bos], 8);
            string text = llama.Detokenize(tokens);
            output.WriteLine(text);
            Assert.StartsWith("Once upon a time", text, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// The legacy 32-element block types have no fallback in llama.cpp, and stories260K's FFN down
    /// projection rows have 172 columns (not a multiple of 32): quantization fails, with a clear message.
    /// </summary>
    [Theory]
    [InlineData("q8_0")]
    [InlineData("q4_0")]
    public void Quantize_LegacyTypes_FailOnStories260K(string type)
    {
        if (Skip())
        {
            return;
        }
        string dir = TestPaths.NewTempDir("llamacpp-quant");
        try
        {
            var e = Assert.Throws<InvalidOperationException>(() => LlamaCppReference.Quantize(Gguf, Path.Combine(dir, "out.gguf"), type));
            Assert.Contains("not divisible by  32", e.Message, StringComparison.Ordinal);
            Assert.Contains("ffn_down", e.Message, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Quantize_RejectsUnknownType() =>
        Assert.Throws<ArgumentException>(() => LlamaCppReference.Quantize(Gguf, "/nonexistent/out.gguf", "q3_weird"));
}
