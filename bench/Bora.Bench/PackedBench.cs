using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Bench;

/// <summary>
/// The packed 16-row group kernels of the K-quants (Q4KPacked, Q6KPacked in Bora.Numerics.Quant) beside the current
/// path (<see cref="QuantizedMatrix.MatMul(ReadOnlySpan{float}, Span{float}, int)"/>: the KQuantRows row kernels below 16
/// tokens, Q4KInterleaved / Q6KInterleaved from 16 on) on the same weights, alternating call by call in one process.
/// Usage: dotnet run -c Release --project bench/Bora.Bench -- packed [--types q4_k,q6_k] [--tokens 1,2,4,8,16,512]
/// [--threads N] [--seconds S] [--rows 14336] [--cols 4096]
/// Both variants quantize the activations, prepare them and split the rows over <see cref="NumericsThreads"/> in ranges
/// of whole groups (4 items per thread, as QuantizedMatrix does). The weights are random blocks (finite f16 scales).
/// Prints per type and token count the median ms per call of each, weight GB/s (file bytes / time) and the ratio
/// current / packed (above 1: packed is faster). The packed classes are internal to Bora, so they are called through
/// function pointers taken by reflection (until QuantizedMatrix dispatches to them).
/// </summary>
public static unsafe class PackedBench
{
    private const int ItemsPerThread = 4;

    public static int Run(string[] args)
    {
        int threads = Environment.ProcessorCount, rows = 14336, cols = 4096;
        int[] tokenCounts = [1, 2, 4, 8, 16, 512];
        string[] types = ["q4_k", "q6_k"];
        double seconds = 1.0;
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            switch (args[i])
            {
                case "--threads": threads = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--tokens": tokenCounts = [.. args[i + 1].Split(',').Select(v => int.Parse(v, CultureInfo.InvariantCulture))]; break;
                case "--types": types = args[i + 1].Split(','); break;
                case "--seconds": seconds = double.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--rows": rows = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                case "--cols": cols = int.Parse(args[i + 1], CultureInfo.InvariantCulture); break;
                default: throw new ArgumentException($"unknown option {args[i]}");
            }
        }
        if (cols % 256 != 0 || rows <= 0)
        {
            throw new ArgumentException($"--cols must be a multiple of 256 and --rows positive; got ({rows}, {cols})");
        }
        if (!QuantDot.IsSupported(QuantIsa.Avx512))
        {
            Console.WriteLine("AVX-512 not available: the packed kernels run their scalar twins only; nothing to compare");
            return 0;
        }
        NumericsThreads.MaxThreads = threads;
        Console.WriteLine($"threads {threads} (processor count {Environment.ProcessorCount}), ISA {QuantDot.Best}, {Environment.Version}, shape ({rows}, {cols})");
        Console.WriteLine($"{"type",-6} {"T",5} {"current ms",11} {"packed ms",10} {"cur GB/s",9} {"pack GB/s",10} {"cur/packed",11}");
        foreach (string t in types)
        {
            var type = Enum.Parse<DType>(t, ignoreCase: true);
            Compare(type, rows, cols, tokenCounts, seconds, threads);
        }
        return 0;
    }

    private static void Compare(DType type, int n, int k, int[] tokenCounts, double seconds, int threads)
    {
        var kernels = PackedKernels.For(type);
        int nb = k / 256;
        int blockBytes = DTypeInfo.BlockBytes(type);
        long rowBytes = (long)nb * blockBytes;
        var blocks = new byte[n * rowBytes];
        var rng = new Random(1);
        rng.NextBytes(blocks);
        // Finite small f16 scales: Q4_K d, dmin at bytes 0, 2; Q6_K d at byte 208.
        int[] halves = type == DType.Q4_K ? [0, 2] : [208];
        for (long b = 0; b < (long)n * nb; b++)
        {
            foreach (int o in halves)
            {
                BitConverter.TryWriteBytes(blocks.AsSpan((int)(b * blockBytes + o), 2), (Half)((rng.NextDouble() * 2 - 1) * 0.01));
            }
        }
        var q = new QuantizedMatrix(type, blocks, n, k, copy: false);
        int groups = (n + 15) / 16;
        long groupBytes = kernels.GroupBytes(nb);
        byte* packed = (byte*)NativeMemory.AlignedAlloc((nuint)(groups * groupBytes), 64);
        try
        {
            fixed (byte* src = blocks)
            {
                for (int g = 0; g < groups; g++)
                {
                    kernels.PackGroup(src + 16 * g * rowBytes, rowBytes, nb, Math.Min(16, n - 16 * g), packed + g * groupBytes);
                }
            }
            foreach (int tokens in tokenCounts)
            {
                var x = new float[tokens * k];
                for (int i = 0; i < x.Length; i++)
                {
                    x[i] = (float)(rng.NextDouble() * 2 - 1);
                }
                var y = new float[tokens * n];
                var yp = new float[tokens * n];
                var product = new PackedProduct(kernels, packed, nb, n, threads);
                var r = Measure([() => q.MatMul(x, y, tokens), () => product.Run(x, yp, tokens)], seconds);
                double bytes = n * rowBytes;
                Console.WriteLine($"{type,-6} {tokens,5} {r[0],11:F3} {r[1],10:F3} {bytes / r[0] / 1e6,9:F1} {bytes / r[1] / 1e6,10:F1} {r[0] / r[1],11:F2}");
            }
        }
        finally
        {
            NativeMemory.AlignedFree(packed);
        }
    }

    /// <summary>Median wall ms per call of each variant, called in turn (A, B, A, B, ...) for about <paramref name="seconds"/> each after warm-up.</summary>
    private static double[] Measure(Action[] variants, double seconds)
    {
        foreach (var v in variants)
        {
            for (int i = 0; i < 3; i++)
            {
                v();
            }
        }
        var times = variants.Select(_ => new List<double>()).ToArray();
        var total = Stopwatch.StartNew();
        while (total.Elapsed.TotalSeconds < seconds * variants.Length || times[0].Count < 5)
        {
            for (int v = 0; v < variants.Length; v++)
            {
                long t0 = Stopwatch.GetTimestamp();
                variants[v]();
                times[v].Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
            }
        }
        return [.. times.Select(t => t.Order().ElementAt(t.Count / 2))];
    }

    /// <summary>One packed product: quantize, prepare, then ranges of whole groups on the worker pool.</summary>
    private sealed class PackedProduct(PackedKernels kernels, byte* packed, int nb, int n, int threads)
    {
        private readonly Q8Activations _act = new();
        private float* _y;
        private int _tokens, _items;

        public void Run(float[] x, float[] y, int tokens)
        {
            _act.Quantize(x, tokens, nb * 256, 256);
            kernels.Prepare(_act);
            _tokens = tokens;
            int groups = (n + 15) / 16;
            _items = Math.Min(groups, threads == 1 ? 1 : threads * ItemsPerThread);
            fixed (float* py = y)
            {
                _y = py;
                if (_items == 1)
                {
                    Item(0);
                }
                else
                {
                    NumericsThreads.For(_items, Item);
                }
                _y = null;
            }
        }

        private void Item(int i)
        {
            int groups = (n + 15) / 16;
            int r0 = (int)((long)i * groups / _items) * 16, r1 = Math.Min(n, (int)((long)(i + 1) * groups / _items) * 16);
            if (r0 < r1)
            {
                kernels.Run(packed, nb, n, _act, _tokens, _y, r0, r1);
            }
        }
    }

    /// <summary>A packed format's static functions, found by reflection (the classes are internal to Bora).</summary>
    private sealed class PackedKernels
    {
        private readonly delegate*<int, long> _groupBytes;
        private readonly delegate*<byte*, long, int, int, byte*, void> _pack;
        private readonly delegate*<Q8Activations, void> _prepare;
        private readonly delegate*<byte*, int, int, Q8Activations, int, float*, int, int, void> _run;

        private PackedKernels(Type t)
        {
            nint F(string name) => (t.GetMethod(name, BindingFlags.Public | BindingFlags.Static)
                ?? throw new InvalidOperationException($"{t.FullName}.{name} not found")).MethodHandle.GetFunctionPointer();
            _groupBytes = (delegate*<int, long>)F("GroupBytes");
            _pack = (delegate*<byte*, long, int, int, byte*, void>)F("PackGroup");
            _prepare = (delegate*<Q8Activations, void>)F("Prepare");
            _run = (delegate*<byte*, int, int, Q8Activations, int, float*, int, int, void>)F("Run");
        }

        public static PackedKernels For(DType type)
        {
            string name = type switch
            {
                DType.Q4_K => "Bora.Numerics.Quant.Q4KPacked",
                DType.Q6_K => "Bora.Numerics.Quant.Q6KPacked",
                _ => throw new ArgumentException($"{type} has no packed K-quant kernel here (q4_k, q6_k)"),
            };
            return new PackedKernels(typeof(QuantizedMatrix).Assembly.GetType(name, throwOnError: true)!);
        }

        public long GroupBytes(int nb) => _groupBytes(nb);

        public void PackGroup(byte* src, long rowBytes, int nb, int rows, byte* dst) => _pack(src, rowBytes, nb, rows, dst);

        public void Prepare(Q8Activations act) => _prepare(act);

        public void Run(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1) =>
            _run(packed, nb, n, act, tokens, y, r0, r1);
    }
}
