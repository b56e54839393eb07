using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Model;

/// <summary>
/// The prefill query tile of <see cref="AttendTile"/> with queries in vector lanes (512-bit vectors, or 256-bit ones with
/// AVX2 + FMA; Dh a multiple of 64): the same online-softmax recurrence over the same key tiles, laid out so that no
/// small per-query call remains. The blocks below are W = <see cref="ILanes{TSelf}.Width"/> floats wide: 64 with
/// 512-bit vectors (<see cref="Lanes64"/>, 4 vectors), 16 with 256-bit ones (<see cref="Lanes16"/>, 2 vectors, so that a
/// block's 8 accumulators, its loads and a broadcast fit AVX2's 16 registers).
/// <para>
/// The item's Qn = (I1 - I0) * G queries (query qi = row I0 + qi / G, head g * G + qi % G) are transposed once per item
/// into qt (Dh, Qp), Qp = Qn rounded up to 16 (padding columns zero). Per key tile of n keys, copied as rows
/// kb (n, Dh) and vb (n, Dh):
/// <list type="number">
/// <item>S (n, Qp) = kb qt, blocks of 4 keys x W queries (each qt load feeds 4 keys, each key value is a broadcast):
/// row j of S holds every query's score of key k0 + j, so the softmax below runs down the rows in vectors of 8
/// queries;</item>
/// <item>S *= scale; where key k0 + j is outside query qi's causal / window range, S[j, qi] = -inf (only in tiles that
/// reach a row's diagonal or window edge);</item>
/// <item>per query: m_new = max(m, max_j S[j, qi]); S[j, qi] = exp(S[j, qi] - m_new) (one Exp over the whole block);
/// l = l exp(m - m_new) + sum_j S[j, qi];</item>
/// <item>o[qi] = o[qi] exp(m - m_new) + sum_j S[j, qi] vb[j], blocks of 4 queries x W columns of o (each vb load feeds
/// 4 queries).</item>
/// </list>
/// A query with no key of the tile in range keeps m (m_new = m; where m is still -inf the subtraction uses 0, so its
/// weights are exp(-inf) = 0 and l, o stay 0).
/// </para>
/// <para>
/// Worked example (G = 4, rows 16..31 of a pass at P = 0, key tile 64): Qn = 64, Qp = 64; the item visits the single
/// tile of keys 0..31 (n = 32); query qi = 4 * 3 + 2 (row 19, head g * 4 + 2) has range 0..19, so S[20..31, 14] = -inf.
/// With a window W = 8 the tile starts at key 16 - 8 + 1 = 9 and the same query's range is 12..19.
/// </para>
/// Letters: n = keys of the tile, Qn = queries of the item, Qp = Qn padded to 16, Dh = head width.
/// </summary>
public sealed partial class Transformer
{
    /// <summary>Per-thread buffers of the wide tile: qt (Dh, Qp), kb and vb (KeyTile, Dh), S (KeyTile, Qp), m, l (Qp), o (Qp, Dh), ranges (2, Qp).</summary>
    private sealed class WideTileBuffers
    {
        public float[] Qt = [], Keys = [], Values = [], Scores = [], Max = [], Sum = [], Out = [], Alpha = [], Lo = [], Hi = [];

        public void Ensure(int qp, int dh)
        {
            if (Qt.Length < qp * dh)
            {
                Qt = new float[qp * dh];
                Out = new float[qp * dh];
                Scores = new float[KeyTile * qp];
                Max = new float[qp];
                Sum = new float[qp];
                Alpha = new float[qp];
                Lo = new float[qp];
                Hi = new float[qp];
            }
            if (Keys.Length < KeyTile * dh)
            {
                Keys = new float[KeyTile * dh];
                Values = new float[KeyTile * dh];
            }
        }
    }

    [ThreadStatic]
    private static WideTileBuffers? t_wide;

    /// <summary>
    /// Whether <see cref="AttendTileWide{TL}"/> runs this model's prefill tiles: 512-bit vectors or AVX2 + FMA, and Dh a
    /// multiple of 64.
    /// </summary>
    private bool WideTiles => (Vector512.IsHardwareAccelerated || (Avx2.IsSupported && Fma.IsSupported)) && _headDim % 64 == 0 && UseWideTiles;

    /// <summary>
    /// Whether prefill tiles put queries in vector lanes where the machine has 512-bit vectors or AVX2 + FMA and Dh is a
    /// multiple of 64 (default); false keeps the portable tile, which scores one query at a time (tests and benchmarks
    /// compare the two).
    /// </summary>
    public bool UseWideTiles { get; init; } = true;

    /// <summary>
    /// s.Att rows RowBase + [I0, I1), heads g * G .. g * G + G - 1: <see cref="AttendTile"/>'s result with queries in
    /// vector lanes (class summary). s.Q: (T, Hq * Dh); s.K, s.V: (T, Hkv * Dh) pass rows; the cache holds positions below P.
    /// </summary>
    private void AttendTileWide(int l, in KvSource src, TileItem item, Scratch s)
    {
        if (Vector512.IsHardwareAccelerated)
        {
            AttendTileWide<Lanes64>(l, src, item, s);
        }
        else
        {
            AttendTileWide<Lanes16>(l, src, item, s);
        }
    }

    /// <summary><see cref="AttendTileWide(int, in KvSource, TileItem, Scratch)"/> in blocks of <typeparamref name="TL"/>.</summary>
    private unsafe void AttendTileWide<TL>(int l, in KvSource src, TileItem item, Scratch s)
        where TL : struct, ILanes<TL>
    {
        int group = _group, dh = _headDim, kvOffset = item.G * dh;
        int p = src.P, rb = src.RowBase;
        int qn = (item.I1 - item.I0) * group, qp = (qn + 15) & ~15;
        var buf = t_wide ??= new WideTileBuffers();
        buf.Ensure(qp, dh);
        int first = p + item.I0, last = p + item.I1 - 1;
        int lo = _window is { } w ? Math.Max(0, first - w + 1) : 0;
        fixed (float* qt = buf.Qt)
        fixed (float* kb = buf.Keys)
        fixed (float* vb = buf.Values)
        fixed (float* sc = buf.Scores)
        fixed (float* mx = buf.Max)
        fixed (float* sm = buf.Sum)
        fixed (float* al = buf.Alpha)
        fixed (float* o = buf.Out)
        fixed (float* rlo = buf.Lo)
        fixed (float* rhi = buf.Hi)
        fixed (float* q = s.Q)
        {
            // qt (Dh, Qp): column qi = query qi; padding columns are zero and never in range (hi = -1).
            new Span<float>(qt, qp * dh).Clear();
            for (int qi = 0; qi < qp; qi++)
            {
                mx[qi] = float.NegativeInfinity;
                sm[qi] = 0;
                rlo[qi] = 0;
                rhi[qi] = -1;
            }
            for (int qi = 0; qi < qn; qi++)
            {
                int i = item.I0 + qi / group, h = item.G * group + qi % group, pos = p + i;
                float* qrow = q + (long)(rb + i) * _qDim + h * dh;
                for (int c = 0; c < dh; c++)
                {
                    qt[c * qp + qi] = qrow[c];
                }
                rhi[qi] = pos;
                rlo[qi] = _window is { } win ? Math.Max(0, pos - win + 1) : 0;
            }
            new Span<float>(o, qp * dh).Clear();
            for (int k0 = lo; k0 <= last; k0 += KeyTile)
            {
                int k1 = Math.Min(last + 1, k0 + KeyTile), n = k1 - k0; // keys [k0, k1)
                for (int j = 0; j < n; j++)
                {
                    int pos = k0 + j;
                    // Cached F16 rows are widened while copied into the tile.
                    src.Key(l, pos, s.K, _kvDim).Slice(kvOffset, dh).CopyTo(new Span<float>(kb + j * dh, dh));
                    src.Value(l, pos, s.V, _kvDim).Slice(kvOffset, dh).CopyTo(new Span<float>(vb + j * dh, dh));
                }
                // Rows n .. n4 - 1 of kb hold an earlier tile's keys (or zeros): their scores are computed and never read.
                int n4 = (n + 3) & ~3;
                WideScores<TL>(kb, n4, dh, qt, qp, sc);
                bool masked = k1 - 1 > first || (_window is { } ww && k0 < last - ww + 1); // some row's range ends or starts inside the tile
                WideSoftmax(sc, n, qp, k0, masked, rlo, rhi, mx, sm, al);
                WideValues<TL>(sc, vb, n, qp, dh, al, o);
            }
            for (int qi = 0; qi < qn; qi++)
            {
                int i = item.I0 + qi / group, h = item.G * group + qi % group;
                TensorPrimitives.Multiply(new ReadOnlySpan<float>(o + qi * dh, dh), 1f / sm[qi], s.Att.AsSpan((rb + i) * _qDim + h * dh, dh));
            }
        }
    }

    /// <summary>
    /// S (n4, Qp) = kb (n4, Dh) qt (Dh, Qp), n4 a multiple of 4, Qp of 16: blocks of 4 keys x W queries (the last queries
    /// of a Qp that is not a multiple of W 8 at a time).
    /// </summary>
    private static unsafe void WideScores<TL>(float* kb, int n4, int dh, float* qt, int qp, float* sc)
        where TL : struct, ILanes<TL>
    {
        for (int j = 0; j < n4; j += 4)
        {
            float* k0 = kb + j * dh, k1 = k0 + dh, k2 = k1 + dh, k3 = k2 + dh;
            int v = 0;
            for (; v + TL.Width <= qp; v += TL.Width)
            {
                Scores4<TL>(k0, k1, k2, k3, dh, qt + v, qp, sc + j * qp + v);
            }
            for (; v < qp; v += 8)
            {
                Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (int c = 0; c < dh; c++)
                {
                    var x = Vector256.Load(qt + c * qp + v);
                    a0 = Vector256.FusedMultiplyAdd(x, Vector256.Create(k0[c]), a0);
                    a1 = Vector256.FusedMultiplyAdd(x, Vector256.Create(k1[c]), a1);
                    a2 = Vector256.FusedMultiplyAdd(x, Vector256.Create(k2[c]), a2);
                    a3 = Vector256.FusedMultiplyAdd(x, Vector256.Create(k3[c]), a3);
                }
                float* d = sc + j * qp + v;
                a0.Store(d);
                a1.Store(d + qp);
                a2.Store(d + 2 * qp);
                a3.Store(d + 3 * qp);
            }
        }
    }

    /// <summary>S rows j..j+3 (keys k0..k3, Dh each) x W queries (qt columns from <paramref name="qt"/>, rows Qp apart) into d (rows Qp apart).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Scores4<TL>(float* k0, float* k1, float* k2, float* k3, int dh, float* qt, int qp, float* d)
        where TL : struct, ILanes<TL>
    {
        TL s0 = default, s1 = default, s2 = default, s3 = default;
        for (int c = 0; c < dh; c++)
        {
            var x = TL.Load(qt + c * qp);
            s0 = s0.Add(x, k0[c]);
            s1 = s1.Add(x, k1[c]);
            s2 = s2.Add(x, k2[c]);
            s3 = s3.Add(x, k3[c]);
        }
        s0.Store(d);
        s1.Store(d + qp);
        s2.Store(d + 2 * qp);
        s3.Store(d + 3 * qp);
    }

    /// <summary>W consecutive floats in registers: W queries' scores of one key, or W columns of one query's o.</summary>
    private unsafe interface ILanes<TSelf>
        where TSelf : struct, ILanes<TSelf>
    {
        /// <summary>W: floats in one block.</summary>
        static abstract int Width { get; }

        static abstract TSelf Load(float* p);

        /// <summary>this + x w (w broadcast).</summary>
        TSelf Add(TSelf x, float w);

        /// <summary>this x w (w broadcast).</summary>
        TSelf Scale(float w);

        void Store(float* p);
    }

    /// <summary>64 consecutive floats in 4 512-bit vectors.</summary>
    private readonly unsafe struct Lanes64(Vector512<float> v0, Vector512<float> v1, Vector512<float> v2, Vector512<float> v3) : ILanes<Lanes64>
    {
        private readonly Vector512<float> _v0 = v0, _v1 = v1, _v2 = v2, _v3 = v3;

        public static int Width => 64;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Lanes64 Load(float* p) => new(Vector512.Load(p), Vector512.Load(p + 16), Vector512.Load(p + 32), Vector512.Load(p + 48));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Lanes64 Add(Lanes64 x, float w)
        {
            var b = Vector512.Create(w);
            return new(Vector512.FusedMultiplyAdd(x._v0, b, _v0), Vector512.FusedMultiplyAdd(x._v1, b, _v1),
                Vector512.FusedMultiplyAdd(x._v2, b, _v2), Vector512.FusedMultiplyAdd(x._v3, b, _v3));
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Lanes64 Scale(float w)
        {
            var b = Vector512.Create(w);
            return new(_v0 * b, _v1 * b, _v2 * b, _v3 * b);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Store(float* p)
        {
            _v0.Store(p);
            _v1.Store(p + 16);
            _v2.Store(p + 32);
            _v3.Store(p + 48);
        }
    }

    /// <summary>16 consecutive floats in 2 256-bit vectors.</summary>
    private readonly unsafe struct Lanes16(Vector256<float> v0, Vector256<float> v1) : ILanes<Lanes16>
    {
        private readonly Vector256<float> _v0 = v0, _v1 = v1;

        public static int Width => 16;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Lanes16 Load(float* p) => new(Vector256.Load(p), Vector256.Load(p + 8));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Lanes16 Add(Lanes16 x, float w)
        {
            var b = Vector256.Create(w);
            return new(Vector256.FusedMultiplyAdd(x._v0, b, _v0), Vector256.FusedMultiplyAdd(x._v1, b, _v1));
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Lanes16 Scale(float w)
        {
            var b = Vector256.Create(w);
            return new(_v0 * b, _v1 * b);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Store(float* p)
        {
            _v0.Store(p);
            _v1.Store(p + 8);
        }
    }

    /// <summary>
    /// Steps 2 and 3 of the class summary on S (n, Qp): scale, mask (when <paramref name="masked"/>) keys k0 + j outside
    /// [lo, hi] of each query, new maxima m, weights exp(S - m), l rescaled and increased; alpha = exp(m_old - m_new)
    /// per query for the values step.
    /// </summary>
    private unsafe void WideSoftmax(float* sc, int n, int qp, int k0, bool masked, float* lo, float* hi, float* mx, float* sm, float* alpha)
    {
        var scale = Vector256.Create(_scale);
        var ninf = Vector256.Create(float.NegativeInfinity);
        for (int v = 0; v < qp; v += 8)
        {
            var m = Vector256.Load(mx + v);
            var vlo = Vector256.Load(lo + v);
            var vhi = Vector256.Load(hi + v);
            var mt = ninf;
            for (int j = 0; j < n; j++)
            {
                float* r = sc + j * qp + v;
                var x = Vector256.Load(r) * scale;
                if (masked)
                {
                    var key = Vector256.Create((float)(k0 + j));
                    x = Vector256.ConditionalSelect(Vector256.GreaterThan(key, vhi) | Vector256.LessThan(key, vlo), ninf, x);
                }
                x.Store(r);
                mt = Vector256.Max(mt, x);
            }
            var mNew = Vector256.Max(m, mt);
            var safe = Vector256.ConditionalSelect(Vector256.Equals(mNew, ninf), Vector256<float>.Zero, mNew);
            (m - safe).Store(alpha + v);
            mNew.Store(mx + v);
            for (int j = 0; j < n; j++)
            {
                float* r = sc + j * qp + v;
                (Vector256.Load(r) - safe).Store(r);
            }
        }
        TensorPrimitives.Exp(new ReadOnlySpan<float>(sc, n * qp), new Span<float>(sc, n * qp));
        TensorPrimitives.Exp(new ReadOnlySpan<float>(alpha, qp), new Span<float>(alpha, qp));
        for (int v = 0; v < qp; v += 8)
        {
            var sum = Vector256<float>.Zero;
            for (int j = 0; j < n; j++)
            {
                sum += Vector256.Load(sc + j * qp + v);
            }
            Vector256.FusedMultiplyAdd(Vector256.Load(sm + v), Vector256.Load(alpha + v), sum).Store(sm + v);
        }
    }

    /// <summary>
    /// Step 4 of the class summary: o (Qp, Dh) = o alpha + S^T vb over the tile's n keys, blocks of 4 queries x W
    /// columns of o (the last queries of a Qp that is not a multiple of 4 do not occur: Qp is a multiple of 16).
    /// </summary>
    private static unsafe void WideValues<TL>(float* sc, float* vb, int n, int qp, int dh, float* alpha, float* o)
        where TL : struct, ILanes<TL>
    {
        for (int qi = 0; qi < qp; qi += 4)
        {
            for (int c = 0; c < dh; c += TL.Width)
            {
                float* o0 = o + qi * dh + c, o1 = o0 + dh, o2 = o1 + dh, o3 = o2 + dh;
                var a0 = TL.Load(o0).Scale(alpha[qi]);
                var a1 = TL.Load(o1).Scale(alpha[qi + 1]);
                var a2 = TL.Load(o2).Scale(alpha[qi + 2]);
                var a3 = TL.Load(o3).Scale(alpha[qi + 3]);
                for (int j = 0; j < n; j++)
                {
                    var v = TL.Load(vb + j * dh + c);
                    float* w = sc + j * qp + qi;
                    a0 = a0.Add(v, w[0]);
                    a1 = a1.Add(v, w[1]);
                    a2 = a2.Add(v, w[2]);
                    a3 = a3.Add(v, w[3]);
                }
                a0.Store(o0);
                a1.Store(o1);
                a2.Store(o2);
                a3.Store(o3);
            }
        }
    }
}
