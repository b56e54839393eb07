using System.Numerics;
using Bora.Generation;
using Bora.Model;
using Bora.Model.Lora;

namespace Bora.Training.Lora;

/// <summary>Parses <c>--targets</c> lists.</summary>
public static class LoraTargets
{
    /// <summary>The default: the four attention projections.</summary>
    public static IReadOnlySet<LoraModule> Attention { get; } = new HashSet<LoraModule> { LoraModule.Q, LoraModule.K, LoraModule.V, LoraModule.O };

    /// <summary>
    /// Comma-separated q, k, v, o (or q_proj .. o_proj), w1, w2, w3 (or gate_proj, down_proj, up_proj), and
    /// <c>experts</c> / <c>ffn</c> for all three FFN matrices (every expert's in an MoE model, the dense FFN's otherwise).
    /// </summary>
    /// <exception cref="ArgumentException">An unknown name; the message lists the known ones.</exception>
    public static IReadOnlySet<LoraModule> Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var set = new HashSet<LoraModule>();
        foreach (var raw in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            switch (raw.ToLowerInvariant())
            {
                case "q" or "q_proj" or "wq": set.Add(LoraModule.Q); break;
                case "k" or "k_proj" or "wk": set.Add(LoraModule.K); break;
                case "v" or "v_proj" or "wv": set.Add(LoraModule.V); break;
                case "o" or "o_proj" or "wo": set.Add(LoraModule.O); break;
                case "w1" or "gate_proj": set.Add(LoraModule.W1); break;
                case "w2" or "down_proj": set.Add(LoraModule.W2); break;
                case "w3" or "up_proj": set.Add(LoraModule.W3); break;
                case "experts" or "ffn" or "mlp":
                    set.Add(LoraModule.W1);
                    set.Add(LoraModule.W2);
                    set.Add(LoraModule.W3);
                    break;
                default:
                    throw new ArgumentException($"unknown LoRA target '{raw}'; expected a comma-separated list of q, k, v, o, w1, w2, w3, experts");
            }
        }
        if (set.Count == 0)
        {
            throw new ArgumentException("the LoRA target list is empty; expected e.g. q,k,v,o or q,k,v,o,experts");
        }
        return set;
    }
}

/// <summary>
/// The trainable LoRA factors of a model: for each adapted matrix W (out, in), A (r, in) and B (out, r), named by
/// their PEFT tensor names (<see cref="LoraAdapter.TensorName"/>; B rows in Bora's order while training).
/// </summary>
public sealed class LoraParameters<T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly Dictionary<LoraKey, (Parameter<T> A, Parameter<T> B)> _factors = [];
    private readonly List<Parameter<T>> _all = [];

    private LoraParameters(ModelConfig config, int rank, double alpha, IEnumerable<LoraKey> keys)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rank);
        if (!(alpha > 0) || double.IsInfinity(alpha))
        {
            throw new ArgumentOutOfRangeException(nameof(alpha), alpha, "alpha must be a positive number");
        }
        Config = config;
        Rank = rank;
        Alpha = alpha;
        foreach (var key in keys)
        {
            var (outF, inF) = LoraAdapter.Shape(config, key.Module);
            var a = new Parameter<T>(LoraAdapter.TensorName(key, config.IsMoE, 'A'), [rank, inF], decay: true);
            var b = new Parameter<T>(LoraAdapter.TensorName(key, config.IsMoE, 'B'), [outF, rank], decay: true);
            _factors.Add(key, (a, b));
            _all.Add(a);
            _all.Add(b);
        }
    }

    public ModelConfig Config { get; }

    /// <summary>r.</summary>
    public int Rank { get; }

    /// <summary>lora_alpha.</summary>
    public double Alpha { get; }

    /// <summary>s = alpha / r.</summary>
    public T Scale => T.CreateTruncating(Alpha / Rank);

    /// <summary>The factors of every adapted matrix.</summary>
    public IReadOnlyDictionary<LoraKey, (Parameter<T> A, Parameter<T> B)> Factors => _factors;

    /// <summary>Every A and B, in key order (layer, module, expert) — what the optimizer updates.</summary>
    public IReadOnlyList<Parameter<T>> All => _all;

    /// <summary>Trainable values.</summary>
    public long Count => _all.Sum(p => (long)p.Length);

    /// <summary>
    /// Fresh factors for the <paramref name="targets"/> of every layer (every expert's FFN in an MoE model), as
    /// PEFT initialises them: B = 0, so the adapted model starts equal to the base, and A kaiming-uniform with
    /// a = sqrt(5) (torch.nn.Linear's default), i.e. uniform in ±1/sqrt(in), drawn from xoshiro256** of <paramref name="seed"/>.
    /// </summary>
    public static LoraParameters<T> Create(ModelConfig config, IReadOnlySet<LoraModule> targets, int rank, double alpha, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(targets);
        var keys = new List<LoraKey>();
        for (int l = 0; l < config.NLayers; l++)
        {
            foreach (var m in targets.Order())
            {
                if (m >= LoraModule.W1 && config.IsMoE)
                {
                    keys.AddRange(Enumerable.Range(0, config.NExperts).Select(e => new LoraKey(l, m, e)));
                }
                else
                {
                    keys.Add(new LoraKey(l, m));
                }
            }
        }
        var p = new LoraParameters<T>(config, rank, alpha, keys.OrderBy(k => k.Layer).ThenBy(k => k.Module).ThenBy(k => k.Expert));
        var rng = new Xoshiro256StarStar(seed);
        foreach (var (a, _) in p._factors.Values)
        {
            double bound = 1.0 / Math.Sqrt(a.Shape[1]);
            for (int i = 0; i < a.Length; i++)
            {
                a.Data[i] = T.CreateTruncating((2 * rng.NextDouble() - 1) * bound);
            }
        }
        return p;
    }

    /// <summary>Factors with the values of a loaded adapter.</summary>
    public static LoraParameters<T> FromAdapter(LoraAdapter adapter, ModelConfig config)
    {
        ArgumentNullException.ThrowIfNull(adapter);
        ArgumentNullException.ThrowIfNull(config);
        var p = new LoraParameters<T>(config, adapter.Rank, adapter.Alpha, adapter.Factors.Keys.OrderBy(k => k.Layer).ThenBy(k => k.Module).ThenBy(k => k.Expert));
        foreach (var (key, (a, b)) in p._factors)
        {
            var f = adapter.Factors[key];
            for (int i = 0; i < a.Length; i++)
            {
                a.Data[i] = T.CreateTruncating(f.A[i]);
            }
            for (int i = 0; i < b.Length; i++)
            {
                b.Data[i] = T.CreateTruncating(f.B[i]);
            }
        }
        return p;
    }

    /// <summary>A float32 copy as an adapter (to save in PEFT's layout or apply at run time).</summary>
    public LoraAdapter ToAdapter(string baseModel = "")
    {
        static float[] F(Parameter<T> p) => [.. p.Data.Select(float.CreateTruncating)];
        var factors = _factors.ToDictionary(kv => kv.Key, kv =>
            new LoraFactors(F(kv.Value.A), F(kv.Value.B), Rank, (int)kv.Value.A.Shape[1], (int)kv.Value.B.Shape[0]));
        return new LoraAdapter(Rank, Alpha, factors, baseModel);
    }

    /// <summary>Sets every gradient to zero.</summary>
    public void ZeroGrad()
    {
        foreach (var p in _all)
        {
            Array.Clear(p.Grad);
        }
    }
}
