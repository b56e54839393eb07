using Bora.Model;
using Bora.Tokenizers;

namespace Bora.Training.Tests;

/// <summary>The training forward must compute exactly the model Bora's inference engine runs.</summary>
public class ForwardParityTests
{
    /// <summary>
    /// Max-abs logit difference allowed between the training forward (its own GEMM and loops) and
    /// <see cref="Transformer"/> (F32Matrix and TensorPrimitives kernels) on the same float32 weights:
    /// both are float32 with different summation orders; logits here are O(3) and measured differences
    /// are around 1e-6, so 1e-4 leaves room without hiding a wrong mask, rotation or routing (those move logits by O(0.1)).
    /// </summary>
    private const float LogitTolerance = 1e-4f;

    public static TheoryData<string> Configs => ["dense", "dense-window", "moe", "moe-window-tied", "dense-tied"];

    [Theory]
    [MemberData(nameof(Configs))]
    public void Logits_match_the_inference_transformer(string name)
    {
        var config = name switch
        {
            "dense" => TrainingTestModels.Dense(),
            "dense-window" => TrainingTestModels.Dense(window: 5),
            "moe" => TrainingTestModels.Moe(),
            "moe-window-tied" => TrainingTestModels.Moe(window: 4, tied: true),
            _ => TrainingTestModels.Dense(tied: true),
        };
        const int B = 3, T = 11;
        var p = TrainingTestModels.Random<float>(config, 42);
        var model = new TrainingModel<float>(p, B, T, new TrainingModelOptions { MaxThreads = 2 });
        var tokens = TrainingTestModels.Tokens(B * T, config.VocabSize, 7);
        model.Forward(tokens, tokens);
        var logits = model.Logits.ToArray();

        // The training forward keeps keys and values in float32: compare with an F32 KV cache (F16 rounds them).
        var inference = new Transformer(p.ToWeights()) { KvType = KvCacheType.F32 };
        int v = config.VocabSize;
        float worst = 0;
        for (int b = 0; b < B; b++)
        {
            var expected = new float[T * v];
            inference.Forward([.. tokens.Skip(b * T).Take(T).Select(t => new TokenId(t))], inference.CreateCache(T), expected);
            for (int i = 0; i < T * v; i++)
            {
                worst = Math.Max(worst, Math.Abs(expected[i] - logits[b * T * v + i]));
            }
        }
        Assert.True(worst <= LogitTolerance, $"{name}: max |logit difference| {worst}");
    }

    [Fact]
    public void Cross_entropy_is_the_mean_negative_log_softmax_of_the_targets()
    {
        var config = TrainingTestModels.Moe();
        const int B = 2, T = 5;
        var p = TrainingTestModels.Random<double>(config, 3);
        var model = new TrainingModel<double>(p, B, T, new TrainingModelOptions { AuxLossCoefficient = 0 });
        var tokens = TrainingTestModels.Tokens(B * T, config.VocabSize, 8);
        var targets = TrainingTestModels.Tokens(B * T, config.VocabSize, 9);
        targets[3] = TrainingModel<double>.IgnoreTarget;
        double loss = model.Forward(tokens, targets);
        var logits = model.Logits.ToArray();
        double sum = 0;
        int count = 0;
        for (int i = 0; i < B * T; i++)
        {
            if (targets[i] < 0)
            {
                continue;
            }
            var row = logits.AsSpan(i * config.VocabSize, config.VocabSize).ToArray();
            double max = row.Max();
            double lse = max + Math.Log(row.Sum(x => Math.Exp(x - max)));
            sum += lse - row[targets[i]];
            count++;
        }
        Assert.Equal(sum / count, loss, 12);
        Assert.Equal(B * T - 1, model.ValidTargets);
    }

    [Fact]
    public void Aux_loss_is_E_sum_of_fraction_times_mean_probability()
    {
        // One layer so the average over layers is that layer's term.
        var config = TrainingTestModels.Moe() with { NLayers = 1 };
        const int B = 1, T = 6;
        const double Coef = 0.3;
        var p = TrainingTestModels.Random<double>(config, 11);
        var model = new TrainingModel<double>(p, B, T, new TrainingModelOptions { AuxLossCoefficient = Coef });
        var tokens = TrainingTestModels.Tokens(B * T, config.VocabSize, 12);
        model.Forward(tokens, tokens);

        // Independent recomputation: with Wo = 0 the attention block adds nothing, so the router input
        // is RMSNorm(embedding) and f, P can be evaluated directly from the weights.
        var q = TrainingTestModels.Convert<double, double>(p);
        Array.Clear(q.Layers[0].Wo.Data);
        var m2 = new TrainingModel<double>(q, B, T, new TrainingModelOptions { AuxLossCoefficient = Coef });
        m2.Forward(tokens, tokens);
        int d = config.Dim, e = config.NExperts, a = config.NExpertsPerToken;
        var f = new double[e];
        var pm = new double[e];
        for (int t = 0; t < T; t++)
        {
            var x = q.TokenEmbedding.Data.AsSpan(tokens[t] * d, d).ToArray();
            double inv = 1 / Math.Sqrt(x.Sum(v => v * v) / d + config.NormEps);
            var xn = x.Select((v, i) => v * inv * q.Layers[0].FfnNorm.Data[i]).ToArray();
            var z = Enumerable.Range(0, e).Select(k => Enumerable.Range(0, d).Sum(i => q.Layers[0].Router!.Data[k * d + i] * xn[i])).ToArray();
            double zmax = z.Max();
            var ez = z.Select(v => Math.Exp(v - zmax)).ToArray();
            for (int k = 0; k < e; k++)
            {
                pm[k] += ez[k] / ez.Sum() / T;
            }
            foreach (var k in Enumerable.Range(0, e).OrderByDescending(k => z[k]).ThenBy(k => k).Take(a))
            {
                f[k] += 1.0 / T;
            }
        }
        double expected = Coef * e * Enumerable.Range(0, e).Sum(k => f[k] * pm[k]);
        Assert.Equal(expected, m2.AuxLoss, 12);
        Assert.True(model.AuxLoss > 0);
    }
}
