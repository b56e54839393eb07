using Bora.Generation;

namespace Bora.Training.Lora;

/// <summary>
/// The LoRA fine-tuning loop: batches of B chat examples (each cut or padded to T positions, only assistant
/// targets counted), gradient accumulation, global-norm clipping and AdamW with warmup + cosine over the LoRA
/// factors only (<see cref="TrainingOptions"/>; its AuxLossCoefficient applies to MoE bases, as transformers'
/// output_router_logits). Examples are taken in a seeded random order, epoch after epoch, so a run is
/// deterministic given the seed.
/// </summary>
public sealed class LoraTrainer
{
    private readonly LoraModel<float> _model;
    private readonly IReadOnlyList<ChatExample> _data;
    private readonly int[] _order;
    private readonly AccumulatingStepper _stepper;
    private readonly int _pad;
    private long _orderEpoch = -1;

    public LoraTrainer(LoraModel<float> model, IReadOnlyList<ChatExample> data, TrainingOptions options, int padToken = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (data.Count == 0)
        {
            throw new ArgumentException("no training examples");
        }
        if (model.Model.Batch != options.BatchSize || model.Model.SeqLen != options.SeqLen)
        {
            throw new ArgumentException($"the model was built for batch {model.Model.Batch} x {model.Model.SeqLen}; the options say {options.BatchSize} x {options.SeqLen}");
        }
        _model = model;
        _data = data;
        _pad = padToken;
        Options = options;
        _stepper = new AccumulatingStepper(model.Lora.All, options);
        _order = new int[data.Count];
    }

    public TrainingOptions Options { get; }

    public AdamW Optimizer => _stepper.Optimizer;

    public CosineSchedule Schedule => _stepper.Schedule;

    /// <summary>Optimizer steps taken.</summary>
    public long Step => Optimizer.Steps;

    /// <summary>One optimizer step over AccumulationSteps micro-batches of B examples.</summary>
    public StepResult TrainStep()
    {
        int k = Options.AccumulationSteps, b = Options.BatchSize, t = Options.SeqLen;
        return _stepper.Step(_model.Model, (step, micro) =>
        {
            for (int i = 0; i < b; i++)
            {
                long slot = ((step * k) + micro) * b + i;
                _data[ExampleAt(slot)].Fill(_stepper.Tokens.AsSpan(i * t, t), _stepper.Targets.AsSpan(i * t, t), _pad);
            }
        });
    }

    /// <summary>
    /// Mean cross-entropy per assistant token over <paramref name="examples"/> (B at a time, cut to T positions),
    /// or NaN when none has an assistant token within T.
    /// </summary>
    public double Evaluate(IReadOnlyList<ChatExample> examples)
    {
        ArgumentNullException.ThrowIfNull(examples);
        return Evaluate(_model, examples, _pad);
    }

    /// <summary>As the instance method, for any LoRA model (batch and length from its TrainingModel).</summary>
    public static double Evaluate(LoraModel<float> model, IReadOnlyList<ChatExample> examples, int padToken = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(examples);
        int b = model.Model.Batch, t = model.Model.SeqLen;
        var tokens = new int[b * t];
        var targets = new int[b * t];
        double sum = 0;
        long count = 0;
        for (int start = 0; start < examples.Count; start += b)
        {
            for (int i = 0; i < b; i++)
            {
                if (start + i < examples.Count)
                {
                    examples[start + i].Fill(tokens.AsSpan(i * t, t), targets.AsSpan(i * t, t), padToken);
                }
                else
                {
                    tokens.AsSpan(i * t, t).Fill(padToken);
                    targets.AsSpan(i * t, t).Fill(TrainingModel<float>.IgnoreTarget);
                }
            }
            model.Model.Forward(tokens, targets);
            sum += (double)model.Model.CrossEntropy * model.Model.ValidTargets;
            count += model.Model.ValidTargets;
        }
        return count > 0 ? sum / count : double.NaN;
    }

    /// <summary>The example for global slot s: epoch s / n uses a permutation seeded by (seed, epoch).</summary>
    private int ExampleAt(long slot)
    {
        int n = _data.Count;
        long epoch = slot / n;
        if (epoch == _orderEpoch)
        {
            return _order[(int)(slot % n)];
        }
        _orderEpoch = epoch;
        ulong mix = Options.Seed;
        mix = Xoshiro256StarStar.SplitMix64(ref mix) ^ (ulong)epoch * 0x9E3779B97F4A7C15UL;
        var rng = new Xoshiro256StarStar(mix);
        for (int i = 0; i < n; i++)
        {
            _order[i] = i;
        }
        for (int i = n - 1; i > 0; i--)
        {
            int j = (int)(rng.NextUInt64() % (ulong)(i + 1));
            (_order[i], _order[j]) = (_order[j], _order[i]);
        }
        return _order[(int)(slot % n)];
    }
}
