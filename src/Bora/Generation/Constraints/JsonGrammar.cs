namespace Bora.Generation.Constraints;

/// <summary>What a <see cref="JsonGrammar"/> expects next.</summary>
public enum JsonMode : byte
{
    /// <summary>A value (the root, after ':' or ',' in an array).</summary>
    Value,

    /// <summary>Just after '[': a value or ']'.</summary>
    ArrayFirst,

    /// <summary>Just after '{': a key or '}'.</summary>
    ObjectFirst,

    /// <summary>After ',' in an object: a key.</summary>
    Key,

    /// <summary>After a key: ':'.</summary>
    Colon,

    /// <summary>After a value inside a container: ',' or the closer.</summary>
    After,

    /// <summary>Inside a string.</summary>
    String,

    /// <summary>After a backslash in a string.</summary>
    Escape,

    /// <summary>Inside the four hex digits of \u.</summary>
    Unicode,

    /// <summary>Inside a multi-byte UTF-8 character of a string.</summary>
    Utf8,

    /// <summary>Number states: after '-', after a leading 0, integer digits, after '.', fraction digits, after e/E, after the exponent sign, exponent digits.</summary>
    NumMinus,
    NumZero,
    NumInt,
    NumDot,
    NumFrac,
    NumE,
    NumESign,
    NumExp,

    /// <summary>Inside true, false or null.</summary>
    Literal,

    /// <summary>The root value is complete; nothing may follow.</summary>
    Done,
}

/// <summary>
/// State of a <see cref="JsonGrammar"/>: the mode, the container stack as bits (bit d = 1 when the container
/// at depth d is an object), and small counters. A value type with structural equality, so it keys mask caches.
/// </summary>
public record struct JsonState
{
    /// <summary>What comes next.</summary>
    public JsonMode Mode;

    /// <summary>Open containers.</summary>
    public byte Depth;

    /// <summary>Bit d set: the container at depth d (0 = outermost) is an object.</summary>
    public ulong Stack;

    /// <summary>Literal: which (0 true, 1 false, 2 null); Unicode: 1 when the first hex digit was d/D; Utf8: allowed range of the next byte (0 80-BF, 1 A0-BF, 2 80-9F, 3 90-BF, 4 80-8F).</summary>
    public byte Sub;

    /// <summary>Literal: characters matched; Unicode: hex digits seen; Utf8: continuation bytes left; numbers: characters so far.</summary>
    public ushort Count;

    /// <summary>Whitespace bytes in the current run (bounded).</summary>
    public byte Ws;

    /// <summary>String: it is an object key (':' follows it).</summary>
    public bool IsKey;
}

/// <summary>
/// A byte-level pushdown automaton for RFC 8259 JSON, the stack kept in <see cref="JsonState"/> so states
/// are values. Extra limits keep the output finite and parseable by System.Text.Json (whose default
/// maximum depth is 64): at most <see cref="MaxDepth"/> nested containers, at most
/// <see cref="MaxWhitespace"/> whitespace bytes in a row, numbers of at most <see cref="MaxNumberLength"/>
/// characters, strings of well-formed UTF-8 without raw control characters and without \u escapes of
/// surrogates (a lone surrogate is not text). With <see cref="RootObjectOnly"/> the root must be an object
/// (OpenAI's json_object). Leading whitespace is allowed; the text ends right after the root closes. A bare
/// number cannot be the root (nothing may follow it, so it could never end).
/// </summary>
/// <example>
/// <c>{"a": [1, -2.5e3, "x\u00e9"]}</c> is accepted byte by byte; after its final '}' the state is
/// <see cref="JsonMode.Done"/> and every further byte is rejected. <c>{"a" 1}</c> is rejected at '1'.
/// </example>
public sealed class JsonGrammar : IByteGrammar<JsonState>
{
    private static readonly byte[][] Literals = ["true"u8.ToArray(), "false"u8.ToArray(), "null"u8.ToArray()];

    /// <summary>Any root value, default limits.</summary>
    public static JsonGrammar AnyValue { get; } = new();

    /// <summary>The root must be an object (response_format json_object), default limits.</summary>
    public static JsonGrammar Object { get; } = new() { RootObjectOnly = true };

    /// <summary>Most open containers (1 .. 63).</summary>
    public int MaxDepth { get; init; } = 32;

    /// <summary>Most whitespace bytes in a row outside strings.</summary>
    public int MaxWhitespace { get; init; } = 16;

    /// <summary>Longest number, in characters.</summary>
    public int MaxNumberLength { get; init; } = 32;

    /// <summary>Only an object may be the root.</summary>
    public bool RootObjectOnly { get; init; }

    public JsonState Start => default;

    public bool IsComplete(in JsonState state) => state.Mode == JsonMode.Done;

    public bool Next(in JsonState state, byte b, out JsonState next)
    {
        next = state;
        switch (state.Mode)
        {
            case JsonMode.Value:
            case JsonMode.ArrayFirst:
                if (IsWs(b))
                {
                    return Space(ref next);
                }
                if (state.Mode == JsonMode.ArrayFirst && b == ']')
                {
                    return Close(ref next, objectCloser: false);
                }
                return BeginValue(ref next, b);
            case JsonMode.ObjectFirst:
            case JsonMode.Key:
                if (IsWs(b))
                {
                    return Space(ref next);
                }
                if (state.Mode == JsonMode.ObjectFirst && b == '}')
                {
                    return Close(ref next, objectCloser: true);
                }
                if (b == '"')
                {
                    next.Mode = JsonMode.String;
                    next.IsKey = true;
                    next.Ws = 0;
                    return true;
                }
                return false;
            case JsonMode.Colon:
                if (IsWs(b))
                {
                    return Space(ref next);
                }
                if (b == ':')
                {
                    next.Mode = JsonMode.Value;
                    next.Ws = 0;
                    return true;
                }
                return false;
            case JsonMode.After:
                return After(ref next, b);
            case JsonMode.String:
                if (b == '"')
                {
                    next.Mode = state.IsKey ? JsonMode.Colon : state.Depth == 0 ? JsonMode.Done : JsonMode.After;
                    next.IsKey = false;
                    next.Ws = 0;
                    return true;
                }
                if (b == '\\')
                {
                    next.Mode = JsonMode.Escape;
                    return true;
                }
                if (b < 0x20)
                {
                    return false; // raw control characters must be escaped
                }
                if (b < 0x80)
                {
                    return true;
                }
                (int left, byte range) = JsonStringBytes.Utf8Lead(b);
                if (left == 0)
                {
                    return false;
                }
                next.Mode = JsonMode.Utf8;
                next.Count = (ushort)left;
                next.Sub = range;
                return true;
            case JsonMode.Utf8:
                {
                    bool ok = JsonStringBytes.Utf8Continuation(b, state.Sub);
                    if (!ok)
                    {
                        return false;
                    }
                    next.Sub = 0;
                    next.Count--;
                    if (next.Count == 0)
                    {
                        next.Mode = JsonMode.String;
                    }
                    return true;
                }
            case JsonMode.Escape:
                if (b is (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t')
                {
                    next.Mode = JsonMode.String;
                    return true;
                }
                if (b == 'u')
                {
                    next.Mode = JsonMode.Unicode;
                    next.Count = 0;
                    next.Sub = 0;
                    return true;
                }
                return false;
            case JsonMode.Unicode:
                {
                    if (!JsonStringBytes.UnicodeDigit(b, ref next.Count, ref next.Sub, out bool complete))
                    {
                        return false; // \uD800-\uDFFF: surrogates are refused
                    }
                    if (complete)
                    {
                        next.Mode = JsonMode.String;
                    }
                    return true;
                }
            case JsonMode.Literal:
                {
                    byte[] lit = Literals[state.Sub];
                    if (b != lit[state.Count])
                    {
                        return false;
                    }
                    next.Count++;
                    if (next.Count == lit.Length)
                    {
                        return EndScalar(ref next);
                    }
                    return true;
                }
            case JsonMode.NumMinus:
            case JsonMode.NumZero:
            case JsonMode.NumInt:
            case JsonMode.NumDot:
            case JsonMode.NumFrac:
            case JsonMode.NumE:
            case JsonMode.NumESign:
            case JsonMode.NumExp:
                return Number(ref next, b);
            default:
                return false; // Done
        }
    }

    private bool Number(ref JsonState s, byte b)
    {
        bool digit = b is >= (byte)'0' and <= (byte)'9';
        JsonMode? to = s.Mode switch
        {
            JsonMode.NumMinus => b == '0' ? JsonMode.NumZero : digit ? JsonMode.NumInt : null,
            JsonMode.NumZero => b == '.' ? JsonMode.NumDot : b is (byte)'e' or (byte)'E' ? JsonMode.NumE : null,
            JsonMode.NumInt => digit ? JsonMode.NumInt : b == '.' ? JsonMode.NumDot : b is (byte)'e' or (byte)'E' ? JsonMode.NumE : null,
            JsonMode.NumDot => digit ? JsonMode.NumFrac : null,
            JsonMode.NumFrac => digit ? JsonMode.NumFrac : b is (byte)'e' or (byte)'E' ? JsonMode.NumE : null,
            JsonMode.NumE => digit ? JsonMode.NumExp : b is (byte)'+' or (byte)'-' ? JsonMode.NumESign : null,
            JsonMode.NumESign => digit ? JsonMode.NumExp : null,
            _ => digit ? JsonMode.NumExp : null, // NumExp
        };
        if (to is { } mode)
        {
            if (s.Count >= MaxNumberLength)
            {
                return false;
            }
            s.Mode = mode;
            s.Count++;
            return true;
        }
        // The number ends here if it may; the byte then belongs to what follows it.
        if (s.Mode is not (JsonMode.NumZero or JsonMode.NumInt or JsonMode.NumFrac or JsonMode.NumExp))
        {
            return false;
        }
        if (!EndScalar(ref s))
        {
            return false;
        }
        return s.Mode == JsonMode.After && After(ref s, b);
    }

    /// <summary>A number or literal ended: After inside a container; at the root, Done.</summary>
    private static bool EndScalar(ref JsonState s)
    {
        s.Count = 0;
        s.Sub = 0;
        s.Ws = 0;
        s.Mode = s.Depth == 0 ? JsonMode.Done : JsonMode.After;
        return true;
    }

    private bool BeginValue(ref JsonState s, byte b)
    {
        bool root = s.Depth == 0;
        if (root && RootObjectOnly && b != '{')
        {
            return false;
        }
        s.Ws = 0;
        switch (b)
        {
            case (byte)'{':
            case (byte)'[':
                if (s.Depth >= Math.Min(MaxDepth, 63))
                {
                    return false;
                }
                if (b == '{')
                {
                    s.Stack |= 1UL << s.Depth;
                }
                else
                {
                    s.Stack &= ~(1UL << s.Depth);
                }
                s.Depth++;
                s.Mode = b == '{' ? JsonMode.ObjectFirst : JsonMode.ArrayFirst;
                return true;
            case (byte)'"':
                s.Mode = JsonMode.String;
                s.IsKey = false;
                return true;
            case (byte)'-':
                s.Mode = JsonMode.NumMinus;
                s.Count = 1;
                return !root; // a root number could never end (nothing may follow it); refused
            case (byte)'t':
            case (byte)'f':
            case (byte)'n':
                s.Mode = JsonMode.Literal;
                s.Sub = (byte)(b == 't' ? 0 : b == 'f' ? 1 : 2);
                s.Count = 1;
                return true;
            default:
                if (b is >= (byte)'0' and <= (byte)'9' && !root)
                {
                    s.Mode = b == '0' ? JsonMode.NumZero : JsonMode.NumInt;
                    s.Count = 1;
                    return true;
                }
                return false;
        }
    }

    private bool After(ref JsonState s, byte b)
    {
        if (IsWs(b))
        {
            return Space(ref s);
        }
        bool inObject = (s.Stack & (1UL << (s.Depth - 1))) != 0;
        if (b == ',')
        {
            s.Mode = inObject ? JsonMode.Key : JsonMode.Value;
            s.Ws = 0;
            return true;
        }
        if (b == (inObject ? '}' : ']'))
        {
            return Close(ref s, inObject);
        }
        return false;
    }

    private static bool Close(ref JsonState s, bool objectCloser)
    {
        bool inObject = (s.Stack & (1UL << (s.Depth - 1))) != 0;
        if (inObject != objectCloser)
        {
            return false;
        }
        s.Depth--;
        s.Stack &= ~(1UL << s.Depth);
        s.Ws = 0;
        s.Mode = s.Depth == 0 ? JsonMode.Done : JsonMode.After;
        return true;
    }

    private bool Space(ref JsonState s)
    {
        if (s.Ws >= MaxWhitespace)
        {
            return false;
        }
        s.Ws++;
        return true;
    }

    private static bool IsWs(byte b) => b is (byte)' ' or (byte)'\n' or (byte)'\t' or (byte)'\r';
}

/// <summary>Ready-made JSON constraints with mask caches shared per tokenizer.</summary>
public static class JsonConstraints
{
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<TokenTrie, GrammarMaskCache<JsonState>> ObjectCaches = new();

    /// <summary>OpenAI's response_format json_object: one JSON object, then the sequence ends.</summary>
    public static ITokenConstraint Object(Bora.Tokenizers.ITokenizer tokenizer)
    {
        var trie = TokenTrie.Of(tokenizer);
        return new GrammarConstraint<JsonState>(trie, JsonGrammar.Object, ObjectCaches.GetValue(trie, _ => new GrammarMaskCache<JsonState>()));
    }
}
