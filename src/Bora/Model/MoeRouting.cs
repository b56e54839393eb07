namespace Bora.Model;

/// <summary>
/// Expert selection of a sparse MoE layer, as mistral-inference moe.py: take the top-A router
/// logits, then softmax over those A logits only.
/// <para>
/// Worked example, E = 4, A = 2, logits (1, 3, 2, 3): the top two are expert 1 (3) and expert 3 (3),
/// the tie going to the lower index first; weights = softmax(3, 3) = (0.5, 0.5). With logits
/// (0, ln 3, -5, 0): experts (1, 0), weights = softmax(ln 3, 0) = (0.75, 0.25).
/// </para>
/// </summary>
public static class MoeRouting
{
    /// <summary>
    /// Writes the A = experts.Length selected experts in descending logit order (ties: lower index
    /// first) and their softmax weights. logits: (E); experts, weights: (A).
    /// </summary>
    public static void Route(ReadOnlySpan<float> logits, Span<int> experts, Span<float> weights)
    {
        int a = experts.Length;
        if (weights.Length != a || a > logits.Length || a == 0)
        {
            throw new ArgumentException($"routing {logits.Length} experts to {a} (weights {weights.Length}); expected 1 <= A <= E and equal lengths");
        }
        for (int s = 0; s < a; s++)
        {
            int best = -1;
            for (int e = 0; e < logits.Length; e++)
            {
                if (experts[..s].Contains(e))
                {
                    continue;
                }
                if (best < 0 || logits[e] > logits[best])
                {
                    best = e;
                }
            }
            experts[s] = best;
            weights[s] = logits[best];
        }
        Numerics.Kernels.Softmax(weights);
    }
}
