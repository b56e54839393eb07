namespace Bora.Numerics.Quant;

/// <summary>bfloat16: the top 16 bits of an IEEE float32 (1 sign, 8 exponent, 7 mantissa bits).</summary>
public static class Bf16
{
    /// <summary>Widens bfloat16 bits to float32 exactly.</summary>
    public static float ToSingle(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>
    /// Narrows a float32 to bfloat16 bits, rounding to nearest with ties to even; NaN stays a (quiet) NaN.
    /// Example: 1 + 2^-8 (0x3F808000) is a tie and rounds to the even 0x3F80; 1 + 3 * 2^-8 (0x3F818000)
    /// rounds up to 0x3F82.
    /// </summary>
    public static ushort FromSingle(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
        {
            return (ushort)((bits >> 16) | 0x0040);
        }
        uint bias = 0x7FFFu + ((bits >> 16) & 1u);
        return (ushort)((bits + bias) >> 16);
    }
}
