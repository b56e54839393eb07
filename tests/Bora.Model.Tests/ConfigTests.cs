using Bora.Formats;

namespace Bora.Model.Tests;

public sealed class ConfigTests : IDisposable
{
    private readonly string _dir = TestPaths.NewTempDir("config");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, string json)
    {
        var path = Path.Combine(_dir, name);
        File.WriteAllText(path, json);
        return path;
    }

    [Fact]
    public void Mistral_7B_v01_config_json()
    {
        var path = TestPaths.Shared("tokenizers", "mistral", "Mistral-7B-v0.1", "config.json");
        if (!File.Exists(path))
        {
            Console.WriteLine($"skipped: {path} is absent");
            return;
        }
        var c = ModelConfigLoader.FromHfConfigJson(path);
        Assert.Equal(4096, c.Dim);
        Assert.Equal(32, c.NLayers);
        Assert.Equal(32, c.NHeads);
        Assert.Equal(8, c.NKvHeads);
        Assert.Equal(128, c.HeadDim);
        Assert.Equal(14336, c.HiddenDim);
        Assert.Equal(32000, c.VocabSize);
        Assert.Equal(4096, c.SlidingWindow);
        Assert.Equal(10000f, c.RopeTheta);
        Assert.Equal(1e-5f, c.NormEps);
        Assert.Equal(32768, c.MaxSeqLen);
        Assert.False(c.IsMoE);
        Assert.False(c.TiedEmbeddings);
    }

    private const string MixtralHf = """
        {"architectures": ["MixtralForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
         "max_position_embeddings": 32768, "num_attention_heads": 32, "num_hidden_layers": 32,
         "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
         "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": null, "vocab_size": 32000,
         "tie_word_embeddings": false, "hidden_act": "silu", "rope_scaling": null}
        """;

    [Fact]
    public void Mixtral_hf_config_and_defaults()
    {
        var c = ModelConfigLoader.FromHfConfigJson(Write("config.json", MixtralHf));
        Assert.Equal(8, c.NExperts);
        Assert.Equal(2, c.NExpertsPerToken);
        Assert.Null(c.SlidingWindow);
        Assert.Equal(1e6f, c.RopeTheta);
        Assert.Equal(128, c.HeadDim);

        var llama = ModelConfigLoader.FromHfConfigJson(Write("llama.json", """
            {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 172,
             "num_attention_heads": 8, "num_hidden_layers": 5, "vocab_size": 512, "tie_word_embeddings": true}
            """));
        Assert.Equal(8, llama.NKvHeads);   // defaults to the query heads
        Assert.Equal(8, llama.HeadDim);    // hidden / heads
        Assert.Equal(10000f, llama.RopeTheta);
        Assert.Equal(1e-6f, llama.NormEps);
        Assert.True(llama.TiedEmbeddings);
        Assert.False(llama.IsMoE);
    }

    [Theory]
    [InlineData("\"hidden_size\": 4096,", "", "'hidden_size' is missing")]
    [InlineData("\"hidden_size\": 4096", "\"hidden_size\": \"4096\"", "'hidden_size' is \"4096\"; expected an integer")]
    [InlineData("\"num_local_experts\": 8,", "", "'num_local_experts' is missing")]
    [InlineData("\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}", "RoPE scaling is not implemented")]
    [InlineData("[\"MixtralForCausalLM\"]", "[\"GPT2LMHeadModel\"]", "expected one of MistralForCausalLM")]
    [InlineData("\"num_key_value_heads\": 8", "\"num_key_value_heads\": 5", "not a multiple of n_kv_heads 5")]
    [InlineData("\"sliding_window\": null", "\"sliding_window\": 0", "sliding_window 0")]
    [InlineData("\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": true", "'rms_norm_eps' is true; expected a number")]
    [InlineData("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", "only \"silu\"")]
    public void Bad_hf_fields_name_the_file_and_key(string find, string replace, string expected)
    {
        Assert.Contains(find, MixtralHf);
        var path = Write("bad.json", MixtralHf.Replace(find, replace));
        var ex = Assert.Throws<ModelFormatException>(() => ModelConfigLoader.FromHfConfigJson(path));
        Assert.Contains(path, ex.Message);
        Assert.Contains(expected, ex.Message);
    }

    [Fact]
    public void Unreadable_or_invalid_json_is_a_format_error()
    {
        var missing = Path.Combine(_dir, "nope.json");
        Assert.Contains(missing, Assert.Throws<ModelFormatException>(() => ModelConfigLoader.FromHfConfigJson(missing)).Message);
        var broken = Write("broken.json", "{\"hidden_size\": ");
        Assert.Contains("not valid JSON", Assert.Throws<ModelFormatException>(() => ModelConfigLoader.FromParamsJson(broken)).Message);
    }

    [Fact]
    public void Params_json_of_mistral_7b_and_mixtral()
    {
        // Mistral 7B v0.1's params.json: sliding window, no rope_theta -> 10000.
        var m = ModelConfigLoader.FromParamsJson(Write("params.json", """
            {"dim": 4096, "n_layers": 32, "head_dim": 128, "hidden_dim": 14336, "n_heads": 32,
             "n_kv_heads": 8, "norm_eps": 1e-05, "sliding_window": 4096, "vocab_size": 32000}
            """));
        Assert.Equal(4096, m.SlidingWindow);
        Assert.Equal(10000f, m.RopeTheta);
        Assert.Equal(ModelConfigLoader.DefaultParamsJsonContext, m.MaxSeqLen);
        Assert.False(m.IsMoE);

        // Mixtral 8x7B's: moe block, no window -> rope_theta 1e6 (mistral-inference's default).
        var x = ModelConfigLoader.FromParamsJson(Write("params2.json", """
            {"dim": 4096, "n_layers": 32, "head_dim": 128, "hidden_dim": 14336, "n_heads": 32,
             "n_kv_heads": 8, "norm_eps": 1e-05, "vocab_size": 32000,
             "moe": {"num_experts_per_tok": 2, "num_experts": 8}}
            """));
        Assert.Equal(8, x.NExperts);
        Assert.Equal(2, x.NExpertsPerToken);
        Assert.Null(x.SlidingWindow);
        Assert.Equal(1e6f, x.RopeTheta);

        var explicitTheta = ModelConfigLoader.FromParamsJson(Write("params3.json", """
            {"dim": 64, "n_layers": 2, "head_dim": 16, "hidden_dim": 128, "n_heads": 4, "n_kv_heads": 2,
             "norm_eps": 1e-06, "vocab_size": 100, "rope_theta": 500.0, "max_seq_len": 1024, "sliding_window": [8, 8]}
            """));
        Assert.Equal(500f, explicitTheta.RopeTheta);
        Assert.Equal(1024, explicitTheta.MaxSeqLen);
        Assert.Equal(8, explicitTheta.SlidingWindow);
    }

    [Theory]
    [InlineData("\"dim\": 64,", "", "'dim' is missing")]
    [InlineData("\"n_heads\": 4", "\"n_heads\": 4.5", "'n_heads' is 4.5; expected an integer")]
    [InlineData("\"vocab_size\": 100", "\"vocab_size\": 100, \"moe\": {\"num_experts\": 8}", "'num_experts_per_tok' is missing")]
    [InlineData("\"vocab_size\": 100", "\"vocab_size\": 100, \"sliding_window\": [8, null]", "per-layer sliding windows")]
    [InlineData("\"vocab_size\": 100", "\"vocab_size\": 100, \"moe\": {\"num_experts\": 2, \"num_experts_per_tok\": 3}", "num_experts_per_tok 3")]
    public void Bad_params_json_fields(string find, string replace, string expected)
    {
        const string Good = """
            {"dim": 64, "n_layers": 2, "head_dim": 16, "hidden_dim": 128, "n_heads": 4, "n_kv_heads": 2, "norm_eps": 1e-06, "vocab_size": 100}
            """;
        Assert.Contains(find, Good);
        var path = Write("params.json", Good.Replace(find, replace));
        var ex = Assert.Throws<ModelFormatException>(() => ModelConfigLoader.FromParamsJson(path));
        Assert.Contains(path, ex.Message);
        Assert.Contains(expected, ex.Message);
    }

    private static Dictionary<string, object> Gguf() => new()
    {
        ["general.architecture"] = "llama",
        ["llama.embedding_length"] = 4096L,
        ["llama.block_count"] = 32L,
        ["llama.attention.head_count"] = 32L,
        ["llama.attention.head_count_kv"] = 8L,
        ["llama.feed_forward_length"] = 14336L,
        ["llama.attention.layer_norm_rms_epsilon"] = 1e-5f,
        ["llama.rope.freq_base"] = 1e6f,
        ["llama.context_length"] = 32768L,
        ["llama.expert_count"] = 8L,
        ["llama.expert_used_count"] = 2L,
        ["llama.rope.dimension_count"] = 128L,
        ["tokenizer.ggml.tokens"] = Enumerable.Range(0, 32000).Select(i => $"t{i}").ToArray(),
    };

    [Fact]
    public void Gguf_metadata_of_mixtral()
    {
        var c = ModelConfigLoader.FromGguf(Gguf(), "mixtral.gguf");
        Assert.Equal(4096, c.Dim);
        Assert.Equal(32, c.NLayers);
        Assert.Equal(8, c.NKvHeads);
        Assert.Equal(128, c.HeadDim);
        Assert.Equal(14336, c.HiddenDim);
        Assert.Equal(32000, c.VocabSize);  // from the token list
        Assert.Equal(1e6f, c.RopeTheta);
        Assert.Equal(32768, c.MaxSeqLen);
        Assert.Equal(8, c.NExperts);
        Assert.Equal(2, c.NExpertsPerToken);
        Assert.Null(c.SlidingWindow);

        var m = Gguf();
        m["llama.vocab_size"] = 32768L;
        m.Remove("llama.rope.freq_base");
        m.Remove("llama.expert_count");
        m.Remove("llama.expert_used_count");
        var dense = ModelConfigLoader.FromGguf(m, "x.gguf");
        Assert.Equal(32768, dense.VocabSize);
        Assert.Equal(10000f, dense.RopeTheta);
        Assert.False(dense.IsMoE);
    }

    [Theory]
    [InlineData("general.architecture", "gpt2", "only \"llama\"")]
    [InlineData("llama.block_count", null, "'llama.block_count' is missing")]
    [InlineData("llama.block_count", "32", "'llama.block_count' holds the string \"32\"; expected an integer")]
    [InlineData("llama.attention.layer_norm_rms_epsilon", 5L, "expected a finite float")]
    [InlineData("llama.rope.dimension_count", 64L, "partial rotary")]
    [InlineData("tokenizer.ggml.tokens", null, "vocabulary size")]
    [InlineData("llama.rope.scaling.type", "yarn", "RoPE scaling is not implemented")]
    [InlineData("llama.context_length", 1L << 40, "fits in 32 bits")]
    public void Bad_gguf_metadata(string key, object? value, string expected)
    {
        var m = Gguf();
        if (value is null)
        {
            m.Remove(key);
        }
        else
        {
            m[key] = value;
        }
        var ex = Assert.Throws<ModelFormatException>(() => ModelConfigLoader.FromGguf(m, "bad.gguf"));
        Assert.StartsWith("bad.gguf: ", ex.Message);
        Assert.Contains(expected, ex.Message);
    }

    [Fact]
    public void Gguf_per_layer_head_counts_are_rejected_clearly()
    {
        var m = Gguf();
        m["llama.attention.head_count_kv"] = new long[] { 8, 8 };
        Assert.Contains("per-layer", Assert.Throws<ModelFormatException>(() => ModelConfigLoader.FromGguf(m, "x.gguf")).Message);
    }
}
