using Bora.Model;

namespace Bora.Training.Tests;

public class OptimizerTests
{
    /// <summary>float32 arithmetic of the update against the double hand computation: a few ulps of values O(1).</summary>
    private const double UpdateTolerance = 1e-6;

    [Fact]
    public void AdamW_worked_example()
    {
        var w = new Parameter<float>("w", [1, 1], decay: true);
        var n = new Parameter<float>("n", [1], decay: false);
        w.Data[0] = n.Data[0] = 1f;
        w.Grad[0] = n.Grad[0] = 0.5f;
        var opt = new AdamW([w, n], beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1);
        opt.Update(0.1);
        Assert.Equal(0.89, w.Data[0], UpdateTolerance);   // 1 - 0.1·0.1·1 - 0.1·0.5/0.5
        Assert.Equal(0.9, n.Data[0], UpdateTolerance);    // no decay on norm weights
        Assert.Equal(0.05f, opt.M[0][0], 7);
        Assert.Equal(0.00025f, opt.V[0][0], 7);
        // Second step, same gradient: m = 0.095, v = 0.00049975; m̂ = 0.5, v̂ = 0.25 again.
        opt.Update(0.1);
        Assert.Equal(0.89 * (1 - 0.01) - 0.1, w.Data[0], UpdateTolerance);
    }

    [Fact]
    public void Cosine_schedule_worked_example()
    {
        var s = new CosineSchedule(1, 0.1, 2, 6);
        double[] expected = [0.5, 1, 1, 0.1 + 0.45 * (1 + Math.Cos(Math.PI / 4)), 0.55, 0.1 + 0.45 * (1 + Math.Cos(3 * Math.PI / 4)), 0.1, 0.1];
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.Equal(expected[i], s.LearningRate(i), 12);
        }
    }

    [Fact]
    public void Clipping_scales_to_the_max_norm()
    {
        var a = new Parameter<float>("a", [2], decay: false);
        a.Grad[0] = 3;
        a.Grad[1] = 4;
        Assert.Equal(5, AdamW.ClipGradients([a], 1.0), 12);
        Assert.Equal(0.6f, a.Grad[0], 6);
        Assert.Equal(0.8f, a.Grad[1], 6);
        Assert.Equal(1, AdamW.ClipGradients([a], 10.0), 6); // under the limit: untouched
        Assert.Equal(0.6f, a.Grad[0], 6);
    }

    [Fact]
    public void One_trainer_step_matches_a_hand_computed_step()
    {
        var config = TrainingTestModels.Moe();
        var options = new TrainingOptions
        {
            BatchSize = 2,
            SeqLen = 6,
            AccumulationSteps = 2,
            TotalSteps = 10,
            WarmupSteps = 4,
            MaxLr = 0.01,
            MinLr = 0.001,
            WeightDecay = 0.1,
            Beta1 = 0.9,
            Beta2 = 0.95,
            AdamEps = 1e-8,
            GradClip = 0.5,
            AuxLossCoefficient = 0.05,
            MaxThreads = 2,
            Seed = 9,
        };
        var data = new TokenDataset(TrainingTestModels.Tokens(200, config.VocabSize, 3), []);
        var p = TrainingTestModels.Random<float>(config, 4);
        var before = p.All.Select(x => x.Data.ToArray()).ToList();

        // Hand computation: average the two micro-batch gradients (float model, separate instance),
        // clip in double, then AdamW step 1 in double.
        var twin = TrainingTestModels.Convert<float, float>(p);
        var model = new TrainingModel<float>(twin, 2, 6, new TrainingModelOptions { AuxLossCoefficient = 0.05, MaxThreads = 1 });
        twin.ZeroGrad();
        var tok = new int[12];
        var tgt = new int[12];
        for (int micro = 0; micro < 2; micro++)
        {
            data.Sample(9, 0, micro, 2, 6, tok, tgt);
            model.Forward(tok, tgt);
            model.Backward(0.5f);
        }
        double ss = twin.All.Sum(x => x.Grad.Sum(g => (double)g * g));
        double clip = Math.Min(1, 0.5 / Math.Sqrt(ss));
        double lr = 0.01 * 1 / 4; // warmup step 0 of 4

        var trainer = new Trainer(p, data, options);
        var result = trainer.TrainStep();
        Assert.Equal(lr, result.LearningRate, 12);
        Assert.Equal(Math.Sqrt(ss), result.GradNorm, 6);
        for (int k = 0; k < p.All.Count; k++)
        {
            for (int i = 0; i < p.All[k].Length; i++)
            {
                double g = twin.All[k].Grad[i] * clip;
                double m = 0.1 * g, v = 0.05 * g * g;
                double mh = m / (1 - 0.9), vh = v / (1 - 0.95);
                double decay = p.All[k].Decay ? 1 - lr * 0.1 : 1;
                double expected = before[k][i] * decay - lr * mh / (Math.Sqrt(vh) + 1e-8);
                Assert.True(Math.Abs(expected - p.All[k].Data[i]) <= UpdateTolerance, $"{p.All[k].Name}[{i}]: {p.All[k].Data[i]} vs {expected}");
            }
        }
    }

    [Fact]
    public void Tiny_model_overfits_tiny_text()
    {
        const string Text = "In the beginning God created the heaven and the earth. ";
        var chars = Text.Distinct().Order().ToList();
        int[] ids = [.. Text.Select(ch => chars.IndexOf(ch))];
        var config = new ModelConfig
        {
            Dim = 32,
            NLayers = 2,
            NHeads = 4,
            NKvHeads = 2,
            HeadDim = 8,
            HiddenDim = 48,
            VocabSize = chars.Count,
            SlidingWindow = 16,
            MaxSeqLen = 64,
            NExperts = 4,
            NExpertsPerToken = 2,
        };
        var p = ModelParameters<float>.Initialize(config, 5);
        // Exactly one window of T + 1 tokens: every batch is the text itself, so each next character is
        // determined by its prefix and the loss can go to zero.
        var trainer = new Trainer(p, new TokenDataset(ids[..25], ids[..25]), new TrainingOptions
        {
            BatchSize = 4,
            SeqLen = 24,
            TotalSteps = 150,
            WarmupSteps = 10,
            MaxLr = 2e-2,
            MinLr = 2e-3,
            WeightDecay = 0,
            Seed = 6,
            MaxThreads = 2,
        });
        double first = trainer.TrainStep().CrossEntropy;
        double last = first;
        while (trainer.Step < 150)
        {
            last = trainer.TrainStep().CrossEntropy;
        }
        // A uniform guess costs ln(V) ≈ 3.2 nats; memorising the text drives it towards 0.
        Assert.True(first > 2.5, $"initial loss {first}");
        Assert.True(last < 0.05, $"final training loss {last}");
        Assert.True(trainer.ValidationLoss() < 0.1, $"validation (the same text) {trainer.ValidationLoss()}");
    }
}
