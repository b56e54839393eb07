using System.Text;

namespace Bora.Tokenizers.Tests.Tekken;

/// <summary>
/// The deterministic Tekken oracle corpus (over 5,000 strings): lines and random slices of kjv.txt and
/// tinystories_validation_100.txt, hand-written edge cases (many scripts incl. supplementary-plane
/// letters/digits/marks, CJK, emoji and ZWJ sequences, combining marks, control characters, whitespace
/// runs and mixes, digits, code, contractions in mixed case, special-token text, lone surrogates, the
/// empty string) and random mixtures of them.
/// </summary>
/// <remarks>
/// U+0085 and U+FEFF are left out: JavaScript's \s (used by the npm oracle) differs from Unicode
/// White_Space (used by Rust's regex in tiktoken, and by .NET) exactly on these two; they are covered by
/// hand-derived unit tests instead (TekkenTokenizerTests).
/// </remarks>
internal static class TekkenCorpus
{
    public const int Seed = 20240718;

    public static bool Available => File.Exists(KjvPath) && File.Exists(StoriesPath);

    private static string KjvPath => TestPaths.Shared("corpus", "kjv.txt");

    private static string StoriesPath => TestPaths.Shared("corpus", "tinystories_validation_100.txt");

    public static readonly string[] Scripts =
    [
        "Grüße aus Köln", "naïve café", "Straße", "Ελληνικά γράμματα", "Русский текст", "Українська мова", "עברית",
        "العربية الفصحى", "فارسی", "हिन्दी भाषा", "বাংলা ভাষা", "ਪੰਜਾਬੀ", "தமிழ்", "తెలుగు", "ಕನ್ನಡ", "മലയാളം",
        "ภาษาไทยไม่มีช่องว่าง", "ພາສາລາວ", "ქართული ენა", "Հայերեն", "አማርኛ", "ᏣᎳᎩ", "한국어 텍스트", "日本語のテキスト",
        "カタカナ", "ひらがな", "中文文本没有空格", "繁體中文", "Tiếng Việt có dấu", "Türkçe İı", "Polski język źdźbło",
        "ǅungla ǈ", "ﬁnance ﬂow", "𝐁𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐", "𐐀𐐨𐐯", "𐒠𐒡𐒢", "𐌰𐌱𐍁", "𠀀𠀁𪜀𫝀", "𝄞𝅘𝅥𝅮", "a𝅥b",
        "𑀓𑀸𑀫", "𝟘𝟙𝟚𝟛", "𞤀𞤢𞤣", "𞥐𞥑", "🄰🄱", "ꙮ", "Ⅻ ⅻ", "ŉ", "İstanbul", "ΣΑΣ σας", "Ǆ ǆ",
    ];

    public static readonly string[] Emoji =
    [
        "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵🇺🇸", "❤️", "🧑🏿‍💻", "#️⃣", "🫠", "🤖 robot", "a😀b", "👩‍❤️‍💋‍👨",
    ];

    public static readonly string[] Combining =
    [
        "e\u0301", "a\u0308\u0304", "Z\u0351\u0336\u0359\u0310", "\u0301start", "ก\u0e31", "क्ष", "n\u0303o", "\u20dd",
        "A\u0300\u0301\u0302\u0303", "x\u0489", "\u0903", "o\u035c\u0361o",
    ];

    public static readonly string[] Controls =
    [
        "\u0000", "a\u0000b", "\u0001\u0002", "\u0007", "\u001b[31mred\u001b[0m", "\u007f", "\u0080", "\u009f", "\u200b",
        "a\u200db", "\u200e", "\u2060", "\u00ad", "\u000b", "\u000c", "\u001f", "\uE000", "\uFFFD", "\uFFFF",
    ];

    public static readonly string[] Spaces =
    [
        " ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\n\n", " \n", "\n ", " \t \n ", "\t\t", "\u00a0", "\u2003",
        "\u3000", "\u2028", "\u2029", "\u202f", "\r\n\r\n", " \r\n ", "\t\n\t", "\u1680", "\u205f",
    ];

    public static readonly string[] Digits =
    [
        "0", "7", "42", "2024", "12345678901234567890", "3.14159", "1,000,000", "1e-5", "0x1F", "٣٤٥", "१२३", "１２３",
        "½", "²³", "Ⅻ", "v1.2.3", "+1 (555) 123-4567", "2024-07-18T12:00:00Z",
    ];

    public static readonly string[] Code =
    [
        "int main() { return 0; }", "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) { s += a[i]; }",
        "if (a && b || !c) { x = y >> 2; }", "console.log(`${name}`);", "SELECT * FROM t WHERE id = 1;",
        "<div class=\"x\">&amp;</div>", "#include <stdio.h>\n", "    indented\n\tcode", "a_b-c.d/e\\f",
        "~!@#$%^&*()_+{}|:\"<>?", "x = [1, 2, 3]\n\n\nprint(x)", "/* comment */ // line\r\n", "path/to/file.txt\n//\n",
        "fn main() -> Result<(), Box<dyn Error>> {}", "λx.x", "a->b", "a=>b", "!==", "...", "?!", "---", "===",
        "\"'`", "<<>>", "({[]})", "**bold**", "- [ ] todo\n- [x] done",
    ];

    public static readonly string[] Contractions =
    [
        "it's", "It'S", "IT'S", "we'll", "WE'LL", "We'Ll", "don't", "DON'T", "I'm", "I'M", "they've", "THEY'VE",
        "you're", "YOU'RE", "she'd", "SHE'D", "'s", "'ll", "'S", "''", "’s", "rock'n'roll", "o'clock", "James's",
    ];

    public static readonly string[] SpecialText =
    [
        "[INST]", "[/INST]", "<s>", "</s>", "<unk>", "<pad>", "[TOOL_CALLS]", "[IMG]", "<SPECIAL_20>",
        "[INST] What is 2+2? [/INST]", "<s>[INST] hi [/INST]</s>", "[AVAILABLE_TOOLS][/AVAILABLE_TOOLS]",
    ];

    public static readonly string[] LoneSurrogates = ["\ud800", "a\udc00b", "\ud83d", "x\ud83d\ud83dy", "\ude00\ud83d", "\udfff "];

    /// <summary>The whole corpus (empty when the shared text files are absent).</summary>
    public static string[] Build()
    {
        if (!Available)
        {
            return [];
        }
        var rng = new Random(Seed);
        var result = new List<string>();
        var kjvText = File.ReadAllText(KjvPath);
        var kjv = kjvText.Split('\n');
        var stories = File.ReadAllText(StoriesPath);
        var storyLines = stories.Split('\n');

        for (var i = 0; i < 1500; i++)
        {
            result.Add(kjv[rng.Next(kjv.Length)]);
        }
        for (var i = 0; i < 1000; i++)
        {
            result.Add(Slice(kjvText, rng, 1 + rng.Next(600)));
        }
        result.AddRange(storyLines);
        for (var i = 0; i < 500; i++)
        {
            result.Add(Slice(stories, rng, 1 + rng.Next(600)));
        }
        result.Add(Slice(kjvText, rng, 20_000));

        string[][] groups = [Scripts, Emoji, Combining, Controls, Spaces, Digits, Code, Contractions, SpecialText, LoneSurrogates];
        foreach (var g in groups)
        {
            result.AddRange(g);
        }
        result.AddRange(LongCases());

        var words = kjv[..500].SelectMany(l => l.Split(' ')).Where(w => w.Length > 0).ToArray();
        for (var i = 0; i < 1800; i++)
        {
            var sb = new StringBuilder();
            var parts = 1 + rng.Next(12);
            for (var k = 0; k < parts; k++)
            {
                switch (rng.Next(9))
                {
                    case 0: sb.Append(words[rng.Next(words.Length)]); break;
                    case 1: sb.Append(' ', rng.Next(5)); break;
                    case 2: sb.Append(Spaces[rng.Next(Spaces.Length)]); break;
                    case 3: sb.Append(RandomChars(rng, 1 + rng.Next(8))); break;
                    case 4: sb.Append(Contractions[rng.Next(Contractions.Length)]); break;
                    default:
                        var g = groups[rng.Next(groups.Length)];
                        sb.Append(g[rng.Next(g.Length)]);
                        break;
                }
            }
            result.Add(sb.ToString());
        }
        for (var i = 0; i < 300; i++)
        {
            result.Add(RandomChars(rng, 1 + rng.Next(40)));
        }
        return [.. result];
    }

    /// <summary>Long pieces (BPE's heap path): whitespace runs, CJK without spaces, long words and digits.</summary>
    public static IEnumerable<string> LongCases()
    {
        yield return "";
        yield return new string(' ', 500);
        yield return "a" + new string(' ', 300) + "b";
        yield return new string('\n', 300);
        yield return string.Concat(Enumerable.Repeat(" \t\n", 100));
        yield return new string('a', 1000);
        yield return new string('=', 400);
        yield return string.Concat(Enumerable.Repeat("ab", 300));
        yield return string.Concat(Enumerable.Repeat("中文", 150));
        yield return string.Concat(Enumerable.Repeat("😀", 100));
        yield return string.Concat(Enumerable.Repeat("the ", 200));
        yield return new string('9', 300);
        yield return "antidisestablishmentarianism Pneumonoultramicroscopicsilicovolcanoconiosis";
        yield return string.Concat(Enumerable.Repeat("e\u0301", 200));
    }

    private static string Slice(string text, Random rng, int length)
    {
        var start = rng.Next(Math.Max(1, text.Length - length));
        var end = Math.Min(text.Length, start + length);
        return text[start..end];
    }

    /// <summary>Random assigned code points from a mix of long-established blocks (no surrogates, no U+0085/U+FEFF).</summary>
    private static string RandomChars(Random rng, int count)
    {
        (int Lo, int Hi)[] ranges =
        [
            (0x20, 0x7E), (0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
            (0x900, 0x97F), (0xE00, 0xE5B), (0x2000, 0x206F), (0x2100, 0x214F), (0x2580, 0x259F), (0x3000, 0x30FF),
            (0x4E00, 0x9FA5), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1F300, 0x1F64F), (0x1D400, 0x1D7FF),
            (0x20000, 0x2A6D6), (0x10400, 0x1044F), (0x104A0, 0x104A9), (0x1D165, 0x1D169),
        ];
        var sb = new StringBuilder();
        while (count > 0)
        {
            var (lo, hi) = ranges[rng.Next(ranges.Length)];
            var cp = lo + rng.Next(hi - lo + 1);
            if (cp is 0x85 or 0xFEFF || System.Globalization.CharUnicodeInfo.GetUnicodeCategory(cp) == System.Globalization.UnicodeCategory.OtherNotAssigned)
            {
                continue;
            }
            sb.Append(char.ConvertFromUtf32(cp));
            count--;
        }
        return sb.ToString();
    }
}
