using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Numerics.Quant;

/// <summary>
/// AVX-512 prefill for Q6_K with rows in vector lanes, as <see cref="Q4_0Interleaved"/> (each group of 16 rows repacked
/// once per product into a per-thread buffer). A super-block (256 values) is 16 sub-blocks of 16 with int8 scales sc:
/// x = d sc[j] (u - 32), u the unsigned 6-bit quant (0..63).
/// <para>Per sub-block j and token: 4 vpmaddubsw of the repacked u with the token's broadcast 4-byte groups add up in
/// int16 with wrap-around; subtracting the token's precomputed offset pairs (<see cref="Q8Activations.PrepareOffsets16"/>:
/// 32 times the sums of the x each int16 lane saw) leaves each lane's exact sum of 4 (u - 32) x (|.| at most
/// 8 * 32 * 127 = 32512, so the wrapped intermediate sums do not matter). One vpmaddwd by the 16 rows' sc[j] adds
/// sc[j] sum((u - 32) x) to an int32 sum over the super-block (exact: at most 16 * 128 * 65024 &lt; 2^31); then per
/// super-block acc = fma(d, isum d_x, acc), all 16 rows at once.</para>
/// <para>Repacked layout of a group, per super-block (5184 bytes): u planes (16 sub-blocks, 4, 16) int32 (vector i of
/// sub-block j holds values 16j + 4i .. 16j + 4i + 3 of each row; see <see cref="Q4_0Interleaved"/>), then sc (16, 16)
/// int32 (sc in both int16 halves), d (16) floats. Example: values 36..39 of super-block 2 of the group's row 5 are
/// int32 (2 * 5184 + 2 * 256 + 1 * 64) / 4 + 5 = 2741.</para>
/// Letters: N = rows, K = cols, T = tokens, nb = K / 256 super-blocks.
/// </summary>
internal static unsafe class Q6KInterleaved
{
    private const int TileTokens = 8;
    private const int BlockBytes = 210;
    private const int GroupRows = Q4_0Interleaved.GroupRows;
    private const long ScaleOffset = 8 * 512;
    private const long DOffset = ScaleOffset + 1024;
    private const long SuperBytes = DOffset + 64;

    /// <summary>The weight offset: q = u - 32.</summary>
    private const int Offset = 32;

    [ThreadStatic]
    private static byte[]? t_group;

    /// <summary>Whether this path runs for a product of <paramref name="tokens"/> tokens at <paramref name="isa"/>.</summary>
    public static bool Covers(QuantIsa isa, int tokens) => isa == QuantIsa.Avx512 && tokens >= QuantDispatch.KQuantInterleavedMinTokens;

    /// <summary>Once per product on the calling thread: the activation data the kernel reads.</summary>
    public static void Prepare(Q8Activations act) => act.PrepareOffsets16(Offset);

    /// <summary>y[t, r] for r in [r0, r1), t in [0, tokens), after <see cref="Prepare"/>. w: (N, rowBytes) Q6_K blocks; y: (T, N).</summary>
    public static void Run(byte* w, long rowBytes, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        long groupBytes = nb * SuperBytes;
        byte* g = PinnedScratch.Get(ref t_group, groupBytes);
        float* partial = stackalloc float[GroupRows];
        var xs = stackalloc nint[TileTokens];
        var offs = stackalloc nint[TileTokens];
        var dxs = stackalloc nint[TileTokens];
        float* scratch = stackalloc float[GroupRows];
        for (int g0 = r0; g0 < r1; g0 += GroupRows)
        {
            int rows = Math.Min(GroupRows, r1 - g0);
            byte* wg = w + g0 * rowBytes;
            for (int p = 0; p < 8; p++)
            {
                Q4_0Interleaved.Repack<Q6KPlane>(wg, rowBytes, nb, rows, g + p * 512L, SuperBytes, scratch, BlockBytes, p + 1);
            }
            RepackScales(wg, rowBytes, nb, rows, g);
            for (int t0 = 0; t0 < tokens; t0 += TileTokens)
            {
                int tt = Math.Min(TileTokens, tokens - t0);
                for (int j = 0; j < TileTokens; j++)
                {
                    int t = t0 + Math.Min(j, tt - 1); // a short tile repeats its last token (not stored)
                    var row = act.Row(t);
                    xs[j] = (nint)row.Q;
                    dxs[j] = (nint)row.D;
                    offs[j] = (nint)act.Offsets16(t);
                }
                Tile(g, nb, (sbyte**)xs, (float**)dxs, (int**)offs, y + (long)t0 * n + g0, n, rows, tt, partial);
            }
        }
    }

    /// <summary>Per super-block of the group: sc[j] (both int16 halves) and d of each row (missing rows repeat the last).</summary>
    private static void RepackScales(byte* w, long rowBytes, int nb, int rows, byte* g)
    {
        for (int b = 0; b < nb; b++)
        {
            int* sc = (int*)(g + b * SuperBytes + ScaleOffset);
            float* d = (float*)(g + b * SuperBytes + DOffset);
            for (int r = 0; r < GroupRows; r++)
            {
                byte* blk = w + Math.Min(r, rows - 1) * rowBytes + (long)b * BlockBytes;
                for (int j = 0; j < 16; j++)
                {
                    int s = ((sbyte*)blk)[192 + j];
                    sc[j * GroupRows + r] = (ushort)(short)s | (s << 16);
                }
                d[r] = QuantDot.Half(blk + 208);
            }
        }
    }

    /// <summary>16 rows x 8 tokens (quants xs, scales dxs, offset pairs offs) over all super-blocks; stores the first <paramref name="rows"/> rows of the first <paramref name="tokens"/> tokens.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile(byte* g, int nb, sbyte** xs, float** dxs, int** offs, float* y, int n, int rows, int tokens, float* partial)
    {
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default, c6 = default, c7 = default;
        for (int b = 0; b < nb; b++)
        {
            byte* gb = g + b * SuperBytes;
            Vector512<int> i0 = default, i1 = default, i2 = default, i3 = default, i4 = default, i5 = default, i6 = default, i7 = default;
            for (int j = 0; j < 16; j++)
            {
                byte* wj = gb + j * 256L;
                var w0 = Vector512.Load(wj);
                var w1 = Vector512.Load(wj + 64);
                var w2 = Vector512.Load(wj + 128);
                var w3 = Vector512.Load(wj + 192);
                var sc = Vector512.Load((short*)(gb + ScaleOffset + j * 64L));
                long xo = 256L * b + 16 * j, oo = 16L * b + j;
                i0 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, xs[0] + xo, offs[0][oo]), sc);
                i1 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, xs[1] + xo, offs[1][oo]), sc);
                i2 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, xs[2] + xo, offs[2][oo]), sc);
                i3 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, xs[3] + xo, offs[3][oo]), sc);
                i4 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, xs[4] + xo, offs[4][oo]), sc);
                i5 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, xs[5] + xo, offs[5][oo]), sc);
                i6 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, xs[6] + xo, offs[6][oo]), sc);
                i7 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, xs[7] + xo, offs[7][oo]), sc);
            }
            var d = Vector512.Load((float*)(gb + DOffset));
            c0 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i0) * Vector512.Create(dxs[0][b]), c0);
            c1 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i1) * Vector512.Create(dxs[1][b]), c1);
            c2 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i2) * Vector512.Create(dxs[2][b]), c2);
            c3 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i3) * Vector512.Create(dxs[3][b]), c3);
            c4 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i4) * Vector512.Create(dxs[4][b]), c4);
            c5 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i5) * Vector512.Create(dxs[5][b]), c5);
            c6 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i6) * Vector512.Create(dxs[6][b]), c6);
            c7 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i7) * Vector512.Create(dxs[7][b]), c7);
        }
        Q4_0Interleaved.StoreTile(tokens, y, n, rows, partial, c0, c1, c2, c3, c4, c5, c6, c7);
    }

    /// <summary>
    /// One sub-block of 16 values for the 16 rows (w0..w3) and one token (quants x, offset pairs off): per row the int16
    /// pair (sum of (u - 32) x over values 0, 1, 4, 5, 8, 9, 12, 13; over 2, 3, 6, 7, 10, 11, 14, 15), exact.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<short> Sum(Vector512<byte> w0, Vector512<byte> w1, Vector512<byte> w2, Vector512<byte> w3, sbyte* x, int off) =>
        Avx512BW.MultiplyAddAdjacent(w0, Vector512.Create(*(int*)x).AsSByte())
        + Avx512BW.MultiplyAddAdjacent(w1, Vector512.Create(*(int*)(x + 4)).AsSByte())
        + Avx512BW.MultiplyAddAdjacent(w2, Vector512.Create(*(int*)(x + 8)).AsSByte())
        + Avx512BW.MultiplyAddAdjacent(w3, Vector512.Create(*(int*)(x + 12)).AsSByte())
        - Vector512.Create(off).AsInt16();

    /// <summary>
    /// The scalar twin: the same per-(row, token) sequence in plain arithmetic (the exact integer super-block sum
    /// isum = sum_j sc[j] sum (u - 32) x, then acc = fma(d, isum d_x, acc)), so tests can demand bit-for-bit equality.
    /// </summary>
    public static void RunScalar(byte* w, long rowBytes, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        for (int t = 0; t < tokens; t++)
        {
            var a = act.Row(t);
            for (int r = r0; r < r1; r++)
            {
                float acc = 0;
                for (int b = 0; b < nb; b++)
                {
                    byte* blk = w + r * rowBytes + (long)b * BlockBytes;
                    int isum = 0;
                    for (int j = 0; j < 16; j++)
                    {
                        int dot = 0;
                        for (int l = 0; l < 16; l++)
                        {
                            dot += (Quant(blk, 16 * j + l) - Offset) * a.Q[256L * b + 16 * j + l];
                        }
                        isum += ((sbyte*)blk)[192 + j] * dot;
                    }
                    acc = MathF.FusedMultiplyAdd(QuantDot.HalfScalar(blk + 208), isum * a.D[b], acc);
                }
                y[(long)t * n + r] = acc;
            }
        }
    }

    /// <summary>
    /// The unsigned 6-bit quant u (0..63) of value e of a Q6_K block, as <see cref="BlockDequantizer"/> documents: e = 128h + 32k + l,
    /// low nibble from ql[64h + l + 32 (k &amp; 1)] (high nibble for k &gt;= 2), high 2 bits from qh[32h + l] bits 2k, 2k + 1.
    /// </summary>
    internal static int Quant(byte* blk, int e)
    {
        int h = e / 128, k = e % 128 / 32, l = e % 32;
        int ql = blk[64 * h + l + 32 * (k & 1)];
        int low = k >= 2 ? ql >> 4 : ql & 0x0F;
        int high = (blk[128 + 32 * h + l] >> (2 * k)) & 3;
        return low | (high << 4);
    }
}

/// <summary>Q6_K: plane p (1..8) is values 32 (p - 1) .. 32 (p - 1) + 31: the unsigned 6-bit quants u, in value order.</summary>
internal readonly unsafe struct Q6KPlane : IPlane
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Unpack(byte* blk, int plane)
    {
        int h = (plane - 1) / 4, k = (plane - 1) % 4;
        var ql = Vector256.Load(blk + 64 * h + 32 * (k & 1));
        var low = (k >= 2 ? Vector256.ShiftRightLogical(ql.AsUInt32(), 4).AsByte() : ql) & Vector256.Create((byte)0x0F);
        var qh = Vector256.Load(blk + 128 + 32 * h);
        var high = Vector256.ShiftRightLogical(qh.AsUInt32(), 2 * k).AsByte() & Vector256.Create((byte)0x03);
        return low | Vector256.ShiftLeft(high.AsUInt32(), 4).AsByte();
    }
}
