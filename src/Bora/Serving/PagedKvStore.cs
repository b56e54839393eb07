using Bora.Model;

namespace Bora.Serving;

/// <summary>
/// The tensor data of a paged KV cache: for every layer, N blocks of B positions of (Hkv * Dh) keys
/// and as many values, as float32 or IEEE halves (<see cref="KvType"/>). Block b, offset o holds a row at
/// [(b * B + o) * KvDim, +KvDim) of the layer's arrays. Which block holds which positions of which sequence is the business of
/// <see cref="KvBlockPool"/> / <see cref="KvBlockManager"/>; a <see cref="PagedKvCache"/> is one
/// sequence's view. Letters: L = layers, N = blocks, B = block size.
/// </summary>
public sealed class PagedKvStore
{
    private readonly KvRows _rows; // L x (N * B, KvDim) keys and values; block b, offset o is row b * B + o

    /// <param name="layers">L.</param>
    /// <param name="kvDim">Hkv * Dh.</param>
    /// <param name="blockCount">N.</param>
    /// <param name="blockSize">B.</param>
    /// <param name="type">Element type of the rows; must match the model's <see cref="Transformer.KvType"/>.</param>
    public PagedKvStore(int layers, int kvDim, int blockCount, int blockSize, KvCacheType type)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockCount);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        _rows = new KvRows(layers, (long)blockCount * blockSize, kvDim, type, $"a paged KV store of {blockCount} blocks of {blockSize} positions");
        Layers = layers;
        KvDim = kvDim;
        BlockCount = blockCount;
        BlockSize = blockSize;
    }

    public int Layers { get; }

    public int KvDim { get; }

    public int BlockCount { get; }

    public int BlockSize { get; }

    /// <summary>How the rows are stored.</summary>
    public KvCacheType KvType => _rows.Type;

    /// <summary>Bytes of all key and value arrays: N * <see cref="BytesPerBlock"/>.</summary>
    public long Bytes => _rows.Bytes;

    /// <summary>Bytes of one block over all layers: 2 (keys, values) * L * B * KvDim * element size (4 for F32, 2 for F16).</summary>
    public static long BytesPerBlock(int layers, int kvDim, int blockSize, KvCacheType type) => 2L * layers * blockSize * kvDim * type.ElementBytes();

    /// <summary>Blocks that fit in <paramref name="mib"/> MiB (at least 1): twice as many for F16 as for F32.</summary>
    public static int BlocksForMiB(long mib, int layers, int kvDim, int blockSize, KvCacheType type)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(mib);
        long blocks = mib * 1024 * 1024 / BytesPerBlock(layers, kvDim, blockSize, type);
        return (int)Math.Clamp(blocks, 1, int.MaxValue / Math.Max(1, blockSize));
    }

    internal KvRow Key(int layer, int block, int offset) => _rows.Key(layer, block * BlockSize + offset);

    internal KvRow Value(int layer, int block, int offset) => _rows.Value(layer, block * BlockSize + offset);

    internal void Write(int layer, int block, int offset, ReadOnlySpan<float> key, ReadOnlySpan<float> value) => _rows.Write(layer, block * BlockSize + offset, key, value);
}

/// <summary>
/// One sequence's view of a <see cref="PagedKvStore"/>: position p lives in block table[p / B] at
/// offset p mod B. Example, B = 16, table [7, 2, -1 …]: position 20 is row 4 of block 2.
/// The table is the scheduler's (<see cref="Sequence.BlockTable"/>), read live; the view only adds
/// <see cref="Length"/>, so it is cheap to make one per step.
/// </summary>
public sealed class PagedKvCache : IPositionalKvCache
{
    private readonly PagedKvStore _store;
    private readonly IReadOnlyList<int> _table;

    /// <param name="store">The shared data.</param>
    /// <param name="blockTable">Block of each run of B positions; -1 where released.</param>
    /// <param name="length">Positions already computed.</param>
    /// <param name="maxLength">Most positions (the context length).</param>
    public PagedKvCache(PagedKvStore store, IReadOnlyList<int> blockTable, int length, int maxLength)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(blockTable);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLength, length);
        _store = store;
        _table = blockTable;
        Length = length;
        MaxLength = maxLength;
    }

    public int Length { get; private set; }

    public int MaxLength { get; }

    public int Layers => _store.Layers;

    public int KvDim => _store.KvDim;

    public KvCacheType KvType => _store.KvType;

    /// <summary>Forgets the computed positions (the blocks stay with their owner).</summary>
    public void Clear() => Length = 0;

    public KvRow KeyRow(int layer, int position)
    {
        int b = BlockOf(position, write: false);
        return _store.Key(layer, b, position % _store.BlockSize);
    }

    public KvRow ValueRow(int layer, int position)
    {
        int b = BlockOf(position, write: false);
        return _store.Value(layer, b, position % _store.BlockSize);
    }

    public void Write(int layer, int position, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        int b = BlockOf(position, write: true);
        _store.Write(layer, b, position % _store.BlockSize, key, value);
    }

    public void Advance(int tokens)
    {
        if (tokens < 0 || (long)Length + tokens > MaxLength)
        {
            throw new InvalidOperationException($"cannot advance the cache by {tokens} from {Length}; it holds at most {MaxLength} positions");
        }
        Length += tokens;
    }

    private int BlockOf(int position, bool write)
    {
        bool ok = write ? position >= Length && position < MaxLength : position >= 0 && position < Length;
        int i = position / _store.BlockSize;
        if (!ok || i >= _table.Count || _table[i] < 0)
        {
            throw new InvalidOperationException(write
                ? $"cache write at position {position}: expected {Length} .. {MaxLength - 1} with a block allocated ({_table.Count} blocks)"
                : $"position {position} is not held by the paged cache (length {Length}, {_table.Count} blocks, entry {(i < _table.Count ? _table[i] : -1)})");
        }
        return _table[i];
    }
}
