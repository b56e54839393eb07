using System.Text.Json.Nodes;
using Bora.Formats;
using Bora.Tokenizers.Tekken;

namespace Bora.Tokenizers.Tests.Tekken;

/// <summary>
/// Every validation of <see cref="TekkenTokenizer.Load"/>: a broken file gives a
/// <see cref="ModelFormatException"/> whose message names the file and the field at fault.
/// </summary>
public sealed class TekkenBadFileTests : IDisposable
{
    private readonly string _dir = TestPaths.NewTempDir("tekken-bad");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>Applies <paramref name="edit"/> to a valid file and asserts the load error mentions <paramref name="expected"/>.</summary>
    private void AssertBad(Action<JsonObject> edit, params string[] expected)
    {
        var json = TekkenJson.Build(["ab", "bc", "abc"]);
        edit(json);
        var path = TekkenJson.Write(json, _dir);
        var e = Assert.Throws<ModelFormatException>(() => TekkenTokenizer.Load(path));
        Assert.StartsWith(path + ": ", e.Message);
        foreach (var x in expected)
        {
            Assert.Contains(x, e.Message);
        }
    }

    private static JsonObject Config(JsonObject j) => j["config"]!.AsObject();

    private static JsonArray Vocab(JsonObject j) => j["vocab"]!.AsArray();

    private static JsonArray Specials(JsonObject j) => j["special_tokens"]!.AsArray();

    [Fact]
    public void The_valid_base_file_loads()
    {
        var tok = TekkenTokenizer.Load(TekkenJson.Write(TekkenJson.Build(["ab", "bc", "abc"]), _dir));
        Assert.Equal(5 + 259, tok.VocabSize);
    }

    [Fact]
    public void Missing_file_is_file_not_found()
    {
        var path = Path.Combine(_dir, "nope.json");
        var e = Assert.Throws<FileNotFoundException>(() => TekkenTokenizer.Load(path));
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void Not_json_or_wrong_top_level()
    {
        var path = Path.Combine(_dir, "t.json");
        File.WriteAllText(path, "{\"config\": ");
        Assert.Contains("not valid JSON", Assert.Throws<ModelFormatException>(() => TekkenTokenizer.Load(path)).Message);
        File.WriteAllText(path, "[1, 2]");
        Assert.Contains("expected an object", Assert.Throws<ModelFormatException>(() => TekkenTokenizer.Load(path)).Message);
    }

    [Fact]
    public void Config_fields_missing_or_of_wrong_type()
    {
        AssertBad(j => j.Remove("config"), "config is missing");
        AssertBad(j => Config(j).Remove("pattern"), "config.pattern is missing");
        AssertBad(j => Config(j).Remove("default_vocab_size"), "config.default_vocab_size is missing");
        AssertBad(j => Config(j)["default_num_special_tokens"] = "5", "config.default_num_special_tokens is a JSON String");
        AssertBad(j => Config(j)["default_vocab_size"] = 1.5, "config.default_vocab_size is 1.5", "32-bit integer");
        AssertBad(j => j.Remove("vocab"), "vocab is missing");
    }

    [Fact]
    public void Bad_version()
    {
        AssertBad(j => Config(j)["version"] = "3", "config.version is \"3\"");
        AssertBad(j => Config(j)["version"] = "vX", "config.version");
        AssertBad(j => Config(j).Remove("version"), "config.version is missing");
    }

    [Fact]
    public void Unusable_pattern()
    {
        AssertBad(j => Config(j)["pattern"] = "([a-z]", "config.pattern is not a usable regular expression");
        AssertBad(j => Config(j)["pattern"] = "\\p{Bogus}+", "config.pattern");
    }

    [Fact]
    public void Inconsistent_vocabulary_sizes()
    {
        AssertBad(j => Config(j)["default_vocab_size"] = 0, "config.default_vocab_size is 0");
        AssertBad(j => Config(j)["default_vocab_size"] = int.MaxValue, "config.default_vocab_size", "expected 1 to");
        AssertBad(j => Config(j)["default_num_special_tokens"] = -1, "config.default_num_special_tokens is -1");
        AssertBad(j => Config(j)["default_num_special_tokens"] = 264, "config.default_num_special_tokens is 264");
        AssertBad(j => Config(j)["default_num_special_tokens"] = 100, "leaves 164 ordinary tokens, fewer than the 256 single bytes");
        AssertBad(j => Config(j)["num_vocab_tokens"] = 150000, "config.num_vocab_tokens is 150000 but the vocab list has 259 entries");
        AssertBad(j => Config(j)["default_vocab_size"] = 300, "the vocab list has 259 entries, fewer than", "= 295");
    }

    [Fact]
    public void Vocab_entries_out_of_order_duplicated_or_missing()
    {
        AssertBad(j => Vocab(j)[257]!["rank"] = 256, "vocab[257].rank is 256, expected 257");
        AssertBad(j => Vocab(j)[10] = 7, "vocab[10] is a JSON Number");
        AssertBad(j => Vocab(j)[3]!.AsObject().Remove("token_bytes"), "vocab[3].token_bytes is missing");
        AssertBad(j => Vocab(j)[258]!["token_bytes"] = Vocab(j)[256]!["token_bytes"]!.GetValue<string>(),
            "vocab[258] has the same token_bytes as vocab[256]", "unique");
    }

    [Fact]
    public void Single_byte_ranks_must_be_the_bytes()
    {
        // Byte 0x41 'A' missing from its rank (rank 65 holds "B"): 'A' could not be encoded.
        AssertBad(j => Vocab(j)[65]!["token_bytes"] = Convert.ToBase64String("B"u8.ToArray()), "vocab[65]", "rank 65 = byte 0x41");
        AssertBad(j => Vocab(j)[0]!["token_bytes"] = Convert.ToBase64String("ab"u8.ToArray()), "vocab[0]", "(2 bytes)");
        // Fewer than 256 entries at all.
        AssertBad(j =>
        {
            while (Vocab(j).Count > 200)
            {
                Vocab(j).RemoveAt(Vocab(j).Count - 1);
            }
            Config(j)["num_vocab_tokens"] = 200;
        }, "the vocab list has 200 entries");
    }

    [Fact]
    public void Bad_base64_empty_or_oversized_tokens()
    {
        AssertBad(j => Vocab(j)[256]!["token_bytes"] = "YW*=", "vocab[256].token_bytes \"YW*=\" is not valid base64");
        AssertBad(j => Vocab(j)[256]!["token_bytes"] = "", "vocab[256].token_bytes is empty");
        AssertBad(j => Vocab(j)[256]!["token_bytes"] = Convert.ToBase64String(new byte[TekkenFile.MaxTokenBytes + 1]),
            "vocab[256].token_bytes has", $"more than the {TekkenFile.MaxTokenBytes}");
        AssertBad(j => Vocab(j)[256]!["token_bytes"] = Convert.ToBase64String(new byte[TekkenFile.MaxTokenBytes * 2]),
            "vocab[256].token_bytes has", $"a token of more than {TekkenFile.MaxTokenBytes} bytes");
    }

    [Fact]
    public void Special_tokens_out_of_range_duplicated_or_missing()
    {
        AssertBad(j => Specials(j)[2]!["rank"] = 5, "special_tokens[2].rank is 5, outside the special-token ids 0..4");
        AssertBad(j => Specials(j)[2]!["rank"] = -1, "special_tokens[2].rank is -1");
        AssertBad(j => Specials(j)[2]!["rank"] = 3, "special_tokens[2].rank is 3, expected 2");
        AssertBad(j => Specials(j)[3]!["token_str"] = "<s>", "special tokens 1 and 3 are both \"<s>\"");
        AssertBad(j => Specials(j)[1]!["token_str"] = "<bos>", "special token \"<s>\" is missing");
        AssertBad(j => Specials(j)[1]!["token_str"] = "", "special_tokens[1].token_str is empty");
        AssertBad(j => Specials(j)[1]!["is_control"] = "yes", "special_tokens[1].is_control is a JSON String");
        AssertBad(j => Specials(j).Add(new JsonObject { ["rank"] = 5, ["token_str"] = "[X]", ["is_control"] = true }),
            "there are 6 special tokens but config.default_num_special_tokens is 5");
        AssertBad(j =>
        {
            Config(j)["default_num_special_tokens"] = 3;
            Config(j)["default_vocab_size"] = 259 + 3;
        }, "there are 5 special tokens but config.default_num_special_tokens is 3");
        AssertBad(j => j["special_tokens"] = "none", "special_tokens is a JSON String, expected an array");
        // The padding name may not collide with a listed token.
        AssertBad(j =>
        {
            Specials(j)[3]!["token_str"] = "<SPECIAL_5>";
            Config(j)["default_num_special_tokens"] = 6;
            Config(j)["default_vocab_size"] = 259 + 6;
        }, "special tokens 3 and 5 are both \"<SPECIAL_5>\"");
    }

    [Fact]
    public void Special_tokens_are_required_after_v7()
    {
        AssertBad(j =>
        {
            j.Remove("special_tokens");
            Config(j)["version"] = "v11";
        }, "special_tokens is missing", "v11");
        // Default list (20 tokens) does not fit 5 special ids.
        AssertBad(j =>
        {
            j.Remove("special_tokens");
            Config(j)["version"] = "v3";
        }, "there are 20 special tokens but config.default_num_special_tokens is 5");
    }
}
