using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Bora.Chat;
using Bora.Serving;
using Bora.Tokenizers;

namespace Bora.Server;

/// <summary>An answer after tool-call parsing.</summary>
/// <param name="Content">The text of the answer (null when it is only tool calls).</param>
/// <param name="ToolCalls">The calls, with ids; empty when the answer is text.</param>
/// <param name="HeldText">Text that was held back while streaming and must still be sent as content (malformed calls).</param>
/// <param name="Errors">Why held tool-call text was given back as content (empty otherwise).</param>
public sealed record ShapedAnswer(string? Content, IReadOnlyList<ToolCallOut> ToolCalls, string HeldText, IReadOnlyList<string> Errors)
{
    /// <summary>OpenAI's finish_reason: "tool_calls" when the answer holds calls, else the engine's.</summary>
    public string FinishReasonFor(Bora.Generation.FinishReason engineReason) =>
        ToolCalls.Count > 0 ? "tool_calls" : engineReason is Bora.Generation.FinishReason.Length or Bora.Generation.FinishReason.ContextFull ? "length" : "stop";
}

/// <summary>
/// Splits a generated chat answer into content and tool calls as it streams. Text before the model's
/// <c>[TOOL_CALLS]</c> token streams as content at once; everything after it is held back and the tokens go
/// through <see cref="ToolCallParser"/>. When generation ends, well-formed calls become OpenAI tool calls
/// (<c>{id, type: "function", function: {name, arguments}}</c>, arguments a JSON string); malformed call text
/// (bad JSON, a call without a name, cut off by max_tokens) is given back as plain content instead — bad model
/// output is never an error.
/// </summary>
/// <remarks>
/// The engine's deltas carry the sampled token and the text that became safe to show (after stop strings);
/// control tokens such as <c>[TOOL_CALLS]</c> show no text, so the split point is the delta whose token is
/// <c>[TOOL_CALLS]</c>; text on that delta itself is content (the engine releases text held back for stop strings
/// with the control token that ends the text run). Call ids the model wrote are kept when they are the 9 alphanumerics mistral-common
/// requires of ids sent back; otherwise a random such id is made.
/// </remarks>
public sealed partial class ChatOutputShaper
{
    private readonly ToolCallParser? _parser;
    private readonly TokenId? _toolCallsId;
    private readonly StringBuilder _content = new();
    private readonly StringBuilder _held = new();
    private bool _inCalls;

    /// <param name="tokenizer">The model's tokenizer.</param>
    /// <param name="parseTools">False: every token is content (the request had no tools).</param>
    public ChatOutputShaper(ITokenizer tokenizer, bool parseTools)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        if (parseTools && ControlTokens.Of(tokenizer).TryGet("[TOOL_CALLS]", out var id))
        {
            _toolCallsId = id;
            _parser = new ToolCallParser(tokenizer);
        }
    }

    /// <summary>True once a <c>[TOOL_CALLS]</c> token came (later text is held back).</summary>
    public bool InToolCalls => _inCalls;

    /// <summary>Feeds one engine delta; returns the content text to stream now (possibly empty).</summary>
    public string Push(GenerationDelta delta)
    {
        bool textIsContent = !_inCalls; // text riding on the [TOOL_CALLS] delta was held back before it (stop strings)
        if (_parser is not null && delta.Token is { } token)
        {
            _parser.Push(token);
            if (token == _toolCallsId)
            {
                _inCalls = true;
            }
        }
        if (!textIsContent)
        {
            _held.Append(delta.Text);
            return "";
        }
        _content.Append(delta.Text);
        return delta.Text;
    }

    /// <summary>Ends the answer: the content and the calls (see <see cref="ShapedAnswer"/>).</summary>
    public ShapedAnswer Finish()
    {
        if (_parser is null || !_inCalls)
        {
            return new ShapedAnswer(_content.ToString(), [], "", []);
        }
        var parsed = _parser.Finish();
        if (parsed.Errors.Count > 0 || parsed.Calls.Count == 0)
        {
            string held = _held.ToString();
            var errors = parsed.Errors.Count > 0 ? parsed.Errors : ["[TOOL_CALLS] was followed by no call"];
            return new ShapedAnswer(_content.ToString() + held, [], held, errors);
        }
        var calls = new List<ToolCallOut>(parsed.Calls.Count);
        foreach (var c in parsed.Calls)
        {
            string id = c.Id is { } given && CallId().IsMatch(given) ? given : NewCallId();
            calls.Add(new ToolCallOut(null, id, "function", new ToolCallFunctionOut(c.Name, c.Arguments)));
        }
        string content = _content.ToString();
        return new ShapedAnswer(content.Length == 0 ? null : content, calls, "", []);
    }

    /// <summary>A random id of 9 characters a-z, A-Z, 0-9 (what mistral-common accepts back in v3+ chats).</summary>
    public static string NewCallId()
    {
        const string Alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        return RandomNumberGenerator.GetString(Alphabet, 9);
    }

    [GeneratedRegex("^[a-zA-Z0-9]{9}$", RegexOptions.CultureInvariant)]
    private static partial Regex CallId();
}
