using System.Text.Json;
using System.Text.Json.Serialization;

namespace Bora.Server;

// Wire types of the OpenAI-compatible API. Requests keep polymorphic fields (prompt, stop) as
// JsonElement and are validated by RequestValidation; unknown fields are ignored, as OpenAI does.

/// <summary>
/// The fields every generation request shares (completions, chat completions, FIM): model, max_tokens, temperature,
/// top_p, seed / random_seed (OpenAI / Mistral names), stop, stream.
/// </summary>
public abstract class GenerationRequest
{
    [JsonPropertyName("model")] public string? Model { get; set; }
    [JsonPropertyName("max_tokens")] public int? MaxTokens { get; set; }
    [JsonPropertyName("temperature")] public double? Temperature { get; set; }
    [JsonPropertyName("top_p")] public double? TopP { get; set; }
    [JsonPropertyName("seed")] public long? Seed { get; set; }
    [JsonPropertyName("random_seed")] public long? RandomSeed { get; set; }
    [JsonPropertyName("stop")] public JsonElement Stop { get; set; }
    [JsonPropertyName("stream")] public bool? Stream { get; set; }
}

public sealed partial class CompletionRequest : GenerationRequest
{
    [JsonPropertyName("prompt")] public JsonElement Prompt { get; set; }
    [JsonPropertyName("n")] public int? N { get; set; }
    [JsonPropertyName("presence_penalty")] public double? PresencePenalty { get; set; }
    [JsonPropertyName("frequency_penalty")] public double? FrequencyPenalty { get; set; }
    [JsonPropertyName("logprobs")] public int? Logprobs { get; set; }
}

public sealed partial class ChatMessage
{
    [JsonPropertyName("role")] public string? Role { get; set; }
    [JsonPropertyName("content")] public JsonElement Content { get; set; }
}

public sealed partial class ChatCompletionRequest : GenerationRequest
{
    [JsonPropertyName("messages")] public List<ChatMessage>? Messages { get; set; }
    [JsonPropertyName("max_completion_tokens")] public int? MaxCompletionTokens { get; set; }
    [JsonPropertyName("n")] public int? N { get; set; }
    [JsonPropertyName("presence_penalty")] public double? PresencePenalty { get; set; }
    [JsonPropertyName("frequency_penalty")] public double? FrequencyPenalty { get; set; }
    [JsonPropertyName("logprobs")] public bool? Logprobs { get; set; }
    [JsonPropertyName("top_logprobs")] public int? TopLogprobs { get; set; }
    [JsonPropertyName("response_format")] public JsonElement ResponseFormat { get; set; }
    [JsonPropertyName("tool_choice")] public JsonElement ToolChoice { get; set; }
}

public sealed record Usage(
    [property: JsonPropertyName("prompt_tokens")] int PromptTokens,
    [property: JsonPropertyName("completion_tokens")] int CompletionTokens,
    [property: JsonPropertyName("total_tokens")] int TotalTokens);

public sealed record CompletionChoice(
    [property: JsonPropertyName("index")] int Index,
    [property: JsonPropertyName("text")] string Text,
    [property: JsonPropertyName("logprobs")] CompletionLogprobs? Logprobs,
    [property: JsonPropertyName("finish_reason")] string? FinishReason);

/// <summary>
/// The fields every response object starts with: id, object ("text_completion", "chat.completion",
/// "chat.completion.chunk"), created (Unix seconds), model. Ordered first: System.Text.Json writes a type's own
/// properties before its base type's, so these carry JsonPropertyOrder -1 (the rest keep 0).
/// </summary>
public abstract record ResponseHead(
    [property: JsonPropertyName("id"), JsonPropertyOrder(-1)] string Id,
    [property: JsonPropertyName("object"), JsonPropertyOrder(-1)] string Object,
    [property: JsonPropertyName("created"), JsonPropertyOrder(-1)] long Created,
    [property: JsonPropertyName("model"), JsonPropertyOrder(-1)] string Model);

public sealed record CompletionResponse(
    string Id, string Object, long Created, string Model,
    [property: JsonPropertyName("choices")] IReadOnlyList<CompletionChoice> Choices,
    [property: JsonPropertyName("usage"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] Usage? Usage) // left out when null: the Mistral SDK rejects "usage": null
    : ResponseHead(Id, Object, Created, Model);

public sealed record ChatMessageOut(
    [property: JsonPropertyName("role")] string? Role,
    [property: JsonPropertyName("content")] string? Content,
    [property: JsonPropertyName("tool_calls"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] IReadOnlyList<ToolCallOut>? ToolCalls = null);

/// <summary>
/// choices[].logprobs of a chat answer or chunk, written last (a base type's properties come after the type's own).
/// Left out when not requested: strict client schemas (e.g. zod's optional object) reject an explicit null.
/// </summary>
public abstract record ChatChoiceLogprobs
{
    [JsonPropertyName("logprobs")][JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public ChatLogprobs? Logprobs { get; init; }
}

public sealed record ChatChoice(
    [property: JsonPropertyName("index")] int Index,
    [property: JsonPropertyName("message")] ChatMessageOut Message,
    [property: JsonPropertyName("finish_reason")] string? FinishReason) : ChatChoiceLogprobs;

public sealed record ChatResponse(
    string Id, string Object, long Created, string Model,
    [property: JsonPropertyName("choices")] IReadOnlyList<ChatChoice> Choices,
    [property: JsonPropertyName("usage")] Usage Usage)
    : ResponseHead(Id, Object, Created, Model);

public sealed record ChatChunkChoice(
    [property: JsonPropertyName("index")] int Index,
    [property: JsonPropertyName("delta")] ChatMessageOut Delta,
    [property: JsonPropertyName("finish_reason")] string? FinishReason) : ChatChoiceLogprobs;

public sealed record ChatChunk(
    string Id, string Object, long Created, string Model,
    [property: JsonPropertyName("choices")] IReadOnlyList<ChatChunkChoice> Choices,
    [property: JsonPropertyName("usage"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] Usage? Usage) // left out when null: the Mistral SDK rejects "usage": null
    : ResponseHead(Id, Object, Created, Model);

/// <summary>
/// A model card: OpenAI's model object (id, object, created, owned_by) with the fields of Mistral's base model card
/// (capabilities, name, description, max_context_length, aliases, deprecation, default_model_temperature, type
/// "base"), which the Mistral SDK requires.
/// </summary>
public sealed record ModelCard(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("object")] string Object,
    [property: JsonPropertyName("created")] long Created,
    [property: JsonPropertyName("owned_by")] string OwnedBy,
    [property: JsonPropertyName("max_context_length")] int MaxContextLength,
    [property: JsonPropertyName("capabilities")] ModelCapabilities Capabilities)
{
    [JsonPropertyName("name")] public string? Name { get; init; }

    [JsonPropertyName("description")] public string? Description { get; init; }

    [JsonPropertyName("aliases")] public IReadOnlyList<string> Aliases { get; init; } = [];

    /// <summary>ISO date the model is deprecated on; never for a local model.</summary>
    [JsonPropertyName("deprecation")] public string? Deprecation { get; init; }

    [JsonPropertyName("default_model_temperature")] public double? DefaultModelTemperature { get; init; }

    /// <summary>Mistral: "base" (a base model card) or "fine-tuned".</summary>
    [JsonPropertyName("type")] public string Type { get; init; } = "base";
}

/// <summary>What a served model can do (Mistral's model capabilities; the ones Bora never offers are false).</summary>
public sealed record ModelCapabilities(
    [property: JsonPropertyName("completion_chat")] bool CompletionChat,
    [property: JsonPropertyName("completion_fim")] bool CompletionFim,
    [property: JsonPropertyName("function_calling")] bool FunctionCalling,
    [property: JsonPropertyName("fine_tuning")] bool FineTuning,
    [property: JsonPropertyName("vision")] bool Vision,
    [property: JsonPropertyName("classification")] bool Classification);

public sealed record ModelList(
    [property: JsonPropertyName("object")] string Object,
    [property: JsonPropertyName("data")] IReadOnlyList<ModelCard> Data);

public sealed record ErrorBody(
    [property: JsonPropertyName("message")] string Message,
    [property: JsonPropertyName("type")] string Type,
    [property: JsonPropertyName("param")] string? Param,
    [property: JsonPropertyName("code")] string? Code);

public sealed record ErrorResponse([property: JsonPropertyName("error")] ErrorBody Error);

public sealed record HealthResponse([property: JsonPropertyName("status")] string Status);

[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.Never, UnmappedMemberHandling = JsonUnmappedMemberHandling.Skip)]
[JsonSerializable(typeof(CompletionRequest))]
[JsonSerializable(typeof(ChatCompletionRequest))]
[JsonSerializable(typeof(CompletionResponse))]
[JsonSerializable(typeof(ChatResponse))]
[JsonSerializable(typeof(ChatChunk))]
[JsonSerializable(typeof(ModelList))]
[JsonSerializable(typeof(ModelCard))]
[JsonSerializable(typeof(ErrorResponse))]
[JsonSerializable(typeof(HealthResponse))]
public sealed partial class ApiJsonContext : JsonSerializerContext;
