using System.Text.Json;
using Bora.Formats;
using Bora.Formats.Safetensors;
using Bora.Model;
using Bora.Model.Lora;
using Bora.Numerics;
using Bora.Training.Lora;

namespace Bora.Training.Tests.Lora;

/// <summary>PEFT layout, reload, run-time application and merging of adapters.</summary>
public sealed class LoraAdapterTests : IDisposable
{
    /// <summary>
    /// Inference Transformer (F32Matrix kernels, per-token) against the training model (GEMM, whole batch) on the
    /// same float32 weights: different summation orders over D = 16 .. F = 20 terms of O(1) values leave ~1e-6
    /// differences in O(1) logits; 1e-4 leaves room without hiding a wrong term (a LoRA update here is O(0.1)).
    /// </summary>
    private const double KernelTolerance = 1e-4;

    /// <summary>
    /// Merged W + s B A (one float32 rounding per weight) against W x + s B (A x) (roundings in the products):
    /// relative ~1e-7 per weight, ~1e-6 on logits of O(1); 1e-4 as above.
    /// </summary>
    private const double MergeTolerance = 1e-4;

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "bora-lora-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir))
        {
            Directory.Delete(_dir, recursive: true);
        }
    }

    [Fact]
    public void Peft_names_and_config_round_trip()
    {
        var config = TrainingTestModels.Moe();
        var lora = LoraParameters<float>.Create(config, LoraTestHelpers.AllTargets, rank: 4, alpha: 16, seed: 1);
        LoraTestHelpers.RandomizeB(lora, 2);
        var adapter = lora.ToAdapter("mistralai/Mixtral-8x7B-v0.1");
        adapter.Save(_dir, config);

        using (var file = SafetensorsFile.Open(Path.Combine(_dir, LoraAdapter.WeightsFileName)))
        {
            var names = file.Tensors.Select(t => t.Name).ToHashSet();
            Assert.Contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", names);
            Assert.Contains("base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight", names);
            Assert.Contains("base_model.model.model.layers.1.block_sparse_moe.experts.3.w2.lora_A.weight", names);
            Assert.Equal(2 * 2 * (4 + 3 * 4), names.Count); // layers x (A, B) x (q, k, v, o + 3 per expert)
            Assert.True(file.TryGetTensor("base_model.model.model.layers.0.block_sparse_moe.experts.1.w2.lora_B.weight", out var w2b));
            Assert.Equal([16L, 4L], w2b.Shape); // (D, r)
            Assert.True(file.TryGetTensor("base_model.model.model.layers.0.block_sparse_moe.experts.1.w2.lora_A.weight", out var w2a));
            Assert.Equal([4L, 20L], w2a.Shape); // (r, F)
        }
        using (var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, LoraAdapter.ConfigFileName))))
        {
            var root = doc.RootElement;
            Assert.Equal("LORA", root.GetProperty("peft_type").GetString());
            Assert.Equal("CAUSAL_LM", root.GetProperty("task_type").GetString());
            Assert.Equal(4, root.GetProperty("r").GetInt32());
            Assert.Equal(16, root.GetProperty("lora_alpha").GetDouble());
            Assert.False(root.GetProperty("fan_in_fan_out").GetBoolean());
            Assert.Equal("none", root.GetProperty("bias").GetString());
            Assert.Equal("mistralai/Mixtral-8x7B-v0.1", root.GetProperty("base_model_name_or_path").GetString());
            Assert.Equal(["k_proj", "o_proj", "q_proj", "v_proj", "w1", "w2", "w3"], root.GetProperty("target_modules").EnumerateArray().Select(e => e.GetString()));
        }

        var back = LoraAdapter.Load(_dir, config);
        Assert.Equal(4, back.Rank);
        Assert.Equal(16, back.Alpha);
        Assert.Equal(adapter.Factors.Keys.ToHashSet(), back.Factors.Keys.ToHashSet());
        foreach (var (key, f) in adapter.Factors)
        {
            Assert.Equal(f.A, back.Factors[key].A);
            Assert.Equal(f.B, back.Factors[key].B);
        }
    }

    [Fact]
    public void Dense_ffn_uses_mlp_names_and_only_q_k_rows_are_permuted()
    {
        var config = TrainingTestModels.Dense();
        var lora = LoraParameters<float>.Create(config, LoraTestHelpers.AllTargets, rank: 2, alpha: 4, seed: 3);
        LoraTestHelpers.RandomizeB(lora, 4);
        var adapter = lora.ToAdapter();
        adapter.Save(_dir, config);
        using var file = SafetensorsFile.Open(Path.Combine(_dir, LoraAdapter.WeightsFileName));
        float[] Read(string n) => file.ReadFloat32(file.Tensors.Single(t => t.Name == n));
        Assert.True(file.TryGetTensor("base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight", out _));
        Assert.True(file.TryGetTensor("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight", out _));
        Assert.True(file.TryGetTensor("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight", out _));
        var q = adapter.Factors[new LoraKey(0, LoraModule.Q)];
        var k = adapter.Factors[new LoraKey(1, LoraModule.K)];
        var v = adapter.Factors[new LoraKey(1, LoraModule.V)];
        // Head dim 6: within each head HF rows are (0, 2, 4, 1, 3, 5) of Bora's.
        var qFile = Read("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
        int[] order = [0, 2, 4, 1, 3, 5];
        for (int h = 0; h < config.NHeads; h++)
        {
            for (int r = 0; r < 6; r++)
            {
                Assert.Equal(q.B.AsSpan((h * 6 + order[r]) * 2, 2).ToArray(), qFile.AsSpan((h * 6 + r) * 2, 2).ToArray());
            }
        }
        Assert.Equal(HfRopePermutation.Permute(k.B, config.NKvHeads, k.Out, 2), Read("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"));
        Assert.Equal(v.B, Read("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"));
        Assert.Equal(q.A, Read("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    }

    [Fact]
    public void The_stored_adapter_applied_to_the_hf_permuted_base_equals_the_bora_merge_permuted()
    {
        // What PEFT would compute on the HF checkpoint: W_hf + s B_file A_file, with W_hf = P W. It must be P (W + s B A).
        var config = TrainingTestModels.Dense();
        var basis = TrainingTestModels.Random<float>(config, 5).ToWeights();
        var lora = LoraParameters<float>.Create(config, LoraTestHelpers.AllTargets, rank: 3, alpha: 6, seed: 6);
        LoraTestHelpers.RandomizeB(lora, 7);
        var adapter = lora.ToAdapter();
        adapter.Save(_dir, config);
        var merged = adapter.Merge(basis);
        using var file = SafetensorsFile.Open(Path.Combine(_dir, LoraAdapter.WeightsFileName));
        foreach (var (module, heads) in new[] { (LoraModule.Q, config.NHeads), (LoraModule.K, config.NKvHeads) })
        {
            var w = module == LoraModule.Q ? basis.Layers[1].Wq : basis.Layers[1].Wk;
            var m = module == LoraModule.Q ? merged.Layers[1].Wq : merged.Layers[1].Wk;
            string p = module == LoraModule.Q ? "q_proj" : "k_proj";
            var a = file.ReadFloat32(file.Tensors.Single(t => t.Name == $"base_model.model.model.layers.1.self_attn.{p}.lora_A.weight"));
            var b = file.ReadFloat32(file.Tensors.Single(t => t.Name == $"base_model.model.model.layers.1.self_attn.{p}.lora_B.weight"));
            var wHf = HfRopePermutation.Permute(Dense(w), heads, w.Rows, w.Cols);
            for (int o = 0; o < w.Rows; o++)
            {
                for (int i = 0; i < w.Cols; i++)
                {
                    double sum = 0;
                    for (int k = 0; k < 3; k++)
                    {
                        sum += b[o * 3 + k] * a[k * w.Cols + i];
                    }
                    wHf[o * w.Cols + i] += (float)(2.0 * sum);
                }
            }
            var expected = HfRopePermutation.Permute(Dense(m), heads, m.Rows, m.Cols);
            Assert.True(LoraTestHelpers.MaxAbsDiff<float, float>(wHf, expected) < 1e-5, $"{p}");
        }
    }

    [Fact]
    public void Reloaded_adapter_gives_the_training_logits_and_runtime_and_merged_agree()
    {
        var config = TrainingTestModels.Moe(window: 5);
        var weights = TrainingTestModels.Random<float>(config, 11).ToWeights();
        var lora = LoraParameters<float>.Create(config, LoraTestHelpers.AllTargets, rank: 4, alpha: 8, seed: 12);
        LoraTestHelpers.RandomizeB(lora, 13);
        const int T = 9;
        var tokens = TrainingTestModels.Tokens(T, config.VocabSize, 14);
        var trained = LoraModel<float>.OverWeights(weights, lora, 1, T);
        trained.Model.Forward(tokens, tokens);
        var trainingLogits = trained.Model.Logits.ToArray();

        lora.ToAdapter().Save(_dir, config);
        var adapter = LoraAdapter.Load(_dir, config);
        var reloaded = LoraModel<float>.OverWeights(weights, LoraParameters<float>.FromAdapter(adapter, config), 1, T);
        reloaded.Model.Forward(tokens, tokens);
        // Float32 stored and read back, permutation undone exactly: bit-identical.
        Assert.Equal(trainingLogits, reloaded.Model.Logits.ToArray());

        var runtime = LoraTestHelpers.InferenceLogits(adapter.Apply(weights), tokens);
        var baseOnly = LoraTestHelpers.InferenceLogits(weights, tokens);
        Assert.True(LoraTestHelpers.MaxAbsDiff<float, float>(runtime, trainingLogits) < KernelTolerance);
        Assert.True(LoraTestHelpers.MaxAbsDiff<float, float>(runtime, baseOnly) > 100 * KernelTolerance, "the adapter must change the logits");
        var merged = LoraTestHelpers.InferenceLogits(adapter.Merge(weights), tokens);
        Assert.True(LoraTestHelpers.MaxAbsDiff<float, float>(merged, runtime) < MergeTolerance);
    }

    [Fact]
    public void Qlora_over_a_q4_0_base_matches_the_runtime_adapter_and_trains()
    {
        if (!File.Exists(SyntheticTestModels.StoriesVocabulary))
        {
            Console.WriteLine("skipped: shared test data is absent");
            return;
        }
        Directory.CreateDirectory(_dir);
        var config = SyntheticTestModels.TinyMoe;
        var path = Path.Combine(_dir, "q4.gguf");
        SyntheticTestModels.WriteWithStoriesVocabulary(path, config, 3, DType.Q4_0);
        var loaded = Bora.Loading.ModelLoader.Load(path);
        var weights = loaded.Model.Weights;
        Assert.IsType<QuantizedMatrix>(weights.Layers[0].Wq);
        var lora = LoraParameters<float>.Create(loaded.Config, LoraTestHelpers.AllTargets, rank: 4, alpha: 8, seed: 21);
        Assert.Equal(2 * (4 + 3 * 4), lora.Factors.Count);
        LoraTestHelpers.RandomizeB(lora, 22, scale: 0.05);
        const int T = 12;
        var tokens = TrainingTestModels.Tokens(T, config.VocabSize, 23);
        var model = LoraModel<float>.OverWeights(weights, lora, 1, T);
        model.Model.Forward(tokens, tokens);
        var runtime = LoraTestHelpers.InferenceLogits(lora.ToAdapter().Apply(weights), tokens);
        // Same Q4_0 kernels on both sides (activations quantized to 8 bits per token in each); the remaining
        // differences are the float32 summation orders, as KernelTolerance, on logits of scale LogitScale = 3.
        Assert.True(LoraTestHelpers.MaxAbsDiff<float, float>(runtime, model.Model.Logits) < 3 * KernelTolerance);

        var targets = tokens.Skip(1).Append(0).ToArray();
        targets[^1] = TrainingModel<float>.IgnoreTarget;
        double first = 0, last = 0;
        var adam = new AdamW(lora.All, weightDecay: 0);
        for (int step = 0; step < 15; step++)
        {
            lora.ZeroGrad();
            last = model.Model.Forward(tokens, targets);
            first = step == 0 ? last : first;
            model.Model.Backward(1f);
            adam.Update(1e-2);
        }
        Assert.True(last < 0.8 * first, $"loss {first} -> {last}");

        // merge-lora on the GGUF: adapted tensors (stacked experts included) become F32 = W + s B A exactly as the
        // run-time decorator's rows; everything else is copied byte for byte in its own type.
        var adapterDir = Path.Combine(_dir, "adapter");
        var adapter = lora.ToAdapter(path);
        adapter.Save(adapterDir, loaded.Config);
        var mergedDir = Path.Combine(_dir, "merged");
        LoraMerge.Merge(path, adapterDir, mergedDir);
        var merged = Bora.Loading.ModelLoader.Load(mergedDir).Model.Weights;
        var expected = adapter.Apply(weights);
        Assert.IsType<F32Matrix>(merged.Layers[1].Moe!.Experts[2].W2);
        Assert.Equal(Dense(expected.Layers[1].Moe!.Experts[2].W2), Dense(merged.Layers[1].Moe!.Experts[2].W2));
        Assert.Equal(Dense(expected.Layers[0].Wk), Dense(merged.Layers[0].Wk));
        var output = Assert.IsType<QuantizedMatrix>(merged.Output);
        Assert.Equal(DType.Q4_0, output.Type);
        Assert.Equal(Dense(weights.Output), Dense(merged.Output));
    }

    [Fact]
    public void Lora_matrix_products_agree_with_its_merged_rows()
    {
        // Worked example of LoraMatrix: W = 0 (2, 2), A = (1, 1), B = (1, 2)ᵀ, s = 0.5, x = (1, 3) -> y = (2, 4).
        var m = new LoraMatrix(new F32Matrix(new float[4], 2, 2), [1f, 1f], [1f, 2f], 1, 0.5f);
        var y = new float[2];
        m.MatVec([1f, 3f], y);
        Assert.Equal([2f, 4f], y);

        var rng = new Random(5);
        float[] R(int n) => [.. Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5))];
        const int N = 7, K = 5, Rk = 3, T = 4;
        var lora = new LoraMatrix(new F32Matrix(R(N * K), N, K), R(Rk * K), R(N * Rk), Rk, 1.5f);
        var x = R(T * K);
        var batched = new float[T * N];
        lora.MatMul(x, batched, T);
        var rows = Dense(lora);
        for (int t = 0; t < T; t++)
        {
            var single = new float[N];
            lora.MatVec(x.AsSpan(t * K, K), single);
            for (int n = 0; n < N; n++)
            {
                double dot = 0;
                for (int k = 0; k < K; k++)
                {
                    dot += rows[n * K + k] * x[t * K + k];
                }
                // float32 products of O(1) values over K + r = 8 terms: ~1e-6.
                Assert.Equal(dot, single[n], 5);
                Assert.Equal(single[n], batched[t * N + n], 6);
            }
        }
    }

    [Fact]
    public void Unsupported_or_broken_adapters_are_clear_errors()
    {
        var config = TrainingTestModels.Dense();
        var lora = LoraParameters<float>.Create(config, LoraTestHelpers.AllTargets, rank: 2, alpha: 4, seed: 3);
        lora.ToAdapter().Save(_dir, config);
        var cfgPath = Path.Combine(_dir, LoraAdapter.ConfigFileName);
        var original = File.ReadAllText(cfgPath);

        File.WriteAllText(cfgPath, original.Replace("\"use_dora\": false", "\"use_dora\": true", StringComparison.Ordinal));
        var e = Assert.Throws<ModelFormatException>(() => LoraAdapter.Load(_dir, config));
        Assert.Contains("use_dora", e.Message, StringComparison.Ordinal);

        File.WriteAllText(cfgPath, original.Replace("\"r\": 2", "\"r\": 3", StringComparison.Ordinal));
        e = Assert.Throws<ModelFormatException>(() => LoraAdapter.Load(_dir, config));
        Assert.Contains("expected (3, 16)", e.Message, StringComparison.Ordinal);

        File.WriteAllText(cfgPath, original);
        e = Assert.Throws<ModelFormatException>(() => LoraAdapter.Load(_dir, TrainingTestModels.Moe()));
        Assert.Contains("dense FFN", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<ModelFormatException>(() => LoraAdapter.Load(_dir, config with { NLayers = 1 }));
        Assert.Contains("layer 1", e.Message, StringComparison.Ordinal);

        // PEFT's in-memory names (with the adapter name) load too.
        var tensors = new List<TensorData>();
        using (var file = SafetensorsFile.Open(Path.Combine(_dir, LoraAdapter.WeightsFileName)))
        {
            foreach (var t in file.Tensors)
            {
                tensors.Add(TensorData.FromFloat32(t.Name.Replace(".weight", ".default.weight", StringComparison.Ordinal), DType.F32, t.Shape, file.ReadFloat32(t)));
            }
        }
        SafetensorsWriter.Write(Path.Combine(_dir, LoraAdapter.WeightsFileName), tensors);
        Assert.Equal(lora.Factors.Count, LoraAdapter.Load(_dir, config).Factors.Count);
    }

    private static float[] Dense(WeightMatrix m)
    {
        var data = new float[m.Rows * m.Cols];
        for (int r = 0; r < m.Rows; r++)
        {
            m.ReadRow(r, data.AsSpan(r * m.Cols, m.Cols));
        }
        return data;
    }
}
