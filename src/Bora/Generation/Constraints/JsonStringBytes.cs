namespace Bora.Generation.Constraints;

/// <summary>
/// The byte rules inside JSON strings that <see cref="JsonGrammar"/> and <see cref="JsonSchemaGrammar"/> share:
/// well-formed UTF-8 (RFC 3629) and the hex digits of \uXXXX escapes (surrogates refused).
/// </summary>
/// <example>
/// "é" is C3 A9: <c>Utf8Lead(0xC3)</c> = (1, 0), then <c>Utf8Continuation(0xA9, 0)</c> is true. ED A0 (a UTF-8
/// surrogate) is refused: <c>Utf8Lead(0xED)</c> = (2, 2) and range 2 allows only 80-9F. "\uD83D" is refused at '8':
/// after a leading D the second digit must be 0-7.
/// </example>
internal static class JsonStringBytes
{
    /// <summary>
    /// A byte of a string that is not ASCII: how many continuation bytes it leads (0: not a valid lead byte) and the
    /// range code of the first one (0 80-BF, 1 A0-BF after E0, 2 80-9F after ED, 3 90-BF after F0, 4 80-8F after F4).
    /// </summary>
    public static (int Continuations, byte Range) Utf8Lead(byte b) => b switch
    {
        // UTF-8 lead byte (RFC 3629): C2-DF one continuation, E0-EF two, F0-F4 three; some leads narrow the next byte.
        >= 0xC2 and <= 0xDF => (1, (byte)0),
        0xE0 => (2, (byte)1),
        0xED => (2, (byte)2),
        >= 0xE1 and <= 0xEF => (2, (byte)0),
        0xF0 => (3, (byte)3),
        0xF4 => (3, (byte)4),
        >= 0xF1 and <= 0xF3 => (3, (byte)0),
        _ => (0, (byte)0),
    };

    /// <summary>Whether <paramref name="b"/> is a continuation byte allowed by the range code (see <see cref="Utf8Lead"/>).</summary>
    public static bool Utf8Continuation(byte b, byte range) => range switch
    {
        1 => b is >= 0xA0 and <= 0xBF,
        2 => b is >= 0x80 and <= 0x9F,
        3 => b is >= 0x90 and <= 0xBF,
        4 => b is >= 0x80 and <= 0x8F,
        _ => b is >= 0x80 and <= 0xBF,
    };

    /// <summary>
    /// One digit of a \uXXXX escape. <paramref name="count"/>: digits seen so far; <paramref name="sub"/>: 1 after a
    /// leading d/D. False (nothing changed) for a non-hex byte or a second digit 8-F after a leading D (\uD800-\uDFFF:
    /// surrogates are refused); else counts the digit and sets <paramref name="complete"/> when it is the fourth
    /// (count and sub are then back to 0).
    /// </summary>
    public static bool UnicodeDigit(byte b, ref ushort count, ref byte sub, out bool complete)
    {
        complete = false;
        int h = Hex(b);
        if (h < 0 || (count == 1 && sub == 1 && h >= 8))
        {
            return false;
        }
        if (count == 0)
        {
            sub = (byte)(h == 0xD ? 1 : 0);
        }
        count++;
        if (count == 4)
        {
            count = 0;
            sub = 0;
            complete = true;
        }
        return true;
    }

    private static int Hex(byte b) => b switch
    {
        >= (byte)'0' and <= (byte)'9' => b - '0',
        >= (byte)'a' and <= (byte)'f' => b - 'a' + 10,
        >= (byte)'A' and <= (byte)'F' => b - 'A' + 10,
        _ => -1,
    };
}
