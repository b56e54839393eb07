using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Numerics.Quant;

/// <summary>
/// AVX-512 prefill for Q4_0 with rows in vector lanes: each group of 16 rows is repacked once per product (into a
/// per-thread buffer; the stored weights are untouched) so that one 512-bit vector holds 4 consecutive nibbles of each
/// of the 16 rows, and tiles of 8 tokens sweep the group. Per block of 32 and token, 8 vpmaddubsw of the repacked
/// weights with the token's 4-byte groups broadcast to every lane add up in int16 (16 products of at most 15 * 127:
/// below 32767), one vpmaddwd gives each row's exact block sum p, and acc += d_w (p d_x - 8 d_x sum(x)) runs for the
/// 16 rows at once: no horizontal sums, and about half the instructions of <see cref="QuantGemm"/>'s 4 x 4 tiles.
/// <para>Repacked layout of a group, (nb, 8, 16) int32: element (b, j, r) holds values 4j..4j+3 (unsigned nibbles q)
/// of block b of row r; scales (nb, 16) floats d_w. Example: values 8..11 of block 3 of the group's row 5 are int32
/// (3 * 8 + 2) * 16 + 5 = 421.</para>
/// <para>Each (row, token) is the sequence acc = fma(d_w, fms(p, d_x, 8 d_x sum x), acc) over the blocks in order,
/// whatever the threads and tile; it differs from the 4 x 4 tiles and the decode kernels only in float rounding, so products
/// of fewer than <see cref="MinTokens"/> tokens (decode, and with it a token's solo result) never come here. The repacking
/// costs about one token's work per group, so from 2 tokens on this beats the tiles and decode steps, whose per-row unpacking and
/// horizontal sums cost about as much as the products themselves.</para>
/// Letters: N = rows, K = cols, T = tokens, nb = K / 32.
/// </summary>
internal static unsafe class Q4_0Interleaved
{
    /// <summary>
    /// Tokens from which this path runs (<see cref="QuantDispatch.Q4_0InterleavedMinTokens"/>; set from side-by-side
    /// measurements against <see cref="QuantGemm"/>'s tiles and decode steps).
    /// </summary>
    public static int MinTokens => QuantDispatch.Q4_0InterleavedMinTokens;

    /// <summary>Rows per group: one per float lane of a 512-bit vector.</summary>
    internal const int GroupRows = 16;

    /// <summary>Tokens per tile (accumulators in registers); the last tile of a product has 1..8 (<see cref="ITokenCount"/>).</summary>
    private const int TileTokens = 8;

    private const int BlockBytes = 18;

    [ThreadStatic]
    private static byte[]? t_group;

    /// <summary>Whether this path runs for a product of <paramref name="tokens"/> tokens at <paramref name="isa"/>.</summary>
    public static bool Covers(QuantIsa isa, int tokens) => isa == QuantIsa.Avx512 && tokens >= MinTokens;

    /// <summary>Once per product on the calling thread: the activation data the kernel reads.</summary>
    public static void Prepare(Q8Activations act) => act.PrepareOffsetSums(8);

    /// <summary>y[t, r] for r in [r0, r1), t in [0, tokens). w: (N, rowBytes) Q4_0 blocks; y: (T, N).</summary>
    public static void Run(byte* w, long rowBytes, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        long groupBytes = (long)nb * (8 * 64 + 64); // weights (nb, 8, 16) int32, then scales (nb, 16) floats
        byte* g = PinnedScratch.Get(ref t_group, groupBytes);
        float* gs = (float*)(g + (long)nb * 512);
        float* partial = stackalloc float[GroupRows];
        var tok = stackalloc Q8Row[TileTokens];
        var ds8 = stackalloc nint[TileTokens];
        for (int g0 = r0; g0 < r1; g0 += GroupRows)
        {
            int rows = Math.Min(GroupRows, r1 - g0);
            Repack(w + g0 * rowBytes, rowBytes, nb, rows, g, gs);
            // While the first tile runs, the next group's rows (in this range) are prefetched to L2, so that its
            // repacking reads them from cache instead of waiting for memory.
            var ahead = new Prefetcher(g0 + GroupRows < r1 ? w + (g0 + GroupRows) * rowBytes : null, rowBytes, Math.Min(GroupRows, r1 - g0 - GroupRows), nb);
            for (int t0 = 0; t0 < tokens; t0 += TileTokens)
            {
                int tt = Math.Min(TileTokens, tokens - t0);
                for (int j = 0; j < TileTokens; j++)
                {
                    int t = t0 + Math.Min(j, tt - 1); // a short tile repeats its last token (not stored)
                    tok[j] = act.Row(t);
                    ds8[j] = (nint)act.OffsetSums(t);
                }
                float* yt = y + (long)t0 * n + g0;
                var pf = t0 == 0 ? ahead : default;
                switch (tt)
                {
                    case 1: Tile<Tokens1>(g, gs, nb, tok, (float**)ds8, yt, n, rows, partial, pf); break;
                    case 2: Tile<Tokens2>(g, gs, nb, tok, (float**)ds8, yt, n, rows, partial, pf); break;
                    case 3: Tile<Tokens3>(g, gs, nb, tok, (float**)ds8, yt, n, rows, partial, pf); break;
                    case 4: Tile<Tokens4>(g, gs, nb, tok, (float**)ds8, yt, n, rows, partial, pf); break;
                    case 5: Tile<Tokens5>(g, gs, nb, tok, (float**)ds8, yt, n, rows, partial, pf); break;
                    case 6: Tile<Tokens6>(g, gs, nb, tok, (float**)ds8, yt, n, rows, partial, pf); break;
                    case 7: Tile<Tokens7>(g, gs, nb, tok, (float**)ds8, yt, n, rows, partial, pf); break;
                    default: Tile<Tokens8>(g, gs, nb, tok, (float**)ds8, yt, n, rows, partial, pf); break;
                }
            }
        }
    }

    /// <summary>
    /// Repacks <paramref name="rows"/> (at most 16; missing rows repeat the last) rows of nb blocks at <paramref name="w"/>
    /// into the group layout. Per block: the 16 rows' 16 quant bytes (4 rows per vector) are transposed as dwords so that
    /// vector d holds dword d of every row (6 two-source permutes), and dword d gives int32 d (its low nibbles: values
    /// 4d..4d+3) and int32 d + 4 (its high nibbles: values 16 + 4d..) with one and, one shift; the 16 f16 scales come from
    /// two gathers. (The generic plane repack, which unpacks each row first and transposes 8 x 16 int32, costs about
    /// twice the instructions; it remains for Q8_0.)
    /// </summary>
    private static void Repack(byte* w, long rowBytes, int nb, int rows, byte* g, float* gs)
    {
        if (!Avx2.IsSupported || (long)rowBytes * (GroupRows - 1) > int.MaxValue)
        {
            Repack<Q4_0Plane>(w, rowBytes, nb, rows, g, 512, gs, BlockBytes, 0);
            return;
        }
        // Row r's first byte (rows past the group's end repeat the last); the 16 rows' scales are gathered through these.
        var off0 = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7);
        var off1 = Vector256.Create(8, 9, 10, 11, 12, 13, 14, 15);
        var last = Vector256.Create(rows - 1);
        off0 = Vector256.Min(off0, last) * Vector256.Create((int)rowBytes);
        off1 = Vector256.Min(off1, last) * Vector256.Create((int)rowBytes);
        byte** rp = stackalloc byte*[GroupRows];
        for (int r = 0; r < GroupRows; r++)
        {
            rp[r] = w + Math.Min(r, rows - 1) * rowBytes + 2;
        }
        // (row k, dword d) of 4 rows (lane 4k + d) -> lanes 0..7: dword d0 of 8 rows, 8..15: dword d0 + 1.
        var pick01 = Vector512.Create(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
        var pick23 = pick01 + Vector512.Create(2);
        var lowHalves = Vector512.Create(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
        var highHalves = lowHalves + Vector512.Create(8);
        var nibble = Vector512.Create((byte)0x0F);
        for (int b = 0; b < nb; b++)
        {
            long o = (long)b * BlockBytes;
            var z0 = Vector512.Create(Vector256.Create(Vector128.Load(rp[0] + o), Vector128.Load(rp[1] + o)), Vector256.Create(Vector128.Load(rp[2] + o), Vector128.Load(rp[3] + o))).AsInt32();
            var z1 = Vector512.Create(Vector256.Create(Vector128.Load(rp[4] + o), Vector128.Load(rp[5] + o)), Vector256.Create(Vector128.Load(rp[6] + o), Vector128.Load(rp[7] + o))).AsInt32();
            var z2 = Vector512.Create(Vector256.Create(Vector128.Load(rp[8] + o), Vector128.Load(rp[9] + o)), Vector256.Create(Vector128.Load(rp[10] + o), Vector128.Load(rp[11] + o))).AsInt32();
            var z3 = Vector512.Create(Vector256.Create(Vector128.Load(rp[12] + o), Vector128.Load(rp[13] + o)), Vector256.Create(Vector128.Load(rp[14] + o), Vector128.Load(rp[15] + o))).AsInt32();
            var a01 = Avx512F.PermuteVar16x32x2(z0, pick01, z1); // rows 0..7: dwords 0 | 1
            var a23 = Avx512F.PermuteVar16x32x2(z0, pick23, z1); // rows 0..7: dwords 2 | 3
            var b01 = Avx512F.PermuteVar16x32x2(z2, pick01, z3); // rows 8..15
            var b23 = Avx512F.PermuteVar16x32x2(z2, pick23, z3);
            // v_d: dword d (quant bytes 4d..4d+3) of the 16 rows; its low nibbles are values 4d.., its high ones 16 + 4d...
            var v0 = Avx512F.PermuteVar16x32x2(a01, lowHalves, b01).AsByte();
            var v1 = Avx512F.PermuteVar16x32x2(a01, highHalves, b01).AsByte();
            var v2 = Avx512F.PermuteVar16x32x2(a23, lowHalves, b23).AsByte();
            var v3 = Avx512F.PermuteVar16x32x2(a23, highHalves, b23).AsByte();
            byte* dst = g + b * 512;
            (v0 & nibble).Store(dst);
            (v1 & nibble).Store(dst + 64);
            (v2 & nibble).Store(dst + 128);
            (v3 & nibble).Store(dst + 192);
            (Vector512.ShiftRightLogical(v0.AsUInt16(), 4).AsByte() & nibble).Store(dst + 256);
            (Vector512.ShiftRightLogical(v1.AsUInt16(), 4).AsByte() & nibble).Store(dst + 320);
            (Vector512.ShiftRightLogical(v2.AsUInt16(), 4).AsByte() & nibble).Store(dst + 384);
            (Vector512.ShiftRightLogical(v3.AsUInt16(), 4).AsByte() & nibble).Store(dst + 448);
            // The scales: the low 16 bits of the dword at each row's block start (Halves ignores the high ones).
            QuantGemm.Halves(Avx2.GatherVector256((int*)(w + o), off0, 1)).Store(gs + (long)b * GroupRows);
            QuantGemm.Halves(Avx2.GatherVector256((int*)(w + o), off1, 1)).Store(gs + (long)b * GroupRows + 8);
        }
    }

    /// <summary>
    /// Repacks plane <paramref name="plane"/> (see <see cref="IPlane"/>) of <paramref name="rows"/> rows of nb blocks of
    /// <paramref name="blockBytes"/> bytes into the group layout at <paramref name="g"/> (512 bytes per block, blocks
    /// <paramref name="stride"/> bytes apart) and, for plane 0 (or -1), their f16 scales (at block offset 0) into <paramref name="gs"/>.
    /// </summary>
    /// <remarks>
    /// With <paramref name="highPlane"/> the plane's bytes are split after the transpose: their low nibbles go to
    /// <paramref name="g"/>, their high nibbles to <paramref name="highPlane"/> (same layout), one transpose for both.
    /// </remarks>
    internal static void Repack<TPlane>(byte* w, long rowBytes, int nb, int rows, byte* g, long stride, float* gs, int blockBytes, int plane, byte* highPlane = null)
        where TPlane : struct, IPlane
    {
        var lo64 = Vector512.Create(0L, 1, 8, 9, 4, 5, 12, 13);
        var hi64 = Vector512.Create(2L, 3, 10, 11, 6, 7, 14, 15);
        for (int b = 0; b < nb; b++)
        {
            long o = (long)b * blockBytes;
            // z[i] = (row i, row i + 8), each 8 int32 of unpacked values.
            var z0 = Pair<TPlane>(w, rowBytes, rows, 0, o, plane);
            var z1 = Pair<TPlane>(w, rowBytes, rows, 1, o, plane);
            var z2 = Pair<TPlane>(w, rowBytes, rows, 2, o, plane);
            var z3 = Pair<TPlane>(w, rowBytes, rows, 3, o, plane);
            var z4 = Pair<TPlane>(w, rowBytes, rows, 4, o, plane);
            var z5 = Pair<TPlane>(w, rowBytes, rows, 5, o, plane);
            var z6 = Pair<TPlane>(w, rowBytes, rows, 6, o, plane);
            var z7 = Pair<TPlane>(w, rowBytes, rows, 7, o, plane);
            var t0 = Avx512F.UnpackLow(z0, z1);
            var t1 = Avx512F.UnpackHigh(z0, z1);
            var t2 = Avx512F.UnpackLow(z2, z3);
            var t3 = Avx512F.UnpackHigh(z2, z3);
            var t4 = Avx512F.UnpackLow(z4, z5);
            var t5 = Avx512F.UnpackHigh(z4, z5);
            var t6 = Avx512F.UnpackLow(z6, z7);
            var t7 = Avx512F.UnpackHigh(z6, z7);
            var u0 = Avx512F.UnpackLow(t0.AsInt64(), t2.AsInt64());
            var u1 = Avx512F.UnpackHigh(t0.AsInt64(), t2.AsInt64());
            var u2 = Avx512F.UnpackLow(t1.AsInt64(), t3.AsInt64());
            var u3 = Avx512F.UnpackHigh(t1.AsInt64(), t3.AsInt64());
            var u4 = Avx512F.UnpackLow(t4.AsInt64(), t6.AsInt64());
            var u5 = Avx512F.UnpackHigh(t4.AsInt64(), t6.AsInt64());
            var u6 = Avx512F.UnpackLow(t5.AsInt64(), t7.AsInt64());
            var u7 = Avx512F.UnpackHigh(t5.AsInt64(), t7.AsInt64());
            long* dst = (long*)(g + b * stride);
            if (highPlane == null)
            {
                Avx512F.PermuteVar8x64x2(u0, lo64, u4).Store(dst);
                Avx512F.PermuteVar8x64x2(u1, lo64, u5).Store(dst + 8);
                Avx512F.PermuteVar8x64x2(u2, lo64, u6).Store(dst + 16);
                Avx512F.PermuteVar8x64x2(u3, lo64, u7).Store(dst + 24);
                Avx512F.PermuteVar8x64x2(u0, hi64, u4).Store(dst + 32);
                Avx512F.PermuteVar8x64x2(u1, hi64, u5).Store(dst + 40);
                Avx512F.PermuteVar8x64x2(u2, hi64, u6).Store(dst + 48);
                Avx512F.PermuteVar8x64x2(u3, hi64, u7).Store(dst + 56);
            }
            else
            {
                long* dh = (long*)(highPlane + b * stride);
                Split(Avx512F.PermuteVar8x64x2(u0, lo64, u4), dst, dh);
                Split(Avx512F.PermuteVar8x64x2(u1, lo64, u5), dst + 8, dh + 8);
                Split(Avx512F.PermuteVar8x64x2(u2, lo64, u6), dst + 16, dh + 16);
                Split(Avx512F.PermuteVar8x64x2(u3, lo64, u7), dst + 24, dh + 24);
                Split(Avx512F.PermuteVar8x64x2(u0, hi64, u4), dst + 32, dh + 32);
                Split(Avx512F.PermuteVar8x64x2(u1, hi64, u5), dst + 40, dh + 40);
                Split(Avx512F.PermuteVar8x64x2(u2, hi64, u6), dst + 48, dh + 48);
                Split(Avx512F.PermuteVar8x64x2(u3, hi64, u7), dst + 56, dh + 56);
            }
            if (plane <= 0)
            {
                // The 16 rows' f16 scales (rows past the group's end repeat the last), converted 8 at a time.
                for (int r0 = 0; r0 < GroupRows; r0 += 8)
                {
                    var h = Vector256.Create(
                        *(ushort*)(w + Math.Min(r0, rows - 1) * rowBytes + o), *(ushort*)(w + Math.Min(r0 + 1, rows - 1) * rowBytes + o),
                        *(ushort*)(w + Math.Min(r0 + 2, rows - 1) * rowBytes + o), *(ushort*)(w + Math.Min(r0 + 3, rows - 1) * rowBytes + o),
                        *(ushort*)(w + Math.Min(r0 + 4, rows - 1) * rowBytes + o), *(ushort*)(w + Math.Min(r0 + 5, rows - 1) * rowBytes + o),
                        *(ushort*)(w + Math.Min(r0 + 6, rows - 1) * rowBytes + o), *(ushort*)(w + Math.Min(r0 + 7, rows - 1) * rowBytes + o));
                    QuantGemm.Halves(h.AsInt32()).Store(gs + (long)b * GroupRows + r0);
                }
            }
        }
    }

    /// <summary>The bytes of <paramref name="v"/>: low nibbles to <paramref name="lo"/>, high nibbles to <paramref name="hi"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Split(Vector512<long> v, long* lo, long* hi)
    {
        var nibble = Vector512.Create((byte)0x0F);
        (v.AsByte() & nibble).AsInt64().Store(lo);
        (Vector512.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & nibble).AsInt64().Store(hi);
    }

    /// <summary>Rows i and i + 8 (clamped to the last present row) of block offset o, unpacked, as one vector of 16 int32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> Pair<TPlane>(byte* w, long rowBytes, int rows, int i, long o, int plane)
        where TPlane : struct, IPlane =>
        QuantDot.Combine(TPlane.Unpack(w + Math.Min(i, rows - 1) * rowBytes + o, plane).AsInt32(),
            TPlane.Unpack(w + Math.Min(i + 8, rows - 1) * rowBytes + o, plane).AsInt32());

    /// <summary>
    /// 16 rows x TN.Value (1..8) tokens over all blocks; stores the first <paramref name="rows"/> rows. The token count is a
    /// type argument so that each instantiation computes and keeps only its own accumulators (a product of 2 tokens does
    /// 2 tokens' work per block, not a full tile's).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TN>(byte* g, float* gs, int nb, Q8Row* tok, float** ds8, float* y, int n, int rows, float* partial, Prefetcher ahead)
        where TN : struct, ITokenCount
    {
        int line = 0;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default, c6 = default, c7 = default;
        sbyte* x0 = tok[0].Q, x1 = tok[1].Q, x2 = tok[2].Q, x3 = tok[3].Q, x4 = tok[4].Q, x5 = tok[5].Q, x6 = tok[6].Q, x7 = tok[7].Q;
        for (int b = 0; b < nb; b++)
        {
            byte* wb = g + (long)b * 512;
            var w0 = Vector512.Load(wb).AsByte();
            var w1 = Vector512.Load(wb + 64).AsByte();
            var w2 = Vector512.Load(wb + 128).AsByte();
            var w3 = Vector512.Load(wb + 192).AsByte();
            var w4 = Vector512.Load(wb + 256).AsByte();
            var w5 = Vector512.Load(wb + 320).AsByte();
            var w6 = Vector512.Load(wb + 384).AsByte();
            var w7 = Vector512.Load(wb + 448).AsByte();
            var dw = Vector512.Load(gs + (long)b * GroupRows);
            long xo = 32L * b;
            line = ahead.Step(line);
            c0 = Q4_0Packed.Token(c0, w0, w1, w2, w3, w4, w5, w6, w7, dw, x0 + xo, tok[0].D + b, ds8[0] + b);
            if (TN.Value > 1)
            {
                c1 = Q4_0Packed.Token(c1, w0, w1, w2, w3, w4, w5, w6, w7, dw, x1 + xo, tok[1].D + b, ds8[1] + b);
            }
            if (TN.Value > 2)
            {
                c2 = Q4_0Packed.Token(c2, w0, w1, w2, w3, w4, w5, w6, w7, dw, x2 + xo, tok[2].D + b, ds8[2] + b);
            }
            if (TN.Value > 3)
            {
                c3 = Q4_0Packed.Token(c3, w0, w1, w2, w3, w4, w5, w6, w7, dw, x3 + xo, tok[3].D + b, ds8[3] + b);
            }
            if (TN.Value > 4)
            {
                c4 = Q4_0Packed.Token(c4, w0, w1, w2, w3, w4, w5, w6, w7, dw, x4 + xo, tok[4].D + b, ds8[4] + b);
            }
            if (TN.Value > 5)
            {
                c5 = Q4_0Packed.Token(c5, w0, w1, w2, w3, w4, w5, w6, w7, dw, x5 + xo, tok[5].D + b, ds8[5] + b);
            }
            if (TN.Value > 6)
            {
                c6 = Q4_0Packed.Token(c6, w0, w1, w2, w3, w4, w5, w6, w7, dw, x6 + xo, tok[6].D + b, ds8[6] + b);
            }
            if (TN.Value > 7)
            {
                c7 = Q4_0Packed.Token(c7, w0, w1, w2, w3, w4, w5, w6, w7, dw, x7 + xo, tok[7].D + b, ds8[7] + b);
            }
        }
        StoreTile(TN.Value, y, n, rows, partial, c0, c1, c2, c3, c4, c5, c6, c7);
    }

    /// <summary>
    /// A tile's results: accumulator c_t (t &lt; <paramref name="tokens"/>) to token t's row of y, y + t n (the rest are
    /// not stored: a tile of fewer tokens passes only its own accumulators). One place for every rows-in-lanes tile
    /// kernel; inlined, a token count known at JIT time (TN.Value) leaves only its own stores.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void StoreTile(int tokens, float* y, int n, int rows, float* partial, Vector512<float> c0, Vector512<float> c1 = default,
        Vector512<float> c2 = default, Vector512<float> c3 = default, Vector512<float> c4 = default, Vector512<float> c5 = default,
        Vector512<float> c6 = default, Vector512<float> c7 = default)
    {
        Store(c0, y, rows, partial);
        if (tokens > 1)
        {
            Store(c1, y + n, rows, partial);
        }
        if (tokens > 2)
        {
            Store(c2, y + 2L * n, rows, partial);
        }
        if (tokens > 3)
        {
            Store(c3, y + 3L * n, rows, partial);
        }
        if (tokens > 4)
        {
            Store(c4, y + 4L * n, rows, partial);
        }
        if (tokens > 5)
        {
            Store(c5, y + 5L * n, rows, partial);
        }
        if (tokens > 6)
        {
            Store(c6, y + 6L * n, rows, partial);
        }
        if (tokens > 7)
        {
            Store(c7, y + 7L * n, rows, partial);
        }
    }

    /// <summary>The 16 rows' results to y[0..rows) (all 16 at once when the group is whole).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Store(Vector512<float> c, float* y, int rows, float* partial)
    {
        if (rows == GroupRows)
        {
            c.Store(y);
            return;
        }
        c.Store(partial);
        for (int r = 0; r < rows; r++)
        {
            y[r] = partial[r];
        }
    }

    /// <summary>
    /// The scalar twin: the same per-(row, token) sequence in plain arithmetic (exact integer block sums, then
    /// acc = fma(d_w, fms(p, d_x, 8 d_x sum x), acc)), so tests can demand bit-for-bit equality.
    /// </summary>
    public static void RunScalar(byte* w, long rowBytes, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        act.PrepareOffsetSums(8);
        for (int t = 0; t < tokens; t++)
        {
            var a = act.Row(t);
            float* ds8 = act.OffsetSums(t);
            for (int r = r0; r < r1; r++)
            {
                byte* row = w + r * rowBytes;
                float acc = 0;
                for (int b = 0; b < nb; b++)
                {
                    byte* blk = row + (long)b * BlockBytes;
                    sbyte* x = a.Q + 32L * b;
                    int p = 0;
                    for (int j = 0; j < 16; j++)
                    {
                        p += (blk[2 + j] & 0x0F) * x[j] + (blk[2 + j] >> 4) * x[j + 16];
                    }
                    acc = MathF.FusedMultiplyAdd(QuantDot.HalfScalar(blk), MathF.FusedMultiplyAdd(p, a.D[b], -ds8[b]), acc);
                }
                y[(long)t * n + r] = acc;
            }
        }
    }
}

/// <summary>
/// Prefetches (to L2) the cache lines of a group of rows a few lines per call, spread over the nb block steps of a tile:
/// line L of the group (L = row * lines per row + line of the row) at step L / <see cref="_perStep"/>.
/// Example: 16 rows of 2304 bytes (36 lines each, 576 in all) over 128 steps: 5 lines per step (4.5 rounded up).
/// </summary>
internal readonly unsafe struct Prefetcher
{
    private readonly byte* _base; // the group's first row, or null for nothing
    private readonly long _rowBytes;
    private readonly int _linesPerRow, _lines, _perStep;

    public Prefetcher(byte* group, long rowBytes, int rows, int steps)
    {
        _base = rows > 0 ? group : null;
        _rowBytes = rowBytes;
        _linesPerRow = (int)((rowBytes + 63) / 64);
        _lines = Math.Max(0, rows) * _linesPerRow;
        _perStep = Math.Max(1, (_lines + Math.Max(1, steps) - 1) / Math.Max(1, steps));
    }

    /// <summary>Prefetches lines [line, line + per step) (those that exist); returns the next line.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int Step(int line)
    {
        if (_base == null || line >= _lines)
        {
            return line;
        }
        int end = Math.Min(_lines, line + _perStep);
        int row = line / _linesPerRow, col = line - row * _linesPerRow;
        for (; line < end; line++)
        {
            Sse.Prefetch1(_base + row * _rowBytes + col * 64L);
            if (++col == _linesPerRow)
            {
                col = 0;
                row++;
            }
        }
        return line;
    }
}

/// <summary>A token count known at JIT time (1..8): tiles instantiated per count keep only that many accumulators.</summary>
internal interface ITokenCount
{
    static abstract int Value { get; }
}

internal readonly struct Tokens1 : ITokenCount
{
    public static int Value => 1;
}

internal readonly struct Tokens2 : ITokenCount
{
    public static int Value => 2;
}

internal readonly struct Tokens3 : ITokenCount
{
    public static int Value => 3;
}

internal readonly struct Tokens4 : ITokenCount
{
    public static int Value => 4;
}

internal readonly struct Tokens5 : ITokenCount
{
    public static int Value => 5;
}

internal readonly struct Tokens6 : ITokenCount
{
    public static int Value => 6;
}

internal readonly struct Tokens7 : ITokenCount
{
    public static int Value => 7;
}

internal readonly struct Tokens8 : ITokenCount
{
    public static int Value => 8;
}

/// <summary>How a block's 32 values become the unsigned bytes of one repacked plane (value order).</summary>
internal unsafe interface IPlane
{
    static abstract Vector256<byte> Unpack(byte* blk, int plane);
}

/// <summary>Q4_0: the nibbles q (one plane).</summary>
internal readonly unsafe struct Q4_0Plane : IPlane
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Unpack(byte* blk, int plane)
    {
        Q4_0Gemm.Unpack(blk, out var u, out _);
        return u;
    }
}

/// <summary>
/// Q8_0: u = w + 128 (0..255) split into plane 0 = u mod 16 and plane 1 = u / 16; plane -1 is u whole (for
/// <see cref="Q4_0Interleaved.Repack{TPlane}"/> with a high plane, which splits after transposing).
/// </summary>
internal readonly unsafe struct Q8_0Plane : IPlane
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Unpack(byte* blk, int plane)
    {
        var u = Vector256.Load(blk + 2) ^ Vector256.Create((byte)0x80);
        return plane < 0 ? u : plane == 0 ? u & Vector256.Create((byte)0x0F) : Vector256.ShiftRightLogical(u.AsUInt32(), 4).AsByte() & Vector256.Create((byte)0x0F);
    }
}
