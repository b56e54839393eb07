using System.Diagnostics;
using System.Globalization;
using Bora.Formats.Gguf;
using Bora.Model;
using Bora.Numerics;
using Bora.Numerics.Quant;
using Bora.Quantization;
using Bora.Tokenizers;

namespace Bora.Bench;

/// <summary>
/// <c>synthesize --synthesize mistral-7b|mixtral-8x7b [--layers N] --type q4_0|q8_0|q4_k|q4_k_m|f16 --out FILE [--seed S] [--threads N]</c>:
/// a random-weight llama GGUF with a real model's shapes (and Mistral's 32000-piece vocabulary from the shared test
/// data), written directly in the target format and streamed tensor by tensor (one tensor in memory at a time), with
/// the same per-tensor types <c>bora quantize</c> would choose (norms and router F32, output head Q6_K for Q4_0/Q4_K, and
/// llama.cpp's per-layer mixture for Q4_K_M).
/// Speed does not depend on the weights' values, so these files benchmark both engines on a model's exact shapes.
/// Values are uniform with the standard deviation of <see cref="SyntheticGguf"/>'s (1/sqrt(fan_in)), from a
/// per-row-block seeded generator so tensors are produced in parallel and reproducibly.
/// </summary>
public static class SyntheticModels
{
    /// <summary>Mistral 7B v0.1's hyper-parameters (Mixtral 8x7B adds 8 experts, top-2, rope theta 1e6).</summary>
    public static ModelConfig Shape(string name, int? layers) => name switch
    {
        "mistral-7b" => new ModelConfig
        {
            Dim = 4096,
            NLayers = layers ?? 32,
            NHeads = 32,
            NKvHeads = 8,
            HeadDim = 128,
            HiddenDim = 14336,
            VocabSize = 32000,
            NormEps = 1e-5f,
            RopeTheta = 10000f,
            MaxSeqLen = 32768,
        },
        "mixtral-8x7b" => Shape("mistral-7b", layers) with { RopeTheta = 1e6f, NExperts = 8, NExpertsPerToken = 2 },
        _ => throw new ArgumentException($"unknown shape '{name}'; expected mistral-7b or mixtral-8x7b"),
    };

    public static int Run(string[] args)
    {
        var a = new BenchArgs(args, ["synthesize", "layers", "type", "out", "seed", "threads"], []);
        Synthesize(a.Get("synthesize") ?? throw new ArgumentException("--synthesize mistral-7b|mixtral-8x7b is required"),
            a.Get("layers") is null ? null : a.GetInt("layers", 0), a.Get("type") ?? "q4_0",
            a.Get("out") ?? throw new ArgumentException("--out FILE is required"), a.GetInt("seed", 1, 0), a.GetInt("threads", Environment.ProcessorCount));
        return 0;
    }

    /// <summary>
    /// Writes the file (see the class summary); refuses when the disk lacks room for it. <paramref name="typeName"/> is a
    /// <c>bora quantize</c> target (q8_0, q4_0, q4_k, q4_k_m) or <c>f16</c>: every matrix F16 (llama.cpp's
    /// LLAMA_FTYPE_MOSTLY_F16 = 1), vectors F32, as llama.cpp's convert script writes an unquantized model.
    /// </summary>
    public static void Synthesize(string shape, int? layers, string typeName, string outPath, int seed, int threads)
    {
        bool f16 = string.Equals(typeName, "f16", StringComparison.OrdinalIgnoreCase);
        var type = f16 ? null : QuantizeTarget.Parse(typeName);
        var config = Shape(shape, layers);
        string vocabPath = Path.Combine(FindSharedTestData(), "tokenizers", "mistral", "tokenizer.model.v1");
        var vocab = SentencePieceModel.Load(vocabPath);
        var w = new GgufWriter();
        GgufLlamaMetadata.AddConfig(w, config, $"bora-synthetic-{shape}-{config.NLayers}L");
        GgufLlamaMetadata.AddSentencePieceVocabulary(w, vocab);
        w.AddMetadata("general.file_type", type?.FileType ?? 1u);
        w.AddMetadata("general.quantization_version", 2u);

        int d = config.Dim, f = config.HiddenDim, q = config.NHeads * config.HeadDim, kv = config.NKvHeads * config.HeadDim, e = config.NExperts;
        var tensors = new List<(string Name, long[] Shape, float Std, float Mean)>
        {
            ("token_embd.weight", [config.VocabSize, d], 1f, 0f),
        };
        for (int l = 0; l < config.NLayers; l++)
        {
            string p = $"blk.{l}.";
            tensors.Add((p + "attn_norm.weight", [d], 0.1f, 1f));
            tensors.Add((p + "attn_q.weight", [q, d], 1 / MathF.Sqrt(d), 0f));
            tensors.Add((p + "attn_k.weight", [kv, d], 1 / MathF.Sqrt(d), 0f));
            tensors.Add((p + "attn_v.weight", [kv, d], 1 / MathF.Sqrt(d), 0f));
            tensors.Add((p + "attn_output.weight", [d, q], 1 / MathF.Sqrt(q), 0f));
            tensors.Add((p + "ffn_norm.weight", [d], 0.1f, 1f));
            if (config.IsMoE)
            {
                tensors.Add((p + "ffn_gate_inp.weight", [e, d], 2 / MathF.Sqrt(d), 0f));
                tensors.Add((p + "ffn_gate_exps.weight", [e, f, d], 1 / MathF.Sqrt(d), 0f));
                tensors.Add((p + "ffn_down_exps.weight", [e, d, f], 1 / MathF.Sqrt(f), 0f));
                tensors.Add((p + "ffn_up_exps.weight", [e, f, d], 1 / MathF.Sqrt(d), 0f));
            }
            else
            {
                tensors.Add((p + "ffn_gate.weight", [f, d], 1 / MathF.Sqrt(d), 0f));
                tensors.Add((p + "ffn_down.weight", [d, f], 1 / MathF.Sqrt(f), 0f));
                tensors.Add((p + "ffn_up.weight", [f, d], 1 / MathF.Sqrt(d), 0f));
            }
        }
        tensors.Add(("output_norm.weight", [d], 0.1f, 1f));
        tensors.Add(("output.weight", [config.VocabSize, d], SyntheticGguf.LogitScale / MathF.Sqrt(d), 0f));

        var modelShape = new QuantizeModelShape(config.NLayers, config.NExperts, HasOutput: true);
        var set = new LazyTensorSet();
        long total = 0;
        for (int i = 0; i < tensors.Count; i++)
        {
            var (name, dims, std, mean) = tensors[i];
            var dtype = type is null ? (dims.Length == 1 ? DType.F32 : DType.F16) : ModelQuantizer.ChooseType(name, dims, type, modelShape, out _);
            long count = dims.Aggregate(1L, (x, y) => x * y);
            long bytes = DTypeInfo.ByteSize(dtype, count)!.Value;
            total += bytes;
            int tensorSeed = HashCode.Combine(seed, i);
            w.AddTensor(set.Create(name, dtype, dims, () => Random(dtype, count / dims[^1], (int)dims[^1], bytes, std, mean, tensorSeed, threads)));
        }
        string full = Path.GetFullPath(outPath);
        var drive = new DriveInfo(Path.GetPathRoot(full)!);
        long needed = total + total / 20 + (64 << 20);
        if (drive.AvailableFreeSpace < needed)
        {
            throw new IOException(string.Create(CultureInfo.InvariantCulture,
                $"{outPath}: the file needs about {needed / 1e9:F2} GB but only {drive.AvailableFreeSpace / 1e9:F2} GB are free on {drive.Name}"));
        }
        var sw = Stopwatch.StartNew();
        int done = 0;
        set.Produced = name => Console.Error.Write($"\rsynthesize: {++done}/{tensors.Count} {name,-32}");
        w.Write(full);
        Console.Error.WriteLine();
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"synthesize: wrote {full}: {shape}, {config.NLayers} layers, {typeName}, {total / 1e9:F2} GB of tensor data in {sw.Elapsed.TotalSeconds:F0} s"));
    }

    /// <summary>rows x cols uniform values of the given mean and std, converted to <paramref name="type"/> in parallel blocks of rows.</summary>
    private static byte[] Random(DType type, long rows, int cols, long bytes, float std, float mean, int seed, int threads)
    {
        var result = GC.AllocateUninitializedArray<byte>((int)bytes);
        int rowBytes = (int)(bytes / rows);
        const int BlockRows = 64;
        long blocks = (rows + BlockRows - 1) / BlockRows;
        float half = std * MathF.Sqrt(3f); // uniform on [-half, half] has this std
        Parallel.For(0L, blocks, new ParallelOptions { MaxDegreeOfParallelism = threads }, () => new float[BlockRows * cols], (b, _, buffer) =>
        {
            long r0 = b * BlockRows;
            int n = (int)Math.Min(BlockRows, rows - r0);
            ulong s = (ulong)(uint)seed * 0x9E3779B97F4A7C15UL ^ (ulong)(b + 1) * 0xBF58476D1CE4E5B9UL;
            var values = buffer.AsSpan(0, n * cols);
            for (int i = 0; i < values.Length; i++)
            {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                values[i] = mean + half * ((s >> 40) * (2f / (1 << 24)) - 1f);
            }
            BlockQuantizer.FromFloat32(type, values, result.AsSpan((int)(r0 * rowBytes), n * rowBytes));
            return buffer;
        }, _ => { });
        return result;
    }

    /// <summary>../shared/testdata from the repository root (found above the running binary or the working folder).</summary>
    internal static string FindSharedTestData()
    {
        foreach (var start in new[] { AppContext.BaseDirectory, Environment.CurrentDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                string candidate = Path.Combine(dir.FullName, "..", "shared", "testdata");
                if (File.Exists(Path.Combine(dir.FullName, "Directory.Packages.props")) && Directory.Exists(candidate))
                {
                    return Path.GetFullPath(candidate);
                }
            }
        }
        throw new DirectoryNotFoundException("../shared/testdata (for Mistral's tokenizer.model.v1) was not found beside the repository");
    }
}
