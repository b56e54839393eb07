using System.Text.Json;
using Bora.Serving;

namespace Bora.Server;

/// <summary>
/// Writes one chat-shaped answer (chat completion or Mistral FIM) of n choices as the JSON OpenAI clients expect,
/// from the engine's deltas: a whole <c>chat.completion</c> body, or the <c>chat.completion.chunk</c> events of a
/// stream. Each choice has its own <see cref="ChatOutputShaper"/>, so the tool calls of every choice come back as
/// its <c>message.tool_calls</c>. Pure (no I/O), so tests feed it deltas directly.
/// </summary>
/// <remarks>
/// Stream, per choice: <see cref="First"/> (role), a content chunk per <see cref="Delta"/> with text (or with a
/// logprob entry), then <see cref="End(int, GenerationSummary, Usage?)"/>: held-back text of malformed tool calls
/// as content, per tool call one chunk with <c>{index, id, type, function: {name, arguments: ""}}</c> and one with
/// <c>{index, function: {arguments}}</c> (OpenAI's delta shape), the finish chunk (finish_reason, and the usage
/// on the last choice to finish, unless <see cref="IncludeUsage"/>); after every choice, with <see cref="IncludeUsage"/>,
/// <see cref="Tail"/>: a last chunk with empty choices and the usage (OpenAI's shape: the only chunk with usage). Chunks without usage leave the field out (the Mistral SDK rejects
/// <c>"usage": null</c>).
/// </remarks>
public sealed class ChatAnswerWriter : IAnswerWriter
{
    private readonly string _id;
    private readonly long _created;
    private readonly string _model;
    private readonly ChatOutputShaper[] _shapers;
    private readonly ShapedAnswer?[] _answers;
    private readonly List<ChatTokenLogprob>[] _logprobs;

    /// <param name="id">The completion id (chatcmpl-...).</param>
    /// <param name="created">Unix seconds.</param>
    /// <param name="model">The model id.</param>
    /// <param name="shapers">One fresh shaper per choice; choice i is <c>shapers[i]</c>.</param>
    public ChatAnswerWriter(string id, long created, string model, IReadOnlyList<ChatOutputShaper> shapers)
    {
        ArgumentNullException.ThrowIfNull(shapers);
        if (shapers.Count == 0 || shapers.Distinct().Count() != shapers.Count)
        {
            throw new ArgumentException($"expected one distinct shaper per choice; got {shapers.Count} shapers, {shapers.Distinct().Count()} distinct", nameof(shapers));
        }
        _id = id;
        _created = created;
        _model = model;
        _shapers = [.. shapers];
        _answers = new ShapedAnswer?[_shapers.Length];
        _logprobs = [.. _shapers.Select(_ => new List<ChatTokenLogprob>())];
    }

    /// <summary>One choice.</summary>
    public ChatAnswerWriter(string id, long created, string model, ChatOutputShaper shaper)
        : this(id, created, model, [shaper])
    {
    }

    /// <summary>The number of choices.</summary>
    public int Choices => _shapers.Length;

    /// <summary>Whole answers carry <c>choices[].logprobs</c> (the entries fed with the deltas).</summary>
    public bool Logprobs { get; init; }

    /// <summary>stream_options.include_usage: <see cref="Tail"/> sends a last chunk with empty choices and the usage.</summary>
    public bool IncludeUsage { get; init; }

    /// <summary>The stream's first chunk of a choice: role assistant, empty content.</summary>
    public byte[] First(int index = 0) => Chunk(index, new ChatMessageOut("assistant", ""), null, null);

    /// <summary>Feeds one delta of choice <paramref name="index"/> (with its logprob entry, if asked for); returns the chunk to stream now, or null when there is nothing to show.</summary>
    public byte[]? Delta(GenerationDelta delta, int index = 0, ChatTokenLogprob? logprob = null)
    {
        string text = _shapers[index].Push(delta);
        if (logprob is not null)
        {
            _logprobs[index].Add(logprob);
        }
        if (text.Length == 0 && logprob is null)
        {
            return null;
        }
        return Chunk(index, new ChatMessageOut(null, text), null, null, logprob is null ? null : new ChatLogprobs([logprob]));
    }

    /// <summary>
    /// The stream's closing chunks of choice <paramref name="index"/> (see the remarks), once its every delta was fed.
    /// The finish chunk carries <paramref name="usage"/> unless <see cref="IncludeUsage"/> (then only <see cref="Tail"/>
    /// does, as OpenAI sends it: clients such as Microsoft.Extensions.AI add up every usage they see).
    /// </summary>
    public IReadOnlyList<byte[]> End(int index, GenerationSummary summary, Usage? usage) => Closing(index, summary, IncludeUsage ? null : usage);

    /// <summary>One choice's closing chunks and, with <paramref name="includeUsage"/>, the usage chunk (then the only one with usage).</summary>
    public IReadOnlyList<byte[]> End(GenerationSummary summary, Usage usage, bool includeUsage) =>
        includeUsage ? [.. Closing(0, summary, null), UsageChunk(usage)] : Closing(0, summary, usage);

    private List<byte[]> Closing(int index, GenerationSummary summary, Usage? usage)
    {
        ArgumentNullException.ThrowIfNull(summary);
        var answer = Answer(index);
        var events = new List<byte[]>();
        if (answer.HeldText.Length > 0)
        {
            events.Add(Chunk(index, new ChatMessageOut(null, answer.HeldText), null, null));
        }
        for (int i = 0; i < answer.ToolCalls.Count; i++)
        {
            var call = answer.ToolCalls[i];
            events.Add(Chunk(index, new ChatMessageOut(null, null, [new ToolCallOut(i, call.Id, "function", new ToolCallFunctionOut(call.Function.Name, ""))]), null, null));
            events.Add(Chunk(index, new ChatMessageOut(null, null, [new ToolCallOut(i, null, null, new ToolCallFunctionOut(null, call.Function.Arguments))]), null, null));
        }
        events.Add(Chunk(index, new ChatMessageOut(null, null), answer.FinishReasonFor(summary.FinishReason), usage));
        return events;
    }

    /// <summary>After every choice's end: the usage chunk when <see cref="IncludeUsage"/>, else null.</summary>
    public byte[]? Tail(Usage usage) => IncludeUsage ? UsageChunk(usage) : null;

    /// <summary>The whole <c>chat.completion</c> body, once every delta of every choice was fed.</summary>
    public byte[] Whole(IReadOnlyList<GenerationSummary> summaries, Usage usage)
    {
        ArgumentNullException.ThrowIfNull(summaries);
        if (summaries.Count != _shapers.Length)
        {
            throw new ArgumentException($"{summaries.Count} summaries for {_shapers.Length} choices", nameof(summaries));
        }
        var choices = new ChatChoice[summaries.Count];
        for (int i = 0; i < choices.Length; i++)
        {
            var answer = Answer(i);
            var message = new ChatMessageOut("assistant", answer.Content, answer.ToolCalls.Count > 0 ? answer.ToolCalls : null);
            choices[i] = new ChatChoice(i, message, answer.FinishReasonFor(summaries[i].FinishReason))
            {
                Logprobs = Logprobs ? new ChatLogprobs(_logprobs[i]) : null,
            };
        }
        return JsonSerializer.SerializeToUtf8Bytes(new ChatResponse(_id, "chat.completion", _created, _model, choices, usage), ApiJsonContext.Default.ChatResponse);
    }

    /// <summary>The whole body of one choice.</summary>
    public byte[] Whole(GenerationSummary summary, Usage usage) => Whole([summary], usage);

    private ShapedAnswer Answer(int index) => _answers[index] ??= _shapers[index].Finish();

    private byte[] UsageChunk(Usage usage) =>
        JsonSerializer.SerializeToUtf8Bytes(new ChatChunk(_id, "chat.completion.chunk", _created, _model, [], usage), ApiJsonContext.Default.ChatChunk);

    private byte[] Chunk(int index, ChatMessageOut delta, string? finish, Usage? usage, ChatLogprobs? logprobs = null) => JsonSerializer.SerializeToUtf8Bytes(
        new ChatChunk(_id, "chat.completion.chunk", _created, _model, [new ChatChunkChoice(index, delta, finish) { Logprobs = logprobs }], usage),
        ApiJsonContext.Default.ChatChunk);
}
