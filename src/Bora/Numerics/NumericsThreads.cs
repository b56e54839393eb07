namespace Bora.Numerics;

/// <summary>
/// The one Bora-wide thread count: how many threads the matrix products (<see cref="QuantizedMatrix"/>,
/// <see cref="F32Matrix"/>) and the attention loop of the transformer may use at once. Defaults to the
/// processor count; <c>--threads N</c> of the CLI and the benchmarks set it. Takes effect from the next call.
/// </summary>
public static class NumericsThreads
{
    private static ParallelOptions s_options = new() { MaxDegreeOfParallelism = Environment.ProcessorCount };

    /// <summary>Threads at most (at least 1).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Less than 1.</exception>
    public static int MaxThreads
    {
        get => s_options.MaxDegreeOfParallelism;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            s_options = new ParallelOptions { MaxDegreeOfParallelism = value };
        }
    }

    /// <summary>Options for <see cref="Parallel.For(int, int, ParallelOptions, Action{int})"/> that honour <see cref="MaxThreads"/>.</summary>
    public static ParallelOptions Options => s_options;
}
