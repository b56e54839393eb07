using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Model.Tests.QuantKernels;

/// <summary>
/// The tiled Q8_0 / Q4_0 kernels (<see cref="QuantGemm"/>, reached through <see cref="QuantizedMatrix.MatMul(ReadOnlySpan{float}, Span{float}, int, QuantIsa, bool)"/>)
/// at every ISA level this process supports, against their scalar twin (<see cref="QuantGemm.RunScalar"/>) and against exact
/// integer arithmetic, over tails of rows (0..67), tokens (0..17) and blocks per row (odd and even).
/// </summary>
[Trait("Category", "Kernels")]
[Collection("NumericsThreads")] // tests that set the process-wide NumericsThreads.MaxThreads run one at a time
public sealed unsafe class QuantGemmTests
{
    /// <summary>
    /// Relative tolerance (of sum_i |x_i| (|w_i| + offset), see <see cref="Check"/>): the kernels add the same exact integer
    /// lane sums times the same float scales as the scalar twin, in a different order and as d_w (p d_x - c) per lane of 4
    /// products instead of (d_w d_x) (block sum); each lane takes a few roundings of at most 2^-24 of its own magnitude and
    /// the sums over at most 128 blocks stay below 1e-5 of that total.
    /// </summary>
    private const float FloatOrderTolerance = 1e-5f;

    public static TheoryData<DType> Types => [DType.Q8_0, DType.Q4_0];

    private static IEnumerable<QuantIsa> Isas => Enum.GetValues<QuantIsa>().Where(QuantDot.IsSupported);

    [Theory]
    [MemberData(nameof(Types))]
    public void TiledKernelsAgreeWithScalarTwinOverRowTokenAndBlockTails(DType type)
    {
        var rng = new Random(31 + (int)type);
        // Blocks per row 1..9 (odd ones exercise the AVX-512 odd-block path), rows and tokens through every tail.
        foreach (int nb in new[] { 1, 2, 3, 4, 5, 8, 9 })
        {
            Check(type, rng, rows: 7, cols: 32 * nb, tokens: 13);
        }
        foreach (int rows in new[] { 0, 1, 2, 3, 4, 5, 15, 16, 17, 33, 63, 64, 65, 66, 67 })
        {
            Check(type, rng, rows, cols: 96, tokens: 9);
            Check(type, rng, rows, cols: 96, tokens: 19);
        }
        for (int tokens = 0; tokens <= 25; tokens++)
        {
            Check(type, rng, rows: 5, cols: 160, tokens);
        }
        Check(type, rng, rows: 70, cols: 4096, tokens: 12);
    }

    private static void Check(DType type, Random rng, int rows, int cols, int tokens)
    {
        var q = QuantizedMatrix.Quantize(type, TestModels.Uniform(rng, rows * cols, 1f), rows, cols);
        var x = TestModels.Uniform(rng, tokens * cols, 2f);
        var act = new Q8Activations();
        act.Quantize(x, tokens, cols, 32);
        var expected = new float[tokens * rows];
        fixed (byte* w = q.Blocks)
        fixed (float* pe = expected)
        {
            QuantGemm.RunScalar(type, w, q.RowBytes, q.BlocksPerRow, rows, act, tokens, pe, 0, rows);
        }
        // Scale of the rounding: sum_i |x^_i| (|w_i| + offset_i), x^ the dequantized activations, offset_i = 8 |d_w| for
        // Q4_0 (the kernels multiply the unsigned nibbles, |q d_w| <= |w| + 8 |d_w|, and subtract 8 d_w d_x sum(x)).
        var dense = q.Dequantize();
        var magnitude = new float[tokens * rows];
        for (int t = 0; t < tokens; t++)
        {
            for (int r = 0; r < rows; r++)
            {
                double m = 0;
                for (int i = 0; i < cols; i++)
                {
                    int blk = r * q.BlocksPerRow + i / 32;
                    float dw = (float)BitConverter.UInt16BitsToHalf(BitConverter.ToUInt16(q.Blocks.Slice(blk * DTypeInfo.BlockBytes(type), 2)));
                    float xi = act.Quants[t * cols + i] * act.Scales[(t * cols + i) / 32];
                    m += MathF.Abs(xi) * (MathF.Abs(dense[r * cols + i]) + (type == DType.Q4_0 ? 8 * MathF.Abs(dw) : 0));
                }
                magnitude[t * rows + r] = (float)m;
            }
        }
        foreach (var isa in Isas)
        {
            var y = new float[tokens * rows];
            q.MatMul(x, y, tokens, isa, rowByRow: false);
            for (int i = 0; i < y.Length; i++)
            {
                Assert.True(MathF.Abs(y[i] - expected[i]) <= FloatOrderTolerance * magnitude[i] + 1e-30f,
                    $"{type} {isa} ({rows}, {cols}) x {tokens} tokens, output {i} (token {i / rows}, row {i % rows}): {y[i]} vs scalar {expected[i]}");
            }
        }
    }

    /// <summary>
    /// Unit scales and small integers keep every partial sum an exact integer below 2^24, so every ISA must give the
    /// exact integer product (computed in long from the dequantized weights) bit for bit.
    /// </summary>
    public static TheoryData<DType> AllTypes => [DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q6_K];

    [Theory]
    [MemberData(nameof(AllTypes))]
    public void EveryIsaGivesTheExactIntegerProductWithUnitScales(DType type)
    {
        var rng = new Random(77 + (int)type);
        const int rows = 19;
        bool k256 = type is DType.Q4_K or DType.Q6_K; // super-blocks of 256: up to 4 keep every partial sum below 2^24
        foreach (var (nb, tokens) in k256 ? new[] { (1, 3), (2, 11), (4, 20), (3, 1) } : new[] { (1, 11), (2, 11), (7, 20), (16, 11), (16, 20) }) // 20 tokens: the interleaved path too
        {
            int k = (k256 ? 256 : 32) * nb;
            var blocks = QuantDotTests.RandomBlocks(type, rows * nb, rng, unitScales: true); // nb blocks of the type per row
            var q = new QuantizedMatrix(type, blocks, rows, k);
            var dense = q.Dequantize();
            var x = new float[tokens * k];
            for (int i = 0; i < x.Length; i++)
            {
                x[i] = i % 32 == 0 ? (rng.Next(2) == 0 ? 127 : -127) : rng.Next(-127, 128); // every block's (32 or 256) max |x| is 127: d = 1
            }
            foreach (var isa in Isas)
            {
                var y = new float[tokens * rows];
                q.MatMul(x, y, tokens, isa, rowByRow: false);
                for (int t = 0; t < tokens; t++)
                {
                    for (int r = 0; r < rows; r++)
                    {
                        long exact = 0;
                        for (int i = 0; i < k; i++)
                        {
                            exact += (long)dense[r * k + i] * (long)x[t * k + i];
                        }
                        Assert.True(y[t * rows + r] == exact, $"{type} {isa} K = {k} token {t} row {r}: {y[t * rows + r]} vs exact {exact}");
                    }
                }
            }
        }
    }

    /// <summary>
    /// A (row, token) result must not depend on the thread count (1, 2, 3 threads, bit for bit), nor, below the
    /// interleaved Q4_0 path's token count, on the tile or the token count: T tokens at once equal sub-batches and
    /// single-token products bit for bit, for odd and even blocks per row.
    /// </summary>
    [Theory]
    [MemberData(nameof(Types))]
    public void ResultsAreBitIdenticalAcrossTokenCountsAndThreadCounts(DType type)
    {
        var rng = new Random(5 + (int)type);
        int saved = NumericsThreads.MaxThreads;
        try
        {
            foreach (var (k, tokens) in new[] { (512, 15), (544, 15), (544, 40), (544, 2), (544, 5) })
            {
                const int n = 301; // n * k * tokens well above the parallel threshold
                var q = QuantizedMatrix.Quantize(type, TestModels.Uniform(rng, n * k, 1f), n, k);
                var x = TestModels.Uniform(rng, tokens * k, 1f);
                foreach (var isa in Isas)
                {
                    float[]? first = null;
                    foreach (int threads in new[] { 1, 2, 3 })
                    {
                        NumericsThreads.MaxThreads = threads;
                        var y = new float[tokens * n];
                        q.MatMul(x, y, tokens, isa, rowByRow: false);
                        first ??= y;
                        Assert.True(first.AsSpan().SequenceEqual(y), $"{type} {isa} K = {k}, {tokens} tokens: {threads} threads differ from 1");
                    }
                    // Rows-in-lanes (from QuantDispatch's threshold on) rounds differently from the tiles and decode
                    // steps; within one family results must not depend on the batch.
                    int from = QuantizedMatrixTests.InterleavedFrom(type, isa);
                    NumericsThreads.MaxThreads = 2;
                    for (int t0 = 0; t0 < tokens; t0 += 6)
                    {
                        // Sub-batches of 6 (a tile of 4 and a decode tail of 2, or rows-in-lanes tails) and single tokens.
                        int tt = Math.Min(6, tokens - t0);
                        if (tt >= from == tokens >= from)
                        {
                            var part = new float[tt * n];
                            q.MatMul(x.AsSpan(t0 * k, tt * k), part, tt, isa, rowByRow: false);
                            Assert.True(part.AsSpan().SequenceEqual(first.AsSpan(t0 * n, tt * n)), $"{type} {isa} K = {k}: tokens {t0}..{t0 + tt} as a batch of {tt}");
                        }
                        if (1 >= from == tokens >= from)
                        {
                            var one = new float[n];
                            q.MatMul(x.AsSpan(t0 * k, k), one, 1, isa, rowByRow: false);
                            Assert.True(one.AsSpan().SequenceEqual(first.AsSpan(t0 * n, n)), $"{type} {isa} K = {k}: token {t0} alone");
                        }
                    }
                }
            }
        }
        finally
        {
            NumericsThreads.MaxThreads = saved;
        }
    }

    /// <summary>
    /// The interleaved prefill (rows in lanes, repacked per group of 16) equals its scalar twin bit for bit: both run
    /// acc = fma(d_w, fms(p, d_x, o d_x sum x), acc) per block with the exact integer block sum p (of q x, o = 8, for
    /// Q4_0; of (w + 128) x, o = 128, for Q8_0). Rows sweep the group
    /// tails (0..67), tokens the 8-token tile tails above the threshold, blocks per row odd and even.
    /// </summary>
    public static TheoryData<DType> InterleavedTypes => [DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q6_K];

    [Theory]
    [MemberData(nameof(InterleavedTypes))]
    public void InterleavedPrefillEqualsItsScalarTwinBitForBit(DType type)
    {
        if (!Q4_0Interleaved.Covers(QuantDot.Best, Q4_0Interleaved.MinTokens))
        {
            Console.WriteLine($"interleaved Q4_0 path not available at {QuantDot.Best}: skipped");
            return;
        }
        var rng = new Random(123);
        foreach (var (rows, cols0, tokens) in new[] { (1, 32, 16), (15, 64, 17), (16, 96, 23), (17, 160, 24), (33, 288, 25), (67, 128, 31), (64, 1024, 16), (5, 4096, 18) })
        {
            int cols = type is DType.Q4_K or DType.Q6_K ? 256 * Math.Max(1, cols0 / 128) : cols0; // K formats: 1..32 super-blocks
            var q = QuantizedMatrix.Quantize(type, TestModels.Uniform(rng, rows * cols, 1f), rows, cols);
            var x = TestModels.Uniform(rng, tokens * cols, 2f);
            var y = new float[tokens * rows];
            q.MatMul(x, y, tokens, QuantDot.Best, rowByRow: false);
            var act = new Q8Activations();
            act.Quantize(x, tokens, cols, QuantizedMatrix.ActivationBlock(type));
            var expected = new float[tokens * rows];
            fixed (byte* w = q.Blocks)
            fixed (float* pe = expected)
            {
                if (type == DType.Q4_0)
                {
                    Q4_0Interleaved.RunScalar(w, q.RowBytes, q.BlocksPerRow, rows, act, tokens, pe, 0, rows);
                }
                else if (type == DType.Q8_0)
                {
                    Q8_0Interleaved.RunScalar(w, q.RowBytes, q.BlocksPerRow, rows, act, tokens, pe, 0, rows);
                }
                else if (type == DType.Q4_K)
                {
                    Q4KInterleaved.RunScalar(w, q.RowBytes, q.BlocksPerRow, rows, act, tokens, pe, 0, rows);
                }
                else
                {
                    Q6KInterleaved.RunScalar(w, q.RowBytes, q.BlocksPerRow, rows, act, tokens, pe, 0, rows);
                }
            }
            for (int i = 0; i < y.Length; i++)
            {
                Assert.True(BitConverter.SingleToInt32Bits(y[i]) == BitConverter.SingleToInt32Bits(expected[i]),
                    $"{type} ({rows}, {cols}) x {tokens}: output {i} (token {i / rows}, row {i % rows}) {y[i]} vs scalar twin {expected[i]}");
            }
        }
    }

    /// <summary>
    /// The rows-in-lanes tiles of every token count (1..8 for Q4_0, 1..6 for Q8_0, as reached by small batches and the
    /// last tile of larger ones), called directly whatever <see cref="QuantDispatch"/> picks, equal the scalar twin bit
    /// for bit over group tails (rows 1..67) and odd and even blocks per row.
    /// </summary>
    [Theory]
    [InlineData(DType.Q4_0)]
    [InlineData(DType.Q8_0)]
    public void InterleavedTilesOfEveryTokenCountEqualTheScalarTwin(DType type)
    {
        if (!Q4_0Interleaved.Covers(QuantDot.Best, 64))
        {
            Console.WriteLine($"interleaved path not available at {QuantDot.Best}: skipped");
            return;
        }
        var rng = new Random(321 + (int)type);
        foreach (var (rows, cols, tokens0) in new[] { (1, 32, 1), (15, 64, 1), (16, 96, 1), (17, 160, 1), (33, 288, 1), (67, 128, 1) })
        {
            var q = QuantizedMatrix.Quantize(type, TestModels.Uniform(rng, rows * cols, 1f), rows, cols);
            for (int tokens = tokens0; tokens <= 15; tokens++)
            {
                var x = TestModels.Uniform(rng, tokens * cols, 2f);
                var act = new Q8Activations();
                act.Quantize(x, tokens, cols, 32);
                var y = new float[tokens * rows];
                var expected = new float[tokens * rows];
                fixed (byte* w = q.Blocks)
                fixed (float* py = y, pe = expected)
                {
                    if (type == DType.Q4_0)
                    {
                        Q4_0Interleaved.Prepare(act);
                        Q4_0Interleaved.Run(w, q.RowBytes, q.BlocksPerRow, rows, act, tokens, py, 0, rows);
                        Q4_0Interleaved.RunScalar(w, q.RowBytes, q.BlocksPerRow, rows, act, tokens, pe, 0, rows);
                    }
                    else
                    {
                        Q8_0Interleaved.Prepare(act);
                        Q8_0Interleaved.Run(w, q.RowBytes, q.BlocksPerRow, rows, act, tokens, py, 0, rows);
                        Q8_0Interleaved.RunScalar(w, q.RowBytes, q.BlocksPerRow, rows, act, tokens, pe, 0, rows);
                    }
                }
                for (int i = 0; i < y.Length; i++)
                {
                    Assert.True(BitConverter.SingleToInt32Bits(y[i]) == BitConverter.SingleToInt32Bits(expected[i]),
                        $"{type} ({rows}, {cols}) x {tokens}: output {i} (token {i / rows}, row {i % rows}) {y[i]} vs scalar twin {expected[i]}");
                }
            }
        }
    }

    [Fact]
    public void RowByRowBaselineAgreesWithTiledKernels()
    {
        var rng = new Random(9);
        const int n = 40, k = 256, tokens = 10;
        var q = QuantizedMatrix.Quantize(DType.Q4_0, TestModels.Uniform(rng, n * k, 1f), n, k);
        var x = TestModels.Uniform(rng, tokens * k, 1f);
        var tiled = new float[tokens * n];
        var rows = new float[tokens * n];
        q.MatMul(x, tiled, tokens, QuantDot.Best, rowByRow: false);
        q.MatMul(x, rows, tokens, QuantDot.Best, rowByRow: true);
        for (int i = 0; i < tiled.Length; i++)
        {
            Assert.True(MathF.Abs(tiled[i] - rows[i]) <= 1e-4f * (1 + MathF.Abs(rows[i])), $"output {i}: {tiled[i]} vs {rows[i]}");
        }
    }

    [Fact]
    public void ActivationPairDataMatchesTheScalesSumsAndQuants()
    {
        var rng = new Random(3);
        const int tokens = 3, k = 192;
        var x = TestModels.Uniform(rng, tokens * k, 2f);
        var fast = new Q8Activations();
        var slow = new Q8Activations();
        fast.Quantize(x, tokens, k, 32);
        slow.QuantizeScalar(x, tokens, k, 32);
        Assert.True(fast.ScaledSums.SequenceEqual(slow.ScaledSums));
        for (int b = 0; b < tokens * k / 32; b++)
        {
            int sum = 0;
            for (int i = 32 * b; i < 32 * b + 32; i++)
            {
                sum += slow.Quants[i];
            }
            Assert.Equal(slow.Scales[b] * sum, slow.ScaledSums[b]);
        }
        foreach (bool negated in new[] { false, true })
        {
            fast.PreparePairs(negated);
            for (int t = 0; t < tokens; t++)
            {
                float* p = fast.Pairs(t);
                for (int pair = 0; pair < k / 64; pair++, p += 32)
                {
                    int b = t * (k / 32) + 2 * pair;
                    for (int lane = 0; lane < 16; lane++)
                    {
                        Assert.Equal(fast.Scales[b + lane / 8], p[lane]);
                        if (!negated)
                        {
                            Assert.Equal(fast.ScaledSums[b + lane / 8], p[16 + lane]);
                        }
                    }
                    if (negated)
                    {
                        for (int j = 0; j < 64; j++)
                        {
                            Assert.Equal(-fast.Quants[t * k + 64 * pair + j], ((sbyte*)(p + 16))[j]);
                        }
                    }
                }
            }
        }
    }
}
