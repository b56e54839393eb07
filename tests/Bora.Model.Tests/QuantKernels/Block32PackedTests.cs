using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Model.Tests.QuantKernels;

/// <summary>
/// The packed 16-row layouts of the blocks-of-32 formats, Q4_0 (<see cref="Q4_0Packed"/>) and Q8_0
/// (<see cref="Q8_0Packed"/>): packing round-trips byte for byte, and their AVX2 kernels (Run256), AVX-512 kernels, generated AVX-512
/// VNNI kernels (<see cref="Q4_0Vnni"/>, <see cref="Q8_0Vnni"/>, where the CPU has them), their scalar twins over the
/// packed layout and the rows-in-lanes scalar twins over the GGUF rows (<see cref="Q4_0Interleaved.RunScalar"/>,
/// <see cref="Q8_0Interleaved.RunScalar"/>) agree bit for bit over group tails (rows 1..67), blocks per row 1..9, token
/// counts 0..20 and larger ones, sweeps of the tiles over several groups, row sub-ranges, and the int16 extremes of the
/// kernels' sums. Weights are random bytes (every quant value; f16 scales normal and subnormal, both signs), not only
/// what <see cref="BlockQuantizer"/> produces.
/// </summary>
[Trait("Category", "Kernels")]
public sealed unsafe class Block32PackedTests
{
    public static TheoryData<DType> Formats() => [DType.Q4_0, DType.Q8_0];

    private delegate void RunFn(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1);

    /// <summary>One format's functions: block bytes, group size, packing, its kernels by name and the rows scalar twin.</summary>
    private sealed class Format
    {
        public required DType Type { get; init; }

        /// <summary>GGUF bytes per block of 32 (f16 scale first).</summary>
        public required int BlockBytes { get; init; }

        public required Func<int, long> GroupBytes { get; init; }

        public required delegate*<byte*, long, int, int, byte*, void> PackGroup { get; init; }

        public required delegate*<byte*, int, int, byte*, void> UnpackRow { get; init; }

        public required Action<Q8Activations> Prepare { get; init; }

        /// <summary>The kernels over the packed layout that this machine runs: the scalar twin, AVX2, AVX-512, generated VNNI.</summary>
        public required (string Name, RunFn Run)[] Kernels { get; init; }

        /// <summary>The rows-in-lanes scalar twin over GGUF rows.</summary>
        public required delegate*<byte*, long, int, int, Q8Activations, int, float*, int, int, void> Reference { get; init; }
    }

    private static Format Of(DType type) => type == DType.Q4_0
        ? Make(type, 18, Q4_0Packed.GroupBytes, &Q4_0Packed.PackGroup, &Q4_0Packed.UnpackRow, Q4_0Packed.Prepare,
            &Q4_0Interleaved.RunScalar, Q4_0Packed.RunScalar, Q4_0Packed.Run256, Q4_0Packed.Run, Q4_0Vnni.Run)
        : Make(type, 34, Q8_0Packed.GroupBytes, &Q8_0Packed.PackGroup, &Q8_0Packed.UnpackRow, Q8_0Packed.Prepare,
            &Q8_0Interleaved.RunScalar, Q8_0Packed.RunScalar, Q8_0Packed.Run256, Q8_0Packed.Run, Q8_0Vnni.Run);

    /// <summary>A format from its functions; the kernels list keeps those this machine runs.</summary>
    private static Format Make(DType type, int blockBytes, Func<int, long> groupBytes, delegate*<byte*, long, int, int, byte*, void> pack,
        delegate*<byte*, int, int, byte*, void> unpack, Action<Q8Activations> prepare,
        delegate*<byte*, long, int, int, Q8Activations, int, float*, int, int, void> reference,
        RunFn scalar, RunFn avx2, RunFn avx512, RunFn vnni) => new()
        {
            Type = type,
            BlockBytes = blockBytes,
            GroupBytes = groupBytes,
            PackGroup = pack,
            UnpackRow = unpack,
            Prepare = prepare,
            Reference = reference,
            Kernels = [.. new (string Name, RunFn Run, bool Here)[]
            {
                ("RunScalar", scalar, true),
                ("Run256", avx2, QuantDot.IsSupported(QuantIsa.Avx2)),
                ("Run", avx512, QuantDot.IsSupported(QuantIsa.Avx512)),
                ("Vnni", vnni, QuantDispatch.GeneratedKernelsSupported),
            }.Where(k => k.Here).Select(k => (k.Name, k.Run))],
        };

    [Theory]
    [MemberData(nameof(Formats))]
    public void PackGroupAndUnpackRowRoundTripByteForByte(DType type)
    {
        var f = Of(type);
        var rng = new Random(5);
        for (int n = 1; n <= 67; n++)
        {
            for (int nb = 1; nb <= 9; nb++)
            {
                byte[] w = RandomRows(f, rng, n, nb);
                byte[] packed = Pack(f, w, n, nb);
                var row = new byte[nb * f.BlockBytes];
                fixed (byte* pp = packed)
                fixed (byte* pr = row)
                {
                    // Every row of every group, including the padding rows of the last group (copies of row N - 1).
                    for (int r = 0; r < Groups(n) * 16; r++)
                    {
                        f.UnpackRow(pp + r / 16 * f.GroupBytes(nb), nb, r % 16, pr);
                        int source = Math.Min(r, n - 1);
                        Assert.True(row.AsSpan().SequenceEqual(w.AsSpan(source * nb * f.BlockBytes, nb * f.BlockBytes)),
                            $"{type} N = {n}, nb = {nb}: packed row {r} does not unpack to GGUF row {source}");
                    }
                }
            }
        }
    }

    [Fact]
    public void Q8_0LayoutMatchesTheDocumentedExample()
    {
        // Value 9 of block 3 of row 5 at 3 * 544 + 32 + 2 * 64 + 5 * 4 + 1 = 1813 (as w + 128); the row's scales of
        // blocks 3 and 2 at 1642 and 1610 (see the class summary).
        const int nb = 4;
        var w = new byte[16 * nb * Q8BlockBytes];
        int blk3 = (5 * nb + 3) * Q8BlockBytes, blk2 = (5 * nb + 2) * Q8BlockBytes;
        w[blk3 + 2 + 9] = unchecked((byte)(sbyte)-3);
        w[blk3] = 0x34;
        w[blk3 + 1] = 0x12;
        w[blk2] = 0x78;
        w[blk2 + 1] = 0x56;
        byte[] packed = Pack(Of(DType.Q8_0), w, 16, nb);
        Assert.Equal(Q8_0Packed.GroupBytes(nb), packed.Length);
        Assert.Equal(125, packed[1813]);
        Assert.Equal(0x1234, packed[1642] | (packed[1643] << 8));
        Assert.Equal(0x5678, packed[1610] | (packed[1611] << 8));
    }

    [Fact]
    public void Q4_0LayoutMatchesTheDocumentedExample()
    {
        // Quant byte 9 of block 3 of row 5 (values 9 and 25) at 3 * 288 + 2 * 64 + 5 * 4 + 1 = 1013; the row's scale of
        // block 3 at 3 * 288 + 256 + 10 = 1130 (see Q4_0Packed's class summary).
        const int nb = 4, blockBytes = 18;
        var w = new byte[16 * nb * blockBytes];
        int blk3 = (5 * nb + 3) * blockBytes;
        w[blk3 + 2 + 9] = 0x7C;
        w[blk3] = 0x34;
        w[blk3 + 1] = 0x12;
        byte[] packed = Pack(Of(DType.Q4_0), w, 16, nb);
        Assert.Equal(Q4_0Packed.GroupBytes(nb), packed.Length);
        Assert.Equal(0x7C, packed[1013]);
        Assert.Equal(0x1234, packed[1130] | (packed[1131] << 8));
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void KernelsAndTwinsAgreeBitForBitOverRowBlockAndTokenTails(DType type)
    {
        var f = Of(type);
        var rng = new Random(17);
        // Every group tail, with blocks per row and token counts cycling through their tails.
        for (int n = 1; n <= 67; n++)
        {
            Check(f, rng, n, nb: 1 + n % 9, tokens: n % 21);
        }
        // Every token count 0..20 (tiles of 1..8 and their tails), every block count 1..9.
        for (int tokens = 0; tokens <= 20; tokens++)
        {
            Check(f, rng, 17, nb: 3, tokens);
        }
        for (int nb = 1; nb <= 9; nb++)
        {
            Check(f, rng, 20, nb, tokens: 9);
        }
        // Larger token counts (many tiles), and Mistral-width rows (K = 4096): several groups per sweep of the tiles,
        // so 130 rows take a whole sweep and a partial one, in one range and from row 16 on.
        foreach (int tokens in new[] { 31, 32, 33, 65 })
        {
            Check(f, rng, 35, nb: 4, tokens);
        }
        Check(f, rng, 48, nb: 128, tokens: 1);
        Check(f, rng, 67, nb: 9, tokens: 1, r0: 32);
        Check(f, rng, 130, nb: 128, tokens: 9);
        Check(f, rng, 130, nb: 128, tokens: 9, r0: 16);
    }

    [Theory]
    [MemberData(nameof(Formats))]
    public void SubRangesWriteOnlyTheirRowsAndEqualTheWholeProduct(DType type)
    {
        var f = Of(type);
        var rng = new Random(23);
        const int n = 67, nb = 3;
        foreach (int tokens in new[] { 1, 11 })
        {
            SubRanges(f, rng, n, nb, tokens);
        }
    }

    private static void SubRanges(Format f, Random rng, int n, int nb, int tokens)
    {
        byte[] w = RandomRows(f, rng, n, nb);
        byte[] packed = Pack(f, w, n, nb);
        var act = Activations(rng, tokens, nb);
        f.Prepare(act);
        var whole = new float[tokens * n];
        fixed (byte* pp = packed)
        fixed (float* pw = whole)
        {
            f.Kernels[0].Run(pp, nb, n, act, tokens, pw, 0, n); // the scalar twin (always first), whole range
            for (int r0 = 0; r0 < n; r0 += 16)
            {
                for (int r1 = r0 + 16; ; r1 += 16)
                {
                    int end = Math.Min(r1, n);
                    foreach (var (name, run) in f.Kernels)
                    {
                        var y = new float[tokens * n];
                        Array.Fill(y, float.NaN);
                        fixed (float* py = y)
                        {
                            run(pp, nb, n, act, tokens, py, r0, end);
                        }
                        for (int i = 0; i < y.Length; i++)
                        {
                            int r = i % n;
                            bool inside = r >= r0 && r < end;
                            Assert.True(inside
                                ? BitConverter.SingleToInt32Bits(y[i]) == BitConverter.SingleToInt32Bits(whole[i])
                                : float.IsNaN(y[i]), $"{f.Type} {name} rows [{r0}, {end}): output {i} (token {i / n}, row {r}) {y[i]}");
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
    public void Q8_0ExtremeWeightsAndActivationsDoNotSaturate()
    {
        // u = 255 (w = 127), u = 0 (w = -128) and u = 1 against x = +-127 (x = 1 and -1 everywhere quantize to +-127):
        // the kernels' int16 plane sums (AVX-512 and AVX2 alike) reach 16 * 15 * 127 = 30480 in magnitude, the largest they can.
        Extremes(Of(DType.Q8_0), [0x7F, 0x80, 0x81]);
    }

    [Fact]
    public void Q4_0ExtremeWeightsAndActivationsDoNotSaturate()
    {
        // Nibbles q = 15 (w = 7) and q = 0 (w = -8), alone and mixed, against x = +-127: the kernels' int16 sums of q x
        // reach 2 * 15 * 127 per pair and add the pairs of a block, as large as they can get.
        Extremes(Of(DType.Q4_0), [0xFF, 0x00, 0x0F, 0xF0]);
    }

    /// <summary>Every quant byte of 16 rows x 2 blocks set to each fill in turn, against activations of +-127 (see the callers).</summary>
    private static void Extremes(Format f, byte[] fills)
    {
        var rng = new Random(29);
        const int nb = 2;
        foreach (byte quant in fills)
        {
            foreach (var (tokens, sign) in new (int, float)[] { (3, 1), (1, 1), (1, -1), (5, -1) })
            {
                byte[] w = RandomRows(f, rng, 16, nb);
                for (int blk = 0; blk < 16 * nb; blk++)
                {
                    w.AsSpan(blk * f.BlockBytes + 2, f.BlockBytes - 2).Fill(quant);
                }
                var x = new float[tokens * 32 * nb];
                for (int i = 0; i < x.Length; i++)
                {
                    x[i] = sign * (i / (32 * nb)) switch { 0 => 1f, 1 => -1f, _ => i % 2 == 0 ? 1f : -1f };
                }
                var act = new Q8Activations();
                act.Quantize(x, tokens, 32 * nb, 32);
                Compare(f, w, 16, nb, act, tokens, $"quants 0x{quant:X2}, T = {tokens}, sign {sign}");
            }
        }
    }

    /// <summary>Random GGUF-layout weights and activations of (n, 32 nb) x tokens, compared by <see cref="Compare"/>.</summary>
    private static void Check(Format f, Random rng, int n, int nb, int tokens, int r0 = 0)
    {
        byte[] w = RandomRows(f, rng, n, nb);
        var act = Activations(rng, tokens, nb);
        Compare(f, w, n, nb, act, tokens, $"N = {n}, nb = {nb}, T = {tokens}, rows from {r0}", r0);
    }

    /// <summary>Every kernel this machine runs over the packed layout and the rows scalar twin, for rows [r0, n): equal bits.</summary>
    private static void Compare(Format f, byte[] w, int n, int nb, Q8Activations act, int tokens, string what, int r0 = 0)
    {
        byte[] packed = Pack(f, w, n, nb);
        var expected = new float[tokens * n];
        fixed (byte* pw = w, pp = packed)
        fixed (float* pe = expected)
        {
            f.Reference(pw, nb * f.BlockBytes, nb, n, act, tokens, pe, r0, n);
            f.Prepare(act);
            foreach (var (name, run) in f.Kernels)
            {
                var y = new float[tokens * n];
                fixed (float* py = y)
                {
                    run(pp, nb, n, act, tokens, py, r0, n);
                }
                for (int i = 0; i < expected.Length; i++)
                {
                    Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(y[i]),
                        $"{f.Type} {what}: output {i} (token {i / Math.Max(1, n)}, row {i % n}): packed {name} {y[i]} vs rows scalar twin {expected[i]}");
                }
            }
        }
    }

    private const int Q8BlockBytes = 34;

    private static int Groups(int n) => (n + 15) / 16;

    /// <summary>The whole (n, nb) matrix packed, group by group.</summary>
    private static byte[] Pack(Format f, byte[] w, int n, int nb)
    {
        long groupBytes = f.GroupBytes(nb);
        var packed = new byte[Groups(n) * groupBytes];
        fixed (byte* pw = w, pp = packed)
        {
            for (int g = 0; g < Groups(n); g++)
            {
                f.PackGroup(pw + g * 16L * nb * f.BlockBytes, nb * f.BlockBytes, nb, Math.Min(16, n - 16 * g), pp + g * groupBytes);
            }
        }
        return packed;
    }

    /// <summary>(n, nb) blocks: random quant bytes (all 256 values) and f16 scales, normal or subnormal, of both signs.</summary>
    private static byte[] RandomRows(Format f, Random rng, int n, int nb)
    {
        var w = new byte[n * nb * f.BlockBytes];
        rng.NextBytes(w);
        for (int blk = 0; blk < n * nb; blk++)
        {
            float magnitude = rng.Next(8) == 0 ? rng.NextSingle() * 6e-5f : rng.NextSingle() * 0.05f; // 1 in 8 subnormal (below 2^-14)
            var d = (Half)(rng.Next(2) == 0 ? magnitude : -magnitude);
            BitConverter.TryWriteBytes(w.AsSpan(blk * f.BlockBytes, 2), d);
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
