using Bora.Training.Lora;

namespace Bora.Training.Tests.Lora;

/// <summary>The LoRA factors' analytic gradients (double) against central finite differences of the double forward.</summary>
public class LoraGradientCheckTests
{
    /// <summary>Finite-difference step, as <see cref="GradientCheckTests"/>: truncation ~h² ≈ 1e-10, rounding ~1e-11.</summary>
    private const double Step = 1e-5;

    /// <summary>Allowed relative error (as the base model's gradient check): the error terms are ~1e-8; a wrong term is O(1).</summary>
    private const double RelativeTolerance = 1e-5;

    private const int EntriesPerTensor = 4;

    public static TheoryData<string> Cases => ["dense", "moe-window-tied"];

    [Theory]
    [MemberData(nameof(Cases))]
    public void Lora_gradients_match_finite_differences_and_the_base_stays_frozen(string name)
    {
        var config = name == "dense" ? TrainingTestModels.Dense() : TrainingTestModels.Moe(window: 4, tied: true);
        const int B = 2, T = 6;
        var basis = TrainingTestModels.Random<double>(config, 61);
        var lora = LoraParameters<double>.Create(config, LoraTestHelpers.AllTargets, rank: 3, alpha: 5, seed: 62);
        LoraTestHelpers.RandomizeB(lora, 63);
        var model = LoraModel<double>.OverDense(basis, lora, B, T, new TrainingModelOptions { AuxLossCoefficient = 0.3, MaxThreads = 2 });
        var tokens = TrainingTestModels.Tokens(B * T, config.VocabSize, 64);
        var targets = TrainingTestModels.Tokens(B * T, config.VocabSize, 65);
        targets[0] = targets[4] = TrainingModel<double>.IgnoreTarget;
        basis.ZeroGrad();
        lora.ZeroGrad();
        model.Model.Forward(tokens, targets);
        model.Model.Backward(1.0);

        var failures = GradientCheckTests.FiniteDifferenceMismatches(lora.All, () => model.Model.Forward(tokens, targets), new Random(66),
            EntriesPerTensor, Step, RelativeTolerance);
        Assert.True(failures.Count == 0, $"{name}: " + string.Join("\n", failures));
        Assert.Contains(lora.All, p => p.Grad.Any(g => Math.Abs(g) > 1e-6));
        // Frozen: no matrix of the base received a gradient.
        Assert.All(basis.All.Where(p => p.Shape.Length == 2 && p != basis.TokenEmbedding), p => Assert.All(p.Grad, g => Assert.Equal(0.0, g)));
    }

    [Fact]
    public void With_B_zero_the_adapted_model_equals_the_base_exactly()
    {
        var config = TrainingTestModels.Moe();
        var basis = TrainingTestModels.Random<float>(config, 71);
        var lora = LoraParameters<float>.Create(config, LoraTestHelpers.AllTargets, rank: 4, alpha: 8, seed: 72);
        Assert.All(lora.Factors.Values, f => Assert.All(f.B.Data, v => Assert.Equal(0f, v)));
        // PEFT's kaiming-uniform(a = sqrt(5)) bound is 1 / sqrt(in).
        Assert.All(lora.Factors.Values, f => Assert.All(f.A.Data, v => Assert.InRange(Math.Abs(v), 0, 1 / Math.Sqrt(f.A.Shape[1]))));
        Assert.Contains(lora.Factors.Values, f => f.A.Data.Any(v => v != 0));
        var tokens = TrainingTestModels.Tokens(2 * 8, config.VocabSize, 73);
        var plain = new TrainingModel<float>(basis, 2, 8);
        var adapted = LoraModel<float>.OverDense(basis, lora, 2, 8);
        plain.Forward(tokens, tokens);
        adapted.Model.Forward(tokens, tokens);
        Assert.Equal(plain.Logits.ToArray(), adapted.Model.Logits.ToArray());
    }

    [Fact]
    public void Adapted_forward_equals_the_base_with_merged_weights()
    {
        // Independent of the LoRA op: W + s B A written into a dense copy and run by the plain training model.
        var config = TrainingTestModels.Moe(window: 3);
        var basis = TrainingTestModels.Random<double>(config, 81);
        var lora = LoraParameters<double>.Create(config, LoraTestHelpers.AllTargets, rank: 2, alpha: 3, seed: 82);
        LoraTestHelpers.RandomizeB(lora, 83);
        var merged = TrainingTestModels.Convert<double, double>(basis);
        var byName = merged.All.ToDictionary(p => p.Name);
        double s = lora.Alpha / lora.Rank;
        foreach (var (key, (a, b)) in lora.Factors)
        {
            string name = key.Module switch
            {
                Bora.Model.Lora.LoraModule.Q => $"layers.{key.Layer}.attention.wq.weight",
                Bora.Model.Lora.LoraModule.K => $"layers.{key.Layer}.attention.wk.weight",
                Bora.Model.Lora.LoraModule.V => $"layers.{key.Layer}.attention.wv.weight",
                Bora.Model.Lora.LoraModule.O => $"layers.{key.Layer}.attention.wo.weight",
                _ => $"layers.{key.Layer}.feed_forward.experts.{key.Expert}.w{(int)key.Module - 3}.weight",
            };
            var w = byName[name];
            int outF = (int)b.Shape[0], inF = (int)a.Shape[1], r = lora.Rank;
            for (int o = 0; o < outF; o++)
            {
                for (int i = 0; i < inF; i++)
                {
                    double sum = 0;
                    for (int k = 0; k < r; k++)
                    {
                        sum += b.Data[o * r + k] * a.Data[k * inF + i];
                    }
                    w.Data[o * inF + i] += s * sum;
                }
            }
        }
        var tokens = TrainingTestModels.Tokens(2 * 7, config.VocabSize, 84);
        var adapted = LoraModel<double>.OverDense(basis, lora, 2, 7);
        var reference = new TrainingModel<double>(merged, 2, 7);
        double la = adapted.Model.Forward(tokens, tokens);
        double lr = reference.Forward(tokens, tokens);
        Assert.True(LoraTestHelpers.MaxAbsDiff<double, double>(adapted.Model.Logits, reference.Logits) < 1e-10);
        Assert.Equal(lr, la, 10);
    }

    [Fact]
    public void Lora_gradients_do_not_depend_on_thread_count()
    {
        var config = TrainingTestModels.Moe(window: 5);
        var weights = TrainingTestModels.Random<float>(config, 91).ToWeights();
        var tokens = TrainingTestModels.Tokens(3 * 16, config.VocabSize, 92);
        LoraParameters<float> Run(int threads)
        {
            var lora = LoraParameters<float>.Create(config, LoraTestHelpers.AllTargets, 4, 8, 93);
            LoraTestHelpers.RandomizeB(lora, 94);
            var model = LoraModel<float>.OverWeights(weights, lora, 3, 16, new TrainingModelOptions { MaxThreads = threads });
            model.Model.Forward(tokens, tokens);
            model.Model.Backward(1f);
            return lora;
        }
        var one = Run(1);
        var three = Run(3);
        for (int k = 0; k < one.All.Count; k++)
        {
            Assert.Equal(one.All[k].Grad, three.All[k].Grad);
        }
    }
}
