using System.Text;
using Bora.Generation;
using Bora.Tokenizers;

namespace Bora.Model.Tests.Generation;

public sealed class GeneratorTests
{
    private static readonly FakeTokenizer Tok = new();
    private static readonly int V = Tok.VocabSize;
    private static TokenId W(string piece) => FakeTokenizer.Word(piece);

    /// <summary>A model that emits <paramref name="script"/> after the prompt, then EOS forever.</summary>
    private static FakeCausalLM Script(int promptLength, params TokenId[] script) =>
        FakeCausalLM.Scripted(V, h => h.Count - promptLength < script.Length ? script[h.Count - promptLength] : Tok.Eos);

    /// <summary>Pseudo-random but deterministic logits of the history; EOS suppressed.</summary>
    private static void HashLogits(IReadOnlyList<TokenId> h, float[] row)
    {
        ulong x = 1469598103934665603UL;
        foreach (TokenId t in h)
        {
            x = (x ^ (ulong)t.Value) * 1099511628211UL;
        }
        for (int i = 0; i < row.Length; i++)
        {
            ulong y = (x + (ulong)i) * 0x9E3779B97F4A7C15UL;
            row[i] = (float)((y >> 40) % 1000) / 1000f; // flat-ish: all within [0, 1)
        }
        row[Tok.Eos.Value] = -100f;
    }

    private static TokenId[] Prompt(string text) => Tok.Encode(text, addBos: true);

    [Fact]
    public void Greedy_FollowsArgmax_WithOneBatchedPrefill()
    {
        var model = new FakeCausalLM(V, HashLogits);
        TokenId[] prompt = Prompt("abc");
        var result = new Generator(model, Tok, contextLength: 64).Generate(prompt, SamplingOptions.Greedy with { MaxTokens = 10 });

        // Independent expectation: argmax of the same function, history grown by hand.
        var history = new List<TokenId>(prompt);
        var row = new float[V];
        var expected = new List<TokenId>();
        for (int i = 0; i < 10; i++)
        {
            Array.Clear(row);
            HashLogits(history, row);
            int best = 0;
            for (int j = 1; j < V; j++)
            {
                best = row[j] > row[best] ? j : best;
            }
            expected.Add(new TokenId(best));
            history.Add(new TokenId(best));
        }
        Assert.Equal(expected, result.Tokens);
        Assert.Equal(FinishReason.Length, result.FinishReason);
        // One prefill of the 4 prompt tokens, then one token per forward; the 10th token is never run.
        Assert.Equal([4, 1, 1, 1, 1, 1, 1, 1, 1, 1], model.Calls);
        Assert.Equal(Tok.Decode([.. prompt, .. result.Tokens])[3..], result.Text);
    }

    [Fact]
    public void EmptyPrompt_MeansBosOnly()
    {
        TokenId? first = null;
        var model = new FakeCausalLM(V, (h, row) => { first ??= h[0]; row[W("▁Hello").Value] = 5; });
        var result = new Generator(model, Tok, 16).Generate([], SamplingOptions.Greedy with { MaxTokens = 1 });
        Assert.Equal(Tok.Bos, first);
        Assert.Equal([1], model.Calls);
        Assert.Equal("Hello", result.Text); // first piece after BOS loses its dummy-prefix space
    }

    [Fact]
    public void StopsAtEos()
    {
        var model = Script(1, W("▁Hello"), W("▁world"));
        var result = new Generator(model, Tok, 16).Generate([Tok.Bos], SamplingOptions.Greedy);
        Assert.Equal([W("▁Hello"), W("▁world"), Tok.Eos], result.Tokens);
        Assert.Equal("Hello world", result.Text);
        Assert.Equal(FinishReason.Eos, result.FinishReason);
        Assert.Equal(3, result.Stats.GeneratedTokens);
    }

    [Fact]
    public void MaxTokens_Limits()
    {
        var model = Script(1, W("▁Hello"), W("▁world"), W("!"));
        var gen = new Generator(model, Tok, 16);
        var r = gen.Generate([Tok.Bos], SamplingOptions.Greedy with { MaxTokens = 2 });
        Assert.Equal([W("▁Hello"), W("▁world")], r.Tokens);
        Assert.Equal(FinishReason.Length, r.FinishReason);

        model.Calls.Clear();
        var none = gen.Generate([Tok.Bos], SamplingOptions.Greedy with { MaxTokens = 0 });
        Assert.Empty(none.Tokens);
        Assert.Equal(FinishReason.Length, none.FinishReason);
        Assert.Empty(model.Calls);
    }

    [Fact]
    public void ContextFull_StopsBeforeOverflowingTheCache()
    {
        var model = new FakeCausalLM(V, HashLogits);
        TokenId[] prompt = Prompt("ab"); // 3 tokens
        var r = new Generator(model, Tok, contextLength: 8).Generate(prompt, SamplingOptions.Greedy with { MaxTokens = 100 });
        // Positions 0..7: the prompt fills 3, 5 generated tokens are run, the 6th is sampled from position 7.
        Assert.Equal(6, r.Tokens.Count);
        Assert.Equal(FinishReason.ContextFull, r.FinishReason);
        Assert.Equal(8, model.Calls.Sum());

        // A prompt filling the whole context still yields one token; a longer one is refused.
        var full = new Generator(model, Tok, contextLength: 3).Generate(prompt, SamplingOptions.Greedy);
        Assert.Single(full.Tokens);
        Assert.Equal(FinishReason.ContextFull, full.FinishReason);
        Assert.Throws<ArgumentException>(() => new Generator(model, Tok, contextLength: 2).Stream(prompt, SamplingOptions.Greedy));
    }

    [Fact]
    public void StopString_SplitAcrossTokens_IsHeldThenDropped()
    {
        var model = Script(1, W("▁Hello"), W("\n"), W("Us"), W("er"), W(":"), W("▁x"));
        var stream = new Generator(model, Tok, 32).Stream([Tok.Bos], SamplingOptions.Greedy with { StopStrings = ["\nUser:"] });
        var deltas = stream.Select(t => t.Text).ToList();
        Assert.Equal(["Hello", "", "", "", ""], deltas);
        Assert.Equal(FinishReason.Stop, stream.FinishReason);
        Assert.Equal("Hello", stream.Text);
        Assert.Equal(5, stream.Tokens.Count); // "▁x" is never generated
    }

    [Fact]
    public void StopString_PrefixThatDoesNotComplete_IsReleased()
    {
        var model = Script(1, W("▁Hello"), W("\n"), W("Us"), W("eful"));
        var stream = new Generator(model, Tok, 32).Stream([Tok.Bos], SamplingOptions.Greedy with { StopStrings = ["\nUser:"] });
        Assert.Equal(["Hello", "", "", "\nUseful", ""], stream.Select(t => t.Text).ToList());
        Assert.Equal(FinishReason.Eos, stream.FinishReason);

        // Held text is also released when the length limit ends the stream.
        var limited = new Generator(Script(1, W("▁Hello"), W("\n"), W("Us")), Tok, 32)
            .Generate([Tok.Bos], SamplingOptions.Greedy with { StopStrings = ["\nUser:"], MaxTokens = 3 });
        Assert.Equal("Hello\nUs", limited.Text);
        Assert.Equal(FinishReason.Length, limited.FinishReason);
    }

    [Fact]
    public void StopString_HeldText_IsReleasedAtAControlToken_AndStopsDoNotSpanIt()
    {
        // BOS is a control token of the fake tokenizer (like [TOOL_CALLS]): it ends the text run, so the held
        // "\nUs" comes out with it and "er:" after it cannot complete "\nUser:".
        var stream = new Generator(Script(1, W("▁Hello"), W("\n"), W("Us"), Tok.Bos, W("er"), W(":")), Tok, 32)
            .Stream([Tok.Bos], SamplingOptions.Greedy with { StopStrings = ["\nUser:"] });
        Assert.Equal(["Hello", "", "", "\nUs", "er", ":", ""], stream.Select(t => t.Text).ToList());
        Assert.Equal(FinishReason.Eos, stream.FinishReason);
        Assert.Equal("Hello\nUser:", stream.Text);
    }

    [Fact]
    public void StopString_InsideOneToken_DropsItAndWhatFollows_EarliestStopWins()
    {
        var r = new Generator(Script(1, W("▁Hello"), W("lo!X")), Tok, 32)
            .Generate([Tok.Bos], SamplingOptions.Greedy with { StopStrings = ["X", "!"] });
        Assert.Equal("Hellolo", r.Text);
        Assert.Equal(FinishReason.Stop, r.FinishReason);

        var r2 = new Generator(Script(1, W("▁Hello"), W("\n"), W("Us"), W("er"), W(":")), Tok, 32)
            .Generate([Tok.Bos], SamplingOptions.Greedy with { StopStrings = ["er:", "\nUs"] });
        Assert.Equal("Hello", r2.Text);
        Assert.Equal(3, r2.Tokens.Count);
    }

    [Fact]
    public void Emoji_SplitOverByteTokens_StreamsWholeCharacters()
    {
        TokenId[] emoji = [.. Encoding.UTF8.GetBytes("😀").Select(FakeTokenizer.Byte)];
        var stream = new Generator(Script(1, emoji), Tok, 32).Stream([Tok.Bos], SamplingOptions.Greedy);
        Assert.Equal(["", "", "", "😀", ""], stream.Select(t => t.Text).ToList());

        // An incomplete character at EOS becomes U+FFFD, carried by the EOS step.
        var cut = new Generator(Script(1, emoji[..2]), Tok, 32).Stream([Tok.Bos], SamplingOptions.Greedy);
        Assert.Equal(["", "", "\uFFFD"], cut.Select(t => t.Text).ToList());
    }

    [Fact]
    public void Seeds_ReproduceAndDiffer()
    {
        var model = new FakeCausalLM(V, HashLogits);
        var gen = new Generator(model, Tok, 64);
        var options = new SamplingOptions { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f, MaxTokens = 20, Seed = 1 };
        var a = gen.Generate(Prompt("x"), options);
        var b = gen.Generate(Prompt("x"), options);
        var c = gen.Generate(Prompt("x"), options with { Seed = 2 });
        Assert.Equal(a.Tokens, b.Tokens);
        Assert.NotEqual(a.Tokens, c.Tokens);
        Assert.Equal(1UL, a.Seed);

        var random = gen.Generate(Prompt("x"), options with { Seed = null });
        Assert.Equal(random.Tokens, gen.Generate(Prompt("x"), options with { Seed = random.Seed }).Tokens);
    }

    [Fact]
    public void Cancellation_StopsBetweenTokens_AndTheGeneratorStaysUsable()
    {
        var model = new FakeCausalLM(V, HashLogits);
        var gen = new Generator(model, Tok, 64);
        using var cts = new CancellationTokenSource();
        int seen = 0;
        Assert.Throws<OperationCanceledException>(() =>
        {
            foreach (var _ in gen.Stream(Prompt("x"), SamplingOptions.Greedy with { MaxTokens = 50 }, cts.Token))
            {
                if (++seen == 3)
                {
                    cts.Cancel();
                }
            }
        });
        Assert.Equal(3, seen);
        Assert.Equal(5, gen.Generate(Prompt("x"), SamplingOptions.Greedy with { MaxTokens = 5 }).Tokens.Count);
    }

    [Fact]
    public void Stats_CountTokens()
    {
        var model = new FakeCausalLM(V, HashLogits);
        var r = new Generator(model, Tok, 64).Generate(Prompt("hello"), SamplingOptions.Greedy with { MaxTokens = 7 });
        Assert.Equal(6, r.Stats.PromptTokens);
        Assert.Equal(7, r.Stats.GeneratedTokens);
        Assert.True(r.Stats.PrefillTime > TimeSpan.Zero);
        Assert.True(r.Stats.DecodeTokensPerSecond > 0);
        Assert.True(r.Stats.PrefillTokensPerSecond > 0);
    }

    [Fact]
    public void BadArguments_AreRejected()
    {
        var gen = new Generator(new FakeCausalLM(V, HashLogits), Tok, 16);
        Assert.Contains("expected an id in", Assert.Throws<ArgumentException>(() => gen.Stream([new TokenId(V)], SamplingOptions.Greedy)).Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => gen.Stream([Tok.Bos], SamplingOptions.Greedy with { TopP = 0 }));
        var stream = gen.Stream([Tok.Bos], SamplingOptions.Greedy with { MaxTokens = 2 });
        _ = stream.ToList();
        Assert.Throws<InvalidOperationException>(() => stream.ToList());
    }
}
