using System.Text;
using System.Text.RegularExpressions;
using Bora.Tokenizers;

namespace Bora.Generation.Constraints;

/// <summary>State of a <see cref="ToolCallGrammar"/>: the segment, position in it, candidate names, and the arguments' JSON state.</summary>
public record struct ToolCallState
{
    /// <summary>Index into the grammar's segment list (see <see cref="ToolCallGrammar"/>).</summary>
    public byte Segment;

    /// <summary>Bytes matched in the current literal segment, or name characters matched.</summary>
    public byte Pos;

    /// <summary>Whitespace bytes in the current run.</summary>
    public byte Ws;

    /// <summary>Name or id segment: inside the quotes.</summary>
    public bool InName;

    /// <summary>The current call already has its "id".</summary>
    public bool HasId;

    /// <summary>Name segment: candidates are names[Lo .. Hi) (sorted, all sharing the Pos characters matched).</summary>
    public byte Lo, Hi;

    /// <summary>Arguments segment: the JSON object's state (functions without an argument schema).</summary>
    public JsonState Args;

    /// <summary>Arguments segment: the schema grammar's state (functions with an argument schema; default until the first byte).</summary>
    public JsonSchemaState Schema;
}

/// <summary>
/// The text Mistral models write after the <c>[TOOL_CALLS]</c> control token (v2 .. v7, as
/// <c>ToolCallParser</c> reads it): a JSON list of calls
/// <c>[{"name": "NAME", "arguments": {...}}, ...]</c>, each NAME one of the declared function names, the
/// arguments any JSON object (<see cref="JsonGrammar"/> limits) or, for a function given an argument schema, a
/// text of that <see cref="JsonSchemaGrammar"/>, optionally followed by the call id v3+ models
/// write (<c>, "id": "a1B2c3D4e"</c>: 1 to 64 ASCII letters and digits). Up to <see cref="MaxWhitespace"/> whitespace
/// bytes may separate the pieces and precede the list. With <c>several = false</c> exactly one call is allowed.
/// Complete when the list closes.
/// </summary>
/// <remarks>
/// Segments, in order: 0 "[", 1 "{", 2 "\"name\"", 3 ":", 4 NAME (quote, one of the names, quote), 5 ",",
/// 6 "\"arguments\"", 7 ":", 8 the arguments object, 9 "}" (or, once per call, "," then 12 "\"id\"",
/// 13 ":", 14 the id string, back to 9), 10 "," (back to 1) or "]", 11 done.
/// Names are kept sorted, so the names sharing a matched prefix form a range [Lo, Hi).
/// </remarks>
public sealed partial class ToolCallGrammar : IByteGrammar<ToolCallState>
{
    private const int Done = 11;
    private static readonly byte[][] Literal =
    [
        "["u8.ToArray(), "{"u8.ToArray(), "\"name\""u8.ToArray(), ":"u8.ToArray(), [], ","u8.ToArray(),
        "\"arguments\""u8.ToArray(), ":"u8.ToArray(), [], "}"u8.ToArray(), [], [], "\"id\""u8.ToArray(), ":"u8.ToArray(),
    ];

    private readonly byte[][] _names;   // sorted by ordinal bytes
    private readonly bool _several;
    private readonly JsonGrammar _args = JsonGrammar.Object;
    private readonly JsonSchemaGrammar?[] _schemas; // (names) argument grammar of each sorted name, null = any object

    /// <param name="names">Allowed function names: 1 to 64 of [A-Za-z0-9_.-], 1 to 255 distinct names.</param>
    /// <param name="several">Allow several calls in the list (parallel tool calls); false = exactly one.</param>
    /// <param name="argumentSchemas">Compiled "parameters" schemas by function name; functions not in it take any JSON object.</param>
    public ToolCallGrammar(IEnumerable<string> names, bool several, IReadOnlyDictionary<string, JsonSchemaGrammar>? argumentSchemas = null)
    {
        ArgumentNullException.ThrowIfNull(names);
        var list = names.Distinct(StringComparer.Ordinal).ToList();
        if (list.Count is 0 or > 255)
        {
            throw new ArgumentException($"expected 1 to 255 function names; got {list.Count}", nameof(names));
        }
        foreach (var n in list)
        {
            if (!NamePattern().IsMatch(n))
            {
                throw new ArgumentException($"function name '{n}' must be 1 to 64 characters of a-z, A-Z, 0-9, '_', '.' or '-'", nameof(names));
            }
        }
        list.Sort(StringComparer.Ordinal);
        _names = [.. list.Select(Encoding.ASCII.GetBytes)];
        _schemas = [.. list.Select(n => argumentSchemas is not null && argumentSchemas.TryGetValue(n, out var g) ? g : null)];
        _several = several;
    }

    /// <summary>Most whitespace bytes in a row between the pieces.</summary>
    public int MaxWhitespace { get; init; } = 4;

    public ToolCallState Start => new() { Hi = (byte)_names.Length };

    public bool IsComplete(in ToolCallState state) => state.Segment == Done;

    /// <summary>A constraint for the whole tool-call output: the <c>[TOOL_CALLS]</c> token, then this grammar.</summary>
    /// <param name="tokenizer">The model's tokenizer.</param>
    /// <param name="toolCallsToken">The <c>[TOOL_CALLS]</c> control token.</param>
    /// <param name="names">Allowed function names.</param>
    /// <param name="several">Allow several calls.</param>
    /// <param name="argumentSchemas">Argument schemas by function name (see the constructor); null = any JSON object for every function.</param>
    public static ITokenConstraint ForcedCalls(ITokenizer tokenizer, TokenId toolCallsToken, IEnumerable<string> names, bool several,
        IReadOnlyDictionary<string, JsonSchemaGrammar>? argumentSchemas = null) =>
        new ForcedTokenConstraint(toolCallsToken, new GrammarConstraint<ToolCallState>(TokenTrie.Of(tokenizer), new ToolCallGrammar(names, several, argumentSchemas)));

    public bool Next(in ToolCallState state, byte b, out ToolCallState next)
    {
        next = state;
        int seg = state.Segment;
        if (seg == Done)
        {
            return false;
        }
        if (seg == 8 && _schemas[state.Lo] is { } schema)
        {
            // The name segment left Lo on the called function.
            var current = state.Schema.Readings == 0 ? schema.Start : state.Schema;
            if (!schema.Next(current, b, out next.Schema))
            {
                return false;
            }
            if (schema.IsComplete(next.Schema))
            {
                next.Segment = 9;
                next.Schema = default;
            }
            return true;
        }
        if (seg == 8)
        {
            if (!_args.Next(state.Args, b, out next.Args))
            {
                return false;
            }
            if (next.Args.Mode == JsonMode.Done)
            {
                next.Segment = 9;
                next.Args = default;
            }
            return true;
        }
        bool atStart = state.Pos == 0 && !state.InName;
        if (atStart && b is (byte)' ' or (byte)'\n' or (byte)'\t' or (byte)'\r')
        {
            if (state.Ws >= MaxWhitespace)
            {
                return false;
            }
            next.Ws++;
            return true;
        }
        next.Ws = 0;
        if (seg == 4)
        {
            return Name(ref next, b);
        }
        if (seg == 14)
        {
            return Id(ref next, b);
        }
        if (seg == 9 && b == ',' && !state.HasId)
        {
            next.Segment = 12;
            return true;
        }
        if (seg == 10)
        {
            if (b == ',' && _several)
            {
                next.Segment = 1;
                next.HasId = false;
                return true;
            }
            if (b == ']')
            {
                next.Segment = Done;
                return true;
            }
            return false;
        }
        byte[] lit = Literal[seg];
        if (b != lit[state.Pos])
        {
            return false;
        }
        next.Pos++;
        if (next.Pos == lit.Length)
        {
            next.Pos = 0;
            next.Segment = (byte)(seg == 9 ? 10 : seg + 1);
        }
        return true;
    }

    /// <summary>The id string: quote, 1 to 64 ASCII letters or digits, quote; then back to segment 9 ("}").</summary>
    private static bool Id(ref ToolCallState s, byte b)
    {
        if (!s.InName)
        {
            if (b != '"')
            {
                return false;
            }
            s.InName = true;
            s.Pos = 0;
            return true;
        }
        if (b == '"' && s.Pos > 0)
        {
            s.InName = false;
            s.Pos = 0;
            s.HasId = true;
            s.Segment = 9;
            return true;
        }
        if (s.Pos >= 64 || !char.IsAsciiLetterOrDigit((char)b))
        {
            return false;
        }
        s.Pos++;
        return true;
    }

    private bool Name(ref ToolCallState s, byte b)
    {
        if (!s.InName)
        {
            if (b != '"')
            {
                return false;
            }
            s.InName = true;
            s.Pos = 0;
            s.Lo = 0;
            s.Hi = (byte)_names.Length;
            return true;
        }
        int pos = s.Pos;
        if (b == '"')
        {
            // The shortest candidate sorts first: it is complete when its length is pos.
            if (_names[s.Lo].Length != pos)
            {
                return false;
            }
            s.InName = false;
            s.Pos = 0;
            s.Segment = 5;
            return true;
        }
        int lo = s.Lo, hi = s.Hi;
        while (lo < hi && (_names[lo].Length <= pos || _names[lo][pos] < b))
        {
            lo++;
        }
        int end = lo;
        while (end < hi && _names[end].Length > pos && _names[end][pos] == b)
        {
            end++;
        }
        if (end == lo)
        {
            return false;
        }
        s.Lo = (byte)lo;
        s.Hi = (byte)end;
        s.Pos++;
        return true;
    }

    [GeneratedRegex("^[A-Za-z0-9_.-]{1,64}$")]
    private static partial Regex NamePattern();
}
