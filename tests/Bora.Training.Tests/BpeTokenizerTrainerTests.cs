using System.Text.Json;
using Bora.Cli;
using Bora.Tokenizers;

namespace Bora.Training.Tests;

public sealed class BpeTokenizerTrainerTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "bora-bpe-" + Guid.NewGuid().ToString("N"));

    public BpeTokenizerTrainerTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Normalize_is_sentencepiece_identity_with_dummy_prefix()
    {
        Assert.Equal("\u2581a\u2581b", BpeTokenizerTrainer.Normalize("  a   b "));
        Assert.Equal("", BpeTokenizerTrainer.Normalize("   "));
    }

    [Fact]
    public void Learns_frequent_words_as_whole_pieces_with_exact_vocab_size()
    {
        string[] lines = [.. Enumerable.Repeat("the lord said unto moses", 50), "zebra"];
        var pieces = BpeTokenizerTrainer.Train(lines, 300);
        Assert.Equal(300, pieces.Count);
        Assert.Equal(SentencePieceType.Unknown, pieces[0].Type);
        Assert.Equal("<0x41>", pieces[3 + 0x41].Piece);
        Assert.Contains(pieces, p => p.Piece == "\u2581moses");
        // Scores strictly decrease over the learned pieces (merge order).
        var learned = pieces.Skip(BpeTokenizerTrainer.ReservedPieces).Where(p => p.Type == SentencePieceType.Normal).Select(p => p.Score).ToList();
        Assert.True(learned.Zip(learned.Skip(1)).All(x => x.First > x.Second));
    }

    [Fact]
    public void Trained_model_loads_in_Bora_and_Google_sentencepiece_and_they_agree()
    {
        var corpus = TestPaths.Shared("corpus", "tinystories_validation_100.txt");
        if (!File.Exists(corpus))
        {
            Console.WriteLine($"skipped: {corpus} is absent");
            return;
        }
        var model = Path.Combine(_dir, "tokenizer.model");
        var stdout = new StringWriter();
        Assert.Equal(0, Program.Run(["tokenizer", "train", "--data", corpus, "--vocab-size", "700", "--out", model], stdout, new StringWriter(), TextReader.Null));
        Assert.Contains("700 pieces", stdout.ToString(), StringComparison.Ordinal);

        var bora = SentencePieceTokenizer.Load(model);
        Assert.Equal(700, bora.VocabSize);
        string[] texts =
        [
            .. File.ReadLines(corpus).Where(l => l.Length > 0).Take(20),
            "Once upon a time, there was a little girl named Lily.",
            "  extra   spaces  ",
            "Unseen: café, naïve, 東京, 🙂 and tabs\tand\nnewlines",
            "",
        ];
        const string Python = "/usr/bin/python3";
        if (!File.Exists(Python))
        {
            Assert.Fail($"{Python} is missing; this test needs it with Google's sentencepiece (apt-get install -y python3-sentencepiece)");
        }
        var request = Path.Combine(_dir, "request.json");
        File.WriteAllText(request, JsonSerializer.Serialize(new { encode = texts }));
        var (code, json, stderr) = ExternalProcess.Run(Python, [Path.Combine(TestPaths.RepoRoot, "tests", "tools", "spm", "spm_oracle.py"), model, request], TimeSpan.FromMinutes(2));
        Assert.True(code == 0, $"spm_oracle.py failed ({code}): {stderr}");
        using var doc = JsonDocument.Parse(json);
        int i = 0;
        foreach (var e in doc.RootElement.GetProperty("encode").EnumerateArray())
        {
            int[] google = [.. e.GetProperty("ids").EnumerateArray().Select(x => x.GetInt32())];
            int[] ours = [.. bora.Encode(texts[i], addBos: false).Select(t => t.Value)];
            Assert.True(google.SequenceEqual(ours), $"text {i} \"{texts[i]}\": google [{string.Join(",", google)}] bora [{string.Join(",", ours)}]");
            i++;
        }
        Assert.Equal(texts.Length, i);
        // Byte fallback round-trips characters outside the alphabet.
        Assert.Equal(texts[^2], bora.Decode(bora.Encode(texts[^2], addBos: false)));
    }
}
