using System.Text;

namespace Bora.Tokenizers.Tests;

/// <summary>The request file of the oracle scripts (tests/tools): {"encode": [text, ...], "decode": [[id, ...], ...]}.</summary>
internal static class OracleJson
{
    /// <summary>
    /// JSON with every character outside printable ASCII escaped as \uXXXX, so lone surrogates survive
    /// (JavaScript's JSON.parse turns "\ud800" into a lone surrogate, as intended; Python's json.load too).
    /// </summary>
    public static string Request(IReadOnlyList<string> encode, IReadOnlyList<int[]> decode)
    {
        var sb = new StringBuilder();
        sb.Append("{\"encode\":[");
        for (var i = 0; i < encode.Count; i++)
        {
            if (i > 0)
            {
                sb.Append(',');
            }
            sb.Append('"');
            foreach (var c in encode[i])
            {
                if (c is >= ' ' and <= '~' and not '"' and not '\\')
                {
                    sb.Append(c);
                }
                else
                {
                    sb.Append("\\u").Append(((int)c).ToString("x4"));
                }
            }
            sb.Append('"');
        }
        sb.Append("],\"decode\":[");
        sb.AppendJoin(',', decode.Select(ids => "[" + string.Join(',', ids) + "]"));
        sb.Append("]}");
        return sb.ToString();
    }
}
