using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Numerics.Quant;

/// <summary>
/// AVX-512 prefill for Q8_0 with rows in vector lanes, as <see cref="Q4_0Interleaved"/>. vpmaddubsw needs one unsigned
/// operand and int8 x int8 pairs would saturate its int16 sums, so each weight is stored as u = w + 128 (0..255) split
/// into two nibble planes, u = 16 hi + lo: per block and token, 8 vpmaddubsw per plane add up in int16 (16 products of
/// at most 15 * 127: below 32767), p = 16 (hi sums) + (lo sums) is the exact sum of u x, and
/// acc += d_w (p d_x - 128 d_x sum(x)) for the 16 rows at once (w x = u x - 128 x).
/// <para>Repacked layout of a group: plane lo (nb, 8, 16) int32, plane hi likewise, then scales (nb, 16) floats; see
/// <see cref="Q4_0Interleaved"/> for the int32 order.</para>
/// Letters: N = rows, K = cols, T = tokens, nb = K / 32.
/// </summary>
internal static unsafe class Q8_0Interleaved
{
    /// <summary>Tokens per tile (accumulators in registers, with the 16 weight vectors of a block).</summary>
    private const int TileTokens = 6;

    private const int BlockBytes = 34;

    [ThreadStatic]
    private static byte[]? t_group;

    /// <summary>Whether this path runs for a product of <paramref name="tokens"/> tokens at <paramref name="isa"/>.</summary>
    public static bool Covers(QuantIsa isa, int tokens) => isa == QuantIsa.Avx512 && tokens >= QuantDispatch.Q8_0InterleavedMinTokens;

    /// <summary>Once per product on the calling thread: the activation data the kernel reads.</summary>
    public static void Prepare(Q8Activations act) => act.PrepareOffsetSums(128);

    /// <summary>y[t, r] for r in [r0, r1), t in [0, tokens). w: (N, rowBytes) Q8_0 blocks; y: (T, N).</summary>
    public static void Run(byte* w, long rowBytes, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        long groupBytes = (long)nb * (2 * 512 + 64);
        byte* lo = PinnedScratch.Get(ref t_group, groupBytes);
        byte* hi = lo + (long)nb * 512;
        float* gs = (float*)(hi + (long)nb * 512);
        float* partial = stackalloc float[Q4_0Interleaved.GroupRows];
        var tok = stackalloc Q8Row[TileTokens];
        var ds = stackalloc nint[TileTokens];
        for (int g0 = r0; g0 < r1; g0 += Q4_0Interleaved.GroupRows)
        {
            int rows = Math.Min(Q4_0Interleaved.GroupRows, r1 - g0);
            // One transpose of u = w + 128 for both nibble planes (plane -1, split on store).
            Q4_0Interleaved.Repack<Q8_0Plane>(w + g0 * rowBytes, rowBytes, nb, rows, lo, 512, gs, BlockBytes, -1, hi);
            var ahead = new Prefetcher(g0 + Q4_0Interleaved.GroupRows < r1 ? w + (g0 + Q4_0Interleaved.GroupRows) * rowBytes : null, rowBytes,
                Math.Min(Q4_0Interleaved.GroupRows, r1 - g0 - Q4_0Interleaved.GroupRows), nb); // the next group, during the first tile
            for (int t0 = 0; t0 < tokens; t0 += TileTokens)
            {
                var pf = t0 == 0 ? ahead : default;
                int tt = Math.Min(TileTokens, tokens - t0);
                for (int j = 0; j < TileTokens; j++)
                {
                    int t = t0 + Math.Min(j, tt - 1); // a short tile repeats its last token (not stored)
                    tok[j] = act.Row(t);
                    ds[j] = (nint)act.OffsetSums(t);
                }
                float* yt = y + (long)t0 * n + g0;
                switch (tt)
                {
                    case 1: Tile<Tokens1>(lo, hi, gs, nb, tok, (float**)ds, yt, n, rows, partial, pf); break;
                    case 2: Tile<Tokens2>(lo, hi, gs, nb, tok, (float**)ds, yt, n, rows, partial, pf); break;
                    case 3: Tile<Tokens3>(lo, hi, gs, nb, tok, (float**)ds, yt, n, rows, partial, pf); break;
                    case 4: Tile<Tokens4>(lo, hi, gs, nb, tok, (float**)ds, yt, n, rows, partial, pf); break;
                    case 5: Tile<Tokens5>(lo, hi, gs, nb, tok, (float**)ds, yt, n, rows, partial, pf); break;
                    default: Tile<Tokens6>(lo, hi, gs, nb, tok, (float**)ds, yt, n, rows, partial, pf); break;
                }
            }
        }
    }

    /// <summary>16 rows x TN.Value (1..6) tokens over all blocks (see <see cref="ITokenCount"/>); stores the first <paramref name="rows"/> rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TN>(byte* lo, byte* hi, float* gs, int nb, Q8Row* tok, float** ds, float* y, int n, int rows, float* partial, Prefetcher ahead)
        where TN : struct, ITokenCount
    {
        int tokens = TN.Value;
        int line = 0;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default;
        sbyte* x0 = tok[0].Q, x1 = tok[1].Q, x2 = tok[2].Q, x3 = tok[3].Q, x4 = tok[4].Q, x5 = tok[5].Q;
        for (int b = 0; b < nb; b++)
        {
            var l = new Block(lo + (long)b * 512);
            var h = new Block(hi + (long)b * 512);
            var dw = Vector512.Load(gs + (long)b * Q4_0Interleaved.GroupRows);
            long xo = 32L * b;
            line = ahead.Step(line);
            c0 = Token(c0, l, h, dw, x0 + xo, tok[0].D[b], ds[0][b]);
            if (TN.Value > 1)
            {
                c1 = Token(c1, l, h, dw, x1 + xo, tok[1].D[b], ds[1][b]);
            }
            if (TN.Value > 2)
            {
                c2 = Token(c2, l, h, dw, x2 + xo, tok[2].D[b], ds[2][b]);
            }
            if (TN.Value > 3)
            {
                c3 = Token(c3, l, h, dw, x3 + xo, tok[3].D[b], ds[3][b]);
            }
            if (TN.Value > 4)
            {
                c4 = Token(c4, l, h, dw, x4 + xo, tok[4].D[b], ds[4][b]);
            }
            if (TN.Value > 5)
            {
                c5 = Token(c5, l, h, dw, x5 + xo, tok[5].D[b], ds[5][b]);
            }
        }
        Q4_0Interleaved.StoreTile(TN.Value, y, n, rows, partial, c0, c1, c2, c3, c4, c5);
    }

    /// <summary>One token's block for the 16 rows: acc + d_w (p d_x - 128 d_x sum x), p = sum u x exactly.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Token(Vector512<float> acc, Block l, Block h, Vector512<float> dw, sbyte* x, float dx, float ds128)
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
        return Avx512F.FusedMultiplyAdd(dw, Avx512F.FusedMultiplySubtract(Avx512F.ConvertToVector512Single(p), Vector512.Create(dx), Vector512.Create(ds128)), acc);
    }

    /// <summary>The 8 repacked vectors of one plane of one block.</summary>
    internal readonly struct Block
    {
        private readonly Vector512<byte> _w0, _w1, _w2, _w3, _w4, _w5, _w6, _w7;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Block(byte* p)
        {
            _w0 = Vector512.Load(p);
            _w1 = Vector512.Load(p + 64);
            _w2 = Vector512.Load(p + 128);
            _w3 = Vector512.Load(p + 192);
            _w4 = Vector512.Load(p + 256);
            _w5 = Vector512.Load(p + 320);
            _w6 = Vector512.Load(p + 384);
            _w7 = Vector512.Load(p + 448);
        }

        /// <summary>int16 sums over the block of plane x activations (2 per int32 lane, 16 products each).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector512<short> Sum(Vector512<sbyte> x0, Vector512<sbyte> x1, Vector512<sbyte> x2, Vector512<sbyte> x3,
            Vector512<sbyte> x4, Vector512<sbyte> x5, Vector512<sbyte> x6, Vector512<sbyte> x7) =>
            Avx512BW.MultiplyAddAdjacent(_w0, x0) + Avx512BW.MultiplyAddAdjacent(_w1, x1)
            + Avx512BW.MultiplyAddAdjacent(_w2, x2) + Avx512BW.MultiplyAddAdjacent(_w3, x3)
            + Avx512BW.MultiplyAddAdjacent(_w4, x4) + Avx512BW.MultiplyAddAdjacent(_w5, x5)
            + Avx512BW.MultiplyAddAdjacent(_w6, x6) + Avx512BW.MultiplyAddAdjacent(_w7, x7);
    }

    /// <summary>
    /// The scalar twin: the same per-(row, token) sequence in plain arithmetic (exact integer block sums of w x,
    /// then acc = fma(d_w, fms(p + 128 sum x, d_x, 128 d_x sum x), acc)), so tests can demand bit-for-bit equality.
    /// </summary>
    public static void RunScalar(byte* w, long rowBytes, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        act.PrepareOffsetSums(128);
        for (int t = 0; t < tokens; t++)
        {
            var a = act.Row(t);
            float* ds = act.OffsetSums(t);
            for (int r = r0; r < r1; r++)
            {
                byte* row = w + r * rowBytes;
                float acc = 0;
                for (int b = 0; b < nb; b++)
                {
                    byte* blk = row + (long)b * BlockBytes;
                    sbyte* q = (sbyte*)(blk + 2);
                    sbyte* x = a.Q + 32L * b;
                    int p = 0;
                    for (int j = 0; j < 32; j++)
                    {
                        p += (q[j] + 128) * x[j];
                    }
                    acc = MathF.FusedMultiplyAdd(QuantDot.HalfScalar(blk), MathF.FusedMultiplyAdd(p, a.D[b], -ds[b]), acc);
                }
                y[(long)t * n + r] = acc;
            }
        }
    }
}
