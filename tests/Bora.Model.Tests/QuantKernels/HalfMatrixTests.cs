using Bora.Numerics;

namespace Bora.Model.Tests.QuantKernels;

/// <summary><see cref="HalfMatrix"/> (F16 / BF16 weights converted on the fly) against its scalar twin.</summary>
[Trait("Category", "Kernels")]
public sealed class HalfMatrixTests
{
    /// <summary>
    /// Products sum the same float32 terms as the scalar twin in another order (SIMD lanes, tiles), so each
    /// output may differ by a few float32 roundings of the running sum: bounded here by 1e-5 of sum |w x| (K &lt;= 512
    /// terms give at most ~K * 6e-8 = 3e-5 in the worst case, typically ~sqrt(K) * 6e-8 = 1.4e-6). A wrong element,
    /// row or conversion gives errors of the order of the terms themselves.
    /// </summary>
    private const float SumOrderTolerance = 1e-5f;

    public static TheoryData<DType> Types => new() { DType.F16, DType.BF16 };

    [Theory]
    [MemberData(nameof(Types))]
    public void ConversionIsExactForEveryLength(DType type)
    {
        var rng = new Random(1);
        for (int n = 0; n <= 256; n++)
        {
            var bits = new ushort[n];
            for (int i = 0; i < n; i++)
            {
                // Finite values of every exponent (NaN / Inf patterns excluded so equality is meaningful).
                do
                {
                    bits[i] = (ushort)rng.Next(65536);
                }
                while (!float.IsFinite(HalfMatrix.ToSingle(type, bits[i])));
            }
            var fast = new float[n];
            HalfMatrix.ToFloat32(type, bits, fast);
            for (int i = 0; i < n; i++)
            {
                float expected = type == DType.F16 ? (float)BitConverter.UInt16BitsToHalf(bits[i]) : BitConverter.UInt32BitsToSingle((uint)bits[i] << 16);
                Assert.Equal(BitConverter.SingleToUInt32Bits(expected), BitConverter.SingleToUInt32Bits(fast[i]));
            }
        }
    }

    [Fact]
    public void TheInRegisterHalfWideningIsExactForEveryBitPattern() =>
        ForEveryHalfBitPattern(HalfMatrix.WidenHalf, (bits, expected, widened) =>
        {
            if (float.IsNaN(expected))
            {
                Assert.True(float.IsNaN(widened), $"half 0x{bits:X4}: expected NaN, got {widened}");
            }
            else
            {
                Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(widened),
                    $"half 0x{bits:X4}: expected {expected}, got {widened}");
            }
        });

    /// <summary>
    /// The 4-operation widening of the decode rows is exact for every finite half (all 63488 of them, subnormals and
    /// both zeros included) and maps every infinity / NaN pattern to a finite magnitude of at least 2^16, which is what
    /// the row's fallback check relies on.
    /// </summary>
    [Fact]
    public void TheFiniteHalfWideningIsExactForEveryFiniteBitPatternAndFlagsTheRest() =>
        ForEveryHalfBitPattern(HalfMatrix.WidenHalfFinite, (bits, expected, widened) =>
        {
            if (float.IsFinite(expected))
            {
                Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(widened),
                    $"half 0x{bits:X4}: expected {expected}, got {widened}");
            }
            else
            {
                Assert.True(float.IsFinite(widened) && MathF.Abs(widened) >= 65536f, $"half 0x{bits:X4}: got {widened}");
            }
        });

    /// <summary>
    /// Widens all 65536 half bit patterns, a vector of lanes at a time, with <paramref name="widen"/> and calls
    /// <paramref name="check"/>(bits, the half's exact float value, the widened lane) for each.
    /// </summary>
    private static void ForEveryHalfBitPattern(Func<System.Numerics.Vector<uint>, System.Numerics.Vector<float>> widen, Action<int, float, float> check)
    {
        int vl = System.Numerics.Vector<uint>.Count;
        var lanes = new uint[vl];
        var widened = new float[vl];
        for (int b = 0; b < 65536; b += vl)
        {
            for (int i = 0; i < vl; i++)
            {
                lanes[i] = (uint)(b + i);
            }
            widen(new System.Numerics.Vector<uint>(lanes)).CopyTo(widened);
            for (int i = 0; i < vl; i++)
            {
                check(b + i, (float)BitConverter.UInt16BitsToHalf((ushort)(b + i)), widened[i]);
            }
        }
    }

    /// <summary>
    /// A decode row holding an infinity or NaN (anywhere: the vector part or the tail) gives what the scalar twin gives
    /// (infinity of the right sign, or NaN); the rows around it stay exact.
    /// </summary>
    [Fact]
    public void DecodeRowsWithInfinityOrNaNMatchTheScalarTwin()
    {
        var rng = new Random(11);
        foreach (int cols in new[] { 16, 37, 64, 100 })
        {
            foreach (ushort special in new ushort[] { 0x7C00, 0xFC00, 0x7E00, 0x7C01 })
            {
                const int rows = 4;
                var data = TestModels.Uniform(rng, rows * cols, 1f);
                var m = HalfMatrix.FromFloat32(DType.F16, data, rows, cols);
                var bits = m.Bits.ToArray();
                bits[1 * cols + rng.Next(cols)] = special; // row 1 holds the special value
                var x = new float[cols];
                for (int i = 0; i < cols; i++)
                {
                    x[i] = 0.25f + (float)rng.NextDouble(); // positive: an infinity stays an infinity
                }
                var bytes = GC.AllocateUninitializedArray<byte>(bits.Length * 2, pinned: true);
                System.Runtime.InteropServices.MemoryMarshal.AsBytes(bits.AsSpan()).CopyTo(bytes);
                var withSpecial = new HalfMatrix(DType.F16, WeightStorage.Pinned(bytes), 0, rows, cols);
                var y = new float[rows];
                withSpecial.MatVec(x, y);
                var expected = new float[rows];
                HalfMatrix.MatMulScalar(DType.F16, bits, rows, cols, x, expected, 1);
                for (int r = 0; r < rows; r++)
                {
                    if (float.IsNaN(expected[r]) || float.IsInfinity(expected[r]))
                    {
                        Assert.True(expected[r].Equals(y[r]), $"cols {cols}, special 0x{special:X4}, row {r}: {y[r]} vs scalar {expected[r]}");
                    }
                    else
                    {
                        Assert.True(float.IsFinite(y[r]) && MathF.Abs(y[r] - expected[r]) <= 1e-3f, $"cols {cols}, row {r}: {y[r]} vs scalar {expected[r]}");
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void ProductsMatchTheScalarTwinForEveryWidth(DType type)
    {
        var rng = new Random(2);
        for (int cols = 0; cols <= 256; cols++)
        {
            foreach (var (rows, tokens) in new[] { (7, 1), (9, 3), (9, 6) }) // 6 tokens: a 4-token AVX-512 tile, then 2
            {
                Check(type, rng, rows, cols, tokens);
            }
        }
    }

    /// <summary>
    /// Decode products on the AVX-512 unpack path, whose F16 kernel folds 2^112 into x: rows of subnormal halves (their
    /// scaled widening is a float32 subnormal) match the scalar twin, and so do activations of 2^15 and more, which
    /// switch the F16 product to the unscaled kernel (x times 2^112 would overflow).
    /// </summary>
    [Theory]
    [MemberData(nameof(Types))]
    public void DecodeWithSubnormalHalvesAndLargeActivationsMatchesTheScalarTwin(DType type)
    {
        var rng = new Random(5);
        const int rows = 6, cols = 96;
        var bits = new ushort[rows * cols];
        for (int i = 0; i < bits.Length; i++)
        {
            // F16: subnormals 0x0001..0x03FF of either sign; BF16: the same bits are float32 subnormals.
            bits[i] = (ushort)(rng.Next(1, 0x400) | (rng.Next(2) << 15));
        }
        var bytes = GC.AllocateUninitializedArray<byte>(bits.Length * 2, pinned: true);
        System.Runtime.InteropServices.MemoryMarshal.AsBytes(bits.AsSpan()).CopyTo(bytes);
        var m = new HalfMatrix(type, WeightStorage.Pinned(bytes), 0, rows, cols);
        foreach (float largest in new[] { 1f, 40000f })
        {
            var x = TestModels.Uniform(rng, cols, 1f);
            x[17] = largest;
            var expected = new float[rows];
            HalfMatrix.MatMulScalar(type, bits, rows, cols, x, expected, 1);
            var actual = new float[rows];
            m.MatVec(x, actual);
            for (int r = 0; r < rows; r++)
            {
                float magnitude = 0;
                for (int c = 0; c < cols; c++)
                {
                    magnitude += MathF.Abs(HalfMatrix.ToSingle(type, bits[r * cols + c]) * x[c]);
                }
                Assert.True(magnitude > 0 && MathF.Abs(expected[r] - actual[r]) <= SumOrderTolerance * magnitude,
                    $"{type}, largest |x| {largest}, row {r}: {actual[r]} vs scalar {expected[r]}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void LargeProductsRunInParallelPanelsAndMatchTheScalarTwin(DType type)
    {
        var rng = new Random(3);
        Check(type, rng, rows: 301, cols: 512, tokens: 1);
        Check(type, rng, rows: 301, cols: 512, tokens: 37);
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void ReadRowWidensTheStoredValues(DType type)
    {
        var data = TestModels.Uniform(new Random(4), 5 * 40, 3f);
        var m = HalfMatrix.FromFloat32(type, data, 5, 40);
        var row = new float[40];
        m.ReadRow(3, row);
        for (int c = 0; c < 40; c++)
        {
            Assert.Equal(HalfMatrix.ToSingle(type, m.Bits[3 * 40 + c]), row[c]);
            // The stored value is the nearest 16-bit float: within half a unit in the last place (2^-11 / 2^-8 relative).
            Assert.True(MathF.Abs(row[c] - data[3 * 40 + c]) <= MathF.Abs(data[3 * 40 + c]) * (type == DType.F16 ? 1f / 2048 : 1f / 256) + 1e-7f);
        }
    }

    [Fact]
    public void BadArgumentsAreRejectedWithClearMessages()
    {
        var storage = WeightStorage.Allocate(64);
        Assert.Contains("expected F16 or BF16", Assert.Throws<ArgumentException>(() => new HalfMatrix(DType.Q8_0, storage, 0, 1, 32)).Message);
        Assert.Contains("even offset", Assert.Throws<ArgumentException>(() => new HalfMatrix(DType.F16, storage, 1, 1, 8)).Message);
        Assert.Contains("needs 128 bytes", Assert.Throws<ArgumentException>(() => new HalfMatrix(DType.F16, storage, 0, 2, 32)).Message);
        var m = new HalfMatrix(DType.BF16, storage, 0, 2, 16);
        Assert.Throws<ArgumentException>(() => m.MatVec(new float[15], new float[2]));
        storage.Dispose();
        Assert.Throws<ObjectDisposedException>(() => m.MatVec(new float[16], new float[2]));
    }

    private static void Check(DType type, Random rng, int rows, int cols, int tokens)
    {
        var w = TestModels.Uniform(rng, rows * cols, 1f);
        var m = HalfMatrix.FromFloat32(type, w, rows, cols);
        var x = TestModels.Uniform(rng, tokens * cols, 1f);
        var expected = new float[tokens * rows];
        HalfMatrix.MatMulScalar(type, m.Bits, rows, cols, x, expected, tokens);
        var actual = new float[tokens * rows];
        if (tokens == 1)
        {
            m.MatVec(x, actual);
        }
        else
        {
            m.MatMul(x, actual, tokens);
        }
        for (int t = 0; t < tokens; t++)
        {
            for (int r = 0; r < rows; r++)
            {
                float magnitude = 0;
                for (int c = 0; c < cols; c++)
                {
                    magnitude += MathF.Abs(HalfMatrix.ToSingle(type, m.Bits[r * cols + c]) * x[t * cols + c]);
                }
                float diff = MathF.Abs(expected[t * rows + r] - actual[t * rows + r]);
                Assert.True(diff <= SumOrderTolerance * magnitude + 1e-30f,
                    $"{type} ({rows}, {cols}) x {tokens}: y[{t}, {r}] = {actual[t * rows + r]}, scalar {expected[t * rows + r]}");
            }
        }
    }
}
