using Bora.Numerics;

namespace Bora.Quantization;

/// <summary>
/// What <c>bora quantize --type</c> asks for: one block type for every matrix (q8_0, q4_0, q4_k), or llama.cpp's
/// Q4_K_M mixture (q4_k_m): Q4_K with more bits where llama.cpp spends them (see <see cref="ModelQuantizer.ChooseType(string, long[], QuantizeTarget, QuantizeModelShape, out string?)"/>).
/// </summary>
/// <param name="Name">The name on the command line (lower case).</param>
/// <param name="Base">The type of the matrices no rule singles out.</param>
/// <param name="KQuantMixture">Whether llama.cpp's _M per-layer rules apply.</param>
/// <param name="FileType">llama.cpp's <c>general.file_type</c> (LLAMA_FTYPE_MOSTLY_*).</param>
public sealed record QuantizeTarget(string Name, DType Base, bool KQuantMixture, uint FileType)
{
    /// <summary>Every matrix Q8_0 (LLAMA_FTYPE_MOSTLY_Q8_0 = 7).</summary>
    public static QuantizeTarget Q8_0 { get; } = new("q8_0", DType.Q8_0, false, 7);

    /// <summary>Q4_0, output head Q6_K (LLAMA_FTYPE_MOSTLY_Q4_0 = 2).</summary>
    public static QuantizeTarget Q4_0 { get; } = new("q4_0", DType.Q4_0, false, 2);

    /// <summary>Q4_K, output head Q6_K (LLAMA_FTYPE_MOSTLY_Q4_K_S = 14).</summary>
    public static QuantizeTarget Q4_K { get; } = new("q4_k", DType.Q4_K, false, 14);

    /// <summary>Q4_K with llama.cpp's Q4_K_M mixture (LLAMA_FTYPE_MOSTLY_Q4_K_M = 15).</summary>
    public static QuantizeTarget Q4_K_M { get; } = new("q4_k_m", DType.Q4_K, true, 15);

    /// <summary>The targets, in the order the usage text lists them.</summary>
    public static IReadOnlyList<QuantizeTarget> All { get; } = [Q8_0, Q4_0, Q4_K, Q4_K_M];

    /// <summary>Parses "q8_0", "q4_0", "q4_k" or "q4_k_m" (any case).</summary>
    /// <exception cref="ArgumentException">Anything else.</exception>
    public static QuantizeTarget Parse(string text) =>
        All.FirstOrDefault(t => string.Equals(t.Name, text, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"quantization type '{text}' is not supported; expected {string.Join(", ", All.Select(t => t.Name))}");

    /// <summary>The uniform target of <paramref name="type"/> (Q8_0, Q4_0 or Q4_K).</summary>
    /// <exception cref="ArgumentException">Another type.</exception>
    public static QuantizeTarget Of(DType type) =>
        All.FirstOrDefault(t => !t.KQuantMixture && t.Base == type)
        ?? throw new ArgumentException($"{type} is not a quantization target; expected one of {string.Join(", ", ModelQuantizer.Targets)}", nameof(type));

    public override string ToString() => Name;
}

/// <summary>What the _M mixture rules need to know about the model being quantized.</summary>
/// <param name="Layers">Transformer blocks (llama.cpp's n_layer).</param>
/// <param name="Experts">MoE experts per layer, 0 for a dense model (llama.cpp's n_expert).</param>
/// <param name="HasOutput">Whether the file has its own <c>output.weight</c> (when not, the token embedding is also the output head and takes its type).</param>
public sealed record QuantizeModelShape(int Layers, int Experts, bool HasOutput);
