using System.Text.Json;
using System.Text.Json.Serialization;

namespace Bora.Server;

// Wire types of the tool, prefix, FIM, tokenize and metrics features (the core ones are in ApiModels.cs).

public sealed partial class CompletionRequest
{
    /// <summary>Text after the completion: the request becomes fill-in-the-middle (needs the model's [SUFFIX]/[PREFIX] tokens).</summary>
    [JsonPropertyName("suffix")] public string? Suffix { get; set; }
}

public sealed partial class ChatMessage
{
    /// <summary>An assistant message's calls: [{id, type, function: {name, arguments}}].</summary>
    [JsonPropertyName("tool_calls")] public JsonElement ToolCalls { get; set; }

    /// <summary>The call a tool message answers.</summary>
    [JsonPropertyName("tool_call_id")] public JsonElement ToolCallId { get; set; }

    /// <summary>The tool name of a tool message (Mistral).</summary>
    [JsonPropertyName("name")] public JsonElement Name { get; set; }

    /// <summary>Mistral: a final assistant message the model continues.</summary>
    [JsonPropertyName("prefix")] public JsonElement Prefix { get; set; }
}

public sealed class StreamOptions
{
    [JsonPropertyName("include_usage")] public bool? IncludeUsage { get; set; }
}

public sealed partial class ChatCompletionRequest
{
    /// <summary>[{type: "function", function: {name, description, parameters}}].</summary>
    [JsonPropertyName("tools")] public JsonElement Tools { get; set; }

    /// <summary>Mistral: prepend Mistral's guardrail system prompt.</summary>
    [JsonPropertyName("safe_prompt")] public bool? SafePrompt { get; set; }

    [JsonPropertyName("stream_options")] public StreamOptions? StreamOptions { get; set; }
}

/// <summary>One call in an answer (index only in stream deltas; a delta carries the name or the arguments).</summary>
public sealed record ToolCallOut(
    [property: JsonPropertyName("index"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] int? Index,
    [property: JsonPropertyName("id"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Id,
    [property: JsonPropertyName("type"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Type,
    [property: JsonPropertyName("function")] ToolCallFunctionOut Function);

public sealed record ToolCallFunctionOut(
    [property: JsonPropertyName("name"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Name,
    [property: JsonPropertyName("arguments"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Arguments);

/// <summary>Mistral's POST /v1/fim/completions body.</summary>
public sealed class FimCompletionRequest : GenerationRequest
{
    [JsonPropertyName("prompt")] public JsonElement Prompt { get; set; }
    [JsonPropertyName("suffix")] public string? Suffix { get; set; }
}

/// <summary>vLLM's POST /v1/tokenize body: a prompt, or chat messages (rendered as a chat completion would be).</summary>
public sealed class TokenizeRequest
{
    [JsonPropertyName("model")] public string? Model { get; set; }
    [JsonPropertyName("prompt")] public JsonElement Prompt { get; set; }
    [JsonPropertyName("messages")] public List<ChatMessage>? Messages { get; set; }
    [JsonPropertyName("tools")] public JsonElement Tools { get; set; }
    [JsonPropertyName("add_special_tokens")] public bool? AddSpecialTokens { get; set; }
}

public sealed record TokenizeResponse(
    [property: JsonPropertyName("tokens")] IReadOnlyList<int> Tokens,
    [property: JsonPropertyName("count")] int Count,
    [property: JsonPropertyName("max_model_len")] int MaxModelLen);

public sealed class DetokenizeRequest
{
    [JsonPropertyName("model")] public string? Model { get; set; }
    [JsonPropertyName("tokens")] public JsonElement Tokens { get; set; }
}

public sealed record DetokenizeResponse([property: JsonPropertyName("prompt")] string Prompt);

[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.Never, UnmappedMemberHandling = JsonUnmappedMemberHandling.Skip)]
[JsonSerializable(typeof(FimCompletionRequest))]
[JsonSerializable(typeof(TokenizeRequest))]
[JsonSerializable(typeof(TokenizeResponse))]
[JsonSerializable(typeof(DetokenizeRequest))]
[JsonSerializable(typeof(DetokenizeResponse))]
public sealed partial class ExtraApiJsonContext : JsonSerializerContext;
