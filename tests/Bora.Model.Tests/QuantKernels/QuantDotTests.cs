using System.Buffers.Binary;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Model.Tests.QuantKernels;

/// <summary>
/// The integer dot-product kernels of every supported ISA against their scalar twins, and the activation
/// quantizer against its scalar twin. Run with DOTNET_EnableAVX2=0 / DOTNET_EnableHWIntrinsic=0 too
/// (tests/Bora.Model.Tests/QuantKernels/run-isa-matrix.sh) so the narrower paths are the process's best.
/// </summary>
[Trait("Category", "Kernels")]
public sealed unsafe class QuantDotTests
{
    /// <summary>
    /// Relative tolerance (of sum |block contribution|) for float results when block scales are arbitrary:
    /// the ISAs add the same exact integer block sums times the same float scales in different orders; with
    /// at most 128 blocks the float rounding is below 128 * 2^-24 = 7.6e-6 of that sum.
    /// </summary>
    private const float FloatOrderTolerance = 1e-5f;

    public static TheoryData<DType> Types => [DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q6_K];

    private static IEnumerable<QuantIsa> Isas => Enum.GetValues<QuantIsa>().Where(QuantDot.IsSupported);

    [Fact]
    public void BestIsaIsSupportedAndScalarAlwaysIs()
    {
        Assert.True(QuantDot.IsSupported(QuantDot.Best));
        Assert.True(QuantDot.IsSupported(QuantIsa.Scalar));
        Console.WriteLine($"QuantDot.Best = {QuantDot.Best}; supported: {string.Join(", ", Isas)}");
    }

    [Fact]
    public void FastHalfConversionMatchesSystemHalfForEveryFiniteValue()
    {
        byte* p = stackalloc byte[2];
        for (int bits = 0; bits < 65536; bits++)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(new Span<byte>(p, 2), (ushort)bits);
            float expected = QuantDot.HalfScalar(p);
            if (!float.IsFinite(expected))
            {
                continue;
            }
            float actual = QuantDot.Half(p);
            Assert.True(BitConverter.SingleToInt32Bits(expected) == BitConverter.SingleToInt32Bits(actual), $"half 0x{bits:X4}: {expected} vs {actual}");
        }
    }

    /// <summary>
    /// The vector conversions of weight scales (<see cref="QuantGemm.Halves"/>, <see cref="QuantGemm.Halves512"/>,
    /// <see cref="Packed256.Halves(byte*)"/>, <see cref="Packed256.BlockScales"/>) against
    /// <see cref="QuantDot.HalfScalar"/> for every finite half: in runs of 16 consecutive bit patterns, and each value
    /// among 15 subnormals.
    /// </summary>
    [Fact]
    public void VectorHalfConversionsMatchSystemHalfForEveryFiniteValue()
    {
        short* h = stackalloc short[16];
        float* expected = stackalloc float[16];
        float* actual = stackalloc float[16];
        for (int pass = 0; pass < 2; pass++)
        {
            for (int bits = 0; bits < 65536; bits += pass == 0 ? 16 : 1)
            {
                for (int i = 0; i < 16; i++)
                {
                    h[i] = (short)(pass == 0 ? bits + i : i == bits % 16 ? bits : 0x8001 + i);
                    expected[i] = QuantDot.HalfScalar((byte*)(h + i));
                }
                void Check(string what)
                {
                    for (int i = 0; i < 16; i++)
                    {
                        if (float.IsFinite(expected[i]))
                        {
                            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]),
                                $"{what}: half 0x{(ushort)h[i]:X4}: {expected[i]} vs {actual[i]}");
                        }
                    }
                }
                if (Avx2.IsSupported)
                {
                    QuantGemm.Halves(Avx2.ConvertToVector256Int32(h)).Store(actual);
                    QuantGemm.Halves(Avx2.ConvertToVector256Int32(h + 8)).Store(actual + 8);
                    Check("QuantGemm.Halves");
                    Packed256.Halves((byte*)h).Store(actual);
                    Packed256.Halves((byte*)(h + 8)).Store(actual + 8);
                    Check("Packed256.Halves");
                    Packed256.BlockScales((byte*)h).Store(actual);
                    Packed256.BlockScales((byte*)(h + 8)).Store(actual + 8);
                    Check("Packed256.BlockScales");
                }
                if (Avx512F.IsSupported)
                {
                    Q4_0Packed.Halves(Vector256.Load(h)).Store(actual);
                    Check("Q4_0Packed.Halves (QuantGemm.Halves512)");
                }
            }
        }
    }

    [Theory]
    [InlineData(32)]
    [InlineData(256)]
    public void ActivationQuantizerMatchesScalarTwinBitForBit(int block)
    {
        var rng = new Random(block);
        for (int blocks = 0; blocks <= (block == 32 ? 20 : 3); blocks++)
        {
            int k = blocks * block;
            foreach (int tokens in new[] { 1, 3 })
            {
                var x = TestModels.Uniform(rng, tokens * k, 3f);
                if (k > 0)
                {
                    x.AsSpan(0, block).Clear(); // an all-zero block: d = 0, q = 0
                    x[^1] = 2.5f * (x.Length > 1 ? 1 : -1); // exercise ties
                }
                var fast = new Q8Activations();
                var slow = new Q8Activations();
                fast.Quantize(x, tokens, k, block);
                slow.QuantizeScalar(x, tokens, k, block);
                Assert.True(fast.Quants.SequenceEqual(slow.Quants), $"quants differ at K = {k}");
                Assert.True(fast.Scales.SequenceEqual(slow.Scales), $"scales differ at K = {k}");
                Assert.True(fast.Sums16.SequenceEqual(slow.Sums16), $"sums differ at K = {k}");
                // Independent check: every value is within half a step of its input, q in [-127, 127], sums add up.
                for (int i = 0; i < x.Length; i++)
                {
                    float d = slow.Scales[i / block];
                    int q = slow.Quants[i];
                    Assert.InRange(q, -127, 127);
                    Assert.True(MathF.Abs(q * d - x[i]) <= d * 0.5f * (1 + 1e-5f) + 1e-30f, $"x[{i}] = {x[i]} quantized to {q} * {d}");
                }
                for (int g = 0; g < x.Length / 16; g++)
                {
                    int s = 0;
                    for (int i = 16 * g; i < 16 * g + 16; i++)
                    {
                        s += slow.Quants[i];
                    }
                    Assert.Equal(s, slow.Sums16[g]);
                }
            }
        }
    }

    /// <summary>
    /// Unit scales and small integer ranges keep every partial sum an integer below 2^24, so every ISA's float
    /// result must equal the exact integer dot product (computed here in long) bit for bit, over 0..32 blocks
    /// of 32 or 0..4 blocks of 256 (all tails of the 512-bit two-block steps).
    /// </summary>
    [Theory]
    [MemberData(nameof(Types))]
    public void EveryIsaGivesTheExactIntegerDotProductWithUnitScales(DType type)
    {
        var rng = new Random((int)type + 7);
        int be = DTypeInfo.BlockElements(type);
        int act = QuantizedMatrix.ActivationBlock(type);
        for (int nb = 0; nb <= 1024 / be; nb++)
        {
            int k = nb * be;
            var w = RandomBlocks(type, nb, rng, unitScales: true);
            var x = new float[k];
            for (int i = 0; i < k; i++)
            {
                x[i] = i % act == 0 ? (rng.Next(2) == 0 ? 127 : -127) : rng.Next(-127, 128);
            }
            var a = new Q8Activations();
            a.Quantize(x, 1, k, act);
            Assert.True(a.Scales.ToArray().All(d => d == 1f));
            var dense = new float[k];
            BlockDequantizer.ToFloat32(type, w, dense);
            long exact = 0;
            for (int i = 0; i < k; i++)
            {
                exact += (long)dense[i] * (long)x[i]; // unit scales: dequantized weights are integers
            }
            foreach (var isa in Isas)
            {
                float got = Dot(type, isa, w, a, nb);
                Assert.True(got == exact, $"{type} {isa} K = {k}: {got} vs exact {exact}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void EveryIsaAgreesWithScalarTwinWithRandomScales(DType type)
    {
        var rng = new Random((int)type + 11);
        int be = DTypeInfo.BlockElements(type);
        int act = QuantizedMatrix.ActivationBlock(type);
        foreach (int nb in Enumerable.Range(0, 1024 / be + 1).Concat([4096 / be]))
        {
            int k = nb * be;
            var w = RandomBlocks(type, nb, rng, unitScales: false);
            var a = new Q8Activations();
            a.Quantize(TestModels.Uniform(rng, k, 2f), 1, k, act);
            float expected = Dot(type, QuantIsa.Scalar, w, a, nb);
            float magnitude = SumAbsBlocks(type, w, a, nb);
            foreach (var isa in Isas)
            {
                float got = Dot(type, isa, w, a, nb);
                Assert.True(MathF.Abs(got - expected) <= FloatOrderTolerance * magnitude + 1e-30f,
                    $"{type} {isa} K = {k}: {got} vs scalar {expected} (sum |block| {magnitude})");
            }
        }
    }

    /// <summary>Random blocks; with unit scales every f16 scale is 1 and the integer scales are small (see the exact test).</summary>
    internal static byte[] RandomBlocks(DType type, int blocks, Random rng, bool unitScales)
    {
        int bb = DTypeInfo.BlockBytes(type);
        var w = new byte[blocks * bb];
        rng.NextBytes(w);
        ushort one = BitConverter.HalfToUInt16Bits((Half)1f);
        for (int b = 0; b < blocks; b++)
        {
            var blk = w.AsSpan(b * bb, bb);
            ushort Scale() => unitScales ? one : BitConverter.HalfToUInt16Bits((Half)(0.001f + 0.1f * rng.NextSingle()));
            switch (type)
            {
                case DType.Q8_0:
                case DType.Q4_0:
                    BinaryPrimitives.WriteUInt16LittleEndian(blk, Scale());
                    break;
                case DType.Q4_K:
                    BinaryPrimitives.WriteUInt16LittleEndian(blk, Scale());
                    BinaryPrimitives.WriteUInt16LittleEndian(blk[2..], Scale());
                    if (unitScales)
                    {
                        // Every packed byte in 0..3 makes every 6-bit scale and min 0..3.
                        for (int i = 4; i < 16; i++)
                        {
                            blk[i] &= 3;
                        }
                    }
                    break;
                case DType.Q6_K:
                    BinaryPrimitives.WriteUInt16LittleEndian(blk[208..], Scale());
                    if (unitScales)
                    {
                        for (int i = 192; i < 208; i++)
                        {
                            blk[i] = (byte)(sbyte)rng.Next(-4, 5);
                        }
                    }
                    break;
            }
        }
        return w;
    }

    /// <summary>
    /// Prefill-sized batches (at least 2^16 values) are quantized in block ranges on the worker pool: the result equals
    /// the scalar reference exactly for 1, 2 and 3 threads (ranges that do not divide the block count evenly).
    /// </summary>
    [Theory]
    [InlineData(32)]
    [InlineData(256)]
    public void LargeBatchesQuantizedInParallelEqualTheScalarReference(int block)
    {
        var rng = new Random(40 + block);
        const int tokens = 37, k = 2048; // 75776 values
        var x = TestModels.Uniform(rng, tokens * k, 3f);
        var slow = new Q8Activations();
        slow.QuantizeScalar(x, tokens, k, block);
        int saved = NumericsThreads.MaxThreads;
        try
        {
            foreach (int threads in new[] { 1, 2, 3 })
            {
                NumericsThreads.MaxThreads = threads;
                var fast = new Q8Activations();
                fast.Quantize(x, tokens, k, block);
                Assert.True(fast.Quants.SequenceEqual(slow.Quants), $"{threads} threads: quants differ");
                Assert.True(fast.Scales.SequenceEqual(slow.Scales), $"{threads} threads: scales differ");
                Assert.True(fast.Sums16.SequenceEqual(slow.Sums16), $"{threads} threads: sums differ");
                Assert.True(fast.ScaledSums.SequenceEqual(slow.ScaledSums), $"{threads} threads: scaled sums differ");
            }
        }
        finally
        {
            NumericsThreads.MaxThreads = saved;
        }
    }

    internal static float Dot(DType type, QuantIsa isa, byte[] w, Q8Activations a, int blocks)
    {
        fixed (byte* pw = w)
        {
            var row = a.Row(0);
            return type switch
            {
                DType.Q8_0 => QuantDot.Dot<Q8_0Dot>(isa, pw, row, blocks),
                DType.Q4_0 => QuantDot.Dot<Q4_0Dot>(isa, pw, row, blocks),
                DType.Q4_K => QuantDot.Dot<Q4KDot>(isa, pw, row, blocks),
                _ => QuantDot.Dot<Q6KDot>(isa, pw, row, blocks),
            };
        }
    }

    private static float SumAbsBlocks(DType type, byte[] w, Q8Activations a, int blocks)
    {
        float s = 0;
        fixed (byte* pw = w)
        {
            var row = a.Row(0);
            for (int b = 0; b < blocks; b++)
            {
                s += MathF.Abs(type switch
                {
                    DType.Q8_0 => Q8_0Dot.Scalar(pw, row, b),
                    DType.Q4_0 => Q4_0Dot.Scalar(pw, row, b),
                    DType.Q4_K => Q4KDot.Scalar(pw, row, b),
                    _ => Q6KDot.Scalar(pw, row, b),
                });
            }
        }
        return s;
    }
}
