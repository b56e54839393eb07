using Bora.Formats.Gguf;
using Bora.Numerics;
using Bora.Numerics.Quant;

namespace Bora.Formats.Tests;

public sealed class GgufTests : IDisposable
{
    private readonly string _dir = TestPaths.NewTempDir("gguf");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static float[] Ramp(int n, float scale) => Enumerable.Range(0, n).Select(i => MathF.Sin(i * 0.37f) * scale).ToArray();

    [Fact]
    public void Write_then_read_round_trips_every_metadata_type_and_tensor_dtype()
    {
        string path = Path.Combine(_dir, "all.gguf");
        var w = new GgufWriter()
            .AddMetadata("u8", (byte)200)
            .AddMetadata("i8", (sbyte)-100)
            .AddMetadata("u16", (ushort)60000)
            .AddMetadata("i16", (short)-30000)
            .AddMetadata("u32", 4_000_000_000u)
            .AddMetadata("i32", -2_000_000_000)
            .AddMetadata("u64", ulong.MaxValue)
            .AddMetadata("u64small", 5UL)
            .AddMetadata("i64", long.MinValue)
            .AddMetadata("f32", 1.5f)
            .AddMetadata("f64", Math.PI)
            .AddMetadata("bool", true)
            .AddMetadata("str", "héllo ✓")
            .AddMetadata("explicit_u32", 7L, GgufValueType.UInt32)
            .AddMetadata("arr_str", new[] { "a", "", "ü" })
            .AddMetadata("arr_i32", new[] { -1, 2, int.MaxValue })
            .AddMetadata("arr_u8", new byte[] { 0, 255 })
            .AddMetadata("arr_i64_as_i16", new long[] { -5, 5 }, GgufValueType.Array, GgufValueType.Int16)
            .AddMetadata("arr_f32", new[] { 0.25f, -1f })
            .AddMetadata("arr_f64", new[] { 1e300, -2.0 })
            .AddMetadata("arr_bool", new[] { true, false })
            .AddMetadata("arr_empty", Array.Empty<float>())
            .AddMetadata("arr_nested", new object[] { new long[] { 1, 2 }, new[] { "x" } });
        var dtypes = new[] { DType.F32, DType.F16, DType.BF16, DType.Q8_0, DType.Q4_0, DType.Q4_K, DType.Q6_K };
        var expected = new Dictionary<string, TensorData>();
        foreach (var t in dtypes)
        {
            var shape = new long[] { 3, 256 };
            var data = TensorData.FromFloat32($"w.{t}", t, shape, Ramp(768, 2f));
            expected[data.Name] = data;
            w.AddTensor(data);
        }
        w.AddTensor(TensorData.FromFloat32("odd.f32", DType.F32, [7], Ramp(7, 1f))); // 28 bytes: needs padding
        w.AddTensor(TensorData.FromFloat32("four.d", DType.F16, [2, 1, 3, 32], Ramp(192, 1f)));
        w.Write(path);
        Assert.False(File.Exists(path + ".tmp"));

        using var g = GgufFile.Open(path);
        Assert.Equal(3u, g.Version);
        Assert.Equal(32, g.Alignment);
        Assert.Equal(0, g.DataOffset % 32);
        var m = g.Metadata;
        Assert.Equal(200L, m["u8"]);
        Assert.Equal(-100L, m["i8"]);
        Assert.Equal(60000L, m["u16"]);
        Assert.Equal(-30000L, m["i16"]);
        Assert.Equal(4_000_000_000L, m["u32"]);
        Assert.Equal(-2_000_000_000L, m["i32"]);
        Assert.Equal(ulong.MaxValue, m["u64"]);
        Assert.Equal(5L, m["u64small"]);
        Assert.Equal(long.MinValue, m["i64"]);
        Assert.Equal(1.5f, m["f32"]);
        Assert.Equal(Math.PI, m["f64"]);
        Assert.Equal(true, m["bool"]);
        Assert.Equal("héllo ✓", m["str"]);
        Assert.Equal(7L, m["explicit_u32"]);
        Assert.Equal(new[] { "a", "", "ü" }, m["arr_str"]);
        Assert.Equal(new long[] { -1, 2, int.MaxValue }, m["arr_i32"]);
        Assert.Equal(new long[] { 0, 255 }, m["arr_u8"]);
        Assert.Equal(new long[] { -5, 5 }, m["arr_i64_as_i16"]);
        Assert.Equal(new[] { 0.25f, -1f }, m["arr_f32"]);
        Assert.Equal(new[] { 1e300, -2.0 }, m["arr_f64"]);
        Assert.Equal(new[] { true, false }, m["arr_bool"]);
        Assert.Equal(Array.Empty<float>(), m["arr_empty"]);
        var nested = Assert.IsType<object[]>(m["arr_nested"]);
        Assert.Equal(new long[] { 1, 2 }, nested[0]);
        Assert.Equal(new[] { "x" }, nested[1]);
        // Stored kinds are reported.
        Assert.Equal(new GgufValueKind(GgufValueType.UInt16), g.MetadataKinds["u16"]);
        Assert.Equal(new GgufValueKind(GgufValueType.UInt32), g.MetadataKinds["explicit_u32"]);
        Assert.Equal(new GgufValueKind(GgufValueType.Array, GgufValueType.Int16), g.MetadataKinds["arr_i64_as_i16"]);
        Assert.Equal(new GgufValueKind(GgufValueType.Array, GgufValueType.Array), g.MetadataKinds["arr_nested"]);
        // Typed accessors.
        Assert.Equal("héllo ✓", g.GetString("str"));
        Assert.Equal(4_000_000_000L, g.GetInt64("u32"));
        Assert.Equal(1.5f, g.GetFloat32("f32"));
        Assert.Equal((float)Math.PI, g.GetFloat32("f64"));
        Assert.True(g.GetBool("bool"));
        Assert.Equal(new long[] { -1, 2, int.MaxValue }, g.GetInt64Array("arr_i32"));
        Assert.Equal(new[] { 0.25f, -1f }, g.GetFloat32Array("arr_f32"));
        Assert.Equal(new[] { "a", "", "ü" }, g.GetStringArray("arr_str"));
        Assert.False(g.TryGetInt64("absent", out _));
        Assert.True(g.TryGetString("str", out var s) && s == "héllo ✓");

        // Tensors: order, shapes (outermost-first), contiguous aligned offsets, bytes and values.
        Assert.Equal(dtypes.Length + 2, g.Tensors.Count);
        long next = g.DataOffset;
        foreach (var info in g.Tensors)
        {
            Assert.Equal(next, info.Offset);
            next += (info.ByteLength + 31) / 32 * 32;
        }
        Assert.Equal(next, new FileInfo(path).Length); // the last tensor is padded too
        foreach (var (name, data) in expected)
        {
            Assert.True(g.TryGetTensor(name, out var info));
            Assert.Equal(data.Type, info.Type);
            Assert.Equal(new long[] { 3, 256 }, info.Shape);
            Assert.Equal(data.Bytes.ToArray(), g.GetBytes(info).ToArray());
            var want = new float[768];
            BlockDequantizer.ToFloat32Scalar(data.Type, data.Bytes.Span, want);
            Assert.Equal(want, g.ReadFloat32(info));
        }
        Assert.True(g.TryGetTensor("four.d", out var four));
        Assert.Equal(new long[] { 2, 1, 3, 32 }, four.Shape);
        Assert.Equal(Ramp(7, 1f), g.ReadFloat32(g.Tensors.Single(t => t.Name == "odd.f32")));
    }

    [Fact]
    public void Ne_order_is_innermost_first_on_disk()
    {
        string path = Path.Combine(_dir, "ne.gguf");
        new GgufWriter().AddTensor(TensorData.FromFloat32("t", DType.F32, [5, 64], new float[320])).Write(path);
        var bytes = File.ReadAllBytes(path);
        // header 24 + name (8 + 1) + n_dims 4 = 37: ne[0] = 64 (innermost), ne[1] = 5.
        Assert.Equal(2u, BitConverter.ToUInt32(bytes, 33));
        Assert.Equal(64L, BitConverter.ToInt64(bytes, 37));
        Assert.Equal(5L, BitConverter.ToInt64(bytes, 45));
    }

    [Fact]
    public void Custom_alignment_is_recorded_and_used()
    {
        string path = Path.Combine(_dir, "align.gguf");
        new GgufWriter(64)
            .AddTensor(TensorData.FromFloat32("a", DType.F32, [3], [1, 2, 3]))
            .AddTensor(TensorData.FromFloat32("b", DType.Q8_0, [32], Ramp(32, 1)))
            .Write(path);
        using var g = GgufFile.Open(path);
        Assert.Equal(64, g.Alignment);
        Assert.Equal(new GgufValueKind(GgufValueType.UInt32), g.MetadataKinds["general.alignment"]);
        Assert.All(g.Tensors, t => Assert.Equal(0, t.Offset % 64));
        Assert.Equal(g.DataOffset + 64, g.Tensors[1].Offset);
    }

    [Fact]
    public void Metadata_copies_with_its_stored_types()
    {
        string a = Path.Combine(_dir, "a.gguf"), b = Path.Combine(_dir, "b.gguf");
        new GgufWriter().AddMetadata("k", (ushort)3).AddMetadata("arr", new uint[] { 1, 2 }).Write(a);
        using (var src = GgufFile.Open(a))
        {
            new GgufWriter().AddMetadataFrom(src).Write(b);
        }
        Assert.Equal(File.ReadAllBytes(a), File.ReadAllBytes(b));
    }

    [Fact]
    public void Stories260K_opens()
    {
        string path = TestPaths.Shared("models", "stories260K", "stories260K.gguf");
        if (!File.Exists(path))
        {
            Console.WriteLine("skipped: " + path + " is absent");
            return;
        }
        using var g = GgufFile.Open(path);
        Assert.Equal(3u, g.Version);
        Assert.Equal(48, g.Tensors.Count);
        Assert.All(g.Tensors, t => Assert.Equal(DType.F32, t.Type));
        Assert.Equal("llama", g.GetString("general.architecture"));
        Assert.Equal(512, g.GetStringArray("tokenizer.ggml.tokens").Length);
        Assert.True(g.TryGetTensor("token_embd.weight", out var emb));
        Assert.Equal(new long[] { 512, 64 }, emb.Shape);
        var values = g.ReadFloat32(emb);
        Assert.Equal(512 * 64, values.Length);
        Assert.All(values, v => Assert.True(float.IsFinite(v)));
        Assert.Contains(values, v => v != 0);
    }

    [Fact]
    public void Typed_accessor_errors_name_file_key_and_expected_type()
    {
        string path = Path.Combine(_dir, "typed.gguf");
        new GgufWriter().AddMetadata("n", 5u).Write(path);
        using var g = GgufFile.Open(path);
        var e = Assert.Throws<ModelFormatException>(() => g.GetString("n"));
        Assert.Contains(path, e.Message);
        Assert.Contains("'n'", e.Message);
        Assert.Contains("expected a string", e.Message);
        e = Assert.Throws<ModelFormatException>(() => g.GetFloat32("missing.key"));
        Assert.Contains("'missing.key' is missing", e.Message);
        Assert.Contains(path, e.Message);
    }
}
