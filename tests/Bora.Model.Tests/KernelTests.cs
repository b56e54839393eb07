using Bora.Numerics;

namespace Bora.Model.Tests;

[Trait("Category", "Kernels")]
public class KernelTests
{
    /// <summary>float32 vectorised vs double/sequential scalar: a few ulps of O(1) values over sums of up to 256 terms.</summary>
    private const float KernelTolerance = 2e-5f;

    /// <summary>MatMul over K up to 300 terms of O(1) products (sums reach ~10): float32 reassociation error.</summary>
    private const float MatMulTolerance = 1e-4f;

    /// <summary>Table-driven float32 angles vs double angles at positions up to 5000 (angle error ~ pos * 2^-24 ~ 3e-4).</summary>
    private const float RopeTolerance = 1e-3f;

    private static float[] Rand(Random rng, int n, float scale = 1f) => TestModels.Uniform(rng, n, scale);

    [Fact]
    public void RmsNorm_matches_scalar_for_lengths_0_to_256()
    {
        var rng = new Random(1);
        for (int n = 0; n <= 256; n++)
        {
            var x = Rand(rng, n, 3f);
            var w = Rand(rng, n);
            var fast = new float[n];
            var slow = new float[n];
            Kernels.RmsNorm(x, w, 1e-5f, fast);
            ScalarKernels.RmsNorm(x, w, 1e-5f, slow);
            TestModels.AssertClose(slow, fast, KernelTolerance, $"n={n}");
            Kernels.RmsNorm(x, w, 1e-5f, x); // in place gives the same
            TestModels.AssertClose(fast, x, 0f, $"in place n={n}");
        }
    }

    [Fact]
    public void Softmax_matches_scalar_and_sums_to_one()
    {
        var rng = new Random(2);
        for (int n = 0; n <= 256; n++)
        {
            var fast = Rand(rng, n, 30f); // large logits: exercises max subtraction
            var slow = (float[])fast.Clone();
            Kernels.Softmax(fast);
            ScalarKernels.Softmax(slow);
            TestModels.AssertClose(slow, fast, KernelTolerance, $"n={n}");
            if (n > 0)
            {
                Assert.InRange(fast.Sum(), 1 - KernelTolerance * 4, 1 + KernelTolerance * 4);
            }
        }
    }

    [Fact]
    public void SiluMul_matches_scalar()
    {
        var rng = new Random(3);
        for (int n = 0; n <= 256; n++)
        {
            var gate = Rand(rng, n, 8f);
            var up = Rand(rng, n, 2f);
            var slow = (float[])gate.Clone();
            Kernels.SiluMul(gate, up);
            ScalarKernels.SiluMul(slow, up);
            TestModels.AssertClose(slow, gate, KernelTolerance * 8, $"n={n}"); // values up to 16
        }
    }

    [Fact]
    public void Dot_and_axpy_match_scalar()
    {
        var rng = new Random(4);
        for (int n = 0; n <= 256; n++)
        {
            var a = Rand(rng, n);
            var b = Rand(rng, n);
            Assert.InRange(Kernels.Dot(a, b) - ScalarKernels.Dot(a, b), -KernelTolerance * 4, KernelTolerance * 4);
            var y1 = Rand(rng, n);
            var y2 = (float[])y1.Clone();
            Kernels.Axpy(0.7f, a, y1);
            ScalarKernels.Axpy(0.7f, a, y2);
            TestModels.AssertClose(y2, y1, KernelTolerance, $"axpy n={n}");
        }
    }

    [Fact]
    public void Rope_matches_scalar_for_even_lengths_and_many_positions()
    {
        var rng = new Random(5);
        foreach (int pos in new[] { 0, 1, 7, 100, 4999 })
        {
            for (int n = 2; n <= 256; n += 2)
            {
                var table = new RopeTable(n, 10000f);
                var cos = new float[n];
                var sin = new float[n];
                table.Fill(pos, cos, sin);
                var fast = Rand(rng, n);
                var slow = (float[])fast.Clone();
                Kernels.Rope(fast, cos, sin);
                ScalarKernels.Rope(slow, pos, 10000f);
                TestModels.AssertClose(slow, fast, RopeTolerance, $"pos={pos} n={n}");
            }
        }
        Kernels.Rope(Span<float>.Empty, [], []);
    }

    [Fact]
    public void Rope_rotates_the_worked_example()
    {
        // Dh = 4, theta = 10000, position 3: pair 0 turns by 3 rad, pair 1 by 0.03 rad.
        var table = new RopeTable(4, 10000f);
        var cos = new float[4];
        var sin = new float[4];
        table.Fill(3, cos, sin);
        float[] x = [1, 0, 0, 1];
        Kernels.Rope(x, cos, sin);
        float[] expected = [MathF.Cos(3), MathF.Sin(3), -MathF.Sin(0.03f), MathF.Cos(0.03f)];
        TestModels.AssertClose(expected, x, 1e-6f, "rope example");
    }

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(7, 5, 3)]
    [InlineData(33, 17, 1)]
    [InlineData(64, 64, 16)]
    [InlineData(300, 257, 7)]  // big enough to take the parallel path
    [InlineData(130, 9, 37)]   // more tokens than a tile
    [InlineData(0, 8, 2)]
    [InlineData(8, 8, 0)]
    public void MatMul_matches_scalar_twin(int rows, int cols, int tokens)
    {
        var rng = new Random(rows * 1000 + cols * 10 + tokens);
        var w = Rand(rng, rows * cols);
        var x = Rand(rng, tokens * cols);
        var m = new F32Matrix(w, rows, cols);
        var fast = new float[tokens * rows];
        var slow = new float[tokens * rows];
        m.MatMul(x, fast, tokens);
        F32Matrix.MatMulScalar(w, rows, cols, x, slow, tokens);
        TestModels.AssertClose(slow, fast, MatMulTolerance, "MatMul");
        for (int t = 0; t < tokens; t++)
        {
            var y = new float[rows];
            m.MatVec(x.AsSpan(t * cols, cols), y);
            TestModels.AssertClose(slow.AsSpan(t * rows, rows), y, MatMulTolerance, $"MatVec token {t}");
        }
    }

    [Fact]
    public void MatMul_sweeps_inner_lengths_0_to_256()
    {
        var rng = new Random(9);
        for (int k = 0; k <= 256; k++)
        {
            var w = Rand(rng, 6 * k);
            var x = Rand(rng, 3 * k);
            var fast = new float[3 * 6];
            var slow = new float[3 * 6];
            new F32Matrix(w, 6, k).MatMul(x, fast, 3);
            F32Matrix.MatMulScalar(w, 6, k, x, slow, 3);
            TestModels.AssertClose(slow, fast, MatMulTolerance, $"k={k}");
        }
    }

    [Fact]
    public void Matrix_checks_operand_sizes()
    {
        var m = new F32Matrix(new float[6], 2, 3);
        Assert.Throws<ArgumentException>(() => m.MatVec(new float[2], new float[2]));
        Assert.Throws<ArgumentException>(() => m.MatMul(new float[6], new float[3], 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => m.ReadRow(2, new float[3]));
        Assert.Throws<ArgumentException>(() => new F32Matrix(new float[5], 2, 3));
    }
}
