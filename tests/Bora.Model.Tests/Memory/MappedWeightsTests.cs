using Bora.Formats;
using Bora.Formats.Gguf;
using Bora.Loading;
using Bora.Model.Tests.QuantKernels;
using Bora.Numerics;
using Bora.Numerics.Quant;
using Xunit.Abstractions;

namespace Bora.Model.Tests.Memory;

/// <summary>Loaded models read GGUF blocks and F16 / BF16 values in place from a memory mapping: no copy, same results.</summary>
[Collection(AllocationMeasuringCollection.Name)]
public sealed class MappedWeightsTests(ITestOutputHelper output)
{
    /// <summary>
    /// Managed bytes a load may allocate, as a fraction of the matrices' bytes: the loader's own objects (tensor table,
    /// float32 norms, vocabulary, RoPE table, scratch) are a few per cent for these models; a copy of the blocks alone
    /// would be 100%.
    /// </summary>
    private const double MaxAllocatedFraction = 0.25;

    /// <summary>F16 / BF16 weights: float32 products over the same widened values, summed in another order (see HalfMatrixTests).</summary>
    private const float HalfLogitTolerance = 1e-4f;

    /// <summary>
    /// Logits of one model from two float32 summation orders of the same exact integer block sums, relative to the
    /// largest logit: each order rounds about 2^-24 per addition, over a few hundred additions per output and a
    /// handful of layers; 1e-5 leaves room (observed: about 4e-7).
    /// </summary>
    private const float SummationOrderTolerance = 1e-5f;

    [Theory]
    [InlineData(DType.Q4_0)]
    [InlineData(DType.Q8_0)]
    [InlineData(DType.Q4_K)]
    public void QuantizedMatricesReadTheMappedFileWithoutCopies(DType type)
    {
        string path = TempFile(type);
        try
        {
            QuantizedModelTests.WriteTinyModel(path, type, seed: 5);
            using var store = GgufFile.Open(path);
            var config = ModelConfigLoader.FromGguf(store.Metadata, path);
            long matrixBytes = store.Tensors.Where(t => t.Shape.Length == 2).Sum(t => t.ByteLength);

            using var mapper = new WeightMapper(packAtLoad: false);
            long before = GC.GetTotalAllocatedBytes(precise: true);
            var mapped = WeightLoader.Load(store, config, mapper.Create);
            long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
            output.WriteLine($"{type}: matrices {matrixBytes} bytes, file {new FileInfo(path).Length}, allocated by the load {allocated} bytes ({(double)allocated / matrixBytes:P1})");

            Assert.Equal(matrixBytes, mapper.MappedBytes);
            Assert.Equal(0, mapper.CopiedBytes);
            Assert.True(allocated < MaxAllocatedFraction * matrixBytes, $"the load allocated {allocated} bytes for {matrixBytes} bytes of matrices");
            var wq = Assert.IsType<QuantizedMatrix>(mapped.Layers[1].Wq);
            Assert.Equal(Path.GetFullPath(path), Path.GetFullPath(wq.Storage.Path!));
            Assert.Same(wq.Storage, Assert.IsType<QuantizedMatrix>(mapped.Output).Storage);
            Assert.Equal(store.TryGetTensor("blk.1.attn_q.weight", out var info) ? info.Offset : -1, wq.StorageOffset);

            // Same kernels over the same bytes: bit-identical logits to matrices over private copies.
            var copied = WeightLoader.Load(store, config, (s, src) =>
                new QuantizedMatrix(src.Tensor.Type, s.GetBytes(src.Tensor).ToArray(), src.Rows, src.Cols));
            var tokens = TestModels.Tokens(9, config.VocabSize, seed: 6);
            Assert.Equal(TestModels.Prefill(new Transformer(copied), tokens), TestModels.Prefill(new Transformer(mapped), tokens));

            mapper.Dispose();
            Assert.Throws<ObjectDisposedException>(() => mapped.Layers[0].Wq.MatVec(new float[config.Dim], new float[mapped.Layers[0].Wq.Rows]));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    public void HalfMatricesReadTheMappedFileAndGiveTheLogitsOfTheWidenedWeights(DType type)
    {
        string path = TempFile(type);
        try
        {
            QuantizedModelTests.WriteTinyModel(path, type, seed: 7);
            using var store = GgufFile.Open(path);
            var config = ModelConfigLoader.FromGguf(store.Metadata, path);
            using var mapper = new WeightMapper();
            var mapped = WeightLoader.Load(store, config, mapper.Create);
            var f32 = WeightLoader.Load(store, config, WeightLoader.ReadF32Matrix);
            Assert.Equal(0, mapper.CopiedBytes);
            var w2 = Assert.IsType<HalfMatrix>(mapped.Layers[0].FeedForward!.W2);
            Assert.Equal(type, w2.Type);
            Assert.NotNull(w2.Storage.Path);

            var tokens = TestModels.Tokens(11, config.VocabSize, seed: 8);
            var expected = TestModels.Prefill(new Transformer(f32), tokens);
            var actual = TestModels.Prefill(new Transformer(mapped), tokens);
            float scale = expected.Max(MathF.Abs);
            TestModels.AssertClose(expected, actual, HalfLogitTolerance * scale, $"{type} mapped vs float32");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void AStoreWhoseBytesAreNotItsFilesBytesIsCopiedNotMapped()
    {
        string path = TempFile(DType.Q4_0);
        try
        {
            QuantizedModelTests.WriteTinyModel(path, DType.Q4_0, seed: 9);
            using var store = GgufFile.Open(path);
            var config = ModelConfigLoader.FromGguf(store.Metadata, path);
            var elsewhere = new RelocatedStore(store);
            using var mapper = new WeightMapper(packAtLoad: false);
            var copied = WeightLoader.Load(elsewhere, config, mapper.Create);
            Assert.Equal(0, mapper.MappedBytes);
            Assert.True(mapper.CopiedBytes > 0);
            Assert.Null(Assert.IsType<QuantizedMatrix>(copied.Layers[0].Wk).Storage.Path);
            using var mapping = new WeightMapper(packAtLoad: false); // the file's rows, as the copy holds them
            var mapped = WeightLoader.Load(store, config, mapping.Create);
            var tokens = TestModels.Tokens(5, config.VocabSize, seed: 10);
            Assert.Equal(TestModels.Prefill(new Transformer(mapped), tokens), TestModels.Prefill(new Transformer(copied), tokens));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void ModelLoaderKeepsTheMappingAndDisposeReleasesIt()
    {
        string vocabulary = TestPaths.Shared("models", "stories260K", "stories260K.gguf");
        if (!File.Exists(vocabulary))
        {
            output.WriteLine($"skipped: {vocabulary} is absent");
            return;
        }
        var config = new ModelConfig
        {
            Dim = 256,
            NLayers = 4,
            NHeads = 8,
            NKvHeads = 2,
            HeadDim = 32,
            HiddenDim = 1024,
            VocabSize = 512,
            NormEps = 1e-5f,
            RopeTheta = 10000f,
            MaxSeqLen = 64,
        };
        string path = TempFile(DType.Q4_0);
        try
        {
            using (var vocab = GgufFile.Open(vocabulary))
            {
                SyntheticGguf.Write(path, config, seed: 11, DType.Q4_0, vocab);
            }
            long fileBytes = new FileInfo(path).Length;
            long before = GC.GetTotalAllocatedBytes(precise: true);
            var loaded = ModelLoader.Load(path);
            long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
            var mapper = loaded.Mapper!;
            output.WriteLine($"Q4_0 4-layer: file {fileBytes} bytes, mapped {mapper.MappedBytes}, packed {mapper.PackedBytes}, allocated by ModelLoader.Load {allocated} bytes ({(double)allocated / fileBytes:P1})");
            Assert.Equal(0, mapper.CopiedBytes);
            Assert.Equal(WeightMapper.DefaultPackAtLoad, mapper.PackAtLoad);
            Assert.True(mapper.MappedBytes + mapper.PackedBytes > fileBytes * 9 / 10, $"mapped {mapper.MappedBytes} and packed {mapper.PackedBytes} of {fileBytes}");
            // Packed: the packed buffers (the matrices' size, up to 63 alignment bytes each) plus one tensor's staging.
            long largest = mapper.PackAtLoad ? new GgufFileInfo(path).Largest : 0;
            Assert.True(allocated < mapper.PackedBytes + 64L * 8 * config.NLayers + largest + MaxAllocatedFraction * fileBytes,
                $"ModelLoader.Load allocated {allocated} bytes for a {fileBytes}-byte file ({mapper.PackedBytes} packed)");

            var logits = TestModels.Prefill(loaded.Model, TestModels.Tokens(4, config.VocabSize, seed: 12));
            Assert.All(logits, v => Assert.True(float.IsFinite(v)));
            var storage = Assert.IsType<QuantizedMatrix>(loaded.Model.Weights.Layers[0].Wo).Storage;
            loaded.Dispose();
            Assert.True(storage.IsDisposed);
            loaded.Dispose(); // idempotent
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>
    /// Packing at load (AVX-512 or not: below it the packed products run their scalar twin): each Q4_0 matrix is read
    /// from the file once into a packed buffer of the same size, nothing is mapped for them, the load allocates about
    /// the packed bytes plus one tensor's staging, the logits equal those of the mapped rows bit for bit (both take the
    /// rows-in-lanes arithmetic when it runs from 1 token), and Dispose releases the packed buffers.
    /// </summary>
    [Fact]
    public void PackedLoadReadsEachMatrixOnceIntoAPackedBufferOfTheSameSize()
    {
        string path = TempFile(DType.Q4_0);
        int saved = QuantDispatch.Q4_0InterleavedMinTokens;
        try
        {
            QuantizedModelTests.WriteTinyModel(path, DType.Q4_0, seed: 15);
            using var store = GgufFile.Open(path);
            var config = ModelConfigLoader.FromGguf(store.Metadata, path);
            long q4Bytes = store.Tensors.Where(t => t.Shape.Length == 2 && t.Type == DType.Q4_0).Sum(t => t.ByteLength);
            long largest = store.Tensors.Where(t => t.Type == DType.Q4_0).Max(t => t.ByteLength);
            Assert.True(q4Bytes > 0);

            var packer = new WeightMapper(packAtLoad: true);
            long before = GC.GetTotalAllocatedBytes(precise: true);
            var packed = WeightLoader.Load(store, config, packer.Create);
            long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
            output.WriteLine($"Q4_0 matrices {q4Bytes} bytes, packed {packer.PackedBytes}, mapped {packer.MappedBytes}, allocated {allocated}");
            Assert.Equal(q4Bytes, packer.PackedBytes);
            Assert.Equal(0, packer.CopiedBytes);
            Assert.True(allocated < q4Bytes + largest + 64L * store.Tensors.Count + MaxAllocatedFraction * q4Bytes, $"the packed load allocated {allocated} bytes");
            var wq = Assert.IsType<QuantizedMatrix>(packed.Layers[1].Wq);
            Assert.Equal(QuantLayout.Groups16, wq.Layout);
            Assert.Null(wq.Storage.Path);

            using var mapper = new WeightMapper(packAtLoad: false);
            var mapped = WeightLoader.Load(store, config, mapper.Create);
            Assert.Equal(QuantLayout.Rows, Assert.IsType<QuantizedMatrix>(mapped.Layers[1].Wq).Layout);
            QuantDispatch.Q4_0InterleavedMinTokens = 1;
            foreach (int n in new[] { 1, 7 })
            {
                var tokens = TestModels.Tokens(n, config.VocabSize, seed: 16 + n);
                var expected = TestModels.Prefill(new Transformer(mapped), tokens);
                var actual = TestModels.Prefill(new Transformer(packed), tokens);
                if (QuantDot.Best == QuantIsa.Avx512)
                {
                    // The GGUF rows take the rows-in-lanes kernels (from 1 token, set above): the packed groups' sequence, same bits.
                    Assert.Equal(expected, actual);
                }
                else
                {
                    // Below AVX-512 the GGUF rows take QuantGemm's kernels, which add the same block terms in another order.
                    TestModels.AssertClose(expected, actual, SummationOrderTolerance * expected.Max(MathF.Abs), $"{n} tokens, packed vs mapped");
                }
            }

            packer.Dispose();
            Assert.True(wq.Storage.IsDisposed);
            Assert.Throws<ObjectDisposedException>(() => wq.MatVec(new float[config.Dim], new float[wq.Rows]));
        }
        finally
        {
            QuantDispatch.Q4_0InterleavedMinTokens = saved;
            File.Delete(path);
        }
    }

    /// <summary>
    /// A Q4_0 / Q8_0 file with an infinite or NaN block scale: the packed load (whose kernels widen scales as finite
    /// halves) stops with an error naming the file, tensor, row and block; the mapped load, whose kernels widen every
    /// half exactly, still loads it (the non-finite scale then reaches the logits as in the block definitions).
    /// </summary>
    [Theory]
    [InlineData(DType.Q4_0, 18, (ushort)0x7C00)]
    [InlineData(DType.Q8_0, 34, (ushort)0xFE00)]
    public void PackedLoadNamesANonFiniteBlockScale(DType type, int blockBytes, ushort scale)
    {
        string path = TempFile(type);
        try
        {
            QuantizedModelTests.WriteTinyModel(path, type, seed: 17);
            const string Name = "blk.1.attn_q.weight";
            long offset;
            using (var original = GgufFile.Open(path))
            {
                Assert.True(original.TryGetTensor(Name, out var info));
                Assert.Equal(type, info.Type);
                long rowBytes = info.ByteLength / info.Shape[1];
                offset = info.Offset + 5 * rowBytes + 1L * blockBytes; // row 5, block 1
            }
            using (var f = File.OpenWrite(path))
            {
                f.Position = offset;
                f.Write(BitConverter.GetBytes(scale));
            }
            using var store = GgufFile.Open(path);
            var config = ModelConfigLoader.FromGguf(store.Metadata, path);
            using var packer = new WeightMapper(packAtLoad: true);
            var ex = Assert.Throws<ModelFormatException>(() => WeightLoader.Load(store, config, packer.Create));
            Assert.StartsWith($"{store.Tensors.First(t => t.Name == Name).SourcePath}: tensor '{Name}': row 5, block 1 has the scale 0x{scale:X4}", ex.Message);
            Assert.Contains("quantize it again from the source weights", ex.Message);

            using var mapper = new WeightMapper(packAtLoad: false);
            Assert.IsType<QuantizedMatrix>(WeightLoader.Load(store, config, mapper.Create).Layers[1].Wq);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>The largest tensor of a GGUF file (the packing's staging buffer).</summary>
    private readonly record struct GgufFileInfo(string Path)
    {
        public long Largest
        {
            get
            {
                using var f = GgufFile.Open(Path);
                return f.Tensors.Max(t => t.ByteLength);
            }
        }
    }

    private static string TempFile(DType type) => Path.Combine(Path.GetTempPath(), $"bora-mapped-{type}-{Environment.ProcessId}-{Guid.NewGuid():N}.gguf");

    /// <summary>The same tensors, but claiming to live in a file that does not exist (as an in-memory store would).</summary>
    private sealed class RelocatedStore(ITensorStore inner) : ITensorStore
    {
        private readonly TensorInfo[] _tensors = [.. inner.Tensors.Select(t => t with { SourcePath = "memory://nowhere" })];

        public string Path => inner.Path;

        public IReadOnlyList<TensorInfo> Tensors => _tensors;

        public bool TryGetTensor(string name, out TensorInfo info)
        {
            info = _tensors.FirstOrDefault(t => t.Name == name)!;
            return info is not null;
        }

        public ReadOnlySpan<byte> GetBytes(TensorInfo info) => inner.GetBytes(info);

        public float[] ReadFloat32(TensorInfo info) => inner.ReadFloat32(info);

        public void Dispose()
        {
        }
    }
}

/// <summary>
/// Tests that count allocated bytes with the process-wide <see cref="GC.GetTotalAllocatedBytes(bool)"/> (loading may
/// allocate on worker threads) run alone: another test class running in parallel would add its own allocations.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class AllocationMeasuringCollection
{
    public const string Name = "Allocation measuring";
}
