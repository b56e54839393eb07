using System.Runtime.InteropServices;

namespace Bora.Numerics.Jit;

/// <summary>
/// Pages of machine code that Bora writes at run time (<see cref="X64Emitter"/>): mapped writable, filled, then
/// switched to read + execute before the first call (never writable and executable at once). Linux x64 only; where
/// mapping executable pages is refused (a hardened kernel, SELinux <c>execmem</c> denied) <see cref="TryCreate"/>
/// returns null and the callers keep their managed kernels. The pages live as long as the process: kernels are
/// generated once per shape and cached.
/// </summary>
internal static unsafe partial class ExecutableMemory
{
    private const int ProtRead = 1, ProtWrite = 2, ProtExec = 4;
    private const int MapPrivate = 0x02, MapAnonymous = 0x20;

    private static bool s_refused;

    /// <summary>
    /// Copies <paramref name="code"/> into fresh read + execute pages and returns its first byte, or null when this
    /// process cannot have executable pages (not Linux, no libc entry points, or the kernel refused).
    /// </summary>
    public static byte* TryCreate(ReadOnlySpan<byte> code)
    {
        if (s_refused || !OperatingSystem.IsLinux() || code.IsEmpty)
        {
            return null;
        }
        try
        {
            nuint size = (nuint)((code.Length + 4095) & ~4095);
            nint p = Mmap(0, size, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
            if (p == -1 || p == 0)
            {
                s_refused = true;
                return null;
            }
            code.CopyTo(new Span<byte>((void*)p, code.Length));
            if (Mprotect(p, size, ProtRead | ProtExec) != 0)
            {
                _ = Munmap(p, size);
                s_refused = true;
                return null;
            }
            return (byte*)p;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            s_refused = true;
            return null;
        }
    }

    [LibraryImport("libc", EntryPoint = "mmap")]
    private static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, nint offset);

    [LibraryImport("libc", EntryPoint = "mprotect")]
    private static partial int Mprotect(nint address, nuint length, int protection);

    [LibraryImport("libc", EntryPoint = "munmap")]
    private static partial int Munmap(nint address, nuint length);
}
