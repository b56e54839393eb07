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
        foreach (int tokens in new[] { 2, Q6KPacked.ExpandMinTokens })
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
