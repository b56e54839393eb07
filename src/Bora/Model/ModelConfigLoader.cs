using System.Globalization;
using System.Text.Json;
using Bora.Formats;

namespace Bora.Model;

/// <summary>
/// Reads <see cref="ModelConfig"/> from the three places a checkpoint keeps it: a Hugging Face
/// config.json, Mistral's params.json, or GGUF metadata (arch <c>llama</c>). Every missing or
/// ill-typed field throws <see cref="ModelFormatException"/> naming the file and the key.
/// </summary>
public static class ModelConfigLoader
{
    private static readonly string[] HfArchitectures = ["MistralForCausalLM", "MixtralForCausalLM", "LlamaForCausalLM"];

    /// <summary>
    /// Context assumed when params.json names none (Mistral's released params.json files omit it;
    /// 32768 is the max_position_embeddings of the HF configs of Mistral 7B and Mixtral 8x7B).
    /// </summary>
    public const int DefaultParamsJsonContext = 32768;

    /// <summary>
    /// Hugging Face config.json of MistralForCausalLM, MixtralForCausalLM or LlamaForCausalLM.
    /// Defaults as transformers: num_key_value_heads = num_attention_heads, head_dim = hidden/heads,
    /// rope_theta = 10000, rms_norm_eps = 1e-6 (1e-5 for Mixtral), max_position_embeddings = 4096,
    /// tie_word_embeddings = false. rope_scaling other than null/"default" is rejected.
    /// </summary>
    public static ModelConfig FromHfConfigJson(string path)
    {
        using var doc = ParseJson(path);
        var root = new JsonFields(path, doc.RootElement);
        var archs = root.RequiredStringArray("architectures");
        var arch = archs.FirstOrDefault(a => HfArchitectures.Contains(a))
            ?? throw ModelFormatException.In(path, $"'architectures' is [{string.Join(", ", archs)}]; expected one of {string.Join(", ", HfArchitectures)}");
        bool mixtral = arch == "MixtralForCausalLM";

        if (root.OptionalString("hidden_act") is { } act && act != "silu")
        {
            throw ModelFormatException.In(path, $"'hidden_act' is \"{act}\"; only \"silu\" (SwiGLU) is implemented");
        }
        if (root.OptionalBool("attention_bias") == true || root.OptionalBool("mlp_bias") == true)
        {
            throw ModelFormatException.In(path, "'attention_bias'/'mlp_bias' is true; linear layers with bias are not implemented");
        }
        CheckRopeScaling(root);

        int dim = root.RequiredInt("hidden_size");
        int heads = root.RequiredInt("num_attention_heads");
        var config = new ModelConfig
        {
            Dim = dim,
            NLayers = root.RequiredInt("num_hidden_layers"),
            NHeads = heads,
            NKvHeads = root.OptionalInt("num_key_value_heads") ?? heads,
            HeadDim = root.OptionalInt("head_dim") ?? (heads > 0 ? dim / heads : 0),
            HiddenDim = root.RequiredInt("intermediate_size"),
            VocabSize = root.RequiredInt("vocab_size"),
            NormEps = root.OptionalFloat("rms_norm_eps") ?? (mixtral ? 1e-5f : 1e-6f),
            RopeTheta = root.OptionalFloat("rope_theta") ?? 10000f,
            SlidingWindow = root.OptionalInt("sliding_window"),
            MaxSeqLen = root.OptionalInt("max_position_embeddings") ?? 4096,
            NExperts = mixtral ? root.RequiredInt("num_local_experts") : 0,
            NExpertsPerToken = mixtral ? root.RequiredInt("num_experts_per_tok") : 0,
            TiedEmbeddings = root.OptionalBool("tie_word_embeddings") ?? false,
        };
        if (arch == "LlamaForCausalLM" && root.OptionalBool("use_sliding_window") == false)
        {
            config = config with { SlidingWindow = null };
        }
        config.Validate(path);
        return config;
    }

    /// <summary>
    /// Mistral's params.json (mistral-inference TransformerArgs). When rope_theta is absent the
    /// default is 10000 for a model with a sliding window and 1e6 without: the rule mistral-inference
    /// introduced with Mixtral (commit b818190), which gives both Mistral 7B v0.1 (window 4096) and
    /// Mixtral 8x7B their trained values (current mistral-inference always falls back to 1e6, but
    /// every params.json it targets names rope_theta). A list-valued sliding_window must hold one
    /// value for every layer (per-layer windows are not implemented).
    /// </summary>
    public static ModelConfig FromParamsJson(string path)
    {
        using var doc = ParseJson(path);
        var root = new JsonFields(path, doc.RootElement);
        if (root.OptionalString("model_type") is { } type && type != "transformer")
        {
            throw ModelFormatException.In(path, $"'model_type' is \"{type}\"; only \"transformer\" is implemented");
        }
        int? window = ParamsSlidingWindow(root, "sliding_window") ?? ParamsSlidingWindow(root, "_sliding_window");
        int experts = 0, perToken = 0;
        if (root.OptionalObject("moe") is { } moe)
        {
            experts = moe.RequiredInt("num_experts");
            perToken = moe.RequiredInt("num_experts_per_tok");
        }
        int dim = root.RequiredInt("dim");
        int heads = root.RequiredInt("n_heads");
        var config = new ModelConfig
        {
            Dim = dim,
            NLayers = root.RequiredInt("n_layers"),
            NHeads = heads,
            NKvHeads = root.RequiredInt("n_kv_heads"),
            HeadDim = root.OptionalInt("head_dim") ?? (heads > 0 ? dim / heads : 0),
            HiddenDim = root.RequiredInt("hidden_dim"),
            VocabSize = root.RequiredInt("vocab_size"),
            NormEps = root.RequiredFloat("norm_eps"),
            RopeTheta = root.OptionalFloat("rope_theta") ?? (window is null ? 1e6f : 10000f),
            SlidingWindow = window,
            MaxSeqLen = root.OptionalInt("max_seq_len") ?? root.OptionalInt("max_position_embeddings") ?? DefaultParamsJsonContext,
            NExperts = experts,
            NExpertsPerToken = perToken,
            TiedEmbeddings = root.OptionalBool("tied_embeddings") ?? false,
        };
        config.Validate(path);
        return config;
    }

    /// <summary>
    /// GGUF metadata of architecture <c>llama</c> (llama.cpp writes Mistral and Mixtral as llama).
    /// Value types: integers as long (int also accepted), float32 as float, float64 as double,
    /// string, bool, arrays as string[] / long[] / float[]. <paramref name="path"/> is for messages.
    /// Head width comes from llama.attention.key_length, else embedding_length / head_count (as
    /// llama.cpp); a llama.rope.dimension_count different from the head width (partial rotary) is rejected.
    /// Tied embeddings are not in the metadata: <see cref="WeightLoader"/> sets them when output.weight is absent.
    /// </summary>
    public static ModelConfig FromGguf(IReadOnlyDictionary<string, object> metadata, string path)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        var m = new GgufFields(path, metadata);
        string arch = m.RequiredString("general.architecture");
        if (arch != "llama")
        {
            throw ModelFormatException.In(path, $"'general.architecture' is \"{arch}\"; only \"llama\" (Llama, Mistral, Mixtral) is implemented");
        }
        if (m.OptionalString("llama.rope.scaling.type") is { } scaling && scaling != "none")
        {
            throw ModelFormatException.In(path, $"'llama.rope.scaling.type' is \"{scaling}\"; RoPE scaling is not implemented");
        }
        int dim = m.RequiredInt("llama.embedding_length");
        int heads = m.RequiredInt("llama.attention.head_count");
        int? keyLength = m.OptionalInt("llama.attention.key_length");
        int? ropeDims = m.OptionalInt("llama.rope.dimension_count");
        int headDim = keyLength ?? (heads > 0 ? dim / heads : 0);
        if (ropeDims is { } rd && rd != headDim)
        {
            throw ModelFormatException.In(path, $"'llama.rope.dimension_count' is {rd} but the head width is {headDim}; partial rotary embeddings are not implemented");
        }
        if (m.OptionalInt("llama.attention.value_length") is { } vl && vl != headDim)
        {
            throw ModelFormatException.In(path, $"'llama.attention.value_length' is {vl}; expected the key length {headDim}");
        }
        int vocab = m.OptionalInt("llama.vocab_size")
            ?? m.OptionalStringArrayLength("tokenizer.ggml.tokens")
            ?? throw ModelFormatException.In(path, "neither 'llama.vocab_size' nor 'tokenizer.ggml.tokens' is present; expected one to give the vocabulary size");
        var config = new ModelConfig
        {
            Dim = dim,
            NLayers = m.RequiredInt("llama.block_count"),
            NHeads = heads,
            NKvHeads = m.OptionalInt("llama.attention.head_count_kv") ?? heads,
            HeadDim = headDim,
            HiddenDim = m.RequiredInt("llama.feed_forward_length"),
            VocabSize = vocab,
            NormEps = m.RequiredFloat("llama.attention.layer_norm_rms_epsilon"),
            RopeTheta = m.OptionalFloat("llama.rope.freq_base") ?? 10000f,
            SlidingWindow = m.OptionalInt("llama.attention.sliding_window"),
            MaxSeqLen = m.RequiredInt("llama.context_length"),
            NExperts = m.OptionalInt("llama.expert_count") ?? 0,
            NExpertsPerToken = m.OptionalInt("llama.expert_used_count") ?? 0,
        };
        config.Validate(path);
        return config;
    }

    private static void CheckRopeScaling(JsonFields root)
    {
        if (!root.Element.TryGetProperty("rope_scaling", out var rs) || rs.ValueKind == JsonValueKind.Null)
        {
            return;
        }
        string? kind = null;
        if (rs.ValueKind == JsonValueKind.Object)
        {
            foreach (var key in new[] { "rope_type", "type" })
            {
                if (rs.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String)
                {
                    kind = v.GetString();
                    break;
                }
            }
        }
        if (kind != "default")
        {
            throw ModelFormatException.In(root.Path, $"'rope_scaling' is {rs.GetRawText()}; RoPE scaling is not implemented (only null or type \"default\")");
        }
    }

    private static int? ParamsSlidingWindow(JsonFields root, string key)
    {
        if (!root.Element.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null)
        {
            return null;
        }
        if (v.ValueKind == JsonValueKind.Array)
        {
            var values = v.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int w) ? (int?)w : null).ToList();
            if (values.Count > 0 && values.All(w => w is not null && w == values[0]))
            {
                return values[0];
            }
            throw ModelFormatException.In(root.Path, $"'{key}' is {v.GetRawText()}; per-layer sliding windows are not implemented (expected one integer or null)");
        }
        return root.OptionalInt(key);
    }

    private static JsonDocument ParseJson(string path)
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException($"{path}: cannot read config: {e.Message}", e);
        }
        try
        {
            var doc = JsonDocument.Parse(text);
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                doc.Dispose();
                throw ModelFormatException.In(path, "expected a JSON object at the top level");
            }
            return doc;
        }
        catch (JsonException e)
        {
            throw new ModelFormatException($"{path}: not valid JSON: {e.Message}", e);
        }
    }

    /// <summary>Typed access to the fields of one JSON object, with file-and-key error messages.</summary>
    private readonly struct JsonFields(string path, JsonElement element)
    {
        public string Path => path;

        public JsonElement Element => element;

        private JsonElement? Get(string key) =>
            element.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

        private ModelFormatException Bad(string key, JsonElement v, string expected) =>
            ModelFormatException.In(path, $"field '{key}' is {Truncate(v.GetRawText())}; expected {expected}");

        private ModelFormatException Missing(string key, string expected) =>
            ModelFormatException.In(path, $"field '{key}' is missing; expected {expected}");

        public int? OptionalInt(string key)
        {
            if (Get(key) is not { } v)
            {
                return null;
            }
            if (v.ValueKind == JsonValueKind.Number)
            {
                if (v.TryGetInt32(out int i))
                {
                    return i;
                }
                // 4096.0 is an integer written as a float; accept it.
                if (v.TryGetDouble(out double d) && d == Math.Floor(d) && d >= int.MinValue && d <= int.MaxValue)
                {
                    return (int)d;
                }
            }
            throw Bad(key, v, "an integer");
        }

        public int RequiredInt(string key) => OptionalInt(key) ?? throw Missing(key, "an integer");

        public float? OptionalFloat(string key)
        {
            if (Get(key) is not { } v)
            {
                return null;
            }
            if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && double.IsFinite(d))
            {
                return (float)d;
            }
            throw Bad(key, v, "a number");
        }

        public float RequiredFloat(string key) => OptionalFloat(key) ?? throw Missing(key, "a number");

        public bool? OptionalBool(string key)
        {
            if (Get(key) is not { } v)
            {
                return null;
            }
            return v.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Bad(key, v, "true or false"),
            };
        }

        public string? OptionalString(string key)
        {
            if (Get(key) is not { } v)
            {
                return null;
            }
            return v.ValueKind == JsonValueKind.String ? v.GetString() : throw Bad(key, v, "a string");
        }

        public string[] RequiredStringArray(string key)
        {
            if (Get(key) is not { } v)
            {
                throw Missing(key, "an array of strings");
            }
            if (v.ValueKind != JsonValueKind.Array || v.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.String))
            {
                throw Bad(key, v, "an array of strings");
            }
            return [.. v.EnumerateArray().Select(e => e.GetString()!)];
        }

        public JsonFields? OptionalObject(string key)
        {
            if (Get(key) is not { } v)
            {
                return null;
            }
            return v.ValueKind == JsonValueKind.Object ? new JsonFields($"{path} (in '{key}')", v) : throw Bad(key, v, "an object");
        }

        private static string Truncate(string s) => s.Length <= 80 ? s : s[..80] + "...";
    }

    /// <summary>Typed access to GGUF metadata values, with file-and-key error messages.</summary>
    private readonly struct GgufFields(string path, IReadOnlyDictionary<string, object> metadata)
    {
        private ModelFormatException Bad(string key, object v, string expected) =>
            ModelFormatException.In(path, $"GGUF key '{key}' holds {Describe(v)}; expected {expected}");

        private ModelFormatException Missing(string key, string expected) =>
            ModelFormatException.In(path, $"GGUF key '{key}' is missing; expected {expected}");

        public int? OptionalInt(string key)
        {
            if (!metadata.TryGetValue(key, out var v))
            {
                return null;
            }
            long? value = v switch
            {
                long l => l,
                int i => i,
                uint u => u,
                ulong u when u <= long.MaxValue => (long)u,
                short s => s,
                ushort s => s,
                byte b => b,
                sbyte b => b,
                _ => null,
            };
            if (value is null)
            {
                if (v is Array)
                {
                    throw Bad(key, v, "a single integer (per-layer values are not implemented)");
                }
                throw Bad(key, v, "an integer");
            }
            if (value < int.MinValue || value > int.MaxValue)
            {
                throw Bad(key, v, "an integer that fits in 32 bits");
            }
            return (int)value.Value;
        }

        public int RequiredInt(string key) => OptionalInt(key) ?? throw Missing(key, "an integer");

        public float? OptionalFloat(string key)
        {
            if (!metadata.TryGetValue(key, out var v))
            {
                return null;
            }
            double? value = v switch
            {
                float f => f,
                double d => d,
                _ => null,
            };
            if (value is not { } d2 || !double.IsFinite(d2))
            {
                throw Bad(key, v, "a finite float");
            }
            return (float)d2;
        }

        public float RequiredFloat(string key) => OptionalFloat(key) ?? throw Missing(key, "a float");

        public string? OptionalString(string key)
        {
            if (!metadata.TryGetValue(key, out var v))
            {
                return null;
            }
            return v as string ?? throw Bad(key, v, "a string");
        }

        public string RequiredString(string key) => OptionalString(key) ?? throw Missing(key, "a string");

        public int? OptionalStringArrayLength(string key)
        {
            if (!metadata.TryGetValue(key, out var v))
            {
                return null;
            }
            return v is string[] a ? a.Length : throw Bad(key, v, "an array of strings");
        }

        private static string Describe(object v) => v switch
        {
            string s => $"the string \"{(s.Length > 40 ? s[..40] + "..." : s)}\"",
            Array a => $"an array of {a.Length} {a.GetType().GetElementType()?.Name}",
            IFormattable f => $"{f.ToString(null, CultureInfo.InvariantCulture)} ({v.GetType().Name})",
            _ => $"a {v.GetType().Name}",
        };
    }
}
