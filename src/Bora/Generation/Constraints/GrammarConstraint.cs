using System.Collections.Concurrent;
using Bora.Tokenizers;

namespace Bora.Generation.Constraints;

/// <summary>
/// A deterministic byte-level automaton (e.g. a JSON pushdown automaton whose stack lives in the state).
/// States are values: equal states accept the same continuations, so masks can be cached by state.
/// </summary>
public interface IByteGrammar<TState> where TState : struct, IEquatable<TState>
{
    /// <summary>The state before any byte.</summary>
    TState Start { get; }

    /// <summary>The state after <paramref name="b"/>, or false when the grammar rejects it here.</summary>
    bool Next(in TState state, byte b, out TState next);

    /// <summary>True when the text so far is a complete sentence and nothing may follow.</summary>
    bool IsComplete(in TState state);
}

/// <summary>
/// Token masks by grammar state, shared by every constraint over the same grammar and trie (thread-safe).
/// Bounded: it forgets everything when it holds <see cref="Capacity"/> masks.
/// </summary>
public sealed class GrammarMaskCache<TState> where TState : struct, IEquatable<TState>
{
    private readonly ConcurrentDictionary<TState, ulong[]> _masks = new();

    public GrammarMaskCache(int capacity = 1024)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        Capacity = capacity;
    }

    /// <summary>Most masks kept (each V / 8 bytes).</summary>
    public int Capacity { get; }

    /// <summary>Masks held now.</summary>
    public int Count => _masks.Count;

    internal ulong[] GetOrAdd(TState state, Func<TState, ulong[]> compute)
    {
        if (_masks.TryGetValue(state, out var mask))
        {
            return mask;
        }
        mask = compute(state);
        if (_masks.Count >= Capacity)
        {
            _masks.Clear();
        }
        _masks.TryAdd(state, mask);
        return mask;
    }
}

/// <summary>
/// Constrains tokens to those whose bytes keep an <see cref="IByteGrammar{TState}"/> valid. The allowed set
/// of a state is found by one preorder walk of the <see cref="TokenTrie"/>: each node advances its parent's
/// state by its byte, a rejected node skips its whole subtree, and every token ending at an accepted node
/// is allowed; the result (a bitset over V) is cached by state. EOS is allowed exactly when the grammar
/// says the text is complete.
/// </summary>
public sealed class GrammarConstraint<TState> : ITokenConstraint where TState : struct, IEquatable<TState>
{
    private readonly TokenTrie _trie;
    private readonly IByteGrammar<TState> _grammar;
    private readonly GrammarMaskCache<TState> _cache;
    private readonly Func<TState, ulong[]> _compute;
    private TState _state;

    /// <param name="trie">The tokenizer's trie (<see cref="TokenTrie.Of"/>).</param>
    /// <param name="grammar">The automaton.</param>
    /// <param name="cache">Masks shared with other constraints over the same grammar and trie; null = private.</param>
    public GrammarConstraint(TokenTrie trie, IByteGrammar<TState> grammar, GrammarMaskCache<TState>? cache = null)
    {
        ArgumentNullException.ThrowIfNull(trie);
        ArgumentNullException.ThrowIfNull(grammar);
        _trie = trie;
        _grammar = grammar;
        _cache = cache ?? new GrammarMaskCache<TState>();
        _compute = Compute;
        _state = grammar.Start;
    }

    /// <summary>The grammar state after every token advanced so far.</summary>
    public TState State => _state;

    public bool IsComplete => _grammar.IsComplete(_state);

    public bool Mask(Span<float> logits)
    {
        ulong[] allowed = _cache.GetOrAdd(_state, _compute);
        bool any = false;
        int known = Math.Min(logits.Length, _trie.VocabSize);
        for (int i = 0; i < known; i++)
        {
            if ((allowed[i >> 6] & (1UL << (i & 63))) == 0)
            {
                logits[i] = float.NegativeInfinity;
            }
            else
            {
                any = true;
            }
        }
        logits[known..].Fill(float.NegativeInfinity); // ids the tokenizer does not know
        return any;
    }

    public void Advance(TokenId token)
    {
        if (token == _trie.Eos)
        {
            if (!IsComplete)
            {
                throw new InvalidOperationException("end of sequence before the constrained output is complete");
            }
            return;
        }
        ReadOnlySpan<byte> bytes = _trie.BytesOf(token);
        if (bytes.IsEmpty)
        {
            throw new InvalidOperationException($"token {token.Value} has no text; the constraint does not allow it");
        }
        TState s = _state;
        foreach (byte b in bytes)
        {
            if (!_grammar.Next(s, b, out s))
            {
                throw new InvalidOperationException($"token {token.Value} is not allowed by the constraint here");
            }
        }
        _state = s;
    }

    /// <summary>True when the grammar accepts <paramref name="bytes"/> from <paramref name="state"/> (no side effects).</summary>
    public static bool Accepts(IByteGrammar<TState> grammar, TState state, ReadOnlySpan<byte> bytes, out TState end)
    {
        ArgumentNullException.ThrowIfNull(grammar);
        end = state;
        foreach (byte b in bytes)
        {
            if (!grammar.Next(end, b, out end))
            {
                return false;
            }
        }
        return true;
    }

    private ulong[] Compute(TState start)
    {
        var bits = new ulong[(_trie.VocabSize + 63) / 64];
        var states = new TState[_trie.MaxDepth + 1]; // states[d]: state after the first d bytes of the current path
        states[0] = start;
        byte[] label = _trie.Label;
        int[] depth = _trie.Depth, end = _trie.SubtreeEnd, tokenStart = _trie.TokenStart, ids = _trie.TokenIds;
        int n = label.Length;
        for (int i = 0; i < n;)
        {
            int d = depth[i];
            if (!_grammar.Next(states[d - 1], label[i], out states[d]))
            {
                i = end[i];
                continue;
            }
            for (int t = tokenStart[i]; t < tokenStart[i + 1]; t++)
            {
                bits[ids[t] >> 6] |= 1UL << (ids[t] & 63);
            }
            i++;
        }
        int eos = _trie.Eos.Value;
        if (_grammar.IsComplete(start) && (uint)eos < (uint)_trie.VocabSize)
        {
            bits[eos >> 6] |= 1UL << (eos & 63);
        }
        return bits;
    }
}

/// <summary>Bans a fixed set of tokens (e.g. [TOOL_CALLS] for tool_choice "none"); never complete.</summary>
public sealed class BannedTokensConstraint(IReadOnlyCollection<TokenId> banned) : ITokenConstraint
{
    private readonly TokenId[] _banned = [.. banned];

    public bool IsComplete => false;

    public bool Mask(Span<float> logits)
    {
        foreach (var t in _banned)
        {
            if ((uint)t.Value < (uint)logits.Length)
            {
                logits[t.Value] = float.NegativeInfinity;
            }
        }
        return _banned.Length < logits.Length; // some other token remains
    }

    public void Advance(TokenId token)
    {
        if (Array.IndexOf(_banned, token) >= 0)
        {
            throw new InvalidOperationException($"token {token.Value} is banned");
        }
    }
}

/// <summary>Forces one token first (e.g. [TOOL_CALLS]), then hands over to <paramref name="then"/>.</summary>
public sealed class ForcedTokenConstraint(TokenId first, ITokenConstraint then) : ITokenConstraint
{
    private bool _done;

    public bool IsComplete => _done && then.IsComplete;

    public bool Mask(Span<float> logits)
    {
        if (_done)
        {
            return then.Mask(logits);
        }
        if ((uint)first.Value >= (uint)logits.Length)
        {
            logits.Fill(float.NegativeInfinity);
            return false;
        }
        float keep = logits[first.Value];
        logits.Fill(float.NegativeInfinity);
        logits[first.Value] = float.IsNegativeInfinity(keep) ? 0f : keep;
        return true;
    }

    public void Advance(TokenId token)
    {
        if (_done)
        {
            then.Advance(token);
            return;
        }
        if (token != first)
        {
            throw new InvalidOperationException($"token {token.Value} given where only {first.Value} is allowed");
        }
        _done = true;
    }
}
