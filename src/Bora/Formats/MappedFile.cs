using System.IO.MemoryMappedFiles;

namespace Bora.Formats;

/// <summary>A read-only memory mapping of a whole file (one view), exposing spans over it.</summary>
internal sealed unsafe class MappedFile : IDisposable
{
    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private byte* _ptr;

    private MappedFile(string path, long length, MemoryMappedFile? map, MemoryMappedViewAccessor? view, byte* ptr)
    {
        Path = path;
        Length = length;
        _map = map;
        _view = view;
        _ptr = ptr;
    }

    public string Path { get; }

    public long Length { get; }

    /// <summary>Maps <paramref name="path"/>; an empty file gets no mapping (every span is empty).</summary>
    /// <exception cref="ModelFormatException">The file is missing or cannot be read.</exception>
    public static MappedFile Open(string path)
    {
        if (!File.Exists(path))
        {
            throw ModelFormatException.In(path, "file not found");
        }
        long length;
        try
        {
            length = new FileInfo(path).Length;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw ModelFormatException.In(path, "cannot read the file: " + e.Message);
        }
        if (length == 0)
        {
            return new MappedFile(path, 0, null, null, null);
        }
        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        try
        {
            map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* ptr = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref ptr);
            return new MappedFile(path, length, map, view, ptr + view.PointerOffset);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            view?.Dispose();
            map?.Dispose();
            throw ModelFormatException.In(path, "cannot map the file: " + e.Message);
        }
    }

    /// <summary>A span over [offset, offset + length), which the caller has checked lies inside the file.</summary>
    public ReadOnlySpan<byte> Span(long offset, long length)
    {
        ObjectDisposedException.ThrowIf(_ptr == null && Length != 0, this);
        if (offset < 0 || length < 0 || offset > Length || length > Length - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, {offset + length}) is outside {Path} ({Length} bytes)");
        }
        if (length > int.MaxValue)
        {
            throw ModelFormatException.In(Path, $"a span of {length} bytes at offset {offset} is larger than 2 GiB, which a span cannot address");
        }
        return length == 0 ? default : new ReadOnlySpan<byte>(_ptr + offset, (int)length);
    }

    public void Dispose()
    {
        if (_view is not null && _ptr != null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _ptr = null;
        }
        _view?.Dispose();
        _map?.Dispose();
    }
}
