using Bora.Tokenizers;

namespace Bora.Generation.Constraints;

/// <summary>
/// Constrained decoding: a stateful filter over the vocabulary that says, before each sampling step, which
/// tokens may come next. The <see cref="Sampler"/> calls <see cref="Mask"/> on the penalized logits before
/// top-k/top-p/min-p/temperature (greedy decoding too), the caller feeds the chosen token to
/// <see cref="Advance"/>, and stops the sequence once <see cref="IsComplete"/> (the constrained value is
/// whole: nothing more may follow). One instance per sequence; not thread-safe.
/// </summary>
public interface ITokenConstraint
{
    /// <summary>
    /// Sets the logits (V) of every token not allowed in the current state to -infinity (the end-of-sequence
    /// token included unless the output may end here). Returns false when no token at all is allowed.
    /// </summary>
    bool Mask(Span<float> logits);

    /// <summary>Moves past <paramref name="token"/>; throws <see cref="InvalidOperationException"/> when it was not allowed.</summary>
    void Advance(TokenId token);

    /// <summary>True once the output is complete: the caller ends the sequence right there.</summary>
    bool IsComplete { get; }
}

/// <summary>Thrown by the <see cref="Sampler"/> when a constraint allows no token at all (every logit masked).</summary>
public sealed class ConstraintDeadEndException(string message) : InvalidOperationException(message);
