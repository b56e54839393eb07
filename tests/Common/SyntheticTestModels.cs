using Bora.Formats.Gguf;
using Bora.Model;
using Bora.Numerics;

namespace Bora;

/// <summary>Synthetic GGUF models (random weights) with the vocabulary of the shared stories260K model.</summary>
internal static class SyntheticTestModels
{
    /// <summary>stories260K.gguf in the shared test data: its 512-token vocabulary goes into every synthetic file.</summary>
    public static string StoriesVocabulary => TestPaths.Shared("models", "stories260K", "stories260K.gguf");

    /// <summary>
    /// A tiny Mixtral-style MoE: D 64, 2 layers, 4 query heads and 2 kv heads of 16, F 96, V 512 (stories260K's
    /// vocabulary), 4 experts with 2 per token.
    /// </summary>
    public static ModelConfig TinyMoe => new()
    {
        Dim = 64,
        NLayers = 2,
        NHeads = 4,
        NKvHeads = 2,
        HeadDim = 16,
        HiddenDim = 96,
        VocabSize = 512,
        NormEps = 1e-5f,
        RopeTheta = 10000f,
        MaxSeqLen = 64,
        NExperts = 4,
        NExpertsPerToken = 2,
    };

    /// <summary>
    /// Writes a GGUF at <paramref name="path"/> with random weights of <paramref name="config"/> (seeded), its matrices
    /// in <paramref name="matrixType"/>, and the vocabulary of <see cref="StoriesVocabulary"/> (which must exist).
    /// </summary>
    public static void WriteWithStoriesVocabulary(string path, ModelConfig config, int seed, DType matrixType)
    {
        using var vocabulary = GgufFile.Open(StoriesVocabulary);
        SyntheticGguf.Write(path, config, seed, matrixType, vocabulary);
    }
}
