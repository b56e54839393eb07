using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Bora.Loading;
using Bora.Serving;
using Bora.Tokenizers;

namespace Bora.Server.Benchmark;

/// <summary>What each simulated client asks for.</summary>
public sealed record ServeLoadOptions
{
    /// <summary>Concurrent streaming clients; each sends one request, all at once.</summary>
    public required int Clients { get; init; }

    /// <summary>The prompt text of client <c>i</c> (different per client so the prefix cache does not share them).</summary>
    public required Func<int, string> Prompt { get; init; }

    /// <summary>max_tokens of each request.</summary>
    public required int GenTokens { get; init; }

    /// <summary>Model id sent with the requests (null: the server's only model).</summary>
    public string? Model { get; init; }

    /// <summary>Client i samples with seed <c>Seed + i</c> at temperature 1.</summary>
    public long Seed { get; init; } = 1;
}

/// <summary>The timing of one streamed request.</summary>
/// <param name="TimeToFirstToken">Seconds from sending the request to the first chunk carrying text.</param>
/// <param name="InterTokenLatencies">Seconds between consecutive text chunks (one token each, except where a token completes no character).</param>
/// <param name="CompletionTokens">completion_tokens of the final chunk's usage.</param>
/// <param name="PromptTokens">prompt_tokens of the final chunk's usage.</param>
public sealed record RequestTiming(double TimeToFirstToken, IReadOnlyList<double> InterTokenLatencies, int CompletionTokens, int PromptTokens);

/// <summary>One load level's figures (times in seconds).</summary>
/// <param name="Clients">N, the concurrent clients.</param>
/// <param name="PromptTokens">Mean prompt tokens per request (from the servers' usage).</param>
/// <param name="OutputTokens">Completion tokens of all requests.</param>
/// <param name="WallSeconds">From the first request sent to the last stream ended.</param>
/// <param name="TtftP50">Median time to first token.</param>
/// <param name="TtftP99">99th percentile of the time to first token.</param>
/// <param name="ItlP50">Median inter-token latency (over every gap of every request).</param>
/// <param name="ItlP99">99th percentile inter-token latency.</param>
/// <param name="OutputTokensPerSecond">Aggregate decode throughput: <paramref name="OutputTokens"/> / <paramref name="WallSeconds"/>.</param>
public sealed record ServeLevelResult(int Clients, double PromptTokens, int OutputTokens, double WallSeconds,
    double TtftP50, double TtftP99, double ItlP50, double ItlP99, double OutputTokensPerSecond);

/// <summary>
/// <c>bora bench serve</c>'s load generator: N concurrent clients stream <c>/v1/completions</c> over HTTP and the
/// time to first token, inter-token latencies and aggregate output tokens per second are summarized with
/// <see cref="Percentile"/>. Works against any OpenAI-compatible server (Bora in-process on loopback, or --url).
/// </summary>
public static class ServeBenchmark
{
    /// <summary>
    /// The p-th percentile (0 ≤ p ≤ 100) with linear interpolation between closest ranks — numpy's default
    /// (<c>np.percentile(x, p)</c>): sorted values v[0..n-1], rank r = p/100 · (n − 1), result
    /// v[⌊r⌋] + (r − ⌊r⌋) · (v[⌊r⌋+1] − v[⌊r⌋]).
    /// Worked example: v = [1, 2, 3, 4], p = 50 → r = 1.5 → 2 + 0.5 · (3 − 2) = 2.5; p = 99 → r = 2.97 → 3 + 0.97 · 1 = 3.97.
    /// An empty list gives NaN.
    /// </summary>
    public static double Percentile(IReadOnlyList<double> values, double p)
    {
        ArgumentNullException.ThrowIfNull(values);
        if (!(p >= 0 && p <= 100))
        {
            throw new ArgumentOutOfRangeException(nameof(p), p, "a percentile is in [0, 100]");
        }
        if (values.Count == 0)
        {
            return double.NaN;
        }
        var sorted = values.ToArray();
        Array.Sort(sorted);
        double rank = p / 100 * (sorted.Length - 1);
        int lo = (int)Math.Floor(rank);
        int hi = Math.Min(lo + 1, sorted.Length - 1);
        return sorted[lo] + (rank - lo) * (sorted[hi] - sorted[lo]);
    }

    /// <summary>Summarizes the requests of one load level.</summary>
    public static ServeLevelResult Summarize(int clients, IReadOnlyList<RequestTiming> requests, double wallSeconds)
    {
        ArgumentNullException.ThrowIfNull(requests);
        var ttft = requests.Select(r => r.TimeToFirstToken).Where(double.IsFinite).ToList();
        var itl = requests.SelectMany(r => r.InterTokenLatencies).ToList();
        int tokens = requests.Sum(r => r.CompletionTokens);
        return new ServeLevelResult(clients, requests.Count == 0 ? 0 : requests.Average(r => r.PromptTokens), tokens, wallSeconds,
            Percentile(ttft, 50), Percentile(ttft, 99), Percentile(itl, 50), Percentile(itl, 99),
            wallSeconds > 0 ? tokens / wallSeconds : 0);
    }

    /// <summary>
    /// Serves <paramref name="model"/> in process on 127.0.0.1 (a free port) with an engine sized for the largest
    /// level (MaxRunning = max N, a KV pool of max N full sequences unless <paramref name="kvCacheMiB"/> says),
    /// warms it up with one short request, then runs each level in turn. Prompts are <paramref name="promptTokens"/>
    /// random vocabulary tokens decoded to text, different for every client (re-encoding may change the count a
    /// little; the table reports the servers' count).
    /// </summary>
    public static async Task<IReadOnlyList<ServeLevelResult>> RunInProcessAsync(LoadedModel model, IReadOnlyList<int> clients, int promptTokens, int genTokens,
        TextWriter progress, long? kvCacheMiB = null, int maxBatchTokens = 256, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(clients);
        ArgumentNullException.ThrowIfNull(progress);
        if (clients.Count == 0 || clients.Any(n => n < 1) || promptTokens < 1 || genTokens < 1)
        {
            throw new ArgumentException("clients, prompt tokens and gen tokens must be at least 1");
        }
        int maxClients = clients.Max();
        // Re-encoding decoded text can grow a little: leave room for a quarter more prompt tokens.
        int context = Math.Min(model.Config.MaxSeqLen, promptTokens + promptTokens / 4 + genTokens + 16);
        var engine = new EngineOptions
        {
            ContextLength = context,
            KvCacheMiB = kvCacheMiB,
            KvCacheTokens = kvCacheMiB is null ? maxClients * (context + 16) : 0,
            MaxRunning = maxClients,
            MaxWaiting = Math.Max(64, maxClients),
            MaxBatchTokens = maxBatchTokens,
        };
        await using var server = await BoraServer.StartAsync(new ServerOptions { Port = 0, ModelId = "bench", MaxTokensLimit = Math.Max(4096, genTokens), Engine = engine },
            () => model, TextWriter.Null).ConfigureAwait(false);
        await server.Ready.ConfigureAwait(false);
        using var http = new HttpClient { BaseAddress = server.BaseAddress, Timeout = TimeSpan.FromHours(1) };
        var prompts = new string[maxClients];
        for (int i = 0; i < maxClients; i++)
        {
            prompts[i] = RandomPrompt(model.Tokenizer, promptTokens, seed: 1000 + i);
        }
        await StreamOne(http, new ServeLoadOptions { Clients = 1, Prompt = i => prompts[0], GenTokens = Math.Min(4, genTokens) }, 0, cancellationToken).ConfigureAwait(false); // warm-up (JIT)
        var results = new List<ServeLevelResult>();
        foreach (int n in clients)
        {
            var r = await RunAsync(http, new ServeLoadOptions { Clients = n, Prompt = i => prompts[i], GenTokens = genTokens }, cancellationToken).ConfigureAwait(false);
            progress.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"bench serve: N={n}: {r.OutputTokensPerSecond:F1} tok/s, TTFT p50 {r.TtftP50 * 1e3:F0} ms, ITL p50 {r.ItlP50 * 1e3:F1} ms ({r.OutputTokens} tokens in {r.WallSeconds:F1} s; peak batch {server.Engine!.PeakBatchSequences})"));
            results.Add(r);
        }
        return results;
    }

    /// <summary><paramref name="tokens"/> random non-control tokens of the vocabulary (seeded), decoded to text.</summary>
    public static string RandomPrompt(ITokenizer tokenizer, int tokens, int seed)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        var rng = new Random(seed);
        var ids = new List<TokenId>(tokens);
        for (int guard = 0; ids.Count < tokens && guard < tokens * 100; guard++)
        {
            var id = new TokenId(rng.Next(tokenizer.VocabSize));
            if (!tokenizer.IsControl(id))
            {
                ids.Add(id);
            }
        }
        return tokenizer.Decode(ids.ToArray());
    }

    /// <summary>Runs one load level against <paramref name="http"/> (its BaseAddress and auth header set).</summary>
    public static async Task<ServeLevelResult> RunAsync(HttpClient http, ServeLoadOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(http);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Clients < 1 || options.GenTokens < 1)
        {
            throw new ArgumentException($"clients ({options.Clients}) and gen tokens ({options.GenTokens}) must be at least 1", nameof(options));
        }
        var clock = Stopwatch.StartNew();
        var tasks = Enumerable.Range(0, options.Clients).Select(i => Task.Run(() => StreamOne(http, options, i, cancellationToken), cancellationToken)).ToArray();
        var results = await Task.WhenAll(tasks).ConfigureAwait(false);
        double wall = clock.Elapsed.TotalSeconds;
        return Summarize(options.Clients, results, wall);
    }

    /// <summary>One streamed completion, timed.</summary>
    public static async Task<RequestTiming> StreamOne(HttpClient http, ServeLoadOptions options, int client, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(http);
        ArgumentNullException.ThrowIfNull(options);
        var body = new Dictionary<string, object?>
        {
            ["prompt"] = options.Prompt(client),
            ["max_tokens"] = options.GenTokens,
            ["temperature"] = 1.0,
            ["seed"] = options.Seed + client,
            ["stream"] = true,
        };
        if (options.Model is not null)
        {
            body["model"] = options.Model;
        }
        string json = JsonSerializer.Serialize(body, BenchJsonContext.Default.DictionaryStringObject);
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("text/event-stream"));
        long t0 = Stopwatch.GetTimestamp();
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode)
        {
            string error = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
            throw new HttpRequestException($"POST v1/completions answered {(int)response.StatusCode}: {error}");
        }
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false));
        double ttft = double.NaN;
        long last = 0;
        var gaps = new List<double>(options.GenTokens);
        int completion = 0, prompt = 0;
        while (await reader.ReadLineAsync(cancellationToken).ConfigureAwait(false) is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal) || line == "data: [DONE]")
            {
                continue;
            }
            long now = Stopwatch.GetTimestamp();
            using var doc = JsonDocument.Parse(line.AsMemory(6));
            var root = doc.RootElement;
            if (root.TryGetProperty("error", out var err))
            {
                throw new HttpRequestException($"the stream ended with an error: {err}");
            }
            if (root.TryGetProperty("choices", out var choices) && choices.GetArrayLength() > 0
                && choices[0].TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String && text.GetString()!.Length > 0)
            {
                if (double.IsNaN(ttft))
                {
                    ttft = Stopwatch.GetElapsedTime(t0, now).TotalSeconds;
                }
                else
                {
                    gaps.Add(Stopwatch.GetElapsedTime(last, now).TotalSeconds);
                }
                last = now;
            }
            if (root.TryGetProperty("usage", out var usage) && usage.ValueKind == JsonValueKind.Object)
            {
                completion = usage.GetProperty("completion_tokens").GetInt32();
                prompt = usage.GetProperty("prompt_tokens").GetInt32();
            }
        }
        return new RequestTiming(ttft, gaps, completion, prompt);
    }

    /// <summary>A plain-text table, one row per level; <paramref name="llamaCpp"/> adds llama.cpp's aggregate tok/s per N when given.</summary>
    public static string FormatTable(IEnumerable<ServeLevelResult> levels, IReadOnlyDictionary<int, double>? llamaCpp = null)
    {
        ArgumentNullException.ThrowIfNull(levels);
        var list = levels.ToList();
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        sb.Append(inv, $"{"N",4} {"prompt",7} {"out tok",8} {"wall s",8} {"TTFT p50 ms",12} {"TTFT p99 ms",12} {"ITL p50 ms",11} {"ITL p99 ms",11} {"tok/s",9} {"x N=1",6}");
        if (llamaCpp is not null)
        {
            sb.Append(inv, $" {"llama.cpp tok/s",16} {"x N=1",6}");
        }
        sb.AppendLine();
        double? baseline = list.FirstOrDefault(l => l.Clients == 1)?.OutputTokensPerSecond;
        double? llamaBase = llamaCpp is not null && llamaCpp.TryGetValue(1, out var lb) ? lb : null;
        foreach (var l in list)
        {
            sb.Append(inv, $"{l.Clients,4} {l.PromptTokens,7:F0} {l.OutputTokens,8} {l.WallSeconds,8:F2} {l.TtftP50 * 1e3,12:F1} {l.TtftP99 * 1e3,12:F1} {l.ItlP50 * 1e3,11:F1} {l.ItlP99 * 1e3,11:F1} {l.OutputTokensPerSecond,9:F1} {Ratio(l.OutputTokensPerSecond, baseline),6}");
            if (llamaCpp is not null)
            {
                double? ll = llamaCpp.TryGetValue(l.Clients, out var v) ? v : null;
                sb.Append(inv, $" {(ll is { } x ? x.ToString("F1", inv) : "-"),16} {(ll is { } y ? Ratio(y, llamaBase) : "-"),6}");
            }
            sb.AppendLine();
        }
        return sb.ToString();
    }

    private static string Ratio(double value, double? baseline) =>
        baseline is { } b && b > 0 ? (value / b).ToString("F2", CultureInfo.InvariantCulture) : "-";
}

[System.Text.Json.Serialization.JsonSerializable(typeof(Dictionary<string, object?>))]
[System.Text.Json.Serialization.JsonSerializable(typeof(string))]
[System.Text.Json.Serialization.JsonSerializable(typeof(int))]
[System.Text.Json.Serialization.JsonSerializable(typeof(long))]
[System.Text.Json.Serialization.JsonSerializable(typeof(double))]
[System.Text.Json.Serialization.JsonSerializable(typeof(bool))]
internal sealed partial class BenchJsonContext : System.Text.Json.Serialization.JsonSerializerContext;
