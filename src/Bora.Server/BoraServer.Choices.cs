using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Bora.Generation;
using Bora.Serving;
using Bora.Tokenizers;
using Microsoft.AspNetCore.Http;

namespace Bora.Server;

/// <summary>One choice to generate: its sampling (seed derived per choice) and its constraint / logprobs.</summary>
internal sealed record ChoiceSpec(SamplingOptions Sampling, SubmitOptions? Extras);

/// <summary>
/// Turns the engine's deltas of the n choices of one request into wire JSON: the stream's events, or the whole
/// body. <see cref="BoraServer"/>'s one submit/stream loop (RunChoices) drives it; every per-choice call for a
/// given index comes from one task at a time, calls for different indices may run concurrently.
/// </summary>
internal interface IAnswerWriter
{
    /// <summary>Stream: the first chunk of choice <paramref name="index"/> (null: none).</summary>
    byte[]? First(int index);

    /// <summary>Feeds one delta of choice <paramref name="index"/> with its logprob entry (null when not asked); returns the chunk to stream now, or null.</summary>
    byte[]? Delta(GenerationDelta delta, int index, ChatTokenLogprob? logprob);

    /// <summary>Stream: the closing chunks of choice <paramref name="index"/>; <paramref name="usage"/> (the request's) only on the last choice to finish.</summary>
    IReadOnlyList<byte[]> End(int index, GenerationSummary summary, Usage? usage);

    /// <summary>Stream: a chunk after every choice's end (include_usage), or null.</summary>
    byte[]? Tail(Usage usage);

    /// <summary>The whole body once every delta of every choice was fed.</summary>
    byte[] Whole(IReadOnlyList<GenerationSummary> summaries, Usage usage);
}

/// <summary>Legacy text completions (<c>text_completion</c>): the whole body and its stream chunks have the same shape; logprobs in the legacy form.</summary>
internal sealed class CompletionAnswerWriter(string id, long created, string model, int choices, bool logprobs) : IAnswerWriter
{
    private readonly StringBuilder[] _text = [.. Enumerable.Range(0, choices).Select(_ => new StringBuilder())];
    private readonly List<ChatTokenLogprob>[] _logprobs = [.. Enumerable.Range(0, choices).Select(_ => new List<ChatTokenLogprob>())];
    private readonly int[] _offsets = new int[choices]; // text offset each streamed choice reached

    public byte[]? First(int index) => null;

    public byte[]? Delta(GenerationDelta delta, int index, ChatTokenLogprob? logprob)
    {
        _text[index].Append(delta.Text);
        if (logprob is not null)
        {
            _logprobs[index].Add(logprob);
        }
        if (delta.Text.Length == 0 && logprob is null)
        {
            return null;
        }
        var lps = logprob is null ? null : BoraServer.LegacyLogprobs([logprob], _offsets[index]);
        _offsets[index] += delta.Text.Length;
        return Body([new CompletionChoice(index, delta.Text, lps, null)], null);
    }

    public IReadOnlyList<byte[]> End(int index, GenerationSummary summary, Usage? usage) =>
        [Body([new CompletionChoice(index, "", null, BoraServer.Finish(summary.FinishReason))], usage)];

    public byte[]? Tail(Usage usage) => null;

    public byte[] Whole(IReadOnlyList<GenerationSummary> summaries, Usage usage) => Body(
        [.. summaries.Select((s, i) => new CompletionChoice(i, _text[i].ToString(), logprobs ? BoraServer.LegacyLogprobs(_logprobs[i], 0) : null, BoraServer.Finish(s.FinishReason)))],
        usage);

    private byte[] Body(IReadOnlyList<CompletionChoice> choices, Usage? usage) => JsonSerializer.SerializeToUtf8Bytes(
        new CompletionResponse(id, "text_completion", created, model, choices, usage), ApiJsonContext.Default.CompletionResponse);
}

public sealed partial class BoraServer
{
    /// <summary>n choices: seeds derived per choice (<see cref="GenerationFields.ChoiceSeed"/>), a fresh constraint each.</summary>
    private static ChoiceSpec[] Specs(SamplingOptions sampling, int n, int? topLogprobs, Func<Bora.Generation.Constraints.ITokenConstraint>? constraint) =>
        [.. Enumerable.Range(0, n).Select(i => new ChoiceSpec(sampling with { Seed = GenerationFields.ChoiceSeed(sampling.Seed, i) },
            topLogprobs is null && constraint is null ? null : new SubmitOptions { TopLogprobs = topLogprobs, Constraint = constraint?.Invoke() }))];

    /// <summary>
    /// The one submit/stream loop of every generating route: runs n choices of one prompt as n engine sequences
    /// and answers one JSON body, or an SSE stream: per choice the writer's first chunk, its delta chunks (chunks
    /// of different choices interleave, each naming its index), its closing chunks — the last choice to finish
    /// carries the request's usage — then the writer's tail, then [DONE]. Usage counts the prompt once and the
    /// completion tokens of every choice. Each choice times its own tokens (TTFT, inter-token latency). A choice
    /// that fails cancels the others; the request timeout covers queueing and generation (408, or an error event
    /// once streaming).
    /// </summary>
    private async Task RunChoices(HttpContext ctx, InferenceEngine engine, TokenId[] prompt, IReadOnlyList<ChoiceSpec> specs, bool stream, IAnswerWriter writer)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted);
        timeout.CancelAfter(_options.RequestTimeout);
        var handles = await Submit(ctx, engine, prompt, specs, timeout).ConfigureAwait(false);
        var summaries = new GenerationSummary[handles.Length];
        int running = handles.Length;
        var ending = new Lock();
        Channel<byte[]>? events = stream ? Channel.CreateUnbounded<byte[]>(new UnboundedChannelOptions { SingleReader = true }) : null;

        // Feeds one choice's deltas to the writer; when streaming, its chunks go to the events channel.
        async Task Pump(int index)
        {
            try
            {
                var clock = new TokenClock(_metrics);
                if (writer.First(index) is { } first)
                {
                    events?.Writer.TryWrite(first);
                }
                TokenId previous = prompt[^1];
                await foreach (var d in handles[index].Deltas.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
                {
                    clock.Observe(d);
                    ChatTokenLogprob? lp = null;
                    if (d.Token is { } token)
                    {
                        if (d.Logprob is { } raw)
                        {
                            lp = ToWire(engine.Tokenizer, raw, previous);
                        }
                        previous = token;
                    }
                    if (writer.Delta(d, index, lp) is { } chunk)
                    {
                        events?.Writer.TryWrite(chunk);
                    }
                }
                summaries[index] = await handles[index].Completion.ConfigureAwait(false);
                if (events is null)
                {
                    return;
                }
                // One choice ends at a time: the last one's closing chunks (with the usage) and the tail come after
                // every other choice's closing chunks.
                lock (ending)
                {
                    bool last = --running == 0;
                    var usage = last ? Finished(ctx, summaries) : null;
                    foreach (var e in writer.End(index, summaries[index], usage))
                    {
                        events.Writer.TryWrite(e);
                    }
                    if (usage is not null)
                    {
                        if (writer.Tail(usage) is { } tail)
                        {
                            events.Writer.TryWrite(tail);
                        }
                        events.Writer.TryComplete();
                    }
                }
            }
            catch (Exception e) when (events is not null && e is not OutOfMemoryException)
            {
                events.Writer.TryComplete(e);
            }
        }

        if (events is null)
        {
            try
            {
                await Task.WhenAll(Enumerable.Range(0, handles.Length).Select(Pump)).ConfigureAwait(false);
                var body = writer.Whole(summaries, Finished(ctx, summaries));
                ctx.Response.StatusCode = 200;
                ctx.Response.ContentType = "application/json";
                await ctx.Response.Body.WriteAsync(body, ctx.RequestAborted).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!ctx.RequestAborted.IsCancellationRequested)
            {
                throw new ApiException(408, "timeout_error", $"the request ran longer than {_options.RequestTimeout}", code: "timeout");
            }
            finally
            {
                await timeout.CancelAsync().ConfigureAwait(false); // frees the other choices when one failed
            }
            return;
        }

        StartStream(ctx);
        var output = ctx.Response.Body;
        var ct = ctx.RequestAborted;
        var pumps = Enumerable.Range(0, handles.Length).Select(Pump).ToArray();
        try
        {
            await foreach (var json in events.Reader.ReadAllAsync(ct).ConfigureAwait(false))
            {
                // Chunks already queued (n choices, or a token and its finish chunk of one engine step) share one flush.
                await Event(output, json, ct, flush: !events.Reader.TryPeek(out _)).ConfigureAwait(false);
            }
            await output.WriteAsync("data: [DONE]\n\n"u8.ToArray(), ct).ConfigureAwait(false);
            await output.FlushAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            await StreamTimedOut(output).ConfigureAwait(false);
        }
        finally
        {
            await timeout.CancelAsync().ConfigureAwait(false);
            await Task.WhenAll(pumps).ConfigureAwait(false); // streaming pumps never throw
        }
    }

    /// <summary>
    /// Submits every choice and waits for their admission; refusals become API errors (and cancel the choices already
    /// queued). With n &gt; 1 and a prompt of at least one full KV block, choices 1 .. n-1 share choice 0's prompt blocks.
    /// </summary>
    private async Task<GenerationHandle[]> Submit(HttpContext ctx, InferenceEngine engine, TokenId[] prompt, IReadOnlyList<ChoiceSpec> specs, CancellationTokenSource timeout)
    {
        var handles = new GenerationHandle[specs.Count];
        try
        {
            handles[0] = engine.Submit(prompt, specs[0].Sampling, specs[0].Extras, timeout.Token);
            if (specs.Count > 1 && (prompt.Length - 1) / engine.KvPool.BlockSize > 0)
            {
                // The other choices are queued once choice 0's prompt is prefilled (its first delta is ready): the
                // prefix cache then gives them its full prompt blocks, shared, instead of computing them n times.
                await handles[0].Admitted.ConfigureAwait(false);
                await handles[0].Deltas.WaitToReadAsync(timeout.Token).ConfigureAwait(false);
            }
            for (int i = 1; i < specs.Count; i++)
            {
                handles[i] = engine.Submit(prompt, specs[i].Sampling, specs[i].Extras, timeout.Token);
            }
            await Task.WhenAll(handles.Select(h => h.Admitted)).ConfigureAwait(false);
            return handles;
        }
        catch (ArgumentException e)
        {
            await timeout.CancelAsync().ConfigureAwait(false);
            throw ApiException.BadRequest(e.Message);
        }
        catch (EngineRefusedException e)
        {
            await timeout.CancelAsync().ConfigureAwait(false);
            throw e.Reason switch
            {
                RefusalReason.ContextLength or RefusalReason.KvCache => ApiException.BadRequest(e.Message, "max_tokens", "context_length_exceeded"),
                RefusalReason.QueueFull => new ApiException(429, "rate_limit_error", e.Message, code: "queue_full"),
                _ => new ApiException(503, "server_error", e.Message, code: "unavailable"),
            };
        }
        catch (OperationCanceledException) when (!ctx.RequestAborted.IsCancellationRequested)
        {
            throw new ApiException(408, "timeout_error", "the request timed out in the queue", code: "timeout");
        }
    }

    /// <summary>
    /// The usage of a finished request (the prompt once, the completion tokens of every choice): counted in the
    /// metrics and kept for the request's log line.
    /// </summary>
    private Usage Finished(HttpContext ctx, IReadOnlyList<GenerationSummary> summaries)
    {
        int prompt = summaries[0].PromptTokens, completion = summaries.Sum(s => s.CompletionTokens);
        _metrics.CountTokens(prompt, completion);
        var usage = new Usage(prompt, completion, prompt + completion);
        ctx.Items[UsageKey] = usage;
        return usage;
    }

    private static void StartStream(HttpContext ctx)
    {
        ctx.Response.StatusCode = 200;
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
    }

    /// <summary>Timed out mid-stream: ends the stream with an error event.</summary>
    private async Task StreamTimedOut(Stream body)
    {
        var err = JsonSerializer.SerializeToUtf8Bytes(new ErrorResponse(new ErrorBody($"the request ran longer than {_options.RequestTimeout}", "timeout_error", null, "timeout")), ApiJsonContext.Default.ErrorResponse);
        await Event(body, err, CancellationToken.None).ConfigureAwait(false);
    }

    /// <summary>A token's wire form: its text as it follows <paramref name="previous"/> (incomplete UTF-8 shows as U+FFFD), bytes, log-probability, alternatives.</summary>
    private static ChatTokenLogprob ToWire(ITokenizer tokenizer, TokenLogprob lp, TokenId previous)
    {
        (string Text, int[] Bytes) Piece(TokenId id)
        {
            byte[] b = tokenizer.TokenBytes(id, previous);
            return (Encoding.UTF8.GetString(b), [.. b.Select(x => (int)x)]);
        }
        var (text, bytes) = Piece(lp.Id);
        var top = new ChatTopLogprob[lp.Top.Count];
        for (int i = 0; i < top.Length; i++)
        {
            var (t, b) = Piece(lp.Top[i].Id);
            top[i] = new ChatTopLogprob(t, lp.Top[i].Logprob, b);
        }
        return new ChatTokenLogprob(text, lp.Logprob, bytes, top);
    }

    /// <summary>Legacy completions logprobs from the chat form; text offsets count from <paramref name="offset"/>.</summary>
    internal static CompletionLogprobs LegacyLogprobs(IReadOnlyList<ChatTokenLogprob> tokens, int offset)
    {
        var offsets = new List<int>(tokens.Count);
        foreach (var t in tokens)
        {
            offsets.Add(offset);
            offset += t.Token.Length;
        }
        return new CompletionLogprobs(
            [.. tokens.Select(t => t.Token)],
            [.. tokens.Select(t => t.Logprob)],
            [.. tokens.Select(t =>
            {
                var d = new Dictionary<string, float>(StringComparer.Ordinal);
                foreach (var a in t.TopLogprobs)
                {
                    d.TryAdd(a.Token, a.Logprob);
                }
                return d;
            })],
            offsets);
    }
}
