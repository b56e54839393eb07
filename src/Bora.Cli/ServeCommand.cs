using Bora.Loading;
using Bora.Model;
using Bora.Numerics;
using Bora.Server;
using Bora.Serving;

namespace Bora.Cli;

/// <summary>
/// <c>bora serve [--model PATH] [--host 127.0.0.1] [--port 8080] [--api-key KEY] [--threads N] [--context N]
/// [--kv-cache-mib N] [--kv-type f16|f32] [--max-batch-tokens N] [--max-running N] [--max-queue N] [--max-body-bytes N]
/// [--max-tokens-limit N] [--max-n N] [--no-warmup]</c> (--max-n: the most choices, n, one request may ask for; default 8;
/// --no-warmup: skip the second or so of throwaway generations that runs before /health answers 200):
/// the OpenAI-compatible HTTP server until Ctrl+C, one log line per request on stderr. The key may also come
/// from BORA_API_KEY; --threads bounds the threads of the numeric kernels (all cores by default). Without
/// --model, it serves the embedded <see cref="DefaultModel"/>.
/// </summary>
internal static class ServeCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("serve", args,
            ["model", "host", "port", "api-key", "threads", "context", "kv-cache-mib", "kv-type", "max-batch-tokens", "max-running", "max-queue", "max-body-bytes", "max-tokens-limit", "max-n"], ["no-warmup"]);
        string model = DefaultModel.Resolve(a, stderr);
        var kvType = a.GetKvType();
        NumericsThreads.MaxThreads = a.GetInt("threads", Environment.ProcessorCount, 1, 1024);
        var options = new ServerOptions
        {
            Host = a.Get("host") ?? "127.0.0.1",
            Port = a.GetInt("port", 8080, 0, 65535),
            ApiKey = a.Get("api-key") ?? Environment.GetEnvironmentVariable("BORA_API_KEY"),
            MaxBodyBytes = a.GetInt("max-body-bytes", 1 << 20, 1024, int.MaxValue),
            MaxTokensLimit = a.GetInt("max-tokens-limit", 4096, 1, 1 << 20),
            MaxChoices = a.GetInt("max-n", 8, 1, 128),
            WarmUp = a.Flag("no-warmup") ? TimeSpan.Zero : new ServerOptions().WarmUp,
            Engine = new EngineOptions
            {
                ContextLength = a.GetInt("context", 0, 0, 1 << 24),
                KvCacheMiB = a.Get("kv-cache-mib") is null ? null : a.GetInt("kv-cache-mib", 0, 1, 1 << 24),
                MaxBatchTokens = a.GetInt("max-batch-tokens", 256, 1, 1 << 16),
                MaxRunning = a.GetInt("max-running", 32, 1, 4096),
                MaxWaiting = a.GetInt("max-queue", 64, 1, 1 << 16),
            },
        };
        using var stop = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            stop.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        try
        {
            return Serve(options, model, kvType, stdout, stderr, stop.Token).GetAwaiter().GetResult();
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
    }

    private static async Task<int> Serve(ServerOptions options, string model, KvCacheType kvType, TextWriter stdout, TextWriter stderr, CancellationToken stop)
    {
        await using var server = await BoraServer.StartAsync(options, () => ModelLoader.Load(model, kvType: kvType), stderr).ConfigureAwait(false);
        stdout.WriteLine($"bora: serving on {server.BaseAddress} (loading {model})");
        stdout.Flush();
        try
        {
            await server.Ready.WaitAsync(stop).ConfigureAwait(false);
            await server.WaitForShutdownAsync(stop).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Ctrl+C
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            stderr.WriteLine($"bora: {e.Message}");
            return 1;
        }
        return 0;
    }
}
