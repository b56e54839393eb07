namespace Bora.Model;

/// <summary>
/// Keys and values of one sequence for every layer, in <see cref="Capacity"/> slots per layer;
/// position p lives in slot p mod Capacity, so the cache holds positions
/// max(0, Length - Capacity) .. Length - 1. Rows are (Hkv * Dh) = <see cref="KvDim"/> wide and hold
/// keys after RoPE, as float32 or IEEE halves (<see cref="KvType"/>). Letters: L = layers, S = <see cref="Capacity"/>,
/// Hkv, Dh as in <see cref="ModelConfig"/>.
/// Use <see cref="FullKvCache"/> (S = context) for full attention and <see cref="RollingKvCache"/>
/// (S = window) for sliding-window attention; <see cref="ICausalLM.CreateCache"/> picks one.
/// </summary>
public abstract class KvCache : IKvCache
{
    private readonly KvRows _rows; // L x (S, Hkv * Dh) keys and values

    protected KvCache(int layers, int kvDim, int capacity, int maxLength, KvCacheType type)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxLength);
        _rows = new KvRows(layers, capacity, kvDim, type, $"a KV cache of {capacity} positions");
        Layers = layers;
        KvDim = kvDim;
        Capacity = capacity;
        MaxLength = maxLength;
    }

    /// <summary>L.</summary>
    public int Layers { get; }

    /// <summary>Hkv * Dh: values per key (or value) row.</summary>
    public int KvDim { get; }

    /// <summary>How the rows are stored.</summary>
    public KvCacheType KvType => _rows.Type;

    /// <summary>Bytes of the key and value arrays: 2 * L * S * KvDim * (4 for F32, 2 for F16).</summary>
    public long Bytes => _rows.Bytes;

    /// <summary>S: slots per layer, the most positions held at once.</summary>
    public int Capacity { get; }

    public int Length { get; private set; }

    public int MaxLength { get; }

    /// <summary>Oldest position still held: max(0, Length - Capacity).</summary>
    public int OldestPosition => Math.Max(0, Length - Capacity);

    /// <summary>Positions held now: min(Length, Capacity).</summary>
    public int HeldPositions => Math.Min(Length, Capacity);

    /// <summary>Slot of <paramref name="position"/>: position mod Capacity.</summary>
    public int SlotOf(int position) => position % Capacity;

    public void Clear() => Length = 0;

    /// <summary>Key row (Hkv * Dh) of a held position of <paramref name="layer"/>, as stored (<see cref="KvRow"/>).</summary>
    public KvRow KeyRow(int layer, int position) => _rows.Key(layer, Slot(position));

    /// <summary>Value row (Hkv * Dh) of a held position of <paramref name="layer"/>, as stored (<see cref="KvRow"/>).</summary>
    public KvRow ValueRow(int layer, int position) => _rows.Value(layer, Slot(position));

    /// <summary>
    /// Writes the key and value rows of <paramref name="position"/> (Length &lt;= position &lt; Length + pending)
    /// into its slot, overwriting position - Capacity (rounded to half precision for an F16 cache).
    /// </summary>
    internal void Write(int layer, int position, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        if (position < Length || position >= MaxLength)
        {
            throw new InvalidOperationException($"cache write at position {position}; expected {Length} .. {MaxLength - 1}");
        }
        _rows.Write(layer, SlotOf(position), key, value);
    }

    /// <summary>Marks <paramref name="tokens"/> more positions as processed (after every layer wrote them).</summary>
    internal void Advance(int tokens)
    {
        if (tokens < 0 || Length + tokens > MaxLength)
        {
            throw new InvalidOperationException($"cannot advance the cache by {tokens} from {Length}; it holds at most {MaxLength} positions");
        }
        Length += tokens;
    }

    /// <summary>The slot of a held position; throws for one evicted or not yet written.</summary>
    private int Slot(int position)
    {
        if (position < OldestPosition || position >= Length)
        {
            throw new InvalidOperationException($"position {position} is not held by the cache (it holds {OldestPosition} .. {Length - 1})");
        }
        return SlotOf(position);
    }
}

/// <summary>A cache with one slot per position of the context (full attention).</summary>
public sealed class FullKvCache : KvCache
{
    /// <param name="layers">L.</param>
    /// <param name="kvDim">Hkv * Dh.</param>
    /// <param name="contextLength">Positions (one slot each).</param>
    /// <param name="type">Element type of the rows (F16 by default, as <see cref="Transformer.KvType"/>).</param>
    public FullKvCache(int layers, int kvDim, int contextLength, KvCacheType type = KvCacheType.F16) : base(layers, kvDim, contextLength, contextLength, type) { }
}

/// <summary>
/// A rolling cache for sliding-window attention of width W: min(W, context) slots, position p in
/// slot p mod W, so only the last W positions are held — all a query at position p needs
/// (it attends p - W + 1 .. p).
/// <para>
/// Worked example, W = 4, after 6 tokens (positions 0..5): slot 0 holds position 4, slot 1 holds
/// position 5, slot 2 holds position 2, slot 3 holds position 3; positions 0 and 1 were overwritten.
/// The query at position 6 attends positions 3, 4, 5 (from slots 3, 0, 1) and itself, then position 6
/// is written to slot 2, replacing position 2.
/// </para>
/// A prefill chunk longer than W attends the held positions plus its own keys directly, then writes
/// only its last W positions.
/// </summary>
public sealed class RollingKvCache : KvCache
{
    /// <param name="layers">L.</param>
    /// <param name="kvDim">Hkv * Dh.</param>
    /// <param name="window">W.</param>
    /// <param name="contextLength">Most positions run.</param>
    /// <param name="type">Element type of the rows (F16 by default, as <see cref="Transformer.KvType"/>).</param>
    public RollingKvCache(int layers, int kvDim, int window, int contextLength, KvCacheType type = KvCacheType.F16)
        : base(layers, kvDim, Math.Min(CheckWindow(window), contextLength), contextLength, type)
    {
        Window = window;
    }

    /// <summary>W.</summary>
    public int Window { get; }

    private static int CheckWindow(int window)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(window);
        return window;
    }
}

/// <summary>Thrown when a forward call would run past the cache's <see cref="IKvCache.MaxLength"/>.</summary>
public sealed class ContextLengthExceededException : InvalidOperationException
{
    public ContextLengthExceededException(string message) : base(message) { }
}
