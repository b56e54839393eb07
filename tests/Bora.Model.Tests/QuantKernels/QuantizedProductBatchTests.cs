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

    /// <summary>
    /// A Q4_K_M layer's projections: Wq and Wk (Q4_K) and Wv (Q6_K) read the same rows; the two Q4_K products share one
    /// quantization, the Q6_K one gets its own, and all three equal their MatMul alone, on both sides of the K formats'
    /// expansion thresholds (48 and 64 tokens).
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void MixedFormatsReadingOneInputEqualEachMatMulAlone(bool packed)
    {
        const int k = 512;
        var rng = new Random(17);
        var q = QuantizedMatrix.Quantize(DType.Q4_K, TestModels.Uniform(rng, 64 * k, 1f), 64, k);  // (64, K)
        var kk = QuantizedMatrix.Quantize(DType.Q4_K, TestModels.Uniform(rng, 32 * k, 1f), 32, k); // (32, K)
        var v = QuantizedMatrix.Quantize(DType.Q6_K, TestModels.Uniform(rng, 32 * k, 1f), 32, k);  // (32, K)
        if (packed && QuantizedMatrix.CanPack(DType.Q4_K) && QuantizedMatrix.CanPack(DType.Q6_K))
        {
            (q, kk, v) = (q.Pack(), kk.Pack(), v.Pack());
        }
        var batch = new QuantizedProductBatch();
        foreach (int tokens in new[] { 1, 5, 47, 48, 64, 70 })
        {
            var x = TestModels.Uniform(rng, tokens * k, 2f);
            var (yq, yk, yv) = (new float[tokens * 64], new float[tokens * 32], new float[tokens * 32]);
            batch.Add(q, x, 0, tokens, yq, 0);
            batch.Add(kk, x, 0, tokens, yk, 0);
            batch.Add(v, x, 0, tokens, yv, 0);
            batch.Run();
            var (eq, ek, ev) = (new float[tokens * 64], new float[tokens * 32], new float[tokens * 32]);
            q.MatMul(x, eq, tokens);
            kk.MatMul(x, ek, tokens);
            v.MatMul(x, ev, tokens);
            Assert.Equal(eq, yq);
            Assert.Equal(ek, yk);
            Assert.Equal(ev, yv);
            Assert.Contains(yv, y => y != 0);
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
