using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Bench;

/// <summary>
/// Side-by-side timing of the packed 16-row Q8_0 layout (Bora.Numerics.Quant.Q8_0Packed, packed once here as the
/// loader will) against the current path (<see cref="QuantizedMatrix.MatMul(ReadOnlySpan{float}, Span{float}, int)"/>
/// over GGUF rows: decode steps / tiles below <see cref="QuantDispatch.Q8_0InterleavedMinTokens"/>, rows-in-lanes with a
/// repack per product from there), the rows-in-lanes path forced for every token count ("repack"), and "split": the
/// same packed groups with the other instruction sequence considered, activations split as 16 xh + xl once per product
/// and no weight unpacking (<see cref="SplitProduct"/>, here only).
/// Usage: dotnet run -c Release --project bench/Bora.Bench -- packed [--threads N] [--tokens 1,2,4,8,16,512]
/// [--seconds S] [--shape N,K]
/// Each variant quantizes the activations and runs the product on <see cref="NumericsThreads.For"/> with the same
/// row split as <see cref="QuantizedMatrix"/> (4 items per thread, multiples of 16 rows); the variants alternate call by
/// call in one loop, so machine load hits them alike. Prints median ms per call, weight GB/s (stored bytes / time) and
/// the ratios current / packed and repack / packed (above 1: packed is faster), of median wall time and of mean process
/// CPU time per call. The packed kernel is internal to Bora and
/// reached here by reflection (the bench has no access to Bora's internals).
/// Letters: N = rows, K = cols, T = tokens.
/// </summary>
public static unsafe class PackedBench
{
    private const int GroupRows = 16;
    private const int ItemsPerThread = 4;

    public static int Run(string[] args)
    {
        int threads = Environment.ProcessorCount, n = 14336, k = 4096;
        int[] tokenCounts = [1, 2, 4, 8, 16, 512];
        double seconds = 1.0;
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            var inv = System.Globalization.CultureInfo.InvariantCulture;
            switch (args[i])
            {
                case "--threads": threads = int.Parse(args[i + 1], inv); break;
                case "--tokens": tokenCounts = [.. args[i + 1].Split(',').Select(v => int.Parse(v, inv))]; break;
                case "--seconds": seconds = double.Parse(args[i + 1], inv); break;
                case "--shape":
                    var s = args[i + 1].Split(',');
                    (n, k) = (int.Parse(s[0], inv), int.Parse(s[1], inv));
                    break;
                default: throw new ArgumentException($"unknown option {args[i]}");
            }
        }
        if (k % 32 != 0 || n <= 0 || k <= 0)
        {
            throw new ArgumentException($"--shape {n},{k}: N must be positive and K a positive multiple of 32");
        }
        NumericsThreads.MaxThreads = threads;
        var kernel = Kernel.Load("Bora.Numerics.Quant.Q8_0Packed");
        if (!QuantDot.IsSupported(QuantIsa.Avx512))
        {
            Console.WriteLine($"ISA {QuantDot.Best}: the packed kernel needs AVX-512; nothing to compare");
            return 0;
        }
        var rng = new Random(1);
        var w = new float[(long)n * k];
        for (long i = 0; i < w.LongLength; i++)
        {
            w[i] = (float)(rng.NextDouble() * 2 - 1) * 0.02f;
        }
        var q = QuantizedMatrix.Quantize(DType.Q8_0, w, n, k);
        int nb = q.BlocksPerRow, groups = (n + GroupRows - 1) / GroupRows;
        long groupBytes = kernel.GroupBytes(nb);
        byte* packed = (byte*)NativeMemory.AlignedAlloc((nuint)(groups * groupBytes), 64);
        try
        {
            fixed (byte* src = q.Blocks)
            {
                for (int g = 0; g < groups; g++)
                {
                    kernel.PackGroup(src + (long)g * GroupRows * q.RowBytes, q.RowBytes, nb, Math.Min(GroupRows, n - g * GroupRows), packed + g * groupBytes);
                }
            }
            long bytes = q.Blocks.Length;
            Console.WriteLine($"Q8_0 ({n}, {k}), {bytes / 1e6:F1} MB stored, packed {groups * groupBytes / 1e6:F1} MB; threads {threads} (processor count {Environment.ProcessorCount}), ISA {QuantDot.Best}, {Environment.Version}");
            Console.WriteLine($"{"T",5} {"current ms",11} {"repack ms",10} {"packed ms",10} {"packed GB/s",12} {"cur/packed",11} {"repack/packed",14} {"split/packed",13} {"cpu cur/packed",15} {"cpu rep/packed",15} {"cpu split/packed",17}");
            foreach (int tokens in tokenCounts)
            {
                var x = new float[tokens * k];
                for (int i = 0; i < x.Length; i++)
                {
                    x[i] = (float)(rng.NextDouble() * 2 - 1);
                }
                var y = new float[tokens * n];
                var yp = new float[tokens * n];
                var act = new Q8Activations();
                int items = Math.Min(Math.Max(1, threads) * ItemsPerThread, groups);
                var packedProduct = new PackedProduct(kernel, packed, nb, n, act, tokens, items);
                void Packed()
                {
                    act.Quantize(x, tokens, k, 32);
                    kernel.Prepare(act);
                    fixed (float* py = yp)
                    {
                        packedProduct.Y = py;
                        NumericsThreads.For(items, packedProduct.RunItem);
                    }
                }
                void Repack()
                {
                    QuantDispatch.Q8_0InterleavedMinTokens = 1;
                    try
                    {
                        q.MatMul(x, y, tokens);
                    }
                    finally
                    {
                        QuantDispatch.Q8_0InterleavedMinTokens = QuantDispatch.DefaultQ8_0InterleavedMinTokens;
                    }
                }
                var yn = new float[tokens * n];
                var splitProduct = new SplitProduct(packed, nb, n, act, tokens, items);
                void SplitX()
                {
                    act.Quantize(x, tokens, k, 32);
                    fixed (float* py = yn)
                    {
                        splitProduct.Prepare(py);
                        NumericsThreads.For(items, splitProduct.RunItem);
                    }
                }
                var (r, cpu) = Measure([() => q.MatMul(x, y, tokens), Repack, Packed, SplitX], seconds);
                // The packed product equals the rows-in-lanes one bit for bit (the tests' claim; checked here on this shape too).
                Repack();
                Packed();
                SplitX();
                if (!y.AsSpan().SequenceEqual(yp) || !yn.AsSpan().SequenceEqual(yp))
                {
                    throw new InvalidOperationException($"T = {tokens}: packed, split-activation and rows-in-lanes products differ");
                }
                Console.WriteLine($"{tokens,5} {r[0],11:F3} {r[1],10:F3} {r[2],10:F3} {bytes / r[2] / 1e6,12:F1} {r[0] / r[2],11:F2} {r[1] / r[2],14:F2} {r[3] / r[2],13:F2} {cpu[0] / cpu[2],15:F2} {cpu[1] / cpu[2],15:F2} {cpu[3] / cpu[2],17:F2}");
            }
        }
        finally
        {
            NativeMemory.AlignedFree(packed);
        }
        return 0;
    }

    /// <summary>One product's items: rows [i N / items, (i + 1) N / items) rounded to multiples of 16, as QuantizedMatrix splits them.</summary>
    private sealed class PackedProduct(Kernel kernel, byte* packed, int nb, int n, Q8Activations act, int tokens, int items)
    {
        public float* Y;

        public Action<int> RunItem => _run ??= item =>
        {
            int r0 = Boundary(item), r1 = Boundary(item + 1);
            if (r0 < r1)
            {
                kernel.Run(packed, nb, n, act, tokens, Y, r0, r1);
            }
        };

        private Action<int>? _run;

        private int Boundary(int item) => item >= items ? n : Math.Min(n, (int)((long)item * n / items) / GroupRows * GroupRows);
    }

    /// <summary>
    /// The packed layout multiplied the other way (bench only, to compare instruction sequences): no weight unpacking;
    /// instead each token's quants are split once per product as x = 16 xh + xl (xh in [-8, 8], xl in [-8, 7]) and per
    /// token and block 8 vpmaddubsw of the stored u with xl and 8 with xh (16 broadcasts) give p = 16 (xh sums) + (xl
    /// sums); tiles of up to 8 tokens, swept over runs of groups as Q8_0Packed does. Same results bit for bit.
    /// </summary>
    private sealed class SplitProduct(byte* packed, int nb, int n, Q8Activations act, int tokens, int items)
    {
        private const int Tile = 8;
        private readonly float[] _ds128 = new float[tokens * nb];
        private readonly sbyte[] _split = GC.AllocateUninitializedArray<sbyte>(tokens * nb * 64, pinned: true);
        private float* _y;

        public Action<int> RunItem => _run ??= Run;

        private Action<int>? _run;

        /// <summary>Once per product: 128 d_x sum x per block (exact) and the split activations, (T, nb, 2, 32).</summary>
        public void Prepare(float* y)
        {
            _y = y;
            var sums = act.ScaledSums;
            for (int i = 0; i < _ds128.Length; i++)
            {
                _ds128[i] = 128 * sums[i];
            }
            var one = Vector256.Create((byte)1);
            fixed (sbyte* q = act.Quants, dst = _split)
            {
                for (long b = 0; b < (long)tokens * nb; b++)
                {
                    var v = Vector256.Load(q + 32 * b);
                    var xh = Vector256.ShiftRightArithmetic(v, 4) + (Vector256.ShiftRightLogical(v.AsByte(), 3) & one).AsSByte();
                    (v - Vector256.ShiftLeft(xh, 4)).Store(dst + 64 * b);
                    xh.Store(dst + 64 * b + 32);
                }
            }
        }

        private void Run(int item)
        {
            int r0 = Boundary(item), r1 = Boundary(item + 1);
            long groupBytes = nb * 544L;
            int sweepRows = GroupRows * (int)Math.Clamp(512 * 1024 / groupBytes, 1, 64);
            float* partial = stackalloc float[GroupRows];
            fixed (sbyte* xs = _split)
            fixed (float* d = act.Scales, ds = _ds128)
            {
                for (int s0 = r0; s0 < r1; s0 += sweepRows)
                {
                    int s1 = Math.Min(r1, s0 + sweepRows);
                    for (int t0 = 0; t0 < tokens; t0 += Tile)
                    {
                        int tt = Math.Min(Tile, tokens - t0);
                        for (int g0 = s0; g0 < s1; g0 += GroupRows)
                        {
                            TileOf(packed + g0 / GroupRows * groupBytes, xs + (long)t0 * nb * 64, d + (long)t0 * nb, ds + (long)t0 * nb, tt,
                                _y + (long)t0 * n + g0, Math.Min(GroupRows, s1 - g0), partial);
                        }
                    }
                }
            }
        }

        private void TileOf(byte* g, sbyte* xs, float* d, float* ds, int tt, float* y, int rows, float* partial)
        {
            var acc = stackalloc Vector512<float>[Tile];
            for (int j = 0; j < Tile; j++)
            {
                acc[j] = default;
            }
            for (int b = 0; b < nb; b++)
            {
                byte* wq = g + (long)b * 544 + ((b & 1) << 5);
                var u0 = Vector512.Load(wq);
                var u1 = Vector512.Load(wq + 64);
                var u2 = Vector512.Load(wq + 128);
                var u3 = Vector512.Load(wq + 192);
                var u4 = Vector512.Load(wq + 256);
                var u5 = Vector512.Load(wq + 320);
                var u6 = Vector512.Load(wq + 384);
                var u7 = Vector512.Load(wq + 448);
                var hw = Vector256.Load((short*)(g + (long)b * 544 + (512 - ((b & 1) << 9))));
                var dw = (Vector512.ShiftLeft(Avx512F.ConvertToVector512Int32(hw), 13) & Vector512.Create(unchecked((int)0x8FFFFFFF))).AsSingle()
                    * Vector512.Create(5.192296858534828E+33f);
                for (int j = 0; j < tt; j++)
                {
                    sbyte* x = xs + (long)j * nb * 64 + 64L * b;
                    var lo = Avx512BW.MultiplyAddAdjacent(u0, Vector512.Create(*(int*)x).AsSByte())
                        + Avx512BW.MultiplyAddAdjacent(u1, Vector512.Create(*(int*)(x + 4)).AsSByte())
                        + Avx512BW.MultiplyAddAdjacent(u2, Vector512.Create(*(int*)(x + 8)).AsSByte())
                        + Avx512BW.MultiplyAddAdjacent(u3, Vector512.Create(*(int*)(x + 12)).AsSByte())
                        + Avx512BW.MultiplyAddAdjacent(u4, Vector512.Create(*(int*)(x + 16)).AsSByte())
                        + Avx512BW.MultiplyAddAdjacent(u5, Vector512.Create(*(int*)(x + 20)).AsSByte())
                        + Avx512BW.MultiplyAddAdjacent(u6, Vector512.Create(*(int*)(x + 24)).AsSByte())
                        + Avx512BW.MultiplyAddAdjacent(u7, Vector512.Create(*(int*)(x + 28)).AsSByte());
                    var hi = Avx512BW.MultiplyAddAdjacent(u0, Vector512.Create(*(int*)(x + 32)).AsSByte())
                        + Avx512BW.MultiplyAddAdjacent(u1, Vector512.Create(*(int*)(x + 36)).AsSByte())
                        + Avx512BW.MultiplyAddAdjacent(u2, Vector512.Create(*(int*)(x + 40)).AsSByte())
                        + Avx512BW.MultiplyAddAdjacent(u3, Vector512.Create(*(int*)(x + 44)).AsSByte())
                        + Avx512BW.MultiplyAddAdjacent(u4, Vector512.Create(*(int*)(x + 48)).AsSByte())
                        + Avx512BW.MultiplyAddAdjacent(u5, Vector512.Create(*(int*)(x + 52)).AsSByte())
                        + Avx512BW.MultiplyAddAdjacent(u6, Vector512.Create(*(int*)(x + 56)).AsSByte())
                        + Avx512BW.MultiplyAddAdjacent(u7, Vector512.Create(*(int*)(x + 60)).AsSByte());
                    var p = Avx512BW.MultiplyAddAdjacent(hi, Vector512.Create((short)16)) + Avx512BW.MultiplyAddAdjacent(lo, Vector512.Create((short)1));
                    acc[j] = Avx512F.FusedMultiplyAdd(dw, Avx512F.FusedMultiplySubtract(Avx512F.ConvertToVector512Single(p),
                        Vector512.Create(d[(long)j * nb + b]), Vector512.Create(ds[(long)j * nb + b])), acc[j]);
                }
            }
            for (int j = 0; j < tt; j++)
            {
                if (rows == GroupRows)
                {
                    acc[j].Store(y + (long)j * n);
                }
                else
                {
                    acc[j].Store(partial);
                    new Span<float>(partial, rows).CopyTo(new Span<float>(y + (long)j * n, rows));
                }
            }
        }

        private int Boundary(int item) => item >= items ? n : Math.Min(n, (int)((long)item * n / items) / GroupRows * GroupRows);
    }

    /// <summary>The packed format's static functions, found by name (Bora's kernels are internal).</summary>
    private sealed class Kernel
    {
        private delegate* managed<int, long> _groupBytes;
        private delegate* managed<byte*, long, int, int, byte*, void> _pack;
        private delegate* managed<Q8Activations, void> _prepare;
        private delegate* managed<byte*, int, int, Q8Activations, int, float*, int, int, void> _run;

        public static Kernel Load(string typeName)
        {
            var type = typeof(QuantizedMatrix).Assembly.GetType(typeName, throwOnError: true)!;
            nint F(string name) => (type.GetMethod(name, BindingFlags.Public | BindingFlags.Static)
                ?? throw new InvalidOperationException($"{typeName}.{name} not found")).MethodHandle.GetFunctionPointer();
            return new Kernel
            {
                _groupBytes = (delegate* managed<int, long>)F("GroupBytes"),
                _pack = (delegate* managed<byte*, long, int, int, byte*, void>)F("PackGroup"),
                _prepare = (delegate* managed<Q8Activations, void>)F("Prepare"),
                _run = (delegate* managed<byte*, int, int, Q8Activations, int, float*, int, int, void>)F("Run"),
            };
        }

        public long GroupBytes(int nb) => _groupBytes(nb);

        public void PackGroup(byte* src, long rowBytes, int nb, int rows, byte* dst) => _pack(src, rowBytes, nb, rows, dst);

        public void Prepare(Q8Activations act) => _prepare(act);

        public void Run(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1) => _run(packed, nb, n, act, tokens, y, r0, r1);
    }

    /// <summary>
    /// Median wall ms per call of each variant, called in turn (A, B, C, A, ...) for about <paramref name="seconds"/> per
    /// variant after warm-up; and the process CPU ms per call (mean; less sensitive to other processes taking the cores).
    /// </summary>
    private static (double[] Wall, double[] Cpu) Measure(Action[] variants, double seconds)
    {
        foreach (var v in variants)
        {
            for (int i = 0; i < 3; i++)
            {
                v();
            }
        }
        var times = variants.Select(_ => new List<double>()).ToArray();
        var cpu = new double[variants.Length];
        var total = Stopwatch.StartNew();
        while (total.Elapsed.TotalSeconds < seconds * variants.Length || times[0].Count < 5)
        {
            for (int v = 0; v < variants.Length; v++)
            {
                var c0 = Process.GetCurrentProcess().TotalProcessorTime;
                long t0 = Stopwatch.GetTimestamp();
                variants[v]();
                times[v].Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
                cpu[v] += (Process.GetCurrentProcess().TotalProcessorTime - c0).TotalMilliseconds;
            }
        }
        return ([.. times.Select(t => t.Order().ElementAt(t.Count / 2))], [.. cpu.Select((c, v) => c / times[v].Count)]);
    }
}
