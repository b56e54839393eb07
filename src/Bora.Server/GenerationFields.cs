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
    /// json_schema refused. <paramref name="names"/>: the functions of the request's tools, already validated by
    /// <see cref="ChatRequestMapping.ToChatRequest"/>. tool_choice (needs tools): "auto" none, "none" bans [TOOL_CALLS], "any"/"required"
    /// forces calls of the declared functions, {"type":"function","function":{"name":X}} forces one call of X.
    /// </summary>
    public static Func<ITokenConstraint>? Constraint(JsonElement responseFormat, IReadOnlyList<string> names, JsonElement toolChoice, ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(names);
        bool json = JsonObjectRequested(responseFormat);
        var choice = ToolChoice(toolChoice, names);
        if (json && choice is ToolMode.Any or ToolMode.Named)
        {
            throw ApiException.BadRequest("response_format json_object cannot be combined with a tool_choice that forces tool calls", "tool_choice");
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
                return () => ToolCallGrammar.ForcedCalls(tokenizer, toolCalls, names, several: true);
            case ToolMode.Named:
                string name = NamedFunction(toolChoice);
                return () => ToolCallGrammar.ForcedCalls(tokenizer, toolCalls, [name], several: false);
            default:
                return null;
        }
    }

    private enum ToolMode
    {
        Auto,
        None,
        Any,
        Named,
    }

    private static bool JsonObjectRequested(JsonElement format)
    {
        if (format.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null)
        {
            return false;
        }
        if (format.ValueKind != JsonValueKind.Object || !format.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String)
        {
            throw ApiException.BadRequest("response_format must be an object with a string \"type\" (\"text\" or \"json_object\")", "response_format");
        }
        return type.GetString() switch
        {
            "text" => false,
            "json_object" => true,
            "json_schema" => throw ApiException.BadRequest("response_format json_schema is not supported; use {\"type\":\"json_object\"} (any JSON object) instead", "response_format"),
            var t => throw ApiException.BadRequest($"response_format type '{t}' is not supported; expected \"text\" or \"json_object\"", "response_format.type"),
        };
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
