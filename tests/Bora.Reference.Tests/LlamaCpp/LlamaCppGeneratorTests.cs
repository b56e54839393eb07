using Bora.Generation;
using Bora.Model;
using Bora.Tokenizers;

namespace Bora.Reference.Tests.LlamaCpp;

/// <summary>llama.cpp behind Bora's ICausalLM, so Bora's Generator can drive a real model.</summary>
internal sealed class LlamaCppCausalLM(LlamaCppReference llama) : ICausalLM
{
    public ModelConfig Config { get; } = new()
    {
        Dim = 64,
        NLayers = 5,
        NHeads = 8,
        NKvHeads = 4,
        HeadDim = 8,
        HiddenDim = 172,
        VocabSize = llama.VocabSize,
        MaxSeqLen = llama.ContextSize,
    };

    public IKvCache CreateCache(int contextLength) => new Cache(llama, Math.Min(contextLength, llama.ContextSize));

    public void Forward(ReadOnlySpan<TokenId> tokens, IKvCache cache, Span<float> logits)
    {
        var c = (Cache)cache;
        int[] ids = new int[tokens.Length];
        for (int i = 0; i < ids.Length; i++)
        {
            ids[i] = tokens[i].Value;
        }
        llama.Forward(ids, c.Length, logits);
        c.Length += ids.Length;
    }

    private sealed class Cache(LlamaCppReference llama, int max) : IKvCache
    {
        public int Length { get; set; }

        public int MaxLength => max;

        public void Clear()
        {
            llama.ClearMemory();
            Length = 0;
        }
    }
}

/// <summary>llama.cpp's vocabulary behind Bora's ITokenizer (just what the Generator needs).</summary>
internal sealed class LlamaCppTokenizer(LlamaCppReference llama) : ITokenizer
{
    public int VocabSize => llama.VocabSize;

    public TokenId Bos => new(llama.Bos);

    public TokenId Eos => new(llama.Eos);

    public TokenId[] Encode(string text, bool addBos) => [.. llama.Tokenize(text, addBos).Select(i => new TokenId(i))];

    public string Decode(ReadOnlySpan<TokenId> ids) => llama.Detokenize([.. ids.ToArray().Select(t => t.Value)]);

    public byte[] TokenBytes(TokenId id, TokenId? previous)
    {
        byte[] piece = llama.TokenPiece(id.Value);
        return (previous is null || previous == Bos) && piece.Length > 0 && piece[0] == (byte)' ' ? piece[1..] : piece;
    }

    public string PieceOf(TokenId id) => System.Text.Encoding.UTF8.GetString(llama.TokenPiece(id.Value));

    public bool IsControl(TokenId id) => id == Bos || id == Eos;
}

[Collection(LlamaCppCollection.Name)]
public sealed class LlamaCppGeneratorTests
{
    [Fact]
    public void BoraGenerator_OverLlamaCpp_ReproducesRunCGreedyText()
    {
        string dir = TestPaths.Shared("models", "stories260K");
        if (!Directory.Exists(dir))
        {
            return;
        }
        using var llama = new LlamaCppReference(Path.Combine(dir, "stories260K.gguf"), contextSize: 256);
        var generator = new Generator(new LlamaCppCausalLM(llama), new LlamaCppTokenizer(llama));
        var result = generator.Generate([], SamplingOptions.Greedy with { MaxTokens = 256 });
        string expected = File.ReadAllText(Path.Combine(dir, "runc-greedy-from-bos.txt"));
        Assert.Equal(expected, result.Text + "\n");
        Assert.Equal(FinishReason.Length, result.FinishReason);
        Assert.Equal(256, result.Tokens.Count);

        // The same run with a stop string ends just before it.
        var stopped = generator.Generate([], SamplingOptions.Greedy with { StopStrings = ["Lily's mom"] });
        Assert.Equal(expected[..expected.IndexOf("Lily's mom", StringComparison.Ordinal)], stopped.Text);
        Assert.Equal(FinishReason.Stop, stopped.FinishReason);
    }
}
