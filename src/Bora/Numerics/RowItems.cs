namespace Bora.Numerics;

/// <summary>
/// How a product's rows are dealt out as items that the pool's threads claim one by one (<see cref="NumericsThreads.For"/>):
/// equal items, except that the last <c>threads</c> of them are each cut into <see cref="TailPieces"/> pieces, so that
/// the items claimed last are short and a thread that finishes early waits at most about a piece for the others,
/// while the first items stay long runs through memory. Every boundary is a multiple of the row alignment (no shared
/// output cache lines).
/// <para>Example: 256 rows, 8 equal items (32 rows), 2 threads, alignment 16: items 0..5 are rows 0..192 in 32-row
/// steps, then items 6..13 are the 4 quarters of items 6 and 7 (8 rows each, rounded to the alignment: boundaries 192,
/// 192, 208, 208, 224, 224, 240, 240, 256; the empty ones are skipped by the caller).</para>
/// </summary>
internal static class RowItems
{
    /// <summary>Pieces each of the last items is cut into.</summary>
    public const int TailPieces = 4;

    /// <summary>
    /// The first row of piece <paramref name="piece"/> (0..<see cref="TailPieces"/>) of the rows [r0, r1) (r0 aligned):
    /// r0 + q (r1 - r0) / <see cref="TailPieces"/> rounded down to <paramref name="align"/>, r1 for the last.
    /// </summary>
    public static int Piece(int piece, int r0, int r1, int align) =>
        piece >= TailPieces ? r1 : Math.Min(r1, r0 + (int)((long)piece * (r1 - r0) / TailPieces) / align * align);

    /// <summary>Items in all for <paramref name="equal"/> equal items over <paramref name="threads"/> threads.</summary>
    public static int Count(int equal, int threads) => threads <= 1 || equal <= 1 ? equal : equal + Math.Min(threads, equal) * (TailPieces - 1);

    /// <summary>The first row of item <paramref name="item"/> (n for item = <see cref="Count"/>), a multiple of <paramref name="align"/> or n.</summary>
    public static int Boundary(int item, int equal, int threads, int n, int align)
    {
        int count = Count(equal, threads);
        if (item >= count)
        {
            return n;
        }
        // The whole items first, then the pieces of the last ones (Piece cuts each of those).
        int whole = count == equal ? equal : equal - Math.Min(threads, equal);
        if (item <= whole)
        {
            return Equal(item, equal, n, align);
        }
        int cut = whole + (item - whole) / TailPieces;
        return Piece((item - whole) % TailPieces, Equal(cut, equal, n, align), Equal(cut + 1, equal, n, align), align);
    }

    /// <summary>The first row of equal item <paramref name="i"/> of <paramref name="equal"/>: i n / equal rounded down to <paramref name="align"/> (n for i = equal).</summary>
    private static int Equal(int i, int equal, int n, int align) => i >= equal ? n : Math.Min(n, (int)((long)i * n / equal) / align * align);
}
