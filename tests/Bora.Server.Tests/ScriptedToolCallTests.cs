using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Bora.Chat;
using Bora.Loading;
using Bora.Tokenizers;

namespace Bora.Server.Tests;

/// <summary>
/// A live server over a "scripted" model with Mistral's v3 tokenizer: a transformer whose attention and
/// feed-forward outputs are zero (Wo = W2 = 0), so each logit depends only on the current token, and whose
/// embedding and output matrices make a chain: after [/INST] it greedily writes [TOOL_CALLS], then
/// <see cref="CallJson"/> token by token, then EOS. The model really calls a tool, end to end over HTTP.
/// </summary>
/// <remarks>
/// Chain tokens c0 = [/INST], c1 = [TOOL_CALLS], c2..cn (the JSON), then EOS, laid out by
/// <see cref="ScriptedTokens.ChainModel"/>: the logit of each token's successor is Gain sqrt(D) and every other logit
/// is 0. Each JSON token must appear once in the chain: a repeated piece is written with other pieces or byte tokens
/// (<see cref="ScriptedTokens.Distinct"/>), which decode to the same text.
/// </remarks>
public class ScriptedServer : LiveServerFixture
{
    public const string CallJson = """{"name":"lookup","arguments":{"q":7}}""";

    private const int Dim = 64;
    private const float Gain = 10f;

    public ITokenizer? Tokenizer => Model?.Tokenizer;

    /// <summary>c1 .. c(n+1): what the model generates after [/INST].</summary>
    public TokenId[] Script { get; private set; } = [];

    /// <summary>Text (no spaces) the model writes before [TOOL_CALLS]; empty here.</summary>
    public virtual string Prefix => "";

    protected override LoadedModel? LoadModel()
    {
        if (!V3Server.Available)
        {
            return null;
        }
        var tok = SentencePieceTokenizer.Load(V3Server.TokenizerPath);
        var controls = ControlTokens.Of(tok);
        var endInst = controls.Get("[/INST]", "the scripted model");
        var toolCalls = controls.Get("[TOOL_CALLS]", "the scripted model");
        var used = new HashSet<TokenId>();
        var prefix = ScriptedTokens.Distinct(tok, Prefix, used);
        Script = [.. prefix, toolCalls, .. ScriptedTokens.Distinct(tok, CallJson, used), tok.Eos];
        // The chain [/INST] c1 .. cn; EOS follows cn.
        var (config, model) = ScriptedTokens.ChainModel(tok, Dim, Gain, [endInst, .. Script[..^1]]);
        return new LoadedModel(new ModelSource("scripted", CheckpointLayout.Mistral, "", "", V3Server.TokenizerPath), config, model, tok);
    }

    protected override ServerOptions Options() => new() { Port = 0, ApiKey = "k", ModelId = "scripted" };
}

public class ScriptedToolCallTests(ScriptedServer live) : IClassFixture<ScriptedServer>
{
    private const string Tools = """[{"type":"function","function":{"name":"lookup","description":"Looks q up","parameters":{"type":"object","properties":{"q":{"type":"integer"}}}}}]""";

    private static string Request(bool tools, int maxTokens, bool stream = false) =>
        $$"""{"messages":[{"role":"user","content":"Look 7 up."}],{{(tools ? $"\"tools\":{Tools}," : "")}}"max_tokens":{{maxTokens}},"temperature":0,"stream":{{(stream ? "true" : "false")}}}""";

    private async Task<JsonElement> Post(string json)
    {
        using var r = await live.Client.PostAsync("/v1/chat/completions", new StringContent(json, Encoding.UTF8, "application/json"));
        string text = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.OK, text);
        return JsonDocument.Parse(text).RootElement.Clone();
    }

    private async Task<List<JsonElement>> Stream(string json)
    {
        using var r = await live.Client.PostAsync("/v1/chat/completions", new StringContent(json, Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        return [.. (await r.Content.ReadAsStringAsync()).Split('\n')
            .Where(l => l.StartsWith("data: {", StringComparison.Ordinal))
            .Select(l => JsonDocument.Parse(l[6..]).RootElement.Clone())];
    }

    [Fact]
    public async Task Each_of_n_choices_has_its_own_tool_calls_whole_and_streamed()
    {
        if (live.Server is null)
        {
            return;
        }
        string request = Request(tools: true, maxTokens: 100).Replace("\"max_tokens\"", "\"n\":3,\"max_tokens\"", StringComparison.Ordinal);
        var body = await Post(request);
        var ids = new HashSet<string>();
        foreach (var choice in body.GetProperty("choices").EnumerateArray())
        {
            Assert.Equal("tool_calls", choice.GetProperty("finish_reason").GetString());
            var call = Assert.Single(choice.GetProperty("message").GetProperty("tool_calls").EnumerateArray());
            Assert.Equal("lookup", call.GetProperty("function").GetProperty("name").GetString());
            Assert.Equal(7, JsonDocument.Parse(call.GetProperty("function").GetProperty("arguments").GetString()!).RootElement.GetProperty("q").GetInt32());
            ids.Add(call.GetProperty("id").GetString()!);
        }
        Assert.Equal(3, ids.Count); // a call id per choice
        Assert.InRange(body.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), 3 * (live.Script.Length - 1), 3 * live.Script.Length); // summed over the choices

        // Streamed: per choice index, one call (name chunk, arguments chunk) and a tool_calls finish; usage once, on the last finish.
        var events = await Stream(request.Replace("\"stream\":false", "\"stream\":true", StringComparison.Ordinal));
        for (int index = 0; index < 3; index++)
        {
            var mine = events.Select(e => e.GetProperty("choices")[0]).Where(c => c.GetProperty("index").GetInt32() == index).ToList();
            var calls = mine.Where(c => c.GetProperty("delta").TryGetProperty("tool_calls", out _)).Select(c => c.GetProperty("delta").GetProperty("tool_calls")[0]).ToList();
            Assert.Equal(2, calls.Count);
            Assert.Equal("lookup", calls[0].GetProperty("function").GetProperty("name").GetString());
            Assert.Equal(7, JsonDocument.Parse(calls[1].GetProperty("function").GetProperty("arguments").GetString()!).RootElement.GetProperty("q").GetInt32());
            Assert.Equal("tool_calls", mine[^1].GetProperty("finish_reason").GetString());
        }
        Assert.Single(events, e => e.TryGetProperty("usage", out _));
        Assert.True(events[^1].TryGetProperty("usage", out _));
    }

    [Fact]
    public async Task The_model_calls_a_tool_and_the_answer_has_tool_calls_then_the_result_goes_back()
    {
        if (live.Server is null)
        {
            return;
        }
        var body = await Post(Request(tools: true, maxTokens: 100));
        var choice = body.GetProperty("choices")[0];
        Assert.Equal("tool_calls", choice.GetProperty("finish_reason").GetString());
        var message = choice.GetProperty("message");
        Assert.Equal(JsonValueKind.Null, message.GetProperty("content").ValueKind);
        var call = Assert.Single(message.GetProperty("tool_calls").EnumerateArray());
        Assert.Equal("function", call.GetProperty("type").GetString());
        Assert.Equal("lookup", call.GetProperty("function").GetProperty("name").GetString());
        string arguments = call.GetProperty("function").GetProperty("arguments").GetString()!;
        var args = JsonDocument.Parse(arguments).RootElement;
        Assert.Equal(7, args.GetProperty("q").GetInt32());
        string id = call.GetProperty("id").GetString()!;
        Assert.Matches("^[a-zA-Z0-9]{9}$", id);
        // Every scripted token was generated ([TOOL_CALLS], the JSON, and EOS when the engine counts it).
        Assert.InRange(body.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), live.Script.Length - 1, live.Script.Length);

        // Round trip: the call and its result are accepted back (v3 checks the id) and render as mistral-common does.
        var call0 = new JsonObject { ["id"] = id, ["type"] = "function", ["function"] = new JsonObject { ["name"] = "lookup", ["arguments"] = arguments } };
        var followUpRequest = new JsonObject
        {
            ["messages"] = new JsonArray(
                new JsonObject { ["role"] = "user", ["content"] = "Look 7 up." },
                new JsonObject { ["role"] = "assistant", ["content"] = null, ["tool_calls"] = new JsonArray(call0) },
                new JsonObject { ["role"] = "tool", ["tool_call_id"] = id, ["name"] = "lookup", ["content"] = "{\"answer\": 42}" }),
            ["tools"] = JsonNode.Parse(Tools),
            ["max_tokens"] = 3,
            ["temperature"] = 0,
        };
        string followUp = followUpRequest.ToJsonString();
        var next = await Post(followUp);
        var renderer = new ChatRenderer(live.Tokenizer!, TokenizerVersion.V3);
        var chat = ChatRequest.Parse(followUp);
        Assert.Equal(renderer.Render(chat).Tokens.Length, next.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.Contains("[TOOL_CALLS]", renderer.Render(chat).Text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_streamed_tool_call_arrives_as_tool_call_deltas_with_finish_reason_tool_calls()
    {
        if (live.Server is null)
        {
            return;
        }
        var events = await Stream(Request(tools: true, maxTokens: 100, stream: true));
        Assert.Equal("assistant", events[0].GetProperty("choices")[0].GetProperty("delta").GetProperty("role").GetString());
        var deltas = events.Select(e => e.GetProperty("choices")[0].GetProperty("delta")).ToList();
        Assert.All(deltas, d => Assert.True(!d.TryGetProperty("content", out var c) || c.ValueKind == JsonValueKind.Null || c.GetString() == ""));
        var calls = deltas.Where(d => d.TryGetProperty("tool_calls", out _)).Select(d => d.GetProperty("tool_calls")[0]).ToList();
        Assert.Equal(2, calls.Count);
        Assert.Equal(0, calls[0].GetProperty("index").GetInt32());
        Assert.Equal("lookup", calls[0].GetProperty("function").GetProperty("name").GetString());
        string args = string.Concat(calls.Select(c => c.GetProperty("function").TryGetProperty("arguments", out var a) ? a.GetString() : ""));
        Assert.Equal(7, JsonDocument.Parse(args).RootElement.GetProperty("q").GetInt32());
        Assert.Equal("tool_calls", events[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task Call_text_cut_off_by_max_tokens_or_without_tools_is_plain_content()
    {
        if (live.Server is null)
        {
            return;
        }
        // Cut off: [TOOL_CALLS] and 5 JSON tokens, an incomplete call: given back as text, finish_reason length.
        var cut = (await Post(Request(tools: true, maxTokens: 6))).GetProperty("choices")[0];
        Assert.Equal("length", cut.GetProperty("finish_reason").GetString());
        Assert.False(cut.GetProperty("message").TryGetProperty("tool_calls", out _));
        Assert.Equal(live.Tokenizer!.Decode(live.Script.AsSpan(0, 6)), cut.GetProperty("message").GetProperty("content").GetString());
        var streamed = await Stream(Request(tools: true, maxTokens: 6, stream: true));
        Assert.Equal(cut.GetProperty("message").GetProperty("content").GetString(), string.Concat(streamed.Select(e =>
            e.GetProperty("choices")[0].GetProperty("delta").TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString() : "")));
        Assert.Equal("length", streamed[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());

        // No tools in the request: the JSON is the answer's text.
        var plain = (await Post(Request(tools: false, maxTokens: 100))).GetProperty("choices")[0];
        Assert.Equal("stop", plain.GetProperty("finish_reason").GetString());
        Assert.Equal(ScriptedServer.CallJson, plain.GetProperty("message").GetProperty("content").GetString());
    }
}

/// <summary>The scripted model with text before its call: "Sure,wor", then [TOOL_CALLS] and the call.</summary>
public sealed class ScriptedPrefixServer : ScriptedServer
{
    public override string Prefix => "Sure,wor";
}

/// <summary>
/// Stop strings with tool calls: text held back because it might begin a stop string ("wor" of "world") is
/// released when [TOOL_CALLS] ends the text run, as content, never dropped nor mixed into the call; streamed
/// content equals the whole answer's.
/// </summary>
public class ScriptedStopStringTests(ScriptedPrefixServer live) : IClassFixture<ScriptedPrefixServer>
{
    private const string Tools = """[{"type":"function","function":{"name":"lookup","parameters":{"type":"object","properties":{"q":{"type":"integer"}}}}}]""";

    private static string Request(bool tools, int maxTokens, bool stream, string stop = "[\"world\"]") =>
        $$"""{"messages":[{"role":"user","content":"Look 7 up."}],{{(tools ? $"\"tools\":{Tools}," : "")}}"stop":{{stop}},"max_tokens":{{maxTokens}},"temperature":0,"stream":{{(stream ? "true" : "false")}}}""";

    private async Task<(string? Content, List<(string Name, string Arguments)> Calls, string Finish)> Whole(string json)
    {
        using var r = await live.Client.PostAsync("/v1/chat/completions", new StringContent(json, Encoding.UTF8, "application/json"));
        string text = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.OK, text);
        var choice = JsonDocument.Parse(text).RootElement.GetProperty("choices")[0];
        var message = choice.GetProperty("message");
        var calls = message.TryGetProperty("tool_calls", out var tc)
            ? tc.EnumerateArray().Select(c => (c.GetProperty("function").GetProperty("name").GetString()!, c.GetProperty("function").GetProperty("arguments").GetString()!)).ToList()
            : [];
        return (message.GetProperty("content").GetString(), calls, choice.GetProperty("finish_reason").GetString()!);
    }

    private async Task<(string Content, List<(string Name, string Arguments)> Calls, string Finish)> Streamed(string json)
    {
        using var r = await live.Client.PostAsync("/v1/chat/completions", new StringContent(json, Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        var content = new StringBuilder();
        var calls = new List<(string Name, string Arguments)>();
        string finish = "";
        foreach (string line in (await r.Content.ReadAsStringAsync()).Split('\n'))
        {
            if (!line.StartsWith("data: {", StringComparison.Ordinal))
            {
                continue;
            }
            var choice = JsonDocument.Parse(line[6..]).RootElement.GetProperty("choices")[0];
            var delta = choice.GetProperty("delta");
            if (delta.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String)
            {
                content.Append(c.GetString());
            }
            if (delta.TryGetProperty("tool_calls", out var tc))
            {
                var f = tc[0].GetProperty("function");
                if (f.TryGetProperty("name", out var name) && name.ValueKind == JsonValueKind.String)
                {
                    calls.Add((name.GetString()!, ""));
                }
                else
                {
                    calls[^1] = (calls[^1].Name, calls[^1].Arguments + f.GetProperty("arguments").GetString());
                }
            }
            if (choice.TryGetProperty("finish_reason", out var fr) && fr.ValueKind == JsonValueKind.String)
            {
                finish = fr.GetString()!;
            }
        }
        return (content.ToString(), calls, finish);
    }

    [Fact]
    public async Task Text_held_for_a_stop_string_before_a_tool_call_is_content_whole_and_streamed()
    {
        if (live.Server is null)
        {
            return;
        }
        var whole = await Whole(Request(tools: true, maxTokens: 100, stream: false));
        Assert.Equal("tool_calls", whole.Finish);
        Assert.Equal("Sure,wor", whole.Content);
        var call = Assert.Single(whole.Calls);
        Assert.Equal("lookup", call.Name);
        Assert.Equal(7, JsonDocument.Parse(call.Arguments).RootElement.GetProperty("q").GetInt32());
        var streamed = await Streamed(Request(tools: true, maxTokens: 100, stream: true));
        Assert.Equal(whole.Content, streamed.Content);
        Assert.Equal(whole.Calls.Select(c => c.Name), streamed.Calls.Select(c => c.Name));
        Assert.Equal(call.Arguments, Assert.Single(streamed.Calls).Arguments);
        Assert.Equal("tool_calls", streamed.Finish);
    }

    [Theory]
    [InlineData(true, 9)]      // "Sure,wor" is 8 tokens at most; [TOOL_CALLS] then the cut: no call, the held text is content
    [InlineData(true, 100)]
    [InlineData(false, 100)]   // no tools: everything is text
    [InlineData(false, 9)]
    public async Task Streamed_text_equals_the_whole_answer_with_stop_strings(bool tools, int maxTokens)
    {
        if (live.Server is null)
        {
            return;
        }
        foreach (string stop in new[] { "[\"world\"]", "[\"wor!\", \"q\\\":8\"]", "[\"lookup\"]" })
        {
            var whole = await Whole(Request(tools, maxTokens, stream: false, stop));
            var streamed = await Streamed(Request(tools, maxTokens, stream: true, stop));
            Assert.Equal(whole.Content ?? "", streamed.Content);
            Assert.Equal(whole.Calls, streamed.Calls);
            Assert.Equal(whole.Finish, streamed.Finish);
            // Nothing the model wrote before [TOOL_CALLS] is lost.
            Assert.StartsWith("Sure,wor", whole.Content ?? "", StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Tool_choice_none_keeps_the_stop_strings()
    {
        if (live.Server is null)
        {
            return;
        }
        // tool_choice "none" bans [TOOL_CALLS] (a token ban, not a grammar): stop strings still apply.
        string request = Request(tools: true, maxTokens: 20, stream: false, "[\"wor\"]").Replace("\"stop\"", "\"tool_choice\":\"none\",\"stop\"", StringComparison.Ordinal);
        var whole = await Whole(request);
        Assert.Equal("Sure,", whole.Content);
        Assert.Equal("stop", whole.Finish);
        Assert.Empty(whole.Calls);
        var streamed = await Streamed(request.Replace("\"stream\":false", "\"stream\":true", StringComparison.Ordinal));
        Assert.Equal("Sure,", streamed.Content);
    }
}
