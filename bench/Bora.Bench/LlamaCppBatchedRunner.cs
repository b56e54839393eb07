using System.Diagnostics;
using LLama.Native;

namespace Bora.Bench;

/// <summary>
/// llama.cpp's batched decode (LLamaSharp's native CPU build), the llama.cpp side of <c>serve --compare-llama-cpp</c>:
/// N sequences in one context (n_seq_max = N, one unified KV cache of N · (P + G) cells), each prompt of P random
/// tokens prefilled in one llama_decode of N · P tokens (logits of each sequence's last position), then G steps that
/// each decode one token of every sequence in one llama_decode of N tokens (greedy). The figure is
/// N · G / (prefill + decode seconds): aggregate output tokens per second with the prompts' cost included, as Bora's
/// served figure includes it. n_threads = n_threads_batch = the benchmark's thread count.
/// </summary>
internal sealed class LlamaCppBatchedRunner : IDisposable
{
    private readonly SafeLlamaModelHandle _model;
    private readonly int _threads;
    private readonly bool _f16Cache;

    /// <param name="path">The GGUF file.</param>
    /// <param name="threads">n_threads and n_threads_batch.</param>
    /// <param name="f16Cache">llama.cpp's default f16 K/V cache (true) or f32.</param>
    public LlamaCppBatchedRunner(string path, int threads, bool f16Cache = true)
    {
        _f16Cache = f16Cache;
        LlamaCppRunner.EnsureLoaded();
        var modelParams = LLamaModelParams.Default();
        modelParams.n_gpu_layers = 0;
        _model = SafeLlamaModelHandle.LoadFromFile(path, modelParams);
        _threads = threads;
        VocabSize = _model.Vocab.Count;
    }

    public int VocabSize { get; }

    /// <summary>Aggregate output tokens per second of one sequence per prompt in <paramref name="prompts"/> decoding <paramref name="genTokens"/> tokens each.</summary>
    public double Run(int[][] prompts, int genTokens)
    {
        int n = prompts.Length;
        int promptTokens = prompts.Max(p => p.Length);
        var ctx = LLamaContextParams.Default();
        ctx.n_ctx = (uint)(n * (promptTokens + genTokens + 1));
        ctx.n_batch = (uint)Math.Max(n * promptTokens, n);
        ctx.n_ubatch = (uint)Math.Min(ctx.n_batch, 512);
        ctx.n_seq_max = (uint)n;
        ctx.kv_unified = true;
        ctx.n_threads = _threads;
        ctx.n_threads_batch = _threads;
        ctx.no_perf = true;
        if (!_f16Cache)
        {
            ctx.type_k = GGMLType.GGML_TYPE_F32;
            ctx.type_v = GGMLType.GGML_TYPE_F32;
        }
        using var context = SafeLLamaContextHandle.Create(_model, ctx);

        long t0 = Stopwatch.GetTimestamp();
        var batch = new LLamaBatch();
        var logitIndex = new int[n];
        for (int s = 0; s < n; s++)
        {
            for (int i = 0; i < prompts[s].Length; i++)
            {
                int at = batch.Add(prompts[s][i], i, (LLamaSeqId)s, i == prompts[s].Length - 1);
                if (i == prompts[s].Length - 1)
                {
                    logitIndex[s] = at;
                }
            }
        }
        Decode(context, batch);
        var next = new int[n];
        for (int s = 0; s < n; s++)
        {
            next[s] = IndexOfMax(context.GetLogitsIth(logitIndex[s]));
        }
        for (int step = 0; step < genTokens; step++)
        {
            batch.Clear();
            for (int s = 0; s < n; s++)
            {
                logitIndex[s] = batch.Add(next[s], prompts[s].Length + step, (LLamaSeqId)s, true);
            }
            Decode(context, batch);
            for (int s = 0; s < n; s++)
            {
                next[s] = IndexOfMax(context.GetLogitsIth(logitIndex[s]));
            }
        }
        double seconds = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        return n * (double)genTokens / seconds;
    }

    private static void Decode(SafeLLamaContextHandle context, LLamaBatch batch)
    {
        var r = context.Decode(batch);
        if (r != DecodeResult.Ok)
        {
            throw new InvalidOperationException($"llama_decode of a batch of {batch.TokenCount} tokens returned {r}");
        }
    }

    private static int IndexOfMax(Span<float> row) => System.Numerics.Tensors.TensorPrimitives.IndexOfMax((ReadOnlySpan<float>)row);

    public void Dispose() => _model.Dispose();
}
