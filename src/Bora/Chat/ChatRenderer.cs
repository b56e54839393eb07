using System.Text;
using Bora.Tokenizers;

namespace Bora.Chat;

/// <summary>A rendered prompt: the token ids and their text (pieces joined, control tokens included).</summary>
/// <param name="Tokens">The ids to feed the model, starting with BOS.</param>
/// <param name="Text">mistral-common's <c>Tokenized.text</c>: every token's piece, joined (SentencePiece keeps U+2581 and &lt;0x0A&gt;).</param>
public sealed record RenderedPrompt(TokenId[] Tokens, string Text);

/// <summary>A fill-in-the-middle request (Codestral): complete the code between <see cref="Prompt"/> and <see cref="Suffix"/>.</summary>
public sealed record FimRequest(string Prompt, string? Suffix = null);

/// <summary>
/// Renders chat requests to token ids exactly as mistral-common's <c>MistralTokenizer.encode_chat_completion</c>
/// does for SentencePiece tokenizers v1, v2, v3 and v7 (validation, normalization, instruct encoding).
/// </summary>
/// <remarks>
/// <para><b>Normalization</b> (mistral-common's InstructRequestNormalizer): consecutive messages of the same role are
/// merged (texts joined with "\n\n", tool calls concatenated); tool messages stay separate. v1-v3: system messages
/// are removed and their texts, joined with "\n\n", become the system prompt; tool-call arguments and (v1-v3) tool
/// contents that are JSON are re-serialized as Python's <c>json.dumps</c> writes them; an empty user message is
/// inserted first when the conversation does not start with a user message. v7 keeps system messages in place.</para>
/// <para><b>Encoding</b>: text is encoded with the tokenizer's plain encode (no BOS; SentencePiece's dummy-prefix
/// space applies to each piece of text); control tokens are emitted by id.
/// v1: <c>&lt;s&gt;</c>, then per user message the text "[INST] {system\n\n if first}{content} [/INST]", per assistant
/// message its text and <c>&lt;/s&gt;</c>.
/// v2/v3: [AVAILABLE_TOOLS] json(tools) [/AVAILABLE_TOOLS] before the last user message; [INST] {system\n\n if last}
/// content [/INST]; assistant text (trailing spaces removed) or [TOOL_CALLS] json(calls), then &lt;/s&gt; unless it
/// is a prefix; v2 tool results [TOOL_RESULTS] json([{name, content}]) [/TOOL_RESULTS], and v2 drops tool calls and
/// results before the last user message; v3 adds call ids ({name, arguments, id}; results {content, call_id}).
/// v7: [SYSTEM_PROMPT] text [/SYSTEM_PROMPT] where the system message is; results [TOOL_RESULTS] id [TOOL_CONTENT]
/// content [/TOOL_RESULTS]; an assistant message may have both text and calls.</para>
/// </remarks>
public sealed class ChatRenderer
{
    private readonly ITokenizer _tok;
    private readonly ControlTokens _controls;

    /// <summary>A renderer for a tokenizer and the chat format version it was trained with.</summary>
    /// <exception cref="ChatRequestException">The vocabulary lacks the control tokens this version needs.</exception>
    public ChatRenderer(ITokenizer tokenizer, TokenizerVersion version)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        _tok = tokenizer;
        Version = version;
        _controls = ControlTokens.Of(tokenizer);
        if (version >= TokenizerVersion.V2)
        {
            foreach (var p in new[] { "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]" })
            {
                _controls.Get(p, $"chat format {version}");
            }
        }
        if (version >= TokenizerVersion.V7)
        {
            foreach (var p in new[] { "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]" })
            {
                _controls.Get(p, $"chat format {version}");
            }
        }
    }

    /// <summary>The chat format version.</summary>
    public TokenizerVersion Version { get; }

    /// <summary>The tokenizer.</summary>
    public ITokenizer Tokenizer => _tok;

    /// <summary>Validates (see <see cref="ChatValidator"/>), normalizes and encodes a request.</summary>
    /// <exception cref="ChatRequestException">The request breaks a rule of this version; the message says which.</exception>
    public RenderedPrompt Render(ChatRequest request, ValidationMode mode = ValidationMode.Test)
    {
        ArgumentNullException.ThrowIfNull(request);
        ChatValidator.Validate(request, Version, mode);
        var norm = Normalize(request);
        var tokens = new List<TokenId> { _tok.Bos };
        var msgs = norm.Messages;
        int firstUser = -1, lastUser = -1;
        for (int i = 0; i < msgs.Count; i++)
        {
            if (msgs[i].Role == ChatRole.User)
            {
                if (firstUser < 0)
                {
                    firstUser = i;
                }
                lastUser = i;
            }
        }
        for (int i = 0; i < msgs.Count; i++)
        {
            var m = msgs[i];
            bool isFinal = i == msgs.Count - 1;
            if (request.ContinueFinalMessage && isFinal && m.Role != ChatRole.Assistant)
            {
                throw new ChatRequestException("continue_final_message needs the last message to be an assistant message");
            }
            switch (m.Role)
            {
                case ChatRole.User:
                    EncodeUser(tokens, m, i == firstUser, i == lastUser, norm.SystemPrompt, request.Tools);
                    break;
                case ChatRole.Assistant:
                    EncodeAssistant(tokens, m, i < lastUser, request.ContinueFinalMessage && isFinal, i);
                    break;
                case ChatRole.Tool:
                    EncodeTool(tokens, m, i < lastUser, i);
                    break;
                case ChatRole.System:
                    // Only v7 keeps system messages (v1-v3 turned them into the system prompt).
                    tokens.Add(Control("[SYSTEM_PROMPT]"));
                    Text(tokens, m.Content ?? "");
                    tokens.Add(Control("[/SYSTEM_PROMPT]"));
                    break;
            }
        }
        var ids = tokens.ToArray();
        return new RenderedPrompt(ids, PiecesText(ids));
    }

    /// <summary>
    /// Renders a fill-in-the-middle request as mistral-common's <c>encode_fim</c> (v3+ SentencePiece):
    /// <c>&lt;s&gt;[SUFFIX]suffix[PREFIX]prompt</c>. The suffix is encoded without the dummy-prefix space
    /// (mistral-common encodes "☺" + suffix and drops the first two tokens, "▁" and "☺"); the prompt is encoded
    /// normally. The model generates the middle after the prompt.
    /// </summary>
    /// <exception cref="ChatRequestException">The version or vocabulary has no FIM tokens.</exception>
    public RenderedPrompt RenderFim(FimRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (Version < TokenizerVersion.V2)
        {
            throw new ChatRequestException($"fill-in-the-middle is not available for tokenizer {Version}");
        }
        var suffixId = _controls.Get("[SUFFIX]", "fill-in-the-middle");
        var prefixId = _controls.Get("[PREFIX]", "fill-in-the-middle");
        var tokens = new List<TokenId> { _tok.Bos, suffixId };
        if (!string.IsNullOrEmpty(request.Suffix))
        {
            var withMarker = _tok.Encode("\u263A" + request.Suffix, addBos: false);
            tokens.AddRange(withMarker.Skip(2));
        }
        tokens.Add(prefixId);
        tokens.AddRange(_tok.Encode(request.Prompt, addBos: false));
        var ids = tokens.ToArray();
        return new RenderedPrompt(ids, PiecesText(ids));
    }

    /// <summary>Every token's piece joined (mistral-common's text of a rendered request).</summary>
    public string PiecesText(ReadOnlySpan<TokenId> ids)
    {
        var sb = new StringBuilder();
        foreach (var id in ids)
        {
            sb.Append(_tok.PieceOf(id));
        }
        return sb.ToString();
    }

    private TokenId Control(string piece) => _controls.Get(piece, $"chat format {Version}");

    private void Text(List<TokenId> tokens, string text) => tokens.AddRange(_tok.Encode(text, addBos: false));

    private void EncodeUser(List<TokenId> tokens, NormMessage m, bool isFirst, bool isLast, string? systemPrompt, IReadOnlyList<ToolDefinition> tools)
    {
        string content = m.Content ?? "";
        if (Version == TokenizerVersion.V1)
        {
            if (isFirst && !string.IsNullOrEmpty(systemPrompt))
            {
                content = systemPrompt + "\n\n" + content;
            }
            Text(tokens, $"[INST] {content} [/INST]");
            return;
        }
        if (isLast && tools.Count > 0)
        {
            var list = new List<object?>();
            foreach (var t in tools)
            {
                var fn = new PyDict { ["name"] = t.Name, ["description"] = t.Description, ["parameters"] = t.Parameters };
                list.Add(new PyDict { ["type"] = "function", ["function"] = fn });
            }
            tokens.Add(Control("[AVAILABLE_TOOLS]"));
            Text(tokens, PythonJson.Dumps(list));
            tokens.Add(Control("[/AVAILABLE_TOOLS]"));
        }
        tokens.Add(Control("[INST]"));
        if (Version < TokenizerVersion.V7 && isLast && !string.IsNullOrEmpty(systemPrompt))
        {
            content = systemPrompt + "\n\n" + content;
        }
        Text(tokens, content);
        tokens.Add(Control("[/INST]"));
    }

    private void EncodeAssistant(List<TokenId> tokens, NormMessage m, bool beforeLastUser, bool continueMessage, int index)
    {
        bool hasContent = !string.IsNullOrEmpty(m.Content);
        bool hasCalls = m.ToolCalls.Count > 0;
        if (continueMessage && m.Prefix)
        {
            throw new ChatRequestException($"normalized message {index}: continue_final_message only works with an assistant message that has prefix=false");
        }
        if (Version == TokenizerVersion.V1)
        {
            if (hasCalls)
            {
                throw new ChatRequestException($"normalized message {index}: tool calls are not available in chat format V1");
            }
            if (!hasContent)
            {
                throw new ChatRequestException($"normalized message {index}: an assistant message needs content");
            }
            Text(tokens, m.Content!);
        }
        else if (Version < TokenizerVersion.V7)
        {
            if (hasCalls && hasContent)
            {
                throw new ChatRequestException($"normalized message {index}: an assistant message cannot have both tool calls and content in chat format {Version}");
            }
            if (hasCalls)
            {
                if (Version == TokenizerVersion.V2 && beforeLastUser)
                {
                    return; // v2 drops tool calls (and their EOS) before the last user message
                }
                EncodeCalls(tokens, m.ToolCalls);
            }
            else if (hasContent)
            {
                Text(tokens, m.Content!.TrimEnd(' '));
            }
            else
            {
                throw new ChatRequestException($"normalized message {index}: an assistant message needs content or tool calls");
            }
        }
        else
        {
            if (!hasContent && !hasCalls)
            {
                throw new ChatRequestException($"normalized message {index}: an assistant message needs content or tool calls");
            }
            if (hasContent)
            {
                Text(tokens, m.Content!.TrimEnd(' '));
            }
            if (hasCalls)
            {
                EncodeCalls(tokens, m.ToolCalls);
            }
        }
        if (!m.Prefix && !continueMessage)
        {
            tokens.Add(_tok.Eos);
        }
    }

    private void EncodeCalls(List<TokenId> tokens, IReadOnlyList<ToolCall> calls)
    {
        var list = new List<object?>();
        foreach (var c in calls)
        {
            var d = new PyDict { ["name"] = c.Name, ["arguments"] = ParseJsonOrText(c.Arguments) };
            if (Version >= TokenizerVersion.V3 && c.Id.Length > 0 && c.Id != ToolCall.NullId)
            {
                d["id"] = c.Id;
            }
            list.Add(d);
        }
        tokens.Add(Control("[TOOL_CALLS]"));
        Text(tokens, PythonJson.Dumps(list));
    }

    private void EncodeTool(List<TokenId> tokens, NormMessage m, bool beforeLastUser, int index)
    {
        string content = m.Content ?? "";
        switch (Version)
        {
            case TokenizerVersion.V1:
                throw new ChatRequestException($"normalized message {index}: tool messages are not available in chat format V1");
            case TokenizerVersion.V2:
                if (beforeLastUser)
                {
                    return; // v2 drops tool results before the last user message
                }
                var r2 = new PyDict { ["name"] = m.Name, ["content"] = ParseJsonOrText(content) };
                tokens.Add(Control("[TOOL_RESULTS]"));
                Text(tokens, PythonJson.Dumps(new List<object?> { r2 }));
                tokens.Add(Control("[/TOOL_RESULTS]"));
                return;
            case TokenizerVersion.V3:
                var r3 = new PyDict
                {
                    ["content"] = ParseJsonOrText(content),
                    ["call_id"] = m.ToolCallId ?? throw new ChatRequestException($"normalized message {index}: a tool message needs tool_call_id in chat format V3"),
                };
                tokens.Add(Control("[TOOL_RESULTS]"));
                Text(tokens, PythonJson.Dumps(r3));
                tokens.Add(Control("[/TOOL_RESULTS]"));
                return;
            default:
                tokens.Add(Control("[TOOL_RESULTS]"));
                Text(tokens, m.ToolCallId ?? throw new ChatRequestException($"normalized message {index}: a tool message needs tool_call_id in chat format {Version}"));
                tokens.Add(Control("[TOOL_CONTENT]"));
                Text(tokens, content);
                tokens.Add(Control("[/TOOL_RESULTS]"));
                return;
        }
    }

    private static object? ParseJsonOrText(string text) => PythonJson.TryLoads(text, out var v) ? v : text;

    /// <summary>Python's json.loads then json.dumps, or the text itself when it is not JSON; "{}" for empty text.</summary>
    private static string NormalizeJsonText(string? text)
    {
        if (string.IsNullOrEmpty(text))
        {
            return "{}";
        }
        return PythonJson.TryLoads(text, out var v) ? PythonJson.Dumps(v) : text;
    }

    // ------------------------------------------------------------------ normalization

    private sealed record NormMessage(ChatRole Role, string? Content, IReadOnlyList<ToolCall> ToolCalls, string? ToolCallId, string? Name, bool Prefix);

    private sealed record NormRequest(List<NormMessage> Messages, string? SystemPrompt);

    private NormRequest Normalize(ChatRequest request)
    {
        bool v7 = Version >= TokenizerVersion.V7;
        string? systemPrompt = null;
        if (!v7)
        {
            var parts = request.Messages.Where(m => m.Role == ChatRole.System && !string.IsNullOrEmpty(m.Content)).Select(m => m.Content!).ToList();
            systemPrompt = parts.Count > 0 ? string.Join("\n\n", parts) : null;
        }

        var result = new List<NormMessage>();
        int start = 0;
        var all = request.Messages;
        while (start < all.Count)
        {
            int end = start;
            while (end < all.Count && all[end].Role == all[start].Role)
            {
                end++;
            }
            var group = all.Skip(start).Take(end - start).ToList();
            switch (all[start].Role)
            {
                case ChatRole.User:
                    result.Add(new NormMessage(ChatRole.User, JoinContents(group), [], null, null, false));
                    break;
                case ChatRole.Assistant:
                    var calls = new List<ToolCall>();
                    bool prefix = false;
                    foreach (var m in group)
                    {
                        foreach (var c in m.ToolCalls ?? [])
                        {
                            calls.Add(c with { Arguments = NormalizeJsonText(c.Arguments) });
                        }
                        prefix |= m.Prefix;
                    }
                    result.Add(new NormMessage(ChatRole.Assistant, JoinContents(group), calls, null, null, prefix));
                    break;
                case ChatRole.Tool:
                    foreach (var m in group)
                    {
                        string content = m.Content ?? "";
                        result.Add(new NormMessage(ChatRole.Tool, v7 ? content : NormalizeJsonText(content), [], m.ToolCallId, m.Name, false));
                    }
                    break;
                case ChatRole.System:
                    if (v7)
                    {
                        foreach (var m in group)
                        {
                            result.Add(new NormMessage(ChatRole.System, m.Content ?? "", [], null, null, false));
                        }
                    }
                    break;
            }
            start = end;
        }
        if (result.Count == 0 || (!v7 && result[0].Role != ChatRole.User))
        {
            result.Insert(0, new NormMessage(ChatRole.User, "", [], null, null, false));
        }
        return new NormRequest(result, systemPrompt);
    }

    /// <summary>Non-empty contents joined with "\n\n" (mistral-common's aggregation of one role's consecutive messages).</summary>
    private static string JoinContents(List<ChatMessage> group) =>
        string.Join("\n\n", group.Select(m => m.Content).Where(c => !string.IsNullOrEmpty(c)));
}
