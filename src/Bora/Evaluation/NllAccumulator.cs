namespace Bora.Evaluation;

/// <summary>
/// Sums of the negative log-likelihood v = -log softmax(logits)[target] of scored tokens, and the perplexity
/// estimate from them as llama.cpp's llama-perplexity reports it: PPL = exp(mean v), and its uncertainty
/// PPL * sqrt((mean v² - (mean v)²) / (N - 1)) (the standard error of the mean of v, carried through exp).
/// </summary>
public sealed class NllAccumulator
{
    /// <summary>Sum of v.</summary>
    public double Sum { get; private set; }

    /// <summary>Sum of v².</summary>
    public double SumSquares { get; private set; }

    /// <summary>Scored tokens N.</summary>
    public long Count { get; private set; }

    /// <summary>exp(mean v); NaN before the first token.</summary>
    public double Perplexity => Count == 0 ? double.NaN : Math.Exp(Sum / Count);

    /// <summary>The ± of <see cref="Perplexity"/>; 0 when fewer than two tokens or no spread.</summary>
    public double StdError
    {
        get
        {
            if (Count < 2)
            {
                return 0;
            }
            double mean = Sum / Count;
            double variance = SumSquares / Count - mean * mean;
            return variance > 0 ? Math.Sqrt(variance / (Count - 1)) * Math.Exp(mean) : 0;
        }
    }

    /// <summary>Adds one scored token: logits (V) of the position before it and its id; returns v.</summary>
    public double Add(ReadOnlySpan<float> logits, int target)
    {
        double v = NegativeLogLikelihood(logits, target);
        Sum += v;
        SumSquares += v * v;
        Count++;
        return v;
    }

    /// <summary>
    /// -log softmax(logits)[target] = max + log Σ exp(l - max) - l[target], the exponentials summed in double as
    /// llama.cpp does.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The target is outside the row.</exception>
    public static double NegativeLogLikelihood(ReadOnlySpan<float> logits, int target)
    {
        if ((uint)target >= (uint)logits.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(target), target, $"token id outside the {logits.Length} logits");
        }
        float max = System.Numerics.Tensors.TensorPrimitives.Max(logits);
        double sum = 0;
        foreach (float l in logits)
        {
            sum += MathF.Exp(l - max);
        }
        return max + Math.Log(sum) - logits[target];
    }

    /// <summary>log softmax of a row, in float (the base distribution of a KL-divergence).</summary>
    public static void LogSoftmax(ReadOnlySpan<float> logits, Span<float> logProbs)
    {
        float max = System.Numerics.Tensors.TensorPrimitives.Max(logits);
        double sum = 0;
        foreach (float l in logits)
        {
            sum += MathF.Exp(l - max);
        }
        float shift = max + (float)Math.Log(sum);
        for (int i = 0; i < logits.Length; i++)
        {
            logProbs[i] = logits[i] - shift;
        }
    }
}
