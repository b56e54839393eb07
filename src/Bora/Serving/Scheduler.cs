using System.Globalization;
using Bora.Tokenizers;

namespace Bora.Serving;

/// <summary>Limits of a <see cref="Scheduler"/>.</summary>
public sealed record SchedulerOptions
{
    /// <summary>Token budget of one step: tokens of all sequences run in one forward pass.</summary>
    public int MaxBatchTokens { get; init; } = 256;

    /// <summary>Most tokens one sequence runs in a step (prefill chunk), so a long prompt cannot hold up decodes.</summary>
    public int MaxChunkTokens { get; init; } = 128;

    /// <summary>Most sequences in the running batch.</summary>
    public int MaxRunning { get; init; } = 64;

    /// <summary>Most sequences queued; <see cref="Scheduler.Add"/> answers <see cref="Admission.QueueFull"/> beyond.</summary>
    public int MaxWaiting { get; init; } = 256;

    /// <summary>Most positions of one sequence (prompt + generated).</summary>
    public int ContextLength { get; init; } = 2048;

    public void Validate()
    {
        static void Positive(string name, int v)
        {
            if (v <= 0)
            {
                throw new ArgumentOutOfRangeException(name, v, $"scheduler option {name} must be positive");
            }
        }
        Positive(nameof(MaxBatchTokens), MaxBatchTokens);
        Positive(nameof(MaxChunkTokens), MaxChunkTokens);
        Positive(nameof(MaxRunning), MaxRunning);
        Positive(nameof(MaxWaiting), MaxWaiting);
        Positive(nameof(ContextLength), ContextLength);
    }
}

/// <summary>Answer of <see cref="Scheduler.Add"/>.</summary>
public enum Admission
{
    /// <summary>Queued; it will run.</summary>
    Queued,

    /// <summary>The waiting queue is full; try later.</summary>
    QueueFull,

    /// <summary>Prompt + max tokens exceed the context length: it can never run.</summary>
    ExceedsContext,

    /// <summary>It would need more KV blocks than the whole pool holds: it can never run.</summary>
    ExceedsCache,
}

/// <summary>
/// Tokens Start .. Start + Count - 1 of <see cref="Sequence"/> run in this step. When
/// <see cref="Samples"/>, the chunk ends at the sequence's last token and the engine samples one
/// token from the logits of its last position.
/// </summary>
public readonly record struct ScheduledChunk(Sequence Sequence, int Start, int Count, bool Samples);

/// <summary>What one step runs: chunks of several sequences in one forward pass.</summary>
public sealed class ScheduledBatch
{
    internal ScheduledBatch(List<ScheduledChunk> chunks, List<Sequence> preempted)
    {
        Chunks = chunks;
        Preempted = preempted;
        foreach (var c in chunks)
        {
            TotalTokens += c.Count;
            if (c.Samples)
            {
                SampleCount++;
            }
        }
    }

    public IReadOnlyList<ScheduledChunk> Chunks { get; }

    /// <summary>Sequences moved back to the waiting queue by this step (their blocks freed).</summary>
    public IReadOnlyList<Sequence> Preempted { get; }

    /// <summary>Sum of chunk lengths (at most <see cref="SchedulerOptions.MaxBatchTokens"/>).</summary>
    public int TotalTokens { get; }

    /// <summary>Chunks that sample a token: the length of the span <see cref="Scheduler.Postprocess"/> expects.</summary>
    public int SampleCount { get; }

    public bool IsEmpty => Chunks.Count == 0;
}

/// <summary>
/// Continuous batching as a pure state machine (no I/O, no model): the engine calls
/// <see cref="Schedule"/>, runs the returned chunks through the model in one pass, samples a token
/// for each chunk that <see cref="ScheduledChunk.Samples"/>, and hands them to
/// <see cref="Postprocess"/>. Sequences move Waiting → Running → Finished (and Running → Waiting when
/// preempted).
/// <para>
/// A step fills a token budget (<see cref="SchedulerOptions.MaxBatchTokens"/>) in this order:
/// (1) every running sequence that decodes (one token left to run), oldest first; (2) running
/// sequences with more to run (prompt chunks of at most <see cref="SchedulerOptions.MaxChunkTokens"/>,
/// or recomputation after a preemption), oldest first; (3) when nobody was preempted in this step,
/// waiting sequences in arrival order, each after taking its cached prefix blocks, as long as its
/// first chunk's blocks fit, the budget lasts and the running batch has room. Admission stops at the
/// first that does not fit, so later small requests cannot starve an earlier large one.
/// </para>
/// <para>
/// When a running sequence needs a block and the pool has none, the running sequence that arrived
/// last is preempted (blocks freed, computed tokens forgotten, back to the waiting queue in arrival
/// order; it is recomputed later, mostly from the prefix cache). The oldest running sequence thus
/// always progresses, and every admitted sequence fits the pool alone (checked by <see cref="Add"/>),
/// so every sequence finishes.
/// </para>
/// Not thread-safe: one engine thread drives it.
/// </summary>
public sealed class Scheduler
{
    private readonly List<Sequence> _waiting = [];   // sorted by Arrival
    private readonly List<Sequence> _running = [];   // sorted by Arrival
    private readonly List<Sequence> _finished = [];  // since the last TakeFinished
    private ScheduledBatch? _inFlight;
    private long _arrivals;

    public Scheduler(SchedulerOptions options, KvBlockManager blocks)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(blocks);
        options.Validate();
        Options = options;
        Blocks = blocks;
    }

    public SchedulerOptions Options { get; }

    public KvBlockManager Blocks { get; }

    public IReadOnlyList<Sequence> Waiting => _waiting;

    public IReadOnlyList<Sequence> Running => _running;

    /// <summary>True while a sequence is waiting or running.</summary>
    public bool HasWork => _waiting.Count > 0 || _running.Count > 0;

    /// <summary>True between <see cref="Schedule"/> returning a non-empty batch and its <see cref="Postprocess"/>.</summary>
    public bool InFlight => _inFlight is not null;

    /// <summary>Steps scheduled so far (non-empty batches).</summary>
    public long Steps { get; private set; }

    /// <summary>Preemptions so far.</summary>
    public long PreemptionCount { get; private set; }

    /// <summary>Prompt tokens taken from the prefix cache at admissions so far (not computed again).</summary>
    public long CachedPromptTokens { get; private set; }

    /// <summary>
    /// Tokens looked up in the prefix cache at admissions so far (every token of each admitted sequence, as vLLM's
    /// prefix-cache queries); <see cref="CachedPromptTokens"/> of them were hits.
    /// </summary>
    public long QueriedPromptTokens { get; private set; }

    /// <summary>Queues a new sequence, or says why it cannot be queued (then nothing changes).</summary>
    public Admission Add(Sequence seq)
    {
        ArgumentNullException.ThrowIfNull(seq);
        if (seq.Arrival >= 0 || seq.Status != SequenceStatus.Waiting)
        {
            throw new InvalidOperationException($"{seq} was already added to a scheduler");
        }
        long total = (long)seq.PromptLength + seq.MaxTokens;
        if (total > Options.ContextLength)
        {
            return Admission.ExceedsContext;
        }
        if (Blocks.MaxBlocksHeld((int)total, Options.MaxChunkTokens) > Blocks.Pool.BlockCount)
        {
            return Admission.ExceedsCache;
        }
        if (_waiting.Count >= Options.MaxWaiting)
        {
            return Admission.QueueFull;
        }
        seq.Arrival = _arrivals++;
        _waiting.Add(seq);
        return Admission.Queued;
    }

    /// <summary>Picks the chunks of the next step (empty when there is nothing to run).</summary>
    public ScheduledBatch Schedule()
    {
        if (_inFlight is not null)
        {
            throw new InvalidOperationException("Schedule called twice without Postprocess of the batch in flight");
        }
        var chunks = new List<ScheduledChunk>();
        var preempted = new List<Sequence>();
        int budget = Options.MaxBatchTokens;

        for (int pass = 0; pass < 2 && budget > 0; pass++)
        {
            bool decodes = pass == 0;
            for (int i = 0; i < _running.Count && budget > 0; i++)
            {
                var seq = _running[i];
                int remaining = seq.Tokens.Count - seq.ComputedTokens;
                if ((remaining == 1) != decodes || IsScheduled(chunks, seq))
                {
                    continue;
                }
                int n = Math.Min(Math.Min(remaining, budget), Options.MaxChunkTokens);
                Blocks.ReleaseOutOfWindow(seq, seq.ComputedTokens);
                if (!EnsureOrPreempt(seq, seq.ComputedTokens + n, chunks, preempted, ref budget))
                {
                    break; // seq preempted itself: it and everything after it are gone
                }
                chunks.Add(new ScheduledChunk(seq, seq.ComputedTokens, n, seq.ComputedTokens + n == seq.Tokens.Count));
                budget -= n;
            }
        }

        if (preempted.Count == 0)
        {
            while (_waiting.Count > 0 && budget > 0 && _running.Count < Options.MaxRunning)
            {
                var seq = _waiting[0];
                int cached = Blocks.AcquirePrefix(seq);
                seq.ComputedTokens = cached;
                seq.CachedTokens = cached;
                Blocks.ReleaseOutOfWindow(seq, cached);
                int n = Math.Min(Math.Min(seq.Tokens.Count - cached, budget), Options.MaxChunkTokens);
                if (!Blocks.TryEnsure(seq, cached + n))
                {
                    Blocks.Free(seq);
                    seq.ComputedTokens = 0;
                    seq.CachedTokens = 0;
                    break;
                }
                _waiting.RemoveAt(0);
                CachedPromptTokens += cached;
                QueriedPromptTokens += seq.Tokens.Count;
                seq.Status = SequenceStatus.Running;
                InsertByArrival(_running, seq);
                chunks.Add(new ScheduledChunk(seq, cached, n, cached + n == seq.Tokens.Count));
                budget -= n;
            }
        }

        var batch = new ScheduledBatch(chunks, preempted);
        if (!batch.IsEmpty)
        {
            _inFlight = batch;
            Steps++;
        }
        return batch;
    }

    /// <summary>
    /// Records the step's results: every chunk's tokens are now computed, and each sampling chunk
    /// (in batch order) gets its token from <paramref name="sampled"/>. Finishes sequences that hit
    /// EOS or their max tokens, and those cancelled or stopped while the step ran.
    /// </summary>
    public void Postprocess(ScheduledBatch batch, ReadOnlySpan<TokenId> sampled)
    {
        ArgumentNullException.ThrowIfNull(batch);
        if (!ReferenceEquals(batch, _inFlight))
        {
            throw new InvalidOperationException("Postprocess needs the batch returned by the last Schedule");
        }
        if (sampled.Length != batch.SampleCount)
        {
            throw new ArgumentException($"the batch has {batch.SampleCount} sampling chunks; got {sampled.Length} tokens", nameof(sampled));
        }
        _inFlight = null;
        int k = 0;
        foreach (var c in batch.Chunks)
        {
            var seq = c.Sequence;
            seq.ComputedTokens = c.Start + c.Count;
            Blocks.PublishComputed(seq);
            SequenceFinish? reason = null;
            if (c.Samples)
            {
                var token = sampled[k++];
                seq.Append(token);
                if (seq.Eos is { } eos && token == eos)
                {
                    reason = SequenceFinish.Eos;
                }
                else if (seq.GeneratedCount >= seq.MaxTokens || seq.Tokens.Count >= Options.ContextLength)
                {
                    reason = SequenceFinish.Length;
                }
            }
            if (seq.CancelRequested)
            {
                reason = SequenceFinish.Cancelled;
            }
            else if (seq.StopRequested is { } stop)
            {
                reason = stop;
            }
            if (reason is { } r)
            {
                FinishNow(seq, r);
            }
        }
    }

    /// <summary>
    /// Cancels a waiting or running sequence: its blocks are freed now, or at the
    /// <see cref="Postprocess"/> of the step in flight that runs it. False when already finished.
    /// </summary>
    public bool Cancel(Sequence seq) => End(seq, SequenceFinish.Cancelled);

    /// <summary>Ends a sequence early with <paramref name="reason"/> (the engine saw a stop string); as <see cref="Cancel"/>.</summary>
    public bool Stop(Sequence seq, SequenceFinish reason = SequenceFinish.Stop) => End(seq, reason);

    /// <summary>Sequences finished since the last call, in the order they finished.</summary>
    public IReadOnlyList<Sequence> TakeFinished()
    {
        if (_finished.Count == 0)
        {
            return [];
        }
        var done = _finished.ToArray();
        _finished.Clear();
        return done;
    }

    /// <summary>
    /// Throws <see cref="InvalidOperationException"/> when internal state is inconsistent: reference
    /// counts against block tables, free count, queue order and statuses, table coverage.
    /// </summary>
    public void CheckInvariants()
    {
        var pool = Blocks.Pool;
        var refs = new int[pool.BlockCount];
        long previous = -1;
        foreach (var s in _running)
        {
            Require(s.Status == SequenceStatus.Running, $"{s} is in the running list");
            Require(s.Arrival > previous, "running list out of arrival order");
            previous = s.Arrival;
            Require(s.ComputedTokens <= s.Tokens.Count, $"{s} computed more tokens than it has");
            Require(s.Blocks.Count >= Blocks.BlocksFor(s.ComputedTokens), $"{s}: its table does not cover its computed tokens");
            var seen = new HashSet<int>();
            foreach (int b in s.Blocks)
            {
                if (b >= 0)
                {
                    Require(seen.Add(b), $"{s} holds block {b} twice");
                    refs[b]++;
                }
            }
        }
        previous = -1;
        foreach (var s in _waiting)
        {
            Require(s.Status == SequenceStatus.Waiting, $"{s} is in the waiting list");
            Require(s.Arrival > previous, "waiting list out of arrival order");
            previous = s.Arrival;
            Require(s.Blocks.Count == 0 && s.ComputedTokens == 0, $"waiting {s} holds blocks");
        }
        Require(_running.Count <= Options.MaxRunning, "too many running sequences");
        int free = 0;
        for (int b = 0; b < pool.BlockCount; b++)
        {
            Require(pool.RefCount(b) == refs[b], string.Create(CultureInfo.InvariantCulture, $"block {b} has count {pool.RefCount(b)} but {refs[b]} tables hold it"));
            if (refs[b] == 0)
            {
                free++;
            }
        }
        Require(free == pool.FreeCount, $"free count {pool.FreeCount}, but {free} blocks are unreferenced");
    }

    private static void Require(bool ok, string what)
    {
        if (!ok)
        {
            throw new InvalidOperationException("scheduler invariant broken: " + what);
        }
    }

    private bool End(Sequence seq, SequenceFinish reason)
    {
        ArgumentNullException.ThrowIfNull(seq);
        if (seq.Status == SequenceStatus.Finished || seq.Arrival < 0)
        {
            return false;
        }
        if (_inFlight is { } batch && IsScheduled(batch.Chunks, seq))
        {
            if (reason == SequenceFinish.Cancelled)
            {
                seq.CancelRequested = true;
            }
            else
            {
                seq.StopRequested = reason;
            }
            return true;
        }
        FinishNow(seq, reason);
        return true;
    }

    private void FinishNow(Sequence seq, SequenceFinish reason)
    {
        if (seq.Status == SequenceStatus.Running)
        {
            _running.Remove(seq);
        }
        else if (seq.Status == SequenceStatus.Waiting)
        {
            _waiting.Remove(seq);
        }
        Blocks.Free(seq);
        seq.Status = SequenceStatus.Finished;
        seq.FinishReason = reason;
        _finished.Add(seq);
    }

    /// <summary>
    /// Grows <paramref name="seq"/>'s table to <paramref name="length"/> positions, preempting the
    /// latest-arrived running sequences until it fits; false when seq itself had to go.
    /// </summary>
    private bool EnsureOrPreempt(Sequence seq, int length, List<ScheduledChunk> chunks, List<Sequence> preempted, ref int budget)
    {
        while (!Blocks.TryEnsure(seq, length))
        {
            var victim = _running[^1];
            int at = chunks.FindIndex(c => c.Sequence == victim);
            if (at >= 0)
            {
                budget += chunks[at].Count;
                chunks.RemoveAt(at);
            }
            _running.RemoveAt(_running.Count - 1);
            Blocks.Free(victim);
            victim.ComputedTokens = 0;
            victim.CachedTokens = 0;
            victim.Status = SequenceStatus.Waiting;
            victim.Preemptions++;
            PreemptionCount++;
            InsertByArrival(_waiting, victim);
            preempted.Add(victim);
            if (victim == seq)
            {
                return false;
            }
        }
        return true;
    }

    private static bool IsScheduled(IReadOnlyList<ScheduledChunk> chunks, Sequence seq)
    {
        foreach (var c in chunks)
        {
            if (c.Sequence == seq)
            {
                return true;
            }
        }
        return false;
    }

    private static void InsertByArrival(List<Sequence> list, Sequence seq)
    {
        int i = list.Count;
        while (i > 0 && list[i - 1].Arrival > seq.Arrival)
        {
            i--;
        }
        list.Insert(i, seq);
    }
}
