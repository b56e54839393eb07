using Bora.Formats;
using Bora.Formats.Gguf;
using Bora.Formats.Safetensors;
using Bora.Model;
using Bora.Tokenizers;

namespace Bora.Loading;

/// <summary>
/// A model ready to run: its config, weights and tokenizer. Weights loaded by <see cref="ModelLoader.Load"/> with the
/// default factory read the memory-mapped model file in place; the mapping lives as long as the weights are reachable,
/// and <see cref="Dispose"/> releases it at once (the model must not be used after).
/// </summary>
/// <param name="source">Where the model came from.</param>
/// <param name="config">Its hyper-parameters.</param>
/// <param name="model">The transformer.</param>
/// <param name="tokenizer">Its tokenizer.</param>
/// <param name="resources">What <see cref="Dispose"/> releases (the weight mappings), or null.</param>
public sealed class LoadedModel(ModelSource source, ModelConfig config, Transformer model, ITokenizer tokenizer, IDisposable? resources = null) : IDisposable
{
    private IDisposable? _resources = resources;

    public ModelSource Source { get; } = source;

    public ModelConfig Config { get; } = config;

    public Transformer Model { get; } = model;

    public ITokenizer Tokenizer { get; } = tokenizer;

    /// <summary>
    /// The chat-format version: from the tokenizer file's name (<c>tokenizer.model.v3</c>) or Tekken version
    /// when they say, else the latest of what the vocabulary, <c>tokenizer_config.json</c> and GGUF metadata show.
    /// </summary>
    public Chat.TokenizerVersion ChatVersion =>
        Chat.TokenizerVersions.Detect(Source.TokenizerPath, Tokenizer);

    /// <summary>A renderer of chat requests in this model's format.</summary>
    public Chat.ChatRenderer CreateChatRenderer() => new(Tokenizer, ChatVersion);

    /// <summary>The weight mappings (null when the weights were built by another factory), for statistics.</summary>
    public WeightMapper? Mapper => _resources as WeightMapper;

    /// <summary>Releases the weight mappings now; the model's weights must not be used afterwards.</summary>
    public void Dispose()
    {
        Interlocked.Exchange(ref _resources, null)?.Dispose();
    }
}

/// <summary>Opens a model of any supported layout (see <see cref="ModelSource"/>).</summary>
public static class ModelLoader
{
    /// <summary>
    /// Loads config, weights and tokenizer of the model at <paramref name="path"/>. Weights are built by
    /// <paramref name="matrixFactory"/>; the default, a <see cref="WeightMapper"/> owned by the returned model, keeps
    /// GGUF Q8_0 / Q4_0 / Q4_K / Q6_K and F16 / BF16 tensors in their stored type, read in place from a memory mapping
    /// of the file (no copy) or, for formats with a packed layout on an AVX-512 CPU, read once and packed into 16-row
    /// groups of the same size (<see cref="WeightMapper.PackAtLoad"/>), and converts the rest to float32 (pass <see cref="WeightLoader.ReadF32Matrix"/> to
    /// expand everything). The tensor store itself is closed before returning. The transformer's KV caches store
    /// <paramref name="kvType"/> rows (F16 by default, as llama.cpp; see <see cref="Transformer.KvType"/>).
    /// </summary>
    public static LoadedModel Load(string path, WeightMatrixFactory? matrixFactory = null, KvCacheType kvType = KvCacheType.F16)
    {
        var source = ModelSource.Resolve(path);
        using var store = OpenWeights(source);
        var config = LoadConfig(source, store);
        var tokenizer = LoadTokenizer(source, store);
        if (tokenizer.VocabSize > config.VocabSize)
        {
            throw new ModelFormatException(
                $"{source.TokenizerPath}: the tokenizer has {tokenizer.VocabSize} tokens but the model's vocabulary has {config.VocabSize} rows");
        }
        var mapper = matrixFactory is null ? new WeightMapper() : null;
        try
        {
            var weights = WeightLoader.Load(store, config, matrixFactory ?? mapper!.Create);
            mapper?.ReleaseStaging();
            // The loader may refine the config (e.g. tied embeddings when the output head is absent).
            return new LoadedModel(source, weights.Config, new Transformer(weights) { KvType = kvType }, tokenizer, mapper);
        }
        catch
        {
            mapper?.Dispose();
            throw;
        }
    }

    /// <summary>Opens the tensor store of a model without converting any weights.</summary>
    public static ITensorStore OpenWeights(ModelSource source) => source.Layout switch
    {
        CheckpointLayout.Gguf => GgufFile.Open(source.WeightsPath),
        _ => SafetensorsStore.Open(source.WeightsPath),
    };

    /// <summary>Reads the model's hyper-parameters.</summary>
    public static ModelConfig LoadConfig(ModelSource source, ITensorStore store) => source.Layout switch
    {
        CheckpointLayout.Gguf => ModelConfigLoader.FromGguf(((GgufFile)store).Metadata, source.ConfigPath),
        CheckpointLayout.HuggingFace => ModelConfigLoader.FromHfConfigJson(source.ConfigPath),
        CheckpointLayout.Mistral => ModelConfigLoader.FromParamsJson(source.ConfigPath),
        _ => throw new ArgumentOutOfRangeException(nameof(source)),
    };

    /// <summary>
    /// Loads a tokenizer from a tokenizer file (tokenizer.model*, a .gguf with an embedded
    /// vocabulary) or from a folder holding one, or from any model path.
    /// </summary>
    public static ITokenizer LoadTokenizer(string path)
    {
        if (Directory.Exists(path))
        {
            var file = ModelSource.FindTokenizer(path);
            if (file is null)
            {
                var gguf = Directory.GetFiles(path, "*.gguf");
                if (gguf.Length == 1)
                {
                    file = gguf[0];
                }
            }
            return LoadTokenizerFile(file ?? throw new ModelFormatException(
                $"{path}: no tokenizer found; expected one of {string.Join(", ", ModelSource.TokenizerFileNames)} or a single .gguf file"));
        }
        var resolved = ModelSource.ResolveHubCache(path);
        return resolved is null ? LoadTokenizerFile(path) : LoadTokenizer(resolved);
    }

    private static ITokenizer LoadTokenizer(ModelSource source, ITensorStore store)
    {
        if (source.Layout == CheckpointLayout.Gguf)
        {
            return GgufVocabulary.Load(((GgufFile)store).Metadata, source.WeightsPath);
        }
        return LoadTokenizerFile(source.TokenizerPath ?? throw new ModelFormatException(
            $"{source.Path}: no tokenizer file; expected one of {string.Join(", ", ModelSource.TokenizerFileNames)}"));
    }

    private static ITokenizer LoadTokenizerFile(string file)
    {
        if (!File.Exists(file))
        {
            throw new FileNotFoundException($"{file}: no such tokenizer file");
        }
        var name = Path.GetFileName(file);
        if (ModelSource.IsGgufFile(file))
        {
            using var gguf = GgufFile.Open(file);
            return GgufVocabulary.Load(gguf.Metadata, file);
        }
        if (name.Equals("tokenizer.json", StringComparison.OrdinalIgnoreCase))
        {
            // SentencePiece's dummy prefix, which Mistral models were trained with (see HuggingFaceTokenizer).
            return Tokenizers.HuggingFace.HuggingFaceTokenizer.Load(file, sentencePiecePrefix: true);
        }
        if (name.Contains("tekken", StringComparison.OrdinalIgnoreCase) && name.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
        {
            return Tokenizers.Tekken.TekkenTokenizer.Load(file);
        }
        if (name.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
        {
            throw new ModelFormatException(
                $"{file}: unknown tokenizer file; expected tokenizer.json (Hugging Face), tekken.json (Mistral Tekken) or a SentencePiece tokenizer.model");
        }
        return SentencePieceTokenizer.Load(file);
    }
}
