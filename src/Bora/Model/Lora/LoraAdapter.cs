using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Bora.Formats;
using Bora.Formats.Safetensors;
using Bora.Numerics;

namespace Bora.Model.Lora;

/// <summary>A weight matrix of a block that LoRA can adapt.</summary>
public enum LoraModule
{
    /// <summary>Wq, HF <c>self_attn.q_proj</c>.</summary>
    Q,

    /// <summary>Wk, HF <c>self_attn.k_proj</c>.</summary>
    K,

    /// <summary>Wv, HF <c>self_attn.v_proj</c>.</summary>
    V,

    /// <summary>Wo, HF <c>self_attn.o_proj</c>.</summary>
    O,

    /// <summary>FFN gate W1: HF <c>mlp.gate_proj</c> (dense) or <c>block_sparse_moe.experts.{e}.w1</c>.</summary>
    W1,

    /// <summary>FFN down W2: HF <c>mlp.down_proj</c> or <c>block_sparse_moe.experts.{e}.w2</c>.</summary>
    W2,

    /// <summary>FFN up W3: HF <c>mlp.up_proj</c> or <c>block_sparse_moe.experts.{e}.w3</c>.</summary>
    W3,
}

/// <summary>One adapted matrix: layer, module and (MoE FFN modules only) expert, else -1.</summary>
public readonly record struct LoraKey(int Layer, LoraModule Module, int Expert = -1)
{
    /// <summary>True for W1, W2, W3.</summary>
    public bool IsFfn => Module >= LoraModule.W1;
}

/// <summary>
/// The factors of one adapted matrix W (out, in), in Bora's row order (Wq, Wk rows interleaved-pair, as
/// <see cref="LayerWeights"/>): A (r, in), B (out, r); the update is scale · B A.
/// </summary>
public sealed record LoraFactors(float[] A, float[] B, int Rank, int In, int Out);

/// <summary>
/// A LoRA adapter in PEFT's layout: <c>adapter_config.json</c> and <c>adapter_model.safetensors</c> with tensors
/// <c>base_model.model.model.layers.{i}.{module}.lora_A.weight</c> (r, in) and <c>.lora_B.weight</c> (out, r),
/// where module is <c>self_attn.{q,k,v,o}_proj</c>, <c>mlp.{gate,down,up}_proj</c> (dense FFN) or
/// <c>block_sparse_moe.experts.{e}.w{1,2,3}</c> (Mixtral experts) — the Hugging Face transformers names, so
/// PEFT and transformers can load the adapter over the HF checkpoint of the same base.
/// <para>
/// Row order: transformers stores q_proj / k_proj rows permuted for its rotate-half RoPE
/// (<see cref="HfRopePermutation"/>), Bora keeps them interleaved. A row permutation P of W is a row
/// permutation of B A = (P B) A, so the file holds P B for q and k (A is untouched; its columns are the model
/// dimension) and loading un-permutes. Other modules are stored as they are.
/// </para>
/// <para>Effective weight: W + (lora_alpha / r) B A (no rsLoRA, no DoRA, no bias, fan_in_fan_out false).</para>
/// </summary>
public sealed class LoraAdapter
{
    /// <summary>The weights file name.</summary>
    public const string WeightsFileName = "adapter_model.safetensors";

    /// <summary>The config file name.</summary>
    public const string ConfigFileName = "adapter_config.json";

    private const string Prefix = "base_model.model.model.layers.";

    private static readonly Regex NamePattern = new(
        @"^base_model\.model\.model\.layers\.(\d+)\.(self_attn\.([qkvo])_proj|mlp\.(gate|down|up)_proj|block_sparse_moe\.experts\.(\d+)\.(w[123]))\.lora_([AB])(?:\.default)?\.weight$",
        RegexOptions.CultureInvariant);

    /// <summary>An adapter of rank r and alpha over the given matrices (factors in Bora's row order).</summary>
    public LoraAdapter(int rank, double alpha, IReadOnlyDictionary<LoraKey, LoraFactors> factors, string baseModel = "")
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rank);
        ArgumentNullException.ThrowIfNull(factors);
        if (!(alpha > 0) || double.IsInfinity(alpha))
        {
            throw new ArgumentOutOfRangeException(nameof(alpha), alpha, "lora_alpha must be a positive number");
        }
        foreach (var (key, f) in factors)
        {
            if (f.Rank != rank || f.A.Length != (long)rank * f.In || f.B.Length != (long)f.Out * rank)
            {
                throw new ArgumentException($"LoRA factors of {key} do not match rank {rank}: A has {f.A.Length} values for ({f.Rank}, {f.In}), B {f.B.Length} for ({f.Out}, {f.Rank})");
            }
        }
        Rank = rank;
        Alpha = alpha;
        Factors = factors;
        BaseModel = baseModel ?? "";
    }

    /// <summary>r.</summary>
    public int Rank { get; }

    /// <summary>lora_alpha.</summary>
    public double Alpha { get; }

    /// <summary>alpha / r, the factor of B A.</summary>
    public float Scale => (float)(Alpha / Rank);

    /// <summary>base_model_name_or_path of the config.</summary>
    public string BaseModel { get; }

    /// <summary>The adapted matrices.</summary>
    public IReadOnlyDictionary<LoraKey, LoraFactors> Factors { get; }

    /// <summary>The PEFT tensor name of factor A or B of <paramref name="key"/>.</summary>
    public static string TensorName(LoraKey key, bool moe, char factor) =>
        string.Create(CultureInfo.InvariantCulture, $"{Prefix}{key.Layer}.{ModulePath(key, moe)}.lora_{factor}.weight");

    /// <summary>The transformers module path, e.g. <c>self_attn.q_proj</c> or <c>block_sparse_moe.experts.3.w1</c>.</summary>
    public static string ModulePath(LoraKey key, bool moe) => key.Module switch
    {
        LoraModule.Q or LoraModule.K or LoraModule.V or LoraModule.O => "self_attn." + TargetName(key.Module, moe),
        _ when moe => string.Create(CultureInfo.InvariantCulture, $"block_sparse_moe.experts.{key.Expert}.{TargetName(key.Module, moe)}"),
        _ => "mlp." + TargetName(key.Module, moe),
    };

    /// <summary>The PEFT target_modules entry of a module: q_proj .. o_proj; gate_proj, down_proj, up_proj (dense) or w1, w2, w3 (MoE).</summary>
    public static string TargetName(LoraModule module, bool moe) => module switch
    {
        LoraModule.Q => "q_proj",
        LoraModule.K => "k_proj",
        LoraModule.V => "v_proj",
        LoraModule.O => "o_proj",
        LoraModule.W1 => moe ? "w1" : "gate_proj",
        LoraModule.W2 => moe ? "w2" : "down_proj",
        LoraModule.W3 => moe ? "w3" : "up_proj",
        _ => throw new ArgumentOutOfRangeException(nameof(module)),
    };

    /// <summary>(out, in) of a module's matrix in a model of <paramref name="config"/>.</summary>
    public static (int Out, int In) Shape(ModelConfig config, LoraModule module)
    {
        ArgumentNullException.ThrowIfNull(config);
        int d = config.Dim, q = config.NHeads * config.HeadDim, kv = config.NKvHeads * config.HeadDim, f = config.HiddenDim;
        return module switch
        {
            LoraModule.Q => (q, d),
            LoraModule.K or LoraModule.V => (kv, d),
            LoraModule.O => (d, q),
            LoraModule.W1 or LoraModule.W3 => (f, d),
            LoraModule.W2 => (d, f),
            _ => throw new ArgumentOutOfRangeException(nameof(module)),
        };
    }

    /// <summary>
    /// Writes <see cref="WeightsFileName"/> (F32) and <see cref="ConfigFileName"/> into <paramref name="folder"/>
    /// (created if needed), each to a temporary file renamed into place.
    /// </summary>
    public void Save(string folder, ModelConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        Directory.CreateDirectory(folder);
        bool moe = config.IsMoE;
        var tensors = new List<TensorData>();
        foreach (var (key, f) in Factors.OrderBy(k => k.Key.Layer).ThenBy(k => k.Key.Module).ThenBy(k => k.Key.Expert))
        {
            CheckKey(config, key, "adapter");
            float[] b = PermutationHeads(config, key.Module) is { } heads
                ? HfRopePermutation.Permute(f.B, heads, f.Out, f.Rank)
                : f.B;
            tensors.Add(TensorData.FromFloat32(TensorName(key, moe, 'A'), DType.F32, [f.Rank, f.In], f.A));
            tensors.Add(TensorData.FromFloat32(TensorName(key, moe, 'B'), DType.F32, [f.Out, f.Rank], b));
        }
        SafetensorsWriter.Write(Path.Combine(folder, WeightsFileName), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var configPath = Path.Combine(folder, ConfigFileName);
        File.WriteAllBytes(configPath + ".tmp", ConfigJson(moe));
        File.Move(configPath + ".tmp", configPath, overwrite: true);
    }

    /// <summary>The adapter_config.json PEFT writes for a plain LoRA on a causal LM.</summary>
    public byte[] ConfigJson(bool moe)
    {
        var targets = Factors.Keys.Select(k => TargetName(k.Module, moe)).Distinct().Order(StringComparer.Ordinal).ToList();
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("peft_type", "LORA");
            w.WriteString("task_type", "CAUSAL_LM");
            w.WriteString("base_model_name_or_path", BaseModel);
            w.WriteNumber("r", Rank);
            w.WriteNumber("lora_alpha", Alpha);
            w.WriteNumber("lora_dropout", 0.0);
            w.WriteStartArray("target_modules");
            foreach (var t in targets)
            {
                w.WriteStringValue(t);
            }
            w.WriteEndArray();
            w.WriteBoolean("fan_in_fan_out", false);
            w.WriteString("bias", "none");
            w.WriteBoolean("use_rslora", false);
            w.WriteBoolean("use_dora", false);
            w.WriteBoolean("inference_mode", true);
            w.WriteBoolean("init_lora_weights", true);
            w.WriteNull("modules_to_save");
            w.WriteNull("layers_to_transform");
            w.WriteStartObject("rank_pattern");
            w.WriteEndObject();
            w.WriteStartObject("alpha_pattern");
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return ms.ToArray();
    }

    /// <summary>
    /// Reads a PEFT LoRA adapter folder for a base model of <paramref name="config"/>; q/k B rows are un-permuted
    /// into Bora's order. Throws <see cref="ModelFormatException"/> naming the file and field for anything this
    /// runtime cannot apply exactly (DoRA, rsLoRA, biases, per-module ranks, unknown modules, wrong shapes).
    /// </summary>
    public static LoraAdapter Load(string folder, ModelConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (!Directory.Exists(folder))
        {
            throw new DirectoryNotFoundException($"{folder}: no such adapter folder");
        }
        var configPath = Path.Combine(folder, ConfigFileName);
        var weightsPath = Path.Combine(folder, WeightsFileName);
        if (!File.Exists(configPath) || !File.Exists(weightsPath))
        {
            throw new FileNotFoundException($"{folder}: a PEFT LoRA adapter folder needs {ConfigFileName} and {WeightsFileName}");
        }
        var (rank, alpha, baseModel) = ReadConfig(configPath);
        var factors = new Dictionary<LoraKey, LoraFactors>();
        var a = new Dictionary<LoraKey, (float[] Values, TensorInfo Info)>();
        var b = new Dictionary<LoraKey, (float[] Values, TensorInfo Info)>();
        using (var file = SafetensorsFile.Open(weightsPath))
        {
            foreach (var info in file.Tensors)
            {
                var m = NamePattern.Match(info.Name);
                if (!m.Success)
                {
                    throw ModelFormatException.In(weightsPath, $"tensor '{info.Name}' is not a LoRA factor this runtime applies; expected {Prefix}{{i}}.(self_attn.{{q,k,v,o}}_proj | mlp.{{gate,down,up}}_proj | block_sparse_moe.experts.{{e}}.w{{1,2,3}}).lora_{{A,B}}.weight");
                }
                int layer = int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
                LoraKey key;
                if (m.Groups[3].Success)
                {
                    key = new LoraKey(layer, m.Groups[3].Value switch { "q" => LoraModule.Q, "k" => LoraModule.K, "v" => LoraModule.V, _ => LoraModule.O });
                }
                else if (m.Groups[4].Success)
                {
                    if (config.IsMoE)
                    {
                        throw ModelFormatException.In(weightsPath, $"tensor '{info.Name}' adapts a dense FFN but the base model is a mixture of {config.NExperts} experts");
                    }
                    key = new LoraKey(layer, m.Groups[4].Value switch { "gate" => LoraModule.W1, "down" => LoraModule.W2, _ => LoraModule.W3 });
                }
                else
                {
                    if (!config.IsMoE)
                    {
                        throw ModelFormatException.In(weightsPath, $"tensor '{info.Name}' adapts an expert but the base model is dense");
                    }
                    int expert = int.Parse(m.Groups[5].Value, CultureInfo.InvariantCulture);
                    key = new LoraKey(layer, m.Groups[6].Value switch { "w1" => LoraModule.W1, "w2" => LoraModule.W2, _ => LoraModule.W3 }, expert);
                }
                CheckKey(config, key, weightsPath);
                var (outF, inF) = Shape(config, key.Module);
                bool isA = m.Groups[7].Value == "A";
                long[] expected = isA ? [rank, inF] : [outF, rank];
                if (!info.Shape.AsSpan().SequenceEqual(expected))
                {
                    throw ModelFormatException.In(weightsPath, $"tensor '{info.Name}' has shape {info.ShapeText}; expected ({expected[0]}, {expected[1]}) for r = {rank}");
                }
                var dict = isA ? a : b;
                if (!dict.TryAdd(key, (file.ReadFloat32(info), info)))
                {
                    throw ModelFormatException.In(weightsPath, $"tensor '{info.Name}' appears twice (with and without '.default')");
                }
            }
        }
        foreach (var key in a.Keys.Union(b.Keys))
        {
            if (!a.TryGetValue(key, out var fa) || !b.TryGetValue(key, out var fb))
            {
                throw ModelFormatException.In(weightsPath, $"{TensorName(key, config.IsMoE, a.ContainsKey(key) ? 'B' : 'A')} is missing (every adapted module needs lora_A and lora_B)");
            }
            var (outF, inF) = Shape(config, key.Module);
            float[] bRows = PermutationHeads(config, key.Module) is { } heads
                ? HfRopePermutation.Unpermute(fb.Values, heads, outF, rank)
                : fb.Values;
            factors[key] = new LoraFactors(fa.Values, bRows, rank, inF, outF);
        }
        if (factors.Count == 0)
        {
            throw ModelFormatException.In(weightsPath, "no LoRA tensors");
        }
        return new LoraAdapter(rank, alpha, factors, baseModel);
    }

    /// <summary>
    /// The weights with every adapted matrix wrapped in a <see cref="LoraMatrix"/> (applied at run time; the base
    /// matrices are shared, not copied).
    /// </summary>
    public TransformerWeights Apply(TransformerWeights weights) =>
        Transform(weights, (key, w) => Factors.TryGetValue(key, out var f) ? new LoraMatrix(w, f.A, f.B, Rank, Scale) : w);

    /// <summary>
    /// The weights with W + s B A computed for every adapted matrix (a float32 <see cref="F32Matrix"/>, whatever
    /// W's storage); other matrices are shared unchanged.
    /// </summary>
    public TransformerWeights Merge(TransformerWeights weights) =>
        Transform(weights, (key, w) =>
        {
            if (!Factors.TryGetValue(key, out var f))
            {
                return w;
            }
            var lora = new LoraMatrix(w, f.A, f.B, Rank, Scale);
            var data = new float[(long)w.Rows * w.Cols];
            for (int r = 0; r < w.Rows; r++)
            {
                lora.ReadRow(r, data.AsSpan(r * w.Cols, w.Cols));
            }
            return new F32Matrix(data, w.Rows, w.Cols);
        });

    private TransformerWeights Transform(TransformerWeights weights, Func<LoraKey, WeightMatrix, WeightMatrix> map)
    {
        ArgumentNullException.ThrowIfNull(weights);
        weights.Validate();
        foreach (var key in Factors.Keys)
        {
            CheckKey(weights.Config, key, "adapter");
        }
        FeedForwardWeights Ffn(int layer, int expert, FeedForwardWeights f) => new()
        {
            W1 = map(new LoraKey(layer, LoraModule.W1, expert), f.W1),
            W2 = map(new LoraKey(layer, LoraModule.W2, expert), f.W2),
            W3 = map(new LoraKey(layer, LoraModule.W3, expert), f.W3),
        };
        return new TransformerWeights
        {
            Config = weights.Config,
            TokenEmbedding = weights.TokenEmbedding,
            Layers = [.. weights.Layers.Select((l, i) => new LayerWeights
            {
                AttentionNorm = l.AttentionNorm,
                Wq = map(new LoraKey(i, LoraModule.Q), l.Wq),
                Wk = map(new LoraKey(i, LoraModule.K), l.Wk),
                Wv = map(new LoraKey(i, LoraModule.V), l.Wv),
                Wo = map(new LoraKey(i, LoraModule.O), l.Wo),
                FfnNorm = l.FfnNorm,
                FeedForward = l.FeedForward is { } f ? Ffn(i, -1, f) : null,
                Moe = l.Moe is { } moe ? new MoeWeights { Router = moe.Router, Experts = [.. moe.Experts.Select((e, k) => Ffn(i, k, e))] } : null,
            })],
            FinalNorm = weights.FinalNorm,
            Output = weights.Output,
        };
    }

    /// <summary>Heads of the HF row permutation for q (Hq) and k (Hkv); null for modules stored as they are.</summary>
    private static int? PermutationHeads(ModelConfig config, LoraModule module) => module switch
    {
        LoraModule.Q => config.NHeads,
        LoraModule.K => config.NKvHeads,
        _ => null,
    };

    private static void CheckKey(ModelConfig config, LoraKey key, string where)
    {
        if ((uint)key.Layer >= (uint)config.NLayers)
        {
            throw new ModelFormatException($"{where}: LoRA for layer {key.Layer} but the model has {config.NLayers} layers");
        }
        bool expertOk = key.IsFfn && config.IsMoE ? (uint)key.Expert < (uint)config.NExperts : key.Expert == -1;
        if (!expertOk)
        {
            throw new ModelFormatException($"{where}: LoRA for {key.Module} expert {key.Expert} does not fit a model with {config.NExperts} experts");
        }
    }

    private static (int Rank, double Alpha, string BaseModel) ReadConfig(string path)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(path));
        }
        catch (JsonException e)
        {
            throw ModelFormatException.In(path, $"not valid JSON: {e.Message}");
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw ModelFormatException.In(path, "expected a JSON object");
            }
            string? Str(string name) => root.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;
            bool True(string name) => root.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.True;
            bool NonEmpty(string name) => root.TryGetProperty(name, out var v) && (v.ValueKind == JsonValueKind.Object && v.EnumerateObject().Any() || v.ValueKind == JsonValueKind.Array && v.GetArrayLength() > 0);
            if (Str("peft_type") is { } type && type != "LORA")
            {
                throw ModelFormatException.In(path, $"peft_type is '{type}'; only LORA adapters are supported");
            }
            if (!root.TryGetProperty("r", out var rEl) || !rEl.TryGetInt32(out int rank) || rank <= 0 || rank > 65536)
            {
                throw ModelFormatException.In(path, "field 'r' must be a positive integer (at most 65536)");
            }
            double alpha = rank; // PEFT's default lora_alpha is 8 with r 8; absent means a scale of 1
            if (root.TryGetProperty("lora_alpha", out var aEl) && (!aEl.TryGetDouble(out alpha) || !(alpha > 0) || double.IsInfinity(alpha)))
            {
                throw ModelFormatException.In(path, "field 'lora_alpha' must be a positive number");
            }
            foreach (var flag in new[] { "use_rslora", "use_dora", "fan_in_fan_out" })
            {
                if (True(flag))
                {
                    throw ModelFormatException.In(path, $"'{flag}' is true; Bora applies plain LoRA only (W + alpha / r B A with W (out, in))");
                }
            }
            if (Str("bias") is { } bias && bias != "none")
            {
                throw ModelFormatException.In(path, $"bias is '{bias}'; only 'none' is supported");
            }
            foreach (var pattern in new[] { "rank_pattern", "alpha_pattern", "modules_to_save" })
            {
                if (NonEmpty(pattern))
                {
                    throw ModelFormatException.In(path, $"'{pattern}' is set; per-module ranks and extra saved modules are not supported");
                }
            }
            return (rank, alpha, Str("base_model_name_or_path") ?? "");
        }
    }
}
