using System.Globalization;
using System.Text.Json;
using Bora.Generation;
using Bora.Loading;

namespace Bora.Cli;

/// <summary><c>bora generate [--model PATH] --prompt TEXT [options] [--json]</c>; without --model, the embedded <see cref="DefaultModel"/>.</summary>
internal static class GenerateCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("generate", args, [.. GenerationArgs.ValueOptions, "prompt", "system", "lora"], ["json", "chat"]);
        var sampling = GenerationArgs.Sampling(a);
        var prompt = a.Get("prompt") ?? "";
        var loaded = ModelLoader.Load(DefaultModel.Resolve(a, stderr), kvType: a.GetKvType());
        loaded = Training.Lora.LoraLoading.WithLora(loaded, a.Get("lora")); // --lora DIR: a PEFT adapter applied at run time
        var generator = new Generator(loaded.Model, loaded.Tokenizer, GenerationArgs.Context(a, loaded.Config));
        // --chat: the prompt is one user message in the model's chat format; otherwise raw text after BOS.
        var promptTokens = a.Flag("chat")
            ? loaded.CreateChatRenderer().Render(new Chat.ChatRequest
            {
                Messages = a.Get("system") is { } system
                    ? [Chat.ChatMessage.System(system), Chat.ChatMessage.User(prompt)]
                    : [Chat.ChatMessage.User(prompt)],
            }).Tokens
            : loaded.Tokenizer.Encode(prompt, addBos: true);

        using var cancel = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            cancel.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        try
        {
            var stream = generator.Stream(promptTokens, sampling, cancel.Token);
            bool json = a.Flag("json");
            if (!json && !a.Flag("chat"))
            {
                stdout.Write(prompt); // the continuation reads on from the prompt, as llama.cpp prints it
            }
            try
            {
                foreach (var token in stream)
                {
                    if (!json)
                    {
                        stdout.Write(token.Text);
                        stdout.Flush();
                    }
                }
            }
            catch (OperationCanceledException)
            {
                stderr.WriteLine();
                stderr.WriteLine("bora: interrupted");
            }
            if (json)
            {
                stdout.WriteLine(JsonSerializer.Serialize(new
                {
                    prompt_tokens = promptTokens.Select(t => t.Value).ToArray(),
                    tokens = stream.Tokens.Select(t => t.Value).ToArray(),
                    text = stream.Text,
                }));
            }
            else
            {
                stdout.WriteLine();
                if (stream.Stats is { } s)
                {
                    stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"[{s.PromptTokens} prompt tokens, {s.GeneratedTokens} generated, finish: {stream.FinishReason}; prefill {s.PrefillTokensPerSecond:F1} tok/s, decode {s.DecodeTokensPerSecond:F1} tok/s; seed {stream.Seed}]"));
                }
            }
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
        return 0;
    }
}
