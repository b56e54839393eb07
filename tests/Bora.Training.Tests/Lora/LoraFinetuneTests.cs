using Bora.Chat;
using Bora.Loading;
using Bora.Tokenizers;
using Bora.Training.Lora;

namespace Bora.Training.Tests.Lora;

/// <summary>Chat rendering with assistant-only targets, and the fine-tuning loop learning.</summary>
public class LoraFinetuneTests
{
    private static readonly string[] Conversations =
    [
        """{"messages": [{"role": "user", "content": "What colour is the sky?"}, {"role": "assistant", "content": "The sky is blue."}]}""",
        """{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple."}, {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "A pear."}]}""",
        """{"messages": [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello, friend!"}]}""",
    ];

    private static ITokenizer? Tok512()
    {
        var path = TestPaths.Shared("models", "stories260K", "tok512.model");
        return File.Exists(path) ? ModelLoader.LoadTokenizer(path) : null;
    }

    /// <summary>The runs of trained tokens, in order.</summary>
    private static List<int[]> TrainedRuns(ChatExample e)
    {
        var runs = new List<int[]>();
        var cur = new List<int>();
        for (int i = 0; i <= e.Tokens.Length; i++)
        {
            if (i < e.Tokens.Length && e.Trained[i])
            {
                cur.Add(e.Tokens[i]);
            }
            else if (cur.Count > 0)
            {
                runs.Add([.. cur]);
                cur.Clear();
            }
        }
        return runs;
    }

    private static int[] Reply(ITokenizer tok, string text) => [.. tok.Encode(text, addBos: false).Select(t => t.Value), tok.Eos.Value];

    [Fact]
    public void Only_assistant_tokens_and_their_end_of_sequence_are_trained()
    {
        var tok = Tok512();
        if (tok is null)
        {
            Console.WriteLine("skipped: shared test data is absent");
            return;
        }
        var renderer = new ChatRenderer(tok, TokenizerVersion.V1);
        var examples = ChatData.Render(ChatRequest.Parse(Conversations[1]), renderer);
        var e = Assert.Single(examples); // v1 renders turn by turn: one example for both replies
        Assert.Equal(renderer.Render(ChatRequest.Parse(Conversations[1]), ValidationMode.Finetuning).Tokens.Select(t => t.Value), e.Tokens);
        var runs = TrainedRuns(e);
        Assert.Equal(2, runs.Count);
        Assert.Equal(Reply(tok, "An apple."), runs[0]);
        Assert.Equal(Reply(tok, "A pear."), runs[1]);
        var error = Assert.Throws<ChatRequestException>(() => ChatData.Render(ChatRequest.Parse(
            """{"messages": [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Yes."}]}"""), renderer));
        Assert.Contains("messages[0]", error.Message, StringComparison.Ordinal);

        // The loss counts exactly those targets: recompute it from the logits by hand.
        var config = TrainingTestModels.Dense() with { VocabSize = 512, MaxSeqLen = 128 };
        var weights = TrainingTestModels.Random<float>(config, 5).ToWeights();
        var lora = LoraParameters<float>.Create(config, LoraTargets.Attention, 2, 4, 6);
        int t = e.Tokens.Length - 1;
        var model = LoraModel<float>.OverWeights(weights, lora, 1, t);
        var tokens = new int[t];
        var targets = new int[t];
        e.Fill(tokens, targets, 0);
        model.Model.Forward(tokens, targets);
        Assert.Equal(e.TrainedCount, model.Model.ValidTargets);
        var logits = model.Model.Logits;
        double sum = 0;
        int n = 0;
        for (int j = 0; j < t; j++)
        {
            if (!e.Trained[j + 1])
            {
                Assert.Equal(TrainingModel<float>.IgnoreTarget, targets[j]);
                continue;
            }
            var row = logits.Slice(j * 512, 512);
            double max = double.NegativeInfinity, z = 0;
            foreach (var v in row)
            {
                max = Math.Max(max, v);
            }
            foreach (var v in row)
            {
                z += Math.Exp(v - max);
            }
            sum += max + Math.Log(z) - row[e.Tokens[j + 1]];
            n++;
        }
        Assert.Equal(sum / n, model.Model.CrossEntropy, 4);
    }

    [Fact]
    public void Formats_that_move_the_system_prompt_give_one_example_per_turn()
    {
        var path = TestPaths.Shared("tokenizers", "mistral", "mistral_instruct_tokenizer_240323.model.v3");
        if (!File.Exists(path))
        {
            Console.WriteLine("skipped: shared test data is absent");
            return;
        }
        var tok = ModelLoader.LoadTokenizer(path);
        var renderer = new ChatRenderer(tok, TokenizerVersion.V3);
        var examples = ChatData.Render(ChatRequest.Parse(Conversations[1]), renderer);
        Assert.Equal(2, examples.Count); // v3 puts "Be brief." before the last user message
        Assert.Equal(Reply(tok, "An apple."), Assert.Single(TrainedRuns(examples[0])));
        Assert.Equal(Reply(tok, "A pear."), Assert.Single(TrainedRuns(examples[1])));
        Assert.Equal(Reply(tok, "A pear."), examples[1].Tokens[^Reply(tok, "A pear.").Length..]);
    }

    [Fact]
    public void Fine_tuning_a_tiny_model_lowers_its_loss_on_the_chat_data()
    {
        var tok = Tok512();
        if (tok is null)
        {
            Console.WriteLine("skipped: shared test data is absent");
            return;
        }
        var renderer = new ChatRenderer(tok, TokenizerVersion.V1);
        var data = Conversations.SelectMany(c => ChatData.Render(ChatRequest.Parse(c), renderer)).ToList();
        var config = TrainingTestModels.Moe() with { Dim = 32, VocabSize = 512, MaxSeqLen = 64, HiddenDim = 48 };
        var weights = TrainingTestModels.Random<float>(config, 7).ToWeights();
        var options = new TrainingOptions
        {
            BatchSize = 2,
            SeqLen = 40,
            TotalSteps = 40,
            WarmupSteps = 2,
            MaxLr = 2e-2,
            MinLr = 2e-3,
            WeightDecay = 0,
            Beta2 = 0.999,
            AuxLossCoefficient = 0,
            Seed = 3,
            MaxThreads = 2,
        };
        var lora = LoraParameters<float>.Create(config, LoraTestHelpers.AllTargets, rank: 4, alpha: 8, seed: 8);
        var model = LoraModel<float>.OverWeights(weights, lora, options.BatchSize, options.SeqLen);
        var trainer = new LoraTrainer(model, data, options);
        double before = trainer.Evaluate(data);
        for (int s = 0; s < options.TotalSteps; s++)
        {
            trainer.TrainStep();
        }
        double after = trainer.Evaluate(data);
        Assert.True(after < 0.5 * before, $"assistant-token loss {before:F3} -> {after:F3}");
        // The base stayed frozen: the runtime adapter over the untouched weights reproduces the trained model.
        var evalModel = LoraModel<float>.OverWeights(weights, LoraParameters<float>.FromAdapter(lora.ToAdapter(), config), options.BatchSize, options.SeqLen);
        Assert.Equal(after, LoraTrainer.Evaluate(evalModel, data), 6);
    }
}
