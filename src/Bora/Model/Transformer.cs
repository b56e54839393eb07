using System.Buffers;
using Bora.Numerics;
using Bora.Tokenizers;

namespace Bora.Model;

/// <summary>
/// The Mistral / Mixtral decoder forward pass, as mistral-inference computes it:
/// <code>
/// x = TokenEmbedding[tokens]                                  // (T, D)
/// for each layer:
///     x += Attention(RMSNorm(x, AttentionNorm))               // GQA, RoPE, causal, sliding window W
///     x += FeedForward(RMSNorm(x, FfnNorm))                   // SwiGLU, or sparse MoE of SwiGLU experts
/// logits = Output · RMSNorm(x, FinalNorm)                     // (T, V) or the last row (V)
/// </code>
/// Letters as in <see cref="ModelConfig"/>; P = cache.Length before the call (the first token's position).
/// A call runs its tokens in passes of at most <see cref="MaxTokensPerPass"/> tokens (each pass a
/// batched prefill: one MatMul per weight); a decode step is a pass of one token. Calls on one
/// instance are serialised (the scratch buffers are shared); use one cache per sequence.
/// </summary>
public sealed partial class Transformer : ICausalLM
{
    /// <summary>Default for <see cref="MaxTokensPerPass"/>: bounds the scratch memory of long prompts.</summary>
    public const int DefaultMaxTokensPerPass = 256;

    /// <summary>Multiply-adds of attention below which it runs on the calling thread.</summary>
    private const long ParallelAttentionThreshold = 1L << 16;

    private readonly TransformerWeights _w;
    private readonly RopeTable _rope;
    private readonly int _dim, _headDim, _nHeads, _group, _qDim, _kvDim, _vocab, _hidden;
    private readonly int? _window;
    private readonly float _scale;
    private readonly Lock _gate = new();
    private Scratch _s = new(0, null!);
    private float[] _batchLogits = []; // (S, V) logits of the sampling entries of a ForwardBatch
    private TileItem[] _tileItems = []; // work items of the tiled attention of one layer
    private KvSource[] _kvSources = []; // (S) where each sequence's keys and values are

    public Transformer(TransformerWeights weights)
    {
        ArgumentNullException.ThrowIfNull(weights);
        weights.Validate();
        _w = weights;
        var c = weights.Config;
        _dim = c.Dim;
        _headDim = c.HeadDim;
        _nHeads = c.NHeads;
        _group = c.NHeads / c.NKvHeads;
        _qDim = c.NHeads * c.HeadDim;
        _kvDim = c.NKvHeads * c.HeadDim;
        _vocab = c.VocabSize;
        _hidden = c.HiddenDim;
        _window = c.SlidingWindow;
        _scale = 1f / MathF.Sqrt(c.HeadDim);
        _rope = new RopeTable(c.HeadDim, c.RopeTheta);
    }

    public ModelConfig Config => _w.Config;

    public TransformerWeights Weights => _w;

    /// <summary>Most tokens run through the layers at once; longer calls are split (exactly: the cache carries the earlier ones).</summary>
    public int MaxTokensPerPass { get; init; } = DefaultMaxTokensPerPass;

    /// <summary>
    /// Element type of this model's KV caches (default <see cref="KvCacheType.F16"/>, llama.cpp's default): what
    /// <see cref="CreateCache"/> makes and what <see cref="Forward"/> / <see cref="ForwardBatch"/> accept (a cache of
    /// another type is refused). With F16 every pass rounds its keys (after RoPE) and values to half precision before
    /// attention runs (float -> half -> float, as llama.cpp writes the batch into its cache first), so a position's key
    /// is the same number read from the pass or from the cache: one-shot, chunked, decode, batched and solo runs agree
    /// up to summation order, as with F32.
    /// </summary>
    public KvCacheType KvType { get; init; } = KvCacheType.F16;

    /// <summary>A <see cref="RollingKvCache"/> when the model has a sliding window, else a <see cref="FullKvCache"/>, of <see cref="KvType"/> rows.</summary>
    public IKvCache CreateCache(int contextLength) => _window is { } w
        ? new RollingKvCache(Config.NLayers, _kvDim, w, contextLength, KvType)
        : new FullKvCache(Config.NLayers, _kvDim, contextLength, KvType);

    public void Forward(ReadOnlySpan<TokenId> tokens, IKvCache cache, Span<float> logits)
    {
        int t = tokens.Length;
        var kv = CheckCache(cache);
        if (t == 0)
        {
            throw new ArgumentException("Forward needs at least one token", nameof(tokens));
        }
        if ((long)kv.Length + t > kv.MaxLength)
        {
            throw new ContextLengthExceededException(
                $"running {t} tokens from position {kv.Length} needs {(long)kv.Length + t} positions; the cache holds at most {kv.MaxLength}");
        }
        bool allPositions = (long)logits.Length == (long)t * _vocab;
        if (!allPositions && logits.Length != _vocab)
        {
            throw new ArgumentException($"logits has {logits.Length} values; expected {(long)t * _vocab} (T x V, every position) or {_vocab} (V, last position)", nameof(logits));
        }
        for (int i = 0; i < t; i++)
        {
            if ((uint)tokens[i].Value >= (uint)_vocab)
            {
                throw new ArgumentOutOfRangeException(nameof(tokens), tokens[i].Value, $"token at index {i} is outside the vocabulary 0 .. {_vocab - 1}");
            }
        }
        int perPass = Math.Max(1, MaxTokensPerPass);
        lock (_gate)
        {
            for (int start = 0; start < t; start += perPass)
            {
                int n = Math.Min(perPass, t - start);
                var passLogits = allPositions ? logits.Slice(start * _vocab, n * _vocab)
                    : start + n == t ? logits : Span<float>.Empty;
                Pass(tokens.Slice(start, n), kv, passLogits, allPositions);
            }
        }
    }

    private KvCache CheckCache(IKvCache cache)
    {
        ArgumentNullException.ThrowIfNull(cache);
        if (cache is not KvCache kv || kv.Layers != Config.NLayers || kv.KvDim != _kvDim)
        {
            throw new ArgumentException($"the cache was not made by this model's CreateCache (expected {Config.NLayers} layers of {_kvDim}-wide rows)", nameof(cache));
        }
        if (kv.KvType != KvType)
        {
            throw new ArgumentException($"the cache stores {kv.KvType} rows; this model's KvType is {KvType} (make the cache with its CreateCache)", nameof(cache));
        }
        if (kv.Capacity < Math.Min(_window ?? int.MaxValue, kv.MaxLength))
        {
            throw new ArgumentException($"the cache holds {kv.Capacity} positions; this model attends up to {Math.Min(_window ?? int.MaxValue, kv.MaxLength)}", nameof(cache));
        }
        return kv;
    }

    /// <summary>One batched pass of T tokens at positions P .. P + T - 1 through every layer.</summary>
    private void Pass(ReadOnlySpan<TokenId> tokens, KvCache cache, Span<float> logits, bool allPositions)
    {
        int t = tokens.Length, p = cache.Length;
        var s = ScratchFor(t);
        Embed(tokens, s.X);
        RopeAngles(p, t, s);
        for (int l = 0; l < _w.Layers.Count; l++)
        {
            var layer = _w.Layers[l];
            RmsNormRows(s.X, layer.AttentionNorm, s.Xn, t);
            Attention(layer, l, cache, p, t, s);
            ResidualAndFeedForward(layer, t, s);
        }
        cache.Advance(t);
        if (!logits.IsEmpty)
        {
            OutputHead(t, allPositions, logits, s);
        }
    }

    /// <summary>x[t] = TokenEmbedding[token t]. x: (T, D).</summary>
    private void Embed(ReadOnlySpan<TokenId> tokens, float[] x)
    {
        for (int i = 0; i < tokens.Length; i++)
        {
            _w.TokenEmbedding.ReadRow(tokens[i].Value, x.AsSpan(i * _dim, _dim));
        }
    }

    /// <summary>RoPE tables of positions P .. P + T - 1: s.Cos, s.Sin (T, Dh).</summary>
    private void RopeAngles(int p, int t, Scratch s)
    {
        for (int i = 0; i < t; i++)
        {
            _rope.Fill(p + i, s.Cos.AsSpan(i * _headDim, _headDim), s.Sin.AsSpan(i * _headDim, _headDim));
        }
    }

    /// <summary>y[t] = RMSNorm(x[t]) * weight for each of T rows of D.</summary>
    private void RmsNormRows(float[] x, float[] weight, float[] y, int t)
    {
        long start = NumericsProfile.Start();
        for (int i = 0; i < t; i++)
        {
            Kernels.RmsNorm(x.AsSpan(i * _dim, _dim), weight, Config.NormEps, y.AsSpan(i * _dim, _dim));
        }
        NumericsProfile.Stop(ProfileSection.RmsNorm, start);
    }

    /// <summary>
    /// Grouped-query self-attention of the normalised rows s.Xn (T, D) into s.Out (T, D).
    /// q = Wq xn (T, Hq, Dh), k = Wk xn and v = Wv xn (T, Hkv, Dh); RoPE on q and k; query head h reads
    /// kv head h / (Hq / Hkv). The query at position p attends positions max(0, p - W + 1) .. p
    /// (0 .. p without a window): those before P from the cache, the rest from this pass's k and v.
    /// Afterwards the pass's last min(T, S) positions are written to the cache.
    /// </summary>
    private void Attention(LayerWeights layer, int l, KvCache cache, int p, int t, Scratch s)
    {
        ProjectQkv(layer, t, s);
        ApplyRope(s.Q, _qDim, t, s);
        ApplyRope(s.K, _kvDim, t, s);
        RoundToKvType(t, s);

        long attentionStart = NumericsProfile.Start();
        long keys = Math.Min(_window ?? int.MaxValue, p + t);
        long work = keys * t * _nHeads * _headDim;
        int items = t * _nHeads;
        if (TiledAttention)
        {
            if (_kvSources.Length < 1)
            {
                _kvSources = new KvSource[1];
            }
            _kvSources[0] = new KvSource(cache, null, p, 0);
            int count = 0, parts = 0;
            AddTiles(ref _tileItems, ref count, 0, t, p, ref parts);
            RunTiles(l, _kvSources, _tileItems, count, parts, work, s);
        }
        else if (work < ParallelAttentionThreshold || items == 1)
        {
            var scores = s.ScoresFor((int)keys);
            for (int i = 0; i < items; i++)
            {
                AttendOne(l, cache, p, i / _nHeads, i % _nHeads, s, scores);
            }
        }
        else
        {
            Parallel.For(0, items, NumericsThreads.Options,
                () => ArrayPool<float>.Shared.Rent((int)keys),
                (i, _, scores) =>
                {
                    AttendOne(l, cache, p, i / _nHeads, i % _nHeads, s, scores);
                    return scores;
                },
                scores => ArrayPool<float>.Shared.Return(scores));
        }
        NumericsProfile.Stop(ProfileSection.Attention, attentionStart);

        long writeStart = NumericsProfile.Start();
        for (int pos = Math.Max(p, p + t - cache.Capacity); pos < p + t; pos++)
        {
            int row = (pos - p) * _kvDim;
            cache.Write(l, pos, s.K.AsSpan(row, _kvDim), s.V.AsSpan(row, _kvDim));
        }
        NumericsProfile.Stop(ProfileSection.Other, writeStart);
        layer.Wo.MatMul(s.Att.AsSpan(0, t * _qDim), s.Out.AsSpan(0, t * _dim), t);
    }

    /// <summary>
    /// Runs several sequences in one pass: the tokens of all entries are stacked into one (T, D)
    /// batch, T = sum of the entries' token counts, so every weight matrix is read once per call for
    /// the whole batch; attention runs per entry against its own cache. Entry i's tokens sit at
    /// positions cache_i.Length .. cache_i.Length + T_i - 1; afterwards each cache has advanced by
    /// T_i. Logits of an entry are (V) for its last token, or nothing when its Logits is empty (a
    /// prefill chunk that samples nothing). Exactly the arithmetic of <see cref="Forward"/> per row for
    /// F32 weights, so a sequence gets the same logits batched as alone. For quantized weights the
    /// product kernel depends on how many rows one product has (per-token / tiled kernels below 16
    /// rows, rows-in-lanes kernels from 16 up), and those sum the block dot products in different
    /// orders: batched and solo logits of a quantized model agree only to float rounding (a sampled
    /// token can differ where two logits are within rounding of each other).
    /// <para>
    /// Example: entries A (3 prompt tokens, empty cache) and B (1 token, cache.Length 17) make stacked
    /// rows 0..2 = A at positions 0..2 and row 3 = B at position 17; row 3's queries attend B's
    /// cached positions 0..16 (or the window) plus its own key; A's rows attend only A's rows.
    /// </para>
    /// The caller bounds T (the scratch buffers grow to it). Entries must use distinct caches.
    /// </summary>
    public void ForwardBatch(IReadOnlyList<BatchEntry> batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        int total = 0, sampling = 0;
        var seen = new HashSet<IPositionalKvCache>(ReferenceEqualityComparer.Instance);
        for (int e = 0; e < batch.Count; e++)
        {
            var entry = batch[e];
            var tokens = entry.Tokens.Span;
            var cache = entry.Cache ?? throw new ArgumentException($"batch entry {e} has no cache", nameof(batch));
            if (tokens.Length == 0)
            {
                throw new ArgumentException($"batch entry {e} has no tokens", nameof(batch));
            }
            if (cache.Layers != Config.NLayers || cache.KvDim != _kvDim)
            {
                throw new ArgumentException($"batch entry {e}: the cache has {cache.Layers} layers of {cache.KvDim}-wide rows; this model needs {Config.NLayers} of {_kvDim}", nameof(batch));
            }
            if (cache.KvType != KvType)
            {
                throw new ArgumentException($"batch entry {e}: the cache stores {cache.KvType} rows; this model's KvType is {KvType}", nameof(batch));
            }
            if (!seen.Add(cache))
            {
                throw new ArgumentException($"batch entry {e} shares its cache with an earlier entry", nameof(batch));
            }
            if ((long)cache.Length + tokens.Length > cache.MaxLength)
            {
                throw new ContextLengthExceededException(
                    $"batch entry {e}: running {tokens.Length} tokens from position {cache.Length} needs {(long)cache.Length + tokens.Length} positions; the cache holds at most {cache.MaxLength}");
            }
            if (entry.Logits.Length != 0 && entry.Logits.Length != _vocab)
            {
                throw new ArgumentException($"batch entry {e}: logits has {entry.Logits.Length} values; expected {_vocab} (V) or none", nameof(batch));
            }
            for (int i = 0; i < tokens.Length; i++)
            {
                if ((uint)tokens[i].Value >= (uint)_vocab)
                {
                    throw new ArgumentOutOfRangeException(nameof(batch), tokens[i].Value, $"batch entry {e}: token at index {i} is outside the vocabulary 0 .. {_vocab - 1}");
                }
            }
            total = checked(total + tokens.Length);
            if (entry.Logits.Length != 0)
            {
                sampling++;
            }
        }
        if (total == 0)
        {
            return;
        }

        lock (_gate)
        {
            var s = ScratchFor(total);
            var rowEntry = new int[total];   // (T) entry of each stacked row
            var rowStart = new int[batch.Count]; // first stacked row of each entry
            int row = 0;
            for (int e = 0; e < batch.Count; e++)
            {
                var tokens = batch[e].Tokens.Span;
                int p = batch[e].Cache.Length;
                rowStart[e] = row;
                for (int i = 0; i < tokens.Length; i++, row++)
                {
                    rowEntry[row] = e;
                    _w.TokenEmbedding.ReadRow(tokens[i].Value, s.X.AsSpan(row * _dim, _dim));
                    _rope.Fill(p + i, s.Cos.AsSpan(row * _headDim, _headDim), s.Sin.AsSpan(row * _headDim, _headDim));
                }
            }
            for (int l = 0; l < _w.Layers.Count; l++)
            {
                var layer = _w.Layers[l];
                RmsNormRows(s.X, layer.AttentionNorm, s.Xn, total);
                BatchAttention(layer, l, batch, rowEntry, rowStart, total, s);
                ResidualAndFeedForward(layer, total, s);
            }
            for (int e = 0; e < batch.Count; e++)
            {
                batch[e].Cache.Advance(batch[e].Tokens.Length);
            }
            if (sampling == 0)
            {
                return;
            }
            // Final norm of each sampling entry's last row, gathered into (S, D); one (S, V) product.
            int k = 0;
            for (int e = 0; e < batch.Count; e++)
            {
                if (batch[e].Logits.Length != 0)
                {
                    int last = rowStart[e] + batch[e].Tokens.Length - 1;
                    Kernels.RmsNorm(s.X.AsSpan(last * _dim, _dim), _w.FinalNorm, Config.NormEps, s.Xn.AsSpan(k * _dim, _dim));
                    k++;
                }
            }
            if (_batchLogits.Length < (long)k * _vocab)
            {
                _batchLogits = new float[(long)k * _vocab];
            }
            _w.Output.MatMul(s.Xn.AsSpan(0, k * _dim), _batchLogits.AsSpan(0, k * _vocab), k);
            k = 0;
            for (int e = 0; e < batch.Count; e++)
            {
                if (batch[e].Logits.Length != 0)
                {
                    _batchLogits.AsSpan(k++ * _vocab, _vocab).CopyTo(batch[e].Logits.Span);
                }
            }
        }
    }

    /// <summary>
    /// q = Wq xn (T, Hq Dh), k = Wk xn, v = Wv xn (T, Hkv Dh) of s.Xn (T, D) into s.Q, s.K, s.V: quantized matrices run
    /// as one parallel job, sharing one activation quantization where their formats match (the same results as three
    /// products one after the other).
    /// </summary>
    private static void ProjectQkv(LayerWeights layer, int t, Scratch s)
    {
        var batch = s.Products;
        Product(batch, layer.Wq, s.Xn, 0, t, s.Q, 0);
        Product(batch, layer.Wk, s.Xn, 0, t, s.K, 0);
        Product(batch, layer.Wv, s.Xn, 0, t, s.V, 0);
        batch.Run();
    }

    /// <summary>
    /// <see cref="Attention"/> over the stacked rows of several entries: one Wq/Wk/Wv/Wo product for
    /// all T rows; stacked row r belongs to entry rowEntry[r] at position cache.Length + r - rowStart[entry].
    /// </summary>
    private void BatchAttention(LayerWeights layer, int l, IReadOnlyList<BatchEntry> batch, int[] rowEntry, int[] rowStart, int t, Scratch s)
    {
        ProjectQkv(layer, t, s);
        ApplyRope(s.Q, _qDim, t, s);
        ApplyRope(s.K, _kvDim, t, s);
        RoundToKvType(t, s);

        long maxKeys = 1, work = 0;
        for (int e = 0; e < batch.Count; e++)
        {
            int n = batch[e].Tokens.Length;
            long keys = Math.Min(_window ?? int.MaxValue, batch[e].Cache.Length + n);
            maxKeys = Math.Max(maxKeys, keys);
            work += keys * n * _nHeads * _headDim;
        }
        int items = t * _nHeads;
        if (TiledAttention)
        {
            if (_kvSources.Length < batch.Count)
            {
                _kvSources = new KvSource[batch.Count];
            }
            int count = 0, parts = 0;
            for (int e = 0; e < batch.Count; e++)
            {
                _kvSources[e] = new KvSource(null, batch[e].Cache, batch[e].Cache.Length, rowStart[e]);
                AddTiles(ref _tileItems, ref count, e, batch[e].Tokens.Length, batch[e].Cache.Length, ref parts);
            }
            RunTiles(l, _kvSources, _tileItems, count, parts, work, s);
        }
        else if (work < ParallelAttentionThreshold || items == 1)
        {
            var scores = s.ScoresFor((int)maxKeys);
            for (int i = 0; i < items; i++)
            {
                AttendStacked(l, batch, rowEntry, rowStart, i / _nHeads, i % _nHeads, s, scores);
            }
        }
        else
        {
            Parallel.For(0, items, NumericsThreads.Options,
                () => ArrayPool<float>.Shared.Rent((int)maxKeys),
                (i, _, scores) =>
                {
                    AttendStacked(l, batch, rowEntry, rowStart, i / _nHeads, i % _nHeads, s, scores);
                    return scores;
                },
                scores => ArrayPool<float>.Shared.Return(scores));
        }

        for (int e = 0; e < batch.Count; e++)
        {
            var cache = batch[e].Cache;
            int p = cache.Length, r0 = rowStart[e];
            for (int i = 0; i < batch[e].Tokens.Length; i++)
            {
                int r = (r0 + i) * _kvDim;
                cache.Write(l, p + i, s.K.AsSpan(r, _kvDim), s.V.AsSpan(r, _kvDim));
            }
        }
        layer.Wo.MatMul(s.Att.AsSpan(0, t * _qDim), s.Out.AsSpan(0, t * _dim), t);
    }

    /// <summary>As <see cref="AttendOne"/> for stacked row <paramref name="r"/>, query head <paramref name="h"/>.</summary>
    private void AttendStacked(int l, IReadOnlyList<BatchEntry> batch, int[] rowEntry, int[] rowStart, int r, int h, Scratch s, float[] scoreBuffer)
    {
        int e = rowEntry[r], r0 = rowStart[e];
        var cache = batch[e].Cache;
        int p = cache.Length;
        int pos = p + r - r0;
        int lo = _window is { } w ? Math.Max(0, pos - w + 1) : 0;
        int n = pos - lo + 1;
        int kvOffset = h / _group * _headDim;
        var q = s.Q.AsSpan(r * _qDim + h * _headDim, _headDim);
        var scores = scoreBuffer.AsSpan(0, n);
        var row = RowScratch(_headDim).AsSpan(0, _headDim); // (Dh) a cached F16 row, widened
        for (int j = lo; j <= pos; j++)
        {
            var key = j < p ? cache.KeyRow(l, j).Slice(kvOffset, _headDim).AsFloats(row) : s.K.AsSpan((r0 + j - p) * _kvDim + kvOffset, _headDim);
            scores[j - lo] = Kernels.Dot(q, key) * _scale;
        }
        Kernels.Softmax(scores);
        var o = s.Att.AsSpan(r * _qDim + h * _headDim, _headDim);
        o.Clear();
        for (int j = lo; j <= pos; j++)
        {
            var value = j < p ? cache.ValueRow(l, j).Slice(kvOffset, _headDim).AsFloats(row) : s.V.AsSpan((r0 + j - p) * _kvDim + kvOffset, _headDim);
            Kernels.Axpy(scores[j - lo], value, o);
        }
    }

    /// <summary>
    /// For an F16 <see cref="KvType"/>, rounds the pass's keys and values s.K, s.V (T, Hkv * Dh) to half precision in
    /// place, so attention reads from the pass exactly the numbers the cache will hold; nothing for F32.
    /// </summary>
    private void RoundToKvType(int t, Scratch s)
    {
        if (KvType == KvCacheType.F16)
        {
            long start = NumericsProfile.Start();
            HalfConversion.RoundToHalf(s.K.AsSpan(0, t * _kvDim));
            HalfConversion.RoundToHalf(s.V.AsSpan(0, t * _kvDim));
            NumericsProfile.Stop(ProfileSection.Other, start);
        }
    }

    [ThreadStatic]
    private static float[]? t_rowScratch;

    /// <summary>A per-thread buffer of at least <paramref name="n"/> floats that cached F16 rows are widened into.</summary>
    private static float[] RowScratch(int n)
    {
        if (t_rowScratch is null || t_rowScratch.Length < n)
        {
            t_rowScratch = new float[n];
        }
        return t_rowScratch;
    }

    /// <summary>RoPE on every head of every row of x (T, width), width = heads * Dh.</summary>
    private void ApplyRope(float[] x, int width, int t, Scratch s)
    {
        long start = NumericsProfile.Start();
        for (int i = 0; i < t; i++)
        {
            var cos = s.Cos.AsSpan(i * _headDim, _headDim);
            var sin = s.Sin.AsSpan(i * _headDim, _headDim);
            for (int h = 0; h < width; h += _headDim)
            {
                Kernels.Rope(x.AsSpan(i * width + h, _headDim), cos, sin);
            }
        }
        NumericsProfile.Stop(ProfileSection.Rope, start);
    }

    /// <summary>Attention output s.Att[ti, h] (Dh) of query head h of pass row ti (position P + ti).</summary>
    private void AttendOne(int l, KvCache cache, int p, int ti, int h, Scratch s, float[] scoreBuffer)
    {
        int pos = p + ti;
        int lo = _window is { } w ? Math.Max(0, pos - w + 1) : 0;
        int n = pos - lo + 1;
        int kvOffset = h / _group * _headDim;
        var q = s.Q.AsSpan(ti * _qDim + h * _headDim, _headDim);
        var scores = scoreBuffer.AsSpan(0, n);
        var row = RowScratch(_headDim).AsSpan(0, _headDim); // (Dh) a cached F16 row, widened
        for (int j = lo; j <= pos; j++)
        {
            var key = j < p ? cache.KeyRow(l, j).Slice(kvOffset, _headDim).AsFloats(row) : s.K.AsSpan((j - p) * _kvDim + kvOffset, _headDim);
            scores[j - lo] = Kernels.Dot(q, key) * _scale;
        }
        Kernels.Softmax(scores);
        var o = s.Att.AsSpan(ti * _qDim + h * _headDim, _headDim);
        o.Clear();
        for (int j = lo; j <= pos; j++)
        {
            var value = j < p ? cache.ValueRow(l, j).Slice(kvOffset, _headDim).AsFloats(row) : s.V.AsSpan((j - p) * _kvDim + kvOffset, _headDim);
            Kernels.Axpy(scores[j - lo], value, o);
        }
    }

    /// <summary>
    /// The rest of a layer once attention has written s.Out (T, D): x += out, then x += FFN(RMSNorm(x)) with the
    /// dense SwiGLU or the MoE. s.X: (T, D) residual stream; s.Xn, s.Out: (T, D) scratch.
    /// </summary>
    private void ResidualAndFeedForward(LayerWeights layer, int t, Scratch s)
    {
        AddInPlace(s.X, s.Out, t * _dim);
        RmsNormRows(s.X, layer.FfnNorm, s.Xn, t);
        if (layer.Moe is { } moe)
        {
            MixtureOfExperts(moe, t, s);
        }
        else
        {
            FeedForward(layer.FeedForward!, s.Xn, s.Out, t, s);
        }
        AddInPlace(s.X, s.Out, t * _dim);
    }

    /// <summary>
    /// SwiGLU: y = W2 (silu(W1 x) * (W3 x)) for n rows. x: (n, D), y: (n, D); uses s.H1, s.H3 (n, F).
    /// W1 and W3 run as one parallel job (one activation quantization when both are quantized alike), then
    /// silu(h1) * h3 in parallel ranges, then W2.
    /// </summary>
    private void FeedForward(FeedForwardWeights ffn, float[] x, float[] y, int n, Scratch s)
    {
        var batch = s.Products;
        Product(batch, ffn.W1, x, 0, n, s.H1, 0);
        Product(batch, ffn.W3, x, 0, n, s.H3, 0);
        batch.Run();
        long start = NumericsProfile.Start();
        s.SwiGluDense(n * _hidden);
        NumericsProfile.Stop(ProfileSection.SwiGlu, start);
        ffn.W2.MatMul(s.H1.AsSpan(0, n * _hidden), y.AsSpan(0, n * _dim), n);
    }

    /// <summary>
    /// Sparse MoE of s.Xn (T, D) into s.Out (T, D), as mistral-inference moe.py: router logits (T, E),
    /// top-A experts per token with softmax weights (<see cref="MoeRouting"/>); then every expert e runs once on the
    /// rows of the tokens routed to it, gathered into (n_e, D), and out[token] += weight * result, adding in expert
    /// order e = 0 .. E-1 (so a token's sum does not depend on how the experts are batched).
    /// <para>Execution: the (token, slot) pairs are sorted by expert (<see cref="MoeRouting.GroupByExpert"/>); experts
    /// with no rows are skipped; consecutive experts are taken in chunks of at most C = max(T, A) gathered rows (the
    /// scratch holds (C, F)); per chunk, W1 and W3 of all its experts run as one parallel job with one activation
    /// quantization per expert (<see cref="QuantizedProductBatch"/>), SwiGLU runs one expert per work item, then the
    /// W2 products run as one job. A decode step (T = 1, A = 2) is thus two jobs for its two experts, a 256-token
    /// prefill pass about 2 x A jobs, each weight read once per pass. Quantized results are bit-identical to running
    /// each expert alone; other matrix types run product by product.</para>
    /// Worked example, T = 3, A = 2, E = 4, tokens routed to (0: e2, e0), (1: e2, e3), (2: e0, e2): by expert, rows
    /// (token 0, token 2 | token 0, token 1, token 2 | token 1), starts (0, 2, 2, 5, 6); C = 3: chunks {e0, e1} (2 rows,
    /// e1 has none and is skipped), {e2} (3 rows), {e3} (1 row), since e0 + e2 would need 5 rows.
    /// </summary>
    private void MixtureOfExperts(MoeWeights moe, int t, Scratch s)
    {
        int e = Config.NExperts, a = Config.NExpertsPerToken, d = _dim, f = _hidden;
        moe.Router.MatMul(s.Xn.AsSpan(0, t * d), s.RouterLogits.AsSpan(0, t * e), t);
        for (int i = 0; i < t; i++)
        {
            MoeRouting.Route(s.RouterLogits.AsSpan(i * e, e), s.Selected.AsSpan(i * a, a), s.SelectedWeights.AsSpan(i * a, a));
        }
        MoeRouting.GroupByExpert(s.Selected.AsSpan(0, t * a), a, s.ExpertStart, s.RoutedToken, s.RoutedWeight, s.SelectedWeights.AsSpan(0, t * a));
        s.Out.AsSpan(0, t * d).Clear();
        int capacity = s.MoeRows;
        for (int e0 = 0; e0 < e;)
        {
            int e1 = e0, r0 = s.ExpertStart[e0];
            while (e1 < e && s.ExpertStart[e1 + 1] - r0 <= capacity)
            {
                e1++;
            }
            int rows = s.ExpertStart[e1] - r0;
            // Gather: chunk row j (0 <= j < rows) = Xn[RoutedToken[r0 + j]].
            for (int j = 0; j < rows; j++)
            {
                s.Xn.AsSpan(s.RoutedToken[r0 + j] * d, d).CopyTo(s.Gathered.AsSpan(j * d, d));
            }
            var batch = s.Products;
            for (int x = e0; x < e1; x++)
            {
                int off = s.ExpertStart[x] - r0, n = s.ExpertStart[x + 1] - s.ExpertStart[x];
                if (n > 0)
                {
                    Product(batch, moe.Experts[x].W1, s.Gathered, off * d, n, s.H1, off * f);
                    Product(batch, moe.Experts[x].W3, s.Gathered, off * d, n, s.H3, off * f);
                }
            }
            batch.Run();
            s.SwiGlu(s.ExpertStart.AsSpan(e0, e1 - e0 + 1), r0, f);
            for (int x = e0; x < e1; x++)
            {
                int off = s.ExpertStart[x] - r0, n = s.ExpertStart[x + 1] - s.ExpertStart[x];
                if (n > 0)
                {
                    Product(batch, moe.Experts[x].W2, s.H1, off * f, n, s.ExpertOut, off * d);
                }
            }
            batch.Run();
            // Scatter in expert order: out[token] += weight * result.
            for (int j = 0; j < rows; j++)
            {
                Kernels.Axpy(s.RoutedWeight[r0 + j], s.ExpertOut.AsSpan(j * d, d), s.Out.AsSpan(s.RoutedToken[r0 + j] * d, d));
            }
            e0 = e1;
        }
    }

    /// <summary>y (n, N) from yOffset = W x, x (n, K) from xOffset: queued on the batch when W is quantized, else run now.</summary>
    private static void Product(QuantizedProductBatch batch, WeightMatrix w, float[] x, int xOffset, int n, float[] y, int yOffset)
    {
        if (w is QuantizedMatrix q)
        {
            batch.Add(q, x, xOffset, n, y, yOffset);
        }
        else
        {
            w.MatMul(x.AsSpan(xOffset, n * w.Cols), y.AsSpan(yOffset, n * w.Rows), n);
        }
    }

    /// <summary>logits = Output · RMSNorm(x, FinalNorm): (T, V) for every row, or (V) for the last.</summary>
    private void OutputHead(int t, bool allPositions, Span<float> logits, Scratch s)
    {
        if (allPositions)
        {
            RmsNormRows(s.X, _w.FinalNorm, s.Xn, t);
            _w.Output.MatMul(s.Xn.AsSpan(0, t * _dim), logits, t);
        }
        else
        {
            var last = s.Xn.AsSpan(0, _dim);
            Kernels.RmsNorm(s.X.AsSpan((t - 1) * _dim, _dim), _w.FinalNorm, Config.NormEps, last);
            _w.Output.MatVec(last, logits);
        }
    }

    private static void AddInPlace(float[] x, float[] y, int n)
    {
        long start = NumericsProfile.Start();
        System.Numerics.Tensors.TensorPrimitives.Add(x.AsSpan(0, n), y.AsSpan(0, n), x.AsSpan(0, n));
        NumericsProfile.Stop(ProfileSection.Other, start);
    }

    private Scratch ScratchFor(int t)
    {
        if (_s.Tokens < t)
        {
            _s = new Scratch(t, this);
        }
        return _s;
    }

    /// <summary>Per-pass buffers for up to <see cref="Tokens"/> tokens, reused across calls.</summary>
    private sealed class Scratch
    {
        private float[] _scores = [];

        public Scratch(int t, Transformer m)
        {
            Tokens = t;
            if (t == 0)
            {
                X = Xn = Out = Q = Att = K = V = Cos = Sin = H1 = H3 = RouterLogits = SelectedWeights = [];
                Selected = [];
                return;
            }
            var c = m.Config;
            X = new float[t * m._dim];
            Xn = new float[t * m._dim];
            Out = new float[t * m._dim];
            Q = new float[t * m._qDim];
            Att = new float[t * m._qDim];
            K = new float[t * m._kvDim];
            V = new float[t * m._kvDim];
            Cos = new float[t * m._headDim];
            Sin = new float[t * m._headDim];
            // MoE: chunks of at most C = max(T, A) gathered rows, so a decode step runs both its experts in one job.
            MoeRows = c.IsMoE ? Math.Max(t, c.NExpertsPerToken) : 0;
            H1 = new float[Math.Max(t, MoeRows) * m._hidden];
            H3 = new float[Math.Max(t, MoeRows) * m._hidden];
            RouterLogits = new float[t * c.NExperts];
            Selected = new int[t * c.NExpertsPerToken];
            SelectedWeights = new float[t * c.NExpertsPerToken];
            Gathered = new float[MoeRows * m._dim];
            ExpertOut = new float[MoeRows * m._dim];
            RoutedToken = new int[c.IsMoE ? t * c.NExpertsPerToken : 0];
            RoutedWeight = new float[c.IsMoE ? t * c.NExpertsPerToken : 0];
            ExpertStart = new int[c.IsMoE ? c.NExperts + 1 : 0];
            _swiGluItem = SwiGluItem;
        }

        public int Tokens { get; }

        public float[] X { get; }            // (T, D) residual stream
        public float[] Xn { get; }           // (T, D) normalised rows
        public float[] Out { get; }          // (T, D) block output
        public float[] Q { get; }            // (T, Hq * Dh)
        public float[] Att { get; }          // (T, Hq * Dh) attention output before Wo
        public float[] K { get; }            // (T, Hkv * Dh)
        public float[] V { get; }            // (T, Hkv * Dh)
        public float[] Cos { get; }          // (T, Dh)
        public float[] Sin { get; }          // (T, Dh)
        public float[] H1 { get; }           // (max(T, C), F)
        public float[] H3 { get; }           // (max(T, C), F)
        public float[] RouterLogits { get; } // (T, E)
        public int[] Selected { get; }       // (T, A)
        public float[] SelectedWeights { get; } // (T, A)
        public int MoeRows { get; }          // C = max(T, A): gathered rows per MoE chunk (0 without MoE)
        public float[] Gathered { get; } = []; // (C, D) rows of one chunk of experts
        public float[] ExpertOut { get; } = [];  // (C, D)
        public int[] RoutedToken { get; } = [];  // (T * A) token of each routed row, sorted by expert
        public float[] RoutedWeight { get; } = []; // (T * A) its routing weight
        public int[] ExpertStart { get; } = [];  // (E + 1) expert e's rows are [ExpertStart[e], ExpertStart[e + 1])
        public QuantizedProductBatch Products { get; } = new();

        private readonly Action<int> _swiGluItem = null!;
        private int _swiGluBase, _swiGluHidden;
        private int[] _swiGluStarts = [];
        private int _swiGluCount;

        /// <summary>
        /// H1 = silu(H1) * H3 over each expert's rows of a chunk, one expert per work item (each call covers exactly the
        /// rows one expert alone would). starts: (experts + 1) routed-row starts; chunk row = routed row - r0.
        /// </summary>
        public void SwiGlu(ReadOnlySpan<int> starts, int r0, int hidden)
        {
            if (_swiGluStarts.Length < starts.Length)
            {
                _swiGluStarts = new int[starts.Length];
            }
            starts.CopyTo(_swiGluStarts);
            (_swiGluBase, _swiGluHidden, _swiGluCount) = (r0, hidden, starts.Length - 1);
            NumericsThreads.For(_swiGluCount, _swiGluItem);
        }

        /// <summary>
        /// H1[i] = silu(H1[i]) * H3[i] for i &lt; <paramref name="count"/> (a dense FFN's n F values): on the calling
        /// thread below <see cref="SwiGluParallelValues"/>, else in ranges of whole 16-float lines on the worker pool
        /// (<see cref="SwiGlu"/> with starts in values: unit hidden size).
        /// </summary>
        public void SwiGluDense(int count)
        {
            int threads = NumericsThreads.MaxThreads;
            if (threads == 1 || count < SwiGluParallelValues)
            {
                Kernels.SiluMul(H1.AsSpan(0, count), H3.AsSpan(0, count));
                return;
            }
            int items = 2 * threads;
            Span<int> starts = stackalloc int[items + 1];
            for (int i = 0; i <= items; i++)
            {
                starts[i] = i == items ? count : (int)((long)i * count / items) & ~15;
            }
            SwiGlu(starts, 0, 1);
        }

        /// <summary>Values from which <see cref="SwiGluDense"/> splits the work (a decode step's 14336 run inline).</summary>
        private const int SwiGluParallelValues = 1 << 16;

        private void SwiGluItem(int x)
        {
            int off = (_swiGluStarts[x] - _swiGluBase) * _swiGluHidden;
            int len = (_swiGluStarts[x + 1] - _swiGluStarts[x]) * _swiGluHidden;
            if (len > 0)
            {
                Kernels.SiluMul(H1.AsSpan(off, len), H3.AsSpan(off, len));
            }
        }

        /// <summary>A score buffer of at least <paramref name="n"/> values (grown by doubling).</summary>
        public float[] ScoresFor(int n)
        {
            if (_scores.Length < n)
            {
                _scores = new float[Math.Max(n, _scores.Length * 2)];
            }
            return _scores;
        }
    }
}

/// <summary>
/// A per-sequence KV cache addressed by position, as <see cref="Transformer.ForwardBatch"/> reads and
/// writes it (a paged cache, say). Rows are (Hkv * Dh) = <see cref="KvDim"/> wide and hold keys after RoPE.
/// </summary>
public interface IPositionalKvCache : IKvCache
{
    /// <summary>L.</summary>
    int Layers { get; }

    /// <summary>Hkv * Dh.</summary>
    int KvDim { get; }

    /// <summary>How the rows are stored (must match the model's <see cref="Transformer.KvType"/>).</summary>
    KvCacheType KvType { get; }

    /// <summary>Key row of a held position below <see cref="IKvCache.Length"/>, as stored.</summary>
    KvRow KeyRow(int layer, int position);

    /// <summary>Value row of a held position below <see cref="IKvCache.Length"/>, as stored.</summary>
    KvRow ValueRow(int layer, int position);

    /// <summary>Stores the rows of a position being run (at or after Length, before the matching <see cref="Advance"/>), rounded to <see cref="KvType"/>.</summary>
    void Write(int layer, int position, ReadOnlySpan<float> key, ReadOnlySpan<float> value);

    /// <summary>Marks <paramref name="tokens"/> more positions as computed (after every layer wrote them).</summary>
    void Advance(int tokens);
}

/// <summary>One sequence of a <see cref="Transformer.ForwardBatch"/>: its tokens, its cache, and (V) logits of its last token or empty for none.</summary>
public readonly record struct BatchEntry(ReadOnlyMemory<TokenId> Tokens, IPositionalKvCache Cache, Memory<float> Logits);
