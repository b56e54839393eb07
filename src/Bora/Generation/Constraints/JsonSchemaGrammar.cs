using System.Runtime.CompilerServices;
using System.Text.Json;
using Bora.Tokenizers;

namespace Bora.Generation.Constraints;

/// <summary>What a compiled schema node accepts.</summary>
internal enum SchemaKind : byte
{
    /// <summary>An object with declared properties only, in declared order.</summary>
    Object,

    /// <summary>Any object (any keys, values of any JSON).</summary>
    AnyObject,

    /// <summary>An array of <see cref="SchemaNode.Items"/>, bounded by min/max items.</summary>
    Array,

    /// <summary>A string (length bounds in characters).</summary>
    String,

    /// <summary>Any JSON number.</summary>
    Number,

    /// <summary>An integer: an optional '-' and digits, no fraction nor exponent.</summary>
    Integer,

    /// <summary>One of a set of JSON texts (enum, const, true/false, null).</summary>
    Literals,

    /// <summary>Any of <see cref="SchemaNode.Alternatives"/>.</summary>
    AnyOf,
}

/// <summary>One node of a compiled schema (immutable once the grammar is built).</summary>
internal sealed class SchemaNode
{
    public SchemaKind Kind;
    public int[] Alternatives = [];       // AnyOf: node ids
    public int[] PropertyValues = [];     // Object: (P) value node of each declared property
    public bool[] Required = [];          // Object: (P) the property is required
    public int[] KeySets = [];            // Object: (P + 1) literal set of the keys allowed when the next property index is i
    public bool[] CanClose = [];          // Object: (P + 1) '}' allowed when the next property index is i (no required one left)
    public int Items = -1;                // Array: node of the items
    public int MinItems;
    public int MaxItems = -1;             // -1: unbounded
    public int MinLength;                 // String: characters (code points)
    public int MaxLength = -1;
    public int Literals = -1;             // Literals: set id
}

/// <summary>
/// A sorted list of byte strings (JSON texts) matched a byte at a time; <see cref="Tags"/> maps each entry
/// to what it stands for (the property index of an object key).
/// </summary>
internal sealed class LiteralSet(byte[][] entries, int[] tags)
{
    public readonly byte[][] Entries = entries;  // sorted ordinally: a prefix sorts before its extensions
    public readonly int[] Tags = tags;
}

/// <summary>An open container: its node, and the next property index (objects) or the items so far, saturated (arrays).</summary>
internal sealed record SchemaFrame(SchemaFrame? Parent, int Node, int Index, int Depth);

/// <summary>What a <see cref="SchemaThread"/> expects next.</summary>
internal enum SchemaMode : byte
{
    Value, ObjectFirst, Key, KeyLiteral, Colon, After, ArrayFirst,
    String, Escape, Unicode, Utf8,
    NumMinus, NumZero, NumInt, NumDot, NumFrac, NumE, NumESign, NumExp,
    Literal, Done,
}

/// <summary>
/// One deterministic reading of the text so far (anyOf forks a reading per alternative). The container stack
/// is an immutable linked list of frames compared by value, so equal threads accept the same continuations.
/// </summary>
internal record struct SchemaThread
{
    public SchemaFrame? Stack;
    public SchemaMode Mode;
    public int Node;     // Value: the node expected; String: its node (length bounds); Colon: the value node of the key
    public int Lit;      // Literal / KeyLiteral: the set
    public ushort Pos;   // Literal: bytes matched
    public ushort Lo;    // Literal: candidates Entries[Lo .. Hi)
    public ushort Hi;
    public ushort Count; // numbers: characters; Unicode: hex digits; Utf8: continuation bytes left
    public byte Sub;     // numbers: 1 = integer; Unicode: 1 after a leading d/D; Utf8: range of the next byte
    public byte Ws;      // whitespace bytes in the current run
    public bool IsKey;   // String: an object key of an AnyObject
    public int Len;      // String: characters so far (saturated at the node's bound)
}

/// <summary>
/// State of a <see cref="JsonSchemaGrammar"/>: the set of live readings of the text so far (one unless an
/// anyOf is still ambiguous). A value with structural equality, so it keys mask caches.
/// </summary>
public readonly struct JsonSchemaState : IEquatable<JsonSchemaState>
{
    private readonly SchemaThread _one;            // the reading, when there is one (no array: the common case allocates nothing)
    private readonly SchemaThread[]? _many;        // the readings, when there are several

    internal JsonSchemaState(SchemaThread one)
    {
        _one = one;
        Readings = 1;
    }

    internal JsonSchemaState(SchemaThread[] many)
    {
        _many = many;
        Readings = many.Length;
    }

    /// <summary>Live readings (0 only for the default value).</summary>
    public int Readings { get; }

    /// <summary>Reading <paramref name="i"/> (0 .. <see cref="Readings"/>).</summary>
    internal SchemaThread this[int i] => _many is null ? _one : _many[i];

    public bool Equals(JsonSchemaState other)
    {
        if (Readings != other.Readings)
        {
            return false;
        }
        if (_many is null || other._many is null)
        {
            return Readings == 0 || (_many is null && other._many is null ? _one.Equals(other._one) : this[0].Equals(other[0]));
        }
        if (ReferenceEquals(_many, other._many))
        {
            return true;
        }
        for (int i = 0; i < Readings; i++)
        {
            if (!_many[i].Equals(other._many[i]))
            {
                return false;
            }
        }
        return true;
    }

    public override bool Equals(object? obj) => obj is JsonSchemaState s && Equals(s);

    /// <summary>Computed on demand (states are made for every trie node of a mask walk, hashed only to key the cache).</summary>
    public override int GetHashCode()
    {
        var h = new HashCode();
        for (int i = 0; i < Readings; i++)
        {
            h.Add(this[i]);
        }
        return h.ToHashCode();
    }

    public static bool operator ==(JsonSchemaState left, JsonSchemaState right) => left.Equals(right);

    public static bool operator !=(JsonSchemaState left, JsonSchemaState right) => !left.Equals(right);
}

/// <summary>
/// A byte-level automaton for the JSON texts that validate against a JSON schema (the subset
/// <see cref="JsonSchemaCompiler"/> documents), with <see cref="JsonGrammar"/>'s limits: at most
/// <see cref="MaxDepth"/> nested containers, <see cref="MaxWhitespace"/> whitespace bytes in a row, numbers of at
/// most <see cref="MaxNumberLength"/> characters, strings of well-formed UTF-8 without raw control characters nor
/// \u surrogates. Objects with declared properties take them in declared order (optional ones may be skipped,
/// required ones may not, no other key); enum / const values are written as the schema writes them (strings
/// in System.Text.Json's relaxed escaping). The root is an object; the text ends right after it closes.
/// </summary>
/// <remarks>
/// The state is a set of readings (<see cref="SchemaThread"/>): at an anyOf each alternative is tried, and a
/// reading that rejects a byte drops out; it is capped at <see cref="MaxReadings"/> (more is a rejection).
/// Example: schema <c>{"type":"object","properties":{"a":{"anyOf":[{"type":"integer"},{"enum":["x"]}]}},"required":["a"]}</c>
/// accepts <c>{"a": 5}</c> and <c>{"a":"x"}</c>; after <c>{"a":</c> there is one reading (Value of the anyOf),
/// after <c>{"a":5</c> the integer reading alone survives.
/// </remarks>
public sealed class JsonSchemaGrammar : IByteGrammar<JsonSchemaState>
{
    /// <summary>Most simultaneous readings of an ambiguous anyOf.</summary>
    public const int MaxReadings = 64;

    private readonly SchemaNode[] _nodes;
    private readonly LiteralSet[] _sets;
    private readonly int _anyValue;
    private readonly ConditionalWeakTable<TokenTrie, GrammarMaskCache<JsonSchemaState>> _caches = new();

    internal JsonSchemaGrammar(SchemaNode[] nodes, LiteralSet[] sets, int root, int anyValue)
    {
        _nodes = nodes;
        _sets = sets;
        _anyValue = anyValue;
        Start = new JsonSchemaState(new SchemaThread { Mode = SchemaMode.Value, Node = root });
    }

    /// <summary>Compiles a schema (see <see cref="JsonSchemaCompiler"/>).</summary>
    /// <exception cref="JsonSchemaNotSupportedException">The schema uses an unsupported keyword or shape; the message names it and its path.</exception>
    public static JsonSchemaGrammar Compile(JsonElement schema) => JsonSchemaCompiler.Compile(schema);

    /// <summary>
    /// <see cref="Compile(JsonElement)"/> through a process-wide cache keyed by the schema's JSON text, so requests
    /// repeating a schema share its grammar and token masks. Bounded: it forgets everything at <see cref="MaxCachedSchemas"/>.
    /// </summary>
    /// <exception cref="JsonSchemaNotSupportedException">As <see cref="Compile(JsonElement)"/> (failures are not cached).</exception>
    public static JsonSchemaGrammar GetOrCompile(JsonElement schema)
    {
        string key = schema.GetRawText();
        if (Compiled.TryGetValue(key, out var g))
        {
            return g;
        }
        g = Compile(schema);
        if (Compiled.Count >= MaxCachedSchemas)
        {
            Compiled.Clear();
        }
        return Compiled.GetOrAdd(key, g);
    }

    /// <summary>
    /// Most grammars <see cref="GetOrCompile"/> keeps. Each holds up to <see cref="MasksPerTokenizer"/> masks of V / 8
    /// bytes per tokenizer (4 MiB for a 131k vocabulary), so the cache stays under ~128 MiB.
    /// </summary>
    public const int MaxCachedSchemas = 32;

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, JsonSchemaGrammar> Compiled = new(StringComparer.Ordinal);

    /// <summary>Compiles a schema given as JSON text.</summary>
    /// <exception cref="JsonSchemaNotSupportedException">Not JSON, or unsupported (see <see cref="Compile(JsonElement)"/>).</exception>
    public static JsonSchemaGrammar Compile(string schemaJson)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(schemaJson);
        }
        catch (JsonException e)
        {
            throw new JsonSchemaNotSupportedException("$", $"the schema is not valid JSON: {e.Message}");
        }
        using (doc)
        {
            return Compile(doc.RootElement);
        }
    }

    /// <summary>Nodes of the compiled schema (a measure of its size).</summary>
    public int NodeCount => _nodes.Length;

    /// <summary>Most open containers (1 .. 63).</summary>
    public int MaxDepth { get; init; } = 32;

    /// <summary>Most whitespace bytes in a row outside strings.</summary>
    public int MaxWhitespace { get; init; } = 16;

    /// <summary>Longest number, in characters.</summary>
    public int MaxNumberLength { get; init; } = 32;

    public JsonSchemaState Start { get; }

    public bool IsComplete(in JsonSchemaState state)
    {
        for (int i = 0; i < state.Readings; i++)
        {
            if (state[i].Mode == SchemaMode.Done)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>A constraint over this grammar for <paramref name="tokenizer"/>; masks are shared by every constraint of this grammar and tokenizer.</summary>
    public ITokenConstraint Constraint(ITokenizer tokenizer)
    {
        var trie = TokenTrie.Of(tokenizer);
        return new GrammarConstraint<JsonSchemaState>(trie, this, _caches.GetValue(trie, _ => new GrammarMaskCache<JsonSchemaState>(MasksPerTokenizer)));
    }

    /// <summary>Most token masks cached per grammar and tokenizer.</summary>
    public const int MasksPerTokenizer = 256;

    public bool Next(in JsonSchemaState state, byte b, out JsonSchemaState next)
    {
        next = state;
        int readings = state.Readings;
        if (readings == 0)
        {
            return false;
        }
        if (readings == 1 && state[0].Mode == SchemaMode.String && b is >= 0x20 and < 0x80 and not (byte)'"' and not (byte)'\\')
        {
            // Fast path for the bulk of string bytes: one reading, a plain ASCII character.
            var t = state[0];
            if (t.IsKey || t.Node < 0 || _nodes[t.Node] is { MinLength: 0, MaxLength: < 0 })
            {
                return true; // nothing counted: the same state
            }
            var node = _nodes[t.Node];
            if (node.MaxLength >= 0 && t.Len >= node.MaxLength)
            {
                return false;
            }
            if (t.Len < Math.Max(node.MinLength, node.MaxLength))
            {
                t.Len++;
            }
            next = new JsonSchemaState(t);
            return true;
        }
        var results = t_scratch ??= new List<SchemaThread>(8);
        results.Clear();
        for (int i = 0; i < readings; i++)
        {
            Step(state[i], b, results);
        }
        if (results.Count == 0)
        {
            return false;
        }
        if (results.Count == 1)
        {
            next = new JsonSchemaState(results[0]); // one reading: held inline, nothing allocated
            return true;
        }
        for (int i = results.Count - 1; i > 0; i--)
        {
            if (results.IndexOf(results[i]) < i)
            {
                results.RemoveAt(i);
            }
        }
        if (results.Count > MaxReadings)
        {
            return false;
        }
        next = results.Count == 1 ? new JsonSchemaState(results[0]) : new JsonSchemaState([.. results]);
        return true;
    }

    [ThreadStatic]
    private static List<SchemaThread>? t_scratch; // Next is not reentrant: Step only appends to it

    private static bool IsWs(byte b) => b is (byte)' ' or (byte)'\n' or (byte)'\t' or (byte)'\r';

    private bool Space(ref SchemaThread t)
    {
        if (t.Ws >= MaxWhitespace)
        {
            return false;
        }
        t.Ws++;
        return true;
    }

    /// <summary>Feeds <paramref name="b"/> to one reading; every reading that accepts it is added to <paramref name="output"/>.</summary>
    private void Step(SchemaThread t, byte b, List<SchemaThread> output)
    {
        switch (t.Mode)
        {
            case SchemaMode.Value:
                {
                    if (IsWs(b))
                    {
                        if (Space(ref t))
                        {
                            output.Add(t);
                        }
                        return;
                    }
                    var node = _nodes[t.Node];
                    if (node.Kind == SchemaKind.AnyOf)
                    {
                        foreach (int alt in node.Alternatives)
                        {
                            var u = t;
                            u.Node = alt;
                            Step(u, b, output);
                        }
                        return;
                    }
                    BeginValue(t, node, b, output);
                    return;
                }
            case SchemaMode.ObjectFirst:
            case SchemaMode.Key:
                {
                    if (IsWs(b))
                    {
                        if (Space(ref t))
                        {
                            output.Add(t);
                        }
                        return;
                    }
                    var frame = t.Stack!;
                    var obj = _nodes[frame.Node];
                    bool any = obj.Kind == SchemaKind.AnyObject;
                    if (t.Mode == SchemaMode.ObjectFirst && b == '}')
                    {
                        if (any || obj.CanClose[frame.Index])
                        {
                            Close(ref t, output);
                        }
                        return;
                    }
                    if (any)
                    {
                        if (b == '"')
                        {
                            Clean(ref t);
                            t.Mode = SchemaMode.String;
                            t.IsKey = true;
                            t.Node = -1;
                            output.Add(t);
                        }
                        return;
                    }
                    int set = obj.KeySets[frame.Index];
                    if (_sets[set].Entries.Length == 0)
                    {
                        return;
                    }
                    Clean(ref t);
                    t.Mode = SchemaMode.KeyLiteral;
                    t.Lit = set;
                    t.Hi = (ushort)_sets[set].Entries.Length;
                    MatchLiteral(t, b, output);
                    return;
                }
            case SchemaMode.KeyLiteral:
            case SchemaMode.Literal:
                MatchLiteral(t, b, output);
                return;
            case SchemaMode.Colon:
                if (IsWs(b))
                {
                    if (Space(ref t))
                    {
                        output.Add(t);
                    }
                }
                else if (b == ':')
                {
                    t.Mode = SchemaMode.Value;
                    t.Ws = 0;
                    output.Add(t);
                }
                return;
            case SchemaMode.After:
                After(t, b, output);
                return;
            case SchemaMode.ArrayFirst:
                {
                    if (IsWs(b))
                    {
                        if (Space(ref t))
                        {
                            output.Add(t);
                        }
                        return;
                    }
                    var arr = _nodes[t.Stack!.Node];
                    if (b == ']')
                    {
                        if (arr.MinItems == 0)
                        {
                            Close(ref t, output);
                        }
                        return;
                    }
                    if (arr.MaxItems != 0)
                    {
                        t.Mode = SchemaMode.Value;
                        t.Node = arr.Items;
                        t.Ws = 0;
                        Step(t, b, output);
                    }
                    return;
                }
            case SchemaMode.String:
                if (StringByte(ref t, b, output))
                {
                    output.Add(t);
                }
                return;
            case SchemaMode.Escape:
                if (b is (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t')
                {
                    t.Mode = SchemaMode.String;
                    output.Add(t);
                }
                else if (b == 'u')
                {
                    t.Mode = SchemaMode.Unicode;
                    t.Count = 0;
                    t.Sub = 0;
                    output.Add(t);
                }
                return;
            case SchemaMode.Unicode:
                {
                    if (!JsonStringBytes.UnicodeDigit(b, ref t.Count, ref t.Sub, out bool complete))
                    {
                        return; // \uD800-\uDFFF: surrogates are refused
                    }
                    if (complete)
                    {
                        t.Mode = SchemaMode.String;
                    }
                    output.Add(t);
                    return;
                }
            case SchemaMode.Utf8:
                {
                    bool ok = JsonStringBytes.Utf8Continuation(b, t.Sub);
                    if (!ok)
                    {
                        return;
                    }
                    t.Sub = 0;
                    t.Count--;
                    if (t.Count == 0)
                    {
                        t.Mode = SchemaMode.String;
                    }
                    output.Add(t);
                    return;
                }
            case SchemaMode.NumMinus:
            case SchemaMode.NumZero:
            case SchemaMode.NumInt:
            case SchemaMode.NumDot:
            case SchemaMode.NumFrac:
            case SchemaMode.NumE:
            case SchemaMode.NumESign:
            case SchemaMode.NumExp:
                Number(t, b, output);
                return;
            default:
                return; // Done
        }
    }

    private void BeginValue(SchemaThread t, SchemaNode node, byte b, List<SchemaThread> output)
    {
        int id = t.Node;
        Clean(ref t);
        switch (node.Kind)
        {
            case SchemaKind.Object:
            case SchemaKind.AnyObject:
            case SchemaKind.Array:
                {
                    bool obj = node.Kind != SchemaKind.Array;
                    int depth = (t.Stack?.Depth ?? 0) + 1;
                    if (b != (obj ? '{' : '[') || depth > Math.Min(MaxDepth, 63))
                    {
                        return;
                    }
                    t.Stack = new SchemaFrame(t.Stack, id, 0, depth);
                    t.Mode = obj ? SchemaMode.ObjectFirst : SchemaMode.ArrayFirst;
                    output.Add(t);
                    return;
                }
            case SchemaKind.String:
                if (b == '"')
                {
                    t.Mode = SchemaMode.String;
                    t.Node = id;
                    output.Add(t);
                }
                return;
            case SchemaKind.Number:
            case SchemaKind.Integer:
                if (t.Stack is null)
                {
                    return; // a root number could never end; the compiler only makes object roots
                }
                t.Sub = (byte)(node.Kind == SchemaKind.Integer ? 1 : 0);
                t.Count = 1;
                t.Mode = b switch
                {
                    (byte)'-' => SchemaMode.NumMinus,
                    (byte)'0' => SchemaMode.NumZero,
                    >= (byte)'1' and <= (byte)'9' => SchemaMode.NumInt,
                    _ => SchemaMode.Done,
                };
                if (t.Mode != SchemaMode.Done)
                {
                    output.Add(t);
                }
                return;
            case SchemaKind.Literals:
                t.Mode = SchemaMode.Literal;
                t.Lit = node.Literals;
                t.Hi = (ushort)_sets[node.Literals].Entries.Length;
                MatchLiteral(t, b, output);
                return;
            default:
                return;
        }
    }

    /// <summary>
    /// Literal matching: narrows the candidates sharing the bytes matched so far. A key or a literal ending in a
    /// non-digit ends with its last byte (keys and string/true/false/null texts are prefix-free); a number literal
    /// ends at the first byte that extends no candidate, which then goes to what follows it.
    /// </summary>
    private void MatchLiteral(SchemaThread t, byte b, List<SchemaThread> output)
    {
        var set = _sets[t.Lit];
        byte[][] e = set.Entries;
        int pos = t.Pos, lo = t.Lo, hi = t.Hi;
        while (lo < hi && (e[lo].Length <= pos || e[lo][pos] < b))
        {
            lo++;
        }
        int end = lo;
        while (end < hi && e[end].Length > pos && e[end][pos] == b)
        {
            end++;
        }
        if (end == lo)
        {
            // A number literal that is whole here ends; b belongs to what follows.
            if (t.Mode == SchemaMode.Literal && pos > 0 && e[t.Lo].Length == pos && EndValue(ref t))
            {
                Step(t, b, output);
            }
            return;
        }
        t.Lo = (ushort)lo;
        t.Hi = (ushort)end;
        t.Pos = (ushort)(pos + 1);
        if (end - lo == 1 && e[lo].Length == pos + 1 && b is not (>= (byte)'0' and <= (byte)'9'))
        {
            if (t.Mode == SchemaMode.KeyLiteral)
            {
                var frame = t.Stack!;
                int property = set.Tags[lo];
                t.Stack = frame with { Index = property + 1 };
                int value = _nodes[frame.Node].PropertyValues[property];
                Clean(ref t);
                t.Mode = SchemaMode.Colon;
                t.Node = value;
                output.Add(t);
                return;
            }
            if (EndValue(ref t))
            {
                output.Add(t);
            }
            return;
        }
        output.Add(t);
    }

    private bool StringByte(ref SchemaThread t, byte b, List<SchemaThread> output)
    {
        (int min, int max) = t.IsKey || t.Node < 0 ? (0, -1) : (_nodes[t.Node].MinLength, _nodes[t.Node].MaxLength);
        if (b == '"')
        {
            if (t.Len < min)
            {
                return false;
            }
            if (t.IsKey)
            {
                Clean(ref t);
                t.Mode = SchemaMode.Colon;
                t.Node = _anyValue;
                return true;
            }
            return EndValue(ref t);
        }
        if (b < 0x20)
        {
            return false; // raw control characters must be escaped
        }
        if (b < 0x80 || b == '\\')
        {
            // ASCII, or an escape: one character.
        }
        else
        {
            (int left, byte range) = JsonStringBytes.Utf8Lead(b);
            if (left == 0)
            {
                return false;
            }
            t.Mode = SchemaMode.Utf8;
            t.Count = (ushort)left;
            t.Sub = range;
        }
        if (max >= 0 && t.Len >= max)
        {
            return false;
        }
        if (t.Len < Math.Max(min, max))
        {
            t.Len++; // saturates at the larger bound: longer strings are all alike
        }
        if (b == '\\')
        {
            t.Mode = SchemaMode.Escape;
        }
        return true;
    }

    private void Number(SchemaThread t, byte b, List<SchemaThread> output)
    {
        bool digit = b is >= (byte)'0' and <= (byte)'9';
        bool integer = t.Sub == 1;
        bool dot = b == '.' && !integer, exp = b is (byte)'e' or (byte)'E' && !integer;
        SchemaMode? to = t.Mode switch
        {
            SchemaMode.NumMinus => b == '0' ? SchemaMode.NumZero : digit ? SchemaMode.NumInt : null,
            SchemaMode.NumZero => dot ? SchemaMode.NumDot : exp ? SchemaMode.NumE : null,
            SchemaMode.NumInt => digit ? SchemaMode.NumInt : dot ? SchemaMode.NumDot : exp ? SchemaMode.NumE : null,
            SchemaMode.NumDot => digit ? SchemaMode.NumFrac : null,
            SchemaMode.NumFrac => digit ? SchemaMode.NumFrac : exp ? SchemaMode.NumE : null,
            SchemaMode.NumE => digit ? SchemaMode.NumExp : b is (byte)'+' or (byte)'-' ? SchemaMode.NumESign : null,
            SchemaMode.NumESign => digit ? SchemaMode.NumExp : null,
            _ => digit ? SchemaMode.NumExp : null, // NumExp
        };
        if (to is { } mode)
        {
            if (t.Count < MaxNumberLength)
            {
                t.Mode = mode;
                t.Count++;
                output.Add(t);
            }
            return;
        }
        // The number ends here if it may; the byte then belongs to what follows it.
        if (t.Mode is SchemaMode.NumZero or SchemaMode.NumInt or SchemaMode.NumFrac or SchemaMode.NumExp && EndValue(ref t))
        {
            Step(t, b, output);
        }
    }

    private void After(SchemaThread t, byte b, List<SchemaThread> output)
    {
        if (IsWs(b))
        {
            if (Space(ref t))
            {
                output.Add(t);
            }
            return;
        }
        var frame = t.Stack!;
        var node = _nodes[frame.Node];
        t.Ws = 0;
        if (node.Kind == SchemaKind.Array)
        {
            if (b == ',' && (node.MaxItems < 0 || frame.Index < node.MaxItems))
            {
                t.Mode = SchemaMode.Value;
                t.Node = node.Items;
                output.Add(t);
            }
            else if (b == ']' && frame.Index >= node.MinItems)
            {
                Close(ref t, output);
            }
            return;
        }
        bool any = node.Kind == SchemaKind.AnyObject;
        if (b == ',' && (any || _sets[node.KeySets[frame.Index]].Entries.Length > 0))
        {
            t.Mode = SchemaMode.Key;
            output.Add(t);
        }
        else if (b == '}' && (any || node.CanClose[frame.Index]))
        {
            Close(ref t, output);
        }
    }

    private void Close(ref SchemaThread t, List<SchemaThread> output)
    {
        t.Stack = t.Stack!.Parent;
        if (EndValue(ref t))
        {
            output.Add(t);
        }
    }

    /// <summary>A value ended: the array around it counts it (saturated at its larger bound); Done at the root.</summary>
    private bool EndValue(ref SchemaThread t)
    {
        Clean(ref t);
        if (t.Stack is not { } frame)
        {
            t.Mode = SchemaMode.Done;
            return true;
        }
        var node = _nodes[frame.Node];
        if (node.Kind == SchemaKind.Array)
        {
            int cap = Math.Max(node.MinItems, node.MaxItems);
            if (frame.Index < cap)
            {
                t.Stack = frame with { Index = frame.Index + 1 };
            }
        }
        t.Mode = SchemaMode.After;
        return true;
    }

    /// <summary>Resets the lexer fields so that readings in the same place compare equal.</summary>
    private static void Clean(ref SchemaThread t)
    {
        t.Node = 0;
        t.Lit = 0;
        t.Pos = t.Lo = t.Hi = t.Count = 0;
        t.Sub = t.Ws = 0;
        t.IsKey = false;
        t.Len = 0;
    }
}
