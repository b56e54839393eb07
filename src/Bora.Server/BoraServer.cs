using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Bora.Chat;
using Bora.Generation;
using Bora.Loading;
using Bora.Serving;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Bora.Server;

/// <summary>An error answered in OpenAI's shape with an HTTP status.</summary>
public sealed class ApiException(int status, string type, string message, string? param = null, string? code = null) : Exception(message)
{
    public int Status { get; } = status;

    public string Type { get; } = type;

    public string? Param { get; } = param;

    public string? Code { get; } = code;

    public static ApiException BadRequest(string message, string? param = null, string? code = null) => new(400, "invalid_request_error", message, param, code);
}

/// <summary>
/// <c>bora serve</c>: an OpenAI-compatible HTTP API (ASP.NET Core minimal APIs on Kestrel) over an
/// <see cref="InferenceEngine"/>. The model loads in the background: /health answers 503 until it is
/// ready, then 200. Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /v1/models/{id}, GET /health,
/// and (BoraServer.Routes.cs) POST /v1/fim/completions, /v1/tokenize, /v1/detokenize, GET /metrics.
/// </summary>
public sealed partial class BoraServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ServerOptions _options;
    private readonly TextWriter _log;
    private readonly byte[]? _keyHash;
    private volatile IChatPromptRenderer _renderer;
    private readonly bool _defaultRenderer;
    private readonly Lock _logGate = new();
    private volatile InferenceEngine? _engine;
    private volatile string? _loadError;
    private string _modelId = "bora";
    private long _requestIds;

    private BoraServer(WebApplication app, ServerOptions options, TextWriter log, IChatPromptRenderer? renderer)
    {
        _app = app;
        _options = options;
        _log = log;
        _renderer = renderer ?? new MistralChatRenderer();
        _defaultRenderer = renderer is null;
        _keyHash = string.IsNullOrEmpty(options.ApiKey) ? null : SHA256.HashData(Encoding.UTF8.GetBytes(options.ApiKey));
    }

    /// <summary>http://host:port/ actually bound.</summary>
    public Uri BaseAddress { get; private set; } = null!;

    /// <summary>Completes when the model is loaded and the engine runs (faults when loading failed).</summary>
    public Task Ready { get; private set; } = Task.CompletedTask;

    /// <summary>The engine once loaded.</summary>
    public InferenceEngine? Engine => _engine;

    /// <summary>
    /// Starts listening at once and loads the model with <paramref name="load"/> on a background thread.
    /// </summary>
    /// <param name="options">Address, key, limits.</param>
    /// <param name="load">Loads the model (e.g. <c>() =&gt; ModelLoader.Load(path)</c>).</param>
    /// <param name="log">Receives one line per request, and load messages.</param>
    /// <param name="renderer">Chat template; null = <see cref="MistralChatRenderer"/> of the loaded model's chat version (<see cref="LoadedModel.ChatVersion"/>).</param>
    public static async Task<BoraServer> StartAsync(ServerOptions options, Func<LoadedModel> load, TextWriter log, IChatPromptRenderer? renderer = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(load);
        ArgumentNullException.ThrowIfNull(log);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = options.MaxBodyBytes;
            k.AddServerHeader = false;
            if (options.Host == "localhost")
            {
                k.ListenLocalhost(options.Port);
            }
            else if (IPAddress.TryParse(options.Host, out var ip))
            {
                k.Listen(ip, options.Port);
            }
            else
            {
                throw new ArgumentException($"--host '{options.Host}' is not an IP address or 'localhost'");
            }
        });
        var app = builder.Build();
        var server = new BoraServer(app, options, log, renderer);
        server.Map(app);
        await app.StartAsync().ConfigureAwait(false);
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        server.BaseAddress = new Uri(address.Replace("[::]", "127.0.0.1", StringComparison.Ordinal).TrimEnd('/') + "/");
        server.Ready = Task.Run(() =>
        {
            try
            {
                var loaded = load();
                server._modelId = options.ModelId ?? Path.GetFileNameWithoutExtension(loaded.Source.Path.TrimEnd('/', '\\'));
                if (server._defaultRenderer)
                {
                    server._renderer = new MistralChatRenderer(loaded.ChatVersion);
                }
                var engine = new InferenceEngine(loaded.Model, loaded.Tokenizer, options.Engine);
                if (options.WarmUp > TimeSpan.Zero)
                {
                    try
                    {
                        var clock = Stopwatch.StartNew();
                        int rounds = engine.WarmUp(options.WarmUp);
                        server.Log(string.Create(CultureInfo.InvariantCulture, $"warmed up in {clock.ElapsedMilliseconds} ms ({rounds} rounds of 2 throwaway generations)"));
                    }
                    catch
                    {
                        engine.Dispose();
                        throw;
                    }
                }
                server._engine = engine;
                server.Log($"model {server._modelId} ready: context {server._engine.ContextLength}, KV pool {server._engine.KvPool.Blocks} blocks of {server._engine.KvPool.BlockSize}");
            }
            catch (Exception e)
            {
                server._loadError = e.Message;
                server.Log($"model failed to load: {e.Message}");
                throw;
            }
        });
        return server;
    }

    /// <summary>Completes when the host stops.</summary>
    public Task WaitForShutdownAsync(CancellationToken cancellationToken = default) => _app.WaitForShutdownAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        try
        {
            using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await _app.StopAsync(stop.Token).ConfigureAwait(false);
        }
        finally
        {
            await _app.DisposeAsync().ConfigureAwait(false);
            try
            {
                await Ready.ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // reported by /health and the log already
            }
            _engine?.Dispose();
        }
    }

    private void Log(string line)
    {
        lock (_logGate)
        {
            _log.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{DateTime.UtcNow:yyyy-MM-ddTHH:mm:ss.fffZ} {line}"));
            _log.Flush();
        }
    }

    private void Map(WebApplication app)
    {
        app.Use(async (ctx, next) =>
        {
            var clock = Stopwatch.StartNew();
            try
            {
                if (ctx.Request.Path != "/health")
                {
                    Authorize(ctx);
                }
                await next(ctx).ConfigureAwait(false);
                if (ctx.Response.StatusCode == 404 && !ctx.Response.HasStarted)
                {
                    throw new ApiException(404, "invalid_request_error", $"no route {ctx.Request.Method} {ctx.Request.Path}", code: "not_found");
                }
            }
            catch (ApiException e)
            {
                await WriteError(ctx, e).ConfigureAwait(false);
            }
            catch (BadHttpRequestException e)
            {
                await WriteError(ctx, new ApiException(e.StatusCode, "invalid_request_error",
                    e.StatusCode == 413 ? $"request body larger than {_options.MaxBodyBytes} bytes" : e.Message,
                    code: e.StatusCode == 413 ? "request_too_large" : null)).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
            {
                // client went away
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Log($"error {ctx.Request.Method} {ctx.Request.Path}: {e}");
                await WriteError(ctx, new ApiException(500, "server_error", "internal server error")).ConfigureAwait(false);
            }
            _metrics.CountRequest(MetricRoute(ctx.Request.Path), ctx.Response.StatusCode);
            string tokens = ctx.Items.TryGetValue(UsageKey, out var u) && u is Usage usage ? $" {usage.PromptTokens}+{usage.CompletionTokens} tokens" : "";
            Log(string.Create(CultureInfo.InvariantCulture,
                $"{ctx.Connection.RemoteIpAddress} {ctx.Request.Method} {ctx.Request.Path} {ctx.Response.StatusCode}{tokens} {clock.Elapsed.TotalMilliseconds:F0}ms"));
        });

        app.MapGet("/health", async ctx =>
        {
            int status = _engine is not null ? 200 : 503;
            string text = _engine is not null ? "ok" : _loadError is null ? "loading" : "failed: " + _loadError;
            await WriteJson(ctx, status, new HealthResponse(text), ApiJsonContext.Default.HealthResponse).ConfigureAwait(false);
        });
        app.MapGet("/v1/models", async ctx =>
        {
            var card = Card(RequireEngine());
            await WriteJson(ctx, 200, new ModelList("list", [card]), ApiJsonContext.Default.ModelList).ConfigureAwait(false);
        });
        app.MapGet("/v1/models/{id}", async ctx =>
        {
            var engine = RequireEngine();
            string id = ctx.Request.RouteValues["id"] as string ?? "";
            if (id != _modelId)
            {
                throw new ApiException(404, "invalid_request_error", $"the model '{id}' does not exist; this server serves '{_modelId}'", "model", "model_not_found");
            }
            await WriteJson(ctx, 200, Card(engine), ApiJsonContext.Default.ModelCard).ConfigureAwait(false);
        });
        app.MapPost("/v1/completions", Completions);
        app.MapPost("/v1/chat/completions", ChatCompletions);
        MapMoreRoutes(app);
    }

    private static readonly long StartTime = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    /// <summary>
    /// The served model's card. Chat always works (the renderer formats any model's chats); function calling needs
    /// the <c>[TOOL_CALLS]</c> token; fill-in-the-middle needs <c>[PREFIX]</c> and <c>[SUFFIX]</c> and the Mistral
    /// prompt format.
    /// </summary>
    private ModelCard Card(InferenceEngine engine)
    {
        var control = ControlTokens.Of(engine.Tokenizer);
        bool fim = _renderer is MistralChatRenderer && control.TryGet("[PREFIX]", out _) && control.TryGet("[SUFFIX]", out _);
        var capabilities = new ModelCapabilities(CompletionChat: true, CompletionFim: fim, FunctionCalling: control.TryGet("[TOOL_CALLS]", out _),
            FineTuning: false, Vision: false, Classification: false);
        return new ModelCard(_modelId, "model", StartTime, "bora", engine.ContextLength, capabilities)
        {
            Name = _modelId,
            Description = $"{_modelId} served by bora",
        };
    }

    private void Authorize(HttpContext ctx)
    {
        if (_keyHash is null)
        {
            return;
        }
        string header = ctx.Request.Headers.Authorization.ToString();
        const string Bearer = "Bearer ";
        string given = header.StartsWith(Bearer, StringComparison.OrdinalIgnoreCase) ? header[Bearer.Length..].Trim() : "";
        // Hash first so the comparison takes the same time whatever the lengths.
        var hash = SHA256.HashData(Encoding.UTF8.GetBytes(given));
        if (given.Length == 0 || !CryptographicOperations.FixedTimeEquals(hash, _keyHash))
        {
            throw new ApiException(401, "invalid_request_error",
                given.Length == 0 ? "missing API key: send 'Authorization: Bearer KEY'" : "incorrect API key", code: "invalid_api_key");
        }
    }

    private InferenceEngine RequireEngine() => _engine ?? throw new ApiException(503, "server_error",
        _loadError is null ? "the model is still loading; retry shortly" : "the model failed to load: " + _loadError, code: "model_not_ready");

    private async Task Completions(HttpContext ctx)
    {
        var engine = RequireEngine();
        var req = await ReadBody(ctx, ApiJsonContext.Default.CompletionRequest).ConfigureAwait(false);
        CheckModel(req.Model);
        int n = GenerationFields.Choices(req.N, _options.MaxChoices);
        int? top = GenerationFields.CompletionTopLogprobs(req.Logprobs);
        string prompt = RequestValidation.PromptText(req.Prompt);
        var tokens = req.Suffix is null ? engine.Tokenizer.Encode(prompt, addBos: true) : FimTokens(engine, prompt, req.Suffix, "suffix");
        var sampling = GenerationFields.WithPenalties(
            Sampling(engine, tokens.Length, req.MaxTokens, req.Temperature, req.TopP, req.Seed ?? req.RandomSeed, req.Stop, defaultMax: 16), req.PresencePenalty, req.FrequencyPenalty);
        var writer = new CompletionAnswerWriter("cmpl-" + NextId(), DateTimeOffset.UtcNow.ToUnixTimeSeconds(), _modelId, n, logprobs: top is not null);
        await RunChoices(ctx, engine, tokens, Specs(sampling, n, top, null), req.Stream == true, writer).ConfigureAwait(false);
    }

    private string NextId() => string.Create(CultureInfo.InvariantCulture, $"{StartTime:x}{Interlocked.Increment(ref _requestIds):x}");

    private void CheckModel(string? model)
    {
        if (!string.IsNullOrEmpty(model) && model != _modelId)
        {
            throw new ApiException(404, "invalid_request_error", $"the model '{model}' does not exist; this server serves '{_modelId}'", "model", "model_not_found");
        }
    }

    private SamplingOptions Sampling(InferenceEngine engine, int promptTokens, int? maxTokens, double? temperature, double? topP, long? seed, JsonElement stop, int defaultMax)
    {
        if (maxTokens is { } m && (m < 1 || m > _options.MaxTokensLimit))
        {
            throw ApiException.BadRequest($"max_tokens is {m}; expected an integer in [1, {_options.MaxTokensLimit}]", "max_tokens");
        }
        if (temperature is { } t && !(t >= 0 && t <= 2))
        {
            throw ApiException.BadRequest($"temperature is {t.ToString(CultureInfo.InvariantCulture)}; expected a number in [0, 2]", "temperature");
        }
        if (topP is { } p && !(p > 0 && p <= 1))
        {
            throw ApiException.BadRequest($"top_p is {p.ToString(CultureInfo.InvariantCulture)}; expected a number in (0, 1]", "top_p");
        }
        var stops = RequestValidation.StopStrings(stop, _options.MaxStopStrings, _options.MaxStopLength);
        int left = engine.ContextLength - promptTokens;
        if (left < 1 || (maxTokens is { } mt && mt > left))
        {
            throw ApiException.BadRequest(
                $"this model's maximum context length is {engine.ContextLength} tokens; the prompt has {promptTokens} and max_tokens asks for {maxTokens ?? 1} more",
                maxTokens is null ? "messages" : "max_tokens", "context_length_exceeded");
        }
        return new SamplingOptions
        {
            Temperature = (float)(temperature ?? 1.0),
            TopP = (float)(topP ?? 1.0),
            TopK = 0,
            MinP = 0,
            Seed = seed is { } s ? unchecked((ulong)s) : null,
            MaxTokens = maxTokens ?? Math.Min(defaultMax, left),
            StopStrings = stops,
        };
    }

    private async Task<T> ReadBody<T>(HttpContext ctx, JsonTypeInfo<T> type) where T : class
    {
        if (ctx.Request.ContentLength is { } len && len > _options.MaxBodyBytes)
        {
            throw new ApiException(413, "invalid_request_error", $"request body of {len} bytes is larger than {_options.MaxBodyBytes}", code: "request_too_large");
        }
        try
        {
            return await JsonSerializer.DeserializeAsync(ctx.Request.Body, type, ctx.RequestAborted).ConfigureAwait(false)
                ?? throw ApiException.BadRequest("the request body is JSON null; expected an object");
        }
        catch (JsonException e)
        {
            throw ApiException.BadRequest($"invalid JSON body: {e.Message}", e.Path?.TrimStart('$', '.'));
        }
    }

    private static readonly byte[] s_dataPrefix = "data: "u8.ToArray();
    private static readonly byte[] s_eventEnd = "\n\n"u8.ToArray();

    /// <summary>Writes one SSE event; <paramref name="flush"/> false leaves it buffered for the next event's flush (more are already queued).</summary>
    private static async Task Event(Stream body, byte[] json, CancellationToken ct, bool flush = true)
    {
        await body.WriteAsync(s_dataPrefix, ct).ConfigureAwait(false);
        await body.WriteAsync(json, ct).ConfigureAwait(false);
        await body.WriteAsync(s_eventEnd, ct).ConfigureAwait(false);
        if (flush)
        {
            await body.FlushAsync(ct).ConfigureAwait(false);
        }
    }

    internal static string Finish(FinishReason reason) => reason is FinishReason.Length or FinishReason.ContextFull ? "length" : "stop";

    private static async Task WriteError(HttpContext ctx, ApiException e)
    {
        if (ctx.Response.HasStarted)
        {
            return;
        }
        var body = new ErrorResponse(new ErrorBody(e.Message, e.Type, e.Param, e.Code));
        await WriteJson(ctx, e.Status, body, ApiJsonContext.Default.ErrorResponse).ConfigureAwait(false);
    }

    private static async Task WriteJson<T>(HttpContext ctx, int status, T value, JsonTypeInfo<T> type)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        await JsonSerializer.SerializeAsync(ctx.Response.Body, value, type, ctx.RequestAborted).ConfigureAwait(false);
    }
}
