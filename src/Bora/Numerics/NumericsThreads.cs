using Bora.Numerics.Threading;

namespace Bora.Numerics;

/// <summary>
/// The one Bora-wide thread count: how many threads the matrix products (<see cref="QuantizedMatrix"/>,
/// <see cref="F32Matrix"/>) and the attention loop of the transformer may use at once. Defaults to the
/// processor count; <c>--threads N</c> of the CLI and the benchmarks set it. Takes effect from the next call.
/// It also owns the process-wide <see cref="WorkerPool"/> the matrix products run on (<see cref="For"/>).
/// </summary>
public static class NumericsThreads
{
    private static ParallelOptions s_options = new() { MaxDegreeOfParallelism = Environment.ProcessorCount };

    private static readonly Lazy<WorkerPool> s_pool = new(() => new WorkerPool());

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

    /// <summary>
    /// Runs body(i) for i in [0, count) on the shared worker pool with at most <see cref="MaxThreads"/> threads
    /// (the caller included; each thread claims the next unclaimed item until none is left) and returns when all
    /// are done. Give each item a whole range of output rows (a multiple of 16 floats) so no two threads write one
    /// cache line, and a few items per thread so a delayed thread's share is taken over. Nested or concurrent calls
    /// run on the calling thread. Rethrows the first exception.
    /// Allocates nothing (cache the delegate to keep the caller allocation-free too).
    /// </summary>
    public static void For(int count, Action<int> body) => s_pool.Value.For(count, MaxThreads, body);
}
