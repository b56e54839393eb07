using System.Globalization;
using System.Numerics;
using System.Text;
using System.Text.Json;

namespace Bora.Chat;

/// <summary>
/// JSON as Python's <c>json</c> module reads and writes it, which is what mistral-common feeds to the
/// tokenizer: <c>json.loads</c> then <c>json.dumps(value, ensure_ascii=False)</c>.
/// </summary>
/// <remarks>
/// <para>Values are plain .NET objects: <c>null</c>, <see cref="bool"/>, <see cref="BigInteger"/> (a JSON number
/// without '.', 'e' or 'E' is a Python int, of any size), <see cref="double"/> (any other number is a Python
/// float), <see cref="string"/>, <see cref="List{T}"/> of values (a list) and <see cref="PyDict"/> (a dict that
/// keeps insertion order).</para>
/// <para><b>Writing</b> matches <c>json.dumps(v, ensure_ascii=False)</c>: separators ", " and ": "; strings
/// escape only '"', '\\', \n, \r, \t, \b, \f and other characters below U+0020 (as \u00xx, lower-case hex);
/// non-ASCII is written as is; floats as Python's <c>repr</c> (shortest round-trip digits, "1.0", "1e-05",
/// "1e+16", "Infinity", "NaN").</para>
/// <para><b>Reading</b> matches <c>json.loads</c> except that Python's extensions NaN, Infinity and -Infinity
/// are rejected (System.Text.Json does not read them); a duplicate key keeps its first position and takes
/// the last value, as a Python dict does.</para>
/// </remarks>
public static class PythonJson
{
    /// <summary>Parses JSON text as <c>json.loads</c>; false when it is not valid JSON.</summary>
    public static bool TryLoads(string text, out object? value)
    {
        ArgumentNullException.ThrowIfNull(text);
        try
        {
            using var doc = JsonDocument.Parse(text, new JsonDocumentOptions { MaxDepth = 512 });
            value = FromElement(doc.RootElement);
            return true;
        }
        catch (JsonException)
        {
            value = null;
            return false;
        }
    }

    /// <summary>Converts a parsed JSON element to a Python-like value (see the class remarks).</summary>
    public static object? FromElement(JsonElement e)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.Null:
                return null;
            case JsonValueKind.True:
                return true;
            case JsonValueKind.False:
                return false;
            case JsonValueKind.String:
                return e.GetString();
            case JsonValueKind.Number:
                string raw = e.GetRawText();
                if (raw.AsSpan().IndexOfAny('.', 'e', 'E') >= 0)
                {
                    return double.Parse(raw, NumberStyles.Float, CultureInfo.InvariantCulture);
                }
                return BigInteger.Parse(raw, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
            case JsonValueKind.Array:
                var list = new List<object?>(e.GetArrayLength());
                foreach (var item in e.EnumerateArray())
                {
                    list.Add(FromElement(item));
                }
                return list;
            case JsonValueKind.Object:
                var dict = new PyDict();
                foreach (var p in e.EnumerateObject())
                {
                    dict[p.Name] = FromElement(p.Value);
                }
                return dict;
            default:
                throw new ArgumentException($"unexpected JSON value kind {e.ValueKind}", nameof(e));
        }
    }

    /// <summary>Serializes as <c>json.dumps(value, ensure_ascii=False)</c>.</summary>
    public static string Dumps(object? value)
    {
        var sb = new StringBuilder();
        Write(sb, value);
        return sb.ToString();
    }

    private static void Write(StringBuilder sb, object? value)
    {
        switch (value)
        {
            case null:
                sb.Append("null");
                break;
            case bool b:
                sb.Append(b ? "true" : "false");
                break;
            case string s:
                WriteString(sb, s);
                break;
            case BigInteger i:
                sb.Append(i.ToString(CultureInfo.InvariantCulture));
                break;
            case int i:
                sb.Append(i.ToString(CultureInfo.InvariantCulture));
                break;
            case long l:
                sb.Append(l.ToString(CultureInfo.InvariantCulture));
                break;
            case double d:
                sb.Append(FloatRepr(d));
                break;
            case PyDict dict:
                sb.Append('{');
                bool first = true;
                foreach (var (k, v) in dict)
                {
                    if (!first)
                    {
                        sb.Append(", ");
                    }
                    first = false;
                    WriteString(sb, k);
                    sb.Append(": ");
                    Write(sb, v);
                }
                sb.Append('}');
                break;
            case IEnumerable<object?> list:
                sb.Append('[');
                bool firstItem = true;
                foreach (var item in list)
                {
                    if (!firstItem)
                    {
                        sb.Append(", ");
                    }
                    firstItem = false;
                    Write(sb, item);
                }
                sb.Append(']');
                break;
            default:
                throw new ArgumentException($"cannot serialize a {value.GetType().Name} as Python JSON", nameof(value));
        }
    }

    private static void WriteString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < ' ')
                    {
                        sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    }
                    else
                    {
                        sb.Append(c);
                    }
                    break;
            }
        }
        sb.Append('"');
    }

    /// <summary>
    /// Python's <c>repr(float)</c>: the shortest digits that round-trip, written with an exponent when the
    /// decimal point position <c>p</c> (value = 0.d1d2... × 10^p) is ≤ -4 or > 16, else in fixed notation
    /// with at least one fractional digit.
    /// </summary>
    /// <example>1.0 → "1.0"; 1e16 → "1e+16"; 1234567890123456.0 → "1234567890123456.0"; 0.0001 → "0.0001";
    /// 0.00001 → "1e-05"; 1.5e-7 → "1.5e-07"; 1e100 → "1e+100".</example>
    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d))
        {
            return "NaN";
        }
        if (double.IsInfinity(d))
        {
            return d > 0 ? "Infinity" : "-Infinity";
        }
        if (d == 0)
        {
            return double.IsNegative(d) ? "-0.0" : "0.0";
        }
        // "E16" is not shortest; "R" is, in either fixed or exponent form: take its digits and exponent.
        string r = Math.Abs(d).ToString("R", CultureInfo.InvariantCulture);
        int exp = 0;
        int ePos = r.IndexOfAny(['E', 'e']);
        string mantissa = r;
        if (ePos >= 0)
        {
            exp = int.Parse(r.AsSpan(ePos + 1), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
            mantissa = r[..ePos];
        }
        int dot = mantissa.IndexOf('.', StringComparison.Ordinal);
        string intPart = dot >= 0 ? mantissa[..dot] : mantissa;
        string fracPart = dot >= 0 ? mantissa[(dot + 1)..] : "";
        string digits = (intPart + fracPart).TrimStart('0');
        int leadingZeros = (intPart + fracPart).Length - digits.Length;
        int pointPos = intPart.Length + exp - leadingZeros; // value = 0.digits × 10^pointPos
        digits = digits.TrimEnd('0');
        if (digits.Length == 0)
        {
            digits = "0";
        }

        var sb = new StringBuilder();
        if (d < 0)
        {
            sb.Append('-');
        }
        if (pointPos <= -4 || pointPos > 16)
        {
            sb.Append(digits[0]);
            if (digits.Length > 1)
            {
                sb.Append('.').Append(digits, 1, digits.Length - 1);
            }
            int e = pointPos - 1;
            sb.Append('e').Append(e < 0 ? '-' : '+').Append(Math.Abs(e).ToString("00", CultureInfo.InvariantCulture));
        }
        else if (pointPos <= 0)
        {
            sb.Append("0.").Append('0', -pointPos).Append(digits);
        }
        else if (pointPos >= digits.Length)
        {
            sb.Append(digits).Append('0', pointPos - digits.Length).Append(".0");
        }
        else
        {
            sb.Append(digits, 0, pointPos).Append('.').Append(digits, pointPos, digits.Length - pointPos);
        }
        return sb.ToString();
    }
}

/// <summary>A Python dict: string keys in insertion order; setting an existing key keeps its position.</summary>
public sealed class PyDict : IEnumerable<KeyValuePair<string, object?>>
{
    private readonly List<string> _order = [];
    private readonly Dictionary<string, object?> _values = new(StringComparer.Ordinal);

    /// <summary>Gets or sets a value; a new key goes last.</summary>
    public object? this[string key]
    {
        get => _values[key];
        set
        {
            if (!_values.ContainsKey(key))
            {
                _order.Add(key);
            }
            _values[key] = value;
        }
    }

    /// <summary>Number of keys.</summary>
    public int Count => _order.Count;

    /// <summary>Whether the key is present.</summary>
    public bool ContainsKey(string key) => _values.ContainsKey(key);

    /// <summary>Looks a key up.</summary>
    public bool TryGetValue(string key, out object? value) => _values.TryGetValue(key, out value);

    /// <inheritdoc/>
    public IEnumerator<KeyValuePair<string, object?>> GetEnumerator()
    {
        foreach (var k in _order)
        {
            yield return new KeyValuePair<string, object?>(k, _values[k]);
        }
    }

    System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
}
