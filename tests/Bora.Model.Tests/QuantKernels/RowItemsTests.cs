using Bora.Numerics;

namespace Bora.Model.Tests.QuantKernels;

/// <summary><see cref="RowItems"/>: the items cover the rows once, in order, on aligned boundaries, the last ones short.</summary>
[Trait("Category", "Kernels")]
public sealed class RowItemsTests
{
    [Fact]
    public void TheDocumentedExampleHolds()
    {
        Assert.Equal(14, RowItems.Count(8, 2));
        var bounds = Enumerable.Range(0, 15).Select(i => RowItems.Boundary(i, 8, 2, 256, 16)).ToArray();
        Assert.Equal([0, 32, 64, 96, 128, 160, 192, 192, 208, 208, 224, 224, 240, 240, 256], bounds);
    }

    [Theory]
    [InlineData(1, 1, 4096)]
    [InlineData(8, 2, 4096)]
    [InlineData(8, 2, 1024)]
    [InlineData(12, 3, 14336)]
    [InlineData(8, 2, 48)]
    [InlineData(3, 8, 40)]
    public void ItemsCoverEveryRowOnceOnAlignedBoundaries(int equal, int threads, int n)
    {
        int count = RowItems.Count(equal, threads);
        Assert.Equal(threads <= 1 || equal <= 1 ? equal : equal + Math.Min(threads, equal) * (RowItems.TailPieces - 1), count);
        Assert.Equal(0, RowItems.Boundary(0, equal, threads, n, 16));
        Assert.Equal(n, RowItems.Boundary(count, equal, threads, n, 16));
        int largestTail = 0;
        for (int i = 0; i < count; i++)
        {
            int r0 = RowItems.Boundary(i, equal, threads, n, 16), r1 = RowItems.Boundary(i + 1, equal, threads, n, 16);
            Assert.True(r0 <= r1, $"item {i}: {r0} > {r1}");
            Assert.True(r1 == n || r1 % 16 == 0, $"item {i} ends at {r1}");
            if (i >= count - Math.Min(threads, equal) * RowItems.TailPieces && count > equal)
            {
                largestTail = Math.Max(largestTail, r1 - r0);
            }
        }
        // A piece is a quarter item, up to the rounding to whole groups of 16.
        Assert.True(largestTail <= n / equal / RowItems.TailPieces + 16, $"a tail piece of {largestTail} rows");
    }

    [Fact]
    public void PiecesCutARangeInOrder()
    {
        var bounds = Enumerable.Range(0, RowItems.TailPieces + 1).Select(q => RowItems.Piece(q, 64, 320, 16)).ToArray();
        Assert.Equal([64, 128, 192, 256, 320], bounds);
    }
}
