using System.Runtime.InteropServices;
using Bora.Formats.Gguf;
using Bora.Model;
using Bora.Numerics;
using Bora.Numerics.Quant;
using Bora.Reference.Tests.LlamaCpp;
using Xunit.Abstractions;

namespace Bora.Reference.Tests.Engine;

/// <summary>
/// Bora's dequantization of blocks that llama.cpp's own quantizer wrote is bit-identical to llama.cpp's
/// dequantization of the same blocks: llama.cpp quantizes an F32 model (q8_0, q4_0, q4_k_m, q6_k), then
/// "requantizes" that file to f32 — which dequantizes every tensor with its own dequantize_row_* — and
/// each tensor Bora decodes from the quantized file must equal that f32 data exactly.
/// </summary>
[Collection(LlamaCppCollection.Name)]
public sealed class QuantizedDequantizationTests(ITestOutputHelper output)
{
    private static readonly string VocabularyGguf = TestPaths.Shared("models", "stories260K", "stories260K.gguf");

    [Theory]
    [InlineData("q8_0")]
    [InlineData("q4_0")]
    [InlineData("q4_k_m")]
    [InlineData("q6_k")]
    public void DequantizationIsBitIdenticalToLlamaCpp(string ftype)
    {
        if (!File.Exists(VocabularyGguf))
        {
            output.WriteLine($"skipped: {VocabularyGguf} is absent");
            return;
        }
        var dir = TestPaths.NewTempDir("dequant");
        string f32 = Path.Combine(dir, "f32.gguf"), quant = Path.Combine(dir, $"{ftype}.gguf"), back = Path.Combine(dir, "back.gguf");
        var config = new ModelConfig
        {
            Dim = 256,
            NLayers = 2,
            NHeads = 8,
            NKvHeads = 2,
            HeadDim = 32,
            HiddenDim = 512,
            VocabSize = 512,
            MaxSeqLen = 128,
            NExperts = 4,
            NExpertsPerToken = 2,
        };
        using (var vocab = GgufFile.Open(VocabularyGguf))
        {
            SyntheticGguf.Write(f32, config, seed: 7, DType.F32, vocab);
        }
        LlamaCppReference.Quantize(f32, quant, ftype);
        LlamaCppReference.Quantize(quant, back, "f32", allowRequantize: true);

        using var q = GgufFile.Open(quant);
        using var r = GgufFile.Open(back);
        var seen = new HashSet<DType>();
        foreach (var t in q.Tensors)
        {
            Assert.True(r.TryGetTensor(t.Name, out var reference), $"{t.Name} missing from llama.cpp's f32 file");
            Assert.Equal(DType.F32, reference.Type);
            Assert.Equal(t.Shape, reference.Shape);
            float[] mine = q.ReadFloat32(t);
            var theirs = MemoryMarshal.Cast<byte, float>(r.GetBytes(reference));
            Assert.Equal(theirs.Length, mine.Length);
            for (int i = 0; i < mine.Length; i++)
            {
                if (BitConverter.SingleToInt32Bits(mine[i]) != BitConverter.SingleToInt32Bits(theirs[i]))
                {
                    Assert.Fail($"{t.Name} ({t.Type}) element {i}: Bora {mine[i]:R}, llama.cpp {theirs[i]:R}");
                }
            }
            // The block decoder itself, not only ReadFloat32, on the raw bytes.
            var direct = new float[mine.Length];
            BlockDequantizer.ToFloat32(t.Type, q.GetBytes(t), direct);
            Assert.Equal(mine, direct);
            seen.Add(t.Type);
        }
        output.WriteLine($"{ftype}: {q.Tensors.Count} tensors bit-identical; types {string.Join(", ", seen)}");
        Assert.Contains(ftype switch { "q8_0" => DType.Q8_0, "q4_0" => DType.Q4_0, "q4_k_m" => DType.Q4_K, _ => DType.Q6_K }, seen);
        Directory.Delete(dir, recursive: true);
    }
}
