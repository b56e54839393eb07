namespace Bora.Bench;

/// <summary>
/// Bora's benchmarks. Verbs:
/// <list type="bullet">
/// <item><c>model</c> — prefill / decode tokens per second of a GGUF, optionally side by side with llama.cpp
/// (<see cref="ModelBench"/>); <c>bora bench</c> in the CLI is the same measurement without llama.cpp.</item>
/// <item><c>serve</c> — N concurrent streaming clients against Bora served in process, optionally beside llama.cpp's
/// batched decode (<see cref="ServeBench"/>); <c>bora bench serve</c> in the CLI is the same without llama.cpp.</item>
/// <item><c>synthesize</c> — write a random-weight GGUF of a named shape (<see cref="SyntheticModels"/>).</item>
/// <item><c>attention</c> — tiled against per-query attention on Mistral 7B's attention shape (<see cref="AttentionBench"/>).</item>
/// <item><c>stream</c> — decode products against the machine's read bandwidth over the same bytes (<see cref="StreamBench"/>).</item>
/// <item><c>matmul</c> (also the default when the first argument is an option) — the matrix micro-benchmark (<see cref="MatMulBench"/>).</item>
/// </list>
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        try
        {
            switch (args.FirstOrDefault())
            {
                case "model":
                    return ModelBench.Run(args[1..]);
                case "serve":
                    return ServeBench.Run(args[1..]);
                case "engine":
                    return EngineBench.Run(args[1..]);
                case "synthesize":
                    return SyntheticModels.Run(args[1..]);
                case "attention":
                    return AttentionBench.Run(args[1..]);
                case "stream":
                    return StreamBench.Run(args[1..]);
                case "matmul":
                    MatMulBench.Run(args[1..]);
                    return 0;
                case null:
                case var a when a.StartsWith("--", StringComparison.Ordinal):
                    MatMulBench.Run(args);
                    return 0;
                default:
                    Console.Error.WriteLine($"unknown verb '{args[0]}'; expected model, serve, engine, synthesize, attention, stream or matmul");
                    return 2;
            }
        }
        catch (Exception e) when (e is ArgumentException or IOException or InvalidOperationException or Formats.ModelFormatException)
        {
            Console.Error.WriteLine($"bora-bench: {e.Message}");
            return 1;
        }
    }
}
