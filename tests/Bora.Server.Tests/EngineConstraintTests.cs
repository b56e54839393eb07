using Bora.Generation;
using Bora.Generation.Constraints;
using Bora.Serving;
using Bora.Tokenizers;

namespace Bora.Server.Tests;

/// <summary>The engine's per-sequence constraint and logprob path, without HTTP.</summary>
public class EngineConstraintTests
{
    /// <summary>Allows every token but EOS; complete after <paramref name="length"/> tokens, or a dead end from the start.</summary>
    private sealed class CountingConstraint(int length, bool deadEnd = false) : ITokenConstraint
    {
        private const int Eos = 2; // </s> of Mistral's v3 tokenizer

        public int Advanced { get; private set; }

        public bool IsComplete => Advanced >= length;

        public bool Mask(Span<float> logits)
        {
            if (deadEnd)
            {
                logits.Fill(float.NegativeInfinity);
                return false;
            }
            logits[Eos] = float.NegativeInfinity;
            return true;
        }

        public void Advance(TokenId token) => Advanced++;
    }

    private static (InferenceEngine Engine, ITokenizer Tokenizer)? Create()
    {
        string path = RandomV3Server.TokenizerPath;
        if (!File.Exists(path))
        {
            return null;
        }
        var tok = SentencePieceTokenizer.Load(path);
        var config = RandomModels.Dense() with { VocabSize = tok.VocabSize };
        return (new InferenceEngine(RandomModels.Build(config, seed: 5), tok, new EngineOptions { BlockSize = 8 }), tok);
    }

    private static async Task<(string Text, List<GenerationDelta> Deltas, GenerationSummary Summary)> Run(GenerationHandle h)
    {
        var deltas = new List<GenerationDelta>();
        await foreach (var d in h.Deltas.ReadAllAsync())
        {
            deltas.Add(d);
        }
        return (string.Concat(deltas.Select(d => d.Text)), deltas, await h.Completion);
    }

    [Fact]
    public async Task A_complete_constraint_ends_the_sequence_with_stop_and_stop_strings_are_not_applied()
    {
        if (Create() is not { } e)
        {
            return;
        }
        using var engine = e.Engine;
        var prompt = e.Tokenizer.Encode("hello", addBos: true);
        var sampling = new SamplingOptions { Temperature = 1, Seed = 9, MaxTokens = 50, StopStrings = ["e", "a", " "] };
        var constraint = new CountingConstraint(5);
        var (_, deltas, summary) = await Run(engine.Submit(prompt, sampling, new SubmitOptions { Constraint = constraint, TopLogprobs = 2 }));
        Assert.Equal(FinishReason.Stop, summary.FinishReason);
        Assert.Equal(5, summary.CompletionTokens);
        Assert.Equal(5, constraint.Advanced);
        var tokenDeltas = deltas.Where(d => d.Token is not null).ToList();
        Assert.Equal(5, tokenDeltas.Count);
        Assert.All(tokenDeltas, d =>
        {
            Assert.NotNull(d.Logprob);
            Assert.Equal(d.Token, d.Logprob!.Id);
            Assert.Equal(2, d.Logprob.Top.Count);
            Assert.True(d.Logprob.Top[0].Logprob >= d.Logprob.Top[1].Logprob);
        });
        // Without logprobs the deltas carry none.
        var (_, plain, _) = await Run(engine.Submit(prompt, sampling with { StopStrings = [] }, new SubmitOptions { Constraint = new CountingConstraint(3) }));
        Assert.All(plain, d => Assert.Null(d.Logprob));
    }

    [Fact]
    public async Task A_dead_end_constraint_ends_with_length_and_the_engine_keeps_serving()
    {
        if (Create() is not { } e)
        {
            return;
        }
        using var engine = e.Engine;
        var prompt = e.Tokenizer.Encode("hello", addBos: true);
        var sampling = new SamplingOptions { Temperature = 0, MaxTokens = 20 };
        var (text, _, summary) = await Run(engine.Submit(prompt, sampling, new SubmitOptions { Constraint = new CountingConstraint(10, deadEnd: true) }));
        Assert.Equal(FinishReason.Length, summary.FinishReason);
        Assert.Equal("", text);
        var (_, _, next) = await Run(engine.Submit(prompt, sampling));
        Assert.True(next.FinishReason is FinishReason.Length or FinishReason.Eos, $"finished with {next.FinishReason}");
        Assert.InRange(next.CompletionTokens, 1, 20);
        Assert.Throws<ArgumentException>(() => engine.Submit(prompt, sampling, new SubmitOptions { TopLogprobs = Logprobs.MaxTop + 1 }));
    }
}
