using System.Globalization;
using System.Net.Http.Headers;
using System.Text.Json;
using Bora.Loading;
using Bora.Numerics;
using Bora.Server.Benchmark;

namespace Bora.Cli;

/// <summary>
/// <c>bora bench serve [--model M | --url URL [--api-key K] [--model-id ID]] [--clients 1,4,16,64] [--prompt-tokens 128]
/// [--gen-tokens 64] [--threads T] [--kv-cache-mib N] [--kv-type f16|f32] [--max-batch-tokens N] [--json]</c>: N concurrent streaming
/// clients over loopback against Bora served in process (or a running server at --url), reporting time to first
/// token p50/p99, inter-token latency p50/p99 and aggregate output tokens/s per N (see <see cref="ServeBenchmark"/>).
/// llama.cpp's batched decode side by side needs LLamaSharp, which the CLI does not ship:
/// <c>dotnet run -c Release --project bench/Bora.Bench -- serve --model M --compare-llama-cpp [same options]</c>.
/// </summary>
internal static class ServeBenchCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("bench serve", args,
            ["model", "url", "api-key", "model-id", "clients", "prompt-tokens", "gen-tokens", "threads", "kv-cache-mib", "kv-type", "max-batch-tokens"], ["json", "compare-llama-cpp"]);
        if (a.Flag("compare-llama-cpp"))
        {
            throw new UsageException("'bench serve': --compare-llama-cpp lives in the benchmark project (the CLI does not ship llama.cpp): run `dotnet run -c Release --project bench/Bora.Bench -- serve --model M --compare-llama-cpp [same options]`");
        }
        var clients = ParseClients(a.Get("clients") ?? "1,4,16,64");
        int prompt = a.GetInt("prompt-tokens", 128, 1, 1 << 20), gen = a.GetInt("gen-tokens", 64, 1, 1 << 20);
        IReadOnlyList<ServeLevelResult> results;
        if (a.Get("url") is { } url)
        {
            if (a.Get("model") is not null || a.Get("threads") is not null || a.Get("kv-cache-mib") is not null || a.Get("kv-type") is not null)
            {
                throw new UsageException("'bench serve': --url targets a running server; --model, --threads, --kv-cache-mib and --kv-type apply only to the in-process server");
            }
            try
            {
                results = AgainstUrl(new Uri(url.TrimEnd('/') + "/"), a.Get("api-key") ?? Environment.GetEnvironmentVariable("BORA_API_KEY"), a.Get("model-id"), clients, prompt, gen, stderr)
                    .GetAwaiter().GetResult();
            }
            catch (HttpRequestException e)
            {
                stderr.WriteLine($"bora: bench serve: {url}: {e.Message}");
                return 1;
            }
        }
        else
        {
            NumericsThreads.MaxThreads = a.GetInt("threads", Environment.ProcessorCount, 1, 1024);
            var model = ModelLoader.Load(DefaultModel.Resolve(a, stderr), kvType: a.GetKvType());
            long? kvMiB = a.Get("kv-cache-mib") is null ? null : a.GetInt("kv-cache-mib", 0, 1, 1 << 24);
            results = ServeBenchmark.RunInProcessAsync(model, clients, prompt, gen, stderr, kvMiB, a.GetInt("max-batch-tokens", 256, 1, 1 << 16)).GetAwaiter().GetResult();
        }
        if (a.Flag("json"))
        {
            stdout.WriteLine(JsonSerializer.Serialize(new
            {
                prompt_tokens = prompt,
                gen_tokens = gen,
                levels = results.Select(r => new
                {
                    clients = r.Clients,
                    prompt_tokens = r.PromptTokens,
                    output_tokens = r.OutputTokens,
                    wall_s = r.WallSeconds,
                    ttft_p50_s = r.TtftP50,
                    ttft_p99_s = r.TtftP99,
                    itl_p50_s = r.ItlP50,
                    itl_p99_s = r.ItlP99,
                    output_tok_s = r.OutputTokensPerSecond,
                }),
            }));
        }
        else
        {
            stdout.Write(ServeBenchmark.FormatTable(results));
        }
        return 0;
    }

    /// <summary>"1,4,16,64" → [1, 4, 16, 64] (each in 1 .. 4096).</summary>
    internal static int[] ParseClients(string text)
    {
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length == 0)
        {
            throw new UsageException("'bench serve': --clients needs a comma-separated list of client counts, e.g. 1,4,16,64");
        }
        return [.. parts.Select(p => int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n is >= 1 and <= 4096
            ? n
            : throw new UsageException($"'bench serve': --clients has '{p}'; expected integers in [1, 4096] separated by commas"))];
    }

    private static async Task<IReadOnlyList<ServeLevelResult>> AgainstUrl(Uri url, string? key, string? model, int[] clients, int prompt, int gen, TextWriter stderr)
    {
        using var http = new HttpClient { BaseAddress = url, Timeout = TimeSpan.FromHours(1) };
        if (key is not null)
        {
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        }
        // No tokenizer here: about one token per short word, different per client (the table reports the server's count).
        string Prompt(int i) => $"client {i}: " + string.Join(' ', Enumerable.Range(0, Math.Max(1, prompt - 3)).Select(k => Words[(k * 7 + i) % Words.Length]));
        await ServeBenchmark.StreamOne(http, new ServeLoadOptions { Clients = 1, Prompt = Prompt, GenTokens = Math.Min(4, gen), Model = model }, 0).ConfigureAwait(false);
        var results = new List<ServeLevelResult>();
        foreach (int n in clients)
        {
            var r = await ServeBenchmark.RunAsync(http, new ServeLoadOptions { Clients = n, Prompt = Prompt, GenTokens = gen, Model = model }).ConfigureAwait(false);
            stderr.WriteLine(string.Create(CultureInfo.InvariantCulture, $"bench serve: N={n}: {r.OutputTokensPerSecond:F1} tok/s"));
            results.Add(r);
        }
        return results;
    }

    private static readonly string[] Words = ["the", "sea", "and", "all", "that", "in", "them", "is", "light", "day", "night", "earth", "water", "land", "good", "made"];
}
