using System.Text;
using Bora.Tokenizers;

namespace Bora.Chat;

/// <summary>A tool call the model generated.</summary>
/// <param name="Name">The function name.</param>
/// <param name="Arguments">The arguments as JSON text, written as Python's json.dumps writes them ("{}" when absent).</param>
/// <param name="Id">The call id when the model wrote one (v3+ models do), else null.</param>
public sealed record ParsedToolCall(string Name, string Arguments, string? Id);

/// <summary>What one generated token added.</summary>
/// <param name="ContentDelta">New text of the assistant's answer (outside tool calls).</param>
/// <param name="Calls">Tool calls completed by this token.</param>
/// <param name="Errors">Tool-call text found malformed by this token.</param>
public readonly record struct ToolCallUpdate(string ContentDelta, IReadOnlyList<ParsedToolCall> Calls, IReadOnlyList<string> Errors);

/// <summary>Everything parsed from a generated answer.</summary>
/// <param name="Content">The answer's text outside tool calls.</param>
/// <param name="Calls">Every well-formed tool call, in order.</param>
/// <param name="Errors">One message per malformed call or segment (with the offending text); empty when all parsed.</param>
public sealed record ToolCallParseResult(string Content, IReadOnlyList<ParsedToolCall> Calls, IReadOnlyList<string> Errors);

/// <summary>
/// Parses tool calls out of generated tokens as they stream: text before <c>[TOOL_CALLS]</c> is content;
/// after it comes JSON, either a list of <c>{"name", "arguments", "id"?}</c> objects (v2-v7) or one such object.
/// Each call is reported as soon as its object closes, however many tokens it is spread over; several
/// <c>[TOOL_CALLS]</c> segments are allowed. Malformed JSON, a call without a name, or a segment cut off by
/// the end of generation is reported in <see cref="ToolCallParseResult.Errors"/>; nothing is thrown for bad
/// model output.
/// </summary>
/// <remarks>
/// A small scanner follows the JSON text character by character (string and escape state, bracket depth), so
/// it knows where each top-level object of the list ends without re-parsing the whole text at each token;
/// each finished object is then parsed with <see cref="PythonJson"/>. EOS ends the answer; other control
/// tokens are ignored.
/// </remarks>
public sealed class ToolCallParser
{
    private static readonly IReadOnlyList<ParsedToolCall> NoCalls = [];
    private static readonly IReadOnlyList<string> NoErrors = [];

    private readonly ITokenizer _tok;
    private readonly TokenId? _toolCallsId;
    private readonly StreamingDecoder _contentDecoder;
    private readonly StreamingDecoder _jsonDecoder;
    private readonly StringBuilder _content = new();
    private readonly List<ParsedToolCall> _calls = [];
    private readonly List<string> _errors = [];

    // Scanner state of the current [TOOL_CALLS] segment.
    private bool _inCalls;
    private bool _ended;
    private readonly StringBuilder _segment = new();  // all JSON text of the segment
    private int _depth;               // bracket depth
    private bool _inString, _escape;
    private bool _topIsList;          // the segment's first value is a list
    private bool _segmentClosed;      // the top-level value has closed
    private int _itemStart = -1;      // index in _segment where the current top-level object began

    /// <param name="tokenizer">The model's tokenizer (its [TOOL_CALLS] control token marks calls; none means content only).</param>
    public ToolCallParser(ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        _tok = tokenizer;
        _toolCallsId = ControlTokens.Of(tokenizer).TryGet("[TOOL_CALLS]", out var id) ? id : null;
        _contentDecoder = new StreamingDecoder(tokenizer);
        _jsonDecoder = new StreamingDecoder(tokenizer);
    }

    /// <summary>Feeds one generated token; returns the content text and the calls it completed.</summary>
    public ToolCallUpdate Push(TokenId id)
    {
        if (_ended)
        {
            return new ToolCallUpdate("", NoCalls, NoErrors);
        }
        int callsBefore = _calls.Count, errorsBefore = _errors.Count;
        string delta = "";
        if (_toolCallsId is { } tc && id == tc)
        {
            EndSegment(final: false);
            _inCalls = true;
            _jsonDecoder.Reset();
        }
        else if (id == _tok.Eos)
        {
            delta = Finish(final: true);
        }
        else if (_tok.IsControl(id))
        {
            // Other control tokens carry no text.
        }
        else if (_inCalls)
        {
            Scan(_jsonDecoder.Push(id));
        }
        else
        {
            delta = _contentDecoder.Push(id);
            _content.Append(delta);
        }
        return new ToolCallUpdate(delta, Slice(_calls, callsBefore), Slice(_errors, errorsBefore));
    }

    /// <summary>Ends the stream (idempotent) and returns everything parsed.</summary>
    public ToolCallParseResult Finish()
    {
        Finish(final: true);
        return new ToolCallParseResult(_content.ToString(), _calls.ToArray(), _errors.ToArray());
    }

    /// <summary>Parses a whole generated answer at once.</summary>
    public static ToolCallParseResult Parse(ITokenizer tokenizer, IEnumerable<TokenId> generated)
    {
        ArgumentNullException.ThrowIfNull(generated);
        var p = new ToolCallParser(tokenizer);
        foreach (var id in generated)
        {
            p.Push(id);
        }
        return p.Finish();
    }

    private string Finish(bool final)
    {
        if (_ended)
        {
            return "";
        }
        string tail = _contentDecoder.Flush();
        _content.Append(tail);
        EndSegment(final);
        _ended = true;
        return tail;
    }

    private static IReadOnlyList<T> Slice<T>(List<T> list, int from) => list.Count == from ? [] : list.GetRange(from, list.Count - from);

    private void Scan(string text)
    {
        foreach (char c in text)
        {
            int pos = _segment.Length;
            _segment.Append(c);
            if (_segmentClosed)
            {
                continue; // trailing text after the value: checked in EndSegment
            }
            if (_inString)
            {
                if (_escape)
                {
                    _escape = false;
                }
                else if (c == '\\')
                {
                    _escape = true;
                }
                else if (c == '"')
                {
                    _inString = false;
                }
                continue;
            }
            switch (c)
            {
                case '"':
                    _inString = true;
                    break;
                case '[' or '{':
                    if (_depth == 0)
                    {
                        _topIsList = c == '[';
                        if (!_topIsList)
                        {
                            _itemStart = pos;
                        }
                    }
                    else if (_depth == 1 && _topIsList && c == '{')
                    {
                        _itemStart = pos;
                    }
                    _depth++;
                    break;
                case ']' or '}':
                    _depth--;
                    if (_itemStart >= 0 && ((_topIsList && _depth == 1) || (!_topIsList && _depth == 0)))
                    {
                        AddCall(_segment.ToString(_itemStart, pos + 1 - _itemStart));
                        _itemStart = -1;
                    }
                    if (_depth <= 0)
                    {
                        _segmentClosed = true;
                    }
                    break;
            }
        }
    }

    private void EndSegment(bool final)
    {
        if (!_inCalls)
        {
            return;
        }
        _segment.Append(_jsonDecoder.Flush());
        string all = _segment.ToString();
        if (!_segmentClosed)
        {
            string trimmed = all.Trim();
            _errors.Add(trimmed.Length == 0 ? "[TOOL_CALLS] was not followed by any JSON"
                : trimmed[0] is not ('[' or '{') ? $"the tool-call JSON is malformed (expected a list or an object): {Clip(all)}"
                : $"the tool-call JSON is incomplete{(final ? " at the end of generation" : "")}: {Clip(all)}");
        }
        else
        {
            // Only whitespace may follow the value; the whole segment must also be valid JSON.
            if (!PythonJson.TryLoads(all, out var value))
            {
                _errors.Add($"the tool-call JSON is malformed: {Clip(all)}");
            }
            else if (_topIsList && value is List<object?> list && list.Any(x => x is not PyDict))
            {
                _errors.Add($"the tool-call list holds something other than objects: {Clip(all)}");
            }
        }
        _inCalls = false;
        _segment.Clear();
        _depth = 0;
        _inString = _escape = _topIsList = _segmentClosed = false;
        _itemStart = -1;
    }

    private void AddCall(string json)
    {
        if (!PythonJson.TryLoads(json, out var value) || value is not PyDict d)
        {
            _errors.Add($"a tool call is not a valid JSON object: {Clip(json)}");
            return;
        }
        if (!d.TryGetValue("name", out var name) || name is not string n || n.Length == 0)
        {
            _errors.Add($"a tool call has no \"name\" string: {Clip(json)}");
            return;
        }
        string args = "{}";
        if (d.TryGetValue("arguments", out var a) && a is not null)
        {
            // A model may write the arguments as a JSON string holding JSON: keep the inner text then.
            args = a is string s ? s : PythonJson.Dumps(a);
        }
        string? id = d.TryGetValue("id", out var i) && i is string idText ? idText : null;
        _calls.Add(new ParsedToolCall(n, args, id));
    }

    private static string Clip(string s) => s.Length <= 200 ? s : s[..200] + "…";
}
