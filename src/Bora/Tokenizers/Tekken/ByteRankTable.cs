using System.Buffers.Binary;
using System.Numerics;

namespace Bora.Tokenizers.Tekken;

/// <summary>
/// An immutable map from byte strings to BPE ranks (rank r = the r-th token of the inner
/// vocabulary), looked up with a <see cref="ReadOnlySpan{T}"/> so encoding allocates nothing.
/// </summary>
/// <remarks>
/// Layout: all token bytes live back to back in one blob; token r is
/// <c>blob[offsets[r] .. offsets[r + 1])</c>. The hash index is open addressing with linear
/// probing over <c>slots</c> (a power of two, at least twice the token count) holding
/// <c>rank + 1</c> (0 = empty). Example: tokens {"a", "b", "ab"} give blob "abab",
/// offsets [0, 1, 2, 4].
/// </remarks>
internal sealed class ByteRankTable
{
    private readonly byte[] _blob;      // (sum of token lengths)
    private readonly int[] _offsets;    // (count + 1)
    private readonly int[] _slots;      // (capacity), rank + 1 or 0
    private readonly int _mask;

    /// <summary>Builds the table; <paramref name="tokens"/>[r] is the byte string of rank r.</summary>
    /// <returns>The table, or null with <paramref name="duplicateOf"/> = (first rank, second rank) of two equal byte strings.</returns>
    public static ByteRankTable? TryCreate(IReadOnlyList<byte[]> tokens, out (int First, int Second) duplicateOf)
    {
        long total = 0;
        foreach (var t in tokens)
        {
            total += t.Length;
        }
        if (total > Array.MaxLength)
        {
            throw new ArgumentException($"the tokens hold {total} bytes in all, more than one array can hold", nameof(tokens));
        }
        var blob = new byte[total];
        var offsets = new int[tokens.Count + 1];
        var pos = 0;
        for (var r = 0; r < tokens.Count; r++)
        {
            offsets[r] = pos;
            tokens[r].CopyTo(blob, pos);
            pos += tokens[r].Length;
        }
        offsets[tokens.Count] = pos;

        var capacity = (int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(16, tokens.Count * 2));
        var table = new ByteRankTable(blob, offsets, new int[capacity]);
        for (var r = 0; r < tokens.Count; r++)
        {
            var existing = table.Insert(r);
            if (existing >= 0)
            {
                duplicateOf = (existing, r);
                return null;
            }
        }
        duplicateOf = default;
        return table;
    }

    private ByteRankTable(byte[] blob, int[] offsets, int[] slots)
    {
        _blob = blob;
        _offsets = offsets;
        _slots = slots;
        _mask = slots.Length - 1;
    }

    /// <summary>Number of tokens.</summary>
    public int Count => _offsets.Length - 1;

    /// <summary>The bytes of rank <paramref name="rank"/>.</summary>
    public ReadOnlySpan<byte> Bytes(int rank) => _blob.AsSpan(_offsets[rank], _offsets[rank + 1] - _offsets[rank]);

    /// <summary>Length in bytes of rank <paramref name="rank"/>.</summary>
    public int Length(int rank) => _offsets[rank + 1] - _offsets[rank];

    /// <summary>The rank of <paramref name="bytes"/>, or -1 when it is not a token.</summary>
    public int RankOf(ReadOnlySpan<byte> bytes)
    {
        var i = (int)Hash(bytes) & _mask;
        while (true)
        {
            var slot = _slots[i];
            if (slot == 0)
            {
                return -1;
            }
            if (Bytes(slot - 1).SequenceEqual(bytes))
            {
                return slot - 1;
            }
            i = (i + 1) & _mask;
        }
    }

    /// <summary>Inserts rank <paramref name="rank"/>; returns the rank already holding the same bytes, or -1.</summary>
    private int Insert(int rank)
    {
        var bytes = Bytes(rank);
        var i = (int)Hash(bytes) & _mask;
        while (_slots[i] != 0)
        {
            if (Bytes(_slots[i] - 1).SequenceEqual(bytes))
            {
                return _slots[i] - 1;
            }
            i = (i + 1) & _mask;
        }
        _slots[i] = rank + 1;
        return -1;
    }

    /// <summary>A 64-bit multiply-xorshift hash over 8-byte words (deterministic, allocation free).</summary>
    private static ulong Hash(ReadOnlySpan<byte> bytes)
    {
        const ulong K = 0x9E3779B97F4A7C15UL;
        var h = (ulong)bytes.Length * K;
        var i = 0;
        for (; i + 8 <= bytes.Length; i += 8)
        {
            h = (h ^ BinaryPrimitives.ReadUInt64LittleEndian(bytes[i..])) * K;
            h ^= h >> 29;
        }
        ulong tail = 0;
        for (var s = 0; i < bytes.Length; i++, s += 8)
        {
            tail |= (ulong)bytes[i] << s;
        }
        h = (h ^ tail) * K;
        h ^= h >> 32;
        return h;
    }
}
