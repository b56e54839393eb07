using Bora.Chat;
using Bora.Loading;
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
/// The chains and their weights are laid out by <see cref="ScriptedTokens.ChainModel"/>; repeated text is written with
/// other pieces or byte tokens (<see cref="ScriptedTokens.Distinct"/>), which decode to the same text.
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
        var (config, model) = ScriptedTokens.ChainModel(tok, Dim, Gain, call, answer);
        return new LoadedModel(new ModelSource(Id, CheckpointLayout.Mistral, "", "", TestModels.V3TokenizerPath), config, model, tok);
    }
}
