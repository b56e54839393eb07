namespace Bora.Tokenizers.Tekken;

/// <summary>
/// tiktoken's byte-level BPE over one pre-tokenized piece: start from single bytes and repeatedly
/// join the adjacent pair whose concatenation is the token of lowest rank (the leftmost such pair
/// on ties) until no adjacent pair concatenates to a token.
/// </summary>
/// <remarks>
/// Worked example with ranks {a:97, b:98, c:99, ab:300, bc:256, abc:400}: "abc" is itself a token,
/// so <see cref="Encode"/> returns [400] without merging (tiktoken's whole-piece shortcut). Merging
/// alone: parts [a][b][c], pairs ab=300, bc=256 -> join bc -> [a][bc], pair "abc"=400 -> [abc].
/// Three implementations agree exactly and tests check it: <see cref="MergeReference"/> (the plain
/// definition, recomputes every pair each step), <see cref="MergeSmall"/> (keeps pair ranks, O(n^2)
/// worst case on the stack, used for short pieces) and <see cref="MergeLarge"/> (linked parts and a
/// min-heap keyed by (rank, start), O(n log n), used for long pieces such as runs of CJK text or
/// whitespace).
/// Invariant relied upon: every part is always a token (single bytes are ranks 0..255 with rank
/// b = byte b, checked at load; a join only happens when the joined bytes are a token).
/// </remarks>
internal static class BytePairMerge
{
    /// <summary>Pieces longer than this many bytes use <see cref="MergeLarge"/>.</summary>
    public const int SmallPieceMaxBytes = 128;

    private const int NoRank = int.MaxValue;

    /// <summary>Appends the ranks of <paramref name="piece"/> to <paramref name="output"/>.</summary>
    public static void Encode(ByteRankTable table, ReadOnlySpan<byte> piece, List<int> output)
    {
        if (piece.Length == 0)
        {
            return;
        }
        if (piece.Length == 1)
        {
            output.Add(piece[0]);
            return;
        }
        var whole = table.RankOf(piece);
        if (whole >= 0)
        {
            output.Add(whole);
            return;
        }
        if (piece.Length <= SmallPieceMaxBytes)
        {
            MergeSmall(table, piece, output);
        }
        else
        {
            MergeLarge(table, piece, output);
        }
    }

    /// <summary>The plain definition: recompute all adjacent pair ranks, join the first lowest, repeat.</summary>
    public static void MergeReference(ByteRankTable table, ReadOnlySpan<byte> piece, List<int> output)
    {
        // bounds[k] = start of part k; the last entry is piece.Length.
        var bounds = new List<int>();
        for (var i = 0; i <= piece.Length; i++)
        {
            bounds.Add(i);
        }
        while (true)
        {
            var best = -1;
            var bestRank = NoRank;
            for (var k = 0; k + 2 < bounds.Count; k++)
            {
                var r = table.RankOf(piece[bounds[k]..bounds[k + 2]]);
                if (r >= 0 && r < bestRank)
                {
                    bestRank = r;
                    best = k;
                }
            }
            if (best < 0)
            {
                break;
            }
            bounds.RemoveAt(best + 1);
        }
        for (var k = 0; k + 1 < bounds.Count; k++)
        {
            output.Add(table.RankOf(piece[bounds[k]..bounds[k + 1]]));
        }
    }

    /// <summary>Pair ranks kept in an array; each join updates the two neighbouring pairs. For short pieces.</summary>
    public static void MergeSmall(ByteRankTable table, ReadOnlySpan<byte> piece, List<int> output)
    {
        var n = piece.Length;
        if (n == 0)
        {
            return;
        }
        // starts: (count + 1) part starts, starts[count] = n. pairRank: (count - 1) rank of parts k and k+1 joined.
        Span<int> starts = n <= 256 ? stackalloc int[n + 1] : new int[n + 1];
        Span<int> pairRank = n <= 256 ? stackalloc int[n] : new int[n];
        var count = n;
        for (var i = 0; i <= n; i++)
        {
            starts[i] = i;
        }
        for (var k = 0; k + 1 < count; k++)
        {
            pairRank[k] = PairRank(table, piece, starts[k], starts[k + 2]);
        }
        while (count > 1)
        {
            var best = -1;
            var bestRank = NoRank;
            for (var k = 0; k + 1 < count; k++)
            {
                if (pairRank[k] < bestRank)
                {
                    bestRank = pairRank[k];
                    best = k;
                }
            }
            if (best < 0)
            {
                break;
            }
            // Join parts best and best+1: drop boundary starts[best + 1] and pair best+1.
            starts[(best + 2)..(count + 1)].CopyTo(starts[(best + 1)..]);
            if (best + 2 < count)
            {
                pairRank[(best + 2)..(count - 1)].CopyTo(pairRank[(best + 1)..]);
            }
            count--;
            pairRank[best] = best + 1 < count ? PairRank(table, piece, starts[best], starts[best + 2]) : NoRank;
            if (best > 0)
            {
                pairRank[best - 1] = PairRank(table, piece, starts[best - 1], starts[best + 1]);
            }
        }
        for (var k = 0; k < count; k++)
        {
            output.Add(table.RankOf(piece[starts[k]..starts[k + 1]]));
        }
    }

    /// <summary>Linked parts and a min-heap of candidate joins keyed by (rank, start). For long pieces.</summary>
    public static void MergeLarge(ByteRankTable table, ReadOnlySpan<byte> piece, List<int> output)
    {
        var n = piece.Length;
        if (n == 0)
        {
            return;
        }
        // Parts are identified by their start byte s. next[s]: start of the following part (n at the
        // end), -1 once s has been joined into the part before it. prev[s]: start of the previous part, -1 first.
        var next = new int[n];   // (n)
        var prev = new int[n];   // (n)
        for (var s = 0; s < n; s++)
        {
            next[s] = s + 1;
            prev[s] = s - 1;
        }
        // A heap entry (left, end) proposes joining the part at left with the part after it, ending at end.
        // Priority = rank << 32 | left, so the lowest rank wins and, on ties, the leftmost pair.
        var heap = new PriorityQueue<(int Left, int End), long>(n);
        for (var s = 0; s + 1 < n; s++)
        {
            Propose(table, piece, next, heap, s);
        }
        while (heap.TryDequeue(out var candidate, out _))
        {
            var left = candidate.Left;
            var right = next[left];
            // Stale if left was absorbed, or either part changed since (parts only grow, so the pair's end moved).
            if (right < 0 || right >= n || next[right] != candidate.End)
            {
                continue;
            }
            var end = candidate.End;
            next[left] = end;
            next[right] = -1;
            if (end < n)
            {
                prev[end] = left;
            }
            if (prev[left] >= 0)
            {
                Propose(table, piece, next, heap, prev[left]);
            }
            Propose(table, piece, next, heap, left);
        }
        for (var s = 0; s < n; s = next[s])
        {
            output.Add(table.RankOf(piece[s..next[s]]));
        }
    }

    private static void Propose(ByteRankTable table, ReadOnlySpan<byte> piece, int[] next, PriorityQueue<(int Left, int End), long> heap, int left)
    {
        var right = next[left];
        if (right >= piece.Length)
        {
            return;
        }
        var end = next[right];
        var rank = table.RankOf(piece[left..end]);
        if (rank >= 0)
        {
            heap.Enqueue((left, end), ((long)rank << 32) | (uint)left);
        }
    }

    private static int PairRank(ByteRankTable table, ReadOnlySpan<byte> piece, int start, int end)
    {
        var r = table.RankOf(piece[start..end]);
        return r < 0 ? NoRank : r;
    }
}
