using System.Runtime.InteropServices;
using Bora.Formats;
using Bora.Numerics;

namespace Bora.Model.Tests;

/// <summary>A float32 <see cref="ITensorStore"/> held in memory, standing in for the GGUF/safetensors readers.</summary>
internal sealed class InMemoryTensorStore(string path = "memory://test") : ITensorStore
{
    private readonly Dictionary<string, (TensorInfo Info, float[] Data)> _tensors = new(StringComparer.Ordinal);
    private readonly List<TensorInfo> _order = [];

    public string Path => path;

    public IReadOnlyList<TensorInfo> Tensors => _order;

    public int ReadCount { get; private set; }

    public void Add(string name, float[] data, params long[] shape)
    {
        long n = shape.Aggregate(1L, (a, b) => a * b);
        Assert.Equal(n, data.LongLength);
        var info = new TensorInfo(name, DType.F32, shape, 0, data.LongLength * 4, path);
        Remove(name);
        _tensors[name] = (info, data);
        _order.Add(info);
    }

    public bool Remove(string name)
    {
        if (_tensors.Remove(name, out var old))
        {
            _order.Remove(old.Info);
            return true;
        }
        return false;
    }

    public bool TryGetTensor(string name, out TensorInfo info)
    {
        if (_tensors.TryGetValue(name, out var t))
        {
            info = t.Info;
            return true;
        }
        info = null!;
        return false;
    }

    public ReadOnlySpan<byte> GetBytes(TensorInfo info) => MemoryMarshal.AsBytes(_tensors[info.Name].Data.AsSpan());

    public float[] ReadFloat32(TensorInfo info)
    {
        ReadCount++;
        return (float[])_tensors[info.Name].Data.Clone();
    }

    public void Dispose() { }
}
