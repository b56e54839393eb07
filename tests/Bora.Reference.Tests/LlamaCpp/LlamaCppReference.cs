using System.Text;
using LLama.Native;

namespace Bora.Reference.Tests.LlamaCpp;

/// <summary>
/// llama.cpp (through LLamaSharp's low-level native API) as an independent reference: loads a GGUF,
/// runs token sequences and returns the raw logits of every position, greedy-decodes, tokenizes and
/// quantizes. Letters: T = tokens evaluated, V = vocabulary size, N = greedy steps.
/// <para>
/// Everything native is serialized through <see cref="NativeLock"/> (llama.cpp's backend state is
/// global); test classes using this type should also sit in the <see cref="LlamaCppCollection"/>
/// xunit collection so they do not run in parallel with each other.
/// </para>
/// <para>
/// The context is created with F32 K/V caches, flash attention off, one micro-batch the size of the
/// whole context (so a prompt is evaluated in one graph) and a fixed thread count, which makes the
/// logits as exact as llama.cpp's CPU path gets. Weights are read without mmap.
/// </para>
/// </summary>
/// <example>
/// <code>
/// using var llama = new LlamaCppReference(TestPaths.Shared("models", "stories260K", "stories260K.gguf"), contextSize: 256);
/// int[] prompt = llama.Tokenize("Once upon a time", addBos: true);
/// float[][] logits = llama.EvaluateAll(prompt);               // (T)(V): logits[t] predicts token t + 1
/// var (tokens, stepLogits) = llama.GreedyDecode(prompt, 20);  // (N) tokens and (N)(V) logits they were drawn from
/// LlamaCppReference.Quantize(inGguf, outGguf, "q8_0");
/// </code>
/// </example>
public sealed class LlamaCppReference : IDisposable
{
    /// <summary>Guards every call into the native library (and the one-time load).</summary>
    public static readonly object NativeLock = new();

    private static bool s_loaded;
    private static readonly List<string> s_log = [];

    private readonly SafeLlamaModelHandle _model;
    private readonly SafeLLamaContextHandle _context;
    private readonly string _path;
    private bool _disposed;

    /// <summary>Vocabulary size V of the loaded model.</summary>
    public int VocabSize { get; }

    /// <summary>Most positions one sequence may hold (the fixed context size).</summary>
    public int ContextSize { get; }

    /// <summary>Beginning-of-sequence token id.</summary>
    public int Bos { get; }

    /// <summary>End-of-sequence token id.</summary>
    public int Eos { get; }

    /// <summary>
    /// Loads <paramref name="ggufPath"/> and creates one context of <paramref name="contextSize"/> positions, with an
    /// F32 KV cache (exact reference arithmetic), or F16 (llama.cpp's own default) when <paramref name="f16Cache"/>.
    /// </summary>
    public LlamaCppReference(string ggufPath, int contextSize = 256, int threads = 1, bool f16Cache = false)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(contextSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        if (!File.Exists(ggufPath))
        {
            throw new FileNotFoundException($"GGUF file '{ggufPath}' does not exist", ggufPath);
        }
        _path = ggufPath;
        ContextSize = contextSize;
        lock (NativeLock)
        {
            EnsureLoaded();
            ClearLog();
            var modelParams = LLamaModelParams.Default();
            modelParams.n_gpu_layers = 0;
            modelParams.load_mode = LLamaLoadMode.None; // plain reads, no mmap
            try
            {
                _model = SafeLlamaModelHandle.LoadFromFile(ggufPath, modelParams);
            }
            catch (Exception e)
            {
                throw new InvalidOperationException($"llama.cpp could not load '{ggufPath}': {e.Message}\n{RecentLog()}", e);
            }

            var ctxParams = LLamaContextParams.Default();
            ctxParams.n_ctx = (uint)contextSize;
            ctxParams.n_batch = (uint)contextSize;
            ctxParams.n_ubatch = (uint)contextSize;
            ctxParams.n_outputs_max = (uint)contextSize;
            ctxParams.n_seq_max = 1;
            ctxParams.n_threads = threads;
            ctxParams.n_threads_batch = threads;
            ctxParams.llama_flash_attn_type = LLamaFlashAttentionType.LLAMA_FLASH_ATTENTION_TYPE_DISABLED;
            ctxParams.type_k = f16Cache ? GGMLType.GGML_TYPE_F16 : GGMLType.GGML_TYPE_F32;
            ctxParams.type_v = f16Cache ? GGMLType.GGML_TYPE_F16 : GGMLType.GGML_TYPE_F32;
            ctxParams.no_perf = true;
            try
            {
                _context = SafeLLamaContextHandle.Create(_model, ctxParams);
            }
            catch (Exception e)
            {
                _model.Dispose();
                throw new InvalidOperationException($"llama.cpp could not create a context for '{ggufPath}': {e.Message}\n{RecentLog()}", e);
            }
            VocabSize = _model.Vocab.Count;
            Bos = _model.Vocab.BOS is { } bos ? (int)bos : -1;
            Eos = _model.Vocab.EOS is { } eos ? (int)eos : -1;
        }
    }

    /// <summary>
    /// Forgets the context, evaluates <paramref name="tokens"/> at positions 0..T-1 in one batch and
    /// returns the logits of every position: result[t] (length V) is the distribution over the token
    /// following tokens[0..t].
    /// </summary>
    public float[][] EvaluateAll(ReadOnlySpan<int> tokens)
    {
        if (tokens.Length == 0 || tokens.Length > ContextSize)
        {
            throw new ArgumentException($"{tokens.Length} tokens; expected 1..{ContextSize} (the context size)", nameof(tokens));
        }
        lock (NativeLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _context.MemoryClear(true);
            Decode(tokens, startPos: 0, allLogits: true);
            var result = new float[tokens.Length][]; // (T)(V)
            for (int t = 0; t < tokens.Length; t++)
            {
                result[t] = _context.GetLogitsIth(t).ToArray();
            }
            return result;
        }
    }

    /// <summary>
    /// Forgets the context, evaluates <paramref name="prompt"/> in one batch, then runs
    /// <paramref name="steps"/> greedy steps (argmax, ties to the lowest id), feeding each chosen token
    /// back. Returns the N chosen tokens and, for each, the (V) logits it was chosen from. Does not stop
    /// at EOS; the caller decides what to compare.
    /// </summary>
    public (int[] Tokens, float[][] Logits) GreedyDecode(ReadOnlySpan<int> prompt, int steps)
    {
        if (prompt.Length == 0 || prompt.Length + steps - 1 > ContextSize)
        {
            throw new ArgumentException($"prompt of {prompt.Length} tokens + {steps} steps does not fit a context of {ContextSize}", nameof(prompt));
        }
        ArgumentOutOfRangeException.ThrowIfNegative(steps);
        lock (NativeLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _context.MemoryClear(true);
            var tokens = new int[steps];
            var logits = new float[steps][]; // (N)(V)
            Decode(prompt, startPos: 0, allLogits: false);
            int pos = prompt.Length;
            for (int i = 0; i < steps; i++)
            {
                float[] row = _context.GetLogitsIth(-1).ToArray();
                logits[i] = row;
                tokens[i] = ArgMax(row);
                if (i + 1 < steps)
                {
                    Decode([tokens[i]], pos++, allLogits: false);
                }
            }
            return (tokens, logits);
        }
    }

    /// <summary>Forgets every position (the next <see cref="Forward"/> starts at position 0).</summary>
    public void ClearMemory()
    {
        lock (NativeLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _context.MemoryClear(true);
        }
    }

    /// <summary>
    /// Low-level step in the shape of Bora's ICausalLM.Forward: runs T = tokens.Length tokens at positions
    /// <paramref name="startPos"/> .. startPos + T - 1 on top of what the context already holds, and writes
    /// (T, V) logits when <paramref name="logits"/> has T * V elements, or the last position's (V) when it has V.
    /// </summary>
    public void Forward(ReadOnlySpan<int> tokens, int startPos, Span<float> logits)
    {
        int t = tokens.Length;
        bool all = logits.Length == t * VocabSize;
        if (t == 0 || (!all && logits.Length != VocabSize))
        {
            throw new ArgumentException($"{t} tokens with {logits.Length} logits; expected T >= 1 and T * V or V = {VocabSize} logits", nameof(logits));
        }
        if (startPos < 0 || startPos + t > ContextSize)
        {
            throw new ArgumentOutOfRangeException(nameof(startPos), $"positions {startPos}..{startPos + t - 1} do not fit a context of {ContextSize}");
        }
        lock (NativeLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Decode(tokens, startPos, all);
            if (all)
            {
                for (int i = 0; i < t; i++)
                {
                    _context.GetLogitsIth(i).CopyTo(logits.Slice(i * VocabSize, VocabSize));
                }
            }
            else
            {
                _context.GetLogitsIth(-1).CopyTo(logits);
            }
        }
    }

    /// <summary>llama.cpp's tokenizer: UTF-8 text to ids, BOS first when asked, control-token text not parsed.</summary>
    public int[] Tokenize(string text, bool addBos)
    {
        lock (NativeLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            LLamaToken[] ids = _model.Tokenize(text, addBos, special: false, Encoding.UTF8);
            return Array.ConvertAll(ids, t => (int)t);
        }
    }

    /// <summary>The raw bytes llama.cpp renders for one token (no space stripping; control tokens give nothing).</summary>
    public byte[] TokenPiece(int id)
    {
        lock (NativeLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Span<byte> buffer = stackalloc byte[256];
            uint n = _model.TokenToSpan(id, buffer, lstrip: 0, special: false);
            if (n > buffer.Length)
            {
                buffer = new byte[n];
                n = _model.TokenToSpan(id, buffer, lstrip: 0, special: false);
            }
            return buffer[..(int)n].ToArray();
        }
    }

    /// <summary>
    /// Concatenates <see cref="TokenPiece"/> of <paramref name="ids"/> and decodes it as UTF-8, dropping the
    /// SentencePiece dummy-prefix space of the first piece when <paramref name="stripLeadingSpace"/>.
    /// </summary>
    public string Detokenize(ReadOnlySpan<int> ids, bool stripLeadingSpace = true)
    {
        var bytes = new List<byte>();
        foreach (int id in ids)
        {
            bytes.AddRange(TokenPiece(id));
        }
        string text = Encoding.UTF8.GetString([.. bytes]);
        return stripLeadingSpace && text.StartsWith(' ') ? text[1..] : text;
    }

    /// <summary>
    /// Quantizes <paramref name="inGguf"/> into <paramref name="outGguf"/> with llama.cpp's
    /// llama_model_quantize. <paramref name="type"/>: "q8_0", "q4_0", "q4_k_m" (also "q4_k_s", "q6_k",
    /// "f16", "f32"). Tensors whose rows do not divide into the type's blocks fall back to another type
    /// inside llama.cpp (see its log); the output tensor is left as llama.cpp chooses by default.
    /// <paramref name="allowRequantize"/> lets an already quantized file be converted (llama.cpp dequantizes
    /// each tensor to f32 first, so "f32" writes llama.cpp's own dequantization).
    /// </summary>
    public static void Quantize(string inGguf, string outGguf, string type, int threads = 1, bool allowRequantize = false)
    {
        LLamaFtype ftype = type.ToUpperInvariant() switch
        {
            "Q8_0" => LLamaFtype.MOSTLY_Q8_0,
            "Q4_0" => LLamaFtype.MOSTLY_Q4_0,
            "Q4_K_M" => LLamaFtype.MOSTLY_Q4_K_M,
            "Q4_K_S" => LLamaFtype.MOSTLY_Q4_K_S,
            "Q6_K" => LLamaFtype.MOSTLY_Q6_K,
            "F16" => LLamaFtype.MOSTLY_F16,
            "F32" => LLamaFtype.ALL_F32,
            _ => throw new ArgumentException($"quantization type '{type}' is not supported; expected q8_0, q4_0, q4_k_m, q4_k_s, q6_k, f16 or f32", nameof(type)),
        };
        if (!File.Exists(inGguf))
        {
            throw new FileNotFoundException($"GGUF file '{inGguf}' does not exist", inGguf);
        }
        lock (NativeLock)
        {
            EnsureLoaded();
            ClearLog();
            var p = LLamaModelQuantizeParams.Default();
            p.ftype = ftype;
            p.nthread = threads;
            p.allow_requantize = allowRequantize;
            uint rc = NativeApi.llama_model_quantize(inGguf, outGguf, ref p);
            if (rc != 0)
            {
                throw new InvalidOperationException($"llama_model_quantize('{inGguf}' -> '{outGguf}', {type}) returned {rc}\n{RecentLog()}");
            }
        }
    }

    /// <summary>The last lines llama.cpp logged (for failure messages and diagnostics).</summary>
    public static string RecentLog(int lines = 40)
    {
        lock (s_log)
        {
            return string.Join("", s_log.Skip(Math.Max(0, s_log.Count - lines)));
        }
    }

    private static void ClearLog()
    {
        lock (s_log)
        {
            s_log.Clear();
        }
    }

    /// <summary>Argmax with ties to the lowest id.</summary>
    public static int ArgMax(ReadOnlySpan<float> row)
    {
        int best = 0;
        for (int i = 1; i < row.Length; i++)
        {
            if (row[i] > row[best])
            {
                best = i;
            }
        }
        return best;
    }

    public void Dispose()
    {
        lock (NativeLock)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            _context.Dispose();
            _model.Dispose();
        }
    }

    private void Decode(ReadOnlySpan<int> tokens, int startPos, bool allLogits)
    {
        var batch = new LLamaBatch();
        for (int i = 0; i < tokens.Length; i++)
        {
            batch.Add(tokens[i], startPos + i, (LLamaSeqId)0, allLogits || i == tokens.Length - 1);
        }
        DecodeResult r = _context.Decode(batch);
        if (r != DecodeResult.Ok)
        {
            throw new InvalidOperationException($"llama_decode of {tokens.Length} tokens at position {startPos} ('{_path}') returned {r}\n{RecentLog()}");
        }
    }

    /// <summary>
    /// Routes llama.cpp's log into <see cref="s_log"/> (quiet test output) and loads the native library.
    /// LLamaSharp picks its AVX-512 build on this machine; <c>llama_empty_call</c> must run before any
    /// other native entry point (the quantizer especially), or the "llama" library is not found.
    /// </summary>
    private static void EnsureLoaded()
    {
        if (s_loaded)
        {
            return;
        }
        if (!NativeLibraryConfig.LLama.LibraryHasLoaded)
        {
            NativeLibraryConfig.All.WithLogCallback(static (level, message) =>
            {
                lock (s_log)
                {
                    if (s_log.Count > 2000)
                    {
                        s_log.RemoveRange(0, 1000);
                    }
                    s_log.Add(message);
                }
            });
        }
        NativeApi.llama_empty_call();
        s_loaded = true;
    }
}

/// <summary>xunit collection for every test class that uses llama.cpp: they must not run in parallel.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class LlamaCppCollection
{
    public const string Name = "llama.cpp";
}
