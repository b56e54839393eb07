using System.Globalization;
using System.Text.Json;
using Bora.Formats;
using Bora.Formats.Safetensors;
using Bora.Model;

namespace Bora.Training;

/// <summary>
/// Training checkpoints as normal Mistral-layout model folders that <c>ModelLoader.Load</c> opens:
/// <c>params.json</c>, <c>consolidated.safetensors</c> and (when given) <c>tokenizer.model</c>.
/// The weights, the AdamW moments (tensors <c>optimizer.m.NAME</c> and <c>optimizer.v.NAME</c>, float32)
/// and the step (metadata <c>bora.step</c>) live in the one safetensors file, written to a temporary
/// file and renamed over the old one, so a checkpoint is replaced atomically: a crash leaves either the
/// old or the new one, never a mix. Inference loaders read the tensors they know and ignore the rest.
/// </summary>
public static class Checkpoint
{
    public const string ConfigFileName = "params.json";
    public const string WeightsFileName = "consolidated.safetensors";
    public const string TokenizerFileName = "tokenizer.model";
    private const string StepKey = "bora.step";
    private const string MomentPrefix1 = "optimizer.m.";
    private const string MomentPrefix2 = "optimizer.v.";

    /// <summary>
    /// Writes the folder. <paramref name="optimizer"/> null writes weights only (a smaller, final model);
    /// <paramref name="tokenizerFile"/> is copied in as tokenizer.model when given.
    /// </summary>
    public static void Save(string folder, ModelParameters<float> parameters, AdamW? optimizer, string? tokenizerFile = null)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        Directory.CreateDirectory(folder);
        WriteAtomically(Path.Combine(folder, ConfigFileName), ParamsJson(parameters.Config));
        if (tokenizerFile is not null)
        {
            var dst = Path.Combine(folder, TokenizerFileName);
            if (!string.Equals(Path.GetFullPath(tokenizerFile), Path.GetFullPath(dst), StringComparison.Ordinal))
            {
                WriteAtomically(dst, File.ReadAllBytes(tokenizerFile));
            }
        }
        var tensors = parameters.ToTensors().ToList();
        var metadata = new Dictionary<string, string> { ["format"] = "pt" };
        if (optimizer is not null)
        {
            for (int k = 0; k < parameters.All.Count; k++)
            {
                var p = parameters.All[k];
                tensors.Add(TensorData.FromFloat32(MomentPrefix1 + p.Name, Numerics.DType.F32, p.Shape, optimizer.M[k]));
                tensors.Add(TensorData.FromFloat32(MomentPrefix2 + p.Name, Numerics.DType.F32, p.Shape, optimizer.V[k]));
            }
            metadata[StepKey] = optimizer.Steps.ToString(CultureInfo.InvariantCulture);
        }
        SafetensorsWriter.Write(Path.Combine(folder, WeightsFileName), tensors, metadata);
    }

    /// <summary>Saves a trainer's weights, optimizer state and step.</summary>
    public static void Save(string folder, Trainer trainer, string? tokenizerFile = null)
    {
        ArgumentNullException.ThrowIfNull(trainer);
        Save(folder, trainer.Parameters, trainer.Optimizer, tokenizerFile);
    }

    /// <summary>Reads the weights of a checkpoint folder (config from params.json).</summary>
    public static ModelParameters<float> LoadParameters(string folder)
    {
        var config = ModelConfigLoader.FromParamsJson(Path.Combine(folder, ConfigFileName));
        var parameters = ModelParameters<float>.Initialize(config, 0);
        using var file = SafetensorsFile.Open(Path.Combine(folder, WeightsFileName));
        foreach (var p in parameters.All)
        {
            Read(file, p.Name, p.Shape, p.Data);
        }
        return parameters;
    }

    /// <summary>
    /// Restores AdamW moments and step from the checkpoint into <paramref name="optimizer"/> (built over
    /// the same parameters). Throws <see cref="ModelFormatException"/> when the folder holds no optimizer state.
    /// </summary>
    public static void RestoreOptimizer(string folder, ModelParameters<float> parameters, AdamW optimizer)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(optimizer);
        var path = Path.Combine(folder, WeightsFileName);
        using var file = SafetensorsFile.Open(path);
        if (!file.Metadata.TryGetValue(StepKey, out var stepText) || !long.TryParse(stepText, NumberStyles.Integer, CultureInfo.InvariantCulture, out var step) || step < 0)
        {
            throw ModelFormatException.In(path, $"no optimizer state: metadata '{StepKey}' is missing or not a non-negative integer (the folder holds final weights only)");
        }
        for (int k = 0; k < parameters.All.Count; k++)
        {
            var p = parameters.All[k];
            Read(file, MomentPrefix1 + p.Name, p.Shape, optimizer.M[k]);
            Read(file, MomentPrefix2 + p.Name, p.Shape, optimizer.V[k]);
        }
        optimizer.Steps = step;
    }

    /// <summary>Restores a trainer (built over <see cref="LoadParameters"/>' result) to the checkpoint's step.</summary>
    public static void Restore(string folder, Trainer trainer)
    {
        ArgumentNullException.ThrowIfNull(trainer);
        RestoreOptimizer(folder, trainer.Parameters, trainer.Optimizer);
    }

    /// <summary>The config as mistral-inference params.json (the fields <see cref="ModelConfigLoader.FromParamsJson"/> reads).</summary>
    public static byte[] ParamsJson(ModelConfig c)
    {
        ArgumentNullException.ThrowIfNull(c);
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteNumber("dim", c.Dim);
            w.WriteNumber("n_layers", c.NLayers);
            w.WriteNumber("head_dim", c.HeadDim);
            w.WriteNumber("hidden_dim", c.HiddenDim);
            w.WriteNumber("n_heads", c.NHeads);
            w.WriteNumber("n_kv_heads", c.NKvHeads);
            w.WriteNumber("norm_eps", c.NormEps);
            w.WriteNumber("vocab_size", c.VocabSize);
            w.WriteNumber("rope_theta", c.RopeTheta);
            w.WriteNumber("max_seq_len", c.MaxSeqLen);
            if (c.SlidingWindow is { } sw)
            {
                w.WriteNumber("sliding_window", sw);
            }
            if (c.TiedEmbeddings)
            {
                w.WriteBoolean("tied_embeddings", true);
            }
            if (c.IsMoE)
            {
                w.WriteStartObject("moe");
                w.WriteNumber("num_experts", c.NExperts);
                w.WriteNumber("num_experts_per_tok", c.NExpertsPerToken);
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        return ms.ToArray();
    }

    private static void Read(SafetensorsFile file, string name, long[] shape, float[] dst)
    {
        if (!file.TryGetTensor(name, out var info))
        {
            throw ModelFormatException.In(file.Path, $"tensor '{name}' is missing");
        }
        if (!info.Shape.AsSpan().SequenceEqual(shape))
        {
            throw ModelFormatException.In(file.Path, $"tensor '{name}' has shape {info.ShapeText}; expected ({string.Join(", ", shape)})");
        }
        file.ReadFloat32(info).CopyTo(dst, 0);
    }

    private static void WriteAtomically(string path, byte[] bytes)
    {
        var tmp = path + ".tmp";
        File.WriteAllBytes(tmp, bytes);
        File.Move(tmp, path, overwrite: true);
    }
}
