namespace Bora.Training;

/// <summary>
/// AdamW (Loshchilov and Hutter), as PyTorch's torch.optim.AdamW: for step t = 1, 2, ...
/// <code>
/// p ← p - lr · wd · p                       (decoupled weight decay; matrices only)
/// m ← β1 m + (1 - β1) g,   v ← β2 v + (1 - β2) g²
/// p ← p - lr · (m / (1 - β1^t)) / (sqrt(v / (1 - β2^t)) + ε)
/// </code>
/// State (m, v per parameter value, and t) is exposed so checkpoints can save and restore it exactly.
/// Worked example (tested): p = 1, g = 0.5, lr = 0.1, wd = 0.1, β = (0.9, 0.999), ε = 1e-8, t = 1:
/// p ← 0.99; m = 0.05, v = 0.00025; m̂ = 0.5, v̂ = 0.25; p ← 0.99 - 0.1 · 0.5 / 0.5 = 0.89 (up to ε).
/// </summary>
public sealed class AdamW
{
    private readonly IReadOnlyList<Parameter<float>> _params;

    public AdamW(IReadOnlyList<Parameter<float>> parameters, double beta1 = 0.9, double beta2 = 0.95, double eps = 1e-8, double weightDecay = 0.1)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (beta1 is < 0 or >= 1 || beta2 is < 0 or >= 1 || !(eps > 0) || weightDecay < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(parameters), $"AdamW needs 0 <= beta < 1, eps > 0, weight decay >= 0; got beta1 {beta1}, beta2 {beta2}, eps {eps}, weight decay {weightDecay}");
        }
        _params = parameters;
        Beta1 = beta1;
        Beta2 = beta2;
        Eps = eps;
        WeightDecay = weightDecay;
        M = [.. parameters.Select(p => new float[p.Length])];
        V = [.. parameters.Select(p => new float[p.Length])];
    }

    public double Beta1 { get; }

    public double Beta2 { get; }

    public double Eps { get; }

    public double WeightDecay { get; }

    /// <summary>First moments, one array per parameter in the order given.</summary>
    public IReadOnlyList<float[]> M { get; }

    /// <summary>Second moments, one array per parameter in the order given.</summary>
    public IReadOnlyList<float[]> V { get; }

    /// <summary>Updates taken so far (t of the last update).</summary>
    public long Steps { get; set; }

    /// <summary>Applies one update with learning rate <paramref name="lr"/> from each parameter's Grad.</summary>
    public void Update(double lr)
    {
        Steps++;
        double c1 = 1 - Math.Pow(Beta1, Steps), c2 = 1 - Math.Pow(Beta2, Steps);
        // 1 - β in double first: 1 - 0.999f in float32 is off by 1e-5 relative.
        float b1 = (float)Beta1, b2 = (float)Beta2, a1 = (float)(1 - Beta1), a2 = (float)(1 - Beta2), eps = (float)Eps;
        float stepSize = (float)(lr / c1), invSqrtC2 = (float)(1 / Math.Sqrt(c2));
        for (int k = 0; k < _params.Count; k++)
        {
            var p = _params[k];
            var data = p.Data;
            var grad = p.Grad;
            var m = M[k];
            var v = V[k];
            float decay = p.Decay ? (float)(1 - lr * WeightDecay) : 1f;
            // Element-wise and independent: chunks may run on any thread with identical results.
            const int Chunk = 1 << 14;
            int chunks = (data.Length + Chunk - 1) / Chunk;
            void Run(int c)
            {
                int end = Math.Min(data.Length, (c + 1) * Chunk);
                for (int i = c * Chunk; i < end; i++)
                {
                    float g = grad[i];
                    m[i] = b1 * m[i] + a1 * g;
                    v[i] = b2 * v[i] + a2 * g * g;
                    data[i] = data[i] * decay - stepSize * m[i] / (MathF.Sqrt(v[i]) * invSqrtC2 + eps);
                }
            }
            if (chunks > 1)
            {
                Parallel.For(0, chunks, Run);
            }
            else if (chunks == 1)
            {
                Run(0);
            }
        }
    }

    /// <summary>
    /// sqrt(Σ g²) over every gradient, summed in double in parameter order (deterministic); when it
    /// exceeds <paramref name="maxNorm"/> (> 0) all gradients are scaled by maxNorm / norm. Returns the norm before clipping.
    /// </summary>
    public static double ClipGradients(IReadOnlyList<Parameter<float>> parameters, double maxNorm)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        double ss = 0;
        foreach (var p in parameters)
        {
            foreach (var g in p.Grad)
            {
                ss += (double)g * g;
            }
        }
        double norm = Math.Sqrt(ss);
        if (maxNorm > 0 && norm > maxNorm)
        {
            float s = (float)(maxNorm / norm);
            foreach (var p in parameters)
            {
                System.Numerics.Tensors.TensorPrimitives.Multiply(p.Grad, s, p.Grad);
            }
        }
        return norm;
    }
}

/// <summary>
/// Linear warmup then cosine decay: for step s (0-based) lr = MaxLr (s + 1) / Warmup while s &lt; Warmup,
/// then MinLr + (MaxLr - MinLr) (1 + cos(π progress)) / 2 with progress = (s - Warmup) / (Total - Warmup)
/// capped at 1. Worked example (tested), Max 1, Min 0.1, Warmup 2, Total 6: steps 0 .. 6 give
/// 0.5, 1, 1, 0.8682, 0.55, 0.2318, 0.1 (progress 0, 0.25, 0.5, 0.75, 1 from step 2).
/// </summary>
public sealed record CosineSchedule(double MaxLr, double MinLr, int WarmupSteps, int TotalSteps)
{
    public double LearningRate(long step)
    {
        if (step < WarmupSteps)
        {
            return MaxLr * (step + 1) / WarmupSteps;
        }
        double span = Math.Max(1, TotalSteps - WarmupSteps);
        double progress = Math.Min(1.0, (step - WarmupSteps) / span);
        return MinLr + (MaxLr - MinLr) * 0.5 * (1 + Math.Cos(Math.PI * progress));
    }
}
