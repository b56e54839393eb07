using System.Text;

namespace Bora.Tokenizers.Tests;

/// <summary>
/// Bora's SentencePieceTokenizer against Google's SentencePiece 0.1.97 (tests/tools/spm/spm_oracle.py):
/// 100% identical ids and decoded text over the whole corpus, for every shipped model and for edited
/// variants of tok512 that exercise the code paths the shipped models do not (unused pieces, no byte
/// fallback, user-defined pieces, other normalizer flags).
/// </summary>
public class SentencePieceOracleTests
{
    public static TheoryData<string> Models => new()
    {
        "models/stories260K/tok512.model",
        "tokenizers/mistral/tokenizer.model.v1",
        "tokenizers/mistral/mistral_instruct_tokenizer_240216.model.v2",
        "tokenizers/mistral/mistral_instruct_tokenizer_240323.model.v3",
        "tokenizers/mistral/mistral_instruct_tokenizer_241114.model.v7",
    };

    private static string ModelPath(string relative) => TestPaths.Shared(relative.Split('/'));

    [Theory]
    [MemberData(nameof(Models))]
    public void Encode_and_decode_match_sentencepiece(string relative)
    {
        string path = ModelPath(relative);
        if (!File.Exists(path) || !OracleCorpus.Available)
        {
            Console.WriteLine($"skipped: shared test data not found at {path}");
            return;
        }
        string[] corpus = OracleCorpus.Strings;
        Assert.True(corpus.Length >= OracleCorpus.MinimumSize, $"corpus has {corpus.Length} strings; at least {OracleCorpus.MinimumSize} expected");
        CompareWithOracle(path, SentencePieceTokenizer.Load(path), corpus);
    }

    /// <summary>
    /// Every third corpus string (over 2,500): the edited variants exercise code paths rather than corpus breadth,
    /// and the whole corpus for all seven would take the oracle class past 30 s on a shared 2-core machine.
    /// </summary>
    private static string[] VariantCorpus => OracleCorpus.Strings.Where((_, i) => i % 3 == 0).ToArray();

    /// <summary>The corpus is as large and varied as issue 3 asks.</summary>
    [Fact]
    public void Corpus_is_large_and_varied()
    {
        if (!OracleCorpus.Available)
        {
            Console.WriteLine("skipped: shared test corpus not found");
            return;
        }
        string[] corpus = OracleCorpus.Strings;
        Assert.True(corpus.Length >= OracleCorpus.MinimumSize, $"corpus has {corpus.Length} strings");
        Assert.Contains("", corpus);
        Assert.Contains(corpus, s => s.Length > 10_000);
        Assert.Contains(corpus, s => s.Contains(new string(' ', 256), StringComparison.Ordinal));
        Assert.Contains(corpus, s => s.Contains('\u200d') && s.EnumerateRunes().Any(r => r.Value >= 0x1F300));
        Assert.Contains(corpus, s => s.Contains('\u0085'));
        Assert.Contains(corpus, s => s.Contains("[INST]", StringComparison.Ordinal));
        // Lone surrogates, which only the C# side can hold.
        Assert.True(corpus.Count(HasLoneSurrogate) >= 20, "too few strings with lone surrogates");
        // Every script: Latin, Greek, Cyrillic, Hebrew, Arabic, Devanagari, Thai, Georgian, Hangul, Kana, Han,
        // Ethiopic, Cherokee, Tifinagh, and from plane 1 Linear B, Gothic, Deseret, Brahmi, Cuneiform, Adlam.
        int[] scriptSamples = [0x41, 0x3B1, 0x430, 0x5D0, 0x627, 0x915, 0xE01, 0x10D0, 0xAC00, 0x3042, 0x4E00, 0x1200, 0x13A0,
            0x2D30, 0x10000, 0x10330, 0x10400, 0x11005, 0x12000, 0x1E900];
        foreach (int block in scriptSamples.Select(cp => cp & ~127))
        {
            Assert.True(corpus.Any(s => s.EnumerateRunes().Any(r => (r.Value & ~127) == block)), $"no character of block U+{block:X4}");
        }
    }

    private static bool HasLoneSurrogate(string s)
    {
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                i++;
            }
            else if (char.IsSurrogate(s[i]))
            {
                return true;
            }
        }
        return false;
    }

    public static TheoryData<string> Variants => new()
    {
        "unused", "no-byte-fallback", "user-defined", "no-dummy-prefix-keep-spaces", "dummy-prefix-keep-spaces",
        "whitespace-suffix", "no-escape",
    };

    /// <summary>tok512.model edited so that other SentencePiece code paths run, checked against the oracle.</summary>
    [Theory]
    [MemberData(nameof(Variants))]
    public void Edited_tok512_variants_match_sentencepiece(string variant)
    {
        string original = ModelPath("models/stories260K/tok512.model");
        if (!File.Exists(original) || !OracleCorpus.Available)
        {
            Console.WriteLine($"skipped: shared test data not found at {original}");
            return;
        }
        byte[] data = File.ReadAllBytes(original);
        static bool Plain(SentencePieceEntry e) => e.Type == SentencePieceType.Normal && e.Piece.Length >= 2;
        byte[] edited = variant switch
        {
            "unused" => ModelEdit.Rewrite(data, piece: (i, e) => Plain(e) && i % 5 == 0 ? e with { Type = SentencePieceType.Unused } : e),
            "no-byte-fallback" => ModelEdit.Rewrite(data, piece: (_, e) => e.Type == SentencePieceType.Byte ? null : e,
                trainerVarints: new() { [35] = 0 }),
            "user-defined" => ModelEdit.Rewrite(data, piece: (i, e) => Plain(e) && !e.Piece.Contains('\u2581', StringComparison.Ordinal) && i % 7 == 0
                ? e with { Type = SentencePieceType.UserDefined } : e),
            "no-dummy-prefix-keep-spaces" => ModelEdit.Rewrite(data, normalizerVarints: new() { [3] = 0, [4] = 0 }),
            "dummy-prefix-keep-spaces" => ModelEdit.Rewrite(data, normalizerVarints: new() { [3] = 1, [4] = 0 }),
            "whitespace-suffix" => ModelEdit.Rewrite(data, trainerVarints: new() { [24] = 1 }),
            "no-escape" => ModelEdit.Rewrite(data, normalizerVarints: new() { [5] = 0 }),
            _ => throw new ArgumentException(variant),
        };
        string dir = TestPaths.NewTempDir("spm-variant");
        try
        {
            string path = Path.Combine(dir, $"tok512-{variant}.model");
            File.WriteAllBytes(path, edited);
            var tok = SentencePieceTokenizer.Load(path);
            if (variant == "unused")
            {
                Assert.Contains(Enumerable.Range(0, tok.VocabSize), i => tok.TypeOf(new TokenId(i)) == SentencePieceType.Unused);
            }
            CompareWithOracle(path, tok, VariantCorpus);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static void CompareWithOracle(string path, SentencePieceTokenizer tok, string[] corpus)
    {
        var decodeSequences = OracleCorpus.RandomIdSequences(tok, 300, seed: 7);
        var oracle = SpmOracle.Run(path, corpus, decodeSequences);

        var failures = new List<string>();
        for (int i = 0; i < corpus.Length; i++)
        {
            int[] ids = tok.Encode(corpus[i], addBos: false).Select(t => t.Value).ToArray();
            if (!ids.AsSpan().SequenceEqual(oracle.EncodedIds[i]))
            {
                failures.Add($"encode #{i} {Show(corpus[i])}:\n  sentencepiece {string.Join(' ', oracle.EncodedIds[i])}\n  bora          {string.Join(' ', ids)}");
                continue;
            }
            string text = tok.Decode(ids.Select(x => new TokenId(x)).ToArray());
            if (text != oracle.EncodedText[i])
            {
                failures.Add($"decode of encode #{i} {Show(corpus[i])}: sentencepiece {Show(oracle.EncodedText[i])}, bora {Show(text)}");
            }
        }
        for (int i = 0; i < decodeSequences.Count; i++)
        {
            string text = tok.Decode(decodeSequences[i].Select(x => new TokenId(x)).ToArray());
            if (text != oracle.Decoded[i])
            {
                failures.Add($"decode #{i} [{string.Join(' ', decodeSequences[i])}]: sentencepiece {Show(oracle.Decoded[i])}, bora {Show(text)}");
            }
        }
        Assert.True(failures.Count == 0,
            $"{failures.Count} of {corpus.Length + decodeSequences.Count} differ from sentencepiece {oracle.Version} for {path}:\n"
            + string.Join("\n", failures.Take(10)));
    }

    private static string Show(string s)
    {
        var sb = new StringBuilder("\"");
        foreach (char c in s.Length > 120 ? s[..120] : s)
        {
            sb.Append(c < 0x20 || c == 0x7F ? $"\\u{(int)c:X4}" : c.ToString());
        }
        return sb.Append(s.Length > 120 ? "...\"" : "\"").ToString();
    }
}
