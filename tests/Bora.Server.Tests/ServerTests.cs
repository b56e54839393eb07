using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Bora.Generation;
using Bora.Loading;

namespace Bora.Server.Tests;

/// <summary>One live server on 127.0.0.1 (a free port) over stories260K, shared by the tests of a class.</summary>
public sealed class LiveServer : LiveServerFixture
{
    public const string Key = "test-key-123";

    public static string ModelPath => TestPaths.Shared("models", "stories260K", "stories260K.gguf");

    public static bool Available => File.Exists(ModelPath);

    protected override LoadedModel? LoadModel() => Available ? ModelLoader.Load(ModelPath) : null;

    protected override ServerOptions Options() => new()
    {
        Port = 0,
        ApiKey = Key,
        MaxBodyBytes = 64 * 1024,
        MaxTokensLimit = 400,
        Engine = new Serving.EngineOptions { BlockSize = 8, MaxBatchTokens = 64, MaxChunkTokens = 32, MaxRunning = 16, MaxWaiting = 32 },
    };
}

public class ServerTests(LiveServer live) : IClassFixture<LiveServer>
{
    private const string Prompt = "Once upon a time";

    private static StringContent Json(string json) => new(json, Encoding.UTF8, "application/json");

    private async Task<(HttpStatusCode Status, JsonElement Body)> Post(string path, string json, HttpClient? client = null)
    {
        using var r = await (client ?? live.Client).PostAsync(path, Json(json));
        var text = await r.Content.ReadAsStringAsync();
        return (r.StatusCode, JsonDocument.Parse(text).RootElement.Clone());
    }

    /// <summary>Reads an SSE completion stream: the text of every chunk, the final chunk, and whether [DONE] came last.</summary>
    private async Task<(string Text, JsonElement Final, bool Done)> Stream(string path, string json, string field = "text")
    {
        using var req = new HttpRequestMessage(HttpMethod.Post, path) { Content = Json(json) };
        using var r = await live.Client.SendAsync(req, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal("text/event-stream", r.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await r.Content.ReadAsStreamAsync());
        var text = new StringBuilder();
        JsonElement final = default;
        bool done = false;
        for (int events = 0; events < 10_000; events++)
        {
            string? line = await reader.ReadLineAsync();
            if (line is null)
            {
                break;
            }
            if (!line.StartsWith("data: ", StringComparison.Ordinal))
            {
                continue;
            }
            Assert.False(done, "data after [DONE]");
            string data = line[6..];
            if (data == "[DONE]")
            {
                done = true;
                continue;
            }
            var chunk = JsonDocument.Parse(data).RootElement.Clone();
            var choice = chunk.GetProperty("choices")[0];
            var piece = field == "text" ? choice.GetProperty("text") : choice.GetProperty("delta").TryGetProperty("content", out var c) ? c : default;
            if (piece.ValueKind == JsonValueKind.String)
            {
                text.Append(piece.GetString());
            }
            if (choice.GetProperty("finish_reason").ValueKind == JsonValueKind.String)
            {
                final = chunk;
            }
        }
        return (text.ToString(), final, done);
    }

    /// <summary>What Bora's single-sequence Generator (no server, no batching) produces for the same request.</summary>
    private string Reference(int maxTokens, float temperature, ulong seed)
    {
        var m = live.Model!;
        var gen = new Generator(m.Model, m.Tokenizer);
        var options = new SamplingOptions { Temperature = temperature, TopK = 0, TopP = 1, MinP = 0, Seed = seed, MaxTokens = maxTokens };
        return gen.Generate(m.Tokenizer.Encode(Prompt, addBos: true), options).Text;
    }

    private static void AssertError(HttpStatusCode expected, (HttpStatusCode Status, JsonElement Body) r, string? code = null, string? param = null)
    {
        Assert.Equal(expected, r.Status);
        var e = r.Body.GetProperty("error");
        Assert.False(string.IsNullOrEmpty(e.GetProperty("message").GetString()));
        Assert.False(string.IsNullOrEmpty(e.GetProperty("type").GetString()));
        Assert.True(e.TryGetProperty("param", out _) && e.TryGetProperty("code", out _), "error lacks param or code");
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
    public async Task Health_and_models()
    {
        if (!LiveServer.Available)
        {
            return;
        }
        using var anonymous = new HttpClient { BaseAddress = live.Server!.BaseAddress, Timeout = TimeSpan.FromSeconds(30) };
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("/health")).StatusCode); // no key needed
        var models = JsonDocument.Parse(await live.Client.GetStringAsync("/v1/models")).RootElement;
        Assert.Equal("list", models.GetProperty("object").GetString());
        Assert.Equal("stories260K", models.GetProperty("data")[0].GetProperty("id").GetString());
        // No [TOOL_CALLS], [PREFIX] or [SUFFIX] in this vocabulary: chat only.
        var caps = models.GetProperty("data")[0].GetProperty("capabilities");
        Assert.True(caps.GetProperty("completion_chat").GetBoolean());
        Assert.False(caps.GetProperty("function_calling").GetBoolean());
        Assert.False(caps.GetProperty("completion_fim").GetBoolean());
        Assert.Contains("GET /health 200", live.Log.ToString(), StringComparison.Ordinal);
        // The default ServerOptions warm the engine up before /health answers 200, and say so once.
        Assert.Matches(@"warmed up in \d+ ms \(\d+ rounds of 2 throwaway generations\)", live.Log.ToString());
        Assert.Equal(0, live.Server.Engine!.RunningCount);
    }

    [Fact]
    public async Task Greedy_completion_matches_the_generator_and_reports_usage()
    {
        if (!LiveServer.Available)
        {
            return;
        }
        var (status, body) = await Post("/v1/completions", $$"""{"model":"stories260K","prompt":"{{Prompt}}","max_tokens":30,"temperature":0}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("text_completion", body.GetProperty("object").GetString());
        var choice = body.GetProperty("choices")[0];
        Assert.Equal(Reference(30, 0, 0), choice.GetProperty("text").GetString());
        var usage = body.GetProperty("usage");
        int promptTokens = live.Model!.Tokenizer.Encode(Prompt, addBos: true).Length;
        Assert.Equal(promptTokens, usage.GetProperty("prompt_tokens").GetInt32());
        int completion = usage.GetProperty("completion_tokens").GetInt32();
        Assert.InRange(completion, 1, 30);
        Assert.Equal(promptTokens + completion, usage.GetProperty("total_tokens").GetInt32());
        Assert.Equal(completion == 30 ? "length" : "stop", choice.GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task Streaming_completion_sends_the_same_text_then_finish_with_usage_then_done()
    {
        if (!LiveServer.Available)
        {
            return;
        }
        string req = $$"""{"prompt":"{{Prompt}}","max_tokens":25,"temperature":0.9,"seed":7}""";
        var (_, whole) = await Post("/v1/completions", req);
        var (text, final, done) = await Stream("/v1/completions", req.Replace("}", ",\"stream\":true}", StringComparison.Ordinal));
        Assert.True(done);
        Assert.Equal(whole.GetProperty("choices")[0].GetProperty("text").GetString(), text);
        Assert.Equal(Reference(25, 0.9f, 7), text);
        Assert.Equal(whole.GetProperty("usage").GetProperty("total_tokens").GetInt32(), final.GetProperty("usage").GetProperty("total_tokens").GetInt32());
    }

    [Fact]
    public async Task Chat_completion_and_chat_stream()
    {
        if (!LiveServer.Available)
        {
            return;
        }
        string req = """{"messages":[{"role":"system","content":"Be kind."},{"role":"user","content":"Tell a story."}],"max_tokens":12,"temperature":0}""";
        var (status, body) = await Post("/v1/chat/completions", req);
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("chat.completion", body.GetProperty("object").GetString());
        var msg = body.GetProperty("choices")[0].GetProperty("message");
        Assert.Equal("assistant", msg.GetProperty("role").GetString());
        Assert.True(body.GetProperty("usage").GetProperty("completion_tokens").GetInt32() > 0);
        var (text, final, done) = await Stream("/v1/chat/completions", req.Replace("}]", "}],\"stream\":true", StringComparison.Ordinal), "delta");
        Assert.True(done);
        Assert.Equal(msg.GetProperty("content").GetString(), text);
        Assert.Equal("chat.completion.chunk", final.GetProperty("object").GetString());
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/chat/completions", """{"messages":[{"role":"assistant","content":"hi"}]}"""), param: "messages");
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/chat/completions", """{"messages":[{"role":"robot","content":"hi"}]}"""), param: "messages[0].role");
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/chat/completions", """{"messages":[]}"""), param: "messages");
    }

    [Fact]
    public async Task Bad_requests_get_openai_errors_with_the_right_status_and_the_server_stays_up()
    {
        if (!LiveServer.Available)
        {
            return;
        }
        using (var noKey = new HttpClient { BaseAddress = live.Server!.BaseAddress, Timeout = TimeSpan.FromSeconds(30) })
        {
            AssertError(HttpStatusCode.Unauthorized, await Post("/v1/completions", """{"prompt":"x"}""", noKey), "invalid_api_key");
            noKey.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", LiveServer.Key + "x");
            AssertError(HttpStatusCode.Unauthorized, await Post("/v1/completions", """{"prompt":"x"}""", noKey), "invalid_api_key");
            using var models = await noKey.GetAsync("/v1/models");
            Assert.Equal(HttpStatusCode.Unauthorized, models.StatusCode);
        }
        AssertError(HttpStatusCode.NotFound, await Post("/v1/completions", """{"model":"gpt-4","prompt":"x"}"""), "model_not_found", "model");
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", """{"prompt":"x","""));
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", """{"prompt":"x","max_tokens":"ten"}"""), param: "max_tokens");
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", """{"prompt":"x","max_tokens":1.5}"""));
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", """{"prompt":"x","max_tokens":0}"""), param: "max_tokens");
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", """{"prompt":"x","max_tokens":-3}"""), param: "max_tokens");
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", """{"prompt":"x","max_tokens":99999999999}"""));
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", """{"prompt":"x","max_tokens":401}"""), param: "max_tokens");
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", """{"prompt":"x","temperature":-1}"""), param: "temperature");
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", """{"prompt":"x","top_p":0}"""), param: "top_p");
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", """{"prompt":"x","stop":[""]}"""), param: "stop");
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", """{"prompt":"x","stop":5}"""), param: "stop");
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", """{"prompt":"x","n":9}"""), param: "n");
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", """{"prompt":17}"""), param: "prompt");
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", """{"max_tokens":3}"""), param: "prompt");
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", "null"));
        int context = live.Server!.Engine!.ContextLength;
        for (int i = 0; i < 3; i++)
        {
            string longPrompt = string.Join(' ', Enumerable.Repeat("dog", context + 10));
            AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", $$"""{"prompt":"{{longPrompt}}","max_tokens":5}"""), "context_length_exceeded");
        }
        // A prompt that fits, with max_tokens that does not: 400 naming max_tokens.
        var tok = live.Model!.Tokenizer;
        int words = context - 300;
        string nearlyFull = "";
        for (int i = 0; i < 20; i++)
        {
            nearlyFull = string.Join(' ', Enumerable.Repeat("dog", words));
            int n = tok.Encode(nearlyFull, addBos: true).Length;
            if (n < context - 300)
            {
                break;
            }
            words = words * (context - 350) / n;
        }
        Assert.InRange(tok.Encode(nearlyFull, addBos: true).Length, context - 400, context - 300);
        AssertError(HttpStatusCode.BadRequest, await Post("/v1/completions", $$"""{"prompt":"{{nearlyFull}}","max_tokens":400}"""), "context_length_exceeded", "max_tokens");
        AssertError(HttpStatusCode.RequestEntityTooLarge, await Post("/v1/completions", $$"""{"prompt":"{{new string('a', 70 * 1024)}}"}"""), "request_too_large");
        using (var r = await live.Client.GetAsync("/v1/nothing"))
        {
            Assert.Equal(HttpStatusCode.NotFound, r.StatusCode);
            Assert.True(JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.TryGetProperty("error", out _));
        }
        var (ok, _) = await Post("/v1/completions", """{"prompt":"x","max_tokens":2}""");
        Assert.Equal(HttpStatusCode.OK, ok);
    }

    [Fact]
    public async Task Stop_strings_end_the_text_before_the_stop()
    {
        if (!LiveServer.Available)
        {
            return;
        }
        string full = Reference(40, 0, 0);
        int cut = full.IndexOf(' ', 8);
        Assert.True(cut > 0, "reference text too short for this test");
        string stop = full.Substring(cut, 3);
        var (_, body) = await Post("/v1/completions", JsonSerializer.Serialize(new Dictionary<string, object> { ["prompt"] = Prompt, ["max_tokens"] = 40, ["temperature"] = 0, ["stop"] = stop }));
        var choice = body.GetProperty("choices")[0];
        Assert.Equal(full[..full.IndexOf(stop, StringComparison.Ordinal)], choice.GetProperty("text").GetString());
        Assert.Equal("stop", choice.GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task Eight_concurrent_streaming_clients_get_exactly_what_they_get_alone()
    {
        if (!LiveServer.Available)
        {
            return;
        }
        const int Clients = 8, Tokens = 40;
        string Req(int i) => $$"""{"prompt":"{{Prompt}}","max_tokens":{{Tokens}},"temperature":1,"seed":{{1000 + i}},"stream":true}""";
        var alone = new string[Clients];
        for (int i = 0; i < Clients; i++)
        {
            alone[i] = (await Stream("/v1/completions", Req(i))).Text;
            Assert.Equal(Reference(Tokens, 1f, (ulong)(1000 + i)), alone[i]);
        }
        Assert.True(alone.Distinct().Count() > 1, "different seeds should give different stories");
        var together = await Task.WhenAll(Enumerable.Range(0, Clients).Select(i => Stream("/v1/completions", Req(i)))).WaitAsync(TimeSpan.FromSeconds(60));
        for (int i = 0; i < Clients; i++)
        {
            Assert.True(together[i].Done);
            Assert.Equal(alone[i], together[i].Text);
        }
        Assert.True(live.Server!.Engine!.PeakBatchSequences >= 2, "the concurrent clients never shared a forward pass");
    }

    [Fact]
    public async Task A_client_that_disconnects_mid_stream_frees_its_sequence()
    {
        if (!LiveServer.Available)
        {
            return;
        }
        var engine = live.Server!.Engine!;
        using (var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = Json("""{"prompt":"Once","max_tokens":400,"temperature":1,"stream":true}""") })
        using (var r = await live.Client.SendAsync(req, HttpCompletionOption.ResponseHeadersRead))
        {
            using var reader = new StreamReader(await r.Content.ReadAsStreamAsync());
            await reader.ReadLineAsync();
            Assert.True(engine.RunningCount + engine.WaitingCount >= 0);
        }
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while ((engine.RunningCount > 0 || engine.WaitingCount > 0) && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20);
        }
        Assert.Equal(0, engine.RunningCount);
        Assert.Equal(0, engine.WaitingCount);
    }
}

public class ServerLifecycleTests
{
    [Fact]
    public async Task Health_is_503_while_loading_then_200_and_routes_answer_503_meanwhile()
    {
        if (!LiveServer.Available)
        {
            return;
        }
        using var gate = new ManualResetEventSlim();
        await using var server = await BoraServer.StartAsync(new ServerOptions { Port = 0 }, () =>
        {
            gate.Wait(TimeSpan.FromSeconds(30));
            return ModelLoader.Load(LiveServer.ModelPath);
        }, TextWriter.Null);
        using var client = new HttpClient { BaseAddress = server.BaseAddress, Timeout = TimeSpan.FromSeconds(30) };
        Assert.Equal("127.0.0.1", server.BaseAddress.Host);
        using (var r = await client.GetAsync("/health"))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, r.StatusCode);
        }
        using (var r = await client.PostAsync("/v1/completions", new StringContent("""{"prompt":"x"}""", Encoding.UTF8, "application/json")))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, r.StatusCode);
            Assert.Equal("model_not_ready", JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetProperty("code").GetString());
        }
        gate.Set();
        await server.Ready.WaitAsync(TimeSpan.FromSeconds(30));
        using (var r = await client.GetAsync("/health"))
        {
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        }
    }
}
