using System.Diagnostics;
using System.Globalization;
using Bora.Evaluation;
using Bora.Loading;
using Bora.Model;
using Bora.Numerics;
using Bora.Quantization;

namespace Bora.Cli;

/// <summary>
/// <c>bora quantize IN OUT --type q8_0|q4_0|q4_k|q4_k_m [--threads N] [--eval-file TEXT [--ctx N] [--chunks N]] [--quiet]</c>:
/// converts a float checkpoint to a quantized GGUF (see <see cref="ModelQuantizer"/>), with a progress bar on stderr;
/// with --eval-file, then reports the perplexity of both models and the mean KL-divergence of the quantized one from
/// the original on that text.
/// </summary>
internal static class QuantizeCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("quantize", args, ["type", "threads", "eval-file", "ctx", "chunks", "batch"], ["quiet"]);
        if (a.Positional.Count != 2)
        {
            throw new UsageException("'quantize' takes IN (a .gguf file or a model folder) and OUT (the .gguf to write), and --type q8_0|q4_0|q4_k|q4_k_m");
        }
        QuantizeTarget type;
        try
        {
            type = QuantizeTarget.Parse(a.Require("type"));
        }
        catch (ArgumentException e)
        {
            throw new UsageException($"'quantize': {e.Message}");
        }
        int threads = a.GetInt("threads", Environment.ProcessorCount, 1, 1024);
        NumericsThreads.MaxThreads = threads;
        string? evalFile = a.Get("eval-file");
        if (evalFile is not null && !File.Exists(evalFile))
        {
            throw new FileNotFoundException($"{evalFile}: no such text file (--eval-file)");
        }
        var options = new PerplexityOptions(a.GetInt("ctx", 512, 4, 1 << 20), a.GetInt("batch", 512, 1, 1 << 20), a.Get("chunks") is null ? null : a.GetInt("chunks", 0, 1));
        bool quiet = a.Flag("quiet");

        var sw = Stopwatch.StartNew();
        var result = ModelQuantizer.Quantize(a.Positional[0], a.Positional[1], type, threads, quiet ? null : p => DrawBar(stderr, p));
        if (!quiet)
        {
            stderr.WriteLine();
        }
        var inv = CultureInfo.InvariantCulture;
        foreach (var t in result.Tensors.Where(t => t.Reason is not null && t.Shape.Length > 1))
        {
            stdout.WriteLine($"  {ModelQuantizer.Describe(t)}");
        }
        int fallbacks = result.Tensors.Count(t => t.Reason?.Contains("fallback", StringComparison.Ordinal) == true);
        stdout.WriteLine(string.Create(inv,
            $"wrote {result.OutputPath}: {result.Tensors.Count} tensors, {result.OutputBytes / 1048576.0:F1} MiB of data (from {result.InputBytes / 1048576.0:F1} MiB), {type}, {fallbacks} fallback(s), {sw.Elapsed.TotalSeconds:F1} s"));

        if (evalFile is not null)
        {
            var original = ModelLoader.Load(a.Positional[0], WeightLoader.ReadF32Matrix);
            var quantized = ModelLoader.Load(result.OutputPath);
            var tokens = quantized.Tokenizer.Encode(File.ReadAllText(evalFile), addBos: true);
            var kl = PerplexityEvaluator.EvaluateKl(quantized.Model, tokens, quantized.Tokenizer.Bos, options,
                PerplexityEvaluator.ReferenceModel(original.Model, options.Batch));
            stdout.WriteLine(string.Create(inv,
                $"eval {Path.GetFileName(evalFile)} (ctx {options.Context}, {kl.Chunks} chunks, {kl.Count} scored tokens): " +
                $"PPL original {kl.BasePerplexity:F4} ± {kl.BasePerplexityError:F4}, quantized {kl.Perplexity:F4} ± {kl.PerplexityError:F4} " +
                $"({(kl.Perplexity / kl.BasePerplexity - 1) * 100:+0.00;-0.00}%), mean KL {kl.MeanKl:F6} ± {kl.MeanKlError:F6}, same top {kl.SameTop * 100:F2}%"));
        }
        return 0;
    }

    private static void DrawBar(TextWriter stderr, QuantizeProgress p)
    {
        const int Width = 30;
        double f = p.BytesTotal == 0 ? 1 : (double)p.BytesDone / p.BytesTotal;
        int filled = (int)Math.Round(f * Width);
        string name = p.Tensor.Length > 32 ? p.Tensor[..32] : p.Tensor;
        stderr.Write(string.Create(CultureInfo.InvariantCulture,
            $"\r[{new string('#', filled)}{new string('.', Width - filled)}] {f * 100,5:F1}% {p.Done}/{p.Total} {name,-32}"));
        stderr.Flush();
    }
}
