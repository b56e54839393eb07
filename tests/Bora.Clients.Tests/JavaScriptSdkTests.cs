using System.Text.Json;

namespace Bora.Clients.Tests;

/// <summary>
/// The official JavaScript SDKs — npm <c>openai</c> and <c>@mistralai/mistralai</c>, which validates response bodies
/// strictly against Mistral's schemas — against a live server (tests/tools/sdk-clients/sdk_clients.mjs).
/// </summary>
[Collection(LiveServersCollection.Name)]
public class JavaScriptSdkTests(LiveServers servers)
{
    private const int MaxTokens = 12;

    private static readonly object Messages = new
    {
        messages = new[] { new { role = "system", content = "Be brief." }, new { role = "user", content = "And God said" } },
        maxTokens = MaxTokens,
    };

    public static TheoryData<string, string> SdkAndModel => new()
    {
        { "openai", TestModels.KjvId },
        { "openai", TestModels.TinyV3Id },
        { "mistral", TestModels.KjvId },
        { "mistral", TestModels.TinyV3Id },
    };

    private Live? Server(string id) => id == TestModels.KjvId ? servers.Kjv : servers.TinyV3;

    private static bool Skip(Live? live)
    {
        if (NodeSdk.Node is null)
        {
            Console.WriteLine(NodeSdk.SkipMessage);
            return true;
        }
        if (live is null)
        {
            Console.WriteLine(TestModels.SkipMessage);
            return true;
        }
        return false;
    }

    private static (string Text, int Prompt, int Tokens, string Finish) Expected(Live live)
    {
        var prompt = Reference.Prompt(live.Model, ("system", "Be brief."), ("user", "And God said"));
        var (text, tokens, finish) = Reference.Generate(live.Model, prompt, MaxTokens);
        return (text, prompt.Length, tokens, finish is Generation.FinishReason.Length or Generation.FinishReason.ContextFull ? "length" : "stop");
    }

    private static void AssertUsage(JsonElement usage, int prompt, int completion, bool camelCase)
    {
        Assert.Equal(prompt, usage.GetProperty(camelCase ? "promptTokens" : "prompt_tokens").GetInt32());
        Assert.Equal(completion, usage.GetProperty(camelCase ? "completionTokens" : "completion_tokens").GetInt32());
        Assert.Equal(prompt + completion, usage.GetProperty(camelCase ? "totalTokens" : "total_tokens").GetInt32());
    }

    [Theory]
    [MemberData(nameof(SdkAndModel))]
    public void Chat_matches_the_generator(string sdk, string modelId)
    {
        var live = Server(modelId);
        if (Skip(live))
        {
            return;
        }
        var expected = Expected(live!);
        var r = NodeSdk.Ok(NodeSdk.Run(live!, sdk + ".chat", Messages));
        Assert.Equal(expected.Text, r.GetProperty("content").GetString());
        Assert.Equal("assistant", r.GetProperty("role").GetString());
        Assert.Equal(expected.Finish, r.GetProperty("finish").GetString());
        AssertUsage(r.GetProperty("usage"), expected.Prompt, expected.Tokens, camelCase: sdk == "mistral");
    }

    [Theory]
    [InlineData("openai", TestModels.KjvId)]
    [InlineData("openai", TestModels.TinyV3Id)]
    public void Streaming_chat_gives_the_same_text_and_usage(string sdk, string modelId) => StreamingChat(sdk, modelId);

    /// <summary>
    /// The Mistral SDK rejects <c>"usage": null</c> in stream chunks (its schema has usage optional, not nullable):
    /// ChatChunk's usage must be left out when null (JsonIgnore WhenWritingNull in ApiModels.cs).
    /// </summary>
    [Theory]
    [InlineData("mistral", TestModels.KjvId)]
    [InlineData("mistral", TestModels.TinyV3Id)]
    public void Mistral_streaming_chat_gives_the_same_text_and_usage(string sdk, string modelId) => StreamingChat(sdk, modelId);

    private void StreamingChat(string sdk, string modelId)
    {
        var live = Server(modelId);
        if (Skip(live))
        {
            return;
        }
        var expected = Expected(live!);
        var r = NodeSdk.Ok(NodeSdk.Run(live!, sdk + ".stream", Messages));
        Assert.Equal(expected.Text, r.GetProperty("content").GetString());
        Assert.Equal(expected.Finish, r.GetProperty("finish").GetString());
        Assert.True(r.GetProperty("chunks").GetInt32() >= 2);
        AssertUsage(r.GetProperty("usage"), expected.Prompt, expected.Tokens, camelCase: sdk == "mistral");
    }

    [Fact]
    public void OpenAI_legacy_completions_and_model_list()
    {
        var live = servers.Kjv;
        if (Skip(live))
        {
            return;
        }
        var models = NodeSdk.Ok(NodeSdk.Run(live, "openai.models"));
        Assert.Equal([TestModels.KjvId], models.GetProperty("ids").EnumerateArray().Select(x => x.GetString()));
        var r = NodeSdk.Ok(NodeSdk.Run(live, "openai.completion", new { prompt = "And God said", maxTokens = MaxTokens }));
        var prompt = live.Model.Tokenizer.Encode("And God said", addBos: true);
        var expected = Reference.Generate(live.Model, prompt, MaxTokens);
        Assert.Equal(expected.Text, r.GetProperty("text").GetString());
        AssertUsage(r.GetProperty("usage"), prompt.Length, expected.Tokens, camelCase: false);
    }

    [Theory]
    [InlineData("openai")]
    [InlineData("mistral")]
    public void Errors_surface_with_their_status(string sdk)
    {
        var live = servers.Kjv;
        if (Skip(live))
        {
            return;
        }
        JsonElement Error(object extra)
        {
            var r = NodeSdk.Run(live, sdk + ".chat", extra);
            Assert.True(r.TryGetProperty("error", out var e), $"expected an error, got {r}");
            return e;
        }
        var badModel = Error(new { model = "gpt-4o" });
        Assert.Equal(404, badModel.GetProperty("status").GetInt32());
        var badKey = Error(new { key = "sk-wrong" });
        Assert.Equal(401, badKey.GetProperty("status").GetInt32());
        var tooLong = Error(new { maxTokens = 100_000 });
        Assert.Equal(400, tooLong.GetProperty("status").GetInt32());
        var noMessages = Error(new { messages = Array.Empty<object>() });
        Assert.Equal(400, noMessages.GetProperty("status").GetInt32());
        if (sdk == "openai")
        {
            // openai parses OpenAI's error object: code and param come through.
            Assert.Equal("model_not_found", badModel.GetProperty("code").GetString());
            Assert.Equal("invalid_api_key", badKey.GetProperty("code").GetString());
            Assert.Equal("max_tokens", tooLong.GetProperty("param").GetString());
        }
        else
        {
            Assert.Contains("model_not_found", badModel.GetProperty("body").GetString(), StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Mistral_model_list_passes_the_sdk_schema()
    {
        var live = servers.Kjv;
        if (Skip(live))
        {
            return;
        }
        var r = NodeSdk.Ok(NodeSdk.Run(live, "mistral.models"));
        Assert.Equal([TestModels.KjvId], r.GetProperty("ids").EnumerateArray().Select(x => x.GetString()));
        Assert.Equal(JsonValueKind.Object, r.GetProperty("capabilities").ValueKind);
    }

    [Theory]
    [InlineData("openai")]
    [InlineData("mistral")]
    public void Tools_round_trip(string sdk)
    {
        var live = servers.Scripted; // a model that really writes a call (see ScriptedModel)
        if (Skip(live))
        {
            return;
        }
        var r = NodeSdk.Ok(NodeSdk.Run(live!, sdk + ".tools", new { messages = new[] { new { role = "user", content = "Weather in Paris?" } } }));
        Assert.Equal(sdk == "openai" ? "tool_calls" : "tool_calls", r.GetProperty("finish").GetString());
        Assert.True(r.GetProperty("toolCalls").GetInt32() >= 1);
        Assert.Equal("get_weather", r.GetProperty("name").GetString());
        using (var args = JsonDocument.Parse(r.GetProperty("arguments").GetString()!))
        {
            Assert.Equal(JsonValueKind.Object, args.RootElement.ValueKind);
        }
        Assert.Matches("^[A-Za-z0-9]{9}$", r.GetProperty("id").GetString()!); // v3 call ids
        Assert.Equal("{\"city\":\"Paris\"}", r.GetProperty("arguments").GetString()!.Replace(" ", "", StringComparison.Ordinal));
        Assert.Equal(ScriptedModel.Answer, r.GetProperty("answer").GetString()!.Trim()); // answered after the tool result
    }

    [Theory]
    [InlineData("openai")]
    [InlineData("mistral")]
    public void Json_mode_answers_parse(string sdk)
    {
        var live = servers.TinyV3;
        if (Skip(live))
        {
            return;
        }
        var r = NodeSdk.Ok(NodeSdk.Run(live!, sdk + ".json"));
        if (r.GetProperty("finish").GetString() == "stop")
        {
            Assert.True(r.GetProperty("parsed").GetBoolean(), $"not JSON: {r.GetProperty("content")}");
        }
    }

    [Fact]
    public void Mistral_fim_answers_on_a_model_with_fim_tokens_and_400_without()
    {
        var v3 = servers.TinyV3;
        if (Skip(v3))
        {
            return;
        }
        var r = NodeSdk.Ok(NodeSdk.Run(v3!, "mistral.fim", new { maxTokens = 8 }));
        Assert.Equal(JsonValueKind.String, r.GetProperty("content").ValueKind);
        Assert.True(r.GetProperty("usage").GetProperty("promptTokens").GetInt32() > 0);
        // bora-kjv has no [PREFIX]/[SUFFIX] tokens: a clear 400.
        var e = NodeSdk.Run(servers.Kjv, "mistral.fim", new { maxTokens = 8 });
        Assert.True(e.TryGetProperty("error", out var error), $"expected a 400, got {e}");
        Assert.Equal(400, error.GetProperty("status").GetInt32());
    }
}
