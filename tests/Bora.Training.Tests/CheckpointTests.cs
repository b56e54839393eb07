using Bora.Loading;
using Bora.Model;
using Bora.Tokenizers;

namespace Bora.Training.Tests;

public sealed class CheckpointTests : IDisposable
{
    /// <summary>As <c>ForwardParityTests.LogitTolerance</c>: float32 training forward vs Transformer, different summation orders.</summary>
    private const float LogitTolerance = 1e-4f;

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "bora-ckpt-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir))
        {
            Directory.Delete(_dir, recursive: true);
        }
    }

    private static TrainingOptions Options => new()
    {
        BatchSize = 2,
        SeqLen = 8,
        AccumulationSteps = 2,
        TotalSteps = 8,
        WarmupSteps = 2,
        MaxLr = 5e-3,
        MinLr = 5e-4,
        Seed = 17,
        MaxThreads = 2,
        AuxLossCoefficient = 0.02,
    };

    [Fact]
    public void Resumed_training_gives_the_same_loss_curve()
    {
        var config = TrainingTestModels.Moe(window: 5);
        var data = new TokenDataset(TrainingTestModels.Tokens(300, config.VocabSize, 1), TrainingTestModels.Tokens(40, config.VocabSize, 2));

        var straight = new Trainer(ModelParameters<float>.Initialize(config, 3), data, Options);
        var curve = Enumerable.Range(0, 8).Select(_ => straight.TrainStep().Loss).ToArray();

        var first = new Trainer(ModelParameters<float>.Initialize(config, 3), data, Options);
        var resumedCurve = Enumerable.Range(0, 3).Select(_ => first.TrainStep().Loss).ToList();
        Checkpoint.Save(_dir, first);

        var second = new Trainer(Checkpoint.LoadParameters(_dir), data, Options);
        Checkpoint.Restore(_dir, second);
        Assert.Equal(3, second.Step);
        while (second.Step < 8)
        {
            resumedCurve.Add(second.TrainStep().Loss);
        }
        Assert.Equal(curve, resumedCurve); // bit-identical
        for (int k = 0; k < straight.Parameters.All.Count; k++)
        {
            Assert.Equal(straight.Parameters.All[k].Data, second.Parameters.All[k].Data);
        }
    }

    [Fact]
    public void Checkpoint_folder_is_a_model_that_ModelLoader_opens()
    {
        var tokenizer = TestPaths.Shared("models", "stories260K", "tok512.model");
        if (!File.Exists(tokenizer))
        {
            Console.WriteLine($"skipped: {tokenizer} is absent");
            return;
        }
        var config = TrainingTestModels.Moe(window: 4, tied: true) with { VocabSize = 512 };
        var p = TrainingTestModels.Random<float>(config, 8);
        var opt = new AdamW(p.All);
        Checkpoint.Save(_dir, p, opt, tokenizer);
        Assert.False(Directory.GetFiles(_dir, "*.tmp").Any());

        var loaded = ModelLoader.Load(_dir, kvType: KvCacheType.F32); // float32 keys and values, as the training forward
        Assert.Equal(config, loaded.Config);
        Assert.Equal(512, loaded.Tokenizer.VocabSize);
        var tokens = TrainingTestModels.Tokens(9, 512, 4);
        var expected = new float[9 * 512];
        loaded.Model.Forward([.. tokens.Select(t => new TokenId(t))], loaded.Model.CreateCache(9), expected);
        var model = new TrainingModel<float>(p, 1, 9);
        model.Forward(tokens, tokens);
        var actual = model.Logits.ToArray();
        Assert.True(expected.Zip(actual).Max(x => Math.Abs(x.First - x.Second)) <= LogitTolerance);

        // Weights-only save drops the optimizer state; restoring from it is refused clearly.
        Checkpoint.Save(_dir, p, optimizer: null);
        var e = Assert.Throws<Bora.Formats.ModelFormatException>(() => Checkpoint.RestoreOptimizer(_dir, p, new AdamW(p.All)));
        Assert.Contains("bora.step", e.Message, StringComparison.Ordinal);
    }
}
