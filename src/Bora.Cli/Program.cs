using Bora.Formats;

namespace Bora.Cli;

/// <summary>The <c>bora</c> command: dispatches to one command class per verb.</summary>
public static class Program
{
    private static readonly string Usage = $"""
        bora — Mistral-family language models on your own machine

        Commands:
          generate [--model PATH] --prompt TEXT [--max-tokens N] [--temperature T] [--top-k K] [--top-p P]
                   [--min-p P] [--repeat-penalty R] [--seed S] [--stop TEXT] [--context N] [--kv-type f16|f32] [--json]
                   [--chat [--system TEXT]]   (the prompt as a user message in the model's chat format)
                   [--lora ADAPTER_DIR]       (a PEFT LoRA adapter applied at run time)
          tokenize --model PATH --text TEXT [--no-bos] [--json]
          chat-render --model PATH --request REQUEST.json [--version v1|v2|v3|v7] [--json]
          inspect PATH [--json]
          chat [--model PATH] [--system TEXT] [generation options]
          serve [--model PATH] [--host 127.0.0.1] [--port 8080] [--api-key KEY] [--threads N] [--context N] [--kv-cache-mib N]
                [--kv-type f16|f32] [--max-batch-tokens N] [--max-running N] [--max-queue N] [--max-body-bytes N] [--max-tokens-limit N] [--max-n N]
                [--no-warmup]
          {TrainCommand.Usage}
          {TokenizerCommand.Usage}
          {FinetuneCommand.Usage}
          {MergeLoraCommand.Usage}
          quantize IN OUT --type q8_0|q4_0|q4_k|q4_k_m [--threads N] [--eval-file TEXT [--ctx N] [--chunks N]] [--quiet]
          perplexity --model PATH --file TEXT [--ctx N] [--batch N] [--chunks N] [--threads N] [--kv-type f16|f32]
                     [--kl-reference PATH | --save-base FILE | --kl-base FILE]
          bench --model PATH [--threads N] [--prompt-tokens 512] [--gen-tokens 128] [--repeats 3] [--kv-type f16|f32] [--json]
          bench serve [--model PATH | --url URL [--api-key KEY] [--model-id ID]] [--clients 1,4,16,64]
                      [--prompt-tokens 128] [--gen-tokens 64] [--threads N] [--kv-cache-mib N] [--kv-type f16|f32] [--json]

        PATH is a .gguf file, a Hugging Face or Mistral model folder, or a repo id in the local Hugging Face cache.
        Without --model, generate, chat and serve use the embedded default model bora-kjv (a small Mixtral that
        Bora trained on the King James Bible; it continues text in King James English).
        --kv-type: element type of the KV cache, f16 (default, as llama.cpp: half the memory, twice the positions per
        --kv-cache-mib) or f32.
        """;

    public static int Main(string[] args) => Run(args, Console.Out, Console.Error, Console.In);

    /// <summary>Runs one command with the given streams; returns the process exit code.</summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr, TextReader stdin)
    {
        if (args.Length == 0 || args[0] is "help" or "--help" or "-h")
        {
            (args.Length == 0 ? stderr : stdout).WriteLine(Usage);
            return args.Length == 0 ? 2 : 0;
        }
        var rest = args.Skip(1).ToArray();
        try
        {
            return args[0] switch
            {
                "generate" => GenerateCommand.Run(rest, stdout, stderr),
                "tokenize" => TokenizeCommand.Run(rest, stdout),
                "chat-render" => ChatRenderCommand.Run(rest, stdout),
                "inspect" => InspectCommand.Run(rest, stdout),
                "chat" => ChatCommand.Run(rest, stdout, stderr, stdin),
                "serve" => ServeCommand.Run(rest, stdout, stderr),
                "train" => TrainCommand.Run(rest, stdout, stderr),
                "tokenizer" => TokenizerCommand.Run(rest, stdout),
                "finetune" => FinetuneCommand.Run(rest, stdout, stderr),
                "merge-lora" => MergeLoraCommand.Run(rest, stdout),
                "quantize" => QuantizeCommand.Run(rest, stdout, stderr),
                "perplexity" => PerplexityCommand.Run(rest, stdout, stderr),
                "bench" => BenchCommand.Run(rest, stdout, stderr),
                _ => throw new UsageException($"unknown command '{args[0]}'. Run 'bora help' for the list of commands."),
            };
        }
        catch (UsageException e)
        {
            stderr.WriteLine($"bora: {e.Message}");
            return 2;
        }
        catch (Exception e) when (e is ModelFormatException or FileNotFoundException or DirectoryNotFoundException
                                  or Bora.Chat.ChatRequestException or ArgumentException or InvalidOperationException or IOException or UnauthorizedAccessException)
        {
            stderr.WriteLine($"bora: {e.Message}");
            return 1;
        }
    }
}
