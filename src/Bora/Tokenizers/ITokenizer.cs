namespace Bora.Tokenizers;

/// <summary>
/// Text to token ids and back. Encoding user text never produces control tokens.
/// </summary>
public interface ITokenizer
{
    int VocabSize { get; }

    TokenId Bos { get; }

    TokenId Eos { get; }

    /// <summary>Encodes text; prepends BOS when <paramref name="addBos"/>.</summary>
    TokenId[] Encode(string text, bool addBos);

    /// <summary>Decodes ids to text (control tokens such as BOS/EOS are skipped).</summary>
    string Decode(ReadOnlySpan<TokenId> ids);

    /// <summary>
    /// The bytes this token contributes to the output when it follows <paramref name="previous"/>
    /// (null at the start). SentencePiece drops the dummy-prefix space of the first piece after BOS
    /// or at the start. Control tokens contribute nothing. Used by the streaming detokenizer.
    /// </summary>
    byte[] TokenBytes(TokenId id, TokenId? previous);

    /// <summary>The piece text of a token as stored in the vocabulary (for inspection and debugging).</summary>
    string PieceOf(TokenId id);

    /// <summary>True for control/special tokens (BOS, EOS, [INST], ...).</summary>
    bool IsControl(TokenId id);
}
