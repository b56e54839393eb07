using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Numerics;

/// <summary>
/// IEEE half (binary16) &lt;-&gt; float32 conversion of spans, as the F16 KV cache stores and reads its rows.
/// Narrowing rounds to nearest, ties to even (values beyond the largest half, 65504, become infinities; NaN stays NaN);
/// widening is exact for every half (normal, subnormal, ±0, ±inf, NaN). Each routine has a scalar twin (the reference
/// of the tests: <see cref="Half"/>'s own conversions).
/// </summary>
public static class HalfConversion
{
    /// <summary>
    /// dst[i] = (float)src[i] for i &lt; src.Length, exactly, in vectors: with AVX-512 16 halves at a time by
    /// <see cref="Widen512"/> (about 2.5x the throughput of
    /// <see cref="TensorPrimitives.ConvertToSingle(ReadOnlySpan{Half}, Span{float})"/> on the machine it was written on:
    /// 1024 halves in 73 against 180 ns, L1-resident); with AVX2 8 at a time by <see cref="Widen256"/>; otherwise each
    /// <see cref="Vector{T}"/> of halves is zero-extended to 32-bit lanes and widened by <see cref="HalfMatrix.WidenHalf"/>.
    /// </summary>
    public static unsafe void ToSingle(ReadOnlySpan<Half> src, Span<float> dst)
    {
        if (dst.Length < src.Length)
        {
            throw new ArgumentException($"destination holds {dst.Length} values; {src.Length} needed", nameof(dst));
        }
        var bits = MemoryMarshal.Cast<Half, ushort>(src);
        int i = 0;
        if (Vector512.IsHardwareAccelerated && Avx512F.IsSupported)
        {
            fixed (ushort* s = bits)
            fixed (float* d = dst)
            {
                for (; i + 16 <= bits.Length; i += 16)
                {
                    Widen512(Vector256.Load((short*)s + i)).Store(d + i);
                }
            }
        }
        else if (Avx2.IsSupported)
        {
            fixed (ushort* s = bits)
            fixed (float* d = dst)
            {
                for (; i + 8 <= bits.Length; i += 8)
                {
                    Widen256(Vector128.Load((short*)s + i)).Store(d + i);
                }
            }
        }
        else if (Vector.IsHardwareAccelerated)
        {
            int vl = Vector<ushort>.Count;
            ref ushort s0 = ref MemoryMarshal.GetReference(bits);
            ref float d0 = ref MemoryMarshal.GetReference(dst);
            for (; i + vl <= bits.Length; i += vl)
            {
                Vector.Widen(Vector.LoadUnsafe(ref s0, (nuint)i), out var lo, out var hi);
                HalfMatrix.WidenHalf(lo).StoreUnsafe(ref d0, (nuint)i);
                HalfMatrix.WidenHalf(hi).StoreUnsafe(ref d0, (nuint)(i + vl / 2));
            }
        }
        for (; i < src.Length; i++)
        {
            dst[i] = (float)src[i];
        }
    }

    /// <summary>
    /// 16 IEEE halves (their bits as shorts) to float32, exactly for every half. vpmovsxwd sign-extends each half to
    /// 32 bits (the half in bits 0..15, copies of its sign above); shifted left by 13 the exponent and fraction land in
    /// bits 23..27 and 13..22 and a sign copy in bit 31; the mask 0x8FFFE000 clears the other copies, leaving the value
    /// times 2^-112 as a float32 (a float32 subnormal for a half subnormal), which times 2^112 restores exactly. A half
    /// exponent of 31 (infinity, NaN) shows as exponent bits 0x0F800000; those lanes get the float32 all-ones exponent
    /// instead, keeping sign and fraction. Eight operations per 16 values.
    /// Example: -2.0 = 0xC000 -> 0xFFFFC000 (sign-extended) -> 0xF8000000 (shifted) -> 0x88000000 (masked) = -2^-111,
    /// times 2^112 = -2.0. +inf = 0x7C00 -> 0x0F800000 (masked): special, | 0x7F800000 = 0x7F800000 = +inf.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Widen512(Vector256<short> halves)
    {
        var masked = Masked512(halves);
        var value = masked.AsSingle() * Vector512.Create(TwoTo112);
        var special = Vector512.Equals(masked & Vector512.Create(0x0F800000), Vector512.Create(0x0F800000));
        return Vector512.ConditionalSelect(special.AsSingle(), (masked | Vector512.Create(0x7F800000)).AsSingle(), value);
    }

    /// <summary>
    /// <see cref="Widen512"/> on 8 halves with AVX2 (vpmovsxwd on 256 bits): the same operations, so the same float32
    /// for every half.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Widen256(Vector128<short> halves)
    {
        var masked = Masked256(halves);
        var value = masked.AsSingle() * Vector256.Create(TwoTo112);
        var special = Vector256.Equals(masked & Vector256.Create(0x0F800000), Vector256.Create(0x0F800000));
        return Vector256.ConditionalSelect(special.AsSingle(), (masked | Vector256.Create(0x7F800000)).AsSingle(), value);
    }

    /// <summary>
    /// <see cref="Widen256"/> for halves known to be finite (no infinity, no NaN): the shift, mask and multiplication
    /// alone (four operations per 8 values against eight), the same float32 for every finite half (subnormals and ±0
    /// included). An infinity or a NaN comes out as a finite number, so callers need the promise
    /// (<c>KvRow.HalvesFinite</c>).
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> WidenFinite256(Vector128<short> halves) => Masked256(halves).AsSingle() * Vector256.Create(TwoTo112);

    /// <summary><see cref="WidenFinite256"/> on 16 halves with AVX-512: <see cref="Widen512"/> without the special lanes.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> WidenFinite512(Vector256<short> halves) => Masked512(halves).AsSingle() * Vector512.Create(TwoTo112);

    /// <summary>2^112: a half's value is its <see cref="Masked256"/> / <see cref="Masked512"/> bits, as a float32, times this.</summary>
    private const float TwoTo112 = 5.192297e33f; // 0x77800000

    /// <summary>
    /// The shared first step of <see cref="Widen256"/> and <see cref="WidenFinite256"/>: each half sign-extended to 32
    /// bits, shifted left by 13 and masked with 0x8FFFE000, i.e. the half's sign, exponent and fraction placed as a
    /// float32 worth the half times 2^-112 (see <see cref="Widen512"/>).
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> Masked256(Vector128<short> halves) =>
        (Avx2.ConvertToVector256Int32(halves) << 13) & Vector256.Create(unchecked((int)0x8FFFE000));

    /// <summary><see cref="Masked256"/> on 16 halves with AVX-512.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> Masked512(Vector256<short> halves) =>
        (Avx512F.ConvertToVector512Int32(halves) << 13) & Vector512.Create(unchecked((int)0x8FFFE000));

    /// <summary>Whether any of <paramref name="src"/> is an infinity or a NaN (all five exponent bits set).</summary>
    public static bool AnyNonFinite(ReadOnlySpan<Half> src)
    {
        var bits = MemoryMarshal.Cast<Half, ushort>(src);
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var exponent = Vector256.Create((ushort)0x7C00);
            var seen = Vector256<ushort>.Zero;
            for (; i + 16 <= bits.Length; i += 16)
            {
                var e = Vector256.Create(bits.Slice(i, 16)) & exponent;
                seen |= Vector256.Equals(e, exponent);
            }
            if (seen != Vector256<ushort>.Zero)
            {
                return true;
            }
        }
        for (; i < bits.Length; i++)
        {
            if ((bits[i] & 0x7C00) == 0x7C00)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>The scalar twin of <see cref="ToSingle"/>: dst[i] = (float)src[i].</summary>
    public static void ToSingleScalar(ReadOnlySpan<Half> src, Span<float> dst)
    {
        if (dst.Length < src.Length)
        {
            throw new ArgumentException($"destination holds {dst.Length} values; {src.Length} needed", nameof(dst));
        }
        for (int i = 0; i < src.Length; i++)
        {
            dst[i] = (float)src[i];
        }
    }

    /// <summary>dst[i] = (Half)src[i] (round to nearest even) with <see cref="TensorPrimitives.ConvertToHalf"/>.</summary>
    public static void ToHalf(ReadOnlySpan<float> src, Span<Half> dst)
    {
        if (dst.Length < src.Length)
        {
            throw new ArgumentException($"destination holds {dst.Length} values; {src.Length} needed", nameof(dst));
        }
        TensorPrimitives.ConvertToHalf(src, dst[..src.Length]);
    }

    /// <summary>The scalar twin of <see cref="ToHalf"/>: dst[i] = (Half)src[i].</summary>
    public static void ToHalfScalar(ReadOnlySpan<float> src, Span<Half> dst)
    {
        if (dst.Length < src.Length)
        {
            throw new ArgumentException($"destination holds {dst.Length} values; {src.Length} needed", nameof(dst));
        }
        for (int i = 0; i < src.Length; i++)
        {
            dst[i] = (Half)src[i];
        }
    }

    /// <summary>
    /// x[i] = (float)(Half)x[i] in place: the value an F16 cache would give back for x[i]. Runs through a stack buffer
    /// of 256 halves at a time.
    /// </summary>
    public static void RoundToHalf(Span<float> x)
    {
        Span<Half> buffer = stackalloc Half[256];
        for (int i = 0; i < x.Length; i += buffer.Length)
        {
            var chunk = x.Slice(i, Math.Min(buffer.Length, x.Length - i));
            var halves = buffer[..chunk.Length];
            ToHalf(chunk, halves);
            ToSingle(halves, chunk);
        }
    }
}
