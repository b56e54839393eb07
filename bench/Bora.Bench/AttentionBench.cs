using System.Diagnostics;
using System.Globalization;
using Bora.Model;
using Bora.Numerics;
using Bora.Tokenizers;

namespace Bora.Bench;

/// <summary>
/// <c>attention [--tokens 1024] [--threads N] [--repeats 3] [--window W] [--layers 1] [--kv-type f16|f32|both]</c>: prefill time of the tiled online-softmax
/// attention against the per-query kernel (<see cref="Transformer.TiledAttention"/>) on Mistral 7B's attention shape
/// (32 query heads, 8 KV heads of 128) in a one-layer model whose other matrices are tiny, so attention dominates.
/// Both run in this process, alternating; prints the medians and their ratio.
/// With <c>--decode-steps N</c>: decode steps after a prefill of --tokens, per KV cache type (<c>--kv-type both</c>:
/// F16 and F32 side by side, rounds alternating, each type's cache prefilled once and decoded at the same positions).
/// </summary>
public static class AttentionBench
{
    public static int Run(string[] args)
    {
        var a = new BenchArgs(args, ["tokens", "threads", "repeats", "window", "layers", "decode-steps", "baseline", "kv-type"], []);
        int tokens = a.GetInt("tokens", 1024), repeats = a.GetInt("repeats", 3);
        string kvArg = (a.Get("kv-type") ?? "f16").ToLowerInvariant();
        KvCacheType[] kvTypes = kvArg == "both" ? [KvCacheType.F16, KvCacheType.F32]
            : [KvCacheTypes.TryParse(kvArg) ?? throw new ArgumentException($"--kv-type '{kvArg}': expected f16, f32 or both")];
        NumericsThreads.MaxThreads = a.GetInt("threads", Environment.ProcessorCount);
        var config = new ModelConfig
        {
            Dim = 256,
            NLayers = a.GetInt("layers", 1),
            NHeads = 32,
            NKvHeads = 8,
            HeadDim = 128,
            HiddenDim = 256,
            VocabSize = 64,
            NormEps = 1e-5f,
            RopeTheta = 10000f,
            MaxSeqLen = tokens + (repeats + 1) * a.GetInt("decode-steps", 0) + 1,
            SlidingWindow = a.Get("window") is null ? null : a.GetInt("window", 1),
        };
        var rng = new Random(1);
        WeightMatrix M(int rows, int cols)
        {
            var w = new float[rows * cols];
            float s = MathF.Sqrt(3f / cols);
            for (int i = 0; i < w.Length; i++)
            {
                w[i] = (float)(rng.NextDouble() * 2 - 1) * s;
            }
            return new F32Matrix(w, rows, cols);
        }
        float[] Ones(int n) => Enumerable.Repeat(1f, n).ToArray();
        int q = config.NHeads * config.HeadDim, kv = config.NKvHeads * config.HeadDim;
        var weights = new TransformerWeights
        {
            Config = config,
            TokenEmbedding = M(config.VocabSize, config.Dim),
            Layers = Enumerable.Repeat(
                new LayerWeights
                {
                    AttentionNorm = Ones(config.Dim),
                    Wq = M(q, config.Dim),
                    Wk = M(kv, config.Dim),
                    Wv = M(kv, config.Dim),
                    Wo = M(config.Dim, q),
                    FfnNorm = Ones(config.Dim),
                    FeedForward = new FeedForwardWeights { W1 = M(config.HiddenDim, config.Dim), W2 = M(config.Dim, config.HiddenDim), W3 = M(config.HiddenDim, config.Dim) },
                }, config.NLayers).ToArray(),
            FinalNorm = Ones(config.Dim),
            Output = M(config.VocabSize, config.Dim),
        };
        var prompt = Enumerable.Range(0, tokens).Select(i => new TokenId(i % config.VocabSize)).ToArray();
        int steps = a.GetInt("decode-steps", 0);
        if (steps > 0)
        {
            DecodeSideBySide(weights, prompt, kvTypes, steps, repeats);
            return 0;
        }
        // --baseline portable: the portable tile (queries one by one) instead of the per-query kernel.
        bool portable = a.Get("baseline") == "portable";
        var kvType = kvTypes[0];
        var models = new[]
        {
            new Transformer(weights) { MaxTokensPerPass = tokens, KvType = kvType },
            portable ? new Transformer(weights) { MaxTokensPerPass = tokens, UseWideTiles = false, KvType = kvType } : new Transformer(weights) { MaxTokensPerPass = tokens, TiledAttention = false, KvType = kvType },
        };
        var times = new[] { new List<double>(), new List<double>() };
        var attention = new[] { new List<double>(), new List<double>() };
        var logits = new float[config.VocabSize];
        for (int r = 0; r <= repeats; r++)
        {
            for (int m = 0; m < 2; m++)
            {
                var cache = models[m].CreateCache(tokens);
                NumericsProfile.Reset();
                NumericsProfile.Enabled = true;
                long t0 = Stopwatch.GetTimestamp();
                models[m].Forward(prompt, cache, logits);
                double ms = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
                NumericsProfile.Enabled = false;
                if (r > 0)
                {
                    times[m].Add(ms); // the first round warms up (JIT, buffers)
                    attention[m].Add(NumericsProfile.Seconds(ProfileSection.Attention) * 1000);
                }
            }
        }
        double tiled = Median(times[0]), perQuery = Median(times[1]);
        string baselineName = portable ? "portable tile" : "per-query";
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"attention prefill, {tokens} tokens, Hq 32 / Hkv 8 / Dh 128, window {config.SlidingWindow?.ToString(CultureInfo.InvariantCulture) ?? "none"}, threads {NumericsThreads.MaxThreads}, median of {repeats}: tiled {tiled:F1} ms, {baselineName} {perQuery:F1} ms, ratio {perQuery / tiled:F2}x; attention alone (profile): tiled {Median(attention[0]):F1} ms, {baselineName} {Median(attention[1]):F1} ms"));
        return 0;
    }

    /// <summary>
    /// Decode steps of one model per KV type: each type's cache is prefilled once with the prompt, then rounds of
    /// <paramref name="steps"/> decode steps alternate between the types (round 0 warms up), so every type decodes at
    /// the same positions. Prints per type the median step, the mean attention time per step and per layer, and the KV
    /// bytes read per second of attention.
    /// </summary>
    private static void DecodeSideBySide(TransformerWeights weights, TokenId[] prompt, KvCacheType[] kvTypes, int steps, int repeats)
    {
        var config = weights.Config;
        int tokens = prompt.Length, kv = config.NKvHeads * config.HeadDim;
        var models = kvTypes.Select(t => new Transformer(weights) { MaxTokensPerPass = tokens, KvType = t }).ToArray();
        var caches = models.Select(m => m.CreateCache(tokens + (repeats + 1) * steps + 1)).ToArray();
        var dl = new float[config.VocabSize];
        NumericsProfile.Enabled = false;
        for (int m = 0; m < models.Length; m++)
        {
            models[m].Forward(prompt, caches[m], dl);
        }
        var stepMs = models.Select(_ => new List<double>()).ToArray();
        var attentionMs = new double[models.Length];
        var cpuMs = new double[models.Length];
        for (int r = 0; r <= repeats; r++)
        {
            for (int m = 0; m < models.Length; m++)
            {
                NumericsProfile.Reset();
                NumericsProfile.Enabled = r > 0;
                for (int i = 0; i < steps; i++)
                {
                    var c0 = Process.GetCurrentProcess().TotalProcessorTime;
                    long t0 = Stopwatch.GetTimestamp();
                    models[m].Forward([new TokenId((r * steps + i) % config.VocabSize)], caches[m], dl);
                    if (r > 0)
                    {
                        stepMs[m].Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
                        cpuMs[m] += (Process.GetCurrentProcess().TotalProcessorTime - c0).TotalMilliseconds;
                    }
                }
                NumericsProfile.Enabled = false;
                if (r > 0)
                {
                    attentionMs[m] += NumericsProfile.Seconds(ProfileSection.Attention) * 1000;
                }
            }
        }
        double first = 0;
        for (int m = 0; m < models.Length; m++)
        {
            int n = stepMs[m].Count;
            double att = attentionMs[m] / n, med = Median(stepMs[m]);
            first = m == 0 ? att : first;
            long kvBytes = 2L * config.NLayers * tokens * kv * kvTypes[m].ElementBytes();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"attention decode after {tokens} tokens, KV {kvTypes[m]}, {config.NLayers} layers, threads {NumericsThreads.MaxThreads}: step {med:F2} ms (median; process CPU time {cpuMs[m] / n:F2} ms), attention {att:F2} ms per step (mean) = {att / config.NLayers * 1000:F0} us per layer, KV read {kvBytes / att / 1e6:F1} GB/s{(m > 0 ? $", attention {att / first:F2}x the {kvTypes[0]}'s" : "")}"));
        }
    }

    private static double Median(List<double> v)
    {
        var s = v.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}
