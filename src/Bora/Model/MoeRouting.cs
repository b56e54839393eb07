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

    /// <summary>
    /// Sorts the routed (token, slot) pairs by expert, stably (within an expert, by token): selected (T * A) holds each
    /// token's A experts (<see cref="Route"/>), selectedWeights (T * A) their weights. Writes starts (E + 1), with
    /// expert e's rows at [starts[e], starts[e + 1]), and for each row its token and weight.
    /// <para>Example, A = 2, E = 3, selected (2, 0 | 2, 1): starts (0, 1, 2, 4); tokens (0, 1, 0, 1); weights
    /// (w[0, slot 1], w[1, slot 1], w[0, slot 0], w[1, slot 0]).</para>
    /// </summary>
    /// <exception cref="ArgumentException">Lengths that do not match, or an expert outside 0 .. E - 1.</exception>
    public static void GroupByExpert(ReadOnlySpan<int> selected, int a, Span<int> starts, Span<int> tokens, Span<float> weights, ReadOnlySpan<float> selectedWeights)
    {
        int e = starts.Length - 1, rows = selected.Length;
        if (a <= 0 || e < 1 || rows % a != 0 || tokens.Length < rows || weights.Length < rows || selectedWeights.Length != rows)
        {
            throw new ArgumentException($"grouping {rows} routed rows of A = {a} into {e} experts needs T * A rows in tokens ({tokens.Length}), weights ({weights.Length}) and selectedWeights ({selectedWeights.Length})");
        }
        starts.Clear();
        foreach (int x in selected)
        {
            if ((uint)x >= (uint)e)
            {
                throw new ArgumentException($"routed expert {x} is outside 0 .. {e - 1}", nameof(selected));
            }
            starts[x + 1]++;
        }
        for (int x = 0; x < e; x++)
        {
            starts[x + 1] += starts[x];
        }
        // Fill with a running cursor per expert, kept in starts[x] and restored after.
        for (int i = 0; i < rows; i++)
        {
            int r = starts[selected[i]]++;
            tokens[r] = i / a;
            weights[r] = selectedWeights[i];
        }
        for (int x = e; x > 0; x--)
        {
            starts[x] = starts[x - 1];
        }
        starts[0] = 0;
    }
}
