using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace Bora.Numerics.Threading;

/// <summary>
/// A persistent pool for the numeric kernels: N - 1 background threads plus the calling thread run
/// <see cref="For"/>'s work items. Each participant claims items in order from a shared counter (one atomic
/// increment per item): on a machine shared with other processes a descheduled thread leaves its items to the
/// others instead of holding up the whole call (a static split made every product as slow as its slowest
/// thread there). Between calls the workers spin briefly on their own cache line, then block on a semaphore;
/// the caller, once the items are gone, spins briefly and then blocks until every woken worker has checked in
/// (so the job's fields are never rewritten under a late worker). A call allocates nothing.
/// A call made while another is in flight (a nested call from a work item, or a second thread) runs its
/// items on the calling thread, in order, so the pool never deadlocks and results never depend on who ran
/// an item. The first exception thrown by any item is rethrown on the caller after every participant finished.
/// </summary>
public sealed class WorkerPool : IDisposable
{
    /// <summary>How long an idle worker spins before it blocks: long enough to bridge the gap between consecutive matrix products of one forward pass.</summary>
    private static readonly long SpinTicks = Stopwatch.Frequency / 20_000; // 50 microseconds

    private readonly object _grow = new();
    private Worker[] _workers = [];

    private readonly object _gate = new(); // the caller waits on it; the last worker to check in pulses it
    private int _busy; // 1 while a call is in flight
    private int _pending; // participants other than the caller that have not finished
    private Padded _next; // the next unclaimed item
    private Action<int>? _body;
    private int _count;
    private int _participants;
    private Exception? _error;
    private bool _disposed;

    /// <summary>Runs body(i) for i in [0, count) on at most <paramref name="threads"/> threads (the caller included) and returns when all are done.</summary>
    /// <exception cref="ArgumentOutOfRangeException">count is negative or threads is less than 1.</exception>
    public void For(int count, int threads, Action<int> body)
    {
        ArgumentNullException.ThrowIfNull(body);
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        ObjectDisposedException.ThrowIf(_disposed, this);
        int participants = Math.Min(threads, count);
        if (participants <= 1 || Interlocked.CompareExchange(ref _busy, 1, 0) != 0)
        {
            for (int i = 0; i < count; i++)
            {
                body(i);
            }
            return;
        }
        try
        {
            EnsureWorkers(participants - 1);
            _body = body;
            _count = count;
            _participants = participants;
            _error = null;
            Volatile.Write(ref _next.Value, 0);
            Volatile.Write(ref _pending, participants - 1);
            for (int w = 0; w < participants - 1; w++)
            {
                _workers[w].Wake();
            }
            Exception? mine = null;
            try
            {
                RunPart(0);
            }
#pragma warning disable CA1031 // every exception is rethrown below, after the workers are done with the buffers
            catch (Exception e)
#pragma warning restore CA1031
            {
                mine = e;
            }
            long start = Stopwatch.GetTimestamp();
            while (Volatile.Read(ref _pending) != 0)
            {
                if (Stopwatch.GetTimestamp() - start > SpinTicks)
                {
                    lock (_gate)
                    {
                        while (Volatile.Read(ref _pending) != 0)
                        {
                            Monitor.Wait(_gate); // no lost wake-up: the last worker pulses under the same lock
                        }
                    }
                    break;
                }
                Thread.SpinWait(8);
            }
            _body = null;
            var error = mine ?? _error;
            if (error is not null)
            {
                ExceptionDispatchInfo.Capture(error).Throw();
            }
        }
        finally
        {
            Volatile.Write(ref _busy, 0);
        }
    }

    /// <summary>Stops the workers (they finish nothing new); later calls throw.</summary>
    public void Dispose()
    {
        _disposed = true;
        lock (_grow)
        {
            foreach (var w in _workers)
            {
                w.Stop();
            }
        }
    }

    /// <summary>Claims and runs items until none is left (participant p's index is only for debugging).</summary>
    private void RunPart(int p)
    {
        _ = p;
        int count = _count;
        var body = _body!;
        for (int i = Interlocked.Increment(ref _next.Value) - 1; i < count; i = Interlocked.Increment(ref _next.Value) - 1)
        {
            body(i);
        }
    }

    private void EnsureWorkers(int n)
    {
        if (_workers.Length >= n)
        {
            return;
        }
        lock (_grow)
        {
            var grown = new Worker[n];
            Array.Copy(_workers, grown, _workers.Length);
            for (int i = _workers.Length; i < n; i++)
            {
                grown[i] = new Worker(this, i + 1);
            }
            _workers = grown;
        }
    }

    /// <summary>One background thread; its ticket and sleep flag sit on their own cache lines.</summary>
    private sealed class Worker
    {
        private readonly WorkerPool _pool;
        private readonly int _participant;
        private readonly SemaphoreSlim _wake = new(0);
        private Padded _ticket; // bumped by the caller for each call this worker takes part in
        private Padded _sleeping; // 1 while blocked (or about to block) on _wake
        private volatile bool _stop;

        public Worker(WorkerPool pool, int participant)
        {
            _pool = pool;
            _participant = participant;
            var thread = new Thread(Loop) { IsBackground = true, Name = $"Bora numerics {participant}" };
            thread.Start();
        }

        public void Wake()
        {
            Interlocked.Increment(ref _ticket.Value);
            if (Interlocked.Exchange(ref _sleeping.Value, 0) == 1)
            {
                _wake.Release();
            }
        }

        public void Stop()
        {
            _stop = true;
            Wake();
        }

        private void Loop()
        {
            int seen = 0;
            while (true)
            {
                WaitForTicket(seen);
                seen = Volatile.Read(ref _ticket.Value);
                if (_stop)
                {
                    return;
                }
                try
                {
                    _pool.RunPart(_participant);
                }
#pragma warning disable CA1031 // handed to the caller, which rethrows it
                catch (Exception e)
#pragma warning restore CA1031
                {
                    Interlocked.CompareExchange(ref _pool._error, e, null);
                }
                if (Interlocked.Decrement(ref _pool._pending) == 0)
                {
                    lock (_pool._gate)
                    {
                        Monitor.PulseAll(_pool._gate);
                    }
                }
            }
        }

        /// <summary>Spins for <see cref="SpinTicks"/>, then blocks until the ticket moves past <paramref name="seen"/>.</summary>
        private void WaitForTicket(int seen)
        {
            long start = Stopwatch.GetTimestamp();
            int spins = 0;
            while (Volatile.Read(ref _ticket.Value) == seen)
            {
                if (++spins % 64 == 0 && Stopwatch.GetTimestamp() - start > SpinTicks)
                {
                    Interlocked.Exchange(ref _sleeping.Value, 1);
                    if (Volatile.Read(ref _ticket.Value) != seen && Interlocked.Exchange(ref _sleeping.Value, 0) == 1)
                    {
                        return; // woken before blocking, and nobody will release the semaphore for it
                    }
                    _wake.Wait(); // the caller cleared the flag and released (or will)
                    return;
                }
                Thread.SpinWait(8);
            }
        }
    }

    /// <summary>An int alone on a 128-byte span (two cache lines, against adjacent-line prefetch).</summary>
    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Explicit, Size = 256)]
    private struct Padded
    {
        [System.Runtime.InteropServices.FieldOffset(128)]
        public int Value;
    }
}
