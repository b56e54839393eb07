using System.Text;
using Bora.Tokenizers;

namespace Bora.Model.Tests.Generation;

/// <summary>
/// A byte-level tokenizer with a few word pieces. Ids: 0 &lt;unk&gt;, 1 &lt;s&gt; (BOS), 2 &lt;/s&gt; (EOS),
/// 3..258 the bytes 0x00..0xFF, then <see cref="Words"/> in order ('▁' stands for a space, as in SentencePiece).
/// </summary>
internal sealed class FakeTokenizer : ITokenizer
{
    public const int ByteBase = 3;
    public const int WordBase = ByteBase + 256;

    public static readonly string[] Words = ["▁Hello", "▁world", "!", "\n", "Us", "er", ":", "eful", "▁the", "lo!X", "▁x"];

    public int VocabSize => WordBase + Words.Length;

    public TokenId Bos => new(1);

    public TokenId Eos => new(2);

    public static TokenId Byte(byte b) => new(ByteBase + b);

    public static TokenId Word(string piece)
    {
        int i = Array.IndexOf(Words, piece);
        return i >= 0 ? new TokenId(WordBase + i) : throw new ArgumentException($"'{piece}' is not a word piece of the fake tokenizer");
    }

    public TokenId[] Encode(string text, bool addBos)
    {
        var ids = new List<TokenId>();
        if (addBos)
        {
            ids.Add(Bos);
        }
        foreach (byte b in Encoding.UTF8.GetBytes(text))
        {
            ids.Add(Byte(b));
        }
        return [.. ids];
    }

    public string Decode(ReadOnlySpan<TokenId> ids)
    {
        var bytes = new List<byte>();
        TokenId? prev = null;
        foreach (TokenId id in ids)
        {
            bytes.AddRange(TokenBytes(id, prev));
            prev = id;
        }
        return Encoding.UTF8.GetString([.. bytes]);
    }

    public byte[] TokenBytes(TokenId id, TokenId? previous)
    {
        int v = id.Value;
        if (v < ByteBase)
        {
            return [];
        }
        if (v < WordBase)
        {
            return [(byte)(v - ByteBase)];
        }
        string text = Words[v - WordBase].Replace('▁', ' ');
        if ((previous is null || previous == Bos) && text.StartsWith(' '))
        {
            text = text[1..];
        }
        return Encoding.UTF8.GetBytes(text);
    }

    public string PieceOf(TokenId id) => id.Value switch
    {
        0 => "<unk>",
        1 => "<s>",
        2 => "</s>",
        < WordBase => $"<0x{id.Value - ByteBase:X2}>",
        _ => Words[id.Value - WordBase],
    };

    public bool IsControl(TokenId id) => id.Value is 1 or 2;
}

/// <summary>A KV cache that remembers the tokens it has seen.</summary>
internal sealed class FakeCache(int maxLength) : IKvCache
{
    public List<TokenId> Tokens { get; } = [];

    public int Length => Tokens.Count;

    public int MaxLength { get; } = maxLength;

    public void Clear() => Tokens.Clear();
}

/// <summary>
/// A causal LM whose logits are a deterministic function of the token history: <c>logitsOf(history, row)</c>
/// fills the (V) row predicting the token after <c>history</c>. Records every Forward call.
/// </summary>
internal sealed class FakeCausalLM(int vocabSize, Action<IReadOnlyList<TokenId>, float[]> logitsOf) : ICausalLM
{
    public ModelConfig Config { get; } = new()
    {
        Dim = 8,
        NLayers = 1,
        NHeads = 1,
        NKvHeads = 1,
        HeadDim = 8,
        HiddenDim = 8,
        VocabSize = vocabSize,
        MaxSeqLen = 64,
    };

    /// <summary>Token count of each Forward call, in order.</summary>
    public List<int> Calls { get; } = [];

    public IKvCache CreateCache(int contextLength) => new FakeCache(contextLength);

    public void Forward(ReadOnlySpan<TokenId> tokens, IKvCache cache, Span<float> logits)
    {
        var c = (FakeCache)cache;
        int v = Config.VocabSize;
        if (c.Length + tokens.Length > c.MaxLength)
        {
            throw new InvalidOperationException($"forward past the cache: {c.Length} + {tokens.Length} > {c.MaxLength}");
        }
        bool all = logits.Length == tokens.Length * v;
        if (!all && logits.Length != v)
        {
            throw new ArgumentException($"logits has {logits.Length} elements; expected {v} or {tokens.Length * v}");
        }
        Calls.Add(tokens.Length);
        var row = new float[v];
        for (int t = 0; t < tokens.Length; t++)
        {
            c.Tokens.Add(tokens[t]);
            if (all || t == tokens.Length - 1)
            {
                Array.Clear(row);
                logitsOf(c.Tokens, row);
                row.CopyTo(logits.Slice(all ? t * v : 0, v));
            }
        }
    }

    /// <summary>A model that always strongly prefers <c>next(history)</c> (logit 10, others 0).</summary>
    public static FakeCausalLM Scripted(int vocabSize, Func<IReadOnlyList<TokenId>, TokenId> next) =>
        new(vocabSize, (h, row) => row[next(h).Value] = 10f);
}
