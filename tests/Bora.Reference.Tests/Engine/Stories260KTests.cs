using System.Text;
using System.Text.Json;
using Bora.Formats;
using Bora.Formats.Gguf;
using Bora.Formats.Safetensors;
using Bora.Generation;
using Bora.Loading;
using Bora.Model;
using Bora.Numerics;
using Xunit.Abstractions;

namespace Bora.Reference.Tests.Engine;

/// <summary>
/// The real trained model stories260K (llama2.c tinyllamas; GQA 8 query / 4 KV heads) run by Bora must
/// print, greedily from BOS, exactly the story llama2.c's run.c prints for it — from its GGUF file, and from
/// the same weights converted by this test into a Hugging Face folder (sharded safetensors with HF's
/// rotate-half Q/K row permutation, config.json, tokenizer.model) and into Mistral's folder layout
/// (params.json, consolidated.safetensors).
/// </summary>
public sealed class Stories260KTests(ITestOutputHelper output)
{
    private static readonly string ModelDir = TestPaths.Shared("models", "stories260K");
    private static readonly string Gguf = Path.Combine(ModelDir, "stories260K.gguf");

    /// <summary>run.c's default: 256 steps from BOS (the file ends where the step limit cut the story).</summary>
    private const int RunCSteps = 256;

    private bool Absent()
    {
        if (File.Exists(Gguf))
        {
            return false;
        }
        output.WriteLine($"skipped: {Gguf} is absent");
        return true;
    }

    /// <summary>runc-greedy-from-bos.txt: the story, then the one "\n" run.c prints at the end.</summary>
    private static string ExpectedStory() =>
        File.ReadAllText(Path.Combine(ModelDir, "runc-greedy-from-bos.txt"), Encoding.UTF8).TrimEnd('\n');

    private static GenerationResult GreedyFromBos(LoadedModel model)
    {
        var generator = new Generator(model.Model, model.Tokenizer, contextLength: RunCSteps + 1);
        var result = generator.Generate([model.Tokenizer.Bos], SamplingOptions.Greedy with { MaxTokens = RunCSteps });
        return result;
    }

    private static string StoryOf(LoadedModel model, GenerationResult result)
    {
        // run.c stops at the next BOS; decode up to there.
        int end = result.Tokens.ToList().IndexOf(model.Tokenizer.Bos);
        var story = end < 0 ? result.Tokens.ToArray() : result.Tokens.Take(end).ToArray();
        return model.Tokenizer.Decode(story);
    }

    [Fact]
    public void Gguf_GreedyFromBos_IsRunCsStory()
    {
        if (Absent())
        {
            return;
        }
        var model = ModelLoader.Load(Gguf);
        Assert.Equal(CheckpointLayout.Gguf, model.Source.Layout);
        Assert.Equal(8, model.Config.NHeads);
        Assert.Equal(4, model.Config.NKvHeads);
        var result = GreedyFromBos(model);
        Assert.Equal(ExpectedStory(), StoryOf(model, result));
        Assert.Equal(ExpectedStory(), result.Text.TrimEnd('\n'));
    }

    [Fact]
    public void HuggingFaceFolder_GivesTheSameTokens()
    {
        if (Absent())
        {
            return;
        }
        var dir = TestPaths.NewTempDir("stories-hf");
        WriteHuggingFaceFolder(dir);
        Assert.True(Directory.GetFiles(dir, "model-*.safetensors").Length > 1, "the conversion should be sharded");

        var fromGguf = GreedyFromBos(ModelLoader.Load(Gguf));
        var hf = ModelLoader.Load(dir);
        Assert.Equal(CheckpointLayout.HuggingFace, hf.Source.Layout);
        var fromHf = GreedyFromBos(hf);
        Assert.Equal(fromGguf.Tokens, fromHf.Tokens);
        Assert.Equal(ExpectedStory(), StoryOf(hf, fromHf));
        Directory.Delete(dir, recursive: true);
    }

    [Fact]
    public void HuggingFaceFolder_WithoutUnpermutingQK_WouldDiffer()
    {
        if (Absent())
        {
            return;
        }
        // Guards the test above: the permutation really changes the weights, so an HF loader that forgot
        // to undo it could not produce the story.
        using var gguf = GgufFile.Open(Gguf);
        gguf.TryGetTensor("blk.0.attn_q.weight", out var q);
        float[] w = gguf.ReadFloat32(q);
        float[] permuted = HfRopePermutation.Permute(w, nHeads: 8, rows: 64, cols: 64);
        Assert.NotEqual(w, permuted);
        Assert.Equal(w, HfRopePermutation.Unpermute(permuted, nHeads: 8, rows: 64, cols: 64));
    }

    [Fact]
    public void MistralFolder_GivesTheSameTokens()
    {
        if (Absent())
        {
            return;
        }
        var dir = TestPaths.NewTempDir("stories-mistral");
        WriteMistralFolder(dir);
        var mistral = ModelLoader.Load(dir);
        Assert.Equal(CheckpointLayout.Mistral, mistral.Source.Layout);
        var result = GreedyFromBos(mistral);
        Assert.Equal(ExpectedStory(), StoryOf(mistral, result));
        Directory.Delete(dir, recursive: true);
    }

    /// <summary>
    /// HF layout: config.json, model-0000i-of-0000N.safetensors + index (F32, small shards so the model
    /// spans several files), Q/K rows permuted for rotate-half RoPE, tokenizer.model.
    /// </summary>
    internal static void WriteHuggingFaceFolder(string dir)
    {
        using var gguf = GgufFile.Open(Gguf);
        var config = ModelConfigLoader.FromGguf(gguf.Metadata, Gguf);
        var tensors = HuggingFaceTensors(gguf, config);
        SafetensorsWriter.WriteSharded(dir, tensors, maxShardBytes: 400_000);

        var hfConfig = new Dictionary<string, object?>
        {
            ["architectures"] = new[] { "LlamaForCausalLM" },
            ["model_type"] = "llama",
            ["hidden_size"] = config.Dim,
            ["num_hidden_layers"] = config.NLayers,
            ["num_attention_heads"] = config.NHeads,
            ["num_key_value_heads"] = config.NKvHeads,
            ["intermediate_size"] = config.HiddenDim,
            ["vocab_size"] = config.VocabSize,
            ["rms_norm_eps"] = config.NormEps,
            ["rope_theta"] = config.RopeTheta,
            ["max_position_embeddings"] = config.MaxSeqLen,
            ["hidden_act"] = "silu",
            ["tie_word_embeddings"] = false,
            ["bos_token_id"] = 1,
            ["eos_token_id"] = 2,
            ["torch_dtype"] = "float32",
        };
        File.WriteAllText(Path.Combine(dir, "config.json"), JsonSerializer.Serialize(hfConfig));
        File.Copy(Path.Combine(ModelDir, "tok512.model"), Path.Combine(dir, "tokenizer.model"));
    }

    /// <summary>Mistral layout: params.json, consolidated.safetensors (interleaved RoPE, no permutation), tokenizer.model.</summary>
    private static void WriteMistralFolder(string dir)
    {
        using var gguf = GgufFile.Open(Gguf);
        var config = ModelConfigLoader.FromGguf(gguf.Metadata, Gguf);
        var tensors = new List<TensorData>();
        void Add(string name, string ggufName) => tensors.Add(Renamed(gguf, name, ggufName));
        Add("tok_embeddings.weight", "token_embd.weight");
        for (int l = 0; l < config.NLayers; l++)
        {
            string m = $"layers.{l}.", g = $"blk.{l}.";
            Add(m + "attention_norm.weight", g + "attn_norm.weight");
            Add(m + "attention.wq.weight", g + "attn_q.weight");
            Add(m + "attention.wk.weight", g + "attn_k.weight");
            Add(m + "attention.wv.weight", g + "attn_v.weight");
            Add(m + "attention.wo.weight", g + "attn_output.weight");
            Add(m + "ffn_norm.weight", g + "ffn_norm.weight");
            Add(m + "feed_forward.w1.weight", g + "ffn_gate.weight");
            Add(m + "feed_forward.w2.weight", g + "ffn_down.weight");
            Add(m + "feed_forward.w3.weight", g + "ffn_up.weight");
        }
        Add("norm.weight", "output_norm.weight");
        Add("output.weight", "output.weight");
        SafetensorsWriter.Write(Path.Combine(dir, "consolidated.safetensors"), tensors);
        var paramsJson = new Dictionary<string, object?>
        {
            ["dim"] = config.Dim,
            ["n_layers"] = config.NLayers,
            ["head_dim"] = config.HeadDim,
            ["hidden_dim"] = config.HiddenDim,
            ["n_heads"] = config.NHeads,
            ["n_kv_heads"] = config.NKvHeads,
            ["norm_eps"] = config.NormEps,
            ["vocab_size"] = config.VocabSize,
            ["rope_theta"] = config.RopeTheta,
        };
        File.WriteAllText(Path.Combine(dir, "params.json"), JsonSerializer.Serialize(paramsJson));
        File.Copy(Path.Combine(ModelDir, "tok512.model"), Path.Combine(dir, "tokenizer.model"));
    }

    /// <summary>
    /// stories260K's tensors (<paramref name="gguf"/>) under transformers LlamaForCausalLM names, F32, with the Q/K rows
    /// permuted for rotate-half RoPE; <paramref name="skip"/>, if given, is left out (to test a missing tensor).
    /// </summary>
    internal static List<TensorData> HuggingFaceTensors(GgufFile gguf, ModelConfig config, string? skip = null)
    {
        var tensors = new List<TensorData>();
        void Add(string name, string ggufName, Func<float[], float[]>? transform = null)
        {
            if (name != skip)
            {
                tensors.Add(Renamed(gguf, name, ggufName, transform));
            }
        }
        int dq = config.NHeads * config.HeadDim, dkv = config.NKvHeads * config.HeadDim;
        Add("model.embed_tokens.weight", "token_embd.weight");
        for (int l = 0; l < config.NLayers; l++)
        {
            string hf = $"model.layers.{l}.", g = $"blk.{l}.";
            Add(hf + "input_layernorm.weight", g + "attn_norm.weight");
            Add(hf + "self_attn.q_proj.weight", g + "attn_q.weight", w => HfRopePermutation.Permute(w, config.NHeads, dq, config.Dim));
            Add(hf + "self_attn.k_proj.weight", g + "attn_k.weight", w => HfRopePermutation.Permute(w, config.NKvHeads, dkv, config.Dim));
            Add(hf + "self_attn.v_proj.weight", g + "attn_v.weight");
            Add(hf + "self_attn.o_proj.weight", g + "attn_output.weight");
            Add(hf + "post_attention_layernorm.weight", g + "ffn_norm.weight");
            Add(hf + "mlp.gate_proj.weight", g + "ffn_gate.weight");
            Add(hf + "mlp.up_proj.weight", g + "ffn_up.weight");
            Add(hf + "mlp.down_proj.weight", g + "ffn_down.weight");
        }
        Add("model.norm.weight", "output_norm.weight");
        Add("lm_head.weight", "output.weight");
        return tensors;
    }

    /// <summary>GGUF tensor <paramref name="ggufName"/> read as F32 and named <paramref name="name"/>, optionally transformed.</summary>
    private static TensorData Renamed(GgufFile gguf, string name, string ggufName, Func<float[], float[]>? transform = null)
    {
        Assert.True(gguf.TryGetTensor(ggufName, out var info), ggufName);
        float[] data = gguf.ReadFloat32(info);
        return TensorData.FromFloat32(name, DType.F32, info.Shape, transform is null ? data : transform(data));
    }
}
