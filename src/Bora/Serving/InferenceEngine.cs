using System.Collections.Concurrent;
using System.Threading.Channels;
using Bora.Generation;
using Bora.Generation.Constraints;
using Bora.Model;
using Bora.Numerics;
using Bora.Tokenizers;

namespace Bora.Serving;

/// <summary>Sizes and limits of an <see cref="InferenceEngine"/>.</summary>
public sealed record EngineOptions
{
    /// <summary>Most positions of one sequence; 0 = the model's MaxSeqLen.</summary>
    public int ContextLength { get; init; }

    /// <summary>B: positions per KV block.</summary>
    public int BlockSize { get; init; } = 16;

    /// <summary>KV pool size in MiB (rows of the model's <see cref="Transformer.KvType"/>: an F16 pool holds twice the positions of an F32 one); when null, <see cref="KvCacheTokens"/> decides.</summary>
    public long? KvCacheMiB { get; init; }

    /// <summary>KV pool size in positions when <see cref="KvCacheMiB"/> is null; 0 = 2 x context length.</summary>
    public int KvCacheTokens { get; init; }

    /// <summary>Token budget of one forward pass.</summary>
    public int MaxBatchTokens { get; init; } = 256;

    /// <summary>Most prompt tokens of one sequence per pass.</summary>
    public int MaxChunkTokens { get; init; } = 128;

    /// <summary>Most sequences decoded together.</summary>
    public int MaxRunning { get; init; } = 32;

    /// <summary>Most requests queued before new ones are refused.</summary>
    public int MaxWaiting { get; init; } = 64;
}

/// <summary>Why the engine refused a request.</summary>
public enum RefusalReason
{
    /// <summary>Prompt + max tokens exceed the context length.</summary>
    ContextLength,

    /// <summary>The sequence would need more KV blocks than the pool has.</summary>
    KvCache,

    /// <summary>Too many requests are queued.</summary>
    QueueFull,

    /// <summary>The engine is stopping.</summary>
    ShuttingDown,
}

/// <summary>A request the engine will not run; <see cref="Reason"/> says why.</summary>
public sealed class EngineRefusedException(RefusalReason reason, string message) : Exception(message)
{
    public RefusalReason Reason { get; } = reason;
}

/// <summary>
/// One streamed piece: the token (null for text flushed at the end) and the text that became safe to show;
/// <see cref="Logprob"/> carries the token's log-probabilities when the request asked for them.
/// </summary>
public readonly record struct GenerationDelta(TokenId? Token, string Text)
{
    /// <summary>The token's raw log-probability and top alternatives (see <see cref="Logprobs"/>); null unless requested.</summary>
    public TokenLogprob? Logprob { get; init; }
}

/// <summary>Per-request extras of <see cref="InferenceEngine.Submit(IReadOnlyList{TokenId}, SamplingOptions, SubmitOptions?, CancellationToken)"/>.</summary>
public sealed record SubmitOptions
{
    /// <summary>
    /// Constrained decoding for this sequence (a fresh instance per submission: it is stateful). The sequence
    /// ends (finish reason Stop) as soon as the constraint is complete; stop strings are not applied while a
    /// grammar constraint is set (they could cut the constrained output short; a <see cref="BannedTokensConstraint"/>
    /// keeps them). A constraint that allows no token
    /// ends the sequence with finish reason Length.
    /// </summary>
    public ITokenConstraint? Constraint { get; init; }

    /// <summary>Null: no log-probabilities; 0 .. <see cref="Logprobs.MaxTop"/>: each delta carries the token's log-probability and this many alternatives.</summary>
    public int? TopLogprobs { get; init; }
}

/// <summary>How a generation ended.</summary>
public sealed record GenerationSummary(FinishReason FinishReason, int PromptTokens, int CompletionTokens, ulong Seed);

/// <summary>
/// A submitted request: <see cref="Admitted"/> completes once the scheduler queued it (or faults
/// with <see cref="EngineRefusedException"/>); <see cref="Deltas"/> streams its text;
/// <see cref="Completion"/> gives the finish reason and usage (cancelled when the request was).
/// </summary>
public sealed class GenerationHandle
{
    private readonly Channel<GenerationDelta> _deltas = Channel.CreateUnbounded<GenerationDelta>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    private readonly TaskCompletionSource _admitted = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource<GenerationSummary> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal GenerationHandle(Sequence sequence, Sampler sampler, ITokenizer tokenizer, IReadOnlyList<string> stops, SubmitOptions? extras = null)
    {
        Sequence = sequence;
        Sampler = sampler;
        Decoder = new StreamingDecoder(tokenizer, sequence.Tokens[^1]);
        Constraint = extras?.Constraint;
        TopLogprobs = extras?.TopLogprobs;
        Stop = new StopStringFilter(Constraint is null or BannedTokensConstraint ? stops : []);
    }

    public int PromptTokens => Sequence.PromptLength;

    public ulong Seed => Sampler.Seed;

    public Task Admitted => _admitted.Task;

    public ChannelReader<GenerationDelta> Deltas => _deltas.Reader;

    public Task<GenerationSummary> Completion => _completion.Task;

    internal Sequence Sequence { get; }

    internal Sampler Sampler { get; }

    internal StreamingDecoder Decoder { get; }

    internal StopStringFilter Stop { get; }

    internal ITokenConstraint? Constraint { get; }

    internal int? TopLogprobs { get; }

    internal bool DeadEnd;

    internal volatile bool CancelRequested;

    internal CancellationTokenRegistration Registration;

    internal void Admit() => _admitted.TrySetResult();

    internal void Emit(TokenId? token, string text, TokenLogprob? logprob = null) => _deltas.Writer.TryWrite(new GenerationDelta(token, text) { Logprob = logprob });

    internal void Refuse(Exception e)
    {
        _admitted.TrySetException(e);
        _deltas.Writer.TryComplete(e);
        _completion.TrySetException(e);
        Registration.Dispose();
    }

    internal void Finish(GenerationSummary summary)
    {
        _admitted.TrySetResult();
        _deltas.Writer.TryComplete();
        _completion.TrySetResult(summary);
        Registration.Dispose();
    }

    internal void Cancelled()
    {
        var e = new OperationCanceledException("the request was cancelled");
        _admitted.TrySetException(e);
        _deltas.Writer.TryComplete(e);
        _completion.TrySetCanceled();
        Registration.Dispose();
    }
}

/// <summary>
/// Continuous-batching inference: one engine thread runs the <see cref="Scheduler"/> loop —
/// admit submitted requests, apply cancellations, schedule a step, run all its chunks through
/// <see cref="Transformer.ForwardBatch"/> over a <see cref="PagedKvStore"/>, sample, postprocess,
/// stream text. <c>Submit</c> is thread-safe.
/// </summary>
public sealed class InferenceEngine : IDisposable
{
    private readonly Transformer _model;
    private readonly ITokenizer _tokenizer;
    private readonly Scheduler _scheduler;
    private readonly PagedKvStore _store;
    private readonly ConcurrentQueue<GenerationHandle> _incoming = new();
    private readonly ConcurrentQueue<GenerationHandle> _cancels = new();
    private readonly AutoResetEvent _signal = new(false);
    private readonly Thread _thread;
    private readonly int _vocab;
    private float[] _logits = [];   // (S, V) logits of the sampling chunks of a step
    private volatile bool _stopping;
    private long _nextId;
    private int _waitingSnapshot, _runningSnapshot, _peakBatch;
    private int _kvUsedSnapshot;
    private long _cachedPromptSnapshot;
    private long _queriedPromptSnapshot;

    public InferenceEngine(Transformer model, ITokenizer tokenizer, EngineOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        var o = options ?? new EngineOptions();
        _model = model;
        _tokenizer = tokenizer;
        _vocab = model.Config.VocabSize;
        var c = model.Config;
        ContextLength = o.ContextLength > 0 ? Math.Min(o.ContextLength, c.MaxSeqLen) : c.MaxSeqLen;
        int kvDim = c.NKvHeads * c.HeadDim;
        int blocks = o.KvCacheMiB is { } mib
            ? PagedKvStore.BlocksForMiB(mib, c.NLayers, kvDim, o.BlockSize, model.KvType)
            : (int)Math.Max(1, ((long)(o.KvCacheTokens > 0 ? o.KvCacheTokens : 2L * ContextLength) + o.BlockSize - 1) / o.BlockSize);
        _store = new PagedKvStore(c.NLayers, kvDim, blocks, o.BlockSize, model.KvType); // the model's KV type: F16 holds twice the positions per MiB
        _scheduler = new Scheduler(new SchedulerOptions
        {
            MaxBatchTokens = o.MaxBatchTokens,
            MaxChunkTokens = o.MaxChunkTokens,
            MaxRunning = o.MaxRunning,
            MaxWaiting = o.MaxWaiting,
            ContextLength = ContextLength,
        }, new KvBlockManager(new KvBlockPool(blocks, o.BlockSize), c.SlidingWindow));
        Options = o;
        _thread = new Thread(Loop) { IsBackground = true, Name = "bora-engine" };
        _thread.Start();
    }

    public EngineOptions Options { get; }

    public ITokenizer Tokenizer => _tokenizer;

    public ModelConfig Config => _model.Config;

    /// <summary>Most positions of one sequence.</summary>
    public int ContextLength { get; }

    /// <summary>KV blocks in the pool and positions per block.</summary>
    public (int Blocks, int BlockSize) KvPool => (_store.BlockCount, _store.BlockSize);

    /// <summary>Requests waiting (as of the last engine step).</summary>
    public int WaitingCount => Volatile.Read(ref _waitingSnapshot) + _incoming.Count;

    /// <summary>Most sequences that ran in one forward pass so far.</summary>
    public int PeakBatchSequences => Volatile.Read(ref _peakBatch);

    /// <summary>Sequences running (as of the last engine step).</summary>
    public int RunningCount => Volatile.Read(ref _runningSnapshot);

    /// <summary>KV blocks of the pool (B positions each): an F16 pool holds twice the blocks of an F32 one in the same <see cref="EngineOptions.KvCacheMiB"/>.</summary>
    public int KvBlockCount => _store.BlockCount;

    /// <summary>Element type of the pool's rows: the model's <see cref="Transformer.KvType"/>.</summary>
    public KvCacheType KvType => _store.KvType;

    /// <summary>KV blocks held by sequences (as of the last engine step; blocks kept only for the prefix cache count as free).</summary>
    public int KvBlocksUsed => Volatile.Read(ref _kvUsedSnapshot);

    /// <summary>Prompt tokens whose KV blocks came from the prefix cache instead of being computed (as of the last engine step).</summary>
    public long PrefixCachedTokens => Volatile.Read(ref _cachedPromptSnapshot);

    /// <summary>Tokens of admitted sequences looked up in the prefix cache (as of the last engine step); <see cref="PrefixCachedTokens"/> of them were found.</summary>
    public long PrefixQueriedTokens => Volatile.Read(ref _queriedPromptSnapshot);

    /// <summary>
    /// Queues a generation of <paramref name="prompt"/> (empty = BOS alone). Sampling options are
    /// validated now (<see cref="ArgumentException"/>); refusals arrive through
    /// <see cref="GenerationHandle.Admitted"/>. Cancelling <paramref name="cancellationToken"/> frees the
    /// sequence within one step.
    /// </summary>
    public GenerationHandle Submit(IReadOnlyList<TokenId> prompt, SamplingOptions sampling, CancellationToken cancellationToken = default) =>
        Submit(prompt, sampling, null, cancellationToken);

    /// <summary>
    /// <see cref="Submit(IReadOnlyList{TokenId}, SamplingOptions, CancellationToken)"/> with a constraint
    /// and log-probabilities (<see cref="SubmitOptions"/>). For n choices of one prompt submit n times (each
    /// its own sequence; the prefix cache shares the prompt's full blocks once computed).
    /// </summary>
    public GenerationHandle Submit(IReadOnlyList<TokenId> prompt, SamplingOptions sampling, SubmitOptions? extras, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(sampling);
        sampling.Validate();
        if (sampling.MaxTokens <= 0)
        {
            throw new ArgumentException($"max tokens is {sampling.MaxTokens}; expected at least 1", nameof(sampling));
        }
        TokenId[] tokens = prompt.Count == 0 ? [_tokenizer.Bos] : [.. prompt];
        foreach (var t in tokens)
        {
            if ((uint)t.Value >= (uint)_vocab)
            {
                throw new ArgumentException($"prompt token {t.Value} is outside the vocabulary 0 .. {_vocab - 1}", nameof(prompt));
            }
        }
        var seq = new Sequence(Interlocked.Increment(ref _nextId), tokens, sampling.MaxTokens, _tokenizer.Eos);
        if (extras?.TopLogprobs is { } top && (top < 0 || top > Logprobs.MaxTop))
        {
            throw new ArgumentException($"top logprobs is {top}; expected 0 .. {Logprobs.MaxTop}", nameof(extras));
        }
        var handle = new GenerationHandle(seq, new Sampler(_vocab, sampling), _tokenizer, sampling.StopStrings, extras);
        seq.Tag = handle;
        if (_stopping)
        {
            handle.Refuse(new EngineRefusedException(RefusalReason.ShuttingDown, "the server is shutting down"));
            return handle;
        }
        if (_incoming.Count >= Options.MaxWaiting)
        {
            handle.Refuse(new EngineRefusedException(RefusalReason.QueueFull, $"too many requests are queued ({Options.MaxWaiting}); retry later"));
            return handle;
        }
        _incoming.Enqueue(handle);
        if (cancellationToken.CanBeCanceled)
        {
            handle.Registration = cancellationToken.Register(() =>
            {
                handle.CancelRequested = true;
                _cancels.Enqueue(handle);
                _signal.Set();
            });
        }
        _signal.Set();
        return handle;
    }

    /// <summary>Most rounds <see cref="WarmUp"/> runs, whatever its budget.</summary>
    public const int MaxWarmUpRounds = 32;

    /// <summary>
    /// Runs throwaway generations through the whole step loop (scheduler, batched forward pass, sampler, streaming
    /// decoder) until <paramref name="budget"/> has passed: at least one round, at most <see cref="MaxWarmUpRounds"/>.
    /// .NET compiles a method first without optimization and recompiles it only after some 30 calls, so the first
    /// requests of a fresh process would otherwise pay for it (llama.cpp's server likewise decodes once at load).
    /// Measured on a 2-layer Mistral-7B-shaped Q4_0 file, 2 threads (<c>bench/Bora.Bench engine</c>): a one-sequence
    /// step took 16.3 ms in the first 384 steps of a process and 10.7 ms afterwards. Each round decodes two sequences
    /// of an 8-token prompt together, 8 and 4 tokens long, one with the library's default filters and one with
    /// temperature alone (an OpenAI-style request), so that the one-sequence and the batched paths both run. The
    /// prompts are shorter than a KV block unless blocks are tiny, so they leave nothing of note in the prefix cache,
    /// and <see cref="PeakBatchSequences"/> starts again from 0. Call it before submitting requests. Returns the
    /// rounds run (0 when the engine refused the warm-up sequences: a KV pool too small for them).
    /// </summary>
    public int WarmUp(TimeSpan budget, CancellationToken cancellationToken = default)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        // 8 prompt + 8 generated positions, less in a context shorter than 16.
        int promptLength = Math.Clamp(ContextLength / 2, 1, 8), maxTokens = Math.Clamp(ContextLength - promptLength, 1, 8);
        var prompt = new TokenId[promptLength];
        prompt[0] = _tokenizer.Bos;
        for (int i = 1; i < prompt.Length; i++)
        {
            prompt[i] = new TokenId((_tokenizer.Bos.Value + i) % _vocab);
        }
        var filtered = new SamplingOptions { MaxTokens = maxTokens, Seed = 1 };
        var plain = new SamplingOptions { MaxTokens = Math.Max(1, maxTokens / 2), Seed = 2, TopK = 0, TopP = 1f, MinP = 0f, Temperature = 1f };
        int rounds = 0;
        do
        {
            var a = Submit(prompt, filtered, cancellationToken);
            var b = Submit(prompt, plain, cancellationToken);
            try
            {
                Task.WaitAll([a.Completion, b.Completion], cancellationToken);
            }
            catch (AggregateException e) when (e.InnerExceptions.All(x => x is EngineRefusedException))
            {
                break; // a KV pool too small for even these few positions: the first requests warm up instead
            }
            rounds++;
        }
        while (clock.Elapsed < budget && rounds < MaxWarmUpRounds);
        Volatile.Write(ref _peakBatch, 0); // the statistics describe real requests (the engine is idle now)
        return rounds;
    }

    public void Dispose()
    {
        _stopping = true;
        _signal.Set();
        if (Thread.CurrentThread != _thread)
        {
            _thread.Join(TimeSpan.FromSeconds(30));
        }
        _signal.Dispose();
    }

    private void Loop()
    {
        while (!_stopping)
        {
            try
            {
                Admit();
                while (_cancels.TryDequeue(out var h))
                {
                    _scheduler.Cancel(h.Sequence);
                }
                Complete();
                var batch = _scheduler.Schedule();
                Volatile.Write(ref _waitingSnapshot, _scheduler.Waiting.Count);
                Volatile.Write(ref _runningSnapshot, _scheduler.Running.Count);
                Volatile.Write(ref _kvUsedSnapshot, _store.BlockCount - _scheduler.Blocks.Pool.FreeCount);
                Volatile.Write(ref _cachedPromptSnapshot, _scheduler.CachedPromptTokens);
                Volatile.Write(ref _queriedPromptSnapshot, _scheduler.QueriedPromptTokens);
                if (batch.IsEmpty)
                {
                    _signal.WaitOne(TimeSpan.FromMilliseconds(200));
                    continue;
                }
                Volatile.Write(ref _peakBatch, Math.Max(_peakBatch, batch.Chunks.Count));
                Step(batch);
                Complete();
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                FailEverything(e);
            }
        }
        FailEverything(new EngineRefusedException(RefusalReason.ShuttingDown, "the server is shutting down"));
    }

    private void Admit()
    {
        while (_incoming.TryDequeue(out var h))
        {
            if (h.CancelRequested)
            {
                h.Cancelled();
                continue;
            }
            var seq = h.Sequence;
            switch (_scheduler.Add(seq))
            {
                case Admission.Queued:
                    h.Admit();
                    break;
                case Admission.ExceedsContext:
                    h.Refuse(new EngineRefusedException(RefusalReason.ContextLength,
                        $"this model's context holds {ContextLength} tokens; the request needs {seq.PromptLength} prompt + {seq.MaxTokens} completion tokens. Shorten the prompt or lower max_tokens"));
                    break;
                case Admission.ExceedsCache:
                    h.Refuse(new EngineRefusedException(RefusalReason.KvCache,
                        $"the request needs {seq.PromptLength + seq.MaxTokens} positions, more than the KV cache holds ({_store.BlockCount * _store.BlockSize}); lower max_tokens or start the server with a larger --kv-cache-mib"));
                    break;
                default:
                    h.Refuse(new EngineRefusedException(RefusalReason.QueueFull, $"too many requests are queued ({Options.MaxWaiting}); retry later"));
                    break;
            }
        }
    }

    private void Step(ScheduledBatch batch)
    {
        int sampling = batch.SampleCount;
        if (_logits.Length < (long)sampling * _vocab)
        {
            _logits = new float[(long)sampling * _vocab];
        }
        var entries = new BatchEntry[batch.Chunks.Count];
        int k = 0;
        for (int i = 0; i < entries.Length; i++)
        {
            var c = batch.Chunks[i];
            var tokens = c.Sequence.TokenSpan.Slice(c.Start, c.Count).ToArray();
            var cache = new PagedKvCache(_store, c.Sequence.BlockTable, c.Start, ContextLength);
            entries[i] = new BatchEntry(tokens, cache, c.Samples ? _logits.AsMemory(k++ * _vocab, _vocab) : Memory<float>.Empty);
        }
        var sampled = new TokenId[sampling];
        var logprobs = new TokenLogprob?[sampling];
        try
        {
            _model.ForwardBatch(entries);
            // Row k of _logits belongs to the k-th sampling chunk; each sequence has its own sampler (own seeded
            // RNG), so the rows are sampled in parallel on the worker pool with the very results of a serial loop.
            // Constrained sequences run here first, serially (a constraint may share state, e.g. a tokenizer trie).
            var handles = new GenerationHandle[sampling];
            var histories = new Sequence[sampling];
            k = 0;
            foreach (var c in batch.Chunks)
            {
                if (c.Samples)
                {
                    handles[k] = (GenerationHandle)c.Sequence.Tag!;
                    histories[k] = c.Sequence;
                    if (handles[k].Constraint is not null)
                    {
                        SampleRow(k, handles[k], c.Sequence, sampled, logprobs);
                    }
                    k++;
                }
            }
            if (sampling > 1)
            {
                NumericsThreads.For(sampling, i =>
                {
                    if (handles[i].Constraint is null)
                    {
                        SampleRow(i, handles[i], histories[i], sampled, logprobs);
                    }
                });
            }
            else if (sampling == 1 && handles[0].Constraint is null)
            {
                SampleRow(0, handles[0], histories[0], sampled, logprobs);
            }
        }
        catch
        {
            // Keep the scheduler consistent, then let the loop fail the affected requests.
            _scheduler.Postprocess(batch, sampled);
            foreach (var c in batch.Chunks)
            {
                _scheduler.Cancel(c.Sequence);
            }
            throw;
        }
        _scheduler.Postprocess(batch, sampled);
        k = 0;
        foreach (var c in batch.Chunks)
        {
            if (!c.Samples)
            {
                continue;
            }
            var h = (GenerationHandle)c.Sequence.Tag!;
            var logprob = logprobs[k];
            var token = sampled[k++];
            if (token == _tokenizer.Eos || h.CancelRequested)
            {
                continue; // text tail is flushed when it completes
            }
            string text = h.Stop.Append(h.Decoder.Push(token));
            if (!h.Stop.Stopped && _tokenizer.IsControl(token))
            {
                text += h.Stop.Finish(); // a control token ends the text run: what was held back is released with it
            }
            h.Emit(token, text, logprob);
            if ((h.Stop.Stopped || h.Constraint?.IsComplete == true) && c.Sequence.Status != SequenceStatus.Finished)
            {
                _scheduler.Stop(c.Sequence);
            }
        }
    }

    /// <summary>Samples row <paramref name="k"/> of the step's logits for one sequence (and its log-probabilities when asked).</summary>
    private void SampleRow(int k, GenerationHandle h, Sequence sequence, TokenId[] sampled, TokenLogprob?[] logprobs)
    {
        var row = _logits.AsSpan(k * _vocab, _vocab);
        try
        {
            sampled[k] = h.Sampler.Sample(row, sequence.TokenSpan, sequence.PromptLength, h.Constraint);
            h.Constraint?.Advance(sampled[k]);
        }
        catch (InvalidOperationException) when (h.Constraint is not null)
        {
            // The constraint allowed nothing (ConstraintDeadEndException) or refused its own pick:
            // this sequence ends, the rest of the batch goes on.
            h.DeadEnd = true;
            sampled[k] = _tokenizer.Eos; // ends the sequence; reported as Length (no complete output)
        }
        if (h.TopLogprobs is { } top && !h.DeadEnd)
        {
            logprobs[k] = Logprobs.Compute(row, sampled[k], top);
        }
    }

    private void Complete()
    {
        foreach (var seq in _scheduler.TakeFinished())
        {
            var h = (GenerationHandle)seq.Tag!;
            if (seq.FinishReason == SequenceFinish.Cancelled)
            {
                h.Cancelled();
                continue;
            }
            var reason = seq.FinishReason switch
            {
                SequenceFinish.Eos => FinishReason.Eos,
                SequenceFinish.Stop => FinishReason.Stop,
                _ => seq.Tokens.Count >= ContextLength && seq.GeneratedCount < seq.MaxTokens ? FinishReason.ContextFull : FinishReason.Length,
            };
            string tail = h.Stop.Stopped ? "" : h.Stop.Append(h.Decoder.Flush());
            if (h.Stop.Stopped || h.Constraint?.IsComplete == true)
            {
                reason = FinishReason.Stop;
            }
            else if (h.DeadEnd)
            {
                reason = FinishReason.Length;
            }
            else
            {
                tail += h.Stop.Finish();
            }
            if (tail.Length > 0)
            {
                h.Emit(null, tail);
            }
            h.Finish(new GenerationSummary(reason, seq.PromptLength, seq.GeneratedCount, h.Seed));
        }
    }

    private void FailEverything(Exception e)
    {
        var error = e as EngineRefusedException ?? new EngineRefusedException(RefusalReason.ShuttingDown, "internal engine error: " + e.Message);
        foreach (var seq in _scheduler.Running.Concat(_scheduler.Waiting).ToList())
        {
            _scheduler.Cancel(seq);
            ((GenerationHandle)seq.Tag!).Refuse(error);
        }
        _scheduler.TakeFinished();
        while (_incoming.TryDequeue(out var h))
        {
            h.Refuse(error);
        }
        if (_scheduler.InFlight)
        {
            // cannot happen: Step always postprocesses
            throw new InvalidOperationException("engine left a batch in flight", e);
        }
    }
}
