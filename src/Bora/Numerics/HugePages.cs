using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Bora.Numerics;

/// <summary>
/// Asks Linux to back large weight buffers with 2 MiB transparent huge pages (<c>madvise(MADV_HUGEPAGE)</c>). Most
/// distributions set <c>/sys/kernel/mm/transparent_hugepage/enabled</c> to <c>madvise</c>, so anonymous memory gets
/// huge pages only where a program asks. A prefill tile walks many weight rows at once, and with 4 KiB pages each
/// row's next block is often a TLB miss; with 2 MiB pages a 4 GB model needs about 2,000 TLB entries instead of
/// a million. Measured on a 7B Q4_K_M file with 2 threads: prefill 3.5% faster, decode unchanged.
/// <para>
/// Advice only: the call must come before the pages are first written (the kernel hands out huge pages at the first
/// fault in each aligned 2 MiB range), it covers only the whole 2 MiB ranges inside the buffer, and a failure, another
/// operating system or THP turned off all leave the buffer as it was.
/// </para>
/// </summary>
internal static partial class HugePages
{
    /// <summary>The huge page size on x64 and most arm64 Linux kernels.</summary>
    private const long Size = 2 << 20;

    /// <summary>Buffers under this size are left alone (they hold less than one aligned huge page for sure).</summary>
    private const long MinBytes = 2 * Size;

    /// <summary><c>MADV_HUGEPAGE</c> from Linux's <c>mman-common.h</c>.</summary>
    private const int MadvHugePage = 14;

    /// <summary>
    /// Advises huge pages for the aligned 2 MiB ranges inside <paramref name="array"/>, which must be pinned and not
    /// yet written.
    /// </summary>
    public static unsafe void Advise(byte[] array)
    {
        long bytes = array.LongLength;
        if (!OperatingSystem.IsLinux() || bytes < MinBytes)
        {
            return;
        }
        long start = (long)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array));
        long first = (start + Size - 1) & ~(Size - 1);
        long end = (start + bytes) & ~(Size - 1);
        if (end > first && !s_unavailable)
        {
            try
            {
                _ = Madvise((nint)first, (nuint)(end - first), MadvHugePage);
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
            {
                s_unavailable = true; // a libc without madvise under that name: no advice, nothing else changes
            }
        }
    }

    private static bool s_unavailable;

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Madvise(nint address, nuint length, int advice);
}
