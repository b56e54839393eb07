using System.Globalization;
using Bora.Formats;
using Bora.Formats.Gguf;
using Bora.Formats.Safetensors;
using Bora.Loading;
using Bora.Model;
using Bora.Numerics;
using Bora.Quantization;
using Bora.Reference.Tests.Engine;
using Bora.Reference.Tests.LlamaCpp;
using Bora.Tokenizers;
using Xunit.Abstractions;

namespace Bora.Reference.Tests.Quality;

/// <summary>
/// <see cref="ModelQuantizer"/> (<c>bora quantize</c>): its files load in Bora and in llama.cpp and the two engines
/// agree on the logits; a Hugging Face safetensors folder gives the same tensors as the equivalent GGUF; bad input
/// is refused with a message that names the problem.
/// </summary>
[Collection(LlamaCppCollection.Name)]
public sealed class QuantizeTests(ITestOutputHelper output)
{
    /// <summary>
    /// Both engines read the same quantized blocks and both quantize the activations to 8 bits before the integer
    /// dot products, not always identically (and llama.cpp rounds activations to f16 for the F16 fallback tensors);
    /// the same bound as the engine parity tests (LlamaCppParityTests.QuantizedNmseBound, observed ≤ 2.1e-4 there);
    /// a wrong block layout, un-permutation or tensor name gives NMSE of order 1.
    /// </summary>
    private const double LogitNmseBound = 1e-2;

    private static readonly string Stories = TestPaths.Shared("models", "stories260K", "stories260K.gguf");
    private static readonly string StoriesTokenizer = TestPaths.Shared("models", "stories260K", "tok512.model");

    private const string Prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun.";

    public static TheoryData<string, string> Cases => new()
    {
        { "stories260K", "q8_0" },
        { "stories260K", "q4_0" },
        { "stories260K", "q4_k" },
        { "mixtral", "q4_0" },
        { "dense256", "q4_k" },
        { "dense8x256", "q4_k_m" },
        { "mixtral256", "q4_k_m" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void QuantizedFileLoadsInBothEnginesAndTheyAgree(string model, string type)
    {
        if (!File.Exists(Stories))
        {
            output.WriteLine($"skipped: {Stories} is absent");
            return;
        }
        var dir = TestPaths.NewTempDir("quantize");
        string input = Stories;
        if (model != "stories260K")
        {
            input = Path.Combine(dir, "in.gguf");
            bool moe = model.StartsWith("mixtral", StringComparison.Ordinal);
            var config = new ModelConfig
            {
                Dim = model == "mixtral" ? 128 : 256,
                // 8 layers: the Q4_K_M rule gives layers 0, 3, 6 and 7 more bits; 4 (MoE): layers 2 and 3.
                NLayers = model switch { "dense8x256" => 8, "mixtral256" => 4, _ => 2 },
                NHeads = 8,
                NKvHeads = 2,
                HeadDim = model == "mixtral" ? 16 : 32,
                HiddenDim = model switch { "mixtral" => 128, "mixtral256" => 256, _ => 512 },
                VocabSize = 512,
                MaxSeqLen = 256,
                NExperts = moe ? 8 : 0,
                NExpertsPerToken = moe ? 2 : 0,
            };
            using var vocab = GgufFile.Open(Stories);
            SyntheticGguf.Write(input, config, seed: 7, DType.F32, vocab);
        }
        string outPath = Path.Combine(dir, $"out-{type}.gguf");
        var target = QuantizeTarget.Parse(type);
        var result = ModelQuantizer.Quantize(input, outPath, target, threads: 2);
        Assert.False(File.Exists(outPath + ".tmp"));

        // The rules llama.cpp follows: norms and router F32, everything else the type or a named fallback.
        foreach (var t in result.Tensors)
        {
            output.WriteLine(ModelQuantizer.Describe(t));
            if (t.Shape.Length == 1 || t.Name.EndsWith("ffn_gate_inp.weight", StringComparison.Ordinal))
            {
                Assert.Equal(DType.F32, t.Type);
            }
            else if (t.Reason is null)
            {
                Assert.Equal(target.Base, t.Type);
            }
        }
        using (var written = GgufFile.Open(outPath))
        {
            Assert.Equal(result.Tensors.Select(t => (t.Name, t.Type)), written.Tensors.Select(t => (t.Name, t.Type)));
            Assert.Equal(target.FileType, (uint)written.GetInt64("general.file_type"));
        }
        if (target.KQuantMixture)
        {
            AssertSameMixtureAsLlamaCpp(input, Path.Combine(dir, $"llama-{type}.gguf"), type, result);
        }

        var bora = ModelLoader.Load(outPath);
        using var llama = new LlamaCppReference(outPath, contextSize: 128, threads: 2);
        int[] prompt = [.. bora.Tokenizer.Encode(Prompt, addBos: true).Select(t => t.Value)];
        Assert.Equal(llama.Tokenize(Prompt, addBos: true), prompt);
        float[][] expected = llama.EvaluateAll(prompt);
        int v = bora.Config.VocabSize;
        var logits = new float[prompt.Length * v];
        bora.Model.Forward([.. prompt.Select(i => new TokenId(i))], bora.Model.CreateCache(128), logits);
        double err = 0, norm = 0;
        for (int t = 0; t < prompt.Length; t++)
        {
            for (int i = 0; i < v; i++)
            {
                double d = logits[t * v + i] - expected[t][i];
                err += d * d;
                norm += (double)expected[t][i] * expected[t][i];
            }
        }
        double nmse = err / norm;
        output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{model} {type}: {prompt.Length} positions, logit NMSE Bora vs llama.cpp = {nmse:G3}"));
        Assert.True(nmse <= LogitNmseBound, $"NMSE {nmse} > {LogitNmseBound}");
        Directory.Delete(dir, recursive: true);
    }

    /// <summary>
    /// llama.cpp's own quantization of the same input to the same mixture stores every tensor in the type Bora chose,
    /// except where Bora documents a substitute (Q6_K for llama.cpp's Q5_K, which Bora does not store).
    /// </summary>
    private void AssertSameMixtureAsLlamaCpp(string input, string llamaOut, string type, QuantizeResult result)
    {
        LlamaCppReference.Quantize(input, llamaOut, type, threads: 2);
        // Read with a minimal parser: llama.cpp's file may hold types Bora's reader refuses (Q5_K).
        var theirs = ReadGgmlTypes(llamaOut);
        int moreBits = 0;
        foreach (var t in result.Tensors)
        {
            Assert.True(theirs.TryGetValue(t.Name, out uint id), $"llama.cpp's file lacks {t.Name}");
            if (t.Reason?.Contains("Q5_K", StringComparison.Ordinal) == true)
            {
                Assert.Equal((DType.Q6_K, GgmlQ5K), (t.Type, id));
                continue;
            }
            Assert.True(GgmlId(t.Type) == id, $"{t.Name}: Bora chose {t.Type} (ggml {GgmlId(t.Type)}), llama.cpp ggml type {id}");
            moreBits += t.Type == DType.Q6_K ? 1 : 0;
        }
        output.WriteLine($"{type}: all {result.Tensors.Count} tensor types equal llama.cpp's ({moreBits} Q6_K)");
        Assert.True(moreBits >= 2, "the mixture should give some matrices more bits");
    }

    /// <summary>ggml's type id of Q5_K (ggml.h), which Bora does not store.</summary>
    private const uint GgmlQ5K = 13;

    /// <summary>ggml's type ids (ggml.h) of the types Bora stores.</summary>
    private static uint GgmlId(DType t) => t switch
    {
        DType.F32 => 0,
        DType.F16 => 1,
        DType.Q4_0 => 2,
        DType.Q8_0 => 8,
        DType.Q4_K => 12,
        DType.Q6_K => 14,
        DType.BF16 => 30,
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    /// <summary>
    /// Tensor name → ggml type id from a GGUF's header (magic, version, counts, metadata key/values skipped by their
    /// value type, then tensor infos), independent of Bora's reader.
    /// </summary>
    private static Dictionary<string, uint> ReadGgmlTypes(string path)
    {
        using var r = new BinaryReader(File.OpenRead(path));
        Assert.Equal(0x46554747u, r.ReadUInt32()); // "GGUF"
        r.ReadUInt32();
        long tensors = r.ReadInt64(), kvs = r.ReadInt64();
        string Str() => System.Text.Encoding.UTF8.GetString(r.ReadBytes(checked((int)r.ReadUInt64())));
        void Skip(uint valueType)
        {
            switch (valueType)
            {
                case 0 or 1 or 7: r.ReadByte(); break;
                case 2 or 3: r.ReadUInt16(); break;
                case 4 or 5 or 6: r.ReadUInt32(); break;
                case 10 or 11 or 12: r.ReadUInt64(); break;
                case 8: Str(); break;
                case 9:
                    uint elem = r.ReadUInt32();
                    ulong n = r.ReadUInt64();
                    for (ulong i = 0; i < n; i++)
                    {
                        Skip(elem);
                    }
                    break;
                default: throw new InvalidDataException($"{path}: GGUF value type {valueType}");
            }
        }
        for (long i = 0; i < kvs; i++)
        {
            Str();
            Skip(r.ReadUInt32());
        }
        var types = new Dictionary<string, uint>(StringComparer.Ordinal);
        for (long i = 0; i < tensors; i++)
        {
            string name = Str();
            uint dims = r.ReadUInt32();
            for (uint d = 0; d < dims; d++)
            {
                r.ReadUInt64();
            }
            types[name] = r.ReadUInt32();
            r.ReadUInt64();
        }
        return types;
    }

    /// <summary>
    /// stories260K rewritten as a Hugging Face folder (q_proj / k_proj rows permuted for rotate-half RoPE, BF16 is not
    /// used so values stay exact, the SentencePiece tokenizer.model beside it) quantizes to exactly the tensors of the
    /// GGUF itself, and the embedded vocabulary tokenizes like the original in llama.cpp.
    /// </summary>
    [Fact]
    public void HuggingFaceFolderQuantizesToTheSameTensorsAsTheGguf()
    {
        if (!File.Exists(Stories))
        {
            output.WriteLine($"skipped: {Stories} is absent");
            return;
        }
        var dir = TestPaths.NewTempDir("quantize-hf");
        string hfDir = Path.Combine(dir, "hf");
        WriteHfFolder(hfDir);
        string fromHf = Path.Combine(dir, "hf-q8.gguf"), fromGguf = Path.Combine(dir, "gguf-q8.gguf");
        ModelQuantizer.Quantize(hfDir, fromHf, DType.Q8_0, threads: 2);
        ModelQuantizer.Quantize(Stories, fromGguf, DType.Q8_0, threads: 2);
        using (var a = GgufFile.Open(fromHf))
        using (var b = GgufFile.Open(fromGguf))
        {
            Assert.Equal(b.Tensors.Select(t => t.Name).Order(StringComparer.Ordinal), a.Tensors.Select(t => t.Name).Order(StringComparer.Ordinal));
            foreach (var t in b.Tensors)
            {
                Assert.True(a.TryGetTensor(t.Name, out var u));
                Assert.Equal(t.Type, u.Type);
                Assert.Equal(t.Shape, u.Shape);
                Assert.True(b.GetBytes(t).SequenceEqual(a.GetBytes(u)), $"tensor {t.Name} differs");
            }
            Assert.Equal(b.GetStringArray("tokenizer.ggml.tokens"), a.GetStringArray("tokenizer.ggml.tokens"));
            Assert.Equal(b.GetInt64Array("tokenizer.ggml.token_type"), a.GetInt64Array("tokenizer.ggml.token_type"));
        }
        using var llama = new LlamaCppReference(fromHf, contextSize: 64);
        var tokenizer = ModelLoader.LoadTokenizer(Stories);
        Assert.Equal(tokenizer.Encode(Prompt, addBos: true).Select(t => t.Value), llama.Tokenize(Prompt, addBos: true));
        Directory.Delete(dir, recursive: true);
    }

    [Fact]
    public void BadInputIsRefusedWithAClearMessage()
    {
        if (!File.Exists(Stories))
        {
            output.WriteLine($"skipped: {Stories} is absent");
            return;
        }
        var dir = TestPaths.NewTempDir("quantize-bad");
        string q8 = Path.Combine(dir, "q8.gguf");
        ModelQuantizer.Quantize(Stories, q8, DType.Q8_0);

        var requant = Assert.Throws<ModelFormatException>(() => ModelQuantizer.Quantize(q8, Path.Combine(dir, "again.gguf"), DType.Q4_0));
        Assert.Contains("Q8_0", requant.Message, StringComparison.Ordinal);
        Assert.Contains("F32, F16 or BF16", requant.Message, StringComparison.Ordinal);

        Assert.Contains("q4_k", Assert.Throws<ArgumentException>(() => ModelQuantizer.ParseType("q5_1")).Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => ModelQuantizer.Quantize(Stories, Path.Combine(dir, "x.gguf"), DType.Q6_K));
        Assert.Contains("overwrite", Assert.Throws<ArgumentException>(() => ModelQuantizer.Quantize(q8, q8, DType.Q8_0)).Message, StringComparison.Ordinal);
        Assert.Throws<FileNotFoundException>(() => ModelQuantizer.Quantize(Path.Combine(dir, "missing.gguf"), Path.Combine(dir, "y.gguf"), DType.Q8_0));
        Assert.Throws<DirectoryNotFoundException>(() => ModelQuantizer.Quantize(Stories, Path.Combine(dir, "no", "such", "z.gguf"), DType.Q8_0));

        // A Hugging Face folder missing one tensor, and one whose only tokenizer cannot be embedded.
        string hfDir = Path.Combine(dir, "hf");
        WriteHfFolder(hfDir, skip: "model.layers.3.mlp.up_proj.weight");
        var missing = Assert.Throws<ModelFormatException>(() => ModelQuantizer.Quantize(hfDir, Path.Combine(dir, "m.gguf"), DType.Q8_0));
        Assert.Contains("model.layers.3.mlp.up_proj.weight", missing.Message, StringComparison.Ordinal);
        WriteHfFolder(hfDir);
        File.Delete(Path.Combine(hfDir, "tokenizer.model"));
        File.WriteAllText(Path.Combine(hfDir, "tokenizer.json"), "{}");
        var noSpm = Assert.Throws<ModelFormatException>(() => ModelQuantizer.Quantize(hfDir, Path.Combine(dir, "t.gguf"), DType.Q8_0));
        Assert.Contains("tokenizer.model", noSpm.Message, StringComparison.Ordinal);

        // A weight that is a NaN or an infinity: refused, named with its place, and no output file is left; the place
        // is the stored one also where the rows are reordered for RoPE (q_proj).
        const string OProj = "model.layers.1.self_attn.o_proj.weight", QProj = "model.layers.1.self_attn.q_proj.weight";
        foreach (var (Damaged, bad) in new[] { (OProj, float.NaN), (OProj, float.NegativeInfinity), (OProj, 1e6f), (QProj, float.NaN), (QProj, 1e6f) })
        {
            WriteHfFolder(hfDir);
            string weights = Path.Combine(hfDir, "model.safetensors");
            long at;
            using (var st = SafetensorsFile.Open(weights))
            {
                Assert.True(st.TryGetTensor(Damaged, out var info));
                at = info.Offset + sizeof(float) * (2 * info.Shape[1] + 3); // row 2, column 3
            }
            using (var f = File.OpenWrite(weights))
            {
                f.Position = at;
                f.Write(BitConverter.GetBytes(bad));
            }
            string target = Path.Combine(dir, "nan.gguf");
            var nonFinite = Assert.Throws<ModelFormatException>(() => ModelQuantizer.Quantize(hfDir, target, DType.Q4_0));
            Assert.Equal(float.IsFinite(bad)
                // Finite, but its block's Q4_0 scale (-1e6 / 8) is beyond a half: -inf (0xFC00).
                ? $"{weights}: tensor '{Damaged}' as Q4_0: row 2, block 0 has the scale 0xFC00 ({Half.NegativeInfinity}); every Q4_0 block scale must be a finite half; a weight of that block is too large for the format (its block scale is a half: at most 65504 times the largest quant)"
                : $"{weights}: tensor '{Damaged}' holds {bad.ToString(CultureInfo.InvariantCulture)} at row 2, column 3; bora quantize needs finite weights (the checkpoint is damaged)",
                nonFinite.Message);
            Assert.False(File.Exists(target));
        }
        Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
        Directory.Delete(dir, recursive: true);
    }

    /// <summary>stories260K as a transformers LlamaForCausalLM folder (F32 safetensors, config.json, tokenizer.model).</summary>
    private static void WriteHfFolder(string hfDir, string? skip = null)
    {
        if (Directory.Exists(hfDir))
        {
            Directory.Delete(hfDir, recursive: true);
        }
        Directory.CreateDirectory(hfDir);
        using var gguf = GgufFile.Open(Stories);
        var config = ModelConfigLoader.FromGguf(gguf.Metadata, Stories);
        SafetensorsWriter.Write(Path.Combine(hfDir, "model.safetensors"), Stories260KTests.HuggingFaceTensors(gguf, config, skip));
        File.WriteAllText(Path.Combine(hfDir, "config.json"), string.Create(CultureInfo.InvariantCulture, $$"""
            {"architectures": ["LlamaForCausalLM"], "hidden_size": {{config.Dim}}, "intermediate_size": {{config.HiddenDim}},
             "num_attention_heads": {{config.NHeads}}, "num_key_value_heads": {{config.NKvHeads}}, "num_hidden_layers": {{config.NLayers}},
             "vocab_size": {{config.VocabSize}}, "rms_norm_eps": {{config.NormEps}}, "rope_theta": {{config.RopeTheta}},
             "max_position_embeddings": {{config.MaxSeqLen}}, "tie_word_embeddings": false, "hidden_act": "silu"}
            """));
        File.Copy(StoriesTokenizer, Path.Combine(hfDir, "tokenizer.model"));
    }
}
