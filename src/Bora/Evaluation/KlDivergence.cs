namespace Bora.Evaluation;

/// <summary>KL-divergence statistics of a model against a base distribution (llama-perplexity --kl-divergence's main lines).</summary>
/// <param name="Chunk">Chunks done.</param>
/// <param name="Chunks">Chunks in all.</param>
/// <param name="Perplexity">PPL of the model.</param>
/// <param name="PerplexityError">Its ±.</param>
/// <param name="BasePerplexity">PPL of the base.</param>
/// <param name="BasePerplexityError">Its ±.</param>
/// <param name="MeanKl">Mean KL(base || model) per scored token, in nats.</param>
/// <param name="MeanKlError">Its ± (standard error of the mean; 0 with 10 tokens or fewer).</param>
/// <param name="MaxKl">Largest KL of one token.</param>
/// <param name="SameTop">Fraction of tokens where both put their maximum on the same id.</param>
/// <param name="Count">Scored tokens.</param>
public sealed record KlDivergenceResult(int Chunk, int Chunks, double Perplexity, double PerplexityError, double BasePerplexity, double BasePerplexityError,
    double MeanKl, double MeanKlError, double MaxKl, double SameTop, long Count);

/// <summary>
/// Per-token KL(base || model) = Σ_i p_base(i) (log p_base(i) - log p_model(i)), summed over the ids whose base
/// log-probability is above -16 (as llama.cpp, whose stored base log-probabilities stop there), plus both models'
/// negative log-likelihoods of the actual next token and whether their top ids agree.
/// </summary>
public sealed class KlDivergenceAccumulator
{
    /// <summary>Base log-probabilities at or below this are left out of the KL sum (llama.cpp's cut-off).</summary>
    public const float MinBaseLogProb = -16f;

    private double _nll, _nll2, _nllBase, _nllBase2, _kl, _kl2, _maxKl;
    private long _sameTop, _count;

    /// <summary>Adds one scored position: the model's logits (V), the base's log-probabilities (V) and the actual next token id.</summary>
    public double Add(ReadOnlySpan<float> logits, ReadOnlySpan<float> baseLogProbs, int target)
    {
        if (logits.Length != baseLogProbs.Length)
        {
            throw new ArgumentException($"{logits.Length} logits but {baseLogProbs.Length} base log-probabilities; the two models must share a vocabulary");
        }
        int top = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits);
        float max = logits[top];
        double sumExp = 0;
        foreach (float l in logits)
        {
            sumExp += MathF.Exp(l - max);
        }
        double shift = max + Math.Log(sumExp); // log p_model(i) = logits[i] - shift
        double nll = shift - logits[target];
        double nllBase = -baseLogProbs[target];
        double kl = 0;
        int topBase = 0;
        for (int i = 0; i < baseLogProbs.Length; i++)
        {
            float lb = baseLogProbs[i];
            if (lb > baseLogProbs[topBase])
            {
                topBase = i;
            }
            if (lb > MinBaseLogProb)
            {
                kl += Math.Exp(lb) * (lb - (logits[i] - shift));
            }
        }
        _nll += nll;
        _nll2 += nll * nll;
        _nllBase += nllBase;
        _nllBase2 += nllBase * nllBase;
        _kl += kl;
        _kl2 += kl * kl;
        _maxKl = Math.Max(_maxKl, kl);
        _sameTop += top == topBase ? 1 : 0;
        _count++;
        return kl;
    }

    /// <summary>The statistics so far.</summary>
    public KlDivergenceResult Result(int chunk, int chunks)
    {
        var (lp, lpe) = MeanAndError(_nll, _nll2, _count);
        var (lb, lbe) = MeanAndError(_nllBase, _nllBase2, _count);
        var (kl, kle) = MeanAndError(_kl, _kl2, _count);
        return new KlDivergenceResult(chunk, chunks, Math.Exp(lp), Math.Exp(lp) * lpe, Math.Exp(lb), Math.Exp(lb) * lbe,
            kl, kle, _maxKl, _count == 0 ? 0 : (double)_sameTop / _count, _count);
    }

    /// <summary>Mean and its standard error, as llama.cpp's mean_and_uncertainty (error 0 with 10 values or fewer).</summary>
    private static (double Mean, double Error) MeanAndError(double sum, double sum2, long count)
    {
        if (count < 1)
        {
            return (0, 0);
        }
        double f = sum / count;
        double df = sum2 / count - f * f;
        return (f, df > 0 && count > 10 ? Math.Sqrt(df / (count - 1)) : 0);
    }
}
