using System.Text;
using System.Text.Json;
using Bora.Chat;

namespace Bora.Server;

/// <summary>
/// Turns the wire messages and tools of a chat request into a <see cref="ChatRequest"/> for the renderer.
/// Roles and field types are checked here (400 naming the field); the rest of the shape (content chunks,
/// tool calls, tool definitions) is parsed by <see cref="ChatRequest.Parse"/> so the server reads a chat
/// exactly as <c>bora chat-render</c> does, and mistral-common's rules are checked when rendering.
/// </summary>
public static class ChatRequestMapping
{
    /// <summary>
    /// Mistral's guardrail system prompt, documented at docs.mistral.ai ("Guardrailing"): <c>safe_prompt: true</c>
    /// prepends it to the messages as a system message.
    /// </summary>
    public const string SafePrompt =
        "Always assist with care, respect, and truth. Respond with utmost utility yet securely. Avoid harmful, unethical, prejudiced, or negative content. Ensure replies promote fairness and positivity.";

    /// <summary>Maps <paramref name="messages"/> and <paramref name="tools"/> (a JSON array, or undefined/null).</summary>
    /// <exception cref="ApiException">400 for a missing or malformed message or tool; the param names the field.</exception>
    public static ChatRequest ToChatRequest(List<ChatMessage>? messages, JsonElement tools, bool safePrompt = false)
    {
        if (messages is null || messages.Count == 0)
        {
            throw ApiException.BadRequest("messages must be a non-empty array", "messages");
        }
        if (tools.ValueKind is not (JsonValueKind.Undefined or JsonValueKind.Null or JsonValueKind.Array))
        {
            throw ApiException.BadRequest($"tools is a JSON {tools.ValueKind}; expected an array of {{\"type\":\"function\",\"function\":{{...}}}}", "tools");
        }
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteStartArray("messages");
            if (safePrompt)
            {
                w.WriteStartObject();
                w.WriteString("role", "system");
                w.WriteString("content", SafePrompt);
                w.WriteEndObject();
            }
            for (int i = 0; i < messages.Count; i++)
            {
                var m = messages[i] ?? throw ApiException.BadRequest($"messages[{i}] is null", $"messages[{i}]");
                if (m.Role is not ("system" or "user" or "assistant" or "tool"))
                {
                    throw ApiException.BadRequest($"messages[{i}].role is '{m.Role}'; expected system, user, assistant or tool", $"messages[{i}].role");
                }
                w.WriteStartObject();
                w.WriteString("role", m.Role);
                Copy(w, "content", m.Content, i, JsonValueKind.String, JsonValueKind.Array);
                Copy(w, "tool_calls", m.ToolCalls, i, JsonValueKind.Array);
                Copy(w, "tool_call_id", m.ToolCallId, i, JsonValueKind.String);
                Copy(w, "name", m.Name, i, JsonValueKind.String);
                Copy(w, "prefix", m.Prefix, i, JsonValueKind.True, JsonValueKind.False);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            if (tools.ValueKind == JsonValueKind.Array)
            {
                w.WriteStartArray("tools");
                foreach (var tool in tools.EnumerateArray())
                {
                    WriteTool(w, tool);
                }
                w.WriteEndArray();
            }
            w.WriteEndObject();
        }
        ChatRequest request;
        try
        {
            request = ChatRequest.Parse(Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length));
        }
        catch (ChatRequestException e)
        {
            // The safe prompt shifts message indices by one: name the client's own index.
            string message = safePrompt ? ShiftIndices(e.Message) : e.Message;
            throw ApiException.BadRequest(message, message.StartsWith("tools", StringComparison.Ordinal) ? "tools" : "messages");
        }
        for (int i = 0; i < request.Messages.Count; i++)
        {
            if (request.Messages[i].Prefix && i != request.Messages.Count - 1)
            {
                throw ApiException.BadRequest($"messages[{i - (safePrompt ? 1 : 0)}] has prefix: true but is not the last message; only the final assistant message can be a prefix", "messages");
            }
        }
        return request;
    }

    /// <summary>
    /// Copies a tool; a function without <c>parameters</c> (OpenAI allows that for a function that takes none)
    /// gets the empty schema <c>{}</c>, which mistral-common requires to be present.
    /// </summary>
    private static void WriteTool(Utf8JsonWriter w, JsonElement tool)
    {
        if (tool.ValueKind != JsonValueKind.Object || !tool.TryGetProperty("function", out var f) || f.ValueKind != JsonValueKind.Object
            || (f.TryGetProperty("parameters", out var p) && p.ValueKind != JsonValueKind.Null))
        {
            tool.WriteTo(w); // as given: ChatRequest.Parse reports what is wrong with it
            return;
        }
        w.WriteStartObject();
        foreach (var property in tool.EnumerateObject())
        {
            if (property.NameEquals("function"))
            {
                w.WriteStartObject("function");
                foreach (var fp in f.EnumerateObject())
                {
                    if (!fp.NameEquals("parameters"))
                    {
                        fp.WriteTo(w);
                    }
                }
                w.WriteStartObject("parameters");
                w.WriteEndObject();
                w.WriteEndObject();
            }
            else
            {
                property.WriteTo(w);
            }
        }
        w.WriteEndObject();
    }

    private static void Copy(Utf8JsonWriter w, string name, JsonElement value, int i, params ReadOnlySpan<JsonValueKind> allowed)
    {
        if (value.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null)
        {
            return;
        }
        if (!allowed.Contains(value.ValueKind))
        {
            throw ApiException.BadRequest($"messages[{i}].{name} is a JSON {value.ValueKind}; expected {string.Join(" or ", allowed.ToArray())}", $"messages[{i}].{name}");
        }
        w.WritePropertyName(name);
        value.WriteTo(w);
    }

    private static string ShiftIndices(string message) =>
        System.Text.RegularExpressions.Regex.Replace(message, @"messages\[(\d+)\]",
            m => $"messages[{int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) - 1}]",
            System.Text.RegularExpressions.RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));
}
