using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Model.Tests.QuantKernels;

/// <summary><see cref="QuantizedMatrix"/> against <see cref="F32Matrix"/> over its dequantized weights.</summary>
[Trait("Category", "Kernels")]
public sealed class QuantizedMatrixTests
{
    public static TheoryData<DType> Types => [DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q6_K];

    /// <summary>
    /// Float slack on top of the activation-rounding bound, relative to sum_j |w_j x_j|: both products add
    /// up to K = 1024 terms in float (about K * 2^-24 = 6e-5 in the worst case, far less in practice).
    /// </summary>
    private const float FloatSlack = 1e-4f;

    /// <summary>
    /// The only approximation of the quantized product is the activation rounding: x_j becomes q_j d with
    /// |q_j d - x_j| &lt;= d / 2 (d = max |x| of j's block / 127), so |y_q - y_f| &lt;= sum_j |w_j| d_j / 2.
    /// Checked per output, for every ISA, for token counts through the tiles, decode and the interleaved prefill.
    /// </summary>
    [Theory]
    [MemberData(nameof(Types))]
    public void MatMulAgreesWithF32OverDequantizedWeightsWithinActivationRounding(DType type)
    {
        var rng = new Random((int)type);
        const int n = 70, k = 1024; // n not a multiple of any row block
        var q = QuantizedMatrix.Quantize(type, TestModels.Uniform(rng, n * k, 1f), n, k);
        var wf = q.Dequantize();
        var f = new F32Matrix(wf, n, k);
        int block = QuantizedMatrix.ActivationBlock(type);
        foreach (int tokens in new[] { 1, 2, 9, 20 }) // 20: the interleaved prefill (Q8_0, Q4_0, Q4_K at AVX-512)
        {
            var x = TestModels.Uniform(rng, tokens * k, 3f);
            var yf = new float[tokens * n];
            f.MatMul(x, yf, tokens);
            foreach (var isa in Enum.GetValues<QuantIsa>().Where(QuantDot.IsSupported))
            {
                var yq = new float[tokens * n];
                q.MatMul(x, yq, tokens, isa);
                for (int t = 0; t < tokens; t++)
                {
                    var xt = x.AsSpan(t * k, k);
                    for (int r = 0; r < n; r++)
                    {
                        double bound = 0, mag = 0;
                        for (int j = 0; j < k; j += block)
                        {
                            float amax = 0;
                            for (int i = j; i < j + block; i++)
                            {
                                amax = MathF.Max(amax, MathF.Abs(xt[i]));
                            }
                            for (int i = j; i < j + block; i++)
                            {
                                bound += MathF.Abs(wf[r * k + i]) * amax / 127 / 2;
                                mag += MathF.Abs(wf[r * k + i] * xt[i]);
                            }
                        }
                        float diff = MathF.Abs(yq[t * n + r] - yf[t * n + r]);
                        Assert.True(diff <= bound + FloatSlack * mag, $"{type} {isa} token {t} row {r}: |{yq[t * n + r]} - {yf[t * n + r]}| = {diff} > {bound} + slack");
                    }
                }
            }
        }
    }

    /// <summary>
    /// Each (row, token) is the same dot product whatever the batch and threading, as long as the batch takes the same
    /// kernel family: MatMul of T tokens equals T MatVecs bit for bit, except where T tokens run rows-in-lanes
    /// (<see cref="QuantDispatch"/>) and one token does not; then each token equals the same token inside a smallest
    /// rows-in-lanes batch (a window of <see cref="QuantDispatch"/>'s threshold tokens) bit for bit.
    /// </summary>
    [Theory]
    [MemberData(nameof(Types))]
    public void MatMulEqualsPerTokenMatVecExactly(DType type)
    {
        var rng = new Random(100 + (int)type);
        const int n = 300, k = 512; // n * k * tokens above the parallel threshold
        var q = QuantizedMatrix.Quantize(type, TestModels.Uniform(rng, n * k, 1f), n, k);
        const int tokens = 11;
        var x = TestModels.Uniform(rng, tokens * k, 1f);
        var y = new float[tokens * n];
        q.MatMul(x, y, tokens);
        int window = InterleavedFrom(type, QuantDot.Best);
        if (window is 1 or > tokens)
        {
            var one = new float[n];
            for (int t = 0; t < tokens; t++)
            {
                q.MatVec(x.AsSpan(t * k, k), one);
                Assert.True(one.AsSpan().SequenceEqual(y.AsSpan(t * n, n)), $"{type} token {t}");
            }
            return;
        }
        var part = new float[window * n];
        for (int t = 0; t < tokens; t++)
        {
            int t0 = Math.Min(t, tokens - window); // tokens [t0, t0 + window) hold t
            q.MatMul(x.AsSpan(t0 * k, window * k), part, window);
            Assert.True(part.AsSpan((t - t0) * n, n).SequenceEqual(y.AsSpan(t * n, n)), $"{type} token {t} in a batch of {window}");
        }
    }

    /// <summary>The smallest token count that runs rows-in-lanes for <paramref name="type"/> at <paramref name="isa"/> (int.MaxValue: never).</summary>
    internal static int InterleavedFrom(DType type, QuantIsa isa)
    {
        for (int t = 1; t <= 64; t++)
        {
            if ((type == DType.Q4_0 && Q4_0Interleaved.Covers(isa, t)) || (type == DType.Q8_0 && Q8_0Interleaved.Covers(isa, t))
                || (type == DType.Q4_K && Q4KInterleaved.Covers(isa, t)) || (type == DType.Q6_K && Q6KInterleaved.Covers(isa, t)))
            {
                return t;
            }
        }
        return int.MaxValue;
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void ReadRowDequantizesTheStoredRow(DType type)
    {
        var rng = new Random(5);
        var q = QuantizedMatrix.Quantize(type, TestModels.Uniform(rng, 3 * 256, 1f), 3, 256);
        var all = q.Dequantize();
        var row = new float[256];
        q.ReadRow(2, row);
        Assert.True(row.AsSpan().SequenceEqual(all.AsSpan(512, 256)));
    }

    [Fact]
    public void BadArgumentsAreRejectedWithClearMessages()
    {
        var e = Assert.Throws<ArgumentException>(() => new QuantizedMatrix(DType.F16, new byte[64], 1, 32));
        Assert.Contains("F16", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<ArgumentException>(() => new QuantizedMatrix(DType.Q4_0, new byte[18], 1, 48));
        Assert.Contains("multiple of 32", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<ArgumentException>(() => new QuantizedMatrix(DType.Q8_0, new byte[33], 1, 32));
        Assert.Contains("34 bytes", e.Message, StringComparison.Ordinal);
        var q = new QuantizedMatrix(DType.Q8_0, new byte[68], 2, 32);
        Assert.Throws<ArgumentException>(() => q.MatVec(new float[31], new float[2]));
        Assert.Throws<ArgumentException>(() => q.MatMul(new float[64], new float[3], 2));
    }

    [Fact]
    public void EmptyShapesAreFine()
    {
        var q = new QuantizedMatrix(DType.Q4_0, [], 0, 64);
        q.MatMul(new float[128], [], 2);
        var z = new QuantizedMatrix(DType.Q4_K, [], 3, 0);
        var y = new float[] { 1, 2, 3 };
        z.MatVec([], y);
        Assert.Equal(new float[3], y);
    }
}
