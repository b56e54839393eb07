using Bora.Numerics;

namespace Bora.Model.Tests.QuantKernels;

/// <summary><see cref="QuantizedProductBatch"/> gives, bit for bit, what each product's own MatMul gives.</summary>
[Trait("Category", "Kernels")]
public sealed class QuantizedProductBatchTests
{
    /// <summary>With <paramref name="packed"/>, a and c are packed (<see cref="QuantizedMatrix.Pack"/>) and b, sharing a's input, is not.</summary>
    [Theory]
    [InlineData(DType.Q8_0, false)]
    [InlineData(DType.Q4_0, false)]
    [InlineData(DType.Q4_K, false)]
    [InlineData(DType.Q6_K, false)]
    [InlineData(DType.Q8_0, true)]
    [InlineData(DType.Q4_0, true)]
    [InlineData(DType.Q4_K, true)]
    [InlineData(DType.Q6_K, true)]
    public void BatchEqualsEachMatMulAloneExactly(DType type, bool packed)
    {
        if (packed && !QuantizedMatrix.CanPack(type))
        {
            return;
        }
        // K = 256 so every format fits; rows 72 and 40 are not multiples of the 16-row groups.
        const int k = 256;
        var rng = new Random(5 + (int)type);
        var a = QuantizedMatrix.Quantize(type, TestModels.Uniform(rng, 72 * k, 1f), 72, k);   // (72, K)
        var b = QuantizedMatrix.Quantize(type, TestModels.Uniform(rng, 72 * k, 1f), 72, k);   // (72, K), same input as a
        var c = QuantizedMatrix.Quantize(type, TestModels.Uniform(rng, 40 * k, 1f), 40, k);   // (40, K), its own input
        if (packed)
        {
            (a, c) = (a.Pack(), c.Pack());
        }
        var batch = new QuantizedProductBatch();
        foreach (int tokens in new[] { 1, 3, 16, 37 })
        {
            // x holds two inputs: rows [0, T) for a and b, rows [T, 2T) for c.
            var x = TestModels.Uniform(rng, 2 * tokens * k, 2f);
            var y = new float[5 + tokens * (72 + 72 + 40)]; // outputs at offsets 5, 5 + 72T, 5 + 144T
            batch.Add(a, x, 0, tokens, y, 5);
            batch.Add(b, x, 0, tokens, y, 5 + 72 * tokens);
            batch.Add(c, x, tokens * k, tokens, y, 5 + 144 * tokens);
            batch.Run();
            Assert.Equal(0, batch.Count);
            var ea = new float[tokens * 72];
            var eb = new float[tokens * 72];
            var ec = new float[tokens * 40];
            a.MatMul(x.AsSpan(0, tokens * k), ea, tokens);
            b.MatMul(x.AsSpan(0, tokens * k), eb, tokens);
            c.MatMul(x.AsSpan(tokens * k, tokens * k), ec, tokens);
            Assert.Equal(ea, y.AsSpan(5, tokens * 72).ToArray());
            Assert.Equal(eb, y.AsSpan(5 + 72 * tokens, tokens * 72).ToArray());
            Assert.Equal(ec, y.AsSpan(5 + 144 * tokens, tokens * 40).ToArray());
            Assert.Equal(0f, y[4]);
        }
    }

    [Fact]
    public void BatchWithManyThreadsEqualsOneThread()
    {
        const int k = 128, rows = 520, tokens = 20;
        var rng = new Random(9);
        var w = QuantizedMatrix.Quantize(DType.Q4_0, TestModels.Uniform(rng, rows * k, 1f), rows, k);
        var x = TestModels.Uniform(rng, tokens * k, 1f);
        var one = new float[tokens * rows];
        var many = new float[tokens * rows];
        int saved = NumericsThreads.MaxThreads;
        try
        {
            var batch = new QuantizedProductBatch();
            NumericsThreads.MaxThreads = 1;
            batch.Add(w, x, 0, tokens, one, 0);
            batch.Run();
            NumericsThreads.MaxThreads = 4;
            batch.Add(w, x, 0, tokens, many, 0);
            batch.Run();
        }
        finally
        {
            NumericsThreads.MaxThreads = saved;
        }
        Assert.Equal(one, many);
        Assert.Contains(one, v => v != 0);
    }

    [Fact]
    public void BadArgumentsAreRejectedAndEmptyProductsIgnored()
    {
        var w = QuantizedMatrix.Quantize(DType.Q8_0, new float[4 * 32], 4, 32);
        var batch = new QuantizedProductBatch();
        var ex = Assert.Throws<ArgumentException>(() => batch.Add(w, new float[32], 0, 2, new float[8], 0));
        Assert.Contains("x[0 .. +64) of 32", ex.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => batch.Add(w, new float[32], 0, 1, new float[4], 1));
        batch.Add(w, new float[32], 0, 0, new float[4], 0);
        Assert.Equal(0, batch.Count);
        batch.Run();
    }
}
