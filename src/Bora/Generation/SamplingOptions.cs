using System.Globalization;

namespace Bora.Generation;

/// <summary>
/// How the next token is chosen, and when generation stops. The filters run in llama.cpp's default
/// order: repetition penalty (then OpenAI's presence and frequency penalties, then a constraint's mask), top-k, top-p, min-p, temperature, then a seeded draw (see
/// <see cref="Sampler"/>). The defaults are llama.cpp's sampling defaults with the repetition penalty
/// off; <see cref="Greedy"/> is deterministic argmax decoding.
/// </summary>
public sealed record SamplingOptions
{
    /// <summary>Argmax decoding (temperature 0), no penalty, 256 tokens.</summary>
    public static SamplingOptions Greedy { get; } = new() { Temperature = 0f };

    /// <summary>Softmax temperature; 0 means greedy (argmax, ties to the lowest id). Must be finite and &gt;= 0.</summary>
    public float Temperature { get; init; } = 0.8f;

    /// <summary>Keep only the K most likely tokens; 0 turns the filter off.</summary>
    public int TopK { get; init; } = 40;

    /// <summary>Nucleus filter: keep the smallest set of most likely tokens whose probability reaches P; 1 turns it off. In (0, 1].</summary>
    public float TopP { get; init; } = 0.95f;

    /// <summary>Drop tokens whose probability is below MinP times the top token's; 0 turns it off. In [0, 1].</summary>
    public float MinP { get; init; } = 0.05f;

    /// <summary>
    /// llama.cpp-style repetition penalty over the last <see cref="RepeatLastN"/> tokens (prompt included):
    /// each distinct such token has a positive logit divided by it and a negative logit multiplied by it.
    /// 1 turns it off; must be finite and &gt; 0.
    /// </summary>
    public float RepetitionPenalty { get; init; } = 1f;

    /// <summary>How many of the most recent tokens the repetition penalty looks at; 0 disables it.</summary>
    public int RepeatLastN { get; init; } = 64;

    /// <summary>
    /// OpenAI's presence penalty: subtracted once from the logit of every token that occurs among the
    /// generated tokens so far (the prompt does not count). 0 turns it off; in [-2, 2].
    /// </summary>
    public float PresencePenalty { get; init; }

    /// <summary>
    /// OpenAI's frequency penalty: subtracted from a token's logit once per occurrence among the generated
    /// tokens so far (the prompt does not count). 0 turns it off; in [-2, 2].
    /// </summary>
    public float FrequencyPenalty { get; init; }

    /// <summary>Seed of the sampler's PRNG; null draws a fresh random seed (reported in the result).</summary>
    public ulong? Seed { get; init; }

    /// <summary>Most tokens to generate (EOS included when sampled); 0 generates nothing.</summary>
    public int MaxTokens { get; init; } = 256;

    /// <summary>
    /// Generation stops as soon as the text contains one of these; the stop string and anything after it
    /// are not emitted. Empty strings are not allowed.
    /// </summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];

    /// <summary>Throws <see cref="ArgumentException"/> naming the first field that is out of range.</summary>
    public void Validate()
    {
        if (!float.IsFinite(Temperature) || Temperature < 0)
        {
            throw Bad(nameof(Temperature), Temperature, "a finite value >= 0 (0 = greedy)");
        }
        if (TopK < 0)
        {
            throw Bad(nameof(TopK), TopK, "an integer >= 0 (0 = off)");
        }
        if (!(TopP > 0 && TopP <= 1))
        {
            throw Bad(nameof(TopP), TopP, "a value in (0, 1] (1 = off)");
        }
        if (!(MinP >= 0 && MinP <= 1))
        {
            throw Bad(nameof(MinP), MinP, "a value in [0, 1] (0 = off)");
        }
        if (!float.IsFinite(RepetitionPenalty) || RepetitionPenalty <= 0)
        {
            throw Bad(nameof(RepetitionPenalty), RepetitionPenalty, "a finite value > 0 (1 = off)");
        }
        if (RepeatLastN < 0)
        {
            throw Bad(nameof(RepeatLastN), RepeatLastN, "an integer >= 0 (0 = off)");
        }
        if (!(PresencePenalty >= -2 && PresencePenalty <= 2))
        {
            throw Bad(nameof(PresencePenalty), PresencePenalty, "a value in [-2, 2] (0 = off)");
        }
        if (!(FrequencyPenalty >= -2 && FrequencyPenalty <= 2))
        {
            throw Bad(nameof(FrequencyPenalty), FrequencyPenalty, "a value in [-2, 2] (0 = off)");
        }
        if (MaxTokens < 0)
        {
            throw Bad(nameof(MaxTokens), MaxTokens, "an integer >= 0");
        }
        if (StopStrings is null)
        {
            throw new ArgumentException($"{nameof(StopStrings)} is null; expected a list (possibly empty)", nameof(StopStrings));
        }
        for (int i = 0; i < StopStrings.Count; i++)
        {
            string? s = StopStrings[i];
            if (string.IsNullOrEmpty(s))
            {
                throw new ArgumentException($"{nameof(StopStrings)}[{i}] is null or empty; stop strings must be non-empty", nameof(StopStrings));
            }
            if (!IsWellFormed(s))
            {
                throw new ArgumentException($"{nameof(StopStrings)}[{i}] contains a lone UTF-16 surrogate; stop strings must be well-formed text", nameof(StopStrings));
            }
        }
    }

    private static bool IsWellFormed(string s)
    {
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]))
            {
                if (i + 1 >= s.Length || !char.IsLowSurrogate(s[i + 1]))
                {
                    return false;
                }
                i++;
            }
            else if (char.IsLowSurrogate(s[i]))
            {
                return false;
            }
        }
        return true;
    }

    private static ArgumentException Bad(string field, IFormattable value, string expected) =>
        new($"sampling option {field} is {value.ToString(null, CultureInfo.InvariantCulture)}; expected {expected}", field);
}
