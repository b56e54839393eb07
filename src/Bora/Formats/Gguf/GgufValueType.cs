using Bora.Numerics;

namespace Bora.Formats.Gguf;

/// <summary>GGUF metadata value type ids (gguf_type in ggml's gguf.h).</summary>
public enum GgufValueType : uint
{
    UInt8 = 0,
    Int8 = 1,
    UInt16 = 2,
    Int16 = 3,
    UInt32 = 4,
    Int32 = 5,
    Float32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    UInt64 = 10,
    Int64 = 11,
    Float64 = 12,
}

/// <summary>
/// The stored type of one metadata value: <see cref="Type"/>, and for an array its element type
/// (<see cref="GgufValueType.Array"/> for an array of arrays, whose inner types are not recorded).
/// </summary>
public readonly record struct GgufValueKind(GgufValueType Type, GgufValueType? ElementType = null);

/// <summary>ggml tensor type ids of the supported <see cref="DType"/>s.</summary>
internal static class GgmlType
{
    public const uint F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, Q4_K = 12, Q6_K = 14, BF16 = 30;

    public static DType? ToDType(uint id) => id switch
    {
        F32 => DType.F32,
        F16 => DType.F16,
        Q4_0 => DType.Q4_0,
        Q8_0 => DType.Q8_0,
        Q4_K => DType.Q4_K,
        Q6_K => DType.Q6_K,
        BF16 => DType.BF16,
        _ => null,
    };

    public static uint FromDType(DType type) => type switch
    {
        DType.F32 => F32,
        DType.F16 => F16,
        DType.Q4_0 => Q4_0,
        DType.Q8_0 => Q8_0,
        DType.Q4_K => Q4_K,
        DType.Q6_K => Q6_K,
        DType.BF16 => BF16,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "no ggml type id"),
    };

    /// <summary>Names of a few well-known ggml ids, for error messages.</summary>
    public static string Name(uint id) => id switch
    {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        30 => "BF16",
        _ => "unknown",
    };
}
