using System.Text;

namespace Bora.Formats.Gguf;

/// <summary>
/// Builds a GGUF v3 file the way llama.cpp's reader expects it: metadata in insertion order, tensor infos in
/// insertion order with offsets that are the running sum of the tensor sizes each padded to the alignment,
/// the data section starting at the next multiple of the alignment, and every tensor (the last one included)
/// zero-padded to the alignment. The file is written to <c>path + ".tmp"</c> and then renamed over
/// <c>path</c>, so readers never see a half-written file.
/// <para>
/// Metadata values use <see cref="GgufFile"/>'s representation or any CLR numeric type. The stored GGUF type is
/// inferred from the CLR type (int -> Int32, uint -> UInt32, long -> Int64, float -> Float32, string[] ->
/// array of String, long[] -> array of Int64, object[] -> array of arrays, ...) unless given explicitly;
/// llama.cpp checks types strictly, so e.g. <c>llama.block_count</c> must be written as UInt32:
/// <c>AddMetadata("llama.block_count", 5L, GgufValueType.UInt32)</c> or <c>AddMetadata("llama.block_count", 5u)</c>.
/// </para>
/// </summary>
public sealed class GgufWriter
{
    /// <summary>llama.cpp's limit on tensor name length (GGML_MAX_NAME - 1 bytes).</summary>
    public const int MaxTensorNameBytes = 63;

    private readonly List<(string Key, GgufValueKind Kind, object Value)> _metadata = [];
    private readonly List<TensorData> _tensors = [];
    private readonly HashSet<string> _tensorNames = new(StringComparer.Ordinal);

    /// <summary>Creates a writer for data aligned to <paramref name="alignment"/> bytes (a power of two).</summary>
    /// <remarks>An alignment other than 32 is recorded as <c>general.alignment</c> (UInt32).</remarks>
    public GgufWriter(int alignment = 32)
    {
        if (alignment <= 0 || (alignment & (alignment - 1)) != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(alignment), alignment, "alignment must be a power of two");
        }
        Alignment = alignment;
        if (alignment != 32)
        {
            AddMetadata("general.alignment", (uint)alignment);
        }
    }

    /// <summary>Alignment of the data section and of every tensor.</summary>
    public int Alignment { get; }

    /// <summary>Adds (or replaces in place) a metadata value whose GGUF type is inferred from its CLR type.</summary>
    /// <exception cref="ArgumentException">A type with no GGUF equivalent, or an empty array of arrays.</exception>
    public GgufWriter AddMetadata(string key, object value) => Put(key, Infer(key, value), value);

    /// <summary>
    /// Adds (or replaces in place) a metadata value stored as <paramref name="type"/> (and, for an array,
    /// <paramref name="elementType"/>); integer values of any CLR width are range-checked into the target width.
    /// </summary>
    /// <exception cref="ArgumentException">The value does not fit the type.</exception>
    public GgufWriter AddMetadata(string key, object value, GgufValueType type, GgufValueType? elementType = null)
    {
        if (type == GgufValueType.Array && elementType is null)
        {
            throw new ArgumentException($"metadata '{key}': an array needs an element type", nameof(elementType));
        }
        return Put(key, new GgufValueKind(type, type == GgufValueType.Array ? elementType : null), value);
    }

    /// <summary>Copies every metadata value of <paramref name="source"/> with its stored types (except general.alignment).</summary>
    public GgufWriter AddMetadataFrom(GgufFile source)
    {
        foreach (var (key, value) in source.Metadata)
        {
            if (key != "general.alignment")
            {
                Put(key, source.MetadataKinds[key], value);
            }
        }
        return this;
    }

    /// <summary>Adds a tensor; names must be unique, at most 63 UTF-8 bytes, with 1 to 4 dimensions.</summary>
    /// <exception cref="ArgumentException">Duplicate or over-long name, or a shape GGUF cannot hold.</exception>
    public GgufWriter AddTensor(TensorData tensor)
    {
        if (Encoding.UTF8.GetByteCount(tensor.Name) > MaxTensorNameBytes)
        {
            throw new ArgumentException($"tensor name '{tensor.Name}' is longer than {MaxTensorNameBytes} bytes, which llama.cpp rejects", nameof(tensor));
        }
        if (tensor.Shape.Length is < 1 or > 4)
        {
            throw new ArgumentException($"tensor '{tensor.Name}' has {tensor.Shape.Length} dimensions; GGUF holds 1 to 4", nameof(tensor));
        }
        if (!_tensorNames.Add(tensor.Name))
        {
            throw new ArgumentException($"duplicate tensor name '{tensor.Name}'", nameof(tensor));
        }
        _tensors.Add(tensor);
        return this;
    }

    /// <summary>Writes the file atomically (temporary file, then rename).</summary>
    public void Write(string path)
    {
        string tmp = path + ".tmp";
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
            using (var w = new BinaryWriter(fs, new UTF8Encoding(false), leaveOpen: false))
            {
                w.Write(0x46554747u); // "GGUF"
                w.Write(3u);
                w.Write((ulong)_tensors.Count);
                w.Write((ulong)_metadata.Count);
                foreach (var (key, kind, value) in _metadata)
                {
                    WriteString(w, key);
                    w.Write((uint)kind.Type);
                    WriteValue(w, key, kind, value);
                }
                long offset = 0;
                foreach (var t in _tensors)
                {
                    WriteString(w, t.Name);
                    w.Write((uint)t.Shape.Length);
                    for (int j = t.Shape.Length - 1; j >= 0; j--)
                    {
                        w.Write(t.Shape[j]); // ne[] innermost-first
                    }
                    w.Write(GgmlType.FromDType(t.Type));
                    w.Write((ulong)offset);
                    offset += Pad(t.Bytes.Length);
                }
                w.Flush();
                WriteZeros(fs, Pad(fs.Position) - fs.Position);
                foreach (var t in _tensors)
                {
                    fs.Write(t.Bytes.Span);
                    WriteZeros(fs, Pad(t.Bytes.Length) - t.Bytes.Length);
                }
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            File.Delete(tmp);
            throw;
        }
    }

    private long Pad(long x) => (x + Alignment - 1) / Alignment * Alignment;

    private static void WriteZeros(Stream s, long n)
    {
        Span<byte> zeros = stackalloc byte[256];
        zeros.Clear();
        while (n > 0)
        {
            int k = (int)Math.Min(n, zeros.Length);
            s.Write(zeros[..k]);
            n -= k;
        }
    }

    private GgufWriter Put(string key, GgufValueKind kind, object value)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(value);
        if (key == "general.alignment" && !(kind.Type == GgufValueType.UInt32 && value is uint or long or int && Convert.ToInt64(value, null) == Alignment))
        {
            throw new ArgumentException($"general.alignment must be the UInt32 {Alignment} given to the writer's constructor", nameof(value));
        }
        int i = _metadata.FindIndex(m => m.Key == key);
        if (i >= 0)
        {
            _metadata[i] = (key, kind, value);
        }
        else
        {
            _metadata.Add((key, kind, value));
        }
        return this;
    }

    private static GgufValueKind Infer(string key, object value) => value switch
    {
        System.Array a =>
            new GgufValueKind(GgufValueType.Array, InferScalar(key, a.GetType().GetElementType()!, a)),
        _ => new GgufValueKind(InferScalar(key, value.GetType(), null)),
    };

    private static GgufValueType InferScalar(string key, Type t, System.Array? array)
    {
        if (t == typeof(object) && array is not null)
        {
            return GgufValueType.Array; // array of arrays
        }
        return Type.GetTypeCode(t) switch
        {
            TypeCode.Byte => GgufValueType.UInt8,
            TypeCode.SByte => GgufValueType.Int8,
            TypeCode.UInt16 => GgufValueType.UInt16,
            TypeCode.Int16 => GgufValueType.Int16,
            TypeCode.UInt32 => GgufValueType.UInt32,
            TypeCode.Int32 => GgufValueType.Int32,
            TypeCode.UInt64 => GgufValueType.UInt64,
            TypeCode.Int64 => GgufValueType.Int64,
            TypeCode.Single => GgufValueType.Float32,
            TypeCode.Double => GgufValueType.Float64,
            TypeCode.Boolean => GgufValueType.Bool,
            TypeCode.String => GgufValueType.String,
            _ => throw new ArgumentException($"metadata '{key}': values of type {t} have no GGUF equivalent"),
        };
    }

    private static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    private static void WriteValue(BinaryWriter w, string key, GgufValueKind kind, object value)
    {
        if (kind.Type != GgufValueType.Array)
        {
            WriteScalar(w, key, kind.Type, value);
            return;
        }
        if (value is not System.Array array)
        {
            throw new ArgumentException($"metadata '{key}' is declared an array but holds {value.GetType()}");
        }
        var elem = kind.ElementType!.Value;
        w.Write((uint)elem);
        w.Write((ulong)array.Length);
        foreach (var item in array)
        {
            if (elem == GgufValueType.Array)
            {
                var inner = Infer(key, item!);
                if (inner.Type != GgufValueType.Array)
                {
                    throw new ArgumentException($"metadata '{key}' is an array of arrays but holds {item?.GetType()}");
                }
                WriteValue(w, key, inner, item!);
            }
            else
            {
                WriteScalar(w, key, elem, item!);
            }
        }
    }

    private static void WriteScalar(BinaryWriter w, string key, GgufValueType type, object value)
    {
        try
        {
            switch (type)
            {
                case GgufValueType.UInt8: w.Write(checked((byte)ToInteger(value))); break;
                case GgufValueType.Int8: w.Write(checked((sbyte)ToInteger(value))); break;
                case GgufValueType.UInt16: w.Write(checked((ushort)ToInteger(value))); break;
                case GgufValueType.Int16: w.Write(checked((short)ToInteger(value))); break;
                case GgufValueType.UInt32: w.Write(checked((uint)ToInteger(value))); break;
                case GgufValueType.Int32: w.Write(checked((int)ToInteger(value))); break;
                case GgufValueType.UInt64: w.Write(value is ulong u ? u : checked((ulong)ToInteger(value))); break;
                case GgufValueType.Int64: w.Write(checked((long)ToInteger(value))); break;
                case GgufValueType.Float32: w.Write(value is float f ? f : value is double d ? (float)d : throw Bad()); break;
                case GgufValueType.Float64: w.Write(value is double d2 ? d2 : value is float f2 ? f2 : throw Bad()); break;
                case GgufValueType.Bool: w.Write(value is bool b ? b : throw Bad()); break;
                case GgufValueType.String: WriteString(w, value as string ?? throw Bad()); break;
                default: throw new ArgumentException($"metadata '{key}': invalid GGUF value type {type}");
            }
        }
        catch (OverflowException)
        {
            throw new ArgumentException($"metadata '{key}': value {value} does not fit in {type}");
        }

        ArgumentException Bad() => new($"metadata '{key}': a {value.GetType()} value cannot be stored as {type}");

        decimal ToInteger(object v) => v switch
        {
            byte or sbyte or short or ushort or int or uint or long or ulong => Convert.ToDecimal(v, null),
            _ => throw Bad(),
        };
    }
}
