using System.Text.RegularExpressions;
using Bora.Formats;
using Bora.Formats.Gguf;
using Bora.Formats.Safetensors;
using Bora.Loading;
using Bora.Model;
using Bora.Model.Lora;
using Bora.Numerics;

namespace Bora.Training.Lora;

/// <summary>
/// <c>bora merge-lora</c>: writes W + (alpha / r) B A for every adapted matrix into a new model folder, built in a
/// temporary sibling folder and renamed into place (a crash leaves no half-written model; an existing folder is
/// never overwritten).
/// <list type="bullet">
/// <item>GGUF base: <c>model.gguf</c> with every metadata key copied and every tensor copied byte for byte,
/// except the adapted ones, which become F32 (a stacked expert tensor <c>ffn_*_exps</c> becomes F32 as a whole
/// when any of its experts is adapted). Requantize afterwards with <c>bora quantize</c> if wanted.</item>
/// <item>Safetensors base: a Mistral-layout folder (params.json, consolidated.safetensors in F32, the tokenizer file
/// and tokenizer_config.json when present). The whole model is held in float32 while writing.</item>
/// </list>
/// </summary>
public static class LoraMerge
{
    private static readonly Regex GgufName = new(@"^blk\.(\d+)\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_down|ffn_up|ffn_gate_exps|ffn_down_exps|ffn_up_exps)\.weight$", RegexOptions.CultureInvariant);

    /// <summary>Merges and writes; returns the path of the written weights file.</summary>
    public static string Merge(string modelPath, string adapterFolder, string outFolder)
    {
        ArgumentNullException.ThrowIfNull(outFolder);
        var full = Path.GetFullPath(outFolder);
        if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any() || File.Exists(full))
        {
            throw new IOException($"{outFolder} already exists; merge-lora writes a new model folder");
        }
        var loaded = ModelLoader.Load(modelPath);
        var adapter = LoraAdapter.Load(adapterFolder, loaded.Config);
        var merged = adapter.Merge(loaded.Model.Weights);
        var tmp = full.TrimEnd(Path.DirectorySeparatorChar) + ".tmp-" + Guid.NewGuid().ToString("N")[..8];
        Directory.CreateDirectory(tmp);
        try
        {
            string file = loaded.Source.Layout == CheckpointLayout.Gguf
                ? WriteGguf(loaded.Source.WeightsPath, adapter, merged, tmp)
                : WriteMistralFolder(loaded, merged, tmp);
            if (Directory.Exists(full))
            {
                Directory.Delete(full); // empty (checked above)
            }
            Directory.Move(tmp, full);
            return Path.Combine(full, Path.GetFileName(file));
        }
        catch
        {
            Directory.Delete(tmp, recursive: true);
            throw;
        }
    }

    private static string WriteGguf(string sourcePath, LoraAdapter adapter, TransformerWeights merged, string folder)
    {
        using var src = GgufFile.Open(sourcePath);
        var w = new GgufWriter(src.Alignment);
        w.AddMetadataFrom(src);
        var done = new HashSet<LoraKey>();
        foreach (var info in src.Tensors)
        {
            var m = GgufName.Match(info.Name);
            var keys = new List<LoraKey>();
            if (m.Success)
            {
                int layer = int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
                string kind = m.Groups[2].Value;
                var module = kind switch
                {
                    "attn_q" => LoraModule.Q,
                    "attn_k" => LoraModule.K,
                    "attn_v" => LoraModule.V,
                    "attn_output" => LoraModule.O,
                    "ffn_gate" or "ffn_gate_exps" => LoraModule.W1,
                    "ffn_down" or "ffn_down_exps" => LoraModule.W2,
                    _ => LoraModule.W3,
                };
                if (kind.EndsWith("_exps", StringComparison.Ordinal))
                {
                    keys.AddRange(Enumerable.Range(0, merged.Config.NExperts).Select(e => new LoraKey(layer, module, e)));
                }
                else
                {
                    keys.Add(new LoraKey(layer, module));
                }
            }
            if (!keys.Any(adapter.Factors.ContainsKey))
            {
                w.AddTensor(TensorData.FromBytes(info.Name, info.Type, info.Shape, src.GetBytes(info).ToArray()));
                continue;
            }
            var mats = keys.Select(k => Matrix(merged, k)).ToList();
            var values = new float[mats.Sum(x => (long)x.Rows * x.Cols)];
            long off = 0;
            foreach (var x in mats)
            {
                for (int r = 0; r < x.Rows; r++, off += x.Cols)
                {
                    x.ReadRow(r, values.AsSpan((int)off, x.Cols));
                }
            }
            w.AddTensor(TensorData.FromFloat32(info.Name, DType.F32, info.Shape, values));
            done.UnionWith(keys.Where(adapter.Factors.ContainsKey));
        }
        var missing = adapter.Factors.Keys.Where(k => !done.Contains(k)).ToList();
        if (missing.Count > 0)
        {
            throw ModelFormatException.In(sourcePath, $"no tensor for adapted {missing[0]} (expected llama.cpp names blk.N.attn_q/k/v/output, ffn_gate/down/up or ffn_*_exps)");
        }
        var path = Path.Combine(folder, "model.gguf");
        w.Write(path);
        return path;
    }

    private static string WriteMistralFolder(LoadedModel loaded, TransformerWeights merged, string folder)
    {
        var c = merged.Config;
        File.WriteAllBytes(Path.Combine(folder, Checkpoint.ConfigFileName), Checkpoint.ParamsJson(c));
        if (loaded.Source.TokenizerPath is { } tok && File.Exists(tok))
        {
            File.Copy(tok, Path.Combine(folder, Path.GetFileName(tok)));
            var tokConfig = Path.Combine(Path.GetDirectoryName(tok)!, "tokenizer_config.json");
            if (File.Exists(tokConfig))
            {
                File.Copy(tokConfig, Path.Combine(folder, "tokenizer_config.json"));
            }
        }
        var tensors = new List<TensorData>();
        void M(string name, WeightMatrix m)
        {
            var v = new float[(long)m.Rows * m.Cols];
            for (int r = 0; r < m.Rows; r++)
            {
                m.ReadRow(r, v.AsSpan(r * m.Cols, m.Cols));
            }
            tensors.Add(TensorData.FromFloat32(name, DType.F32, [m.Rows, m.Cols], v));
        }
        void V(string name, float[] v) => tensors.Add(TensorData.FromFloat32(name, DType.F32, [v.Length], v));
        M("tok_embeddings.weight", merged.TokenEmbedding);
        for (int i = 0; i < merged.Layers.Count; i++)
        {
            var l = merged.Layers[i];
            string p = $"layers.{i}.";
            V(p + "attention_norm.weight", l.AttentionNorm);
            M(p + "attention.wq.weight", l.Wq);
            M(p + "attention.wk.weight", l.Wk);
            M(p + "attention.wv.weight", l.Wv);
            M(p + "attention.wo.weight", l.Wo);
            V(p + "ffn_norm.weight", l.FfnNorm);
            if (l.Moe is { } moe)
            {
                M(p + "feed_forward.gate.weight", moe.Router);
                for (int e = 0; e < moe.Experts.Count; e++)
                {
                    M($"{p}feed_forward.experts.{e}.w1.weight", moe.Experts[e].W1);
                    M($"{p}feed_forward.experts.{e}.w2.weight", moe.Experts[e].W2);
                    M($"{p}feed_forward.experts.{e}.w3.weight", moe.Experts[e].W3);
                }
            }
            else
            {
                M(p + "feed_forward.w1.weight", l.FeedForward!.W1);
                M(p + "feed_forward.w2.weight", l.FeedForward.W2);
                M(p + "feed_forward.w3.weight", l.FeedForward.W3);
            }
        }
        V("norm.weight", merged.FinalNorm);
        if (!c.TiedEmbeddings)
        {
            M("output.weight", merged.Output);
        }
        var path = Path.Combine(folder, Checkpoint.WeightsFileName);
        SafetensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        return path;
    }

    private static WeightMatrix Matrix(TransformerWeights w, LoraKey k)
    {
        var l = w.Layers[k.Layer];
        var ffn = k.Expert >= 0 ? l.Moe!.Experts[k.Expert] : l.FeedForward;
        return k.Module switch
        {
            LoraModule.Q => l.Wq,
            LoraModule.K => l.Wk,
            LoraModule.V => l.Wv,
            LoraModule.O => l.Wo,
            LoraModule.W1 => ffn!.W1,
            LoraModule.W2 => ffn!.W2,
            _ => ffn!.W3,
        };
    }
}
