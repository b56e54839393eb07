using Bora.Chat;
using Bora.Generation;
using Bora.Loading;

namespace Bora.Cli;

/// <summary>
/// <c>bora chat [--model PATH] [--system TEXT] [options]</c>: an interactive conversation (without --model,
/// with the embedded <see cref="DefaultModel"/>). Every turn, the
/// whole conversation is rendered in the model's own chat format (its tokenizer version decides: v1 text
/// <c>[INST]</c>, v2/v3 control tokens, v7 <c>[SYSTEM_PROMPT]</c>) exactly as mistral-common renders it,
/// and the answer is generated until EOS.
/// </summary>
internal static class ChatCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, TextReader stdin)
    {
        var a = new CliArguments("chat", args, [.. GenerationArgs.ValueOptions, "system"], []);
        var sampling = GenerationArgs.Sampling(a);
        var loaded = ModelLoader.Load(DefaultModel.Resolve(a, stderr), kvType: a.GetKvType());
        var renderer = loaded.CreateChatRenderer();
        var generator = new Generator(loaded.Model, loaded.Tokenizer, GenerationArgs.Context(a, loaded.Config));
        var messages = new List<ChatMessage>();
        if (a.Get("system") is { } system)
        {
            messages.Add(ChatMessage.System(system));
        }
        stderr.WriteLine($"bora chat: {loaded.Source.Path} (chat format {renderer.Version}). Type a message; an empty line or end of input quits.");
        while (true)
        {
            stderr.Write("> ");
            var line = stdin.ReadLine();
            if (string.IsNullOrWhiteSpace(line))
            {
                return 0;
            }
            messages.Add(ChatMessage.User(line.Trim()));
            var prompt = renderer.Render(new ChatRequest { Messages = messages }).Tokens;
            if (prompt.Length >= generator.ContextLength)
            {
                stderr.WriteLine($"bora: the conversation ({prompt.Length} tokens) has filled the context of {generator.ContextLength}; start a new chat or raise --context");
                return 1;
            }
            var stream = generator.Stream(prompt, sampling);
            foreach (var token in stream)
            {
                stdout.Write(token.Text);
                stdout.Flush();
            }
            stdout.WriteLine();
            messages.Add(ChatMessage.Assistant(stream.Text.Trim()));
        }
    }
}
