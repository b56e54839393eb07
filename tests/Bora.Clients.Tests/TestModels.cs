using Bora.Formats.Gguf;
using Bora.Loading;
using Bora.Model;
using Bora.Numerics;
using Bora.Quantization;
using Bora.Tokenizers;

namespace Bora.Clients.Tests;

/// <summary>
/// The two small models the client tests run: the embedded default bora-kjv (a real trained model, v1 text chat
/// format, no control tokens) and a tiny random-weight llama with Mistral's v3 tokenizer (control tokens
/// [INST], [TOOL_CALLS], [AVAILABLE_TOOLS], [PREFIX]/[SUFFIX]...), written once per test run to a temp file.
/// </summary>
internal static class TestModels
{
    public const string KjvId = "bora-kjv";

    public const string TinyV3Id = "tiny-v3";

    public static string KjvPath => Path.Combine(TestPaths.RepoRoot, "models", "bora-kjv");

    public static string V3TokenizerPath => TestPaths.Shared("tokenizers", "mistral", "mistral_instruct_tokenizer_240323.model.v3");

    /// <summary>Whether the shared test data (Mistral's v3 tokenizer) is present; tests of the v3 model skip without it.</summary>
    public static bool V3Available => File.Exists(V3TokenizerPath);

    public const string SkipMessage = "skipped: ../shared/testdata (Mistral's v3 tokenizer) is absent";

    /// <summary>D 32, 2 layers, 4 query heads, 2 KV heads of 8, F 64, V 32768 (the v3 vocabulary), context 512.</summary>
    public static ModelConfig TinyV3Config { get; } = new()
    {
        Dim = 32,
        NLayers = 2,
        NHeads = 4,
        NKvHeads = 2,
        HeadDim = 8,
        HiddenDim = 64,
        VocabSize = 32768,
        MaxSeqLen = 512,
    };

    private static readonly Lazy<string> TinyV3File = new(WriteTinyV3);
    private static readonly Lazy<LoadedModel> Kjv = new(() => ModelLoader.Load(KjvPath));
    private static readonly Lazy<LoadedModel> TinyV3 = new(() => ModelLoader.Load(TinyV3Path));

    /// <summary>The tiny v3 GGUF (F32 weights), written on first use.</summary>
    public static string TinyV3Path => TinyV3File.Value;

    public static LoadedModel LoadKjv() => Kjv.Value;

    public static LoadedModel LoadTinyV3() => TinyV3.Value;

    private static string WriteTinyV3()
    {
        var dir = TestPaths.NewTempDir("clients-models");
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try
            {
                Directory.Delete(dir, recursive: true);
            }
            catch (IOException)
            {
                // still mapped by a loaded model on some platforms: /tmp is cleaned eventually
            }
        };
        // A GGUF holding only the v3 vocabulary, as SyntheticGguf's vocabulary source.
        string vocab = Path.Combine(dir, "vocab-v3.gguf");
        var w = new GgufWriter();
        w.AddMetadata("general.architecture", "llama");
        GgufLlamaMetadata.AddSentencePieceVocabulary(w, SentencePieceModel.Load(V3TokenizerPath));
        w.Write(vocab);
        string path = Path.Combine(dir, TinyV3Id + ".gguf");
        using (var source = GgufFile.Open(vocab))
        {
            SyntheticGguf.Write(path, TinyV3Config, seed: 5, DType.F32, source);
        }
        return path;
    }
}
