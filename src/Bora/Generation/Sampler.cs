using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Bora.Generation.Constraints;
using Bora.Tokenizers;

namespace Bora.Generation;

/// <summary>One surviving candidate of a sampling step: its id, its logit after penalty and temperature, and its probability.</summary>
public readonly record struct TokenProbability(TokenId Id, float Logit, float Probability);

/// <summary>
/// Picks the next token from a row of logits. Steps, in llama.cpp's default order:
/// <list type="number">
/// <item>repetition penalty over the last N tokens of the history (each distinct token once: positive
/// logit / penalty, negative logit * penalty);</item>
/// <item>OpenAI's presence and frequency penalties over the generated tokens only (history from
/// <c>promptLength</c> on): logit[t] -= presence * (count[t] &gt; 0) + frequency * count[t];</item>
/// <item>the <see cref="ITokenConstraint"/>'s mask, if any: disallowed tokens get -infinity, so no filter
/// below can pick them (greedy decoding included);</item>
/// <item>top-k: keep the K largest logits;</item>
/// <item>top-p: softmax (temperature 1) over the survivors, keep the smallest prefix, by descending
/// probability, whose cumulative probability reaches P;</item>
/// <item>min-p: keep tokens with p &gt;= MinP * p_max, i.e. logit &gt;= max_logit + ln(MinP);</item>
/// <item>temperature: logits / T, softmax, and one draw from the seeded <see cref="Xoshiro256StarStar"/>.</item>
/// </list>
/// Temperature 0 is greedy: argmax of the penalized logits, ties to the lowest id, no random draw.
/// Candidates are ordered by descending logit, ties by ascending id, so results do not depend on the
/// sort algorithm. After construction a step allocates nothing (all buffers are sized by V).
/// Not thread-safe: one sampler per sequence.
/// </summary>
/// <example>
/// Repetition penalty 2 with logits [3, -1, 0.5] and history [0, 1, 1]: token 0 becomes 3 / 2 = 1.5,
/// token 1 becomes -1 * 2 = -2 (once, although it occurs twice), token 2 stays 0.5.
/// </example>
public sealed class Sampler
{
    private readonly int _vocab;                       // V
    private readonly float[] _work;                    // (V) logits after the repetition penalty
    private readonly ulong[] _keys;                    // (V) sort keys: descending logit, then ascending id
    private readonly ulong[] _sortBuffer;              // (V) the radix sort's second buffer; empty when no filter sorts
    private readonly int[] _stamp;                     // (V) last penalty pass that saw each token id
    private readonly int[] _counts;                    // (V) occurrences of each id among the generated tokens (zero between steps)
    private readonly int[] _touched;                   // (V) distinct ids with a nonzero count this step, first _touchedCount valid
    private readonly TokenProbability[] _candidates;   // (V) survivors of the last step
    private readonly float[] _probs;                   // (V) unnormalised probabilities when no filter sorts
    private readonly Xoshiro256StarStar _rng;
    private int _pass;

    public Sampler(int vocabSize, SamplingOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 1);
        options.Validate();
        Options = options;
        _vocab = vocabSize;
        _work = new float[vocabSize];
        bool sorts = (options.TopK > 0 && options.TopK < vocabSize) || options.TopP < 1 || options.MinP > 0;
        _keys = sorts ? new ulong[vocabSize] : [];
        _sortBuffer = sorts ? new ulong[vocabSize] : [];
        _stamp = new int[vocabSize];
        _counts = options.PresencePenalty != 0 || options.FrequencyPenalty != 0 ? new int[vocabSize] : [];
        _touched = _counts.Length > 0 ? new int[vocabSize] : [];
        _candidates = new TokenProbability[vocabSize];
        _probs = new float[vocabSize];
        Seed = options.Seed ?? BitConverter.ToUInt64(System.Security.Cryptography.RandomNumberGenerator.GetBytes(8));
        _rng = new Xoshiro256StarStar(Seed);
    }

    public SamplingOptions Options { get; }

    /// <summary>The PRNG seed in use (options.Seed, or the fresh random one drawn when that was null).</summary>
    public ulong Seed { get; }

    /// <summary>V: the logits row length this sampler expects.</summary>
    public int VocabSize => _vocab;

    /// <summary>
    /// Chooses the next token from <paramref name="logits"/> (V) given the token <paramref name="history"/>
    /// so far (prompt included), which feeds the repetition penalty. The presence and frequency penalties
    /// count <c>history[promptLength..]</c> (the generated tokens). A <paramref name="constraint"/> masks the
    /// disallowed tokens first (<see cref="ConstraintDeadEndException"/> when it allows none); the caller
    /// advances it with the returned token. <paramref name="logits"/> is not modified.
    /// </summary>
    public TokenId Sample(ReadOnlySpan<float> logits, ReadOnlySpan<TokenId> history, int promptLength = 0, ITokenConstraint? constraint = null)
    {
        if (Options.Temperature != 0 && !SortsCandidates)
        {
            PrepareWork(logits, history, promptLength, constraint);
            return SampleUnsorted(1f / Options.Temperature);
        }
        ReadOnlySpan<TokenProbability> candidates = Candidates(logits, history, promptLength, constraint);
        if (Options.Temperature == 0 || candidates.Length == 1)
        {
            if (Options.Temperature != 0)
            {
                _rng.NextUInt64(); // one draw per sampled step keeps streams aligned whatever the filters keep
            }
            return candidates[0].Id;
        }
        var p = _probs.AsSpan(0, candidates.Length);
        for (int i = 0; i < p.Length; i++)
        {
            p[i] = candidates[i].Probability;
        }
        return candidates[PickIndex(p, _rng.NextDouble() * SumInFourChains(p))].Id;
    }

    /// <summary>
    /// Runs every filter and returns the survivors with their final logits (after temperature) and
    /// probabilities, ordered by descending logit (by id when no filter needed sorting). Greedy mode
    /// returns the single argmax token with probability 1. Valid until the next call. Parameters as in
    /// <see cref="Sample"/>; masked tokens survive only with probability 0.
    /// </summary>
    public ReadOnlySpan<TokenProbability> Candidates(ReadOnlySpan<float> logits, ReadOnlySpan<TokenId> history, int promptLength = 0, ITokenConstraint? constraint = null)
    {
        PrepareWork(logits, history, promptLength, constraint);
        SamplingOptions o = Options;
        if (o.Temperature == 0)
        {
            int best = ArgMax(_work);
            _candidates[0] = new TokenProbability(new TokenId(best), _work[best], 1f);
            return _candidates.AsSpan(0, 1);
        }

        int n = _vocab;
        bool sorted = SortsCandidates;
        if (sorted)
        {
            if (o.TopK > 0 && o.TopK < _vocab)
            {
                // Only the k first of the sorted order survive: select them, then sort those (the same k keys in the
                // same order as a full sort's prefix, the keys being distinct).
                n = SelectTopKeys(o.TopK);
                if (o.TopP < 1)
                {
                    n = TopPCount(n, o.TopP);
                }
            }
            else if (o.TopP < 1 && NucleusCount(o.TopP) is int nucleus and > 0)
            {
                n = nucleus;
            }
            else if (o.TopP >= 1 && MinPSurvivors(o.MinP) is int survivors and > 0)
            {
                n = survivors;
            }
            else
            {
                for (int i = 0; i < _vocab; i++)
                {
                    _keys[i] = SortKey(_work[i], i);
                }
                SortKeys(_keys, _sortBuffer);
                if (o.TopP < 1)
                {
                    n = TopPCount(n, o.TopP);
                }
            }
            if (o.MinP > 0)
            {
                n = MinPCount(n, o.MinP);
            }
        }

        // Temperature, then softmax over the n survivors.
        float invT = 1f / o.Temperature;
        if (!sorted)
        {
            return SoftmaxAll(invT);
        }
        float max = float.NegativeInfinity;
        for (int i = 0; i < n; i++)
        {
            max = MathF.Max(max, _work[IdAt(i, sorted)]);
        }
        if (float.IsNegativeInfinity(max))
        {
            throw new InvalidOperationException("every candidate logit is -infinity; nothing can be sampled");
        }
        double sum = 0;
        for (int i = 0; i < n; i++)
        {
            int id = IdAt(i, sorted);
            float scaled = _work[id] * invT;
            float p = MathF.Exp((_work[id] - max) * invT);
            _candidates[i] = new TokenProbability(new TokenId(id), scaled, p);
            sum += p;
        }
        float inv = (float)(1 / sum);
        for (int i = 0; i < n; i++)
        {
            _candidates[i] = _candidates[i] with { Probability = _candidates[i].Probability * inv };
        }
        return _candidates.AsSpan(0, n);
    }

    /// <summary>Whether a filter (top-k, top-p, min-p) needs the candidates sorted by logit.</summary>
    private bool SortsCandidates => (Options.TopK > 0 && Options.TopK < _vocab) || Options.TopP < 1 || Options.MinP > 0;

    /// <summary>Checks the arguments and leaves in _work the logits after the penalties and the constraint's mask.</summary>
    private void PrepareWork(ReadOnlySpan<float> logits, ReadOnlySpan<TokenId> history, int promptLength, ITokenConstraint? constraint)
    {
        if ((uint)promptLength > (uint)history.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(promptLength), promptLength, $"expected 0 .. history length {history.Length}");
        }
        if (logits.Length != _vocab)
        {
            throw new ArgumentException($"logits row has {logits.Length} elements; expected V = {_vocab}", nameof(logits));
        }
        // + 0 turns -0 into +0 so equal logits tie on id alone; the maximum is NaN or +infinity when any logit is.
        TensorPrimitives.Add(logits, 0f, _work);
        float top = TensorPrimitives.Max(_work);
        if (float.IsNaN(top) || float.IsPositiveInfinity(top))
        {
            for (int i = 0; i < logits.Length; i++)
            {
                float l = logits[i];
                if (float.IsNaN(l) || float.IsPositiveInfinity(l))
                {
                    throw new ArgumentException($"logit of token {i} is {l}; expected a finite value or -infinity", nameof(logits));
                }
            }
        }
        ApplyRepetitionPenalty(history);
        ApplyPresenceAndFrequency(history[promptLength..]);
        if (constraint is not null && !constraint.Mask(_work))
        {
            throw new ConstraintDeadEndException("the output constraint allows no token in its current state");
        }
    }

    /// <summary>
    /// Every token a candidate, in id order (no filter sorted), with its probability <see cref="Unnormalised"/> / total:
    /// the arithmetic of the sorted path, with the exp in vectors.
    /// </summary>
    private ReadOnlySpan<TokenProbability> SoftmaxAll(float invT)
    {
        float inv = (float)(1 / Unnormalised(invT));
        var p = _probs.AsSpan(0, _vocab);
        for (int i = 0; i < p.Length; i++)
        {
            _candidates[i] = new TokenProbability(new TokenId(i), _work[i] * invT, p[i] * inv);
        }
        return _candidates.AsSpan(0, _vocab);
    }

    /// <summary>_probs[i] = exp((_work[i] - max) / T) for every token; returns their sum (<see cref="ExpMasses"/>).</summary>
    private double Unnormalised(float invT)
    {
        float max = TensorPrimitives.Max(_work);
        if (float.IsNegativeInfinity(max))
        {
            throw new InvalidOperationException("every candidate logit is -infinity; nothing can be sampled");
        }
        return ExpMasses(max, invT);
    }

    /// <summary>
    /// _probs[i] = exp((_work[i] - max) * scale) for every token, in vectors (the multiply skipped for scale 1); returns
    /// their sum in double (<see cref="SumInFourChains"/>). max: the largest logit, finite.
    /// </summary>
    private double ExpMasses(float max, float scale)
    {
        var e = _probs.AsSpan(0, _vocab); // (V)
        TensorPrimitives.Subtract(_work, max, e);
        if (scale != 1f)
        {
            TensorPrimitives.Multiply(e, scale, e);
        }
        TensorPrimitives.Exp(e, e);
        return SumInFourChains(e);
    }

    /// <summary>Sampling when no filter sorts: <see cref="PickIndex"/> over every token's unnormalised probability, without building the candidate list.</summary>
    private TokenId SampleUnsorted(float invT)
    {
        double total = Unnormalised(invT);
        return new TokenId(PickIndex(_probs.AsSpan(0, _vocab), _rng.NextDouble() * total));
    }

    /// <summary>
    /// The first index whose cumulative mass p[0] + .. + p[i] passes <paramref name="target"/> (u times the total):
    /// whole blocks of 64 are skipped by their sums (float, in vectors: not one add per value in a row), then the block
    /// that passes is walked in double. When rounding leaves the target at or beyond the last cumulative sum, the
    /// last index with mass (0 if none).
    /// </summary>
    private static int PickIndex(ReadOnlySpan<float> p, double target)
    {
        const int Block = 64;
        double cumulative = 0;
        int start = 0;
        for (; start + Block <= p.Length; start += Block)
        {
            double block = TensorPrimitives.Sum(p.Slice(start, Block));
            if (cumulative + block > target)
            {
                break;
            }
            cumulative += block;
        }
        for (int i = start; i < p.Length; i++)
        {
            cumulative += p[i];
            if (target < cumulative)
            {
                return i;
            }
        }
        for (int i = p.Length - 1; i > 0; i--)
        {
            if (p[i] > 0)
            {
                return i;
            }
        }
        return 0;
    }

    /// <summary>Sum of <paramref name="v"/> in double, in 4 independent chains (one chain of 32000 dependent adds took ~35 us).</summary>
    private static double SumInFourChains(ReadOnlySpan<float> v)
    {
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int i = 0;
        for (; i + 4 <= v.Length; i += 4)
        {
            s0 += v[i];
            s1 += v[i + 1];
            s2 += v[i + 2];
            s3 += v[i + 3];
        }
        for (; i < v.Length; i++)
        {
            s0 += v[i];
        }
        return s0 + s1 + (s2 + s3);
    }

    /// <summary>Argmax, ties to the lowest index.</summary>
    public static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++)
        {
            if (values[i] > values[best])
            {
                best = i;
            }
        }
        return best;
    }

    private void ApplyRepetitionPenalty(ReadOnlySpan<TokenId> history)
    {
        float penalty = Options.RepetitionPenalty;
        if (penalty == 1f || Options.RepeatLastN == 0 || history.IsEmpty)
        {
            return;
        }
        if (++_pass == int.MaxValue)
        {
            Array.Clear(_stamp);
            _pass = 1;
        }
        ReadOnlySpan<TokenId> window = history[Math.Max(0, history.Length - Options.RepeatLastN)..];
        foreach (TokenId t in window)
        {
            int id = t.Value;
            if ((uint)id >= (uint)_vocab)
            {
                throw new ArgumentException($"history token {id} is outside the vocabulary [0, {_vocab})", nameof(history));
            }
            if (_stamp[id] == _pass)
            {
                continue; // each distinct token is penalized once
            }
            _stamp[id] = _pass;
            float l = _work[id];
            _work[id] = l > 0 ? l / penalty : l * penalty;
        }
    }

    /// <summary>
    /// OpenAI's penalties: logit[t] -= presence * (count[t] &gt; 0) + frequency * count[t], count over
    /// <paramref name="generated"/>. Example: presence 0.5, frequency 0.25, generated [7, 7, 3]: token 7
    /// loses 0.5 + 0.5 = 1, token 3 loses 0.75, the rest keep their logits.
    /// </summary>
    private void ApplyPresenceAndFrequency(ReadOnlySpan<TokenId> generated)
    {
        float presence = Options.PresencePenalty, frequency = Options.FrequencyPenalty;
        if ((presence == 0 && frequency == 0) || generated.IsEmpty)
        {
            return;
        }
        int touched = 0;
        foreach (TokenId t in generated)
        {
            int id = t.Value;
            if ((uint)id >= (uint)_vocab)
            {
                throw new ArgumentException($"history token {id} is outside the vocabulary [0, {_vocab})", "history");
            }
            if (_counts[id]++ == 0)
            {
                _touched[touched++] = id;
            }
        }
        for (int i = 0; i < touched; i++)
        {
            int id = _touched[i];
            _work[id] -= presence + frequency * _counts[id];
            _counts[id] = 0;
        }
    }

    /// <summary>
    /// Smallest k &lt;= n such that the first k sorted candidates carry probability &gt;= p (softmax at
    /// temperature 1 over the n candidates). Example: probabilities 0.5, 0.3, 0.2 with p = 0.75 keep 2.
    /// </summary>
    private int TopPCount(int n, float p)
    {
        float max = _work[IdAt(0, sorted: true)];
        double sum = 0;
        for (int i = 0; i < n; i++)
        {
            sum += Math.Exp(_work[IdAt(i, sorted: true)] - max);
        }
        double target = p * sum;
        double cumulative = 0;
        for (int i = 0; i < n; i++)
        {
            cumulative += Math.Exp(_work[IdAt(i, sorted: true)] - max);
            if (cumulative >= target)
            {
                return i + 1;
            }
        }
        return n;
    }

    /// <summary>Count of the leading sorted candidates with logit &gt;= max + ln(minP) (at least 1).</summary>
    private int MinPCount(int n, float minP)
    {
        float threshold = _work[IdAt(0, sorted: true)] + MathF.Log(minP);
        int k = 1;
        while (k < n && _work[IdAt(k, sorted: true)] >= threshold)
        {
            k++;
        }
        return k;
    }

    /// <summary>
    /// Sorts <paramref name="keys"/> ascending, as <see cref="MemoryExtensions.Sort{T}(Span{T})"/> would, provided
    /// their low 32 bits (the ids) ascend on entry, as <see cref="SortKey"/> writes them: a stable LSD radix sort on
    /// the high 32 bits alone (4 passes of one byte; a pass whose byte is the same in every key is skipped), so
    /// keys with equal high halves keep their ascending-id order and the result is the full 64-bit order. About
    /// ten times faster than the comparison sort on V = 32000 (the sampling filters sort every step).
    /// <paramref name="buffer"/> (at least keys.Length) is scratch.
    /// Example (high half, id): (7, 0) (3, 1) (7, 2) (3, 3) → (3, 1) (3, 3) (7, 0) (7, 2).
    /// </summary>
    internal static void SortKeys(Span<ulong> keys, Span<ulong> buffer)
    {
        int n = keys.Length;
        if (n < 2)
        {
            return;
        }
        Span<int> offsets = stackalloc int[256];
        Span<ulong> src = keys, dst = buffer[..n];
        bool inKeys = true;
        for (int shift = 32; shift < 64; shift += 8)
        {
            offsets.Clear();
            foreach (ulong k in src)
            {
                offsets[(int)(k >> shift) & 0xFF]++;
            }
            if (offsets[(int)(src[0] >> shift) & 0xFF] == n)
            {
                continue; // every key has this byte: the pass would not move anything
            }
            int sum = 0;
            for (int b = 0; b < 256; b++)
            {
                int c = offsets[b];
                offsets[b] = sum;
                sum += c;
            }
            foreach (ulong k in src)
            {
                dst[offsets[(int)(k >> shift) & 0xFF]++] = k;
            }
            var t = src;
            src = dst;
            dst = t;
            inKeys = !inKeys;
        }
        if (!inKeys)
        {
            src.CopyTo(keys);
        }
    }

    private int IdAt(int i, bool sorted) => sorted ? (int)(uint)_keys[i] : i;

    /// <summary>
    /// Top-p without top-k, without sorting the whole vocabulary; returns the nucleus size n with _keys[0 .. n) holding
    /// it in order, or 0 to fall back to the full sort (every logit -infinity, or rounding). Steps:
    /// e = exp(logit - max) for every token (in vectors) and Z = their sum (double); a bisection on a threshold t over
    /// log2 e finds one whose tokens (e &gt;= t) hold at least p Z (1 + 1e-4) (float sums in vectors, about 18 passes
    /// over e); only those m tokens are keyed and sorted, then their mass is added in sorted order as
    /// <see cref="TopPCount"/> does until it reaches p Z. Every token outside has e below all of theirs, so the first
    /// n of the m are the first n of the full order.
    /// </summary>
    private int NucleusCount(float p)
    {
        float max = TensorPrimitives.Max(_work);
        if (float.IsNegativeInfinity(max))
        {
            return 0;
        }
        double target = p * ExpMasses(max, 1f);
        var e = _probs.AsSpan(0, _vocab); // (V) exp(logit - max)
        // Bisection on log2 t in [lo, 0]: mass(t) = sum of e >= t grows as t falls; keep the largest t found with
        // mass(t) >= target (1 + 1e-4). t = 2^-150 keeps every token with e > 0.
        double lo = -150, hi = 0, bestLog = -150;
        for (int iter = 0; iter < 32 && hi - lo > 1e-3; iter++)
        {
            double mid = 0.5 * (lo + hi);
            if (MassAtLeast(e, (float)Math.Pow(2, mid)) >= target * (1 + 1e-4))
            {
                (bestLog, lo) = (mid, mid);
            }
            else
            {
                hi = mid;
            }
        }
        int m = SortedKeysAtLeast(_probs, (float)Math.Pow(2, bestLog));
        double cumulative = 0;
        for (int i = 0; i < m; i++)
        {
            cumulative += Math.Exp(_work[IdAt(i, sorted: true)] - max);
            if (cumulative >= target)
            {
                return i + 1;
            }
        }
        return 0;
    }

    /// <summary>
    /// Min-p alone (no top-k, no top-p), without sorting the whole vocabulary: keys and sorts only the m tokens with
    /// logit &gt;= max + ln(minP) (found 16 logits per compare), which are exactly the first m of the full order, so
    /// <see cref="MinPCount"/> then keeps all m. Returns m, or 0 to fall back to the full sort (every logit -infinity,
    /// or half the vocabulary or more surviving, where the full sort costs no more).
    /// Example, minP = 0.5 (ln = -0.69), logits (1, 3, 2.5, 3): max 3, threshold 2.31, survivors 1, 3 (logit 3, by id),
    /// then 2.
    /// </summary>
    private int MinPSurvivors(float minP)
    {
        float max = TensorPrimitives.Max(_work);
        if (float.IsNegativeInfinity(max))
        {
            return 0;
        }
        return SortedKeysAtLeast(_work, max + MathF.Log(minP));
    }

    /// <summary>
    /// Keys the tokens whose value in <paramref name="v"/> is at least <paramref name="t"/> (16 values per compare) into
    /// _keys[0 .. m), sorted (descending logit, then id), and returns m; returns 0 instead when m &gt;= V / 2 (a broad
    /// distribution: the caller's full sort costs no more). v: (V) the logits (_work) or their exp masses (_probs),
    /// which rank the tokens alike, so the m are the first m of the full order.
    /// </summary>
    private int SortedKeysAtLeast(float[] v, float t)
    {
        var tv = Vector512.Create(t);
        ref float v0 = ref MemoryMarshal.GetArrayDataReference(v);
        int m = 0, i = 0;
        for (; i + 16 <= _vocab; i += 16)
        {
            ulong mask = Vector512.GreaterThanOrEqual(Vector512.LoadUnsafe(ref v0, (nuint)i), tv).ExtractMostSignificantBits();
            while (mask != 0)
            {
                int id = i + BitOperations.TrailingZeroCount(mask);
                _keys[m++] = SortKey(_work[id], id);
                mask &= mask - 1;
            }
        }
        for (; i < _vocab; i++)
        {
            if (v[i] >= t)
            {
                _keys[m++] = SortKey(_work[i], i);
            }
        }
        if (m >= _vocab / 2)
        {
            return 0;
        }
        _keys.AsSpan(0, m).Sort();
        return m;
    }

    /// <summary>Sum of the values of <paramref name="e"/> that are at least <paramref name="t"/>, in float vectors.</summary>
    private static double MassAtLeast(ReadOnlySpan<float> e, float t)
    {
        var acc = Vector512<float>.Zero;
        var tv = Vector512.Create(t);
        ref float e0 = ref MemoryMarshal.GetReference(e);
        int i = 0;
        for (; i + 16 <= e.Length; i += 16)
        {
            var v = Vector512.LoadUnsafe(ref e0, (nuint)i);
            acc += Vector512.ConditionalSelect(Vector512.GreaterThanOrEqual(v, tv), v, Vector512<float>.Zero);
        }
        double sum = Vector512.Sum(acc);
        for (; i < e.Length; i++)
        {
            if (e[i] >= t)
            {
                sum += e[i];
            }
        }
        return sum;
    }

    /// <summary>
    /// Puts the <paramref name="k"/> smallest sort keys of _work (the k largest logits, ties by id) in ascending order
    /// into _keys[0 .. k) and returns k: a max-heap of k keys over the V logits (most keys are turned away by one
    /// comparison with its root), then a sort of the k. Example, k = 2, logits (1, 5, 3, 5): the heap ends holding
    /// tokens 1 and 3 (logit 5), sorted by id: 1, 3.
    /// </summary>
    private int SelectTopKeys(int k)
    {
        var heap = _keys.AsSpan(0, k); // max-heap: heap[0] is the largest key kept so far
        for (int i = 0; i < k; i++)
        {
            heap[i] = SortKey(_work[i], i);
        }
        for (int i = k / 2 - 1; i >= 0; i--)
        {
            SiftDown(heap, i);
        }
        for (int i = k; i < _vocab; i++)
        {
            ulong key = SortKey(_work[i], i);
            if (key < heap[0])
            {
                heap[0] = key;
                SiftDown(heap, 0);
            }
        }
        heap.Sort();
        return k;

        static void SiftDown(Span<ulong> h, int i)
        {
            while (true)
            {
                int l = 2 * i + 1, r = l + 1, largest = i;
                if (l < h.Length && h[l] > h[largest])
                {
                    largest = l;
                }
                if (r < h.Length && h[r] > h[largest])
                {
                    largest = r;
                }
                if (largest == i)
                {
                    return;
                }
                (h[i], h[largest]) = (h[largest], h[i]);
                i = largest;
            }
        }
    }

    /// <summary>
    /// A 64-bit key whose ascending order is descending logit then ascending id: high 32 bits are the
    /// complement of the float's order-preserving bit pattern, low 32 bits the id.
    /// </summary>
    private static ulong SortKey(float logit, int id)
    {
        uint bits = BitConverter.SingleToUInt32Bits(logit);
        uint ascending = (bits & 0x8000_0000u) != 0 ? ~bits : bits | 0x8000_0000u;
        return ((ulong)~ascending << 32) | (uint)id;
    }
}
