using Bora.Tokenizers;

namespace Bora.Serving;

/// <summary>
/// Bookkeeping of a paged KV cache (no tensor data: see <c>PagedKvStore</c>): N =
/// <see cref="BlockCount"/> blocks of B = <see cref="BlockSize"/> positions, each with a reference
/// count (how many sequences' block tables hold it), a free list, and a prefix cache that maps the
/// hash of a full block of tokens (chained with the hash of every block before it) to the block that
/// holds its keys and values.
/// <para>
/// A block whose count drops to 0 goes to the tail of the free list but keeps its contents and its
/// hash, so a later request with the same prefix can take it back (<see cref="TryAcquireCached"/>);
/// <see cref="Allocate"/> takes the head of the free list (least recently freed) and only then
/// forgets its hash. Free = <see cref="FreeCount"/> counts such cached-but-unused blocks too.
/// </para>
/// <para>
/// Worked example, B = 4, two requests sharing the prompt prefix "a b c d e f g h" (8 tokens):
/// request 1 has prompt [a b c d e f g h i]: blocks 0 (a..d), 1 (e..h), 2 (i) are allocated; after
/// its prefill the two full blocks are published with hashes h0 = H(seed, a..d) and
/// h1 = H(h0, e..h). Request 2 has prompt [a b c d e f g h x y]: its first two full blocks hash to h0
/// and h1 again, so it takes blocks 0 and 1 (reference count 2 each) and starts computing at
/// position 8 with a fresh block 3 for "x y". When request 1 finishes, blocks 0 and 1 drop to count
/// 1 and block 2 is freed; when request 2 finishes, 0, 1 and 3 are freed too, but stay findable by
/// hash until <see cref="Allocate"/> hands them out again.
/// </para>
/// A hash hit is verified against the stored tokens and parent hash, so a wrong reuse needs a
/// 64-bit collision of the parent chain and equal block tokens. Not thread-safe.
/// </summary>
public sealed class KvBlockPool
{
    /// <summary>Parent hash of a sequence's first block.</summary>
    public const ulong RootHash = 0x9E37_79B9_7F4A_7C15UL;

    private readonly int[] _refs;          // (N) block tables holding each block
    private readonly bool[] _published;    // (N) block is in the prefix cache
    private readonly ulong[] _hash;        // (N) hash of a published block
    private readonly ulong[] _parent;      // (N) hash of the block before it (RootHash for the first)
    private readonly int[] _tokens;        // (N, B) token ids of published blocks
    private readonly int[] _prev, _next;   // (N) free-list links, -1 = none
    private readonly Dictionary<ulong, int> _byHash = [];
    private int _head = -1, _tail = -1;

    public KvBlockPool(int blockCount, int blockSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockCount);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        if ((long)blockCount * blockSize > int.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(blockCount), blockCount,
                $"{blockCount} blocks of {blockSize} positions exceed {int.MaxValue} positions");
        }
        BlockCount = blockCount;
        BlockSize = blockSize;
        _refs = new int[blockCount];
        _published = new bool[blockCount];
        _hash = new ulong[blockCount];
        _parent = new ulong[blockCount];
        _tokens = new int[blockCount * blockSize];
        _prev = new int[blockCount];
        _next = new int[blockCount];
        for (int b = 0; b < blockCount; b++)
        {
            PushFree(b);
        }
        FreeCount = blockCount;
    }

    /// <summary>N: blocks in the pool.</summary>
    public int BlockCount { get; }

    /// <summary>B: positions per block.</summary>
    public int BlockSize { get; }

    /// <summary>Blocks no sequence holds (some may still be findable in the prefix cache).</summary>
    public int FreeCount { get; private set; }

    /// <summary>Blocks currently findable in the prefix cache (held or free).</summary>
    public int CachedCount => _byHash.Count;

    /// <summary>How many block tables hold <paramref name="block"/>.</summary>
    public int RefCount(int block) => _refs[block];

    /// <summary>True when <paramref name="block"/> is findable by hash.</summary>
    public bool IsPublished(int block) => _published[block];

    /// <summary>
    /// Chained hash of one full block: mixes <paramref name="parent"/> (the previous block's hash, or
    /// <see cref="RootHash"/>) with the B token ids (splitmix64 finaliser per step).
    /// </summary>
    public static ulong HashBlock(ulong parent, ReadOnlySpan<TokenId> tokens)
    {
        ulong h = parent;
        foreach (var t in tokens)
        {
            h = Mix(h ^ (uint)t.Value);
        }
        return Mix(h ^ (ulong)tokens.Length);
    }

    private static ulong Mix(ulong z)
    {
        z += 0x9E37_79B9_7F4A_7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D0_49BB_1331_11EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Takes the least recently freed block (forgetting its cached contents) with count 1.</summary>
    public int Allocate()
    {
        if (_head < 0)
        {
            throw new InvalidOperationException($"the KV block pool is exhausted ({BlockCount} blocks of {BlockSize} positions in use)");
        }
        int b = _head;
        RemoveFree(b);
        if (_published[b])
        {
            _byHash.Remove(_hash[b]);
            _published[b] = false;
        }
        _refs[b] = 1;
        return b;
    }

    /// <summary>
    /// Finds the published block holding <paramref name="tokens"/> after the prefix hashed as
    /// <paramref name="parent"/>; on a hit takes a reference to it (out of the free list if unused).
    /// </summary>
    public bool TryAcquireCached(ulong hash, ulong parent, ReadOnlySpan<TokenId> tokens, out int block)
    {
        block = -1;
        if (!_byHash.TryGetValue(hash, out int b) || _parent[b] != parent || !SameTokens(b, tokens))
        {
            return false;
        }
        if (_refs[b] == 0)
        {
            RemoveFree(b);
        }
        _refs[b]++;
        block = b;
        return true;
    }

    /// <summary>
    /// Makes a full, computed block findable by hash. Keeps the existing entry when another block
    /// already holds the same hash (two requests computed the same prefix at the same time).
    /// </summary>
    public void Publish(int block, ulong hash, ulong parent, ReadOnlySpan<TokenId> tokens)
    {
        if (tokens.Length != BlockSize)
        {
            throw new ArgumentException($"only full blocks ({BlockSize} tokens) can be published; got {tokens.Length}", nameof(tokens));
        }
        if (_refs[block] == 0)
        {
            throw new InvalidOperationException($"block {block} is free; only a held block can be published");
        }
        if (_published[block] || _byHash.ContainsKey(hash))
        {
            return;
        }
        _published[block] = true;
        _hash[block] = hash;
        _parent[block] = parent;
        for (int i = 0; i < BlockSize; i++)
        {
            _tokens[block * BlockSize + i] = tokens[i].Value;
        }
        _byHash[hash] = block;
    }

    /// <summary>Drops one reference; at 0 the block joins the tail of the free list (still cached).</summary>
    public void Release(int block)
    {
        if (_refs[block] <= 0)
        {
            throw new InvalidOperationException($"block {block} released more often than acquired");
        }
        if (--_refs[block] == 0)
        {
            PushFree(block);
            FreeCount++;
        }
    }

    private bool SameTokens(int b, ReadOnlySpan<TokenId> tokens)
    {
        if (tokens.Length != BlockSize)
        {
            return false;
        }
        for (int i = 0; i < BlockSize; i++)
        {
            if (_tokens[b * BlockSize + i] != tokens[i].Value)
            {
                return false;
            }
        }
        return true;
    }

    private void PushFree(int b)
    {
        _prev[b] = _tail;
        _next[b] = -1;
        if (_tail >= 0)
        {
            _next[_tail] = b;
        }
        else
        {
            _head = b;
        }
        _tail = b;
    }

    private void RemoveFree(int b)
    {
        if (_prev[b] >= 0)
        {
            _next[_prev[b]] = _next[b];
        }
        else
        {
            _head = _next[b];
        }
        if (_next[b] >= 0)
        {
            _prev[_next[b]] = _prev[b];
        }
        else
        {
            _tail = _prev[b];
        }
        _prev[b] = _next[b] = -1;
        FreeCount--;
    }
}
