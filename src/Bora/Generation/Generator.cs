using System.Collections;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Bora.Model;
using Bora.Tokenizers;

namespace Bora.Generation;

/// <summary>Why generation ended.</summary>
public enum FinishReason
{
    /// <summary>The model produced the tokenizer's EOS token.</summary>
    Eos,

    /// <summary><see cref="SamplingOptions.MaxTokens"/> tokens were generated.</summary>
    Length,

    /// <summary>The text reached one of <see cref="SamplingOptions.StopStrings"/>.</summary>
    Stop,

    /// <summary>The KV cache is full: the last token could not be run through the model.</summary>
    ContextFull,
}

/// <summary>
/// One generated token and the text that became safe to show with it: complete characters only,
/// never part of a possible stop string (that text is held back and may arrive with a later token, or
/// be dropped when the stop string completes). Empty when nothing new can be shown yet.
/// </summary>
public readonly record struct GeneratedToken(TokenId Id, string Text);

/// <summary>Timing of one generation. Prefill = the one batched forward of the prompt; decode = everything after it.</summary>
public sealed record GenerationStats(int PromptTokens, int GeneratedTokens, TimeSpan PrefillTime, TimeSpan DecodeTime)
{
    /// <summary>Prompt tokens per second of the prefill forward (0 when nothing was timed).</summary>
    public double PrefillTokensPerSecond => PrefillTime > TimeSpan.Zero ? PromptTokens / PrefillTime.TotalSeconds : 0;

    /// <summary>Generated tokens per second over the decode phase (sampling, single-token forwards, detokenization).</summary>
    public double DecodeTokensPerSecond => DecodeTime > TimeSpan.Zero ? GeneratedTokens / DecodeTime.TotalSeconds : 0;
}

/// <summary>A finished generation.</summary>
/// <param name="Tokens">Every sampled token, the final EOS included when <paramref name="FinishReason"/> is Eos.</param>
/// <param name="Text">The emitted text (stop string and what follows it excluded).</param>
/// <param name="FinishReason">Why it ended.</param>
/// <param name="Stats">Token counts and timing.</param>
/// <param name="Seed">The sampler seed used (reuse it to reproduce the run).</param>
public sealed record GenerationResult(IReadOnlyList<TokenId> Tokens, string Text, FinishReason FinishReason, GenerationStats Stats, ulong Seed);

/// <summary>
/// Autoregressive text generation over an <see cref="ICausalLM"/>: one batched prefill of the prompt,
/// then one token per forward call, sampled by <see cref="Sampler"/> and detokenized incrementally by
/// <see cref="StreamingDecoder"/>. The generator owns one KV cache (created on first use, cleared at
/// the start of every generation), so it runs one generation at a time.
/// </summary>
/// <example>
/// <code>
/// var generator = new Generator(model, tokenizer);
/// var stream = generator.Stream(tokenizer.Encode("Once upon a time", addBos: true), SamplingOptions.Greedy with { MaxTokens = 50 });
/// foreach (GeneratedToken t in stream) Console.Write(t.Text);
/// Console.WriteLine($" [{stream.FinishReason}, {stream.Stats!.DecodeTokensPerSecond:F1} tok/s]");
/// </code>
/// </example>
public sealed class Generator
{
    private readonly float[] _logits; // (V) next-token logits of the last position run
    private IKvCache? _cache;
    private int _busy;

    /// <param name="model">The language model.</param>
    /// <param name="tokenizer">Its tokenizer (BOS, EOS, token bytes).</param>
    /// <param name="contextLength">KV cache positions; 0 uses the model's <see cref="ModelConfig.MaxSeqLen"/>.</param>
    public Generator(ICausalLM model, ITokenizer tokenizer, int contextLength = 0)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentOutOfRangeException.ThrowIfNegative(contextLength);
        Model = model;
        Tokenizer = tokenizer;
        VocabSize = model.Config.VocabSize;
        ContextLength = contextLength == 0 ? model.Config.MaxSeqLen : contextLength;
        _logits = new float[VocabSize];
    }

    public ICausalLM Model { get; }

    public ITokenizer Tokenizer { get; }

    /// <summary>V: the model's vocabulary size (the sampler's logits row length).</summary>
    public int VocabSize { get; }

    /// <summary>Positions the KV cache holds (prompt plus generated tokens).</summary>
    public int ContextLength { get; }

    /// <summary>
    /// Prepares a generation; it runs as the result is enumerated (once). Arguments are checked now.
    /// An empty prompt means BOS alone.
    /// </summary>
    public GenerationStream Stream(IReadOnlyList<TokenId> prompt, SamplingOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        TokenId[] tokens = prompt.Count == 0 ? [Tokenizer.Bos] : [.. prompt];
        for (int i = 0; i < tokens.Length; i++)
        {
            if ((uint)tokens[i].Value >= (uint)VocabSize)
            {
                throw new ArgumentException($"prompt token {i} is {tokens[i].Value}; expected an id in [0, {VocabSize})", nameof(prompt));
            }
        }
        if (tokens.Length > ContextLength)
        {
            throw new ArgumentException($"prompt has {tokens.Length} tokens; the context holds only {ContextLength}", nameof(prompt));
        }
        return new GenerationStream(this, tokens, options, cancellationToken);
    }

    /// <summary>Runs a whole generation synchronously and returns its tokens, text, finish reason and timing.</summary>
    public GenerationResult Generate(IReadOnlyList<TokenId> prompt, SamplingOptions options, CancellationToken cancellationToken = default)
    {
        GenerationStream stream = Stream(prompt, options, cancellationToken);
        var tokens = new List<TokenId>();
        var text = new System.Text.StringBuilder();
        foreach (GeneratedToken t in stream)
        {
            tokens.Add(t.Id);
            text.Append(t.Text);
        }
        return new GenerationResult(tokens, text.ToString(), stream.FinishReason!.Value, stream.Stats!, stream.Seed);
    }

    internal IEnumerator<GeneratedToken> Run(GenerationStream s, TokenId[] prompt, SamplingOptions options, CancellationToken ct)
    {
        if (Interlocked.Exchange(ref _busy, 1) != 0)
        {
            throw new InvalidOperationException("this Generator is already running a generation; use one Generator per concurrent sequence");
        }
        try
        {
            ct.ThrowIfCancellationRequested();
            var sampler = new Sampler(VocabSize, options);
            s.Seed = sampler.Seed;
            var history = new List<TokenId>(prompt.Length + Math.Min(options.MaxTokens, ContextLength));
            history.AddRange(prompt);
            var decoder = new StreamingDecoder(Tokenizer, prompt[^1]);
            var stop = new StopStringFilter(options.StopStrings);
            var one = new TokenId[1];
            var clock = new Stopwatch();
            TimeSpan prefill = TimeSpan.Zero;
            int generated = 0;

            void Finish(FinishReason reason)
            {
                s.FinishReason = reason;
                s.Stats = new GenerationStats(prompt.Length, generated, prefill, clock.Elapsed - prefill);
            }

            // Text left when the stream ends: the held incomplete bytes (as U+FFFD) and held stop-string prefix.
            string Tail(ref FinishReason reason)
            {
                string t = stop.Append(decoder.Flush());
                if (stop.Stopped)
                {
                    reason = Generation.FinishReason.Stop;
                    return t;
                }
                return t + stop.Finish();
            }

            if (options.MaxTokens == 0)
            {
                Finish(Generation.FinishReason.Length);
                yield break;
            }

            clock.Start();
            IKvCache cache = _cache ??= Model.CreateCache(ContextLength);
            cache.Clear();
            Model.Forward(prompt, cache, _logits);
            prefill = clock.Elapsed;

            while (true)
            {
                ct.ThrowIfCancellationRequested();
                TokenId next = sampler.Sample(_logits, CollectionsMarshal.AsSpan(history), prompt.Length);
                history.Add(next);
                generated++;
                s.AddToken(next);

                FinishReason? reason = null;
                string text;
                if (next == Tokenizer.Eos)
                {
                    FinishReason r = Generation.FinishReason.Eos;
                    text = Tail(ref r);
                    reason = r;
                }
                else
                {
                    text = stop.Append(decoder.Push(next));
                    if (!stop.Stopped && Tokenizer.IsControl(next))
                    {
                        text += stop.Finish(); // a control token ends the text run (as the engine does)
                    }
                    if (stop.Stopped)
                    {
                        reason = Generation.FinishReason.Stop;
                    }
                    else if (generated >= options.MaxTokens || cache.Length >= cache.MaxLength)
                    {
                        FinishReason r = generated >= options.MaxTokens ? Generation.FinishReason.Length : Generation.FinishReason.ContextFull;
                        text += Tail(ref r);
                        reason = r;
                    }
                }

                s.AppendText(text);
                if (reason is { } done)
                {
                    clock.Stop();
                    Finish(done);
                    yield return new GeneratedToken(next, text);
                    yield break;
                }
                clock.Stop();
                yield return new GeneratedToken(next, text);
                clock.Start();

                ct.ThrowIfCancellationRequested();
                one[0] = next;
                Model.Forward(one, cache, _logits);
            }
        }
        finally
        {
            Volatile.Write(ref _busy, 0);
        }
    }
}

/// <summary>
/// A generation that runs as it is enumerated (once). After enumeration ends normally,
/// <see cref="FinishReason"/> and <see cref="Stats"/> are set; <see cref="Tokens"/> and <see cref="Text"/>
/// grow as it goes. Cancellation throws <see cref="OperationCanceledException"/> between tokens.
/// </summary>
public sealed class GenerationStream : IEnumerable<GeneratedToken>
{
    private readonly Generator _generator;
    private readonly TokenId[] _prompt;
    private readonly SamplingOptions _options;
    private readonly CancellationToken _ct;
    private readonly List<TokenId> _tokens = [];
    private readonly System.Text.StringBuilder _text = new();
    private bool _started;

    internal GenerationStream(Generator generator, TokenId[] prompt, SamplingOptions options, CancellationToken ct)
    {
        _generator = generator;
        _prompt = prompt;
        _options = options;
        _ct = ct;
    }

    /// <summary>The prompt actually run (BOS alone when the given prompt was empty).</summary>
    public IReadOnlyList<TokenId> Prompt => _prompt;

    /// <summary>Why it ended; null until it has.</summary>
    public FinishReason? FinishReason { get; internal set; }

    /// <summary>Timing; null until it has ended.</summary>
    public GenerationStats? Stats { get; internal set; }

    /// <summary>The sampler seed (known once enumeration has started).</summary>
    public ulong Seed { get; internal set; }

    /// <summary>Tokens sampled so far (EOS included when it ended the generation).</summary>
    public IReadOnlyList<TokenId> Tokens => _tokens;

    /// <summary>Text emitted so far.</summary>
    public string Text => _text.ToString();

    internal void AddToken(TokenId id) => _tokens.Add(id);

    internal void AppendText(string text) => _text.Append(text);

    public IEnumerator<GeneratedToken> GetEnumerator()
    {
        if (_started)
        {
            throw new InvalidOperationException("a GenerationStream can be enumerated only once; call Generator.Stream again");
        }
        _started = true;
        return _generator.Run(this, _prompt, _options, _ct);
    }

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}
