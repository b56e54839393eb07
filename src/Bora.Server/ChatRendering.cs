using Bora.Chat;
using Bora.Tokenizers;

namespace Bora.Server;

/// <summary>Turns a chat into prompt tokens; the server uses whichever renderer suits the model.</summary>
public interface IChatPromptRenderer
{
    /// <summary>
    /// Prompt tokens for the model to continue with the assistant's answer (messages, tools, a final
    /// prefix message). Throws <see cref="ArgumentException"/> for a chat it cannot render.
    /// </summary>
    TokenId[] Render(ChatRequest request, ITokenizer tokenizer);
}

/// <summary>
/// Renders a chat exactly as mistral-common does for the model's tokenizer version (v1 <c>[INST]</c> text,
/// v2/v3 control tokens, v7 <c>[SYSTEM_PROMPT]</c>, tools and tool results; see <see cref="ChatRenderer"/>),
/// validating it as mistral-common's serving mode does. The version is given, or read from the control
/// tokens of the tokenizer's vocabulary.
/// </summary>
public sealed class MistralChatRenderer(TokenizerVersion? version = null) : IChatPromptRenderer
{
    private readonly Lock _gate = new();
    private ChatRenderer? _renderer;

    /// <summary>The version given to the constructor (null = read from each tokenizer's vocabulary).</summary>
    public TokenizerVersion? Version => version;

    /// <summary>The <see cref="ChatRenderer"/> this renderer uses for <paramref name="tokenizer"/> (cached).</summary>
    public ChatRenderer For(ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        lock (_gate)
        {
            if (_renderer is null || !ReferenceEquals(_renderer.Tokenizer, tokenizer))
            {
                _renderer = new ChatRenderer(tokenizer, version ?? TokenizerVersions.FromVocabulary(tokenizer));
            }
            return _renderer;
        }
    }

    public TokenId[] Render(ChatRequest request, ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(request);
        try
        {
            return For(tokenizer).Render(request, ValidationMode.Serving).Tokens;
        }
        catch (ChatRequestException e)
        {
            throw new ArgumentException(e.Message, e);
        }
    }
}
