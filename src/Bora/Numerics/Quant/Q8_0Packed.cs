using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Numerics.Quant;

/// <summary>
/// Q8_0 in the packed 16-row group layout built once at load, and its products with rows in vector lanes for every
/// token count (decode included): unlike <see cref="Q8_0Interleaved"/>, which transposes each group into two nibble
/// planes on every product, nothing is rearranged at run time, so a 1-token product streams the weights once, front to
/// back, at memory speed.
/// <para>Layout of a group (rows 16g..16g+15 of the matrix; rows past N repeat row N - 1), block after block, 544 bytes
/// per block b (= 16 rows x 34 bytes, the file's size):
/// the quants: 8 vectors of 64 bytes; vector j (0..7) holds, for each row r, the block's values 4j..4j+3 as dword r,
/// each stored as u = w ^ 0x80 = w + 128 (0..255, unsigned);
/// the scales: the 16 rows' f16 d_w (32 bytes), row r at 2r.
/// An even block puts its quants first (bytes [0, 512)) and its scales after (bytes [512, 544)); an odd block puts its
/// scales first (bytes [0, 32)) and its quants after (bytes [32, 544)): two blocks are 1088 = 17 x 64 bytes, so every
/// quant vector starts on a 64-byte line whenever the group does (the group starts at a multiple of 1088 bytes when
/// nb is even; the caller aligns the buffer to 64 bytes).
/// Example: value 9 of block 3 of the group's row 5 (u = its w + 128) is at 3 * 544 + 32 + 2 * 64 + 5 * 4 + 1 = 1813;
/// that row's scale of block 3 is at 3 * 544 + 10 = 1642, of block 2 at 2 * 544 + 512 + 10 = 1610.</para>
/// <para>Arithmetic per (row, token), over the blocks in order: p = sum of u x (exact in int32), then
/// acc = fma(d_w, fms(p, d_x, 128 d_x sum x), acc): the sequence of <see cref="Q8_0Interleaved"/> and its scalar twin
/// <see cref="Q8_0Interleaved.RunScalar"/>, so all agree bit for bit. The AVX-512 kernel gets p without splitting the
/// weights: each token's activations are split once per product (by <see cref="Prepare"/>, into a buffer kept with
/// the activations) as x = 16 xh + xl with xh in [-8, 8], xl in [-8, 7], and per block 8 vpmaddubsw of u with xl and 8
/// with xh add up in int16 without saturating (16 products of at most 255 * 8 = 2040: at most 32640), then
/// p = 16 (xh sums) + (xl sums) with two vpmaddwd.</para>
/// Letters: N = rows, K = cols, T = tokens, nb = K / 32, G = ceil(N / 16) groups.
/// </summary>
internal static unsafe class Q8_0Packed
{
    /// <summary>Rows per group: one per float lane of a 512-bit vector.</summary>
    public const int GroupRows = 16;

    /// <summary>Bytes of one block of a group: 16 rows' quants (512) and f16 scales (32), the file's 16 x 34.</summary>
    public const int BlockGroupBytes = 544;

    /// <summary>Tokens per tile (accumulators in registers beside the block's 8 weight vectors).</summary>
    private const int TileTokens = 8;

    /// <summary>
    /// Weight bytes of the groups that a tile of tokens sweeps before the next tile (they stay in L2 across the tiles,
    /// while the tile's activations stay in L1 across the groups): half of a 1 MB L2.
    /// </summary>
    private const long SweepBytes = 512 * 1024;

    private const int BlockBytes = 34;

    /// <summary>The split activations of each <see cref="Q8Activations"/> (one product at a time each), filled by <see cref="Prepare"/>.</summary>
    private static readonly ConditionalWeakTable<Q8Activations, SplitBuffer> s_split = [];

    /// <summary>Bytes of one 16-row group of <paramref name="nb"/> blocks.</summary>
    public static long GroupBytes(int nb) => (long)nb * BlockGroupBytes;

    /// <summary>Offset of block <paramref name="b"/>'s 512 quant bytes in its group: after its scales when b is odd.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static long QuantOffset(int b) => (long)b * BlockGroupBytes + ((b & 1) << 5);

    /// <summary>Offset of block <paramref name="b"/>'s 16 f16 scales in its group: after its quants when b is even.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static long ScaleOffset(int b) => (long)b * BlockGroupBytes + (512 - ((b & 1) << 9));

    /// <summary>
    /// Packs <paramref name="rows"/> (1..16; rows past them repeat the last) GGUF-layout rows of nb blocks at
    /// <paramref name="src"/> (rows <paramref name="rowBytes"/> apart) into the group at <paramref name="dst"/>
    /// (<see cref="GroupBytes"/> bytes).
    /// </summary>
    public static void PackGroup(byte* src, long rowBytes, int nb, int rows, byte* dst)
    {
        for (int r = 0; r < GroupRows; r++)
        {
            byte* row = src + Math.Min(r, rows - 1) * rowBytes;
            for (int b = 0; b < nb; b++)
            {
                byte* blk = row + (long)b * BlockBytes;
                byte* q = dst + QuantOffset(b) + r * 4;
                for (int j = 0; j < 8; j++)
                {
                    *(uint*)(q + j * 64) = Unsafe.ReadUnaligned<uint>(blk + 2 + 4 * j) ^ 0x80808080u;
                }
                *(ushort*)(dst + ScaleOffset(b) + 2 * r) = Unsafe.ReadUnaligned<ushort>(blk);
            }
        }
    }

    /// <summary>Row <paramref name="r"/> (0..15) of the group at <paramref name="group"/> back to nb GGUF blocks at <paramref name="dst"/>.</summary>
    public static void UnpackRow(byte* group, int nb, int r, byte* dst)
    {
        for (int b = 0; b < nb; b++)
        {
            byte* blk = dst + (long)b * BlockBytes;
            byte* q = group + QuantOffset(b) + r * 4;
            Unsafe.WriteUnaligned(blk, *(ushort*)(group + ScaleOffset(b) + 2 * r));
            for (int j = 0; j < 8; j++)
            {
                Unsafe.WriteUnaligned(blk + 2 + 4 * j, *(uint*)(q + j * 64) ^ 0x80808080u);
            }
        }
    }

    /// <summary>
    /// Once per product on the calling thread, after quantizing the activations (blocks of 32): the data the kernels
    /// read, 128 d_x sum x per block and, where the CPU has AVX-512, the activations split for <see cref="Run"/> (see the
    /// class summary; kept with <paramref name="act"/>, (T, nb, 2, 32) bytes, grown to the largest product and reused).
    /// </summary>
    public static void Prepare(Q8Activations act)
    {
        act.PrepareOffsetSums(128);
        if (!Avx512BW.IsSupported)
        {
            return; // only Run reads the split activations; the scalar twin reads the quants
        }
        var buffer = s_split.GetValue(act, static _ => new SplitBuffer());
        int nb = act.Cols / 32;
        long tokenBytes = (long)nb * 64;
        buffer.Fill(act.Tokens, act.Cols, act.Tokens * tokenBytes);
        sbyte* split = buffer.Pointer;
        for (int t = 0; t < act.Tokens; t++)
        {
            Split(act.Row(t).Q, nb, split + t * tokenBytes);
        }
    }

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16; r1 a multiple of 16 or n), t in [0, tokens), AVX-512 (BW).
    /// packed: the matrix's first group; y: (T, N). Needs <see cref="Prepare"/> for this product.
    /// Tiles of up to 8 tokens sweep the groups of the range a few at a time (<see cref="SweepBytes"/> of weights, which
    /// stay in L2 across the tiles; a 1-token product streams the range once, group after group).
    /// </summary>
    public static void Run(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        if (tokens <= 0 || r0 >= r1)
        {
            return;
        }
        if (!s_split.TryGetValue(act, out var buffer) || !buffer.Matches(tokens, nb * 32))
        {
            throw new InvalidOperationException($"Q8_0Packed.Run of {tokens} tokens x {nb * 32} columns: Prepare was not called for these activations");
        }
        sbyte* split = buffer.Pointer;
        long tokenBytes = (long)nb * 64;
        long groupBytes = GroupBytes(nb);
        int sweepRows = GroupRows * (int)Math.Clamp(SweepBytes / groupBytes, 1, 64);
        float* partial = stackalloc float[GroupRows];
        var xs = stackalloc nint[TileTokens];
        var dx = stackalloc nint[TileTokens];
        var ds = stackalloc nint[TileTokens];
        for (int s0 = r0; s0 < r1; s0 += sweepRows)
        {
            int s1 = Math.Min(r1, s0 + sweepRows);
            for (int t0 = 0; t0 < tokens; t0 += TileTokens)
            {
                int tt = Math.Min(TileTokens, tokens - t0);
                for (int j = 0; j < TileTokens; j++)
                {
                    int t = t0 + Math.Min(j, tt - 1); // a short tile repeats its last token (not computed)
                    xs[j] = (nint)(split + t * tokenBytes);
                    dx[j] = (nint)act.Row(t).D;
                    ds[j] = (nint)act.OffsetSums(t);
                }
                for (int g0 = s0; g0 < s1; g0 += GroupRows)
                {
                    int rows = Math.Min(GroupRows, s1 - g0);
                    byte* g = packed + g0 / GroupRows * groupBytes;
                    float* yt = y + (long)t0 * n + g0;
                    switch (tt)
                    {
                        case 1: Tile<Tokens1>(g, nb, (sbyte**)xs, (float**)dx, (float**)ds, yt, n, rows, partial); break;
                        case 2: Tile<Tokens2>(g, nb, (sbyte**)xs, (float**)dx, (float**)ds, yt, n, rows, partial); break;
                        case 3: Tile<Tokens3>(g, nb, (sbyte**)xs, (float**)dx, (float**)ds, yt, n, rows, partial); break;
                        case 4: Tile<Tokens4>(g, nb, (sbyte**)xs, (float**)dx, (float**)ds, yt, n, rows, partial); break;
                        case 5: Tile<Tokens5>(g, nb, (sbyte**)xs, (float**)dx, (float**)ds, yt, n, rows, partial); break;
                        case 6: Tile<Tokens6>(g, nb, (sbyte**)xs, (float**)dx, (float**)ds, yt, n, rows, partial); break;
                        case 7: Tile<Tokens7>(g, nb, (sbyte**)xs, (float**)dx, (float**)ds, yt, n, rows, partial); break;
                        default: Tile<Tokens8>(g, nb, (sbyte**)xs, (float**)dx, (float**)ds, yt, n, rows, partial); break;
                    }
                }
            }
        }
    }

    /// <summary>
    /// One token's (K) quants x to nb blocks of 64 bytes at <paramref name="dst"/>: xl (32), then xh (32), with
    /// x = 16 xh + xl, xh = (x &gt;&gt; 4) + bit 3 of x (in [-8, 8]), xl = x - 16 xh (in [-8, 7]), all in wrapping bytes.
    /// Example: x = 127: xh = 7 + 1 = 8, xl = 127 - 128 = -1; x = -127: xh = -8 + 0, xl = 1; x = 8: xh = 1, xl = -8.
    /// </summary>
    internal static void Split(sbyte* x, int nb, sbyte* dst)
    {
        var one = Vector256.Create((byte)1);
        for (int b = 0; b < nb; b++)
        {
            var v = Vector256.Load(x + 32L * b);
            var xh = Vector256.ShiftRightArithmetic(v, 4) + (Vector256.ShiftRightLogical(v.AsByte(), 3) & one).AsSByte();
            var xl = v - Vector256.ShiftLeft(xh, 4);
            xl.Store(dst + 64L * b);
            xh.Store(dst + 64L * b + 32);
        }
    }

    /// <summary>
    /// 16 rows x TN.Value (1..8) tokens over all blocks of one group; stores the first <paramref name="rows"/> rows.
    /// Per block: 8 loads give the weight vectors u as stored, the 16 scales are widened once, then each token adds its
    /// block (<see cref="Token"/>). xs: the tile's split activations (nb, 2, 32); dx: their block scales; ds: 128 d_x sum x.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TN>(byte* g, int nb, sbyte** xs, float** dx, float** ds, float* y, int n, int rows, float* partial)
        where TN : struct, ITokenCount
    {
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default, c6 = default, c7 = default;
        sbyte* x0 = xs[0], x1 = xs[1], x2 = xs[2], x3 = xs[3], x4 = xs[4], x5 = xs[5], x6 = xs[6], x7 = xs[7];
        for (int b = 0; b < nb; b++)
        {
            byte* q = g + QuantOffset(b);
            var u0 = Vector512.Load(q);
            var u1 = Vector512.Load(q + 64);
            var u2 = Vector512.Load(q + 128);
            var u3 = Vector512.Load(q + 192);
            var u4 = Vector512.Load(q + 256);
            var u5 = Vector512.Load(q + 320);
            var u6 = Vector512.Load(q + 384);
            var u7 = Vector512.Load(q + 448);
            var dw = Halves(Vector256.Load((short*)(g + ScaleOffset(b))));
            long xo = 64L * b;
            c0 = Token(c0, u0, u1, u2, u3, u4, u5, u6, u7, dw, x0 + xo, dx[0] + b, ds[0] + b);
            if (TN.Value > 1)
            {
                c1 = Token(c1, u0, u1, u2, u3, u4, u5, u6, u7, dw, x1 + xo, dx[1] + b, ds[1] + b);
            }
            if (TN.Value > 2)
            {
                c2 = Token(c2, u0, u1, u2, u3, u4, u5, u6, u7, dw, x2 + xo, dx[2] + b, ds[2] + b);
            }
            if (TN.Value > 3)
            {
                c3 = Token(c3, u0, u1, u2, u3, u4, u5, u6, u7, dw, x3 + xo, dx[3] + b, ds[3] + b);
            }
            if (TN.Value > 4)
            {
                c4 = Token(c4, u0, u1, u2, u3, u4, u5, u6, u7, dw, x4 + xo, dx[4] + b, ds[4] + b);
            }
            if (TN.Value > 5)
            {
                c5 = Token(c5, u0, u1, u2, u3, u4, u5, u6, u7, dw, x5 + xo, dx[5] + b, ds[5] + b);
            }
            if (TN.Value > 6)
            {
                c6 = Token(c6, u0, u1, u2, u3, u4, u5, u6, u7, dw, x6 + xo, dx[6] + b, ds[6] + b);
            }
            if (TN.Value > 7)
            {
                c7 = Token(c7, u0, u1, u2, u3, u4, u5, u6, u7, dw, x7 + xo, dx[7] + b, ds[7] + b);
            }
        }
        Q4_0Interleaved.Store(c0, y, rows, partial);
        if (TN.Value > 1)
        {
            Q4_0Interleaved.Store(c1, y + n, rows, partial);
        }
        if (TN.Value > 2)
        {
            Q4_0Interleaved.Store(c2, y + 2L * n, rows, partial);
        }
        if (TN.Value > 3)
        {
            Q4_0Interleaved.Store(c3, y + 3L * n, rows, partial);
        }
        if (TN.Value > 4)
        {
            Q4_0Interleaved.Store(c4, y + 4L * n, rows, partial);
        }
        if (TN.Value > 5)
        {
            Q4_0Interleaved.Store(c5, y + 5L * n, rows, partial);
        }
        if (TN.Value > 6)
        {
            Q4_0Interleaved.Store(c6, y + 6L * n, rows, partial);
        }
        if (TN.Value > 7)
        {
            Q4_0Interleaved.Store(c7, y + 7L * n, rows, partial);
        }
    }

    /// <summary>
    /// One token's block for the 16 rows: acc + d_w (p d_x - 128 d_x sum x), p = sum u x = 16 sum u xh + sum u xl
    /// exactly (x: the block's split activations, xl at x[0..32), xh at x[32..64)).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Token(Vector512<float> acc, Vector512<byte> u0, Vector512<byte> u1, Vector512<byte> u2, Vector512<byte> u3,
        Vector512<byte> u4, Vector512<byte> u5, Vector512<byte> u6, Vector512<byte> u7, Vector512<float> dw, sbyte* x, float* dx, float* ds128)
    {
        // Each sum: 8 vpmaddubsw of u (at most 255) with parts of magnitude at most 8: 16 products per int16 lane, |sum| <= 32640.
        var lo = Avx512BW.MultiplyAddAdjacent(u0, Vector512.Create(*(int*)x).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(u1, Vector512.Create(*(int*)(x + 4)).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(u2, Vector512.Create(*(int*)(x + 8)).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(u3, Vector512.Create(*(int*)(x + 12)).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(u4, Vector512.Create(*(int*)(x + 16)).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(u5, Vector512.Create(*(int*)(x + 20)).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(u6, Vector512.Create(*(int*)(x + 24)).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(u7, Vector512.Create(*(int*)(x + 28)).AsSByte());
        var hi = Avx512BW.MultiplyAddAdjacent(u0, Vector512.Create(*(int*)(x + 32)).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(u1, Vector512.Create(*(int*)(x + 36)).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(u2, Vector512.Create(*(int*)(x + 40)).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(u3, Vector512.Create(*(int*)(x + 44)).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(u4, Vector512.Create(*(int*)(x + 48)).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(u5, Vector512.Create(*(int*)(x + 52)).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(u6, Vector512.Create(*(int*)(x + 56)).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(u7, Vector512.Create(*(int*)(x + 60)).AsSByte());
        var p = Avx512BW.MultiplyAddAdjacent(hi, Vector512.Create((short)16)) + Avx512BW.MultiplyAddAdjacent(lo, Vector512.Create((short)1));
        return Avx512F.FusedMultiplyAdd(dw, Avx512F.FusedMultiplySubtract(Avx512F.ConvertToVector512Single(p), Vector512.Create(*dx), Vector512.Create(*ds128)), acc);
    }

    /// <summary>
    /// 16 f16 values widened to float, exactly for normal and subnormal halves (as <see cref="QuantGemm.Halves"/>):
    /// sign-extend, shift exponent and mantissa into a float's place, clear bits 28..30 (the sign extension), scale by
    /// 2^112 (the exponent bias difference).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Halves(Vector256<short> h) =>
        (Vector512.ShiftLeft(Avx512F.ConvertToVector512Int32(h), 13) & Vector512.Create(unchecked((int)0x8FFFFFFF))).AsSingle()
        * Vector512.Create(5.192296858534828E+33f);

    /// <summary>
    /// The scalar twin over the packed layout, for every ISA below AVX-512 and for tests: the same per-(row, token)
    /// sequence in plain arithmetic, bit-identical to <see cref="Run"/> and to <see cref="Q8_0Interleaved.RunScalar"/>.
    /// Needs <see cref="Prepare"/> for this product.
    /// </summary>
    public static void RunScalar(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        for (int t = 0; t < tokens; t++)
        {
            var a = act.Row(t);
            float* ds = act.OffsetSums(t);
            for (int r = r0; r < r1; r++)
            {
                byte* g = packed + r / GroupRows * GroupBytes(nb);
                int lane = r % GroupRows;
                float acc = 0;
                for (int b = 0; b < nb; b++)
                {
                    byte* q = g + QuantOffset(b) + lane * 4;
                    sbyte* x = a.Q + 32L * b;
                    int p = 0;
                    for (int j = 0; j < 32; j++)
                    {
                        p += q[j / 4 * 64 + j % 4] * x[j];
                    }
                    float dw = QuantDot.HalfScalar(g + ScaleOffset(b) + 2 * lane);
                    acc = MathF.FusedMultiplyAdd(dw, MathF.FusedMultiplyAdd(p, a.D[b], -ds[b]), acc);
                }
                y[(long)t * n + r] = acc;
            }
        }
    }

    /// <summary>A pinned, reused buffer of split activations and the shape it was filled for.</summary>
    private sealed class SplitBuffer
    {
        private byte[] _bytes = [];
        private int _tokens, _cols;

        public sbyte* Pointer => (sbyte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_bytes));

        public void Fill(int tokens, int cols, long bytes)
        {
            if (_bytes.LongLength < bytes)
            {
                _bytes = GC.AllocateUninitializedArray<byte>(checked((int)bytes), pinned: true);
            }
            (_tokens, _cols) = (tokens, cols);
        }

        public bool Matches(int tokens, int cols) => tokens <= _tokens && cols == _cols;
    }
}
