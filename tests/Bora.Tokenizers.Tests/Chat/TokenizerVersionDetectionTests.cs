using System.Text.Json.Nodes;
using Bora.Chat;
using Bora.Formats;
using Bora.Formats.Gguf;
using Bora.Tokenizers.HuggingFace;
using Bora.Tokenizers.Tekken;
using Bora.Tokenizers.Tests.Tekken;

namespace Bora.Tokenizers.Tests.Chat;

/// <summary>
/// TokenizerVersions.Detect: the model folder decides the chat format version (file name, tekken.json
/// config.version, tokenizer_config.json hints, GGUF metadata, control tokens), and nothing is mislabelled.
/// </summary>
public sealed class TokenizerVersionDetectionTests : IDisposable
{
    private readonly string _dir = TestPaths.NewTempDir("version-detect");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string Mistral(string name) => TestPaths.Shared("tokenizers", "mistral", name);

    /// <summary>Template fragments written for these tests, with the markers each version's template has.</summary>
    private const string V1Template = "{{ bos_token }}{% for m in messages %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% endfor %}";
    private const string V2Template = "{% for m in messages %}{{ '[AVAILABLE_TOOLS] ' + tools|tojson }}{{ '[INST] ' + m['content'] + '[/INST]' }}{{ '[TOOL_CALLS] ' }}{% endfor %}";
    private const string V3Template = "{% for m in messages %}{{ '[TOOL_RESULTS] {\"content\": ' + m.content|tojson + ', \"call_id\": \"' + m.tool_call_id + '\"}[/TOOL_RESULTS]' }}{% endfor %}";
    private const string V7Template = "{{ '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}{{ '[INST]' + m['content'] + '[/INST]' }}";

    [Fact]
    public void Chat_templates_reveal_v2_v3_v7_but_not_v1()
    {
        Assert.Null(TokenizerVersions.FromChatTemplate(null));
        Assert.Null(TokenizerVersions.FromChatTemplate(V1Template));
        Assert.Equal(TokenizerVersion.V2, TokenizerVersions.FromChatTemplate(V2Template));
        Assert.Equal(TokenizerVersion.V3, TokenizerVersions.FromChatTemplate(V3Template));
        Assert.Equal(TokenizerVersion.V7, TokenizerVersions.FromChatTemplate(V7Template));
        Assert.Equal(TokenizerVersion.V7, TokenizerVersions.FromChatTemplate(V3Template + V7Template));
    }

    /// <summary>A tokenizer.json with the v2 control tokens as special added tokens (no [IMG], [PREFIX]: like
    /// Mistral 7B Instruct v0.3's Hugging Face file).</summary>
    private string WriteV2LikeTokenizerJson()
    {
        string[] specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"];
        var vocab = new JsonObject();
        var added = new JsonArray();
        for (int i = 0; i < specials.Length; i++)
        {
            vocab[specials[i]] = i;
            added.Add(new JsonObject { ["id"] = i, ["content"] = specials[i], ["special"] = true });
        }
        vocab["\u2581"] = 10;
        vocab["a"] = 11;
        var json = new JsonObject
        {
            ["added_tokens"] = added,
            ["normalizer"] = JsonNode.Parse("""{"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}"""),
            ["pre_tokenizer"] = null,
            ["decoder"] = JsonNode.Parse("""{"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}"""),
            ["model"] = new JsonObject { ["type"] = "BPE", ["unk_token"] = "<unk>", ["fuse_unk"] = true, ["byte_fallback"] = false, ["vocab"] = vocab, ["merges"] = new JsonArray() },
        };
        string path = Path.Combine(_dir, "tokenizer.json");
        File.WriteAllText(path, json.ToJsonString());
        return path;
    }

    private void WriteTokenizerConfig(JsonObject config) => File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), config.ToJsonString());

    [Fact]
    public void Hugging_face_folder_uses_tokenizer_config_hints()
    {
        string path = WriteV2LikeTokenizerJson();
        var tok = HuggingFaceTokenizer.Load(path, sentencePiecePrefix: true);
        // The vocabulary alone says v2.
        Assert.Equal(TokenizerVersion.V2, TokenizerVersions.Detect(path, tok));

        // Mistral 7B Instruct v0.3: its chat template writes tool call ids -> v3.
        WriteTokenizerConfig(new JsonObject { ["chat_template"] = V3Template });
        Assert.Equal(TokenizerVersion.V3, TokenizerVersions.Detect(path, tok));
        Assert.Equal(TokenizerVersion.V3, TokenizerVersions.Detect(_dir, tok));

        // A list of named templates.
        WriteTokenizerConfig(new JsonObject
        {
            ["chat_template"] = new JsonArray(new JsonObject { ["name"] = "default", ["template"] = V1Template }, new JsonObject { ["name"] = "tool_use", ["template"] = V7Template }),
        });
        Assert.Equal(TokenizerVersion.V7, TokenizerVersions.Detect(path, tok));

        // added_tokens_decoder: [SYSTEM_PROMPT] as a special token -> v7; a non-special one says nothing.
        WriteTokenizerConfig(new JsonObject { ["added_tokens_decoder"] = new JsonObject { ["10"] = new JsonObject { ["content"] = "[SYSTEM_PROMPT]", ["special"] = false } } });
        Assert.Equal(TokenizerVersion.V2, TokenizerVersions.Detect(path, tok));
        WriteTokenizerConfig(new JsonObject { ["added_tokens_decoder"] = new JsonObject { ["10"] = new JsonObject { ["content"] = "[SYSTEM_PROMPT]", ["special"] = true } } });
        Assert.Equal(TokenizerVersion.V7, TokenizerVersions.Detect(path, tok));

        // A v1-style template never lowers what the vocabulary says.
        WriteTokenizerConfig(new JsonObject { ["chat_template"] = V1Template });
        Assert.Equal(TokenizerVersion.V2, TokenizerVersions.Detect(path, tok));

        // Broken file: a clear error naming it.
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), "{\"chat_template\": ");
        var e = Assert.Throws<ModelFormatException>(() => TokenizerVersions.Detect(path, tok));
        Assert.Contains("tokenizer_config.json", e.Message, StringComparison.Ordinal);
        File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), "[1, 2]");
        Assert.Contains("expected a JSON object", Assert.Throws<ModelFormatException>(() => TokenizerVersions.Detect(path, tok)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Mistral_7B_v0_1_hugging_face_folder_is_v1()
    {
        string folder = TestPaths.Shared("tokenizers", "mistral", "Mistral-7B-v0.1");
        if (!Directory.Exists(folder))
        {
            Console.WriteLine($"skipped: {folder} not found");
            return;
        }
        string path = Path.Combine(folder, "tokenizer.json");
        Assert.Equal(TokenizerVersion.V1, TokenizerVersions.Detect(path, HuggingFaceTokenizer.Load(path, sentencePiecePrefix: true)));
        Assert.Null(TokenizerVersions.FromTokenizerConfig(Path.Combine(folder, "tokenizer_config.json")));
    }

    /// <summary>A plain tokenizer.model (no .vN suffix) is judged by its vocabulary, not called v1 by its name.</summary>
    [Theory]
    [InlineData("tokenizer.model.v1", TokenizerVersion.V1)]
    [InlineData("mistral_instruct_tokenizer_240216.model.v2", TokenizerVersion.V2)]
    [InlineData("mistral_instruct_tokenizer_240323.model.v3", TokenizerVersion.V3)]
    [InlineData("mistral_instruct_tokenizer_241114.model.v7", TokenizerVersion.V7)]
    public void Plain_tokenizer_model_is_judged_by_its_vocabulary(string source, TokenizerVersion expected)
    {
        if (!File.Exists(Mistral(source)))
        {
            Console.WriteLine($"skipped: {Mistral(source)} not found");
            return;
        }
        string path = Path.Combine(_dir, "tokenizer.model");
        File.Copy(Mistral(source), path);
        var tok = SentencePieceTokenizer.Load(path);
        Assert.Equal(expected, TokenizerVersions.Detect(path, tok));
        // The suffix, where there is one, still decides.
        Assert.Equal(expected, TokenizerVersions.Detect(Mistral(source), tok));
        Assert.Equal(TokenizerVersion.V2, TokenizerVersions.Detect(Path.Combine(_dir, "tokenizer.model.v2"), tok));
    }

    private static readonly string[] TekkenSpecials =
    [
        "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]",
        "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
    ];

    /// <summary>
    /// Tekken: config.version decides. Mistral NeMo's tekken 240718 is v3 although its special tokens include
    /// [SYSTEM_PROMPT] (the vocabulary alone would say v7); versions the renderer lacks are an error, not v7.
    /// </summary>
    [Theory]
    [InlineData("v3", TokenizerVersion.V3)]
    [InlineData("v7", TokenizerVersion.V7)]
    [InlineData("v11", null)]
    [InlineData("v13", null)]
    public void Tekken_version_comes_from_config_version(string version, TokenizerVersion? expected)
    {
        string path = TekkenJson.Write(TekkenJson.Build(["ab"], numSpecial: TekkenSpecials.Length, specials: TekkenSpecials, version: version), _dir);
        var tok = TekkenTokenizer.Load(path);
        Assert.Equal(TokenizerVersion.V7, TokenizerVersions.FromVocabulary(tok));
        if (expected is { } v)
        {
            Assert.Equal(v, TokenizerVersions.Detect(path, tok));
            Assert.Equal(v, TokenizerVersions.Detect(null, tok));
        }
        else
        {
            var e = Assert.Throws<ChatRequestException>(() => TokenizerVersions.Detect(path, tok));
            Assert.Contains(version, e.Message, StringComparison.Ordinal);
            Assert.Contains("tekken.json", e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Gguf_metadata_chat_template_and_tekken_pre_tokenizer()
    {
        Assert.Null(TokenizerVersions.FromGgufMetadata(new Dictionary<string, object> { ["tokenizer.ggml.model"] = "llama" }));
        Assert.Equal(TokenizerVersion.V3, TokenizerVersions.FromGgufMetadata(new Dictionary<string, object> { ["tokenizer.ggml.model"] = "gpt2", ["tokenizer.ggml.pre"] = "tekken" }));
        Assert.Equal(TokenizerVersion.V7, TokenizerVersions.FromGgufMetadata(new Dictionary<string, object> { ["tokenizer.ggml.pre"] = "tekken", ["tokenizer.chat_template"] = V7Template }));
        if (!File.Exists(Mistral("mistral_instruct_tokenizer_240216.model.v2")))
        {
            return;
        }
        // A llama-vocabulary GGUF with the v2 control tokens (as llama.cpp converts Mistral 7B Instruct v0.3).
        var model = SentencePieceModel.Load(Mistral("mistral_instruct_tokenizer_240216.model.v2"));
        string Write(string? template)
        {
            var w = new GgufWriter()
                .AddMetadata("general.architecture", "llama")
                .AddMetadata("tokenizer.ggml.model", "llama")
                .AddMetadata("tokenizer.ggml.tokens", model.Pieces.Select(p => p.Piece).ToArray())
                .AddMetadata("tokenizer.ggml.scores", model.Pieces.Select(p => p.Score).ToArray())
                .AddMetadata("tokenizer.ggml.token_type", model.Pieces.Select(p => (long)p.Type).ToArray());
            if (template is not null)
            {
                w.AddMetadata("tokenizer.chat_template", template);
            }
            string path = Path.Combine(_dir, $"model-{template?.Length ?? 0}.gguf");
            w.Write(path);
            return path;
        }
        foreach (var (template, expected) in new[] { ((string?)null, TokenizerVersion.V2), (V3Template, TokenizerVersion.V3), (V7Template, TokenizerVersion.V7) })
        {
            string path = Write(template);
            ITokenizer tok;
            using (var gguf = GgufFile.Open(path))
            {
                tok = GgufVocabulary.Load(gguf.Metadata, path);
            }
            Assert.Equal(expected, TokenizerVersions.Detect(path, tok));
        }
    }
}
