namespace Bora.Numerics.Quant;

/// <summary>
/// The token counts from which <see cref="QuantizedMatrix"/> products switch kernels (AVX-512 only): from these on, Q4_0 /
/// Q8_0 run rows-in-lanes (each 16-row group repacked once per product, tiles of up to 8 / 6 tokens with exact-count
/// tails); below them, QuantGemm's 4 x 4 tiles and 4-row decode steps. The defaults come from side-by-side
/// measurements (<c>bench/Bora.Bench matmul --compare-min M</c>, see its README). Settable for benchmarks and tests only:
/// a (row, token) result depends on the path, so change them only while no product runs.
/// </summary>
public static class QuantDispatch
{
    /// <summary>
    /// Default of <see cref="Q4_0InterleavedMinTokens"/>. Measured (14336 x 4096, 2-core AVX-512 box shared with other jobs,
    /// time of the tiles and decode steps / time of rows-in-lanes, same run): with the first rows-in-lanes small tiles,
    /// T = 1: 0.74, 2: 0.96, 3: 1.31, 4: 1.31, 6: 1.67, 8: 1.82, 15: 2.15 (2 threads); after the faster repack and the
    /// prefetch, against the 4-block decode kernel: T = 1: 0.82 / 0.79 (2 / 1 threads), 2: 1.18 / 1.16, 3..5: 1.00.
    /// </summary>
    public const int DefaultQ4_0InterleavedMinTokens = 2;

    /// <summary>
    /// Default of <see cref="Q8_0InterleavedMinTokens"/>. Measured as for Q4_0 (two nibble planes per block double the
    /// rows-in-lanes work per token); after repacking both planes with one transpose: T = 2: 0.82 / 1.21 (2 / 1 threads),
    /// 3: 1.00 / 1.41, 4: 1.27 / 1.21, 5: 1.39, 8: 1.35, 12: 1.39 (2 threads). Before that (two transposes): T = 1: 0.53,
    /// 3: 0.96-1.11, 5: 0.97-1.19, 8: 0.98-1.43.
    /// </summary>
    public const int DefaultQ8_0InterleavedMinTokens = 3;

    /// <summary>
    /// Tokens from which Q4_K and Q6_K products run rows-in-lanes (Q4KInterleaved, Q6KInterleaved); below, the
    /// KQuantRows row kernels. 16 is where those kernels were measured and tuned (8-token tiles, prefill of 128-512
    /// tokens); the small-batch crossover was measured for Q4_0 / Q8_0 only, so the K-quants keep the measured point.
    /// </summary>
    public const int KQuantInterleavedMinTokens = 16;

    private static int s_q4_0 = DefaultQ4_0InterleavedMinTokens, s_q8_0 = DefaultQ8_0InterleavedMinTokens;

    /// <summary>Tokens from which Q4_0 products run rows-in-lanes (at least 1).</summary>
    public static int Q4_0InterleavedMinTokens
    {
        get => s_q4_0;
        set => s_q4_0 = value >= 1 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "at least 1 token");
    }

    /// <summary>Tokens from which Q8_0 products run rows-in-lanes (at least 1).</summary>
    public static int Q8_0InterleavedMinTokens
    {
        get => s_q8_0;
        set => s_q8_0 = value >= 1 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "at least 1 token");
    }

    /// <summary>
    /// Whether Q4_0 decode steps at AVX-512 with VBMI read 4 blocks per step (QuantGemm.GemvQ4Quad, the default) rather
    /// than a block pair (QuantGemm.Gemv512, the previous kernel; benchmarks compare the two).
    /// </summary>
    public static bool Q4_0QuadDecode { get; set; } = true;

    /// <summary>
    /// Whether products run Bora's generated AVX-512 VNNI kernels where <see cref="GeneratedKernelsSupported"/> (the
    /// default there); false runs the managed AVX-512 kernels, which tests and benchmarks compare them with.
    /// </summary>
    public static bool GeneratedKernels { get; set; } = true;

    /// <summary>Whether this process can run the generated kernels (see <see cref="Jit.GeneratedKernels.IsSupported"/>).</summary>
    public static bool GeneratedKernelsSupported => Jit.GeneratedKernels.IsSupported;

    internal static bool UseGeneratedKernels => GeneratedKernels && Jit.GeneratedKernels.IsSupported;
}
