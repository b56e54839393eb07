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
/// Mistral's v1 instruct text format (the fallback until the chat-format renderer is wired in):
/// <c>&lt;s&gt;[INST] {system}\n\n{user} [/INST] {assistant}&lt;/s&gt;[INST] {user} [/INST]</c>. The system
/// prompt joins the first user message; turns must alternate user/assistant and end with a user turn.
/// BOS and EOS are token ids; the rest is encoded as text.
/// </summary>
public sealed class MistralV1ChatRenderer : IChatPromptRenderer
{
    public TokenId[] Render(IReadOnlyList<ChatTurn> turns, ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(turns);
        ArgumentNullException.ThrowIfNull(tokenizer);
        var system = string.Join("\n\n", turns.Where(t => t.Role == "system").Select(t => t.Content));
        var rest = turns.Where(t => t.Role != "system").ToList();
        if (rest.Count == 0 || rest[^1].Role != "user")
        {
            throw new ArgumentException("messages must end with a user message");
        }
        var tokens = new List<TokenId> { tokenizer.Bos };
        for (int i = 0; i < rest.Count; i++)
        {
            string expected = i % 2 == 0 ? "user" : "assistant";
            if (rest[i].Role != expected)
            {
                throw new ArgumentException($"messages[{i}] has role '{rest[i].Role}'; after an optional system message, roles must alternate user/assistant starting with user");
            }
            if (expected == "user")
            {
                string content = i == 0 && system.Length > 0 ? system + "\n\n" + rest[i].Content : rest[i].Content;
                tokens.AddRange(tokenizer.Encode($"[INST] {content} [/INST]", addBos: false));
            }
            else
            {
                tokens.AddRange(tokenizer.Encode(" " + rest[i].Content, addBos: false));
                tokens.Add(tokenizer.Eos);
            }
        }
        return [.. tokens];
    }
}
