namespace Bora.Numerics.Quant;

/// <summary>
/// One K-format kernel over packed 16-row groups (<see cref="Q4KPacked"/>, <see cref="Q6KPacked"/>), as the shared
/// driver <see cref="KPacked.Run{TK}"/> sees it: how to expand a group for many tokens, what each token brings besides
/// its quants and scales, and the tiles of 1..8 tokens over either the packed or the expanded group.
/// </summary>
internal unsafe interface IKPackedKernel
{
    /// <summary>Bytes of one super-block of a packed group (16 rows).</summary>
    static abstract long SuperBytes { get; }

    /// <summary>Bytes of one super-block of an expanded group (the per-thread buffer of <see cref="Expand"/>).</summary>
    static abstract long ExpandedStride { get; }

    /// <summary>
    /// Tokens from which a product expands each group once (<see cref="Expand"/>) instead of rebuilding the values
    /// from the packed bytes in every tile of 8 tokens: the measured crossover of the two, per format.
    /// </summary>
    static abstract int ExpandMinTokens { get; }

    /// <summary>The per-token data a tile reads besides <see cref="Q8Row.Q"/> and <see cref="Q8Row.D"/> (after the format's Prepare).</summary>
    static abstract nint TokenData(Q8Activations act, int t);

    /// <summary>Expands one packed group (nb super-blocks) at <paramref name="g"/> into nb * <see cref="ExpandedStride"/> bytes at <paramref name="dst"/>.</summary>
    static abstract void Expand(byte* g, int nb, byte* dst);

    /// <summary>
    /// 16 rows x TN.Value (1..8) tokens over all nb super-blocks of <paramref name="src"/> (a packed group, or an
    /// expanded one when <paramref name="expanded"/>): token j's quants and scales tok[j], its <see cref="TokenData"/>
    /// data[j]; stores the first <paramref name="rows"/> rows of token j at y + j n.
    /// </summary>
    static abstract void Tile<TN>(bool expanded, byte* src, int nb, Q8Row* tok, nint* data, float* y, int n, int rows, float* partial)
        where TN : struct, ITokenCount;
}

/// <summary>
/// The driver shared by the K-format packed kernels: groups of 16 rows in order, each swept by tiles of up to 8
/// tokens (a short last tile repeats its last token, whose results are not stored); from the format's
/// <see cref="IKPackedKernel.ExpandMinTokens"/> tokens on, each group is first expanded once per product into a
/// per-thread buffer that all its tiles read. Letters: N = rows (n), T = tokens, nb = super-blocks per row.
/// </summary>
internal static unsafe class KPacked
{
    /// <summary>Rows per group: one per float lane of a 512-bit vector.</summary>
    public const int GroupRows = 16;

    private const int TileTokens = 8;

    [ThreadStatic]
    private static byte[]? t_expanded;

    /// <summary>Throws unless nb &gt;= 0 and a group of <paramref name="rows"/> rows is possible (1..16).</summary>
    public static void CheckGroup(int nb, int rows)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(nb);
        if (rows is < 1 or > GroupRows)
        {
            throw new ArgumentOutOfRangeException(nameof(rows), rows, "a group holds 1 to 16 rows");
        }
    }

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16; r1 a multiple of 16 or n), t in [0, tokens) with kernel
    /// <typeparamref name="TK"/>, after its Prepare. packed: the matrix's first group (groups of nb * SuperBytes bytes); y: (T, n).
    /// </summary>
    public static void Run<TK>(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
        where TK : struct, IKPackedKernel
    {
        if (tokens <= 0 || r0 >= r1)
        {
            return;
        }
        long groupBytes = nb * TK.SuperBytes;
        byte* expanded = null;
        if (tokens >= TK.ExpandMinTokens)
        {
            expanded = PinnedScratch.Get(ref t_expanded, nb * TK.ExpandedStride);
        }
        float* partial = stackalloc float[GroupRows];
        var tok = stackalloc Q8Row[TileTokens];
        var data = stackalloc nint[TileTokens];
        for (int g0 = r0; g0 < r1; g0 += GroupRows)
        {
            int rows = Math.Min(GroupRows, r1 - g0);
            byte* g = packed + g0 / GroupRows * groupBytes;
            if (expanded != null)
            {
                TK.Expand(g, nb, expanded);
            }
            byte* src = expanded != null ? expanded : g;
            for (int t0 = 0; t0 < tokens; t0 += TileTokens)
            {
                int tt = Math.Min(TileTokens, tokens - t0);
                for (int j = 0; j < TileTokens; j++)
                {
                    int t = t0 + Math.Min(j, tt - 1); // a short tile repeats its last token (not stored)
                    tok[j] = act.Row(t);
                    data[j] = TK.TokenData(act, t);
                }
                float* yt = y + (long)t0 * n + g0;
                bool e = expanded != null;
                switch (tt)
                {
                    case 1: TK.Tile<Tokens1>(e, src, nb, tok, data, yt, n, rows, partial); break;
                    case 2: TK.Tile<Tokens2>(e, src, nb, tok, data, yt, n, rows, partial); break;
                    case 3: TK.Tile<Tokens3>(e, src, nb, tok, data, yt, n, rows, partial); break;
                    case 4: TK.Tile<Tokens4>(e, src, nb, tok, data, yt, n, rows, partial); break;
                    case 5: TK.Tile<Tokens5>(e, src, nb, tok, data, yt, n, rows, partial); break;
                    case 6: TK.Tile<Tokens6>(e, src, nb, tok, data, yt, n, rows, partial); break;
                    case 7: TK.Tile<Tokens7>(e, src, nb, tok, data, yt, n, rows, partial); break;
                    default: TK.Tile<Tokens8>(e, src, nb, tok, data, yt, n, rows, partial); break;
                }
            }
        }
    }
}
