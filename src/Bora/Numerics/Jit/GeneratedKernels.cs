using System.Collections.Concurrent;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Numerics.Jit;

/// <summary>The generated tiles, as keys of <see cref="GeneratedKernels"/>'s cache.</summary>
internal enum GeneratedKernel
{
    Q8_0,
    Q4_0,
    Q4K,
    Q6K,
    Q6KGfni,
    F16Rows4,
}

/// <summary>
/// Whether this process can run Bora's generated AVX-512 VNNI kernels, and the cache of the generated functions (one
/// per kernel and shape, made at first use and kept for the life of the process).
/// </summary>
internal static unsafe class GeneratedKernels
{
    private static readonly ConcurrentDictionary<(GeneratedKernel Kernel, int Tokens, int Blocks), nint> s_functions = new();

    /// <summary>
    /// x64 Linux, AVX-512 BW and VNNI reported by the CPU and enabled in .NET (so <c>DOTNET_EnableAVX512=0</c>,
    /// <c>DOTNET_EnableAVX2=0</c> or <c>DOTNET_EnableHWIntrinsic=0</c> turn the generated kernels off; .NET 10 ignores
    /// <c>DOTNET_EnableAVX512F</c>), executable pages granted, and the environment variable <c>BORA_GENERATED_KERNELS</c>
    /// not set to 0.
    /// </summary>
    public static bool IsSupported { get; } = Detect();

    private static bool Detect()
    {
        if (!OperatingSystem.IsLinux() || !X86Base.X64.IsSupported || !Avx512BW.IsSupported
            || Environment.GetEnvironmentVariable("BORA_GENERATED_KERNELS") == "0")
        {
            return false;
        }
        (_, _, int ecx, _) = X86Base.CpuId(7, 0);
        if ((ecx & (1 << 11)) == 0)
        {
            return false; // no AVX512_VNNI
        }
        return ExecutableMemory.TryCreate([0xC3]) != null; // a lone ret: may this process have executable pages?
    }

    /// <summary>
    /// The tile <paramref name="emit"/>(tokens, blocks) assembles for <paramref name="kernel"/>, generated at first use
    /// (two threads asking at once may both assemble it; one copy is kept, the other's page is left unused). Every tile
    /// takes the arguments of <see cref="NextStep"/>'s convention: weights, token 0's quants, its scales, its per-block
    /// data, the step count and the 16 T floats out.
    /// </summary>
    public static delegate* unmanaged[SuppressGCTransition]<byte*, sbyte*, float*, float*, long, float*, void> Get(
        GeneratedKernel kernel, int tokens, int blocks, Func<int, int, X64Emitter> emit)
    {
        if (!s_functions.TryGetValue((kernel, tokens, blocks), out nint f))
        {
            byte* p = ExecutableMemory.TryCreate(emit(tokens, blocks).Code);
            if (p == null)
            {
                throw new InvalidOperationException($"the pages for generated kernel {kernel} were refused after earlier ones were granted; set BORA_GENERATED_KERNELS=0 to run the managed kernels");
            }
            f = s_functions.GetOrAdd((kernel, tokens, blocks), (nint)p);
        }
        return (delegate* unmanaged[SuppressGCTransition]<byte*, sbyte*, float*, float*, long, float*, void>)f;
    }

    /// <summary>
    /// A generated tile's results (token t's 16 row values at results + 16 t) to y: the first <paramref name="rows"/> of
    /// each of <paramref name="tokens"/> tokens, token t at y + t n.
    /// </summary>
    public static void CopyResults(float* results, int tokens, float* y, int n, int rows)
    {
        for (int t = 0; t < tokens; t++)
        {
            if (rows == 16)
            {
                Vector512.Load(results + 16 * t).Store(y + (long)t * n);
            }
            else
            {
                new ReadOnlySpan<float>(results + 16 * t, rows).CopyTo(new Span<float>(y + (long)t * n, rows));
            }
        }
    }

    /// <summary>
    /// The end of a tile's loop body, in the calling convention every tile shares (rdi = weights, rsi = token 0's
    /// quants, rdx = its scales, rcx = its per-block data, r8 = steps left): advance the four pointers by one step's
    /// bytes, count r8 down and branch back to <paramref name="loop"/> while steps are left.
    /// </summary>
    public static void NextStep(X64Emitter e, int loop, int weights, int quants, int scales, int data)
    {
        e.AddImm(Gpr.Rdi, weights);
        e.AddImm(Gpr.Rsi, quants);
        e.AddImm(Gpr.Rdx, scales);
        e.AddImm(Gpr.Rcx, data);
        e.Dec(Gpr.R8);
        e.JnzBack(loop);
    }

    /// <summary>A tile's epilogue: the accumulators zmm0..tokens-1 to r9 (token t's 16 rows at r9 + 64 t), then return.</summary>
    public static void StoreAndReturn(X64Emitter e, int tokens)
    {
        for (int t = 0; t < tokens; t++)
        {
            e.StorePs(Gpr.R9, 64 * t, t);
        }
        e.VzeroupperRet();
    }
}
