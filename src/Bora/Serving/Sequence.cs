using Bora.Tokenizers;

namespace Bora.Serving;

/// <summary>Where a <see cref="Sequence"/> is in the <see cref="Scheduler"/>.</summary>
public enum SequenceStatus
{
    /// <summary>Queued (new, or preempted and waiting to be recomputed); holds no KV blocks.</summary>
    Waiting,

    /// <summary>In the running batch; holds KV blocks for its computed tokens.</summary>
    Running,

    /// <summary>Done; holds nothing.</summary>
    Finished,
}

/// <summary>Why a sequence finished.</summary>
public enum SequenceFinish
{
    /// <summary>It sampled its end-of-sequence token.</summary>
    Eos,

    /// <summary>It generated <see cref="Sequence.MaxTokens"/> tokens.</summary>
    Length,

    /// <summary>The engine stopped it (a stop string, see <see cref="Scheduler.Stop"/>).</summary>
    Stop,

    /// <summary>The client went away or cancelled (<see cref="Scheduler.Cancel"/>).</summary>
    Cancelled,
}

/// <summary>
/// One request's token sequence as the scheduler sees it: prompt + generated tokens, how many of
/// them have keys and values in the cache (<see cref="ComputedTokens"/>), and its KV block table.
/// Tokens ComputedTokens .. Count - 1 still have to run through the model: the prompt in chunks at
/// first, then one token (the last sampled) per step; after a preemption everything again.
/// </summary>
public sealed class Sequence
{
    private readonly List<TokenId> _tokens;
    internal readonly List<int> Blocks = [];          // block table: block of positions [i*B, (i+1)*B), -1 once released (window)
    internal readonly List<ulong> BlockHashes = [];   // chained hash of each full block of tokens (depends on tokens only)

    /// <param name="id">Caller's identifier (unique among live sequences, for messages).</param>
    /// <param name="prompt">At least one token.</param>
    /// <param name="maxTokens">Most tokens to generate, at least 1.</param>
    /// <param name="eos">Token that ends the sequence when sampled, or null.</param>
    public Sequence(long id, IReadOnlyList<TokenId> prompt, int maxTokens, TokenId? eos = null)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        if (prompt.Count == 0)
        {
            throw new ArgumentException("a sequence needs at least one prompt token", nameof(prompt));
        }
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxTokens);
        Id = id;
        PromptLength = prompt.Count;
        MaxTokens = maxTokens;
        Eos = eos;
        _tokens = new List<TokenId>(prompt.Count + Math.Min(maxTokens, 4096));
        _tokens.AddRange(prompt);
    }

    public long Id { get; }

    public int PromptLength { get; }

    public int MaxTokens { get; }

    public TokenId? Eos { get; }

    /// <summary>Prompt followed by every generated token.</summary>
    public IReadOnlyList<TokenId> Tokens => _tokens;

    /// <summary>The tokens as a span; valid until the next token is appended (by <see cref="Scheduler.Postprocess"/>).</summary>
    public ReadOnlySpan<TokenId> TokenSpan => System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_tokens);

    /// <summary>Tokens generated so far.</summary>
    public int GeneratedCount => _tokens.Count - PromptLength;

    public SequenceStatus Status { get; internal set; } = SequenceStatus.Waiting;

    /// <summary>Why it finished; null while it has not.</summary>
    public SequenceFinish? FinishReason { get; internal set; }

    /// <summary>Leading tokens whose keys and values are in the cache.</summary>
    public int ComputedTokens { get; internal set; }

    /// <summary>Prompt tokens found in the prefix cache at the last admission (not recomputed).</summary>
    public int CachedTokens { get; internal set; }

    /// <summary>Times this sequence was preempted (its blocks freed, to be recomputed).</summary>
    public int Preemptions { get; internal set; }

    /// <summary>Admission order (FCFS priority: lower runs first and is preempted last); -1 before <see cref="Scheduler.Add"/>.</summary>
    public long Arrival { get; internal set; } = -1;

    /// <summary>The block table: entry i holds positions i*B .. i*B + B - 1, -1 where released (out of the window).</summary>
    public IReadOnlyList<int> BlockTable => Blocks;

    /// <summary>Free for the engine: per-request state (sampler, output channel, ...).</summary>
    public object? Tag { get; set; }

    internal bool CancelRequested { get; set; }

    internal SequenceFinish? StopRequested { get; set; }

    internal void Append(TokenId token) => _tokens.Add(token);

    public override string ToString() => $"seq {Id} ({Status}, {ComputedTokens}/{_tokens.Count} computed, {Blocks.Count} blocks)";
}
