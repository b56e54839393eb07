using Bora.Chat;
using Bora.Generation;
using Bora.Loading;
using Bora.Server;
using Bora.Tokenizers;
using ChatMessage = Bora.Chat.ChatMessage;

namespace Bora.Clients.Tests;

/// <summary>What Bora's single-sequence <see cref="Generator"/> (no server, no batching, no paged cache) says for a chat.</summary>
internal static class Reference
{
    /// <summary>The prompt tokens of a chat, rendered as the server renders it.</summary>
    public static TokenId[] Prompt(LoadedModel model, params (string Role, string Content)[] turns) =>
        new MistralChatRenderer(model.ChatVersion).Render(new ChatRequest { Messages = [.. turns.Select(Message)] }, model.Tokenizer);

    private static ChatMessage Message((string Role, string Content) turn) => turn.Role switch
    {
        "system" => ChatMessage.System(turn.Content),
        "user" => ChatMessage.User(turn.Content),
        "assistant" => ChatMessage.Assistant(turn.Content),
        _ => throw new ArgumentException($"role '{turn.Role}' is not system, user or assistant", nameof(turn)),
    };

    /// <summary>The generated text and token count for a prompt (temperature 0 = greedy; top-k, top-p and min-p off, as the server sets them).</summary>
    public static (string Text, int Tokens, FinishReason Finish) Generate(LoadedModel model, TokenId[] prompt, int maxTokens, float temperature = 0, ulong seed = 0)
    {
        var gen = new Generator(model.Model, model.Tokenizer);
        var r = gen.Generate(prompt, new SamplingOptions { Temperature = temperature, TopK = 0, TopP = 1, MinP = 0, Seed = seed, MaxTokens = maxTokens });
        return (r.Text, r.Tokens.Count, r.FinishReason);
    }

    public static (string Text, int Tokens, FinishReason Finish) Chat(LoadedModel model, int maxTokens, params (string Role, string Content)[] turns) =>
        Generate(model, Prompt(model, turns), maxTokens);
}
