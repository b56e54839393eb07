using Bora.Model;
using Bora.Tokenizers;

namespace Bora.Evaluation;

/// <summary>Chunking of a perplexity run: context N (tokens per chunk), tokens per forward call, and a cap on chunks.</summary>
/// <param name="Context">n_ctx: tokens per chunk (at least 4).</param>
/// <param name="Batch">Tokens per forward call (a chunk of more tokens is run in several calls).</param>
/// <param name="MaxChunks">Evaluate at most this many chunks (null: all).</param>
public sealed record PerplexityOptions(int Context = 512, int Batch = 512, int? MaxChunks = null);

/// <summary>Running totals after one chunk.</summary>
public readonly record struct PerplexityChunk(int Chunk, int Chunks, double Perplexity, double StdError);

/// <summary>The final estimate.</summary>
public sealed record PerplexityResult(double Perplexity, double StdError, int Chunks, long ScoredTokens, int Context);

/// <summary>
/// Perplexity of a causal LM on a token stream, computed as llama.cpp's llama-perplexity does (its default mode,
/// tools/perplexity/perplexity.cpp): the whole text is tokenized once with BOS in front; it is cut into
/// n_chunk = floor(tokens / N) non-overlapping chunks of N = n_ctx tokens (the tail is dropped; at least 2N tokens
/// are required); each chunk runs from an empty cache at positions 0..N-1 with its first token replaced by BOS; and
/// only the second half is scored: with first = N / 2, the logits of positions first .. N-2 score the tokens at
/// first+1 .. N-1, i.e. N - 1 - first tokens per chunk.
/// <para>
/// Worked example, N = 8, tokens t0..t19 (t0 = BOS from tokenization): 2 chunks, (BOS t1 .. t7) and (BOS t9 .. t15);
/// first = 4; chunk 0 scores t5, t6, t7 from the logits at positions 4, 5, 6; chunk 1 scores t13, t14, t15;
/// t16..t19 are not used.
/// </para>
/// </summary>
public static class PerplexityEvaluator
{
    /// <summary>Chunks evaluated for <paramref name="tokenCount"/> tokens.</summary>
    /// <exception cref="ArgumentException">Fewer than 2N tokens (llama.cpp's requirement), or a context below 4.</exception>
    public static int ChunkCount(int tokenCount, PerplexityOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Context < 4)
        {
            throw new ArgumentException($"context {options.Context} is too small; expected at least 4 tokens per chunk");
        }
        if (options.Batch < 1)
        {
            throw new ArgumentException($"batch {options.Batch} must be at least 1");
        }
        if (tokenCount < 2 * options.Context)
        {
            throw new ArgumentException($"the text tokenizes to {tokenCount} tokens; a context of {options.Context} needs at least {2 * options.Context} (two chunks)");
        }
        int n = tokenCount / options.Context;
        return options.MaxChunks is { } max ? Math.Min(n, Math.Max(1, max)) : n;
    }

    /// <summary>First scored logits row of a chunk: N / 2.</summary>
    public static int FirstScored(int context) => context / 2;

    /// <summary>Scored tokens per chunk: N - 1 - N / 2.</summary>
    public static int ScoredPerChunk(int context) => context - 1 - context / 2;

    /// <summary>Chunk <paramref name="chunk"/>'s N tokens with the first replaced by <paramref name="bos"/>.</summary>
    public static TokenId[] ChunkTokens(ReadOnlySpan<TokenId> tokens, int chunk, int context, TokenId bos)
    {
        var result = tokens.Slice(chunk * context, context).ToArray();
        result[0] = bos;
        return result;
    }

    /// <summary>
    /// Runs one chunk (N tokens from an empty cache, <paramref name="batch"/> tokens per call) and returns the logits of
    /// the scored rows: (N - 1 - N/2, V), row i from position N/2 + i.
    /// </summary>
    public static float[] ScoredLogits(ICausalLM model, ReadOnlySpan<TokenId> chunkTokens, int batch)
    {
        ArgumentNullException.ThrowIfNull(model);
        int n = chunkTokens.Length, v = model.Config.VocabSize, first = FirstScored(n), scored = ScoredPerChunk(n);
        var cache = model.CreateCache(n);
        var result = new float[(long)scored * v];      // (S, V)
        var logits = new float[(long)Math.Min(batch, n) * v]; // (B, V)
        for (int start = 0; start < n; start += batch)
        {
            int b = Math.Min(batch, n - start);
            model.Forward(chunkTokens.Slice(start, b), cache, logits.AsSpan(0, b * v));
            for (int i = 0; i < b; i++)
            {
                int pos = start + i;
                if (pos >= first && pos - first < scored)
                {
                    logits.AsSpan(i * v, v).CopyTo(result.AsSpan((pos - first) * v, v));
                }
            }
        }
        return result;
    }

    /// <summary>
    /// Perplexity of <paramref name="model"/> on <paramref name="tokens"/> (BOS first, as tokenized with BOS).
    /// <paramref name="onChunk"/> gets the running estimate after each chunk; <paramref name="saveBase"/>, when
    /// given, receives each chunk's log-probabilities (llama.cpp's --kl-divergence-base file).
    /// </summary>
    public static PerplexityResult Evaluate(ICausalLM model, ReadOnlySpan<TokenId> tokens, TokenId bos, PerplexityOptions options,
        Action<PerplexityChunk>? onChunk = null, LogitsFileWriter? saveBase = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        int chunks = ChunkCount(tokens.Length, options);
        int n = options.Context, v = model.Config.VocabSize, first = FirstScored(n), scored = ScoredPerChunk(n);
        saveBase?.Begin(n, v, tokens[..(chunks * n)]);
        var acc = new NllAccumulator();
        for (int c = 0; c < chunks; c++)
        {
            var chunk = ChunkTokens(tokens, c, n, bos);
            var logits = ScoredLogits(model, chunk, options.Batch);
            for (int i = 0; i < scored; i++)
            {
                acc.Add(logits.AsSpan(i * v, v), chunk[first + i + 1].Value);
            }
            saveBase?.AddChunk(logits, scored);
            onChunk?.Invoke(new PerplexityChunk(c + 1, chunks, acc.Perplexity, acc.StdError));
        }
        saveBase?.Finish();
        return new PerplexityResult(acc.Perplexity, acc.StdError, chunks, acc.Count, n);
    }

    /// <summary>
    /// KL-divergence of <paramref name="model"/> from a base distribution over the same chunks: for each scored
    /// position, KL(base || model) = Σ p_base (log p_base - log p_model), and the perplexities of both.
    /// <paramref name="baseLogProbs"/> returns, for a chunk index and its tokens, the base model's (N - 1 - N/2, V)
    /// log-probabilities.
    /// </summary>
    public static KlDivergenceResult EvaluateKl(ICausalLM model, ReadOnlySpan<TokenId> tokens, TokenId bos, PerplexityOptions options,
        Func<int, TokenId[], float[]> baseLogProbs, Action<KlDivergenceResult>? onChunk = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(baseLogProbs);
        int chunks = ChunkCount(tokens.Length, options);
        int n = options.Context, v = model.Config.VocabSize, first = FirstScored(n), scored = ScoredPerChunk(n);
        var acc = new KlDivergenceAccumulator();
        for (int c = 0; c < chunks; c++)
        {
            var chunk = ChunkTokens(tokens, c, n, bos);
            var logits = ScoredLogits(model, chunk, options.Batch);
            var reference = baseLogProbs(c, chunk);
            if (reference.LongLength != (long)scored * v)
            {
                throw new ArgumentException($"chunk {c}: the base gave {reference.LongLength} log-probabilities; expected {scored} x {v}");
            }
            for (int i = 0; i < scored; i++)
            {
                acc.Add(logits.AsSpan(i * v, v), reference.AsSpan(i * v, v), chunk[first + i + 1].Value);
            }
            onChunk?.Invoke(acc.Result(c + 1, chunks));
        }
        return acc.Result(chunks, chunks);
    }

    /// <summary>A base for <see cref="EvaluateKl"/> from a reference model run on the same chunks (exact float log-probabilities).</summary>
    public static Func<int, TokenId[], float[]> ReferenceModel(ICausalLM reference, int batch)
    {
        ArgumentNullException.ThrowIfNull(reference);
        return (_, chunk) =>
        {
            int v = reference.Config.VocabSize;
            var logits = ScoredLogits(reference, chunk, batch);
            for (long r = 0; r < logits.LongLength / v; r++)
            {
                var row = logits.AsSpan((int)(r * v), v);
                NllAccumulator.LogSoftmax(row, row);
            }
            return logits;
        };
    }
}
