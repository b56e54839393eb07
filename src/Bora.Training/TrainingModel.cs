using System.Numerics;
using Bora.Model;
using Bora.Numerics;

namespace Bora.Training;

/// <summary>Settings of a <see cref="TrainingModel{T}"/>.</summary>
public sealed record TrainingModelOptions
{
    /// <summary>
    /// Coefficient of the MoE load-balancing loss (Switch Transformer eq. 4, Mixtral's
    /// router_aux_loss_coef, which defaults to 0.02 in transformers). Ignored for dense models.
    /// </summary>
    public double AuxLossCoefficient { get; init; } = 0.02;

    /// <summary>Most threads any parallel loop uses; results do not depend on it.</summary>
    public int MaxThreads { get; init; } = Environment.ProcessorCount;
}

/// <summary>
/// A replacement for the product of one weight matrix W (out, in) inside a <see cref="TrainingModel{T}"/>
/// (see its constructor). Arrays may be longer than the rows used; only the first rows * width values count.
/// </summary>
public interface ILinearOp<T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>y (rows, out) = x (rows, in) · W_effᵀ.</summary>
    void Forward(T[] x, T[] y, int rows);

    /// <summary>
    /// Backward of <see cref="Forward"/> on the same x: dx (rows, in) = dy (rows, out) · W_eff (or += with
    /// <paramref name="accumulateDx"/>), plus whatever gradients the op owns.
    /// </summary>
    void Backward(T[] x, T[] dy, T[] dx, int rows, bool accumulateDx);
}

/// <summary>
/// The Mistral / Mixtral forward pass over a batch of B sequences of T tokens each (every sequence
/// starts at position 0), caching the activations the hand-written backward pass needs (llm.c style).
/// Generic over the float type: <c>float</c> trains, <c>double</c> is the twin the gradient checks use.
/// <para>
/// Letters as in <see cref="ModelConfig"/>, plus B = sequences, T = tokens per sequence, N = B * T
/// rows, Qd = Hq * Dh, Kd = Hkv * Dh, G = Hq / Hkv (query heads per kv head).
/// </para>
/// <para>
/// Loss = mean cross-entropy over the targets that are not <see cref="IgnoreTarget"/>, plus
/// AuxLossCoefficient * (1/L) Σ_layers E Σ_e f_e P_e, where f_e is the number of selections of expert e
/// divided by N (so Σ f = A) and P_e is the router's full softmax probability of e averaged over the N rows.
/// The aux term is per layer and averaged over layers (Switch Transformer); transformers' Mixtral pools
/// all layers' router logits instead. Its gradient flows through P only (f is a count).
/// </para>
/// <para>
/// Determinism: every parallel loop (over rows, over (sequence, head) pairs, over GEMM tiles) writes
/// disjoint outputs, each computed in a fixed order; sums across rows (losses, norm-weight gradients,
/// expert scatter) run on one thread in row order. So results are bit-identical for any thread count.
/// </para>
/// </summary>
public sealed class TrainingModel<T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>A target that contributes no loss (e.g. padding, or a prompt token in fine-tuning).</summary>
    public const int IgnoreTarget = -1;

    private readonly ModelParameters<T> _p;
    private readonly IReadOnlyDictionary<Parameter<T>, ILinearOp<T>>? _ops;
    private readonly ModelConfig _c;
    private readonly int _b, _t, _n, _d, _hq, _hkv, _dh, _g, _qd, _kd, _f, _v, _e, _a;
    private readonly int? _window;
    private readonly T _scale, _eps, _aux;
    private readonly int _threads;
    private readonly T[] _cos, _sin; // (T, Dh) RoPE tables as Bora's RopeTable fills them
    private readonly LayerCache[] _layers;
    private readonly T[] _xFinal, _invFinal, _xnFinal, _logits, _lse, _rowLoss; // (N, D), (N), (N, D), (N, V), (N), (N)
    private readonly Dictionary<string, T[]> _scratch = [];
    private int[] _tokens = [], _targets = [];
    private int _validTargets;
    private bool _forwardDone;

    /// <summary>
    /// A model over <paramref name="parameters"/>. <paramref name="linearOps"/> (optional) takes over the products of
    /// the weight matrices it maps (e.g. LoRA over a frozen or quantized base): their forward and backward run
    /// there instead of on the parameter's dense values, and the parameter's own gradient is left alone.
    /// </summary>
    public TrainingModel(ModelParameters<T> parameters, int batch, int seqLen, TrainingModelOptions? options = null,
        IReadOnlyDictionary<Parameter<T>, ILinearOp<T>>? linearOps = null)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batch);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(seqLen);
        options ??= new TrainingModelOptions();
        _p = parameters;
        _ops = linearOps;
        _c = parameters.Config;
        if (seqLen > _c.MaxSeqLen)
        {
            throw new ArgumentOutOfRangeException(nameof(seqLen), seqLen, $"sequence length exceeds the model's max_seq_len {_c.MaxSeqLen}");
        }
        _b = batch;
        _t = seqLen;
        _n = checked(batch * seqLen);
        _d = _c.Dim;
        _hq = _c.NHeads;
        _hkv = _c.NKvHeads;
        _dh = _c.HeadDim;
        _g = _hq / _hkv;
        _qd = _hq * _dh;
        _kd = _hkv * _dh;
        _f = _c.HiddenDim;
        _v = _c.VocabSize;
        _e = _c.NExperts;
        _a = _c.NExpertsPerToken;
        _window = _c.SlidingWindow;
        _scale = T.CreateTruncating(1f / MathF.Sqrt(_dh));
        _eps = T.CreateTruncating(_c.NormEps);
        _aux = T.CreateTruncating(options.AuxLossCoefficient);
        _threads = Math.Max(1, options.MaxThreads);
        AuxLossCoefficient = options.AuxLossCoefficient;

        var rope = new RopeTable(_dh, _c.RopeTheta);
        _cos = new T[_t * _dh];
        _sin = new T[_t * _dh];
        var cos = new float[_dh];
        var sin = new float[_dh];
        for (int pos = 0; pos < _t; pos++)
        {
            rope.Fill(pos, cos, sin);
            for (int i = 0; i < _dh; i++)
            {
                _cos[pos * _dh + i] = T.CreateTruncating(cos[i]);
                _sin[pos * _dh + i] = T.CreateTruncating(sin[i]);
            }
        }
        _layers = [.. Enumerable.Range(0, _c.NLayers).Select(_ => new LayerCache(this))];
        _xFinal = new T[_n * _d];
        _invFinal = new T[_n];
        _xnFinal = new T[_n * _d];
        _logits = new T[(long)_n * _v <= Array.MaxLength ? _n * _v : throw new ArgumentException($"batch of {_n} rows x vocabulary {_v} logits is too large")];
        _lse = new T[_n];
        _rowLoss = new T[_n];
    }

    public ModelParameters<T> Parameters => _p;

    /// <summary>B.</summary>
    public int Batch => _b;

    /// <summary>T.</summary>
    public int SeqLen => _t;

    public double AuxLossCoefficient { get; }

    /// <summary>Mean cross-entropy of the last forward.</summary>
    public T CrossEntropy { get; private set; }

    /// <summary>Load-balancing term of the last forward (already times its coefficient); zero for dense models.</summary>
    public T AuxLoss { get; private set; }

    /// <summary>Targets counted by the last forward.</summary>
    public int ValidTargets => _validTargets;

    /// <summary>Logits of the last forward, (N, V) = (B, T, V).</summary>
    public ReadOnlySpan<T> Logits => _logits;

    /// <summary>
    /// Runs the batch. tokens, targets: (B * T), sequence b at [b * T, (b + 1) * T). Returns the loss
    /// (cross-entropy + aux). With no valid target the cross-entropy is zero.
    /// </summary>
    public T Forward(ReadOnlySpan<int> tokens, ReadOnlySpan<int> targets)
    {
        if (tokens.Length != _n || targets.Length != _n)
        {
            throw new ArgumentException($"tokens and targets must hold B * T = {_n} values; got {tokens.Length} and {targets.Length}");
        }
        for (int i = 0; i < _n; i++)
        {
            if ((uint)tokens[i] >= (uint)_v)
            {
                throw new ArgumentOutOfRangeException(nameof(tokens), tokens[i], $"token at index {i} is outside the vocabulary 0 .. {_v - 1}");
            }
            if (targets[i] != IgnoreTarget && (uint)targets[i] >= (uint)_v)
            {
                throw new ArgumentOutOfRangeException(nameof(targets), targets[i], $"target at index {i} is outside the vocabulary 0 .. {_v - 1} (use {IgnoreTarget} to skip)");
            }
        }
        _tokens = tokens.ToArray();
        _targets = targets.ToArray();

        var x = Buffer("x", _n * _d); // (N, D) residual stream
        var emb = _p.TokenEmbedding.Data;
        for (int i = 0; i < _n; i++)
        {
            Array.Copy(emb, _tokens[i] * _d, x, i * _d, _d);
        }
        T aux = T.Zero;
        for (int l = 0; l < _layers.Length; l++)
        {
            aux += LayerForward(l, x);
        }
        AuxLoss = _layers.Length > 0 && _e > 0 ? _aux * aux / T.CreateTruncating(_layers.Length) : T.Zero;

        Array.Copy(x, _xFinal, _n * _d);
        RmsNormForward(_xFinal, _p.FinalNorm.Data, _xnFinal, _invFinal);
        Linear(_xnFinal, _p.Output, _logits, _n);

        Rows(_n, i =>
        {
            var row = _logits.AsSpan(i * _v, _v);
            T max = row[0];
            for (int j = 1; j < row.Length; j++)
            {
                max = T.Max(max, row[j]);
            }
            T sum = T.Zero;
            for (int j = 0; j < row.Length; j++)
            {
                sum += T.Exp(row[j] - max);
            }
            _lse[i] = max + T.Log(sum);
            _rowLoss[i] = _targets[i] == IgnoreTarget ? T.Zero : _lse[i] - row[_targets[i]];
        });
        T total = T.Zero;
        _validTargets = 0;
        for (int i = 0; i < _n; i++)
        {
            if (_targets[i] != IgnoreTarget)
            {
                total += _rowLoss[i];
                _validTargets++;
            }
        }
        CrossEntropy = _validTargets > 0 ? total / T.CreateTruncating(_validTargets) : T.Zero;
        _forwardDone = true;
        return CrossEntropy + AuxLoss;
    }

    /// <summary>
    /// Adds lossScale * d(loss)/d(parameter) of the last forward to every parameter's Grad (so gradient
    /// accumulation over k micro-batches uses lossScale = 1/k).
    /// </summary>
    public void Backward(T lossScale)
    {
        if (!_forwardDone)
        {
            throw new InvalidOperationException("Backward needs a Forward first");
        }
        // Cross-entropy: dlogits = (softmax - onehot) * scale / count, in place over the logits.
        T rowScale = _validTargets > 0 ? lossScale / T.CreateTruncating(_validTargets) : T.Zero;
        var dLogits = _logits;
        Rows(_n, i =>
        {
            var row = dLogits.AsSpan(i * _v, _v);
            if (_targets[i] == IgnoreTarget)
            {
                row.Clear();
                return;
            }
            for (int j = 0; j < row.Length; j++)
            {
                row[j] = T.Exp(row[j] - _lse[i]) * rowScale;
            }
            row[_targets[i]] -= rowScale;
        });
        _forwardDone = false; // the logits are gone

        var dxn = Buffer("dxn", _n * _d);
        LinearBackward(_xnFinal, _p.Output, dLogits, dxn, _n, accumulateDx: false);
        var dx = Buffer("dx", _n * _d); // (N, D) gradient of the residual stream
        Array.Clear(dx, 0, _n * _d);
        RmsNormBackward(_xFinal, _p.FinalNorm, _invFinal, dxn, dx);

        T auxScale = _layers.Length > 0 ? lossScale * _aux / T.CreateTruncating(_layers.Length) : T.Zero;
        for (int l = _layers.Length - 1; l >= 0; l--)
        {
            LayerBackward(l, dx, auxScale);
        }
        var dEmb = _p.TokenEmbedding.Grad;
        for (int i = 0; i < _n && dEmb.Length > 0; i++) // no Grad: a frozen embedding (LoRA)
        {
            var src = dx.AsSpan(i * _d, _d);
            var dst = dEmb.AsSpan(_tokens[i] * _d, _d);
            for (int k = 0; k < _d; k++)
            {
                dst[k] += src[k];
            }
        }
    }

    // ---------------------------------------------------------------- layers

    /// <summary>One block on x (N, D) in place; returns the layer's unscaled aux term E Σ f_e P_e.</summary>
    private T LayerForward(int l, T[] x)
    {
        var c = _layers[l];
        var lp = _p.Layers[l];
        Array.Copy(x, c.XIn, _n * _d);
        RmsNormForward(x, lp.AttentionNorm.Data, c.Xn1, c.Inv1);
        Linear(c.Xn1, lp.Wq, c.Q, _n);
        Linear(c.Xn1, lp.Wk, c.K, _n);
        Linear(c.Xn1, lp.Wv, c.V, _n);
        Rope(c.Q, _hq, inverse: false);
        Rope(c.K, _hkv, inverse: false);
        AttentionForward(c);
        var o = Buffer("o", _n * _d);
        Linear(c.Att, lp.Wo, o, _n);
        Add(x, o, _n * _d);

        Array.Copy(x, c.XMid, _n * _d);
        RmsNormForward(x, lp.FfnNorm.Data, c.Xn2, c.Inv2);
        var y = Buffer("y", _n * _d);
        T aux = T.Zero;
        if (lp.FeedForward is { } ffn)
        {
            FfnForward(ffn, c.Xn2, c.Dense!, y, _n);
        }
        else
        {
            aux = MoeForward(lp, c, y);
        }
        Add(x, y, _n * _d);
        return aux;
    }

    private void LayerBackward(int l, T[] dx, T auxScale)
    {
        var c = _layers[l];
        var lp = _p.Layers[l];
        // FFN block: x_out = x_mid + FFN(RMSNorm(x_mid)); dx is d x_out and becomes d x_mid.
        var dxn = Buffer("dxn", _n * _d);
        if (lp.FeedForward is { } ffn)
        {
            FfnBackward(ffn, c.Xn2, c.Dense!, dx, dxn, _n);
        }
        else
        {
            MoeBackward(lp, c, dx, dxn, auxScale);
        }
        RmsNormBackward(c.XMid, lp.FfnNorm, c.Inv2, dxn, dx);

        // Attention block: x_mid = x_in + Wo · Attention(RoPE(Wq xn), RoPE(Wk xn), Wv xn).
        var dAtt = Buffer("dAtt", _n * _qd);
        LinearBackward(c.Att, lp.Wo, dx, dAtt, _n, accumulateDx: false);
        var dq = Buffer("dq", _n * _qd);
        var dk = Buffer("dk", _n * _kd);
        var dv = Buffer("dv", _n * _kd);
        AttentionBackward(c, dAtt, dq, dk, dv);
        Rope(dq, _hq, inverse: true);
        Rope(dk, _hkv, inverse: true);
        LinearBackward(c.Xn1, lp.Wq, dq, dxn, _n, accumulateDx: false);
        LinearBackward(c.Xn1, lp.Wk, dk, dxn, _n, accumulateDx: true);
        LinearBackward(c.Xn1, lp.Wv, dv, dxn, _n, accumulateDx: true);
        RmsNormBackward(c.XIn, lp.AttentionNorm, c.Inv1, dxn, dx);
    }

    // ---------------------------------------------------------------- attention

    /// <summary>
    /// Causal (and sliding-window) attention per (sequence b, query head h): row t attends keys
    /// lo(t) .. t with lo(t) = max(0, t - W + 1) (0 without a window); stores the probabilities in
    /// c.P (B, Hq, T, T) (only columns lo .. t are meaningful) and the output in c.Att (N, Qd).
    /// Query head h reads kv head h / G.
    /// </summary>
    private void AttentionForward(LayerCache c)
    {
        Pairs(_b * _hq, bh =>
        {
            int b = bh / _hq, h = bh % _hq, kvOff = h / _g * _dh;
            for (int t = 0; t < _t; t++)
            {
                int lo = Lo(t);
                var q = c.Q.AsSpan((b * _t + t) * _qd + h * _dh, _dh);
                var p = c.P.AsSpan(((b * _hq + h) * _t + t) * _t, _t);
                T max = T.NegativeInfinity;
                for (int j = lo; j <= t; j++)
                {
                    var k = c.K.AsSpan((b * _t + j) * _kd + kvOff, _dh);
                    T s = T.Zero;
                    for (int i = 0; i < _dh; i++)
                    {
                        s += q[i] * k[i];
                    }
                    p[j] = s * _scale;
                    max = T.Max(max, p[j]);
                }
                T sum = T.Zero;
                for (int j = lo; j <= t; j++)
                {
                    p[j] = T.Exp(p[j] - max);
                    sum += p[j];
                }
                T inv = T.One / sum;
                var o = c.Att.AsSpan((b * _t + t) * _qd + h * _dh, _dh);
                o.Clear();
                for (int j = lo; j <= t; j++)
                {
                    p[j] *= inv;
                    var v = c.V.AsSpan((b * _t + j) * _kd + kvOff, _dh);
                    for (int i = 0; i < _dh; i++)
                    {
                        o[i] += p[j] * v[i];
                    }
                }
            }
        });
    }

    /// <summary>
    /// Backward of <see cref="AttentionForward"/>, one task per (sequence b, kv head g): it owns dk, dv
    /// of that head and dq of its G query heads, so no two tasks write the same value.
    /// Per query row: dP_j = dO · v_j, dv_j += p_j dO, dS_j = p_j (dP_j - Σ p dP),
    /// dq += scale Σ dS_j k_j, dk_j += scale dS_j q.
    /// </summary>
    private void AttentionBackward(LayerCache c, T[] dAtt, T[] dq, T[] dk, T[] dv)
    {
        Pairs(_b * _hkv, bg =>
        {
            int b = bg / _hkv, g = bg % _hkv, kvOff = g * _dh;
            for (int t = 0; t < _t; t++)
            {
                dk.AsSpan((b * _t + t) * _kd + kvOff, _dh).Clear();
                dv.AsSpan((b * _t + t) * _kd + kvOff, _dh).Clear();
            }
            Span<T> dp = _t <= 1024 ? stackalloc T[_t] : new T[_t];
            for (int h = g * _g; h < (g + 1) * _g; h++)
            {
                for (int t = 0; t < _t; t++)
                {
                    int lo = Lo(t);
                    var p = c.P.AsSpan(((b * _hq + h) * _t + t) * _t, _t);
                    var dO = dAtt.AsSpan((b * _t + t) * _qd + h * _dh, _dh);
                    T dot = T.Zero;
                    for (int j = lo; j <= t; j++)
                    {
                        var v = c.V.AsSpan((b * _t + j) * _kd + kvOff, _dh);
                        var dvj = dv.AsSpan((b * _t + j) * _kd + kvOff, _dh);
                        T s = T.Zero;
                        for (int i = 0; i < _dh; i++)
                        {
                            s += dO[i] * v[i];
                            dvj[i] += p[j] * dO[i];
                        }
                        dp[j] = s;
                        dot += p[j] * s;
                    }
                    var q = c.Q.AsSpan((b * _t + t) * _qd + h * _dh, _dh);
                    var dqt = dq.AsSpan((b * _t + t) * _qd + h * _dh, _dh);
                    dqt.Clear();
                    for (int j = lo; j <= t; j++)
                    {
                        T ds = p[j] * (dp[j] - dot) * _scale;
                        var k = c.K.AsSpan((b * _t + j) * _kd + kvOff, _dh);
                        var dkj = dk.AsSpan((b * _t + j) * _kd + kvOff, _dh);
                        for (int i = 0; i < _dh; i++)
                        {
                            dqt[i] += ds * k[i];
                            dkj[i] += ds * q[i];
                        }
                    }
                }
            }
        });
    }

    private int Lo(int t) => _window is { } w ? Math.Max(0, t - w + 1) : 0;

    /// <summary>
    /// RoPE on each head of x (N, heads * Dh) at each row's position within its sequence, interleaved
    /// pairs as <see cref="Kernels.Rope"/>: (a, b) becomes (a c - b s, a s + b c). The inverse
    /// (the transpose of the rotation, used by backward) turns (a, b) into (a c + b s, -a s + b c).
    /// </summary>
    private void Rope(T[] x, int heads, bool inverse)
    {
        int width = heads * _dh;
        Rows(_n, r =>
        {
            int pos = r % _t;
            var cos = _cos.AsSpan(pos * _dh, _dh);
            var sin = _sin.AsSpan(pos * _dh, _dh);
            for (int h = 0; h < heads; h++)
            {
                var v = x.AsSpan(r * width + h * _dh, _dh);
                for (int i = 0; i < _dh; i += 2)
                {
                    T a = v[i], b = v[i + 1], co = cos[i], s = sin[i + 1];
                    if (inverse)
                    {
                        v[i] = a * co + b * s;
                        v[i + 1] = b * co - a * s;
                    }
                    else
                    {
                        v[i] = a * co - b * s;
                        v[i + 1] = b * co + a * s;
                    }
                }
            }
        });
    }

    // ---------------------------------------------------------------- RMSNorm

    /// <summary>y = x * inv * g per row with inv = 1 / sqrt(mean(x²) + eps). x, y: (N, D); inv: (N).</summary>
    private void RmsNormForward(T[] x, T[] g, T[] y, T[] inv)
    {
        T dInv = T.One / T.CreateTruncating(_d);
        Rows(_n, r =>
        {
            var xr = x.AsSpan(r * _d, _d);
            var yr = y.AsSpan(r * _d, _d);
            T ss = T.Zero;
            for (int i = 0; i < _d; i++)
            {
                ss += xr[i] * xr[i];
            }
            T iv = T.One / T.Sqrt(ss * dInv + _eps);
            inv[r] = iv;
            for (int i = 0; i < _d; i++)
            {
                yr[i] = xr[i] * iv * g[i];
            }
        });
    }

    /// <summary>
    /// dx += inv (dy ⊙ g) - x inv³ / D Σ(dy ⊙ g ⊙ x) per row; g.Grad += Σ_rows dy ⊙ x inv (row order).
    /// </summary>
    private void RmsNormBackward(T[] x, Parameter<T> g, T[] inv, T[] dy, T[] dx)
    {
        T dInv = T.One / T.CreateTruncating(_d);
        var gd = g.Data;
        Rows(_n, r =>
        {
            var xr = x.AsSpan(r * _d, _d);
            var dyr = dy.AsSpan(r * _d, _d);
            var dxr = dx.AsSpan(r * _d, _d);
            T iv = inv[r], dot = T.Zero;
            for (int i = 0; i < _d; i++)
            {
                dot += dyr[i] * gd[i] * xr[i];
            }
            T k = iv * iv * iv * dInv * dot;
            for (int i = 0; i < _d; i++)
            {
                dxr[i] += iv * dyr[i] * gd[i] - xr[i] * k;
            }
        });
        var gg = g.Grad;
        for (int r = 0; r < _n; r++)
        {
            T iv = inv[r];
            for (int i = 0; i < _d; i++)
            {
                gg[i] += dy[r * _d + i] * x[r * _d + i] * iv;
            }
        }
    }

    // ---------------------------------------------------------------- feed-forward

    /// <summary>SwiGLU over rows: h1 = W1 x, h3 = W3 x, act = silu(h1) h3, y = W2 act. x, y: (rows, D).</summary>
    private void FfnForward(FfnParameters<T> w, T[] x, FfnCache c, T[] y, int rows)
    {
        c.Ensure(rows, _f);
        Linear(x, w.W1, c.H1, rows);
        Linear(x, w.W3, c.H3, rows);
        var h1 = c.H1;
        var h3 = c.H3;
        var act = c.Act;
        Rows(rows, r =>
        {
            for (int i = r * _f; i < (r + 1) * _f; i++)
            {
                T h = h1[i];
                act[i] = h / (T.One + T.Exp(-h)) * h3[i];
            }
        });
        Linear(act, w.W2, y, rows);
    }

    /// <summary>Backward of <see cref="FfnForward"/>: dx = W1ᵀ dh1 + W3ᵀ dh3 (overwritten), weight grads accumulated.</summary>
    private void FfnBackward(FfnParameters<T> w, T[] x, FfnCache c, T[] dy, T[] dx, int rows)
    {
        var dAct = Buffer("dAct", rows * _f);
        LinearBackward(c.Act, w.W2, dy, dAct, rows, accumulateDx: false);
        var dh1 = Buffer("dh1", rows * _f);
        var dh3 = Buffer("dh3", rows * _f);
        var h1 = c.H1;
        var h3 = c.H3;
        Rows(rows, r =>
        {
            for (int i = r * _f; i < (r + 1) * _f; i++)
            {
                T h = h1[i];
                T sig = T.One / (T.One + T.Exp(-h));
                dh3[i] = dAct[i] * h * sig;
                dh1[i] = dAct[i] * h3[i] * sig * (T.One + h * (T.One - sig));
            }
        });
        LinearBackward(x, w.W1, dh1, dx, rows, accumulateDx: false);
        LinearBackward(x, w.W3, dh3, dx, rows, accumulateDx: true);
    }

    /// <summary>
    /// Sparse MoE of c.Xn2 into y (N, D), as Bora's Transformer: router logits z = Wr xn (N, E), top-A
    /// per row (ties to the lower index) with softmax weights over the selected logits, then expert by
    /// expert in order, its rows gathered (n_e, D), run, and y[row] += weight * out. Returns E Σ f_e P_e.
    /// </summary>
    private T MoeForward(LayerParameters<T> lp, LayerCache c, T[] y)
    {
        Linear(c.Xn2, lp.Router!, c.RouterLogits, _n);
        var sel = c.Selected;
        var selW = c.SelectedWeights;
        var probs = c.RouterProbs;
        Rows(_n, r =>
        {
            var z = c.RouterLogits.AsSpan(r * _e, _e);
            for (int s = 0; s < _a; s++)
            {
                int best = -1;
                for (int e = 0; e < _e; e++)
                {
                    if (sel.AsSpan(r * _a, s).Contains(e))
                    {
                        continue;
                    }
                    if (best < 0 || z[e] > z[best])
                    {
                        best = e;
                    }
                }
                sel[r * _a + s] = best;
                selW[r * _a + s] = z[best];
            }
            SoftmaxInPlace(selW.AsSpan(r * _a, _a));
            z.CopyTo(probs.AsSpan(r * _e, _e));
            SoftmaxInPlace(probs.AsSpan(r * _e, _e));
        });
        Array.Clear(y, 0, _n * _d);
        for (int e = 0; e < _e; e++)
        {
            var ec = c.Experts[e];
            ec.Rows.Clear();
            ec.Slots.Clear();
            for (int i = 0; i < _n * _a; i++)
            {
                if (sel[i] == e)
                {
                    ec.Rows.Add(i / _a);
                    ec.Slots.Add(i);
                }
            }
            int ne = ec.Rows.Count;
            if (ne == 0)
            {
                continue;
            }
            ec.Ensure(ne, _f, _d);
            for (int i = 0; i < ne; i++)
            {
                Array.Copy(c.Xn2, ec.Rows[i] * _d, ec.X, i * _d, _d);
            }
            FfnForward(lp.Experts[e], ec.X, ec.Ffn, ec.Out, ne);
            for (int i = 0; i < ne; i++)
            {
                T w = selW[ec.Slots[i]];
                var src = ec.Out.AsSpan(i * _d, _d);
                var dst = y.AsSpan(ec.Rows[i] * _d, _d);
                for (int k = 0; k < _d; k++)
                {
                    dst[k] += w * src[k];
                }
            }
        }
        // f_e = selections of e / N, P_e = mean router probability of e.
        T aux = T.Zero, invN = T.One / T.CreateTruncating(_n);
        for (int e = 0; e < _e; e++)
        {
            c.Fraction[e] = T.CreateTruncating(c.Experts[e].Rows.Count) * invN;
            T pe = T.Zero;
            for (int r = 0; r < _n; r++)
            {
                pe += probs[r * _e + e];
            }
            aux += c.Fraction[e] * pe * invN;
        }
        return aux * T.CreateTruncating(_e);
    }

    /// <summary>
    /// Backward of <see cref="MoeForward"/>: for each expert, d out_i = w_i dy[row], dw_i = dy[row] · out_i,
    /// the expert's backward, and its input gradient scattered back to dxn; then the top-A softmax
    /// (dz_sel = w ⊙ (dw - Σ w dw), zero for experts not selected) and the aux term
    /// (dz[r, e'] += auxScale E / N p[r, e'] (f_e' - Σ_e f_e p[r, e])); finally the router.
    /// </summary>
    private void MoeBackward(LayerParameters<T> lp, LayerCache c, T[] dy, T[] dxn, T auxScale)
    {
        Array.Clear(dxn, 0, _n * _d);
        var dSelW = c.DSelectedWeights;
        Array.Clear(dSelW);
        for (int e = 0; e < _e; e++)
        {
            var ec = c.Experts[e];
            int ne = ec.Rows.Count;
            if (ne == 0)
            {
                continue;
            }
            var dOut = Buffer("dOut", ne * _d);
            for (int i = 0; i < ne; i++)
            {
                T w = c.SelectedWeights[ec.Slots[i]];
                var dyr = dy.AsSpan(ec.Rows[i] * _d, _d);
                var o = ec.Out.AsSpan(i * _d, _d);
                var dor = dOut.AsSpan(i * _d, _d);
                T dw = T.Zero;
                for (int k = 0; k < _d; k++)
                {
                    dw += dyr[k] * o[k];
                    dor[k] = w * dyr[k];
                }
                dSelW[ec.Slots[i]] = dw;
            }
            var dX = Buffer("dXe", ne * _d);
            FfnBackward(lp.Experts[e], ec.X, ec.Ffn, dOut, dX, ne);
            for (int i = 0; i < ne; i++)
            {
                var src = dX.AsSpan(i * _d, _d);
                var dst = dxn.AsSpan(ec.Rows[i] * _d, _d);
                for (int k = 0; k < _d; k++)
                {
                    dst[k] += src[k];
                }
            }
        }
        var dz = Buffer("dz", _n * _e);
        T auxRow = auxScale * T.CreateTruncating(_e) / T.CreateTruncating(_n);
        Rows(_n, r =>
        {
            var dzr = dz.AsSpan(r * _e, _e);
            dzr.Clear();
            T sum = T.Zero;
            for (int s = 0; s < _a; s++)
            {
                sum += c.SelectedWeights[r * _a + s] * dSelW[r * _a + s];
            }
            for (int s = 0; s < _a; s++)
            {
                int i = r * _a + s;
                dzr[c.Selected[i]] += c.SelectedWeights[i] * (dSelW[i] - sum);
            }
            if (auxRow != T.Zero)
            {
                var p = c.RouterProbs.AsSpan(r * _e, _e);
                T fp = T.Zero;
                for (int e = 0; e < _e; e++)
                {
                    fp += c.Fraction[e] * p[e];
                }
                for (int e = 0; e < _e; e++)
                {
                    dzr[e] += auxRow * p[e] * (c.Fraction[e] - fp);
                }
            }
        });
        LinearBackward(c.Xn2, lp.Router!, dz, dxn, _n, accumulateDx: true);
    }

    private static void SoftmaxInPlace(Span<T> x)
    {
        T max = x[0];
        for (int i = 1; i < x.Length; i++)
        {
            max = T.Max(max, x[i]);
        }
        T sum = T.Zero;
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = T.Exp(x[i] - max);
            sum += x[i];
        }
        T inv = T.One / sum;
        for (int i = 0; i < x.Length; i++)
        {
            x[i] *= inv;
        }
    }

    // ---------------------------------------------------------------- linear layers

    /// <summary>y (rows, out) = x (rows, in) · Wᵀ for W (out, in).</summary>
    private void Linear(T[] x, Parameter<T> w, T[] y, int rows)
    {
        if (_ops is not null && _ops.TryGetValue(w, out var op))
        {
            op.Forward(x, y, rows);
            return;
        }
        int outF = (int)w.Shape[0], inF = (int)w.Shape[1];
        Gemm.ABt(x, 0, w.Data, 0, y, 0, rows, outF, inF, accumulate: false, _threads);
    }

    /// <summary>
    /// Backward of <see cref="Linear"/>: dx (rows, in) = dy · W (or +=), and W.Grad += dyᵀ · x.
    /// Both run as A · Bᵀ products on transposed copies.
    /// </summary>
    private void LinearBackward(T[] x, Parameter<T> w, T[] dy, T[] dx, int rows, bool accumulateDx)
    {
        if (_ops is not null && _ops.TryGetValue(w, out var op))
        {
            op.Backward(x, dy, dx, rows, accumulateDx);
            return;
        }
        int outF = (int)w.Shape[0], inF = (int)w.Shape[1];
        var wt = Buffer("wt", inF * outF);
        Gemm.Transpose(w.Data, 0, outF, inF, wt, 0);
        Gemm.ABt(dy, 0, wt, 0, dx, 0, rows, inF, outF, accumulateDx, _threads);
        var dyt = Buffer("dyt", outF * rows);
        var xt = Buffer("xt", inF * rows);
        Gemm.Transpose(dy, 0, rows, outF, dyt, 0);
        Gemm.Transpose(x, 0, rows, inF, xt, 0);
        Gemm.ABt(dyt, 0, xt, 0, w.Grad, 0, outF, inF, rows, accumulate: true, _threads);
    }

    private static void Add(T[] x, T[] y, int n)
    {
        for (int i = 0; i < n; i++)
        {
            x[i] += y[i];
        }
    }

    // ---------------------------------------------------------------- plumbing

    /// <summary>A reusable scratch array of at least n values (contents undefined).</summary>
    private T[] Buffer(string name, int n)
    {
        if (!_scratch.TryGetValue(name, out var a) || a.Length < n)
        {
            a = new T[Math.Max(n, 1)];
            _scratch[name] = a;
        }
        return a;
    }

    /// <summary>Runs body(r) for r in 0 .. count-1, in parallel when worth it; each r must write only its own outputs.</summary>
    private void Rows(int count, Action<int> body)
    {
        if (_threads <= 1 || count < 64)
        {
            for (int r = 0; r < count; r++)
            {
                body(r);
            }
            return;
        }
        Parallel.For(0, count, new ParallelOptions { MaxDegreeOfParallelism = _threads }, body);
    }

    /// <summary>As <see cref="Rows"/> for a few large work items (attention heads).</summary>
    private void Pairs(int count, Action<int> body)
    {
        if (_threads <= 1 || count == 1)
        {
            for (int r = 0; r < count; r++)
            {
                body(r);
            }
            return;
        }
        Parallel.For(0, count, new ParallelOptions { MaxDegreeOfParallelism = _threads }, body);
    }

    /// <summary>SwiGLU activations of one FFN over some rows.</summary>
    private sealed class FfnCache
    {
        public T[] H1 = [], H3 = [], Act = []; // (rows, F)

        public void Ensure(int rows, int f)
        {
            if (H1.Length < rows * f)
            {
                H1 = new T[rows * f];
                H3 = new T[rows * f];
                Act = new T[rows * f];
            }
        }
    }

    /// <summary>Rows routed to one expert and the expert's activations on them.</summary>
    private sealed class ExpertCache
    {
        public readonly List<int> Rows = [];   // (n_e) row of each routed token, ascending
        public readonly List<int> Slots = [];  // (n_e) index into Selected (row * A + slot)
        public readonly FfnCache Ffn = new();
        public T[] X = [], Out = [];            // (n_e, D) gathered input, expert output

        public void Ensure(int rows, int f, int d)
        {
            Ffn.Ensure(rows, f);
            if (X.Length < rows * d)
            {
                X = new T[rows * d];
                Out = new T[rows * d];
            }
        }
    }

    /// <summary>What one block's backward needs from its forward.</summary>
    private sealed class LayerCache
    {
        public LayerCache(TrainingModel<T> m)
        {
            int n = m._n, d = m._d;
            XIn = new T[n * d];
            Xn1 = new T[n * d];
            Inv1 = new T[n];
            Q = new T[n * m._qd];
            K = new T[n * m._kd];
            V = new T[n * m._kd];
            P = new T[checked(m._b * m._hq * m._t * m._t)];
            Att = new T[n * m._qd];
            XMid = new T[n * d];
            Xn2 = new T[n * d];
            Inv2 = new T[n];
            if (m._e > 0)
            {
                RouterLogits = new T[n * m._e];
                RouterProbs = new T[n * m._e];
                Selected = new int[n * m._a];
                SelectedWeights = new T[n * m._a];
                DSelectedWeights = new T[n * m._a];
                Fraction = new T[m._e];
                Experts = [.. Enumerable.Range(0, m._e).Select(_ => new ExpertCache())];
            }
            else
            {
                Dense = new FfnCache();
            }
        }

        public T[] XIn, Xn1, Inv1;              // (N, D), (N, D), (N)
        public T[] Q, K, V;                      // (N, Qd), (N, Kd), (N, Kd) after RoPE (q, k)
        public T[] P;                            // (B, Hq, T, T) attention probabilities
        public T[] Att;                          // (N, Qd) attention output before Wo
        public T[] XMid, Xn2, Inv2;              // (N, D), (N, D), (N)
        public FfnCache? Dense;
        public T[] RouterLogits = [], RouterProbs = []; // (N, E)
        public int[] Selected = [];              // (N, A)
        public T[] SelectedWeights = [], DSelectedWeights = []; // (N, A)
        public T[] Fraction = [];                // (E) f_e
        public ExpertCache[] Experts = [];
    }
}
