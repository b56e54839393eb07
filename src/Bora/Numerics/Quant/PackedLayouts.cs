using System.Runtime.CompilerServices;
using Bora.Numerics.Jit;

namespace Bora.Numerics.Quant;

/// <summary>How a <see cref="QuantizedMatrix"/> holds its blocks.</summary>
public enum QuantLayout
{
    /// <summary>GGUF's layout: (N, K / BE) blocks row after row, as stored in the file (read in place).</summary>
    Rows,

    /// <summary>
    /// Packed once at load into groups of 16 rows (<see cref="QuantizedMatrix.Pack"/>): each block's 16 rows are
    /// interleaved so that one 512-bit vector holds 16 rows' values; the same bytes as the file, rearranged.
    /// </summary>
    Groups16,
}

/// <summary>
/// The packed 16-row group layouts per format, one place: which formats have one, and the format's pack / unpack /
/// product functions (<see cref="Q4_0Packed"/>, <see cref="Q8_0Packed"/>, <see cref="Q4KPacked"/>, <see cref="Q6KPacked"/>; each format's class
/// documents its byte layout).
/// Every product runs the AVX-512 kernel at <see cref="QuantIsa.Avx512"/>, the AVX2 one (two halves of 8 rows,
/// <see cref="Packed256"/>) at AVX2 and AVX-VNNI, and the scalar twin below; all give the same bits.
/// </summary>
internal static unsafe class PackedLayouts
{
    /// <summary>Rows per group.</summary>
    public const int GroupRows = 16;

    /// <summary>
    /// Software prefetch (into every cache level) of the 64-byte lines of [p, p + bytes): what a packed tile of 2 or
    /// more tokens asks for a few blocks ahead, so that the first tile over a group does not wait on memory for each
    /// block (a 1-token tile streams the group once and the hardware prefetcher keeps up; prefetching there cost decode
    /// 8% on the AVX-512 box). The AVX2 1-token tiles do prefetch: on a 2-core AMD EPYC (Zen 3) they gained
    /// (<c>bench/Bora.Bench stream</c>, GB/s without / with, 1 thread): Q4_0 12.2 / 15.5-17.3, Q8_0 14.0 / 14.7-17.6,
    /// Q4_K 11.5 / 13.8-16.0, Q6_K 12.1 / 16.3 (the last with the one-pass tile). Each format picks the distance and the
    /// share of a block per call.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public static void PrefetchLines(byte* p, int bytes)
    {
        // Four lines per step (bytes is a constant at every call site): a plain loop of one line per step measured 2%
        // slower on the Q6_K tiles, which prefetch 16 times per super-block.
        int line = 0;
        for (; line + 256 <= bytes; line += 256)
        {
            System.Runtime.Intrinsics.X86.Sse.Prefetch0(p + line);
            System.Runtime.Intrinsics.X86.Sse.Prefetch0(p + line + 64);
            System.Runtime.Intrinsics.X86.Sse.Prefetch0(p + line + 128);
            System.Runtime.Intrinsics.X86.Sse.Prefetch0(p + line + 192);
        }
        for (; line < bytes; line += 64)
        {
            System.Runtime.Intrinsics.X86.Sse.Prefetch0(p + line);
        }
    }

    /// <summary>Whether <paramref name="type"/> has a packed layout.</summary>
    public static bool Supports(DType type) => type is DType.Q4_0 or DType.Q8_0 or DType.Q4_K or DType.Q6_K;

    /// <summary>Bytes of one group of nb blocks (16 rows).</summary>
    public static long GroupBytes(DType type, int nb) => type switch
    {
        DType.Q4_0 => Q4_0Packed.GroupBytes(nb),
        DType.Q8_0 => Q8_0Packed.GroupBytes(nb),
        DType.Q4_K => Q4KPacked.GroupBytes(nb),
        DType.Q6_K => Q6KPacked.GroupBytes(nb),
        _ => throw Unsupported(type),
    };

    /// <summary>Packs <paramref name="rows"/> (1..16) GGUF rows at <paramref name="src"/> into the group at <paramref name="dst"/>.</summary>
    public static void PackGroup(DType type, byte* src, long rowBytes, int nb, int rows, byte* dst)
    {
        switch (type)
        {
            case DType.Q4_0: Q4_0Packed.PackGroup(src, rowBytes, nb, rows, dst); break;
            case DType.Q8_0: Q8_0Packed.PackGroup(src, rowBytes, nb, rows, dst); break;
            case DType.Q4_K: Q4KPacked.PackGroup(src, rowBytes, nb, rows, dst); break;
            case DType.Q6_K: Q6KPacked.PackGroup(src, rowBytes, nb, rows, dst); break;
            default: throw Unsupported(type);
        }
    }

    /// <summary>
    /// Throws when a block scale of the <paramref name="rows"/> GGUF rows at <paramref name="src"/> (nb blocks each,
    /// <paramref name="rowBytes"/> apart) is an infinity or a NaN (<see cref="Half.IsFinite"/>), for the formats whose
    /// packed kernels widen their block scales as finite halves (<see cref="Packed256.BlockScales"/>: Q4_0, Q8_0, the
    /// f16 scale in a block's first 2 bytes); the other formats' kernels widen every half exactly, so a non-finite scale
    /// there reaches the results as it would in the GGUF definitions. <paramref name="row0"/>: the first row's index in
    /// the matrix, for the message.
    /// </summary>
    /// <exception cref="InvalidDataException">A Q4_0 / Q8_0 block scale is not finite; names its row and block.</exception>
    public static void CheckBlockScales(DType type, byte* src, long rowBytes, int nb, int rows, long row0)
    {
        if (type is not (DType.Q4_0 or DType.Q8_0))
        {
            return;
        }
        int blockBytes = (int)DTypeInfo.ByteSize(type, DTypeInfo.BlockElements(type))!.Value;
        for (int r = 0; r < rows; r++)
        {
            byte* row = src + r * rowBytes;
            for (int b = 0; b < nb; b++)
            {
                var scale = Unsafe.ReadUnaligned<Half>(row + (long)b * blockBytes);
                if (!Half.IsFinite(scale))
                {
                    throw new InvalidDataException(
                        $"row {row0 + r}, block {b} has the scale 0x{BitConverter.HalfToUInt16Bits(scale):X4} ({scale}); every {type} block scale must be a finite half");
                }
            }
        }
    }

    /// <summary>Row <paramref name="r"/> (0..15) of a group back to nb GGUF blocks.</summary>
    public static void UnpackRow(DType type, byte* group, int nb, int r, byte* dst)
    {
        switch (type)
        {
            case DType.Q4_0: Q4_0Packed.UnpackRow(group, nb, r, dst); break;
            case DType.Q8_0: Q8_0Packed.UnpackRow(group, nb, r, dst); break;
            case DType.Q4_K: Q4KPacked.UnpackRow(group, nb, r, dst); break;
            case DType.Q6_K: Q6KPacked.UnpackRow(group, nb, r, dst); break;
            default: throw Unsupported(type);
        }
    }

    /// <summary>Once per product, on the calling thread, after quantizing the activations.</summary>
    public static void Prepare(DType type, Q8Activations act)
    {
        switch (type)
        {
            case DType.Q4_0: Q4_0Packed.Prepare(act); break;
            case DType.Q8_0: Q8_0Packed.Prepare(act); break;
            case DType.Q4_K: Q4KPacked.Prepare(act); break;
            case DType.Q6_K: Q6KPacked.Prepare(act); break;
            default: throw Unsupported(type);
        }
    }

    /// <summary>y[t, r] for r in [r0, r1) (r0 a multiple of 16), t in [0, tokens): the AVX-512 kernel, the AVX2 one, or the scalar twin.</summary>
    public static void Run(DType type, QuantIsa isa, byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        bool wide = isa == QuantIsa.Avx512;
        bool avx2 = !wide && isa >= QuantIsa.Avx2;
        switch (type)
        {
            case DType.Q4_0 when wide && QuantDispatch.UseGeneratedKernels: Q4_0Vnni.Run(packed, nb, n, act, tokens, y, r0, r1); break;
            case DType.Q4_0 when wide: Q4_0Packed.Run(packed, nb, n, act, tokens, y, r0, r1); break;
            case DType.Q4_0 when avx2: Q4_0Packed.Run256(packed, nb, n, act, tokens, y, r0, r1); break;
            case DType.Q4_0: Q4_0Packed.RunScalar(packed, nb, n, act, tokens, y, r0, r1); break;
            case DType.Q8_0 when wide && QuantDispatch.UseGeneratedKernels: Q8_0Vnni.Run(packed, nb, n, act, tokens, y, r0, r1); break;
            case DType.Q8_0 when wide: Q8_0Packed.Run(packed, nb, n, act, tokens, y, r0, r1); break;
            case DType.Q8_0 when avx2: Q8_0Packed.Run256(packed, nb, n, act, tokens, y, r0, r1); break;
            case DType.Q8_0: Q8_0Packed.RunScalar(packed, nb, n, act, tokens, y, r0, r1); break;
            case DType.Q4_K when wide: Q4KPacked.Run(packed, nb, n, act, tokens, y, r0, r1); break;
            case DType.Q4_K when avx2: Q4KPacked.Run256(packed, nb, n, act, tokens, y, r0, r1); break;
            case DType.Q4_K: Q4KPacked.RunScalar(packed, nb, n, act, tokens, y, r0, r1); break;
            case DType.Q6_K when wide: Q6KPacked.Run(packed, nb, n, act, tokens, y, r0, r1); break;
            case DType.Q6_K when avx2: Q6KPacked.Run256(packed, nb, n, act, tokens, y, r0, r1); break;
            case DType.Q6_K: Q6KPacked.RunScalar(packed, nb, n, act, tokens, y, r0, r1); break;
            default: throw Unsupported(type);
        }
    }

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16), t in [0, tokens), with generated tiles of up to
    /// <paramref name="tileTokens"/> tokens over the matrix's 16-row groups (<paramref name="groupBytes"/> each, from
    /// <paramref name="packed"/>): <paramref name="full"/> for whole tiles, <paramref name="tail"/> for a last, shorter
    /// one (either may be null where no tile of it is run). Each call gets the group, tile token t0's quants, d_x and
    /// per-block data (<paramref name="data"/> + t0 <paramref name="dataStride"/> bytes), <paramref name="steps"/> and
    /// 16 floats out per token (<see cref="GeneratedKernels.Get"/>'s convention).
    /// </summary>
    public static void RunGeneratedTiles(
        delegate* unmanaged[SuppressGCTransition]<byte*, sbyte*, float*, float*, long, float*, void> full,
        delegate* unmanaged[SuppressGCTransition]<byte*, sbyte*, float*, float*, long, float*, void> tail,
        int tileTokens, byte* packed, long groupBytes, long steps, int n, Q8Activations act, byte* data, long dataStride,
        int tokens, float* y, int r0, int r1)
    {
        float* results = stackalloc float[tileTokens * KPacked.GroupRows];
        for (int g0 = r0; g0 < r1; g0 += KPacked.GroupRows)
        {
            byte* g = packed + g0 / KPacked.GroupRows * groupBytes;
            int rows = Math.Min(KPacked.GroupRows, r1 - g0);
            for (int t0 = 0; t0 < tokens; t0 += tileTokens)
            {
                int tt = Math.Min(tileTokens, tokens - t0);
                var row = act.Row(t0);
                (tt == tileTokens ? full : tail)(g, row.Q, row.D, (float*)(data + t0 * dataStride), steps, results);
                GeneratedKernels.CopyResults(results, tt, y + (long)t0 * n + g0, n, rows);
            }
        }
    }

    private static NotSupportedException Unsupported(DType type) => new($"{type} has no packed 16-row layout");
}
