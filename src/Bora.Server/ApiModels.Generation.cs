using System.Text.Json.Serialization;

namespace Bora.Server;

// Wire types of the log-probabilities in responses (OpenAI's shapes).

/// <summary>One alternative: the token's text, its log-probability, its UTF-8 bytes.</summary>
public sealed record ChatTopLogprob(
    [property: JsonPropertyName("token")] string Token,
    [property: JsonPropertyName("logprob")] float Logprob,
    [property: JsonPropertyName("bytes")] IReadOnlyList<int> Bytes);

/// <summary>One generated token with its log-probability and the top alternatives of its step.</summary>
public sealed record ChatTokenLogprob(
    [property: JsonPropertyName("token")] string Token,
    [property: JsonPropertyName("logprob")] float Logprob,
    [property: JsonPropertyName("bytes")] IReadOnlyList<int> Bytes,
    [property: JsonPropertyName("top_logprobs")] IReadOnlyList<ChatTopLogprob> TopLogprobs);

/// <summary><c>choices[].logprobs</c> of a chat completion (and of a chunk: the tokens of that chunk).</summary>
public sealed record ChatLogprobs([property: JsonPropertyName("content")] IReadOnlyList<ChatTokenLogprob> Content);

/// <summary><c>choices[].logprobs</c> of a legacy text completion: parallel lists, one entry per token.</summary>
public sealed record CompletionLogprobs(
    [property: JsonPropertyName("tokens")] IReadOnlyList<string> Tokens,
    [property: JsonPropertyName("token_logprobs")] IReadOnlyList<float> TokenLogprobs,
    [property: JsonPropertyName("top_logprobs")] IReadOnlyList<Dictionary<string, float>> TopLogprobs,
    [property: JsonPropertyName("text_offset")] IReadOnlyList<int> TextOffset);
