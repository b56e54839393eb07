namespace Bora.Numerics;

/// <summary>
/// Element types of stored tensors. The quantized types use GGUF's block layouts
/// (ggml-common.h): a row of n elements is n / <see cref="DTypeInfo.BlockElements"/> blocks.
/// </summary>
public enum DType
{
    F32,
    F16,
    BF16,
    /// <summary>32 elements: f16 scale d, 32 x int8 q; x = d * q. 34 bytes.</summary>
    Q8_0,
    /// <summary>32 elements: f16 scale d, 16 bytes of nibbles; x = d * (q - 8). 18 bytes.</summary>
    Q4_0,
    /// <summary>256-element super-block: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles. 144 bytes.</summary>
    Q4_K,
    /// <summary>256-element super-block: 128 bytes low nibbles, 64 bytes high 2 bits, 16 int8 scales, f16 d. 210 bytes.</summary>
    Q6_K,
}

/// <summary>Block geometry of each <see cref="DType"/>.</summary>
public static class DTypeInfo
{
    /// <summary>Elements per block (1 for the float types).</summary>
    public static int BlockElements(DType type) => type switch
    {
        DType.F32 or DType.F16 or DType.BF16 => 1,
        DType.Q8_0 or DType.Q4_0 => 32,
        DType.Q4_K or DType.Q6_K => 256,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "unknown dtype"),
    };

    /// <summary>Bytes per block.</summary>
    public static int BlockBytes(DType type) => type switch
    {
        DType.F32 => 4,
        DType.F16 or DType.BF16 => 2,
        DType.Q8_0 => 34,
        DType.Q4_0 => 18,
        DType.Q4_K => 144,
        DType.Q6_K => 210,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "unknown dtype"),
    };

    /// <summary>
    /// Bytes taken by <paramref name="elements"/> elements, or null when the count is not a whole
    /// number of blocks or the size overflows a long.
    /// </summary>
    public static long? ByteSize(DType type, long elements)
    {
        long per = BlockElements(type);
        if (elements < 0 || elements % per != 0)
        {
            return null;
        }
        try
        {
            return checked(elements / per * BlockBytes(type));
        }
        catch (OverflowException)
        {
            return null;
        }
    }
}
