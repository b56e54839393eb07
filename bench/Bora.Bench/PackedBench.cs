using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Bench;

/// <summary>
/// Side-by-side timing of the packed 16-row Q8_0 layout (Bora.Numerics.Quant.Q8_0Packed, packed once here as the
/// loader will) against the current path (<see cref="QuantizedMatrix.MatMul(ReadOnlySpan{float}, Span{float}, int)"/>
/// over GGUF rows: decode steps / tiles below <see cref="QuantDispatch.Q8_0InterleavedMinTokens"/>, rows-in-lanes with a
/// repack per product from there) and the rows-in-lanes path forced for every token count ("repack").
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
            Console.WriteLine($"{"T",5} {"current ms",11} {"repack ms",10} {"packed ms",10} {"packed GB/s",12} {"cur/packed",11} {"repack/packed",14} {"cpu cur/packed",15} {"cpu rep/packed",15}");
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
                var (r, cpu) = Measure([() => q.MatMul(x, y, tokens), Repack, Packed], seconds);
                // The packed product equals the rows-in-lanes one bit for bit (the tests' claim; checked here on this shape too).
                Repack();
                Packed();
                if (!y.AsSpan().SequenceEqual(yp))
                {
                    throw new InvalidOperationException($"T = {tokens}: packed and rows-in-lanes products differ");
                }
                Console.WriteLine($"{tokens,5} {r[0],11:F3} {r[1],10:F3} {r[2],10:F3} {bytes / r[2] / 1e6,12:F1} {r[0] / r[2],11:F2} {r[1] / r[2],14:F2} {cpu[0] / cpu[2],15:F2} {cpu[1] / cpu[2],15:F2}");
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
