using System.Text.Json;
using System.Text.RegularExpressions;
using Bora.Chat;
using Bora.Generation;
using Bora.Serving;
using Bora.Tokenizers;

namespace Bora.Server.Tests;

/// <summary>
/// Response shaping of tool calls from injected model output (random weights never call tools): the tokens a
/// v3 model would generate are turned into engine deltas (token + text, as the engine emits them) and fed to
/// <see cref="ChatAnswerWriter"/>.
/// </summary>
public partial class ToolCallShapingTests
{
    private static readonly ITokenizer? Tok = V3Server.Available ? SentencePieceTokenizer.Load(V3Server.TokenizerPath) : null;

    private static readonly GenerationSummary EosSummary = new(FinishReason.Eos, 10, 20, 0);

    private static readonly Usage SomeUsage = new(10, 20, 30);

    [GeneratedRegex("^[a-zA-Z0-9]{9}$")]
    private static partial Regex NineAlphanumerics();

    /// <summary>Deltas for text, then (optionally) [TOOL_CALLS] and the call JSON, decoded as the engine decodes.</summary>
    private static List<GenerationDelta> Deltas(string content, string? callsJson)
    {
        var tok = Tok!;
        var ids = new List<TokenId>(content.Length > 0 ? tok.Encode(content, addBos: false) : []);
        if (callsJson is not null)
        {
            Assert.True(ControlTokens.Of(tok).TryGet("[TOOL_CALLS]", out var tc));
            ids.Add(tc);
            ids.AddRange(tok.Encode(callsJson, addBos: false));
        }
        var decoder = new StreamingDecoder(tok, tok.Bos);
        var deltas = ids.Select(id => new GenerationDelta(id, decoder.Push(id))).ToList();
        string tail = decoder.Flush();
        if (tail.Length > 0)
        {
            deltas.Add(new GenerationDelta(null, tail));
        }
        return deltas;
    }

    private static ChatAnswerWriter Writer(bool tools) => new("chatcmpl-1", 1700000000, "tiny", new ChatOutputShaper(Tok!, tools));

    private static JsonElement Parse(byte[] json) => JsonDocument.Parse(json).RootElement.Clone();

    /// <summary>choices[0] of a response or chunk.</summary>
    private static JsonElement Choice(byte[] json) => Parse(json).GetProperty("choices")[0];

    /// <summary>choices[0].delta.content of a parsed chunk.</summary>
    private static string? DeltaContent(JsonElement chunk) => chunk.GetProperty("choices")[0].GetProperty("delta").GetProperty("content").GetString();

    /// <summary>Feeds the deltas to the writer, in order; the chunks it streamed on the way, parsed.</summary>
    private static List<JsonElement> Streamed(ChatAnswerWriter writer, IEnumerable<GenerationDelta> deltas) =>
        [.. deltas.Select(d => writer.Delta(d)).Where(c => c is not null).Select(c => Parse(c!))];

    [Fact]
    public void Text_on_the_tool_calls_delta_is_content_released_before_the_call()
    {
        if (Tok is null)
        {
            return;
        }
        // The engine releases text held for a stop string with the control token that ends the text run.
        var deltas = Deltas("Sure", """[{"name": "f", "arguments": {}}]""");
        int at = deltas.FindIndex(d => d.Token is { } t && Tok.IsControl(t));
        deltas[at] = deltas[at] with { Text = ", wor" };
        var writer = Writer(tools: true);
        string streamed = string.Concat(Streamed(writer, deltas).Select(DeltaContent));
        Assert.Equal("Sure, wor", streamed);
        var message = Choice(writer.Whole(EosSummary, SomeUsage)).GetProperty("message");
        Assert.Equal("Sure, wor", message.GetProperty("content").GetString());
        Assert.Equal("f", Assert.Single(message.GetProperty("tool_calls").EnumerateArray()).GetProperty("function").GetProperty("name").GetString());
    }

    [Fact]
    public void A_tool_call_becomes_message_tool_calls_with_null_content_and_finish_reason_tool_calls()
    {
        if (Tok is null)
        {
            return;
        }
        var writer = Writer(tools: true);
        foreach (var d in Deltas("", """[{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}, "id": "abc123XYZ"}]"""))
        {
            Assert.Null(writer.Delta(d)); // nothing streams as content after [TOOL_CALLS]
        }
        var body = Parse(writer.Whole(EosSummary, SomeUsage));
        var choice = body.GetProperty("choices")[0];
        Assert.Equal("tool_calls", choice.GetProperty("finish_reason").GetString());
        var message = choice.GetProperty("message");
        Assert.Equal(JsonValueKind.Null, message.GetProperty("content").ValueKind);
        var call = Assert.Single(message.GetProperty("tool_calls").EnumerateArray());
        Assert.Equal("abc123XYZ", call.GetProperty("id").GetString());
        Assert.Equal("function", call.GetProperty("type").GetString());
        Assert.Equal("get_weather", call.GetProperty("function").GetProperty("name").GetString());
        var args = JsonDocument.Parse(call.GetProperty("function").GetProperty("arguments").GetString()!).RootElement;
        Assert.Equal("Paris", args.GetProperty("city").GetString());
        Assert.Equal(3, args.GetProperty("days").GetInt32());
        Assert.Equal(30, body.GetProperty("usage").GetProperty("total_tokens").GetInt32());
    }

    [Fact]
    public void Streamed_tool_calls_send_openai_deltas_index_id_type_name_then_arguments()
    {
        if (Tok is null)
        {
            return;
        }
        var writer = Writer(tools: true);
        Assert.Empty(Streamed(writer, Deltas("", """[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]""")));
        var end = writer.End(EosSummary, SomeUsage, includeUsage: true).Select(Parse).ToList();
        Assert.Equal(2 * 2 + 2, end.Count);
        for (int i = 0; i < 2; i++)
        {
            var head = end[2 * i].GetProperty("choices")[0].GetProperty("delta").GetProperty("tool_calls")[0];
            Assert.Equal(i, head.GetProperty("index").GetInt32());
            Assert.Matches(NineAlphanumerics(), head.GetProperty("id").GetString()!); // made up: the model wrote none
            Assert.Equal("function", head.GetProperty("type").GetString());
            Assert.Equal(i == 0 ? "a" : "b", head.GetProperty("function").GetProperty("name").GetString());
            Assert.Equal("", head.GetProperty("function").GetProperty("arguments").GetString());
            var args = end[2 * i + 1].GetProperty("choices")[0].GetProperty("delta").GetProperty("tool_calls")[0];
            Assert.Equal(i, args.GetProperty("index").GetInt32());
            Assert.False(args.TryGetProperty("id", out _));
            Assert.False(args.GetProperty("function").TryGetProperty("name", out _));
            Assert.Equal(i == 0 ? 1 : 0, JsonDocument.Parse(args.GetProperty("function").GetProperty("arguments").GetString()!).RootElement.EnumerateObject().Count());
        }
        Assert.Equal("tool_calls", end[^2].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
        Assert.Equal(0, end[^1].GetProperty("choices").GetArrayLength());
        Assert.Equal(30, end[^1].GetProperty("usage").GetProperty("total_tokens").GetInt32());
    }

    [Fact]
    public void Content_before_tool_calls_streams_at_once_and_is_kept()
    {
        if (Tok is null)
        {
            return;
        }
        var writer = Writer(tools: true);
        var content = Streamed(writer, Deltas("Let me check.", """[{"name": "f", "arguments": {}}]""")).Select(DeltaContent);
        Assert.Equal("Let me check.", string.Concat(content));
        var message = Choice(writer.Whole(EosSummary, SomeUsage)).GetProperty("message");
        Assert.Equal("Let me check.", message.GetProperty("content").GetString());
        Assert.Equal("f", message.GetProperty("tool_calls")[0].GetProperty("function").GetProperty("name").GetString());
    }

    [Theory]
    [InlineData("""[{"name": "get_weather", "arguments": {"city": """, FinishReason.Eos, "stop")]
    [InlineData("""[{"name": "get_weather", "arguments": {"city": """, FinishReason.Length, "length")]
    [InlineData("""[{"arguments": {"city": "Paris"}}]""", FinishReason.Eos, "stop")]
    [InlineData("""not json at all""", FinishReason.Eos, "stop")]
    [InlineData("""[{"name": "f", "arguments": {}}] trailing""", FinishReason.Eos, "stop")]
    public void Malformed_tool_call_text_is_returned_as_plain_content(string callText, FinishReason reason, string finish)
    {
        if (Tok is null)
        {
            return;
        }
        var summary = EosSummary with { FinishReason = reason };
        var deltas = Deltas("", callText);
        string generated = string.Concat(deltas.Select(d => d.Text));
        Assert.Equal(callText, generated.TrimStart()); // the engine's text: [TOOL_CALLS] shows nothing

        var whole = Writer(tools: true);
        deltas.ForEach(d => whole.Delta(d));
        var choice = Choice(whole.Whole(summary, SomeUsage));
        Assert.Equal(finish, choice.GetProperty("finish_reason").GetString());
        Assert.Equal(generated, choice.GetProperty("message").GetProperty("content").GetString());
        Assert.False(choice.GetProperty("message").TryGetProperty("tool_calls", out _));

        // Streaming: the held-back text is sent as content at the end, before the finish chunk.
        var stream = Writer(tools: true);
        Assert.Empty(Streamed(stream, deltas));
        var end = stream.End(summary, SomeUsage, includeUsage: false).Select(Parse).ToList();
        Assert.Equal(2, end.Count);
        Assert.Equal(generated, DeltaContent(end[0]));
        Assert.Equal(finish, end[1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
    }

    [Fact]
    public void Without_tools_in_the_request_call_text_is_content()
    {
        if (Tok is null)
        {
            return;
        }
        var writer = Writer(tools: false);
        var deltas = Deltas("", """[{"name": "f", "arguments": {}}]""");
        string streamed = string.Concat(Streamed(writer, deltas).Select(DeltaContent));
        Assert.Equal(string.Concat(deltas.Select(d => d.Text)), streamed);
        var choice = Choice(writer.Whole(EosSummary, SomeUsage));
        Assert.Equal("stop", choice.GetProperty("finish_reason").GetString());
        Assert.False(choice.GetProperty("message").TryGetProperty("tool_calls", out _));
    }

    [Fact]
    public void Call_ids_the_model_wrote_are_kept_only_when_mistral_common_accepts_them()
    {
        if (Tok is null)
        {
            return;
        }
        var writer = Writer(tools: true);
        Deltas("", """[{"name": "f", "arguments": {}, "id": "short"}, {"name": "g", "arguments": {}, "id": "Zz9Zz9Zz9"}]""").ForEach(d => writer.Delta(d));
        var calls = Choice(writer.Whole(EosSummary, SomeUsage)).GetProperty("message").GetProperty("tool_calls");
        string first = calls[0].GetProperty("id").GetString()!;
        Assert.NotEqual("short", first);
        Assert.Matches(NineAlphanumerics(), first);
        Assert.Equal("Zz9Zz9Zz9", calls[1].GetProperty("id").GetString());
        Assert.NotEqual(ChatOutputShaper.NewCallId(), ChatOutputShaper.NewCallId());
    }
}

public class ServerMetricsTests
{
    [Fact]
    public void Histogram_buckets_are_cumulative_with_le_sum_and_count()
    {
        var metrics = new ServerMetrics();
        metrics.TimeToFirstToken.Observe(0.004);   // first bucket (le 0.005)
        metrics.TimeToFirstToken.Observe(0.005);   // bound itself: le is inclusive
        metrics.TimeToFirstToken.Observe(0.2);     // le 0.25
        metrics.TimeToFirstToken.Observe(1000);    // only +Inf
        metrics.CountRequest("/v1/completions", 200);
        metrics.CountRequest("/v1/completions", 200);
        metrics.CountRequest("/v1/completions", 400);
        metrics.CountTokens(7, 5);
        string text = metrics.Write(new EngineGauges(2, 3, 4, 50, PrefixQueriedTokens: 120, PrefixHitTokens: 96));
        var s = ServeApiTests.ParsePrometheus(text);
        Assert.Equal(2, s["bora_time_to_first_token_seconds_bucket{le=\"0.005\"}"]);
        Assert.Equal(2, s["bora_time_to_first_token_seconds_bucket{le=\"0.1\"}"]);
        Assert.Equal(3, s["bora_time_to_first_token_seconds_bucket{le=\"0.25\"}"]);
        Assert.Equal(3, s["bora_time_to_first_token_seconds_bucket{le=\"60\"}"]);
        Assert.Equal(4, s["bora_time_to_first_token_seconds_bucket{le=\"+Inf\"}"]);
        Assert.Equal(4, s["bora_time_to_first_token_seconds_count"]);
        Assert.Equal(1000.209, s["bora_time_to_first_token_seconds_sum"], 9);
        Assert.Equal(0, s["bora_inter_token_latency_seconds_count"]);
        Assert.Equal(2, s["bora_requests_total{route=\"/v1/completions\",status=\"200\"}"]);
        Assert.Equal(1, s["bora_requests_total{route=\"/v1/completions\",status=\"400\"}"]);
        Assert.Equal(7, s["bora_prompt_tokens_total"]);
        Assert.Equal(5, s["bora_generation_tokens_total"]);
        Assert.Equal(2, s["bora_queue_depth"]);
        Assert.Equal(3, s["bora_running_sequences"]);
        Assert.Equal(4, s["bora_kv_cache_blocks_used"]);
        Assert.Equal(50, s["bora_kv_cache_blocks_total"]);
        Assert.Equal(120, s["bora_prefix_cache_queried_tokens_total"]);
        Assert.Equal(96, s["bora_prefix_cache_hit_tokens_total"]);
        // Every sample's metric has one TYPE line before it.
        foreach (var name in new[] { "bora_requests_total counter", "bora_prompt_tokens_total counter", "bora_generation_tokens_total counter", "bora_queue_depth gauge",
            "bora_running_sequences gauge", "bora_kv_cache_blocks_used gauge", "bora_kv_cache_blocks_total gauge",
            "bora_prefix_cache_queried_tokens_total counter", "bora_prefix_cache_hit_tokens_total counter",
            "bora_time_to_first_token_seconds histogram", "bora_inter_token_latency_seconds histogram" })
        {
            Assert.Single(Regex.Matches(text, "^# TYPE " + Regex.Escape(name) + "$", RegexOptions.Multiline));
        }
        Assert.Equal("a\\\\b\\\"c\\n", ServerMetrics.Escape("a\\b\"c\n"));
        Assert.Throws<ArgumentException>(() => new ServerMetrics.Histogram([1, 1]));
    }
}
