using System.Text.Json;
using Bora.Chat;
using Bora.Formats;
using Bora.Tokenizers.HuggingFace;

namespace Bora.Tokenizers.Tests.HuggingFace;

/// <summary>
/// Mistral 7B v0.1's tokenizer.json (BPE by merge rank) against its tokenizer.model (SentencePiece BPE by piece
/// score; Bora's SentencePieceTokenizer, itself checked id for id against Google's SentencePiece over the same
/// corpus in SentencePieceOracleTests).
/// </summary>
public class HuggingFaceTokenizerTests
{
    private static string JsonPath => TestPaths.Shared("tokenizers", "mistral", "Mistral-7B-v0.1", "tokenizer.json");

    private static string ModelPath => TestPaths.Shared("tokenizers", "mistral", "tokenizer.model.v1");

    private static bool Available => File.Exists(JsonPath) && File.Exists(ModelPath) && OracleCorpus.Available;

    private static readonly Lazy<(HuggingFaceTokenizer Exact, HuggingFaceTokenizer SpPrefix, SentencePieceTokenizer Sp)> Loaded =
        new(() => (HuggingFaceTokenizer.Load(JsonPath), HuggingFaceTokenizer.Load(JsonPath, sentencePiecePrefix: true), SentencePieceTokenizer.Load(ModelPath)));

    private static int[] Ids(ITokenizer t, string s) => t.Encode(s, addBos: false).Select(i => i.Value).ToArray();

    [Fact]
    public void With_sentencepiece_prefix_ids_and_decoding_equal_tokenizer_model_on_the_whole_corpus()
    {
        if (!Available)
        {
            Console.WriteLine("skipped: shared test data not found");
            return;
        }
        var (_, hf, sp) = Loaded.Value;
        Assert.Equal(sp.VocabSize, hf.VocabSize);
        Assert.Equal(sp.Bos, hf.Bos);
        Assert.Equal(sp.Eos, hf.Eos);
        int n = 0;
        foreach (var s in OracleCorpus.Strings)
        {
            var expected = sp.Encode(s, addBos: true);
            var actual = hf.Encode(s, addBos: true);
            Assert.True(expected.SequenceEqual(actual), $"ids differ for {JsonSerializer.Serialize(s)}");
            Assert.Equal(sp.Decode(expected), hf.Decode(actual));
            n++;
        }
        Assert.True(n >= OracleCorpus.MinimumSize, $"only {n} corpus strings");
    }

    [Fact]
    public void Exact_file_semantics_differ_from_sentencepiece_only_on_a_leading_space()
    {
        if (!Available)
        {
            return;
        }
        var (hf, _, sp) = Loaded.Value;
        int leading = 0;
        foreach (var s in OracleCorpus.Strings)
        {
            int[] actual = Ids(hf, s);
            if (s.Length > 0 && s[0] is ' ' or '\u2581')
            {
                // Metaspace (prepend_scheme "first") adds no dummy space when the text already starts with one.
                int[] expected = s.Length == 1 ? [sp.IdOf("\u2581").Value] : Ids(sp, s[1..]);
                Assert.True(expected.SequenceEqual(actual), $"ids differ for {JsonSerializer.Serialize(s)}");
                leading++;
            }
            else
            {
                Assert.True(Ids(sp, s).SequenceEqual(actual), $"ids differ for {JsonSerializer.Serialize(s)}");
            }
        }
        Assert.True(leading > 50, $"only {leading} strings start with a space");
    }

    /// <summary>Ids printed by the Hugging Face tokenizers library itself (Rust, through the Tokenizers.DotNet NuGet
    /// package, run once by hand on this tokenizer.json; BOS removed).</summary>
    [Theory]
    [InlineData("Hello", new[] { 22557 })]
    [InlineData(" Hello", new[] { 22557 })]
    [InlineData("  Hello", new[] { 28705, 22557 })]
    [InlineData("\u2581Hello", new[] { 22557 })]
    [InlineData("", new int[0])]
    [InlineData(" ", new[] { 28705 })]
    [InlineData("Hello  world ", new[] { 22557, 28705, 1526, 28705 })]
    public void Matches_the_hugging_face_library(string text, int[] expected)
    {
        if (!Available)
        {
            return;
        }
        Assert.Equal(expected, Ids(Loaded.Value.Exact, text));
    }

    [Fact]
    public void Special_tokens_are_not_matched_in_text_and_decode_skips_them()
    {
        if (!Available)
        {
            return;
        }
        var (hf, _, sp) = Loaded.Value;
        // Hugging Face would give [264, 28705, 1, 287] here; Bora never makes control tokens from text.
        Assert.Equal(Ids(sp, "a <s> b"), Ids(hf, "a <s> b"));
        Assert.True(hf.IsControl(hf.Bos));
        Assert.False(hf.IsControl(new TokenId(22557)));
        Assert.Equal("Hello world", hf.Decode([hf.Bos, new TokenId(22557), new TokenId(1526), hf.Eos]));
        // Streaming bytes agree with Decode.
        var ids = hf.Encode("Hi 😀 there\n", addBos: true);
        var dec = new StreamingDecoder(hf);
        string streamed = string.Concat(ids.Select(dec.Push)) + dec.Flush();
        Assert.Equal(hf.Decode(ids), streamed);
    }

    [Fact]
    public void Renders_v1_golden_chat_with_sentencepiece_prefix()
    {
        if (!Available)
        {
            return;
        }
        string dir = Path.Combine(Chat.ChatGoldenTests.SamplesDir, "no_tools");
        var rendered = new ChatRenderer(Loaded.Value.SpPrefix, TokenizerVersions.FromVocabulary(Loaded.Value.SpPrefix)).Render(ChatRequest.Load(Path.Combine(dir, "sample.json")));
        using var golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "tokens_v1.json")));
        Assert.Equal(golden.RootElement.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()), rendered.Tokens.Select(t => t.Value));
        Assert.Equal(File.ReadAllText(Path.Combine(dir, "text_v1.txt")), rendered.Text);
    }

    private const string Tiny = """
        {"added_tokens": [{"id": 0, "content": "<unk>", "special": true}, {"id": 1, "content": "<s>", "special": true}, {"id": 2, "content": "</s>", "special": true}, {"id": 7, "content": "<tool>", "special": false}],
         "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
         "pre_tokenizer": null,
         "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
         "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": false,
                   "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3, "a": 4, "b": 5, "▁a": 6, "ab": 8, "▁ab": 9},
                   "merges": ["a b", ["▁", "a"], "▁ ab", "▁a b"]}}
        """;

    [Fact]
    public void Tiny_file_merges_by_rank_with_prepend_normalizer_unk_and_added_tokens()
    {
        var t = HuggingFaceTokenizer.Parse(Tiny);
        Assert.Equal(10, t.VocabSize);
        // "▁ab": "a b" (rank 0) merges first, then "▁ ab" (rank 2) -> 9; "▁a b" (rank 3) never applies.
        Assert.Equal([9], Ids(t, "ab"));
        // Unknown characters: one fused <unk> per run.
        Assert.Equal([6, 0, 4], Ids(t, "axyza"));
        // A non-special added token is matched in the text; each side is normalized on its own.
        Assert.Equal([6, 7, 9], Ids(t, "a<tool>ab"));
        Assert.Equal("a ab", t.Decode([new TokenId(6), new TokenId(3), new TokenId(4), new TokenId(5)]));
    }

    public static TheoryData<string, string, string> BadFiles => new()
    {
        { "\"type\": \"BPE\"", "\"type\": \"Unigram\"", "only \"BPE\"" },
        { "{\"type\": \"Prepend\", \"prepend\": \"▁\"}", "{\"type\": \"NFKC\"}", "normalizer type \"NFKC\"" },
        { "\"pre_tokenizer\": null", "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}", "pre_tokenizer type \"ByteLevel\"" },
        { "{\"type\": \"Fuse\"}", "{\"type\": \"WordPiece\"}", "decoder type \"WordPiece\"" },
        { "\"a b\",", "\"a c\",", "\"c\", which is not in model.vocab" },
        { "\"ab\": 8", "\"ab\": 12", "no token has id 8" },
        { "\"pattern\": {\"String\": \" \"}", "\"pattern\": {\"Regex\": \" +\"}", "regex patterns are not" },
        { "\"unk_token\": \"<unk>\"", "\"unk_token\": null", "byte_fallback does not cover" },
        { "\"merges\": [", "\"merges\": [\"a\", ", "expected two tokens" },
        { "{\"added_tokens\"", "[{\"added_tokens\"", "not valid JSON" },
    };

    [Theory]
    [MemberData(nameof(BadFiles))]
    public void Unsupported_or_broken_files_fail_at_load_with_a_clear_message(string find, string replace, string expected)
    {
        Assert.Contains(find, Tiny, StringComparison.Ordinal);
        var e = Assert.Throws<ModelFormatException>(() => HuggingFaceTokenizer.Parse(Tiny.Replace(find, replace, StringComparison.Ordinal), "tiny.json"));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.Contains("tiny.json", e.Message, StringComparison.Ordinal);
    }
}
