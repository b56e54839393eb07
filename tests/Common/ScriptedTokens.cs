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
    /// A scripted model over <paramref name="tok"/>'s vocabulary whose greedy successor of each token of
    /// <paramref name="chains"/> is the next token of its chain, and of a chain's last token EOS. Config: D =
    /// <paramref name="dim"/>, 1 layer, 4 query heads and 2 kv heads of 16, F 32, 512 positions.
    /// </summary>
    /// <remarks>
    /// Chain tokens get dimensions 0, 1, 2, ... in order (legend: V = vocabulary, D = dim). The embedding row of the
    /// token at dimension i is the one-hot e_i; RMSNorm turns it into sqrt(D) e_i; the output row of its successor
    /// holds <paramref name="gain"/> at i, so the successor's logit is gain sqrt(D) and every other logit is 0.
    /// Example: chain [/INST] → [TOOL_CALLS] → '[' puts e_0 in the row of [/INST], e_1 in the row of [TOOL_CALLS],
    /// gain at column 0 of [TOOL_CALLS]'s output row and gain at column 1 of '['s. A token may appear only once over
    /// all chains (EOS, only ever a successor, excepted): see <see cref="Distinct"/>.
    /// </remarks>
    /// <exception cref="InvalidOperationException">The chains need more than D dimensions, or a token appears twice.</exception>
    public static (ModelConfig Config, Transformer Model) ChainModel(ITokenizer tok, int dim, float gain, params TokenId[][] chains)
    {
        var config = new ModelConfig
        {
            Dim = dim,
            NLayers = 1,
            NHeads = 4,
            NKvHeads = 2,
            HeadDim = 16,
            HiddenDim = 32,
            VocabSize = tok.VocabSize,
            MaxSeqLen = 512,
        };
        int v = config.VocabSize;
        var embedding = new float[v * dim]; // (V, D)
        var output = new float[v * dim];    // (V, D)
        int d = 0;
        foreach (var chain in chains)
        {
            for (int i = 0; i < chain.Length; i++, d++)
            {
                if (d >= dim)
                {
                    throw new InvalidOperationException($"the scripted chains need more than {dim} dimensions");
                }
                embedding[(chain[i].Value * dim) + d] = 1f;
                var next = i + 1 < chain.Length ? chain[i + 1] : tok.Eos;
                output[(next.Value * dim) + d] = gain;
            }
        }
        if (chains.SelectMany(c => c).Distinct().Count() != chains.Sum(c => c.Length))
        {
            throw new InvalidOperationException("a token appears twice in the scripted chains");
        }
        return (config, Model(config, embedding, output));
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
