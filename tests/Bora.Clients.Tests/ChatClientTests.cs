using System.Text.Json;
using System.Threading.Channels;
using Bora.Chat;
using Bora.Extensions.AI;
using Bora.Generation;
using Bora.Serving;
using Bora.Tokenizers;
using Microsoft.Extensions.AI;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;
using AiChatRole = Microsoft.Extensions.AI.ChatRole;

namespace Bora.Clients.Tests;

/// <summary>One <see cref="BoraChatClient"/> (owning its engine) per model, shared by the tests of a class.</summary>
public sealed class ChatClients : IDisposable
{
    public BoraChatClient Kjv { get; } = BoraChatClient.Create(TestModels.LoadKjv(), new EngineOptions { BlockSize = 8, MaxRunning = 8 });

    public BoraChatClient? TinyV3 { get; } = TestModels.V3Available ? BoraChatClient.Create(TestModels.LoadTinyV3(), new EngineOptions { BlockSize = 8 }) : null;

    public void Dispose()
    {
        Kjv.Dispose();
        TinyV3?.Dispose();
    }
}

/// <summary>The in-process IChatClient: against Bora's single-sequence generator, and with a scripted backend for tool calls.</summary>
public class ChatClientTests(ChatClients clients) : IClassFixture<ChatClients>
{
    private static readonly AiChatMessage[] Chat = [new(AiChatRole.System, "Be brief."), new(AiChatRole.User, "And God said")];

    private static TokenId[] KjvPrompt() => Reference.Prompt(TestModels.LoadKjv(), ("system", "Be brief."), ("user", "And God said"));

    [Fact]
    public async Task Greedy_response_text_usage_and_finish_match_the_generator()
    {
        var client = clients.Kjv;
        Assert.Equal(TokenizerVersion.V1, client.ChatVersion);
        var prompt = KjvPrompt();
        Assert.Equal(prompt, client.RenderPrompt(Chat));
        var expected = Reference.Generate(TestModels.LoadKjv(), prompt, 20);
        var r = await client.GetResponseAsync(Chat, new ChatOptions { Temperature = 0, MaxOutputTokens = 20 });
        Assert.Equal(expected.Text, r.Text);
        Assert.Equal(AiChatRole.Assistant, Assert.Single(r.Messages).Role);
        Assert.Equal(prompt.Length, r.Usage?.InputTokenCount);
        Assert.Equal(expected.Tokens, r.Usage?.OutputTokenCount);
        Assert.Equal(prompt.Length + expected.Tokens, r.Usage?.TotalTokenCount);
        Assert.Equal(expected.Finish == FinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop, r.FinishReason);
        Assert.Equal(TestModels.KjvId, r.ModelId);
        Assert.StartsWith("bora-", r.ResponseId, StringComparison.Ordinal);
        Assert.Equal(TestModels.KjvId, client.GetService<ChatClientMetadata>()?.DefaultModelId);
        Assert.Same(client.Engine, client.GetService<InferenceEngine>());
    }

    [Fact]
    public async Task Streaming_gives_the_same_text_in_several_updates_then_usage()
    {
        var client = clients.Kjv;
        var options = new ChatOptions { Temperature = 0.9f, Seed = 11, MaxOutputTokens = 24 };
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync(Chat, options))
        {
            updates.Add(u);
        }
        var expected = Reference.Generate(TestModels.LoadKjv(), KjvPrompt(), 24, 0.9f, 11);
        Assert.True(updates.Count >= 3, $"only {updates.Count} updates");
        Assert.Equal(expected.Text, string.Concat(updates.Select(u => u.Text)));
        var usage = Assert.Single(updates.SelectMany(u => u.Contents).OfType<UsageContent>());
        Assert.Same(updates[^1], updates.Single(u => u.Contents.OfType<UsageContent>().Any()));
        Assert.Equal(expected.Tokens, usage.Details.OutputTokenCount);
        Assert.NotNull(updates[^1].FinishReason);
        Assert.All(updates, u => Assert.Equal(updates[0].ResponseId, u.ResponseId));
        // Same seed, non-streaming: same text.
        Assert.Equal(expected.Text, (await client.GetResponseAsync(Chat, options)).Text);
    }

    [Fact]
    public async Task Options_map_to_sampling_top_k_top_p_stop_and_max_tokens()
    {
        var client = clients.Kjv;
        var model = TestModels.LoadKjv();
        var prompt = KjvPrompt();
        var gen = new Generator(model.Model, model.Tokenizer);
        var sampling = new SamplingOptions { Temperature = 1.1f, TopK = 5, TopP = 0.9f, MinP = 0, Seed = 99, MaxTokens = 30 };
        var expected = gen.Generate(prompt, sampling);
        var r = await client.GetResponseAsync(Chat, new ChatOptions { Temperature = 1.1f, TopK = 5, TopP = 0.9f, Seed = 99, MaxOutputTokens = 30 });
        Assert.Equal(expected.Text, r.Text);

        // A stop string cut from the middle of that text ends the answer before it.
        int cut = expected.Text.IndexOf(' ', 6);
        Assert.True(cut > 0, "reference text too short for this test");
        string stop = expected.Text.Substring(cut, 3);
        var stopped = await client.GetResponseAsync(Chat, new ChatOptions { Temperature = 1.1f, TopK = 5, TopP = 0.9f, Seed = 99, MaxOutputTokens = 30, StopSequences = [stop] });
        Assert.Equal(expected.Text[..expected.Text.IndexOf(stop, StringComparison.Ordinal)], stopped.Text);
        Assert.Equal(ChatFinishReason.Stop, stopped.FinishReason);

        var shortOne = await client.GetResponseAsync(Chat, new ChatOptions { Temperature = 0, MaxOutputTokens = 3 });
        Assert.Equal(3, shortOne.Usage?.OutputTokenCount);
        Assert.Equal(ChatFinishReason.Length, shortOne.FinishReason);
    }

    [Fact]
    public async Task Bad_chats_and_options_throw_clear_exceptions()
    {
        var client = clients.Kjv;
        var e = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync([new AiChatMessage(AiChatRole.Assistant, "hi")]));
        Assert.Contains("user", e.Message, StringComparison.OrdinalIgnoreCase);
        var tooMany = await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync(Chat, new ChatOptions { MaxOutputTokens = 1_000_000 }));
        Assert.Contains("context", tooMany.Message, StringComparison.Ordinal);
        await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync(Chat, new ChatOptions { Temperature = -1 }));
        var schema = ChatResponseFormat.ForJsonSchema(JsonDocument.Parse("""{"type":"object","properties":{"n":{"type":"number","maximum":3}}}""").RootElement, "thing");
        var json = await Assert.ThrowsAsync<NotSupportedException>(() => client.GetResponseAsync(Chat, new ChatOptions { ResponseFormat = schema }));
        Assert.Contains("JSON schema", json.Message, StringComparison.Ordinal);
        Assert.Contains("'maximum' is not supported (at $.properties.n)", json.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Cancelling_mid_stream_throws_and_frees_the_sequence()
    {
        var client = clients.Kjv;
        var engine = client.Engine!;
        using var cts = new CancellationTokenSource();
        int seen = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var u in client.GetStreamingResponseAsync(Chat, new ChatOptions { MaxOutputTokens = 200, Temperature = 1 }, cts.Token))
            {
                if (++seen == 2)
                {
                    await cts.CancelAsync();
                }
            }
        });
        Assert.True(seen >= 2);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while ((engine.RunningCount > 0 || engine.WaitingCount > 0) && DateTime.UtcNow < deadline)
        {
            await Task.Delay(10);
        }
        Assert.Equal(0, engine.RunningCount);
        Assert.Equal(0, engine.WaitingCount);
        // The engine still answers.
        Assert.Equal(2, (await client.GetResponseAsync(Chat, new ChatOptions { MaxOutputTokens = 2, Temperature = 0, StopSequences = ["\u0001"] })).Usage?.OutputTokenCount);
    }

    [Fact]
    public async Task Tools_are_rendered_in_the_v3_prompt_as_mistral_common_does()
    {
        if (clients.TinyV3 is not { } client)
        {
            Console.WriteLine(TestModels.SkipMessage);
            return;
        }
        Assert.Equal(TokenizerVersion.V3, client.ChatVersion);
        var weather = AIFunctionFactory.Create((string city) => "sunny", "get_weather", "Current weather of a city");
        var options = new ChatOptions { Tools = [weather], MaxOutputTokens = 4, Temperature = 0 };
        var messages = new[] { new AiChatMessage(AiChatRole.User, "Weather in Paris?") };
        // The same request written as OpenAI JSON and rendered by ChatRenderer directly.
        string json = $$$"""
            {"messages":[{"role":"user","content":"Weather in Paris?"}],
             "tools":[{"type":"function","function":{"name":"get_weather","description":"Current weather of a city","parameters":{{{weather.JsonSchema.GetRawText()}}}}}]}
            """;
        var model = TestModels.LoadTinyV3();
        var expected = new ChatRenderer(model.Tokenizer, TokenizerVersion.V3).Render(ChatRequest.Parse(json), ValidationMode.Serving);
        var rendered = client.RenderPrompt(messages, options);
        Assert.Equal(expected.Tokens, rendered);
        Assert.Contains(ControlTokens.Of(model.Tokenizer).Get("[AVAILABLE_TOOLS]", "test"), rendered);
        // ToolMode None leaves the tools out.
        Assert.Equal(client.RenderPrompt(messages), client.RenderPrompt(messages, new ChatOptions { Tools = [weather], ToolMode = ChatToolMode.None }));
        var r = await client.GetResponseAsync(messages, options);
        Assert.Equal(rendered.Length, r.Usage?.InputTokenCount);
    }

    [Fact]
    public async Task UseFunctionInvocation_runs_a_parsed_tool_call_and_sends_its_result_back()
    {
        if (V3ToolTokens() is not (var tok, var toolCalls))
        {
            return;
        }
        var backend = new ScriptedBackend(tok,
            [toolCalls, .. tok.Encode("""[{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abc123XYZ"}]""", addBos: false), tok.Eos],
            [.. tok.Encode("It is sunny in Paris.", addBos: false), tok.Eos]);
        string? askedCity = null;
        var weather = AIFunctionFactory.Create((string city) =>
        {
            askedCity = city;
            return $"sunny, 21 C in {city}";
        }, "get_weather", "Current weather of a city");
        using var inner = new BoraChatClient(backend, "scripted", TokenizerVersion.V3, owned: null);
        using IChatClient client = new ChatClientBuilder(inner).UseFunctionInvocation().Build();
        var r = await client.GetResponseAsync("Weather in Paris?", new ChatOptions { Tools = [weather], MaxOutputTokens = 64 });

        Assert.Equal("Paris", askedCity);
        // The scripted deltas are decoded as the engine decodes them (after the control token [/INST], SentencePiece's
        // leading space of the first piece stays), so compare without it.
        Assert.Equal("It is sunny in Paris.", r.Text.TrimStart());
        var call = Assert.Single(r.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
        Assert.Equal("abc123XYZ", call.CallId);
        Assert.Equal("get_weather", call.Name);
        Assert.Equal("Paris", ((JsonElement)call.Arguments!["city"]!).GetString());
        Assert.Single(r.Messages.SelectMany(m => m.Contents).OfType<FunctionResultContent>());

        // The second prompt carried the call and its result in v3's format.
        Assert.Equal(2, backend.Prompts.Count);
        var renderer = new ChatRenderer(tok, TokenizerVersion.V3);
        string second = renderer.PiecesText(backend.Prompts[1]);
        Assert.Contains("[TOOL_CALLS]", second, StringComparison.Ordinal);
        Assert.Contains("[TOOL_RESULTS]", second, StringComparison.Ordinal);
        Assert.Contains("abc123XYZ", tok.Decode(backend.Prompts[1]), StringComparison.Ordinal);
        Assert.Contains("sunny, 21 C in Paris", tok.Decode(backend.Prompts[1]), StringComparison.Ordinal);
        Assert.EndsWith("[/TOOL_RESULTS]", second.TrimEnd(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Streamed_tool_calls_arrive_as_FunctionCallContent_with_finish_reason_tool_calls()
    {
        if (V3ToolTokens() is not (var tok, var toolCalls))
        {
            return;
        }
        var backend = new ScriptedBackend(tok,
            [.. tok.Encode("Let me check.", addBos: false), toolCalls,
             .. tok.Encode("""[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": "not json"}]""", addBos: false)]);
        using var client = new BoraChatClient(backend, "scripted", TokenizerVersion.V3, owned: null);
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in client.GetStreamingResponseAsync([new AiChatMessage(AiChatRole.User, "go")]))
        {
            updates.Add(u);
        }
        Assert.Equal("Let me check.", string.Concat(updates.Select(u => u.Text)).TrimStart());
        var calls = updates.SelectMany(u => u.Contents).OfType<FunctionCallContent>().ToList();
        Assert.Equal(["a", "b"], calls.Select(c => c.Name));
        Assert.Equal(1, ((JsonElement)calls[0].Arguments!["x"]!).GetInt32());
        Assert.Matches("^[A-Za-z0-9]{9}$", calls[0].CallId); // no id from the model: 9 alphanumerics, as v3 requires
        Assert.NotNull(calls[1].Exception);                  // arguments that are not a JSON object
        // Each call arrives in its own update as soon as its object closes, before the end.
        Assert.True(updates.FindIndex(u => u.Contents.OfType<FunctionCallContent>().Any()) < updates.Count - 1);
        Assert.Equal(ChatFinishReason.ToolCalls, updates[^1].FinishReason);
    }

    [Fact]
    public async Task Json_response_format_gives_json()
    {
        var client = clients.Kjv;
        int stopped = 0;
        for (int seed = 0; seed < 4; seed++)
        {
            var r = await client.GetResponseAsync(Chat, new ChatOptions { ResponseFormat = ChatResponseFormat.Json, Seed = seed, Temperature = 1, MaxOutputTokens = 64 });
            if (r.FinishReason == ChatFinishReason.Stop)
            {
                stopped++;
                using var doc = JsonDocument.Parse(r.Text);
                Assert.Equal(JsonValueKind.Object, doc.RootElement.ValueKind);
            }
            else
            {
                // Cut off: still the start of a JSON object.
                Assert.StartsWith("{", r.Text.TrimStart(), StringComparison.Ordinal);
            }
        }
        Console.WriteLine($"JSON mode: {stopped} of 4 answers complete within 64 tokens");
    }

    /// <summary>A schema a random model finishes within 120 tokens most of the time.</summary>
    private const string SmallSchema = """
    {"type":"object","properties":{"ok":{"type":"boolean"},"color":{"enum":["red","green"]},"tags":{"type":"array","items":{"type":"string","maxLength":3},"maxItems":2}},
     "required":["ok","color","tags"],"additionalProperties":false}
    """;

    [Fact]
    public async Task Json_schema_response_format_gives_valid_json()
    {
        var client = clients.TinyV3 ?? clients.Kjv;
        var format = ChatResponseFormat.ForJsonSchema(JsonDocument.Parse(SmallSchema).RootElement, "thing");
        int stopped = 0;
        for (int seed = 0; seed < 4; seed++)
        {
            var r = await client.GetResponseAsync(Chat, new ChatOptions { ResponseFormat = format, Seed = seed, Temperature = 1, MaxOutputTokens = 120 });
            if (r.FinishReason == ChatFinishReason.Stop)
            {
                stopped++;
                var errors = MiniSchemaValidator.Validate(r.Text, SmallSchema);
                Assert.True(errors.Count == 0, string.Join("; ", errors) + " in " + r.Text);
            }
        }
        Assert.True(stopped > 0, "no schema answer finished within 120 tokens");
    }

    [Fact]
    public async Task Options_map_to_the_engine_constraints()
    {
        if (V3ToolTokens() is not (var tok, var toolCalls))
        {
            return;
        }
        var weather = AIFunctionFactory.Create((string city) => "sunny", "get_weather", "Current weather of a city");
        var time = AIFunctionFactory.Create(() => "noon", "get_time", "The time");
        var backend = new ScriptedBackend(tok, [tok.Eos], [tok.Eos], [tok.Eos], [tok.Eos], [tok.Eos]);
        using var client = new BoraChatClient(backend, "scripted", TokenizerVersion.V3, owned: null);
        var messages = new[] { new AiChatMessage(AiChatRole.User, "Weather in Paris?") };

        await client.GetResponseAsync(messages, new ChatOptions { MaxOutputTokens = 8 });
        Assert.Null(backend.Extras[^1]); // nothing asked: no constraint

        // Forced calls: the first token must be [TOOL_CALLS], then the call list follows the grammar.
        foreach (var mode in new[] { ChatToolMode.RequireAny, ChatToolMode.RequireSpecific("get_time") })
        {
            await client.GetResponseAsync(messages, new ChatOptions { Tools = [weather, time], ToolMode = mode, MaxOutputTokens = 8 });
            var forced = backend.Extras[^1]?.Constraint;
            Assert.NotNull(forced);
            Assert.Equal([toolCalls.Value], Allowed(forced, tok.VocabSize));
            forced.Advance(toolCalls);
            string list = mode is RequiredChatToolMode { RequiredFunctionName: not null }
                ? """[{"name": "get_time", "arguments": {}}]"""
                : """[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]""";
            foreach (var t in tok.Encode(list, addBos: false))
            {
                Assert.Contains(t.Value, Allowed(forced, tok.VocabSize));
                forced.Advance(t);
            }
            Assert.True(forced.IsComplete);
        }
        // A function the grammar does not allow: its name's tokens are masked once the name starts to differ.
        await client.GetResponseAsync(messages, new ChatOptions { Tools = [weather, time], ToolMode = ChatToolMode.RequireSpecific("get_time"), MaxOutputTokens = 8 });
        var named = backend.Extras[^1]!.Constraint!;
        named.Advance(toolCalls);
        bool refused = false;
        foreach (var t in tok.Encode("""[{"name": "get_weather", "arguments": {}}]""", addBos: false))
        {
            if (!Allowed(named, tok.VocabSize).Contains(t.Value))
            {
                refused = true;
                break;
            }
            named.Advance(t);
        }
        Assert.True(refused, "a call of get_weather passed a constraint that requires get_time");

        // JSON: the first token's text starts a JSON object.
        await client.GetResponseAsync(messages, new ChatOptions { ResponseFormat = ChatResponseFormat.Json, MaxOutputTokens = 8 });
        var json = backend.Extras[^1]!.Constraint!;
        var first = Allowed(json, tok.VocabSize);
        Assert.NotEmpty(first);
        // JSON may start with whitespace; anything else must open the object.
        string[] texts = [.. first.Select(id => tok.Decode([new TokenId(id)]).TrimStart())];
        Assert.All(texts, t => Assert.True(t.Length == 0 || t[0] == '{', $"'{t}' cannot start a JSON object"));
        Assert.Contains(texts, t => t.StartsWith('{'));

        // Refusals: JSON + forced calls, forced calls without tools, a required function not among the tools.
        await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync(messages, new ChatOptions { Tools = [weather], ToolMode = ChatToolMode.RequireAny, ResponseFormat = ChatResponseFormat.Json }));
        await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync(messages, new ChatOptions { ToolMode = ChatToolMode.RequireAny }));
        await Assert.ThrowsAsync<ArgumentException>(() => client.GetResponseAsync(messages, new ChatOptions { Tools = [weather], ToolMode = ChatToolMode.RequireSpecific("nope") }));
        // bora-kjv has no [TOOL_CALLS] token.
        await Assert.ThrowsAsync<NotSupportedException>(() => clients.Kjv.GetResponseAsync(Chat, new ChatOptions { Tools = [weather], ToolMode = ChatToolMode.RequireAny, MaxOutputTokens = 4 }));
    }

    /// <summary>The token ids a constraint allows now (the finite logits after masking zeros).</summary>
    private static int[] Allowed(Bora.Generation.Constraints.ITokenConstraint constraint, int vocab)
    {
        var logits = new float[vocab];
        constraint.Mask(logits);
        return [.. Enumerable.Range(0, vocab).Where(i => float.IsFinite(logits[i]))];
    }

    /// <summary>A backend that answers the n-th request with the n-th token script (text decoded as the engine streams it).</summary>
    /// <summary>The tiny v3 model's tokenizer and its [TOOL_CALLS] token; null (the skip message printed) when the shared test data is absent.</summary>
    private static (ITokenizer Tok, TokenId ToolCalls)? V3ToolTokens()
    {
        if (!TestModels.V3Available)
        {
            Console.WriteLine(TestModels.SkipMessage);
            return null;
        }
        var tok = TestModels.LoadTinyV3().Tokenizer;
        return (tok, ControlTokens.Of(tok).Get("[TOOL_CALLS]", "test"));
    }

    private sealed class ScriptedBackend(ITokenizer tokenizer, params TokenId[][] scripts) : IGenerationBackend
    {
        public List<TokenId[]> Prompts { get; } = [];

        public List<SubmitOptions?> Extras { get; } = [];

        public ITokenizer Tokenizer => tokenizer;

        public int ContextLength => 4096;

        public BackendRun Start(TokenId[] prompt, SamplingOptions sampling, SubmitOptions? extras, CancellationToken cancellationToken)
        {
            var script = scripts[Prompts.Count];
            Prompts.Add(prompt);
            Extras.Add(extras);
            var channel = Channel.CreateUnbounded<GenerationDelta>();
            var decoder = new StreamingDecoder(tokenizer, prompt[^1]);
            foreach (var t in script)
            {
                if (t != tokenizer.Eos)
                {
                    channel.Writer.TryWrite(new GenerationDelta(t, decoder.Push(t)));
                }
            }
            channel.Writer.TryComplete();
            var finish = script.Length > 0 && script[^1] == tokenizer.Eos ? FinishReason.Eos : FinishReason.Length;
            return new BackendRun(Task.CompletedTask, channel.Reader, Task.FromResult(new GenerationSummary(finish, prompt.Length, script.Length, 0)));
        }
    }
}
