using System.Text.Json;

namespace Bora.Chat;

/// <summary>Who wrote a chat message.</summary>
public enum ChatRole
{
    System,
    User,
    Assistant,
    Tool,
}

/// <summary>A call of a tool, as an assistant message carries it.</summary>
/// <param name="Id">The call id ("null" when absent, as mistral-common's default); v3+ requires 9 alphanumerics.</param>
/// <param name="Name">The function name.</param>
/// <param name="Arguments">The arguments as JSON text (or any text; mistral-common keeps text that is not JSON as a string).</param>
public sealed record ToolCall(string Id, string Name, string Arguments)
{
    /// <summary>mistral-common's id of a call that has none.</summary>
    public const string NullId = "null";
}

/// <summary>A function the model may call.</summary>
/// <param name="Name">The function name.</param>
/// <param name="Description">What it does ("" when absent).</param>
/// <param name="Parameters">The JSON schema of its parameters, as a Python-like value (see <see cref="PythonJson"/>).</param>
public sealed record ToolDefinition(string Name, string Description, PyDict Parameters);

/// <summary>One message of a chat.</summary>
/// <param name="Role">Who wrote it.</param>
/// <param name="Content">Its text; null for an assistant message with only tool calls.</param>
/// <param name="ToolCalls">The calls of an assistant message.</param>
/// <param name="ToolCallId">The call a tool message answers.</param>
/// <param name="Name">The tool name of a tool message.</param>
/// <param name="Prefix">An assistant message the model must continue (it must be the last one).</param>
public sealed record ChatMessage(
    ChatRole Role,
    string? Content,
    IReadOnlyList<ToolCall>? ToolCalls = null,
    string? ToolCallId = null,
    string? Name = null,
    bool Prefix = false)
{
    public static ChatMessage System(string content) => new(ChatRole.System, content);

    public static ChatMessage User(string content) => new(ChatRole.User, content);

    public static ChatMessage Assistant(string? content, IReadOnlyList<ToolCall>? toolCalls = null, bool prefix = false) =>
        new(ChatRole.Assistant, content, toolCalls, Prefix: prefix);

    public static ChatMessage Tool(string content, string? toolCallId, string? name = null) =>
        new(ChatRole.Tool, content, ToolCallId: toolCallId, Name: name);
}

/// <summary>A chat-completion request: messages and tools, in the OpenAI/Mistral JSON shape.</summary>
public sealed class ChatRequest
{
    public required IReadOnlyList<ChatMessage> Messages { get; init; }

    public IReadOnlyList<ToolDefinition> Tools { get; init; } = [];

    /// <summary>Continue the last (assistant) message instead of closing it (mistral-common's continue_final_message).</summary>
    public bool ContinueFinalMessage { get; init; }

    /// <summary>Reads a request file (see <see cref="Parse"/>).</summary>
    public static ChatRequest Load(string path)
    {
        string text = File.ReadAllText(path);
        try
        {
            return Parse(text);
        }
        catch (ChatRequestException e)
        {
            throw new ChatRequestException($"{path}: {e.Message}");
        }
    }

    /// <summary>
    /// Parses <c>{"messages": [...], "tools": [...], "continue_final_message": false}</c>. Messages have
    /// <c>role</c> (system, user, assistant, tool), <c>content</c> (a string, null, or a list of
    /// <c>{"type": "text", "text": ...}</c> chunks, joined with "\n\n" as mistral-common does), and for
    /// assistants <c>tool_calls</c> (<c>[{"id", "function": {"name", "arguments"}}]</c>, arguments a JSON string
    /// or object) and <c>prefix</c>; for tools <c>tool_call_id</c> and <c>name</c>. Tools are
    /// <c>{"type": "function", "function": {"name", "description", "parameters"}}</c>. Other fields (model,
    /// temperature, ...) are ignored.
    /// </summary>
    /// <exception cref="ChatRequestException">The JSON is invalid or does not have this shape; the message says where.</exception>
    public static ChatRequest Parse(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 512 });
        }
        catch (JsonException e)
        {
            throw new ChatRequestException($"the request is not valid JSON: {e.Message}");
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new ChatRequestException($"the request must be a JSON object, not {root.ValueKind}");
            }
            if (!root.TryGetProperty("messages", out var msgs) || msgs.ValueKind != JsonValueKind.Array)
            {
                throw new ChatRequestException("the request needs a \"messages\" array");
            }
            var messages = new List<ChatMessage>();
            int i = 0;
            foreach (var m in msgs.EnumerateArray())
            {
                messages.Add(ParseMessage(m, $"messages[{i}]"));
                i++;
            }
            var tools = new List<ToolDefinition>();
            if (root.TryGetProperty("tools", out var t) && t.ValueKind != JsonValueKind.Null)
            {
                if (t.ValueKind != JsonValueKind.Array)
                {
                    throw new ChatRequestException("\"tools\" must be an array");
                }
                int k = 0;
                foreach (var tool in t.EnumerateArray())
                {
                    tools.Add(ParseTool(tool, $"tools[{k}]"));
                    k++;
                }
            }
            bool cont = root.TryGetProperty("continue_final_message", out var c) && c.ValueKind == JsonValueKind.True;
            return new ChatRequest { Messages = messages, Tools = tools, ContinueFinalMessage = cont };
        }
    }

    private static ChatMessage ParseMessage(JsonElement m, string where)
    {
        if (m.ValueKind != JsonValueKind.Object)
        {
            throw new ChatRequestException($"{where} must be an object");
        }
        string roleText = RequiredString(m, "role", where);
        ChatRole role = roleText switch
        {
            "system" => ChatRole.System,
            "user" => ChatRole.User,
            "assistant" => ChatRole.Assistant,
            "tool" => ChatRole.Tool,
            _ => throw new ChatRequestException($"{where}.role is \"{roleText}\"; expected system, user, assistant or tool"),
        };
        string? content = ParseContent(m, where);
        if (content is null && role is ChatRole.User or ChatRole.Tool or ChatRole.System)
        {
            throw new ChatRequestException($"{where}: a {roleText} message needs \"content\"");
        }
        List<ToolCall>? calls = null;
        if (m.TryGetProperty("tool_calls", out var tc) && tc.ValueKind != JsonValueKind.Null)
        {
            if (role != ChatRole.Assistant)
            {
                throw new ChatRequestException($"{where}: only assistant messages have tool_calls");
            }
            if (tc.ValueKind != JsonValueKind.Array)
            {
                throw new ChatRequestException($"{where}.tool_calls must be an array");
            }
            calls = [];
            int k = 0;
            foreach (var call in tc.EnumerateArray())
            {
                calls.Add(ParseToolCall(call, $"{where}.tool_calls[{k}]"));
                k++;
            }
        }
        bool prefix = m.TryGetProperty("prefix", out var p) && p.ValueKind == JsonValueKind.True;
        if (prefix && role != ChatRole.Assistant)
        {
            throw new ChatRequestException($"{where}: only assistant messages can be a prefix");
        }
        return new ChatMessage(role, content, calls, OptionalString(m, "tool_call_id", where), OptionalString(m, "name", where), prefix);
    }

    private static string? ParseContent(JsonElement m, string where)
    {
        if (!m.TryGetProperty("content", out var c) || c.ValueKind == JsonValueKind.Null)
        {
            return null;
        }
        if (c.ValueKind == JsonValueKind.String)
        {
            return c.GetString();
        }
        if (c.ValueKind != JsonValueKind.Array)
        {
            throw new ChatRequestException($"{where}.content must be a string, null or a list of text chunks");
        }
        // Text chunks of one message are joined as mistral-common's normalizer joins them (v1-v13: "\n\n"), empty ones skipped.
        var parts = new List<string>();
        int i = 0;
        foreach (var chunk in c.EnumerateArray())
        {
            string type = chunk.ValueKind == JsonValueKind.Object && chunk.TryGetProperty("type", out var ty) && ty.ValueKind == JsonValueKind.String
                ? ty.GetString()! : "";
            if (type != "text")
            {
                throw new ChatRequestException($"{where}.content[{i}] is a \"{type}\" chunk; only text chunks are supported");
            }
            string text = RequiredString(chunk, "text", $"{where}.content[{i}]");
            if (text.Length > 0)
            {
                parts.Add(text);
            }
            i++;
        }
        return string.Join("\n\n", parts);
    }

    private static ToolCall ParseToolCall(JsonElement call, string where)
    {
        if (call.ValueKind != JsonValueKind.Object)
        {
            throw new ChatRequestException($"{where} must be an object");
        }
        string id = OptionalString(call, "id", where) ?? ToolCall.NullId;
        if (!call.TryGetProperty("function", out var f) || f.ValueKind != JsonValueKind.Object)
        {
            throw new ChatRequestException($"{where} needs a \"function\" object");
        }
        string name = RequiredString(f, "name", where + ".function");
        string arguments;
        if (!f.TryGetProperty("arguments", out var a) || a.ValueKind == JsonValueKind.Null)
        {
            arguments = "{}";
        }
        else if (a.ValueKind == JsonValueKind.String)
        {
            arguments = a.GetString()!;
        }
        else if (a.ValueKind == JsonValueKind.Object)
        {
            arguments = PythonJson.Dumps(PythonJson.FromElement(a));
        }
        else
        {
            throw new ChatRequestException($"{where}.function.arguments must be a JSON string or an object");
        }
        return new ToolCall(id, name, arguments);
    }

    private static ToolDefinition ParseTool(JsonElement tool, string where)
    {
        if (tool.ValueKind != JsonValueKind.Object)
        {
            throw new ChatRequestException($"{where} must be an object");
        }
        if (tool.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String && type.GetString() != "function")
        {
            throw new ChatRequestException($"{where}.type is \"{type.GetString()}\"; only \"function\" tools exist");
        }
        if (!tool.TryGetProperty("function", out var f) || f.ValueKind != JsonValueKind.Object)
        {
            throw new ChatRequestException($"{where} needs a \"function\" object");
        }
        string name = RequiredString(f, "name", where + ".function");
        string description = OptionalString(f, "description", where + ".function") ?? "";
        if (!f.TryGetProperty("parameters", out var p) || p.ValueKind != JsonValueKind.Object)
        {
            throw new ChatRequestException($"{where}.function needs a \"parameters\" object (a JSON schema)");
        }
        return new ToolDefinition(name, description, (PyDict)PythonJson.FromElement(p)!);
    }

    private static string RequiredString(JsonElement e, string name, string where) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String
            ? v.GetString()!
            : throw new ChatRequestException($"{where} needs a string \"{name}\"");

    private static string? OptionalString(JsonElement e, string name, string where)
    {
        if (!e.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null)
        {
            return null;
        }
        return v.ValueKind == JsonValueKind.String ? v.GetString() : throw new ChatRequestException($"{where}.{name} must be a string");
    }
}

/// <summary>A chat request that is malformed or breaks mistral-common's rules; the message says what and where.</summary>
public sealed class ChatRequestException(string message) : Exception(message);
