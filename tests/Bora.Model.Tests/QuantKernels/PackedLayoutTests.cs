using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Model.Tests.QuantKernels;

/// <summary>
/// The packed 16-row group layouts (<see cref="QuantizedMatrix.Pack"/>): packing loses nothing (every row's GGUF blocks
/// come back byte for byte), and products over the packed groups, for every token count (decode included) and at
/// every ISA (the AVX-512 kernels, managed and generated, the AVX2 ones, the scalar twin over the packed bytes), equal the rows-in-lanes scalar
/// twin over the unpacked GGUF rows bit for bit.
/// </summary>
[Trait("Category", "Kernels")]
public sealed unsafe class PackedLayoutTests
{
    public static TheoryData<DType> PackedTypes() => [.. new[] { DType.Q4_0, DType.Q8_0, DType.Q4_K, DType.Q6_K }.Where(QuantizedMatrix.CanPack)];

    /// <summary>Packed size over the file's: the RSS budget (file + KV cache + 5%) leaves room for a few per cent of padding.</summary>
    private const double MaxPackedOverhead = 0.03;

    private static readonly (int Rows, int Cols)[] Shapes = [(1, 32), (15, 64), (16, 96), (17, 160), (33, 288), (67, 128), (48, 1024)];

    private static int Cols(DType type, int cols) => type is DType.Q4_K or DType.Q6_K ? 256 * Math.Max(1, cols / 128) : cols;

    [Theory]
    [MemberData(nameof(PackedTypes))]
    public void PackingKeepsEveryRowsBlocks(DType type)
    {
        var rng = new Random(11 + (int)type);
        foreach (var (rows, cols0) in Shapes)
        {
            int cols = Cols(type, cols0);
            var q = QuantizedMatrix.Quantize(type, TestModels.Uniform(rng, rows * cols, 1f), rows, cols);
            var p = q.Pack();
            Assert.Equal(QuantLayout.Groups16, p.Layout);
            // The file's bytes per 16 rows, up to MaxPackedOverhead for alignment padding (Q6_K's 32 bytes per super-block).
            long file = (rows + 15) / 16 * 16L * q.RowBytes;
            Assert.InRange(p.StoredBytes, file, (long)(file * (1 + MaxPackedOverhead)));
            var got = new byte[q.RowBytes];
            var a = new float[cols];
            var b = new float[cols];
            for (int r = 0; r < rows; r++)
            {
                p.CopyRowBlocks(r, got);
                Assert.True(q.Blocks.Slice(r * q.RowBytes, q.RowBytes).SequenceEqual(got), $"{type} ({rows}, {cols}) row {r}: blocks differ after packing");
                q.ReadRow(r, a);
                p.ReadRow(r, b);
                Assert.Equal(a, b);
            }
            Assert.Equal(q.Dequantize(), p.Dequantize());
            Assert.Throws<InvalidOperationException>(() => p.Blocks.Length);
            Assert.Same(p, p.Pack());
        }
    }

    [Theory]
    [MemberData(nameof(PackedTypes))]
    public void PackedProductsEqualTheRowsInLanesScalarTwinBitForBit(DType type)
    {
        var rng = new Random(23 + (int)type);
        var isas = new List<QuantIsa> { QuantIsa.Scalar };
        if (QuantDot.IsSupported(QuantIsa.Avx2) && QuantDot.Best != QuantIsa.Avx2)
        {
            isas.Add(QuantIsa.Avx2); // the AVX2 kernels also where AVX-512 is the best
        }
        if (QuantDot.Best != QuantIsa.Scalar)
        {
            isas.Add(QuantDot.Best);
        }
        foreach (var (rows, cols0) in Shapes)
        {
            int cols = Cols(type, cols0);
            var q = QuantizedMatrix.Quantize(type, TestModels.Uniform(rng, rows * cols, 1f), rows, cols);
            var p = q.Pack();
            foreach (int tokens in new[] { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 20, 33 })
            {
                var x = TestModels.Uniform(rng, tokens * cols, 2f);
                var expected = RowsInLanesScalar(q, x, tokens);
                foreach (var isa in isas)
                {
                    // At AVX-512: the managed kernels, then the generated VNNI ones where this machine runs them.
                    foreach (bool generated in isa == QuantIsa.Avx512 && QuantDispatch.GeneratedKernelsSupported ? new[] { false, true } : [false])
                    {
                        var y = new float[tokens * rows];
                        using (GeneratedKernelsSwitch.Set(generated))
                        {
                            p.MatMul(x, y, tokens, isa);
                        }
                        for (int i = 0; i < y.Length; i++)
                        {
                            Assert.True(BitConverter.SingleToInt32Bits(y[i]) == BitConverter.SingleToInt32Bits(expected[i]),
                                $"{type} ({rows}, {cols}) x {tokens} at {isa}{(generated ? " (generated)" : "")}: output {i} (token {i / rows}, row {i % rows}) {y[i]} vs scalar twin {expected[i]}");
                        }
                    }
                }
            }
        }
    }

    /// <summary>The packed product on many threads equals the one on a single thread (row ranges are whole groups).</summary>
    [Theory]
    [MemberData(nameof(PackedTypes))]
    public void PackedProductsDoNotDependOnTheThreadCount(DType type)
    {
        var rng = new Random(5);
        int rows = 16 * 40 + 7, cols = Cols(type, 512), tokens = 3;
        var p = QuantizedMatrix.Quantize(type, TestModels.Uniform(rng, rows * cols, 1f), rows, cols).Pack();
        var x = TestModels.Uniform(rng, tokens * cols, 2f);
        int saved = QuantizedMatrix.MaxThreads;
        try
        {
            QuantizedMatrix.MaxThreads = 1;
            var one = new float[tokens * rows];
            p.MatMul(x, one, tokens);
            QuantizedMatrix.MaxThreads = 4;
            var four = new float[tokens * rows];
            p.MatMul(x, four, tokens);
            Assert.Equal(one, four);
        }
        finally
        {
            QuantizedMatrix.MaxThreads = saved;
        }
    }

    /// <summary>The existing per-product rows-in-lanes scalar twin of the format over the GGUF rows.</summary>
    private static float[] RowsInLanesScalar(QuantizedMatrix q, float[] x, int tokens)
    {
        int rows = q.Rows, cols = q.Cols;
        var act = new Q8Activations();
        act.Quantize(x, tokens, cols, QuantizedMatrix.ActivationBlock(q.Type));
        var expected = new float[tokens * rows];
        fixed (byte* w = q.Blocks)
        fixed (float* pe = expected)
        {
            switch (q.Type)
            {
                case DType.Q4_0: Q4_0Interleaved.RunScalar(w, q.RowBytes, q.BlocksPerRow, rows, act, tokens, pe, 0, rows); break;
                case DType.Q8_0: Q8_0Interleaved.RunScalar(w, q.RowBytes, q.BlocksPerRow, rows, act, tokens, pe, 0, rows); break;
                case DType.Q4_K: Q4KInterleaved.RunScalar(w, q.RowBytes, q.BlocksPerRow, rows, act, tokens, pe, 0, rows); break;
                default: Q6KInterleaved.RunScalar(w, q.RowBytes, q.BlocksPerRow, rows, act, tokens, pe, 0, rows); break;
            }
        }
        return expected;
    }

    /// <summary>
    /// The packed Q4_0 / Q8_0 kernels widen block scales as finite halves (Packed256.BlockScales), so packing refuses a
    /// scale that is an infinity or a NaN, naming its row and block; every finite half passes (largest, subnormal, -0),
    /// and the formats whose kernels widen exactly (Q4_K, Q6_K) are not checked.
    /// </summary>
    [Theory]
    [InlineData(DType.Q4_0, 18)]
    [InlineData(DType.Q8_0, 34)]
    public void PackingRefusesNonFiniteBlockScalesAndNamesTheirRowAndBlock(DType type, int blockBytes)
    {
        const int Rows = 3, Blocks = 4;
        var bytes = new byte[Rows * Blocks * blockBytes];
        ushort[] finite = [0x0000, 0x8000, 0x0001, 0x83FF, 0x3C00, 0x7BFF, 0xFBFF];
        fixed (byte* p = bytes)
        {
            for (int i = 0; i < Rows * Blocks; i++)
            {
                *(ushort*)(p + i * blockBytes) = finite[i % finite.Length];
            }
            PackedLayouts.CheckBlockScales(type, p, Blocks * blockBytes, Blocks, Rows, row0: 32);
            foreach (ushort bad in new ushort[] { 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFFFF })
            {
                int at = 2 * Blocks + 3; // row 2, block 3
                ushort kept = *(ushort*)(p + at * blockBytes);
                *(ushort*)(p + at * blockBytes) = bad;
                nint at0 = (nint)p;
                var ex = Assert.Throws<InvalidDataException>(() => PackedLayouts.CheckBlockScales(type, (byte*)at0, Blocks * blockBytes, Blocks, Rows, row0: 32));
                Assert.StartsWith($"row 34, block 3 has the scale 0x{bad:X4} (", ex.Message);
                Assert.EndsWith($"every {type} block scale must be a finite half", ex.Message);
                PackedLayouts.CheckBlockScales(DType.Q4_K, p, Blocks * blockBytes, 1, 1, row0: 0);
                *(ushort*)(p + at * blockBytes) = kept;
            }
        }
    }
}
