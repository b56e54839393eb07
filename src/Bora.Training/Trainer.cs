using Bora.Generation;

namespace Bora.Training;

/// <summary>Hyper-parameters of a training run.</summary>
public sealed record TrainingOptions
{
    /// <summary>B: sequences per micro-batch.</summary>
    public int BatchSize { get; init; } = 8;

    /// <summary>T: tokens per sequence.</summary>
    public int SeqLen { get; init; } = 128;

    /// <summary>Micro-batches whose gradients are averaged into one optimizer step.</summary>
    public int AccumulationSteps { get; init; } = 1;

    /// <summary>Optimizer steps of the whole run (the cosine schedule ends here).</summary>
    public int TotalSteps { get; init; } = 1000;

    public int WarmupSteps { get; init; } = 50;

    public double MaxLr { get; init; } = 3e-3;

    public double MinLr { get; init; } = 3e-4;

    public double WeightDecay { get; init; } = 0.1;

    public double Beta1 { get; init; } = 0.9;

    public double Beta2 { get; init; } = 0.95;

    public double AdamEps { get; init; } = 1e-8;

    /// <summary>Global gradient-norm clip; 0 disables.</summary>
    public double GradClip { get; init; } = 1.0;

    /// <summary>Seeds the initial weights (when training from scratch) and every batch draw.</summary>
    public ulong Seed { get; init; } = 1;

    /// <summary>MoE load-balancing loss coefficient.</summary>
    public double AuxLossCoefficient { get; init; } = 0.02;

    public int MaxThreads { get; init; } = Environment.ProcessorCount;

    public void Validate()
    {
        if (BatchSize <= 0 || SeqLen <= 0 || AccumulationSteps <= 0 || TotalSteps <= 0 || WarmupSteps < 0)
        {
            throw new ArgumentException($"batch size {BatchSize}, sequence length {SeqLen}, accumulation {AccumulationSteps} and total steps {TotalSteps} must be positive, warmup {WarmupSteps} non-negative");
        }
        if (!(MaxLr > 0) || MinLr < 0 || MinLr > MaxLr)
        {
            throw new ArgumentException($"learning rates: need 0 <= min ({MinLr}) <= max ({MaxLr}), max > 0");
        }
    }
}

/// <summary>
/// Token ids of a corpus split into a training and a validation part. Batches are drawn at random
/// offsets from the training part; the generator for optimizer step s, micro-batch k is seeded from
/// (seed, s, k) alone, so a resumed run draws exactly the batches an uninterrupted one would.
/// </summary>
public sealed class TokenDataset
{
    public TokenDataset(int[] train, int[] validation)
    {
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(validation);
        Train = train;
        Validation = validation;
    }

    /// <summary>Splits <paramref name="tokens"/>: the last <paramref name="validationFraction"/> becomes validation.</summary>
    public static TokenDataset Split(int[] tokens, double validationFraction)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        int v = (int)Math.Round(tokens.Length * Math.Clamp(validationFraction, 0, 0.5));
        return new TokenDataset(tokens[..^v], tokens[^v..]);
    }

    public int[] Train { get; }

    public int[] Validation { get; }

    /// <summary>
    /// Fills tokens and targets (B * T) with B windows of the training tokens: targets are the tokens shifted by one.
    /// </summary>
    public void Sample(ulong seed, long step, int micro, int batch, int seqLen, Span<int> tokens, Span<int> targets)
    {
        long room = Train.Length - seqLen - 1;
        if (room < 0)
        {
            throw new InvalidOperationException($"the training text has {Train.Length} tokens; a sequence of {seqLen} needs at least {seqLen + 1}");
        }
        ulong mix = seed;
        mix = Xoshiro256StarStar.SplitMix64(ref mix) ^ (ulong)step * 0x9E3779B97F4A7C15UL ^ (ulong)micro * 0xC2B2AE3D27D4EB4FUL;
        var rng = new Xoshiro256StarStar(mix);
        for (int b = 0; b < batch; b++)
        {
            int start = (int)(rng.NextUInt64() % (ulong)(room + 1));
            Train.AsSpan(start, seqLen).CopyTo(tokens.Slice(b * seqLen, seqLen));
            Train.AsSpan(start + 1, seqLen).CopyTo(targets.Slice(b * seqLen, seqLen));
        }
    }
}

/// <summary>What one optimizer step did.</summary>
/// <param name="Step">The step just taken (1-based count of updates).</param>
/// <param name="Loss">Mean training loss over its micro-batches (cross-entropy + aux).</param>
/// <param name="CrossEntropy">Mean cross-entropy over its micro-batches.</param>
/// <param name="LearningRate">The rate used.</param>
/// <param name="GradNorm">Global gradient norm before clipping.</param>
/// <param name="Tokens">Tokens processed.</param>
public readonly record struct StepResult(long Step, double Loss, double CrossEntropy, double LearningRate, double GradNorm, long Tokens);

/// <summary>
/// The training loop: micro-batches with gradient accumulation, global-norm clipping, AdamW with a
/// warmup + cosine schedule. Deterministic given the seed: batches depend on (seed, step) only, every
/// kernel's result is independent of the thread count, and the optimizer is element-wise.
/// </summary>
public sealed class Trainer
{
    private readonly TrainingModel<float> _model;
    private readonly TrainingModel<float> _eval;
    private readonly AccumulatingStepper _stepper;

    public Trainer(ModelParameters<float> parameters, TokenDataset data, TrainingOptions options)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        Parameters = parameters;
        Data = data;
        Options = options;
        var modelOptions = new TrainingModelOptions { AuxLossCoefficient = options.AuxLossCoefficient, MaxThreads = options.MaxThreads };
        _model = new TrainingModel<float>(parameters, options.BatchSize, options.SeqLen, modelOptions);
        _eval = new TrainingModel<float>(parameters, 1, options.SeqLen, modelOptions);
        _stepper = new AccumulatingStepper(parameters.All, options);
    }

    public ModelParameters<float> Parameters { get; }

    public TokenDataset Data { get; }

    public TrainingOptions Options { get; }

    public AdamW Optimizer => _stepper.Optimizer;

    public CosineSchedule Schedule => _stepper.Schedule;

    /// <summary>Optimizer steps taken (equal to <see cref="AdamW.Steps"/>).</summary>
    public long Step => Optimizer.Steps;

    /// <summary>One optimizer step over <see cref="TrainingOptions.AccumulationSteps"/> micro-batches.</summary>
    public StepResult TrainStep() => _stepper.Step(_model, (step, micro) =>
        Data.Sample(Options.Seed, step, micro, Options.BatchSize, Options.SeqLen, _stepper.Tokens, _stepper.Targets));

    /// <summary>
    /// Mean cross-entropy over up to <paramref name="maxSequences"/> consecutive non-overlapping windows
    /// of the validation tokens (the same windows every time), or NaN when the validation part is too short.
    /// </summary>
    public double ValidationLoss(int maxSequences = 16)
    {
        int t = Options.SeqLen;
        var v = Data.Validation;
        int windows = Math.Min(maxSequences, (v.Length - 1) / t);
        if (windows <= 0)
        {
            return double.NaN;
        }
        double sum = 0;
        for (int w = 0; w < windows; w++)
        {
            var tok = v.AsSpan(w * t, t);
            var tgt = v.AsSpan(w * t + 1, t);
            _eval.Forward(tok, tgt);
            sum += _eval.CrossEntropy;
        }
        return sum / windows;
    }
}
