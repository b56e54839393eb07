using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Numerics.Quant;

/// <summary>
/// Q4_0 in the packed 16-row group layout that <see cref="QuantizedMatrix.Pack"/> builds once at load, and its products
/// with rows in vector lanes for every token count (decode included): unlike <see cref="Q4_0Interleaved"/>, which
/// repacks each group into a buffer on every product, nothing is rearranged at run time, so a 1-token product streams
/// the weights once, front to back, at memory speed.
/// <para>Layout of a group (rows 16g..16g+15 of the matrix; rows past N repeat row N - 1), block after block, 288
/// bytes per block b (= 16 rows x 18 bytes, the file's size):
/// bytes [0, 256): 4 vectors of 64 bytes; vector d (0..3) holds, for each row r, the 4 quant bytes 4d..4d+3 of its
/// block b as dword r (their low nibbles are the block's values 4d..4d+3, their high nibbles values 16+4d..19+4d);
/// bytes [256, 288): the 16 rows' f16 scales d_w, row r at 256 + 2r.
/// Example: the quant byte 9 of block 3 of row 5 of a group (values 9 and 25) is at 3 * 288 + 2 * 64 + 5 * 4 + 1 = 1013.</para>
/// <para>Arithmetic per (row, token), over the blocks in order: p = sum of q x (the unsigned nibbles q = w + 8, exact
/// in int32), acc = fma(d_w, fms(p, d_x, 8 d_x sum x), acc): the same sequence as <see cref="Q4_0Interleaved"/> and its
/// scalar twin <see cref="Q4_0Interleaved.RunScalar"/>, so all three agree bit for bit.</para>
/// Letters: N = rows, K = cols, T = tokens, nb = K / 32, G = ceil(N / 16) groups.
/// </summary>
internal static unsafe class Q4_0Packed
{
    /// <summary>Rows per group: one per float lane of a 512-bit vector.</summary>
    public const int GroupRows = 16;

    /// <summary>Bytes of one block of a group: 16 rows' quants (256) and f16 scales (32).</summary>
    public const int BlockGroupBytes = 288;

    private const int TileTokens = 8;

    /// <summary>
    /// How many blocks ahead a tile of 2 tokens or more prefetches (all 5 lines of a 288-byte block per block): the
    /// first tile over a group reads it from memory. Measured (<c>bench/Bora.Bench matmul --types q4_0 --shapes w1
    /// --compare-packed 1</c>, 2 threads, GFLOP/s without / with): T = 8: 338 / 456-485, 16: 415 / 476-499, 32: 451 /
    /// 484, 512: 486 / 493. A 1-token tile streams at memory speed without it (with it, decode products lost 8%).
    /// </summary>
    private const int PrefetchBlocks = 4;
    private const int BlockBytes = 18;

    /// <summary>Bytes of one 16-row group of <paramref name="nb"/> blocks.</summary>
    public static long GroupBytes(int nb) => (long)nb * BlockGroupBytes;

    /// <summary>
    /// Packs <paramref name="rows"/> (1..16; rows past them repeat the last) GGUF-layout rows of nb blocks at
    /// <paramref name="src"/> (rows <paramref name="rowBytes"/> apart) into the group at <paramref name="dst"/>.
    /// </summary>
    public static void PackGroup(byte* src, long rowBytes, int nb, int rows, byte* dst)
    {
        for (int r = 0; r < GroupRows; r++)
        {
            byte* row = src + Math.Min(r, rows - 1) * rowBytes;
            for (int b = 0; b < nb; b++)
            {
                byte* blk = row + (long)b * BlockBytes;
                byte* g = dst + (long)b * BlockGroupBytes;
                for (int d = 0; d < 4; d++)
                {
                    *(uint*)(g + d * 64 + r * 4) = Unsafe.ReadUnaligned<uint>(blk + 2 + 4 * d);
                }
                *(ushort*)(g + 256 + 2 * r) = Unsafe.ReadUnaligned<ushort>(blk);
            }
        }
    }

    /// <summary>Row <paramref name="r"/> (0..15) of the group at <paramref name="group"/> back to nb GGUF blocks at <paramref name="dst"/>.</summary>
    public static void UnpackRow(byte* group, int nb, int r, byte* dst)
    {
        for (int b = 0; b < nb; b++)
        {
            byte* blk = dst + (long)b * BlockBytes;
            byte* g = group + (long)b * BlockGroupBytes;
            Unsafe.WriteUnaligned(blk, *(ushort*)(g + 256 + 2 * r));
            for (int d = 0; d < 4; d++)
            {
                Unsafe.WriteUnaligned(blk + 2 + 4 * d, *(uint*)(g + d * 64 + r * 4));
            }
        }
    }

    /// <summary>Once per product on the calling thread: the activation data the kernels read (8 d_x sum x per block).</summary>
    public static void Prepare(Q8Activations act) => act.PrepareOffsetSums(8);

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16), t in [0, tokens), AVX-512. packed: the matrix's groups; y: (T, N).
    /// Each group is swept by tiles of up to 8 tokens (the group, nb * 288 bytes, stays in L2 across its tiles).
    /// </summary>
    public static void Run(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        float* partial = stackalloc float[GroupRows];
        var tok = stackalloc Q8Row[TileTokens];
        var ds8 = stackalloc nint[TileTokens];
        for (int g0 = r0; g0 < r1; g0 += GroupRows)
        {
            int rows = Math.Min(GroupRows, r1 - g0);
            byte* g = packed + g0 / GroupRows * GroupBytes(nb);
            for (int t0 = 0; t0 < tokens; t0 += TileTokens)
            {
                int tt = Math.Min(TileTokens, tokens - t0);
                for (int j = 0; j < TileTokens; j++)
                {
                    int t = t0 + Math.Min(j, tt - 1); // a short tile repeats its last token (not computed)
                    tok[j] = act.Row(t);
                    ds8[j] = (nint)act.OffsetSums(t);
                }
                float* yt = y + (long)t0 * n + g0;
                switch (tt)
                {
                    case 1: Tile<Tokens1>(g, nb, tok, (float**)ds8, yt, n, rows, partial); break;
                    case 2: Tile<Tokens2>(g, nb, tok, (float**)ds8, yt, n, rows, partial); break;
                    case 3: Tile<Tokens3>(g, nb, tok, (float**)ds8, yt, n, rows, partial); break;
                    case 4: Tile<Tokens4>(g, nb, tok, (float**)ds8, yt, n, rows, partial); break;
                    case 5: Tile<Tokens5>(g, nb, tok, (float**)ds8, yt, n, rows, partial); break;
                    case 6: Tile<Tokens6>(g, nb, tok, (float**)ds8, yt, n, rows, partial); break;
                    case 7: Tile<Tokens7>(g, nb, tok, (float**)ds8, yt, n, rows, partial); break;
                    default: Tile<Tokens8>(g, nb, tok, (float**)ds8, yt, n, rows, partial); break;
                }
            }
        }
    }

    /// <summary>
    /// 16 rows x TN.Value (1..8) tokens over all blocks of one group; stores the first <paramref name="rows"/> rows.
    /// Per block: 4 loads give the 8 vectors of nibbles (and, shift + and), the 16 scales are widened once, then
    /// each token adds its block (<see cref="Token"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TN>(byte* g, int nb, Q8Row* tok, float** ds8, float* y, int n, int rows, float* partial)
        where TN : struct, ITokenCount
    {
        var nibble = Vector512.Create((byte)0x0F);
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default, c6 = default, c7 = default;
        sbyte* x0 = tok[0].Q, x1 = tok[1].Q, x2 = tok[2].Q, x3 = tok[3].Q, x4 = tok[4].Q, x5 = tok[5].Q, x6 = tok[6].Q, x7 = tok[7].Q;
        for (int b = 0; b < nb; b++)
        {
            byte* wb = g + (long)b * BlockGroupBytes;
            if (TN.Value > 1)
            {
                PackedLayouts.PrefetchLines(wb + PrefetchBlocks * BlockGroupBytes, BlockGroupBytes);
            }
            var v0 = Vector512.Load(wb);
            var v1 = Vector512.Load(wb + 64);
            var v2 = Vector512.Load(wb + 128);
            var v3 = Vector512.Load(wb + 192);
            var w0 = v0 & nibble;
            var w1 = v1 & nibble;
            var w2 = v2 & nibble;
            var w3 = v3 & nibble;
            var w4 = Vector512.ShiftRightLogical(v0.AsUInt16(), 4).AsByte() & nibble;
            var w5 = Vector512.ShiftRightLogical(v1.AsUInt16(), 4).AsByte() & nibble;
            var w6 = Vector512.ShiftRightLogical(v2.AsUInt16(), 4).AsByte() & nibble;
            var w7 = Vector512.ShiftRightLogical(v3.AsUInt16(), 4).AsByte() & nibble;
            var dw = Halves(Vector256.Load((short*)(wb + 256)));
            long xo = 32L * b;
            c0 = Token(c0, w0, w1, w2, w3, w4, w5, w6, w7, dw, x0 + xo, tok[0].D + b, ds8[0] + b);
            if (TN.Value > 1)
            {
                c1 = Token(c1, w0, w1, w2, w3, w4, w5, w6, w7, dw, x1 + xo, tok[1].D + b, ds8[1] + b);
            }
            if (TN.Value > 2)
            {
                c2 = Token(c2, w0, w1, w2, w3, w4, w5, w6, w7, dw, x2 + xo, tok[2].D + b, ds8[2] + b);
            }
            if (TN.Value > 3)
            {
                c3 = Token(c3, w0, w1, w2, w3, w4, w5, w6, w7, dw, x3 + xo, tok[3].D + b, ds8[3] + b);
            }
            if (TN.Value > 4)
            {
                c4 = Token(c4, w0, w1, w2, w3, w4, w5, w6, w7, dw, x4 + xo, tok[4].D + b, ds8[4] + b);
            }
            if (TN.Value > 5)
            {
                c5 = Token(c5, w0, w1, w2, w3, w4, w5, w6, w7, dw, x5 + xo, tok[5].D + b, ds8[5] + b);
            }
            if (TN.Value > 6)
            {
                c6 = Token(c6, w0, w1, w2, w3, w4, w5, w6, w7, dw, x6 + xo, tok[6].D + b, ds8[6] + b);
            }
            if (TN.Value > 7)
            {
                c7 = Token(c7, w0, w1, w2, w3, w4, w5, w6, w7, dw, x7 + xo, tok[7].D + b, ds8[7] + b);
            }
        }
        Q4_0Interleaved.StoreTile(TN.Value, y, n, rows, partial, c0, c1, c2, c3, c4, c5, c6, c7);
    }

    /// <summary>
    /// One token's block for the 16 rows: acc + d_w (p d_x - 8 d_x sum x), p the exact integer block sums. w0..w7: the
    /// block's unsigned nibbles, values 4j..4j+3 (j &lt; 4) and 16 + 4(j - 4).. of each row; shared with
    /// <see cref="Q4_0Interleaved"/>'s tiles, which unpack the nibbles when they repack.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Token(Vector512<float> acc, Vector512<byte> w0, Vector512<byte> w1, Vector512<byte> w2, Vector512<byte> w3,
        Vector512<byte> w4, Vector512<byte> w5, Vector512<byte> w6, Vector512<byte> w7, Vector512<float> dw, sbyte* x, float* dx, float* ds8)
    {
        // 8 vpmaddubsw of at most 2 * 15 * 127 each: their int16 sum stays below 32767 (exact, so summed as a tree).
        var h = ((Avx512BW.MultiplyAddAdjacent(w0, Vector512.Create(*(int*)x).AsSByte())
              + Avx512BW.MultiplyAddAdjacent(w1, Vector512.Create(*(int*)(x + 4)).AsSByte()))
              + (Avx512BW.MultiplyAddAdjacent(w2, Vector512.Create(*(int*)(x + 8)).AsSByte())
              + Avx512BW.MultiplyAddAdjacent(w3, Vector512.Create(*(int*)(x + 12)).AsSByte())))
              + ((Avx512BW.MultiplyAddAdjacent(w4, Vector512.Create(*(int*)(x + 16)).AsSByte())
              + Avx512BW.MultiplyAddAdjacent(w5, Vector512.Create(*(int*)(x + 20)).AsSByte()))
              + (Avx512BW.MultiplyAddAdjacent(w6, Vector512.Create(*(int*)(x + 24)).AsSByte())
              + Avx512BW.MultiplyAddAdjacent(w7, Vector512.Create(*(int*)(x + 28)).AsSByte())));
        var p = Avx512F.ConvertToVector512Single(Avx512BW.MultiplyAddAdjacent(h, Vector512.Create((short)1)));
        // d_x and 8 d_x sum x straight from memory (embedded broadcasts).
        return Avx512F.FusedMultiplyAdd(dw, Avx512F.FusedMultiplySubtract(p, Vector512.Create(*dx), Vector512.Create(*ds8)), acc);
    }

    /// <summary>16 f16 values widened to float, exactly (<see cref="QuantGemm.Halves512"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Halves(Vector256<short> h) => QuantGemm.Halves512(Avx512F.ConvertToVector512Int32(h));

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16), t in [0, tokens), AVX2 (<see cref="Packed256"/>): a 1-token
    /// product streams each group once, both halves per block (<see cref="Decode256"/>); more tokens run tiles of up to
    /// 4 tokens over the whole group (<see cref="Tile256{TN}"/>; the group stays in L2 across its tiles).
    /// </summary>
    public static void Run256(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1) =>
        Packed256.Run<Kernel256>(packed, nb, n, act, tokens, y, r0, r1);

    /// <summary>This format's AVX2 kernels for <see cref="Packed256.Run{TK}"/>.</summary>
    private readonly struct Kernel256 : IPacked256
    {
        public static long GroupBytes(int nb) => Q4_0Packed.GroupBytes(nb);

        public static nint TokenData(Q8Activations act, int t) => (nint)act.OffsetSums(t);

        public static void Decode(byte* g, int nb, Q8Row a, nint data, float* y, int rows) => Decode256(g, nb, a, (float*)data, y, rows);

        public static void Tile<TN>(byte* g, int nb, bool first, Q8Row* tok, nint* data, float* y, int n, int rows)
            where TN : struct, ITokenCount => Tile256<TN>(g, nb, first, tok, (float**)data, y, n, rows);
    }

    /// <summary>
    /// AVX2, 1 token, both halves of a group (16 rows) block by block, the token's 8 broadcasts shared by the halves;
    /// stores the first <paramref name="rows"/> rows to y[0..rows).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Decode256(byte* g, int nb, Q8Row a, float* ds8, float* y, int rows)
    {
        Vector256<float> c0 = default, c1 = default;
        for (int b = 0; b < nb; b++)
        {
            byte* wb = g + (long)b * BlockGroupBytes;
            PackedLayouts.PrefetchLines(wb + PrefetchBlocks * BlockGroupBytes, BlockGroupBytes);
            sbyte* x = a.Q + 32L * b;
            var x0 = Packed256.Broadcast4(x);
            var x1 = Packed256.Broadcast4(x + 4);
            var x2 = Packed256.Broadcast4(x + 8);
            var x3 = Packed256.Broadcast4(x + 12);
            var x4 = Packed256.Broadcast4(x + 16);
            var x5 = Packed256.Broadcast4(x + 20);
            var x6 = Packed256.Broadcast4(x + 24);
            var x7 = Packed256.Broadcast4(x + 28);
            var dx = Vector256.Create(a.D[b]);
            var ds = Vector256.Create(ds8[b]);
            c0 = Half256(c0, wb, x0, x1, x2, x3, x4, x5, x6, x7, Packed256.BlockScales(wb + 256), dx, ds);
            c1 = Half256(c1, wb + 32, x0, x1, x2, x3, x4, x5, x6, x7, Packed256.BlockScales(wb + 256 + 16), dx, ds);
        }
        Packed256.Store(c0, y, Math.Min(rows, Packed256.HalfRows));
        if (rows > Packed256.HalfRows)
        {
            Packed256.Store(c1, y + Packed256.HalfRows, rows - Packed256.HalfRows);
        }
    }

    /// <summary>One token's block for a half group (its 4 quant vectors at q, 64 bytes apart): acc + d_w (p d_x - 8 d_x sum x).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Half256(Vector256<float> acc, byte* q, Vector256<sbyte> x0, Vector256<sbyte> x1, Vector256<sbyte> x2, Vector256<sbyte> x3,
        Vector256<sbyte> x4, Vector256<sbyte> x5, Vector256<sbyte> x6, Vector256<sbyte> x7, Vector256<float> dw, Vector256<float> dx, Vector256<float> ds)
    {
        var nibble = Vector256.Create((byte)0x0F);
        var v0 = Vector256.Load(q);
        var v1 = Vector256.Load(q + 64);
        var v2 = Vector256.Load(q + 128);
        var v3 = Vector256.Load(q + 192);
        var h = TokenSum256(v0 & nibble, v1 & nibble, v2 & nibble, v3 & nibble,
            Packed256.High(v0, nibble), Packed256.High(v1, nibble), Packed256.High(v2, nibble), Packed256.High(v3, nibble),
            x0, x1, x2, x3, x4, x5, x6, x7);
        return Packed256.OffsetBlock(acc, Packed256.Widen(h), dw, dx, ds);
    }

    /// <summary>
    /// The int16 pair sums of a block's 8 nibble vectors (w0..w3 values 4j..4j+3, w4..w7 values 16 + 4j..) with the
    /// token's broadcast 4-byte groups: 8 vpmaddubsw of at most 2 * 15 * 127 each, so the int16 sum is exact.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> TokenSum256(Vector256<byte> w0, Vector256<byte> w1, Vector256<byte> w2, Vector256<byte> w3,
        Vector256<byte> w4, Vector256<byte> w5, Vector256<byte> w6, Vector256<byte> w7, Vector256<sbyte> x0, Vector256<sbyte> x1,
        Vector256<sbyte> x2, Vector256<sbyte> x3, Vector256<sbyte> x4, Vector256<sbyte> x5, Vector256<sbyte> x6, Vector256<sbyte> x7) =>
        ((Packed256.Mul(w0, x0) + Packed256.Mul(w1, x1)) + (Packed256.Mul(w2, x2) + Packed256.Mul(w3, x3)))
        + ((Packed256.Mul(w4, x4) + Packed256.Mul(w5, x5)) + (Packed256.Mul(w6, x6) + Packed256.Mul(w7, x7)));

    /// <summary>
    /// AVX2: the group at g (16 rows, both halves) x TN.Value (1..4) tokens over all blocks; stores the first
    /// <paramref name="rows"/> rows of each token. Per block, dword by dword (j = 0..3: values 4j..4j+3 in the low
    /// nibbles, 16 + 4j.. in the high ones; <see cref="Packed256.MulTile{TN}"/>), each token's broadcast 4-byte group multiplies the dword of both halves
    /// (<see cref="Packed256.MulPair"/>) into 8 int16 sums (token x half) that stay in registers for the block; the
    /// float accumulators (token j, half h at 16 j + 8 h of a 64-float buffer) are read and written once per block and
    /// token, which leaves the registers to the sums (a half group's tile with 4 float accumulators and 8 weight
    /// vectors in registers spilled, and shared each broadcast with 8 rows instead of 16).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile256<TN>(byte* g, int nb, bool first, Q8Row* tok, float** ds8, float* y, int n, int rows)
        where TN : struct, ITokenCount
    {
        var nibble = Vector256.Create((byte)0x0F);
        float* c = stackalloc float[Packed256.TileLanes]; // (token, half, lane): 16 j + 8 h + lane
        new Span<float>(c, Packed256.TileLanes).Clear();
        sbyte* x0 = tok[0].Q, x1 = tok[1].Q, x2 = tok[2].Q, x3 = tok[3].Q;
        for (int b = 0; b < nb; b++)
        {
            byte* wb = g + (long)b * BlockGroupBytes;
            if (first)
            {
                // The first tile over a group brings it in from memory; the next ones find it in L2 (prefetching there
                // too cost 15-20%: tile harness, 64 tokens).
                PackedLayouts.PrefetchLines(wb + PrefetchBlocks * BlockGroupBytes, BlockGroupBytes);
            }
            long xo = 32L * b;
            sbyte* p0 = x0 + xo, p1 = x1 + xo, p2 = x2 + xo, p3 = x3 + xo;
            // s{j}{h}: token j's int16 sums of half h (8 vpmaddubsw of at most 2 * 15 * 127 each: exact).
            Vector256<short> s00 = default, s01 = default, s10 = default, s11 = default, s20 = default, s21 = default, s30 = default, s31 = default;
            // Dword j of both halves: low nibbles (values 4j..4j+3), then high (16 + 4j..); unrolled by hand (the JIT
            // keeps the loop: 10% slower, tile harness).
            var v0 = Vector256.Load(wb);
            var v1 = Vector256.Load(wb + 32);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31, v0 & nibble, v1 & nibble, p0, p1, p2, p3);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31, Packed256.High(v0, nibble), Packed256.High(v1, nibble), p0 + 16, p1 + 16, p2 + 16, p3 + 16);
            v0 = Vector256.Load(wb + 64);
            v1 = Vector256.Load(wb + 96);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31, v0 & nibble, v1 & nibble, p0 + 4, p1 + 4, p2 + 4, p3 + 4);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31, Packed256.High(v0, nibble), Packed256.High(v1, nibble), p0 + 20, p1 + 20, p2 + 20, p3 + 20);
            v0 = Vector256.Load(wb + 128);
            v1 = Vector256.Load(wb + 160);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31, v0 & nibble, v1 & nibble, p0 + 8, p1 + 8, p2 + 8, p3 + 8);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31, Packed256.High(v0, nibble), Packed256.High(v1, nibble), p0 + 24, p1 + 24, p2 + 24, p3 + 24);
            v0 = Vector256.Load(wb + 192);
            v1 = Vector256.Load(wb + 224);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31, v0 & nibble, v1 & nibble, p0 + 12, p1 + 12, p2 + 12, p3 + 12);
            Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31, Packed256.High(v0, nibble), Packed256.High(v1, nibble), p0 + 28, p1 + 28, p2 + 28, p3 + 28);
            var dw0 = Packed256.BlockScales(wb + 256);
            var dw1 = Packed256.BlockScales(wb + 256 + 16);
            Finish256(c, s00, s01, dw0, dw1, tok[0].D + b, ds8[0] + b);
            if (TN.Value > 1)
            {
                Finish256(c + 16, s10, s11, dw0, dw1, tok[1].D + b, ds8[1] + b);
            }
            if (TN.Value > 2)
            {
                Finish256(c + 32, s20, s21, dw0, dw1, tok[2].D + b, ds8[2] + b);
            }
            if (TN.Value > 3)
            {
                Finish256(c + 48, s30, s31, dw0, dw1, tok[3].D + b, ds8[3] + b);
            }
        }
        Packed256.StoreGroupTile(TN.Value, c, y, n, rows);
    }

    /// <summary>
    /// One token's block for both halves (int16 sums s0, s1; scales dw0, dw1): c[h] = fma(d_w, fms(p, d_x, 8 d_x sum x),
    /// c[h]) for the accumulators at c (half 0) and c + 8 (half 1).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Finish256(float* c, Vector256<short> s0, Vector256<short> s1, Vector256<float> dw0, Vector256<float> dw1, float* dx, float* ds8)
    {
        var x = Vector256.Create(*dx);
        var o = Vector256.Create(*ds8);
        Packed256.OffsetBlock(Vector256.Load(c), Packed256.Widen(s0), dw0, x, o).Store(c);
        Packed256.OffsetBlock(Vector256.Load(c + 8), Packed256.Widen(s1), dw1, x, o).Store(c + 8);
    }

    /// <summary>
    /// The scalar twin over the packed layout, for every ISA below AVX2 and for tests: the same per-(row, token)
    /// sequence in plain arithmetic, bit-identical to <see cref="Run"/> and to <see cref="Q4_0Interleaved.RunScalar"/>.
    /// </summary>
    public static void RunScalar(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        for (int t = 0; t < tokens; t++)
        {
            var a = act.Row(t);
            float* ds8 = act.OffsetSums(t);
            for (int r = r0; r < r1; r++)
            {
                byte* g = packed + r / GroupRows * GroupBytes(nb);
                int lane = r % GroupRows;
                float acc = 0;
                for (int b = 0; b < nb; b++)
                {
                    byte* wb = g + (long)b * BlockGroupBytes;
                    sbyte* x = a.Q + 32L * b;
                    int p = 0;
                    for (int j = 0; j < 16; j++)
                    {
                        byte q = wb[j / 4 * 64 + lane * 4 + j % 4];
                        p += (q & 0x0F) * x[j] + (q >> 4) * x[j + 16];
                    }
                    float dw = QuantDot.HalfScalar(wb + 256 + 2 * lane);
                    acc = MathF.FusedMultiplyAdd(dw, MathF.FusedMultiplyAdd(p, a.D[b], -ds8[b]), acc);
                }
                y[(long)t * n + r] = acc;
            }
        }
    }
}
