using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Numerics.Quant;

/// <summary>
/// AVX-512 prefill for Q4_K with rows in vector lanes, as <see cref="Q4_0Interleaved"/>. A super-block (256 values)
/// is 8 sub-blocks of 32 with 6-bit scales sc and mins m: x = d sc[s] q - dmin m[s]. Per sub-block and token, 8
/// vpmaddubsw of the repacked nibbles with the token's broadcast 4-byte groups add up in int16 (at most 16 * 15 * 127),
/// one vpmaddwd by the 16 rows' sc[s] adds sc[s] (sum q x) to an int32 sum over the super-block (exact: at most
/// 8 * 63 * 60960 &lt; 2^31). The min term is an exact integer too, msum = sum_s m[s] S[s] with S[s] the sum of the
/// token's quants over sub-block s (4 vpmaddwd of the rows' (m[2i], m[2i + 1]) pairs with the token's broadcast
/// (S[2i], S[2i + 1]) pairs, <see cref="Q8Activations.PrepareMinSums"/>; |msum| &lt;= 8 * 63 * 4064 &lt; 2^24, so
/// exact as a float too). Per super-block: acc = fma(d, float(isum) d_x, acc), then acc = fma(-dmin, float(msum) d_x,
/// acc), all 16 rows at once: the contract every Q4_K kernel over groups of 16 rows keeps bit for bit
/// (<see cref="Q4KPacked"/>, <see cref="Q4KVnni"/>), as llama.cpp's Q4_K x Q8_K dot, which also sums m[s] S[s] in integers.
/// <para>Repacked layout of a group, per super-block (4992 bytes): nibble planes (8 sub-blocks, 8, 16) int32 (see
/// <see cref="Q4_0Interleaved"/>), then sc (8, 16) int32 (sc in both int16 halves), min pairs (4, 16) int32
/// (m[2i] | m[2i + 1] &lt;&lt; 16), dmin (16) floats, d (16) floats.</para>
/// Letters: N = rows, K = cols, T = tokens, nb = K / 256 super-blocks.
/// </summary>
internal static unsafe class Q4KInterleaved
{
    private const int TileTokens = 8;
    private const int BlockBytes = 144;
    private const int GroupRows = Q4_0Interleaved.GroupRows;
    private const long SuperBytes = MinPairOffset + 256 + 64 + 64;
    private const long ScaleOffset = 8 * 512;
    private const long MinPairOffset = ScaleOffset + 512;
    private const long DminOffset = MinPairOffset + 256;
    private const long DOffset = DminOffset + 64;

    [ThreadStatic]
    private static byte[]? t_group;

    /// <summary>Whether this path runs for a product of <paramref name="tokens"/> tokens at <paramref name="isa"/>.</summary>
    public static bool Covers(QuantIsa isa, int tokens) => isa == QuantIsa.Avx512 && tokens >= QuantDispatch.KQuantInterleavedMinTokens;

    /// <summary>Once per product on the calling thread: the activation data the kernel reads.</summary>
    public static void Prepare(Q8Activations act) => act.PrepareMinSums();

    /// <summary>y[t, r] for r in [r0, r1), t in [0, tokens). w: (N, rowBytes) Q4_K blocks; y: (T, N).</summary>
    public static void Run(byte* w, long rowBytes, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        long groupBytes = nb * SuperBytes;
        byte* g = PinnedScratch.Get(ref t_group, groupBytes);
        float* partial = stackalloc float[GroupRows];
        var tok = stackalloc Q8Row[TileTokens];
        var sums = stackalloc nint[TileTokens];
        float* scratch = stackalloc float[GroupRows];
        for (int g0 = r0; g0 < r1; g0 += GroupRows)
        {
            int rows = Math.Min(GroupRows, r1 - g0);
            byte* wg = w + g0 * rowBytes;
            for (int s = 0; s < 8; s++)
            {
                Q4_0Interleaved.Repack<Q4KPlane>(wg, rowBytes, nb, rows, g + s * 512L, SuperBytes, scratch, BlockBytes, s + 1);
            }
            RepackScales(wg, rowBytes, nb, rows, g);
            for (int t0 = 0; t0 < tokens; t0 += TileTokens)
            {
                int tt = Math.Min(TileTokens, tokens - t0);
                for (int j = 0; j < TileTokens; j++)
                {
                    int t = t0 + Math.Min(j, tt - 1); // a short tile repeats its last token (not stored)
                    tok[j] = act.Row(t);
                    sums[j] = (nint)act.MinSums(t);
                }
                Tile(g, nb, tok, (int**)sums, y + (long)t0 * n + g0, n, rows, tt, partial);
            }
        }
    }

    /// <summary>Per super-block of the group: sc (both int16 halves), the m pairs, dmin and d of each row (missing rows repeat the last).</summary>
    private static void RepackScales(byte* w, long rowBytes, int nb, int rows, byte* g)
    {
        for (int b = 0; b < nb; b++)
        {
            byte* sb = g + b * SuperBytes;
            int* sc = (int*)(sb + ScaleOffset), mins = (int*)(sb + MinPairOffset);
            float* dmin = (float*)(sb + DminOffset), d = (float*)(sb + DOffset);
            for (int r = 0; r < GroupRows; r++)
            {
                byte* blk = w + Math.Min(r, rows - 1) * rowBytes + (long)b * BlockBytes;
                var packed = new ReadOnlySpan<byte>(blk + 4, 12);
                for (int s = 0; s < 8; s++)
                {
                    int scale = BlockDequantizer.ScaleMinK4(s, packed).Scale;
                    sc[s * GroupRows + r] = scale | (scale << 16);
                }
                for (int i = 0; i < 4; i++)
                {
                    mins[i * GroupRows + r] = BlockDequantizer.ScaleMinK4(2 * i, packed).Min | (BlockDequantizer.ScaleMinK4(2 * i + 1, packed).Min << 16);
                }
                dmin[r] = QuantDot.Half(blk + 2);
                d[r] = QuantDot.Half(blk);
            }
        }
    }

    /// <summary>16 rows x 8 tokens over all super-blocks; stores the first <paramref name="rows"/> rows of the first <paramref name="tokens"/> tokens.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile(byte* g, int nb, Q8Row* tok, int** sums, float* y, int n, int rows, int tokens, float* partial)
    {
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default, c6 = default, c7 = default;
        sbyte* x0 = tok[0].Q, x1 = tok[1].Q, x2 = tok[2].Q, x3 = tok[3].Q, x4 = tok[4].Q, x5 = tok[5].Q, x6 = tok[6].Q, x7 = tok[7].Q;
        for (int b = 0; b < nb; b++)
        {
            byte* gb = g + b * SuperBytes;
            Vector512<int> i0 = default, i1 = default, i2 = default, i3 = default, i4 = default, i5 = default, i6 = default, i7 = default;
            for (int s = 0; s < 8; s++)
            {
                var blk = new Q8_0Interleaved.Block(gb + s * 512);
                var sc = Vector512.Load((short*)(gb + 8 * 512 + s * 64));
                long xo = 256L * b + 32 * s;
                i0 += Avx512BW.MultiplyAddAdjacent(Sum(blk, x0 + xo), sc);
                i1 += Avx512BW.MultiplyAddAdjacent(Sum(blk, x1 + xo), sc);
                i2 += Avx512BW.MultiplyAddAdjacent(Sum(blk, x2 + xo), sc);
                i3 += Avx512BW.MultiplyAddAdjacent(Sum(blk, x3 + xo), sc);
                i4 += Avx512BW.MultiplyAddAdjacent(Sum(blk, x4 + xo), sc);
                i5 += Avx512BW.MultiplyAddAdjacent(Sum(blk, x5 + xo), sc);
                i6 += Avx512BW.MultiplyAddAdjacent(Sum(blk, x6 + xo), sc);
                i7 += Avx512BW.MultiplyAddAdjacent(Sum(blk, x7 + xo), sc);
            }
            var d = Vector512.Load((float*)(gb + DOffset));
            var dmin = Vector512.Load((float*)(gb + DminOffset));
            var m = new MinPairs(gb + MinPairOffset);
            c0 = Finish(c0, i0, d, dmin, m, tok[0].D[b], sums[0] + 8L * b);
            c1 = Finish(c1, i1, d, dmin, m, tok[1].D[b], sums[1] + 8L * b);
            c2 = Finish(c2, i2, d, dmin, m, tok[2].D[b], sums[2] + 8L * b);
            c3 = Finish(c3, i3, d, dmin, m, tok[3].D[b], sums[3] + 8L * b);
            c4 = Finish(c4, i4, d, dmin, m, tok[4].D[b], sums[4] + 8L * b);
            c5 = Finish(c5, i5, d, dmin, m, tok[5].D[b], sums[5] + 8L * b);
            c6 = Finish(c6, i6, d, dmin, m, tok[6].D[b], sums[6] + 8L * b);
            c7 = Finish(c7, i7, d, dmin, m, tok[7].D[b], sums[7] + 8L * b);
        }
        Q4_0Interleaved.StoreTile(tokens, y, n, rows, partial, c0, c1, c2, c3, c4, c5, c6, c7);
    }

    /// <summary>The int16 sums of one sub-block's plane with the token's 32 activations at <paramref name="x"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<short> Sum(Q8_0Interleaved.Block blk, sbyte* x) =>
        blk.Sum(Vector512.Create(*(int*)x).AsSByte(), Vector512.Create(*(int*)(x + 4)).AsSByte(),
            Vector512.Create(*(int*)(x + 8)).AsSByte(), Vector512.Create(*(int*)(x + 12)).AsSByte(),
            Vector512.Create(*(int*)(x + 16)).AsSByte(), Vector512.Create(*(int*)(x + 20)).AsSByte(),
            Vector512.Create(*(int*)(x + 24)).AsSByte(), Vector512.Create(*(int*)(x + 28)).AsSByte());

    /// <summary>
    /// acc = fma(d, float(isum) d_x, acc), then acc = fma(-dmin, float(msum) d_x, acc) with msum = sum_s m[s] S[s]
    /// (minSums: the token's <see cref="Q8Activations.PrepareMinSums"/> values of this super-block).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Finish(Vector512<float> acc, Vector512<int> isum, Vector512<float> d, Vector512<float> dmin, MinPairs m, float dx, int* minSums)
    {
        acc = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(isum) * Vector512.Create(dx), acc);
        var msum = m.Sum(minSums);
        return Avx512F.FusedMultiplyAddNegated(dmin, Avx512F.ConvertToVector512Single(msum) * Vector512.Create(dx), acc);
    }

    /// <summary>
    /// The scalar twin: the same per-(row, token) sequence in plain arithmetic (exact integer super-block sums, then the
    /// fused multiply-adds of <see cref="Finish"/>), so tests can demand bit-for-bit equality.
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
                    var packed = new ReadOnlySpan<byte>(blk + 4, 12);
                    float dmin = QuantDot.HalfScalar(blk + 2);
                    int isum = 0, msum = 0;
                    for (int s = 0; s < 8; s++)
                    {
                        var (scale, min) = BlockDequantizer.ScaleMinK4(s, packed);
                        int dot = 0, sum = 0;
                        for (int l = 0; l < 32; l++)
                        {
                            int x = a.Q[256L * b + 32 * s + l];
                            dot += ((blk[16 + 32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0F) * x;
                            sum += x;
                        }
                        isum += scale * dot;
                        msum += min * sum;
                    }
                    acc = MathF.FusedMultiplyAdd(QuantDot.HalfScalar(blk), isum * a.D[b], acc);
                    acc = MathF.FusedMultiplyAdd(-dmin, msum * a.D[b], acc);
                }
                y[(long)t * n + r] = acc;
            }
        }
    }
}

/// <summary>
/// A super-block's min pairs for 16 rows: vector i (0..3) holds (m[2i], m[2i + 1]) of each row as two int16 halves;
/// <see cref="Sum"/> gives msum = sum_s m[s] S[s] per row from a token's <see cref="Q8Activations.PrepareMinSums"/>
/// values (the pairs at int32 4..7): 4 vpmaddwd, exact.
/// </summary>
internal readonly unsafe struct MinPairs
{
    private readonly Vector512<short> _p0, _p1, _p2, _p3;

    /// <summary>The pairs stored as (4, 16) int32 at <paramref name="p"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public MinPairs(byte* p)
        : this(Vector512.Load((short*)p), Vector512.Load((short*)(p + 64)), Vector512.Load((short*)(p + 128)), Vector512.Load((short*)(p + 192)))
    {
    }

    /// <summary>The pairs from registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public MinPairs(Vector512<short> p0, Vector512<short> p1, Vector512<short> p2, Vector512<short> p3)
    {
        _p0 = p0;
        _p1 = p1;
        _p2 = p2;
        _p3 = p3;
    }

    /// <summary>Writes the pairs as (4, 16) int32 at <paramref name="p"/> (what the first constructor reads).</summary>
    public void Store(byte* p)
    {
        _p0.Store((short*)p);
        _p1.Store((short*)(p + 64));
        _p2.Store((short*)(p + 128));
        _p3.Store((short*)(p + 192));
    }

    /// <summary>Per row: sum over s of m[s] S[s] (minSums: one token's 8 values of one super-block).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector512<int> Sum(int* minSums) =>
        Avx512BW.MultiplyAddAdjacent(_p0, Vector512.Create(minSums[4]).AsInt16())
        + Avx512BW.MultiplyAddAdjacent(_p1, Vector512.Create(minSums[5]).AsInt16())
        + (Avx512BW.MultiplyAddAdjacent(_p2, Vector512.Create(minSums[6]).AsInt16())
        + Avx512BW.MultiplyAddAdjacent(_p3, Vector512.Create(minSums[7]).AsInt16()));
}

/// <summary>Q4_K: plane p (1..8) is sub-block s = p - 1: the low (s even) or high (s odd) nibbles of qs[32 (s / 2) ..], in value order.</summary>
internal readonly unsafe struct Q4KPlane : IPlane
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Unpack(byte* blk, int plane)
    {
        int s = plane - 1;
        var q = Vector256.Load(blk + 16 + 32 * (s / 2));
        return (s % 2 == 0 ? q : Vector256.ShiftRightLogical(q.AsUInt32(), 4).AsByte()) & Vector256.Create((byte)0x0F);
    }
}
