using Bora.Formats;

namespace Bora.Tokenizers;

/// <summary>
/// Builds a tokenizer from the vocabulary embedded in GGUF metadata (<c>tokenizer.ggml.*</c>).
/// Metadata values use the GGUF reader's representation: integers as long, float32 as float,
/// arrays as string[] / long[] / float[].
/// </summary>
public static class GgufVocabulary
{
    /// <summary>
    /// The tokenizer of <c>tokenizer.ggml.model</c> = "llama" (SentencePiece BPE): tokens, scores,
    /// token_type, bos/eos/unknown ids, and <c>tokenizer.ggml.add_space_prefix</c> (default true, as llama.cpp).
    /// </summary>
    public static ITokenizer Load(IReadOnlyDictionary<string, object> metadata, string path)
    {
        var model = Get<string>(metadata, "tokenizer.ggml.model", path);
        if (model != "llama")
        {
            throw ModelFormatException.In(path,
                $"tokenizer.ggml.model is '{model}'; only 'llama' (SentencePiece BPE) vocabularies are supported in GGUF files so far");
        }
        var tokens = Get<string[]>(metadata, "tokenizer.ggml.tokens", path);
        float[]? scores = metadata.TryGetValue("tokenizer.ggml.scores", out var s)
            ? s as float[] ?? throw ModelFormatException.In(path, "tokenizer.ggml.scores is not an array of float32")
            : null;
        var types = Get<long[]>(metadata, "tokenizer.ggml.token_type", path);
        if (types.Length != tokens.Length || (scores is not null && scores.Length != tokens.Length))
        {
            throw ModelFormatException.In(path,
                $"tokenizer.ggml.tokens has {tokens.Length} entries but token_type has {types.Length} and scores {scores?.Length}; expected equal lengths");
        }
        var typeIds = new int[types.Length];
        for (int i = 0; i < types.Length; i++)
        {
            typeIds[i] = types[i] is >= 1 and <= 6
                ? (int)types[i]
                : throw ModelFormatException.In(path, $"tokenizer.ggml.token_type[{i}] is {types[i]}; expected 1..6");
        }
        int bos = Id(metadata, "tokenizer.ggml.bos_token_id", 1, tokens.Length, path);
        int eos = Id(metadata, "tokenizer.ggml.eos_token_id", 2, tokens.Length, path);
        int unk = Id(metadata, "tokenizer.ggml.unknown_token_id", 0, tokens.Length, path);
        bool addPrefix = !metadata.TryGetValue("tokenizer.ggml.add_space_prefix", out var ap) || ap is true;
        return SentencePieceTokenizer.FromVocabulary(tokens, scores, typeIds, bos, eos, unk,
            addDummyPrefix: addPrefix, removeExtraWhitespaces: false, source: path);
    }

    private static T Get<T>(IReadOnlyDictionary<string, object> metadata, string key, string path) where T : class =>
        metadata.TryGetValue(key, out var v)
            ? v as T ?? throw ModelFormatException.In(path, $"metadata '{key}' has type {v.GetType().Name}; expected {typeof(T).Name}")
            : throw ModelFormatException.In(path, $"metadata '{key}' is missing; the file has no usable embedded tokenizer");

    private static int Id(IReadOnlyDictionary<string, object> metadata, string key, int fallback, int vocab, string path)
    {
        if (!metadata.TryGetValue(key, out var v))
        {
            return fallback;
        }
        return v is long id && id >= 0 && id < vocab
            ? (int)id
            : throw ModelFormatException.In(path, $"metadata '{key}' is {v}; expected a token id in [0, {vocab})");
    }
}
