using Bora.Numerics.Quant;

namespace Bora.Model.Tests.QuantKernels;

/// <summary>
/// <see cref="Q4KPacked"/>: the packed 16-row groups round-trip byte for byte, and its AVX-512 kernel and scalar twin
/// equal <see cref="Q4KInterleaved.RunScalar"/> over the GGUF rows bit for bit (random blocks: every scale / min bit
/// pattern, finite f16 scales including subnormals and zeros).
/// </summary>
[Trait("Category", "Kernels")]
public sealed class Q4KPackedTests
{
    private static readonly Q4KFormat Format = new();

    [Fact]
    public void GroupsAreTheFileBytes() =>
        Assert.Equal(16L * 144 * 56, Q4KPacked.GroupBytes(56));

    [Theory]
    [InlineData(1, 1)]
    [InlineData(15, 2)]
    [InlineData(16, 3)]
    [InlineData(17, 1)]
    [InlineData(67, 9)]
    public void PackThenUnpackGivesBackEveryRow(int rows, int nb) =>
        KPackedChecks.RoundTrip(Format, new Random(rows * 31 + nb), rows, nb);

    [Fact]
    public void RunAndScalarTwinEqualTheRowsScalarTwinBitForBit()
    {
        if (!KPackedChecks.Wide)
        {
            Console.WriteLine("AVX-512 not available: only the packed scalar twin is checked");
        }
        KPackedChecks.Sweep(Format, seed: 4);
    }

    [Fact]
    public void ExtremeQuantsAndScalesStayExact()
    {
        // All nibbles 15, all 6-bit scales and mins 63, activations at +-127 (quantized +-1): the int16 and int32
        // bounds of the kernel.
        var rng = new Random(7);
        const int rows = 16, nb = 2;
        var w = Format.RandomRows(rng, rows, nb);
        for (int blk = 0; blk < rows * nb; blk++)
        {
            w.AsSpan(blk * 144 + 4, 140).Fill(0xFF);
        }
        foreach (int tokens in new[] { 2, Q4KPacked.ExpandMinTokens })
        {
            var x = new float[tokens * 256 * nb];
            for (int i = 0; i < x.Length; i++)
            {
                x[i] = i / (256 * nb) % 2 == 0 ? 1f : -1f; // token by token all +127 or all -127
            }
            KPackedChecks.ProductsOf(Format, w, rows, nb, x, tokens);
        }
    }
}
