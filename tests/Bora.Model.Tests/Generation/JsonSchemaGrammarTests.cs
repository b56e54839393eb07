using System.Text;
using Bora.Generation;
using Bora.Generation.Constraints;
using Bora.Tokenizers;

namespace Bora.Model.Tests.Generation;

/// <summary>The JSON schema compiler and grammar: accepted and refused texts, refused schemas, masks, and sampling that always validates.</summary>
public class JsonSchemaGrammarTests
{
    /// <summary>Required strings with bounded length, an integer, a nullable string, a bounded array of an enum, a $ref, an optional boolean.</summary>
    internal const string Person = """
    {
      "type": "object",
      "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "description": "years"},
        "email": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "re"]}, "minItems": 1, "maxItems": 3},
        "address": {"$ref": "#/$defs/Address"},
        "vip": {"type": "boolean"}
      },
      "required": ["name", "age", "tags", "address"],
      "additionalProperties": false,
      "$defs": {
        "Address": {"type": "object", "properties": {"street": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]+$"}}, "required": ["street"], "additionalProperties": false}
      }
    }
    """;

    /// <summary>anyOf of distinguishable and of ambiguous objects, number enums where one is a prefix of another, nullable, any value, any object.</summary>
    internal const string Shapes = """
    {
      "type": "object",
      "properties": {
        "shape": {"anyOf": [
          {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}}, "required": ["kind", "r"], "additionalProperties": false},
          {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer"}}, "required": ["kind", "side"], "additionalProperties": false},
          {"type": "integer"}
        ]},
        "level": {"enum": [1, 10, 2.5, -3, null, "x"]},
        "note": {"type": "string", "nullable": true, "maxLength": 5},
        "extra": {},
        "meta": {"type": "object"},
        "list": {"type": "array", "items": {"type": "number"}, "maxItems": 2}
      },
      "required": ["shape", "level", "note"]
    }
    """;

    private static readonly SamplingOptions NoFilters = new() { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f, Seed = 3 };

    private static SentencePieceTokenizer? V3()
    {
        string path = TestPaths.Shared("tokenizers", "mistral", "mistral_instruct_tokenizer_240323.model.v3");
        return File.Exists(path) ? SentencePieceTokenizer.Load(path) : null;
    }

    private static bool Accepts(JsonSchemaGrammar g, string text) =>
        GrammarConstraint<JsonSchemaState>.Accepts(g, g.Start, Encoding.UTF8.GetBytes(text), out var end) && g.IsComplete(end);

    [Theory]
    [InlineData("{\"name\": \"Ann\", \"age\": 31, \"tags\": [\"red\"], \"address\": {\"street\": \"Main\"}}")]
    [InlineData("{\"name\":\"Ann\",\"age\":-0,\"email\":null,\"tags\":[\"re\",\"green\",\"red\"],\"address\":{\"street\":\"\",\"zip\":\"x\"},\"vip\":true}")]
    [InlineData("  {\n  \"name\" : \"\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\u00e9\",\"age\":0,\"email\":\"a@b\",\"tags\":[ \"re\" ],\"address\":{\"street\":\"\\u00e9\\n\"}}")]
    public void Person_schema_accepts_valid_documents(string text)
    {
        var g = JsonSchemaGrammar.Compile(Person);
        Assert.True(Accepts(g, text), text);
        Assert.Empty(MiniSchemaValidator.Validate(text, Person));
    }

    [Theory]
    [InlineData("{\"age\": 31, \"name\": \"Ann\", \"tags\": [\"red\"], \"address\": {\"street\": \"Main\"}}")]        // declared order
    [InlineData("{\"name\": \"Ann\", \"tags\": [\"red\"], \"address\": {\"street\": \"Main\"}}")]                     // age missing
    [InlineData("{\"name\": \"\", \"age\": 1, \"tags\": [\"red\"], \"address\": {\"street\": \"Main\"}}")]            // minLength 1
    [InlineData("{\"name\": \"abcdefghijklm\", \"age\": 1, \"tags\": [\"red\"], \"address\": {\"street\": \"M\"}}")]  // maxLength 12
    [InlineData("{\"name\": \"A\", \"age\": 1.5, \"tags\": [\"red\"], \"address\": {\"street\": \"M\"}}")]            // integer
    [InlineData("{\"name\": \"A\", \"age\": 1e3, \"tags\": [\"red\"], \"address\": {\"street\": \"M\"}}")]
    [InlineData("{\"name\": \"A\", \"age\": 1, \"tags\": [], \"address\": {\"street\": \"M\"}}")]                     // minItems 1
    [InlineData("{\"name\": \"A\", \"age\": 1, \"tags\": [\"red\",\"red\",\"red\",\"red\"], \"address\": {\"street\": \"M\"}}")] // maxItems 3
    [InlineData("{\"name\": \"A\", \"age\": 1, \"tags\": [\"blue\"], \"address\": {\"street\": \"M\"}}")]             // enum
    [InlineData("{\"name\": \"A\", \"age\": 1, \"tags\": [\"r\"], \"address\": {\"street\": \"M\"}}")]
    [InlineData("{\"name\": \"A\", \"age\": 1, \"tags\": [\"red\"], \"address\": {\"zip\": \"1\"}}")]                 // street required
    [InlineData("{\"name\": \"A\", \"age\": 1, \"tags\": [\"red\"], \"address\": {\"street\": \"M\"}, \"other\": 1}")] // undeclared key
    [InlineData("{\"name\": \"A\", \"age\": 1, \"tags\": [\"red\"], \"address\": {\"street\": \"M\"}, \"vip\": null}")]
    [InlineData("{\"name\": \"A\", \"age\": 1, \"tags\": [\"red\"], \"address\": {\"street\": \"M\"}} ")]              // nothing after the root
    [InlineData("[]")]
    public void Person_schema_refuses_invalid_documents(string text)
    {
        var g = JsonSchemaGrammar.Compile(Person);
        Assert.False(Accepts(g, text), text);
    }

    [Theory]
    [InlineData("{\"shape\": {\"kind\": \"circle\", \"r\": 2.5e-3}, \"level\": 10, \"note\": null}", true)]
    [InlineData("{\"shape\": {\"kind\": \"square\", \"side\": 3}, \"level\": 1, \"note\": \"abc\"}", true)]
    [InlineData("{\"shape\": 7, \"level\": -3, \"note\": \"\", \"extra\": [1, {\"a\": null}], \"meta\": {\"k\": \"v\", \"n\": [true]}, \"list\": [1, 2.5]}", true)]
    [InlineData("{\"shape\": 7, \"level\": 2.5, \"note\": null, \"extra\": \"s\", \"meta\": {}}", true)]
    [InlineData("{\"shape\": 7, \"level\": \"x\", \"note\": null, \"list\": []}", true)]
    [InlineData("{\"shape\": 7, \"level\": null, \"note\": null}", true)]
    [InlineData("{\"shape\": {\"kind\": \"square\", \"r\": 3}, \"level\": 1, \"note\": null}", false)]    // r belongs to circles
    [InlineData("{\"shape\": {\"kind\": \"circle\", \"side\": 3}, \"level\": 1, \"note\": null}", false)]
    [InlineData("{\"shape\": 7.5, \"level\": 1, \"note\": null}", false)]
    [InlineData("{\"shape\": 7, \"level\": 100, \"note\": null}", false)]
    [InlineData("{\"shape\": 7, \"level\": 2, \"note\": null}", false)]
    [InlineData("{\"shape\": 7, \"level\": 1, \"note\": \"abcdef\"}", false)]
    [InlineData("{\"shape\": 7, \"level\": 1, \"note\": null, \"list\": [1, 2, 3]}", false)]
    [InlineData("{\"shape\": 7, \"level\": 1, \"note\": null, \"meta\": []}", false)]
    public void Shapes_schema_follows_anyOf_enums_and_any_values(string text, bool valid)
    {
        var g = JsonSchemaGrammar.Compile(Shapes);
        Assert.Equal(valid, Accepts(g, text));
        if (valid)
        {
            Assert.Empty(MiniSchemaValidator.Validate(text, Shapes));
        }
    }

    [Fact]
    public void Ambiguous_anyOf_keeps_several_readings_until_a_key_decides()
    {
        var g = JsonSchemaGrammar.Compile(Shapes);
        Assert.True(GrammarConstraint<JsonSchemaState>.Accepts(g, g.Start, "{\"shape\": {\"kind\": \""u8, out var s));
        Assert.Equal(2, s.Readings);
        Assert.True(GrammarConstraint<JsonSchemaState>.Accepts(g, s, "sq"u8, out s));
        Assert.Equal(1, s.Readings);
    }

    [Theory]
    [InlineData("{\"type\":\"object\",\"properties\":{\"age\":{\"type\":\"integer\",\"minimum\":0}}}", "'minimum'", "$.properties.age")]
    [InlineData("{\"type\":\"object\",\"properties\":{\"a\":{\"oneOf\":[{\"type\":\"string\"}]}}}", "'oneOf'", "$.properties.a")]
    [InlineData("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"multipleOf\":2}}}}", "'multipleOf'", "$.properties.a.items")]
    [InlineData("{\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#/$defs/N\"}},\"$defs\":{\"N\":{\"type\":\"object\",\"properties\":{\"next\":{\"$ref\":\"#/$defs/N\"}}}}}", "recursive", "$.$defs.N.properties.next.$ref")]
    [InlineData("{\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#/$defs/Missing\"}}}", "points at nothing", "$.properties.a.$ref")]
    [InlineData("{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\"}}", "additionalProperties", "$.additionalProperties")]
    [InlineData("{\"type\":\"object\",\"properties\":{},\"required\":[\"x\"]}", "'x'", "$.required")]
    [InlineData("{\"type\":\"array\",\"items\":{\"type\":\"string\"}}", "root", "$")]
    [InlineData("{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"date\"}}}", "'date'", "$.properties.a.type")]
    [InlineData("{\"type\":\"object\",\"properties\":{\"a\":{\"enum\":[[1]]}}}", "enum/const values", "$.properties.a.enum")]
    [InlineData("{\"type\":\"object\",\"properties\":{\"a\":{\"anyOf\":[{\"type\":\"string\"}],\"type\":\"string\"}}}", "'type' beside 'anyOf'", "$.properties.a")]
    public void Unsupported_schemas_are_refused_naming_keyword_and_path(string schema, string what, string path)
    {
        var e = Assert.Throws<JsonSchemaNotSupportedException>(() => JsonSchemaGrammar.Compile(schema));
        Assert.Contains(what, e.Message, StringComparison.Ordinal);
        Assert.Equal(path, e.SchemaPath);
    }

    [Fact]
    public void Schemas_that_must_nest_deeper_than_the_grammar_allows_are_refused()
    {
        // A chain of $defs (JSON text itself may not nest that deep): L0 holds L1 in "a", ..., the last holds a string.
        static string Nest(int levels, bool required)
        {
            var defs = new StringBuilder();
            for (int i = 0; i < levels; i++)
            {
                defs.Append($"\"L{i}\":{{\"type\":\"object\",\"properties\":{{\"a\":{{\"$ref\":\"#/$defs/L{i + 1}\"}}}}{(required ? ",\"required\":[\"a\"]" : "")}}},");
            }
            defs.Append($"\"L{levels}\":{{\"type\":\"string\"}}");
            return $"{{\"$ref\":\"#/$defs/L0\",\"$defs\":{{{defs}}}}}";
        }
        var e = Assert.Throws<JsonSchemaNotSupportedException>(() => JsonSchemaGrammar.Compile(Nest(33, required: true)));
        Assert.Contains("at least 33 containers", e.Message, StringComparison.Ordinal);
        Assert.True(Accepts(JsonSchemaGrammar.Compile(Nest(32, required: true)), string.Concat(Enumerable.Repeat("{\"a\":", 32)) + "\"x\"" + new string('}', 32)));
        Assert.True(Accepts(JsonSchemaGrammar.Compile(Nest(40, required: false)), "{\"a\":{}}")); // optional levels may stop early
    }

    [Fact]
    public void Shared_refs_compile_once_so_a_diamond_of_refs_stays_small()
    {
        // 20 levels, each referring to the next twice: inlined it would be 2^20 nodes.
        var defs = new StringBuilder();
        for (int i = 0; i < 20; i++)
        {
            defs.Append($"\"L{i}\": {{\"type\":\"object\",\"properties\":{{\"a\":{{\"$ref\":\"#/$defs/L{i + 1}\"}},\"b\":{{\"$ref\":\"#/$defs/L{i + 1}\"}}}}}},");
        }
        defs.Append("\"L20\": {\"type\":\"string\"}");
        var g = JsonSchemaGrammar.Compile($"{{\"$ref\":\"#/$defs/L0\",\"$defs\":{{{defs}}}}}");
        Assert.InRange(g.NodeCount, 1, 200);
        Assert.True(Accepts(g, "{\"a\":{\"b\":{}}}"));
    }

    [Fact]
    public void Schema_masks_equal_a_brute_force_check_of_every_token()
    {
        var tok = V3();
        if (tok is null)
        {
            return; // mistral v3 tokenizer not found under ../shared/testdata
        }
        var g = JsonSchemaGrammar.Compile(Shapes);
        var trie = TokenTrie.Of(tok);
        foreach (string prefix in new[] { "", "{", "{\"sh", "{\"shape\": {\"kind\": \"", "{\"shape\":1", "{\"shape\":1,\"level\":1", "{\"shape\":1,\"level\":\"x\",\"note\":\"abcd" })
        {
            Assert.True(GrammarConstraint<JsonSchemaState>.Accepts(g, g.Start, Encoding.UTF8.GetBytes(prefix), out var state), prefix);
            var constraint = new GrammarConstraint<JsonSchemaState>(trie, g);
            foreach (byte b in Encoding.UTF8.GetBytes(prefix))
            {
                constraint.Advance(ByteToken(tok, b));
            }
            Assert.Equal(state, constraint.State);
            var logits = new float[tok.VocabSize];
            Assert.True(constraint.Mask(logits));
            for (int id = 0; id < tok.VocabSize; id++)
            {
                var t = new TokenId(id);
                bool expected = t == tok.Eos
                    ? g.IsComplete(state)
                    : !tok.IsControl(t) && tok.TokenBytes(t, t) is { Length: > 0 } bytes && GrammarConstraint<JsonSchemaState>.Accepts(g, state, bytes, out _);
                Assert.True(expected == !float.IsNegativeInfinity(logits[id]), $"token {id} '{tok.PieceOf(t)}' after '{prefix}': expected allowed = {expected}");
            }
        }
    }

    /// <summary>Seeded random logits biased towards closers: every finished output parses and validates with the independent validator; unfinished ones are accepted prefixes.</summary>
    [Theory]
    [InlineData(Person)]
    [InlineData(Shapes)]
    public void Random_sampling_under_a_schema_always_validates(string schema)
    {
        var tok = V3();
        if (tok is null)
        {
            return; // mistral v3 tokenizer not found under ../shared/testdata
        }
        var g = JsonSchemaGrammar.Compile(schema);
        var bias = new float[tok.VocabSize];
        for (int id = 0; id < tok.VocabSize; id++)
        {
            var t = new TokenId(id);
            if (!tok.IsControl(t) && tok.TokenBytes(t, t).AsSpan().IndexOfAny("}]\","u8) >= 0)
            {
                bias[id] = 6f;
            }
        }
        int finished = 0;
        const int Runs = 30;
        for (int seed = 0; seed < Runs; seed++)
        {
            var constraint = g.Constraint(tok);
            var rng = new Random(seed);
            var sampler = new Sampler(tok.VocabSize, NoFilters with { Seed = (ulong)seed, Temperature = seed % 3 == 0 ? 0f : 1f });
            var logits = new float[tok.VocabSize];
            var tokens = new List<TokenId>();
            var bytes = new List<byte>();
            for (int step = 0; step < 300 && !constraint.IsComplete; step++)
            {
                for (int i = 0; i < logits.Length; i++)
                {
                    logits[i] = (float)(rng.NextDouble() * 4) + bias[i];
                }
                var next = sampler.Sample(logits, tokens.ToArray(), 0, constraint);
                constraint.Advance(next);
                tokens.Add(next);
                bytes.AddRange(tok.TokenBytes(next, next));
            }
            string text = Encoding.UTF8.GetString([.. bytes]);
            if (constraint.IsComplete)
            {
                finished++;
                var errors = MiniSchemaValidator.Validate(text, schema);
                Assert.True(errors.Count == 0, string.Join("; ", errors) + " in " + text);
            }
            else
            {
                Assert.True(GrammarConstraint<JsonSchemaState>.Accepts(g, g.Start, [.. bytes], out _), text);
            }
        }
        Assert.True(finished >= Runs * 2 / 3, $"only {finished} of {Runs} runs finished");
    }

    [Fact]
    public void The_independent_validator_catches_what_the_grammar_refuses()
    {
        // Guards the validator itself: documents the grammar refuses are invalid for it too (except key order, which JSON schema allows).
        Assert.NotEmpty(MiniSchemaValidator.Validate("{\"name\": \"A\", \"age\": 1.5, \"tags\": [\"red\"], \"address\": {\"street\": \"M\"}}", Person));
        Assert.NotEmpty(MiniSchemaValidator.Validate("{\"name\": \"A\", \"age\": 1, \"tags\": [\"blue\"], \"address\": {\"street\": \"M\"}}", Person));
        Assert.NotEmpty(MiniSchemaValidator.Validate("{\"name\": \"A\", \"age\": 1, \"tags\": [\"red\"], \"address\": {}}", Person));
        Assert.NotEmpty(MiniSchemaValidator.Validate("{\"shape\": {\"kind\": \"square\", \"r\": 3}, \"level\": 1, \"note\": null}", Shapes));
        Assert.NotEmpty(MiniSchemaValidator.Validate("{\"shape\": 7, \"level\": 2, \"note\": null}", Shapes));
    }

    [Fact]
    public void Tool_call_arguments_follow_each_functions_schema()
    {
        var schemas = new Dictionary<string, JsonSchemaGrammar> { ["person"] = JsonSchemaGrammar.Compile(Person) };
        var g = new ToolCallGrammar(["person", "free"], several: true, schemas);
        string person = "{\"name\": \"Ann\", \"age\": 31, \"tags\": [\"red\"], \"address\": {\"street\": \"Main\"}}";
        foreach (var (text, ok) in new[]
        {
            ($"[{{\"name\": \"person\", \"arguments\": {person}}}]", true),
            ($"[{{\"name\": \"person\", \"arguments\": {person}, \"id\": \"abc123XYZ\"}}, {{\"name\": \"free\", \"arguments\": {{\"x\": [1]}}}}]", true),
            ("[{\"name\": \"person\", \"arguments\": {\"x\": 1}}]", false),        // not the schema
            ("[{\"name\": \"person\", \"arguments\": {}}]", false),                 // required properties missing
            ("[{\"name\": \"free\", \"arguments\": {}}]", true),
        })
        {
            bool accepted = GrammarConstraint<ToolCallState>.Accepts(g, g.Start, Encoding.UTF8.GetBytes(text), out var end) && g.IsComplete(end);
            Assert.True(ok == accepted, text);
        }
    }

    [Fact]
    public void Random_forced_tool_calls_have_arguments_that_validate()
    {
        var tok = V3();
        if (tok is null)
        {
            return; // mistral v3 tokenizer not found under ../shared/testdata
        }
        Assert.True(Bora.Chat.ControlTokens.Of(tok).TryGet("[TOOL_CALLS]", out var toolCalls));
        var schemas = new Dictionary<string, JsonSchemaGrammar> { ["person"] = JsonSchemaGrammar.Compile(Person), ["shapes"] = JsonSchemaGrammar.Compile(Shapes) };
        var bias = new float[tok.VocabSize];
        for (int id = 0; id < tok.VocabSize; id++)
        {
            var t = new TokenId(id);
            if (!tok.IsControl(t) && tok.TokenBytes(t, t).AsSpan().IndexOfAny("}]\","u8) >= 0)
            {
                bias[id] = 6f;
            }
        }
        int validated = 0;
        for (int seed = 0; seed < 20; seed++)
        {
            var constraint = ToolCallGrammar.ForcedCalls(tok, toolCalls, ["person", "shapes"], several: seed % 2 == 0, schemas);
            var rng = new Random(seed);
            var sampler = new Sampler(tok.VocabSize, NoFilters with { Seed = (ulong)seed });
            var logits = new float[tok.VocabSize];
            var tokens = new List<TokenId>();
            for (int step = 0; step < 400 && !constraint.IsComplete; step++)
            {
                for (int i = 0; i < logits.Length; i++)
                {
                    logits[i] = (float)(rng.NextDouble() * 4) + bias[i];
                }
                var next = sampler.Sample(logits, tokens.ToArray(), 0, constraint);
                constraint.Advance(next);
                tokens.Add(next);
            }
            if (!constraint.IsComplete)
            {
                continue;
            }
            var parsed = Bora.Chat.ToolCallParser.Parse(tok, [.. tokens, tok.Eos]);
            Assert.Empty(parsed.Errors);
            foreach (var call in parsed.Calls)
            {
                var errors = MiniSchemaValidator.Validate(call.Arguments, call.Name == "person" ? Person : Shapes);
                Assert.True(errors.Count == 0, string.Join("; ", errors) + " in " + call.Arguments);
                validated++;
            }
        }
        Assert.True(validated >= 10, $"only {validated} calls completed");
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
}
