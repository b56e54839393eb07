using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Bora.Evaluation;
using Bora.Formats;
using Bora.Loading;
using Bora.Model;
using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Bench;

/// <summary>
/// <c>model --model M [--threads N] [--prompt-tokens 512] [--gen-tokens 128] [--repeats 3] [--kv-type f16|f32] [--json] [--compare-llama-cpp]
/// [--synthesize mistral-7b|mixtral-8x7b --layers N --type q4_0|q8_0|q4_k|q4_k_m|f16 --out FILE] [--copy-weights] [--row-by-row-baseline] [--profile]</c>
/// <para>
/// Prefill and decode tokens per second of Bora (<see cref="ThroughputBenchmark"/>), the median of the repeats; with
/// --compare-llama-cpp llama.cpp runs the same prompt ids on the same file in the same process, the two engines
/// alternating run by run, and the ratios Bora / llama.cpp are printed. With --synthesize the file is first written by
/// <see cref="SyntheticModels"/> (to --out, which is then the model unless --model is given). --threads sets Bora's
/// <see cref="NumericsThreads.MaxThreads"/> and llama.cpp's n_threads / n_threads_batch. --row-by-row-baseline also runs
/// Bora with the previous row-by-row quantized kernels (<see cref="QuantizedMatrix.RowByRowBaseline"/>) in the same loop
/// ("bora-old").
/// </para>
/// <para>
/// Memory: Bora's load time and the process's peak resident set (VmHWM of /proc/self/status) after loading and at the
/// end, beside the file size and Bora's KV cache size (K and V of every layer for prompt + gen positions, 2 bytes a
/// value for --kv-type f16, the default, as llama.cpp's, which the --compare-llama-cpp runner keeps alike), so
/// the goal "peak RSS &lt;= file + KV cache + 5%" can be read off (the peak is reset just before loading, so a
/// --synthesize run in the same process does not count). Weights are read in place from the mapped file;
/// --copy-weights loads them into private pinned copies instead (the behaviour before mapping), for comparison.
/// The end figure includes llama.cpp's own memory when --compare-llama-cpp is given.
/// </para>
/// </summary>
public static class ModelBench
{
    public static int Run(string[] args)
    {
        var a = new BenchArgs(args, ["model", "threads", "prompt-tokens", "gen-tokens", "repeats", "synthesize", "layers", "type", "out", "seed", "kv-type"],
            ["json", "compare-llama-cpp", "copy-weights", "row-by-row-baseline", "profile"]);
        bool baseline = a.Flag("row-by-row-baseline");
        var kvType = a.GetKvType();
        int threads = a.GetInt("threads", Environment.ProcessorCount);
        int promptTokens = a.GetInt("prompt-tokens", 512), gen = a.GetInt("gen-tokens", 128), repeats = a.GetInt("repeats", 3);
        string? model = a.Get("model");
        if (a.Get("synthesize") is { } shape)
        {
            string outPath = a.Get("out") ?? throw new ArgumentException("--synthesize needs --out FILE");
            SyntheticModels.Synthesize(shape, a.Get("layers") is null ? null : a.GetInt("layers", 0), a.Get("type") ?? "q4_0",
                outPath, a.GetInt("seed", 1, 0), threads);
            model ??= outPath;
        }
        if (model is null)
        {
            throw new ArgumentException("--model FILE (or --synthesize ... --out FILE) is required");
        }

        NumericsThreads.MaxThreads = threads;
        ResetPeakResident();
        long loadStart = Stopwatch.GetTimestamp();
        using var bora = ModelLoader.Load(model, a.Flag("copy-weights") ? CopyWeights : null, kvType);
        double loadSeconds = Stopwatch.GetElapsedTime(loadStart).TotalSeconds;
        long loadPeak = PeakResidentBytes();
        long fileBytes = new FileInfo(model).Length;
        var cfg = bora.Config;
        long kvBytes = 2L * cfg.NLayers * (promptTokens + gen) * cfg.NKvHeads * cfg.HeadDim * kvType.ElementBytes();
        var prompt = ThroughputBenchmark.RandomPrompt(bora.Config.VocabSize, promptTokens, bora.Tokenizer.Bos);
        int[] promptIds = [.. prompt.Select(t => t.Value)];
        using var llama = a.Flag("compare-llama-cpp") ? new LlamaCppRunner(model, threads, promptTokens + gen, promptTokens, f16Cache: kvType == KvCacheType.F16) : null;

        // Warm-up: JIT on Bora's side, first-touch of the mapped weights on llama.cpp's.
        ThroughputBenchmark.Run(bora.Model, prompt.AsSpan(0, Math.Min(32, promptTokens)), 2);
        llama?.Run(promptIds[..Math.Min(32, promptTokens)], 2);

        if (a.Flag("profile"))
        {
            // One prefill of the whole prompt with the Stopwatch breakdown on (before the timed runs, which it does not touch).
            NumericsProfile.Reset();
            NumericsProfile.Enabled = true;
            var cache = bora.Model.CreateCache(promptTokens + 1);
            var logits = new float[bora.Config.VocabSize];
            var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
            long t0 = Stopwatch.GetTimestamp();
            bora.Model.Forward(prompt, cache, logits);
            double total = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            double cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
            NumericsProfile.Enabled = false;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"profile: prefill of {promptTokens} tokens, {threads} threads: {total:F3} s ({promptTokens / total:F2} tok/s), process CPU time {cpu:F3} s ({cpu / total:F2} CPUs busy on average)"));
            Console.Write(NumericsProfile.Report(total));

            // Then the same breakdown over decode steps (one token each, after that prompt).
            int steps = Math.Max(1, Math.Min(gen, 16));
            var decodeCache = bora.Model.CreateCache(promptTokens + steps + 1);
            bora.Model.Forward(prompt, decodeCache, logits);
            NumericsProfile.Reset();
            NumericsProfile.Enabled = true;
            cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
            t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < steps; i++)
            {
                bora.Model.Forward([prompt[i % prompt.Length]], decodeCache, logits);
            }
            total = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalSeconds;
            NumericsProfile.Enabled = false;
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"profile: {steps} decode steps, {threads} threads: {total:F3} s ({steps / total:F2} tok/s), process CPU time {cpu:F3} s ({cpu / total:F2} CPUs busy on average)"));
            Console.Write(NumericsProfile.Report(total));
        }

        var mine = new List<ThroughputSample>();
        var theirs = new List<ThroughputSample>();
        var old = new List<ThroughputSample>();
        var inv = CultureInfo.InvariantCulture;
        for (int r = 0; r < repeats; r++)
        {
            mine.Add(ThroughputBenchmark.Run(bora.Model, prompt, gen));
            Console.Error.WriteLine(string.Create(inv, $"run {r + 1}/{repeats} bora:      prefill {mine[^1].PrefillTokensPerSecond,8:F2} tok/s  decode {mine[^1].DecodeTokensPerSecond,8:F2} tok/s"));
            if (baseline)
            {
                QuantizedMatrix.RowByRowBaseline = true;
                try
                {
                    old.Add(ThroughputBenchmark.Run(bora.Model, prompt, gen));
                }
                finally
                {
                    QuantizedMatrix.RowByRowBaseline = false;
                }
                Console.Error.WriteLine(string.Create(inv, $"run {r + 1}/{repeats} bora-old:  prefill {old[^1].PrefillTokensPerSecond,8:F2} tok/s  decode {old[^1].DecodeTokensPerSecond,8:F2} tok/s"));
            }
            if (llama is not null)
            {
                theirs.Add(llama.Run(promptIds, gen));
                Console.Error.WriteLine(string.Create(inv, $"run {r + 1}/{repeats} llama.cpp: prefill {theirs[^1].PrefillTokensPerSecond,8:F2} tok/s  decode {theirs[^1].DecodeTokensPerSecond,8:F2} tok/s"));
            }
        }
        var (bp, bd) = Medians(mine);
        long endPeak = PeakResidentBytes();
        // After the memory figure (the probe's buffer would count in it): the machine's read bandwidth at these threads,
        // and the bytes of weights a decode step reads, so each engine's decode shows as GB/s against that wall.
        double wallGbs = llama is not null ? ReadBandwidth(threads) : 0;
        long stepBytes = DecodeBytesPerToken(model, cfg);
        var memory = new
        {
            file_bytes = fileBytes,
            kv_cache_bytes = kvBytes,
            load_s = loadSeconds,
            peak_rss_after_load_bytes = loadPeak,
            peak_rss_bytes = endPeak,
            copy_weights = a.Flag("copy-weights"),
        };
        if (a.Flag("json"))
        {
            object result = llama is null
                ? new { bora = new { prefill_tok_s = bp, decode_tok_s = bd }, memory }
                : new
                {
                    bora = new { prefill_tok_s = bp, decode_tok_s = bd },
                    memory,
                    llama_cpp = new { prefill_tok_s = Medians(theirs).Prefill, decode_tok_s = Medians(theirs).Decode },
                    ratio = new { prefill = bp / Medians(theirs).Prefill, decode = bd / Medians(theirs).Decode },
                    decode_read = new
                    {
                        bytes_per_token = stepBytes,
                        bora_gb_s = bd * stepBytes / 1e9,
                        llama_cpp_gb_s = Medians(theirs).Decode * stepBytes / 1e9,
                        machine_read_gb_s = wallGbs,
                    },
                };
            Console.WriteLine(JsonSerializer.Serialize(result));
            return 0;
        }
        Console.WriteLine(string.Create(inv,
            $"{Path.GetFileName(model)}: threads {threads} (of {Environment.ProcessorCount} processors), prompt {promptTokens}, gen {gen}, median of {repeats}, Bora ISA {QuantDot.Best}{(QuantDispatch.GeneratedKernels && QuantDispatch.GeneratedKernelsSupported ? " + generated VNNI tiles" : "")}"));
        Console.WriteLine(string.Create(inv,
            $"memory: file {fileBytes / 1e6:F1} MB, KV cache ({kvType}) {kvBytes / 1e6:F1} MB, load {loadSeconds:F2} s{(a.Flag("copy-weights") ? " (copied weights)" : bora.Mapper is { PackedBytes: > 0 } pm ? $" ({pm.PackedBytes / 1e6:F0} MB packed, {pm.MappedBytes / 1e6:F0} MB mapped)" : " (mapped weights)")}, " +
            $"peak RSS after load {loadPeak / 1e6:F1} MB, at the end {endPeak / 1e6:F1} MB ({(double)endPeak / (fileBytes + kvBytes):P0} of file + KV cache)"));
        Console.WriteLine($"{"engine",-10} {"prefill tok/s",14} {"decode tok/s",13}");
        Console.WriteLine(string.Create(inv, $"{"bora",-10} {bp,14:F2} {bd,13:F2}"));
        if (baseline)
        {
            var (op, od) = Medians(old);
            Console.WriteLine(string.Create(inv, $"{"bora-old",-10} {op,14:F2} {od,13:F2}   (new / old: prefill {bp / op:F2}x, decode {bd / od:F2}x)"));
        }
        if (llama is not null)
        {
            var (lp, ld) = Medians(theirs);
            Console.WriteLine(string.Create(inv, $"{"llama.cpp",-10} {lp,14:F2} {ld,13:F2}"));
            Console.WriteLine(string.Create(inv, $"{"ratio",-10} {bp / lp,13:F2}x {bd / ld,12:F2}x"));
            Console.WriteLine(string.Create(inv,
                $"decode reads {stepBytes / 1e9:F2} GB of weights per token: Bora {bd * stepBytes / 1e9:F1} GB/s, llama.cpp {ld * stepBytes / 1e9:F1} GB/s; this machine reads {wallGbs:F1} GB/s with {threads} threads (8-accumulator loop over 1 GiB, best of 5)"));
        }
        return 0;
    }

    /// <summary>
    /// Bytes of weights one decode step reads from the GGUF at <paramref name="path"/>: every tensor but the token
    /// embedding (one row per token), experts' tensors scaled by A / E (the router picks A of E per token).
    /// </summary>
    private static long DecodeBytesPerToken(string path, ModelConfig config)
    {
        if (!path.EndsWith(".gguf", StringComparison.OrdinalIgnoreCase))
        {
            return 0;
        }
        using var gguf = Formats.Gguf.GgufFile.Open(path);
        double bytes = 0;
        foreach (var t in gguf.Tensors)
        {
            if (t.Name.StartsWith("token_embd", StringComparison.Ordinal))
            {
                continue;
            }
            bytes += t.Name.Contains("_exps", StringComparison.Ordinal) && config.NExperts > 0
                ? (double)t.ByteLength * config.NExpertsPerToken / config.NExperts
                : t.ByteLength;
        }
        return (long)bytes;
    }

    /// <summary>
    /// The machine's read bandwidth with <paramref name="threads"/> threads, GB/s: each thread XORs its share of a
    /// 1 GiB buffer into 8 vector accumulators; the best of 5 passes (the wall a memory-bound decode runs into).
    /// </summary>
    private static unsafe double ReadBandwidth(int threads)
    {
        const long Bytes = 1L << 30;
        byte* buffer = (byte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)Bytes, 64);
        try
        {
            new Span<byte>(buffer, (int)Bytes).Fill(1);
            long per = Bytes / threads / 512 * 512;
            var sink = new long[threads * 8];
            double best = 0;
            for (int pass = 0; pass < 5; pass++)
            {
                long t0 = Stopwatch.GetTimestamp();
                Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t => sink[t * 8] = StreamBench.Read(buffer + t * per, per));
                best = Math.Max(best, per * threads / Stopwatch.GetElapsedTime(t0).TotalSeconds / 1e9);
            }
            GC.KeepAlive(sink);
            return best;
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.AlignedFree(buffer);
        }
    }

    /// <summary>Peak resident set size of this process in bytes (VmHWM of /proc/self/status), or -1 where there is none.</summary>
    public static long PeakResidentBytes()
    {
        const string Path = "/proc/self/status";
        if (!File.Exists(Path))
        {
            return -1;
        }
        foreach (var line in File.ReadLines(Path))
        {
            if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
            {
                var parts = line["VmHWM:".Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return long.Parse(parts[0], CultureInfo.InvariantCulture) * 1024; // kB
            }
        }
        return -1;
    }

    /// <summary>
    /// Starts the peak-RSS count afresh (after a collection that returns the synthesizer's buffers, when --synthesize ran
    /// in this process): writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS (Linux 4.0 and later).
    /// </summary>
    private static void ResetPeakResident()
    {
        GC.Collect(2, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // No procfs (or not writable): the peak then counts from the process start.
        }
    }

    /// <summary>The loading behaviour before mapping: every block / 16-bit tensor copied into a pinned array.</summary>
    private static WeightMatrix CopyWeights(ITensorStore store, MatrixSource source)
    {
        var type = source.Tensor.Type;
        if (!WeightMapper.KeepsStoredType(type, source.Cols) || type is DType.F16 or DType.BF16 || source.RowOrder is not null)
        {
            return WeightLoader.ReadF32Matrix(store, source);
        }
        long rowBytes = DTypeInfo.ByteSize(type, source.Cols)!.Value;
        long size = rowBytes * source.Rows;
        long start = source.Slice >= 0 ? source.Slice * size : 0;
        var blocks = QuantizedMatrix.AllocateBlocks(size);
        store.GetBytes(source.Tensor).Slice((int)start, (int)size).CopyTo(blocks);
        return new QuantizedMatrix(type, blocks, source.Rows, source.Cols, copy: false);
    }

    private static (double Prefill, double Decode) Medians(List<ThroughputSample> s) =>
        (ThroughputBenchmark.Median(s.Select(x => x.PrefillTokensPerSecond)), ThroughputBenchmark.Median(s.Select(x => x.DecodeTokensPerSecond)));
}
