using System.Diagnostics;
using System.Globalization;
using Bora.Evaluation;
using Bora.Generation;
using Bora.Loading;
using Bora.Model;
using Bora.Numerics;
using Bora.Numerics.Quant;
using Bora.Serving;
using Bora.Tokenizers;

namespace Bora.Bench;

/// <summary>
/// <c>engine --model M [--clients 1,4,16] [--prompt-tokens 32] [--gen-tokens 16] [--threads T] [--repeats 3] [--kv-type f16|f32]</c>: the
/// serving path without HTTP, split into its parts, for each N:
/// <list type="bullet">
/// <item><c>step</c>: one decode step of N sequences through <see cref="Transformer.ForwardBatch"/> (paged caches
/// prefilled with the prompt), median ms; <c>matmul</c>: the same step's weight products alone (every layer's
/// Wq/Wk/Wv/Wo/W1/W3/W2 at T = N plus the output head), so step − matmul = attention, norms, RoPE, KV writes;</item>
/// <item><c>sample</c>: N rows of logits through <see cref="Sampler.Sample"/> with the server's options (temperature 1,
/// top-p 1) and with the library defaults (top-k 40, top-p 0.95, min-p 0.05);</item>
/// <item><c>engine</c>: N requests submitted at once to an <see cref="InferenceEngine"/> (no HTTP), read through their
/// delta channels: aggregate output tok/s (prefill included, as <c>serve</c> counts it) and ITL p50.</item>
/// </list>
/// </summary>
public static class EngineBench
{
    public static int Run(string[] args)
    {
        var a = new BenchArgs(args, ["model", "clients", "prompt-tokens", "gen-tokens", "threads", "repeats", "interleaved-min", "kv-type"], []);
        string path = a.Get("model") ?? throw new ArgumentException("--model PATH is required");
        var clients = (a.Get("clients") ?? "1,4,16").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        int prompt = a.GetInt("prompt-tokens", 32), gen = a.GetInt("gen-tokens", 16), repeats = a.GetInt("repeats", 3);
        NumericsThreads.MaxThreads = a.GetInt("threads", Environment.ProcessorCount);
        if (a.Get("interleaved-min") is not null)
        {
            // Benchmarks of the dispatch: Q4_0 / Q8_0 rows-in-lanes from this many tokens (16 = the dispatch before small batches ran there).
            QuantDispatch.Q4_0InterleavedMinTokens = QuantDispatch.Q8_0InterleavedMinTokens = a.GetInt("interleaved-min", 1);
        }
        using var loaded = ModelLoader.Load(path, kvType: a.GetKvType());
        var model = loaded.Model;
        var c = model.Config;
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{Path.GetFileName(path)}: threads {NumericsThreads.MaxThreads}, prompt {prompt}, gen {gen}, KV {model.KvType}; times are medians of {repeats} (ms)"));
        WarmUp(loaded, clients.Max(), prompt);
        Console.WriteLine("   N   step ms  matmul ms  rest ms  fwd tok/s  x N=1  sample(T1) ms  sample(def) ms  engine tok/s  x N=1  ITL p50 ms");
        double fwd1 = 0, eng1 = 0;
        foreach (int n in clients)
        {
            var (step, matmul) = StepTimes(model, n, prompt, repeats);
            var logits = new float[n * c.VocabSize];
            var rng = new Random(7);
            for (int i = 0; i < logits.Length; i++)
            {
                logits[i] = (float)(rng.NextDouble() * 20 - 10);
            }
            double sampleT1 = SampleTime(logits, n, c.VocabSize, new SamplingOptions { Temperature = 1, TopP = 1, TopK = 0, MinP = 0, Seed = 1 }, repeats);
            double sampleDef = SampleTime(logits, n, c.VocabSize, new SamplingOptions { Seed = 1 }, repeats);
            var (engTokS, itl) = EngineRun(loaded, n, prompt, gen);
            double fwd = n / (step / 1e3);
            if (n == clients[0])
            {
                fwd1 = fwd;
                eng1 = engTokS;
            }
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{n,4} {step,9:F1} {matmul,10:F1} {step - matmul,8:F1} {fwd,10:F1} {fwd / fwd1,6:F2} {sampleT1,14:F2} {sampleDef,15:F2} {engTokS,13:F1} {engTokS / eng1,6:F2} {itl,11:F1}"));
        }
        return 0;
    }

    /// <summary>
    /// Runs every measured path unmeasured first, long enough for .NET's tiered JIT to recompile the hot methods with
    /// optimizations: otherwise the first N measured pays for it (a 2-layer Q4_0 file's one-sequence step measured
    /// 16.3 ms first and 10.7 ms after 384 steps). The server does the same with <see cref="InferenceEngine.WarmUp"/>.
    /// </summary>
    private static void WarmUp(LoadedModel loaded, int n, int prompt)
    {
        using (var engine = new InferenceEngine(loaded.Model, loaded.Tokenizer, new EngineOptions { ContextLength = prompt + 64 }))
        {
            engine.WarmUp(TimeSpan.FromSeconds(2));
        }
        StepTimes(loaded.Model, 1, prompt, 40);
        StepTimes(loaded.Model, n, prompt, 8);
        var logits = new float[n * loaded.Config.VocabSize];
        SampleTime(logits, n, loaded.Config.VocabSize, new SamplingOptions { Temperature = 1, TopP = 1, TopK = 0, MinP = 0, Seed = 1 }, 40);
        SampleTime(logits, n, loaded.Config.VocabSize, new SamplingOptions { Seed = 1 }, 40);
    }

    /// <summary>Median ms of one decode step of n sequences, and of its weight products alone.</summary>
    private static (double Step, double MatMul) StepTimes(Transformer model, int n, int prompt, int repeats)
    {
        var c = model.Config;
        int kvDim = c.NKvHeads * c.HeadDim, blockSize = 16;
        int ctx = prompt + repeats + 8;
        int blocksPer = (ctx + blockSize - 1) / blockSize;
        var store = new PagedKvStore(c.NLayers, kvDim, n * blocksPer, blockSize, model.KvType);
        var caches = new PagedKvCache[n];
        var logits = new float[n * c.VocabSize];
        for (int s = 0; s < n; s++)
        {
            caches[s] = new PagedKvCache(store, Enumerable.Range(s * blocksPer, blocksPer).ToArray(), 0, ctx);
            var ids = ThroughputBenchmark.RandomPrompt(c.VocabSize, prompt, new TokenId(1), 100 + s);
            model.ForwardBatch([new BatchEntry(ids, caches[s], Memory<float>.Empty)]);
        }
        var times = new List<double>();
        for (int r = 0; r < repeats + 1; r++)
        {
            var entries = Enumerable.Range(0, n).Select(s => new BatchEntry(new[] { new TokenId(5 + s) }, caches[s], logits.AsMemory(s * c.VocabSize, c.VocabSize))).ToArray();
            var sw = Stopwatch.StartNew();
            model.ForwardBatch(entries);
            if (r > 0)
            {
                times.Add(sw.Elapsed.TotalMilliseconds); // the first step warms up
            }
        }
        var x = new float[n * Math.Max(c.Dim, c.HiddenDim)];
        var y = new float[n * Math.Max(c.VocabSize, Math.Max(c.Dim, c.HiddenDim))];
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = (i % 7) * 0.1f - 0.3f;
        }
        var mm = new List<double>();
        for (int r = 0; r < repeats + 1; r++)
        {
            var sw = Stopwatch.StartNew();
            foreach (var layer in model.Weights.Layers)
            {
                foreach (var w in new[] { layer.Wq, layer.Wk, layer.Wv, layer.Wo, layer.FeedForward?.W1, layer.FeedForward?.W3, layer.FeedForward?.W2 })
                {
                    w?.MatMul(x.AsSpan(0, n * w.Cols), y.AsSpan(0, n * w.Rows), n);
                }
            }
            model.Weights.Output.MatMul(x.AsSpan(0, n * c.Dim), y.AsSpan(0, n * c.VocabSize), n);
            if (r > 0)
            {
                mm.Add(sw.Elapsed.TotalMilliseconds);
            }
        }
        return (Median(times), Median(mm));
    }

    /// <summary>Median ms of sampling n rows (one sampler per row, as the engine keeps one per sequence).</summary>
    private static double SampleTime(float[] logits, int n, int vocab, SamplingOptions options, int repeats)
    {
        var samplers = Enumerable.Range(0, n).Select(_ => new Sampler(vocab, options)).ToArray();
        TokenId[] history = [new(1), new(2)];
        var times = new List<double>();
        for (int r = 0; r < repeats + 1; r++)
        {
            var sw = Stopwatch.StartNew();
            for (int s = 0; s < n; s++)
            {
                samplers[s].Sample(logits.AsSpan(s * vocab, vocab), history, 1);
            }
            if (r > 0)
            {
                times.Add(sw.Elapsed.TotalMilliseconds);
            }
        }
        return Median(times);
    }

    /// <summary>N requests at once on an engine (no HTTP): output tok/s over the wall time, and the median gap between deltas.</summary>
    private static (double TokS, double ItlP50) EngineRun(LoadedModel loaded, int n, int prompt, int gen)
    {
        int ctx = prompt + gen + 16;
        using var engine = new InferenceEngine(loaded.Model, loaded.Tokenizer, new EngineOptions { ContextLength = ctx, KvCacheTokens = n * (ctx + 16), MaxRunning = n, MaxWaiting = Math.Max(64, n) });
        var sampling = new SamplingOptions { Temperature = 1, TopP = 1, TopK = 0, MinP = 0, MaxTokens = gen };
        var gaps = new List<double>();
        var sw = Stopwatch.StartNew();
        var tasks = Enumerable.Range(0, n).Select(i => Task.Run(async () =>
        {
            var ids = ThroughputBenchmark.RandomPrompt(loaded.Config.VocabSize, prompt, loaded.Tokenizer.Bos, 1000 + i);
            var h = engine.Submit(ids, sampling with { Seed = (ulong)(i + 1) });
            var local = new List<double>();
            double last = double.NaN;
            await foreach (var d in h.Deltas.ReadAllAsync())
            {
                double now = sw.Elapsed.TotalMilliseconds;
                if (d.Token is not null && !double.IsNaN(last))
                {
                    local.Add(now - last);
                }
                last = now;
            }
            var summary = await h.Completion;
            lock (gaps)
            {
                gaps.AddRange(local);
            }
            return summary.CompletionTokens;
        })).ToArray();
        Task.WaitAll(tasks);
        double seconds = sw.Elapsed.TotalSeconds;
        return (tasks.Sum(t => t.Result) / seconds, Median(gaps));
    }

    private static double Median(List<double> v)
    {
        if (v.Count == 0)
        {
            return double.NaN;
        }
        v.Sort();
        return v.Count % 2 == 1 ? v[v.Count / 2] : (v[v.Count / 2 - 1] + v[v.Count / 2]) / 2;
    }
}
