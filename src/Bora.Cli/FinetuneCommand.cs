using System.Diagnostics;
using System.Globalization;
using Bora.Loading;
using Bora.Training;
using Bora.Training.Lora;

namespace Bora.Cli;

/// <summary>
/// <c>bora finetune --model M --data train.jsonl --out DIR [options]</c>: LoRA fine-tuning of a frozen (possibly
/// quantized) base on chat-format JSONL, loss on assistant tokens only; writes a PEFT adapter folder.
/// </summary>
internal static class FinetuneCommand
{
    public const string Usage = """
        finetune --model PATH --data train.jsonl --out DIR [--rank 8] [--alpha 16] [--targets q,k,v,o[,experts]]
                 [--steps 100] [--lr 2e-4] [--min-lr LR] [--warmup N] [--batch 4] [--seq-len T] [--accum K]
                 [--weight-decay 0] [--clip 1] [--aux-coef 0] [--seed S] [--threads N] [--eval-every N]
        """;

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("finetune", args,
            ["model", "data", "out", "rank", "alpha", "targets", "steps", "lr", "min-lr", "warmup", "batch", "seq-len", "accum",
             "weight-decay", "clip", "aux-coef", "seed", "threads", "eval-every"], []);
        string modelPath = a.Require("model");
        string dataPath = a.Require("data");
        string outDir = a.Require("out");
        int rank = a.GetInt("rank", 8, min: 1, max: 4096);
        float alpha = a.GetFloat("alpha", 2f * rank);
        if (!(alpha > 0))
        {
            throw new UsageException($"--alpha must be positive; got {alpha}");
        }
        var targets = UsageException.From(() => LoraTargets.Parse(a.Get("targets") ?? "q,k,v,o"));

        var clock = Stopwatch.StartNew();
        var loaded = ModelLoader.Load(modelPath);
        var config = loaded.Config;
        var renderer = loaded.CreateChatRenderer();
        var data = ChatData.Load(dataPath, renderer);
        int longest = data.Max(e => e.Tokens.Length) - 1;
        int steps = a.GetInt("steps", 100, min: 1);
        float lr = a.GetFloat("lr", 2e-4f);
        var options = new TrainingOptions
        {
            TotalSteps = steps,
            BatchSize = a.GetInt("batch", Math.Min(4, data.Count), min: 1),
            SeqLen = a.GetInt("seq-len", Math.Clamp(longest, 1, Math.Min(2048, config.MaxSeqLen)), min: 1, max: config.MaxSeqLen),
            AccumulationSteps = a.GetInt("accum", 1, min: 1),
            MaxLr = lr,
            MinLr = a.GetFloat("min-lr", lr / 10),
            WarmupSteps = a.GetInt("warmup", Math.Min(10, steps / 10), min: 0),
            WeightDecay = a.GetFloat("weight-decay", 0f),
            Beta2 = 0.999,
            GradClip = a.GetFloat("clip", 1f),
            AuxLossCoefficient = a.GetFloat("aux-coef", 0f),
            Seed = a.GetULong("seed") ?? 1,
            MaxThreads = a.GetInt("threads", Environment.ProcessorCount, min: 1),
        };
        UsageException.From(options.Validate);
        int evalEvery = a.GetInt("eval-every", Math.Max(1, steps / 10), min: 1);
        int cut = data.Count(e => e.Tokens.Length - 1 > options.SeqLen);
        int assistant = data.Sum(e => e.TrainedCount);
        stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"bora finetune: {data.Count} examples ({assistant} assistant tokens, {renderer.Version} chat format) in {clock.Elapsed.TotalSeconds:F1} s; {cut} longer than {options.SeqLen} tokens are cut"));

        Numerics.NumericsThreads.MaxThreads = options.MaxThreads;
        var lora = LoraParameters<float>.Create(config, targets, rank, alpha, options.Seed);
        var model = LoraModel<float>.OverWeights(loaded.Model.Weights, lora, options.BatchSize, options.SeqLen,
            new TrainingModelOptions { AuxLossCoefficient = options.AuxLossCoefficient, MaxThreads = options.MaxThreads });
        int pad = loaded.Tokenizer.Eos.Value;
        var trainer = new LoraTrainer(model, data, options, pad);
        var evalSet = data.Take(64).ToList();
        stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"bora finetune: rank {rank}, alpha {alpha}, targets {string.Join(",", targets.Order())}: {lora.Count:N0} trainable parameters over {lora.Factors.Count} matrices; {options.BatchSize * options.AccumulationSteps} x {options.SeqLen} tokens per step, {options.MaxThreads} threads"));

        var run = Stopwatch.StartNew();
        long tokensSeen = 0;
        while (trainer.Step < steps)
        {
            var r = trainer.TrainStep();
            tokensSeen += r.Tokens;
            double tps = tokensSeen / Math.Max(1e-9, run.Elapsed.TotalSeconds);
            double eta = (steps - r.Step) * (run.Elapsed.TotalSeconds / r.Step);
            stderr.Write(string.Create(CultureInfo.InvariantCulture,
                $"\rstep {r.Step}/{steps} {Bar(r.Step, steps)} loss {r.CrossEntropy:F4} lr {r.LearningRate:E2} | {tps:F0} tok/s | ETA {TimeSpan.FromSeconds(Math.Round(eta)):g}   "));
            if (r.Step % evalEvery == 0 || r.Step == steps)
            {
                double loss = trainer.Evaluate(evalSet);
                stderr.WriteLine();
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"step {r.Step}: train loss {r.CrossEntropy:F4}, assistant-token loss on {evalSet.Count} examples {loss:F4}"));
            }
        }
        lora.ToAdapter(modelPath).Save(outDir, config);
        stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"bora finetune: done in {run.Elapsed.TotalSeconds:F1} s ({tokensSeen / Math.Max(1e-9, run.Elapsed.TotalSeconds):F0} tok/s); adapter in {outDir}"));
        return 0;
    }

    private static string Bar(long step, long total)
    {
        const int Width = 20;
        int filled = (int)(Width * step / Math.Max(1, total));
        return "[" + new string('#', filled) + new string('.', Width - filled) + "]";
    }
}
