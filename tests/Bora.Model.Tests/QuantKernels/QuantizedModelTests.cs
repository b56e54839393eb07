using Bora.Formats;
using Bora.Formats.Gguf;
using Bora.Numerics;

namespace Bora.Model.Tests.QuantKernels;

/// <summary>A tiny quantized GGUF model runs through the quantized kernels and gives the logits of its dequantized twin.</summary>
public sealed class QuantizedModelTests
{
    /// <summary>
    /// Logit tolerance as a fraction of the largest |logit|. Every matrix product rounds its activations to 8 bits
    /// (error up to 1/254 of each block's largest value; the SiLU-gated FFN activations and attention outputs are
    /// heavy-tailed, so their blocks lose more); over 2 layers of 7 products and the head the measured drift is
    /// 0.9% (Q4_0) to 1.8% (Q6_K) of the largest logit. 4% leaves a 2x margin and still catches a wrong block,
    /// scale or row (those give errors of the order of the logits themselves).
    /// </summary>
    private const float RelativeLogitTolerance = 0.04f;

    [Theory]
    [InlineData(DType.Q8_0)]
    [InlineData(DType.Q4_0)]
    [InlineData(DType.Q4_K)]
    [InlineData(DType.Q6_K)]
    public void QuantizedKernelsGiveTheLogitsOfTheDequantizedModel(DType type)
    {
        string path = Path.Combine(Path.GetTempPath(), $"bora-quant-{type}-{Environment.ProcessId}-{Guid.NewGuid():N}.gguf");
        try
        {
            WriteTinyModel(path, type, seed: 3);
            var tokens = TestModels.Tokens(7, 64, seed: 4);
            float[] reference, quantized;
            using (var store = GgufFile.Open(path))
            {
                var config = ModelConfigLoader.FromGguf(store.Metadata, path);
                var wf = WeightLoader.Load(store, config, WeightLoader.ReadF32Matrix);
                var wq = WeightLoader.Load(store, config, WeightLoader.ReadQuantizedMatrix);
                Assert.IsType<F32Matrix>(wf.Layers[0].Wq);
                var q = Assert.IsType<QuantizedMatrix>(wq.Layers[0].Wq);
                Assert.Equal(type, q.Type);
                Assert.IsType<QuantizedMatrix>(wq.Layers[1].FeedForward!.W2);
                Assert.IsType<QuantizedMatrix>(wq.Output);
                reference = TestModels.Prefill(new Transformer(wf), tokens);
                quantized = TestModels.Prefill(new Transformer(wq), tokens);
            }
            float scale = reference.Max(MathF.Abs);
            float diff = TestModels.MaxAbsDiff(reference, quantized);
            Assert.True(diff <= RelativeLogitTolerance * scale, $"{type}: max |logit diff| {diff} vs max |logit| {scale} ({diff / scale:P2})");
            Console.WriteLine($"{type}: max |logit diff| {diff / scale:P3} of max |logit|");
            int v = 64;
            for (int t = 0; t < tokens.Length; t++)
            {
                var r = reference.AsSpan(t * v, v);
                var g = quantized.AsSpan(t * v, v);
                int argmax = r.IndexOf(r.ToArray().Max());
                // Greedy tokens agree unless the top two reference logits are within the tolerance.
                var sorted = r.ToArray().OrderDescending().ToArray();
                if (sorted[0] - sorted[1] > 2 * RelativeLogitTolerance * scale)
                {
                    Assert.Equal(argmax, g.IndexOf(g.ToArray().Max()));
                }
            }
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>
    /// A 2-layer llama GGUF: D 256, F 512, 4 query heads and 2 kv heads of 64, V 64, every matrix in
    /// <paramref name="type"/> (dims are multiples of 256 so the K formats fit), norms float32.
    /// </summary>
    internal static void WriteTinyModel(string path, DType type, int seed)
    {
        const int d = 256, f = 512, heads = 4, kvHeads = 2, headDim = 64, vocab = 64, layers = 2;
        var rng = new Random(seed);
        var w = new GgufWriter()
            .AddMetadata("general.architecture", "llama")
            .AddMetadata("llama.embedding_length", (uint)d)
            .AddMetadata("llama.block_count", (uint)layers)
            .AddMetadata("llama.feed_forward_length", (uint)f)
            .AddMetadata("llama.attention.head_count", (uint)heads)
            .AddMetadata("llama.attention.head_count_kv", (uint)kvHeads)
            .AddMetadata("llama.attention.layer_norm_rms_epsilon", 1e-5f)
            .AddMetadata("llama.context_length", 128u)
            .AddMetadata("llama.vocab_size", (uint)vocab);
        void Mat(string name, int rows, int cols, float scale) =>
            w.AddTensor(TensorData.FromFloat32(name, type, [rows, cols], TestModels.Uniform(rng, rows * cols, scale)));
        void Norm(string name) =>
            w.AddTensor(TensorData.FromFloat32(name, DType.F32, [d], [.. TestModels.Uniform(rng, d, 0.2f).Select(x => 1 + x)]));
        Mat("token_embd.weight", vocab, d, 1f);
        for (int i = 0; i < layers; i++)
        {
            string p = $"blk.{i}.";
            float sd = MathF.Sqrt(3f / d);
            Norm(p + "attn_norm.weight");
            Mat(p + "attn_q.weight", heads * headDim, d, sd);
            Mat(p + "attn_k.weight", kvHeads * headDim, d, sd);
            Mat(p + "attn_v.weight", kvHeads * headDim, d, sd);
            Mat(p + "attn_output.weight", d, heads * headDim, MathF.Sqrt(3f / (heads * headDim)));
            Norm(p + "ffn_norm.weight");
            Mat(p + "ffn_gate.weight", f, d, sd);
            Mat(p + "ffn_up.weight", f, d, sd);
            Mat(p + "ffn_down.weight", d, f, MathF.Sqrt(3f / f));
        }
        Norm("output_norm.weight");
        Mat("output.weight", vocab, d, MathF.Sqrt(3f / d));
        w.Write(path);
    }
}
