using Bora.Serving;

namespace Bora.Server;

/// <summary>Address, key and limits of a <see cref="BoraServer"/>.</summary>
public sealed record ServerOptions
{
    /// <summary>Address to listen on (an IP literal or "localhost").</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>TCP port; 0 picks a free one (see <see cref="BoraServer.BaseAddress"/>).</summary>
    public int Port { get; init; } = 8080;

    /// <summary>Bearer key every route but /health requires; null = no authentication.</summary>
    public string? ApiKey { get; init; }

    /// <summary>Largest request body in bytes (413 beyond).</summary>
    public long MaxBodyBytes { get; init; } = 1 << 20;

    /// <summary>Largest max_tokens a request may ask for.</summary>
    public int MaxTokensLimit { get; init; } = 4096;

    /// <summary>max_tokens when a request gives none (capped by the context left).</summary>
    public int DefaultMaxTokens { get; init; } = 256;

    /// <summary>Largest n (choices per request) a request may ask for.</summary>
    public int MaxChoices { get; init; } = 8;

    /// <summary>Most stop strings per request, and longest one.</summary>
    public int MaxStopStrings { get; init; } = 8;

    public int MaxStopLength { get; init; } = 256;

    /// <summary>A request running longer is cancelled.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromMinutes(10);

    /// <summary>Model id reported by /v1/models and accepted in requests; null = the model file's name.</summary>
    public string? ModelId { get; init; }

    /// <summary>
    /// How long the engine runs throwaway generations after loading, before /health answers 200
    /// (<see cref="InferenceEngine.WarmUp"/>), so that the first requests run optimized code; zero: none
    /// (<c>bora serve --no-warmup</c>).
    /// </summary>
    public TimeSpan WarmUp { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Engine sizes (KV cache, batch budget, queue).</summary>
    public EngineOptions Engine { get; init; } = new();
}
