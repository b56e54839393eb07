using System.Runtime.CompilerServices;
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
/// <see cref="Q8_0Interleaved.RunScalar"/>, so all agree bit for bit. The AVX-512 kernel splits each block's 8 stored
/// vectors into two nibble planes once per tile (u = 16 hi + lo; lo = u and 15, hi = (u shr 4) and 15: 24 and / shift
/// ops per block and tile), then per token 8 vpmaddubsw per plane, sharing the token's 8 broadcasts, add up in int16
/// without saturating (16 products of at most 15 * 127 each) and p = 16 (hi sums) + (lo sums) with two vpmaddwd.
/// (The other sequence considered, splitting the activations once per product as x = 16 xh + xl, xh in [-8, 8], xl in
/// [-8, 7], needs no weight unpacking but 16 broadcasts per token and block instead of 8, and a per-product buffer.
/// Side by side on the 2-core AVX-512 box (<c>bench/Bora.Bench packed</c>, its "split" column), time of that sequence
/// over this one: under load (CPU time) T = 1: 0.81-0.92, 2: 0.91-1.08, 4: 1.17-1.23, 8: 1.11-1.16, 16: 1.12-1.14,
/// 512: 1.03-1.08; unloaded (wall) T = 1: 0.93-0.96, 2: 1.14-1.20. A 1-token path with the split sequence inside this
/// class measured 1.24-1.28 times the time of the 1-token tile here, so every token count takes the nibble planes.)</para>
/// Letters: N = rows, K = cols, T = tokens, nb = K / 32, G = ceil(N / 16) groups.
/// </summary>
internal static unsafe class Q8_0Packed
{
    /// <summary>Rows per group: one per float lane of a 512-bit vector.</summary>
    public const int GroupRows = 16;

    /// <summary>Bytes of one block of a group: 16 rows' quants (512) and f16 scales (32), the file's 16 x 34.</summary>
    public const int BlockGroupBytes = 544;

    /// <summary>Tokens per tile (accumulators in registers beside the block's 16 nibble-plane vectors).</summary>
    private const int TileTokens = 6;

    /// <summary>
    /// Weight bytes of the groups that a tile of tokens sweeps before the next tile (they stay in L2 across the tiles,
    /// while the tile's activations stay in L1 across the groups): half of a 1 MB L2.
    /// </summary>
    private const long SweepBytes = 512 * 1024;

    private const int BlockBytes = 34;

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

    /// <summary>Once per product on the calling thread: the activation data the kernels read (128 d_x sum x per block).</summary>
    public static void Prepare(Q8Activations act) => act.PrepareOffsetSums(128);

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16; r1 a multiple of 16 or n), t in [0, tokens), AVX-512 (BW).
    /// packed: the matrix's first group; y: (T, N). Needs <see cref="Prepare"/> for this product.
    /// Tiles of up to 6 tokens sweep the groups of the range a few at a time (<see cref="SweepBytes"/> of weights, which
    /// stay in L2 across the tiles; a 1-token product streams the range once, group after group).
    /// </summary>
    public static void Run(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        if (tokens <= 0 || r0 >= r1)
        {
            return;
        }
        long groupBytes = GroupBytes(nb);
        int sweepRows = GroupRows * (int)Math.Clamp(SweepBytes / groupBytes, 1, 64);
        float* partial = stackalloc float[GroupRows];
        var xs = stackalloc Q8Row[TileTokens];
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
                    xs[j] = act.Row(t);
                    ds[j] = (nint)act.OffsetSums(t);
                }
                for (int g0 = s0; g0 < s1; g0 += GroupRows)
                {
                    int rows = Math.Min(GroupRows, s1 - g0);
                    byte* g = packed + g0 / GroupRows * groupBytes;
                    float* yt = y + (long)t0 * n + g0;
                    switch (tt)
                    {
                        case 1: Tile<Tokens1>(g, nb, xs, (float**)ds, yt, n, rows, partial); break;
                        case 2: Tile<Tokens2>(g, nb, xs, (float**)ds, yt, n, rows, partial); break;
                        case 3: Tile<Tokens3>(g, nb, xs, (float**)ds, yt, n, rows, partial); break;
                        case 4: Tile<Tokens4>(g, nb, xs, (float**)ds, yt, n, rows, partial); break;
                        case 5: Tile<Tokens5>(g, nb, xs, (float**)ds, yt, n, rows, partial); break;
                        default: Tile<Tokens6>(g, nb, xs, (float**)ds, yt, n, rows, partial); break;
                    }
                }
            }
        }
    }

    /// <summary>
    /// 16 rows x TN.Value (1..6) tokens over all blocks of one group; stores the first <paramref name="rows"/> rows.
    /// Per block: 8 loads give the stored vectors u, split into the nibble planes lo and hi (and, shift + and), the 16
    /// scales are widened once, then each token adds its block (<see cref="Token"/>). tok: the tile's activation rows;
    /// ds: their 128 d_x sum x per block.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TN>(byte* g, int nb, Q8Row* tok, float** ds, float* y, int n, int rows, float* partial)
        where TN : struct, ITokenCount
    {
        var nibble = Vector512.Create((byte)0x0F);
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default;
        sbyte* x0 = tok[0].Q, x1 = tok[1].Q, x2 = tok[2].Q, x3 = tok[3].Q, x4 = tok[4].Q, x5 = tok[5].Q;
        for (int b = 0; b < nb; b++)
        {
            byte* q = g + QuantOffset(b);
            if (TN.Value > 1)
            {
                // The block 2 ahead (9 lines cover its 544 bytes): the first tile of a sweep reads the group from
                // memory; a 1-token tile streams at memory speed without.
                PackedLayouts.PrefetchLines(g + (long)(b + 2) * BlockGroupBytes, 576);
            }
            var u0 = Vector512.Load(q);
            var u1 = Vector512.Load(q + 64);
            var u2 = Vector512.Load(q + 128);
            var u3 = Vector512.Load(q + 192);
            var u4 = Vector512.Load(q + 256);
            var u5 = Vector512.Load(q + 320);
            var u6 = Vector512.Load(q + 384);
            var u7 = Vector512.Load(q + 448);
            var l = new Planes(u0 & nibble, u1 & nibble, u2 & nibble, u3 & nibble, u4 & nibble, u5 & nibble, u6 & nibble, u7 & nibble);
            var h = new Planes(High(u0, nibble), High(u1, nibble), High(u2, nibble), High(u3, nibble),
                High(u4, nibble), High(u5, nibble), High(u6, nibble), High(u7, nibble));
            var dw = Q4_0Packed.Halves(Vector256.Load((short*)(g + ScaleOffset(b))));
            long xo = 32L * b;
            c0 = Token(c0, l, h, dw, x0 + xo, tok[0].D + b, ds[0] + b);
            if (TN.Value > 1)
            {
                c1 = Token(c1, l, h, dw, x1 + xo, tok[1].D + b, ds[1] + b);
            }
            if (TN.Value > 2)
            {
                c2 = Token(c2, l, h, dw, x2 + xo, tok[2].D + b, ds[2] + b);
            }
            if (TN.Value > 3)
            {
                c3 = Token(c3, l, h, dw, x3 + xo, tok[3].D + b, ds[3] + b);
            }
            if (TN.Value > 4)
            {
                c4 = Token(c4, l, h, dw, x4 + xo, tok[4].D + b, ds[4] + b);
            }
            if (TN.Value > 5)
            {
                c5 = Token(c5, l, h, dw, x5 + xo, tok[5].D + b, ds[5] + b);
            }
        }
        Q4_0Interleaved.StoreTile(TN.Value, y, n, rows, partial, c0, c1, c2, c3, c4, c5);
    }

    /// <summary>The high nibbles of the bytes of <paramref name="u"/>, as bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<byte> High(Vector512<byte> u, Vector512<byte> nibble) => Vector512.ShiftRightLogical(u.AsUInt16(), 4).AsByte() & nibble;

    /// <summary>
    /// One token's block for the 16 rows: acc + d_w (p d_x - 128 d_x sum x), p = sum u x = 16 sum hi x + sum lo x exactly
    /// (x: the block's 32 quants; dx, ds128: its scale and 128 d_x sum x).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Token(Vector512<float> acc, Planes l, Planes h, Vector512<float> dw, sbyte* x, float* dx, float* ds128)
    {
        var x0 = Vector512.Create(*(int*)x).AsSByte();
        var x1 = Vector512.Create(*(int*)(x + 4)).AsSByte();
        var x2 = Vector512.Create(*(int*)(x + 8)).AsSByte();
        var x3 = Vector512.Create(*(int*)(x + 12)).AsSByte();
        var x4 = Vector512.Create(*(int*)(x + 16)).AsSByte();
        var x5 = Vector512.Create(*(int*)(x + 20)).AsSByte();
        var x6 = Vector512.Create(*(int*)(x + 24)).AsSByte();
        var x7 = Vector512.Create(*(int*)(x + 28)).AsSByte();
        var sl = l.Sum(x0, x1, x2, x3, x4, x5, x6, x7);
        var sh = h.Sum(x0, x1, x2, x3, x4, x5, x6, x7);
        var p = Avx512BW.MultiplyAddAdjacent(sh, Vector512.Create((short)16)) + Avx512BW.MultiplyAddAdjacent(sl, Vector512.Create((short)1));
        return Avx512F.FusedMultiplyAdd(dw, Avx512F.FusedMultiplySubtract(Avx512F.ConvertToVector512Single(p), Vector512.Create(*dx), Vector512.Create(*ds128)), acc);
    }

    /// <summary>One nibble plane of a block: 8 vectors, vector j holding values 4j..4j+3 of the 16 rows (0..15 each).</summary>
    private readonly struct Planes(Vector512<byte> w0, Vector512<byte> w1, Vector512<byte> w2, Vector512<byte> w3,
        Vector512<byte> w4, Vector512<byte> w5, Vector512<byte> w6, Vector512<byte> w7)
    {
        /// <summary>int16 sums of the plane x the broadcast activations (2 per int32 lane, 16 products of at most 15 * 127 each).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector512<short> Sum(Vector512<sbyte> x0, Vector512<sbyte> x1, Vector512<sbyte> x2, Vector512<sbyte> x3,
            Vector512<sbyte> x4, Vector512<sbyte> x5, Vector512<sbyte> x6, Vector512<sbyte> x7) =>
            Avx512BW.MultiplyAddAdjacent(w0, x0) + Avx512BW.MultiplyAddAdjacent(w1, x1)
            + Avx512BW.MultiplyAddAdjacent(w2, x2) + Avx512BW.MultiplyAddAdjacent(w3, x3)
            + Avx512BW.MultiplyAddAdjacent(w4, x4) + Avx512BW.MultiplyAddAdjacent(w5, x5)
            + Avx512BW.MultiplyAddAdjacent(w6, x6) + Avx512BW.MultiplyAddAdjacent(w7, x7);
    }


    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16), t in [0, tokens), AVX2 (<see cref="Packed256"/>): a 1-token
    /// product streams each group once, both halves per block (<see cref="Decode256"/>); more tokens run tiles of up to
    /// 4 tokens over the whole group (<see cref="Tile256{TN}"/>; the group stays in L2 across its tiles). Needs
    /// <see cref="Prepare"/> for this product.
    /// </summary>
    public static void Run256(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1) =>
        Packed256.Run<Kernel256>(packed, nb, n, act, tokens, y, r0, r1);

    /// <summary>This format's AVX2 kernels for <see cref="Packed256.Run{TK}"/>.</summary>
    private readonly struct Kernel256 : IPacked256
    {
        public static long GroupBytes(int nb) => Q8_0Packed.GroupBytes(nb);

        public static nint TokenData(Q8Activations act, int t) => (nint)act.OffsetSums(t);

        public static void Decode(byte* g, int nb, Q8Row a, nint data, float* y, int rows) => Decode256(g, nb, a, (float*)data, y, rows);

        public static void Tile<TN>(byte* g, int nb, bool first, Q8Row* tok, nint* data, float* y, int n, int rows)
            where TN : struct, ITokenCount => Tile256<TN>(g, nb, first, tok, (float**)data, y, n, rows);
    }

    /// <summary>
    /// AVX2, 1 token, both halves of a group (16 rows) block by block, each broadcast of the token shared by the halves;
    /// stores the first <paramref name="rows"/> rows to y[0..rows).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Decode256(byte* g, int nb, Q8Row a, float* ds128, float* y, int rows)
    {
        var nibble = Vector256.Create((byte)0x0F);
        Vector256<float> c0 = default, c1 = default;
        for (int b = 0; b < nb; b++)
        {
            byte* q = g + QuantOffset(b);
            PackedLayouts.PrefetchLines(g + (long)(b + 2) * BlockGroupBytes, 576);
            sbyte* xb = a.Q + 32L * b;
            Vector256<short> l0 = default, h0 = default, l1 = default, h1 = default;
            for (int j = 0; j < 8; j++)
            {
                var x = Packed256.Broadcast4(xb + 4 * j);
                var u0 = Vector256.Load(q + 64 * j);
                var u1 = Vector256.Load(q + 64 * j + 32);
                l0 += Packed256.Mul(u0 & nibble, x);
                h0 += Packed256.Mul(Packed256.High(u0, nibble), x);
                l1 += Packed256.Mul(u1 & nibble, x);
                h1 += Packed256.Mul(Packed256.High(u1, nibble), x);
            }
            byte* sc = g + ScaleOffset(b);
            c0 = Block256(c0, l0, h0, Packed256.BlockScales(sc), a.D + b, ds128 + b);
            c1 = Block256(c1, l1, h1, Packed256.BlockScales(sc + 16), a.D + b, ds128 + b);
        }
        Packed256.Store(c0, y, Math.Min(rows, Packed256.HalfRows));
        if (rows > Packed256.HalfRows)
        {
            Packed256.Store(c1, y + Packed256.HalfRows, rows - Packed256.HalfRows);
        }
    }

    /// <summary>
    /// AVX2: the group at g (16 rows, both halves) x TN.Value (1..4) tokens over all blocks; stores the first
    /// <paramref name="rows"/> rows of each token. Per block, two passes over its 8 stored vectors: the low nibble plane
    /// (u and 15), then the high one ((u shr 4) and 15); in each, every token's broadcast 4-byte group multiplies the
    /// dword of both halves (<see cref="Packed256.MulTile{TN}"/>, unrolled by hand) into 8 int16 sums (token x half,
    /// 8 products of at most 2 * 15 * 127 each) held in registers. The low plane's sums wait in a stack buffer as int32
    /// (token j, half h at 16 j + 8 h) until p = 16 (high sums) + (low sums); the float accumulators live beside them,
    /// read and written once per block and token (<see cref="Finish256"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile256<TN>(byte* g, int nb, bool first, Q8Row* tok, float** ds, float* y, int n, int rows)
        where TN : struct, ITokenCount
    {
        var nibble = Vector256.Create((byte)0x0F);
        float* acc = stackalloc float[Packed256.TileLanes]; // (token, half, lane): 16 j + 8 h + lane
        int* low = stackalloc int[Packed256.TileLanes];
        new Span<float>(acc, Packed256.TileLanes).Clear();
        sbyte* x0 = tok[0].Q, x1 = tok[1].Q, x2 = tok[2].Q, x3 = tok[3].Q;
        for (int b = 0; b < nb; b++)
        {
            byte* q = g + QuantOffset(b);
            if (first)
            {
                // The block 2 ahead: the first tile over a group brings it in from memory; the next ones find it in L2.
                PackedLayouts.PrefetchLines(g + (long)(b + 2) * BlockGroupBytes, 576);
            }
            long xo = 32L * b;
            // The block's activations of each token (pointers set once: the steps then address them with a constant).
            sbyte* p0 = x0 + xo, p1 = x1 + xo, p2 = x2 + xo, p3 = x3 + xo;
            Vector256<short> s00 = default, s01 = default, s10 = default, s11 = default, s20 = default, s21 = default, s30 = default, s31 = default;
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Vector256.Load(q) & nibble, Vector256.Load(q + 32) & nibble, p0, p1, p2, p3);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Vector256.Load(q + 64) & nibble, Vector256.Load(q + 96) & nibble, p0 + 4, p1 + 4, p2 + 4, p3 + 4);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Vector256.Load(q + 128) & nibble, Vector256.Load(q + 160) & nibble, p0 + 8, p1 + 8, p2 + 8, p3 + 8);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Vector256.Load(q + 192) & nibble, Vector256.Load(q + 224) & nibble, p0 + 12, p1 + 12, p2 + 12, p3 + 12);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Vector256.Load(q + 256) & nibble, Vector256.Load(q + 288) & nibble, p0 + 16, p1 + 16, p2 + 16, p3 + 16);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Vector256.Load(q + 320) & nibble, Vector256.Load(q + 352) & nibble, p0 + 20, p1 + 20, p2 + 20, p3 + 20);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Vector256.Load(q + 384) & nibble, Vector256.Load(q + 416) & nibble, p0 + 24, p1 + 24, p2 + 24, p3 + 24);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Vector256.Load(q + 448) & nibble, Vector256.Load(q + 480) & nibble, p0 + 28, p1 + 28, p2 + 28, p3 + 28);
            KeepLow(low, s00, s01);
            if (TN.Value > 1)
            {
                KeepLow(low + 16, s10, s11);
            }
            if (TN.Value > 2)
            {
                KeepLow(low + 32, s20, s21);
            }
            if (TN.Value > 3)
            {
                KeepLow(low + 48, s30, s31);
            }
            s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = default;
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Packed256.High(Vector256.Load(q), nibble), Packed256.High(Vector256.Load(q + 32), nibble), p0, p1, p2, p3);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Packed256.High(Vector256.Load(q + 64), nibble), Packed256.High(Vector256.Load(q + 96), nibble), p0 + 4, p1 + 4, p2 + 4, p3 + 4);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Packed256.High(Vector256.Load(q + 128), nibble), Packed256.High(Vector256.Load(q + 160), nibble), p0 + 8, p1 + 8, p2 + 8, p3 + 8);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Packed256.High(Vector256.Load(q + 192), nibble), Packed256.High(Vector256.Load(q + 224), nibble), p0 + 12, p1 + 12, p2 + 12, p3 + 12);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Packed256.High(Vector256.Load(q + 256), nibble), Packed256.High(Vector256.Load(q + 288), nibble), p0 + 16, p1 + 16, p2 + 16, p3 + 16);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Packed256.High(Vector256.Load(q + 320), nibble), Packed256.High(Vector256.Load(q + 352), nibble), p0 + 20, p1 + 20, p2 + 20, p3 + 20);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Packed256.High(Vector256.Load(q + 384), nibble), Packed256.High(Vector256.Load(q + 416), nibble), p0 + 24, p1 + 24, p2 + 24, p3 + 24);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                Packed256.High(Vector256.Load(q + 448), nibble), Packed256.High(Vector256.Load(q + 480), nibble), p0 + 28, p1 + 28, p2 + 28, p3 + 28);
            byte* sc = g + ScaleOffset(b);
            var dw0 = Packed256.BlockScales(sc);
            var dw1 = Packed256.BlockScales(sc + 16);
            Finish256(acc, low, s00, s01, dw0, dw1, tok[0].D + b, ds[0] + b);
            if (TN.Value > 1)
            {
                Finish256(acc + 16, low + 16, s10, s11, dw0, dw1, tok[1].D + b, ds[1] + b);
            }
            if (TN.Value > 2)
            {
                Finish256(acc + 32, low + 32, s20, s21, dw0, dw1, tok[2].D + b, ds[2] + b);
            }
            if (TN.Value > 3)
            {
                Finish256(acc + 48, low + 48, s30, s31, dw0, dw1, tok[3].D + b, ds[3] + b);
            }
        }
        Packed256.StoreGroupTile(TN.Value, acc, y, n, rows);
    }

    /// <summary>One token's low-plane int16 sums of both halves (s0, s1) widened to int32 at l (half 0) and l + 8 (half 1).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void KeepLow(int* l, Vector256<short> s0, Vector256<short> s1)
    {
        Packed256.Widen(s0).Store(l);
        Packed256.Widen(s1).Store(l + 8);
    }

    /// <summary>
    /// One token's block for both halves from its high-plane sums (s0, s1) and the low-plane sums kept at l:
    /// p = 16 sh + sl exactly, acc + d_w (p d_x - 128 d_x sum x) for the accumulators at acc (half 0) and acc + 8.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Finish256(float* acc, int* l, Vector256<short> s0, Vector256<short> s1, Vector256<float> dw0, Vector256<float> dw1, float* dx, float* ds128)
    {
        var x = Vector256.Create(*dx);
        var o = Vector256.Create(*ds128);
        var sixteen = Vector256.Create((short)16);
        var p0 = Avx2.MultiplyAddAdjacent(s0, sixteen) + Vector256.Load(l);
        var p1 = Avx2.MultiplyAddAdjacent(s1, sixteen) + Vector256.Load(l + 8);
        Packed256.OffsetBlock(Vector256.Load(acc), p0, dw0, x, o).Store(acc);
        Packed256.OffsetBlock(Vector256.Load(acc + 8), p1, dw1, x, o).Store(acc + 8);
    }

    /// <summary>
    /// One token's block for a half group from its plane sums (sl, sh: int16, 16 products of at most 15 * 127 each):
    /// p = 16 sh + sl exactly, acc + d_w (p d_x - 128 d_x sum x).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Block256(Vector256<float> acc, Vector256<short> sl, Vector256<short> sh, Vector256<float> dw, float* dx, float* ds128)
    {
        var p = Avx2.MultiplyAddAdjacent(sh, Vector256.Create((short)16)) + Packed256.Widen(sl);
        return Packed256.OffsetBlock(acc, p, dw, Vector256.Create(*dx), Vector256.Create(*ds128));
    }

    /// <summary>
    /// The scalar twin over the packed layout, for every ISA below AVX2 and for tests: the same per-(row, token)
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
}
