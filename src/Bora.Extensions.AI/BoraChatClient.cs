using System.Globalization;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Bora.Chat;
using Bora.Generation;
using Bora.Generation.Constraints;
using Bora.Loading;
using Bora.Serving;
using Bora.Tokenizers;
using Microsoft.Extensions.AI;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;
using AiChatRole = Microsoft.Extensions.AI.ChatRole;
using BoraChatMessage = Bora.Chat.ChatMessage;

namespace Bora.Extensions.AI;

/// <summary>
/// Microsoft.Extensions.AI's <see cref="IChatClient"/> over Bora's <see cref="InferenceEngine"/>, in process (no HTTP).
/// <para>
/// A chat is rendered in the model's own format by <see cref="ChatRenderer"/> (mistral-common's rules, serving
/// validation), tools included; the answer is streamed through <see cref="ToolCallParser"/>, so text before
/// <c>[TOOL_CALLS]</c> arrives as <see cref="TextContent"/> and each call as <see cref="FunctionCallContent"/>
/// as soon as its JSON object closes — which is what <c>UseFunctionInvocation()</c> needs. Tool results come
/// back as <see cref="FunctionResultContent"/> in <see cref="AiChatRole.Tool"/> messages and are rendered as
/// <c>[TOOL_RESULTS]</c>.
/// </para>
/// <para>
/// Options: <see cref="ChatOptions.Temperature"/> (default 1, OpenAI's), <see cref="ChatOptions.TopP"/>,
/// <see cref="ChatOptions.TopK"/>, <see cref="ChatOptions.MaxOutputTokens"/> (default 256, capped by the context
/// left), <see cref="ChatOptions.StopSequences"/>, <see cref="ChatOptions.Seed"/>, <see cref="ChatOptions.Tools"/>
/// with <see cref="ChatOptions.ToolMode"/> (<see cref="ChatToolMode.None"/> leaves the tools out of the prompt,
/// <see cref="ChatToolMode.RequireAny"/> / a required function force calls by constrained decoding),
/// <see cref="ChatOptions.ResponseFormat"/> <see cref="ChatResponseFormat.Json"/> (one JSON object, by constrained decoding),
/// <see cref="ChatOptions.Instructions"/> (a system message first). Usage is reported on every response.
/// Cancelling the token frees the sequence and its KV blocks within one engine step.
/// </para>
/// </summary>
public sealed class BoraChatClient : IChatClient
{
    /// <summary>max_tokens when the options give none (the server's default too).</summary>
    public const int DefaultMaxOutputTokens = 256;

    private static readonly JsonSerializerOptions JsonOptions = AIJsonUtilities.DefaultOptions;

    private readonly IGenerationBackend _backend;
    private readonly ChatRenderer _renderer;
    private readonly IDisposable? _owned;
    private readonly ChatClientMetadata _metadata;
    private long _ids;

    /// <summary>A client over a running engine (not owned: disposing the client leaves the engine running).</summary>
    /// <param name="engine">The engine; many clients and the HTTP server may share one.</param>
    /// <param name="modelId">Reported as <see cref="ChatResponse.ModelId"/>; default "bora".</param>
    /// <param name="chatVersion">The chat format; null reads it from the vocabulary's control tokens.</param>
    public BoraChatClient(InferenceEngine engine, string? modelId = null, TokenizerVersion? chatVersion = null)
        : this(new EngineBackend(engine ?? throw new ArgumentNullException(nameof(engine))), modelId, chatVersion, owned: null)
    {
    }

    internal BoraChatClient(IGenerationBackend backend, string? modelId, TokenizerVersion? chatVersion, IDisposable? owned)
    {
        _backend = backend;
        _renderer = new ChatRenderer(backend.Tokenizer, chatVersion ?? TokenizerVersions.FromVocabulary(backend.Tokenizer));
        _owned = owned;
        ModelId = modelId ?? "bora";
        _metadata = new ChatClientMetadata("bora", null, ModelId);
    }

    /// <summary>
    /// A client that owns a new engine over <paramref name="model"/> (disposing the client stops it). The chat format
    /// is the model's (<see cref="LoadedModel.ChatVersion"/>) and the model id its file or folder name.
    /// </summary>
    public static BoraChatClient Create(LoadedModel model, EngineOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        var engine = new InferenceEngine(model.Model, model.Tokenizer, options);
        string id = Path.GetFileNameWithoutExtension(model.Source.Path.TrimEnd('/', '\\'));
        return new BoraChatClient(new EngineBackend(engine), id, model.ChatVersion, owned: engine);
    }

    /// <summary>The model id reported in responses.</summary>
    public string ModelId { get; }

    /// <summary>The chat format the prompts are rendered in.</summary>
    public TokenizerVersion ChatVersion => _renderer.Version;

    /// <summary>The engine (null when the client was built over something else, e.g. in tests).</summary>
    public InferenceEngine? Engine => (_backend as EngineBackend)?.Engine;

    /// <summary>The prompt tokens a chat renders to (what <see cref="GetResponseAsync"/> submits).</summary>
    /// <exception cref="ArgumentException">The chat breaks a rule of the model's chat format (message says which).</exception>
    public TokenId[] RenderPrompt(IEnumerable<AiChatMessage> messages, ChatOptions? options = null) => RenderPromptChecked(messages, options);

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<AiChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var updates = new List<ChatResponseUpdate>();
        await foreach (var u in GetStreamingResponseAsync(messages, options, cancellationToken).ConfigureAwait(false))
        {
            updates.Add(u);
        }
        return updates.ToChatResponse();
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<AiChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var prompt = RenderPromptChecked(messages, options);
        var sampling = Sampling(options, prompt.Length);
        var constraint = Constraint(options);
        var run = _backend.Start(prompt, sampling, constraint is null ? null : new SubmitOptions { Constraint = constraint }, cancellationToken);
        await run.Admitted.ConfigureAwait(false);

        string responseId = "bora-" + Interlocked.Increment(ref _ids).ToString(CultureInfo.InvariantCulture);
        var created = DateTimeOffset.UtcNow;
        ChatResponseUpdate Update(IList<AIContent> contents) => new(AiChatRole.Assistant, contents)
        {
            ResponseId = responseId,
            MessageId = responseId,
            ModelId = ModelId,
            CreatedAt = created,
        };

        var parser = new ToolCallParser(_backend.Tokenizer);
        bool inCalls = false;
        int calls = 0;
        await foreach (var delta in run.Deltas.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
        {
            var contents = new List<AIContent>();
            // Text riding on the [TOOL_CALLS] delta itself was held back before it (stop strings): content.
            bool textIsContent = !inCalls;
            if (delta.Token is { } token)
            {
                var parsed = parser.Push(token);
                foreach (var call in parsed.Calls)
                {
                    contents.Add(ToFunctionCall(call));
                    calls++;
                }
                inCalls |= parsed.Calls.Count > 0 || IsToolCallsToken(token);
            }
            // The engine's text is stop-string filtered; after [TOOL_CALLS] the text is the calls' JSON, not content.
            if (textIsContent && delta.Text.Length > 0)
            {
                contents.Insert(0, new TextContent(delta.Text));
            }
            if (contents.Count > 0)
            {
                yield return Update(contents);
            }
        }
        GenerationSummary summary;
        try
        {
            summary = await run.Completion.ConfigureAwait(false);
        }
        catch (TaskCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            throw new OperationCanceledException("the chat request was cancelled", cancellationToken);
        }
        var tail = parser.Finish();
        if (inCalls && tail.Calls.Count > calls)
        {
            // Calls completed only by the end of generation (cannot happen with a closed JSON list, kept for safety).
            yield return Update([.. tail.Calls.Skip(calls).Select(ToFunctionCall)]);
            calls = tail.Calls.Count;
        }
        var final = Update([new UsageContent(new UsageDetails
        {
            InputTokenCount = summary.PromptTokens,
            OutputTokenCount = summary.CompletionTokens,
            TotalTokenCount = summary.PromptTokens + summary.CompletionTokens,
        })]);
        final.FinishReason = calls > 0 ? ChatFinishReason.ToolCalls
            : summary.FinishReason is FinishReason.Length or FinishReason.ContextFull ? ChatFinishReason.Length : ChatFinishReason.Stop;
        yield return final;
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null)
        {
            return null;
        }
        if (serviceType == typeof(ChatClientMetadata))
        {
            return _metadata;
        }
        if (serviceType == typeof(InferenceEngine))
        {
            return Engine;
        }
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    public void Dispose() => _owned?.Dispose();

    /// <summary>
    /// The constraint the options ask for, or null: <see cref="ChatResponseFormat.Json"/> (no schema) makes the
    /// answer one JSON object (<see cref="JsonConstraints.Object"/>), <see cref="ChatResponseFormat.ForJsonSchema(JsonElement, string?, string?)"/>
    /// one JSON object valid against the schema (<see cref="JsonSchemaGrammar"/>, the subset <see cref="JsonSchemaCompiler"/>
    /// documents); <see cref="ChatToolMode.RequireAny"/> forces calls of the given functions, <see cref="ChatToolMode.RequireSpecific"/>
    /// one call of the named function (<see cref="ToolCallGrammar.ForcedCalls"/>, after the model's <c>[TOOL_CALLS]</c> token),
    /// their arguments following each function's <see cref="AIFunctionDeclaration.JsonSchema"/> when it compiles (else any JSON object).
    /// </summary>
    /// <exception cref="NotSupportedException">A JSON schema outside the supported subset (the message names the keyword and its path), or forced calls on a model without <c>[TOOL_CALLS]</c>.</exception>
    /// <exception cref="ArgumentException">JSON together with forced calls; forced calls without tools; a required function that is not among the tools.</exception>
    internal ITokenConstraint? Constraint(ChatOptions? options)
    {
        bool json = false;
        JsonSchemaGrammar? schema = null;
        if (options?.ResponseFormat is ChatResponseFormatJson format)
        {
            if (format.Schema is { } s)
            {
                try
                {
                    schema = JsonSchemaGrammar.GetOrCompile(s);
                }
                catch (JsonSchemaNotSupportedException e)
                {
                    throw new NotSupportedException($"the JSON schema response format ('{format.SchemaName ?? "unnamed"}') is outside the supported subset: {e.Message}", e);
                }
            }
            json = true;
        }
        if (options?.ToolMode is not RequiredChatToolMode required)
        {
            return schema is not null ? schema.Constraint(_backend.Tokenizer) : json ? JsonConstraints.Object(_backend.Tokenizer) : null;
        }
        if (json)
        {
            throw new ArgumentException("ChatResponseFormat.Json cannot be combined with a ToolMode that requires tool calls", nameof(options));
        }
        var names = options.Tools?.OfType<AIFunctionDeclaration>().Select(t => t.Name).ToList() ?? [];
        if (names.Count == 0)
        {
            throw new ArgumentException("ToolMode requires a tool call but ChatOptions.Tools has no functions", nameof(options));
        }
        if (required.RequiredFunctionName is { } name && !names.Contains(name, StringComparer.Ordinal))
        {
            throw new ArgumentException($"ToolMode requires the function '{name}', which is not among ChatOptions.Tools ({string.Join(", ", names)})", nameof(options));
        }
        if (!ControlTokens.Of(_backend.Tokenizer).TryGet("[TOOL_CALLS]", out var toolCalls))
        {
            throw new NotSupportedException("this model's vocabulary has no [TOOL_CALLS] token, so it cannot be made to call tools; use ToolMode Auto or None");
        }
        var schemas = new Dictionary<string, JsonSchemaGrammar>(StringComparer.Ordinal);
        foreach (var f in options.Tools!.OfType<AIFunctionDeclaration>())
        {
            try
            {
                schemas[f.Name] = JsonSchemaGrammar.GetOrCompile(f.JsonSchema);
            }
            catch (JsonSchemaNotSupportedException)
            {
                // Unsupported keywords: this function's arguments fall back to any JSON object.
            }
        }
        return required.RequiredFunctionName is { } one
            ? ToolCallGrammar.ForcedCalls(_backend.Tokenizer, toolCalls, [one], several: false, schemas)
            : ToolCallGrammar.ForcedCalls(_backend.Tokenizer, toolCalls, names, several: true, schemas);
    }

    private bool IsToolCallsToken(TokenId token) =>
        _backend.Tokenizer.IsControl(token) && ControlTokens.Of(_backend.Tokenizer).TryGet("[TOOL_CALLS]", out var id) && id == token;

    private TokenId[] RenderPromptChecked(IEnumerable<AiChatMessage> messages, ChatOptions? options)
    {
        try
        {
            return _renderer.Render(ToRequest(messages, options), ValidationMode.Serving).Tokens;
        }
        catch (ChatRequestException e)
        {
            throw new ArgumentException(e.Message, nameof(messages), e);
        }
    }

    private SamplingOptions Sampling(ChatOptions? o, int promptTokens)
    {
        int left = _backend.ContextLength - promptTokens;
        if (left < 1 || (o?.MaxOutputTokens is { } m && m > left))
        {
            throw new ArgumentException(string.Create(CultureInfo.InvariantCulture,
                $"the model's context holds {_backend.ContextLength} tokens; the prompt has {promptTokens} and MaxOutputTokens asks for {o?.MaxOutputTokens ?? 1} more"), nameof(o));
        }
        if (o?.MaxOutputTokens is < 1)
        {
            throw new ArgumentException($"MaxOutputTokens is {o.MaxOutputTokens}; expected at least 1", nameof(o));
        }
        var sampling = new SamplingOptions
        {
            Temperature = o?.Temperature ?? 1f,
            TopP = o?.TopP ?? 1f,
            TopK = o?.TopK ?? 0,
            MinP = 0,
            Seed = o?.Seed is { } s ? unchecked((ulong)s) : null,
            MaxTokens = o?.MaxOutputTokens ?? Math.Min(DefaultMaxOutputTokens, left),
            StopStrings = o?.StopSequences is { Count: > 0 } stops ? [.. stops] : [],
        };
        sampling.Validate();
        return sampling;
    }

    /// <summary>Microsoft.Extensions.AI messages and options as Bora's chat request.</summary>
    internal static ChatRequest ToRequest(IEnumerable<AiChatMessage> messages, ChatOptions? options)
    {
        var list = new List<BoraChatMessage>();
        if (!string.IsNullOrEmpty(options?.Instructions))
        {
            list.Add(BoraChatMessage.System(options.Instructions));
        }
        var callNames = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var m in messages)
        {
            if (m.Role == AiChatRole.System)
            {
                list.Add(BoraChatMessage.System(m.Text));
            }
            else if (m.Role == AiChatRole.User)
            {
                list.Add(BoraChatMessage.User(m.Text));
            }
            else if (m.Role == AiChatRole.Assistant)
            {
                var calls = m.Contents.OfType<FunctionCallContent>().Select(c =>
                {
                    callNames[c.CallId] = c.Name;
                    return new ToolCall(c.CallId, c.Name, JsonSerializer.Serialize(c.Arguments ?? new Dictionary<string, object?>(), JsonOptions));
                }).ToList();
                string text = m.Text;
                list.Add(BoraChatMessage.Assistant(text.Length == 0 && calls.Count > 0 ? null : text, calls.Count > 0 ? calls : null));
            }
            else if (m.Role == AiChatRole.Tool)
            {
                foreach (var r in m.Contents.OfType<FunctionResultContent>())
                {
                    string content = r.Result switch
                    {
                        null => r.Exception?.Message ?? "",
                        string s => s,
                        JsonElement e when e.ValueKind == JsonValueKind.String => e.GetString()!,
                        var v => JsonSerializer.Serialize(v, JsonOptions),
                    };
                    list.Add(BoraChatMessage.Tool(content, r.CallId, callNames.GetValueOrDefault(r.CallId)));
                }
            }
            else
            {
                throw new ArgumentException($"role '{m.Role}' is not one of system, user, assistant, tool", nameof(messages));
            }
        }
        var tools = options?.ToolMode is NoneChatToolMode || options?.Tools is null
            ? []
            : options.Tools.OfType<AIFunctionDeclaration>().Select(t => new ToolDefinition(t.Name, t.Description ?? "",
                PythonJson.FromElement(t.JsonSchema) as PyDict ?? throw new ArgumentException($"tool '{t.Name}': its JSON schema is not an object", nameof(options)))).ToList();
        return new ChatRequest { Messages = list, Tools = tools };
    }

    /// <summary>A parsed call as <see cref="FunctionCallContent"/>; calls without an id get 9 random alphanumerics (what v3+ chats require).</summary>
    internal static FunctionCallContent ToFunctionCall(ParsedToolCall call)
    {
        string id = call.Id ?? NewCallId();
        try
        {
            using var doc = JsonDocument.Parse(call.Arguments);
            if (doc.RootElement.ValueKind == JsonValueKind.Object)
            {
                var args = new Dictionary<string, object?>(StringComparer.Ordinal);
                foreach (var p in doc.RootElement.EnumerateObject())
                {
                    args[p.Name] = p.Value.Clone();
                }
                return new FunctionCallContent(id, call.Name, args);
            }
            return new FunctionCallContent(id, call.Name) { Exception = new InvalidDataException($"the arguments of '{call.Name}' are not a JSON object: {call.Arguments}") };
        }
        catch (JsonException e)
        {
            return new FunctionCallContent(id, call.Name) { Exception = new InvalidDataException($"the arguments of '{call.Name}' are not JSON: {call.Arguments}", e) };
        }
    }

    private static string NewCallId()
    {
        const string Alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        var sb = new StringBuilder(9);
        for (int i = 0; i < 9; i++)
        {
            sb.Append(Alphabet[RandomNumberGenerator.GetInt32(Alphabet.Length)]);
        }
        return sb.ToString();
    }
}
