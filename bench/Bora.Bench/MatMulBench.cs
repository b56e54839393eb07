using System.Diagnostics;
using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Bench;

/// <summary>
/// MatVec / MatMul throughput of <see cref="QuantizedMatrix"/> (Q4_0, Q8_0, Q4_K, Q6_K), <see cref="HalfMatrix"/> (f16, bf16) and <see cref="F32Matrix"/>
/// on Mistral-7B layer shapes: (4096, 4096) = Wq / Wo and (14336, 4096) = W1 / W3.
/// Usage: dotnet run -c Release --project bench/Bora.Bench -- matmul [--threads N] [--tokens T[,T...]] [--types q4_0,q8_0,f32]
/// [--seconds S] [--shapes all|w1|NxK[,NxK...]] [--compare-min M] [--compare-quad 1]
/// (--threads sets <see cref="NumericsThreads.MaxThreads"/>, which both matrix types honour; several token counts run one
/// after the other in the same process; --shapes w1 runs only (14336, 4096), NxK any rows x columns, e.g. 4096x1024 for a
/// matrix whose 16-row groups fit in L1 / L2).
/// With --compare-min M the two quantized variants are instead "dflt" (the default <see cref="QuantDispatch"/>
/// thresholds) and "min M" (Q4_0 / Q8_0 rows-in-lanes from M tokens on), to set the thresholds from measurements; with
/// --compare-packed 1 they are "packed" (<see cref="QuantizedMatrix.Pack"/>, as loaded on AVX2 and AVX-512) and "rows" (GGUF's layout); with
/// --compare-quad 1 they are "dflt" and "pair" (<see cref="QuantDispatch.Q4_0QuadDecode"/> off: the previous Q4_0 decode kernel).
/// Prints, per matrix: median time per call, weight GB/s (bytes of the stored matrix / time) and GFLOP/s (2 N K T / time).
/// Quantized types run twice, alternating call by call in the same loop: "new" (the tiled kernels of QuantGemm) and
/// "old" (the row-by-row QuantDot baseline, <see cref="QuantizedMatrix.RowByRowBaseline"/>), and the ratio old / new.
/// </summary>
public static class MatMulBench
{
    public static void Run(string[] args)
    {
        int threads = Environment.ProcessorCount, compareMin = 0;
        bool compareQuad = false, comparePacked = false;
        int[] tokenCounts = [1];
        (int N, int K)[] shapes = ParseShapes("all");
        double seconds = 1.0;
        string[] types = ["q4_0", "q8_0", "f32"];
        for (int i = 0; i + 1 < args.Length; i += 2)
        {
            switch (args[i])
            {
                case "--threads": threads = int.Parse(args[i + 1], System.Globalization.CultureInfo.InvariantCulture); break;
                case "--tokens": tokenCounts = [.. args[i + 1].Split(',').Select(v => int.Parse(v, System.Globalization.CultureInfo.InvariantCulture))]; break;
                case "--compare-quad": compareQuad = args[i + 1] == "1"; compareMin = compareQuad ? -1 : compareMin; break;
                case "--compare-packed": comparePacked = args[i + 1] == "1"; break;
                case "--compare-min": compareMin = int.Parse(args[i + 1], System.Globalization.CultureInfo.InvariantCulture); break;
                case "--shapes": shapes = ParseShapes(args[i + 1]); break;
                case "--seconds": seconds = double.Parse(args[i + 1], System.Globalization.CultureInfo.InvariantCulture); break;
                case "--types": types = args[i + 1].Split(','); break;
                default: throw new ArgumentException($"unknown option {args[i]}");
            }
        }
        NumericsThreads.MaxThreads = threads;
        foreach (int tokens in tokenCounts)
        {
            Run(threads, tokens, seconds, types, shapes, comparePacked ? -2 : compareMin);
        }
    }

    /// <summary>--shapes: "all" (Wq / Wo and W1 / W3), "w1" (only (14336, 4096)) or "NxK[,NxK...]" (rows x columns).</summary>
    private static (int N, int K)[] ParseShapes(string value) => value switch
    {
        "all" => [(4096, 4096), (14336, 4096)],
        "w1" => [(14336, 4096)],
        _ => [.. value.Split(',').Select(v => v.Split('x') is [var n, var k]
            ? (int.Parse(n, System.Globalization.CultureInfo.InvariantCulture), int.Parse(k, System.Globalization.CultureInfo.InvariantCulture))
            : throw new ArgumentException($"--shapes: '{v}' is not all, w1 or NxK (rows x columns, e.g. 4096x1024)"))],
    };

    private static void Run(int threads, int tokens, double seconds, string[] types, (int N, int K)[] shapes, int compareMin)
    {
        Console.WriteLine($"threads {threads} (processor count {Environment.ProcessorCount}), tokens {tokens}, ISA {QuantDot.Best}, {Environment.Version}");
        Console.WriteLine($"{"type",-10} {"shape",-14} {"ms/call",9} {"GB/s",8} {"GFLOP/s",9} {"cpu-ms",10} {"cpu-GB/s",8}");
        var rng = new Random(1);
        foreach (var (n, k) in shapes)
        {
            var w = new float[(long)n * k];
            for (long i = 0; i < w.LongLength; i++)
            {
                w[i] = (float)(rng.NextDouble() * 2 - 1) * 0.02f;
            }
            var x = new float[tokens * k];
            for (int i = 0; i < x.Length; i++)
            {
                x[i] = (float)(rng.NextDouble() * 2 - 1);
            }
            var y = new float[tokens * n];
            foreach (var t in types)
            {
                if (t is "f16" or "bf16")
                {
                    var m = HalfMatrix.FromFloat32(t == "f16" ? DType.F16 : DType.BF16, w, n, k);
                    long bytes = 2L * n * k;
                    var (ms, cpuMs) = Measure([() => m.MatMul(x, y, tokens)], seconds)[0];
                    Console.WriteLine($"{t,-6} {$"({n}, {k})",-14} {ms,9:F3} {bytes / ms / 1e6,8:F1} {2.0 * n * k * tokens / ms / 1e6,9:F1} {cpuMs,10:F3} {bytes / cpuMs / 1e6,8:F1}");
                }
                else if (t == "f32")
                {
                    var m = new F32Matrix(w, n, k);
                    long bytes = 4L * n * k;
                    var (ms, cpuMs) = Measure([() => m.MatMul(x, y, tokens)], seconds)[0];
                    Console.WriteLine($"{t,-6} {$"({n}, {k})",-14} {ms,9:F3} {bytes / ms / 1e6,8:F1} {2.0 * n * k * tokens / ms / 1e6,9:F1} {cpuMs,10:F3} {bytes / cpuMs / 1e6,8:F1}");
                }
                else
                {
                    var type = Enum.Parse<DType>(t, ignoreCase: true);
                    var q = QuantizedMatrix.Quantize(type, w, n, k);
                    long bytes = q.StoredBytes;
                    var packed = compareMin == -2 ? q.Pack() : null;
                    var r = packed is not null
                        ? Measure([() => packed.MatMul(x, y, tokens), () => q.MatMul(x, y, tokens)], seconds)
                        : compareMin < 0
                        ? Measure([() => q.MatMul(x, y, tokens), () => WithoutQuad(() => q.MatMul(x, y, tokens))], seconds)
                        : compareMin > 0
                        ? Measure([() => WithMin(0, () => q.MatMul(x, y, tokens)), () => WithMin(compareMin, () => q.MatMul(x, y, tokens))], seconds)
                        : Measure([() => q.MatMul(x, y, tokens, QuantDot.Best, rowByRow: false), () => q.MatMul(x, y, tokens, QuantDot.Best, rowByRow: true)], seconds);
                    for (int v = 0; v < 2; v++)
                    {
                        var (ms, cpuMs) = r[v];
                        string label = packed is not null ? $"{t}{(v == 0 ? " packed" : " rows")}" : compareMin < 0 ? $"{t}{(v == 0 ? " dflt" : " pair")}" : compareMin > 0 ? $"{t}{(v == 0 ? " dflt" : $" min{compareMin}")}" : $"{t}{(v == 0 ? " new" : " old")}";
                        Console.WriteLine($"{label,-10} {$"({n}, {k})",-14} {ms,9:F3} {bytes / ms / 1e6,8:F1} {2.0 * n * k * tokens / ms / 1e6,9:F1} {cpuMs,10:F3} {bytes / cpuMs / 1e6,8:F1}");
                    }
                    Console.WriteLine(packed is not null
                        ? $"{t,-10} {$"({n}, {k})",-14} T={tokens}: packed is {r[1].WallMs / r[0].WallMs:F2}x rows (median wall time)"
                        : compareMin < 0
                        ? $"{t,-10} {$"({n}, {k})",-14} T={tokens}: dflt is {r[1].WallMs / r[0].WallMs:F2}x pair (median wall time)"
                        : compareMin > 0
                        ? $"{t,-10} {$"({n}, {k})",-14} T={tokens}: min{compareMin} is {r[0].WallMs / r[1].WallMs:F2}x dflt (median wall time)"
                        : $"{t,-10} {$"({n}, {k})",-14} new is {r[1].WallMs / r[0].WallMs:F2}x old (median wall time)");
                }
            }
        }
    }

    /// <summary>Runs <paramref name="product"/> with the previous Q4_0 decode kernel.</summary>
    private static void WithoutQuad(Action product)
    {
        QuantDispatch.Q4_0QuadDecode = false;
        try
        {
            product();
        }
        finally
        {
            QuantDispatch.Q4_0QuadDecode = true;
        }
    }

    /// <summary>Runs <paramref name="product"/> with both interleaved thresholds at <paramref name="min"/> (0: the defaults), then restores them.</summary>
    private static void WithMin(int min, Action product)
    {
        if (min > 0)
        {
            QuantDispatch.Q4_0InterleavedMinTokens = min;
            QuantDispatch.Q8_0InterleavedMinTokens = min;
        }
        try
        {
            product();
        }
        finally
        {
            QuantDispatch.Q4_0InterleavedMinTokens = QuantDispatch.DefaultQ4_0InterleavedMinTokens;
            QuantDispatch.Q8_0InterleavedMinTokens = QuantDispatch.DefaultQ8_0InterleavedMinTokens;
        }
    }

    /// <summary>
    /// Median wall ms per call of each variant, called in turn (A, B, A, B, ...) for about <paramref name="seconds"/>
    /// per variant after warm-up, so machine load hits them alike; and the process CPU time per call divided by the
    /// thread count (less sensitive to other processes taking the cores).
    /// </summary>
    private static (double WallMs, double CpuMs)[] Measure(Action[] variants, double seconds)
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
        var result = new (double, double)[variants.Length];
        for (int v = 0; v < variants.Length; v++)
        {
            times[v].Sort();
            result[v] = (times[v][times[v].Count / 2], cpu[v] / times[v].Count / Math.Min(QuantizedMatrix.MaxThreads, Environment.ProcessorCount));
        }
        return result;
    }
}
