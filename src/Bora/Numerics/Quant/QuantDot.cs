using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Numerics.Quant;

/// <summary>
/// Instruction-set levels of the quantized dot products, slowest first. <see cref="QuantDot.Best"/> is chosen
/// once per process; tests run every level the CPU supports against <see cref="Scalar"/>.
/// </summary>
public enum QuantIsa
{
    /// <summary>Plain loops (the reference twin).</summary>
    Scalar,

    /// <summary>Portable Vector128 (SSE2 / NEON): widen to int16, multiply, widen to int32.</summary>
    Vector128,

    /// <summary>AVX2: vpmaddubsw + vpmaddwd on 256-bit vectors.</summary>
    Avx2,

    /// <summary>AVX-VNNI: vpdpbusd on 256-bit vectors (Q8_0 / Q4_0), otherwise as <see cref="Avx2"/>.</summary>
    AvxVnni,

    /// <summary>AVX-512BW: vpmaddubsw + vpmaddwd on 512-bit vectors (Q8_0 / Q4_0), otherwise as <see cref="Avx2"/>.</summary>
    Avx512,
}

/// <summary>
/// Dot products of one row of quantized weight blocks with one token's <see cref="Q8Activations"/>.
/// One driver, <see cref="Dot{TOp}"/>, owns the choice of ISA and the tail (the blocks left after the
/// widest steps); operator structs (<see cref="Q8_0Dot"/>, <see cref="Q4_0Dot"/>, <see cref="Q4KDot"/>,
/// <see cref="Q6KDot"/>) hold the arithmetic of one block per ISA. Integer block sums are exact in every
/// ISA; only the order of the float accumulation of scaled block sums differs from the scalar twin.
/// </summary>
public static unsafe class QuantDot
{
    /// <summary>The fastest level this process supports (honours DOTNET_EnableAVX2=0 and friends).</summary>
    public static QuantIsa Best { get; } = IsSupported(QuantIsa.Avx512) ? QuantIsa.Avx512
        : IsSupported(QuantIsa.AvxVnni) ? QuantIsa.AvxVnni
        : IsSupported(QuantIsa.Avx2) ? QuantIsa.Avx2
        : IsSupported(QuantIsa.Vector128) ? QuantIsa.Vector128
        : QuantIsa.Scalar;

    /// <summary>Whether <paramref name="isa"/> runs on this CPU and runtime configuration.</summary>
    public static bool IsSupported(QuantIsa isa) => isa switch
    {
        QuantIsa.Scalar => true,
        QuantIsa.Vector128 => Vector128.IsHardwareAccelerated,
        QuantIsa.Avx2 => Avx2.IsSupported && Fma.IsSupported,
        QuantIsa.AvxVnni => AvxVnni.IsSupported && Avx2.IsSupported && Fma.IsSupported,
        QuantIsa.Avx512 => Avx512BW.IsSupported && Avx512F.IsSupported && Avx2.IsSupported && Fma.IsSupported,
        _ => false,
    };

    /// <summary>
    /// sum over the <paramref name="blocks"/> weight blocks at <paramref name="w"/> of
    /// (weight block) . (activation block), using <paramref name="isa"/> (which the caller has checked is supported).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float Dot<TOp>(QuantIsa isa, byte* w, Q8Row a, int blocks)
        where TOp : struct, IQuantDotOperator
    {
        int b = 0;
        float sum = 0, corr = 0;
        if (isa == QuantIsa.Avx512 && TOp.Blocks512 > 0)
        {
            var acc = Vector512<float>.Zero;
            for (; b + TOp.Blocks512 <= blocks; b += TOp.Blocks512)
            {
                acc = TOp.Step512(acc, w, a, b, ref corr);
            }
            sum += Vector512.Sum(acc);
        }
        if (isa >= QuantIsa.Avx2)
        {
            var acc = Vector256<float>.Zero;
            if (isa == QuantIsa.AvxVnni)
            {
                for (; b < blocks; b++)
                {
                    acc = TOp.StepVnni(acc, w, a, b, ref corr);
                }
            }
            else
            {
                for (; b < blocks; b++)
                {
                    acc = TOp.Step256(acc, w, a, b, ref corr);
                }
            }
            sum += Vector256.Sum(acc);
        }
        else if (isa == QuantIsa.Vector128)
        {
            var acc = Vector128<float>.Zero;
            for (; b < blocks; b++)
            {
                acc = TOp.Step128(acc, w, a, b, ref corr);
            }
            sum += Vector128.Sum(acc);
        }
        for (; b < blocks; b++)
        {
            sum += TOp.Scalar(w, a, b);
        }
        return sum - corr;
    }

    /// <summary>
    /// (lo, hi) as one 512-bit vector. Vector512.Create(lo, hi) round-trips through the stack in .NET 10's JIT
    /// (a store-to-load dependency on every loop iteration); vinserti64x4 does not.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<T> Combine<T>(Vector256<T> lo, Vector256<T> hi) =>
        Avx512F.InsertVector256(lo.ToVector512Unsafe().AsSingle(), hi.AsSingle(), 1).As<float, T>();

    /// <summary>IEEE half at <paramref name="p"/> (unaligned) to float: exact for finite values (inf / NaN become large finite numbers).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float Half(byte* p)
    {
        // A normal half: exponent and fraction shifted into a float's place, the exponent rebased by 127 - 15 = 112.
        // Exponent 0 (subnormal, zero): the fraction times 2^-24, from an integer (no float operation on a subnormal,
        // which costs a microcode assist; see QuantGemm.Halves).
        uint h = Unsafe.ReadUnaligned<ushort>(p);
        uint em = (h & 0x7FFF) << 13;
        float f = em >= 1u << 23 ? BitConverter.UInt32BitsToSingle(em + (112u << 23)) : (h & 0x3FF) * 5.9604644775390625E-8f;
        return BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(f) | ((h & 0x8000) << 16));
    }

    /// <summary>IEEE half to float, the plain way (scalar twins).</summary>
    internal static float HalfScalar(byte* p) => (float)Unsafe.ReadUnaligned<Half>(p);

    /// <summary>AVX2: sum of adjacent pairs of u8 x s8 products as int16 (no saturation for |s| &lt;= 127, u &lt;= 128), then pairs again to int32 (8 lanes, each the sum of 4 products).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> MulSum(Vector256<byte> u, Vector256<sbyte> s) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), Vector256.Create((short)1));

    /// <summary>AVX2: s8 x s8 via the sign trick: |w| x (a with w's sign). Needs a != -128.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<int> MulSumSigned(Vector256<sbyte> w, Vector256<sbyte> a) =>
        MulSum(Avx2.Abs(w), Avx2.Sign(a, w));

    /// <summary>AVX-512BW: as <see cref="MulSum(Vector256{byte}, Vector256{sbyte})"/>, 16 int32 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<int> MulSum(Vector512<byte> u, Vector512<sbyte> s) =>
        Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(u, s), Vector512.Create((short)1));

    /// <summary>Portable: 16 u8 x s8 products summed into 4 int32 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<int> MulSum(Vector128<byte> u, Vector128<sbyte> s)
    {
        var (u0, u1) = Vector128.Widen(u);
        var (s0, s1) = Vector128.Widen(s);
        var (p0, p1) = Vector128.Widen(u0.AsInt16() * s0);
        var (p2, p3) = Vector128.Widen(u1.AsInt16() * s1);
        return (p0 + p1) + (p2 + p3);
    }

    /// <summary>Portable: 16 s8 x s8 products summed into 4 int32 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<int> MulSum(Vector128<sbyte> w, Vector128<sbyte> s)
    {
        var (w0, w1) = Vector128.Widen(w);
        var (s0, s1) = Vector128.Widen(s);
        var (p0, p1) = Vector128.Widen(w0 * s0);
        var (p2, p3) = Vector128.Widen(w1 * s1);
        return (p0 + p1) + (p2 + p3);
    }
}

/// <summary>
/// The arithmetic of one weight format against <see cref="Q8Activations"/>, per ISA. Each step adds the
/// contribution of its blocks to the float accumulator and may add a term to subtract at the end to
/// <c>corr</c> (offsets and mins that factor out of the integer sum). Block index b counts weight blocks.
/// </summary>
internal unsafe interface IQuantDotOperator
{
    /// <summary>Weight blocks consumed by one <see cref="Step512"/>; 0 when there is no 512-bit step.</summary>
    static abstract int Blocks512 { get; }

    /// <summary>Scalar reference: the exact value of block b's dot product (integer sum, then scales).</summary>
    static abstract float Scalar(byte* w, Q8Row a, int b);

    static abstract Vector128<float> Step128(Vector128<float> acc, byte* w, Q8Row a, int b, ref float corr);

    static abstract Vector256<float> Step256(Vector256<float> acc, byte* w, Q8Row a, int b, ref float corr);

    static abstract Vector256<float> StepVnni(Vector256<float> acc, byte* w, Q8Row a, int b, ref float corr);

    static abstract Vector512<float> Step512(Vector512<float> acc, byte* w, Q8Row a, int b, ref float corr);
}

/// <summary>Q8_0 weights (34-byte blocks: f16 d, int8 q[32]) x Q8 activations in blocks of 32.</summary>
internal readonly unsafe struct Q8_0Dot : IQuantDotOperator
{
    private const int Bytes = 34;

    public static int Blocks512 => 2;

    public static float Scalar(byte* w, Q8Row a, int b)
    {
        byte* blk = w + (long)b * Bytes;
        sbyte* q = (sbyte*)(blk + 2);
        sbyte* x = a.Q + 32L * b;
        int sum = 0;
        for (int j = 0; j < 32; j++)
        {
            sum += q[j] * x[j];
        }
        return QuantDot.HalfScalar(blk) * a.D[b] * sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Step128(Vector128<float> acc, byte* w, Q8Row a, int b, ref float corr)
    {
        byte* blk = w + (long)b * Bytes;
        sbyte* x = a.Q + 32L * b;
        var p = QuantDot.MulSum(Vector128.Load((sbyte*)(blk + 2)), Vector128.Load(x))
              + QuantDot.MulSum(Vector128.Load((sbyte*)(blk + 18)), Vector128.Load(x + 16));
        return acc + Vector128.ConvertToSingle(p) * Vector128.Create(QuantDot.Half(blk) * a.D[b]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Step256(Vector256<float> acc, byte* w, Q8Row a, int b, ref float corr)
    {
        byte* blk = w + (long)b * Bytes;
        var p = QuantDot.MulSumSigned(Vector256.Load((sbyte*)(blk + 2)), Vector256.Load(a.Q + 32L * b));
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(p), Vector256.Create(QuantDot.Half(blk) * a.D[b]), acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> StepVnni(Vector256<float> acc, byte* w, Q8Row a, int b, ref float corr)
    {
        byte* blk = w + (long)b * Bytes;
        var q = Vector256.Load((sbyte*)(blk + 2));
        var p = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, Avx2.Abs(q), Avx2.Sign(Vector256.Load(a.Q + 32L * b), q));
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(p), Vector256.Create(QuantDot.Half(blk) * a.D[b]), acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Step512(Vector512<float> acc, byte* w, Q8Row a, int b, ref float corr)
    {
        // Two blocks: lanes 0..7 hold block b, lanes 8..15 block b + 1.
        byte* blk = w + (long)b * Bytes;
        var q = QuantDot.Combine(Vector256.Load((sbyte*)(blk + 2)), Vector256.Load((sbyte*)(blk + Bytes + 2)));
        var x = Vector512.Load(a.Q + 32L * b);
        // AVX-512 has no vpsignb: negate x where q < 0 (q = 0 multiplies by |q| = 0 anyway).
        var sx = Vector512.ConditionalSelect(Vector512.LessThan(q, Vector512<sbyte>.Zero), -x, x);
        var p = QuantDot.MulSum(Vector512.Abs(q).AsByte(), sx);
        var s = QuantDot.Combine(Vector256.Create(QuantDot.Half(blk) * a.D[b]), Vector256.Create(QuantDot.Half(blk + Bytes) * a.D[b + 1]));
        return Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(p), s, acc);
    }
}

/// <summary>
/// Q4_0 weights (18-byte blocks: f16 d, 16 bytes of nibbles; element j &lt; 16 is the low nibble of byte j,
/// element j + 16 its high nibble; value d (q - 8)) x Q8 activations in blocks of 32.
/// The vector steps multiply the unsigned nibbles q (0..15) and subtract 8 * (sum of the activation block)
/// afterwards: sum (q - 8) x = sum q x - 8 sum x.
/// </summary>
internal readonly unsafe struct Q4_0Dot : IQuantDotOperator
{
    private const int Bytes = 18;

    public static int Blocks512 => 2;

    public static float Scalar(byte* w, Q8Row a, int b)
    {
        byte* blk = w + (long)b * Bytes;
        sbyte* x = a.Q + 32L * b;
        int sum = 0;
        for (int j = 0; j < 16; j++)
        {
            sum += ((blk[2 + j] & 0x0F) - 8) * x[j];
            sum += ((blk[2 + j] >> 4) - 8) * x[j + 16];
        }
        return QuantDot.HalfScalar(blk) * a.D[b] * sum;
    }

    /// <summary>s = d_w d_x; adds 8 s (sum of the activation block) to corr.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Scale(byte* blk, Q8Row a, int b, ref float corr)
    {
        float s = QuantDot.Half(blk) * a.D[b];
        corr += 8 * s * (a.S16[2 * b] + a.S16[2 * b + 1]);
        return s;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Step128(Vector128<float> acc, byte* w, Q8Row a, int b, ref float corr)
    {
        byte* blk = w + (long)b * Bytes;
        sbyte* x = a.Q + 32L * b;
        var qs = Vector128.Load(blk + 2);
        var m = Vector128.Create((byte)0x0F);
        var p = QuantDot.MulSum(qs & m, Vector128.Load(x)) + QuantDot.MulSum(Vector128.ShiftRightLogical(qs, 4), Vector128.Load(x + 16));
        return acc + Vector128.ConvertToSingle(p) * Vector128.Create(Scale(blk, a, b, ref corr));
    }

    /// <summary>The 32 nibbles of a block in element order: (low nibbles, high nibbles).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Nibbles(byte* blk)
    {
        var qs = Vector128.Load(blk + 2);
        return Vector256.Create(qs, Vector128.ShiftRightLogical(qs, 4)) & Vector256.Create((byte)0x0F);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Step256(Vector256<float> acc, byte* w, Q8Row a, int b, ref float corr)
    {
        // (q - 8) x summed in int16 pairs as maddubs(q, x) - maddubs(8, x): no scalar correction needed.
        byte* blk = w + (long)b * Bytes;
        var x = Vector256.Load(a.Q + 32L * b);
        var p16 = Avx2.MultiplyAddAdjacent(Nibbles(blk), x) - Avx2.MultiplyAddAdjacent(Vector256.Create((byte)8), x);
        var p = Avx2.MultiplyAddAdjacent(p16, Vector256.Create((short)1));
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(p), Vector256.Create(QuantDot.Half(blk) * a.D[b]), acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> StepVnni(Vector256<float> acc, byte* w, Q8Row a, int b, ref float corr)
    {
        byte* blk = w + (long)b * Bytes;
        var p = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, Nibbles(blk), Vector256.Load(a.Q + 32L * b));
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(p), Vector256.Create(Scale(blk, a, b, ref corr)), acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Step512(Vector512<float> acc, byte* w, Q8Row a, int b, ref float corr)
    {
        // Two blocks. Nibbles in 16-byte lanes: (b lo, b+1 lo, b hi, b+1 hi) = elements (b 0..15, b+1 0..15,
        // b 16..31, b+1 16..31); the activations' lanes (b 0..15, b 16..31, b+1 0..15, b+1 16..31) are
        // permuted to match (lanes 0, 2, 1, 3), so the int32 lanes alternate block b, b+1 every 4.
        byte* blk = w + (long)b * Bytes;
        var q2 = Vector256.Create(Vector128.Load(blk + 2), Vector128.Load(blk + Bytes + 2));
        var q = QuantDot.Combine(q2, Vector256.ShiftRightLogical(q2, 4)) & Vector512.Create((byte)0x0F);
        var x = Vector512.Load((int*)(a.Q + 32L * b));
        var xp = Avx512F.Shuffle4x128(x, x, 0b11_01_10_00).AsSByte();
        var p16 = Avx512BW.MultiplyAddAdjacent(q, xp) - Avx512BW.MultiplyAddAdjacent(Vector512.Create((byte)8), xp);
        var p = Avx512BW.MultiplyAddAdjacent(p16, Vector512.Create((short)1));
        var s2 = Vector256.Create(Vector128.Create(QuantDot.Half(blk) * a.D[b]), Vector128.Create(QuantDot.Half(blk + Bytes) * a.D[b + 1]));
        return Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(p), QuantDot.Combine(s2, s2), acc);
    }
}

/// <summary>
/// Q4_K weights (144-byte super-blocks, see <see cref="BlockDequantizer"/>) x Q8 activations in blocks
/// of 256. x = d sc[s] q - dmin m[s] for sub-block s of 32, so the dot product is
/// d_x (d sum_s sc[s] (sum q x) - dmin sum_s m[s] (sum x)); the second sum comes from the activation
/// sums of 16 and goes to corr.
/// </summary>
internal readonly unsafe struct Q4KDot : IQuantDotOperator
{
    private const int Bytes = 144;

    public static int Blocks512 => 0;

    public static float Scalar(byte* w, Q8Row a, int b)
    {
        byte* blk = w + (long)b * Bytes;
        var scales = new ReadOnlySpan<byte>(blk + 4, 12);
        byte* qs = blk + 16;
        sbyte* x = a.Q + 256L * b;
        int sumi = 0, summ = 0;
        for (int s = 0; s < 8; s++)
        {
            var (sc, m) = BlockDequantizer.ScaleMinK4(s, scales);
            int c = s / 2;
            int shift = 4 * (s % 2);
            int dot = 0;
            for (int l = 0; l < 32; l++)
            {
                dot += ((qs[32 * c + l] >> shift) & 0x0F) * x[32 * s + l];
            }
            sumi += sc * dot;
            summ += m * (a.S16[16 * b + 2 * s] + a.S16[16 * b + 2 * s + 1]);
        }
        return a.D[b] * (QuantDot.HalfScalar(blk) * sumi - QuantDot.HalfScalar(blk + 2) * summ);
    }

    /// <summary>Unpacks the 8 scales into <paramref name="sc"/> and adds the min term to corr; returns d d_x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Prepare(byte* blk, Q8Row a, int b, int* sc, ref float corr)
    {
        var scales = new ReadOnlySpan<byte>(blk + 4, 12);
        short* bs = a.S16 + 16L * b;
        int summ = 0;
        for (int s = 0; s < 8; s++)
        {
            var (scale, m) = BlockDequantizer.ScaleMinK4(s, scales);
            sc[s] = scale;
            summ += m * (bs[2 * s] + bs[2 * s + 1]);
        }
        float dx = a.D[b];
        corr += QuantDot.Half(blk + 2) * dx * summ;
        return QuantDot.Half(blk) * dx;
    }

    public static Vector128<float> Step128(Vector128<float> acc, byte* w, Q8Row a, int b, ref float corr)
    {
        byte* blk = w + (long)b * Bytes;
        int* sc = stackalloc int[8];
        float s = Prepare(blk, a, b, sc, ref corr);
        byte* qs = blk + 16;
        sbyte* x = a.Q + 256L * b;
        var m = Vector128.Create((byte)0x0F);
        var isum = Vector128<int>.Zero;
        for (int c = 0; c < 4; c++)
        {
            var q0 = Vector128.Load(qs + 32 * c);
            var q1 = Vector128.Load(qs + 32 * c + 16);
            var lo = QuantDot.MulSum(q0 & m, Vector128.Load(x + 64 * c)) + QuantDot.MulSum(q1 & m, Vector128.Load(x + 64 * c + 16));
            var hi = QuantDot.MulSum(Vector128.ShiftRightLogical(q0, 4), Vector128.Load(x + 64 * c + 32))
                   + QuantDot.MulSum(Vector128.ShiftRightLogical(q1, 4), Vector128.Load(x + 64 * c + 48));
            isum += lo * sc[2 * c] + hi * sc[2 * c + 1];
        }
        return acc + Vector128.ConvertToSingle(isum) * Vector128.Create(s);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Step256(Vector256<float> acc, byte* w, Q8Row a, int b, ref float corr)
    {
        byte* blk = w + (long)b * Bytes;
        int* sc = stackalloc int[8];
        float s = Prepare(blk, a, b, sc, ref corr);
        byte* qs = blk + 16;
        sbyte* x = a.Q + 256L * b;
        var m = Vector256.Create((byte)0x0F);
        var isum = Vector256<int>.Zero;
        for (int c = 0; c < 4; c++)
        {
            var q = Vector256.Load(qs + 32 * c);
            var lo = Avx2.MultiplyAddAdjacent(q & m, Vector256.Load(x + 64 * c));
            var hi = Avx2.MultiplyAddAdjacent(Vector256.ShiftRightLogical(q, 4) & m, Vector256.Load(x + 64 * c + 32));
            isum += Avx2.MultiplyAddAdjacent(lo, Vector256.Create((short)sc[2 * c]))
                  + Avx2.MultiplyAddAdjacent(hi, Vector256.Create((short)sc[2 * c + 1]));
        }
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(isum), Vector256.Create(s), acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> StepVnni(Vector256<float> acc, byte* w, Q8Row a, int b, ref float corr) =>
        Step256(acc, w, a, b, ref corr);

    public static Vector512<float> Step512(Vector512<float> acc, byte* w, Q8Row a, int b, ref float corr) =>
        throw new NotSupportedException("Q4_K has no 512-bit step");
}

/// <summary>
/// Q6_K weights (210-byte super-blocks, see <see cref="BlockDequantizer"/>) x Q8 activations in blocks
/// of 256. The vector steps use the unsigned 6-bit u = q + 32 (0..63) and subtract
/// 32 sum_s sc[s] (sum of activation sub-block s of 16) in the integer domain.
/// </summary>
internal readonly unsafe struct Q6KDot : IQuantDotOperator
{
    private const int Bytes = 210;

    public static int Blocks512 => 0;

    public static float Scalar(byte* w, Q8Row a, int b)
    {
        byte* blk = w + (long)b * Bytes;
        byte* ql = blk;
        byte* qh = blk + 128;
        sbyte* sc = (sbyte*)(blk + 192);
        sbyte* x = a.Q + 256L * b;
        int sumi = 0;
        for (int e = 0; e < 256; e++)
        {
            int h = e / 128, k = e % 128 / 32, l = e % 32;
            int low = (ql[64 * h + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0x0F;
            int high = (qh[32 * h + l] >> (2 * k)) & 3;
            sumi += sc[e / 16] * ((low | (high << 4)) - 32) * x[e];
        }
        return a.D[b] * QuantDot.HalfScalar(blk + 208) * sumi;
    }

    /// <summary>32 sum_s sc[s] (activation sum of sub-block s): the offset to subtract from sum sc u x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Offset(sbyte* sc, short* bs)
    {
        int o = 0;
        for (int s = 0; s < 16; s++)
        {
            o += sc[s] * bs[s];
        }
        return 32 * o;
    }

    public static Vector128<float> Step128(Vector128<float> acc, byte* w, Q8Row a, int b, ref float corr)
    {
        byte* blk = w + (long)b * Bytes;
        sbyte* sc = (sbyte*)(blk + 192);
        sbyte* x = a.Q + 256L * b;
        var m4 = Vector128.Create((byte)0x0F);
        var m2 = Vector128.Create((byte)3);
        var isum = Vector128.CreateScalar(-Offset(sc, a.S16 + 16L * b));
        for (int h = 0; h < 2; h++)
        {
            for (int k = 0; k < 4; k++)
            {
                for (int half = 0; half < 2; half++)
                {
                    var ql = Vector128.Load(blk + 64 * h + 32 * (k & 1) + 16 * half);
                    var qh = Vector128.Load(blk + 128 + 32 * h + 16 * half);
                    var u = (Vector128.ShiftRightLogical(ql, 4 * (k >> 1)) & m4) | Vector128.ShiftLeft(Vector128.ShiftRightLogical(qh, 2 * k) & m2, 4);
                    isum += QuantDot.MulSum(u, Vector128.Load(x + 128 * h + 32 * k + 16 * half)) * sc[8 * h + 2 * k + half];
                }
            }
        }
        return acc + Vector128.ConvertToSingle(isum) * Vector128.Create(a.D[b] * QuantDot.Half(blk + 208));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Step256(Vector256<float> acc, byte* w, Q8Row a, int b, ref float corr)
    {
        byte* blk = w + (long)b * Bytes;
        sbyte* sc = (sbyte*)(blk + 192);
        sbyte* x = a.Q + 256L * b;
        var m4 = Vector256.Create((byte)0x0F);
        var m2 = Vector256.Create((byte)3);
        var isum = Vector256.CreateScalar(-Offset(sc, a.S16 + 16L * b));
        for (int h = 0; h < 2; h++)
        {
            var qh = Vector256.Load(blk + 128 + 32 * h);
            var ql0 = Vector256.Load(blk + 64 * h);
            var ql1 = Vector256.Load(blk + 64 * h + 32);
            for (int k = 0; k < 4; k++)
            {
                var ql = (k & 1) == 0 ? ql0 : ql1;
                var u = (Vector256.ShiftRightLogical(ql, 4 * (k >> 1)) & m4) | Vector256.ShiftLeft(Vector256.ShiftRightLogical(qh, 2 * k) & m2, 4);
                var p = Avx2.MultiplyAddAdjacent(u, Vector256.Load(x + 128 * h + 32 * k));
                // int16 lanes 0..7 hold elements 0..15 (scale sc[8h + 2k]), lanes 8..15 elements 16..31.
                var s = Vector256.Create(Vector128.Create((short)sc[8 * h + 2 * k]), Vector128.Create((short)sc[8 * h + 2 * k + 1]));
                isum += Avx2.MultiplyAddAdjacent(p, s);
            }
        }
        return Fma.MultiplyAdd(Avx.ConvertToVector256Single(isum), Vector256.Create(a.D[b] * QuantDot.Half(blk + 208)), acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> StepVnni(Vector256<float> acc, byte* w, Q8Row a, int b, ref float corr) =>
        Step256(acc, w, a, b, ref corr);

    public static Vector512<float> Step512(Vector512<float> acc, byte* w, Q8Row a, int b, ref float corr) =>
        throw new NotSupportedException("Q6_K has no 512-bit step");
}
