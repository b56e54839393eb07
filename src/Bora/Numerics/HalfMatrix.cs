using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Bora.Numerics.Quant;

namespace Bora.Numerics;

/// <summary>
/// A weight matrix stored as 16-bit floats, IEEE half (<see cref="DType.F16"/>) or bfloat16
/// (<see cref="DType.BF16"/>), over a <see cref="WeightStorage"/> region (typically the memory-mapped model
/// file: F16 / BF16 rows are already in their runtime layout, so nothing is copied or expanded; a 7B model takes
/// its file size, not twice it).
/// <para>
/// Products convert to float32 on the fly and accumulate in float32:
/// <list type="bullet">
/// <item>One token (<see cref="MatVec"/>): each row is widened in registers as it is read and multiplied with x at
/// once (one pass over the weights, which is what decode is bound by; no intermediate buffer). On AVX-512 x is first
/// rearranged once per product (<see cref="UnpackOrder"/>) so that the widening is one vpunpck per 16 values; F16 rows
/// of a multiple of 64 values take the generated tile of <see cref="HalfRowTile"/> instead (vcvtph2ps) where the
/// generated kernels run.</item>
/// <item>Many tokens (<see cref="MatMul"/>): a panel of <see cref="PanelRows"/> rows is converted to float32 once
/// (it stays in L2), then multiplied with every token, four rows by two tokens per step, so each loaded weight vector
/// serves two tokens and each loaded x vector four rows.</item>
/// </list>
/// Results equal float32 products over the widened weights up to summation order.
/// </para>
/// Letters: N = rows (outputs), K = cols (inputs), T = tokens, P = panel rows.
/// </summary>
public sealed unsafe class HalfMatrix : WeightMatrix
{
    /// <summary>Rows per panel of <see cref="MatMul"/>: 16 rows of 4096 float32 values are 256 KiB, which stays in L2 across tokens.</summary>
    private const int PanelRows = 16;

    /// <summary>Multiply-adds below which a product runs on the calling thread.</summary>
    private const long ParallelThreshold = 1L << 18;

    [ThreadStatic]
    private static float[]? t_panel;

    private readonly WeightStorage _storage; // (N, K) 16-bit values from _offset
    private readonly long _offset;

    /// <summary>
    /// A (rows, cols) matrix over bytes [<paramref name="offset"/>, offset + rows * cols * 2) of
    /// <paramref name="storage"/>, row-major (not copied; the matrix keeps the storage alive). The offset must be
    /// even (2-byte aligned elements).
    /// </summary>
    /// <exception cref="ArgumentException">A type other than F16 / BF16, an odd offset or a region outside the storage.</exception>
    public HalfMatrix(DType type, WeightStorage storage, long offset, int rows, int cols) : base(rows, cols)
    {
        ArgumentNullException.ThrowIfNull(storage);
        if (type is not (DType.F16 or DType.BF16))
        {
            throw new ArgumentException($"{type} is not a 16-bit float type; expected F16 or BF16", nameof(type));
        }
        long size = (long)rows * cols * 2;
        if ((long)rows * cols > Array.MaxLength)
        {
            throw new ArgumentException($"a ({rows}, {cols}) matrix has more values than one span can address ({Array.MaxLength})", nameof(rows));
        }
        if (offset < 0 || offset % 2 != 0 || offset > storage.Length || size > storage.Length - offset)
        {
            throw new ArgumentException($"a ({rows}, {cols}) {type} matrix needs {size} bytes from an even offset; got offset {offset} in {storage.Length} bytes", nameof(offset));
        }
        Type = type;
        _storage = storage;
        _offset = offset;
    }

    /// <summary>Converts a float32 (N, K) matrix to <paramref name="type"/> in a pinned buffer (tests, benchmarks, re-ordered rows).</summary>
    public static HalfMatrix FromFloat32(DType type, ReadOnlySpan<float> data, int rows, int cols)
    {
        if (data.Length != (long)rows * cols)
        {
            throw new ArgumentException($"a ({rows}, {cols}) matrix needs {(long)rows * cols} values; got {data.Length}", nameof(data));
        }
        var storage = WeightStorage.Allocate((long)rows * cols * 2);
        var bits = new Span<ushort>(storage.Pointer(0, storage.Length), rows * cols);
        for (int i = 0; i < bits.Length; i++)
        {
            bits[i] = type == DType.BF16 ? Bf16.FromSingle(data[i]) : BitConverter.HalfToUInt16Bits((Half)data[i]);
        }
        return new HalfMatrix(type, storage, 0, rows, cols);
    }

    /// <summary>F16 or BF16.</summary>
    public DType Type { get; }

    /// <summary>The memory holding the values.</summary>
    public WeightStorage Storage => _storage;

    /// <summary>The raw 16-bit values, (N, K). Not a copy.</summary>
    public ReadOnlySpan<ushort> Bits => new(Base, Rows * Cols);

    /// <summary>Row 0's first element.</summary>
    private ushort* Base => (ushort*)_storage.Pointer(_offset, (long)Rows * Cols * 2);

    public override void ReadRow(int row, Span<float> dst)
    {
        CheckReadRow(row, dst);
        ToFloat32(Type, new ReadOnlySpan<ushort>(Base + (long)row * Cols, Cols), dst);
        GC.KeepAlive(_storage);
    }

    /// <summary>
    /// Widens 16-bit values of <paramref name="type"/> (F16 or BF16) to float32 with SIMD: F16 by
    /// <see cref="TensorPrimitives.ConvertToSingle(ReadOnlySpan{Half}, Span{float})"/>, BF16 by zero-extending each
    /// value to 32 bits and shifting it into the top half (bfloat16 is the top 16 bits of a float32).
    /// </summary>
    public static void ToFloat32(DType type, ReadOnlySpan<ushort> src, Span<float> dst)
    {
        if (dst.Length < src.Length)
        {
            throw new ArgumentException($"destination holds {dst.Length} values; {src.Length} needed", nameof(dst));
        }
        if (type == DType.F16)
        {
            TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<ushort, Half>(src), dst);
            return;
        }
        if (type != DType.BF16)
        {
            throw new ArgumentException($"{type} is not a 16-bit float type; expected F16 or BF16", nameof(type));
        }
        int i = 0;
        var d = MemoryMarshal.Cast<float, uint>(dst);
        if (Vector.IsHardwareAccelerated)
        {
            int vl = Vector<ushort>.Count;
            for (; i + vl <= src.Length; i += vl)
            {
                Vector.Widen(new Vector<ushort>(src.Slice(i, vl)), out var lo, out var hi);
                (lo << 16).CopyTo(d.Slice(i));
                (hi << 16).CopyTo(d.Slice(i + vl / 2));
            }
        }
        for (; i < src.Length; i++)
        {
            d[i] = (uint)src[i] << 16;
        }
    }

    /// <summary>One 16-bit value of <paramref name="type"/> as float32 (the scalar reference).</summary>
    public static float ToSingle(DType type, ushort bits) => type == DType.BF16 ? Bf16.ToSingle(bits) : (float)BitConverter.UInt16BitsToHalf(bits);

    public override void MatVec(ReadOnlySpan<float> x, Span<float> y)
    {
        CheckMatVec(x, y);
        Product(x, y, 1);
    }

    public override void MatMul(ReadOnlySpan<float> x, Span<float> y, int tokens)
    {
        CheckMatMul(x, y, tokens);
        Product(x, y, tokens);
    }

    private void Product(ReadOnlySpan<float> x, Span<float> y, int tokens)
    {
        long start = NumericsProfile.Start();
        ProductCore(x, y, tokens);
        NumericsProfile.Stop(ProfileSection.MatMulFloat, start);
    }

    private void ProductCore(ReadOnlySpan<float> x, Span<float> y, int tokens)
    {
        if (tokens == 0 || Rows == 0)
        {
            return;
        }
        int n = Rows, k = Cols;
        ushort* w = Base;
        fixed (float* px = x)
        fixed (float* py = y)
        {
            long work = (long)n * k * tokens;
            int threads = NumericsThreads.MaxThreads;
            // One token: 4 equal blocks of rows per thread, the last ones cut into pieces (RowItems: a thread done
            // early waits at most a quarter block), boundaries multiples of 4 for the 4-row step; many tokens: panels
            // of PanelRows rows.
            bool parallel = work >= ParallelThreshold && threads > 1;
            int equal = tokens == 1 && parallel ? Math.Max(1, Math.Min(threads * 4, n / 4)) : 1;
            int blocks = tokens == 1 ? RowItems.Count(equal, threads) : (n + PanelRows - 1) / PanelRows;
            nint aw = (nint)w, ax = (nint)px, ay = (nint)py;
            DType type = Type;
            // One token: F16 rows of a multiple of 64 values take the generated tile (decided once per product); the
            // other kernels read x in their unpack order.
            bool tile = tokens == 1 && type == DType.F16 && HalfRowTile.Covers(k);
            float[]? xs = tokens == 1 && !tile ? UnpackOrder(Type, x[..k]) : null;
            fixed (float* pxs = xs)
            {
                nint axs = (nint)pxs;
                Action<int> run = tokens == 1
                    ? b => RowsMatVec(type, tile, (ushort*)aw, (float*)ax, (float*)axs, (float*)ay, k,
                        RowItems.Boundary(b, equal, threads, n, HalfRowTile.Rows), RowItems.Boundary(b + 1, equal, threads, n, HalfRowTile.Rows))
                    : b => Panel(type, (ushort*)aw, (float*)ax, (float*)ay, n, k, tokens, b * PanelRows, Math.Min(n, (b + 1) * PanelRows));
                if (blocks == 1 || !parallel)
                {
                    for (int b = 0; b < blocks; b++)
                    {
                        run(b);
                    }
                }
                else
                {
                    NumericsThreads.For(blocks, run);
                }
            }
        }
        GC.KeepAlive(_storage);
    }

    /// <summary>
    /// y[r] = W[r] · x for r in [r0, r1), each row widened in registers and multiplied as it is read (one pass over
    /// the weights, which decode is bound by). w: (N, K), x: (K), y: (N); tile: F16 rows that take
    /// <see cref="HalfRowTile"/> (whole tiles of 4 rows; the rest below); xs: x in the unpack kernels' order
    /// (<see cref="UnpackOrder"/>; null: the portable kernels).
    /// </summary>
    private static void RowsMatVec(DType type, bool tile, ushort* w, float* x, float* xs, float* y, int k, int r0, int r1)
    {
        if (tile)
        {
            r0 = HalfRowTile.Run(w, x, y, k, r0, r1);
        }
        for (int r = r0; r < r1; r++)
        {
            ushort* row = w + (long)r * k;
            y[r] = (type, xs != null) switch
            {
                (DType.BF16, true) => DotBf16Unpack(row, x, xs, k),
                (DType.BF16, false) => DotBf16(row, x, k),
                (_, true) => DotF16Unpack(row, x, xs, k),
                _ => DotF16(row, x, k),
            };
        }
    }

    [ThreadStatic]
    private static float[]? t_unpackX;

    /// <summary>
    /// x (K) rearranged for the unpack kernels (<see cref="DotF16Unpack"/>, <see cref="DotBf16Unpack"/>), times 2^112
    /// for F16 (1 for BF16); null below AVX-512, or for F16 when some |x| reaches 2^15 (x times 2^112 would
    /// overflow; the plain kernel runs instead) or K below 32. vpunpcklwd / vpunpckhwd of 32 halves take, from each 128-bit lane of
    /// 8, its first 4 (low) or last 4 (high): so each block of 32 becomes [x0..3, x8..11, x16..19, x24..27,
    /// x4..7, x12..15, x20..23, x28..31]. The tail (K mod 32) is not used (the kernels read x there).
    /// Example: K = 40: xs[0..3] = x[0..3] s, xs[4..7] = x[8..11] s, ..., xs[16..19] = x[4..7] s, ...; xs[32..39] unused.
    /// </summary>
    private static float[]? UnpackOrder(DType type, ReadOnlySpan<float> x)
    {
        if (!Vector512.IsHardwareAccelerated || x.Length < 32 || (type == DType.F16 && TensorPrimitives.MaxMagnitude(x) >= 32768f))
        {
            return null;
        }
        float scale = type == DType.F16 ? HalfScale : 1f;
        var xs = t_unpackX is { } b && b.Length >= x.Length ? b : t_unpackX = new float[x.Length];
        for (int i = 0; i + 32 <= x.Length; i += 32)
        {
            for (int lane = 0; lane < 4; lane++)
            {
                for (int e = 0; e < 4; e++)
                {
                    xs[i + 4 * lane + e] = x[i + 8 * lane + e] * scale;
                    xs[i + 16 + 4 * lane + e] = x[i + 8 * lane + 4 + e] * scale;
                }
            }
        }
        return xs;
    }

    /// <summary>2^112 (0x77800000): the exponent bias difference between float32 and IEEE half.</summary>
    private static readonly float HalfScale = BitConverter.UInt32BitsToSingle(0x77800000);

    /// <summary>
    /// bfloat16 row (k) · float32 x (k) on AVX-512: vpunpckl/hwd with zeros put each value in the top half of a 32-bit
    /// lane, which is its float32 (one operation per 16 values); xs is x in that order (<see cref="UnpackOrder"/>).
    /// </summary>
    private static float DotBf16Unpack(ushort* w, float* x, float* xs, int k)
    {
        int i = 0;
        Vector512<float> a0 = default, a1 = default;
        for (; i + 32 <= k; i += 32)
        {
            var raw = Vector512.Load(w + i);
            a0 = Vector512.FusedMultiplyAdd(Avx512BW.UnpackLow(Vector512<ushort>.Zero, raw).AsSingle(), Vector512.Load(xs + i), a0);
            a1 = Vector512.FusedMultiplyAdd(Avx512BW.UnpackHigh(Vector512<ushort>.Zero, raw).AsSingle(), Vector512.Load(xs + i + 16), a1);
        }
        float s = Vector512.Sum(a0 + a1);
        for (; i < k; i++)
        {
            s += Bf16.ToSingle(w[i]) * x[i];
        }
        return s;
    }

    /// <summary>
    /// IEEE half row (k) · float32 x (k) on AVX-512, as <see cref="DotF16"/> with two operations fewer per 16 values:
    /// vpunpckl/hwd with zeros put each half in the top of its lane (the widening and the shift of
    /// <see cref="WidenHalfFinite"/> in one), and the final times 2^112 is folded into xs (x times 2^112 in unpack order,
    /// <see cref="UnpackOrder"/>, exact since |x| &lt; 2^15): each product w x, hence each fused multiply-add, is the
    /// same as unscaled. A row holding an infinity or NaN is redone by <see cref="DotF16Exact"/>.
    /// </summary>
    private static float DotF16Unpack(ushort* w, float* x, float* xs, int k)
    {
        int i = 0;
        Vector512<float> a0 = default, a1 = default;
        var largest = Vector512<ushort>.Zero;
        var magnitudeMask = Vector512.Create((ushort)0x7FFF);
        var clear = Vector512.Create(0x8FFFE000u);
        for (; i + 32 <= k; i += 32)
        {
            var raw = Vector512.Load(w + i);
            largest = Vector512.Max(largest, raw & magnitudeMask);
            var lo = Avx512BW.UnpackLow(Vector512<ushort>.Zero, raw).AsInt32();
            var hi = Avx512BW.UnpackHigh(Vector512<ushort>.Zero, raw).AsInt32();
            a0 = Vector512.FusedMultiplyAdd((Vector512.ShiftRightArithmetic(lo, 3).AsUInt32() & clear).AsSingle(), Vector512.Load(xs + i), a0);
            a1 = Vector512.FusedMultiplyAdd((Vector512.ShiftRightArithmetic(hi, 3).AsUInt32() & clear).AsSingle(), Vector512.Load(xs + i + 16), a1);
        }
        if (Vector512.GreaterThanOrEqualAny(largest, Vector512.Create((ushort)0x7C00)))
        {
            return DotF16Exact(w, x, k);
        }
        float s = Vector512.Sum(a0 + a1);
        for (; i < k; i++)
        {
            s += (float)BitConverter.UInt16BitsToHalf(w[i]) * x[i];
        }
        return s;
    }

    /// <summary>bfloat16 row (k) · float32 x (k): each value zero-extended to 32 bits and shifted into the top half.</summary>
    private static float DotBf16(ushort* w, float* x, int k)
    {
        int vl = Vector<float>.Count, i = 0;
        Vector<float> a0 = default, a1 = default;
        for (; i + 2 * vl <= k; i += 2 * vl)
        {
            Vector.Widen(Vector.Load(w + i), out Vector<uint> lo, out Vector<uint> hi);
            a0 = Vector.FusedMultiplyAdd(Vector.AsVectorSingle(lo << 16), Vector.Load(x + i), a0);
            a1 = Vector.FusedMultiplyAdd(Vector.AsVectorSingle(hi << 16), Vector.Load(x + i + vl), a1);
        }
        float s = Vector.Sum(a0 + a1);
        for (; i < k; i++)
        {
            s += Bf16.ToSingle(w[i]) * x[i];
        }
        return s;
    }

    /// <summary>
    /// IEEE half row (k) · float32 x (k), each vector of halves widened in registers by <see cref="WidenHalfFinite"/>
    /// (4 operations per vector), while the largest magnitude bits of the row are tracked (1 more per 2 vectors). A row
    /// holding an infinity or NaN (magnitude bits 0x7C00 and up, which the finite widening gets wrong) is redone with
    /// <see cref="WidenHalf"/>. Either way every value widens to the same float32 and the multiply-adds run in the same
    /// order, so the result equals <see cref="DotF16Exact"/> bit for bit.
    /// </summary>
    private static float DotF16(ushort* w, float* x, int k)
    {
        int vl = Vector<float>.Count, i = 0;
        Vector<float> a0 = default, a1 = default;
        var largest = Vector<ushort>.Zero;
        var magnitudeMask = new Vector<ushort>(0x7FFF);
        for (; i + 2 * vl <= k; i += 2 * vl)
        {
            var raw = Vector.Load(w + i);
            largest = Vector.Max(largest, raw & magnitudeMask);
            Vector.Widen(raw, out Vector<uint> lo, out Vector<uint> hi);
            a0 = Vector.FusedMultiplyAdd(WidenHalfFinite(lo), Vector.Load(x + i), a0);
            a1 = Vector.FusedMultiplyAdd(WidenHalfFinite(hi), Vector.Load(x + i + vl), a1);
        }
        if (Vector.GreaterThanOrEqualAny(largest, new Vector<ushort>(0x7C00)))
        {
            return DotF16Exact(w, x, k);
        }
        float s = Vector.Sum(a0 + a1);
        for (; i < k; i++)
        {
            s += (float)BitConverter.UInt16BitsToHalf(w[i]) * x[i];
        }
        return s;
    }

    /// <summary>IEEE half row (k) · float32 x (k), each vector of halves widened in registers by <see cref="WidenHalf"/> (infinities and NaN included).</summary>
    private static float DotF16Exact(ushort* w, float* x, int k)
    {
        int vl = Vector<float>.Count, i = 0;
        Vector<float> a0 = default, a1 = default;
        for (; i + 2 * vl <= k; i += 2 * vl)
        {
            Vector.Widen(Vector.Load(w + i), out Vector<uint> lo, out Vector<uint> hi);
            a0 = Vector.FusedMultiplyAdd(WidenHalf(lo), Vector.Load(x + i), a0);
            a1 = Vector.FusedMultiplyAdd(WidenHalf(hi), Vector.Load(x + i + vl), a1);
        }
        float s = Vector.Sum(a0 + a1);
        for (; i < k; i++)
        {
            s += (float)BitConverter.UInt16BitsToHalf(w[i]) * x[i];
        }
        return s;
    }

    /// <summary>
    /// IEEE half bits (one per 32-bit lane, zero-extended) to float32, exactly for every finite half (normal or
    /// subnormal); an infinity or NaN comes out as a finite value of magnitude 2^16 or more instead (callers check).
    /// Shifting the half to the top of the lane and back down arithmetically by 3 puts its exponent and fraction in
    /// bits 23..27 and 13..22 and copies of the sign in bits 28..31; the mask 0x8FFFE000 keeps the sign (bit 31) and
    /// clears the copies, leaving the value times 2^-112 as a float32 (a subnormal for a subnormal half); times 2^112
    /// restores it exactly. Four operations (shift, shift, and, multiply) against <see cref="WidenHalf"/>'s nine.
    /// Example: -2.0 = 0xC000 -> 0xC0000000 (shifted up) -> 0xF8000000 (arithmetic shift by 3) -> 0x88000000 (masked)
    /// = -2^-111, times 2^112 = -2.0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector<float> WidenHalfFinite(Vector<uint> bits)
    {
        var top = Vector.AsVectorInt32(bits << 16);
        var scaled = Vector.AsVectorUInt32(Vector.ShiftRightArithmetic(top, 3)) & new Vector<uint>(0x8FFFE000);
        return Vector.AsVectorSingle(scaled) * new Vector<float>(BitConverter.UInt32BitsToSingle(0x77800000));
    }

    /// <summary>
    /// IEEE half bits (one per 32-bit lane) to float32, exactly. The magnitude bits shifted up by 13 land the half's
    /// 5-bit exponent and 10-bit fraction in a float32's exponent and fraction fields, i.e. the value times 2^-112
    /// (for a subnormal half, a float32 subnormal of the same scaled value); multiplying by 2^112 restores it exactly.
    /// (2^112 is 0x77800000.) Exponent 31 (infinity, NaN) gets the float32 all-ones exponent instead; the sign moves from bit 15 to bit 31.
    /// Example: 1.0 = 0x3C00 -> 0x3C00 &lt;&lt; 13 = 0x07800000 = 2^-112, times 2^112 = 1.0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector<float> WidenHalf(Vector<uint> bits)
    {
        var magnitude = bits & new Vector<uint>(0x7FFF);
        var shifted = magnitude << 13;
        var value = Vector.AsVectorUInt32(Vector.AsVectorSingle(shifted) * new Vector<float>(BitConverter.UInt32BitsToSingle(0x77800000)));
        var special = Vector.GreaterThanOrEqual(magnitude, new Vector<uint>(0x7C00));
        value = Vector.ConditionalSelect(special, shifted | new Vector<uint>(0x7F800000), value);
        return Vector.AsVectorSingle(value | ((bits & new Vector<uint>(0x8000)) << 16));
    }

    /// <summary>
    /// Rows [r0, r1) (at most <see cref="PanelRows"/>) converted once to a float32 panel (P, K), then y[t, r] for
    /// every token t, four rows per step. w: (N, K), x: (T, K), y: (T, N).
    /// </summary>
    private static void Panel(DType type, ushort* w, float* x, float* y, int n, int k, int tokens, int r0, int r1)
    {
        int p = r1 - r0;
        var panel = t_panel is { } buf && buf.Length >= p * k ? buf : t_panel = new float[PanelRows * k];
        ToFloat32(type, new ReadOnlySpan<ushort>(w + (long)r0 * k, p * k), panel);
        fixed (float* pw = panel)
        {
            int t = 0;
            for (; t + 2 <= tokens; t += 2)
            {
                float* xt = x + (long)t * k;
                float* yt = y + (long)t * n + r0;
                int r = 0;
                for (; r + 4 <= p; r += 4)
                {
                    F32Matrix.Micro4x2(pw + (long)r * k, xt, k, yt + r, n);
                }
                for (; r < p; r++)
                {
                    var row = new ReadOnlySpan<float>(pw + (long)r * k, k);
                    yt[r] = TensorPrimitives.Dot(row, new ReadOnlySpan<float>(xt, k));
                    yt[n + r] = TensorPrimitives.Dot(row, new ReadOnlySpan<float>(xt + k, k));
                }
            }
            for (; t < tokens; t++)
            {
                float* xt = x + (long)t * k;
                float* yt = y + (long)t * n + r0;
                int r = 0;
                for (; r + 4 <= p; r += 4)
                {
                    F32Matrix.Micro4x1(pw + (long)r * k, xt, k, yt + r);
                }
                for (; r < p; r++)
                {
                    yt[r] = TensorPrimitives.Dot(new ReadOnlySpan<float>(pw + (long)r * k, k), new ReadOnlySpan<float>(xt, k));
                }
            }
        }
    }

    /// <summary>
    /// Scalar twin of <see cref="MatMul"/>: y[t, r] = sum_c widen(w[r, c]) * x[t, c] with plain loops.
    /// w: (N, K) 16-bit values of <paramref name="type"/>, x: (T, K), y: (T, N).
    /// </summary>
    public static void MatMulScalar(DType type, ReadOnlySpan<ushort> w, int rows, int cols, ReadOnlySpan<float> x, Span<float> y, int tokens)
    {
        for (int t = 0; t < tokens; t++)
        {
            for (int r = 0; r < rows; r++)
            {
                float s = 0;
                for (int c = 0; c < cols; c++)
                {
                    s += ToSingle(type, w[r * cols + c]) * x[t * cols + c];
                }
                y[t * rows + r] = s;
            }
        }
    }
}
