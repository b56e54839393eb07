using System.Numerics;
using Bora.Chat;

namespace Bora.Tokenizers.Tests.Chat;

public class ToolCallParserTests
{
    private static bool Available => Directory.Exists(TestPaths.Shared("tokenizers", "mistral"));

    /// <summary>What a v3 model generates: content or [TOOL_CALLS] + JSON text, then EOS.</summary>
    private static List<TokenId> Generated(SentencePieceTokenizer tok, string? content, params string[] callSegments)
    {
        var ids = new List<TokenId>();
        if (content is not null)
        {
            ids.AddRange(tok.Encode(content, addBos: false));
        }
        foreach (var seg in callSegments)
        {
            ids.Add(tok.IdOf("[TOOL_CALLS]"));
            ids.AddRange(tok.Encode(seg, addBos: false));
        }
        ids.Add(tok.Eos);
        return ids;
    }

    [Fact]
    public void Several_calls_spread_over_many_tokens_are_reported_as_each_object_closes()
    {
        if (!Available)
        {
            return;
        }
        var tok = ChatGoldenTests.Tokenizer(3);
        string json = "[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris \\\"}]\", \"n\": [1, {\"a\": 2}]}, \"id\": \"abcdefghi\"}, {\"name\": \"send_email\", \"arguments\": {\"to\": \"x@y.z\"}}]";
        var ids = Generated(tok, null, json);
        Assert.True(ids.Count > 40);
        var p = new ToolCallParser(tok);
        var completedAt = new List<int>();
        for (int i = 0; i < ids.Count; i++)
        {
            var u = p.Push(ids[i]);
            Assert.Empty(u.Errors);
            if (u.Calls.Count > 0)
            {
                completedAt.Add(i);
            }
        }
        var r = p.Finish();
        Assert.Empty(r.Errors);
        Assert.Equal("", r.Content);
        Assert.Equal(2, r.Calls.Count);
        Assert.Equal(new ParsedToolCall("get_weather", "{\"city\": \"Paris \\\"}]\", \"n\": [1, {\"a\": 2}]}", "abcdefghi"), r.Calls[0]);
        Assert.Equal(new ParsedToolCall("send_email", "{\"to\": \"x@y.z\"}", null), r.Calls[1]);
        // The first call completed before the stream ended (streaming), the second one before EOS.
        Assert.Equal(2, completedAt.Count);
        int secondStarts = ids.FindIndex(t => tok.PieceOf(t).Contains("send", StringComparison.Ordinal));
        Assert.True(completedAt[0] < secondStarts, $"first call completed at token {completedAt[0]}, the second call starts at {secondStarts}");
        Assert.True(completedAt[1] < ids.Count - 1);
    }

    [Fact]
    public void Content_before_calls_and_plain_answers()
    {
        if (!Available)
        {
            return;
        }
        var tok = ChatGoldenTests.Tokenizer(7);
        var r = ToolCallParser.Parse(tok, Generated(tok, "Let me check 😀.", "[{\"name\": \"f\", \"arguments\": {}}]"));
        Assert.Equal("Let me check 😀.", r.Content);
        Assert.Single(r.Calls);
        var plain = ToolCallParser.Parse(tok, Generated(tok, "Just text, [1, 2] {\"name\": 1}"));
        Assert.Equal("Just text, [1, 2] {\"name\": 1}", plain.Content);
        Assert.Empty(plain.Calls);
        Assert.Empty(plain.Errors);
        // Two [TOOL_CALLS] segments, the second a single object (as later formats write one call per marker).
        var two = ToolCallParser.Parse(tok, Generated(tok, null, "[{\"name\": \"a\", \"arguments\": \"{\\\"q\\\": 1}\"}]", "{\"name\": \"b\"}"));
        Assert.Equal([new ParsedToolCall("a", "{\"q\": 1}", null), new ParsedToolCall("b", "{}", null)], two.Calls);
    }

    public static TheoryData<string, string> Malformed => new()
    {
        { "[{\"name\": \"f\", \"arguments\": {\"a\": 1}", "incomplete at the end of generation" },
        { "[{\"name\": \"f\", \"arguments\": {\"a\": 1,}}]", "not a valid JSON object" },
        { "[{\"arguments\": {}}]", "no \"name\"" },
        { "hello", "expected a list or an object" },
        { "", "not followed by any JSON" },
        { "[{\"name\": \"f\"}] trailing", "malformed" },
        { "[{\"name\": \"f\"}, 3]", "other than objects" },
    };

    [Theory]
    [MemberData(nameof(Malformed))]
    public void Malformed_calls_are_reported_never_thrown(string segment, string expected)
    {
        if (!Available)
        {
            return;
        }
        var tok = ChatGoldenTests.Tokenizer(3);
        var r = ToolCallParser.Parse(tok, Generated(tok, null, segment));
        Assert.Contains(r.Errors, e => e.Contains(expected, StringComparison.Ordinal));
    }

    [Fact]
    public void Python_json_dumps_formatting()
    {
        Assert.True(PythonJson.TryLoads("{\"b\": 1, \"a\": [1.0, 1e16, 1E-5, 0.0001, -0.0, 2.5e300, 12345678901234567890123, \"é\\n\\u0001\\\"\"], \"b\": null, \"c\": {}}", out var v));
        Assert.Equal("{\"b\": null, \"a\": [1.0, 1e+16, 1e-05, 0.0001, -0.0, 2.5e+300, 12345678901234567890123, \"é\\n\\u0001\\\"\"], \"c\": {}}", PythonJson.Dumps(v));
        Assert.Equal("1234567890123456.0", PythonJson.FloatRepr(1234567890123456.0));
        Assert.Equal("0.1", PythonJson.FloatRepr(0.1));
        Assert.Equal("1.5e-07", PythonJson.FloatRepr(1.5e-7));
        Assert.Equal("123.456", PythonJson.FloatRepr(123.456));
        Assert.Equal("Infinity", PythonJson.FloatRepr(double.PositiveInfinity));
        Assert.Equal("Infinity", PythonJson.Dumps(double.Parse("1e400", System.Globalization.CultureInfo.InvariantCulture)));
        Assert.Equal(new BigInteger(22), PythonJson.TryLoads(" 22 ", out var n) ? n : null);
        Assert.False(PythonJson.TryLoads("Email sent", out _));
        Assert.False(PythonJson.TryLoads("{\"a\": 1,}", out _));
    }
}
