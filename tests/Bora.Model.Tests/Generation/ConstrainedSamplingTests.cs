using System.Text;
using System.Text.Json;
using Bora.Chat;
using Bora.Generation;
using Bora.Generation.Constraints;
using Bora.Tokenizers;

namespace Bora.Model.Tests.Generation;

/// <summary>Presence/frequency penalties, raw logprobs, token masks of grammar constraints, and constrained sampling loops over real vocabularies.</summary>
public class ConstrainedSamplingTests
{
    /// <summary>float32 logit arithmetic against exact hand values.</summary>
    private const float LogitTolerance = 1e-5f;

    /// <summary>float32 log-softmax against a double reference over a few hundred logits of magnitude &lt; 10.</summary>
    private const float LogprobTolerance = 1e-4f;

    private static readonly SamplingOptions NoFilters = new() { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f, Seed = 3 };

    private static string Shared(string name) => TestPaths.Shared("tokenizers", "mistral", name);

    private static SentencePieceTokenizer? V3() =>
        File.Exists(Shared("mistral_instruct_tokenizer_240323.model.v3")) ? SentencePieceTokenizer.Load(Shared("mistral_instruct_tokenizer_240323.model.v3")) : null;

    [Fact]
    public void Presence_and_frequency_penalties_follow_openai_over_generated_tokens_only()
    {
        var s = new Sampler(5, NoFilters with { PresencePenalty = 0.5f, FrequencyPenalty = 0.25f });
        float[] logits = [1f, 2f, 3f, 4f, 5f];
        // prompt [4, 4], generated [1, 1, 3]: token 1 loses 0.5 + 2 * 0.25 = 1, token 3 loses 0.75, token 4 (prompt only) nothing.
        TokenId[] history = [new(4), new(4), new(1), new(1), new(3)];
        var c = s.Candidates(logits, history, promptLength: 2).ToArray();
        float[] expected = [1f, 1f, 3f, 3.25f, 5f];
        for (int i = 0; i < 5; i++)
        {
            Assert.Equal(i, c[i].Id.Value);
            Assert.InRange(c[i].Logit, expected[i] - LogitTolerance, expected[i] + LogitTolerance);
        }
        // Negative penalties encourage repeats; promptLength = history length counts nothing.
        var enc = new Sampler(5, NoFilters with { PresencePenalty = -2f, FrequencyPenalty = -1f });
        Assert.Equal(4f + 2f + 1f, enc.Candidates(logits, history, 4).ToArray()[3].Logit, LogitTolerance); // generated [3]: 4 + 2 + 1
        Assert.Equal(logits, enc.Candidates(logits, history, history.Length).ToArray().Select(x => x.Logit).ToArray());
        Assert.Equal([1f, 2f, 3f, 4f, 5f], logits); // input untouched
    }

    [Theory]
    [InlineData(2.01f, 0f)]
    [InlineData(0f, -2.5f)]
    [InlineData(float.NaN, 0f)]
    [InlineData(0f, float.PositiveInfinity)]
    public void Penalties_outside_minus_two_to_two_are_refused(float presence, float frequency)
    {
        var e = Assert.Throws<ArgumentException>(() => new Sampler(5, NoFilters with { PresencePenalty = presence, FrequencyPenalty = frequency }));
        Assert.Contains("[-2, 2]", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Logprobs_match_a_double_log_softmax_and_rank_ties_by_id()
    {
        var rng = new Random(5);
        for (int trial = 0; trial < 50; trial++)
        {
            int v = rng.Next(1, 300);
            float[] logits = [.. Enumerable.Range(0, v).Select(_ => (float)Math.Round(rng.NextDouble() * 16 - 8, 1))]; // rounding makes ties
            double max = logits.Max();
            double logZ = max + Math.Log(logits.Sum(l => Math.Exp(l - max)));
            int k = rng.Next(0, Logprobs.MaxTop + 1);
            var chosen = new TokenId(rng.Next(v));
            var lp = Logprobs.Compute(logits, chosen, k);
            Assert.Equal(chosen, lp.Id);
            Assert.InRange(lp.Logprob, logits[chosen.Value] - logZ - LogprobTolerance, logits[chosen.Value] - logZ + LogprobTolerance);
            var order = Enumerable.Range(0, v).OrderByDescending(i => logits[i]).ThenBy(i => i).Take(k).ToArray();
            Assert.Equal(order, lp.Top.Select(t => t.Id.Value).ToArray());
            foreach (var t in lp.Top)
            {
                Assert.InRange(t.Logprob, logits[t.Id.Value] - logZ - LogprobTolerance, logits[t.Id.Value] - logZ + LogprobTolerance);
            }
        }
    }

    [Fact]
    public void Grammar_masks_equal_a_brute_force_check_of_every_token()
    {
        var tokenizers = new List<ITokenizer> { new FakeTokenizer() };
        if (V3() is { } v3)
        {
            tokenizers.Add(v3);
        }
        string[] prefixes = ["", "  {", "{\"a", "{\"a\":", "{\"a\": 1", "{\"a\": [tr", "{\"k\": -0", "{\"a\":\"\\u00", "{\"a\":{\"b\":[1,2.5e", "{\"a\":{}}"];
        foreach (var tok in tokenizers)
        {
            var trie = TokenTrie.Of(tok);
            foreach (string prefix in prefixes)
            {
                var g = JsonGrammar.Object;
                Assert.True(GrammarConstraint<JsonState>.Accepts(g, g.Start, Encoding.UTF8.GetBytes(prefix), out var state), prefix);
                var constraint = new GrammarConstraint<JsonState>(trie, g);
                // Drive the constraint to the state through its own Advance, byte tokens of the prefix (every tokenizer here has them).
                foreach (byte b in Encoding.UTF8.GetBytes(prefix))
                {
                    constraint.Advance(ByteToken(tok, b));
                }
                Assert.Equal(state, constraint.State);
                var logits = new float[tok.VocabSize];
                bool any = constraint.Mask(logits);
                int allowed = 0;
                for (int id = 0; id < tok.VocabSize; id++)
                {
                    var t = new TokenId(id);
                    bool expected = t == tok.Eos
                        ? g.IsComplete(state)
                        : !tok.IsControl(t) && tok.TokenBytes(t, t) is { Length: > 0 } bytes && GrammarConstraint<JsonState>.Accepts(g, state, bytes, out _);
                    Assert.True(expected == !float.IsNegativeInfinity(logits[id]), $"token {id} '{tok.PieceOf(t)}' after '{prefix}': expected allowed = {expected}");
                    allowed += expected ? 1 : 0;
                }
                Assert.Equal(allowed > 0, any);
            }
        }
    }

    private static TokenId ByteToken(ITokenizer tok, byte b)
    {
        for (int id = 0; id < tok.VocabSize; id++)
        {
            var t = new TokenId(id);
            if (!tok.IsControl(t) && tok.TokenBytes(t, t) is [var only] && only == b)
            {
                return t;
            }
        }
        throw new InvalidOperationException($"no single-byte token for 0x{b:X2}");
    }

    /// <summary>
    /// Random logits (a fresh draw each step, seeded) with a bias towards tokens that close strings and
    /// containers so most runs finish: every finished run must parse as a JSON object with System.Text.Json,
    /// and every unfinished one must still be a prefix the automaton accepts.
    /// </summary>
    [Fact]
    public void Random_sampling_under_json_object_always_yields_parseable_json()
    {
        var tok = V3();
        if (tok is null)
        {
            return; // mistral v3 tokenizer not found under ../shared/testdata
        }
        var closers = Bias(tok, b => b.AsSpan().IndexOfAny("}]\""u8) >= 0);
        int finished = 0;
        for (int seed = 0; seed < 40; seed++)
        {
            var (tokens, complete) = RunConstrained(tok, JsonConstraints.Object(tok), closers, seed, maxSteps: 300);
            string text = Text(tok, tokens);
            if (complete)
            {
                finished++;
                using var doc = JsonDocument.Parse(text);
                Assert.Equal(JsonValueKind.Object, doc.RootElement.ValueKind);
            }
            else
            {
                Assert.True(GrammarConstraint<JsonState>.Accepts(JsonGrammar.Object, default, Encoding.UTF8.GetBytes(text), out _), text);
            }
        }
        Assert.True(finished >= 30, $"only {finished} of 40 runs finished; the bias no longer closes objects");
    }

    [Fact]
    public void Forced_tool_calls_always_parse_with_the_tool_call_parser()
    {
        var tok = V3();
        if (tok is null)
        {
            return; // mistral v3 tokenizer not found under ../shared/testdata
        }
        Assert.True(ControlTokens.Of(tok).TryGet("[TOOL_CALLS]", out var toolCalls));
        string[] names = ["get_weather", "get_time", "get"];
        var closers = Bias(tok, b => b.AsSpan().IndexOfAny("}]\""u8) >= 0);
        int finished = 0;
        for (int seed = 0; seed < 30; seed++)
        {
            bool several = seed % 2 == 0;
            var constraint = ToolCallGrammar.ForcedCalls(tok, toolCalls, several ? names : ["get_time"], several);
            var (tokens, complete) = RunConstrained(tok, constraint, closers, seed, maxSteps: 300);
            Assert.Equal(toolCalls, tokens[0]);
            if (!complete)
            {
                continue;
            }
            finished++;
            var parsed = ToolCallParser.Parse(tok, [.. tokens, tok.Eos]);
            Assert.True(parsed.Errors.Count == 0, string.Join("; ", parsed.Errors) + " in " + Text(tok, tokens));
            Assert.NotEmpty(parsed.Calls);
            Assert.True(several || parsed.Calls.Count == 1);
            foreach (var call in parsed.Calls)
            {
                Assert.Contains(call.Name, several ? names : ["get_time"]);
                using var args = JsonDocument.Parse(call.Arguments);
                Assert.Equal(JsonValueKind.Object, args.RootElement.ValueKind);
            }
        }
        Assert.True(finished >= 20, $"only {finished} of 30 runs finished");
    }

    [Fact]
    public void Tool_call_grammar_accepts_the_golden_v2_call_and_rejects_other_names()
    {
        const string golden = " [{\"name\": \"get_n_day_weather_forecast\", \"arguments\": {\"location\": \"Paris, France\", \"format\": \"celsius\", \"num_days\": 5}}]";
        var g = new ToolCallGrammar(["get_current_weather", "get_n_day_weather_forecast"], several: true);
        Assert.True(GrammarConstraint<ToolCallState>.Accepts(g, g.Start, Encoding.UTF8.GetBytes(golden), out var end));
        Assert.True(g.IsComplete(end));
        string two = "[{\"name\":\"get_current_weather\",\"arguments\":{}}, {\"name\": \"get_n_day_weather_forecast\", \"arguments\": {\"a\": [1]}}]";
        Assert.True(GrammarConstraint<ToolCallState>.Accepts(g, g.Start, Encoding.UTF8.GetBytes(two), out end) && g.IsComplete(end));
        // v3+ models write a call id after the arguments (mistral-common's golden v3 sample).
        const string goldenV3 = " [{\"name\": \"get_n_day_weather_forecast\", \"arguments\": {\"location\": \"Paris, France\", \"format\": \"celsius\", \"num_days\": 5}, \"id\": \"123456789\"}]";
        Assert.True(GrammarConstraint<ToolCallState>.Accepts(g, g.Start, Encoding.UTF8.GetBytes(goldenV3), out end) && g.IsComplete(end));
        var single = new ToolCallGrammar(["get_current_weather"], several: false);
        Assert.False(GrammarConstraint<ToolCallState>.Accepts(single, single.Start, Encoding.UTF8.GetBytes(two), out _)); // second call refused
        foreach (string bad in new[]
        {
            "[{\"name\": \"get_n_day_weather\", \"arguments\": {}}]",       // a prefix of a name
            "[{\"name\": \"get_n_day_weather_forecastX\", \"arguments\": {}}]",
            "[{\"name\": \"other\", \"arguments\": {}}]",
            "[{\"arguments\": {}, \"name\": \"get_current_weather\"}]",      // fixed key order
            "[{\"name\": \"get_current_weather\", \"arguments\": []}]",      // arguments must be an object
            "[]",
            "[{\"name\": \"get_current_weather\", \"arguments\": {}, \"id\": \"\"}]",             // empty id
            "[{\"name\": \"get_current_weather\", \"arguments\": {}, \"id\": \"a-b\"}]",          // id of letters and digits only
            "[{\"name\": \"get_current_weather\", \"arguments\": {}, \"id\": \"a\", \"id\": \"b\"}]", // one id
        })
        {
            Assert.False(GrammarConstraint<ToolCallState>.Accepts(g, g.Start, Encoding.UTF8.GetBytes(bad), out var s) && g.IsComplete(s), bad);
        }
        Assert.Throws<ArgumentException>(() => new ToolCallGrammar(["has space"], several: true));
        Assert.Throws<ArgumentException>(() => new ToolCallGrammar([], several: true));
    }

    /// <summary>Every assistant tool-call segment of mistral-common's golden samples (v2 and v3 text) is a complete sentence of the grammar over that sample's tools.</summary>
    [Fact]
    public void Tool_call_grammar_accepts_every_golden_sample_call_list()
    {
        string root = TestPaths.Shared("tokenizers", "mistral", "mistral-common-samples");
        if (!Directory.Exists(root))
        {
            return; // shared samples absent
        }
        int segments = 0;
        foreach (string dir in Directory.GetDirectories(root))
        {
            using var sample = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "sample.json")));
            if (!sample.RootElement.TryGetProperty("tools", out var tools) || tools.GetArrayLength() == 0)
            {
                continue;
            }
            string[] names = [.. tools.EnumerateArray().Select(t => t.GetProperty("function").GetProperty("name").GetString()!)];
            var g = new ToolCallGrammar(names, several: true);
            foreach (string file in Directory.GetFiles(dir, "text_v*.txt"))
            {
                string text = File.ReadAllText(file);
                for (int at = text.IndexOf("[TOOL_CALLS]", StringComparison.Ordinal); at >= 0; at = text.IndexOf("[TOOL_CALLS]", at + 1, StringComparison.Ordinal))
                {
                    int start = at + "[TOOL_CALLS]".Length;
                    string call = text[start..text.IndexOf("</s>", start, StringComparison.Ordinal)].Replace('\u2581', ' ').Replace("<0x0A>", "\n", StringComparison.Ordinal);
                    Assert.True(GrammarConstraint<ToolCallState>.Accepts(g, g.Start, Encoding.UTF8.GetBytes(call), out var end) && g.IsComplete(end), $"{file}: {call}");
                    segments++;
                }
            }
        }
        Assert.True(segments >= 6, $"found only {segments} tool-call segments in the golden samples");
    }

    [Fact]
    public void Tool_choice_none_bans_the_tool_calls_token_even_under_greedy_decoding()
    {
        var tok = V3();
        if (tok is null)
        {
            return; // mistral v3 tokenizer not found under ../shared/testdata
        }
        Assert.True(ControlTokens.Of(tok).TryGet("[TOOL_CALLS]", out var toolCalls));
        var logits = new float[tok.VocabSize];
        logits[toolCalls.Value] = 100f;
        var s = new Sampler(tok.VocabSize, SamplingOptions.Greedy);
        Assert.NotEqual(toolCalls, s.Sample(logits, [], 0, new BannedTokensConstraint([toolCalls])));
        Assert.Equal(toolCalls, s.Sample(logits, []));
    }

    private static float[] Bias(ITokenizer tok, Func<byte[], bool> predicate)
    {
        var bias = new float[tok.VocabSize];
        for (int id = 0; id < tok.VocabSize; id++)
        {
            var t = new TokenId(id);
            if (!tok.IsControl(t) && predicate(tok.TokenBytes(t, t)))
            {
                bias[id] = 6f;
            }
        }
        return bias;
    }

    /// <summary>Samples up to maxSteps tokens from seeded random logits plus <paramref name="bias"/> under the constraint.</summary>
    private static (List<TokenId> Tokens, bool Complete) RunConstrained(ITokenizer tok, ITokenConstraint constraint, float[] bias, int seed, int maxSteps)
    {
        var rng = new Random(seed);
        var sampler = new Sampler(tok.VocabSize, NoFilters with { Seed = (ulong)seed, Temperature = seed % 3 == 0 ? 0f : 1f });
        var logits = new float[tok.VocabSize];
        var tokens = new List<TokenId>();
        for (int step = 0; step < maxSteps && !constraint.IsComplete; step++)
        {
            for (int i = 0; i < logits.Length; i++)
            {
                logits[i] = (float)(rng.NextDouble() * 4) + bias[i];
            }
            var next = sampler.Sample(logits, tokens.ToArray(), 0, constraint);
            constraint.Advance(next);
            tokens.Add(next);
        }
        return (tokens, constraint.IsComplete);
    }

    private static string Text(ITokenizer tok, List<TokenId> tokens)
    {
        var bytes = new List<byte>();
        foreach (var t in tokens)
        {
            bytes.AddRange(tok.TokenBytes(t, t));
        }
        return Encoding.UTF8.GetString([.. bytes]);
    }
}
