using System.Text.RegularExpressions;
using Bora.Model;
using Bora.Numerics;
using Bora.Tokenizers;

namespace Bora;

/// <summary>Token sequences for scripted test models (a model whose output is fixed by its weights).</summary>
internal static class ScriptedTokens
{
    /// <summary>
    /// Token ids that decode to <paramref name="text"/> (no spaces in it), none in <paramref name="used"/> (which
    /// they join): greedy longest match over unused plain pieces, else the character's unused byte token &lt;0xNN&gt;.
    /// A scripted model maps each token to its successor, so no id may appear twice.
    /// </summary>
    /// <exception cref="InvalidOperationException">A character has no unused token, or the ids do not decode to the text.</exception>
    public static List<TokenId> Distinct(ITokenizer tok, string text, HashSet<TokenId> used)
    {
        var pieces = new Dictionary<string, TokenId>(StringComparer.Ordinal);
        var bytes = new Dictionary<int, TokenId>();
        for (int id = 0; id < tok.VocabSize; id++)
        {
            var t = new TokenId(id);
            if (tok.IsControl(t))
            {
                continue;
            }
            string piece = tok.PieceOf(t);
            var m = Regex.Match(piece, "^<0x([0-9A-F]{2})>$");
            if (m.Success)
            {
                bytes[Convert.ToInt32(m.Groups[1].Value, 16)] = t;
            }
            else if (!piece.Contains('\u2581', StringComparison.Ordinal))
            {
                pieces.TryAdd(piece, t);
            }
        }
        var result = new List<TokenId>();
        int pos = 0;
        while (pos < text.Length)
        {
            bool found = false;
            for (int len = Math.Min(12, text.Length - pos); len >= 1 && !found; len--)
            {
                if (pieces.TryGetValue(text.Substring(pos, len), out var id) && used.Add(id))
                {
                    result.Add(id);
                    pos += len;
                    found = true;
                }
            }
            if (!found)
            {
                if (text[pos] >= 128 || !bytes.TryGetValue(text[pos], out var b) || !used.Add(b))
                {
                    throw new InvalidOperationException($"no unused token left for '{text[pos]}' in '{text}'");
                }
                result.Add(b);
                pos++;
            }
        }
        string decoded = tok.Decode([.. result]);
        if (decoded != text)
        {
            throw new InvalidOperationException($"the scripted tokens decode to '{decoded}', not '{text}'");
        }
        return result;
    }

    /// <summary>
    /// The one-layer transformer of a scripted model: every matrix but the embedding and the output head is zero and
    /// the norms are ones, so the residual stream stays the token's embedding row and the logits are output x that
    /// row. embedding: (V, D); output: (V, D); the config gives D, heads and F.
    /// </summary>
    public static Transformer Model(ModelConfig config, float[] embedding, float[] output)
    {
        int d = config.Dim, v = config.VocabSize;
        F32Matrix Zero(int rows, int cols) => new(new float[rows * cols], rows, cols);
        float[] Ones() => [.. Enumerable.Repeat(1f, d)];
        int q = config.NHeads * config.HeadDim, kv = config.NKvHeads * config.HeadDim;
        return new Transformer(new TransformerWeights
        {
            Config = config,
            TokenEmbedding = new F32Matrix(embedding, v, d),
            Layers =
            [
                new LayerWeights
                {
                    AttentionNorm = Ones(),
                    Wq = Zero(q, d),
                    Wk = Zero(kv, d),
                    Wv = Zero(kv, d),
                    Wo = Zero(d, q),
                    FfnNorm = Ones(),
                    FeedForward = new FeedForwardWeights { W1 = Zero(config.HiddenDim, d), W2 = Zero(d, config.HiddenDim), W3 = Zero(config.HiddenDim, d) },
                },
            ],
            FinalNorm = Ones(),
            Output = new F32Matrix(output, v, d),
        });
    }
}
