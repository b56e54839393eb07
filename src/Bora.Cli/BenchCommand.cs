using System.Globalization;
using System.Text.Json;
using Bora.Evaluation;
using Bora.Loading;
using Bora.Numerics;

namespace Bora.Cli;

/// <summary>
/// <c>bora bench --model M [--threads N] [--prompt-tokens 512] [--gen-tokens 128] [--repeats 3] [--kv-type f16|f32] [--json]</c>: Bora's
/// prefill and decode tokens per second (median of the repeats; see <see cref="ThroughputBenchmark"/>). The side-by-side
/// comparison with llama.cpp needs LLamaSharp, which the CLI does not depend on: it is
/// <c>dotnet run -c Release --project bench/Bora.Bench -- model</c> with the same options plus --compare-llama-cpp.
/// </summary>
internal static class BenchCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        if (args.Length > 0 && args[0] == "serve")
        {
            return ServeBenchCommand.Run(args[1..], stdout, stderr);
        }
        var a = new CliArguments("bench", args, ["model", "threads", "prompt-tokens", "gen-tokens", "repeats", "kv-type"], ["json", "compare-llama-cpp"]);
        if (a.Flag("compare-llama-cpp"))
        {
            throw new UsageException("'bench': --compare-llama-cpp lives in the benchmark project (the CLI does not ship llama.cpp): run `dotnet run -c Release --project bench/Bora.Bench -- model --model M --compare-llama-cpp [same options]`");
        }
        NumericsThreads.MaxThreads = a.GetInt("threads", Environment.ProcessorCount, 1, 1024);
        int prompt = a.GetInt("prompt-tokens", 512, 1, 1 << 20), gen = a.GetInt("gen-tokens", 128, 1, 1 << 20), repeats = a.GetInt("repeats", 3, 1, 1000);
        var model = ModelLoader.Load(a.Require("model"), kvType: a.GetKvType());
        var ids = ThroughputBenchmark.RandomPrompt(model.Config.VocabSize, prompt, model.Tokenizer.Bos);
        ThroughputBenchmark.Run(model.Model, ids.AsSpan(0, Math.Min(16, prompt)), 2); // warm-up (JIT)
        var samples = new List<ThroughputSample>();
        for (int r = 0; r < repeats; r++)
        {
            samples.Add(ThroughputBenchmark.Run(model.Model, ids, gen));
            stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"bench: run {r + 1}/{repeats}: prefill {samples[^1].PrefillTokensPerSecond:F2} tok/s, decode {samples[^1].DecodeTokensPerSecond:F2} tok/s"));
        }
        double pp = ThroughputBenchmark.Median(samples.Select(s => s.PrefillTokensPerSecond));
        double tg = ThroughputBenchmark.Median(samples.Select(s => s.DecodeTokensPerSecond));
        if (a.Flag("json"))
        {
            stdout.WriteLine(JsonSerializer.Serialize(new { bora = new { prefill_tok_s = pp, decode_tok_s = tg } }));
        }
        else
        {
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"bora: threads {NumericsThreads.MaxThreads}, prompt {prompt}, gen {gen}, median of {repeats}: prefill {pp:F2} tok/s, decode {tg:F2} tok/s"));
        }
        return 0;
    }
}
