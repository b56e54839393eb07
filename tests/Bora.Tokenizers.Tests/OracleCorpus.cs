using System.Text;

namespace Bora.Tokenizers.Tests;

/// <summary>
/// The deterministic test corpus (over 2,000 strings): corpus lines and random slices of the KJV and
/// TinyStories texts, hand-written edge cases and random mixtures of them. No string has a lone surrogate
/// (the Python oracle cannot encode one; see the surrogate unit tests instead).
/// </summary>
internal static class OracleCorpus
{
    public const int Seed = 20240611;

    private static readonly Lazy<string[]> Cached = new(Build);

    /// <summary>The corpus, or an empty array when the shared test data is absent.</summary>
    public static string[] Strings => Cached.Value;

    public static bool Available => File.Exists(KjvPath) && File.Exists(StoriesPath);

    private static string KjvPath => TestPaths.Shared("corpus", "kjv.txt");

    private static string StoriesPath => TestPaths.Shared("corpus", "tinystories_validation_100.txt");

    /// <summary>Hand-written edge cases: whitespace, digits, code, scripts, emoji, control tokens as text.</summary>
    public static readonly string[] EdgeCases =
    [
        "", " ", "  ", "   ", "\t", "\n", "\r\n", " \n ", "a", " a", "a ", "  a", "a  ", "   a   b   ",
        "Hello world", "Hello  world", "Hello   world ", " Hello world", "hello\tworld", "tab\t\ttab",
        "line1\nline2\n", "\n\nparagraph\n\n", "trailing newline\n", "\r\n\r\n", "a \n b", " \t \n ",
        "0", "7", "12", "123", "1234", "12345", "3.14159", "1,000,000", "2024-06-11", "+1 (555) 123-4567",
        "0x1F", "1e-5", "99 bottles", "a1b2c3", "٣٤٥", "１２３",
        "int main() { return 0; }", "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) { s += a[i]; }",
        "if (a && b || !c) { x = y >> 2; }", "console.log(`${name}`);", "SELECT * FROM t WHERE id = 1;",
        "<div class=\"x\">&amp;</div>", "#include <stdio.h>", "    indented code", "a_b-c.d/e\\f", "~!@#$%^&*()_+{}|:\"<>?",
        "😀", "😀😀😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "I ❤ NY", "⭐️", "🤖 robot", "a😀b",
        "你好，世界", "日本語のテキスト", "한국어 텍스트", "中文 English 混合", "　全角スペース　",
        "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "ক্ষ", "ภาษาไทย", "Ελληνικά", "Русский текст", "Ծ", "ጤና",
        "e\u0301", "a\u0308o\u0308u\u0308", "n\u0303", "\u0301 leading combining", "Z\u0351\u0336\u0359",
        "café", "naïve", "Straße", "ǅ", "ﬁ", "Å", "Å", "∑∫√∞≠", "½ ¼", "™ © ®", "…", "–—", "“quotes”", "‘single’",
        "\u0000", "a\u0000b", "\u0001\u0002\u0003", "\u001b[31mred\u001b[0m", "\u007f", "\u0085", "\u200b", "a\u200db",
        "\u00a0", "a\u00a0b", "\u2028", "\ufeffbom", "\ufffd", "\uffff", "\U0001F600\U0001F601", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "\U0010FFFF",
        "\u2581", "\u2581\u2581a", "a\u2581b", " \u2581 ", "\u2581 ",
        "[INST]", "[/INST]", "[INST] What is 2+2? [/INST]", "<s>", "</s>", "<s>[INST] hi [/INST]</s>", "<unk>", "<pad>",
        "<0x41>", "<0x0A>", "<0xFF><0x00>", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[control_8]", "[SYSTEM_PROMPT]",
        "[IMG]", "[REF]", "[/REF]", "[REFERENCE_DOC_1]", "[REFERENCE_DOC_19]", "a[REF]b", " [REF] ", "[REF][REF]",
        "[REFERENCE_DOC_1", "[[REF]]", "x [REFERENCE_DOC_0] y",
        new string('a', 1000), new string(' ', 50), "a" + new string(' ', 20) + "b", new string('\n', 10),
        string.Concat(Enumerable.Repeat("ab", 300)), string.Concat(Enumerable.Repeat("😀", 100)),
        string.Concat(Enumerable.Repeat("the ", 200)), "antidisestablishmentarianism", "Pneumonoultramicroscopicsilicovolcanoconiosis",
    ];

    private static string[] Build()
    {
        if (!Available)
        {
            return [];
        }
        var rng = new Random(Seed);
        var result = new List<string>();
        string[] kjv = File.ReadAllLines(KjvPath);
        string kjvText = File.ReadAllText(KjvPath);
        string stories = File.ReadAllText(StoriesPath);
        string[] storyLines = stories.Split('\n');

        // Corpus lines.
        for (int i = 0; i < 700; i++)
        {
            result.Add(kjv[rng.Next(kjv.Length)]);
        }
        result.AddRange(storyLines);

        // Random slices (arbitrary cut points: partial words, leading/trailing spaces and newlines).
        for (int i = 0; i < 300; i++)
        {
            result.Add(Slice(kjvText, rng, 1 + rng.Next(400)));
            result.Add(Slice(stories, rng, 1 + rng.Next(400)));
        }

        // Long inputs (exercise the priority queue on long symbol sequences).
        result.Add(Slice(kjvText, rng, 20_000));
        result.Add(stories[..Math.Min(stories.Length, 40_000)]);

        result.AddRange(EdgeCases);

        // Random mixtures of fragments.
        string[] words = kjv[..500].SelectMany(l => l.Split(' ')).Where(w => w.Length > 0).ToArray();
        for (int i = 0; i < 700; i++)
        {
            var sb = new StringBuilder();
            int parts = 1 + rng.Next(10);
            for (int k = 0; k < parts; k++)
            {
                switch (rng.Next(6))
                {
                    case 0: sb.Append(EdgeCases[rng.Next(EdgeCases.Length)]); break;
                    case 1: sb.Append(words[rng.Next(words.Length)]); break;
                    case 2: sb.Append(' ', rng.Next(4)); break;
                    case 3: sb.Append("\t\n\r "[rng.Next(4)]); break;
                    default: sb.Append(RandomChars(rng, 1 + rng.Next(6))); break;
                }
            }
            result.Add(sb.ToString());
        }
        return result.ToArray();
    }

    private static string Slice(string text, Random rng, int length)
    {
        int start = rng.Next(Math.Max(1, text.Length - length));
        int end = Math.Min(text.Length, start + length);
        if (start > 0 && char.IsLowSurrogate(text[start]))
        {
            start++;
        }
        if (end < text.Length && end > start && char.IsHighSurrogate(text[end - 1]))
        {
            end--;
        }
        return text[start..end];
    }

    /// <summary>Random code points from a mix of blocks (never surrogates).</summary>
    private static string RandomChars(Random rng, int count)
    {
        (int Lo, int Hi)[] ranges =
        [
            (0x20, 0x7E), (0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x17F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
            (0x900, 0x97F), (0x2000, 0x206F), (0x2580, 0x259F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
            (0xE000, 0xE0FF), (0xFF00, 0xFFEF), (0x1F300, 0x1F64F), (0x1D400, 0x1D4FF), (0x20000, 0x2A6DF),
        ];
        var sb = new StringBuilder();
        for (int i = 0; i < count; i++)
        {
            var (lo, hi) = ranges[rng.Next(ranges.Length)];
            sb.Append(char.ConvertFromUtf32(lo + rng.Next(hi - lo + 1)));
        }
        return sb.ToString();
    }

    /// <summary>Random id sequences for decode tests, biased towards byte, control and unknown pieces.</summary>
    public static List<int[]> RandomIdSequences(SentencePieceTokenizer tok, int count, int seed)
    {
        var rng = new Random(seed);
        var special = Enumerable.Range(0, tok.VocabSize)
            .Where(i => tok.TypeOf(new TokenId(i)) != SentencePieceType.Normal).ToArray();
        var result = new List<int[]>();
        for (int s = 0; s < count; s++)
        {
            var ids = new int[1 + rng.Next(24)];
            for (int k = 0; k < ids.Length; k++)
            {
                ids[k] = rng.Next(3) == 0 && special.Length > 0 ? special[rng.Next(special.Length)] : rng.Next(tok.VocabSize);
            }
            result.Add(ids);
        }
        // Byte runs: valid and broken UTF-8, leading control tokens, leading U+2581 pieces.
        int B(int b) => tok.IdOf($"<0x{b:X2}>").Value;
        if (tok.ByteFallback)
        {
            result.Add([B(0xE2), B(0x96), B(0x81)]);
            result.Add([B(0xE2), B(0x96)]);
            result.Add([B(0xF0), B(0x9F), B(0x98), B(0x80), B(0x80)]);
            result.Add([B(0xC0), B(0x80), B(0xED), B(0xA0), B(0x80), B(0xF4), B(0x90), B(0x80), B(0x80)]);
            result.Add([tok.Bos.Value, B(0x20), tok.IdOf("\u2581a").Value]);
            result.Add([B(0xFF), tok.Eos.Value, B(0x41)]);
        }
        result.Add([tok.Bos.Value, tok.IdOf("\u2581").Value, tok.IdOf("\u2581a").Value]);
        result.Add([tok.Bos.Value, tok.Eos.Value, tok.IdOf("\u2581the").Value, tok.IdOf("\u2581the").Value]);
        result.Add([tok.Unk.Value, tok.IdOf("\u2581a").Value]);
        result.Add([tok.IdOf("a").Value, tok.IdOf("\u2581a").Value]);
        return result;
    }
}
