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

/// <summary>What one choice produced (non-streaming).</summary>
internal sealed class ChoiceOutput(int index)
{
    public int Index { get; } = index;

    public StringBuilder Text { get; } = new();

    /// <summary>One entry per generated token (EOS excluded) when logprobs were asked for.</summary>
    public List<ChatTokenLogprob> Logprobs { get; } = [];

    public string? FinishReason { get; set; }
}

/// <summary>A streamed piece of one choice: its index, new text, the logprobs of its tokens (or null), the finish reason on its last chunk.</summary>
internal readonly record struct ChoicePiece(int Index, string Text, IReadOnlyList<ChatTokenLogprob>? Logprobs, string? FinishReason);

public sealed partial class BoraServer
{
    /// <summary>
    /// Runs n choices of one prompt as n engine sequences and answers one JSON body (<paramref name="whole"/>)
    /// or an SSE stream: per choice the <paramref name="first"/> chunk, then its pieces (chunks of different
    /// choices interleave, each naming its index), its finish chunk; the last finish chunk carries the summed
    /// usage; then [DONE]. Usage counts the prompt once and the completion tokens of every choice.
    /// </summary>
    private async Task RunChoices(HttpContext ctx, InferenceEngine engine, TokenId[] prompt, IReadOnlyList<ChoiceSpec> specs, bool stream,
        Func<IReadOnlyList<ChoiceOutput>, Usage, byte[]> whole, Func<ChoicePiece, Usage?, byte[]> chunk, Func<int, byte[]>? first)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted);
        timeout.CancelAfter(_options.RequestTimeout);
        var handles = new GenerationHandle[specs.Count];
        try
        {
            for (int i = 0; i < specs.Count; i++)
            {
                handles[i] = engine.Submit(prompt, specs[i].Sampling, specs[i].Extras, timeout.Token);
            }
            await Task.WhenAll(handles.Select(h => h.Admitted)).ConfigureAwait(false);
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

        if (!stream)
        {
            var outputs = new ChoiceOutput[handles.Length];
            try
            {
                var summaries = await Task.WhenAll(handles.Select((h, i) => Collect(engine.Tokenizer, prompt[^1], h, outputs[i] = new ChoiceOutput(i)))).ConfigureAwait(false);
                ctx.Response.StatusCode = 200;
                ctx.Response.ContentType = "application/json";
                await ctx.Response.Body.WriteAsync(whole(outputs, TotalUsage(summaries)), ctx.RequestAborted).ConfigureAwait(false);
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

        ctx.Response.StatusCode = 200;
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        var body = ctx.Response.Body;
        var ct = ctx.RequestAborted;
        var events = Channel.CreateUnbounded<byte[]>(new UnboundedChannelOptions { SingleReader = true });
        var summariesSoFar = new GenerationSummary?[handles.Length];
        int running = handles.Length;

        async Task Pump(int index)
        {
            try
            {
                if (first is not null)
                {
                    events.Writer.TryWrite(first(index));
                }
                TokenId previous = prompt[^1];
                await foreach (var d in handles[index].Deltas.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
                {
                    List<ChatTokenLogprob>? lps = null;
                    if (d.Logprob is { } lp && d.Token is { } tok)
                    {
                        lps = [ToWire(engine.Tokenizer, lp, previous)];
                    }
                    if (d.Token is { } t)
                    {
                        previous = t;
                    }
                    if (d.Text.Length > 0 || lps is not null)
                    {
                        events.Writer.TryWrite(chunk(new ChoicePiece(index, d.Text, lps, null), null));
                    }
                }
                var summary = await handles[index].Completion.ConfigureAwait(false);
                summariesSoFar[index] = summary;
                bool last = Interlocked.Decrement(ref running) == 0;
                events.Writer.TryWrite(chunk(new ChoicePiece(index, "", null, Finish(summary.FinishReason)),
                    last ? TotalUsage([.. summariesSoFar.Select(s => s!)]) : null));
                if (last)
                {
                    events.Writer.TryComplete();
                }
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                events.Writer.TryComplete(e);
            }
        }

        var pumps = Enumerable.Range(0, handles.Length).Select(Pump).ToArray();
        try
        {
            await foreach (var json in events.Reader.ReadAllAsync(ct).ConfigureAwait(false))
            {
                await Event(body, json, ct).ConfigureAwait(false);
            }
            await body.WriteAsync("data: [DONE]\n\n"u8.ToArray(), ct).ConfigureAwait(false);
            await body.FlushAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            // timed out mid-stream: end the stream with an error event
            var err = JsonSerializer.SerializeToUtf8Bytes(new ErrorResponse(new ErrorBody($"the request ran longer than {_options.RequestTimeout}", "timeout_error", null, "timeout")), ApiJsonContext.Default.ErrorResponse);
            await Event(body, err, CancellationToken.None).ConfigureAwait(false);
        }
        finally
        {
            await timeout.CancelAsync().ConfigureAwait(false);
            await Task.WhenAll(pumps).ConfigureAwait(false); // pumps never throw
        }
    }

    private static async Task<GenerationSummary> Collect(ITokenizer tokenizer, TokenId previous, GenerationHandle handle, ChoiceOutput output)
    {
        await foreach (var d in handle.Deltas.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
        {
            output.Text.Append(d.Text);
            if (d.Token is { } t)
            {
                if (d.Logprob is { } lp)
                {
                    output.Logprobs.Add(ToWire(tokenizer, lp, previous));
                }
                previous = t;
            }
        }
        var summary = await handle.Completion.ConfigureAwait(false);
        output.FinishReason = Finish(summary.FinishReason);
        return summary;
    }

    private static Usage TotalUsage(IReadOnlyList<GenerationSummary> summaries)
    {
        int prompt = summaries[0].PromptTokens, completion = summaries.Sum(s => s.CompletionTokens);
        return new Usage(prompt, completion, prompt + completion);
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
    private static CompletionLogprobs? LegacyLogprobs(IReadOnlyList<ChatTokenLogprob>? tokens, int offset)
    {
        if (tokens is null)
        {
            return null;
        }
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
