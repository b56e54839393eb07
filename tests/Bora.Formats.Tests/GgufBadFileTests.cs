using System.Text;
using Bora.Formats.Gguf;

namespace Bora.Formats.Tests;

/// <summary>Every GGUF validation case: a hand-built corrupt file must raise ModelFormatException naming file and problem.</summary>
public sealed class GgufBadFileTests : IDisposable
{
    private readonly string _dir = TestPaths.NewTempDir("gguf-bad");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>Builds GGUF bytes field by field, independently of GgufWriter, so fields can be corrupted.</summary>
    private sealed class Raw
    {
        public uint Magic = 0x46554747;
        public uint Version = 3;
        public ulong? TensorCount;
        public ulong? KvCount;
        public int Alignment = 32;
        public int DataBytes = 64;
        public readonly List<byte[]> Kvs = [];
        public readonly List<byte[]> Infos = [];

        public Raw Kv(string key, uint type, Action<BinaryWriter> value)
        {
            Kvs.Add(Bytes(w => { Str(w, key); w.Write(type); value(w); }));
            return this;
        }

        public Raw Tensor(string name, long[] ne, uint type, ulong offset, uint? nDims = null)
        {
            Infos.Add(Bytes(w =>
            {
                Str(w, name);
                w.Write(nDims ?? (uint)ne.Length);
                foreach (var d in ne)
                {
                    w.Write(d);
                }
                w.Write(type);
                w.Write(offset);
            }));
            return this;
        }

        public byte[] Build() => Bytes(w =>
        {
            w.Write(Magic);
            w.Write(Version);
            w.Write(TensorCount ?? (ulong)Infos.Count);
            w.Write(KvCount ?? (ulong)Kvs.Count);
            Kvs.ForEach(w.Write);
            Infos.ForEach(w.Write);
            while (w.BaseStream.Position % Alignment != 0)
            {
                w.Write((byte)0);
            }
            w.Write(new byte[DataBytes]);
        });

        public static void Str(BinaryWriter w, string s)
        {
            var b = Encoding.UTF8.GetBytes(s);
            w.Write((ulong)b.Length);
            w.Write(b);
        }

        private static byte[] Bytes(Action<BinaryWriter> f)
        {
            using var ms = new MemoryStream();
            using (var w = new BinaryWriter(ms))
            {
                f(w);
            }
            return ms.ToArray();
        }
    }

    private ModelFormatException AssertBad(byte[] bytes, params string[] fragments)
    {
        string path = Path.Combine(_dir, $"bad-{Guid.NewGuid():N}.gguf");
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<ModelFormatException>(() => GgufFile.Open(path).Dispose());
        Assert.StartsWith(path + ": ", e.Message);
        foreach (var f in fragments)
        {
            Assert.Contains(f, e.Message);
        }
        return e;
    }

    private static Raw F32Tensor(string name = "t", ulong offset = 0) => new Raw().Tensor(name, [16], 0, offset);

    [Fact]
    public void Valid_baseline_opens() // makes sure the builder itself produces good files
    {
        string path = Path.Combine(_dir, "ok.gguf");
        File.WriteAllBytes(path, F32Tensor().Kv("general.architecture", 8, w => Raw.Str(w, "llama")).Build());
        using var g = GgufFile.Open(path);
        Assert.Equal("llama", g.GetString("general.architecture"));
        Assert.Equal(new long[] { 16 }, g.Tensors[0].Shape);
    }

    [Fact]
    public void Missing_file() =>
        Assert.Contains("not found", Assert.Throws<ModelFormatException>(() => GgufFile.Open(Path.Combine(_dir, "nope.gguf"))).Message);

    [Fact]
    public void Bad_magic() => AssertBad(new Raw { Magic = 0x46554748 }.Build(), "not a GGUF file");

    [Fact]
    public void Version_1_is_rejected() => AssertBad(new Raw { Version = 1 }.Build(), "version 1 is not supported");

    [Fact]
    public void Version_4_is_rejected() => AssertBad(new Raw { Version = 4 }.Build(), "version 4 is not supported");

    [Fact]
    public void Big_endian_is_rejected() => AssertBad(new Raw { Version = 0x03000000 }.Build(), "big-endian");

    [Fact]
    public void Version_2_is_accepted()
    {
        string path = Path.Combine(_dir, "v2.gguf");
        File.WriteAllBytes(path, new Raw { Version = 2 }.Build());
        using var g = GgufFile.Open(path);
        Assert.Equal(2u, g.Version);
    }

    [Fact]
    public void Shorter_than_header() => AssertBad(new Raw().Build()[..20], "truncated", "less than the 24-byte");

    [Fact]
    public void Truncated_inside_metadata()
    {
        var bytes = new Raw { DataBytes = 0 }.Kv("general.name", 8, w => Raw.Str(w, "a fairly long model name")).Build();
        AssertBad(bytes[..60], "truncated", "general.name");
    }

    [Fact]
    public void Implausible_tensor_count() => AssertBad(new Raw { TensorCount = 1UL << 40 }.Build(), "tensor count 1099511627776", "implausible");

    [Fact]
    public void Implausible_metadata_count() => AssertBad(new Raw { KvCount = ulong.MaxValue }.Build(), "metadata count", "implausible");

    [Fact]
    public void String_length_beyond_file() =>
        AssertBad(new Raw().Kv("k", 8, w => { w.Write(1UL << 40); }).Build(), "value of metadata key 'k'", "1099511627776 bytes", "remain");

    [Fact]
    public void Key_length_beyond_file()
    {
        var raw = new Raw();
        raw.Kvs.Add(BitConverter.GetBytes(ulong.MaxValue - 5));
        AssertBad(raw.Build(), "key of metadata entry 0", "remain");
    }

    [Fact]
    public void Array_length_beyond_file() =>
        AssertBad(new Raw().Kv("arr", 9, w => { w.Write(4u); w.Write(1UL << 32); }).Build(), "'arr'", "4294967296 array elements", "remain");

    [Fact]
    public void Invalid_value_type() => AssertBad(new Raw().Kv("weird", 13, w => w.Write(0)).Build(), "'weird'", "invalid GGUF value type 13");

    [Fact]
    public void Invalid_bool() => AssertBad(new Raw().Kv("flag", 7, w => w.Write((byte)2)).Build(), "flag", "expected 0 or 1");

    [Fact]
    public void Duplicate_metadata_key() =>
        AssertBad(new Raw().Kv("k", 4, w => w.Write(1u)).Kv("k", 4, w => w.Write(2u)).Build(), "duplicate metadata key 'k'");

    [Fact]
    public void Alignment_not_a_power_of_two() =>
        AssertBad(new Raw().Kv("general.alignment", 4, w => w.Write(48u)).Build(), "general.alignment is 48", "power of two");

    [Fact]
    public void Zero_dims() => AssertBad(new Raw().Tensor("blk.0.w", [], 0, 0).Build(), "tensor 'blk.0.w' has n_dims 0", "1 to 4");

    [Fact]
    public void Five_dims() => AssertBad(new Raw().Tensor("t5", [1, 1, 1, 1, 1], 0, 0).Build(), "tensor 't5' has n_dims 5");

    [Fact]
    public void Zero_dimension() => AssertBad(new Raw().Tensor("z", [16, 0], 0, 0).Build(), "tensor 'z' dimension ne[1] is 0", "positive");

    [Fact]
    public void Negative_dimension() => AssertBad(new Raw().Tensor("neg", [-16], 0, 0).Build(), "tensor 'neg' dimension ne[0] is -16");

    [Fact]
    public void Element_count_overflow() =>
        AssertBad(new Raw().Tensor("huge", [1L << 32, 1L << 32], 0, 0).Build(), "tensor 'huge'", "more elements than a 64-bit count");

    [Fact]
    public void Byte_size_overflow() =>
        AssertBad(new Raw().Tensor("big", [1L << 31, 1L << 31], 0, 0).Build(), "tensor 'big'", "beyond 64 bits");

    [Fact]
    public void Row_not_whole_blocks() =>
        AssertBad(new Raw { DataBytes = 128 }.Tensor("q", [33, 2], 8, 0).Build(), "tensor 'q' of type Q8_0 has 33 elements per row", "32-element blocks");

    [Fact]
    public void Unsupported_type_names_tensor_and_id() =>
        AssertBad(new Raw().Tensor("blk.0.attn_q.weight", [32], 3, 0).Build(), "tensor 'blk.0.attn_q.weight'", "ggml type id 3 (Q4_1)", "not supported");

    [Fact]
    public void Unaligned_offset() => AssertBad(F32Tensor("u", 4).Build(), "tensor 'u' data offset 4", "alignment 32");

    [Fact]
    public void Data_beyond_end_of_file()
    {
        var raw = new Raw { DataBytes = 64 }.Tensor("blk.0.attn_q.weight", [16], 0, 0).Tensor("tail", [16], 0, 64);
        var e = AssertBad(raw.Build(), "tensor 'tail' data [offset", "lies beyond the end of the file");
        Assert.Contains($"({raw.Build().Length} bytes)", e.Message);
    }

    [Fact]
    public void Overlapping_tensors() =>
        AssertBad(new Raw { DataBytes = 128 }.Tensor("a", [32], 0, 0).Tensor("b", [16], 0, 96 - 64).Build(), "tensors 'a'", "'b'", "overlap");

    [Fact]
    public void Duplicate_tensor_names() =>
        AssertBad(new Raw { DataBytes = 128 }.Tensor("same", [16], 0, 0).Tensor("same", [16], 0, 64).Build(), "duplicate tensor name 'same'");
}
