using System.Text;
using System.Text.Json;
using Bora.Generation.Constraints;

namespace Bora.Model.Tests.Generation;

/// <summary>The JSON automaton against System.Text.Json, the independent oracle, on hand-picked and random strings.</summary>
public class JsonGrammarTests
{
    private static bool Accepts(JsonGrammar g, byte[] bytes, out JsonState end) =>
        GrammarConstraint<JsonState>.Accepts(g, g.Start, bytes, out end);

    /// <summary>What the automaton should say: STJ parses it, the root is an object, and nothing (not even whitespace) follows the root.</summary>
    private static bool OracleObject(byte[] bytes)
    {
        try
        {
            using var doc = JsonDocument.Parse(bytes);
            return doc.RootElement.ValueKind == JsonValueKind.Object && bytes.Length > 0 && bytes[^1] == (byte)'}';
        }
        catch (JsonException)
        {
            return false;
        }
    }

    private static bool Complete(JsonGrammar g, byte[] bytes) => Accepts(g, bytes, out var end) && g.IsComplete(end);

    [Theory]
    [InlineData("{}")]
    [InlineData("  {\"a\":1}")]
    [InlineData("{\"a\": [1, -2.5e3, 0, 0.25, 1E+2, 3e-7, true, false, null, \"x\\u00e9\\n\\\"\"], \"b\": {\"c\": {}}}")]
    [InlineData("{\n  \"k\": [\n    [], [[]], {}\n  ]\n}")]
    [InlineData("{\"\\/\\b\\f\\r\\t\\\\\": \"日本語 é 🙂\"}")]
    [InlineData("{\"n\": -0.0e0}")]
    public void Valid_objects_are_accepted_and_complete_exactly_at_the_end(string text)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        Assert.True(OracleObject(bytes), "oracle disagrees with the test data");
        Assert.True(Complete(JsonGrammar.Object, bytes));
        for (int i = 0; i < bytes.Length - 1; i++)
        {
            Assert.True(Accepts(JsonGrammar.Object, bytes[..(i + 1)], out var s), $"prefix of {i + 1} bytes rejected");
            Assert.False(JsonGrammar.Object.IsComplete(s), $"complete after {i + 1} of {bytes.Length} bytes");
        }
        Assert.False(Accepts(JsonGrammar.Object, [.. bytes, (byte)' '], out _), "a byte after the root closes must be rejected");
    }

    [Theory]
    [InlineData("[]")]                  // root must be an object
    [InlineData("{\"a\" 1}")]
    [InlineData("{\"a\":01}")]
    [InlineData("{\"a\":1.}")]
    [InlineData("{\"a\":.5}")]
    [InlineData("{\"a\":1e}")]
    [InlineData("{\"a\":+1}")]
    [InlineData("{\"a\":[1,]}")]
    [InlineData("{\"a\":1,}")]
    [InlineData("{a:1}")]
    [InlineData("{'a':1}")]
    [InlineData("{\"a\":tru}")]
    [InlineData("{\"a\":nul1}")]
    [InlineData("{\"a\":\"\\x\"}")]
    [InlineData("{\"a\":\"\\u12G4\"}")]
    [InlineData("{\"a\":\"\\ud83d\\ude00\"}")]  // surrogate escapes are refused on purpose
    [InlineData("{\"a\":[}")]
    [InlineData("{\"a\":{]}")]
    [InlineData("{\"a\":\"tab\there\"}")]
    public void Invalid_or_refused_texts_are_rejected(string text)
    {
        Assert.False(Complete(JsonGrammar.Object, Encoding.UTF8.GetBytes(text)));
    }

    [Fact]
    public void Invalid_utf8_inside_strings_is_rejected_like_a_strict_utf8_decoder()
    {
        byte[][] bad =
        [
            [.. "{\"a\":\""u8, 0xC0, 0x80, .. "\"}"u8],        // overlong
            [.. "{\"a\":\""u8, 0x80, .. "\"}"u8],              // lone continuation
            [.. "{\"a\":\""u8, 0xED, 0xA0, 0x80, .. "\"}"u8],  // UTF-8 encoded surrogate
            [.. "{\"a\":\""u8, 0xE2, 0x82, .. "\"}"u8],        // truncated
            [.. "{\"a\":\""u8, 0xF5, 0x80, 0x80, 0x80, .. "\"}"u8],
        ];
        var strict = new UTF8Encoding(false, throwOnInvalidBytes: true);
        foreach (var b in bad)
        {
            Assert.Throws<DecoderFallbackException>(() => strict.GetString(b));
            Assert.False(Complete(JsonGrammar.Object, b));
        }
        byte[] good = [.. "{\"a\":\""u8, 0xF0, 0x9F, 0x99, 0x82, 0xE2, 0x82, 0xAC, .. "\"}"u8];
        Assert.True(OracleObject(good));
        Assert.True(Complete(JsonGrammar.Object, good));
    }

    [Fact]
    public void Limits_bound_whitespace_depth_and_number_length()
    {
        var g = JsonGrammar.Object;
        Assert.True(Complete(g, Encoding.UTF8.GetBytes("{" + new string(' ', g.MaxWhitespace) + "}")));
        Assert.False(Accepts(g, Encoding.UTF8.GetBytes("{" + new string(' ', g.MaxWhitespace + 1)), out _));
        string deep = "{\"a\":" + string.Concat(Enumerable.Repeat("[", g.MaxDepth - 1)) + string.Concat(Enumerable.Repeat("]", g.MaxDepth - 1)) + "}";
        Assert.True(Complete(g, Encoding.UTF8.GetBytes(deep)));
        Assert.False(Accepts(g, Encoding.UTF8.GetBytes("{\"a\":" + string.Concat(Enumerable.Repeat("[", g.MaxDepth))), out _));
        Assert.True(Complete(g, Encoding.UTF8.GetBytes("{\"a\":" + new string('7', g.MaxNumberLength) + "}")));
        Assert.False(Accepts(g, Encoding.UTF8.GetBytes("{\"a\":" + new string('7', g.MaxNumberLength + 1)), out _));
    }

    /// <summary>Random JSON objects (valid by construction, checked by STJ), then one-byte mutations: the automaton must agree with STJ on every one.</summary>
    [Fact]
    public void Agrees_with_system_text_json_on_random_objects_and_their_mutations()
    {
        var rng = new Random(1234);
        const string alphabet = "{}[]\",:0123456789.eE+-tfnrulas \\/u\nxé";
        int valid = 0, invalid = 0;
        for (int trial = 0; trial < 2000; trial++)
        {
            var sb = new StringBuilder();
            RandomObject(rng, sb, 0);
            byte[] bytes = Encoding.UTF8.GetBytes(sb.ToString());
            Assert.True(OracleObject(bytes), sb.ToString());
            Assert.True(Complete(JsonGrammar.Object, bytes), sb.ToString());
            for (int m = 0; m < 8; m++)
            {
                string s = sb.ToString();
                int at = rng.Next(s.Length + 1);
                string c = alphabet[rng.Next(alphabet.Length)].ToString();
                s = rng.Next(3) switch
                {
                    0 => s.Insert(at, c),
                    1 when at < s.Length => s.Remove(at, 1),
                    _ when at < s.Length => s.Remove(at, 1).Insert(at, c),
                    _ => s + c,
                };
                byte[] mutated = Encoding.UTF8.GetBytes(s);
                bool expected = OracleObject(mutated);
                Assert.True(expected == Complete(JsonGrammar.Object, mutated), $"STJ says {expected} for: {s}");
                if (expected)
                {
                    valid++;
                }
                else
                {
                    invalid++;
                }
            }
        }
        Assert.True(valid > 500 && invalid > 5000, $"mutations gave {valid} valid and {invalid} invalid texts; the test lost its teeth");
    }

    private static void RandomObject(Random rng, StringBuilder sb, int depth)
    {
        sb.Append('{');
        int n = rng.Next(depth > 2 ? 2 : 4);
        for (int i = 0; i < n; i++)
        {
            if (i > 0)
            {
                sb.Append(rng.Next(3) == 0 ? ", " : ",");
            }
            RandomString(rng, sb);
            sb.Append(rng.Next(3) == 0 ? " : " : ":");
            RandomValue(rng, sb, depth + 1);
        }
        sb.Append('}');
    }

    private static void RandomValue(Random rng, StringBuilder sb, int depth)
    {
        switch (rng.Next(depth > 3 ? 6 : 8))
        {
            case 0: sb.Append(rng.Next(-1000, 1000)); break;
            case 1: sb.Append(System.Globalization.CultureInfo.InvariantCulture, $"{rng.NextDouble() * 100 - 50:0.###}"); break;
            case 2: sb.Append(rng.Next(2) == 0 ? "1e5" : "-2.5E-3"); break;
            case 3: sb.Append(rng.Next(3) switch { 0 => "true", 1 => "false", _ => "null" }); break;
            case 4:
            case 5: RandomString(rng, sb); break;
            case 6: RandomObject(rng, sb, depth); break;
            default:
                sb.Append('[');
                int n = rng.Next(4);
                for (int i = 0; i < n; i++)
                {
                    if (i > 0)
                    {
                        sb.Append(',');
                    }
                    RandomValue(rng, sb, depth + 1);
                }
                sb.Append(']');
                break;
        }
    }

    private static void RandomString(Random rng, StringBuilder sb)
    {
        string[] parts = ["a", "key", " ", "\\n", "\\\"", "\\u00e9", "é", "日", "0", "\\\\", "/"];
        sb.Append('"');
        int n = rng.Next(4);
        for (int i = 0; i < n; i++)
        {
            sb.Append(parts[rng.Next(parts.Length)]);
        }
        sb.Append('"');
    }
}
