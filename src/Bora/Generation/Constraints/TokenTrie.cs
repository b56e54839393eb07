using System.Runtime.CompilerServices;
using Bora.Tokenizers;

namespace Bora.Generation.Constraints;

/// <summary>
/// The bytes every token adds to the text (mid-stream: SentencePiece's leading-space piece keeps its space),
/// arranged as a trie in preorder so a grammar can find every token it accepts in one linear walk that skips
/// rejected subtrees. Control tokens and tokens without bytes are left out (a constraint never allows them
/// as text). Built once per tokenizer (<see cref="Of"/>) and shared.
/// </summary>
/// <remarks>
/// Layout, with N = node count (the root is implicit, at depth 0): node i has <c>Label[i]</c> (its byte),
/// <c>Depth[i]</c> (1 = a child of the root), <c>SubtreeEnd[i]</c> (first node after its subtree), and the
/// tokens whose bytes end exactly there at <c>TokenIds[TokenStart[i] .. TokenStart[i + 1])</c>.
/// Example: tokens "a" (id 5), "ab" (id 9), "b" (id 2) give nodes 0 'a' (depth 1, end 2, tokens [5]),
/// 1 'b' (depth 2, end 2, tokens [9]), 2 'b' (depth 1, end 3, tokens [2]).
/// </remarks>
public sealed class TokenTrie
{
    private static readonly ConditionalWeakTable<ITokenizer, TokenTrie> Cache = new();

    private readonly byte[][] _bytes;   // (V) bytes of each token, empty for control tokens

    internal readonly byte[] Label;      // (N)
    internal readonly int[] Depth;       // (N)
    internal readonly int[] SubtreeEnd;  // (N)
    internal readonly int[] TokenStart;  // (N + 1)
    internal readonly int[] TokenIds;    // (tokens with bytes)

    private TokenTrie(ITokenizer tokenizer)
    {
        VocabSize = tokenizer.VocabSize;
        Eos = tokenizer.Eos;
        _bytes = new byte[VocabSize][];
        var withText = new List<int>(VocabSize);
        for (int i = 0; i < VocabSize; i++)
        {
            var id = new TokenId(i);
            // previous = the token itself: any non-BOS token keeps the dummy-prefix space, as mid-text.
            _bytes[i] = tokenizer.IsControl(id) ? [] : tokenizer.TokenBytes(id, id);
            if (_bytes[i].Length > 0)
            {
                withText.Add(i);
            }
        }
        withText.Sort((a, b) =>
        {
            int c = _bytes[a].AsSpan().SequenceCompareTo(_bytes[b]);
            return c != 0 ? c : a.CompareTo(b);
        });

        var label = new List<byte>();
        var depth = new List<int>();
        var tokenStart = new List<int>();
        var tokenIds = new List<int>(withText.Count);
        var path = new List<int>();   // node of each depth 1 .. path.Count on the current branch
        var end = new List<int>();
        byte[] previous = [];
        foreach (int id in withText)
        {
            byte[] s = _bytes[id];
            int lcp = s.AsSpan().CommonPrefixLength(previous);
            while (path.Count > lcp)
            {
                end[path[^1]] = label.Count;
                path.RemoveAt(path.Count - 1);
            }
            for (int d = lcp; d < s.Length; d++)
            {
                path.Add(label.Count);
                label.Add(s[d]);
                depth.Add(d + 1);
                end.Add(-1);
                tokenStart.Add(tokenIds.Count);
            }
            tokenIds.Add(id);
            previous = s;
        }
        foreach (int node in path)
        {
            end[node] = label.Count;
        }
        tokenStart.Add(tokenIds.Count);
        Label = [.. label];
        Depth = [.. depth];
        SubtreeEnd = [.. end];
        TokenStart = [.. tokenStart];
        TokenIds = [.. tokenIds];
        MaxDepth = depth.Count == 0 ? 0 : depth.Max();
    }

    /// <summary>The trie of a tokenizer (built on first use, cached per tokenizer instance).</summary>
    public static TokenTrie Of(ITokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        return Cache.GetValue(tokenizer, t => new TokenTrie(t));
    }

    /// <summary>The tokenizer's vocabulary size.</summary>
    public int VocabSize { get; }

    /// <summary>The end-of-sequence token.</summary>
    public TokenId Eos { get; }

    /// <summary>N: trie nodes.</summary>
    public int NodeCount => Label.Length;

    /// <summary>Longest token, in bytes.</summary>
    public int MaxDepth { get; }

    /// <summary>The bytes a token adds mid-text (empty for control tokens and ids outside the vocabulary).</summary>
    public ReadOnlySpan<byte> BytesOf(TokenId id) => (uint)id.Value < (uint)VocabSize ? _bytes[id.Value] : [];
}
