using System.Diagnostics;
using System.Globalization;
using System.Runtime.Intrinsics;
using Bora.Numerics;

namespace Bora.Bench;

/// <summary>
/// <c>stream [--type q4_0] [--count 64] [--rows 4096] [--cols 4096] [--threads 1,2] [--repeats 5]</c>: how close a
/// decode product (one token) comes to this machine's memory read bandwidth. Builds <c>count</c> matrices of the type
/// (packed as the loader packs them on AVX-512), together far larger than the last-level cache, and per thread count
/// alternates three sweeps over the same number of bytes: the products one after the other (as a decode step runs
/// them), a plain read of the bytes split the same way (a barrier per matrix, <see cref="NumericsThreads.For"/>), and
/// one plain read per thread over everything (the probe of <c>model</c>'s decode_read). Prints the medians in GB/s and
/// the product's share of each read. A product near the read wall is bound by memory, not by its kernel.
/// </summary>
public static unsafe class StreamBench
{
    public static int Run(string[] args)
    {
        var a = new BenchArgs(args, ["type", "count", "rows", "cols", "threads", "repeats"], []);
        int count = a.GetInt("count", 64), n = a.GetInt("rows", 4096), k = a.GetInt("cols", 4096), repeats = a.GetInt("repeats", 5);
        var type = Enum.Parse<DType>(a.Get("type") ?? "q4_0", ignoreCase: true);
        int[] threadCounts = [.. (a.Get("threads") ?? "1,2").Split(',').Select(v => int.Parse(v, CultureInfo.InvariantCulture))];
        var rng = new Random(1);
        var w = new float[(long)n * k];
        for (long i = 0; i < w.LongLength; i++)
        {
            w[i] = (float)(rng.NextDouble() * 2 - 1) * 0.02f;
        }
        bool pack = QuantizedMatrix.CanPack(type) && Bora.Model.WeightMapper.DefaultPackAtLoad; // as the loader
        var matrices = new QuantizedMatrix[count];
        for (int i = 0; i < count; i++)
        {
            var q = QuantizedMatrix.Quantize(type, w, n, k);
            matrices[i] = pack ? q.Pack() : q;
        }
        var first = matrices[0];
        long matrixBytes = first.StoredBytes / 512 * 512, bytes = matrixBytes * count;
        var x = new float[k];
        for (int i = 0; i < k; i++)
        {
            x[i] = (float)(rng.NextDouble() * 2 - 1);
        }
        var y = new float[n];
        byte* buffer = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)bytes, 64);
        try
        {
            for (long i = 0; i < bytes; i += 4096)
            {
                buffer[i] = 1; // fault every page in before timing
            }
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{count} x ({n}, {k}) {type}, layout {first.Layout}: {bytes / 1e6:F0} MB per sweep, ISA {Bora.Numerics.Quant.QuantDot.Best}, median of {repeats}"));
            var sink = new long[64];
            foreach (int threads in threadCounts)
            {
                NumericsThreads.MaxThreads = threads;
                var product = new List<double>();
                var split = new List<double>();
                var probe = new List<double>();
                // Products for 2 s before any timing: the product's callers start at tier 0 and tiered compilation
                // promotes them only after a delay; one round is not enough (a streamed Q4_0 product at 1 thread read
                // 22 GB/s for the first second of a process and 27 after).
                long warm = Stopwatch.GetTimestamp();
                while (Stopwatch.GetElapsedTime(warm).TotalSeconds < 2)
                {
                    foreach (var m in matrices)
                    {
                        m.MatMul(x, y, 1);
                    }
                }
                int items = threads == 1 ? 1 : 4 * threads; // as QuantizedMatrix: 4 items per thread
                long perItem = matrixBytes / items / 64 * 64, perThread = bytes / threads / 64 * 64;
                for (int r = 0; r <= repeats; r++)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    foreach (var m in matrices)
                    {
                        m.MatMul(x, y, 1);
                    }
                    double productSeconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                    t0 = Stopwatch.GetTimestamp();
                    for (int i = 0; i < count; i++)
                    {
                        byte* region = buffer + i * matrixBytes;
                        NumericsThreads.For(items, item => sink[item % 8 * 8] += Read(region + item * perItem, perItem));
                    }
                    double splitSeconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                    t0 = Stopwatch.GetTimestamp();
                    NumericsThreads.For(threads, t => sink[t % 8 * 8] += Read(buffer + t * perThread, perThread));
                    double probeSeconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                    if (r > 0) // the first round warms up
                    {
                        product.Add(bytes / productSeconds / 1e9);
                        split.Add(perItem * items * count / splitSeconds / 1e9);
                        probe.Add(perThread * threads / probeSeconds / 1e9);
                    }
                }
                double p = Median(product), s = Median(split), o = Median(probe);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"threads {threads}: product {p:F1} GB/s | read, split per matrix {s:F1} GB/s | read, one sweep {o:F1} GB/s | product / read {p / s:P0} / {p / o:P0}"));
            }
            GC.KeepAlive(sink);
            return 0;
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree(buffer);
        }
    }

    /// <summary>XOR of the first <paramref name="length"/> bytes (rounded down to 256) into 8 vector accumulators: a plain streaming read (also <see cref="ModelBench"/>'s bandwidth probe).</summary>
    internal static long Read(byte* start, long length)
    {
        var a0 = Vector256<long>.Zero;
        var a1 = a0;
        var a2 = a0;
        var a3 = a0;
        var a4 = a0;
        var a5 = a0;
        var a6 = a0;
        var a7 = a0;
        long* p = (long*)start, end = (long*)(start + length / 256 * 256);
        for (; p < end; p += 32)
        {
            a0 ^= Vector256.Load(p);
            a1 ^= Vector256.Load(p + 4);
            a2 ^= Vector256.Load(p + 8);
            a3 ^= Vector256.Load(p + 12);
            a4 ^= Vector256.Load(p + 16);
            a5 ^= Vector256.Load(p + 20);
            a6 ^= Vector256.Load(p + 24);
            a7 ^= Vector256.Load(p + 28);
        }
        return Vector256.GetElement(a0 ^ a1 ^ a2 ^ a3 ^ a4 ^ a5 ^ a6 ^ a7, 0);
    }

    private static double Median(List<double> v)
    {
        var s = v.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}
