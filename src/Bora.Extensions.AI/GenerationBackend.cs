using System.Threading.Channels;
using Bora.Generation;
using Bora.Serving;
using Bora.Tokenizers;

namespace Bora.Extensions.AI;

/// <summary>
/// One running generation as <see cref="BoraChatClient"/> consumes it: the same three parts as a
/// <see cref="GenerationHandle"/> (admission, streamed deltas, summary).
/// </summary>
internal sealed record BackendRun(Task Admitted, ChannelReader<GenerationDelta> Deltas, Task<GenerationSummary> Completion);

/// <summary>
/// What <see cref="BoraChatClient"/> needs from an engine. <see cref="EngineBackend"/> is the real one; tests
/// substitute a scripted one to drive paths a random-weight model never takes (tool calls).
/// </summary>
internal interface IGenerationBackend
{
    ITokenizer Tokenizer { get; }

    /// <summary>Most positions of one sequence (prompt + completion).</summary>
    int ContextLength { get; }

    /// <summary>Starts generating (with a constraint when <paramref name="extras"/> gives one); cancelling <paramref name="cancellationToken"/> frees the sequence.</summary>
    BackendRun Start(TokenId[] prompt, SamplingOptions sampling, SubmitOptions? extras, CancellationToken cancellationToken);
}

/// <summary>An <see cref="InferenceEngine"/> as a backend.</summary>
internal sealed class EngineBackend(InferenceEngine engine) : IGenerationBackend
{
    public InferenceEngine Engine { get; } = engine;

    public ITokenizer Tokenizer => Engine.Tokenizer;

    public int ContextLength => Engine.ContextLength;

    public BackendRun Start(TokenId[] prompt, SamplingOptions sampling, SubmitOptions? extras, CancellationToken cancellationToken)
    {
        var handle = Engine.Submit(prompt, sampling, extras, cancellationToken);
        return new BackendRun(handle.Admitted, handle.Deltas, handle.Completion);
    }
}
