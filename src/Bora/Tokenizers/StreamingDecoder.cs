using System.Text;

namespace Bora.Tokenizers;

/// <summary>
/// Turns a stream of token ids into text as it arrives. Each <see cref="Push"/> returns only whole
/// characters: bytes of a UTF-8 sequence that is not complete yet (an emoji spread over four byte
/// tokens, say) are held until it completes. Invalid bytes become U+FFFD exactly as
/// <see cref="Encoding.UTF8"/>'s GetString would replace them; <see cref="Flush"/> ends the stream, turning
/// a still-incomplete tail into U+FFFD. The concatenation of every Push and the final Flush equals
/// UTF-8 decoding of all token bytes (<see cref="ITokenizer.TokenBytes"/>) at once.
/// </summary>
public sealed class StreamingDecoder
{
    private readonly ITokenizer _tokenizer;
    private readonly Decoder _utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();
    private char[] _chars = new char[64];
    private TokenId? _previous;

    /// <param name="tokenizer">Supplies each token's bytes.</param>
    /// <param name="previous">
    /// The token before the first one pushed, e.g. the last prompt token when streaming a continuation
    /// (null at the very start: the first piece then loses its SentencePiece dummy-prefix space).
    /// </param>
    public StreamingDecoder(ITokenizer tokenizer, TokenId? previous = null)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        _tokenizer = tokenizer;
        _previous = previous;
    }

    /// <summary>The last token pushed (null at the start or after <see cref="Reset"/>).</summary>
    public TokenId? Previous => _previous;

    /// <summary>Adds one token; returns the text it completes (possibly empty, never half a character).</summary>
    public string Push(TokenId id)
    {
        byte[] bytes = _tokenizer.TokenBytes(id, _previous);
        _previous = id;
        return Decode(bytes, flush: false);
    }

    /// <summary>Ends the stream: returns U+FFFD for a held incomplete sequence (or ""), and resets.</summary>
    public string Flush()
    {
        string tail = Decode([], flush: true);
        Reset();
        return tail;
    }

    /// <summary>Forgets held bytes and the previous token.</summary>
    public void Reset()
    {
        _utf8.Reset();
        _previous = null;
    }

    private string Decode(byte[] bytes, bool flush)
    {
        int needed = _utf8.GetCharCount(bytes, flush);
        if (needed == 0)
        {
            // Still advance the decoder's state (it may now hold these bytes).
            _utf8.GetChars(bytes, [], flush);
            return "";
        }
        if (_chars.Length < needed)
        {
            _chars = new char[Math.Max(needed, _chars.Length * 2)];
        }
        int n = _utf8.GetChars(bytes, 0, bytes.Length, _chars, 0, flush);
        return new string(_chars, 0, n);
    }
}
