using System.Text;
using Bora.Tokenizers;

namespace Bora.Model.Tests.Generation;

public sealed class StreamingDecoderTests
{
    private static readonly FakeTokenizer Tok = new();

    private static TokenId[] Bytes(params byte[] bytes) => [.. bytes.Select(FakeTokenizer.Byte)];

    private static List<string> PushAll(StreamingDecoder d, IEnumerable<TokenId> ids) => [.. ids.Select(d.Push)];

    [Fact]
    public void Emoji_InFourByteTokens_AppearsOnlyWhenComplete()
    {
        byte[] utf8 = Encoding.UTF8.GetBytes("😀"); // F0 9F 98 80
        Assert.Equal(4, utf8.Length);
        var d = new StreamingDecoder(Tok);
        Assert.Equal(["", "", "", "😀"], PushAll(d, Bytes(utf8)));
        Assert.Equal("", d.Flush());
    }

    [Fact]
    public void MultiByteCharacters_MixedWithPieces()
    {
        var d = new StreamingDecoder(Tok);
        // "Hello" (first piece: dummy-prefix space dropped), "é" as C3 A9, " world", "€" as E2 82 AC.
        TokenId[] ids = [FakeTokenizer.Word("▁Hello"), .. Bytes(0xC3, 0xA9), FakeTokenizer.Word("▁world"), .. Bytes(0xE2, 0x82, 0xAC)];
        Assert.Equal(["Hello", "", "é", " world", "", "", "€"], PushAll(d, ids));
    }

    [Fact]
    public void ContinuationAfterPrompt_KeepsTheSpace()
    {
        var d = new StreamingDecoder(Tok, previous: FakeTokenizer.Word("▁Hello"));
        Assert.Equal(" world", d.Push(FakeTokenizer.Word("▁world")));
        var afterBos = new StreamingDecoder(Tok, previous: Tok.Bos);
        Assert.Equal("world", afterBos.Push(FakeTokenizer.Word("▁world")));
    }

    [Theory]
    [InlineData(new byte[] { 0xFF, 0x41 })]              // never valid -> U+FFFD at once
    [InlineData(new byte[] { 0xC3, 0x41 })]              // lead byte then ASCII -> U+FFFD A
    [InlineData(new byte[] { 0xF0, 0x9F, 0x41, 0x42 })]  // truncated 4-byte sequence -> one U+FFFD
    [InlineData(new byte[] { 0xED, 0xA0, 0x80 })]        // encoded surrogate: invalid
    [InlineData(new byte[] { 0xC0, 0xAF })]              // overlong
    [InlineData(new byte[] { 0x41, 0xF0, 0x9F, 0x98 })]  // incomplete at the end -> U+FFFD on Flush
    [InlineData(new byte[] { 0x80, 0x80, 0xE2, 0x82 })]
    public void InvalidSequences_BecomeReplacementCharacters_AsUtf8Decoding(byte[] bytes)
    {
        var d = new StreamingDecoder(Tok);
        string streamed = string.Concat(PushAll(d, Bytes(bytes))) + d.Flush();
        Assert.Equal(Encoding.UTF8.GetString(bytes), streamed);
        Assert.Contains('\uFFFD', streamed);
    }

    [Fact]
    public void IncompleteTail_IsHeldUntilFlush()
    {
        var d = new StreamingDecoder(Tok);
        Assert.Equal(["A", "", ""], PushAll(d, Bytes(0x41, 0xF0, 0x9F)));
        Assert.Equal("\uFFFD", d.Flush());
        Assert.Null(d.Previous);
    }

    [Fact]
    public void RandomByteStreams_MatchWholeUtf8Decoding()
    {
        var rng = new Random(2024);
        string[] samples = ["a", "é", "€", "😀", "日本", "\n", " "];
        for (int trial = 0; trial < 300; trial++)
        {
            // Mostly valid text with some random bytes mixed in.
            var bytes = new List<byte>();
            int n = rng.Next(0, 20);
            for (int i = 0; i < n; i++)
            {
                if (rng.Next(5) == 0)
                {
                    bytes.Add((byte)rng.Next(256));
                }
                else
                {
                    bytes.AddRange(Encoding.UTF8.GetBytes(samples[rng.Next(samples.Length)]));
                }
            }
            var d = new StreamingDecoder(Tok);
            var parts = PushAll(d, Bytes([.. bytes]));
            foreach (string part in parts)
            {
                Assert.False(part.Length > 0 && char.IsHighSurrogate(part[^1]), "a delta ended in half a surrogate pair");
            }
            Assert.Equal(Encoding.UTF8.GetString([.. bytes]), string.Concat(parts) + d.Flush());
        }
    }

    [Fact]
    public void ControlTokens_ContributeNothing()
    {
        var d = new StreamingDecoder(Tok);
        Assert.Equal(["", "Hello", ""], PushAll(d, [Tok.Bos, FakeTokenizer.Word("▁Hello"), Tok.Eos]));
    }
}
