using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Bora.Numerics;

/// <summary>What a <see cref="NumericsProfile"/> interval measured.</summary>
public enum ProfileSection
{
    /// <summary>Whole <see cref="QuantizedMatrix"/> products of Q8_0 weights (wall time on the calling thread).</summary>
    MatMulQ8_0,

    /// <summary>Whole Q4_0 products.</summary>
    MatMulQ4_0,

    /// <summary>Whole Q4_K products.</summary>
    MatMulQ4_K,

    /// <summary>Whole Q6_K products.</summary>
    MatMulQ6_K,

    /// <summary>Whole float32 / F16 / BF16 products (<see cref="F32Matrix"/>, <see cref="HalfMatrix"/>).</summary>
    MatMulFloat,

    /// <summary>Inside the quantized products: quantizing the activations to 8 bits (calling thread).</summary>
    QuantizeActivations,

    /// <summary>Inside the quantized products: per-product activation preparation (sums, pair data).</summary>
    PrepareActivations,

    /// <summary>Inside the quantized products: time each thread spent in work items, summed over threads.</summary>
    KernelBusy,

    /// <summary>Inside the quantized products: threads x wall time of the parallel part (busy + idle).</summary>
    KernelCapacity,

    /// <summary>Attention proper (scores, softmax, weighted values), after the projections and RoPE.</summary>
    Attention,

    /// <summary>RMSNorm of the rows.</summary>
    RmsNorm,

    /// <summary>RoPE on q and k.</summary>
    Rope,

    /// <summary>SiLU(W1 x) * (W3 x).</summary>
    SwiGlu,

    /// <summary>Residual additions, embedding lookup, KV cache writes.</summary>
    Other,
}

/// <summary>
/// A process-wide Stopwatch breakdown of where a forward pass spends its time (benchmarks: <c>model --profile</c>),
/// off unless <see cref="Enabled"/> is set (or the environment variable BORA_PROFILE=1 at start). When off, each
/// probe costs one static bool read. Intervals are added with Interlocked, so worker threads may record too.
/// </summary>
public static class NumericsProfile
{
    private static readonly long[] s_ticks = new long[Enum.GetValues<ProfileSection>().Length];
    private static readonly long[] s_counts = new long[s_ticks.Length];

    /// <summary>Whether probes record (default: BORA_PROFILE=1).</summary>
    public static bool Enabled { get; set; } = Environment.GetEnvironmentVariable("BORA_PROFILE") == "1";

    /// <summary>A timestamp to pass to <see cref="Stop"/>, or 0 when disabled.</summary>
    public static long Start() => Enabled ? Stopwatch.GetTimestamp() : 0;

    /// <summary>Adds the time since <paramref name="start"/> (from <see cref="Start"/>; 0 records nothing) to <paramref name="section"/>.</summary>
    public static void Stop(ProfileSection section, long start)
    {
        if (start != 0)
        {
            Add(section, Stopwatch.GetTimestamp() - start);
        }
    }

    /// <summary>Adds <paramref name="ticks"/> Stopwatch ticks to <paramref name="section"/> and counts one interval.</summary>
    public static void Add(ProfileSection section, long ticks)
    {
        Interlocked.Add(ref s_ticks[(int)section], ticks);
        Interlocked.Increment(ref s_counts[(int)section]);
    }

    /// <summary>Clears every section.</summary>
    public static void Reset()
    {
        Array.Clear(s_ticks);
        Array.Clear(s_counts);
    }

    /// <summary>Seconds recorded in <paramref name="section"/>.</summary>
    public static double Seconds(ProfileSection section) => (double)Volatile.Read(ref s_ticks[(int)section]) / Stopwatch.Frequency;

    /// <summary>One line per non-empty section: seconds, share of <paramref name="totalSeconds"/>, interval count.</summary>
    public static string Report(double totalSeconds)
    {
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        foreach (var section in Enum.GetValues<ProfileSection>())
        {
            long count = Volatile.Read(ref s_counts[(int)section]);
            if (count == 0)
            {
                continue;
            }
            double sec = Seconds(section);
            sb.AppendLine(string.Create(inv, $"  {section,-20} {sec,9:F3} s {sec / totalSeconds,7:P1} {count,8} calls"));
        }
        double capacity = Seconds(ProfileSection.KernelCapacity);
        if (capacity > 0)
        {
            sb.AppendLine(string.Create(inv, $"  worker utilisation in quantized kernels: {Seconds(ProfileSection.KernelBusy) / capacity:P1} (busy / threads x wall)"));
        }
        return sb.ToString();
    }
}
