using Bora.Generation;
using Bora.Model;

namespace Bora.Cli;

/// <summary>The sampling and context options shared by <c>generate</c> and <c>chat</c>.</summary>
internal static class GenerationArgs
{
    public static readonly string[] ValueOptions =
        ["model", "max-tokens", "temperature", "top-k", "top-p", "min-p", "repeat-penalty", "repeat-last-n", "seed", "stop", "context", "kv-type"];

    /// <summary>Largest default context for models without a sliding window (bounds KV-cache memory).</summary>
    public const int DefaultMaxContext = 4096;

    public static SamplingOptions Sampling(CliArguments a)
    {
        var defaults = new SamplingOptions();
        var stop = a.Get("stop");
        var options = new SamplingOptions
        {
            MaxTokens = a.GetInt("max-tokens", defaults.MaxTokens, min: 0),
            Temperature = a.GetFloat("temperature", defaults.Temperature),
            TopK = a.GetInt("top-k", defaults.TopK, min: 0),
            TopP = a.GetFloat("top-p", defaults.TopP),
            MinP = a.GetFloat("min-p", defaults.MinP),
            RepetitionPenalty = a.GetFloat("repeat-penalty", defaults.RepetitionPenalty),
            RepeatLastN = a.GetInt("repeat-last-n", defaults.RepeatLastN, min: 0),
            Seed = a.GetULong("seed"),
            StopStrings = stop is null ? [] : [stop],
        };
        UsageException.From(options.Validate);
        return options;
    }

    /// <summary>
    /// The context length: --context, else the model's trained length (capped at
    /// <see cref="DefaultMaxContext"/> when the KV cache would grow with it, i.e. without a sliding window).
    /// </summary>
    public static int Context(CliArguments a, ModelConfig config)
    {
        int fallback = config.SlidingWindow is null ? Math.Min(config.MaxSeqLen, DefaultMaxContext) : config.MaxSeqLen;
        return a.GetInt("context", fallback, min: 1, max: config.MaxSeqLen);
    }
}
