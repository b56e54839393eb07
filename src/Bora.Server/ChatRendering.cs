using Bora.Chat;
using Bora.Tokenizers;

namespace Bora.Server;

/// <summary>One chat turn after validation: role (system, user or assistant) and its text.</summary>
public readonly record struct ChatTurn(string Role, string Content);

/// <summary>Turns a chat into prompt tokens; the server uses whichever renderer suits the model.</summary>
public interface IChatPromptRenderer
{
    /// <summary>Prompt tokens for the model to continue with the assistant's answer. Throws <see cref="ArgumentException"/> for a chat it cannot render.</summary>
    TokenId[] Render(IReadOnlyList<ChatTurn> turns, ITokenizer tokenizer);
}

/// <summary>
/// Renders a chat exactly as mistral-common does for the model's tokenizer version (v1 <c>[INST]</c> text,
/// v2/v3 control tokens, v7 <c>[SYSTEM_PROMPT]</c>; see <see cref="ChatRenderer"/>), validating it as
/// mistral-common's serving mode does. The version is given, or read from the control tokens of the
/// tokenizer's vocabulary.
/// </summary>
public sealed class MistralChatRenderer(TokenizerVersion? version = null) : IChatPromptRenderer
{
    private readonly Lock _gate = new();
    private ChatRenderer? _renderer;

    public TokenId[] Render(IReadOnlyList<ChatTurn> turns, ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(turns);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ChatRenderer renderer;
        lock (_gate)
        {
            if (_renderer is null || !ReferenceEquals(_renderer.Tokenizer, tokenizer))
            {
                _renderer = new ChatRenderer(tokenizer, version ?? TokenizerVersions.FromVocabulary(tokenizer));
            }
            renderer = _renderer;
        }
        var messages = new List<Bora.Chat.ChatMessage>(turns.Count);
        foreach (var turn in turns)
        {
            messages.Add(turn.Role switch
            {
                "system" => Bora.Chat.ChatMessage.System(turn.Content),
                "user" => Bora.Chat.ChatMessage.User(turn.Content),
                "assistant" => Bora.Chat.ChatMessage.Assistant(turn.Content),
                _ => throw new ArgumentException($"role '{turn.Role}' is not one of system, user, assistant"),
            });
        }
        try
        {
            return renderer.Render(new ChatRequest { Messages = messages }, ValidationMode.Serving).Tokens;
        }
        catch (ChatRequestException e)
        {
            throw new ArgumentException(e.Message, e);
        }
    }
}
