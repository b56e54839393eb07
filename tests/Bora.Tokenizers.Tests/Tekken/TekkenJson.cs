using System.Text;
using System.Text.Json.Nodes;

namespace Bora.Tokenizers.Tests.Tekken;

/// <summary>Builds small synthetic tekken.json files (as mutable JSON) for unit and bad-file tests.</summary>
internal static class TekkenJson
{
    /// <summary>Mistral NeMo's pattern (config.pattern of tekken 240718).</summary>
    public const string NemoPattern =
        @"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>
    /// A file with the 256 byte tokens, then <paramref name="merges"/> (UTF-8) as ranks 256, 257, ...,
    /// <paramref name="numSpecial"/> special ids and the given special tokens (null: no special_tokens key).
    /// </summary>
    public static JsonObject Build(IReadOnlyList<string> merges, int numSpecial = 5, string[]? specials = null, string version = "v7", string pattern = NemoPattern)
    {
        var vocab = new JsonArray();
        for (var b = 0; b < 256; b++)
        {
            vocab.Add(Entry(b, [(byte)b]));
        }
        for (var i = 0; i < merges.Count; i++)
        {
            vocab.Add(Entry(256 + i, Encoding.UTF8.GetBytes(merges[i])));
        }
        var root = new JsonObject
        {
            ["config"] = new JsonObject
            {
                ["pattern"] = pattern,
                ["num_vocab_tokens"] = vocab.Count,
                ["default_vocab_size"] = vocab.Count + numSpecial,
                ["default_num_special_tokens"] = numSpecial,
                ["version"] = version,
            },
            ["vocab"] = vocab,
        };
        specials ??= ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"];
        var list = new JsonArray();
        for (var i = 0; i < specials.Length; i++)
        {
            list.Add(new JsonObject { ["rank"] = i, ["token_str"] = specials[i], ["is_control"] = true });
        }
        root["special_tokens"] = list;
        return root;
    }

    public static JsonObject Entry(int rank, byte[] bytes) => new()
    {
        ["rank"] = rank,
        ["token_bytes"] = Convert.ToBase64String(bytes),
        ["token_str"] = Encoding.UTF8.GetString(bytes),
    };

    /// <summary>Writes <paramref name="json"/> to <paramref name="dir"/>/<paramref name="name"/> and returns the path.</summary>
    public static string Write(JsonNode json, string dir, string name = "tekken.json")
    {
        var path = Path.Combine(dir, name);
        File.WriteAllText(path, json.ToJsonString(), new UTF8Encoding(false));
        return path;
    }
}
