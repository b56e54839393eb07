using System.IO.MemoryMappedFiles;

namespace Bora.Numerics;

/// <summary>
/// Bytes that weight matrices read through raw pointers, which must neither move nor be freed while a
/// matrix over them is in use: a pinned managed array (<see cref="Pinned"/>), or a read-only memory mapping of a
/// whole file (<see cref="MapFile"/>), so weights stored in their runtime layout are used where they lie in the
/// page cache, with no copy.
/// <para>
/// Lifetime: matrices keep a reference to their storage, so the memory stays valid as long as any matrix over it
/// is reachable; a mapping is unmapped when the storage is collected, or at once by <see cref="Dispose"/>, after
/// which <see cref="Pointer"/> throws <see cref="ObjectDisposedException"/> (a product running on another thread at
/// that moment is a caller error, as for any disposed object).
/// </para>
/// </summary>
public abstract unsafe class WeightStorage : IDisposable
{
    private protected WeightStorage(long length) => Length = length;

    /// <summary>Bytes of storage.</summary>
    public long Length { get; }

    /// <summary>Whether <see cref="Dispose"/> has run.</summary>
    public bool IsDisposed { get; private set; }

    /// <summary>Where the file came from (for a mapping), else null.</summary>
    public virtual string? Path => null;

    /// <summary>
    /// A pinned array of <paramref name="bytes"/> uninitialised bytes, advised for huge pages on Linux
    /// (<see cref="HugePages"/>).
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Negative, or more than <see cref="Array.MaxLength"/>.</exception>
    public static WeightStorage Allocate(long bytes)
    {
        if (bytes < 0 || bytes > Array.MaxLength)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), bytes, "a weight buffer is one array of at most Array.MaxLength bytes");
        }
        var array = GC.AllocateUninitializedArray<byte>((int)bytes, pinned: true);
        HugePages.Advise(array);
        return new PinnedStorage(array);
    }

    /// <summary>
    /// Wraps <paramref name="array"/>, which must come from <c>GC.AllocateArray(..., pinned: true)</c> or
    /// <c>GC.AllocateUninitializedArray(..., pinned: true)</c> (kernels keep raw pointers into it).
    /// </summary>
    public static WeightStorage Pinned(byte[] array)
    {
        ArgumentNullException.ThrowIfNull(array);
        return new PinnedStorage(array);
    }

    /// <summary>Maps <paramref name="path"/> read-only (shared with the page cache; nothing is read until touched).</summary>
    /// <exception cref="IOException">The file cannot be opened or mapped.</exception>
    public static WeightStorage MapFile(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return new MappedStorage(path);
    }

    /// <summary>
    /// A pointer to bytes [<paramref name="offset"/>, <paramref name="offset"/> + <paramref name="length"/>), checked
    /// to lie inside the storage. Valid while this storage is reachable and not disposed.
    /// </summary>
    public byte* Pointer(long offset, long length)
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
        if (offset < 0 || length < 0 || offset > Length || length > Length - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, {offset + length}) is outside the {Length}-byte weight storage{(Path is null ? "" : " of " + Path)}");
        }
        return Base + offset;
    }

    /// <summary>The first byte (null for empty storage).</summary>
    private protected abstract byte* Base { get; }

    /// <summary>Releases the memory now (a mapping is unmapped); later <see cref="Pointer"/> calls throw.</summary>
    public void Dispose()
    {
        if (!IsDisposed)
        {
            IsDisposed = true;
            Release();
        }
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees what the storage holds (once).</summary>
    private protected abstract void Release();

    /// <summary>A pinned managed array: never moves, freed by the GC.</summary>
    private sealed class PinnedStorage(byte[] array) : WeightStorage(array.LongLength)
    {
        private byte[]? _array = array;

        private protected override byte* Base => _array is { Length: > 0 } a ? (byte*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(a)) : null;

        private protected override void Release() => _array = null;
    }

    /// <summary>
    /// One read-only view of a whole file. The view's safe handle unmaps it when this object is collected (it is
    /// referenced only from here), or on <see cref="Dispose"/>.
    /// </summary>
    private sealed class MappedStorage : WeightStorage
    {
        private readonly MemoryMappedFile? _map;
        private readonly MemoryMappedViewAccessor? _view;
        private readonly byte* _base;
        private readonly string _path;

        public MappedStorage(string path) : base(new FileInfo(path).Length)
        {
            _path = path;
            if (Length == 0)
            {
                return;
            }
            _map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            try
            {
                _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
                _base = (byte*)_view.SafeMemoryMappedViewHandle.DangerousGetHandle() + _view.PointerOffset;
            }
            catch
            {
                _map.Dispose();
                throw;
            }
        }

        public override string? Path => _path;

        private protected override byte* Base => _base;

        private protected override void Release()
        {
            _view?.Dispose();
            _map?.Dispose();
        }
    }
}
