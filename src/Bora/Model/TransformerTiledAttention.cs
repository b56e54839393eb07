using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Bora.Numerics;

namespace Bora.Model;

/// <summary>
/// Tiled, online-softmax attention (the FlashAttention recurrence on the CPU), used by <see cref="Forward"/> and
/// <see cref="ForwardBatch"/> when <see cref="TiledAttention"/> is set (the default).
/// <para>
/// A work item is a tile of up to <see cref="QueryTile"/> consecutive query rows of one sequence and one KV head g,
/// with the G = Hq / Hkv query heads that read it (GQA). Keys and values are visited in tiles of
/// <see cref="KeyTile"/> positions: each tile's K and V rows of head g are copied once into a small buffer that stays
/// in L1 / L2 and serve all G * QueryTile queries. Each query keeps a running maximum m, a running sum l of
/// exp(score - m) and an unnormalised output o (Dh); a tile with larger scores rescales l and o by exp(m_old - m_new).
/// At the end o / l is the softmax-weighted sum of the values. No score row longer than a key tile is ever held
/// (the per-query path holds one of all its keys; neither holds a T x T matrix).
/// </para>
/// <para>
/// Worked example (no window, P = 0, rows 0..19, query tile 16, key tile 64): item (rows 0..15, head g) visits the
/// key tile 0..15 only (the causal limit of its last row); row 3 scores keys 0..3 of it. Item (rows 16..19) visits
/// keys 0..19 in one tile. With a window W = 8 the item of rows 16..19 starts at key 16 - 8 + 1 = 9, and row 19
/// scores keys 12..19.
/// </para>
/// Letters: T = pass rows, P = first position of the pass, G = query heads per KV head, Dh = head width.
/// </summary>
public sealed partial class Transformer
{
    /// <summary>Query rows per work item: with G = 4 heads, 64 queries share each K / V tile read.</summary>
    private const int QueryTile = 16;

    /// <summary>Key positions per tile: 64 rows of Dh = 128 floats are 32 KiB each for K and V.</summary>
    private const int KeyTile = 64;

    [ThreadStatic]
    private static TileBuffers? t_tiles;

    /// <summary>
    /// Whether attention uses the tiled online-softmax kernel (default) or the per-query reference kernel, which
    /// scores each query against all its keys, then softmaxes (tests and benchmarks compare the two).
    /// </summary>
    public bool TiledAttention { get; init; } = true;

    /// <summary>Where one sequence's keys and values are: positions below P in its cache, P and later in the pass rows from RowBase.</summary>
    private readonly struct KvSource(KvCache? cache, IPositionalKvCache? paged, int p, int rowBase)
    {
        public int P => p;

        public int RowBase => rowBase;

        public ReadOnlySpan<float> CachedKey(int layer, int position) => cache is not null ? cache.KeyRow(layer, position) : paged!.KeyRow(layer, position);

        public ReadOnlySpan<float> CachedValue(int layer, int position) => cache is not null ? cache.ValueRow(layer, position) : paged!.ValueRow(layer, position);
    }

    /// <summary>One work item of the tiled kernel: pass rows [I0, I1) (relative to the sequence's first row) of sequence Seq, KV head G.</summary>
    private readonly record struct TileItem(int Seq, int I0, int I1, int G);

    /// <summary>Per-thread buffers: K and V tiles (KeyTile, Dh), scores (KeyTile), and per query m, l and o (Dh).</summary>
    private sealed class TileBuffers
    {
        public float[] Keys = [];
        public float[] Values = [];
        public float[] Scores = new float[KeyTile];
        public float[] Max = [];
        public float[] Sum = [];
        public float[] Out = [];

        public void Ensure(int queries, int dh)
        {
            if (Keys.Length < KeyTile * dh)
            {
                Keys = new float[KeyTile * dh];
                Values = new float[KeyTile * dh];
            }
            if (Max.Length < queries)
            {
                Max = new float[queries];
                Sum = new float[queries];
            }
            if (Out.Length < queries * dh)
            {
                Out = new float[queries * dh];
            }
        }
    }

    /// <summary>
    /// scores[j] = q · K[j] for the tile's keys j in [0, cols), with the keys transposed: kt (Dh, KeyTile), column j
    /// = key j. Vectorised along the keys (Dh broadcast multiply-adds of 4 vectors of keys: no horizontal sums).
    /// </summary>
    private static unsafe void TileScores(ReadOnlySpan<float> q, ReadOnlySpan<float> kt, int cols, Span<float> scores)
    {
        int dh = q.Length, vl = Vector<float>.Count, j = 0;
        fixed (float* pk = kt)
        fixed (float* ps = scores)
        {
            for (; j + 4 * vl <= cols; j += 4 * vl)
            {
                Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (int c = 0; c < dh; c++)
                {
                    var qc = new Vector<float>(q[c]);
                    float* row = pk + c * KeyTile + j;
                    a0 = Vector.FusedMultiplyAdd(Vector.Load(row), qc, a0);
                    a1 = Vector.FusedMultiplyAdd(Vector.Load(row + vl), qc, a1);
                    a2 = Vector.FusedMultiplyAdd(Vector.Load(row + 2 * vl), qc, a2);
                    a3 = Vector.FusedMultiplyAdd(Vector.Load(row + 3 * vl), qc, a3);
                }
                a0.Store(ps + j);
                a1.Store(ps + j + vl);
                a2.Store(ps + j + 2 * vl);
                a3.Store(ps + j + 3 * vl);
            }
            for (; j + vl <= cols; j += vl)
            {
                Vector<float> a = default;
                for (int c = 0; c < dh; c++)
                {
                    a = Vector.FusedMultiplyAdd(Vector.Load(pk + c * KeyTile + j), new Vector<float>(q[c]), a);
                }
                a.Store(ps + j);
            }
            for (; j < cols; j++)
            {
                float sum = 0;
                for (int c = 0; c < dh; c++)
                {
                    sum += q[c] * pk[c * KeyTile + j];
                }
                ps[j] = sum;
            }
        }
    }

    /// <summary>
    /// o += sum_j w[j] * values[j] for values (n, Dh) row-major, o (Dh): blocks of 4 vectors of o stay in registers
    /// while all n rows are added.
    /// </summary>
    private static unsafe void WeightedValues(ReadOnlySpan<float> w, ReadOnlySpan<float> values, Span<float> o)
    {
        int n = w.Length, dh = o.Length, vl = Vector<float>.Count, c = 0;
        fixed (float* pv = values)
        fixed (float* po = o)
        {
            for (; c + 4 * vl <= dh; c += 4 * vl)
            {
                var a0 = Vector.Load(po + c);
                var a1 = Vector.Load(po + c + vl);
                var a2 = Vector.Load(po + c + 2 * vl);
                var a3 = Vector.Load(po + c + 3 * vl);
                for (int j = 0; j < n; j++)
                {
                    var wj = new Vector<float>(w[j]);
                    float* row = pv + j * dh + c;
                    a0 = Vector.FusedMultiplyAdd(Vector.Load(row), wj, a0);
                    a1 = Vector.FusedMultiplyAdd(Vector.Load(row + vl), wj, a1);
                    a2 = Vector.FusedMultiplyAdd(Vector.Load(row + 2 * vl), wj, a2);
                    a3 = Vector.FusedMultiplyAdd(Vector.Load(row + 3 * vl), wj, a3);
                }
                a0.Store(po + c);
                a1.Store(po + c + vl);
                a2.Store(po + c + 2 * vl);
                a3.Store(po + c + 3 * vl);
            }
            for (; c + vl <= dh; c += vl)
            {
                var a = Vector.Load(po + c);
                for (int j = 0; j < n; j++)
                {
                    a = Vector.FusedMultiplyAdd(Vector.Load(pv + j * dh + c), new Vector<float>(w[j]), a);
                }
                a.Store(po + c);
            }
            for (; c < dh; c++)
            {
                float sum = po[c];
                for (int j = 0; j < n; j++)
                {
                    sum += w[j] * pv[j * dh + c];
                }
                po[c] = sum;
            }
        }
    }

    /// <summary>Runs the tiled kernel over <paramref name="items"/> (in parallel when the work is large).</summary>
    private void RunTiles(int l, KvSource[] sources, TileItem[] items, int count, long work, Scratch s)
    {
        if (work < ParallelAttentionThreshold || count == 1)
        {
            for (int i = 0; i < count; i++)
            {
                AttendTile(l, sources[items[i].Seq], items[i], s);
            }
            return;
        }
        // The shared worker pool (no per-call Task or closure allocation): the items are claimed one by one, so the
        // longer causal rows at the end of the pass even out between threads.
        (_runLayer, _runSources, _runItems, _runScratch) = (l, sources, items, s);
        try
        {
            NumericsThreads.For(count, _runTile ??= RunTile);
        }
        finally
        {
            (_runSources, _runItems, _runScratch) = (null, null, null);
        }
    }

    /// <summary><see cref="RunTiles"/>' current arguments, read by <see cref="RunTile"/> on the worker threads (calls are serialised by the model's lock).</summary>
    private int _runLayer;
    private KvSource[]? _runSources;
    private TileItem[]? _runItems;
    private Scratch? _runScratch;
    private Action<int>? _runTile;

    /// <summary>Work item i of the current <see cref="RunTiles"/> call.</summary>
    private void RunTile(int i)
    {
        var item = _runItems![i];
        AttendTile(_runLayer, _runSources![item.Seq], item, _runScratch!);
    }

    /// <summary>Adds the work items of one sequence of <paramref name="rows"/> pass rows: query tiles x KV heads.</summary>
    private void AddTiles(ref TileItem[] items, ref int count, int seq, int rows)
    {
        int heads = Config.NKvHeads;
        int needed = count + (rows + QueryTile - 1) / QueryTile * heads;
        if (items.Length < needed)
        {
            Array.Resize(ref items, Math.Max(needed, items.Length * 2));
        }
        for (int i0 = 0; i0 < rows; i0 += QueryTile)
        {
            for (int g = 0; g < heads; g++)
            {
                items[count++] = new TileItem(seq, i0, Math.Min(rows, i0 + QueryTile), g);
            }
        }
    }

    [ThreadStatic]
    private static float[]? t_rowScores;

    /// <summary>
    /// One pass row (a decode step, or the last row of a chunk): s.Att row RowBase + i, heads g * G .. g * G + G - 1,
    /// over its causal (and windowed) keys in one sweep, with no key tiles to transpose: each key row is read once for
    /// the G query heads that share it (scores (G, n), n the row's keys), then one softmax per head and the weighted
    /// sum of the value rows, read once as well. Same arithmetic as the per-query kernel up to float summation order.
    /// Example: P = 520 cached positions, i = 0, no window: keys 0..520 (520 from the pass), n = 521, G = 4 heads.
    /// </summary>
    private void AttendRow(int l, in KvSource src, int i, int g, Scratch s)
    {
        int group = _group, dh = _headDim, kvOffset = g * dh;
        int p = src.P, rb = src.RowBase, pos = p + i;
        int lo = _window is { } w ? Math.Max(0, pos - w + 1) : 0;
        int n = pos - lo + 1;
        if (t_rowScores is null || t_rowScores.Length < group * n)
        {
            t_rowScores = new float[Math.Max(group * n, 2 * (t_rowScores?.Length ?? 0))];
        }
        var scores = t_rowScores.AsSpan(0, group * n); // (G, n)
        var q = s.Q.AsSpan((rb + i) * _qDim + g * group * dh, group * dh); // (G, Dh)
        bool wide = Vector512.IsHardwareAccelerated && dh % Vector512<float>.Count == 0;
        for (int j = lo; j <= pos; j++)
        {
            var key = (j < p ? src.CachedKey(l, j) : s.K.AsSpan((rb + j - p) * _kvDim, _kvDim)).Slice(kvOffset, dh);
            for (int hh = 0; hh < group; hh++)
            {
                scores[hh * n + j - lo] = wide ? Dot512(q.Slice(hh * dh, dh), key) : TensorPrimitives.Dot(q.Slice(hh * dh, dh), key);
            }
        }
        var att = s.Att.AsSpan((rb + i) * _qDim + g * group * dh, group * dh);
        att.Clear();
        for (int hh = 0; hh < group; hh++)
        {
            var sc = scores.Slice(hh * n, n);
            TensorPrimitives.Multiply(sc, _scale, sc);
            float m = TensorPrimitives.Max(sc);
            TensorPrimitives.Subtract(sc, m, sc);
            TensorPrimitives.Exp(sc, sc);
            TensorPrimitives.Multiply(sc, 1f / TensorPrimitives.Sum(sc), sc);
        }
        for (int j = lo; j <= pos; j++)
        {
            var value = (j < p ? src.CachedValue(l, j) : s.V.AsSpan((rb + j - p) * _kvDim, _kvDim)).Slice(kvOffset, dh);
            for (int hh = 0; hh < group; hh++)
            {
                var o = att.Slice(hh * dh, dh);
                if (wide)
                {
                    Axpy512(scores[hh * n + j - lo], value, o);
                }
                else
                {
                    TensorPrimitives.MultiplyAdd(value, scores[hh * n + j - lo], o, o);
                }
            }
        }
    }

    /// <summary>a · b for lengths a multiple of 16 (one call per key and head in <see cref="AttendRow"/>: no call overhead of the general primitive).</summary>
    private static float Dot512(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        ref float ra = ref MemoryMarshal.GetReference(a);
        ref float rb = ref MemoryMarshal.GetReference(b);
        var acc = Vector512<float>.Zero;
        for (int c = 0; c < a.Length; c += Vector512<float>.Count)
        {
            acc = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref ra, (nuint)c), Vector512.LoadUnsafe(ref rb, (nuint)c), acc);
        }
        return Vector512.Sum(acc);
    }

    /// <summary>o += w x for lengths a multiple of 16.</summary>
    private static void Axpy512(float w, ReadOnlySpan<float> x, Span<float> o)
    {
        ref float rx = ref MemoryMarshal.GetReference(x);
        ref float ro = ref MemoryMarshal.GetReference(o);
        var vw = Vector512.Create(w);
        for (int c = 0; c < x.Length; c += Vector512<float>.Count)
        {
            Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref rx, (nuint)c), vw, Vector512.LoadUnsafe(ref ro, (nuint)c)).StoreUnsafe(ref ro, (nuint)c);
        }
    }

    /// <summary>
    /// s.Att rows RowBase + [I0, I1), heads g * G .. g * G + G - 1 (each Dh): attention of those queries over their
    /// causal (and windowed) keys, by the online-softmax recurrence over key tiles. s.Q: (T, Hq * Dh); s.K, s.V:
    /// (T, Hkv * Dh) pass rows; the cache holds positions below P.
    /// </summary>
    private void AttendTile(int l, in KvSource src, TileItem item, Scratch s)
    {
        if (item.I1 - item.I0 == 1)
        {
            AttendRow(l, src, item.I0, item.G, s);
            return;
        }
        int group = _group, dh = _headDim, kvOffset = item.G * dh;
        int p = src.P, rb = src.RowBase;
        int queries = (item.I1 - item.I0) * group;
        var buf = t_tiles ??= new TileBuffers();
        buf.Ensure(queries, dh);
        var max = buf.Max.AsSpan(0, queries);
        var sum = buf.Sum.AsSpan(0, queries);
        var o = buf.Out.AsSpan(0, queries * dh);
        max.Fill(float.NegativeInfinity);
        sum.Clear();
        o.Clear();
        int first = p + item.I0, last = p + item.I1 - 1;
        int lo = _window is { } w ? Math.Max(0, first - w + 1) : 0;
        for (int k0 = lo; k0 <= last; k0 += KeyTile)
        {
            int k1 = Math.Min(last + 1, k0 + KeyTile); // keys [k0, k1)
            int cols = k1 - k0;
            var kt = buf.Keys.AsSpan(0, dh * KeyTile); // (Dh, KeyTile): column j is key k0 + j (transposed)
            var vt = buf.Values.AsSpan(0, cols * dh);  // (cols, Dh): row j is value k0 + j
            for (int j = k0; j < k1; j++)
            {
                var key = (j < p ? src.CachedKey(l, j) : s.K.AsSpan((rb + j - p) * _kvDim, _kvDim)).Slice(kvOffset, dh);
                var value = j < p ? src.CachedValue(l, j) : s.V.AsSpan((rb + j - p) * _kvDim, _kvDim);
                for (int c = 0; c < dh; c++)
                {
                    kt[c * KeyTile + j - k0] = key[c];
                }
                value.Slice(kvOffset, dh).CopyTo(vt.Slice((j - k0) * dh, dh));
            }
            for (int i = item.I0; i < item.I1; i++)
            {
                int pos = p + i;
                int a = Math.Max(k0, _window is { } win ? pos - win + 1 : 0), b = Math.Min(k1 - 1, pos); // this row's keys in the tile
                if (a > b)
                {
                    continue;
                }
                int n = b - a + 1;
                for (int hh = 0; hh < group; hh++)
                {
                    int qi = (i - item.I0) * group + hh;
                    var q = s.Q.AsSpan((rb + i) * _qDim + (item.G * group + hh) * dh, dh);
                    TileScores(q, kt, cols, buf.Scores);
                    var sc = buf.Scores.AsSpan(a - k0, n);
                    TensorPrimitives.Multiply(sc, _scale, sc);
                    float mNew = MathF.Max(max[qi], TensorPrimitives.Max(sc));
                    var oq = o.Slice(qi * dh, dh);
                    if (sum[qi] != 0 && mNew != max[qi])
                    {
                        float rescale = MathF.Exp(max[qi] - mNew);
                        sum[qi] *= rescale;
                        TensorPrimitives.Multiply(oq, rescale, oq);
                    }
                    max[qi] = mNew;
                    TensorPrimitives.Subtract(sc, mNew, sc);
                    TensorPrimitives.Exp(sc, sc);
                    sum[qi] += TensorPrimitives.Sum(sc);
                    WeightedValues(sc, vt.Slice((a - k0) * dh, n * dh), oq);
                }
            }
        }
        for (int i = item.I0; i < item.I1; i++)
        {
            for (int hh = 0; hh < group; hh++)
            {
                int qi = (i - item.I0) * group + hh;
                TensorPrimitives.Multiply(o.Slice(qi * dh, dh), 1f / sum[qi], s.Att.AsSpan((rb + i) * _qDim + (item.G * group + hh) * dh, dh));
            }
        }
    }
}
