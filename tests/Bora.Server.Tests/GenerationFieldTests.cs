using System.Net;
using System.Text;
using System.Text.Json;
using Bora.Generation;
using Bora.Generation.Constraints;
using Bora.Loading;
using Bora.Tokenizers;

namespace Bora.Server.Tests;

/// <summary>A live server over a random-weight model with Mistral's v3 tokenizer (it has [TOOL_CALLS]); null when the tokenizer is absent.</summary>
public sealed class RandomV3Server() : LiveServerFixture(clientTimeoutSeconds: 120, readySeconds: 60)
{
    public static string TokenizerPath => TestPaths.Shared("tokenizers", "mistral", "mistral_instruct_tokenizer_240323.model.v3");

    public ITokenizer? Tokenizer => Model?.Tokenizer;

    protected override LoadedModel? LoadModel()
    {
        if (!File.Exists(TokenizerPath))
        {
            return null;
        }
        var tokenizer = SentencePieceTokenizer.Load(TokenizerPath);
        var config = RandomModels.Dense() with { VocabSize = tokenizer.VocabSize };
        return new LoadedModel(new ModelSource("random-v3", CheckpointLayout.Gguf, "", "", null), config, RandomModels.Build(config, seed: 11), tokenizer);
    }

    protected override ServerOptions Options() => new() { Port = 0, MaxTokensLimit = 200 };
}

/// <summary>presence/frequency penalties, n, logprobs, response_format, tools + tool_choice: validation and behaviour over HTTP.</summary>
public class GenerationFieldTests(LiveServer live, RandomV3Server v3) : IClassFixture<LiveServer>, IClassFixture<RandomV3Server>
{
    private const string Prompt = "Once upon a time";

    /// <summary>Server logprobs (float32 log-softmax) against a double log-softmax of the same logits.</summary>
    private const double LogprobTolerance = 1e-4;

    private const string Tools = """[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}},{"type":"function","function":{"name":"get_time"}}]""";

    private static StringContent Json(string json) => new(json, Encoding.UTF8, "application/json");

    private static async Task<(HttpStatusCode Status, JsonElement Body)> Post(HttpClient client, string path, string json)
    {
        using var r = await client.PostAsync(path, Json(json));
        return (r.StatusCode, JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.Clone());
    }

    private static string Chat(string extra) => $$"""{"messages":[{"role":"user","content":"{{Prompt}}"}],"max_tokens":8{{extra}}}""";

    private static void AssertBadRequest((HttpStatusCode Status, JsonElement Body) r, string param, string? messagePart = null)
    {
        Assert.Equal(HttpStatusCode.BadRequest, r.Status);
        var e = r.Body.GetProperty("error");
        Assert.Equal("invalid_request_error", e.GetProperty("type").GetString());
        Assert.Equal(param, e.GetProperty("param").GetString());
        if (messagePart is not null)
        {
            Assert.Contains(messagePart, e.GetProperty("message").GetString(), StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Every_generation_field_is_validated_with_a_400_naming_it()
    {
        if (!LiveServer.Available)
        {
            return;
        }
        var c = live.Client;
        foreach (string v in new[] { "2.5", "-3", "\"high\"", "1e9" })
        {
            AssertBadRequest(await Post(c, "/v1/chat/completions", Chat($",\"presence_penalty\":{v}")), "presence_penalty");
            AssertBadRequest(await Post(c, "/v1/completions", $$"""{"prompt":"x","frequency_penalty":{{v}}}"""), "frequency_penalty");
        }
        foreach (string v in new[] { "0", "-1", "9", "\"2\"", "1.5", "99999999999" })
        {
            AssertBadRequest(await Post(c, "/v1/chat/completions", Chat($",\"n\":{v}")), "n");
            AssertBadRequest(await Post(c, "/v1/completions", $$"""{"prompt":"x","n":{{v}}}"""), "n");
        }
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat(",\"logprobs\":\"yes\"")), "logprobs");
        foreach (string v in new[] { "21", "-1", "\"3\"", "1e3" })
        {
            AssertBadRequest(await Post(c, "/v1/chat/completions", Chat($",\"logprobs\":true,\"top_logprobs\":{v}")), "top_logprobs");
        }
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat(",\"top_logprobs\":2")), "top_logprobs", "requires logprobs");
        foreach (string v in new[] { "6", "-1", "true" })
        {
            AssertBadRequest(await Post(c, "/v1/completions", $$"""{"prompt":"x","logprobs":{{v}}}"""), "logprobs");
        }
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat(",\"response_format\":{\"type\":\"json_schema\"}")), "response_format.json_schema");
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat(",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":1}}")), "response_format.json_schema.name");
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat(",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\",\"strict\":\"yes\"}}")), "response_format.json_schema.strict");
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat(",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\",\"schema\":{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\",\"minimum\":1}}}}}")),
            "response_format.json_schema.schema", "keyword 'minimum' is not supported (at $.properties.n)");
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat(",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\",\"schema\":{\"$ref\":\"#\"}}}")),
            "response_format.json_schema.schema", "recursive");
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat(",\"response_format\":{\"type\":\"yaml\"}")), "response_format.type");
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat(",\"response_format\":\"json\"")), "response_format");
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat(",\"response_format\":{}")), "response_format");
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat(",\"tool_choice\":\"any\"")), "tool_choice", "needs a non-empty tools");
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat($",\"tools\":{Tools},\"tool_choice\":\"sometimes\"")), "tool_choice");
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat($",\"tools\":{Tools},\"tool_choice\":5")), "tool_choice");
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat($",\"tools\":{Tools},\"tool_choice\":{{\"type\":\"function\",\"function\":{{\"name\":\"nope\"}}}}")), "tool_choice.function.name", "not in tools");
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat($",\"tools\":{Tools},\"tool_choice\":\"any\"")), "tool_choice", "[TOOL_CALLS]"); // stories260K has no such token
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat(",\"tools\":\"x\"")), "tools");
        AssertBadRequest(await Post(c, "/v1/chat/completions", Chat(",\"tools\":[{\"type\":\"function\"}]")), "tools");
        // Valid values pass: the edges of each range, text format, tool_choice none/auto without a [TOOL_CALLS] token.
        foreach (string extra in new[]
        {
            ",\"presence_penalty\":-2,\"frequency_penalty\":2", ",\"n\":8", ",\"logprobs\":true,\"top_logprobs\":20", ",\"logprobs\":false",
            ",\"response_format\":{\"type\":\"text\"}", ",\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"any\"}}", $",\"tools\":{Tools},\"tool_choice\":\"none\"", $",\"tools\":{Tools},\"tool_choice\":\"auto\"",
        })
        {
            var (status, body) = await Post(c, "/v1/chat/completions", Chat(extra));
            Assert.True(status == HttpStatusCode.OK, extra + " -> " + body);
        }
    }

    [Fact]
    public async Task N_choices_have_indices_derived_seeds_summed_usage_and_stream_the_same_text()
    {
        if (!LiveServer.Available)
        {
            return;
        }
        const string common = ",\"temperature\":1,\"seed\":42,\"max_tokens\":10";
        var (s1, one) = await Post(live.Client, "/v1/chat/completions", Chat(common));
        var (s3, three) = await Post(live.Client, "/v1/chat/completions", Chat(common + ",\"n\":3"));
        Assert.Equal(HttpStatusCode.OK, s1);
        Assert.Equal(HttpStatusCode.OK, s3);
        var choices = three.GetProperty("choices");
        Assert.Equal(3, choices.GetArrayLength());
        string[] texts = [.. Enumerable.Range(0, 3).Select(i =>
        {
            Assert.Equal(i, choices[i].GetProperty("index").GetInt32());
            return choices[i].GetProperty("message").GetProperty("content").GetString()!;
        })];
        // Choice 0 keeps the request seed; the others get their own.
        Assert.Equal(one.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString(), texts[0]);
        Assert.True(texts.Distinct().Count() > 1, "three seeded choices at temperature 1 all gave the same text");
        var usage = three.GetProperty("usage");
        Assert.Equal(one.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), usage.GetProperty("prompt_tokens").GetInt32());
        Assert.InRange(usage.GetProperty("completion_tokens").GetInt32(), 3, 30);
        Assert.Equal(usage.GetProperty("prompt_tokens").GetInt32() + usage.GetProperty("completion_tokens").GetInt32(), usage.GetProperty("total_tokens").GetInt32());

        // Streaming: the chunks of the three choices interleave, each names its index; same texts; usage on the last chunk only.
        using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = Json(Chat(common + ",\"n\":3,\"stream\":true")) };
        using var r = await live.Client.SendAsync(req, HttpCompletionOption.ResponseHeadersRead);
        var streamed = new[] { new StringBuilder(), new StringBuilder(), new StringBuilder() };
        var finished = new bool[3];
        int usageChunks = 0;
        bool done = false;
        using var reader = new StreamReader(await r.Content.ReadAsStreamAsync());
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal))
            {
                continue;
            }
            if (line == "data: [DONE]")
            {
                done = true;
                continue;
            }
            var chunk = JsonDocument.Parse(line[6..]).RootElement;
            var choice = chunk.GetProperty("choices")[0];
            int index = choice.GetProperty("index").GetInt32();
            if (choice.GetProperty("delta").TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.String)
            {
                streamed[index].Append(content.GetString());
            }
            finished[index] |= choice.GetProperty("finish_reason").ValueKind == JsonValueKind.String;
            // Chunks without usage leave the field out (never "usage": null).
            if (chunk.TryGetProperty("usage", out var chunkUsage))
            {
                usageChunks++;
                Assert.Equal(usage.GetProperty("completion_tokens").GetInt32(), chunkUsage.GetProperty("completion_tokens").GetInt32());
            }
        }
        Assert.True(done);
        Assert.Equal(1, usageChunks);
        Assert.All(finished, Assert.True);
        Assert.Equal(texts, streamed.Select(b => b.ToString()).ToArray());
    }

    [Fact]
    public async Task N_choices_share_the_prompt_kv_blocks_of_choice_0()
    {
        if (!LiveServer.Available)
        {
            return;
        }
        var engine = live.Server!.Engine!;
        int blockSize = engine.KvPool.BlockSize;
        // A prompt no other test sends (so no earlier request cached it), several blocks long.
        string text = "Once upon a time " + string.Join(' ', Enumerable.Range(0, 12).Select(i => $"{Guid.NewGuid():N}"[..6] + i));
        int promptTokens = live.Model!.Tokenizer.Encode(text, addBos: true).Length;
        int sharedBlocks = (promptTokens - 1) / blockSize; // full blocks that leave a token to compute
        Assert.True(sharedBlocks >= 2, $"the test prompt has {promptTokens} tokens; it needs at least 3 blocks of {blockSize}");
        long before = engine.PrefixCachedTokens;
        var (status, body) = await Post(live.Client, "/v1/chat/completions",
            $$"""{"messages":[{"role":"user","content":"{{text}}"}],"max_tokens":4,"n":3,"temperature":1,"seed":5}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(3, body.GetProperty("choices").GetArrayLength());
        // Choices 1 and 2 took choice 0's full prompt blocks from the prefix cache (the chat template adds tokens, so at least).
        long cached = engine.PrefixCachedTokens - before;
        Assert.True(cached >= 2L * sharedBlocks * blockSize, $"{cached} prompt tokens came from the cache; expected at least {2 * sharedBlocks * blockSize}");
    }

    [Fact]
    public async Task Logprobs_are_the_raw_log_softmax_of_the_model_with_sorted_alternatives()
    {
        if (!LiveServer.Available)
        {
            return;
        }
        var (status, body) = await Post(live.Client, "/v1/chat/completions", Chat(",\"temperature\":0,\"logprobs\":true,\"top_logprobs\":3"));
        Assert.Equal(HttpStatusCode.OK, status);
        var content = body.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("content");
        var (_, without) = await Post(live.Client, "/v1/chat/completions", Chat(""));
        Assert.False(without.GetProperty("choices")[0].TryGetProperty("logprobs", out _), "logprobs must be left out when not requested");
        int completion = body.GetProperty("usage").GetProperty("completion_tokens").GetInt32();
        Assert.InRange(content.GetArrayLength(), completion - 1, completion); // EOS has no entry
        var text = new StringBuilder();
        foreach (var entry in content.EnumerateArray())
        {
            var top = entry.GetProperty("top_logprobs");
            Assert.Equal(3, top.GetArrayLength());
            Assert.True(top[0].GetProperty("logprob").GetDouble() >= top[1].GetProperty("logprob").GetDouble());
            Assert.True(top[1].GetProperty("logprob").GetDouble() >= top[2].GetProperty("logprob").GetDouble());
            // Greedy without penalties: the chosen token is the top alternative.
            Assert.Equal(top[0].GetProperty("token").GetString(), entry.GetProperty("token").GetString());
            Assert.Equal(top[0].GetProperty("logprob").GetDouble(), entry.GetProperty("logprob").GetDouble());
            Assert.True(entry.GetProperty("logprob").GetDouble() <= 0);
            byte[] bytes = [.. entry.GetProperty("bytes").EnumerateArray().Select(b => (byte)b.GetInt32())];
            Assert.Equal(Encoding.UTF8.GetString(bytes), entry.GetProperty("token").GetString());
            text.Append(entry.GetProperty("token").GetString());
        }
        Assert.Equal(body.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString(), text.ToString());

        // Streaming: each chunk carries the logprobs of its tokens; together they are the same entries.
        using (var req = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = Json(Chat(",\"temperature\":0,\"logprobs\":true,\"top_logprobs\":3,\"stream\":true")) })
        using (var r = await live.Client.SendAsync(req, HttpCompletionOption.ResponseHeadersRead))
        {
            var streamed = new List<string>();
            using var reader = new StreamReader(await r.Content.ReadAsStreamAsync());
            while (await reader.ReadLineAsync() is { } line)
            {
                if (line.StartsWith("data: {", StringComparison.Ordinal)
                    && JsonDocument.Parse(line[6..]).RootElement.GetProperty("choices")[0].TryGetProperty("logprobs", out var lps))
                {
                    streamed.AddRange(lps.GetProperty("content").EnumerateArray().Select(e => e.GetRawText()));
                }
            }
            Assert.Equal(content.EnumerateArray().Select(e => e.GetRawText()).ToArray(), streamed.ToArray());
        }

        // Legacy completions at temperature 1 with penalties: logprobs stay the raw model distribution; check the first against a direct forward pass.
        var (s2, legacy) = await Post(live.Client, "/v1/completions", $$"""{"prompt":"{{Prompt}}","max_tokens":3,"temperature":1.3,"seed":5,"presence_penalty":1,"logprobs":2}""");
        Assert.Equal(HttpStatusCode.OK, s2);
        var lp = legacy.GetProperty("choices")[0].GetProperty("logprobs");
        Assert.Equal(lp.GetProperty("tokens").GetArrayLength(), lp.GetProperty("token_logprobs").GetArrayLength());
        Assert.Equal(0, lp.GetProperty("text_offset")[0].GetInt32());
        var m = live.Model!;
        var prompt = m.Tokenizer.Encode(Prompt, addBos: true);
        var logits = new float[m.Config.VocabSize];
        m.Model.Forward(prompt, m.Model.CreateCache(64), logits);
        double max = logits.Max();
        double logZ = max + Math.Log(logits.Sum(l => Math.Exp(l - max)));
        var best = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).Take(2).ToArray();
        var firstTop = lp.GetProperty("top_logprobs")[0];
        foreach (int id in best)
        {
            string piece = Encoding.UTF8.GetString(m.Tokenizer.TokenBytes(new TokenId(id), prompt[^1]));
            Assert.True(firstTop.TryGetProperty(piece, out var value), $"top_logprobs lacks '{piece}'");
            Assert.InRange(value.GetDouble(), logits[id] - logZ - LogprobTolerance, logits[id] - logZ + LogprobTolerance);
        }
        Assert.True(lp.GetProperty("token_logprobs")[0].GetDouble() <= 0);
    }

    [Fact]
    public async Task Penalties_over_http_match_the_generator_and_change_the_text()
    {
        if (!LiveServer.Available)
        {
            return;
        }
        var m = live.Model!;
        string Reference(float presence, float frequency) => new Generator(m.Model, m.Tokenizer).Generate(m.Tokenizer.Encode(Prompt, addBos: true),
            new SamplingOptions { Temperature = 0, TopK = 0, TopP = 1, MinP = 0, MaxTokens = 40, PresencePenalty = presence, FrequencyPenalty = frequency }).Text;
        var (_, plain) = await Post(live.Client, "/v1/completions", $$"""{"prompt":"{{Prompt}}","max_tokens":40,"temperature":0}""");
        var (_, penalized) = await Post(live.Client, "/v1/completions", $$"""{"prompt":"{{Prompt}}","max_tokens":40,"temperature":0,"presence_penalty":0.5,"frequency_penalty":1.5}""");
        string a = plain.GetProperty("choices")[0].GetProperty("text").GetString()!, b = penalized.GetProperty("choices")[0].GetProperty("text").GetString()!;
        Assert.Equal(Reference(0, 0), a);
        Assert.Equal(Reference(0.5f, 1.5f), b);
        Assert.NotEqual(a, b);
    }

    [Fact]
    public async Task Json_object_output_parses_whenever_it_stops()
    {
        await JsonModeOn(live.Client, LiveServer.Available);
        await JsonModeOn(v3.Client, v3.Server is not null);
    }

    private static async Task JsonModeOn(HttpClient client, bool available)
    {
        if (!available)
        {
            return;
        }
        for (int seed = 0; seed < 4; seed++)
        {
            var (status, body) = await Post(client, "/v1/chat/completions",
                Chat($",\"temperature\":1,\"seed\":{seed},\"n\":2,\"response_format\":{{\"type\":\"json_object\"}},\"stop\":[\"}}\"]").Replace("\"max_tokens\":8", "\"max_tokens\":60", StringComparison.Ordinal));
            Assert.Equal(HttpStatusCode.OK, status);
            foreach (var choice in body.GetProperty("choices").EnumerateArray())
            {
                string text = choice.GetProperty("message").GetProperty("content").GetString()!;
                if (choice.GetProperty("finish_reason").GetString() == "stop")
                {
                    using var doc = JsonDocument.Parse(text);
                    Assert.Equal(JsonValueKind.Object, doc.RootElement.ValueKind);
                }
                else
                {
                    Assert.True(GrammarConstraint<JsonState>.Accepts(JsonGrammar.Object, default, Encoding.UTF8.GetBytes(text), out _), text);
                }
            }
        }
    }

    [Fact]
    public async Task Forced_tool_calls_follow_the_tool_call_syntax_on_a_model_with_the_token()
    {
        if (v3.Server is null)
        {
            return;
        }
        AssertBadRequest(await Post(v3.Client, "/v1/chat/completions", Chat($",\"tools\":{Tools},\"tool_choice\":\"any\",\"response_format\":{{\"type\":\"json_object\"}}")), "tool_choice");
        int completed = 0;
        foreach (string choiceJson in new[] { "\"any\"", "\"required\"", "{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}" })
        {
            var (status, body) = await Post(v3.Client, "/v1/chat/completions",
                Chat($",\"temperature\":1,\"seed\":3,\"n\":2,\"tools\":{Tools},\"tool_choice\":{choiceJson}").Replace("\"max_tokens\":8", "\"max_tokens\":200", StringComparison.Ordinal));
            Assert.Equal(HttpStatusCode.OK, status);
            string[] allowed = choiceJson.StartsWith('{') ? ["get_time"] : ["get_weather", "get_time"];
            var grammar = new ToolCallGrammar(allowed, several: !choiceJson.StartsWith('{'));
            foreach (var choice in body.GetProperty("choices").EnumerateArray())
            {
                var message = choice.GetProperty("message");
                if (choice.GetProperty("finish_reason").GetString() == "tool_calls")
                {
                    // A complete forced call list comes back shaped: message.tool_calls, no content.
                    completed++;
                    Assert.Equal(JsonValueKind.Null, message.GetProperty("content").ValueKind);
                    var calls = message.GetProperty("tool_calls");
                    Assert.True(calls.GetArrayLength() >= 1);
                    if (choiceJson.StartsWith('{'))
                    {
                        Assert.Equal(1, calls.GetArrayLength()); // a named function: exactly one call
                    }
                    foreach (var call in calls.EnumerateArray())
                    {
                        Assert.Equal("function", call.GetProperty("type").GetString());
                        Assert.Contains(call.GetProperty("function").GetProperty("name").GetString(), allowed);
                        using var args = JsonDocument.Parse(call.GetProperty("function").GetProperty("arguments").GetString()!);
                        Assert.Equal(JsonValueKind.Object, args.RootElement.ValueKind);
                    }
                    continue;
                }
                // Cut off by max_tokens: the unfinished call text is given back as content, a prefix of the syntax.
                Assert.Equal("length", choice.GetProperty("finish_reason").GetString());
                string text = message.GetProperty("content").GetString()!;
                Assert.True(GrammarConstraint<ToolCallState>.Accepts(grammar, grammar.Start, Encoding.UTF8.GetBytes(text), out var end), text);
                Assert.False(grammar.IsComplete(end), text);
            }
        }
        Assert.True(completed > 0, "no forced call list completed within max_tokens");
    }

    /// <summary>A schema a random model can finish within 200 tokens: booleans, enums, a short string, a short array, an optional integer.</summary>
    internal const string SmallSchema = """
    {"type":"object","properties":{
      "ok":{"type":"boolean"},
      "color":{"enum":["red","green","blue"]},
      "name":{"type":["string","null"],"maxLength":4},
      "n":{"type":"integer"},
      "tags":{"type":"array","items":{"$ref":"#/$defs/Tag"},"minItems":1,"maxItems":2}},
     "required":["ok","color","name","tags"],"additionalProperties":false,
     "$defs":{"Tag":{"anyOf":[{"type":"string","maxLength":2},{"type":"boolean"}]}}}
    """;

    [Fact]
    public async Task Json_schema_output_validates_whenever_it_stops_and_streams_the_same_text()
    {
        if (v3.Server is null)
        {
            return;
        }
        string format = $",\"response_format\":{{\"type\":\"json_schema\",\"json_schema\":{{\"name\":\"thing\",\"strict\":true,\"schema\":{SmallSchema}}}}}";
        int stopped = 0;
        for (int seed = 0; seed < 3; seed++)
        {
            string request = Chat($",\"temperature\":1,\"seed\":{seed},\"n\":3{format}").Replace("\"max_tokens\":8", "\"max_tokens\":200", StringComparison.Ordinal);
            var (status, body) = await Post(v3.Client, "/v1/chat/completions", request);
            Assert.True(status == HttpStatusCode.OK, body.ToString());
            var texts = new List<string>();
            foreach (var choice in body.GetProperty("choices").EnumerateArray())
            {
                string text = choice.GetProperty("message").GetProperty("content").GetString()!;
                texts.Add(text);
                if (choice.GetProperty("finish_reason").GetString() == "stop")
                {
                    stopped++;
                    var errors = MiniSchemaValidator.Validate(text, SmallSchema);
                    Assert.True(errors.Count == 0, string.Join("; ", errors) + " in " + text);
                }
                else
                {
                    var g = JsonSchemaGrammar.Compile(SmallSchema);
                    Assert.True(GrammarConstraint<JsonSchemaState>.Accepts(g, g.Start, Encoding.UTF8.GetBytes(text), out _), text);
                }
            }
            if (seed == 0)
            {
                // Streaming the same request gives the same text per choice.
                using var r = await v3.Client.PostAsync("/v1/chat/completions", Json(request.Replace("{\"messages\"", "{\"stream\":true,\"messages\"", StringComparison.Ordinal)));
                var streamed = new Dictionary<int, StringBuilder>();
                foreach (string line in (await r.Content.ReadAsStringAsync()).Split('\n'))
                {
                    if (!line.StartsWith("data: {", StringComparison.Ordinal))
                    {
                        continue;
                    }
                    using var chunk = JsonDocument.Parse(line[6..]);
                    foreach (var ch in chunk.RootElement.GetProperty("choices").EnumerateArray())
                    {
                        if (ch.GetProperty("delta").TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.String)
                        {
                            int i = ch.GetProperty("index").GetInt32();
                            (streamed.TryGetValue(i, out var sb) ? sb : streamed[i] = new StringBuilder()).Append(content.GetString());
                        }
                    }
                }
                for (int i = 0; i < texts.Count; i++)
                {
                    Assert.Equal(texts[i], streamed.TryGetValue(i, out var sb) ? sb.ToString() : "");
                }
            }
        }
        Assert.True(stopped >= 3, $"only {stopped} of 9 schema answers finished within max_tokens");
    }

    [Fact]
    public async Task Forced_tool_call_arguments_follow_the_tool_parameters_schema()
    {
        if (v3.Server is null)
        {
            return;
        }
        // get_weather's parameters use the compiler's subset; get_time's use 'minimum' (unsupported): its arguments fall back to any object.
        string tools = "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":" + SmallSchema + "}},"
            + "{\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"parameters\":{\"type\":\"object\",\"properties\":{\"tz\":{\"type\":\"integer\",\"minimum\":0}}}}}]";
        int validated = 0;
        for (int seed = 0; seed < 4; seed++)
        {
            string choiceJson = seed % 2 == 0 ? "\"required\"" : "{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}";
            var (status, body) = await Post(v3.Client, "/v1/chat/completions",
                Chat($",\"temperature\":1,\"seed\":{seed},\"n\":3,\"tools\":{tools},\"tool_choice\":{choiceJson}").Replace("\"max_tokens\":8", "\"max_tokens\":200", StringComparison.Ordinal));
            Assert.True(status == HttpStatusCode.OK, body.ToString());
            foreach (var choice in body.GetProperty("choices").EnumerateArray())
            {
                if (choice.GetProperty("finish_reason").GetString() != "tool_calls")
                {
                    continue;
                }
                foreach (var call in choice.GetProperty("message").GetProperty("tool_calls").EnumerateArray())
                {
                    string name = call.GetProperty("function").GetProperty("name").GetString()!;
                    string args = call.GetProperty("function").GetProperty("arguments").GetString()!;
                    using var doc = JsonDocument.Parse(args);
                    Assert.Equal(JsonValueKind.Object, doc.RootElement.ValueKind);
                    if (name == "get_weather")
                    {
                        var errors = MiniSchemaValidator.Validate(args, SmallSchema);
                        Assert.True(errors.Count == 0, string.Join("; ", errors) + " in " + args);
                        validated++;
                    }
                }
            }
        }
        Assert.True(validated >= 3, $"only {validated} get_weather calls completed within max_tokens");
    }
}
