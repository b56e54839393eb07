using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Bora.Tokenizers.Tekken;

/// <summary>
/// Splits text into the pieces that BPE encodes one by one, with the tokenizer file's regex
/// (tiktoken's "pat_str"), giving the same pieces as tiktoken (Rust regex / fancy-regex), which
/// matches code points, not UTF-16 code units.
/// </summary>
/// <remarks>
/// <para>Why not just <c>new Regex(pattern)</c>: .NET regex classes test UTF-16 code units, so a
/// code point above U+FFFF (a surrogate pair) would be seen as two characters of category Cs.
/// That is harmless for emoji (So, neither letter nor number) but wrong for the supplementary
/// letters, digits and marks (CJK Extension B, math alphanumerics, Deseret, Osmanya digits, ...).
/// So when the text holds surrogates, the regex runs over a proxy string with one BMP character of
/// the same general category per code point (lone surrogates count as U+FFFD, as tiktoken replaces
/// them before splitting), and match positions are mapped back to the original text.
/// This is exact for patterns that classify characters only by general category (\p{..}, \s, \S)
/// and BMP literals, which holds for every Tekken pattern; patterns with literal supplementary
/// characters are rejected.</para>
/// <para>Syntax: the Tekken pattern runs unchanged on .NET (\p{Lu} etc., alternation, the
/// (?!\S) lookahead). \s agrees too: .NET's \s is [\t\n\v\f\r\x85\p{Z}], which is exactly Unicode
/// White_Space as used by Rust's regex (JavaScript's \s differs: it adds U+FEFF and lacks U+0085).
/// Possessive quantifiers (X*+, X++, X?+, X{n,m}+), which other tiktoken patterns use and .NET
/// lacks, are rewritten to atomic groups (?>X*) etc. by <see cref="TranslatePattern"/>.</para>
/// </remarks>
internal sealed class TekkenPreTokenizer
{
    private readonly Regex _regex;

    public TekkenPreTokenizer(string pattern)
    {
        TranslatedPattern = TranslatePattern(pattern);
        _regex = new Regex(TranslatedPattern, RegexOptions.Compiled | RegexOptions.CultureInvariant);
    }

    /// <summary>The pattern as given to .NET.</summary>
    public string TranslatedPattern { get; }

    /// <summary>Calls <paramref name="onPiece"/>(start, length) for each piece, in UTF-16 indices of <paramref name="text"/>.</summary>
    public void Split<TState>(string text, ref TState state, PieceHandler<TState> onPiece)
    {
        if (text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') < 0)
        {
            foreach (var m in _regex.EnumerateMatches(text))
            {
                if (m.Length > 0)
                {
                    onPiece(ref state, m.Index, m.Length);
                }
            }
            return;
        }
        // proxy[k] stands for the code point starting at original index map[k]; map[proxy.Length] = text.Length.
        var (proxy, map) = BuildProxy(text);
        foreach (var m in _regex.EnumerateMatches(proxy))
        {
            if (m.Length > 0)
            {
                var start = map[m.Index];
                onPiece(ref state, start, map[m.Index + m.Length] - start);
            }
        }
    }

    /// <summary>The pieces as strings (for tests and inspection).</summary>
    public List<(int Start, int Length)> SplitToList(string text)
    {
        var list = new List<(int, int)>();
        Split(text, ref list, static (ref List<(int, int)> l, int s, int n) => l.Add((s, n)));
        return list;
    }

    public delegate void PieceHandler<TState>(ref TState state, int start, int length);

    private static (string Proxy, int[] Map) BuildProxy(string text)
    {
        var proxy = new StringBuilder(text.Length);
        var map = new List<int>(text.Length + 1);
        for (var i = 0; i < text.Length;)
        {
            map.Add(i);
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                proxy.Append(ProxyFor(CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(text[i], text[i + 1]))));
                i += 2;
            }
            else if (char.IsSurrogate(text[i]))
            {
                proxy.Append('\uFFFD');
                i++;
            }
            else
            {
                proxy.Append(text[i]);
                i++;
            }
        }
        map.Add(text.Length);
        return (proxy.ToString(), map.ToArray());
    }

    /// <summary>A BMP character of the given general category (none of them is White_Space, \r or \n).</summary>
    internal static char ProxyFor(UnicodeCategory category) => category switch
    {
        UnicodeCategory.UppercaseLetter => 'A',
        UnicodeCategory.LowercaseLetter => 'a',
        UnicodeCategory.TitlecaseLetter => '\u01C5',
        UnicodeCategory.ModifierLetter => '\u02B0',
        UnicodeCategory.OtherLetter => '\u05D0',
        UnicodeCategory.NonSpacingMark => '\u0300',
        UnicodeCategory.SpacingCombiningMark => '\u0903',
        UnicodeCategory.EnclosingMark => '\u20DD',
        UnicodeCategory.DecimalDigitNumber => '0',
        UnicodeCategory.LetterNumber => '\u2160',
        UnicodeCategory.OtherNumber => '\u00B2',
        UnicodeCategory.ConnectorPunctuation => '_',
        UnicodeCategory.DashPunctuation => '-',
        UnicodeCategory.OpenPunctuation => '(',
        UnicodeCategory.ClosePunctuation => ')',
        UnicodeCategory.InitialQuotePunctuation => '\u00AB',
        UnicodeCategory.FinalQuotePunctuation => '\u00BB',
        UnicodeCategory.OtherPunctuation => '!',
        UnicodeCategory.MathSymbol => '+',
        UnicodeCategory.CurrencySymbol => '$',
        UnicodeCategory.ModifierSymbol => '^',
        UnicodeCategory.OtherSymbol => '\u00A9',
        UnicodeCategory.Format => '\u00AD',
        UnicodeCategory.PrivateUse => '\uE000',
        UnicodeCategory.Control => '\u0001',
        // Unassigned (Cn) and anything else: U+0378 is unassigned.
        _ => '\u0378',
    };

    /// <summary>
    /// Rewrites a tiktoken (Rust regex) pattern for .NET: possessive quantifiers become atomic groups,
    /// e.g. <c>\p{L}++</c> -> <c>(?&gt;\p{L}+)</c>, <c>[^\s]?+</c> -> <c>(?&gt;[^\s]?)</c>,
    /// <c>\p{N}{1,3}+</c> -> <c>(?&gt;\p{N}{1,3})</c>. Everything else is copied unchanged.
    /// </summary>
    /// <exception cref="ArgumentException">The pattern holds a literal character above U+FFFF, a
    /// possessive quantifier with nothing to apply to, or unbalanced brackets.</exception>
    internal static string TranslatePattern(string pattern)
    {
        if (pattern.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') >= 0)
        {
            throw new ArgumentException("the pattern holds a literal character above U+FFFF, which the UTF-16 proxy matching cannot support");
        }
        var sb = new StringBuilder(pattern.Length + 16);
        var groupStarts = new Stack<int>();   // output positions of open '('
        var atomStart = -1;                   // output position where the last complete atom begins
        var i = 0;
        while (i < pattern.Length)
        {
            var c = pattern[i];
            switch (c)
            {
                case '\\' or '[':
                    {
                        // An escape or a character class is copied whole as one atom.
                        var start = sb.Length;
                        var len = c == '[' ? ClassLength(pattern, i) : EscapeLength(pattern, i);
                        sb.Append(pattern, i, len);
                        i += len;
                        atomStart = start;
                        break;
                    }
                case '(':
                    groupStarts.Push(sb.Length);
                    sb.Append(c);
                    i++;
                    atomStart = -1;
                    break;
                case ')':
                    if (groupStarts.Count == 0)
                    {
                        throw new ArgumentException($"unbalanced ')' at offset {i} of the pattern");
                    }
                    sb.Append(c);
                    i++;
                    atomStart = groupStarts.Pop();
                    break;
                case '*' or '+' or '?' or '{':
                    {
                        var qlen = c == '{' ? BraceQuantifierLength(pattern, i) : 1;
                        if (qlen == 0)
                        {
                            // A literal '{' (not a quantifier) is an atom of its own.
                            atomStart = sb.Length;
                            sb.Append(c);
                            i++;
                            break;
                        }
                        if (atomStart < 0)
                        {
                            // e.g. "(?" of a group construct or a quantifier after '|': copy as is.
                            sb.Append(pattern, i, qlen);
                            i += qlen;
                            break;
                        }
                        sb.Append(pattern, i, qlen);
                        i += qlen;
                        if (i < pattern.Length && pattern[i] == '+')
                        {
                            // Possessive: wrap atom + quantifier in an atomic group.
                            sb.Insert(atomStart, "(?>");
                            sb.Append(')');
                            i++;
                        }
                        else if (i < pattern.Length && pattern[i] == '?')
                        {
                            sb.Append('?');   // lazy
                            i++;
                        }
                        atomStart = -1;
                        break;
                    }
                case '|':
                    sb.Append(c);
                    i++;
                    atomStart = -1;
                    break;
                default:
                    atomStart = sb.Length;
                    sb.Append(c);
                    i++;
                    break;
            }
        }
        if (groupStarts.Count != 0)
        {
            throw new ArgumentException("unbalanced '(' in the pattern");
        }
        return sb.ToString();
    }

    /// <summary>Length of the escape at <paramref name="i"/> ('\' included): \p{..}, \P{..}, \x{..}, \xHH, \uHHHH, \c.</summary>
    private static int EscapeLength(string p, int i)
    {
        if (i + 1 >= p.Length)
        {
            throw new ArgumentException("the pattern ends with a lone '\\'");
        }
        var e = p[i + 1];
        if ((e is 'p' or 'P' or 'x') && i + 2 < p.Length && p[i + 2] == '{')
        {
            var close = p.IndexOf('}', i + 3);
            if (close < 0)
            {
                throw new ArgumentException($"unterminated '\\{e}{{' at offset {i} of the pattern");
            }
            return close - i + 1;
        }
        if (e is 'p' or 'P')
        {
            return 3;   // \pL
        }
        if (e == 'x')
        {
            return Math.Min(4, p.Length - i);
        }
        if (e == 'u')
        {
            return Math.Min(6, p.Length - i);
        }
        return 2;
    }

    /// <summary>Length of the character class at <paramref name="i"/> ('[' to the matching ']').</summary>
    private static int ClassLength(string p, int i)
    {
        var j = i + 1;
        if (j < p.Length && p[j] == '^')
        {
            j++;
        }
        if (j < p.Length && p[j] == ']')
        {
            j++;   // a leading ']' is literal
        }
        while (j < p.Length)
        {
            if (p[j] == '\\')
            {
                j += EscapeLength(p, j);
                continue;
            }
            if (p[j] == '[')
            {
                throw new ArgumentException($"nested character class at offset {j} of the pattern is not supported");
            }
            if (p[j] == ']')
            {
                return j - i + 1;
            }
            j++;
        }
        throw new ArgumentException($"unterminated '[' at offset {i} of the pattern");
    }

    /// <summary>Length of a {n}, {n,} or {n,m} quantifier at <paramref name="i"/>, or 0 if the brace is literal.</summary>
    private static int BraceQuantifierLength(string p, int i)
    {
        var j = i + 1;
        var digits = 0;
        while (j < p.Length && char.IsAsciiDigit(p[j]))
        {
            j++;
            digits++;
        }
        if (digits == 0)
        {
            return 0;
        }
        if (j < p.Length && p[j] == ',')
        {
            j++;
            while (j < p.Length && char.IsAsciiDigit(p[j]))
            {
                j++;
            }
        }
        return j < p.Length && p[j] == '}' ? j - i + 1 : 0;
    }
}
