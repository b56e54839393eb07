using System.Text.Json;
using Bora.Serving;

namespace Bora.Server;

/// <summary>
/// Writes one chat-shaped answer (chat completion or Mistral FIM) as the JSON OpenAI clients expect, from the
/// engine's deltas: a whole <c>chat.completion</c> body, or the <c>chat.completion.chunk</c> events of a stream.
/// Pure (no I/O), so tests feed it deltas directly.
/// </summary>
/// <remarks>
/// Stream: <see cref="First"/> (role), a content chunk per <see cref="Delta"/> with text, then <see cref="End"/>:
/// held-back text of malformed tool calls as content, per tool call one chunk with
/// <c>{index, id, type, function: {name, arguments: ""}}</c> and one with <c>{index, function: {arguments}}</c>
/// (OpenAI's delta shape), the finish chunk (finish_reason, usage), and with <c>include_usage</c> a last chunk
/// with empty choices and the usage.
/// </remarks>
public sealed class ChatAnswerWriter(string id, long created, string model, ChatOutputShaper shaper)
{
    private ShapedAnswer? _answer;

    /// <summary>The stream's first chunk: role assistant, empty content.</summary>
    public byte[] First() => Chunk(new ChatMessageOut("assistant", ""), null, null);

    /// <summary>Feeds one delta; returns the content chunk to stream now, or null when there is no text to show.</summary>
    public byte[]? Delta(GenerationDelta delta)
    {
        string text = shaper.Push(delta);
        return text.Length == 0 ? null : Chunk(new ChatMessageOut(null, text), null, null);
    }

    /// <summary>The stream's closing chunks (see the remarks), once every delta was fed.</summary>
    public IReadOnlyList<byte[]> End(GenerationSummary summary, Usage usage, bool includeUsage)
    {
        var answer = Answer();
        var events = new List<byte[]>();
        if (answer.HeldText.Length > 0)
        {
            events.Add(Chunk(new ChatMessageOut(null, answer.HeldText), null, null));
        }
        for (int i = 0; i < answer.ToolCalls.Count; i++)
        {
            var call = answer.ToolCalls[i];
            events.Add(Chunk(new ChatMessageOut(null, null, [new ToolCallOut(i, call.Id, "function", new ToolCallFunctionOut(call.Function.Name, ""))]), null, null));
            events.Add(Chunk(new ChatMessageOut(null, null, [new ToolCallOut(i, null, null, new ToolCallFunctionOut(null, call.Function.Arguments))]), null, null));
        }
        events.Add(Chunk(new ChatMessageOut(null, null), answer.FinishReasonFor(summary.FinishReason), usage));
        if (includeUsage)
        {
            events.Add(JsonSerializer.SerializeToUtf8Bytes(new ChatChunk(id, "chat.completion.chunk", created, model, [], usage), ApiJsonContext.Default.ChatChunk));
        }
        return events;
    }

    /// <summary>The whole <c>chat.completion</c> body, once every delta was fed.</summary>
    public byte[] Whole(GenerationSummary summary, Usage usage)
    {
        var answer = Answer();
        var message = new ChatMessageOut("assistant", answer.Content, answer.ToolCalls.Count > 0 ? answer.ToolCalls : null);
        return JsonSerializer.SerializeToUtf8Bytes(
            new ChatResponse(id, "chat.completion", created, model, [new ChatChoice(0, message, answer.FinishReasonFor(summary.FinishReason))], usage),
            ApiJsonContext.Default.ChatResponse);
    }

    private ShapedAnswer Answer() => _answer ??= shaper.Finish();

    private byte[] Chunk(ChatMessageOut delta, string? finish, Usage? usage) => JsonSerializer.SerializeToUtf8Bytes(
        new ChatChunk(id, "chat.completion.chunk", created, model, [new ChatChunkChoice(0, delta, finish)], usage), ApiJsonContext.Default.ChatChunk);
}
