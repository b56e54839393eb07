using System.Globalization;
using System.Text.Json;

namespace Bora;

/// <summary>
/// A small JSON schema validator for tests, written independently of Bora's schema compiler (it walks the
/// instance against the schema, as the spec reads): type (and lists), nullable, enum, const, properties,
/// required, additionalProperties (true/false), items, minItems, maxItems, minLength, maxLength (code points),
/// anyOf, allOf, $ref (local JSON pointers). Other keywords are ignored. Returns the first errors found.
/// </summary>
internal static class MiniSchemaValidator
{
    public static List<string> Validate(JsonElement instance, JsonElement schema)
    {
        var errors = new List<string>();
        Check(instance, schema, schema, "$", errors, 0);
        return errors;
    }

    public static List<string> Validate(string instanceJson, string schemaJson)
    {
        using var i = JsonDocument.Parse(instanceJson);
        using var s = JsonDocument.Parse(schemaJson);
        return Validate(i.RootElement, s.RootElement);
    }

    private static void Check(JsonElement v, JsonElement s, JsonElement root, string at, List<string> errors, int depth)
    {
        if (depth > 64)
        {
            errors.Add($"{at}: too deep");
            return;
        }
        if (s.ValueKind == JsonValueKind.True)
        {
            return;
        }
        if (s.ValueKind == JsonValueKind.False)
        {
            errors.Add($"{at}: schema false");
            return;
        }
        if (s.TryGetProperty("$ref", out var r))
        {
            Check(v, Resolve(root, r.GetString()!), root, at, errors, depth + 1);
        }
        if (s.TryGetProperty("allOf", out var all))
        {
            foreach (var sub in all.EnumerateArray())
            {
                Check(v, sub, root, at, errors, depth + 1);
            }
        }
        if (s.TryGetProperty("anyOf", out var any))
        {
            bool ok = false;
            foreach (var sub in any.EnumerateArray())
            {
                var e = new List<string>();
                Check(v, sub, root, at, e, depth + 1);
                ok |= e.Count == 0;
            }
            if (!ok)
            {
                errors.Add($"{at}: matches no anyOf alternative");
            }
        }
        if (s.TryGetProperty("type", out var type))
        {
            var types = type.ValueKind == JsonValueKind.String ? [type.GetString()!] : type.EnumerateArray().Select(t => t.GetString()!).ToList();
            if (s.TryGetProperty("nullable", out var n) && n.ValueKind == JsonValueKind.True)
            {
                types.Add("null");
            }
            if (!types.Any(t => HasType(v, t)))
            {
                errors.Add($"{at}: {v.ValueKind} is not of type {string.Join("/", types)}");
                return;
            }
        }
        if (s.TryGetProperty("enum", out var en) && !en.EnumerateArray().Any(e => JsonEqual(e, v)))
        {
            errors.Add($"{at}: {v.GetRawText()} is not in enum");
        }
        if (s.TryGetProperty("const", out var c) && !JsonEqual(c, v))
        {
            errors.Add($"{at}: {v.GetRawText()} is not the const");
        }
        switch (v.ValueKind)
        {
            case JsonValueKind.Object:
                {
                    s.TryGetProperty("properties", out var props);
                    if (s.TryGetProperty("required", out var req))
                    {
                        foreach (var name in req.EnumerateArray())
                        {
                            if (!v.TryGetProperty(name.GetString()!, out _))
                            {
                                errors.Add($"{at}: required property '{name.GetString()}' is missing");
                            }
                        }
                    }
                    var seen = new HashSet<string>(StringComparer.Ordinal);
                    foreach (var p in v.EnumerateObject())
                    {
                        if (!seen.Add(p.Name))
                        {
                            errors.Add($"{at}: property '{p.Name}' appears twice");
                        }
                        if (props.ValueKind == JsonValueKind.Object && props.TryGetProperty(p.Name, out var ps))
                        {
                            Check(p.Value, ps, root, $"{at}.{p.Name}", errors, depth + 1);
                        }
                        else if (s.TryGetProperty("additionalProperties", out var extra) && extra.ValueKind == JsonValueKind.False)
                        {
                            errors.Add($"{at}: property '{p.Name}' is not allowed");
                        }
                    }
                    break;
                }
            case JsonValueKind.Array:
                {
                    int count = v.GetArrayLength();
                    if (s.TryGetProperty("minItems", out var min) && count < min.GetInt32())
                    {
                        errors.Add($"{at}: {count} items < minItems");
                    }
                    if (s.TryGetProperty("maxItems", out var max) && count > max.GetInt32())
                    {
                        errors.Add($"{at}: {count} items > maxItems");
                    }
                    if (s.TryGetProperty("items", out var items))
                    {
                        int i = 0;
                        foreach (var e in v.EnumerateArray())
                        {
                            Check(e, items, root, $"{at}[{i++}]", errors, depth + 1);
                        }
                    }
                    break;
                }
            case JsonValueKind.String:
                {
                    int length = v.GetString()!.EnumerateRunes().Count();
                    if (s.TryGetProperty("minLength", out var min) && length < min.GetInt32())
                    {
                        errors.Add($"{at}: length {length} < minLength");
                    }
                    if (s.TryGetProperty("maxLength", out var max) && length > max.GetInt32())
                    {
                        errors.Add($"{at}: length {length} > maxLength");
                    }
                    break;
                }
            default:
                break;
        }
    }

    private static bool HasType(JsonElement v, string type) => type switch
    {
        "object" => v.ValueKind == JsonValueKind.Object,
        "array" => v.ValueKind == JsonValueKind.Array,
        "string" => v.ValueKind == JsonValueKind.String,
        "number" => v.ValueKind == JsonValueKind.Number,
        "integer" => v.ValueKind == JsonValueKind.Number && double.Parse(v.GetRawText(), CultureInfo.InvariantCulture) is var d && Math.Floor(d) == d,
        "boolean" => v.ValueKind is JsonValueKind.True or JsonValueKind.False,
        "null" => v.ValueKind == JsonValueKind.Null,
        _ => false,
    };

    private static bool JsonEqual(JsonElement a, JsonElement b)
    {
        if (a.ValueKind == JsonValueKind.Number && b.ValueKind == JsonValueKind.Number)
        {
            return double.Parse(a.GetRawText(), CultureInfo.InvariantCulture) == double.Parse(b.GetRawText(), CultureInfo.InvariantCulture);
        }
        return a.ValueKind == b.ValueKind && a.ValueKind switch
        {
            JsonValueKind.String => a.GetString() == b.GetString(),
            JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null => true,
            _ => a.GetRawText() == b.GetRawText(),
        };
    }

    private static JsonElement Resolve(JsonElement root, string reference)
    {
        var target = root;
        if (reference.Length > 1)
        {
            foreach (string token in reference[2..].Split('/'))
            {
                string t = token.Replace("~1", "/", StringComparison.Ordinal).Replace("~0", "~", StringComparison.Ordinal);
                target = target.ValueKind == JsonValueKind.Array ? target[int.Parse(t, CultureInfo.InvariantCulture)] : target.GetProperty(t);
            }
        }
        return target;
    }
}
