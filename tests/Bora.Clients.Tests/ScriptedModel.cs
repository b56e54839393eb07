using Bora.Chat;
using Bora.Loading;
using Bora.Model;
using Bora.Tokenizers;

namespace Bora.Clients.Tests;

/// <summary>
/// A "scripted" model with Mistral's v3 tokenizer that really calls a tool (the tiny random model rarely closes a
/// forced call list within a test's token budget): a transformer whose attention and feed-forward outputs are zero
/// (Wo = W2 = 0), so each logit depends only on the current token, with embedding and output matrices that make
/// chains. After [/INST] it greedily writes [TOOL_CALLS] <see cref="CallJson"/> EOS; after [/TOOL_RESULTS] it
/// writes <see cref="Answer"/> EOS. Forced-call constraints allow every token of the chain, so greedy decoding
/// under them writes exactly the chain.
/// </summary>
/// <remarks>
/// Chain tokens get dimensions 0, 1, 2, ... (D = <see cref="Dim"/>, legend: V = vocabulary, D = dim). The
/// embedding row of the token at dimension i is the one-hot e_i; RMSNorm turns it into sqrt(D) e_i; the output
/// row of its successor holds <see cref="Gain"/> at i, so the successor's logit is Gain sqrt(D) and every other
/// logit is 0. Example: chain [/INST] → [TOOL_CALLS] → '[' puts e_0 in the row of [/INST], e_1 in the row of
/// [TOOL_CALLS], Gain at column 0 of [TOOL_CALLS]'s output row and Gain at column 1 of '['s. Every token may
/// appear once over all chains except EOS (a chain's end: it only has output entries), so repeated text is
/// written with other pieces or byte tokens (<see cref="ScriptedTokens.Distinct"/>), which decode to the same text.
/// </remarks>
internal static class ScriptedModel
{
    public const string Id = "scripted-v3";

    public const string CallJson = """[{"name":"get_weather","arguments":{"city":"Paris"}}]""";

    public const string Answer = "Sunny.";

    private const int Dim = 128;
    private const float Gain = 10f;

    private static readonly Lazy<LoadedModel> Model = new(Build);

    public static LoadedModel Load() => Model.Value;

    private static LoadedModel Build()
    {
        var tok = SentencePieceTokenizer.Load(TestModels.V3TokenizerPath);
        var controls = ControlTokens.Of(tok);
        var used = new HashSet<TokenId>();
        TokenId[] call = [controls.Get("[/INST]", "the scripted model"), controls.Get("[TOOL_CALLS]", "the scripted model"), .. ScriptedTokens.Distinct(tok, CallJson, used)];
        TokenId[] answer = [controls.Get("[/TOOL_RESULTS]", "the scripted model"), .. ScriptedTokens.Distinct(tok, Answer, used)];
        var config = new ModelConfig
        {
            Dim = Dim,
            NLayers = 1,
            NHeads = 4,
            NKvHeads = 2,
            HeadDim = 16,
            HiddenDim = 32,
            VocabSize = tok.VocabSize,
            MaxSeqLen = 512,
        };
        int v = config.VocabSize;
        var embedding = new float[v * Dim]; // (V, D)
        var output = new float[v * Dim];    // (V, D)
        int dim = 0;
        foreach (var chain in new[] { call, answer })
        {
            for (int i = 0; i < chain.Length; i++, dim++)
            {
                if (dim >= Dim)
                {
                    throw new InvalidOperationException($"the scripted chains need more than {Dim} dimensions");
                }
                embedding[(chain[i].Value * Dim) + dim] = 1f;
                var next = i + 1 < chain.Length ? chain[i + 1] : tok.Eos;
                output[(next.Value * Dim) + dim] = Gain;
            }
        }
        if (call.Concat(answer).Distinct().Count() != call.Length + answer.Length)
        {
            throw new InvalidOperationException("a token appears twice in the scripted chains");
        }
        var model = ScriptedTokens.Model(config, embedding, output);
        return new LoadedModel(new ModelSource(Id, CheckpointLayout.Mistral, "", "", TestModels.V3TokenizerPath), config, model, tok);
    }
}
