namespace Bora.Training.Tests;

/// <summary>
/// Every parameter's analytic gradient (the hand-written backward, run in double) against central
/// finite differences of the double forward. Each parameter tensor exercises the backward of the
/// layer it belongs to and of everything between it and the loss: the embedding's gradient passes
/// through every layer.
/// </summary>
public class GradientCheckTests
{
    /// <summary>Finite-difference step: central differences err by ~h² f''' ≈ 1e-10 and by rounding ~1e-16 / h ≈ 1e-11.</summary>
    private const double Step = 1e-5;

    /// <summary>
    /// Allowed |analytic - numeric| relative to max(|analytic|, |numeric|, 1e-3): the error terms above
    /// are ~1e-8 relative at these gradient sizes; a wrong backward term is off by O(1).
    /// </summary>
    private const double RelativeTolerance = 1e-5;

    /// <summary>Entries checked per parameter tensor (chosen with a fixed seed, spread over the tensor).</summary>
    private const int EntriesPerTensor = 6;

    public static TheoryData<string> Cases => ["dense", "dense-window-tied", "moe", "moe-window", "moe-tied-ignore"];

    [Theory]
    [MemberData(nameof(Cases))]
    public void Every_parameter_gradient_matches_finite_differences(string name)
    {
        var config = name switch
        {
            "dense" => TrainingTestModels.Dense(),
            "dense-window-tied" => TrainingTestModels.Dense(window: 3, tied: true),
            "moe" => TrainingTestModels.Moe(),
            "moe-window" => TrainingTestModels.Moe(window: 4),
            _ => TrainingTestModels.Moe(tied: true),
        };
        const int B = 2, T = 7;
        var p = TrainingTestModels.Random<double>(config, 21);
        // A large aux coefficient so the load-balancing gradient is a visible part of the router's.
        var options = new TrainingModelOptions { AuxLossCoefficient = 0.5, MaxThreads = 2 };
        var model = new TrainingModel<double>(p, B, T, options);
        var tokens = TrainingTestModels.Tokens(B * T, config.VocabSize, 22);
        var targets = TrainingTestModels.Tokens(B * T, config.VocabSize, 23);
        if (name.EndsWith("ignore", StringComparison.Ordinal))
        {
            targets[0] = targets[5] = TrainingModel<double>.IgnoreTarget;
        }
        p.ZeroGrad();
        model.Forward(tokens, targets);
        model.Backward(1.0);

        var failures = FiniteDifferenceMismatches(p.All, () => model.Forward(tokens, targets), new Random(24), EntriesPerTensor, Step, RelativeTolerance);
        Assert.True(failures.Count == 0, $"{name}: " + string.Join("\n", failures));
    }

    [Fact]
    public void Gradient_scales_with_loss_scale_and_accumulates()
    {
        var config = TrainingTestModels.Moe();
        var p = TrainingTestModels.Random<double>(config, 31);
        var model = new TrainingModel<double>(p, 1, 5);
        var tokens = TrainingTestModels.Tokens(5, config.VocabSize, 32);
        p.ZeroGrad();
        model.Forward(tokens, tokens);
        model.Backward(1.0);
        var once = p.All.Select(x => x.Grad.ToArray()).ToList();
        p.ZeroGrad();
        model.Forward(tokens, tokens);
        model.Backward(0.5);
        model.Forward(tokens, tokens);
        model.Backward(0.5);
        for (int k = 0; k < once.Count; k++)
        {
            for (int i = 0; i < once[k].Length; i++)
            {
                Assert.Equal(once[k][i], p.All[k].Grad[i], 12);
            }
        }
    }

    [Fact]
    public void Only_selected_experts_receive_gradient()
    {
        // One sequence of one token: exactly A of the E experts see it.
        var config = TrainingTestModels.Moe() with { NLayers = 1 };
        var p = TrainingTestModels.Random<double>(config, 41);
        var model = new TrainingModel<double>(p, 1, 1, new TrainingModelOptions { AuxLossCoefficient = 0.1 });
        p.ZeroGrad();
        model.Forward([3], [4]);
        model.Backward(1.0);
        int touched = p.Layers[0].Experts.Count(e => e.W1.Grad.Any(g => g != 0));
        Assert.Equal(config.NExpertsPerToken, touched);
        // The router still gets a gradient for every expert through the aux loss.
        Assert.All(Enumerable.Range(0, config.NExperts), e =>
            Assert.Contains(p.Layers[0].Router!.Grad.AsSpan(e * config.Dim, config.Dim).ToArray(), g => g != 0));
    }

    [Fact]
    public void Gradients_do_not_depend_on_thread_count()
    {
        var config = TrainingTestModels.Moe(window: 5);
        var a = TrainingTestModels.Random<float>(config, 51);
        var b = TrainingTestModels.Random<float>(config, 51);
        var tokens = TrainingTestModels.Tokens(4 * 16, config.VocabSize, 52);
        var ma = new TrainingModel<float>(a, 4, 16, new TrainingModelOptions { MaxThreads = 1 });
        var mb = new TrainingModel<float>(b, 4, 16, new TrainingModelOptions { MaxThreads = 4 });
        a.ZeroGrad();
        b.ZeroGrad();
        Assert.Equal(ma.Forward(tokens, tokens), mb.Forward(tokens, tokens));
        ma.Backward(1f);
        mb.Backward(1f);
        for (int k = 0; k < a.All.Count; k++)
        {
            Assert.Equal(a.All[k].Grad, b.All[k].Grad);
        }
    }

    /// <summary>
    /// Checks <paramref name="entriesPerTensor"/> entries (drawn from <paramref name="rng"/>) of each parameter's
    /// analytic gradient (already in Grad) against the central difference (f(x + h) - f(x - h)) / 2h of
    /// <paramref name="forward"/>, restoring each entry after; returns one line for each entry whose
    /// |analytic - numeric| / max(|analytic|, |numeric|, 1e-3) exceeds <paramref name="relativeTolerance"/>.
    /// </summary>
    internal static List<string> FiniteDifferenceMismatches(IEnumerable<Parameter<double>> parameters, Func<double> forward, Random rng,
        int entriesPerTensor, double step, double relativeTolerance)
    {
        var failures = new List<string>();
        foreach (var param in parameters)
        {
            for (int s = 0; s < entriesPerTensor; s++)
            {
                int i = rng.Next(param.Length);
                double saved = param.Data[i];
                param.Data[i] = saved + step;
                double up = forward();
                param.Data[i] = saved - step;
                double down = forward();
                param.Data[i] = saved;
                double numeric = (up - down) / (2 * step);
                double analytic = param.Grad[i];
                double err = Math.Abs(analytic - numeric) / Math.Max(1e-3, Math.Max(Math.Abs(analytic), Math.Abs(numeric)));
                if (err > relativeTolerance)
                {
                    failures.Add($"{param.Name}[{i}]: analytic {analytic:E6} numeric {numeric:E6} (rel {err:E2})");
                }
            }
        }
        return failures;
    }
}
