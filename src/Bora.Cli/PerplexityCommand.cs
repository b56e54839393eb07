using System.Globalization;
using Bora.Evaluation;
using Bora.Loading;
using Bora.Numerics;

namespace Bora.Cli;

/// <summary>
/// <c>bora perplexity --model M --file TEXT [--ctx N] [--batch N] [--chunks N] [--threads N] [--kv-type f16|f32]</c>, computed as
/// llama.cpp's llama-perplexity (see <see cref="PerplexityEvaluator"/>), printing the running estimate after each
/// chunk and the final estimate ± its standard error. KL-divergence modes:
/// <c>--kl-reference M2</c> (run M2 on the same chunks), <c>--save-base FILE</c> (write the model's log-probabilities
/// in llama.cpp's --kl-divergence-base format) and <c>--kl-base FILE</c> (compare against such a file; its tokens and
/// context are used, so --file is not needed).
/// </summary>
internal static class PerplexityCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("perplexity", args, ["model", "file", "ctx", "batch", "chunks", "threads", "kl-reference", "kl-base", "save-base", "kv-type"], []);
        if (a.Positional.Count != 0)
        {
            throw new UsageException($"'perplexity': unexpected argument '{a.Positional[0]}'");
        }
        if (a.Get("threads") is not null)
        {
            NumericsThreads.MaxThreads = a.GetInt("threads", 1, 1, 1024);
        }
        string? klRef = a.Get("kl-reference"), klBase = a.Get("kl-base"), saveBase = a.Get("save-base");
        if (new[] { klRef, klBase, saveBase }.Count(x => x is not null) > 1)
        {
            throw new UsageException("'perplexity': --kl-reference, --kl-base and --save-base are exclusive");
        }
        var kvType = a.GetKvType();
        var model = ModelLoader.Load(a.Require("model"), kvType: kvType);
        int batch = a.GetInt("batch", 512, 1, 1 << 20);
        int? chunks = a.Get("chunks") is null ? null : a.GetInt("chunks", 0, 1);
        var inv = CultureInfo.InvariantCulture;

        if (klBase is not null)
        {
            using var reader = LogitsFile.Reader.Open(klBase);
            if (reader.Vocab != model.Config.VocabSize)
            {
                throw new ArgumentException($"{klBase} was computed with a vocabulary of {reader.Vocab}; the model has {model.Config.VocabSize}");
            }
            var options = new PerplexityOptions(reader.Context, batch, chunks ?? reader.Chunks);
            var r = PerplexityEvaluator.EvaluateKl(model.Model, reader.Tokens, model.Tokenizer.Bos, options, (c, _) => reader.Chunk(c), x => PrintKl(stdout, x));
            PrintKlSummary(stdout, r);
            return 0;
        }

        var text = File.Exists(a.Require("file")) ? File.ReadAllText(a.Require("file")) : throw new FileNotFoundException($"{a.Require("file")}: no such text file (--file)");
        var tokens = model.Tokenizer.Encode(text, addBos: true);
        var opts = new PerplexityOptions(a.GetInt("ctx", 512, 4, 1 << 20), batch, chunks);
        stderr.WriteLine(string.Create(inv, $"perplexity: {tokens.Length} tokens, {PerplexityEvaluator.ChunkCount(tokens.Length, opts)} chunks of {opts.Context}, scoring the last {PerplexityEvaluator.ScoredPerChunk(opts.Context)} tokens of each"));
        if (klRef is not null)
        {
            var reference = ModelLoader.Load(klRef, kvType: kvType);
            if (reference.Config.VocabSize != model.Config.VocabSize)
            {
                throw new ArgumentException($"{klRef} has a vocabulary of {reference.Config.VocabSize}; the model has {model.Config.VocabSize}");
            }
            var r = PerplexityEvaluator.EvaluateKl(model.Model, tokens, model.Tokenizer.Bos, opts,
                PerplexityEvaluator.ReferenceModel(reference.Model, batch), x => PrintKl(stdout, x));
            PrintKlSummary(stdout, r);
            return 0;
        }
        using var writer = saveBase is null ? null : new LogitsFileWriter(saveBase);
        var result = PerplexityEvaluator.Evaluate(model.Model, tokens, model.Tokenizer.Bos, opts,
            c =>
            {
                stdout.Write(string.Create(inv, $"[{c.Chunk}]{c.Perplexity:F4},"));
                stdout.Flush();
            }, writer);
        stdout.WriteLine();
        stdout.WriteLine(string.Create(inv, $"Final estimate: PPL = {result.Perplexity:F4} +/- {result.StdError:F5}"));
        if (saveBase is not null)
        {
            stderr.WriteLine($"perplexity: saved the base log-probabilities to {saveBase}");
        }
        return 0;
    }

    private static void PrintKl(TextWriter stdout, KlDivergenceResult r) =>
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"[{r.Chunk}/{r.Chunks}] PPL {r.Perplexity:F4} ± {r.PerplexityError:F4}  base {r.BasePerplexity:F4}  KL {r.MeanKl:F6} ± {r.MeanKlError:F6}  same top {r.SameTop * 100:F2}%"));

    private static void PrintKlSummary(TextWriter stdout, KlDivergenceResult r)
    {
        var inv = CultureInfo.InvariantCulture;
        stdout.WriteLine(string.Create(inv, $"Mean PPL(Q)    : {r.Perplexity:F6} ± {r.PerplexityError:F6}"));
        stdout.WriteLine(string.Create(inv, $"Mean PPL(base) : {r.BasePerplexity:F6} ± {r.BasePerplexityError:F6}"));
        stdout.WriteLine(string.Create(inv, $"Mean KLD       : {r.MeanKl:F6} ± {r.MeanKlError:F6}"));
        stdout.WriteLine(string.Create(inv, $"Maximum KLD    : {r.MaxKl:F6}"));
        stdout.WriteLine(string.Create(inv, $"Same top p     : {r.SameTop * 100:F3} % ({r.Count} tokens)"));
    }
}
