using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Model.Tests.QuantKernels;

/// <summary>
/// One packed K-quant format under test (Q4KPacked, Q6KPacked): its functions, its
/// rows-layout reference (<see cref="Q4KInterleaved.RunScalar"/> / <see cref="Q6KInterleaved.RunScalar"/>) and random blocks.
/// </summary>
internal abstract unsafe class KPackedFormat
{
    public abstract DType Type { get; }

    /// <summary>GGUF bytes per block of 256 values.</summary>
    public abstract int BlockBytes { get; }

    public abstract long GroupBytes(int nb);

    public abstract void PackGroup(byte* src, long rowBytes, int nb, int rows, byte* dst);

    public abstract void UnpackRow(byte* group, int nb, int r, byte* dst);

    public abstract void Prepare(Q8Activations act);

    public abstract void Run(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1);

    /// <summary>The AVX2 kernels (<see cref="Packed256"/>), which also run where AVX-512 is the best.</summary>
    public abstract void Run256(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1);

    public abstract void RunScalar(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1);

    /// <summary>The existing scalar twin over GGUF-layout rows (prepares the activations itself where it needs to).</summary>
    public abstract void Reference(byte* w, long rowBytes, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1);

    /// <summary>Offsets of the block's f16 scales (set to finite random halves; every other byte is random).</summary>
    public abstract int[] HalfOffsets { get; }

    /// <summary>(rows, nb) GGUF blocks: random bytes, finite f16 scales (normal, some subnormal, some zero).</summary>
    public byte[] RandomRows(Random rng, int rows, int nb)
    {
        var w = new byte[(long)rows * nb * BlockBytes];
        rng.NextBytes(w);
        for (int blk = 0; blk < rows * nb; blk++)
        {
            foreach (int o in HalfOffsets)
            {
                int kind = rng.Next(16);
                var h = kind == 0 ? (Half)0f
                    : kind == 1 ? BitConverter.UInt16BitsToHalf((ushort)(rng.Next(1, 1024) | (rng.Next(2) << 15))) // subnormal
                    : (Half)((rng.NextDouble() * 2 - 1) * 0.01);
                BitConverter.TryWriteBytes(w.AsSpan(blk * BlockBytes + o, 2), h);
            }
        }
        return w;
    }

    /// <summary>The (G, GroupBytes) packed matrix of <paramref name="w"/> ((rows, nb) GGUF blocks), as a loader would build it.</summary>
    public byte[] Pack(byte[] w, int rows, int nb)
    {
        int groups = (rows + 15) / 16;
        long groupBytes = GroupBytes(nb);
        var packed = new byte[groups * groupBytes];
        long rowBytes = (long)nb * BlockBytes;
        fixed (byte* pw = w, pp = packed)
        {
            for (int g = 0; g < groups; g++)
            {
                PackGroup(pw + 16 * g * rowBytes, rowBytes, nb, Math.Min(16, rows - 16 * g), pp + g * groupBytes);
            }
        }
        return packed;
    }
}

internal sealed unsafe class Q4KFormat : KPackedFormat
{
    public override DType Type => DType.Q4_K;

    public override int BlockBytes => 144;

    public override int[] HalfOffsets => [0, 2];

    public override long GroupBytes(int nb) => Q4KPacked.GroupBytes(nb);

    public override void PackGroup(byte* src, long rowBytes, int nb, int rows, byte* dst) => Q4KPacked.PackGroup(src, rowBytes, nb, rows, dst);

    public override void UnpackRow(byte* group, int nb, int r, byte* dst) => Q4KPacked.UnpackRow(group, nb, r, dst);

    public override void Prepare(Q8Activations act) => Q4KPacked.Prepare(act);

    public override void Run(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1) =>
        Q4KPacked.Run(packed, nb, n, act, tokens, y, r0, r1);

    public override void Run256(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1) =>
        Q4KPacked.Run256(packed, nb, n, act, tokens, y, r0, r1);

    public override void RunScalar(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1) =>
        Q4KPacked.RunScalar(packed, nb, n, act, tokens, y, r0, r1);

    public override void Reference(byte* w, long rowBytes, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1) =>
        Q4KInterleaved.RunScalar(w, rowBytes, nb, n, act, tokens, y, r0, r1);
}

/// <summary>The checks every packed K-quant format must pass.</summary>
internal static unsafe class KPackedChecks
{
    /// <summary>Whether the AVX-512 kernel can run here (the scalar checks run everywhere).</summary>
    public static bool Wide => QuantDot.IsSupported(QuantIsa.Avx512);

    /// <summary>Whether the AVX2 kernel can run here.</summary>
    public static bool HasAvx2 => QuantDot.IsSupported(QuantIsa.Avx2);

    /// <summary>PackGroup then UnpackRow gives back every row byte for byte; lanes past the rows repeat the last row.</summary>
    public static void RoundTrip(KPackedFormat f, Random rng, int rows, int nb)
    {
        var w = f.RandomRows(rng, rows, nb);
        var packed = f.Pack(w, rows, nb);
        Assert.Equal((rows + 15) / 16 * f.GroupBytes(nb), packed.LongLength);
        long rowBytes = (long)nb * f.BlockBytes;
        var back = new byte[rowBytes];
        fixed (byte* pp = packed, pb = back)
        {
            for (int g = 0; g < (rows + 15) / 16; g++)
            {
                for (int lane = 0; lane < 16; lane++)
                {
                    int r = Math.Min(16 * g + lane, rows - 1);
                    f.UnpackRow(pp + g * f.GroupBytes(nb), nb, lane, pb);
                    Assert.True(back.AsSpan().SequenceEqual(w.AsSpan((int)(r * rowBytes), (int)rowBytes)),
                        $"{f.Type} rows {rows}, nb {nb}: group {g} lane {lane} does not unpack to row {r}");
                }
            }
        }
    }

    /// <summary>
    /// Run256 (AVX2) and Run (AVX-512, managed and generated), where available, RunScalar over the packed groups and the existing scalar twin over the GGUF rows
    /// agree bit for bit on every output of rows [r0, r1) and leave the other outputs untouched.
    /// </summary>
    public static void Products(KPackedFormat f, Random rng, int rows, int nb, int tokens, int r0 = 0, int r1 = -1) =>
        ProductsOf(f, f.RandomRows(rng, rows, nb), rows, nb, TestModels.Uniform(rng, tokens * 256 * nb, 3f), tokens, r0, r1);

    /// <summary><see cref="Products"/> for given (rows, nb) GGUF blocks <paramref name="w"/> and (tokens, 256 nb) activations <paramref name="x"/>.</summary>
    public static void ProductsOf(KPackedFormat f, byte[] w, int rows, int nb, float[] x, int tokens, int r0 = 0, int r1 = -1)
    {
        r1 = r1 < 0 ? rows : r1;
        int cols = 256 * nb;
        var packed = f.Pack(w, rows, nb);
        var act = new Q8Activations();
        act.Quantize(x, tokens, cols, 256);
        var expected = new float[tokens * rows];
        var scalar = new float[tokens * rows];
        scalar.AsSpan().Fill(float.NaN);
        // The AVX2 kernels, then the AVX-512 ones (managed, then generated (VNNI)) where this machine runs them; all must
        // equal the twins.
        var kernels = new List<(string Name, bool Avx2, bool Generated, float[] Y)>();
        if (HasAvx2)
        {
            kernels.Add(("AVX2", true, false, new float[tokens * rows]));
        }
        if (Wide)
        {
            kernels.Add(("AVX-512", false, false, new float[tokens * rows]));
        }
        if (QuantDispatch.GeneratedKernelsSupported)
        {
            kernels.Add(("generated VNNI", false, true, new float[tokens * rows]));
        }
        fixed (byte* pw = w, pp = packed)
        fixed (float* pe = expected, ps = scalar)
        {
            f.Reference(pw, (long)nb * f.BlockBytes, nb, rows, act, tokens, pe, 0, rows);
            f.Prepare(act);
            f.RunScalar(pp, nb, rows, act, tokens, ps, r0, r1);
            foreach (var (_, avx2, generated, y) in kernels)
            {
                y.AsSpan().Fill(float.NaN);
                fixed (float* py = y)
                {
                    using var _ = GeneratedKernelsSwitch.Set(generated);
                    if (avx2)
                    {
                        f.Run256(pp, nb, rows, act, tokens, py, r0, r1);
                    }
                    else
                    {
                        f.Run(pp, nb, rows, act, tokens, py, r0, r1);
                    }
                }
            }
        }
        for (int i = 0; i < expected.Length; i++)
        {
            int t = i / rows, r = i % rows;
            bool inRange = r >= r0 && r < r1;
            string where = $"{f.Type} rows {rows}, nb {nb}, tokens {tokens}, range [{r0}, {r1}): token {t}, row {r}";
            if (!inRange)
            {
                Assert.True(float.IsNaN(scalar[i]) && kernels.All(k => float.IsNaN(k.Y[i])), $"{where} outside the range was written");
                continue;
            }
            Assert.True(BitConverter.SingleToInt32Bits(scalar[i]) == BitConverter.SingleToInt32Bits(expected[i]),
                $"{where}: packed scalar twin {scalar[i]} vs rows scalar twin {expected[i]}");
            foreach (var (name, _, _, y) in kernels)
            {
                Assert.True(BitConverter.SingleToInt32Bits(y[i]) == BitConverter.SingleToInt32Bits(expected[i]),
                    $"{where}: {name} {y[i]} vs rows scalar twin {expected[i]}");
            }
        }
    }

    /// <summary>Sweeps: rows 1..67 (partial groups), nb 1..9, tokens 0..20 (every tile tail) and a few larger counts, sub-ranges.</summary>
    public static void Sweep(KPackedFormat f, int seed)
    {
        var rng = new Random(seed);
        for (int rows = 1; rows <= 67; rows++)
        {
            Products(f, rng, rows, nb: rows % 3 + 1, tokens: rows % 4 + 1);
        }
        for (int nb = 1; nb <= 9; nb++)
        {
            Products(f, rng, rows: 17, nb, tokens: 9);
            Products(f, rng, rows: 17, nb, tokens: 17); // from 16 tokens the kernels may take another path
        }
        for (int tokens = 0; tokens <= 20; tokens++)
        {
            Products(f, rng, rows: 33, nb: 2, tokens);
        }
        foreach (int tokens in new[] { 31, 64, 75 }) // 75: expanded groups with a short last tile
        {
            Products(f, rng, rows: 35, nb: 2, tokens);
        }
        foreach (var (r0, r1) in new[] { (0, 16), (16, 48), (48, 67), (32, 67), (64, 67) })
        {
            Products(f, rng, rows: 67, nb: 3, tokens: 10, r0, r1);
        }
        Products(f, rng, rows: 67, nb: 3, tokens: 70, 16, 67); // expanded groups, a partial last group, a sub-range
    }
}

internal sealed unsafe class Q6KFormat : KPackedFormat
{
    public override DType Type => DType.Q6_K;

    public override int BlockBytes => 210;

    public override int[] HalfOffsets => [208];

    public override long GroupBytes(int nb) => Q6KPacked.GroupBytes(nb);

    public override void PackGroup(byte* src, long rowBytes, int nb, int rows, byte* dst) => Q6KPacked.PackGroup(src, rowBytes, nb, rows, dst);

    public override void UnpackRow(byte* group, int nb, int r, byte* dst) => Q6KPacked.UnpackRow(group, nb, r, dst);

    public override void Prepare(Q8Activations act) => Q6KPacked.Prepare(act);

    public override void Run(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1) =>
        Q6KPacked.Run(packed, nb, n, act, tokens, y, r0, r1);

    public override void Run256(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1) =>
        Q6KPacked.Run256(packed, nb, n, act, tokens, y, r0, r1);

    public override void RunScalar(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1) =>
        Q6KPacked.RunScalar(packed, nb, n, act, tokens, y, r0, r1);

    public override void Reference(byte* w, long rowBytes, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1) =>
        Q6KInterleaved.RunScalar(w, rowBytes, nb, n, act, tokens, y, r0, r1);
}
