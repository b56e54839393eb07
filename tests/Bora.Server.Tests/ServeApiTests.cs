using System.Net;
using System.Text;
using System.Text.Json;
using Bora.Chat;
using Bora.Loading;
using Bora.Tokenizers;

namespace Bora.Server.Tests;

/// <summary>
/// A live server over a tiny random-weight model with Mistral's v3 tokenizer (control tokens [INST],
/// [TOOL_CALLS], [SUFFIX], ...): random weights never choose to call a tool, but prompts render exactly as
/// for a real v3 model, so rendering and the routes can be checked end to end.
/// </summary>
public sealed class V3Server : LiveServerFixture
{
    public const string Key = "v3-key";

    public static string TokenizerPath => TestPaths.Shared("tokenizers", "mistral", "mistral_instruct_tokenizer_240323.model.v3");

    public static bool Available => File.Exists(TokenizerPath);

    protected override LoadedModel? LoadModel()
    {
        if (!Available)
        {
            return null;
        }
        var tokenizer = SentencePieceTokenizer.Load(TokenizerPath);
        var config = RandomModels.Dense() with { VocabSize = tokenizer.VocabSize, MaxSeqLen = 1024 };
        return new LoadedModel(new ModelSource("tiny-v3", CheckpointLayout.Mistral, "", "", TokenizerPath), config, RandomModels.Build(config, 11), tokenizer);
    }

    protected override ServerOptions Options() => new()
    {
        Port = 0,
        ApiKey = Key,
        ModelId = "tiny-v3",
        Engine = new Serving.EngineOptions { BlockSize = 16, MaxBatchTokens = 256, MaxChunkTokens = 256 },
    };
}

public class ServeApiTests(V3Server live) : IClassFixture<V3Server>
{
    private static string Sample(string name, string file) =>
        File.ReadAllText(TestPaths.Shared("tokenizers", "mistral", "mistral-common-samples", name, file));

    private static int[] GoldenTokens(string name) =>
        [.. JsonDocument.Parse(Sample(name, "tokens_v3.json")).RootElement.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32())];

    private ChatRenderer Renderer => new(live.Model!.Tokenizer, TokenizerVersion.V3);

    private async Task<(HttpStatusCode Status, JsonElement Body)> Post(string path, string json)
    {
        using var r = await live.Client.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"));
        return (r.StatusCode, JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.Clone());
    }

    /// <summary>Every data event of an SSE stream, parsed; asserts the stream ends with [DONE].</summary>
    private async Task<List<JsonElement>> StreamEvents(string path, string json)
    {
        using var req = new HttpRequestMessage(HttpMethod.Post, path) { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        using var r = await live.Client.SendAsync(req, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        var events = new List<JsonElement>();
        bool done = false;
        foreach (var line in (await r.Content.ReadAsStringAsync()).Split('\n'))
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal))
            {
                continue;
            }
            Assert.False(done, "data after [DONE]");
            if (line == "data: [DONE]")
            {
                done = true;
                continue;
            }
            events.Add(JsonDocument.Parse(line[6..]).RootElement.Clone());
        }
        Assert.True(done, "the stream did not end with [DONE]");
        return events;
    }

    private static int[] Ids(TokenId[] tokens) => [.. tokens.Select(t => t.Value)];

    private static void AssertBadRequest((HttpStatusCode Status, JsonElement Body) r, string? code = null, string? param = null)
    {
        Assert.Equal(HttpStatusCode.BadRequest, r.Status);
        var e = r.Body.GetProperty("error");
        Assert.False(string.IsNullOrEmpty(e.GetProperty("message").GetString()));
        if (code is not null)
        {
            Assert.Equal(code, e.GetProperty("code").GetString());
        }
        if (param is not null)
        {
            Assert.Equal(param, e.GetProperty("param").GetString());
        }
    }

    [Fact]
    public async Task A_chat_with_tools_tool_calls_and_tool_results_renders_as_mistral_common()
    {
        if (!V3Server.Available)
        {
            return;
        }
        foreach (var name in new[] { "get_weather_full", "parallel_calls", "no_tools" })
        {
            string sample = Sample(name, "sample.json");
            int[] golden = GoldenTokens(name);
            // /v1/tokenize renders the messages and tools as a chat completion does.
            var (status, tok) = await Post("/v1/tokenize", sample);
            Assert.Equal(HttpStatusCode.OK, status);
            Assert.Equal(golden, tok.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray());
            Assert.Equal(golden.Length, tok.GetProperty("count").GetInt32());
            Assert.Equal(1024, tok.GetProperty("max_model_len").GetInt32());
            // The chat completion's prompt is the same: usage counts exactly the golden tokens.
            var request = System.Text.Json.Nodes.JsonNode.Parse(sample)!.AsObject();
            request["max_tokens"] = 3;
            request["temperature"] = 0;
            string sampleWithLimits = request.ToJsonString();
            var (chatStatus, chat) = await Post("/v1/chat/completions", sampleWithLimits);
            Assert.True(chatStatus == HttpStatusCode.OK, chat.ToString());
            Assert.Equal(golden.Length, chat.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        }
    }

    [Fact]
    public async Task Safe_prompt_prepends_mistrals_guardrail_system_prompt()
    {
        if (!V3Server.Available)
        {
            return;
        }
        var (_, plain) = await Post("/v1/tokenize", """{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}""");
        var expected = Renderer.Render(new ChatRequest
        {
            Messages = [Bora.Chat.ChatMessage.System(ChatRequestMapping.SafePrompt), Bora.Chat.ChatMessage.System("Be brief."), Bora.Chat.ChatMessage.User("Hi")],
        }).Tokens;
        var (status, body) = await Post("/v1/chat/completions",
            """{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"safe_prompt":true,"max_tokens":2}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(expected.Length, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.True(expected.Length > plain.GetProperty("count").GetInt32() + 20, "the guardrail prompt adds its tokens");
        // v3 joins the system prompts before the last user message: the guardrail text comes first.
        Assert.Contains(ChatRequestMapping.SafePrompt + "\n\nBe brief.\n\nHi", live.Model!.Tokenizer.Decode(expected), StringComparison.Ordinal);
        Assert.StartsWith("Always assist with care, respect, and truth. Respond with utmost utility yet securely.", ChatRequestMapping.SafePrompt, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_final_prefix_message_is_continued_without_eos_and_misplaced_prefixes_are_400()
    {
        if (!V3Server.Available)
        {
            return;
        }
        string req = """{"messages":[{"role":"user","content":"Count to ten."},{"role":"assistant","content":"One, two,","prefix":true}],"max_tokens":4,"temperature":0}""";
        var expected = Renderer.Render(new ChatRequest
        {
            Messages = [Bora.Chat.ChatMessage.User("Count to ten."), Bora.Chat.ChatMessage.Assistant("One, two,", prefix: true)],
        }).Tokens;
        var tok = live.Model!.Tokenizer;
        Assert.NotEqual(tok.Eos, expected[^1]); // the prefix is left open
        var (_, tokenized) = await Post("/v1/tokenize", req);
        Assert.Equal(Ids(expected), tokenized.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray());
        var (status, body) = await Post("/v1/chat/completions", req);
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(expected.Length, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        // The answer is what the model adds after the prefix, not the prefix again: the same as a raw completion of those tokens.
        var gen = new Generation.Generator(live.Model.Model, tok);
        string reference = gen.Generate(expected, new Generation.SamplingOptions { Temperature = 0, TopK = 0, TopP = 1, MinP = 0, MaxTokens = 4 }).Text;
        Assert.Equal(reference, body.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString());

        AssertBadRequest(await Post("/v1/chat/completions",
            """{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b","prefix":true},{"role":"user","content":"c"}]}"""), param: "messages");
        AssertBadRequest(await Post("/v1/chat/completions", """{"messages":[{"role":"user","content":"a","prefix":true}]}"""), param: "messages");
        AssertBadRequest(await Post("/v1/chat/completions", """{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b","prefix":"yes"}]}"""), param: "messages[1].prefix");
    }

    [Fact]
    public async Task Bad_tools_and_tool_messages_are_400()
    {
        if (!V3Server.Available)
        {
            return;
        }
        AssertBadRequest(await Post("/v1/chat/completions", """{"messages":[{"role":"user","content":"a"}],"tools":{"type":"function"}}"""), param: "tools");
        AssertBadRequest(await Post("/v1/chat/completions", """{"messages":[{"role":"user","content":"a"}],"tools":[{"type":"function","function":{"description":"no name","parameters":{}}}]}"""), param: "tools");
        AssertBadRequest(await Post("/v1/chat/completions", """{"messages":[{"role":"user","content":"a"}],"tools":[{"type":"retrieval"}]}"""), param: "tools");
        // A function without parameters (OpenAI allows it) renders with the empty schema mistral-common requires.
        var (_, noParams) = await Post("/v1/tokenize", """{"messages":[{"role":"user","content":"a"}],"tools":[{"type":"function","function":{"name":"f","description":"d"}}]}""");
        var expected = Renderer.Render(new ChatRequest { Messages = [Bora.Chat.ChatMessage.User("a")], Tools = [new ToolDefinition("f", "d", new PyDict())] }).Tokens;
        Assert.Equal(Ids(expected), noParams.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray());
        AssertBadRequest(await Post("/v1/chat/completions", """{"messages":[{"role":"user","content":"a"}],"tools":[{"type":"function","function":{"name":"bad name!","parameters":{}}}]}"""));
        // v3 needs 9-alphanumeric call ids, and every call answered.
        AssertBadRequest(await Post("/v1/chat/completions",
            """{"messages":[{"role":"user","content":"a"},{"role":"assistant","tool_calls":[{"id":"x","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"x","content":"1"}]}"""), param: "messages");
        AssertBadRequest(await Post("/v1/chat/completions",
            """{"messages":[{"role":"user","content":"a"},{"role":"assistant","tool_calls":[{"id":"abcdefghi","type":"function","function":{"name":"f","arguments":"{}"}}]}]}"""), param: "messages");
        AssertBadRequest(await Post("/v1/chat/completions", """{"messages":[{"role":"tool","tool_call_id":7,"content":"1"}]}"""), param: "messages[0].tool_call_id");
        var (ok, _) = await Post("/v1/chat/completions",
            """{"messages":[{"role":"user","content":"a"},{"role":"assistant","content":null,"tool_calls":[{"id":"abcdefghi","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]},{"role":"tool","tool_call_id":"abcdefghi","name":"f","content":"1"}],"max_tokens":2}""");
        Assert.Equal(HttpStatusCode.OK, ok);
    }

    [Fact]
    public async Task Model_cards_carry_mistral_fields_and_capabilities_and_retrieve_by_id()
    {
        if (!V3Server.Available)
        {
            return;
        }
        var list = JsonDocument.Parse(await live.Client.GetStringAsync("/v1/models")).RootElement;
        var card = Assert.Single(list.GetProperty("data").EnumerateArray());
        string id = card.GetProperty("id").GetString()!;
        Assert.Equal("model", card.GetProperty("object").GetString());
        Assert.Equal("base", card.GetProperty("type").GetString());
        Assert.Equal(live.Server!.Engine!.ContextLength, card.GetProperty("max_context_length").GetInt32());
        Assert.Equal(JsonValueKind.Array, card.GetProperty("aliases").ValueKind);
        var caps = card.GetProperty("capabilities");
        Assert.True(caps.GetProperty("completion_chat").GetBoolean());
        Assert.True(caps.GetProperty("function_calling").GetBoolean()); // the v3 vocabulary has [TOOL_CALLS]
        Assert.True(caps.GetProperty("completion_fim").GetBoolean());   // and [PREFIX]/[SUFFIX]
        Assert.False(caps.GetProperty("vision").GetBoolean());
        // GET /v1/models/{id}: the same card; any other id is a 404 model_not_found.
        var one = JsonDocument.Parse(await live.Client.GetStringAsync("/v1/models/" + id)).RootElement;
        Assert.Equal(card.GetRawText(), one.GetRawText());
        using var missing = await live.Client.GetAsync("/v1/models/gpt-4o");
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        var error = JsonDocument.Parse(await missing.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
        Assert.Equal("model_not_found", error.GetProperty("code").GetString());
        Assert.Contains("gpt-4o", error.GetProperty("message").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Stream_options_include_usage_sends_a_last_chunk_with_empty_choices_and_usage()
    {
        if (!V3Server.Available)
        {
            return;
        }
        var events = await StreamEvents("/v1/chat/completions",
            """{"messages":[{"role":"user","content":"Hi"}],"max_tokens":5,"temperature":1,"seed":3,"stream":true,"stream_options":{"include_usage":true}}""");
        var last = events[^1];
        Assert.Equal(0, last.GetProperty("choices").GetArrayLength());
        var usage = last.GetProperty("usage");
        Assert.Equal(usage.GetProperty("prompt_tokens").GetInt32() + usage.GetProperty("completion_tokens").GetInt32(), usage.GetProperty("total_tokens").GetInt32());
        Assert.InRange(usage.GetProperty("completion_tokens").GetInt32(), 1, 5);
        Assert.Equal(JsonValueKind.String, events[^2].GetProperty("choices")[0].GetProperty("finish_reason").ValueKind);
        // OpenAI's shape: only that last chunk has usage (clients add up every usage they see); no chunk says "usage": null.
        Assert.All(events[..^1], e => Assert.False(e.TryGetProperty("usage", out _), e.ToString()));
        // Without it, no chunk has empty choices.
        var plain = await StreamEvents("/v1/chat/completions", """{"messages":[{"role":"user","content":"Hi"}],"max_tokens":5,"stream":true}""");
        Assert.All(plain, e => Assert.Equal(1, e.GetProperty("choices").GetArrayLength()));
        AssertBadRequest(await Post("/v1/chat/completions", """{"messages":[{"role":"user","content":"Hi"}],"stream_options":{"include_usage":true}}"""), param: "stream_options");
    }

    [Fact]
    public async Task Fim_routes_render_suffix_and_prefix_as_mistral_common()
    {
        if (!V3Server.Available)
        {
            return;
        }
        const string Prompt = "def add(a, b):\n    return ", Suffix = "\n\nprint(add(1, 2))";
        var expected = Renderer.RenderFim(new FimRequest(Prompt, Suffix)).Tokens;
        string body = JsonSerializer.Serialize(new Dictionary<string, object> { ["model"] = "tiny-v3", ["prompt"] = Prompt, ["suffix"] = Suffix, ["max_tokens"] = 6, ["temperature"] = 0 });
        var (status, fim) = await Post("/v1/fim/completions", body);
        Assert.True(status == HttpStatusCode.OK, fim.ToString());
        Assert.Equal("chat.completion", fim.GetProperty("object").GetString());
        Assert.Equal(expected.Length, fim.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        var gen = new Generation.Generator(live.Model!.Model, live.Model.Tokenizer);
        string reference = gen.Generate(expected, new Generation.SamplingOptions { Temperature = 0, TopK = 0, TopP = 1, MinP = 0, MaxTokens = 6 }).Text;
        var message = fim.GetProperty("choices")[0].GetProperty("message");
        Assert.Equal("assistant", message.GetProperty("role").GetString());
        Assert.Equal(reference, message.GetProperty("content").GetString());

        // The same through /v1/completions with suffix, and streamed.
        var (cStatus, completion) = await Post("/v1/completions", body);
        Assert.Equal(HttpStatusCode.OK, cStatus);
        Assert.Equal(reference, completion.GetProperty("choices")[0].GetProperty("text").GetString());
        var events = await StreamEvents("/v1/fim/completions", body.Replace("}", ",\"stream\":true}", StringComparison.Ordinal));
        string streamed = string.Concat(events.Select(e => e.GetProperty("choices")[0].GetProperty("delta").TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString() : ""));
        Assert.Equal(reference, streamed);
        AssertBadRequest(await Post("/v1/fim/completions", """{"suffix":"x"}"""), param: "prompt");
    }

    [Fact]
    public async Task Tokenize_and_detokenize_round_trip_and_reject_bad_ids()
    {
        if (!V3Server.Available)
        {
            return;
        }
        var tok = live.Model!.Tokenizer;
        const string Text = "Hello, world! Ünïcödé ✓";
        var (_, withBos) = await Post("/v1/tokenize", JsonSerializer.Serialize(new { prompt = Text }));
        Assert.Equal(Ids(tok.Encode(Text, addBos: true)), withBos.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray());
        var (_, noBos) = await Post("/v1/tokenize", JsonSerializer.Serialize(new { prompt = Text, add_special_tokens = false }));
        int[] ids = [.. noBos.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32())];
        Assert.Equal(Ids(tok.Encode(Text, addBos: false)), ids);
        var (status, back) = await Post("/v1/detokenize", JsonSerializer.Serialize(new { tokens = ids }));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(Text, back.GetProperty("prompt").GetString());

        AssertBadRequest(await Post("/v1/detokenize", $$"""{"tokens":[1,{{tok.VocabSize}}]}"""), param: "tokens");
        AssertBadRequest(await Post("/v1/detokenize", """{"tokens":[-1]}"""), param: "tokens");
        AssertBadRequest(await Post("/v1/detokenize", """{"tokens":[1.5]}"""), param: "tokens");
        AssertBadRequest(await Post("/v1/detokenize", """{"tokens":"12"}"""), param: "tokens");
        AssertBadRequest(await Post("/v1/tokenize", """{}"""));
        AssertBadRequest(await Post("/v1/tokenize", """{"prompt":"a","messages":[{"role":"user","content":"a"}]}"""));
        var (notFound, _) = await Post("/v1/tokenize", """{"model":"other","prompt":"a"}""");
        Assert.Equal(HttpStatusCode.NotFound, notFound);
    }

    [Fact]
    public async Task Metrics_report_requests_tokens_gauges_and_latency_histograms()
    {
        if (!V3Server.Available)
        {
            return;
        }
        var (status, chat) = await Post("/v1/chat/completions", """{"messages":[{"role":"user","content":"Hi"}],"max_tokens":4,"temperature":0}""");
        Assert.Equal(HttpStatusCode.OK, status);
        string text = await live.Client.GetStringAsync("/metrics");
        var samples = ParsePrometheus(text);
        Assert.True(samples["bora_requests_total{route=\"/v1/chat/completions\",status=\"200\"}"] >= 1);
        Assert.True(samples["bora_prompt_tokens_total"] >= chat.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.True(samples["bora_generation_tokens_total"] >= chat.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal(live.Server!.Engine!.KvPool.Blocks, samples["bora_kv_cache_blocks_total"]);
        foreach (var gauge in new[] { "bora_queue_depth", "bora_running_sequences", "bora_kv_cache_blocks_used" })
        {
            Assert.InRange(samples[gauge], 0, samples["bora_kv_cache_blocks_total"]);
        }
        foreach (var h in new[] { "bora_time_to_first_token_seconds", "bora_inter_token_latency_seconds" })
        {
            Assert.Contains($"# TYPE {h} histogram", text, StringComparison.Ordinal);
            var buckets = samples.Where(p => p.Key.StartsWith(h + "_bucket{", StringComparison.Ordinal)).Select(p => p.Value).ToList();
            Assert.True(buckets.Count > 2);
            for (int i = 1; i < buckets.Count; i++)
            {
                Assert.True(buckets[i] >= buckets[i - 1], $"{h} buckets are not cumulative");
            }
            Assert.Equal(samples[h + "_count"], samples[h + "_bucket{le=\"+Inf\"}"]);
            Assert.True(samples[h + "_count"] >= 1, $"{h} observed nothing");
        }
        Assert.Contains("# TYPE bora_requests_total counter", text, StringComparison.Ordinal);
        // The request log line names method, route, status, tokens and time.
        var usage = chat.GetProperty("usage");
        Assert.Contains($"POST /v1/chat/completions 200 {usage.GetProperty("prompt_tokens").GetInt32()}+{usage.GetProperty("completion_tokens").GetInt32()} tokens ", live.Log.ToString(), StringComparison.Ordinal);

        using var anonymous = new HttpClient { BaseAddress = live.Server.BaseAddress, Timeout = TimeSpan.FromSeconds(30) };
        using var denied = await anonymous.GetAsync("/metrics");
        Assert.Equal(HttpStatusCode.Unauthorized, denied.StatusCode);
    }

    [Fact]
    public async Task Metrics_prefix_cache_counters_rise_when_a_prompt_repeats()
    {
        if (!V3Server.Available)
        {
            return;
        }
        async Task<(double Queried, double Hits)> Scrape()
        {
            var m = ParsePrometheus(await live.Client.GetStringAsync("/metrics"));
            return (m["bora_prefix_cache_queried_tokens_total"], m["bora_prefix_cache_hit_tokens_total"]);
        }
        // A prompt of several 16-token blocks, unique to this test.
        string request = """{"messages":[{"role":"user","content":"Prefix cache probe: the quick brown fox jumps over the lazy dog, then counts the stars one by one until the night is over and the sun rises again."}],"max_tokens":2,"temperature":0}""";
        var before = await Scrape();
        var (status, first) = await Post("/v1/chat/completions", request);
        Assert.Equal(HttpStatusCode.OK, status);
        int prompt = first.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
        int blockSize = live.Server!.Engine!.KvPool.BlockSize;
        Assert.True(prompt > 2 * blockSize, $"the probe prompt has only {prompt} tokens");
        var middle = await Scrape();
        Assert.True(middle.Queried - before.Queried >= prompt, $"queried rose by {middle.Queried - before.Queried}; expected at least {prompt}");
        (status, _) = await Post("/v1/chat/completions", request);
        Assert.Equal(HttpStatusCode.OK, status);
        var after = await Scrape();
        Assert.True(after.Queried - middle.Queried >= prompt);
        // The repeat finds every full block of its prompt but the one holding the last token.
        int expectedHits = (prompt - 1) / blockSize * blockSize;
        Assert.True(after.Hits - middle.Hits >= expectedHits, $"hits rose by {after.Hits - middle.Hits}; expected at least {expectedHits}");
        Assert.True(after.Hits <= after.Queried);
        Assert.Contains("# TYPE bora_prefix_cache_hit_tokens_total counter", await live.Client.GetStringAsync("/metrics"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Metrics_show_the_kv_blocks_of_a_stream_and_their_release_when_the_client_disconnects()
    {
        if (!V3Server.Available)
        {
            return;
        }
        async Task<double> Used() => ParsePrometheus(await live.Client.GetStringAsync("/metrics"))["bora_kv_cache_blocks_used"];
        double during;
        using (var req = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions")
        {
            Content = new StringContent("""{"messages":[{"role":"user","content":"Tell me a long story."}],"max_tokens":900,"temperature":1,"seed":5,"stream":true}""", Encoding.UTF8, "application/json"),
        })
        using (var r = await live.Client.SendAsync(req, HttpCompletionOption.ResponseHeadersRead))
        {
            using var reader = new StreamReader(await r.Content.ReadAsStreamAsync());
            for (int i = 0; i < 3; i++)
            {
                await reader.ReadLineAsync(); // the role chunk, then the first token: the sequence runs (900 tokens take far longer than a scrape)
            }
            during = await Used();
        }
        Assert.True(during >= 1, "a running stream holds KV blocks");
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        double after = during;
        while (after > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20);
            after = await Used();
        }
        Assert.Equal(0, after);
    }

    /// <summary>Sample lines of the text exposition format: "name{labels} value" keyed by "name{labels}".</summary>
    internal static Dictionary<string, double> ParsePrometheus(string text)
    {
        var samples = new Dictionary<string, double>(StringComparer.Ordinal);
        foreach (var line in text.Split('\n'))
        {
            if (line.Length == 0 || line[0] == '#')
            {
                continue;
            }
            int space = line.LastIndexOf(' ');
            samples.Add(line[..space], double.Parse(line[(space + 1)..], System.Globalization.CultureInfo.InvariantCulture));
        }
        return samples;
    }
}

public class FimWithoutControlTokensTests
{
    [Fact]
    public async Task A_model_without_fim_tokens_answers_fim_requests_with_a_clear_400()
    {
        string kjv = Path.Combine(TestPaths.RepoRoot, "models", "bora-kjv");
        if (!Directory.Exists(kjv))
        {
            return;
        }
        await using var server = await BoraServer.StartAsync(new ServerOptions { Port = 0 }, () => ModelLoader.Load(kjv), TextWriter.Null);
        await server.Ready.WaitAsync(TimeSpan.FromSeconds(60));
        using var client = new HttpClient { BaseAddress = server.BaseAddress, Timeout = TimeSpan.FromSeconds(30) };
        foreach (var route in new[] { "/v1/fim/completions", "/v1/completions" })
        {
            using var r = await client.PostAsync(route, new StringContent("""{"prompt":"In the beginning","suffix":"earth.","max_tokens":3}""", Encoding.UTF8, "application/json"));
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            var error = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
            Assert.Equal("fim_not_supported", error.GetProperty("code").GetString());
            Assert.Contains("fill-in-the-middle", error.GetProperty("message").GetString(), StringComparison.Ordinal);
        }
        // Without a suffix the same completion works.
        using var ok = await client.PostAsync("/v1/completions", new StringContent("""{"prompt":"In the beginning","max_tokens":3}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
    }
}
