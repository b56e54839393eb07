using System.Diagnostics;
using System.Text.Json;
using Bora.Chat;
using Bora.Serving;
using Bora.Tokenizers;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Bora.Server;

// Chat completions with tools, prefix and safe_prompt; FIM; tokenize/detokenize; /metrics.
public sealed partial class BoraServer
{
    private const string UsageKey = "bora.usage";

    private static readonly HashSet<string> KnownRoutes = new(StringComparer.Ordinal)
    {
        "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/fim/completions", "/v1/tokenize", "/v1/detokenize",
    };

    private readonly ServerMetrics _metrics = new();

    /// <summary>The request, token and latency metrics that GET /metrics reports.</summary>
    public ServerMetrics Metrics => _metrics;

    /// <summary>The route label of a request: its path for a known route, "other" for anything else (bounded label values).</summary>
    private static string MetricRoute(PathString path) =>
        path.Value is not { } p ? "other"
        : KnownRoutes.Contains(p) ? p
        : p.StartsWith("/v1/models/", StringComparison.Ordinal) ? "/v1/models/{id}"
        : "other";

    private void MapMoreRoutes(WebApplication app)
    {
        app.MapPost("/v1/fim/completions", FimCompletions);
        app.MapPost("/v1/tokenize", Tokenize);
        app.MapPost("/v1/detokenize", Detokenize);
        app.MapGet("/metrics", async ctx =>
        {
            var engine = _engine;
            var gauges = engine is null ? default
                : new EngineGauges(engine.WaitingCount, engine.RunningCount, engine.KvBlocksUsed, engine.KvPool.Blocks, engine.PrefixQueriedTokens, engine.PrefixCachedTokens);
            ctx.Response.StatusCode = 200;
            ctx.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
            await ctx.Response.WriteAsync(_metrics.Write(gauges), ctx.RequestAborted).ConfigureAwait(false);
        });
    }

    private async Task ChatCompletions(HttpContext ctx)
    {
        var engine = RequireEngine();
        var req = await ReadBody(ctx, ApiJsonContext.Default.ChatCompletionRequest).ConfigureAwait(false);
        CheckModel(req.Model);
        int n = GenerationFields.Choices(req.N, _options.MaxChoices);
        int? top = GenerationFields.ChatTopLogprobs(req.Logprobs, req.TopLogprobs);
        bool stream = req.Stream == true;
        if (req.StreamOptions is not null && !stream)
        {
            throw ApiException.BadRequest("stream_options is only allowed when stream is true", "stream_options");
        }
        var chat = ChatRequestMapping.ToChatRequest(req.Messages, req.Tools, req.SafePrompt == true);
        var constraint = GenerationFields.Constraint(req.ResponseFormat, [.. chat.Tools.Select(t => t.Name)], req.ToolChoice, engine.Tokenizer, req.Tools);
        var tokens = RenderChat(engine, chat);
        var sampling = GenerationFields.WithPenalties(
            Sampling(engine, tokens.Length, req.MaxCompletionTokens ?? req.MaxTokens, req.Temperature, req.TopP, req.Seed ?? req.RandomSeed, req.Stop, _options.DefaultMaxTokens),
            req.PresencePenalty, req.FrequencyPenalty);
        // One shaper per choice: forced (tool_choice) or free tool calls of each choice become its message.tool_calls.
        var writer = new ChatAnswerWriter("chatcmpl-" + NextId(), DateTimeOffset.UtcNow.ToUnixTimeSeconds(), _modelId,
            [.. Enumerable.Range(0, n).Select(_ => new ChatOutputShaper(engine.Tokenizer, parseTools: chat.Tools.Count > 0))])
        {
            Logprobs = top is not null,
            IncludeUsage = req.StreamOptions?.IncludeUsage == true,
        };
        await RunChoices(ctx, engine, tokens, Specs(sampling, n, top, constraint), stream, writer).ConfigureAwait(false);
    }

    private async Task FimCompletions(HttpContext ctx)
    {
        var engine = RequireEngine();
        var req = await ReadBody(ctx, ExtraApiJsonContext.Default.FimCompletionRequest).ConfigureAwait(false);
        CheckModel(req.Model);
        string prompt = RequestValidation.PromptText(req.Prompt);
        var tokens = FimTokens(engine, prompt, req.Suffix, "prompt");
        var sampling = Sampling(engine, tokens.Length, req.MaxTokens, req.Temperature, req.TopP, req.RandomSeed ?? req.Seed, req.Stop, _options.DefaultMaxTokens);
        var writer = new ChatAnswerWriter("fim-" + NextId(), DateTimeOffset.UtcNow.ToUnixTimeSeconds(), _modelId, new ChatOutputShaper(engine.Tokenizer, parseTools: false));
        await RunChoices(ctx, engine, tokens, Specs(sampling, 1, null, null), req.Stream == true, writer).ConfigureAwait(false);
    }

    private async Task Tokenize(HttpContext ctx)
    {
        var engine = RequireEngine();
        var req = await ReadBody(ctx, ExtraApiJsonContext.Default.TokenizeRequest).ConfigureAwait(false);
        CheckModel(req.Model);
        bool hasPrompt = req.Prompt.ValueKind is not (JsonValueKind.Undefined or JsonValueKind.Null);
        if (hasPrompt == (req.Messages is not null))
        {
            throw ApiException.BadRequest("give either prompt (a string) or messages (a chat), not both or neither", hasPrompt ? "messages" : "prompt");
        }
        TokenId[] tokens = hasPrompt
            ? engine.Tokenizer.Encode(RequestValidation.PromptText(req.Prompt), addBos: req.AddSpecialTokens ?? true)
            : RenderChat(engine, ChatRequestMapping.ToChatRequest(req.Messages, req.Tools));
        var ids = new int[tokens.Length];
        for (int i = 0; i < ids.Length; i++)
        {
            ids[i] = tokens[i].Value;
        }
        await WriteJson(ctx, 200, new TokenizeResponse(ids, ids.Length, engine.ContextLength), ExtraApiJsonContext.Default.TokenizeResponse).ConfigureAwait(false);
    }

    private async Task Detokenize(HttpContext ctx)
    {
        var engine = RequireEngine();
        var req = await ReadBody(ctx, ExtraApiJsonContext.Default.DetokenizeRequest).ConfigureAwait(false);
        CheckModel(req.Model);
        if (req.Tokens.ValueKind != JsonValueKind.Array)
        {
            throw ApiException.BadRequest($"tokens is a JSON {req.Tokens.ValueKind}; expected an array of token ids", "tokens");
        }
        int vocab = engine.Tokenizer.VocabSize;
        var ids = new TokenId[req.Tokens.GetArrayLength()];
        int i = 0;
        foreach (var e in req.Tokens.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int id) || id < 0 || id >= vocab)
            {
                throw ApiException.BadRequest($"tokens[{i}] is {e.GetRawText()}; expected an integer token id in [0, {vocab - 1}]", "tokens");
            }
            ids[i++] = new TokenId(id);
        }
        await WriteJson(ctx, 200, new DetokenizeResponse(engine.Tokenizer.Decode(ids)), ExtraApiJsonContext.Default.DetokenizeResponse).ConfigureAwait(false);
    }

    /// <summary>Prompt tokens of a chat; a chat the model's format cannot render is a 400.</summary>
    private TokenId[] RenderChat(InferenceEngine engine, ChatRequest chat)
    {
        try
        {
            return _renderer.Render(chat, engine.Tokenizer);
        }
        catch (ArgumentException e)
        {
            throw ApiException.BadRequest(e.Message, "messages");
        }
    }

    /// <summary>Fill-in-the-middle prompt tokens (mistral-common's encode_fim); 400 when the model has no FIM tokens.</summary>
    private TokenId[] FimTokens(InferenceEngine engine, string prompt, string? suffix, string param)
    {
        if (_renderer is not MistralChatRenderer mistral)
        {
            throw ApiException.BadRequest("fill-in-the-middle needs the Mistral prompt format; this server renders prompts with a custom renderer", param, "fim_not_supported");
        }
        try
        {
            return mistral.For(engine.Tokenizer).RenderFim(new FimRequest(prompt, suffix)).Tokens;
        }
        catch (ChatRequestException e)
        {
            throw ApiException.BadRequest(
                $"the model '{_modelId}' does not support fill-in-the-middle (it needs the [SUFFIX] and [PREFIX] control tokens of a v3+ Mistral tokenizer, as Codestral has): {e.Message}",
                param, "fim_not_supported");
        }
    }

    /// <summary>Times one choice's tokens into the time-to-first-token and inter-token histograms.</summary>
    private sealed class TokenClock(ServerMetrics metrics)
    {
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private double _last = -1;

        /// <summary>Records a delta that carries a generated token (text-only tail flushes are not tokens).</summary>
        public void Observe(GenerationDelta delta)
        {
            if (delta.Token is null)
            {
                return;
            }
            double now = _clock.Elapsed.TotalSeconds;
            if (_last < 0)
            {
                metrics.TimeToFirstToken.Observe(now);
            }
            else
            {
                metrics.InterTokenLatency.Observe(now - _last);
            }
            _last = now;
        }
    }
}
