using Bora.Numerics;
using Bora.Numerics.Threading;

namespace Bora.Model.Tests.QuantKernels;

/// <summary>The numeric worker pool: every item once on at most the given threads, exceptions, nesting, concurrent callers.</summary>
[Trait("Category", "Kernels")]
[Collection("NumericsThreads")] // tests that set the process-wide NumericsThreads.MaxThreads run one at a time
public sealed class WorkerPoolTests
{
    [Fact]
    public void EveryItemRunsExactlyOnceOnAtMostTheGivenThreads()
    {
        using var pool = new WorkerPool();
        foreach (int threads in new[] { 1, 2, 3, 5 })
        {
            foreach (int count in new[] { 0, 1, 2, 3, 7, 64, 1000 })
            {
                var hits = new int[count];
                var owners = new HashSet<int>();
                pool.For(count, threads, i =>
                {
                    Interlocked.Increment(ref hits[i]);
                    lock (owners)
                    {
                        owners.Add(Environment.CurrentManagedThreadId);
                    }
                    Thread.SpinWait(100);
                });
                Assert.All(hits, h => Assert.Equal(1, h));
                Assert.True(owners.Count <= threads, $"{count} items ran on {owners.Count} threads, more than {threads}");
            }
        }
    }

    [Fact]
    public void ManyCallsInARowStayCorrect()
    {
        using var pool = new WorkerPool();
        long total = 0;
        for (int call = 0; call < 2000; call++)
        {
            pool.For(4, 3, i => Interlocked.Add(ref total, i + 1));
        }
        Assert.Equal(2000L * 10, total);
    }

    [Fact]
    public void ExceptionsOfWorkersAndOfTheCallerPropagateAfterAllItemsFinish()
    {
        using var pool = new WorkerPool();
        foreach (int throwing in new[] { 0, 3 }) // item 0 runs on the caller, item 3 on a worker
        {
            int finished = 0;
            var e = Assert.Throws<InvalidOperationException>(() => pool.For(4, 2, i =>
            {
                if (i == throwing)
                {
                    throw new InvalidOperationException($"item {i}");
                }
                Thread.Sleep(20);
                Interlocked.Increment(ref finished);
            }));
            Assert.Equal($"item {throwing}", e.Message);
            // Every participant had checked in before For returned: the items not thrown all ran (each claims until none is left).
            Assert.Equal(3, Volatile.Read(ref finished));
            // The pool still works afterwards.
            int sum = 0;
            pool.For(6, 2, i => Interlocked.Add(ref sum, i));
            Assert.Equal(15, sum);
        }
    }

    [Fact]
    public void NestedAndConcurrentCallsRunInlineWithoutDeadlock()
    {
        using var pool = new WorkerPool();
        var hits = new int[4 * 5];
        pool.For(4, 2, i => pool.For(5, 2, j => Interlocked.Increment(ref hits[5 * i + j])));
        Assert.All(hits, h => Assert.Equal(1, h));

        var counts = new int[2];
        Parallel.For(0, 2, c =>
        {
            for (int call = 0; call < 200; call++)
            {
                pool.For(8, 2, i => Interlocked.Increment(ref counts[c]));
            }
        });
        Assert.Equal([1600, 1600], counts);
    }

    [Fact]
    public void NumericsThreadsForHonoursMaxThreads()
    {
        int saved = NumericsThreads.MaxThreads;
        try
        {
            NumericsThreads.MaxThreads = 1;
            var ids = new HashSet<int>();
            NumericsThreads.For(16, i =>
            {
                lock (ids)
                {
                    ids.Add(Environment.CurrentManagedThreadId);
                }
            });
            Assert.Equal([Environment.CurrentManagedThreadId], ids);
            Assert.Throws<ArgumentOutOfRangeException>(() => NumericsThreads.MaxThreads = 0);
        }
        finally
        {
            NumericsThreads.MaxThreads = saved;
        }
    }
}
