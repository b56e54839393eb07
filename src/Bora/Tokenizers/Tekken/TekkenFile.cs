using System.Text.Json;
using System.Text.RegularExpressions;
using Bora.Formats;

namespace Bora.Tokenizers.Tekken;

/// <summary>
/// Reads and validates a mistral-common <c>tekken.json</c>:
/// <code>
/// { "config": { "pattern", "num_vocab_tokens", "default_vocab_size", "default_num_special_tokens", "version" },
///   "vocab": [ { "rank", "token_bytes" (base64), "token_str" (string or null) }, ... ],
///   "special_tokens": [ { "rank", "token_str", "is_control" }, ... ]   (optional up to version v7) }
/// </code>
/// Rules follow mistral-common's <c>Tekkenizer.from_file</c> / <c>__init__</c> /
/// <c>_reload_mergeable_ranks</c>: the inner vocabulary is the first
/// default_vocab_size - default_num_special_tokens entries (later entries are ignored); entry i has
/// rank i; ranks 0..255 are the single bytes 0..255; byte strings are unique; special tokens have
/// unique texts and are padded with "&lt;SPECIAL_i&gt;" up to default_num_special_tokens; a file
/// without special_tokens gets mistral-common's deprecated default list (versions up to v7 only).
/// Extra checks (files mistral-common would also fail on later, or that are implausible):
/// num_vocab_tokens, when present, equals the vocab list length; special rank i is at position i;
/// &lt;s&gt; and &lt;/s&gt; exist; token bytes are non-empty and at most <see cref="MaxTokenBytes"/>.
/// </summary>
internal sealed class TekkenFile
{
    /// <summary>A single token longer than this is an error.</summary>
    public const int MaxTokenBytes = 1 << 20;

    /// <summary>Largest accepted default_vocab_size (16.7 M ids; real files have 131072).</summary>
    public const int MaxVocabSize = 1 << 24;

    /// <summary>Largest accepted file (real files are 15 to 30 MB).</summary>
    public const long MaxFileBytes = 1L << 30;

    /// <summary>mistral-common's <c>Tekkenizer.DEPRECATED_SPECIAL_TOKENS</c>, used when a file has no special_tokens.</summary>
    internal static readonly string[] DeprecatedSpecialTokens =
    [
        "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
        "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
        "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
    ];

    private TekkenFile(string pattern, int vocabSize, string version, TekkenSpecialToken[] specials, ByteRankTable ranks)
    {
        Pattern = pattern;
        VocabSize = vocabSize;
        Version = version;
        Specials = specials;
        Ranks = ranks;
    }

    public string Pattern { get; }

    public int VocabSize { get; }

    public string Version { get; }

    /// <summary>(num_special_tokens) special tokens, index = id.</summary>
    public TekkenSpecialToken[] Specials { get; }

    /// <summary>(vocab_size - num_special_tokens) inner tokens, index = rank.</summary>
    public ByteRankTable Ranks { get; }

    public static TekkenFile Read(string path)
    {
        var info = new FileInfo(path);
        if (!info.Exists)
        {
            throw new FileNotFoundException($"{path}: no such tokenizer file", path);
        }
        if (info.Length > MaxFileBytes)
        {
            throw Bad(path, $"the file has {info.Length} bytes, more than the {MaxFileBytes} accepted for a tokenizer");
        }
        JsonDocument doc;
        try
        {
            using var stream = File.OpenRead(path);
            doc = JsonDocument.Parse(stream, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException($"{path}: not valid JSON ({e.Message})", e);
        }
        using (doc)
        {
            return Parse(path, doc.RootElement);
        }
    }

    private static TekkenFile Parse(string path, JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object)
        {
            throw Bad(path, $"the top level is a JSON {root.ValueKind}, expected an object with config, vocab and special_tokens");
        }
        var config = Member(path, root, "config", JsonValueKind.Object, "");
        var pattern = Member(path, config, "pattern", JsonValueKind.String, "config.").GetString()!;
        var vocabSize = Int(path, config, "default_vocab_size", "config.");
        var numSpecial = Int(path, config, "default_num_special_tokens", "config.");
        var version = Member(path, config, "version", JsonValueKind.String, "config.").GetString()!;
        if (!Regex.IsMatch(version, "^v[0-9]{1,6}$"))
        {
            throw Bad(path, $"config.version is \"{version}\", expected 'v' and a number such as \"v3\"");
        }
        var versionNumber = int.Parse(version.AsSpan(1), System.Globalization.CultureInfo.InvariantCulture);

        if (vocabSize <= 0 || vocabSize > MaxVocabSize)
        {
            throw Bad(path, $"config.default_vocab_size is {vocabSize}, expected 1 to {MaxVocabSize}");
        }
        if (numSpecial < 0 || numSpecial >= vocabSize)
        {
            throw Bad(path, $"config.default_num_special_tokens is {numSpecial}, expected 0 to default_vocab_size - 1 ({vocabSize - 1})");
        }
        var inner = vocabSize - numSpecial;
        if (inner < 256)
        {
            throw Bad(path, $"default_vocab_size {vocabSize} - default_num_special_tokens {numSpecial} leaves {inner} ordinary tokens, fewer than the 256 single bytes");
        }

        var vocab = Member(path, root, "vocab", JsonValueKind.Array, "");
        var vocabCount = vocab.GetArrayLength();
        if (config.TryGetProperty("num_vocab_tokens", out _))
        {
            var numVocab = Int(path, config, "num_vocab_tokens", "config.");
            if (numVocab != vocabCount)
            {
                throw Bad(path, $"config.num_vocab_tokens is {numVocab} but the vocab list has {vocabCount} entries");
            }
        }
        if (vocabCount < inner)
        {
            throw Bad(path, $"the vocab list has {vocabCount} entries, fewer than default_vocab_size {vocabSize} - default_num_special_tokens {numSpecial} = {inner}");
        }

        var specials = ReadSpecials(path, root, numSpecial, version, versionNumber);
        var tokens = ReadVocab(path, vocab, inner);
        var table = ByteRankTable.TryCreate(tokens, out var dup)
            ?? throw Bad(path, $"vocab[{dup.Second}] has the same token_bytes as vocab[{dup.First}] ({Convert.ToBase64String(tokens[dup.Second])}); byte strings must be unique");

        string pattern2;
        try
        {
            pattern2 = TekkenPreTokenizer.TranslatePattern(pattern);
            _ = new Regex(pattern2, RegexOptions.CultureInvariant);
        }
        catch (ArgumentException e)
        {
            throw new ModelFormatException($"{path}: config.pattern is not a usable regular expression ({e.Message}): {pattern}", e);
        }
        return new TekkenFile(pattern, vocabSize, version, specials, table);
    }

    private static byte[][] ReadVocab(string path, JsonElement vocab, int inner)
    {
        var tokens = new byte[inner][];
        var i = 0;
        foreach (var entry in vocab.EnumerateArray())
        {
            if (i == inner)
            {
                break;   // mistral-common keeps only the first `inner` entries
            }
            var where = $"vocab[{i}].";
            if (entry.ValueKind != JsonValueKind.Object)
            {
                throw Bad(path, $"vocab[{i}] is a JSON {entry.ValueKind}, expected an object with rank, token_bytes and token_str");
            }
            var rank = Int(path, entry, "rank", where);
            if (rank != i)
            {
                throw Bad(path, $"vocab[{i}].rank is {rank}, expected {i} (entries must be listed by rank, without gaps or duplicates)");
            }
            var b64 = Member(path, entry, "token_bytes", JsonValueKind.String, where).GetString()!;
            if (b64.Length > (MaxTokenBytes + 2) / 3 * 4)
            {
                throw Bad(path, $"vocab[{i}].token_bytes has {b64.Length} base64 characters, a token of more than {MaxTokenBytes} bytes");
            }
            var buffer = new byte[b64.Length / 4 * 3 + 3];
            if (!Convert.TryFromBase64String(b64, buffer, out var n))
            {
                throw Bad(path, $"vocab[{i}].token_bytes \"{Shorten(b64)}\" is not valid base64");
            }
            if (n > MaxTokenBytes)
            {
                throw Bad(path, $"vocab[{i}].token_bytes has {n} bytes, more than the {MaxTokenBytes} accepted for one token");
            }
            if (n == 0)
            {
                throw Bad(path, $"vocab[{i}].token_bytes is empty, expected at least one byte");
            }
            if (i < 256 && (n != 1 || buffer[0] != i))
            {
                throw Bad(path, $"vocab[{i}] is {Convert.ToBase64String(buffer, 0, n)} ({n} bytes); ranks 0..255 must be the single bytes 0..255 (rank {i} = byte 0x{i:X2}) so that every byte can be encoded");
            }
            tokens[i] = buffer.AsSpan(0, n).ToArray();
            i++;
        }
        return tokens;
    }

    private static TekkenSpecialToken[] ReadSpecials(string path, JsonElement root, int numSpecial, string version, int versionNumber)
    {
        var list = new List<TekkenSpecialToken>();
        if (!root.TryGetProperty("special_tokens", out var specialsElement) || specialsElement.ValueKind == JsonValueKind.Null)
        {
            if (versionNumber > 7)
            {
                throw Bad(path, $"special_tokens is missing; it is required for tokenizer version {version} (only files up to v7 may rely on the default list)");
            }
            for (var i = 0; i < DeprecatedSpecialTokens.Length; i++)
            {
                list.Add(new TekkenSpecialToken(i, DeprecatedSpecialTokens[i], true));
            }
        }
        else
        {
            if (specialsElement.ValueKind != JsonValueKind.Array)
            {
                throw Bad(path, $"special_tokens is a JSON {specialsElement.ValueKind}, expected an array");
            }
            if (specialsElement.GetArrayLength() > numSpecial)
            {
                throw Bad(path, $"there are {specialsElement.GetArrayLength()} special tokens but config.default_num_special_tokens is {numSpecial}");
            }
            var i = 0;
            foreach (var entry in specialsElement.EnumerateArray())
            {
                var where = $"special_tokens[{i}].";
                if (entry.ValueKind != JsonValueKind.Object)
                {
                    throw Bad(path, $"special_tokens[{i}] is a JSON {entry.ValueKind}, expected an object with rank, token_str and is_control");
                }
                var rank = Int(path, entry, "rank", where);
                if (rank < 0 || rank >= numSpecial)
                {
                    throw Bad(path, $"special_tokens[{i}].rank is {rank}, outside the special-token ids 0..{numSpecial - 1} (config.default_num_special_tokens = {numSpecial})");
                }
                if (rank != i)
                {
                    throw Bad(path, $"special_tokens[{i}].rank is {rank}, expected {i} (special tokens must be listed by id)");
                }
                var text = Member(path, entry, "token_str", JsonValueKind.String, where).GetString()!;
                if (text.Length == 0)
                {
                    throw Bad(path, $"special_tokens[{i}].token_str is empty");
                }
                var isControl = entry.TryGetProperty("is_control", out var c) && c.ValueKind switch
                {
                    JsonValueKind.True => true,
                    JsonValueKind.False => false,
                    _ => throw Bad(path, $"special_tokens[{i}].is_control is a JSON {c.ValueKind}, expected true or false"),
                };
                list.Add(new TekkenSpecialToken(rank, text, isControl));
                i++;
            }
        }
        if (list.Count > numSpecial)
        {
            throw Bad(path, $"there are {list.Count} special tokens but config.default_num_special_tokens is {numSpecial}");
        }
        for (var i = list.Count; i < numSpecial; i++)
        {
            list.Add(new TekkenSpecialToken(i, $"<SPECIAL_{i}>", true));
        }
        var seen = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var t in list)
        {
            if (!seen.TryAdd(t.Text, t.Id))
            {
                throw Bad(path, $"special tokens {seen[t.Text]} and {t.Id} are both \"{t.Text}\"; special tokens must be unique");
            }
        }
        foreach (var required in (string[])["<s>", "</s>"])
        {
            if (!seen.ContainsKey(required))
            {
                throw Bad(path, $"special token \"{required}\" is missing; BOS <s> and EOS </s> are required");
            }
        }
        return [.. list];
    }

    private static JsonElement Member(string path, JsonElement obj, string name, JsonValueKind kind, string prefix)
    {
        if (!obj.TryGetProperty(name, out var value))
        {
            throw Bad(path, $"{prefix}{name} is missing (expected a JSON {kind})");
        }
        if (value.ValueKind != kind)
        {
            throw Bad(path, $"{prefix}{name} is a JSON {value.ValueKind}, expected a JSON {kind}");
        }
        return value;
    }

    private static int Int(string path, JsonElement obj, string name, string prefix)
    {
        var value = Member(path, obj, name, JsonValueKind.Number, prefix);
        if (!value.TryGetInt32(out var n))
        {
            throw Bad(path, $"{prefix}{name} is {value.GetRawText()}, expected a 32-bit integer");
        }
        return n;
    }

    private static string Shorten(string s) => s.Length <= 40 ? s : s[..40] + "...";

    private static ModelFormatException Bad(string path, string problem) => ModelFormatException.In(path, problem);
}
