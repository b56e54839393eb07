namespace Bora.Training;

/// <summary>
/// The optimizer side that <see cref="Trainer"/> and <see cref="Lora.LoraTrainer"/> share: AdamW over the trained
/// parameters, the warmup + cosine schedule, the token / target buffers of one micro-batch, and one optimizer step
/// over AccumulationSteps micro-batches (gradients zeroed, forward + backward of each micro-batch weighted 1/k, the
/// global gradient norm clipped, AdamW at the scheduled rate).
/// </summary>
internal sealed class AccumulatingStepper
{
    private readonly IReadOnlyList<Parameter<float>> _trained;
    private readonly TrainingOptions _options;

    public AccumulatingStepper(IReadOnlyList<Parameter<float>> trained, TrainingOptions options)
    {
        _trained = trained;
        _options = options;
        Optimizer = new AdamW(trained, options.Beta1, options.Beta2, options.AdamEps, options.WeightDecay);
        Schedule = new CosineSchedule(options.MaxLr, options.MinLr, options.WarmupSteps, options.TotalSteps);
        Tokens = new int[options.BatchSize * options.SeqLen];
        Targets = new int[Tokens.Length];
    }

    public AdamW Optimizer { get; }

    public CosineSchedule Schedule { get; }

    /// <summary>The inputs of a micro-batch: (B * T), example b at [b * T, (b + 1) * T).</summary>
    public int[] Tokens { get; }

    /// <summary>The targets of a micro-batch: (B * T), like <see cref="Tokens"/>.</summary>
    public int[] Targets { get; }

    /// <summary>
    /// One optimizer step: for each micro-batch m of k = AccumulationSteps, <paramref name="fill"/>(step, m) writes it
    /// into <see cref="Tokens"/> / <see cref="Targets"/> (step: the optimizer steps taken before this one), then
    /// <paramref name="model"/> runs forward and backward with weight 1/k.
    /// </summary>
    public StepResult Step(TrainingModel<float> model, Action<long, int> fill)
    {
        long step = Optimizer.Steps;
        int k = _options.AccumulationSteps;
        foreach (var p in _trained)
        {
            Array.Clear(p.Grad);
        }
        double loss = 0, ce = 0;
        for (int micro = 0; micro < k; micro++)
        {
            fill(step, micro);
            loss += model.Forward(Tokens, Targets);
            ce += model.CrossEntropy;
            model.Backward(1f / k);
        }
        double norm = AdamW.ClipGradients(_trained, _options.GradClip);
        double lr = Schedule.LearningRate(step);
        Optimizer.Update(lr);
        return new StepResult(Optimizer.Steps, loss / k, ce / k, lr, norm, (long)k * Tokens.Length);
    }
}
