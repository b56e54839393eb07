using Bora.Tokenizers;

namespace Bora.Serving;

/// <summary>
/// Per-sequence block tables over a <see cref="KvBlockPool"/>: grows a table as tokens are
/// scheduled, takes cached prefix blocks at admission, publishes blocks once full and computed,
/// releases blocks that fell out of a sliding window, and frees a whole table.
/// B = block size, W = sliding window (null = full attention).
/// <para>
/// Window example, B = 4, W = 6: a chunk starting at position P = 13 has its first query at 13,
/// which attends 8 .. 13, so positions below 8 are dead: blocks 0 (0..3) and 1 (4..7) are released
/// and their table entries become -1; block 2 (8..11) stays.
/// </para>
/// </summary>
public sealed class KvBlockManager
{
    public KvBlockManager(KvBlockPool pool, int? slidingWindow = null)
    {
        ArgumentNullException.ThrowIfNull(pool);
        if (slidingWindow is { } w)
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(w, nameof(slidingWindow));
        }
        Pool = pool;
        SlidingWindow = slidingWindow;
    }

    public KvBlockPool Pool { get; }

    /// <summary>W, or null for full attention.</summary>
    public int? SlidingWindow { get; }

    public int BlockSize => Pool.BlockSize;

    /// <summary>Blocks covering <paramref name="tokens"/> positions from 0: ceil(tokens / B).</summary>
    public int BlocksFor(long tokens) => (int)((tokens + BlockSize - 1) / BlockSize);

    /// <summary>
    /// Most blocks a sequence of <paramref name="totalTokens"/> ever holds at once when it runs at
    /// most <paramref name="maxChunk"/> tokens a step: all of them, or with a window W the blocks of
    /// W - 1 earlier positions plus a chunk, plus one for alignment.
    /// </summary>
    public int MaxBlocksHeld(int totalTokens, int maxChunk)
    {
        int all = BlocksFor(totalTokens);
        return SlidingWindow is { } w ? Math.Min(all, BlocksFor((long)w - 1 + maxChunk) + 1) : all;
    }

    /// <summary>
    /// At admission of a sequence holding nothing: takes the longest run of cached full blocks of
    /// its tokens, leaving at least one token to compute (the model must produce logits), and
    /// returns how many tokens they cover.
    /// </summary>
    public int AcquirePrefix(Sequence seq)
    {
        if (seq.Blocks.Count != 0)
        {
            throw new InvalidOperationException($"{seq}: prefix lookup needs an empty block table");
        }
        var tokens = seq.Tokens;
        int usable = (tokens.Count - 1) / BlockSize; // full blocks that leave a token to compute
        ComputeHashes(seq, usable);
        int hit = 0;
        Span<TokenId> block = BlockSize <= 256 ? stackalloc TokenId[BlockSize] : new TokenId[BlockSize];
        for (int i = 0; i < usable; i++)
        {
            Copy(tokens, i * BlockSize, block);
            ulong parent = i == 0 ? KvBlockPool.RootHash : seq.BlockHashes[i - 1];
            if (!Pool.TryAcquireCached(seq.BlockHashes[i], parent, block, out int b))
            {
                break;
            }
            seq.Blocks.Add(b);
            hit++;
        }
        return hit * BlockSize;
    }

    /// <summary>
    /// Grows the table to cover positions 0 .. <paramref name="length"/> - 1; false (and no change)
    /// when the pool lacks free blocks.
    /// </summary>
    public bool TryEnsure(Sequence seq, int length)
    {
        int need = BlocksFor(length) - seq.Blocks.Count;
        if (need <= 0)
        {
            return true;
        }
        if (need > Pool.FreeCount)
        {
            return false;
        }
        for (int i = 0; i < need; i++)
        {
            seq.Blocks.Add(Pool.Allocate());
        }
        return true;
    }

    /// <summary>Publishes every full block whose positions are all computed and still held.</summary>
    public void PublishComputed(Sequence seq)
    {
        int full = Math.Min(seq.ComputedTokens / BlockSize, seq.Blocks.Count);
        ComputeHashes(seq, full);
        Span<TokenId> block = BlockSize <= 256 ? stackalloc TokenId[BlockSize] : new TokenId[BlockSize];
        for (int i = 0; i < full; i++)
        {
            int b = seq.Blocks[i];
            if (b < 0 || Pool.IsPublished(b))
            {
                continue;
            }
            Copy(seq.Tokens, i * BlockSize, block);
            Pool.Publish(b, seq.BlockHashes[i], i == 0 ? KvBlockPool.RootHash : seq.BlockHashes[i - 1], block);
        }
    }

    /// <summary>
    /// Releases the blocks a chunk starting at <paramref name="nextPosition"/> can no longer attend:
    /// those wholly below nextPosition - W + 1. Does nothing without a window.
    /// </summary>
    public void ReleaseOutOfWindow(Sequence seq, int nextPosition)
    {
        if (SlidingWindow is not { } w)
        {
            return;
        }
        int lowest = nextPosition - w + 1;
        int dead = Math.Min(Math.Max(0, lowest) / BlockSize, seq.Blocks.Count);
        for (int i = 0; i < dead; i++)
        {
            if (seq.Blocks[i] >= 0)
            {
                Pool.Release(seq.Blocks[i]);
                seq.Blocks[i] = -1;
            }
        }
    }

    /// <summary>Releases every block of the table (last first, so the tail of a prefix is evicted before its head).</summary>
    public void Free(Sequence seq)
    {
        for (int i = seq.Blocks.Count - 1; i >= 0; i--)
        {
            if (seq.Blocks[i] >= 0)
            {
                Pool.Release(seq.Blocks[i]);
            }
        }
        seq.Blocks.Clear();
    }

    private void ComputeHashes(Sequence seq, int fullBlocks)
    {
        Span<TokenId> block = BlockSize <= 256 ? stackalloc TokenId[BlockSize] : new TokenId[BlockSize];
        for (int i = seq.BlockHashes.Count; i < fullBlocks; i++)
        {
            Copy(seq.Tokens, i * BlockSize, block);
            seq.BlockHashes.Add(KvBlockPool.HashBlock(i == 0 ? KvBlockPool.RootHash : seq.BlockHashes[i - 1], block));
        }
    }

    private static void Copy(IReadOnlyList<TokenId> tokens, int start, Span<TokenId> dst)
    {
        for (int i = 0; i < dst.Length; i++)
        {
            dst[i] = tokens[start + i];
        }
    }
}
