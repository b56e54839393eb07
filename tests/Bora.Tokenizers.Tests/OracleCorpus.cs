using System.Globalization;
using System.Text;

namespace Bora.Tokenizers.Tests;

/// <summary>
/// The deterministic SentencePiece oracle corpus (at least <see cref="MinimumSize"/> strings), shared by the
/// SentencePiece oracle tests and the tokenizer.json-vs-tokenizer.model comparison:
/// <list type="bullet">
/// <item>the corpus files split into lines and pieces: random KJV and TinyStories lines, lines cut at random
/// word or character positions (each piece on its own), TinyStories sentences, random slices, two long texts;</item>
/// <item>generated edge cases: a sample of the assigned characters of every 128-code-point block of planes 0
/// and 1 (every script, symbols, combining marks, private use) and of planes 2, 3 and 14; every C0/C1 control
/// character alone and in context; runs of spaces, tabs and newlines from 1 to 256; numbers; code; emoji
/// sequences (ZWJ, skin tones, flags, keycaps, variation selectors); lone UTF-16 surrogates;</item>
/// <item>the hand-written <see cref="EdgeCases"/> and random mixtures of all of the above.</item>
/// </list>
/// Lone surrogates cannot be converted to UTF-8; the oracle script replaces each by U+FFFD, exactly as
/// Bora (and <see cref="Encoding.UTF8"/>) does (see spm_oracle.py).
/// </summary>
internal static class OracleCorpus
{
    public const int Seed = 20240611;

    /// <summary>The corpus size issue 3 asks for.</summary>
    public const int MinimumSize = 5000;

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

    /// <summary>Lone UTF-16 surrogates (high, low, reversed pair, doubled) in several positions.</summary>
    public static readonly string[] LoneSurrogates =
    [
        "\ud800", "\udfff", "a\udc00b", "\ud83d", "x\ud83d\ud83dy", "\ude00\ud83d", "\udfff ", " \ud800", "\ud800\ud800",
        "word\udbff", "\udc00word", "😀\ud83d", "\ude00😀", "a \ud800 b", "\ud800\n", "[INST]\udc00",
    ];

    /// <summary>Code snippets in several languages (whole, and line by line in the corpus).</summary>
    public static readonly string[] Code =
    [
        "using System;\n\nnamespace Demo;\n\npublic static class Program\n{\n    public static int Main(string[] args)\n    {\n        Console.WriteLine($\"{args.Length} args\");\n        return 0;\n    }\n}\n",
        "def fib(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\nprint([fib(i) for i in range(10)])\n",
        "fn main() -> Result<(), Box<dyn std::error::Error>> {\n\tlet v: Vec<u32> = (0..10).map(|x| x * x).collect();\n\tprintln!(\"{:?}\", v);\n\tOk(())\n}\n",
        "#include <stdio.h>\n\nint main(void) {\n\tfor (int i = 0; i < 10; ++i) {\n\t\tprintf(\"%d\\n\", i << 2);\n\t}\n\treturn 0;\n}\n",
        "const f = async (url) => {\n  const r = await fetch(url, { method: 'GET' });\n  return r.ok ? r.json() : null;\n};\nexport default f;\n",
        "SELECT u.id, COUNT(*) AS n\nFROM users u\n  JOIN orders o ON o.user_id = u.id\nWHERE o.total >= 100.00\nGROUP BY u.id\nHAVING n > 3;\n",
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>T</title></head>\n<body>\n  <p class=\"a b\">&lt;hi&gt; &amp; bye</p>\n</body>\n</html>\n",
        "{\n  \"name\": \"bora\",\n  \"version\": \"1.0.0\",\n  \"tags\": [\"a\", \"b\"],\n  \"nested\": {\"x\": null, \"y\": true, \"z\": -1.5e-3}\n}\n",
        "#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do\n  wc -l \"$f\" | awk '{print $1}' >> out.log 2>&1\ndone\n",
        "\\begin{equation}\n  E = mc^2 \\quad \\sum_{i=1}^{n} x_i^2 \\leq \\int_0^\\infty e^{-t}\\,dt\n\\end{equation}\n",
        "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tch := make(chan int, 3)\n\tgo func() { ch <- 42 }()\n\tfmt.Println(<-ch)\n}\n",
        "# Title\n\n* item one\n* item **two**\n\n```python\nx = 1\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
        "    if (x != null && x.Length > 0) { y = x[0..^1]; } else { y = \"\"; }\r\n",
        "key1=value1\r\nkey2 = \"quoted value\"\r\n[section]\r\n;comment\r\n",
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
        for (int i = 0; i < 1500; i++)
        {
            result.Add(kjv[rng.Next(kjv.Length)]);
        }
        result.AddRange(storyLines);

        // Lines cut into pieces: at word boundaries (the space going to either side) or at any character.
        for (int i = 0; i < 400; i++)
        {
            string line = kjv[rng.Next(kjv.Length)];
            result.AddRange(CutIntoPieces(line, rng, atWords: i % 2 == 0));
        }
        string[] sentences = stories.Split(". ");
        for (int i = 0; i < 300; i++)
        {
            string sentence = sentences[rng.Next(sentences.Length)];
            result.Add(rng.Next(3) == 0 ? " " + sentence : sentence + (rng.Next(2) == 0 ? "." : ""));
        }

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
        result.AddRange(LoneSurrogates);
        result.AddRange(Code);
        result.AddRange(Code.SelectMany(c => c.Split('\n')).Distinct());
        result.AddRange(UnicodeBlockSamples(rng));
        result.AddRange(ControlCharacters());
        result.AddRange(WhitespaceRuns());
        for (int i = 0; i < 150; i++)
        {
            result.Add(RandomNumber(rng));
        }
        for (int i = 0; i < 150; i++)
        {
            result.Add(RandomEmoji(rng, 1 + rng.Next(6)));
        }

        // Random mixtures of fragments.
        string[] words = kjv[..500].SelectMany(l => l.Split(' ')).Where(w => w.Length > 0).ToArray();
        for (int i = 0; i < 900; i++)
        {
            var sb = new StringBuilder();
            int parts = 1 + rng.Next(10);
            for (int k = 0; k < parts; k++)
            {
                switch (rng.Next(10))
                {
                    case 0: sb.Append(EdgeCases[rng.Next(EdgeCases.Length)]); break;
                    case 1: sb.Append(words[rng.Next(words.Length)]); break;
                    case 2: sb.Append(' ', rng.Next(4)); break;
                    case 3: sb.Append("\t\n\r "[rng.Next(4)]); break;
                    case 4: sb.Append(RandomNumber(rng)); break;
                    case 5: sb.Append(RandomEmoji(rng, 1)); break;
                    case 6 when rng.Next(4) == 0: sb.Append(LoneSurrogates[rng.Next(LoneSurrogates.Length)]); break;
                    case 7: sb.Append((char)rng.Next(0x20)); break;
                    default: sb.Append(RandomChars(rng, 1 + rng.Next(6))); break;
                }
            }
            result.Add(sb.ToString());
        }
        return result.ToArray();
    }

    /// <summary>
    /// A line cut into 2 to 5 pieces, either at spaces (the space staying at the end of the left piece or the
    /// start of the right one) or at random character positions.
    /// </summary>
    private static IEnumerable<string> CutIntoPieces(string line, Random rng, bool atWords)
    {
        var cuts = new SortedSet<int>();
        int wanted = 1 + rng.Next(4);
        for (int attempt = 0; attempt < 20 && cuts.Count < wanted && line.Length > 1; attempt++)
        {
            int pos = 1 + rng.Next(line.Length - 1);
            if (atWords)
            {
                int space = line.IndexOf(' ', pos);
                if (space < 0)
                {
                    continue;
                }
                pos = rng.Next(2) == 0 ? space : space + 1;
            }
            if (pos > 0 && pos < line.Length)
            {
                cuts.Add(pos);
            }
        }
        int start = 0;
        foreach (int cut in cuts.Append(line.Length))
        {
            yield return line[start..cut];
            start = cut;
        }
    }

    /// <summary>
    /// For every block of 128 code points in planes 0 and 1 (and of 4096 in planes 2, 3 and 14, and one in
    /// each private-use plane), up to 16 randomly chosen assigned characters (per .NET's Unicode data), as a
    /// run and again split into space-separated words of 1 to 4 characters.
    /// </summary>
    private static IEnumerable<string> UnicodeBlockSamples(Random rng)
    {
        var blocks = new List<(int Start, int Size)>();
        for (int b = 0; b < 0x20000; b += 128)
        {
            blocks.Add((b, 128));
        }
        for (int b = 0x20000; b < 0x40000; b += 4096)
        {
            blocks.Add((b, 4096));
        }
        blocks.Add((0xE0000, 128));
        blocks.Add((0xE0100, 128));
        blocks.Add((0xF0000, 128));
        blocks.Add((0x10FF80, 128));
        foreach (var (start, size) in blocks)
        {
            var assigned = new List<int>();
            for (int cp = start; cp < start + size; cp++)
            {
                if (cp is < 0xD800 or > 0xDFFF && CharUnicodeInfo.GetUnicodeCategory(cp) != UnicodeCategory.OtherNotAssigned)
                {
                    assigned.Add(cp);
                }
            }
            if (assigned.Count == 0)
            {
                continue;
            }
            var run = new StringBuilder();
            var spaced = new StringBuilder();
            int n = Math.Min(16, assigned.Count);
            for (int i = 0; i < n; i++)
            {
                string c = char.ConvertFromUtf32(assigned[rng.Next(assigned.Count)]);
                run.Append(c);
                spaced.Append(c);
                if (rng.Next(3) == 0 && i < n - 1)
                {
                    spaced.Append(' ');
                }
            }
            yield return run.ToString();
            yield return spaced.ToString();
        }
    }

    /// <summary>Each C0 and C1 control character (and DEL) alone, between letters and after a space.</summary>
    private static IEnumerable<string> ControlCharacters()
    {
        for (int c = 0; c < 0xA0; c++)
        {
            if (c is >= 0x20 and < 0x7F)
            {
                continue;
            }
            string s = ((char)c).ToString();
            yield return s;
            yield return "a" + s + "b";
            yield return " " + s + " x";
        }
    }

    /// <summary>Runs of spaces, tabs, newlines, U+2581 and mixtures, 1 to 256 long, alone and between words.</summary>
    private static IEnumerable<string> WhitespaceRuns()
    {
        int[] lengths = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15, 16, 17, 20, 31, 32, 33, 50, 64, 100, 128, 255, 256];
        foreach (int n in lengths)
        {
            yield return new string(' ', n);
            yield return "x" + new string(' ', n) + "y";
            yield return new string(' ', n) + "lead";
            yield return "trail" + new string(' ', n);
            yield return new string('\t', n);
            yield return "a" + new string('\n', n) + "b";
            yield return string.Concat(Enumerable.Repeat(" \t\n", n));
            yield return "x" + new string('\u2581', n) + " y";
            yield return "def f():\n" + new string(' ', n) + "return 1";
        }
        yield return "\r\n\r\n\r\n";
        yield return " \u00a0 \u2003 \u3000 \u2028\u2029 ";
    }

    /// <summary>A random number: integer, decimal, grouped, signed, exponent, version or hex.</summary>
    private static string RandomNumber(Random rng)
    {
        string Digits(int n) => string.Concat(Enumerable.Range(0, n).Select(_ => (char)('0' + rng.Next(10))));
        return rng.Next(7) switch
        {
            0 => Digits(1 + rng.Next(30)),
            1 => Digits(1 + rng.Next(6)) + "." + Digits(1 + rng.Next(8)),
            2 => string.Join(",", Enumerable.Range(0, 1 + rng.Next(4)).Select(_ => Digits(3))),
            3 => "-" + Digits(1 + rng.Next(5)),
            4 => Digits(1) + "." + Digits(3) + "e" + (rng.Next(2) == 0 ? "-" : "+") + Digits(2),
            5 => string.Join(".", Enumerable.Range(0, 2 + rng.Next(3)).Select(_ => Digits(1 + rng.Next(3)))),
            _ => "0x" + rng.Next().ToString("X", CultureInfo.InvariantCulture),
        };
    }

    /// <summary>Random emoji: single pictographs, skin tones, ZWJ sequences, flags, keycaps, variation selectors.</summary>
    private static string RandomEmoji(Random rng, int count)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < count; i++)
        {
            int pict = rng.Next(3) switch
            {
                0 => 0x1F300 + rng.Next(0x1F650 - 0x1F300),
                1 => 0x1F900 + rng.Next(0x1FA00 - 0x1F900),
                _ => 0x1FA70 + rng.Next(0x1FAF9 - 0x1FA70),
            };
            switch (rng.Next(6))
            {
                case 0: sb.Append(char.ConvertFromUtf32(pict)).Append(char.ConvertFromUtf32(0x1F3FB + rng.Next(5))); break;
                case 1: sb.Append(char.ConvertFromUtf32(pict)).Append('\u200d').Append(char.ConvertFromUtf32(0x1F300 + rng.Next(0x350))); break;
                case 2: sb.Append(char.ConvertFromUtf32(0x1F1E6 + rng.Next(26))).Append(char.ConvertFromUtf32(0x1F1E6 + rng.Next(26))); break;
                case 3: sb.Append((char)('0' + rng.Next(10))).Append("\ufe0f\u20e3"); break;
                case 4: sb.Append((char)(0x2600 + rng.Next(0x100))).Append('\ufe0f'); break;
                default: sb.Append(char.ConvertFromUtf32(pict)); break;
            }
        }
        return sb.ToString();
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
