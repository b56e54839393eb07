using System.Diagnostics;
using Bora.Evaluation;
using LLama.Native;

namespace Bora.Bench;

/// <summary>
/// llama.cpp (LLamaSharp's native CPU build) running the same measurement as <see cref="ThroughputBenchmark.Run"/>:
/// the prompt in one llama_decode from an empty cache (logits of the last position only), then greedy decode steps
/// of one token each. llama.cpp's defaults otherwise (memory-mapped weights, its default K/V cache type and
/// attention path), with n_threads = n_threads_batch = the benchmark's thread count; the K/V cache is llama.cpp's
/// default f16 unless <c>f16Cache</c> is false (then f32, like Bora's <c>--kv-type f32</c>).
/// </summary>
internal sealed class LlamaCppRunner : IDisposable
{
    private static bool s_loaded;
    private readonly SafeLlamaModelHandle _model;
    private readonly SafeLLamaContextHandle _context;

    public LlamaCppRunner(string path, int threads, int contextSize, int batch, bool f16Cache = true)
    {
        EnsureLoaded();
        var modelParams = LLamaModelParams.Default();
        modelParams.n_gpu_layers = 0;
        _model = SafeLlamaModelHandle.LoadFromFile(path, modelParams);
        var ctx = LLamaContextParams.Default();
        ctx.n_ctx = (uint)contextSize;
        ctx.n_batch = (uint)batch;
        ctx.n_ubatch = (uint)Math.Min(batch, 512);
        ctx.n_seq_max = 1;
        ctx.n_threads = threads;
        ctx.n_threads_batch = threads;
        ctx.no_perf = true;
        if (!f16Cache)
        {
            ctx.type_k = GGMLType.GGML_TYPE_F32;
            ctx.type_v = GGMLType.GGML_TYPE_F32;
        }
        _context = SafeLLamaContextHandle.Create(_model, ctx);
        VocabSize = _model.Vocab.Count;
    }

    public int VocabSize { get; }

    public ThroughputSample Run(int[] prompt, int genTokens)
    {
        _context.MemoryClear(true);
        long t0 = Stopwatch.GetTimestamp();
        Decode(prompt, 0);
        var logits = _context.GetLogitsIth(-1); // forces the computation to finish
        int next = IndexOfMax(logits);
        double prefill = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        t0 = Stopwatch.GetTimestamp();
        for (int i = 0; i < genTokens; i++)
        {
            Decode([next], prompt.Length + i);
            next = IndexOfMax(_context.GetLogitsIth(-1));
        }
        double decode = Stopwatch.GetElapsedTime(t0).TotalSeconds;
        return new ThroughputSample(prompt.Length / prefill, genTokens / decode);
    }

    private void Decode(ReadOnlySpan<int> tokens, int start)
    {
        var batch = new LLamaBatch();
        for (int i = 0; i < tokens.Length; i++)
        {
            batch.Add(tokens[i], start + i, (LLamaSeqId)0, i == tokens.Length - 1);
        }
        var r = _context.Decode(batch);
        if (r != DecodeResult.Ok)
        {
            throw new InvalidOperationException($"llama_decode of {tokens.Length} tokens at position {start} returned {r}");
        }
    }

    private static int IndexOfMax(Span<float> row) => System.Numerics.Tensors.TensorPrimitives.IndexOfMax((ReadOnlySpan<float>)row);

    public void Dispose()
    {
        _context.Dispose();
        _model.Dispose();
    }

    /// <summary>Silences llama.cpp's log and loads the native library (llama_empty_call must come before other entry points).</summary>
    internal static void EnsureLoaded()
    {
        if (s_loaded)
        {
            return;
        }
        if (!NativeLibraryConfig.LLama.LibraryHasLoaded)
        {
            NativeLibraryConfig.All.WithLogCallback(static (_, _) => { });
        }
        NativeApi.llama_empty_call();
        s_loaded = true;
    }
}
