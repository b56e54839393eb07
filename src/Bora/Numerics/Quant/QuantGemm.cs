using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Numerics.Quant;

/// <summary>
/// Register-blocked products of Q8_0 / Q4_0 weight rows with <see cref="Q8Activations"/> (AVX2 and AVX-512).
/// <para>Prefill: a tile of 4 rows x 4 tokens (AVX-512; 2 x 4 with AVX2) keeps its partial sums in vector
/// registers; each weight block is unpacked once per tile (nibbles to bytes; the f16 scales of a panel's rows are
/// converted once per product) and multiplied with every token's activation block; one horizontal sum per
/// (row, token) at the end. Decode and token tails: 4 rows share each activation block load
/// (<see cref="Gemv512{TOp}"/>), the 4 rows being one sequential stream with software prefetch of the next 4.</para>
/// <para>Every kernel runs the same per-(row, token) sequence (<see cref="Step512{TOp}"/> over block pairs, then
/// <see cref="Step{TOp}"/> for an odd last block) over the blocks in order, so a (row, token) result does not
/// depend on the tile it was in, the token count or the thread count.</para>
/// <para>Arithmetic per block of 32 and (row, token), with p the 8 int32 lanes of the integer dot product (each
/// the sum of 4 products): acc += d_w (p d_x - c), where c = 0 for Q8_0 and c = d_x sum(x) for Q4_0 (the
/// weights are the unsigned nibbles q = w + 8, and the 8 lanes subtract 8 c = 8 d_x sum(x) in all). AVX-512
/// handles a block pair per vector: lanes 0..7 block b, lanes 8..15 block b + 1.</para>
/// <para>Cache order (<see cref="Rows{TOp}"/>): a panel of <see cref="PanelRows"/> rows (about 150 KB of Q4_0
/// at K = 4096) stays in L2 while all tokens stream past it tile by tile.</para>
/// Letters: N = rows, K = cols, T = tokens, nb = K / 32 blocks per row.
/// </summary>
internal static unsafe class QuantGemm
{
    /// <summary>Rows per AVX2 prefill tile (x 4 tokens).</summary>
    public const int TileRows = 2;

    /// <summary>Rows per AVX-512 prefill tile (x 4 tokens).</summary>
    public const int TileRows512 = 4;

    /// <summary>Rows per decode step.</summary>
    public const int GemvRows = 4;

    /// <summary>Rows per cache panel.</summary>
    public const int PanelRows = 64;

    [ThreadStatic]
    private static float[]? t_scales;

    /// <summary>
    /// Whether these kernels cover a product of <paramref name="tokens"/> tokens of <paramref name="type"/> at
    /// <paramref name="isa"/>; otherwise the row-by-row <see cref="QuantDot"/> path runs. Q8_0 / Q4_0 from AVX2 on; Q4_K
    /// and Q6_K for the interleaved prefill (<see cref="Q4KInterleaved"/>, <see cref="Q6KInterleaved"/>) and the AVX-512 row kernels (<see cref="KQuantRows"/>).
    /// </summary>
    public static bool Covers(DType type, QuantIsa isa, int tokens) =>
        (type is DType.Q8_0 or DType.Q4_0 && isa >= QuantIsa.Avx2) || (type == DType.Q4_K && Q4KInterleaved.Covers(isa, tokens))
        || (type == DType.Q6_K && Q6KInterleaved.Covers(isa, tokens)) || KQuantRows.Covers(type, isa, tokens);

    /// <summary>Once per product, on the calling thread, after quantizing: the per-token data the 512-bit kernels read.</summary>
    public static void Prepare(DType type, QuantIsa isa, Q8Activations act)
    {
        if (type == DType.Q4_0 && Q4_0Interleaved.Covers(isa, act.Tokens))
        {
            Q4_0Interleaved.Prepare(act);
        }
        else if (type == DType.Q8_0 && Q8_0Interleaved.Covers(isa, act.Tokens))
        {
            Q8_0Interleaved.Prepare(act);
        }
        else if (type == DType.Q4_K && Q4KInterleaved.Covers(isa, act.Tokens))
        {
            Q4KInterleaved.Prepare(act);
        }
        else if (type == DType.Q6_K && Q6KInterleaved.Covers(isa, act.Tokens))
        {
            Q6KInterleaved.Prepare(act);
        }
        else if (isa == QuantIsa.Avx512 && type is DType.Q8_0 or DType.Q4_0)
        {
            act.PreparePairs(negated: type == DType.Q8_0);
        }
    }

    /// <summary>
    /// y[t, r] = (row r of w) . (token t of act) for r in [r0, r1) and t in [0, tokens), after <see cref="Prepare"/>.
    /// w: (N, rowBytes) blocks; y: (T, N) floats.
    /// </summary>
    public static void Run(DType type, QuantIsa isa, byte* w, long rowBytes, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        bool wide = isa == QuantIsa.Avx512;
        if (type == DType.Q4_0 && Q4_0Interleaved.Covers(isa, tokens))
        {
            Q4_0Interleaved.Run(w, rowBytes, nb, n, act, tokens, y, r0, r1);
        }
        else if (type == DType.Q8_0 && Q8_0Interleaved.Covers(isa, tokens))
        {
            Q8_0Interleaved.Run(w, rowBytes, nb, n, act, tokens, y, r0, r1);
        }
        else if (type == DType.Q4_K && Q4KInterleaved.Covers(isa, tokens))
        {
            Q4KInterleaved.Run(w, rowBytes, nb, n, act, tokens, y, r0, r1);
        }
        else if (type == DType.Q6_K && Q6KInterleaved.Covers(isa, tokens))
        {
            Q6KInterleaved.Run(w, rowBytes, nb, n, act, tokens, y, r0, r1);
        }
        else if (type is DType.Q4_K or DType.Q6_K)
        {
            KQuantRows.Run(type, w, rowBytes, nb, n, act, tokens, y, r0, r1);
        }
        else if (type == DType.Q8_0)
        {
            Rows<Q8_0Gemm>(wide, w, rowBytes, nb, n, act, tokens, y, r0, r1);
        }
        else
        {
            Rows<Q4_0Gemm>(wide, w, rowBytes, nb, n, act, tokens, y, r0, r1);
        }
    }

    /// <summary>
    /// Panels of rows; inside a panel, tiles of 4 tokens sweep it (with AVX2 a tail of 3 is padded to 4), then each
    /// remaining token runs as a decode step.
    /// </summary>
    private static void Rows<TOp>(bool wide, byte* w, long rowBytes, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
        where TOp : struct, IGemmBlock
    {
        int tiled = wide ? tokens / 4 * 4 : tokens % 4 == 3 ? tokens + 1 : tokens / 4 * 4;
        bool quad = wide && TOp.HasOffset && QuadCovers; // Q4_0 decode steps: 4 blocks per step (GemvQ4Quad)
        float* scales = tiled > 0 ? PanelScales(nb) : null; // (PanelRows, nb) d_w of the panel's rows
        for (int p0 = r0; p0 < r1; p0 += PanelRows)
        {
            int p1 = Math.Min(r1, p0 + PanelRows);
            if (tiled > 0)
            {
                for (int r = p0; r < p1; r++)
                {
                    byte* wr = w + r * rowBytes;
                    float* sr = scales + (long)(r - p0) * nb;
                    for (int b = 0; b < nb; b++)
                    {
                        sr[b] = QuantDot.Half(wr + (long)b * TOp.Bytes);
                    }
                }
            }
            int t = 0;
            for (; t < tiled; t += 4)
            {
                if (wide)
                {
                    var tokenPanel = new TokenPanel(act, t);
                    for (int r = p0; r < p1; r += TileRows512)
                    {
                        int rr = Math.Min(TileRows512, p1 - r);
                        byte* w0 = w + r * rowBytes;
                        float* sw0 = scales + (long)(r - p0) * nb;
                        Tile512<TOp>(w0, rr > 1 ? w0 + rowBytes : w0, rr > 2 ? w0 + 2 * rowBytes : w0, rr > 3 ? w0 + 3 * rowBytes : w0,
                            sw0, rr > 1 ? sw0 + nb : sw0, rr > 2 ? sw0 + 2 * nb : sw0, rr > 3 ? sw0 + 3 * nb : sw0, tokenPanel, nb, y + (long)t * n + r, n, rr);
                    }
                    continue;
                }
                var (a0, a1, a2, a3) = (act.Row(t), act.Row(Math.Min(t + 1, tokens - 1)), act.Row(Math.Min(t + 2, tokens - 1)), act.Row(Math.Min(t + 3, tokens - 1)));
                for (int r = p0; r < p1; r += TileRows)
                {
                    int rr = Math.Min(TileRows, p1 - r);
                    byte* w0 = w + r * rowBytes;
                    float* sw0 = scales + (long)(r - p0) * nb;
                    Tile<TOp>(w0, rr > 1 ? w0 + rowBytes : w0, sw0, rr > 1 ? sw0 + nb : sw0, a0, a1, a2, a3, nb, y + (long)t * n + r, n, rr, Math.Min(4, tokens - t));
                }
            }
            for (t = Math.Max(t, tiled); t < tokens; t++)
            {
                var tokenPanel = new TokenPanel(act, t);
                var a = act.Row(t);
                for (int r = p0; r < p1; r += GemvRows)
                {
                    int rr = Math.Min(GemvRows, p1 - r);
                    byte* w0 = w + r * rowBytes;
                    byte* w1 = rr > 1 ? w0 + rowBytes : w0, w2 = rr > 2 ? w0 + 2 * rowBytes : w0, w3 = rr > 3 ? w0 + 3 * rowBytes : w0;
                    if (quad)
                    {
                        GemvQ4Quad(w0, w1, w2, w3, a, nb, y + (long)t * n + r, rr);
                    }
                    else if (wide)
                    {
                        Gemv512<TOp>(w0, w1, w2, w3, tokenPanel, nb, y + (long)t * n + r, rr);
                    }
                    else
                    {
                        Gemv<TOp>(w0, w1, w2, w3, a, nb, y + (long)t * n + r, rr);
                    }
                }
            }
        }
    }

    /// <summary>
    /// AVX2: 2 rows (w0, w1; scales sw0, sw1) x 4 tokens (a0..a3); writes y[j * n + i] for row i &lt; <paramref name="rows"/>,
    /// token j &lt; <paramref name="toks"/> (a missing row or token repeats a present one and is not written).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TOp>(byte* w0, byte* w1, float* sw0, float* sw1, Q8Row a0, Q8Row a1, Q8Row a2, Q8Row a3, int nb, float* y, int n, int rows, int toks)
        where TOp : struct, IGemmBlock
    {
        Vector256<float> c00 = default, c01 = default, c02 = default, c03 = default;
        Vector256<float> c10 = default, c11 = default, c12 = default, c13 = default;
        for (int b = 0; b < nb; b++)
        {
            var d0 = Vector256.Create(sw0[b]);
            var d1 = Vector256.Create(sw1[b]);
            TOp.Unpack(w0 + (long)b * TOp.Bytes, out var u0, out var s0);
            TOp.Unpack(w1 + (long)b * TOp.Bytes, out var u1, out var s1);
            c00 = Step<TOp>(c00, u0, s0, d0, a0, b);
            c10 = Step<TOp>(c10, u1, s1, d1, a0, b);
            c01 = Step<TOp>(c01, u0, s0, d0, a1, b);
            c11 = Step<TOp>(c11, u1, s1, d1, a1, b);
            c02 = Step<TOp>(c02, u0, s0, d0, a2, b);
            c12 = Step<TOp>(c12, u1, s1, d1, a2, b);
            c03 = Step<TOp>(c03, u0, s0, d0, a3, b);
            c13 = Step<TOp>(c13, u1, s1, d1, a3, b);
        }
        Store(y, n, rows, toks, 0, c00, c10);
        Store(y, n, rows, toks, 1, c01, c11);
        Store(y, n, rows, toks, 2, c02, c12);
        Store(y, n, rows, toks, 3, c03, c13);
    }

    /// <summary>y[j n] and, for 2 rows, y[j n + 1]: the horizontal sums of token j's accumulators (if j &lt; toks).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(float* y, int n, int rows, int toks, int j, Vector256<float> row0, Vector256<float> row1)
    {
        if (j < toks)
        {
            y[(long)j * n] = Vector256.Sum(row0);
            if (rows > 1)
            {
                y[(long)j * n + 1] = Vector256.Sum(row1);
            }
        }
    }

    /// <summary>AVX2: 4 rows (w0..w3) x 1 token; writes y[i] for i &lt; <paramref name="rows"/> (missing rows repeat w0 and are not written).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Gemv<TOp>(byte* w0, byte* w1, byte* w2, byte* w3, Q8Row a, int nb, float* y, int rows)
        where TOp : struct, IGemmBlock
    {
        Vector256<float> c0 = default, c1 = default, c2 = default, c3 = default;
        for (int b = 0; b < nb; b++)
        {
            long o = (long)b * TOp.Bytes;
            TOp.Unpack(w0 + o, out var u0, out var s0);
            c0 = Step<TOp>(c0, u0, s0, Vector256.Create(QuantDot.Half(w0 + o)), a, b);
            TOp.Unpack(w1 + o, out var u1, out var s1);
            c1 = Step<TOp>(c1, u1, s1, Vector256.Create(QuantDot.Half(w1 + o)), a, b);
            TOp.Unpack(w2 + o, out var u2, out var s2);
            c2 = Step<TOp>(c2, u2, s2, Vector256.Create(QuantDot.Half(w2 + o)), a, b);
            TOp.Unpack(w3 + o, out var u3, out var s3);
            c3 = Step<TOp>(c3, u3, s3, Vector256.Create(QuantDot.Half(w3 + o)), a, b);
        }
        y[0] = Vector256.Sum(c0);
        if (rows > 1)
        {
            y[1] = Vector256.Sum(c1);
        }
        if (rows > 2)
        {
            y[2] = Vector256.Sum(c2);
        }
        if (rows > 3)
        {
            y[3] = Vector256.Sum(c3);
        }
    }

    /// <summary>acc + d_w (p d_x - c) for block b of one (row, token); see the class comment.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Step<TOp>(Vector256<float> acc, Vector256<byte> u, Vector256<sbyte> s, Vector256<float> dw, Q8Row a, int b)
        where TOp : struct, IGemmBlock
    {
        var p = Avx.ConvertToVector256Single(TOp.Int(u, s, Vector256.Load(a.Q + 32L * b)));
        var dx = Vector256.Create(a.D[b]);
        var t = TOp.HasOffset ? Fma.MultiplySubtract(p, dx, Vector256.Create(a.DS[b])) : p * dx;
        return Fma.MultiplyAdd(dw, t, acc);
    }

    /// <summary>
    /// AVX-512: 4 rows (w0..w3; converted scales sw0..sw3) x 4 consecutive tokens of <paramref name="tp"/>; writes
    /// y[j * n + i] for row i &lt; <paramref name="rows"/> (missing rows repeat w0 and are not written), every token j.
    /// 16 accumulators + 4 unpacked rows (+ 4 sign masks for Q8_0) fill the 32 vector registers without spills
    /// (measured better than 2 x 8: each token block load serves 4 rows).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile512<TOp>(byte* w0, byte* w1, byte* w2, byte* w3, float* sw0, float* sw1, float* sw2, float* sw3, TokenPanel tp, int nb, float* y, int n, int rows)
        where TOp : struct, IGemmBlock
    {
        Vector512<float> c00 = default, c01 = default, c02 = default, c03 = default;
        Vector512<float> c10 = default, c11 = default, c12 = default, c13 = default;
        Vector512<float> c20 = default, c21 = default, c22 = default, c23 = default;
        Vector512<float> c30 = default, c31 = default, c32 = default, c33 = default;
        var pairIndex = PairIndex;
        long qs = tp.QStride, ps = tp.PStride;
        int b = 0;
        for (; b + 2 <= nb; b += 2)
        {
            long o = (long)b * TOp.Bytes;
            var d0 = PairLanes(sw0 + b, pairIndex);
            var d1 = PairLanes(sw1 + b, pairIndex);
            var d2 = PairLanes(sw2 + b, pairIndex);
            var d3 = PairLanes(sw3 + b, pairIndex);
            TOp.Unpack512(w0 + o, out var u0, out var s0);
            TOp.Unpack512(w1 + o, out var u1, out var s1);
            TOp.Unpack512(w2 + o, out var u2, out var s2);
            TOp.Unpack512(w3 + o, out var u3, out var s3);
            sbyte* x = tp.Q + 32L * b;
            float* p = tp.P + 16L * b;
            c00 = Step512<TOp>(c00, u0, s0, d0, x, p);
            c10 = Step512<TOp>(c10, u1, s1, d1, x, p);
            c20 = Step512<TOp>(c20, u2, s2, d2, x, p);
            c30 = Step512<TOp>(c30, u3, s3, d3, x, p);
            x += qs;
            p += ps;
            c01 = Step512<TOp>(c01, u0, s0, d0, x, p);
            c11 = Step512<TOp>(c11, u1, s1, d1, x, p);
            c21 = Step512<TOp>(c21, u2, s2, d2, x, p);
            c31 = Step512<TOp>(c31, u3, s3, d3, x, p);
            x += qs;
            p += ps;
            c02 = Step512<TOp>(c02, u0, s0, d0, x, p);
            c12 = Step512<TOp>(c12, u1, s1, d1, x, p);
            c22 = Step512<TOp>(c22, u2, s2, d2, x, p);
            c32 = Step512<TOp>(c32, u3, s3, d3, x, p);
            x += qs;
            p += ps;
            c03 = Step512<TOp>(c03, u0, s0, d0, x, p);
            c13 = Step512<TOp>(c13, u1, s1, d1, x, p);
            c23 = Step512<TOp>(c23, u2, s2, d2, x, p);
            c33 = Step512<TOp>(c33, u3, s3, d3, x, p);
        }
        Store512(y, n, rows, 0, c00, c10);
        Store512(y, n, rows, 1, c01, c11);
        Store512(y, n, rows, 2, c02, c12);
        Store512(y, n, rows, 3, c03, c13);
        if (rows > 2)
        {
            Store512(y + 2, n, rows - 2, 0, c20, c30);
            Store512(y + 2, n, rows - 2, 1, c21, c31);
            Store512(y + 2, n, rows - 2, 2, c22, c32);
            Store512(y + 2, n, rows - 2, 3, c23, c33);
        }
        if (b < nb)
        {
            OddBlock<TOp>(w0, w1, sw0, sw1, tp, 4, b, y, n, Math.Min(rows, 2));
            if (rows > 2)
            {
                OddBlock<TOp>(w2, w3, sw2, sw3, tp, 4, b, y + 2, n, rows - 2);
            }
        }
    }

    /// <summary>y[j n] and, for 2 rows, y[j n + 1]: the horizontal sums of token j's accumulators.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store512(float* y, int n, int rows, int j, Vector512<float> row0, Vector512<float> row1)
    {
        y[(long)j * n] = Vector512.Sum(row0);
        if (rows > 1)
        {
            y[(long)j * n + 1] = Vector512.Sum(row1);
        }
    }

    /// <summary>
    /// Adds the odd last block b (256-bit <see cref="Step{TOp}"/>, one horizontal sum) of 2 rows x <paramref name="tokens"/>
    /// tokens to y (the scales from sw0 / sw1, or converted from the blocks).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void OddBlock<TOp>(byte* w0, byte* w1, float* sw0, float* sw1, TokenPanel tp, int tokens, int b, float* y, int n, int rows, bool scalesFromBlocks = false)
        where TOp : struct, IGemmBlock
    {
        var d0 = Vector256.Create(scalesFromBlocks ? QuantDot.Half(w0 + (long)b * TOp.Bytes) : sw0[b]);
        var d1 = Vector256.Create(scalesFromBlocks ? QuantDot.Half(w1 + (long)b * TOp.Bytes) : sw1[b]);
        TOp.Unpack(w0 + (long)b * TOp.Bytes, out var u0, out var s0);
        TOp.Unpack(w1 + (long)b * TOp.Bytes, out var u1, out var s1);
        for (int j = 0; j < tokens; j++)
        {
            var a = tp.Row(j);
            y[(long)j * n] += Vector256.Sum(Step<TOp>(default, u0, s0, d0, a, b));
            if (rows > 1)
            {
                y[(long)j * n + 1] += Vector256.Sum(Step<TOp>(default, u1, s1, d1, a, b));
            }
        }
    }

    /// <summary>
    /// AVX-512: 4 rows (w0..w3) x 1 token (token 0 of <paramref name="tp"/>), the sequence of <see cref="Tile512{TOp}"/>;
    /// writes y[i] for i &lt; <paramref name="rows"/> (missing rows repeat w0 and are not written).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Gemv512<TOp>(byte* w0, byte* w1, byte* w2, byte* w3, TokenPanel tp, int nb, float* y, int rows)
        where TOp : struct, IGemmBlock
    {
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        var pairIndex = PairIndex;
        // Prefetch distance: the next group of rows at the same column (the group's rows are contiguous, so the
        // kernel reads one sequential stream overall, 4 rows wide).
        long ahead = 4L * (w1 - w0);
        var i1 = pairIndex + Vector512.Create(2);
        var i2 = pairIndex + Vector512.Create(4);
        var i3 = pairIndex + Vector512.Create(6);
        int b = 0;
        for (; b + 2 <= nb; b += 2)
        {
            long o = (long)b * TOp.Bytes;
            if (ahead != 0)
            {
                Sse.Prefetch1(w0 + o + ahead);
                Sse.Prefetch1(w1 + o + ahead);
                Sse.Prefetch1(w2 + o + ahead);
                Sse.Prefetch1(w3 + o + ahead);
            }
            sbyte* x = tp.Q + 32L * b;
            float* p = tp.P + 16L * b;
            // The 8 f16 scales (rows 0..3, blocks b and b + 1) converted at once, then spread to each row's lane pattern.
            int bb = TOp.Bytes;
            var h = Vector256.Create(
                Vector128.Create(*(ushort*)(w0 + o), *(ushort*)(w0 + o + bb), *(ushort*)(w1 + o), *(ushort*)(w1 + o + bb)),
                Vector128.Create(*(ushort*)(w2 + o), *(ushort*)(w2 + o + bb), *(ushort*)(w3 + o), *(ushort*)(w3 + o + bb)));
            var dw = Halves(h.AsInt32()).ToVector512Unsafe();
            TOp.Unpack512(w0 + o, out var u0, out var s0);
            c0 = Step512<TOp>(c0, u0, s0, Avx512F.PermuteVar16x32(dw, pairIndex), x, p);
            TOp.Unpack512(w1 + o, out var u1, out var s1);
            c1 = Step512<TOp>(c1, u1, s1, Avx512F.PermuteVar16x32(dw, i1), x, p);
            TOp.Unpack512(w2 + o, out var u2, out var s2);
            c2 = Step512<TOp>(c2, u2, s2, Avx512F.PermuteVar16x32(dw, i2), x, p);
            TOp.Unpack512(w3 + o, out var u3, out var s3);
            c3 = Step512<TOp>(c3, u3, s3, Avx512F.PermuteVar16x32(dw, i3), x, p);
        }
        y[0] = Vector512.Sum(c0);
        if (rows > 1)
        {
            y[1] = Vector512.Sum(c1);
        }
        if (rows > 2)
        {
            y[2] = Vector512.Sum(c2);
        }
        if (rows > 3)
        {
            y[3] = Vector512.Sum(c3);
        }
        if (b < nb)
        {
            // The odd last block as in Tile512: rows (0, 1), then (2, 3).
            OddBlock<TOp>(w0, w1, null, null, tp, 1, b, y, 0, rows, scalesFromBlocks: true);
            if (rows > 2)
            {
                OddBlock<TOp>(w2, w3, null, null, tp, 1, b, y + 2, 0, rows - 2, scalesFromBlocks: true);
            }
        }
    }

    /// <summary>Whether <see cref="GemvQ4Quad"/> can run (AVX-512 with VBMI byte permutes).</summary>
    internal static bool QuadCovers => Avx512Vbmi.IsSupported && QuantDispatch.Q4_0QuadDecode;

    /// <summary>
    /// AVX-512 VBMI Q4_0 decode: 4 rows (w0..w3) x 1 token, 4 blocks per step; writes y[i] for i &lt; <paramref name="rows"/>
    /// (missing rows repeat w0 and are not written). Per step and row: two 64-byte loads of the row's 4 blocks (bytes
    /// [0, 64) and [8, 72): nothing past the 72 bytes is read), one vpermt2b gathering the 4 x 16 quant bytes, one shift and
    /// two ands giving the low nibbles (values 0..15 of each block) and the high ones (16..31); the token's 128 activation
    /// bytes are permuted once per step into the same two orders and serve the 4 rows. Then 2 vpmaddubsw + 1 vpaddw + 1
    /// vpmaddwd give 16 int32 lanes, lane i the exact sum of 8 products of block i / 4; the 16 f16 scales of the 4 rows x 4
    /// blocks are converted at once. Per lane: acc = fma(d_w, fms(p, d_x, 2 d_x sum x), acc) (4 lanes per block subtract
    /// 8 d_x sum x in all, as in the class comment). Blocks past the last multiple of 4 run the 256-bit
    /// <see cref="Step{TOp}"/> (one horizontal sum each). About 4.5 bytes of weights per vector instruction against about
    /// 2 for <see cref="Gemv512{TOp}"/>.
    /// <para>Example of the quant gather: output byte 37 is block 37 / 16 = 2, quant byte 37 % 16 = 5, i.e. byte
    /// 18 * 2 + 2 + 5 = 43 of the 4 blocks, index 43 of the first load; output byte 60 (block 3, byte 12) is byte 68, index
    /// 64 + 68 - 8 = 124 (the second load, which starts at byte 8).</para>
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void GemvQ4Quad(byte* w0, byte* w1, byte* w2, byte* w3, Q8Row a, int nb, float* y, int rows)
    {
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        var qIndex = s_quadQuantIndex;
        var xLo = s_quadLowIndex;
        var xHi = s_quadHighIndex;
        var hIndex = s_quadScaleIndex;
        var lane4 = QuadLaneIndex;
        var nibble = Vector512.Create((byte)0x0F);
        long ahead = 4L * (w1 - w0);
        int b = 0;
        for (; b + 4 <= nb; b += 4)
        {
            long o = (long)b * 18;
            if (ahead != 0)
            {
                Sse.Prefetch1(w0 + o + ahead);
                Sse.Prefetch1(w1 + o + ahead);
                Sse.Prefetch1(w2 + o + ahead);
                Sse.Prefetch1(w3 + o + ahead);
            }
            // The token: 128 bytes of 4 blocks as (low halves, high halves), and d_x, 2 d_x sum x spread 4 lanes per block.
            sbyte* xp = a.Q + 32L * b;
            var xa = Vector512.Load(xp);
            var xb = Vector512.Load(xp + 64);
            var xl = Avx512Vbmi.PermuteVar64x8x2(xa, xLo, xb);
            var xh = Avx512Vbmi.PermuteVar64x8x2(xa, xHi, xb);
            var dx = Avx512F.PermuteVar16x32(Vector128.Load(a.D + b).ToVector256Unsafe().ToVector512Unsafe(), lane4);
            var ds = Avx512F.PermuteVar16x32(Vector128.Load(a.DS + b).ToVector256Unsafe().ToVector512Unsafe(), lane4);
            ds += ds;
            var l0 = Vector512.Load(w0 + o);
            var l1 = Vector512.Load(w1 + o);
            var l2 = Vector512.Load(w2 + o);
            var l3 = Vector512.Load(w3 + o);
            // The 16 scales (row r, block j in lane 4r + j), converted at once, then spread per row.
            var h01 = Avx512BW.PermuteVar32x16x2(l0.AsUInt16(), hIndex, l1.AsUInt16());
            var h23 = Avx512BW.PermuteVar32x16x2(l2.AsUInt16(), hIndex, l3.AsUInt16());
            var dw = Halves512(Vector512.ConditionalSelect(QuadLowHalf, h01.AsInt32(), h23.AsInt32()));
            c0 = QuadRow(c0, l0, Vector512.Load(w0 + o + 8), qIndex, nibble, xl, xh, dx, ds, Avx512F.PermuteVar16x32(dw, lane4));
            c1 = QuadRow(c1, l1, Vector512.Load(w1 + o + 8), qIndex, nibble, xl, xh, dx, ds, Avx512F.PermuteVar16x32(dw, lane4 + Vector512.Create(4)));
            c2 = QuadRow(c2, l2, Vector512.Load(w2 + o + 8), qIndex, nibble, xl, xh, dx, ds, Avx512F.PermuteVar16x32(dw, lane4 + Vector512.Create(8)));
            c3 = QuadRow(c3, l3, Vector512.Load(w3 + o + 8), qIndex, nibble, xl, xh, dx, ds, Avx512F.PermuteVar16x32(dw, lane4 + Vector512.Create(12)));
        }
        float y0 = Vector512.Sum(c0), y1 = Vector512.Sum(c1), y2 = Vector512.Sum(c2), y3 = Vector512.Sum(c3);
        for (; b < nb; b++)
        {
            long o = (long)b * 18;
            y0 += QuadTail(w0 + o, a, b);
            y1 += QuadTail(w1 + o, a, b);
            y2 += QuadTail(w2 + o, a, b);
            y3 += QuadTail(w3 + o, a, b);
        }
        y[0] = y0;
        if (rows > 1)
        {
            y[1] = y1;
        }
        if (rows > 2)
        {
            y[2] = y2;
        }
        if (rows > 3)
        {
            y[3] = y3;
        }
    }

    /// <summary>One row's step of <see cref="GemvQ4Quad"/>: lo / hi the row's 4 blocks from bytes 0 and 8, dw its scales per lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> QuadRow(Vector512<float> acc, Vector512<byte> lo, Vector512<byte> hi, Vector512<byte> qIndex, Vector512<byte> nibble,
        Vector512<sbyte> xl, Vector512<sbyte> xh, Vector512<float> dx, Vector512<float> ds, Vector512<float> dw)
    {
        var q = Avx512Vbmi.PermuteVar64x8x2(lo, qIndex, hi);
        var ql = q & nibble;
        var qh = Vector512.ShiftRightLogical(q.AsUInt16(), 4).AsByte() & nibble;
        var h = Avx512BW.MultiplyAddAdjacent(ql, xl) + Avx512BW.MultiplyAddAdjacent(qh, xh); // at most 2 x 2 x 15 x 127 = 7620
        var p = Avx512F.ConvertToVector512Single(Avx512BW.MultiplyAddAdjacent(h, Vector512.Create((short)1)));
        return Avx512F.FusedMultiplyAdd(dw, Avx512F.FusedMultiplySubtract(p, dx, ds), acc);
    }

    /// <summary>Block b of one row alone (the blocks past the last multiple of 4 in <see cref="GemvQ4Quad"/>).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static float QuadTail(byte* blk, Q8Row a, int b)
    {
        Q4_0Gemm.Unpack(blk, out var u, out var s);
        return Vector256.Sum(Step<Q4_0Gemm>(default, u, s, Vector256.Create(QuantDot.Half(blk)), a, b));
    }

    private static readonly Vector512<byte> s_quadQuantIndex = QuadQuantIndex();
    private static readonly Vector512<sbyte> s_quadLowIndex = QuadActivationIndex(0), s_quadHighIndex = QuadActivationIndex(16);
    private static readonly Vector512<ushort> s_quadScaleIndex = QuadScaleIndex();

    /// <summary>Output byte i = quant byte i % 16 of block i / 16 of 4 consecutive Q4_0 blocks loaded from bytes 0 and 8 (see <see cref="GemvQ4Quad"/>).</summary>
    private static Vector512<byte> QuadQuantIndex()
    {
        Span<byte> idx = stackalloc byte[64];
        for (int i = 0; i < 64; i++)
        {
            int src = 18 * (i / 16) + 2 + i % 16;
            idx[i] = (byte)(src < 64 ? src : 64 + src - 8);
        }
        return Vector512.Create<byte>(idx);
    }

    /// <summary>Output byte i = activation 32 (i / 16) + <paramref name="half"/> + i % 16 of 4 consecutive blocks (128 bytes).</summary>
    private static Vector512<sbyte> QuadActivationIndex(int half)
    {
        Span<sbyte> idx = stackalloc sbyte[64];
        for (int i = 0; i < 64; i++)
        {
            idx[i] = (sbyte)(32 * (i / 16) + half + i % 16);
        }
        return Vector512.Create<sbyte>(idx);
    }

    /// <summary>
    /// Words of the two rows' first loads giving, in the low word of int32 lane 4r + j (r = 0, 1; j = 0..3), the f16 scale of
    /// block j of row r (word 9 j of the first row's load, 32 + 9 j of the second's); lanes 8..15 repeat lanes 0..7.
    /// </summary>
    private static Vector512<ushort> QuadScaleIndex()
    {
        Span<ushort> idx = stackalloc ushort[32];
        for (int lane = 0; lane < 16; lane++)
        {
            int l = lane % 8;
            idx[2 * lane] = (ushort)((l / 4) * 32 + 9 * (l % 4));
            idx[2 * lane + 1] = idx[2 * lane];
        }
        return Vector512.Create<ushort>(idx);
    }

    /// <summary>Lane i -> i / 4.</summary>
    private static Vector512<int> QuadLaneIndex => Vector512.Create(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);

    /// <summary>Lanes 0..7 all ones.</summary>
    private static Vector512<int> QuadLowHalf => Vector512.Create(-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0);

    /// <summary><see cref="Halves"/> on 16 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Halves512(Vector512<int> h)
    {
        var em = Vector512.ShiftLeft(h & Vector512.Create(0x7FFF), 13);
        var small = Vector512.LessThan(em, Vector512.Create(1 << 23));
        var f = (em + Vector512.Create(112 << 23) - Vector512.ShiftLeft(small, 23)).AsSingle() - (small & Vector512.Create(113 << 23)).AsSingle();
        return (f.AsInt32() | Vector512.ShiftLeft(h & Vector512.Create(0x8000), 16)).AsSingle();
    }

    /// <summary>
    /// The 512-bit step: acc + d_w (p d_x - c) for the block pair whose 64 quants are at <paramref name="x"/> and whose
    /// <see cref="Q8Activations.Pairs"/> data is at <paramref name="pair"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Step512<TOp>(Vector512<float> acc, Vector512<byte> u, Vector512<sbyte> s, Vector512<float> dw, sbyte* x, float* pair)
        where TOp : struct, IGemmBlock
    {
        var dx = Vector512.Load(pair);
        Vector512<float> t;
        if (TOp.HasOffset)
        {
            var p = Avx512F.ConvertToVector512Single(TOp.Int512(u, s, Vector512.Load(x), default));
            t = Avx512F.FusedMultiplySubtract(p, dx, Vector512.Load(pair + 16));
        }
        else
        {
            var p = Avx512F.ConvertToVector512Single(TOp.Int512(u, s, Vector512.Load(x), Vector512.Load((sbyte*)(pair + 16))));
            t = p * dx;
        }
        return Avx512F.FusedMultiplyAdd(dw, t, acc);
    }

    /// <summary>Lane i of a block pair belongs to block b + i / 8: permutation indices 0 x 8, 1 x 8.</summary>
    private static Vector512<int> PairIndex => Vector512.Create(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);

    /// <summary>p[0] in lanes 0..7 and p[1] in lanes 8..15 (a block pair's lane pattern).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> PairLanes(float* p, Vector512<int> pairIndex) =>
        Avx512F.PermuteVar16x32(Vector128.CreateScalarUnsafe(*(double*)p).AsSingle().ToVector256Unsafe().ToVector512Unsafe(), pairIndex);

    /// <summary>
    /// The IEEE halves in the low 16 bits of each lane as floats, exactly as <see cref="QuantDot.Half"/>, and with no
    /// float operation on a subnormal: the exponent and fraction shifted into a float's place (em), the exponent rebased
    /// by 127 - 15 = 112; a lane whose half exponent is 0 (a subnormal half, or zero) gets 113 instead, which reads
    /// 2^-14 (1 + f / 1024), and then loses 2^-14, leaving f 2^-24 exactly; last the sign. The earlier form (em as a
    /// float times 2^112, a float subnormal for a subnormal half) cost a microcode assist per vector on the AMD EPYC
    /// (Zen 3) where this was measured: the synthesized 7B's Q4_K super-block scales are subnormal halves, and in
    /// a profile of its prefill that one multiply held 11 % of the Q4_K tile's samples.
    /// Example: 0x0001 (2^-24) -> em 0x2000, small -> 0x38802000 = 2^-14 (1 + 2^-10), less 2^-14 = 2^-24.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Halves(Vector256<int> h)
    {
        var em = Vector256.ShiftLeft(h & Vector256.Create(0x7FFF), 13);
        var small = Vector256.LessThan(em, Vector256.Create(1 << 23)); // half exponent 0: all ones
        var f = (em + Vector256.Create(112 << 23) - Vector256.ShiftLeft(small, 23)).AsSingle() - (small & Vector256.Create(113 << 23)).AsSingle();
        return (f.AsInt32() | Vector256.ShiftLeft(h & Vector256.Create(0x8000), 16)).AsSingle();
    }

    /// <summary>A pinned per-thread buffer of <see cref="PanelRows"/> * <paramref name="nb"/> floats (grown, never shrunk).</summary>
    private static float* PanelScales(int nb)
    {
        int need = PanelRows * Math.Max(1, nb);
        if (t_scales is null || t_scales.Length < need)
        {
            t_scales = GC.AllocateUninitializedArray<float>(need, pinned: true);
        }
        return (float*)Unsafe.AsPointer(ref t_scales[0]);
    }

    /// <summary>Consecutive tokens from token <c>t</c> on: their quants (stride K) and pair data (stride <see cref="Q8Activations.PairFloats"/>).</summary>
    private readonly struct TokenPanel
    {
        public readonly sbyte* Q;
        public readonly float* P;
        public readonly long QStride, PStride;
        private readonly Q8Activations _act;
        private readonly int _t;

        public TokenPanel(Q8Activations act, int t)
        {
            var row = act.Row(t);
            Q = row.Q;
            QStride = act.Cols;
            PStride = act.PairFloats;
            P = act.Pairs(t);
            _act = act;
            _t = t;
        }

        /// <summary>Token t + j's rows.</summary>
        public Q8Row Row(int j) => _act.Row(_t + j);
    }

    /// <summary>
    /// The scalar twin of <see cref="Run"/>: the same products row by row with <see cref="QuantDot"/>'s scalar
    /// block arithmetic (exact integer block sums, then scales). Tests compare the two.
    /// </summary>
    public static void RunScalar(DType type, byte* w, long rowBytes, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        for (int t = 0; t < tokens; t++)
        {
            var a = act.Row(t);
            for (int r = r0; r < r1; r++)
            {
                y[(long)t * n + r] = type == DType.Q8_0
                    ? QuantDot.Dot<Q8_0Dot>(QuantIsa.Scalar, w + r * rowBytes, a, nb)
                    : QuantDot.Dot<Q4_0Dot>(QuantIsa.Scalar, w + r * rowBytes, a, nb);
            }
        }
    }
}

/// <summary>One 32-value weight block format for <see cref="QuantGemm"/>: f16 scale at offset 0, then the quants.</summary>
internal unsafe interface IGemmBlock
{
    /// <summary>Bytes per block.</summary>
    static abstract int Bytes { get; }

    /// <summary>Whether the weights are stored as q = w + 8 (see <see cref="QuantGemm"/>).</summary>
    static abstract bool HasOffset { get; }

    /// <summary>The block's 32 quants as the unsigned operand of vpmaddubsw (u) and, where needed, their signs (s).</summary>
    static abstract void Unpack(byte* blk, out Vector256<byte> u, out Vector256<sbyte> s);

    /// <summary>8 int32 lanes summing to the block's integer dot product with activations x (lane i: values 4i..4i+3).</summary>
    static abstract Vector256<int> Int(Vector256<byte> u, Vector256<sbyte> s, Vector256<sbyte> x);

    /// <summary>Blocks b and b + 1 (at blk, blk + Bytes) as 64 quants in value order: (u, s) as in <see cref="Unpack"/>.</summary>
    static abstract void Unpack512(byte* blk, out Vector512<byte> u, out Vector512<sbyte> s);

    /// <summary>16 int32 lanes (lanes 0..7 block b, 8..15 block b + 1) for activations x (and nx = -x where the format needs it).</summary>
    static abstract Vector512<int> Int512(Vector512<byte> u, Vector512<sbyte> s, Vector512<sbyte> x, Vector512<sbyte> nx);
}

/// <summary>Q8_0: u = |q|, s = q; products |q| (x with q's sign) (no saturation: |x| &lt;= 127).</summary>
internal readonly unsafe struct Q8_0Gemm : IGemmBlock
{
    public static int Bytes => 34;

    public static bool HasOffset => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Unpack(byte* blk, out Vector256<byte> u, out Vector256<sbyte> s)
    {
        s = Vector256.Load((sbyte*)(blk + 2));
        u = Avx2.Abs(s);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> Int(Vector256<byte> u, Vector256<sbyte> s, Vector256<sbyte> x) =>
        QuantDot.MulSum(u, Avx2.Sign(x, s));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Unpack512(byte* blk, out Vector512<byte> u, out Vector512<sbyte> s)
    {
        s = QuantDot.Combine(Vector256.Load((sbyte*)(blk + 2)), Vector256.Load((sbyte*)(blk + 34 + 2)));
        u = Vector512.Abs(s).AsByte();
    }

    /// <summary>AVX-512 has no vpsignb: x where q &gt; 0, nx = -x where q &lt; 0 (q = 0 multiplies |q| = 0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<int> Int512(Vector512<byte> u, Vector512<sbyte> s, Vector512<sbyte> x, Vector512<sbyte> nx) =>
        QuantDot.MulSum(u, Vector512.ConditionalSelect(Vector512.LessThan(s, Vector512<sbyte>.Zero), nx, x));
}

/// <summary>Q4_0: u = the 32 nibbles in value order (low nibbles = values 0..15, high = 16..31); no sign operand.</summary>
internal readonly unsafe struct Q4_0Gemm : IGemmBlock
{
    public static int Bytes => 18;

    public static bool HasOffset => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Unpack(byte* blk, out Vector256<byte> u, out Vector256<sbyte> s)
    {
        var qs = Vector128.Load(blk + 2);
        u = Vector256.Create(qs, Vector128.ShiftRightLogical(qs, 4)) & Vector256.Create((byte)0x0F);
        s = default;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<int> Int(Vector256<byte> u, Vector256<sbyte> s, Vector256<sbyte> x) =>
        QuantDot.MulSum(u, x);

    /// <summary>
    /// (qs_b, qs_b+1) and their high nibbles give 128-bit lanes (b lo, b+1 lo, b hi, b+1 hi); lanes (0, 2, 1, 3)
    /// of that put them in value order (b 0..15, b 16..31, b+1 0..15, b+1 16..31).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Unpack512(byte* blk, out Vector512<byte> u, out Vector512<sbyte> s)
    {
        var q2 = Vector256.Create(Vector128.Load(blk + 2), Vector128.Load(blk + 18 + 2));
        var q = QuantDot.Combine(q2, Vector256.ShiftRightLogical(q2.AsUInt32(), 4).AsByte()) & Vector512.Create((byte)0x0F);
        u = Avx512F.Shuffle4x128(q.AsUInt32(), q.AsUInt32(), 0b11_01_10_00).AsByte();
        s = default;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<int> Int512(Vector512<byte> u, Vector512<sbyte> s, Vector512<sbyte> x, Vector512<sbyte> nx) =>
        QuantDot.MulSum(u, x);
}
