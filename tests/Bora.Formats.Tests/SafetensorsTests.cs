using System.Buffers.Binary;
using System.Text;
using Bora.Formats.Safetensors;
using Bora.Numerics;

namespace Bora.Formats.Tests;

public sealed class SafetensorsTests : IDisposable
{
    private readonly string _dir = TestPaths.NewTempDir("st");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static float[] Ramp(int n, float phase) => Enumerable.Range(0, n).Select(i => MathF.Cos(i * 0.21f + phase)).ToArray();

    private static List<TensorData> SampleTensors() =>
    [
        TensorData.FromFloat32("model.embed_tokens.weight", DType.F32, [8, 4], Ramp(32, 0)),
        TensorData.FromFloat32("model.norm.weight", DType.F16, [4], Ramp(4, 1)),
        TensorData.FromFloat32("lm_head.weight", DType.BF16, [8, 4], Ramp(32, 2)),
        TensorData.FromFloat32("model.layers.0.mlp.down_proj.weight", DType.F32, [3, 5], Ramp(15, 3)),
    ];

    private static void AssertSameTensors(IReadOnlyList<TensorData> expected, ITensorStore store)
    {
        Assert.Equal(expected.Count, store.Tensors.Count);
        foreach (var t in expected)
        {
            Assert.True(store.TryGetTensor(t.Name, out var info), t.Name);
            Assert.Equal(t.Type, info.Type);
            Assert.Equal(t.Shape, info.Shape);
            Assert.Equal(t.Bytes.ToArray(), store.GetBytes(info).ToArray());
            Assert.Equal(info.ElementCount, store.ReadFloat32(info).Length);
        }
    }

    [Fact]
    public void Single_file_round_trip_with_metadata()
    {
        string path = Path.Combine(_dir, "model.safetensors");
        var tensors = SampleTensors();
        SafetensorsWriter.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        Assert.False(File.Exists(path + ".tmp"));
        var bytes = File.ReadAllBytes(path);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0UL, n % 8); // HF pads the header to 8 bytes
        string header = Encoding.UTF8.GetString(bytes, 8, (int)n);
        Assert.StartsWith("{\"__metadata__\":{\"format\":\"pt\"},\"model.embed_tokens.weight\":{\"dtype\":\"F32\",\"shape\":[8,4],\"data_offsets\":[0,128]}", header);

        using var f = SafetensorsFile.Open(path);
        Assert.Equal("pt", f.Metadata["format"]);
        AssertSameTensors(tensors, f);
        Assert.Equal(Ramp(32, 0), f.ReadFloat32(f.Tensors[0]));
        Assert.Equal(8 + (long)n, f.Tensors[0].Offset);
        // F16 / BF16 values come back within their rounding.
        Assert.True(f.TryGetTensor("lm_head.weight", out var lm));
        var lmValues = f.ReadFloat32(lm);
        var want = Ramp(32, 2);
        for (int i = 0; i < 32; i++)
        {
            Assert.True(MathF.Abs(lmValues[i] - want[i]) <= MathF.Abs(want[i]) / 256, "BF16 relative rounding 2^-8");
        }
    }

    [Fact]
    public void Sharded_round_trip_through_store_open()
    {
        string folder = Path.Combine(_dir, "hf");
        var tensors = SampleTensors();
        string index = SafetensorsWriter.WriteSharded(folder, tensors, maxShardBytes: 130);
        Assert.Equal(Path.Combine(folder, "model.safetensors.index.json"), index);
        var shardFiles = Directory.GetFiles(folder, "*.safetensors").Select(f => Path.GetFileName(f)!).Order().ToArray();
        Assert.Equal(["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"], shardFiles);

        using var store = SafetensorsStore.Open(folder);
        var sharded = Assert.IsType<ShardedSafetensors>(store);
        Assert.Equal(3, sharded.Shards.Count);
        AssertSameTensors(tensors, store);
        var map = ShardedSafetensors.ReadWeightMap(index);
        Assert.Equal("model-00003-of-00003.safetensors", map.Single(m => m.Tensor == "model.layers.0.mlp.down_proj.weight").Shard);
        Assert.Contains("\"total_size\": " + tensors.Sum(t => t.Bytes.Length), File.ReadAllText(index));
    }

    [Fact]
    public void Store_open_picks_single_files_and_unindexed_folders()
    {
        var tensors = SampleTensors();
        string single = Path.Combine(_dir, "single");
        Directory.CreateDirectory(single);
        SafetensorsWriter.Write(Path.Combine(single, "consolidated.safetensors"), tensors);
        using (var s = SafetensorsStore.Open(single))
        {
            Assert.IsType<SafetensorsFile>(s);
            AssertSameTensors(tensors, s);
        }
        string two = Path.Combine(_dir, "two");
        Directory.CreateDirectory(two);
        SafetensorsWriter.Write(Path.Combine(two, "a.safetensors"), tensors.Take(2));
        SafetensorsWriter.Write(Path.Combine(two, "b.safetensors"), tensors.Skip(2));
        using (var s = SafetensorsStore.Open(two))
        {
            Assert.IsType<ShardedSafetensors>(s);
            AssertSameTensors(tensors, s);
        }
        SafetensorsWriter.Write(Path.Combine(two, "c.safetensors"), tensors.Take(1));
        var e = Assert.Throws<ModelFormatException>(() => SafetensorsStore.Open(two));
        Assert.Contains("model.embed_tokens.weight", e.Message);
        Assert.Contains(two, e.Message);
        string empty = Path.Combine(_dir, "empty");
        Directory.CreateDirectory(empty);
        Assert.Contains("no *.safetensors", Assert.Throws<ModelFormatException>(() => SafetensorsStore.Open(empty)).Message);
    }

    [Fact]
    public void Mistral_index_parses_and_missing_shards_are_named()
    {
        string index = TestPaths.Shared("tokenizers", "mistral", "Mistral-7B-v0.1", "model.safetensors.index.json");
        if (!File.Exists(index))
        {
            Console.WriteLine("skipped: " + index + " is absent");
            return;
        }
        var map = ShardedSafetensors.ReadWeightMap(index);
        Assert.Equal(291, map.Count); // 32 layers * 9 + embed + norm + lm_head
        Assert.Equal(2, map.Select(m => m.Shard).Distinct().Count());
        var e = Assert.Throws<ModelFormatException>(() => ShardedSafetensors.Open(index));
        Assert.StartsWith(index + ": ", e.Message);
        Assert.Contains("shard file 'model-0000", e.Message);
        Assert.Contains("-of-00002.safetensors'", e.Message);
        Assert.Contains("is missing", e.Message);
    }

    // ---- bad files -----------------------------------------------------------------------------------------

    private static byte[] RawFile(string header, int dataBytes, ulong? lengthOverride = null)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var b = new byte[8 + h.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(b, lengthOverride ?? (ulong)h.Length);
        h.CopyTo(b, 8);
        return b;
    }

    private void AssertBad(byte[] bytes, params string[] fragments)
    {
        string path = Path.Combine(_dir, $"bad-{Guid.NewGuid():N}.safetensors");
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<ModelFormatException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.StartsWith(path + ": ", e.Message);
        foreach (var f in fragments)
        {
            Assert.Contains(f, e.Message);
        }
    }

    [Fact]
    public void Raw_baseline_opens()
    {
        string path = Path.Combine(_dir, "ok.safetensors");
        File.WriteAllBytes(path, RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8));
        using var f = SafetensorsFile.Open(path);
        Assert.Equal(new long[] { 2 }, f.Tensors[0].Shape);
    }

    [Fact]
    public void Too_short() => AssertBad(new byte[5], "truncated");

    [Fact]
    public void Header_length_beyond_file() => AssertBad(RawFile("{}", 0, lengthOverride: 1UL << 50), "header length 1125899906842624 exceeds");

    [Fact]
    public void Header_not_json() => AssertBad(RawFile("{not json", 0), "not valid JSON");

    [Fact]
    public void Unsupported_dtype_names_tensor() =>
        AssertBad(RawFile("{\"model.ids\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8), "tensor 'model.ids' has dtype I64", "not supported");

    [Fact]
    public void Offsets_beyond_data() =>
        AssertBad(RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8), "tensor 'a' data_offsets [0, 16)", "beyond the end");

    [Fact]
    public void Size_does_not_match_shape() =>
        AssertBad(RawFile("{\"a\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8), "tensor 'a' F16 shape [3] needs 6 bytes", "span 8");

    [Fact]
    public void Overlapping_tensors() =>
        AssertBad(RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12), "'a'", "'b'", "overlap");

    [Fact]
    public void Negative_dimension() =>
        AssertBad(RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8), "tensor 'a' shape entry 0 is -2");

    [Fact]
    public void Duplicate_names() =>
        AssertBad(RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8), "duplicate tensor name 'a'");

    [Fact]
    public void Missing_offsets() => AssertBad(RawFile("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4), "tensor 'a' data_offsets");

    [Fact]
    public void Index_tensor_absent_from_its_shard()
    {
        string folder = Path.Combine(_dir, "broken");
        string index = SafetensorsWriter.WriteSharded(folder, SampleTensors(), long.MaxValue);
        File.WriteAllText(index, File.ReadAllText(index).Replace("\"lm_head.weight\"", "\"lm_head.ghost\""));
        var e = Assert.Throws<ModelFormatException>(() => ShardedSafetensors.Open(index));
        Assert.StartsWith(index + ": ", e.Message);
        Assert.Contains("tensor 'lm_head.ghost' is mapped to shard 'model-00001-of-00001.safetensors' but that shard does not contain it", e.Message);
    }

    [Fact]
    public void Index_without_weight_map()
    {
        string index = Path.Combine(_dir, "model.safetensors.index.json");
        File.WriteAllText(index, "{\"metadata\":{}}");
        Assert.Contains("weight_map", Assert.Throws<ModelFormatException>(() => SafetensorsStore.Open(index)).Message);
    }

    [Fact]
    public void Writer_rejects_quantized_types() =>
        Assert.Throws<ArgumentException>(() => SafetensorsWriter.Write(Path.Combine(_dir, "q.safetensors"),
            [TensorData.FromFloat32("q", DType.Q8_0, [32], new float[32])]));
}
