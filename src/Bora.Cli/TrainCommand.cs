using System.Diagnostics;
using System.Globalization;
using System.Text;
using Bora.Loading;
using Bora.Model;
using Bora.Training;

namespace Bora.Cli;

/// <summary>
/// <c>bora train --config model.json --data corpus.txt --tokenizer PATH --out DIR [options]</c>: trains a
/// model from scratch (or resumes the checkpoint in DIR with --resume) and leaves DIR a normal
/// Mistral-layout model folder (params.json, consolidated.safetensors, tokenizer.model).
/// </summary>
internal static class TrainCommand
{
    public const string Usage = """
        train --config model.json --data corpus.txt --tokenizer PATH --out DIR [--steps N] [--batch B] [--seq-len T]
              [--accum K] [--lr LR] [--min-lr LR] [--warmup N] [--weight-decay WD] [--clip C] [--aux-coef A] [--seed S]
              [--threads N] [--val-fraction F] [--eval-every N] [--eval-batches N] [--save-every N] [--resume] [--weights-only]
        """;

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("train", args,
            ["config", "data", "tokenizer", "out", "steps", "batch", "seq-len", "accum", "lr", "min-lr", "warmup", "weight-decay",
             "clip", "aux-coef", "seed", "threads", "val-fraction", "eval-every", "eval-batches", "save-every"],
            ["resume", "weights-only"]);
        string outDir = a.Require("out");
        string tokenizerPath = a.Require("tokenizer");
        bool resume = a.Flag("resume") && File.Exists(Path.Combine(outDir, Checkpoint.WeightsFileName));
        var config = resume ? ModelConfigLoader.FromParamsJson(Path.Combine(outDir, Checkpoint.ConfigFileName)) : ReadConfig(a.Require("config"));
        int steps = a.GetInt("steps", 1000, min: 1);
        var options = new TrainingOptions
        {
            TotalSteps = steps,
            BatchSize = a.GetInt("batch", 8, min: 1),
            SeqLen = a.GetInt("seq-len", Math.Min(256, config.MaxSeqLen), min: 1, max: config.MaxSeqLen),
            AccumulationSteps = a.GetInt("accum", 1, min: 1),
            MaxLr = a.GetFloat("lr", 3e-3f),
            MinLr = a.GetFloat("min-lr", a.GetFloat("lr", 3e-3f) / 10),
            WarmupSteps = a.GetInt("warmup", Math.Min(100, steps / 10), min: 0),
            WeightDecay = a.GetFloat("weight-decay", 0.1f),
            GradClip = a.GetFloat("clip", 1f),
            AuxLossCoefficient = a.GetFloat("aux-coef", 0.02f),
            Seed = a.GetULong("seed") ?? 1,
            MaxThreads = a.GetInt("threads", Environment.ProcessorCount, min: 1),
        };
        UsageException.From(options.Validate);
        int evalEvery = a.GetInt("eval-every", Math.Max(1, steps / 10), min: 1);
        int evalBatches = a.GetInt("eval-batches", 16, min: 1);
        int saveEvery = a.GetInt("save-every", Math.Max(1, steps / 10), min: 1);

        var tokenizer = ModelLoader.LoadTokenizer(tokenizerPath);
        if (tokenizer.VocabSize > config.VocabSize)
        {
            throw new UsageException($"the tokenizer has {tokenizer.VocabSize} tokens but the config's vocab_size is {config.VocabSize}");
        }
        var tokenizerFile = Directory.Exists(tokenizerPath) ? ModelSource.FindTokenizer(tokenizerPath) : tokenizerPath;
        if (tokenizerFile is null || !Path.GetFileName(tokenizerFile).StartsWith("tokenizer.model", StringComparison.Ordinal) && !tokenizerFile.EndsWith(".model", StringComparison.Ordinal))
        {
            throw new UsageException($"--tokenizer must name a SentencePiece .model file (it is copied into the model folder); got {tokenizerPath}");
        }

        var clock = Stopwatch.StartNew();
        var tokens = Tokenize(a.Require("data"), tokenizer);
        var data = TokenDataset.Split(tokens, a.GetFloat("val-fraction", 0.01f));
        stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"bora train: {tokens.Length} tokens ({data.Train.Length} train, {data.Validation.Length} validation) in {clock.Elapsed.TotalSeconds:F1} s"));

        var parameters = resume ? Checkpoint.LoadParameters(outDir) : ModelParameters<float>.Initialize(config, options.Seed);
        var trainer = new Trainer(parameters, data, options);
        if (resume)
        {
            Checkpoint.Restore(outDir, trainer);
            stderr.WriteLine($"bora train: resumed {outDir} at step {trainer.Step}");
        }
        stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"bora train: {parameters.Count:N0} parameters, {options.BatchSize * options.AccumulationSteps} x {options.SeqLen} tokens per step, {options.MaxThreads} threads"));

        long startStep = trainer.Step;
        var run = Stopwatch.StartNew();
        long tokensSeen = 0;
        while (trainer.Step < steps)
        {
            var r = trainer.TrainStep();
            tokensSeen += r.Tokens;
            double tps = tokensSeen / Math.Max(1e-9, run.Elapsed.TotalSeconds);
            double eta = (steps - r.Step) * (run.Elapsed.TotalSeconds / (r.Step - startStep));
            stderr.Write(string.Create(CultureInfo.InvariantCulture,
                $"\rstep {r.Step}/{steps} {Bar(r.Step, steps)} loss {r.Loss:F4} lr {r.LearningRate:E2} | {tps:F0} tok/s | ETA {TimeSpan.FromSeconds(Math.Round(eta)):g}   "));
            bool last = r.Step == steps;
            if (r.Step % evalEvery == 0 || last)
            {
                double val = trainer.ValidationLoss(evalBatches);
                stderr.WriteLine();
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"step {r.Step}: train loss {r.CrossEntropy:F4}, validation loss {val:F4} (perplexity {Math.Exp(val):F2})"));
            }
            if (r.Step % saveEvery == 0 || last)
            {
                Checkpoint.Save(outDir, parameters, last && a.Flag("weights-only") ? null : trainer.Optimizer, tokenizerFile);
            }
        }
        stderr.WriteLine(string.Create(CultureInfo.InvariantCulture, $"bora train: done in {run.Elapsed.TotalSeconds:F1} s; model in {outDir}"));
        return 0;
    }

    /// <summary>A Mistral params.json, or a Hugging Face config.json (recognised by its "architectures").</summary>
    private static ModelConfig ReadConfig(string path)
    {
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"{path}: no such config file");
        }
        return File.ReadAllText(path).Contains("\"architectures\"", StringComparison.Ordinal)
            ? ModelConfigLoader.FromHfConfigJson(path)
            : ModelConfigLoader.FromParamsJson(path);
    }

    /// <summary>The corpus as token ids, encoded in chunks of whole lines (no BOS) so long files stay linear-time.</summary>
    internal static int[] Tokenize(string path, Bora.Tokenizers.ITokenizer tokenizer)
    {
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"{path}: no such data file");
        }
        var ids = new List<int>();
        var chunk = new StringBuilder();
        foreach (var line in File.ReadLines(path))
        {
            chunk.Append(line).Append('\n');
            if (chunk.Length >= 1 << 14)
            {
                ids.AddRange(tokenizer.Encode(chunk.ToString(), addBos: false).Select(t => t.Value));
                chunk.Clear();
            }
        }
        if (chunk.Length > 0)
        {
            ids.AddRange(tokenizer.Encode(chunk.ToString(), addBos: false).Select(t => t.Value));
        }
        return [.. ids];
    }

    private static string Bar(long step, long total)
    {
        const int Width = 20;
        int filled = (int)(Width * step / Math.Max(1, total));
        return "[" + new string('#', filled) + new string('.', Width - filled) + "]";
    }
}
