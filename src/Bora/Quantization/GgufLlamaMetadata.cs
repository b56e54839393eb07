using Bora.Formats.Gguf;
using Bora.Model;
using Bora.Tokenizers;

namespace Bora.Quantization;

/// <summary>
/// The GGUF metadata llama.cpp needs for a llama-architecture model, written with the exact value types its
/// loader checks (UInt32 counts, Float32 hyper-parameters, an Int32 array of token types).
/// </summary>
public static class GgufLlamaMetadata
{
    /// <summary>llama.cpp's <c>general.file_type</c> (LLAMA_FTYPE) for a whole-model type; MOSTLY_Q4_K_S for Q4_K.</summary>
    public static uint FileType(Numerics.DType type) => type switch
    {
        Numerics.DType.F32 => 0,
        Numerics.DType.F16 => 1,
        Numerics.DType.Q4_0 => 2,
        Numerics.DType.Q8_0 => 7,
        Numerics.DType.Q4_K => 14,
        Numerics.DType.Q6_K => 18,
        Numerics.DType.BF16 => 32,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "no llama.cpp file type"),
    };

    /// <summary>
    /// <c>general.architecture = llama</c> and the <c>llama.*</c> hyper-parameters of <paramref name="config"/>.
    /// The sliding window is not written: llama.cpp's llama architecture has no such key (as its own converter
    /// does for Mistral 7B), so a converted Mistral attends over the whole context in both engines.
    /// </summary>
    public static void AddConfig(GgufWriter w, ModelConfig config, string name)
    {
        ArgumentNullException.ThrowIfNull(w);
        ArgumentNullException.ThrowIfNull(config);
        SyntheticGguf.AddLlamaConfig(w, config, name);
    }

    /// <summary>
    /// Embeds a SentencePiece vocabulary as <c>tokenizer.ggml.*</c> keys (model "llama"): the pieces, their
    /// scores, their types (SentencePiece and GGUF number the types alike: 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte), the BOS / EOS / UNK (and PAD when set) ids, BOS added and EOS not,
    /// and whether a dummy-prefix space is added.
    /// </summary>
    public static void AddSentencePieceVocabulary(GgufWriter w, SentencePieceModel model)
    {
        ArgumentNullException.ThrowIfNull(w);
        ArgumentNullException.ThrowIfNull(model);
        int n = model.Pieces.Count;
        var tokens = new string[n];
        var scores = new float[n];
        var types = new int[n];
        for (int i = 0; i < n; i++)
        {
            tokens[i] = model.Pieces[i].Piece;
            scores[i] = model.Pieces[i].Score;
            types[i] = (int)model.Pieces[i].Type;
        }
        w.AddMetadata("tokenizer.ggml.model", "llama");
        w.AddMetadata("tokenizer.ggml.tokens", tokens);
        w.AddMetadata("tokenizer.ggml.scores", scores);
        w.AddMetadata("tokenizer.ggml.token_type", types);
        AddId(w, "tokenizer.ggml.bos_token_id", model.BosId, n);
        AddId(w, "tokenizer.ggml.eos_token_id", model.EosId, n);
        AddId(w, "tokenizer.ggml.unknown_token_id", model.UnkId, n);
        AddId(w, "tokenizer.ggml.padding_token_id", model.PadId, n);
        w.AddMetadata("tokenizer.ggml.add_bos_token", true);
        w.AddMetadata("tokenizer.ggml.add_eos_token", false);
        w.AddMetadata("tokenizer.ggml.add_space_prefix", model.AddDummyPrefix);
    }

    private static void AddId(GgufWriter w, string key, int id, int vocab)
    {
        if (id >= 0 && id < vocab)
        {
            w.AddMetadata(key, (uint)id);
        }
    }
}
