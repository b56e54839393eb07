using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Numerics.Quant;

/// <summary>
/// What the AVX2 kernels over the packed 16-row groups share (<see cref="Q4_0Packed"/>, <see cref="Q8_0Packed"/>,
/// <see cref="Q4KPacked"/>, <see cref="Q6KPacked"/>). A group's every 64-byte vector holds one dword per row, row r at
/// bytes 4r..4r+3, so its first 32 bytes are rows 0..7 and its last 32 bytes rows 8..15: AVX2 runs a group as two
/// halves of 8 rows (h = 0, 1), each 256-bit vector the same dword of 8 rows, from byte offset 32 h of every vector.
/// The f16 scales of a group (2 bytes per row) split the same way: half h's 8 scales are 16 bytes from offset 16 h.
/// Each half computes every (row, token) with the very integers and float operations of the AVX-512 kernels and the
/// scalar twins, so all agree bit for bit.
/// <para>The tiles of 2..4 tokens cover the whole group: each broadcast of a token's 4 activations multiplies the same
/// dword of both halves (<see cref="MulPair"/>, <see cref="MulTile{TN}"/>), so a tile holds 8 int16 sums (token x
/// half) in registers and keeps its float (and int32) accumulators in a 64-lane stack buffer (token j, half h at
/// 16 j + 8 h), read and written once per block or sub-block. AVX2 has 16 vector registers: the earlier half-group
/// tiles with 4 float accumulators and up to 8 weight vectors in registers spilled, and shared each broadcast with 8
/// rows. The JIT does not unroll the short loops over a block's dwords, so the tiles are unrolled by hand.
/// Measured on the 2-core AMD EPYC (Zen 3), 256-token prefill of a synthesized Mistral-7B shape, 2 threads, side by
/// side with the half-group tiles: Q4_0 11.8-12.3 -> 17.9-18.9 tok/s, Q4_K_M 10.9-11.9 -> 13.1-13.3, Q8_0 7.4-7.9 ->
/// 9.5-11.6.</para>
/// <para>The K-quants (<see cref="Q4KPacked"/>, <see cref="Q6KPacked"/>) unpack their quants and scales once per group
/// and product from 16 tokens on (<see cref="IPacked256.Expand"/>, into a per-thread buffer their tiles then load), which
/// spares every tile the unpacking and lets one loop body serve all sub-blocks: Q6_K's tile read 157-192 -> 275-285
/// GFLOP/s, Q4_K's 271-300 -> 288-361 ((14336, 4096) or (4096, 14336), 256 tokens, 2 threads). Q4_0's expanded tile
/// read the same as the packed one within the drift, so it does not expand; Q8_0 expansion was not tried.</para>
/// </summary>
internal static unsafe class Packed256
{
    /// <summary>Rows per half group: one per float lane of a 256-bit vector.</summary>
    public const int HalfRows = 8;

    /// <summary>Tokens per tile of every format's AVX2 tiles.</summary>
    public const int TileTokens = 4;

    /// <summary>Lanes of a tile's accumulator buffer: token j, half h, row lane at 16 j + 8 h + lane.</summary>
    public const int TileLanes = TileTokens * PackedLayouts.GroupRows;

    [ThreadStatic]
    private static byte[]? t_expanded;

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16), t in [0, tokens), over the packed groups of format
    /// <typeparamref name="TK"/>: a 1-token product streams each group once, both halves together
    /// (<see cref="IPacked256.Decode"/>); more tokens run tiles of up to <see cref="TileTokens"/> tokens over each group
    /// (<see cref="IPacked256.Tile{TN}"/>; the group stays in L2 across its tiles); from the format's
    /// <see cref="IPacked256.ExpandMinTokens"/> tokens on, each group is first expanded once into a per-thread buffer
    /// that its tiles read. The format's Prepare must have run for this product. y: (T, N).
    /// </summary>
    public static void Run<TK>(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
        where TK : struct, IPacked256
    {
        var tok = stackalloc Q8Row[TileTokens];
        var data = stackalloc nint[TileTokens];
        byte* e = tokens >= TK.ExpandMinTokens ? PinnedScratch.Get(ref t_expanded, TK.ExpandedBytes(nb)) : null;
        for (int g0 = r0; g0 < r1; g0 += PackedLayouts.GroupRows)
        {
            int rows = Math.Min(PackedLayouts.GroupRows, r1 - g0);
            byte* g = packed + g0 / PackedLayouts.GroupRows * TK.GroupBytes(nb);
            if (tokens == 1)
            {
                TK.Decode(g, nb, act.Row(0), TK.TokenData(act, 0), y + g0, rows);
                continue;
            }
            if (e != null)
            {
                TK.Expand(g, nb, e);
            }
            for (int t0 = 0; t0 < tokens; t0 += TileTokens)
            {
                int tt = Math.Min(TileTokens, tokens - t0);
                for (int j = 0; j < TileTokens; j++)
                {
                    int t = t0 + Math.Min(j, tt - 1); // a short tile repeats its last token (not computed)
                    tok[j] = act.Row(t);
                    data[j] = TK.TokenData(act, t);
                }
                float* yt = y + (long)t0 * n + g0;
                switch (tt)
                {
                    case 2: Tile<TK, Tokens2>(g, e, nb, t0 == 0, tok, data, yt, n, rows); break;
                    case 3: Tile<TK, Tokens3>(g, e, nb, t0 == 0, tok, data, yt, n, rows); break;
                    case 4: Tile<TK, Tokens4>(g, e, nb, t0 == 0, tok, data, yt, n, rows); break;
                    default: Tile<TK, Tokens1>(g, e, nb, t0 == 0, tok, data, yt, n, rows); break;
                }
            }
        }
    }

    /// <summary>One tile of <see cref="Run{TK}"/>: over the expanded group e when there is one, else over the packed group g.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Tile<TK, TN>(byte* g, byte* e, int nb, bool first, Q8Row* tok, nint* data, float* y, int n, int rows)
        where TK : struct, IPacked256
        where TN : struct, ITokenCount
    {
        if (e != null)
        {
            TK.TileExpanded<TN>(g, e, nb, tok, data, y, n, rows);
        }
        else
        {
            TK.Tile<TN>(g, nb, first, tok, data, y, n, rows);
        }
    }

    /// <summary>
    /// Token j's two 8-row accumulators of the 4 x 16 floats at <paramref name="c"/> (token j at 16 j, half h at + 8 h)
    /// to its row of y (y + j n), the first <paramref name="rows"/> rows, for j &lt; <paramref name="tokens"/>.
    /// </summary>
    public static void StoreGroupTile(int tokens, float* c, float* y, int n, int rows)
    {
        for (int j = 0; j < tokens; j++)
        {
            Store(Vector256.Load(c + 16 * j), y + (long)j * n, Math.Min(rows, HalfRows));
            if (rows > HalfRows)
            {
                Store(Vector256.Load(c + 16 * j + HalfRows), y + (long)j * n + HalfRows, rows - HalfRows);
            }
        }
    }

    /// <summary>
    /// One broadcast 4-byte group of a token's activations at <paramref name="x"/> times the same dword of both half
    /// groups (<paramref name="w0"/>: rows 0..7, <paramref name="w1"/>: rows 8..15), added to their int16 sums.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void MulPair(ref Vector256<short> s0, ref Vector256<short> s1, Vector256<byte> w0, Vector256<byte> w1, sbyte* x)
    {
        var xb = Broadcast4(x);
        s0 += Mul(w0, xb);
        s1 += Mul(w1, xb);
    }

    /// <summary>
    /// One dword position for a whole-group tile of TN.Value tokens: the weights w0 (rows 0..7) and w1 (rows 8..15)
    /// times each token's 4 activations at p{j}, added to its int16 sums s{j}0, s{j}1 (<see cref="MulPair"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void MulTile<TN>(ref Vector256<short> s00, ref Vector256<short> s01, ref Vector256<short> s10, ref Vector256<short> s11,
        ref Vector256<short> s20, ref Vector256<short> s21, ref Vector256<short> s30, ref Vector256<short> s31,
        Vector256<byte> w0, Vector256<byte> w1, sbyte* p0, sbyte* p1, sbyte* p2, sbyte* p3)
        where TN : struct, ITokenCount
    {
        MulPair(ref s00, ref s01, w0, w1, p0);
        if (TN.Value > 1)
        {
            MulPair(ref s10, ref s11, w0, w1, p1);
        }
        if (TN.Value > 2)
        {
            MulPair(ref s20, ref s21, w0, w1, p2);
        }
        if (TN.Value > 3)
        {
            MulPair(ref s30, ref s31, w0, w1, p3);
        }
    }

    /// <summary>
    /// Four consecutive dword positions (16 values) for a whole-group tile over ready weight bytes: <see cref="MulTile{TN}"/>
    /// on the vector pairs at u, u + 64, u + 128, u + 192 (rows 0..7, rows 8..15 each) and each token's activations
    /// p{j}, p{j} + 4, p{j} + 8, p{j} + 12. Unrolled by hand (the JIT keeps a loop).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void MulTile16<TN>(ref Vector256<short> s00, ref Vector256<short> s01, ref Vector256<short> s10, ref Vector256<short> s11,
        ref Vector256<short> s20, ref Vector256<short> s21, ref Vector256<short> s30, ref Vector256<short> s31,
        byte* u, sbyte* p0, sbyte* p1, sbyte* p2, sbyte* p3)
        where TN : struct, ITokenCount
    {
        MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31, Vector256.Load(u), Vector256.Load(u + 32), p0, p1, p2, p3);
        MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
            Vector256.Load(u + 64), Vector256.Load(u + 96), p0 + 4, p1 + 4, p2 + 4, p3 + 4);
        MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
            Vector256.Load(u + 128), Vector256.Load(u + 160), p0 + 8, p1 + 8, p2 + 8, p3 + 8);
        MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
            Vector256.Load(u + 192), Vector256.Load(u + 224), p0 + 12, p1 + 12, p2 + 12, p3 + 12);
    }

    /// <summary>
    /// The block term of the formats stored with an offset (Q4_0: q = w + 8, Q8_0: u = w + 128):
    /// acc + d_w (p d_x - offset), p the block's exact integer sums of (stored value) x, offset = o d_x sum x.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> OffsetBlock(Vector256<float> acc, Vector256<int> p, Vector256<float> dw, Vector256<float> dx, Vector256<float> offset) =>
        Fma.MultiplyAdd(dw, Fma.MultiplySubtract(Avx.ConvertToVector256Single(p), dx, offset), acc);

    /// <summary>
    /// One token's int16 sums of both halves (s0, s1) times their int16 scales (vpmaddwd), added to its int32 sums at
    /// <paramref name="i"/> (half 0) and i + 8 (half 1) of a tile's buffer.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AddScaled(int* i, Vector256<short> s0, Vector256<short> s1, Vector256<short> sc0, Vector256<short> sc1)
    {
        (Vector256.Load(i) + Avx2.MultiplyAddAdjacent(s0, sc0)).Store(i);
        (Vector256.Load(i + 8) + Avx2.MultiplyAddAdjacent(s1, sc1)).Store(i + 8);
    }

    /// <summary>8 IEEE halves (16 bytes at <paramref name="p"/>) as floats, exactly (<see cref="QuantGemm.Halves"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Halves(byte* p) => QuantGemm.Halves(Avx2.ConvertToVector256Int32((short*)p));

    /// <summary>
    /// 8 IEEE halves at <paramref name="p"/> as floats, exactly, for the block scales of Q4_0 and Q8_0 (read once per 32
    /// values): sign-extended, shifted into a float's place, bits 28..30 (sign copies) cleared, times 2^112. Four
    /// operations against <see cref="Halves(byte*)"/>'s eleven (an exact form that took the 4-operation shortcut when
    /// none of a block's 16 scales had exponent 0 still cost Q4_0 decode 8 % of its GB/s, one thread, L3-resident),
    /// but a subnormal half passes through a float subnormal, whose multiply takes a microcode assist
    /// (<see cref="QuantGemm.Halves"/>); their block scales are subnormal only where a block's largest |w| is below
    /// 4.9e-4 (Q4_0) or 7.8e-3 (Q8_0). The K-quants' super-block scales, often subnormal, take <see cref="Halves(byte*)"/>.
    /// The arithmetic is <see cref="HalfConversion.WidenFinite256"/>'s (packing refuses non-finite block scales,
    /// <see cref="PackedLayouts.CheckBlockScales"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> BlockScales(byte* p) => HalfConversion.WidenFinite256(Vector128.Load((short*)p));

    /// <summary>The 4 bytes at <paramref name="x"/> in every dword (the activations a dword of 4 weights multiplies).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<sbyte> Broadcast4(sbyte* x) => Vector256.Create(*(int*)x).AsSByte();

    /// <summary>The high nibbles of the bytes of <paramref name="v"/>, as bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> High(Vector256<byte> v, Vector256<byte> nibble) => Vector256.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & nibble;

    /// <summary>vpmaddubsw: adjacent pairs of u8 x s8 products as int16.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> Mul(Vector256<byte> w, Vector256<sbyte> x) => Avx2.MultiplyAddAdjacent(w, x);

    /// <summary>vpmaddwd by 1: adjacent int16 pairs summed to int32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> Widen(Vector256<short> h) => Avx2.MultiplyAddAdjacent(h, Vector256.Create((short)1));

    /// <summary>
    /// The 8 lanes of <paramref name="c"/> to y[0..rows) (rows 1..8): one store for a whole half, lane by lane for a
    /// short one (the matrix's last rows).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Vector256<float> c, float* y, int rows)
    {
        if (rows >= HalfRows)
        {
            c.Store(y);
            return;
        }
        for (int i = 0; i < rows; i++)
        {
            y[i] = c.GetElement(i);
        }
    }
}

/// <summary>A packed format's AVX2 kernels, for <see cref="Packed256.Run{TK}"/>.</summary>
internal unsafe interface IPacked256
{
    /// <summary>Bytes of one 16-row group of nb blocks.</summary>
    static abstract long GroupBytes(int nb);

    /// <summary>Token t's per-block data the kernels read besides its quants and scales (prepared once per product).</summary>
    static abstract nint TokenData(Q8Activations act, int t);

    /// <summary>1 token (a, its data), both halves of the group at g; stores the first <paramref name="rows"/> rows to y[0..rows).</summary>
    static abstract void Decode(byte* g, int nb, Q8Row a, nint data, float* y, int rows);

    /// <summary>
    /// Tokens from which a product expands each group once (<see cref="Expand"/>) for its tiles; formats that do not
    /// expand keep the default (never).
    /// </summary>
    static virtual int ExpandMinTokens => int.MaxValue;

    /// <summary>Bytes of an expanded group of nb super-blocks (<see cref="Expand"/>).</summary>
    static virtual long ExpandedBytes(int nb) => 0;

    /// <summary>Expands the group at g (nb blocks) into <see cref="ExpandedBytes"/> bytes at <paramref name="dst"/>.</summary>
    static virtual void Expand(byte* g, int nb, byte* dst) => throw new NotSupportedException("this format does not expand its groups");

    /// <summary>
    /// The group at g (16 rows) x TN.Value tokens (tok, data); stores the first <paramref name="rows"/> rows of token j
    /// to y + j n. <paramref name="first"/>: the first tile over this group (which reads it from memory).
    /// </summary>
    static abstract void Tile<TN>(byte* g, int nb, bool first, Q8Row* tok, nint* data, float* y, int n, int rows)
        where TN : struct, ITokenCount;

    /// <summary>
    /// <see cref="Tile{TN}"/> over the group at g expanded at e (<see cref="Expand"/>), for formats that expand; the
    /// same results.
    /// </summary>
    static virtual void TileExpanded<TN>(byte* g, byte* e, int nb, Q8Row* tok, nint* data, float* y, int n, int rows)
        where TN : struct, ITokenCount => throw new NotSupportedException("this format does not expand its groups");
}
