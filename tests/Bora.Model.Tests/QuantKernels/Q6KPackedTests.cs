using Bora.Numerics.Quant;

namespace Bora.Model.Tests.QuantKernels;

/// <summary>
/// <see cref="Q6KPacked"/>: the packed 16-row groups round-trip byte for byte, and its AVX-512 kernel (direct tiles
/// below <see cref="Q6KPacked.ExpandMinTokens"/> tokens, expanded groups from there on) and scalar twin equal
/// <see cref="Q6KInterleaved.RunScalar"/> over the GGUF rows bit for bit (random blocks: every int8 scale including
/// -128, every 6-bit quant, finite f16 scales including subnormals and zeros).
/// </summary>
[Trait("Category", "Kernels")]
public sealed class Q6KPackedTests
{
    /// <summary>The padding the layout may add over the file's bytes (the brief's bound).</summary>
    private const double MaxGrowth = 0.03;

    private static readonly Q6KFormat Format = new();

    [Fact]
    public void GroupsStayWithinThreePercentOfTheFileBytes()
    {
        long file = 16L * 210 * 56;
        long packed = Q6KPacked.GroupBytes(56);
        Assert.InRange(packed, file, (long)(file * (1 + MaxGrowth)));
        Assert.Equal(0, Q6KPacked.GroupBytes(1) % 64); // every super-block keeps its vectors 64-byte aligned
    }

    /// <summary>The 48 quant vectors fill [320, 3392) once each, and the layout's worked example holds.</summary>
    [Fact]
    public void QuantVectorsTileTheSuperBlockInReadingOrder()
    {
        var offsets = Enumerable.Range(0, 32).Select(Q6KPacked.LowVectorOffset)
            .Concat(Enumerable.Range(0, 16).Select(Q6KPacked.HighVectorOffset)).Order().ToArray();
        Assert.Equal(Enumerable.Range(0, 48).Select(v => 320 + 64 * v), offsets);
        Assert.Equal(320 + 30 * 64, Q6KPacked.LowVectorOffset(18)); // the summary's example: ql vector 18, the 30th
        Assert.Equal(320 + 32 * 64, Q6KPacked.HighVectorOffset(10)); // qh vector 10, the 32nd
        // (h, p) = (0, 1), i = 2: ql vectors 6 and 14, then qh vector 6, one after the other.
        Assert.Equal([320 + 64 * 18, 320 + 64 * 19, 320 + 64 * 20], new[] { Q6KPacked.LowVectorOffset(6), Q6KPacked.LowVectorOffset(14), Q6KPacked.HighVectorOffset(6) });
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(15, 2)]
    [InlineData(16, 3)]
    [InlineData(17, 1)]
    [InlineData(67, 9)]
    public void PackThenUnpackGivesBackEveryRow(int rows, int nb) =>
        KPackedChecks.RoundTrip(Format, new Random(rows * 37 + nb), rows, nb);

    [Fact]
    public void RunAndScalarTwinEqualTheRowsScalarTwinBitForBit()
    {
        if (!KPackedChecks.Wide)
        {
            Console.WriteLine("AVX-512 not available: only the packed scalar twin is checked");
        }
        KPackedChecks.Sweep(Format, seed: 6);
    }

    /// <summary>
    /// The generated tiles have two forms, the qh bits moved by GFNI's vgf2p8affineqb or by shifts and masks (CPUs with
    /// VNNI but no GFNI); the sweep runs whichever this CPU takes, this runs the other one too, at every tile width
    /// (1, 2: one pass; 3, 4: two passes) and with a short last tile.
    /// </summary>
    [Fact]
    public void GeneratedTilesWithAndWithoutGfniEqualTheScalarTwins()
    {
        if (!QuantDispatch.GeneratedKernelsSupported)
        {
            Console.WriteLine("no generated kernels on this machine: the 1-token tile is not checked");
            return;
        }
        bool before = Q6KVnni.UseGfni;
        try
        {
            foreach (bool gfni in Q6KVnni.HasGfni ? new[] { true, false } : [false])
            {
                Q6KVnni.UseGfni = gfni;
                var rng = new Random(gfni ? 61 : 62);
                foreach (var (rows, nb) in new[] { (1, 1), (16, 1), (17, 2), (48, 3), (67, 9) })
                {
                    foreach (int tokens in new[] { 1, 2, 3, 4, 7 })
                    {
                        KPackedChecks.Products(Format, rng, rows, nb, tokens);
                    }
                    KPackedChecks.Products(Format, rng, rows, nb, tokens: 1, r0: 16, r1: rows);
                }
                ExtremeQuantsAndScalesStayExact(0x00, 1f);
                ExtremeQuantsAndScalesStayExact(0xFF, 1f);
                ExtremeQuantsAndScalesStayExact(0x80, -1f);
            }
        }
        finally
        {
            Q6KVnni.UseGfni = before;
        }
    }

    [Theory]
    [InlineData(0x00, 1f)] // u = 0 (q = -32), scales 0
    [InlineData(0xFF, 1f)] // u = 63 (q = 31), scales -1
    [InlineData(0x80, -1f)] // scales -128
    public void ExtremeQuantsAndScalesStayExact(byte fill, float sign)
    {
        var rng = new Random(fill);
        const int rows = 16, nb = 2;
        var w = Format.RandomRows(rng, rows, nb);
        for (int blk = 0; blk < rows * nb; blk++)
        {
            w.AsSpan(blk * 210, 208).Fill(fill);
        }
        foreach (int tokens in new[] { 1, 2, Q6KPacked.ExpandMinTokens })
        {
            var x = new float[tokens * 256 * nb];
            for (int i = 0; i < x.Length; i++)
            {
                x[i] = i / (256 * nb) % 2 == 0 ? sign : -sign; // token by token all +127 or all -127
            }
            KPackedChecks.ProductsOf(Format, w, rows, nb, x, tokens);
        }
    }
}
