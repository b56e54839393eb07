namespace Bora.Training.Tests;

[Trait("Category", "Kernels")]
public class GemmTests
{
    /// <summary>Float32 sums of up to ~70 products of values in ±1 against a double reference: a few ulps of the sum.</summary>
    private const float Float32SumTolerance = 2e-5f;

    [Fact]
    public void Matches_scalar_twin_across_shapes_and_tails()
    {
        var rng = new Random(5);
        int[] sizes = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 65, 70];
        foreach (int m in new[] { 1, 3, 4, 5, 17, 33 })
        {
            foreach (int n in new[] { 1, 2, 3, 65, 130 })
            {
                foreach (int k in sizes)
                {
                    var a = Rand(rng, m * k);
                    var b = Rand(rng, n * k);
                    var c0 = Rand(rng, m * n);
                    var c1 = (float[])c0.Clone();
                    bool acc = (m + n + k) % 2 == 0;
                    Gemm.ABt(a, 0, b, 0, c0, 0, m, n, k, acc, maxThreads: 2);
                    ScalarGemm.ABt(a, b, c1, m, n, k, acc);
                    for (int i = 0; i < c0.Length; i++)
                    {
                        Assert.True(Math.Abs(c0[i] - c1[i]) <= Float32SumTolerance, $"M {m} N {n} K {k} index {i}: {c0[i]} vs {c1[i]}");
                    }
                }
            }
        }
    }

    [Fact]
    public void Result_does_not_depend_on_thread_count()
    {
        var rng = new Random(6);
        int m = 130, n = 200, k = 77;
        var a = Rand(rng, m * k);
        var b = Rand(rng, n * k);
        var c1 = new float[m * n];
        var c4 = new float[m * n];
        Gemm.ABt(a, 0, b, 0, c1, 0, m, n, k, false, maxThreads: 1);
        Gemm.ABt(a, 0, b, 0, c4, 0, m, n, k, false, maxThreads: 4);
        Assert.Equal(c1, c4);
    }

    [Fact]
    public void Worked_example()
    {
        var c = new float[2];
        Gemm.ABt([1f, 2f], 0, [3f, 4f, 5f, 6f], 0, c, 0, 1, 2, 2, false, 1);
        Assert.Equal([11f, 17f], c);
    }

    private static float[] Rand(Random rng, int n) => [.. Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1))];
}
