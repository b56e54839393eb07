using System.Text.RegularExpressions;

namespace Bora.Chat;

/// <summary>How strictly a request is checked (mistral-common's ValidationMode).</summary>
public enum ValidationMode
{
    /// <summary>mistral-common's default for its bundled tokenizers: tool-call/result counts may be left open at the end.</summary>
    Test,

    /// <summary>Inference: every tool call must be answered and call ids must be set (v3+).</summary>
    Serving,

    /// <summary>Training data: the last message must be an assistant message.</summary>
    Finetuning,
}

/// <summary>
/// Checks a chat request the way mistral-common's <c>MistralRequestValidator</c> (v1/v2),
/// <c>MistralRequestValidatorV3</c> (v3) and <c>MistralRequestValidatorV5</c> (v7) do, with the same rules and
/// similar messages. Not checked: that tool parameter schemas are valid JSON Schema draft 7.
/// </summary>
public static partial class ChatValidator
{
    [GeneratedRegex("^[a-zA-Z0-9_-]{1,64}$", RegexOptions.CultureInvariant)]
    private static partial Regex FunctionName();

    [GeneratedRegex("^[a-zA-Z0-9]{9}$", RegexOptions.CultureInvariant)]
    private static partial Regex CallId();

    /// <summary>Throws <see cref="ChatRequestException"/> when the request breaks a rule of this version.</summary>
    public static void Validate(ChatRequest request, TokenizerVersion version, ValidationMode mode = ValidationMode.Test)
    {
        ArgumentNullException.ThrowIfNull(request);
        var messages = request.Messages;
        bool v3 = version >= TokenizerVersion.V3;
        bool allowCallsAndContent = version >= TokenizerVersion.V7;

        // Structure.
        if (messages.Count == 0)
        {
            throw new ChatRequestException("the conversation must have at least one message");
        }
        if (messages.Count == 1 && messages[0].Role is not (ChatRole.User or ChatRole.System))
        {
            throw new ChatRequestException($"a conversation of one message must start with a user or system message, not {Name(messages[0].Role)}");
        }
        if (mode == ValidationMode.Finetuning || messages.Count > 1)
        {
            ValidateLast(messages[^1], request.ContinueFinalMessage, mode, v3);
        }
        ValidateOrder(messages);
        ValidateCallsAnswered(messages, mode);

        // Content.
        for (int i = 0; i < messages.Count; i++)
        {
            var m = messages[i];
            bool isLast = i == messages.Count - 1;
            switch (m.Role)
            {
                case ChatRole.Assistant:
                    bool hasContent = !string.IsNullOrEmpty(m.Content);
                    bool hasCalls = m.ToolCalls is { Count: > 0 };
                    if (!allowCallsAndContent && hasContent == hasCalls)
                    {
                        throw new ChatRequestException($"messages[{i}]: an assistant message must have either content or tool_calls, but not both");
                    }
                    foreach (var call in m.ToolCalls ?? [])
                    {
                        ValidateCall(call, $"messages[{i}]", v3, mode, isLast);
                    }
                    if (m.Prefix && !isLast)
                    {
                        throw new ChatRequestException($"messages[{i}]: an assistant message with prefix=true must be the last message");
                    }
                    break;
                case ChatRole.Tool:
                    if (m.Name is not null && !FunctionName().IsMatch(m.Name))
                    {
                        throw new ChatRequestException($"messages[{i}]: tool name was \"{m.Name}\" but must be a-z, A-Z, 0-9, underscores or dashes, at most 64 characters");
                    }
                    if (v3)
                    {
                        if (m.ToolCallId is null)
                        {
                            throw new ChatRequestException($"messages[{i}]: a tool message needs tool_call_id (v3 and later)");
                        }
                        if (!CallId().IsMatch(m.ToolCallId))
                        {
                            throw new ChatRequestException($"messages[{i}]: tool_call_id was \"{m.ToolCallId}\" but must be 9 characters a-z, A-Z, 0-9");
                        }
                    }
                    break;
                case ChatRole.System:
                    if (m.Content is null)
                    {
                        throw new ChatRequestException($"messages[{i}]: a system message must have content");
                    }
                    break;
            }
        }

        for (int i = 0; i < request.Tools.Count; i++)
        {
            string name = request.Tools[i].Name;
            if (!FunctionName().IsMatch(name))
            {
                throw new ChatRequestException($"tools[{i}]: function name was \"{name}\" but must be a-z, A-Z, 0-9, underscores or dashes, at most 64 characters");
            }
        }
    }

    private static void ValidateCall(ToolCall call, string where, bool v3, ValidationMode mode, bool isLast)
    {
        if (v3)
        {
            if (call.Id != ToolCall.NullId && !CallId().IsMatch(call.Id))
            {
                throw new ChatRequestException($"{where}: tool call id was \"{call.Id}\" but must be 9 characters a-z, A-Z, 0-9");
            }
            if (mode == ValidationMode.Finetuning && !isLast && call.Id == ToolCall.NullId)
            {
                throw new ChatRequestException($"{where}: a tool call of an assistant message that is not last needs an id in finetuning mode");
            }
            if (mode == ValidationMode.Serving && call.Id == ToolCall.NullId)
            {
                throw new ChatRequestException($"{where}: a tool call needs an id in serving mode");
            }
        }
        if (!FunctionName().IsMatch(call.Name))
        {
            throw new ChatRequestException($"{where}: function name was \"{call.Name}\" but must be a-z, A-Z, 0-9, underscores or dashes, at most 64 characters");
        }
    }

    private static void ValidateLast(ChatMessage last, bool continueFinal, ValidationMode mode, bool v3)
    {
        if (mode == ValidationMode.Finetuning)
        {
            if (last.Role != ChatRole.Assistant)
            {
                throw new ChatRequestException($"the last message must be an assistant message for finetuning, not {Name(last.Role)}");
            }
            if (continueFinal)
            {
                throw new ChatRequestException("cannot continue the final message in finetuning mode");
            }
            if (v3)
            {
                foreach (var call in last.ToolCalls ?? [])
                {
                    ValidateCall(call, "the last message", v3, mode, isLast: true);
                }
            }
            return;
        }
        bool badAssistant = last.Role == ChatRole.Assistant && !last.Prefix && !continueFinal;
        bool badRole = last.Role is not (ChatRole.User or ChatRole.Tool);
        if (badAssistant && badRole)
        {
            throw new ChatRequestException(
                $"the last message must be a user or tool message (or an assistant message with prefix=true, or with continue_final_message), not {Name(last.Role)}");
        }
        if (continueFinal && (last.Role != ChatRole.Assistant || last.Prefix))
        {
            throw new ChatRequestException(
                $"continue_final_message needs the last message to be an assistant message without prefix, not {(last.Prefix ? "a prefix" : Name(last.Role))}");
        }
    }

    private static void ValidateOrder(IReadOnlyList<ChatMessage> messages)
    {
        for (int i = 1; i < messages.Count; i++)
        {
            var prev = messages[i - 1].Role;
            var cur = messages[i].Role;
            bool ok = prev switch
            {
                ChatRole.System => cur is ChatRole.User or ChatRole.Assistant or ChatRole.System,
                ChatRole.User => cur is ChatRole.Assistant or ChatRole.System or ChatRole.User,
                ChatRole.Assistant => cur is ChatRole.Assistant or ChatRole.User or ChatRole.Tool,
                _ => cur is ChatRole.Assistant or ChatRole.Tool or ChatRole.User,
            };
            if (!ok)
            {
                string hint = cur == ChatRole.Tool ? " (a tool message must answer a call of the assistant message before it)" : "";
                throw new ChatRequestException($"messages[{i}]: unexpected role '{Name(cur)}' after role '{Name(prev)}'{hint}");
            }
        }
    }

    /// <summary>Every assistant message's calls must be answered by as many tool messages before the next assistant message.</summary>
    private static void ValidateCallsAnswered(IReadOnlyList<ChatMessage> messages, ValidationMode mode)
    {
        int expected = 0;
        for (int i = 1; i < messages.Count; i++) // mistral-common skips the first message here
        {
            var m = messages[i];
            if (m.Role == ChatRole.Tool)
            {
                expected--;
            }
            else if (m.Role == ChatRole.Assistant)
            {
                if (expected != 0)
                {
                    throw new ChatRequestException($"messages[{i}]: not the same number of function calls and responses before this assistant message ({(expected > 0 ? $"{expected} call(s) unanswered" : $"{-expected} response(s) without a call")})");
                }
                if (m.ToolCalls is not null)
                {
                    expected = m.ToolCalls.Count;
                }
            }
        }
        if (expected != 0 && mode == ValidationMode.Serving)
        {
            throw new ChatRequestException($"not the same number of function calls and responses at the end of the conversation ({(expected > 0 ? $"{expected} call(s) unanswered" : $"{-expected} response(s) without a call")})");
        }
        if (expected < 0 && mode == ValidationMode.Finetuning)
        {
            throw new ChatRequestException("more tool responses than tool calls");
        }
    }

    private static string Name(ChatRole r) => r.ToString().ToLowerInvariant();
}
