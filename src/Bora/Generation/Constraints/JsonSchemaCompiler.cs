using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Bora.Generation.Constraints;

/// <summary>A schema keyword or shape that <see cref="JsonSchemaCompiler"/> does not support (or an invalid schema).</summary>
/// <param name="path">Where, as a JSON path from the schema root (<c>$.properties.age</c>).</param>
/// <param name="message">What is wrong; the full <see cref="Exception.Message"/> adds the path.</param>
public sealed class JsonSchemaNotSupportedException(string path, string message) : Exception($"{message} (at {path})")
{
    /// <summary>The JSON path of the offending schema.</summary>
    public string SchemaPath { get; } = path;
}

/// <summary>
/// Compiles a JSON schema into a <see cref="JsonSchemaGrammar"/>. The supported subset is the one of OpenAI's
/// structured outputs:
/// <list type="bullet">
/// <item><c>type</c>: object, array, string, number, integer, boolean, null, or a list of them (each becomes an
/// alternative; <c>nullable: true</c> adds null). Without <c>type</c>, <c>properties</c> means an object,
/// <c>items</c> an array, <c>enum</c>/<c>const</c> their values, and nothing at all any JSON value.</item>
/// <item>Objects: <c>properties</c> are written in declared order; <c>required</c> ones always, the others may
/// be skipped; no other key is ever written, whatever <c>additionalProperties</c> says (true, false or absent;
/// a schema-valued one is refused). An object schema without <c>properties</c> allows any object, unless
/// <c>additionalProperties</c> is false (then only <c>{}</c>).</item>
/// <item>Arrays: <c>items</c> (absent: any value), <c>minItems</c>, <c>maxItems</c>.</item>
/// <item>Strings: <c>minLength</c>/<c>maxLength</c> in code points; <c>pattern</c> and <c>format</c> are ignored.</item>
/// <item><c>enum</c> and <c>const</c> of strings, numbers, booleans and null (written as the schema writes them;
/// filtered by <c>type</c> when both are given).</item>
/// <item><c>anyOf</c> (alone beside annotations), <c>allOf</c> of exactly one schema, <c>$ref</c> to
/// <c>#/$defs/..</c>, <c>#/definitions/..</c> or any JSON pointer into the document (recursive references are
/// refused).</item>
/// <item>Annotations (title, description, default, examples, $comment, $schema, $id, deprecated, readOnly,
/// writeOnly, contentEncoding, contentMediaType) are ignored.</item>
/// </list>
/// Everything else (minimum, maximum, multipleOf, oneOf, not, prefixItems, patternProperties, ...) is refused
/// with a <see cref="JsonSchemaNotSupportedException"/> naming the keyword and its path. The root must be an
/// object schema, and a schema whose every valid value nests more than <see cref="JsonSchemaGrammar.MaxDepth"/> containers is refused.
/// </summary>
public sealed class JsonSchemaCompiler
{
    /// <summary>Most nodes a compiled schema may have (refs are compiled once and shared).</summary>
    public const int MaxNodes = 10_000;

    /// <summary>Most values of one enum.</summary>
    public const int MaxEnumValues = 1_000;

    private static readonly HashSet<string> Annotations = new(StringComparer.Ordinal)
    {
        "title", "description", "default", "examples", "$comment", "$schema", "$id", "deprecated", "readOnly", "writeOnly",
        "contentEncoding", "contentMediaType", "format", "pattern", "$defs", "definitions",
    };

    private static readonly HashSet<string> Supported = new(StringComparer.Ordinal)
    {
        "type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "minLength", "maxLength",
        "enum", "const", "anyOf", "allOf", "$ref", "nullable",
    };

    private static readonly JsonSerializerOptions Relaxed = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private readonly JsonElement _root;
    private readonly List<SchemaNode> _nodes = [];
    private readonly List<LiteralSet> _sets = [];
    private readonly Dictionary<string, int> _refs = new(StringComparer.Ordinal);
    private readonly HashSet<string> _resolving = new(StringComparer.Ordinal);
    private int _anyValue = -1;

    private JsonSchemaCompiler(JsonElement root) => _root = root;

    /// <summary>Compiles <paramref name="schema"/>.</summary>
    /// <exception cref="JsonSchemaNotSupportedException">An unsupported keyword or shape, an invalid schema, or a root that is not an object schema.</exception>
    public static JsonSchemaGrammar Compile(JsonElement schema)
    {
        var c = new JsonSchemaCompiler(schema);
        int root = c.Node(schema, "$");
        if (c._nodes[root].Kind is not (SchemaKind.Object or SchemaKind.AnyObject))
        {
            throw new JsonSchemaNotSupportedException("$", "the root schema must be an object schema (type \"object\")");
        }
        int any = c.AnyValue();
        var grammar = new JsonSchemaGrammar([.. c._nodes], [.. c._sets], root, any);
        int depth = c.MinDepth(root, new Dictionary<int, int>());
        if (depth > grammar.MaxDepth)
        {
            throw new JsonSchemaNotSupportedException("$", $"every valid value nests at least {depth} containers; at most {grammar.MaxDepth} are supported");
        }
        return grammar;
    }

    /// <summary>The fewest nested containers a value of node <paramref name="id"/> can have (the schema graph has no cycles: recursive refs are refused).</summary>
    private int MinDepth(int id, Dictionary<int, int> memo)
    {
        if (memo.TryGetValue(id, out int d))
        {
            return d;
        }
        memo[id] = 0; // AnyValue refers to itself through its array; 0 is its true minimum
        var n = _nodes[id];
        d = n.Kind switch
        {
            SchemaKind.AnyOf => n.Alternatives.Min(a => MinDepth(a, memo)),
            SchemaKind.Array => 1 + (n.MinItems > 0 ? MinDepth(n.Items, memo) : 0),
            SchemaKind.AnyObject => 1,
            SchemaKind.Object => 1 + n.PropertyValues.Where((_, j) => n.Required[j]).Select(v => MinDepth(v, memo)).DefaultIfEmpty(0).Max(),
            _ => 0,
        };
        memo[id] = d;
        return d;
    }

    private int Add(SchemaNode node, string path)
    {
        if (_nodes.Count >= MaxNodes)
        {
            throw new JsonSchemaNotSupportedException(path, $"the schema compiles to more than {MaxNodes} nodes");
        }
        _nodes.Add(node);
        return _nodes.Count - 1;
    }

    private int AddSet(List<(byte[] Text, int Tag)> entries)
    {
        entries.Sort((a, b) => a.Text.AsSpan().SequenceCompareTo(b.Text));
        _sets.Add(new LiteralSet([.. entries.Select(e => e.Text)], [.. entries.Select(e => e.Tag)]));
        return _sets.Count - 1;
    }

    /// <summary>Any JSON value: an anyOf of any object, any array, any string, any number, true/false/null (made once).</summary>
    private int AnyValue()
    {
        if (_anyValue >= 0)
        {
            return _anyValue;
        }
        var anyOf = new SchemaNode { Kind = SchemaKind.AnyOf };
        _anyValue = Add(anyOf, "$");
        int obj = Add(new SchemaNode { Kind = SchemaKind.AnyObject }, "$");
        int arr = Add(new SchemaNode { Kind = SchemaKind.Array, Items = _anyValue }, "$");
        int str = Add(new SchemaNode { Kind = SchemaKind.String }, "$");
        int num = Add(new SchemaNode { Kind = SchemaKind.Number }, "$");
        int lit = Add(new SchemaNode { Kind = SchemaKind.Literals, Literals = AddSet([("true"u8.ToArray(), 0), ("false"u8.ToArray(), 0), ("null"u8.ToArray(), 0)]) }, "$");
        anyOf.Alternatives = [obj, arr, str, num, lit];
        return _anyValue;
    }

    private int Node(JsonElement s, string path)
    {
        if (s.ValueKind == JsonValueKind.True)
        {
            return AnyValue();
        }
        if (s.ValueKind != JsonValueKind.Object)
        {
            throw new JsonSchemaNotSupportedException(path, s.ValueKind == JsonValueKind.False
                ? "the schema false (no value at all) is not supported"
                : $"a schema must be a JSON object or true; got a JSON {s.ValueKind}");
        }
        var keywords = new HashSet<string>(StringComparer.Ordinal);
        foreach (var p in s.EnumerateObject())
        {
            if (!keywords.Add(p.Name))
            {
                throw new JsonSchemaNotSupportedException(path, $"keyword '{p.Name}' appears twice");
            }
            if (!Annotations.Contains(p.Name) && !Supported.Contains(p.Name))
            {
                throw new JsonSchemaNotSupportedException(path, $"keyword '{p.Name}' is not supported");
            }
        }
        var structural = keywords.Where(k => !Annotations.Contains(k)).ToList();
        if (s.TryGetProperty("$ref", out var reference))
        {
            Alone(structural, "$ref", path);
            return Ref(reference, path);
        }
        if (s.TryGetProperty("allOf", out var allOf))
        {
            Alone(structural, "allOf", path);
            if (allOf.ValueKind != JsonValueKind.Array || allOf.GetArrayLength() != 1)
            {
                throw new JsonSchemaNotSupportedException(path + ".allOf", "allOf is supported only with exactly one schema");
            }
            return Node(allOf[0], path + ".allOf[0]");
        }
        if (s.TryGetProperty("anyOf", out var anyOf))
        {
            Alone(structural, "anyOf", path);
            if (anyOf.ValueKind != JsonValueKind.Array || anyOf.GetArrayLength() == 0)
            {
                throw new JsonSchemaNotSupportedException(path + ".anyOf", "anyOf must be a non-empty array of schemas");
            }
            var alts = new List<int>();
            int i = 0;
            foreach (var a in anyOf.EnumerateArray())
            {
                alts.Add(Node(a, $"{path}.anyOf[{i++}]"));
            }
            return alts.Count == 1 ? alts[0] : Add(new SchemaNode { Kind = SchemaKind.AnyOf, Alternatives = [.. alts] }, path);
        }

        var types = Types(s, path);
        if (s.TryGetProperty("enum", out var en) || s.TryGetProperty("const", out en))
        {
            bool isConst = !s.TryGetProperty("enum", out _);
            if (isConst && keywords.Contains("enum"))
            {
                throw new JsonSchemaNotSupportedException(path, "enum and const together are not supported");
            }
            return Literals(isConst ? [en] : EnumValues(en, path), types, path + (isConst ? ".const" : ".enum"));
        }
        if (types is null)
        {
            if (keywords.Contains("properties") || keywords.Contains("required") || keywords.Contains("additionalProperties"))
            {
                types = ["object"];
            }
            else if (keywords.Contains("items") || keywords.Contains("minItems") || keywords.Contains("maxItems"))
            {
                types = ["array"];
            }
            else if (keywords.Contains("minLength") || keywords.Contains("maxLength"))
            {
                types = ["string"];
            }
            else
            {
                return AnyValue();
            }
        }
        var nodes = types.Select(t => TypeNode(s, t, path)).ToList();
        return nodes.Count == 1 ? nodes[0] : Add(new SchemaNode { Kind = SchemaKind.AnyOf, Alternatives = [.. nodes] }, path);
    }

    private static void Alone(List<string> structural, string keyword, string path)
    {
        var other = structural.FirstOrDefault(k => k != keyword);
        if (other is not null)
        {
            throw new JsonSchemaNotSupportedException(path, $"keyword '{other}' beside '{keyword}' is not supported (only annotations may accompany {keyword})");
        }
    }

    /// <summary>The "type" list (plus "null" for nullable: true), or null when absent.</summary>
    private static List<string>? Types(JsonElement s, string path)
    {
        List<string>? types = null;
        if (s.TryGetProperty("type", out var type))
        {
            types = type.ValueKind switch
            {
                JsonValueKind.String => [type.GetString()!],
                JsonValueKind.Array when type.GetArrayLength() > 0 && type.EnumerateArray().All(t => t.ValueKind == JsonValueKind.String) =>
                    [.. type.EnumerateArray().Select(t => t.GetString()!).Distinct(StringComparer.Ordinal)],
                _ => throw new JsonSchemaNotSupportedException(path + ".type", "type must be a string or a non-empty array of strings"),
            };
            foreach (var t in types)
            {
                if (t is not ("object" or "array" or "string" or "number" or "integer" or "boolean" or "null"))
                {
                    throw new JsonSchemaNotSupportedException(path + ".type", $"type '{t}' is not a JSON schema type");
                }
            }
            if (types.Contains("number") && types.Contains("integer"))
            {
                types.Remove("integer"); // every integer is a number
            }
        }
        if (s.TryGetProperty("nullable", out var nullable))
        {
            if (nullable.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
            {
                throw new JsonSchemaNotSupportedException(path + ".nullable", "nullable must be true or false");
            }
            if (nullable.ValueKind == JsonValueKind.True && types is not null && !types.Contains("null"))
            {
                types.Add("null");
            }
        }
        return types;
    }

    private int TypeNode(JsonElement s, string type, string path)
    {
        switch (type)
        {
            case "object":
                return ObjectNode(s, path);
            case "array":
                {
                    int min = Count(s, "minItems", path), max = Count(s, "maxItems", path);
                    if (max >= 0 && min > max)
                    {
                        throw new JsonSchemaNotSupportedException(path, $"minItems {min} is more than maxItems {max}");
                    }
                    int items = s.TryGetProperty("items", out var it) ? Node(it, path + ".items") : AnyValue();
                    return Add(new SchemaNode { Kind = SchemaKind.Array, Items = items, MinItems = Math.Max(min, 0), MaxItems = max }, path);
                }
            case "string":
                {
                    int min = Count(s, "minLength", path), max = Count(s, "maxLength", path);
                    if (max >= 0 && min > max)
                    {
                        throw new JsonSchemaNotSupportedException(path, $"minLength {min} is more than maxLength {max}");
                    }
                    return Add(new SchemaNode { Kind = SchemaKind.String, MinLength = Math.Max(min, 0), MaxLength = max }, path);
                }
            case "number":
                return Add(new SchemaNode { Kind = SchemaKind.Number }, path);
            case "integer":
                return Add(new SchemaNode { Kind = SchemaKind.Integer }, path);
            case "boolean":
                return Add(new SchemaNode { Kind = SchemaKind.Literals, Literals = AddSet([("true"u8.ToArray(), 0), ("false"u8.ToArray(), 0)]) }, path);
            default: // null
                return Add(new SchemaNode { Kind = SchemaKind.Literals, Literals = AddSet([("null"u8.ToArray(), 0)]) }, path);
        }
    }

    /// <summary>A non-negative integer keyword, or -1 when absent.</summary>
    private static int Count(JsonElement s, string keyword, string path)
    {
        if (!s.TryGetProperty(keyword, out var v))
        {
            return -1;
        }
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int n) || n < 0 || n > ushort.MaxValue)
        {
            throw new JsonSchemaNotSupportedException(path + "." + keyword, $"{keyword} must be an integer in [0, {ushort.MaxValue}]");
        }
        return n;
    }

    private int ObjectNode(JsonElement s, string path)
    {
        bool closed = false;
        if (s.TryGetProperty("additionalProperties", out var extra))
        {
            if (extra.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
            {
                throw new JsonSchemaNotSupportedException(path + ".additionalProperties", "additionalProperties must be true or false (a schema for extra properties is not supported)");
            }
            closed = extra.ValueKind == JsonValueKind.False;
        }
        var required = new HashSet<string>(StringComparer.Ordinal);
        if (s.TryGetProperty("required", out var req))
        {
            if (req.ValueKind != JsonValueKind.Array || req.EnumerateArray().Any(r => r.ValueKind != JsonValueKind.String))
            {
                throw new JsonSchemaNotSupportedException(path + ".required", "required must be an array of strings");
            }
            foreach (var r in req.EnumerateArray())
            {
                required.Add(r.GetString()!);
            }
        }
        if (!s.TryGetProperty("properties", out var props))
        {
            if (required.Count > 0)
            {
                throw new JsonSchemaNotSupportedException(path + ".required", $"required names '{required.First()}' but there are no properties");
            }
            return closed
                ? Add(new SchemaNode { Kind = SchemaKind.Object, KeySets = [AddSet([])], CanClose = [true] }, path)
                : Add(new SchemaNode { Kind = SchemaKind.AnyObject }, path);
        }
        if (props.ValueKind != JsonValueKind.Object)
        {
            throw new JsonSchemaNotSupportedException(path + ".properties", "properties must be an object");
        }
        var names = new List<string>();
        var values = new List<int>();
        foreach (var p in props.EnumerateObject())
        {
            if (names.Contains(p.Name, StringComparer.Ordinal))
            {
                throw new JsonSchemaNotSupportedException(path + ".properties", $"property '{p.Name}' is declared twice");
            }
            names.Add(p.Name);
            values.Add(Node(p.Value, $"{path}.properties.{p.Name}"));
        }
        foreach (var r in required)
        {
            if (!names.Contains(r, StringComparer.Ordinal))
            {
                throw new JsonSchemaNotSupportedException(path + ".required", $"required names '{r}', which is not in properties");
            }
        }
        int n = names.Count;
        var keys = names.Select(k => Encoding.UTF8.GetBytes(JsonSerializer.Serialize(k, Relaxed))).ToArray();
        var keySets = new int[n + 1];
        var canClose = new bool[n + 1];
        for (int i = 0; i <= n; i++)
        {
            // From index i the next key is any property j >= i up to and including the first required one.
            var entries = new List<(byte[], int)>();
            canClose[i] = true;
            for (int j = i; j < n; j++)
            {
                entries.Add((keys[j], j));
                if (required.Contains(names[j]))
                {
                    canClose[i] = false;
                    break;
                }
            }
            keySets[i] = AddSet(entries);
        }
        return Add(new SchemaNode { Kind = SchemaKind.Object, PropertyValues = [.. values], Required = [.. names.Select(required.Contains)], KeySets = keySets, CanClose = canClose }, path);
    }

    private static List<JsonElement> EnumValues(JsonElement en, string path)
    {
        if (en.ValueKind != JsonValueKind.Array || en.GetArrayLength() == 0 || en.GetArrayLength() > MaxEnumValues)
        {
            throw new JsonSchemaNotSupportedException(path + ".enum", $"enum must be an array of 1 to {MaxEnumValues} values");
        }
        return [.. en.EnumerateArray()];
    }

    private int Literals(List<JsonElement> values, List<string>? types, string path)
    {
        var entries = new List<(byte[] Text, int Tag)>();
        foreach (var v in values)
        {
            string type = v.ValueKind switch
            {
                JsonValueKind.String => "string",
                JsonValueKind.Number => v.TryGetDecimal(out decimal d) && d == decimal.Truncate(d) ? "integer" : "number",
                JsonValueKind.True or JsonValueKind.False => "boolean",
                JsonValueKind.Null => "null",
                _ => throw new JsonSchemaNotSupportedException(path, $"enum/const values must be strings, numbers, booleans or null; got a JSON {v.ValueKind}"),
            };
            if (types is not null && !types.Contains(type) && !(type == "integer" && types.Contains("number")))
            {
                continue; // the value does not have the declared type: it can never validate
            }
            byte[] text = v.ValueKind == JsonValueKind.String
                ? Encoding.UTF8.GetBytes(JsonSerializer.Serialize(v.GetString(), Relaxed))
                : Encoding.UTF8.GetBytes(v.GetRawText());
            if (!entries.Any(e => e.Text.AsSpan().SequenceEqual(text)))
            {
                entries.Add((text, 0));
            }
        }
        if (entries.Count == 0)
        {
            throw new JsonSchemaNotSupportedException(path, "no enum/const value has the declared type");
        }
        return Add(new SchemaNode { Kind = SchemaKind.Literals, Literals = AddSet(entries) }, path);
    }

    /// <summary>A $ref: a JSON pointer into the document (<c>#</c>, <c>#/$defs/X</c>, <c>#/definitions/X</c>, ...), compiled once.</summary>
    private int Ref(JsonElement reference, string path)
    {
        string? r = reference.ValueKind == JsonValueKind.String ? reference.GetString() : null;
        if (r is null || !r.StartsWith('#'))
        {
            throw new JsonSchemaNotSupportedException(path + ".$ref", $"$ref must be a local JSON pointer such as \"#/$defs/Name\"; got {reference.GetRawText()}");
        }
        if (_refs.TryGetValue(r, out int id))
        {
            return id;
        }
        if (!_resolving.Add(r))
        {
            throw new JsonSchemaNotSupportedException(path + ".$ref", $"recursive $ref '{r}' is not supported");
        }
        var target = _root;
        string where = "$";
        if (r.Length > 1)
        {
            if (r[1] != '/')
            {
                throw new JsonSchemaNotSupportedException(path + ".$ref", $"$ref '{r}' is not a JSON pointer (anchors are not supported)");
            }
            foreach (string raw in r[2..].Split('/'))
            {
                string token = Uri.UnescapeDataString(raw).Replace("~1", "/", StringComparison.Ordinal).Replace("~0", "~", StringComparison.Ordinal);
                if (target.ValueKind == JsonValueKind.Object && target.TryGetProperty(token, out var child))
                {
                    target = child;
                }
                else if (target.ValueKind == JsonValueKind.Array && int.TryParse(token, out int index) && index >= 0 && index < target.GetArrayLength())
                {
                    target = target[index];
                }
                else
                {
                    throw new JsonSchemaNotSupportedException(path + ".$ref", $"$ref '{r}' points at nothing in the schema");
                }
                where += "." + token;
            }
        }
        id = Node(target, where);
        _resolving.Remove(r);
        _refs[r] = id;
        return id;
    }
}
