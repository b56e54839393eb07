using Bora.Serving;
using Bora.Tokenizers;

namespace Bora.Server.Tests;

/// <summary>
/// Drives a <see cref="Scheduler"/> without a model: a "sampled" token is a fixed function of the
/// sequence id and the index of the token, so any correct schedule (batched, chunked, preempted and
/// recomputed) gives every sequence exactly the tokens it gets alone.
/// </summary>
internal sealed class FakeEngine(Scheduler scheduler)
{
    public static readonly TokenId Eos = new(2);

    public Scheduler S { get; } = scheduler;

    public List<ScheduledBatch> Batches { get; } = [];

    /// <summary>Generated token <paramref name="index"/> of sequence <paramref name="id"/> (never EOS).</summary>
    public static TokenId TokenFor(long id, int index) => new((int)((id * 31 + index * 7) % 50) + 10);

    public static TokenId[] Prompt(int length, int salt = 0) =>
        [.. Enumerable.Range(0, length).Select(i => new TokenId(100 + (i * 13 + salt) % 300))];

    /// <summary>One step: schedule, check the batch, "run" it, postprocess, check invariants. False when idle.</summary>
    public bool Step(Func<Sequence, TokenId>? sample = null)
    {
        var batch = S.Schedule();
        CheckBatch(batch);
        if (batch.IsEmpty)
        {
            Assert.False(S.HasWork, "the scheduler has work but scheduled nothing");
            return false;
        }
        Batches.Add(batch);
        var sampled = new List<TokenId>();
        foreach (var c in batch.Chunks)
        {
            if (c.Samples)
            {
                sampled.Add(sample?.Invoke(c.Sequence) ?? TokenFor(c.Sequence.Id, c.Sequence.GeneratedCount));
            }
        }
        S.Postprocess(batch, sampled.ToArray());
        S.CheckInvariants();
        IndependentInvariants(S);
        return true;
    }

    /// <summary>Steps until idle; fails after <paramref name="maxSteps"/>.</summary>
    public int RunUntilIdle(int maxSteps = 10_000)
    {
        for (int i = 0; i < maxSteps; i++)
        {
            if (!Step())
            {
                return i;
            }
        }
        Assert.Fail($"not idle after {maxSteps} steps");
        return maxSteps;
    }

    private void CheckBatch(ScheduledBatch batch)
    {
        Assert.True(batch.TotalTokens <= S.Options.MaxBatchTokens, $"{batch.TotalTokens} tokens over the budget");
        var seen = new HashSet<Sequence>();
        foreach (var c in batch.Chunks)
        {
            Assert.True(seen.Add(c.Sequence), "a sequence is scheduled twice in one step");
            Assert.Equal(SequenceStatus.Running, c.Sequence.Status);
            Assert.Equal(c.Sequence.ComputedTokens, c.Start);
            Assert.InRange(c.Count, 1, S.Options.MaxChunkTokens);
            Assert.Equal(c.Start + c.Count == c.Sequence.Tokens.Count, c.Samples);
            Assert.True(c.Sequence.BlockTable.Count * S.Blocks.BlockSize >= c.Start + c.Count, "chunk positions without blocks");
            for (int p = c.Start; p < c.Start + c.Count; p++)
            {
                Assert.True(c.Sequence.BlockTable[p / S.Blocks.BlockSize] >= 0, $"position {p} of {c.Sequence} has a released block");
            }
        }
        foreach (var v in batch.Preempted)
        {
            Assert.Equal(SequenceStatus.Waiting, v.Status);
            Assert.All(S.Running, r => Assert.True(r.Arrival < v.Arrival, "a preempted sequence arrived before one that kept running"));
        }
    }

    /// <summary>Recounts block references from the public block tables.</summary>
    public static void IndependentInvariants(Scheduler s)
    {
        var pool = s.Blocks.Pool;
        var counts = new int[pool.BlockCount];
        foreach (var seq in s.Running)
        {
            foreach (int b in seq.BlockTable)
            {
                if (b >= 0)
                {
                    counts[b]++;
                }
            }
        }
        foreach (var seq in s.Waiting)
        {
            Assert.Empty(seq.BlockTable);
        }
        for (int b = 0; b < pool.BlockCount; b++)
        {
            Assert.Equal(counts[b], pool.RefCount(b));
        }
        Assert.Equal(counts.Count(c => c == 0), pool.FreeCount);
        Assert.True(s.Running.Count <= s.Options.MaxRunning);
    }
}

public class SchedulerTests
{
    private static Scheduler Make(int blocks = 64, int blockSize = 4, int budget = 64, int chunk = 32, int maxRunning = 16,
        int maxWaiting = 64, int context = 512, int? window = null) =>
        new(new SchedulerOptions { MaxBatchTokens = budget, MaxChunkTokens = chunk, MaxRunning = maxRunning, MaxWaiting = maxWaiting, ContextLength = context },
            new KvBlockManager(new KvBlockPool(blocks, blockSize), window));

    private static Sequence Seq(long id, int prompt, int max, int salt = 0) => new(id, FakeEngine.Prompt(prompt, salt), max, FakeEngine.Eos);

    private static void AssertGeneratedAlone(Sequence s)
    {
        for (int i = 0; i < s.GeneratedCount; i++)
        {
            Assert.Equal(FakeEngine.TokenFor(s.Id, i), s.Tokens[s.PromptLength + i]);
        }
    }

    [Fact]
    public void One_sequence_prefills_in_one_step_then_decodes_one_token_per_step()
    {
        var s = Make();
        var e = new FakeEngine(s);
        var seq = Seq(1, 10, 5);
        Assert.Equal(Admission.Queued, s.Add(seq));
        int steps = e.RunUntilIdle();
        Assert.Equal(5, steps);
        Assert.Equal(10, e.Batches[0].TotalTokens);
        Assert.All(e.Batches.Skip(1), b => Assert.Equal(1, b.TotalTokens));
        Assert.Equal(SequenceFinish.Length, seq.FinishReason);
        Assert.Equal(5, seq.GeneratedCount);
        AssertGeneratedAlone(seq);
        Assert.Equal(s.Blocks.Pool.BlockCount, s.Blocks.Pool.FreeCount);
        Assert.Equal([seq], s.TakeFinished());
        Assert.Empty(s.TakeFinished());
    }

    [Fact]
    public void Eos_finishes_a_sequence_early()
    {
        var s = Make();
        var e = new FakeEngine(s);
        var seq = Seq(1, 3, 100);
        s.Add(seq);
        int n = 0;
        for (int i = 0; i < 20 && e.Step(q => ++n == 4 ? FakeEngine.Eos : new TokenId(50)); i++)
        {
        }
        Assert.Equal(SequenceFinish.Eos, seq.FinishReason);
        Assert.Equal(4, seq.GeneratedCount);
        Assert.Equal(FakeEngine.Eos, seq.Tokens[^1]);
    }

    [Fact]
    public void Long_prompt_is_prefilled_in_chunks_while_running_decodes_continue_every_step()
    {
        var s = Make(blocks: 256, budget: 48, chunk: 32);
        var e = new FakeEngine(s);
        var a = Seq(1, 5, 60);
        s.Add(a);
        e.Step();
        e.Step(); // a is decoding
        var b = Seq(2, 300, 3);
        s.Add(b);
        int prefillSteps = 0;
        for (int i = 0; i < 100 && b.Status != SequenceStatus.Finished && b.GeneratedCount == 0; i++)
        {
            e.Step();
            var batch = e.Batches[^1];
            Assert.Contains(batch.Chunks, c => c.Sequence == a && c.Count == 1);
            var bc = Assert.Single(batch.Chunks, c => c.Sequence == b);
            Assert.True(bc.Count <= 32);
            prefillSteps++;
        }
        Assert.Equal((300 + 31) / 32, prefillSteps);
        e.RunUntilIdle();
        AssertGeneratedAlone(a);
        AssertGeneratedAlone(b);
    }

    [Fact]
    public void Token_budget_and_running_limit_hold_with_many_requests_and_all_finish_in_full()
    {
        var s = Make(blocks: 200, budget: 40, chunk: 16, maxRunning: 5);
        var e = new FakeEngine(s);
        var seqs = Enumerable.Range(0, 20).Select(i => Seq(i, 3 + i * 5 % 37, 1 + i % 9, i)).ToList();
        foreach (var q in seqs)
        {
            Assert.Equal(Admission.Queued, s.Add(q));
        }
        e.RunUntilIdle();
        Assert.All(e.Batches, b => Assert.True(b.Chunks.Count <= 5));
        foreach (var q in seqs)
        {
            Assert.Equal(SequenceFinish.Length, q.FinishReason);
            Assert.Equal(q.MaxTokens, q.GeneratedCount);
            AssertGeneratedAlone(q);
        }
        Assert.Equal(200, s.Blocks.Pool.FreeCount);
    }

    [Fact]
    public void Requests_that_can_never_fit_are_refused_up_front_and_a_full_queue_refuses()
    {
        var s = Make(blocks: 8, blockSize: 4, context: 100, maxWaiting: 2);
        Assert.Equal(Admission.ExceedsContext, s.Add(Seq(1, 90, 11)));
        Assert.Equal(Admission.ExceedsCache, s.Add(Seq(2, 90, 10)));  // 100 positions fit the context, not 8 blocks of 4
        Assert.Equal(Admission.ExceedsCache, s.Add(Seq(3, 30, 3)));  // 33 positions need 9 blocks of 4; the pool has 8
        Assert.Equal(Admission.Queued, s.Add(Seq(4, 29, 3)));        // 32 positions: exactly 8 blocks
        Assert.Equal(Admission.Queued, s.Add(Seq(5, 1, 1)));
        Assert.Equal(Admission.QueueFull, s.Add(Seq(6, 1, 1)));
        Assert.Equal(2, s.Waiting.Count);
        var e = new FakeEngine(s);
        e.RunUntilIdle();
        Assert.Equal(2, s.TakeFinished().Count);
    }

    [Fact]
    public void Preemption_frees_the_latest_arrival_and_every_sequence_still_gets_its_own_tokens()
    {
        // 12 blocks of 4 = 48 positions; each sequence needs 8 + 16 = 24 positions = 6 blocks.
        var s = Make(blocks: 12, blockSize: 4, budget: 64, chunk: 16);
        var e = new FakeEngine(s);
        var seqs = Enumerable.Range(0, 6).Select(i => Seq(i, 8, 16, i)).ToList();
        seqs.ForEach(q => Assert.Equal(Admission.Queued, s.Add(q)));
        e.RunUntilIdle();
        Assert.True(s.PreemptionCount > 0, "the pool is too small for all; someone must be preempted");
        Assert.Equal(0, seqs[0].Preemptions); // the oldest is never preempted
        foreach (var q in seqs)
        {
            Assert.Equal(16, q.GeneratedCount);
            AssertGeneratedAlone(q);
        }
        Assert.Equal(12, s.Blocks.Pool.FreeCount);
    }

    [Fact]
    public void Admission_is_first_come_first_served_and_a_large_head_is_not_overtaken()
    {
        // 10 blocks of 4; the big request needs 9 blocks, so while the small first one runs it cannot be admitted,
        // and the small ones behind it must wait too.
        var s = Make(blocks: 10, blockSize: 4, budget: 64, chunk: 64);
        var e = new FakeEngine(s);
        var first = Seq(0, 6, 6);
        var big = Seq(1, 30, 4);
        var smalls = Enumerable.Range(2, 4).Select(i => Seq(i, 2, 2, i)).ToList();
        s.Add(first);
        s.Add(big);
        smalls.ForEach(q => s.Add(q));
        var firstStep = new Dictionary<Sequence, int>();
        for (int step = 0; step < 500 && e.Step(); step++)
        {
            foreach (var c in e.Batches[^1].Chunks)
            {
                firstStep.TryAdd(c.Sequence, step);
            }
        }
        var order = firstStep.OrderBy(kv => kv.Value).ThenBy(kv => kv.Key.Arrival).Select(kv => kv.Key.Id).ToList();
        Assert.Equal([0, 1, 2, 3, 4, 5], order);
        Assert.All(smalls, q => Assert.True(firstStep[q] >= firstStep[big]));
    }

    [Fact]
    public void Equal_requests_finish_in_arrival_order()
    {
        var s = Make(maxRunning: 2);
        var e = new FakeEngine(s);
        var seqs = Enumerable.Range(0, 6).Select(i => Seq(i, 4, 3, i)).ToList();
        seqs.ForEach(q => s.Add(q));
        var finished = new List<long>();
        for (int i = 0; i < 100 && e.Step(); i++)
        {
            finished.AddRange(s.TakeFinished().Select(q => q.Id));
        }
        Assert.Equal([0, 1, 2, 3, 4, 5], finished);
    }

    [Fact]
    public void Cancelling_a_running_sequence_between_steps_frees_its_blocks_at_once()
    {
        var s = Make(blocks: 32);
        var e = new FakeEngine(s);
        var a = Seq(1, 20, 50);
        s.Add(a);
        e.Step();
        Assert.True(s.Blocks.Pool.FreeCount < 32);
        Assert.True(s.Cancel(a));
        Assert.Equal(32, s.Blocks.Pool.FreeCount);
        Assert.Equal(SequenceFinish.Cancelled, a.FinishReason);
        Assert.Empty(a.BlockTable);
        Assert.False(s.Cancel(a));
        Assert.False(s.HasWork);
        Assert.Equal([a], s.TakeFinished());
    }

    [Fact]
    public void Cancelling_during_a_step_frees_at_its_postprocess_and_waiting_ones_at_once()
    {
        var s = Make(blocks: 32, maxRunning: 1);
        var a = Seq(1, 20, 50);
        var b = Seq(2, 5, 5);
        s.Add(a);
        s.Add(b);
        var batch = s.Schedule();
        Assert.True(s.Cancel(a)); // a is in flight
        Assert.Equal(SequenceStatus.Running, a.Status);
        Assert.True(s.Cancel(b)); // b waits
        Assert.Equal(SequenceFinish.Cancelled, b.FinishReason);
        s.Postprocess(batch, [new TokenId(10)]);
        Assert.Equal(SequenceFinish.Cancelled, a.FinishReason);
        Assert.Equal(32, s.Blocks.Pool.FreeCount);
        s.CheckInvariants();
        Assert.True(s.Schedule().IsEmpty);
    }

    [Fact]
    public void Stop_requested_by_the_engine_finishes_with_stop()
    {
        var s = Make();
        var e = new FakeEngine(s);
        var a = Seq(1, 4, 50);
        s.Add(a);
        e.Step();
        e.Step();
        Assert.True(s.Stop(a));
        Assert.Equal(SequenceFinish.Stop, a.FinishReason);
        Assert.Equal(2, a.GeneratedCount);
    }

    [Fact]
    public void Shared_prompt_prefix_reuses_full_blocks_with_reference_counts()
    {
        var s = Make(blocks: 32, blockSize: 4);
        var e = new FakeEngine(s);
        var prompt = FakeEngine.Prompt(13);
        var a = new Sequence(1, prompt, 40, FakeEngine.Eos);
        s.Add(a);
        e.Step(); // a's prompt computed: 3 full blocks published
        var otherTail = prompt.Take(12).Append(new TokenId(7)).Append(new TokenId(8)).ToArray();
        var b = new Sequence(2, otherTail, 3, FakeEngine.Eos);
        s.Add(b);
        e.Step();
        Assert.Equal(12, b.CachedTokens);
        var bChunk = Assert.Single(e.Batches[^1].Chunks, c => c.Sequence == b);
        Assert.Equal(12, bChunk.Start);
        Assert.Equal(2, bChunk.Count);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(a.BlockTable[i], b.BlockTable[i]);
            Assert.Equal(2, s.Blocks.Pool.RefCount(a.BlockTable[i]));
        }
        Assert.NotEqual(a.BlockTable[3], b.BlockTable[3]);
        s.Cancel(a);
        Assert.Equal(1, s.Blocks.Pool.RefCount(b.BlockTable[0]));
        e.RunUntilIdle();
        Assert.Equal(32, s.Blocks.Pool.FreeCount);

        // After both finished the blocks stay cached; an identical 12-token prompt reuses 2 of them
        // (at least one token must be computed to get logits).
        var c = new Sequence(3, prompt.Take(12).ToArray(), 2, FakeEngine.Eos);
        s.Add(c);
        e.Step();
        Assert.Equal(8, c.CachedTokens);
        Assert.Equal(4, e.Batches[^1].TotalTokens);
        // The metrics' prefix-cache counters: every admitted token was queried (13 + 14 + 12), 12 + 8 were hits.
        Assert.Equal(13 + 14 + 12, s.QueriedPromptTokens);
        Assert.Equal(12 + 8, s.CachedPromptTokens);
    }

    [Fact]
    public void Sliding_window_releases_blocks_that_fell_out_of_the_window()
    {
        // W = 8, B = 4, chunks of 8: a sequence never holds more than MaxBlocksHeld blocks.
        var s = Make(blocks: 8, blockSize: 4, budget: 8, chunk: 8, window: 8);
        var e = new FakeEngine(s);
        var a = Seq(1, 60, 30);
        Assert.Equal(Admission.Queued, s.Add(a)); // 90 positions would need 23 blocks without the window
        int most = 0;
        for (int i = 0; i < 200 && e.Step(); i++)
        {
            if (a.Status == SequenceStatus.Running)
            {
                most = Math.Max(most, a.BlockTable.Count(b => b >= 0));
                // Released when the last chunk was scheduled: everything below its start - W + 1.
                int start = e.Batches[^1].Chunks.Single(c => c.Sequence == a).Start;
                int lowest = start - 8 + 1;
                for (int bi = 0; bi < a.BlockTable.Count; bi++)
                {
                    if ((bi + 1) * 4 <= lowest)
                    {
                        Assert.Equal(-1, a.BlockTable[bi]);
                    }
                }
            }
        }
        Assert.Equal(SequenceFinish.Length, a.FinishReason);
        AssertGeneratedAlone(a);
        Assert.InRange(most, 1, s.Blocks.MaxBlocksHeld(90, 8));
        Assert.Equal(8, s.Blocks.Pool.FreeCount);
    }

    [Fact]
    public void Misuse_is_reported()
    {
        var s = Make();
        var a = Seq(1, 4, 2);
        s.Add(a);
        Assert.Throws<InvalidOperationException>(() => s.Add(a));
        var batch = s.Schedule();
        Assert.Throws<InvalidOperationException>(() => s.Schedule());
        Assert.Throws<ArgumentException>(() => s.Postprocess(batch, []));
        s.Postprocess(batch, [new TokenId(10)]);
        Assert.Throws<InvalidOperationException>(() => s.Postprocess(batch, [new TokenId(10)]));
        Assert.Throws<ArgumentException>(() => new Sequence(1, [], 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sequence(1, [new TokenId(1)], 0));
    }

    [Theory]
    [InlineData(1, null)]
    [InlineData(2, null)]
    [InlineData(3, 12)]
    [InlineData(4, null)]
    [InlineData(5, 6)]
    public void Random_traffic_keeps_invariants_every_step_and_finishes_everything(int seed, int? window)
    {
        var rng = new Random(seed);
        var s = Make(blocks: 24 + rng.Next(24), blockSize: 1 + rng.Next(6), budget: 8 + rng.Next(60), chunk: 4 + rng.Next(30),
            maxRunning: 1 + rng.Next(8), maxWaiting: 20, context: 200, window: window);
        var e = new FakeEngine(s);
        var all = new List<Sequence>();
        var cancelled = new HashSet<Sequence>();
        long id = 0;
        for (int step = 0; step < 3000 && (step < 300 || s.HasWork); step++)
        {
            if (step < 300 && rng.Next(3) == 0)
            {
                int shared = rng.Next(3); // a few shared prompt prefixes exercise the prefix cache
                var prompt = FakeEngine.Prompt(1 + rng.Next(40), shared).Concat(FakeEngine.Prompt(rng.Next(5), (int)id)).ToArray();
                var q = new Sequence(id++, prompt, 1 + rng.Next(30), FakeEngine.Eos);
                if (s.Add(q) == Admission.Queued)
                {
                    all.Add(q);
                }
            }
            if (rng.Next(15) == 0 && all.Count > 0)
            {
                var victim = all[rng.Next(all.Count)];
                if (s.Cancel(victim))
                {
                    cancelled.Add(victim);
                }
            }
            e.Step();
        }
        Assert.False(s.HasWork);
        Assert.NotEmpty(all);
        foreach (var q in all)
        {
            Assert.Equal(SequenceStatus.Finished, q.Status);
            AssertGeneratedAlone(q);
            if (!cancelled.Contains(q))
            {
                Assert.Equal(q.MaxTokens, q.GeneratedCount);
            }
        }
        Assert.Equal(s.Blocks.Pool.BlockCount, s.Blocks.Pool.FreeCount);
    }
}
