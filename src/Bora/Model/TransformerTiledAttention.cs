using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
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

        /// <summary>
        /// Key row (Hkv * Dh) of <paramref name="position"/>: from the cache as stored (F32 or F16) below P, else the
        /// pass's row RowBase + position - P of <paramref name="passKeys"/> (T, <paramref name="kvDim"/>).
        /// </summary>
        public KvRow Key(int layer, int position, float[] passKeys, int kvDim) => position >= p
            ? new KvRow(passKeys.AsSpan((rowBase + position - p) * kvDim, kvDim))
            : cache is not null ? cache.KeyRow(layer, position) : paged!.KeyRow(layer, position);

        /// <summary>Value row (Hkv * Dh) of <paramref name="position"/>, as <see cref="Key"/> reads keys.</summary>
        public KvRow Value(int layer, int position, float[] passValues, int kvDim) => position >= p
            ? new KvRow(passValues.AsSpan((rowBase + position - p) * kvDim, kvDim))
            : cache is not null ? cache.ValueRow(layer, position) : paged!.ValueRow(layer, position);
    }

    /// <summary>
    /// One work item: either a query tile (pass rows [I0, I1) relative to the sequence's first row, KV head G, all its
    /// keys; Part = -1), or a key chunk of a one-row sequence (row I0, every head, keys [K0, K1); its partial softmax
    /// goes to slot Part of the partials, merged by <see cref="MergeKeyChunks"/>).
    /// </summary>
    private readonly record struct TileItem(int Seq, int I0, int I1, int G, int K0 = 0, int K1 = 0, int Part = -1);

    /// <summary>Keys per chunk of a one-row sequence at least (<see cref="KeyChunks"/>): 128 rows of Hkv * Dh floats, 512 KiB each for K and V at Mistral 7B's shape.</summary>
    private const int MinChunkKeys = 128;

    /// <summary>Chunks per one-row sequence at most, so the partials stay small for long contexts.</summary>
    private const int MaxKeyChunks = 16;

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

    /// <summary>
    /// Runs the work items (in parallel when the work is large); the key chunks among them write <paramref name="parts"/>
    /// partial slots, merged into their rows afterwards (<see cref="MergeKeyChunks"/>).
    /// </summary>
    private void RunTiles(int l, KvSource[] sources, TileItem[] items, int count, int parts, long work, Scratch s)
    {
        EnsurePartials(parts);
        if (work < ParallelAttentionThreshold || count == 1)
        {
            for (int i = 0; i < count; i++)
            {
                AttendItem(l, sources[items[i].Seq], items[i], s);
            }
        }
        else
        {
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
        if (parts > 0)
        {
            MergeKeyChunks(items, count, sources, s);
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
        AttendItem(_runLayer, _runSources![item.Seq], item, _runScratch!);
    }

    private void AttendItem(int l, in KvSource src, TileItem item, Scratch s)
    {
        if (item.Part >= 0)
        {
            AttendKeys(l, src, item, s);
        }
        else if (WideTiles)
        {
            AttendTileWide(l, src, item, s);
        }
        else
        {
            AttendTile(l, src, item, s);
        }
    }

    /// <summary>
    /// Adds the work items of one sequence of <paramref name="rows"/> pass rows whose cache holds positions below
    /// <paramref name="p"/>: query tiles x KV heads; or, for one row (a decode step), its key chunks
    /// (<see cref="KeyChunks"/>), which take partial slots from <paramref name="parts"/> on.
    /// </summary>
    private void AddTiles(ref TileItem[] items, ref int count, int seq, int rows, int p, ref int parts)
    {
        if (rows == 1)
        {
            int lo = _window is { } w ? Math.Max(0, p - w + 1) : 0;
            int n = p - lo + 1, chunks = KeyChunks(n, out int chunkKeys);
            if (items.Length < count + chunks)
            {
                Array.Resize(ref items, Math.Max(count + chunks, items.Length * 2));
            }
            for (int c = 0; c < chunks; c++)
            {
                int k0 = lo + c * chunkKeys;
                items[count++] = new TileItem(seq, 0, 1, 0, k0, Math.Min(p + 1, k0 + chunkKeys), parts++);
            }
            return;
        }
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
    private static float[]? t_chunkScores;

    /// <summary>Floats of one partial slot: o (Hq, Dh), then m (Hq) and l (Hq).</summary>
    private int PartFloats => _nHeads * (_headDim + 2);

    /// <summary>
    /// How a one-row sequence with <paramref name="n"/> keys is split: chunks of <paramref name="chunkKeys"/>
    /// consecutive keys (a multiple of 16, at least <see cref="MinChunkKeys"/>), at most <see cref="MaxKeyChunks"/>.
    /// Depends on n alone, so a sequence gets the same sums alone, batched, and at any thread count.
    /// Example: n = 521 keys: 128 per chunk, chunks [0, 128), [128, 256), [256, 384), [384, 512), [512, 521).
    /// n = 4096: 256 per chunk, 16 chunks.
    /// </summary>
    private static int KeyChunks(int n, out int chunkKeys)
    {
        int per = Math.Max(MinChunkKeys, (n + MaxKeyChunks - 1) / MaxKeyChunks);
        chunkKeys = (per + 15) / 16 * 16;
        return (n + chunkKeys - 1) / chunkKeys;
    }

    /// <summary>
    /// One key chunk of a one-row sequence (a decode step), every head (flash-decoding): keys [K0, K1) of row I0, read
    /// whole (all Hkv heads of a position are one contiguous row of the cache, so each chunk streams its rows front to
    /// back), scored against the G query heads that share each KV head; then per head the chunk's maximum m, l = sum of
    /// exp(score - m) and the unnormalised o = sum of exp(score - m) v, into partial slot Part (o (Hq, Dh), m (Hq),
    /// l (Hq)). <see cref="MergeKeyChunks"/> combines the chunks of the row.
    /// The scores are kept as (nk, Hq), one row per key, so the softmax runs across heads in vectors. With Dh = 128 and
    /// AVX-512 or AVX2 + FMA (<see cref="DecodeKernels"/>) the scores take 4 heads per key read (<see cref="Scores4x128{TRow}"/>);
    /// the values 4 keys per update of o (<see cref="Values4x128{TRow}"/>; a chunk's last 2 or 3 keys 2
    /// (<see cref="Values2x128{TRow}"/>, AVX-512) and 1); otherwise the same sums go through <see cref="TensorPrimitives"/>.
    /// Cached F16 rows: on that path (for keys when G is a multiple of 4) each 16 (or 8) halves are widened in registers
    /// as they are loaded (the same sums over the same float32 values, no buffer), with fewer operations where the cache
    /// promised finite rows (<see cref="KvRow.HalvesFinite"/>, <see cref="F16FiniteRow"/>); otherwise a row is widened
    /// into a per-thread buffer (5 rows of Hkv * Dh: a key, four values) just before the arithmetic reads it. F32 rows
    /// are read in place.
    /// </summary>
    private unsafe void AttendKeys(int l, in KvSource src, TileItem item, Scratch s)
    {
        int group = _group, dh = _headDim, heads = _nHeads, hkv = Config.NKvHeads;
        int p = src.P, rb = src.RowBase, row = rb + item.I0, k0 = item.K0, nk = item.K1 - item.K0;
        if (t_chunkScores is null || t_chunkScores.Length < heads * nk)
        {
            t_chunkScores = new float[Math.Max(heads * nk, 2 * (t_chunkScores?.Length ?? 0))];
        }
        var scores = t_chunkScores.AsSpan(0, heads * nk); // (nk, Hq): row j = every head's score of key k0 + j
        var q = s.Q.AsSpan(row * _qDim, _qDim);             // (Hq, Dh)
        bool fast = DecodeKernels(dh);
        bool fusedKeys = fast && group % 4 == 0;
        var rowBuf = RowScratch(5 * _kvDim);
        var keyBuf = rowBuf.AsSpan(0, _kvDim);              // (Hkv, Dh) a cached F16 key, widened
        var value0Buf = rowBuf.AsSpan(_kvDim, _kvDim);      // (Hkv, Dh) cached F16 values, widened
        var value1Buf = rowBuf.AsSpan(2 * _kvDim, _kvDim);
        var value2Buf = rowBuf.AsSpan(3 * _kvDim, _kvDim);
        var value3Buf = rowBuf.AsSpan(4 * _kvDim, _kvDim);
        fixed (float* pq = q)
        fixed (float* ps = scores)
        {
            for (int j = 0; j < nk; j++)
            {
                int pos = k0 + j;
                var keyRow = src.Key(l, pos, s.K, _kvDim); // (Hkv, Dh)
                if (fusedKeys && keyRow.TryGetHalves(out var halves))
                {
                    fixed (Half* ph = halves)
                    {
                        if (keyRow.HalvesFinite)
                        {
                            ScoresKeyRow<F16FiniteRow>(pq, (nint)ph, ps + (long)j * heads, hkv, group);
                        }
                        else
                        {
                            ScoresKeyRow<F16Row>(pq, (nint)ph, ps + (long)j * heads, hkv, group);
                        }
                    }
                    continue;
                }
                var keys = keyRow.AsFloats(keyBuf);
                fixed (float* pk = keys)
                {
                    float* sj = ps + (long)j * heads;
                    for (int g = 0; g < hkv; g++)
                    {
                        int h = g * group, end = h + group;
                        for (; fast && h + 4 <= end; h += 4)
                        {
                            Scores4x128<F32Row>(pq + h * 128, (nint)(pk + g * 128), sj + h);
                        }
                        for (; h < end; h++)
                        {
                            sj[h] = TensorPrimitives.Dot(new ReadOnlySpan<float>(pq + h * dh, dh), new ReadOnlySpan<float>(pk + g * dh, dh));
                        }
                    }
                }
            }
        }
        var part = _partials.AsSpan(item.Part * PartFloats, PartFloats);
        var o = part[..(heads * dh)];              // (Hq, Dh)
        var max = part.Slice(heads * dh, heads);   // (Hq)
        var sum = part.Slice(heads * dh + heads, heads);
        ChunkSoftmax(scores, nk, heads, max, sum);
        o.Clear();
        fixed (float* po = o)
        fixed (float* ps = scores)
        {
            int j = 0;
            for (; fast && j + 4 <= nk; j += 4)
            {
                int pos = k0 + j;
                var row0 = src.Value(l, pos, s.V, _kvDim); // (Hkv, Dh)
                var row1 = src.Value(l, pos + 1, s.V, _kvDim);
                var row2 = src.Value(l, pos + 2, s.V, _kvDim);
                var row3 = src.Value(l, pos + 3, s.V, _kvDim);
                if (row0.TryGetHalves(out var h0) && row1.TryGetHalves(out var h1) && row2.TryGetHalves(out var h2) && row3.TryGetHalves(out var h3))
                {
                    fixed (Half* ph0 = h0)
                    fixed (Half* ph1 = h1)
                    fixed (Half* ph2 = h2)
                    fixed (Half* ph3 = h3)
                    {
                        bool finite = row0.HalvesFinite && row1.HalvesFinite && row2.HalvesFinite && row3.HalvesFinite;
                        for (int g = 0; g < hkv; g++)
                        {
                            nint r0 = (nint)((short*)ph0 + g * 128), r1 = (nint)((short*)ph1 + g * 128), r2 = (nint)((short*)ph2 + g * 128), r3 = (nint)((short*)ph3 + g * 128);
                            if (finite)
                            {
                                Values4x128<F16FiniteRow>(r0, r1, r2, r3, ps + (long)j * heads + g * group, heads, po + g * group * 128, group);
                            }
                            else
                            {
                                Values4x128<F16Row>(r0, r1, r2, r3, ps + (long)j * heads + g * group, heads, po + g * group * 128, group);
                            }
                        }
                    }
                    continue;
                }
                var v0 = row0.AsFloats(value0Buf);
                var v1 = row1.AsFloats(value1Buf);
                var v2 = row2.AsFloats(value2Buf);
                var v3 = row3.AsFloats(value3Buf);
                fixed (float* pv0 = v0)
                fixed (float* pv1 = v1)
                fixed (float* pv2 = v2)
                fixed (float* pv3 = v3)
                {
                    for (int g = 0; g < hkv; g++)
                    {
                        Values4x128<F32Row>((nint)(pv0 + g * 128), (nint)(pv1 + g * 128), (nint)(pv2 + g * 128), (nint)(pv3 + g * 128),
                            ps + (long)j * heads + g * group, heads, po + g * group * 128, group);
                    }
                }
            }
            for (; fast && Vector512.IsHardwareAccelerated && j + 2 <= nk; j += 2)
            {
                int pos = k0 + j;
                var row0 = src.Value(l, pos, s.V, _kvDim); // (Hkv, Dh)
                var row1 = src.Value(l, pos + 1, s.V, _kvDim);
                if (row0.TryGetHalves(out var h0) && row1.TryGetHalves(out var h1))
                {
                    fixed (Half* ph0 = h0)
                    fixed (Half* ph1 = h1)
                    {
                        bool finite = row0.HalvesFinite && row1.HalvesFinite;
                        for (int g = 0; g < hkv; g++)
                        {
                            nint r0 = (nint)((short*)ph0 + g * 128), r1 = (nint)((short*)ph1 + g * 128);
                            if (finite)
                            {
                                Values2x128<F16FiniteRow>(r0, r1, ps + (long)j * heads + g * group, heads, po + g * group * 128, group);
                            }
                            else
                            {
                                Values2x128<F16Row>(r0, r1, ps + (long)j * heads + g * group, heads, po + g * group * 128, group);
                            }
                        }
                    }
                    continue;
                }
                var v0 = row0.AsFloats(value0Buf);
                var v1 = row1.AsFloats(value1Buf);
                fixed (float* pv0 = v0)
                fixed (float* pv1 = v1)
                {
                    for (int g = 0; g < hkv; g++)
                    {
                        Values2x128<F32Row>((nint)(pv0 + g * 128), (nint)(pv1 + g * 128), ps + (long)j * heads + g * group, heads, po + g * group * 128, group);
                    }
                }
            }
            for (; j < nk; j++)
            {
                int pos = k0 + j;
                var values = src.Value(l, pos, s.V, _kvDim).AsFloats(value0Buf); // (Hkv, Dh)
                for (int g = 0; g < hkv; g++)
                {
                    var value = values.Slice(g * dh, dh);
                    for (int h = g * group; h < (g + 1) * group; h++)
                    {
                        var oh = o.Slice(h * dh, dh);
                        TensorPrimitives.MultiplyAdd(value, ps[(long)j * heads + h], oh, oh);
                    }
                }
            }
        }
    }

    /// <summary>
    /// Scores of one cached key row against every query head (<see cref="Scores4x128{TRow}"/> per 4 heads of each KV
    /// head): sj[h] = q_h · k_g for h in g's <paramref name="group"/> heads (a multiple of 4); q: (Hq, 128), k: (Hkv, 128).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static unsafe void ScoresKeyRow<TRow>(float* q, nint k, float* sj, int hkv, int group)
        where TRow : struct, IRowElement
    {
        for (int g = 0; g < hkv; g++)
        {
            nint kg = k + g * 128 * TRow.Bytes;
            for (int h = g * group; h < (g + 1) * group; h += 4)
            {
                Scores4x128<TRow>(q + h * 128, kg, sj + h);
            }
        }
    }

    /// <summary>
    /// The softmax step of a key chunk over its scores (nk, Hq), row j = every head's score of key j: scores *= scale;
    /// per head h, max[h] = max_j scores[j, h]; scores[j, h] = exp(scores[j, h] - max[h]); sum[h] = sum_j scores[j, h]
    /// (added in key order). With Hq a multiple of 8 and 256-bit vectors the per-head loops run down the rows in
    /// vectors of 8 heads and one Exp covers the whole chunk (3 calls per chunk); otherwise each row takes its own
    /// calls (5 per key). Both give the same values: the same elementwise operations, the sums in the same order.
    /// </summary>
    private unsafe void ChunkSoftmax(Span<float> scores, int nk, int heads, Span<float> max, Span<float> sum)
    {
        TensorPrimitives.Multiply(scores, _scale, scores);
        if (heads % 8 != 0 || !Vector256.IsHardwareAccelerated)
        {
            max.Fill(float.NegativeInfinity);
            for (int j = 0; j < nk; j++)
            {
                TensorPrimitives.Max(max, scores.Slice(j * heads, heads), max);
            }
            sum.Clear();
            for (int j = 0; j < nk; j++)
            {
                var sj = scores.Slice(j * heads, heads);
                TensorPrimitives.Subtract(sj, max, sj);
                TensorPrimitives.Exp(sj, sj);
                TensorPrimitives.Add(sum, sj, sum);
            }
            return;
        }
        fixed (float* ps = scores)
        fixed (float* pm = max)
        fixed (float* pl = sum)
        {
            for (int v = 0; v < heads; v += 8)
            {
                var m = Vector256.Create(float.NegativeInfinity);
                for (int j = 0; j < nk; j++)
                {
                    m = Vector256.Max(m, Vector256.Load(ps + (long)j * heads + v));
                }
                m.Store(pm + v);
                for (int j = 0; j < nk; j++)
                {
                    float* r = ps + (long)j * heads + v;
                    (Vector256.Load(r) - m).Store(r);
                }
            }
            TensorPrimitives.Exp(scores, scores);
            for (int v = 0; v < heads; v += 8)
            {
                var acc = Vector256<float>.Zero;
                for (int j = 0; j < nk; j++)
                {
                    acc += Vector256.Load(ps + (long)j * heads + v);
                }
                acc.Store(pl + v);
            }
        }
    }

    /// <summary>
    /// How a decode kernel reads consecutive values of a cache row as floats: F32 rows load them, F16 rows widen them
    /// exactly in registers (<see cref="HalfConversion.Widen512"/>, <see cref="HalfConversion.Widen256"/>).
    /// </summary>
    private interface IRowElement
    {
        /// <summary>Values c .. c + 15 of the row at <paramref name="row"/> (floats or halves by the implementation).</summary>
        static abstract Vector512<float> Load16(nint row, int c);

        /// <summary>Values c .. c + 7 of the row at <paramref name="row"/>.</summary>
        static abstract Vector256<float> Load8(nint row, int c);

        /// <summary>Bytes of one stored value: 4 for floats, 2 for halves.</summary>
        static abstract int Bytes { get; }
    }

    private readonly unsafe struct F32Row : IRowElement
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(nint row, int c) => Vector512.Load((float*)row + c);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load8(nint row, int c) => Vector256.Load((float*)row + c);

        public static int Bytes => sizeof(float);
    }

    private readonly unsafe struct F16Row : IRowElement
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(nint row, int c) => HalfConversion.Widen512(Vector256.Load((short*)row + c));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load8(nint row, int c) => HalfConversion.Widen256(Vector128.Load((short*)row + c));

        public static int Bytes => 2;
    }

    /// <summary>F16 rows whose store promised finite halves (<see cref="KvRow.HalvesFinite"/>): widened without the infinity / NaN lanes.</summary>
    private readonly unsafe struct F16FiniteRow : IRowElement
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(nint row, int c) => HalfConversion.WidenFinite512(Vector256.Load((short*)row + c));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load8(nint row, int c) => HalfConversion.WidenFinite256(Vector128.Load((short*)row + c));

        public static int Bytes => 2;
    }

    /// <summary>
    /// Whether the decode kernels below run for heads of width <paramref name="dh"/>: Dh = 128 and AVX-512 (512-bit
    /// vectors) or AVX2 + FMA (256-bit vectors; the F16 widening needs AVX2's vpmovsxwd).
    /// </summary>
    private static bool DecodeKernels(int dh) => dh == 128
        && ((Vector512.IsHardwareAccelerated && Avx512F.IsSupported) || (Avx2.IsSupported && Fma.IsSupported));

    /// <summary>
    /// dst[0..3] = q_i · k for the 4 query heads q (4, 128) sharing the key k (128 floats or halves, <typeparamref name="TRow"/>):
    /// the key is loaded once, the 4 dot products run as independent chains (two per head with 256-bit vectors, so 8
    /// multiply-adds are in flight), and the 4 sums are reduced together (halves, then horizontal adds).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Scores4x128<TRow>(float* q, nint k, float* dst)
        where TRow : struct, IRowElement
    {
        Vector256<float> s0, s1, s2, s3;
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (int c = 0; c < 128; c += 16)
            {
                var kc = TRow.Load16(k, c);
                a0 = Vector512.FusedMultiplyAdd(Vector512.Load(q + c), kc, a0);
                a1 = Vector512.FusedMultiplyAdd(Vector512.Load(q + 128 + c), kc, a1);
                a2 = Vector512.FusedMultiplyAdd(Vector512.Load(q + 256 + c), kc, a2);
                a3 = Vector512.FusedMultiplyAdd(Vector512.Load(q + 384 + c), kc, a3);
            }
            (s0, s1, s2, s3) = (a0.GetLower() + a0.GetUpper(), a1.GetLower() + a1.GetUpper(), a2.GetLower() + a2.GetUpper(), a3.GetLower() + a3.GetUpper());
        }
        else
        {
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
            for (int c = 0; c < 128; c += 16)
            {
                var kc = TRow.Load8(k, c);
                var kd = TRow.Load8(k, c + 8);
                a0 = Vector256.FusedMultiplyAdd(Vector256.Load(q + c), kc, a0);
                a1 = Vector256.FusedMultiplyAdd(Vector256.Load(q + 128 + c), kc, a1);
                a2 = Vector256.FusedMultiplyAdd(Vector256.Load(q + 256 + c), kc, a2);
                a3 = Vector256.FusedMultiplyAdd(Vector256.Load(q + 384 + c), kc, a3);
                b0 = Vector256.FusedMultiplyAdd(Vector256.Load(q + c + 8), kd, b0);
                b1 = Vector256.FusedMultiplyAdd(Vector256.Load(q + 136 + c), kd, b1);
                b2 = Vector256.FusedMultiplyAdd(Vector256.Load(q + 264 + c), kd, b2);
                b3 = Vector256.FusedMultiplyAdd(Vector256.Load(q + 392 + c), kd, b3);
            }
            (s0, s1, s2, s3) = (a0 + b0, a1 + b1, a2 + b2, a3 + b3);
        }
        // Per 128-bit lane, hadd(x, y) = [x0+x1, x2+x3, y0+y1, y2+y3]: two rounds leave [s0 s1 s2 s3] per lane of
        // the 8-float sums, and the two lanes add up to the 4 sums.
        var h = Avx.HorizontalAdd(Avx.HorizontalAdd(s0, s1), Avx.HorizontalAdd(s2, s3));
        (h.GetLower() + h.GetUpper()).Store(dst);
    }

    /// <summary>
    /// o_h += w[h] v0 + w[heads + h] v1 for the <paramref name="group"/> heads h sharing the value rows v0, v1 (128
    /// floats or halves each, <typeparamref name="TRow"/>) of two consecutive keys; w points at the first head's weight
    /// of key 0, the weights of key 1 are one score row (<paramref name="heads"/>) further; o: (group, 128). The value
    /// rows are loaded (or widened) once and stay in registers across the heads. 512-bit vectors only (with 256-bit
    /// ones a chunk's last 2 or 3 keys take the one-key path). Not inlined: inside <see cref="AttendKeys"/> the JIT runs
    /// out of inlining budget and would call the 16 widenings of F16 rows instead.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static unsafe void Values2x128<TRow>(nint v0, nint v1, float* w, int heads, float* o, int group)
        where TRow : struct, IRowElement
    {
        var a0 = TRow.Load16(v0, 0);
        var a1 = TRow.Load16(v0, 16);
        var a2 = TRow.Load16(v0, 32);
        var a3 = TRow.Load16(v0, 48);
        var a4 = TRow.Load16(v0, 64);
        var a5 = TRow.Load16(v0, 80);
        var a6 = TRow.Load16(v0, 96);
        var a7 = TRow.Load16(v0, 112);
        var b0 = TRow.Load16(v1, 0);
        var b1 = TRow.Load16(v1, 16);
        var b2 = TRow.Load16(v1, 32);
        var b3 = TRow.Load16(v1, 48);
        var b4 = TRow.Load16(v1, 64);
        var b5 = TRow.Load16(v1, 80);
        var b6 = TRow.Load16(v1, 96);
        var b7 = TRow.Load16(v1, 112);
        for (int h = 0; h < group; h++)
        {
            var w0 = Vector512.Create(w[h]);
            var w1 = Vector512.Create(w[heads + h]);
            float* oh = o + h * 128;
            Vector512.FusedMultiplyAdd(b0, w1, Vector512.FusedMultiplyAdd(a0, w0, Vector512.Load(oh))).Store(oh);
            Vector512.FusedMultiplyAdd(b1, w1, Vector512.FusedMultiplyAdd(a1, w0, Vector512.Load(oh + 16))).Store(oh + 16);
            Vector512.FusedMultiplyAdd(b2, w1, Vector512.FusedMultiplyAdd(a2, w0, Vector512.Load(oh + 32))).Store(oh + 32);
            Vector512.FusedMultiplyAdd(b3, w1, Vector512.FusedMultiplyAdd(a3, w0, Vector512.Load(oh + 48))).Store(oh + 48);
            Vector512.FusedMultiplyAdd(b4, w1, Vector512.FusedMultiplyAdd(a4, w0, Vector512.Load(oh + 64))).Store(oh + 64);
            Vector512.FusedMultiplyAdd(b5, w1, Vector512.FusedMultiplyAdd(a5, w0, Vector512.Load(oh + 80))).Store(oh + 80);
            Vector512.FusedMultiplyAdd(b6, w1, Vector512.FusedMultiplyAdd(a6, w0, Vector512.Load(oh + 96))).Store(oh + 96);
            Vector512.FusedMultiplyAdd(b7, w1, Vector512.FusedMultiplyAdd(a7, w0, Vector512.Load(oh + 112))).Store(oh + 112);
        }
    }

    /// <summary>
    /// o_h += w[h] v0 + w[heads + h] v1 + w[2 heads + h] v2 + w[3 heads + h] v3 (added in that order, as two
    /// <see cref="Values2x128{TRow}"/> would) for the <paramref name="group"/> heads h sharing the value rows v0..v3
    /// (128 floats or halves each, <typeparamref name="TRow"/>) of four consecutive keys; w: the first head's weight of
    /// key 0 in a score row of <paramref name="heads"/>; o: (group, 128). Runs in column slices (64 columns with 512-bit
    /// vectors, 16 with 256-bit ones): the 4 rows' vectors of a slice stay in registers across the heads, so each o
    /// vector is loaded and stored once per 4 keys (4 multiply-adds per load and store, against 2 in
    /// <see cref="Values2x128{TRow}"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static unsafe void Values4x128<TRow>(nint v0, nint v1, nint v2, nint v3, float* w, int heads, float* o, int group)
        where TRow : struct, IRowElement
    {
        if (!Vector512.IsHardwareAccelerated)
        {
            for (int c = 0; c < 128; c += 16)
            {
                var a0 = TRow.Load8(v0, c);
                var a1 = TRow.Load8(v0, c + 8);
                var b0 = TRow.Load8(v1, c);
                var b1 = TRow.Load8(v1, c + 8);
                var d0 = TRow.Load8(v2, c);
                var d1 = TRow.Load8(v2, c + 8);
                var e0 = TRow.Load8(v3, c);
                var e1 = TRow.Load8(v3, c + 8);
                for (int h = 0; h < group; h++)
                {
                    var w0 = Vector256.Create(w[h]);
                    var w1 = Vector256.Create(w[heads + h]);
                    var w2 = Vector256.Create(w[2 * heads + h]);
                    var w3 = Vector256.Create(w[3 * heads + h]);
                    float* oh = o + h * 128 + c;
                    Vector256.FusedMultiplyAdd(e0, w3, Vector256.FusedMultiplyAdd(d0, w2, Vector256.FusedMultiplyAdd(b0, w1,
                        Vector256.FusedMultiplyAdd(a0, w0, Vector256.Load(oh))))).Store(oh);
                    Vector256.FusedMultiplyAdd(e1, w3, Vector256.FusedMultiplyAdd(d1, w2, Vector256.FusedMultiplyAdd(b1, w1,
                        Vector256.FusedMultiplyAdd(a1, w0, Vector256.Load(oh + 8))))).Store(oh + 8);
                }
            }
            return;
        }
        for (int c = 0; c < 128; c += 64)
        {
            var a0 = TRow.Load16(v0, c);
            var a1 = TRow.Load16(v0, c + 16);
            var a2 = TRow.Load16(v0, c + 32);
            var a3 = TRow.Load16(v0, c + 48);
            var b0 = TRow.Load16(v1, c);
            var b1 = TRow.Load16(v1, c + 16);
            var b2 = TRow.Load16(v1, c + 32);
            var b3 = TRow.Load16(v1, c + 48);
            var d0 = TRow.Load16(v2, c);
            var d1 = TRow.Load16(v2, c + 16);
            var d2 = TRow.Load16(v2, c + 32);
            var d3 = TRow.Load16(v2, c + 48);
            var e0 = TRow.Load16(v3, c);
            var e1 = TRow.Load16(v3, c + 16);
            var e2 = TRow.Load16(v3, c + 32);
            var e3 = TRow.Load16(v3, c + 48);
            for (int h = 0; h < group; h++)
            {
                var w0 = Vector512.Create(w[h]);
                var w1 = Vector512.Create(w[heads + h]);
                var w2 = Vector512.Create(w[2 * heads + h]);
                var w3 = Vector512.Create(w[3 * heads + h]);
                float* oh = o + h * 128 + c;
                Add4(oh, a0, b0, d0, e0, w0, w1, w2, w3);
                Add4(oh + 16, a1, b1, d1, e1, w0, w1, w2, w3);
                Add4(oh + 32, a2, b2, d2, e2, w0, w1, w2, w3);
                Add4(oh + 48, a3, b3, d3, e3, w0, w1, w2, w3);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static void Add4(float* oc, Vector512<float> x0, Vector512<float> x1, Vector512<float> x2, Vector512<float> x3,
            Vector512<float> w0, Vector512<float> w1, Vector512<float> w2, Vector512<float> w3) =>
            Vector512.FusedMultiplyAdd(x3, w3, Vector512.FusedMultiplyAdd(x2, w2, Vector512.FusedMultiplyAdd(x1, w1,
                Vector512.FusedMultiplyAdd(x0, w0, Vector512.Load(oc))))).Store(oc);
    }

    /// <summary>
    /// s.Att row of each one-row sequence from its key chunks' partials (items[Part] in order): per head, with M the
    /// largest chunk maximum, att = sum_c exp(m_c - M) o_c / sum_c exp(m_c - M) l_c (the online-softmax merge).
    /// </summary>
    private void MergeKeyChunks(TileItem[] items, int count, KvSource[] sources, Scratch s)
    {
        int heads = _nHeads, dh = _headDim, pf = PartFloats;
        for (int i = 0; i < count;)
        {
            if (items[i].Part < 0)
            {
                i++;
                continue;
            }
            int first = i, seq = items[i].Seq;
            while (i < count && items[i].Part >= 0 && items[i].Seq == seq)
            {
                i++;
            }
            var att = s.Att.AsSpan((sources[seq].RowBase + items[first].I0) * _qDim, _qDim); // (Hq, Dh)
            for (int h = 0; h < heads; h++)
            {
                float m = float.NegativeInfinity;
                for (int c = first; c < i; c++)
                {
                    m = MathF.Max(m, _partials[items[c].Part * pf + heads * dh + h]);
                }
                var oh = att.Slice(h * dh, dh);
                oh.Clear();
                float total = 0;
                for (int c = first; c < i; c++)
                {
                    int b = items[c].Part * pf;
                    float w = MathF.Exp(_partials[b + heads * dh + h] - m);
                    total += w * _partials[b + heads * dh + heads + h];
                    TensorPrimitives.MultiplyAdd(_partials.AsSpan(b + h * dh, dh), w, oh, oh);
                }
                TensorPrimitives.Multiply(oh, 1f / total, oh);
            }
        }
    }

    /// <summary>Partial slots of the current layer's key chunks: (parts, <see cref="PartFloats"/>).</summary>
    private float[] _partials = [];

    /// <summary>Makes room for <paramref name="parts"/> partial slots.</summary>
    private void EnsurePartials(int parts)
    {
        long needed = (long)parts * PartFloats;
        if (_partials.Length < needed)
        {
            _partials = new float[Math.Max(needed, 2L * _partials.Length)];
        }
    }

    /// <summary>
    /// s.Att rows RowBase + [I0, I1), heads g * G .. g * G + G - 1 (each Dh): attention of those queries over their
    /// causal (and windowed) keys, by the online-softmax recurrence over key tiles. s.Q: (T, Hq * Dh); s.K, s.V:
    /// (T, Hkv * Dh) pass rows; the cache holds positions below P.
    /// </summary>
    private void AttendTile(int l, in KvSource src, TileItem item, Scratch s)
    {
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
            var keyBuf = RowScratch(dh).AsSpan(0, dh);  // (Dh) a cached F16 key, widened
            for (int j = k0; j < k1; j++)
            {
                var key = src.Key(l, j, s.K, _kvDim).Slice(kvOffset, dh).AsFloats(keyBuf);
                for (int c = 0; c < dh; c++)
                {
                    kt[c * KeyTile + j - k0] = key[c];
                }
                src.Value(l, j, s.V, _kvDim).Slice(kvOffset, dh).CopyTo(vt.Slice((j - k0) * dh, dh)); // widened while copied for F16
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
