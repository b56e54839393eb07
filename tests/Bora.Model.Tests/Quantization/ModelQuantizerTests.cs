using Bora.Formats;
using Bora.Formats.Gguf;
using Bora.Numerics;
using Bora.Quantization;

namespace Bora.Model.Tests.Quantization;

/// <summary>The type rules of <see cref="ModelQuantizer"/>.ChooseType and the streaming writer <see cref="LazyTensorSet"/>.</summary>
public sealed class ModelQuantizerTests
{
    [Theory]
    [InlineData("blk.0.attn_norm.weight", new long[] { 4096 }, DType.Q4_0, DType.F32)]
    [InlineData("blk.0.ffn_gate_inp.weight", new long[] { 8, 4096 }, DType.Q8_0, DType.F32)]
    [InlineData("blk.0.attn_q.weight", new long[] { 4096, 4096 }, DType.Q4_0, DType.Q4_0)]
    [InlineData("blk.0.attn_q.weight", new long[] { 4096, 4096 }, DType.Q4_K, DType.Q4_K)]
    [InlineData("blk.0.ffn_gate_exps.weight", new long[] { 8, 14336, 4096 }, DType.Q8_0, DType.Q8_0)]
    [InlineData("output.weight", new long[] { 32000, 4096 }, DType.Q4_0, DType.Q6_K)]
    [InlineData("output.weight", new long[] { 32000, 4096 }, DType.Q8_0, DType.Q8_0)]
    [InlineData("output.weight", new long[] { 512, 64 }, DType.Q4_K, DType.Q8_0)]
    [InlineData("blk.0.ffn_down.weight", new long[] { 64, 172 }, DType.Q8_0, DType.F16)]
    [InlineData("blk.0.ffn_down.weight", new long[] { 64, 172 }, DType.Q4_K, DType.F16)]
    [InlineData("blk.0.attn_q.weight", new long[] { 64, 64 }, DType.Q4_K, DType.Q8_0)]
    public void ChoosesTheTypeLlamaCppWould(string name, long[] shape, DType requested, DType expected)
    {
        var type = ModelQuantizer.ChooseType(name, shape, requested, out var reason);
        Assert.Equal(expected, type);
        Assert.Equal(expected == requested, reason is null);
    }

    [Fact]
    public void ParseTypeAcceptsTheThreeTargets()
    {
        Assert.Equal(DType.Q8_0, ModelQuantizer.ParseType("q8_0"));
        Assert.Equal(DType.Q4_0, ModelQuantizer.ParseType("Q4_0"));
        Assert.Equal(DType.Q4_K, ModelQuantizer.ParseType("q4_k"));
        Assert.Throws<ArgumentException>(() => ModelQuantizer.ParseType("q4_k_m"));
        Assert.Throws<ArgumentException>(() => ModelQuantizer.ChooseType("a", [32, 32], DType.F16, out _));
    }

    [Fact]
    public void UseMoreBitsPicksTheFirstAndLastEighthAndEveryThirdLayerBetween()
    {
        // 32 layers (Mistral 7B): 0-3, 28-31, and 6, 9, ..., 27; worked out by hand from the rule.
        int[] expected = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31];
        Assert.Equal(expected, Enumerable.Range(0, 32).Where(l => ModelQuantizer.UseMoreBits(l, 32)));
        Assert.Equal([0, 3, 6, 7], Enumerable.Range(0, 8).Where(l => ModelQuantizer.UseMoreBits(l, 8)));
        Assert.Equal([2, 3], Enumerable.Range(0, 4).Where(l => ModelQuantizer.UseMoreBits(l, 4)));
    }

    [Theory]
    [InlineData("blk.0.attn_v.weight", new long[] { 1024, 4096 }, 0, true, DType.Q6_K)]
    [InlineData("blk.4.attn_v.weight", new long[] { 1024, 4096 }, 0, true, DType.Q4_K)]
    [InlineData("blk.6.attn_v.weight", new long[] { 1024, 4096 }, 0, true, DType.Q6_K)]
    [InlineData("blk.31.ffn_down.weight", new long[] { 4096, 14336 }, 0, true, DType.Q6_K)]
    [InlineData("blk.5.ffn_down.weight", new long[] { 4096, 14336 }, 0, true, DType.Q4_K)]
    [InlineData("blk.5.ffn_gate.weight", new long[] { 14336, 4096 }, 0, true, DType.Q4_K)]
    [InlineData("blk.0.attn_q.weight", new long[] { 4096, 4096 }, 0, true, DType.Q4_K)]
    [InlineData("blk.0.attn_k.weight", new long[] { 1024, 4096 }, 0, true, DType.Q4_K)]
    [InlineData("blk.0.attn_output.weight", new long[] { 4096, 4096 }, 0, true, DType.Q4_K)]
    [InlineData("output.weight", new long[] { 32000, 4096 }, 0, true, DType.Q6_K)]
    [InlineData("token_embd.weight", new long[] { 32000, 4096 }, 0, true, DType.Q4_K)]
    [InlineData("token_embd.weight", new long[] { 32000, 4096 }, 0, false, DType.Q6_K)]
    [InlineData("blk.3.attn_norm.weight", new long[] { 4096 }, 0, true, DType.F32)]
    [InlineData("blk.5.attn_v.weight", new long[] { 1024, 4096 }, 8, true, DType.Q8_0)]
    [InlineData("blk.5.attn_k.weight", new long[] { 1024, 4096 }, 8, true, DType.Q8_0)]
    [InlineData("blk.5.attn_output.weight", new long[] { 4096, 4096 }, 8, true, DType.Q6_K)]
    [InlineData("blk.0.ffn_down_exps.weight", new long[] { 8, 4096, 14336 }, 8, true, DType.Q6_K)]
    [InlineData("blk.4.ffn_down_exps.weight", new long[] { 8, 4096, 14336 }, 8, true, DType.Q4_K)]
    [InlineData("blk.4.ffn_gate_inp.weight", new long[] { 8, 4096 }, 8, true, DType.F32)]
    [InlineData("blk.0.attn_v.weight", new long[] { 64, 64 }, 0, true, DType.Q8_0)]
    [InlineData("blk.1.ffn_down.weight", new long[] { 64, 172 }, 0, true, DType.F16)]
    public void Q4KMixtureChoosesTheTypeLlamaCppWould(string name, long[] shape, int experts, bool hasOutput, DType expected)
    {
        var model = new QuantizeModelShape(32, experts, hasOutput);
        var type = ModelQuantizer.ChooseType(name, shape, QuantizeTarget.Q4_K_M, model, out var reason);
        Assert.Equal(expected, type);
        Assert.Equal(expected == DType.Q4_K, reason is null);
    }

    [Fact]
    public void TargetsParseAndCarryLlamaCppsFileTypes()
    {
        Assert.Same(QuantizeTarget.Q4_K_M, QuantizeTarget.Parse("Q4_K_M"));
        Assert.Equal((DType.Q4_K, true, 15u), (QuantizeTarget.Q4_K_M.Base, QuantizeTarget.Q4_K_M.KQuantMixture, QuantizeTarget.Q4_K_M.FileType));
        foreach (var t in ModelQuantizer.Targets)
        {
            Assert.Equal(GgufLlamaMetadata.FileType(t), QuantizeTarget.Of(t).FileType);
        }
        Assert.Contains("q4_k_m", Assert.Throws<ArgumentException>(() => QuantizeTarget.Parse("q5_k_m")).Message, StringComparison.Ordinal);
        Assert.Contains("blk.N.", Assert.Throws<ArgumentException>(() =>
            ModelQuantizer.ChooseType("blk.40.ffn_down.weight", [4096, 14336], QuantizeTarget.Q4_K_M, new QuantizeModelShape(32, 0, true), out _)).Message, StringComparison.Ordinal);
    }

    /// <summary>A file of lazily produced tensors is byte-identical to one written from eager tensors, and the producers run once each, in order.</summary>
    [Fact]
    public void LazyTensorsWriteTheSameFileAsEagerOnes()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"bora-lazy-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        var rng = new Random(3);
        var data = Enumerable.Range(0, 3).Select(i => Enumerable.Range(0, 64 * (i + 1)).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray()).ToArray();
        var eager = new GgufWriter();
        var lazyWriter = new GgufWriter();
        var set = new LazyTensorSet();
        var produced = new List<string>();
        set.Produced = produced.Add;
        for (int i = 0; i < data.Length; i++)
        {
            var type = i == 1 ? DType.F32 : DType.Q8_0;
            long[] shape = [i + 1, 64];
            eager.AddTensor(TensorData.FromFloat32($"t{i}", type, shape, data[i]));
            int k = i;
            lazyWriter.AddTensor(set.Create($"t{i}", type, shape, () => Numerics.Quant.BlockQuantizer.FromFloat32(type, data[k])));
        }
        Assert.Empty(produced);
        eager.Write(Path.Combine(dir, "eager.gguf"));
        lazyWriter.Write(Path.Combine(dir, "lazy.gguf"));
        Assert.Equal(["t0", "t1", "t2"], produced);
        Assert.Equal(File.ReadAllBytes(Path.Combine(dir, "eager.gguf")), File.ReadAllBytes(Path.Combine(dir, "lazy.gguf")));
        Assert.Throws<ArgumentException>(() => set.Create("bad", DType.Q8_0, [2, 33], () => []));
        Directory.Delete(dir, recursive: true);
    }
}
