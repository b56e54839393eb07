using System.Globalization;
using System.Numerics.Tensors;
using Bora.Formats;
using Bora.Formats.Gguf;
using Bora.Loading;
using Bora.Model;
using Bora.Numerics;
using Bora.Numerics.Quant;
using Bora.Tokenizers;

namespace Bora.Quantization;

/// <summary>One tensor of a quantized file: its GGUF name, shape, the type it was read as and the type written.</summary>
/// <param name="Name">GGUF tensor name (blk.{i}.attn_q.weight, ...).</param>
/// <param name="Shape">Outermost-first dimensions.</param>
/// <param name="SourceType">Stored type in the input.</param>
/// <param name="Type">Stored type in the output.</param>
/// <param name="Reason">Why <see cref="Type"/> differs from the requested type (null when it does not).</param>
public sealed record QuantizedTensor(string Name, long[] Shape, DType SourceType, DType Type, string? Reason);

/// <summary>Progress of <see cref="ModelQuantizer.Quantize(string, string, QuantizeTarget, int, Action{QuantizeProgress})"/>: tensors done of total, bytes of output done of total.</summary>
public readonly record struct QuantizeProgress(int Done, int Total, string Tensor, long BytesDone, long BytesTotal);

/// <summary>What <see cref="ModelQuantizer.Quantize(string, string, QuantizeTarget, int, Action{QuantizeProgress})"/> wrote.</summary>
/// <param name="OutputPath">The GGUF file.</param>
/// <param name="Requested">The requested type.</param>
/// <param name="Tensors">Every tensor written, in file order.</param>
/// <param name="InputBytes">Bytes of tensor data read.</param>
/// <param name="OutputBytes">Bytes of tensor data written.</param>
public sealed record QuantizeResult(string OutputPath, DType Requested, IReadOnlyList<QuantizedTensor> Tensors, long InputBytes, long OutputBytes)
{
    /// <summary>The requested target (its <see cref="QuantizeTarget.Base"/> is <see cref="Requested"/>).</summary>
    public QuantizeTarget Target { get; init; } = QuantizeTarget.Of(Requested);
}

/// <summary>
/// <c>bora quantize</c>: an offline transform from a float checkpoint (GGUF, Hugging Face or Mistral safetensors, in
/// F32, F16 or BF16) to a llama-architecture GGUF whose matrices are stored as Q8_0, Q4_0 or Q4_K, which llama.cpp
/// and Bora both load. It follows llama.cpp's llama_model_quantize where it matters for compatibility:
/// <list type="bullet">
/// <item>1-D tensors (the RMSNorm weights) and the MoE router <c>ffn_gate_inp</c> stay F32.</item>
/// <item>The output head <c>output.weight</c> is Q6_K for Q4_0 / Q4_K (llama.cpp's rule: when its rows divide into
/// 256-element super-blocks, else Q8_0), Q8_0 for Q8_0.</item>
/// <item>A matrix whose rows do not divide into blocks falls back (and <see cref="QuantizedTensor.Reason"/> says so):
/// Q4_K to Q8_0 when the rows divide into 32 (llama.cpp picks Q5_0, which Bora does not store; Q8_0 keeps at least its
/// precision), anything else to F16.</item>
/// </list>
/// With <see cref="QuantizeTarget.Q4_K_M"/> llama.cpp's Q4_K_M mixture decides each matrix (see
/// <see cref="ChooseType(string, long[], QuantizeTarget, QuantizeModelShape, out string?)"/>).
/// Hugging Face q_proj / k_proj rows are un-permuted to the interleaved-pair RoPE layout GGUF uses (as
/// <see cref="WeightLoader"/> does); Mixtral experts are merged into <c>ffn_{gate,down,up}_exps</c> tensors. A
/// safetensors model's SentencePiece <c>tokenizer.model</c> is embedded as <c>tokenizer.ggml.*</c>. The file is written
/// tensor by tensor (one tensor in memory at a time) to <c>OUT.tmp</c> and renamed over OUT at the end.
/// </summary>
public static class ModelQuantizer
{
    /// <summary>The types <see cref="Quantize(string, string, QuantizeTarget, int, Action{QuantizeProgress})"/> can target.</summary>
    public static IReadOnlyList<DType> Targets { get; } = [DType.Q8_0, DType.Q4_0, DType.Q4_K];

    /// <summary>Parses "q8_0", "q4_0" or "q4_k" (any case).</summary>
    /// <exception cref="ArgumentException">Anything else.</exception>
    public static DType ParseType(string text) => text?.ToLowerInvariant() switch
    {
        "q8_0" => DType.Q8_0,
        "q4_0" => DType.Q4_0,
        "q4_k" => DType.Q4_K,
        _ => throw new ArgumentException($"quantization type '{text}' is not supported; expected q8_0, q4_0 or q4_k"),
    };

    /// <summary>
    /// The stored type of tensor <paramref name="name"/> of <paramref name="shape"/> (outermost-first) when
    /// <paramref name="requested"/> is asked for, and why it differs (null when it does not). See the class summary.
    /// </summary>
    public static DType ChooseType(string name, long[] shape, DType requested, out string? reason)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(shape);
        if (!Targets.Contains(requested))
        {
            throw new ArgumentException($"{requested} is not a quantization target; expected one of {string.Join(", ", Targets)}", nameof(requested));
        }
        return ChooseUniform(name, shape, requested, out reason);
    }

    /// <summary>
    /// The stored type of tensor <paramref name="name"/> of <paramref name="shape"/> (outermost-first) for
    /// <paramref name="target"/> in a model of <paramref name="model"/>'s shape, and why it differs from the target's
    /// base type (null when it does not). Uniform targets follow the class summary. Q4_K_M follows llama.cpp's
    /// llama_tensor_get_type for a llama-architecture model (rules restated, not copied):
    /// <list type="bullet">
    /// <item>Norms and the router F32; the output head (or, with no <c>output.weight</c>, the token embedding that
    /// doubles as it) Q6_K, Q8_0 when its rows do not divide into 256.</item>
    /// <item><c>attn_v</c>: Q8_0 in a model of exactly 8 experts; else Q6_K in the layers <see cref="UseMoreBits"/>
    /// picks.</item>
    /// <item><c>attn_k</c>: Q8_0 in a model of exactly 8 experts.</item>
    /// <item><c>ffn_down</c> (dense, per-expert or merged experts): Q6_K in the layers <see cref="UseMoreBits"/> picks.</item>
    /// <item><c>attn_output</c> in a model of exactly 8 experts: llama.cpp picks Q5_K, which Bora does not store; Q6_K
    /// (more bits, so at least its precision) instead, and the reason says so.</item>
    /// <item>Everything else Q4_K; a row that does not divide into 256 falls back to Q8_0 (llama.cpp: Q5_0 for Q4_K,
    /// Q8_0 for Q6_K), or F16 when it does not divide into 32.</item>
    /// </list>
    /// </summary>
    /// <exception cref="ArgumentException">A matrix of the mixture whose name has no <c>blk.N.</c> layer within the model.</exception>
    public static DType ChooseType(string name, long[] shape, QuantizeTarget target, QuantizeModelShape model, out string? reason)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(target);
        ArgumentNullException.ThrowIfNull(model);
        if (!target.KQuantMixture)
        {
            return ChooseUniform(name, shape, target.Base, out reason);
        }
        long cols = shape[^1];
        if (shape.Length == 1 || name.EndsWith("ffn_gate_inp.weight", StringComparison.Ordinal))
        {
            return ChooseUniform(name, shape, target.Base, out reason);
        }
        bool eightExperts = model.Experts == 8;
        DType wanted = DType.Q4_K;
        string? why = null;
        if (name == "output.weight" || (!model.HasOutput && name == "token_embd.weight"))
        {
            (wanted, why) = (DType.Q6_K, name == "output.weight" ? "output head: Q6_K, as llama.cpp" : "token embedding doubles as the output head: Q6_K, as llama.cpp");
        }
        else if (name.Contains("attn_v.weight", StringComparison.Ordinal))
        {
            int layer = LayerOf(name, model.Layers);
            (wanted, why) = eightExperts ? (DType.Q8_0, "attn_v of an 8-expert model: Q8_0, as llama.cpp")
                : UseMoreBits(layer, model.Layers) ? (DType.Q6_K, $"Q4_K_M: attn_v of layer {layer} gets more bits (Q6_K), as llama.cpp")
                : (DType.Q4_K, null);
        }
        else if (name.Contains("attn_k.weight", StringComparison.Ordinal) && eightExperts)
        {
            (wanted, why) = (DType.Q8_0, "attn_k of an 8-expert model: Q8_0, as llama.cpp");
        }
        else if (name.Contains("ffn_down", StringComparison.Ordinal))
        {
            int layer = LayerOf(name, model.Layers);
            if (UseMoreBits(layer, model.Layers))
            {
                (wanted, why) = (DType.Q6_K, $"Q4_K_M: ffn_down of layer {layer} gets more bits (Q6_K), as llama.cpp");
            }
        }
        else if (name.Contains("attn_output.weight", StringComparison.Ordinal) && eightExperts)
        {
            (wanted, why) = (DType.Q6_K, "attn_output of an 8-expert model: llama.cpp picks Q5_K, which Bora does not store; Q6_K");
        }
        if (cols % DTypeInfo.BlockElements(wanted) == 0)
        {
            reason = why;
            return wanted;
        }
        if (cols % 32 == 0)
        {
            reason = $"rows of {cols} do not divide into 256-element super-blocks; fallback Q8_0";
            return DType.Q8_0;
        }
        reason = $"rows of {cols} do not divide into 32-element blocks; fallback F16";
        return DType.F16;
    }

    /// <summary>
    /// llama.cpp's choice of the layers that get more bits in the _M mixtures: the first and last eighth of the
    /// <paramref name="layers"/>, and every third layer in between (integer division throughout). Example, 32 layers:
    /// 0-3 and 28-31, and 6, 9, ..., 27 (i - 4 ≡ 2 mod 3): 16 of 32.
    /// </summary>
    public static bool UseMoreBits(int layer, int layers) =>
        layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;

    /// <summary>N of a tensor named <c>blk.N.…</c>, checked to be below <paramref name="layers"/>.</summary>
    private static int LayerOf(string name, int layers)
    {
        const string Prefix = "blk.";
        int dot = name.StartsWith(Prefix, StringComparison.Ordinal) ? name.IndexOf('.', Prefix.Length) : -1;
        if (dot < 0 || !int.TryParse(name.AsSpan(Prefix.Length, dot - Prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out int layer) || layer >= layers)
        {
            throw new ArgumentException($"tensor '{name}': the Q4_K_M mixture needs a layer blk.N. with N below the model's {layers} layers");
        }
        return layer;
    }

    private static DType ChooseUniform(string name, long[] shape, DType requested, out string? reason)
    {
        long cols = shape[^1];
        if (shape.Length == 1)
        {
            reason = "1-D (norm) tensors stay F32";
            return DType.F32;
        }
        if (name.EndsWith("ffn_gate_inp.weight", StringComparison.Ordinal))
        {
            reason = "the MoE router stays F32";
            return DType.F32;
        }
        if (name == "output.weight" && requested is DType.Q4_0 or DType.Q4_K)
        {
            if (cols % 256 == 0)
            {
                reason = "output head: Q6_K, as llama.cpp";
                return DType.Q6_K;
            }
            if (cols % 32 == 0)
            {
                reason = $"output head: rows of {cols} do not divide into 256-element super-blocks; Q8_0, as llama.cpp";
                return DType.Q8_0;
            }
        }
        int be = DTypeInfo.BlockElements(requested);
        if (cols % be == 0)
        {
            reason = null;
            return requested;
        }
        if (requested == DType.Q4_K && cols % 32 == 0)
        {
            reason = $"rows of {cols} do not divide into {be}-element blocks; fallback Q8_0";
            return DType.Q8_0;
        }
        reason = $"rows of {cols} do not divide into {be}-element blocks; fallback F16";
        return DType.F16;
    }

    /// <summary>
    /// Quantizes the model at <paramref name="input"/> (a .gguf file or a model folder) to <paramref name="output"/>.
    /// <paramref name="threads"/> threads quantize the rows of each tensor; <paramref name="progress"/> is called
    /// after each tensor.
    /// </summary>
    /// <exception cref="ModelFormatException">The input is not a float llama/Mistral checkpoint, or lacks a tensor or an embeddable tokenizer.</exception>
    /// <exception cref="ArgumentException">An unsupported type, or the output is the input.</exception>
    public static QuantizeResult Quantize(string input, string output, DType type, int threads = 1, Action<QuantizeProgress>? progress = null)
    {
        if (!Targets.Contains(type))
        {
            throw new ArgumentException($"{type} is not a quantization target; expected one of {string.Join(", ", Targets)}", nameof(type));
        }
        return Quantize(input, output, QuantizeTarget.Of(type), threads, progress);
    }

    /// <summary>
    /// Quantizes the model at <paramref name="input"/> to <paramref name="output"/> for <paramref name="target"/>
    /// (a uniform type, or the Q4_K_M mixture); otherwise as <see cref="Quantize(string, string, DType, int, Action{QuantizeProgress})"/>.
    /// </summary>
    public static QuantizeResult Quantize(string input, string output, QuantizeTarget target, int threads = 1, Action<QuantizeProgress>? progress = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(input);
        ArgumentException.ThrowIfNullOrEmpty(output);
        ArgumentNullException.ThrowIfNull(target);
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        var type = target.Base;
        var source = ModelSource.Resolve(input);
        string outFull = Path.GetFullPath(output);
        if (string.Equals(outFull, Path.GetFullPath(source.WeightsPath), StringComparison.Ordinal))
        {
            throw new ArgumentException($"{output}: the output would overwrite the input; choose another file name");
        }
        string? dir = Path.GetDirectoryName(outFull);
        if (dir is not null && !Directory.Exists(dir))
        {
            throw new DirectoryNotFoundException($"{output}: the folder {dir} does not exist");
        }

        using var store = ModelLoader.OpenWeights(source);
        var config = ModelLoader.LoadConfig(source, store);
        var writer = new GgufWriter();
        List<SourceTensor> plan;
        if (source.Layout == CheckpointLayout.Gguf)
        {
            var gguf = (GgufFile)store;
            writer.AddMetadataFrom(gguf);
            plan = [.. gguf.Tensors.Select(t => new SourceTensor(t.Name, t.Shape, t.Type, [t], null))];
        }
        else
        {
            GgufLlamaMetadata.AddConfig(writer, config, Path.GetFileName(Path.TrimEndingDirectorySeparator(source.Path)));
            GgufLlamaMetadata.AddSentencePieceVocabulary(writer, LoadSentencePiece(source, config));
            plan = PlanSafetensors(store, config);
        }
        writer.AddMetadata("general.file_type", target.FileType);
        writer.AddMetadata("general.quantization_version", 2u);

        foreach (var t in plan)
        {
            foreach (var part in t.Parts)
            {
                if (part.Type is not (DType.F32 or DType.F16 or DType.BF16))
                {
                    throw ModelFormatException.In(store.Path,
                        $"tensor '{part.Name}' is stored as {part.Type}; bora quantize reads F32, F16 or BF16 checkpoints (re-quantizing a quantized model would lose precision twice)");
                }
            }
        }

        var lazy = new LazyTensorSet();
        var written = new List<QuantizedTensor>();
        long inputBytes = 0, outputBytes = 0;
        var sizes = new List<long>();
        var shape = new QuantizeModelShape(config.NLayers, config.NExperts, plan.Any(t => t.Name == "output.weight"));
        foreach (var t in plan)
        {
            var dtype = ChooseType(t.Name, t.Shape, target, shape, out var reason);
            written.Add(new QuantizedTensor(t.Name, t.Shape, t.Parts[0].Type, dtype, reason));
            long count = t.Shape.Aggregate(1L, (a, d) => checked(a * d));
            long bytes = DTypeInfo.ByteSize(dtype, count)!.Value;
            sizes.Add(bytes);
            outputBytes += bytes;
            inputBytes += t.Parts.Sum(p => p.ByteLength);
            writer.AddTensor(lazy.Create(t.Name, dtype, t.Shape, () => Convert(store, t, dtype, bytes, threads)));
        }
        int done = 0;
        long bytesDone = 0;
        lazy.Produced = name =>
        {
            bytesDone += sizes[done];
            done++;
            progress?.Invoke(new QuantizeProgress(done, plan.Count, name, bytesDone, outputBytes));
        };
        writer.Write(outFull);
        return new QuantizeResult(outFull, type, written, inputBytes, outputBytes) { Target = target };
    }

    /// <summary>An output tensor: its parts (one stored tensor, or the E per-expert tensors of a merged one) and an optional row order.</summary>
    private sealed record SourceTensor(string Name, long[] Shape, DType SourceType, TensorInfo[] Parts, int[]? RowOrder);

    /// <summary>
    /// Reads each part as float32 (rows reordered when asked) and converts it to <paramref name="type"/>, rows split
    /// over <paramref name="threads"/> threads. Output: the parts' bytes one after another.
    /// </summary>
    private static byte[] Convert(ITensorStore store, SourceTensor t, DType type, long bytes, int threads)
    {
        var result = GC.AllocateUninitializedArray<byte>((int)bytes);
        long cols = t.Shape[^1];
        long partBytes = bytes / t.Parts.Length;
        int rowBytes = (int)DTypeInfo.ByteSize(type, cols)!.Value;
        for (int p = 0; p < t.Parts.Length; p++)
        {
            var values = store.ReadFloat32(t.Parts[p]);
            RequireFinite(t.Parts[p], values, cols);
            if (t.RowOrder is { } order)
            {
                values = Reorder(values, order, (int)cols);
            }
            int rows = (int)(values.LongLength / cols);
            if ((long)rows * rowBytes != partBytes)
            {
                throw ModelFormatException.In(store.Path, $"tensor '{t.Parts[p].Name}' read back {values.LongLength} values; expected {partBytes / rowBytes * cols}");
            }
            long baseOffset = p * partBytes;
            int chunkRows = Math.Max(1, Math.Min(rows, (int)Math.Max(1, (1L << 16) / cols)));
            int chunks = (rows + chunkRows - 1) / chunkRows;
            Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = threads }, c =>
            {
                int r0 = c * chunkRows, r1 = Math.Min(rows, r0 + chunkRows);
                BlockQuantizer.FromFloat32(type,
                    values.AsSpan((int)(r0 * cols), (int)((r1 - r0) * cols)),
                    result.AsSpan((int)(baseOffset + (long)r0 * rowBytes), (r1 - r0) * rowBytes));
            });
            RequireFiniteScales(t.Parts[p], type, result.AsSpan((int)baseOffset, (int)partBytes), rowBytes, rows, cols, t.RowOrder);
        }
        return result;
    }

    /// <summary>
    /// Throws when <paramref name="values"/> (a stored tensor's rows of <paramref name="cols"/>) hold an infinity or a
    /// NaN, naming its file, tensor and place: a block's scale would become non-finite (Q4_0 / Q8_0 packing refuses such blocks),
    /// as llama.cpp's quantizer refuses data that fails its validation. One vectorised pass
    /// (<see cref="TensorPrimitives.IndexOfMaxMagnitude{T}(ReadOnlySpan{T})"/> finds a NaN first, else the largest
    /// magnitude, an infinity if there is one).
    /// </summary>
    private static void RequireFinite(TensorInfo part, float[] values, long cols)
    {
        int i = TensorPrimitives.IndexOfMaxMagnitude<float>(values);
        if (i >= 0 && !float.IsFinite(values[i]))
        {
            throw ModelFormatException.In(part.SourcePath,
                $"tensor '{part.Name}' holds {values[i].ToString(CultureInfo.InvariantCulture)} at row {i / cols}, column {i % cols}; bora quantize needs finite weights (the checkpoint is damaged)");
        }
    }

    /// <summary>
    /// Throws when a Q4_0 / Q8_0 block of the quantized <paramref name="blocks"/> got a scale that is not a finite half
    /// (<see cref="PackedLayouts.CheckBlockScales"/>): finite weights whose largest magnitude in a block exceeds what
    /// the half scale holds (65504 x 8 for Q4_0, 65504 x 127 for Q8_0). Such a file would not load packed. The message
    /// names the stored row: output row r is stored row <paramref name="order"/>[r] where the rows were reordered.
    /// </summary>
    private static unsafe void RequireFiniteScales(TensorInfo part, DType type, ReadOnlySpan<byte> blocks, int rowBytes, int rows, long cols, int[]? order)
    {
        int nb = (int)(cols / DTypeInfo.BlockElements(type));
        fixed (byte* p = blocks)
        {
            try
            {
                for (int r = 0; r < rows; r++)
                {
                    PackedLayouts.CheckBlockScales(type, p + (long)r * rowBytes, rowBytes, nb, 1, row0: order?[r] ?? r);
                }
            }
            catch (InvalidDataException e)
            {
                throw ModelFormatException.In(part.SourcePath,
                    $"tensor '{part.Name}' as {type}: {e.Message}; a weight of that block is too large for the format (its block scale is a half: at most 65504 times the largest quant)");
            }
        }
    }

    private static float[] Reorder(float[] w, int[] order, int cols)
    {
        var result = new float[w.Length];
        for (int r = 0; r < order.Length; r++)
        {
            w.AsSpan(order[r] * cols, cols).CopyTo(result.AsSpan(r * cols, cols));
        }
        return result;
    }

    private static SentencePieceModel LoadSentencePiece(ModelSource source, ModelConfig config)
    {
        var path = source.TokenizerPath;
        if (path is null || Path.GetFileName(path).EndsWith(".json", StringComparison.OrdinalIgnoreCase))
        {
            throw ModelFormatException.In(source.Path,
                $"the GGUF needs an embedded vocabulary, which bora quantize takes from a SentencePiece tokenizer.model; found {(path is null ? "no tokenizer" : Path.GetFileName(path))}");
        }
        var model = SentencePieceModel.Load(path);
        if (model.Pieces.Count > config.VocabSize)
        {
            throw ModelFormatException.In(path, $"the tokenizer has {model.Pieces.Count} pieces but the model's vocabulary has {config.VocabSize} rows");
        }
        if (model.Pieces.Count != config.VocabSize)
        {
            throw ModelFormatException.In(path,
                $"the tokenizer has {model.Pieces.Count} pieces but the model's vocabulary has {config.VocabSize} rows; llama.cpp needs one piece per row");
        }
        return model;
    }

    /// <summary>Maps a Hugging Face or Mistral safetensors checkpoint onto GGUF tensor names, checking every shape.</summary>
    private static List<SourceTensor> PlanSafetensors(ITensorStore store, ModelConfig c)
    {
        var naming = WeightLoader.DetectNaming(store);
        bool hf = naming == WeightNaming.HuggingFace;
        int d = c.Dim, f = c.HiddenDim, q = c.NHeads * c.HeadDim, kv = c.NKvHeads * c.HeadDim;
        var plan = new List<SourceTensor>();

        TensorInfo Get(string name, params long[] shape)
        {
            if (!store.TryGetTensor(name, out var info))
            {
                throw ModelFormatException.In(store.Path, $"tensor '{name}' is missing; the checkpoint uses the {(hf ? "Hugging Face" : "Mistral consolidated")} naming scheme");
            }
            if (!info.Shape.AsSpan().SequenceEqual(shape))
            {
                throw ModelFormatException.In(store.Path, $"tensor '{name}' has shape {info.ShapeText}; expected ({string.Join(", ", shape)})");
            }
            return info;
        }
        void Add(string gguf, string name, long[] shape, int[]? rowOrder = null)
        {
            var info = Get(name, shape);
            plan.Add(new SourceTensor(gguf, shape, info.Type, [info], rowOrder));
        }
        void AddExperts(string gguf, Func<int, string> name, long rows, long cols)
        {
            var parts = Enumerable.Range(0, c.NExperts).Select(e => Get(name(e), rows, cols)).ToArray();
            plan.Add(new SourceTensor(gguf, [c.NExperts, rows, cols], parts[0].Type, parts, null));
        }

        Add("token_embd.weight", hf ? "model.embed_tokens.weight" : "tok_embeddings.weight", [c.VocabSize, d]);
        for (int i = 0; i < c.NLayers; i++)
        {
            string b = $"blk.{i}.";
            string p = hf ? $"model.layers.{i}." : $"layers.{i}.";
            Add(b + "attn_norm.weight", p + (hf ? "input_layernorm.weight" : "attention_norm.weight"), [d]);
            Add(b + "attn_q.weight", p + (hf ? "self_attn.q_proj.weight" : "attention.wq.weight"), [q, d],
                hf ? HfRopePermutation.UnpermuteRowOrder(c.NHeads, q) : null);
            Add(b + "attn_k.weight", p + (hf ? "self_attn.k_proj.weight" : "attention.wk.weight"), [kv, d],
                hf ? HfRopePermutation.UnpermuteRowOrder(c.NKvHeads, kv) : null);
            Add(b + "attn_v.weight", p + (hf ? "self_attn.v_proj.weight" : "attention.wv.weight"), [kv, d]);
            Add(b + "attn_output.weight", p + (hf ? "self_attn.o_proj.weight" : "attention.wo.weight"), [d, q]);
            Add(b + "ffn_norm.weight", p + (hf ? "post_attention_layernorm.weight" : "ffn_norm.weight"), [d]);
            if (c.IsMoE)
            {
                string moe = p + (hf ? "block_sparse_moe." : "feed_forward.");
                Add(b + "ffn_gate_inp.weight", moe + "gate.weight", [c.NExperts, d]);
                AddExperts(b + "ffn_gate_exps.weight", e => $"{moe}experts.{e}.w1.weight", f, d);
                AddExperts(b + "ffn_down_exps.weight", e => $"{moe}experts.{e}.w2.weight", d, f);
                AddExperts(b + "ffn_up_exps.weight", e => $"{moe}experts.{e}.w3.weight", f, d);
            }
            else if (hf)
            {
                Add(b + "ffn_gate.weight", p + "mlp.gate_proj.weight", [f, d]);
                Add(b + "ffn_down.weight", p + "mlp.down_proj.weight", [d, f]);
                Add(b + "ffn_up.weight", p + "mlp.up_proj.weight", [f, d]);
            }
            else
            {
                Add(b + "ffn_gate.weight", p + "feed_forward.w1.weight", [f, d]);
                Add(b + "ffn_down.weight", p + "feed_forward.w2.weight", [d, f]);
                Add(b + "ffn_up.weight", p + "feed_forward.w3.weight", [f, d]);
            }
        }
        Add("output_norm.weight", hf ? "model.norm.weight" : "norm.weight", [d]);
        string head = hf ? "lm_head.weight" : "output.weight";
        if (store.TryGetTensor(head, out _))
        {
            Add("output.weight", head, [c.VocabSize, d]);
        }
        else if (!c.TiedEmbeddings)
        {
            throw ModelFormatException.In(store.Path, $"tensor '{head}' (output head) is missing and the config does not tie it to the embedding");
        }
        return plan;
    }

    /// <summary>One line per tensor: name, shape, source type -> stored type (and the reason when it differs).</summary>
    public static string Describe(QuantizedTensor t) =>
        string.Create(CultureInfo.InvariantCulture, $"{t.Name} ({string.Join(", ", t.Shape)}) {t.SourceType} -> {t.Type}{(t.Reason is null ? "" : $" ({t.Reason})")}");
}
