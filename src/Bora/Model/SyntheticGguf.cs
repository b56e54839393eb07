using Bora.Formats;
using Bora.Formats.Gguf;
using Bora.Numerics;

namespace Bora.Model;

/// <summary>
/// Writes a llama-architecture GGUF with random weights for any <see cref="ModelConfig"/> — dense or
/// Mixtral-style MoE (merged <c>ffn_*_exps</c> experts, as current llama.cpp writes them) — that both Bora
/// and llama.cpp load. Used by tests (tiny models compared against llama.cpp) and benchmarks (real model
/// shapes; speed does not depend on the weights' values).
/// <para>
/// Scales keep a deep random network well-conditioned: every linear layer is N(0, 1/fan_in) so activations
/// keep unit size, norms are 1 ± 0.1, and the output head is scaled by <see cref="LogitScale"/> so the
/// logits have a spread of a few units (real margins between the top tokens).
/// </para>
/// </summary>
public static class SyntheticGguf
{
    /// <summary>Standard deviation of the logits (the output head is N(0, (LogitScale)² / D)).</summary>
    public const float LogitScale = 3f;

    /// <summary>
    /// Writes the model to <paramref name="path"/> (atomically). Matrices are stored as
    /// <paramref name="matrixType"/> (each row must be a whole number of its blocks); norms and the MoE
    /// router stay F32 as llama.cpp keeps them. The vocabulary (<c>tokenizer.ggml.*</c> keys) is copied from
    /// <paramref name="vocabularySource"/>, whose vocabulary size must equal <c>config.VocabSize</c>.
    /// </summary>
    public static void Write(string path, ModelConfig config, int seed, DType matrixType, GgufFile vocabularySource)
    {
        config.Validate(path);
        var tokens = vocabularySource.GetStringArray("tokenizer.ggml.tokens");
        if (tokens.Length != config.VocabSize)
        {
            throw new ArgumentException(
                $"{vocabularySource.Path} has {tokens.Length} tokens but the config's vocab_size is {config.VocabSize}", nameof(vocabularySource));
        }
        int d = config.Dim, dq = config.NHeads * config.HeadDim, dkv = config.NKvHeads * config.HeadDim, f = config.HiddenDim;
        var rng = new Random(seed);
        var w = new GgufWriter();
        AddLlamaConfig(w, config, "bora-synthetic");
        foreach (var (key, value) in vocabularySource.Metadata)
        {
            if (key.StartsWith("tokenizer.", StringComparison.Ordinal))
            {
                var kind = vocabularySource.MetadataKinds[key];
                w.AddMetadata(key, value, kind.Type, kind.ElementType);
            }
        }

        // Norm weights: (D)
        float[] Norm() => Fill(rng, d, 0.1f, 1f);
        // A linear layer's weight: (rows, cols), N(0, gain^2 / cols)
        TensorData Linear(string name, int rows, int cols, float gain = 1f, DType? type = null) =>
            TensorData.FromFloat32(name, type ?? matrixType, [rows, cols], Fill(rng, rows * cols, gain / MathF.Sqrt(cols), 0f));

        w.AddTensor(TensorData.FromFloat32("token_embd.weight", matrixType, [config.VocabSize, d], Fill(rng, config.VocabSize * d, 1f, 0f)));
        for (int l = 0; l < config.NLayers; l++)
        {
            var p = $"blk.{l}.";
            w.AddTensor(TensorData.FromFloat32(p + "attn_norm.weight", DType.F32, [d], Norm()));
            w.AddTensor(Linear(p + "attn_q.weight", dq, d));
            w.AddTensor(Linear(p + "attn_k.weight", dkv, d));
            w.AddTensor(Linear(p + "attn_v.weight", dkv, d));
            w.AddTensor(Linear(p + "attn_output.weight", d, dq));
            w.AddTensor(TensorData.FromFloat32(p + "ffn_norm.weight", DType.F32, [d], Norm()));
            if (config.IsMoE)
            {
                int e = config.NExperts;
                w.AddTensor(Linear(p + "ffn_gate_inp.weight", e, d, gain: 2f, type: DType.F32)); // router (E, D)
                w.AddTensor(TensorData.FromFloat32(p + "ffn_gate_exps.weight", matrixType, [e, f, d], Fill(rng, e * f * d, 1f / MathF.Sqrt(d), 0f)));
                w.AddTensor(TensorData.FromFloat32(p + "ffn_down_exps.weight", matrixType, [e, d, f], Fill(rng, e * d * f, 1f / MathF.Sqrt(f), 0f)));
                w.AddTensor(TensorData.FromFloat32(p + "ffn_up_exps.weight", matrixType, [e, f, d], Fill(rng, e * f * d, 1f / MathF.Sqrt(d), 0f)));
            }
            else
            {
                w.AddTensor(Linear(p + "ffn_gate.weight", f, d));
                w.AddTensor(Linear(p + "ffn_down.weight", d, f));
                w.AddTensor(Linear(p + "ffn_up.weight", f, d));
            }
        }
        w.AddTensor(TensorData.FromFloat32("output_norm.weight", DType.F32, [d], Norm()));
        w.AddTensor(Linear("output.weight", config.VocabSize, d, gain: LogitScale));
        w.Write(path);
    }

    /// <summary>n samples of N(mean, std²) (Box–Muller).</summary>
    private static float[] Fill(Random rng, int n, float std, float mean)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            a[i] = mean + std * (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return a;
    }

    /// <summary>
    /// <c>general.architecture = llama</c>, <c>general.name</c> and the <c>llama.*</c> hyper-parameters of
    /// <paramref name="config"/> (see <c>Bora.Quantization.GgufLlamaMetadata.AddConfig</c>, which uses this).
    /// </summary>
    internal static void AddLlamaConfig(GgufWriter w, ModelConfig config, string name)
    {
        w.AddMetadata("general.architecture", "llama");
        w.AddMetadata("general.name", name);
        w.AddMetadata("llama.context_length", (uint)config.MaxSeqLen);
        w.AddMetadata("llama.embedding_length", (uint)config.Dim);
        w.AddMetadata("llama.block_count", (uint)config.NLayers);
        w.AddMetadata("llama.feed_forward_length", (uint)config.HiddenDim);
        w.AddMetadata("llama.rope.dimension_count", (uint)config.HeadDim);
        w.AddMetadata("llama.attention.head_count", (uint)config.NHeads);
        w.AddMetadata("llama.attention.head_count_kv", (uint)config.NKvHeads);
        w.AddMetadata("llama.attention.layer_norm_rms_epsilon", config.NormEps);
        w.AddMetadata("llama.rope.freq_base", config.RopeTheta);
        if (config.HeadDim * config.NHeads != config.Dim)
        {
            w.AddMetadata("llama.attention.key_length", (uint)config.HeadDim);
            w.AddMetadata("llama.attention.value_length", (uint)config.HeadDim);
        }
        if (config.IsMoE)
        {
            w.AddMetadata("llama.expert_count", (uint)config.NExperts);
            w.AddMetadata("llama.expert_used_count", (uint)config.NExpertsPerToken);
        }
        w.AddMetadata("llama.vocab_size", (uint)config.VocabSize);
    }
}
