using System.Globalization;
using System.Text.Json;
using Bora.Chat;
using Bora.Generation;
using Bora.Generation.Constraints;
using Bora.Tokenizers;

namespace Bora.Server;

/// <summary>
/// Validation of the generation-side request fields (penalties, n, logprobs, response_format, tools +
/// tool_choice) and the constraint they ask for. Every failure is a 400 naming the field.
/// </summary>
internal static class GenerationFields
{
    private const string ToolCallsPiece = "[TOOL_CALLS]";

    /// <summary>presence_penalty / frequency_penalty: absent = 0, else a number in [-2, 2].</summary>
    public static float Penalty(double? value, string param)
    {
        if (value is not { } v)
        {
            return 0f;
        }
        if (!(v >= -2 && v <= 2))
        {
            throw ApiException.BadRequest($"{param} is {v.ToString(CultureInfo.InvariantCulture)}; expected a number in [-2, 2]", param);
        }
        return (float)v;
    }

    /// <summary>The sampling options with the request's presence_penalty and frequency_penalty (validated).</summary>
    public static SamplingOptions WithPenalties(SamplingOptions sampling, double? presence, double? frequency) =>
        sampling with { PresencePenalty = Penalty(presence, "presence_penalty"), FrequencyPenalty = Penalty(frequency, "frequency_penalty") };

    /// <summary>n: absent = 1, else 1 .. max.</summary>
    public static int Choices(int? n, int max)
    {
        if (n is { } v && (v < 1 || v > max))
        {
            throw ApiException.BadRequest($"n is {v}; expected an integer in [1, {max}]", "n");
        }
        return n ?? 1;
    }

    /// <summary>Chat logprobs (bool) + top_logprobs (0 .. 20, only with logprobs true): null = none.</summary>
    public static int? ChatTopLogprobs(bool? logprobs, int? top)
    {
        if (top is { } t && (t < 0 || t > Logprobs.MaxTop))
        {
            throw ApiException.BadRequest($"top_logprobs is {t}; expected an integer in [0, {Logprobs.MaxTop}]", "top_logprobs");
        }
        if (top is not null && logprobs != true)
        {
            throw ApiException.BadRequest("top_logprobs requires logprobs to be true", "top_logprobs");
        }
        return logprobs == true ? top ?? 0 : null;
    }

    /// <summary>Legacy completions logprobs (an integer 0 .. 5: how many alternatives): null = none.</summary>
    public static int? CompletionTopLogprobs(int? logprobs)
    {
        if (logprobs is { } l && (l < 0 || l > 5))
        {
            throw ApiException.BadRequest($"logprobs is {l}; expected an integer in [0, 5]", "logprobs");
        }
        return logprobs;
    }

    /// <summary>
    /// Seed of choice <paramref name="index"/>: choice 0 keeps the request's seed (so n = 1 and the first of
    /// n choices agree), choice i &gt; 0 gets SplitMix64(seed + i). Null stays null (a fresh random seed each).
    /// </summary>
    public static ulong? ChoiceSeed(ulong? seed, int index)
    {
        if (seed is not { } s || index == 0)
        {
            return seed;
        }
        ulong z = unchecked(s + (ulong)index * 0x9E3779B97F4A7C15UL);
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return z ^ (z >> 31);
    }

    /// <summary>
    /// The constraint a chat request asks for, as a factory (one fresh constraint per choice), or null for
    /// none. response_format: absent/null/{"type":"text"} none, {"type":"json_object"} one JSON object,
    /// {"type":"json_schema","json_schema":{"name":..,"schema":{..},"strict":..}} one JSON object valid against the
    /// schema (<see cref="JsonSchemaCompiler"/>'s subset; "strict" true or false alike; no schema = any object).
    /// <paramref name="names"/>: the functions of the request's tools, already validated by
    /// <see cref="ChatRequestMapping.ToChatRequest"/>. tool_choice (needs tools): "auto" none, "none" bans [TOOL_CALLS], "any"/"required"
    /// forces calls of the declared functions, {"type":"function","function":{"name":X}} forces one call of X; forced
    /// calls' arguments follow each function's "parameters" schema from <paramref name="tools"/> when it compiles,
    /// else any JSON object.
    /// </summary>
    public static Func<ITokenConstraint>? Constraint(JsonElement responseFormat, IReadOnlyList<string> names, JsonElement toolChoice, ITokenizer tokenizer, JsonElement tools = default)
    {
        ArgumentNullException.ThrowIfNull(names);
        var (json, schema) = ResponseFormat(responseFormat);
        var choice = ToolChoice(toolChoice, names);
        if (json && choice is ToolMode.Any or ToolMode.Named)
        {
            throw ApiException.BadRequest("response_format json_object / json_schema cannot be combined with a tool_choice that forces tool calls", "tool_choice");
        }
        if (schema is not null)
        {
            return () => schema.Constraint(tokenizer);
        }
        if (json)
        {
            return () => JsonConstraints.Object(tokenizer);
        }
        bool hasToken = ControlTokens.Of(tokenizer).TryGet(ToolCallsPiece, out var toolCalls);
        switch (choice)
        {
            case ToolMode.None when hasToken:
                return () => new BannedTokensConstraint([toolCalls]);
            case ToolMode.Any or ToolMode.Named when !hasToken:
                throw ApiException.BadRequest($"this model's vocabulary has no {ToolCallsPiece} token, so it cannot be made to call tools; use tool_choice \"auto\" or \"none\"", "tool_choice");
            case ToolMode.Any:
                {
                    var schemas = ArgumentSchemas(tools);
                    return () => ToolCallGrammar.ForcedCalls(tokenizer, toolCalls, names, several: true, schemas);
                }
            case ToolMode.Named:
                {
                    string name = NamedFunction(toolChoice);
                    var schemas = ArgumentSchemas(tools);
                    return () => ToolCallGrammar.ForcedCalls(tokenizer, toolCalls, [name], several: false, schemas);
                }
            default:
                return null;
        }
    }

    /// <summary>
    /// The compiled "parameters" schema of each function in <paramref name="tools"/> (the request's JSON array) that
    /// has one the compiler supports; a function whose schema is absent or uses unsupported keywords is left out
    /// (its arguments are then any JSON object).
    /// </summary>
    public static Dictionary<string, JsonSchemaGrammar> ArgumentSchemas(JsonElement tools)
    {
        var schemas = new Dictionary<string, JsonSchemaGrammar>(StringComparer.Ordinal);
        if (tools.ValueKind != JsonValueKind.Array)
        {
            return schemas;
        }
        foreach (var tool in tools.EnumerateArray())
        {
            if (tool.ValueKind == JsonValueKind.Object && tool.TryGetProperty("function", out var f) && f.ValueKind == JsonValueKind.Object
                && f.TryGetProperty("name", out var name) && name.ValueKind == JsonValueKind.String
                && f.TryGetProperty("parameters", out var parameters) && parameters.ValueKind == JsonValueKind.Object)
            {
                try
                {
                    schemas[name.GetString()!] = JsonSchemaGrammar.GetOrCompile(parameters);
                }
                catch (JsonSchemaNotSupportedException)
                {
                    // Unsupported keywords: the arguments fall back to any JSON object (documented).
                }
            }
        }
        return schemas;
    }

    private enum ToolMode
    {
        Auto,
        None,
        Any,
        Named,
    }

    /// <summary>response_format: (json wanted, the schema's grammar when json_schema gives one).</summary>
    private static (bool Json, JsonSchemaGrammar? Schema) ResponseFormat(JsonElement format)
    {
        if (format.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null)
        {
            return (false, null);
        }
        if (format.ValueKind != JsonValueKind.Object || !format.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String)
        {
            throw ApiException.BadRequest("response_format must be an object with a string \"type\" (\"text\", \"json_object\" or \"json_schema\")", "response_format");
        }
        return type.GetString() switch
        {
            "text" => (false, null),
            "json_object" => (true, null),
            "json_schema" => (true, Schema(format)),
            var t => throw ApiException.BadRequest($"response_format type '{t}' is not supported; expected \"text\", \"json_object\" or \"json_schema\"", "response_format.type"),
        };
    }

    /// <summary>response_format.json_schema: {"name": string, "schema": object, "strict": bool, "description": string}; null = no schema (any object).</summary>
    private static JsonSchemaGrammar? Schema(JsonElement format)
    {
        if (!format.TryGetProperty("json_schema", out var js) || js.ValueKind != JsonValueKind.Object)
        {
            throw ApiException.BadRequest("response_format json_schema needs a \"json_schema\" object: {\"name\": ..., \"schema\": {...}, \"strict\": true}", "response_format.json_schema");
        }
        if (js.TryGetProperty("name", out var name) && name.ValueKind != JsonValueKind.String)
        {
            throw ApiException.BadRequest($"response_format.json_schema.name is a JSON {name.ValueKind}; expected a string", "response_format.json_schema.name");
        }
        if (js.TryGetProperty("strict", out var strict) && strict.ValueKind is not (JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null))
        {
            throw ApiException.BadRequest($"response_format.json_schema.strict is a JSON {strict.ValueKind}; expected true or false", "response_format.json_schema.strict");
        }
        if (!js.TryGetProperty("schema", out var schema) || schema.ValueKind == JsonValueKind.Null)
        {
            return null;
        }
        try
        {
            return JsonSchemaGrammar.GetOrCompile(schema);
        }
        catch (JsonSchemaNotSupportedException e)
        {
            throw ApiException.BadRequest($"response_format.json_schema.schema: {e.Message}", "response_format.json_schema.schema");
        }
    }

    private static ToolMode ToolChoice(JsonElement choice, IReadOnlyList<string> names)
    {
        if (choice.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null)
        {
            return ToolMode.Auto;
        }
        if (names.Count == 0)
        {
            throw ApiException.BadRequest("tool_choice needs a non-empty tools list", "tool_choice");
        }
        ToolMode mode = choice.ValueKind switch
        {
            JsonValueKind.String => choice.GetString() switch
            {
                "auto" => ToolMode.Auto,
                "none" => ToolMode.None,
                "any" or "required" => ToolMode.Any,
                var s => throw ApiException.BadRequest($"tool_choice '{s}' is not one of auto, none, any, required", "tool_choice"),
            },
            JsonValueKind.Object => ToolMode.Named,
            _ => throw ApiException.BadRequest($"tool_choice is a JSON {choice.ValueKind}; expected a string or {{\"type\":\"function\",\"function\":{{\"name\":...}}}}", "tool_choice"),
        };
        if (mode == ToolMode.Named)
        {
            string name = NamedFunction(choice);
            if (!names.Contains(name, StringComparer.Ordinal))
            {
                throw ApiException.BadRequest($"tool_choice names the function '{name}', which is not in tools", "tool_choice.function.name");
            }
        }
        if (mode is ToolMode.Any or ToolMode.Named)
        {
            try
            {
                _ = new ToolCallGrammar(mode == ToolMode.Named ? [NamedFunction(choice)] : names, several: true);
            }
            catch (ArgumentException e)
            {
                throw ApiException.BadRequest($"cannot force tool calls: {e.Message}", "tools");
            }
        }
        return mode;
    }

    private static string NamedFunction(JsonElement choice)
    {
        if ((choice.TryGetProperty("type", out var type) && (type.ValueKind != JsonValueKind.String || type.GetString() != "function"))
            || !choice.TryGetProperty("function", out var f) || f.ValueKind != JsonValueKind.Object
            || !f.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String)
        {
            throw ApiException.BadRequest("tool_choice objects must be {\"type\":\"function\",\"function\":{\"name\": a string}}", "tool_choice");
        }
        return name.GetString()!;
    }
}
