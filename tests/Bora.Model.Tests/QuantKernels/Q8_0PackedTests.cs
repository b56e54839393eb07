using Bora.Numerics.Quant;

namespace Bora.Model.Tests.QuantKernels;

/// <summary>
/// The packed 16-row Q8_0 layout (<see cref="Q8_0Packed"/>): packing round-trips byte for byte, and its AVX-512
/// kernel, the generated AVX-512 VNNI kernel (<see cref="Q8_0Vnni"/>, where the CPU has it), its scalar twin over the packed layout and the rows-in-lanes scalar twin over the GGUF rows
/// (<see cref="Q8_0Interleaved.RunScalar"/>) agree bit for bit over group tails (rows 1..67), blocks per row 1..9, token
/// counts 0..20 and larger ones, sweeps of the tiles over several groups, row sub-ranges, and the int16 extremes of the kernel's sums.
/// Weights are random bytes (every quant value, -128 included; f16 scales normal and subnormal, both signs), not only
/// what <see cref="BlockQuantizer"/> produces.
/// </summary>
[Trait("Category", "Kernels")]
public sealed unsafe class Q8_0PackedTests
{
    private const int BlockBytes = 34;

    private static bool HasKernel => QuantDot.IsSupported(QuantIsa.Avx512);

    /// <summary>The kernels over the packed layout that this machine runs: the scalar twin, AVX-512, generated VNNI.</summary>
    private static string[] Kernels => [.. new[] { "RunScalar", "Run", "Vnni" }.Where(k => k == "RunScalar" || (k == "Run" ? HasKernel : QuantDispatch.GeneratedKernelsSupported))];

    private static void RunKernel(string kernel, byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        switch (kernel)
        {
            case "Run": Q8_0Packed.Run(packed, nb, n, act, tokens, y, r0, r1); break;
            case "Vnni": Q8_0Vnni.Run(packed, nb, n, act, tokens, y, r0, r1); break;
            default: Q8_0Packed.RunScalar(packed, nb, n, act, tokens, y, r0, r1); break;
        }
    }

    [Fact]
    public void PackGroupAndUnpackRowRoundTripByteForByte()
    {
        var rng = new Random(5);
        for (int n = 1; n <= 67; n++)
        {
            for (int nb = 1; nb <= 9; nb++)
            {
                byte[] w = RandomRows(rng, n, nb);
                byte[] packed = Pack(w, n, nb);
                var row = new byte[nb * BlockBytes];
                fixed (byte* pp = packed)
                fixed (byte* pr = row)
                {
                    // Every row of every group, including the padding rows of the last group (copies of row N - 1).
                    for (int r = 0; r < Groups(n) * 16; r++)
                    {
                        Q8_0Packed.UnpackRow(pp + r / 16 * Q8_0Packed.GroupBytes(nb), nb, r % 16, pr);
                        int source = Math.Min(r, n - 1);
                        Assert.True(row.AsSpan().SequenceEqual(w.AsSpan(source * nb * BlockBytes, nb * BlockBytes)),
                            $"N = {n}, nb = {nb}: packed row {r} does not unpack to GGUF row {source}");
                    }
                }
            }
        }
    }

    [Fact]
    public void LayoutMatchesTheDocumentedExample()
    {
        // Value 9 of block 3 of row 5 at 3 * 544 + 32 + 2 * 64 + 5 * 4 + 1 = 1813 (as w + 128); the row's scales of
        // blocks 3 and 2 at 1642 and 1610 (see the class summary).
        const int nb = 4;
        var w = new byte[16 * nb * BlockBytes];
        int blk3 = (5 * nb + 3) * BlockBytes, blk2 = (5 * nb + 2) * BlockBytes;
        w[blk3 + 2 + 9] = unchecked((byte)(sbyte)-3);
        w[blk3] = 0x34;
        w[blk3 + 1] = 0x12;
        w[blk2] = 0x78;
        w[blk2 + 1] = 0x56;
        byte[] packed = Pack(w, 16, nb);
        Assert.Equal(Q8_0Packed.GroupBytes(nb), packed.Length);
        Assert.Equal(125, packed[1813]);
        Assert.Equal(0x1234, packed[1642] | (packed[1643] << 8));
        Assert.Equal(0x5678, packed[1610] | (packed[1611] << 8));
    }

    [Fact]
    public void KernelAndTwinsAgreeBitForBitOverRowBlockAndTokenTails()
    {
        var rng = new Random(17);
        // Every group tail, with blocks per row and token counts cycling through their tails.
        for (int n = 1; n <= 67; n++)
        {
            Check(rng, n, nb: 1 + n % 9, tokens: n % 21);
        }
        // Every token count 0..20 (tiles of 1..6 and their tails), every block count 1..9.
        for (int tokens = 0; tokens <= 20; tokens++)
        {
            Check(rng, 17, nb: 3, tokens);
        }
        for (int nb = 1; nb <= 9; nb++)
        {
            Check(rng, 20, nb, tokens: 9);
        }
        // Larger token counts (many tiles), and Mistral-width rows (K = 4096): 7 groups (112 rows) per sweep of the
        // tiles, so 130 rows take a whole sweep and a partial one, in one range and from row 16 on.
        foreach (int tokens in new[] { 31, 32, 33, 65 })
        {
            Check(rng, 35, nb: 4, tokens);
        }
        Check(rng, 48, nb: 128, tokens: 1);
        Check(rng, 67, nb: 9, tokens: 1, r0: 32);
        Check(rng, 130, nb: 128, tokens: 9);
        Check(rng, 130, nb: 128, tokens: 9, r0: 16);
    }

    [Fact]
    public void SubRangesWriteOnlyTheirRowsAndEqualTheWholeProduct()
    {
        var rng = new Random(23);
        const int n = 67, nb = 3;
        foreach (int tokens in new[] { 1, 11 })
        {
            SubRanges(rng, n, nb, tokens);
        }
    }

    private static void SubRanges(Random rng, int n, int nb, int tokens)
    {
        byte[] w = RandomRows(rng, n, nb);
        byte[] packed = Pack(w, n, nb);
        var act = Activations(rng, tokens, nb);
        Q8_0Packed.Prepare(act);
        var whole = new float[tokens * n];
        fixed (byte* pp = packed)
        fixed (float* pw = whole)
        {
            Q8_0Packed.RunScalar(pp, nb, n, act, tokens, pw, 0, n);
            for (int r0 = 0; r0 < n; r0 += 16)
            {
                for (int r1 = r0 + 16; ; r1 += 16)
                {
                    int end = Math.Min(r1, n);
                    foreach (string kernel in Kernels)
                    {
                        var y = new float[tokens * n];
                        Array.Fill(y, float.NaN);
                        fixed (float* py = y)
                        {
                            RunKernel(kernel, pp, nb, n, act, tokens, py, r0, end);
                        }
                        for (int i = 0; i < y.Length; i++)
                        {
                            int r = i % n;
                            bool inside = r >= r0 && r < end;
                            Assert.True(inside
                                ? BitConverter.SingleToInt32Bits(y[i]) == BitConverter.SingleToInt32Bits(whole[i])
                                : float.IsNaN(y[i]), $"{kernel} rows [{r0}, {end}): output {i} (token {i / n}, row {r}) {y[i]}");
                        }
                    }
                    if (end == n)
                    {
                        break;
                    }
                }
            }
        }
    }

    [Fact]
    public void ExtremeWeightsAndActivationsDoNotSaturate()
    {
        // u = 255 (w = 127), u = 0 (w = -128) and u = 1 against x = +-127 (x = 1 and -1 everywhere quantize to +-127):
        // the kernel's int16 plane sums reach 16 * 15 * 127 = 30480 in magnitude, the largest they can.
        var rng = new Random(29);
        const int nb = 2;
        foreach (var (quant, tokens, sign) in new (byte, int, float)[] { (0x7F, 3, 1), (0x80, 3, 1), (0x81, 3, 1), (0x7F, 1, 1), (0x7F, 1, -1), (0x81, 1, -1) })
        {
            byte[] w = RandomRows(rng, 16, nb);
            for (int blk = 0; blk < 16 * nb; blk++)
            {
                w.AsSpan(blk * BlockBytes + 2, 32).Fill(quant);
            }
            var x = new float[tokens * 32 * nb];
            for (int i = 0; i < x.Length; i++)
            {
                x[i] = sign * (i / (32 * nb)) switch { 0 => 1f, 1 => -1f, _ => i % 2 == 0 ? 1f : -1f };
            }
            var act = new Q8Activations();
            act.Quantize(x, tokens, 32 * nb, 32);
            Compare(w, 16, nb, act, tokens, $"quants 0x{quant:X2}, T = {tokens}, sign {sign}");
        }
    }

    /// <summary>Random GGUF-layout weights and activations of (n, 32 nb) x tokens, compared by <see cref="Compare"/>.</summary>
    private static void Check(Random rng, int n, int nb, int tokens, int r0 = 0)
    {
        byte[] w = RandomRows(rng, n, nb);
        var act = Activations(rng, tokens, nb);
        Compare(w, n, nb, act, tokens, $"N = {n}, nb = {nb}, T = {tokens}, rows from {r0}", r0);
    }

    /// <summary>
    /// Run and the generated VNNI kernel (when the CPU has them), RunScalar over the packed layout and Q8_0Interleaved.RunScalar over the rows, for rows
    /// [r0, n): equal bits.
    /// </summary>
    private static void Compare(byte[] w, int n, int nb, Q8Activations act, int tokens, string what, int r0 = 0)
    {
        byte[] packed = Pack(w, n, nb);
        var expected = new float[tokens * n];
        fixed (byte* pw = w, pp = packed)
        fixed (float* pe = expected)
        {
            Q8_0Interleaved.RunScalar(pw, nb * BlockBytes, nb, n, act, tokens, pe, r0, n);
            Q8_0Packed.Prepare(act);
            foreach (string kernel in Kernels)
            {
                var y = new float[tokens * n];
                fixed (float* py = y)
                {
                    RunKernel(kernel, pp, nb, n, act, tokens, py, r0, n);
                }
                for (int i = 0; i < expected.Length; i++)
                {
                    Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(y[i]),
                        $"{what}: output {i} (token {i / Math.Max(1, n)}, row {i % n}): packed {kernel} {y[i]} vs rows scalar twin {expected[i]}");
                }
            }
        }
    }

    private static int Groups(int n) => (n + 15) / 16;

    /// <summary>The whole (n, nb) matrix packed, group by group.</summary>
    private static byte[] Pack(byte[] w, int n, int nb)
    {
        long groupBytes = Q8_0Packed.GroupBytes(nb);
        var packed = new byte[Groups(n) * groupBytes];
        fixed (byte* pw = w, pp = packed)
        {
            for (int g = 0; g < Groups(n); g++)
            {
                Q8_0Packed.PackGroup(pw + g * 16L * nb * BlockBytes, nb * BlockBytes, nb, Math.Min(16, n - 16 * g), pp + g * groupBytes);
            }
        }
        return packed;
    }

    /// <summary>(n, nb) Q8_0 blocks: random quant bytes (all 256 values) and f16 scales, normal or subnormal, of both signs.</summary>
    private static byte[] RandomRows(Random rng, int n, int nb)
    {
        var w = new byte[n * nb * BlockBytes];
        rng.NextBytes(w);
        for (int blk = 0; blk < n * nb; blk++)
        {
            float magnitude = rng.Next(8) == 0 ? rng.NextSingle() * 6e-5f : rng.NextSingle() * 0.05f; // 1 in 8 subnormal (below 2^-14)
            var d = (Half)(rng.Next(2) == 0 ? magnitude : -magnitude);
            BitConverter.TryWriteBytes(w.AsSpan(blk * BlockBytes, 2), d);
        }
        return w;
    }

    private static Q8Activations Activations(Random rng, int tokens, int nb)
    {
        var x = TestModels.Uniform(rng, tokens * 32 * nb, 2f);
        var act = new Q8Activations();
        act.Quantize(x, tokens, 32 * nb, 32);
        return act;
    }
}
