using Bora.Generation;
using Bora.Loading;
using Bora.Tokenizers;

namespace Bora.Cli;

/// <summary>
/// <c>bora chat --model PATH [options]</c>: an interactive loop. Until the chat-format work lands,
/// turns are rendered in Mistral's v1 text format, <c>&lt;s&gt;[INST] user [/INST] answer&lt;/s&gt;</c>,
/// with the whole conversation kept as the prompt.
/// </summary>
internal static class ChatCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, TextReader stdin)
    {
        var a = new CliArguments("chat", args, GenerationArgs.ValueOptions, []);
        var sampling = GenerationArgs.Sampling(a);
        var loaded = ModelLoader.Load(a.Require("model"));
        var tokenizer = loaded.Tokenizer;
        var generator = new Generator(loaded.Model, tokenizer, GenerationArgs.Context(a, loaded.Config));
        var history = new List<TokenId> { tokenizer.Bos };
        stderr.WriteLine($"bora chat: {loaded.Source.Path}. Type a message; an empty line or end of input quits.");
        while (true)
        {
            stderr.Write("> ");
            var line = stdin.ReadLine();
            if (string.IsNullOrWhiteSpace(line))
            {
                return 0;
            }
            var turn = tokenizer.Encode($"[INST] {line.Trim()} [/INST]", addBos: false);
            var prompt = new List<TokenId>(history);
            prompt.AddRange(turn);
            if (prompt.Count >= generator.ContextLength)
            {
                stderr.WriteLine($"bora: the conversation ({prompt.Count} tokens) has filled the context of {generator.ContextLength}; start a new chat or raise --context");
                return 1;
            }
            var stream = generator.Stream(prompt, sampling);
            foreach (var token in stream)
            {
                stdout.Write(token.Text);
                stdout.Flush();
            }
            stdout.WriteLine();
            history = prompt;
            history.AddRange(stream.Tokens);
            if (stream.FinishReason != FinishReason.Eos)
            {
                history.Add(tokenizer.Eos);
            }
        }
    }
}
