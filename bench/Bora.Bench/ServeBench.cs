using System.Globalization;
using System.Text.Json;
using Bora.Evaluation;
using Bora.Loading;
using Bora.Model;
using Bora.Numerics;
using Bora.Server.Benchmark;

namespace Bora.Bench;

/// <summary>
/// <c>serve --model M [--clients 1,4,16,64] [--prompt-tokens 128] [--gen-tokens 64] [--threads T] [--kv-type f16|f32] [--compare-llama-cpp] [--json]</c>:
/// <c>bora bench serve</c>'s measurement (N concurrent streaming clients against Bora served in process on loopback, see
/// <see cref="ServeBenchmark"/>) and, with --compare-llama-cpp, llama.cpp's batched decode of N sequences on the same
/// GGUF and thread count (<see cref="LlamaCppBatchedRunner"/>), side by side per N.
/// </summary>
public static class ServeBench
{
    public static int Run(string[] args)
    {
        var a = new BenchArgs(args, ["model", "clients", "prompt-tokens", "gen-tokens", "threads", "kv-type"], ["compare-llama-cpp", "json"]);
        var kvType = a.GetKvType();
        string path = a.Get("model") ?? throw new ArgumentException("--model PATH is required");
        var clients = (a.Get("clients") ?? "1,4,16,64").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n >= 1 ? n : throw new ArgumentException($"--clients has '{s}'; expected positive integers")).ToArray();
        int prompt = a.GetInt("prompt-tokens", 128), gen = a.GetInt("gen-tokens", 64), threads = a.GetInt("threads", Environment.ProcessorCount);
        NumericsThreads.MaxThreads = threads;
        var model = ModelLoader.Load(path, kvType: kvType);
        var bora = ServeBenchmark.RunInProcessAsync(model, clients, prompt, gen, Console.Error).GetAwaiter().GetResult();
        Dictionary<int, double>? llama = null;
        if (a.Flag("compare-llama-cpp"))
        {
            llama = [];
            using var runner = new LlamaCppBatchedRunner(path, threads, f16Cache: kvType == KvCacheType.F16);
            int[] Prompt(int count, int seed) => [.. ThroughputBenchmark.RandomPrompt(runner.VocabSize, count, model.Tokenizer.Bos, seed).Select(t => t.Value)];
            runner.Run([Prompt(Math.Min(8, prompt), 1)], 2); // warm-up
            foreach (int n in clients)
            {
                var prompts = Enumerable.Range(0, n).Select(s => Prompt(prompt, 1000 + s)).ToArray();
                llama[n] = runner.Run(prompts, gen);
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"llama.cpp batched: N={n}: {llama[n]:F1} tok/s"));
            }
        }
        if (a.Flag("json"))
        {
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                threads,
                prompt_tokens = prompt,
                gen_tokens = gen,
                bora = bora.Select(r => new { clients = r.Clients, output_tok_s = r.OutputTokensPerSecond, ttft_p50_s = r.TtftP50, ttft_p99_s = r.TtftP99, itl_p50_s = r.ItlP50, itl_p99_s = r.ItlP99 }),
                llama_cpp = llama?.Select(kv => new { clients = kv.Key, output_tok_s = kv.Value }),
            }));
        }
        else
        {
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{Path.GetFileName(path)}: threads {threads}, prompt {prompt}, gen {gen} tokens per client"));
            Console.Write(ServeBenchmark.FormatTable(bora, llama));
        }
        return 0;
    }
}
