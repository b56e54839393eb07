using System.Runtime.CompilerServices;

namespace Bora.Numerics.Quant;

/// <summary>The per-thread pinned buffers the rows-in-lanes kernels repack or expand a group into: one grow-and-point rule.</summary>
internal static unsafe class PinnedScratch
{
    /// <summary>
    /// The first byte of <paramref name="buffer"/> (a [ThreadStatic] field of the caller), first grown to at least
    /// <paramref name="bytes"/> (and 1) bytes when smaller; pinned, so the pointer stays valid while the field holds it.
    /// </summary>
    public static byte* Get(ref byte[]? buffer, long bytes)
    {
        long need = Math.Max(1, bytes);
        if (buffer is null || buffer.LongLength < need)
        {
            buffer = GC.AllocateUninitializedArray<byte>(checked((int)need), pinned: true);
        }
        return (byte*)Unsafe.AsPointer(ref buffer[0]);
    }
}
