using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Numerics.Quant;

/// <summary>
/// Q4_K weights packed once at load into groups of 16 rows (rows in vector lanes, no per-product repacking), and the
/// products over that layout: <see cref="Run"/> (AVX-512, tiles of 1..8 tokens), <see cref="Run256"/> (AVX2) and their scalar
/// twin <see cref="RunScalar"/>. All compute each (row, token) exactly as <see cref="Q4KInterleaved.RunScalar"/> does over the GGUF rows: per
/// super-block the exact integers isum = sum_s sc[s] sum(q x of sub-block s) and msum = sum_s m[s] sum(x of s), then
/// acc = fma(d, float(isum) d_x, acc) and acc = fma(-dmin, float(msum) d_x, acc).
/// <para>Layout of a group: super-blocks b = 0..nb-1 follow each other, <see cref="SuperBytes"/> = 16 * 144 bytes each
/// (the file's bytes, nothing added); inside super-block b (offsets in bytes):
/// [0, 32) the 16 rows' f16 d; [32, 64) their f16 dmin; [64, 256) the 12 packed scale bytes as 3 vectors of 16 dwords
/// (vector i holds bytes 4i..4i+3 of every row, lane r = row r); [256, 2304) the 128 quant bytes qs as 32 vectors of
/// 16 dwords (vector k holds qs[4k..4k+3] of every row). Quant dword k of a row lies in 64-value chunk c = k / 8 of
/// the GGUF block: its low nibbles are values 4 (k % 8)..+3 of sub-block 2c, its high nibbles those of sub-block 2c + 1.
/// Example: qs bytes 40..43 of super-block 3 of the group's row 5 (chunk 1: sub-block 2 values 8..11 in the low
/// nibbles, sub-block 3 values 8..11 in the high ones) are the dword at byte 3 * 2304 + 256 + 10 * 64 + 5 * 4 = 7828.
/// Every vector is 64-byte aligned when the group is.</para>
/// <para>Per sub-block and token, 8 vpmaddubsw of the nibbles (masked, or shifted and masked) with the token's broadcast
/// 4-byte groups add up in int16 (at most 8 * 2 * 15 * 127 = 30480), one vpmaddwd by the rows' sc[s] (in both int16
/// halves, from one vpshufb of the unpacked scales) adds sc[s] (sum q x) to the int32 sum (exact: at most
/// 8 * 63 * 60960 &lt; 2^31). The 6-bit scales and mins are unpacked per super-block in registers, 16 rows at once.</para>
/// <para>From <see cref="ExpandMinTokens"/> tokens on, each group is first expanded once per product into a per-thread
/// buffer of masked nibbles, scale pairs, min pairs and float dmin and d (4992 bytes per super-block, as
/// <see cref="Q4KInterleaved"/>'s repacked groups), so that its tiles of 8 tokens do not unpack them again: same
/// integers, same float products, same results. Where the CPU has AVX-512 VNNI, <see cref="Q4KVnni"/>'s generated tiles
/// take every product instead, over the packed groups themselves.</para>
/// Letters: N = rows (n), K = cols = 256 nb, T = tokens, nb = super-blocks per row, G = ceil(N / 16) groups.
/// </summary>
internal static unsafe class Q4KPacked
{
    /// <summary>Rows per group: one per float lane of a 512-bit vector.</summary>
    internal const int GroupRows = KPacked.GroupRows;

    /// <summary>
    /// Tokens from which the managed tiles (<see cref="Run"/> without the generated kernels, whose tiles read the packed
    /// groups for every token count) expand each group once into a per-thread buffer. Measured on the 2-core
    /// AVX-512 box (<c>bench/Bora.Bench matmul --types q4_k --shapes w1 --compare-packed 1</c>, 2 threads, GFLOP/s
    /// expanded / packed tiles, the packed tiles prefetching the super-block 2 ahead): T = 24: 369 / 443, 32: 397 / 450,
    /// 48: 419 / 454, 64: 455 / 451; at 512 tokens the expanded groups run at 532-543.
    /// </summary>
    internal const int ExpandMinTokens = 64;

    /// <summary>Bytes of one GGUF Q4_K block (256 values).</summary>
    internal const int BlockBytes = 144;

    /// <summary>Bytes of one super-block of a group: 16 rows' blocks.</summary>
    internal const int SuperBytes = GroupRows * BlockBytes;

    private const int DOffset = 0;
    private const int DminOffset = 32;
    private const int ScaleOffset = 64;
    private const int QuantOffset = 256;

    /// <summary>
    /// vpshufb controls (384 bytes, on the pinned heap, so <see cref="Controls"/> stays valid): [0, 256) sc[j]
    /// (j = 0..3) of each dword to both int16 halves; [256, 320) bytes 0 and 1 of each dword zero-extended to its two
    /// int16 halves, [320, 384) bytes 2 and 3 (the min pairs (m[0], m[1]) and (m[2], m[3]) of a dword of 4 mins).
    /// </summary>
    private static readonly byte[] ControlBytes = BuildControls();

    /// <summary>The first byte of <see cref="ControlBytes"/>.</summary>
    private static readonly byte* Controls = (byte*)Unsafe.AsPointer(ref ControlBytes[0]);

    /// <summary>Bytes of one packed group of rows of <paramref name="nb"/> super-blocks: 16 * 144 nb (the file's bytes).</summary>
    public static long GroupBytes(int nb) => (long)nb * SuperBytes;

    /// <summary>
    /// Packs <paramref name="rows"/> (1..16; missing rows repeat the last) GGUF-layout rows at <paramref name="src"/>
    /// (row stride <paramref name="rowBytes"/>, nb blocks each) into one group at <paramref name="dst"/> (<see cref="GroupBytes"/> bytes).
    /// </summary>
    public static void PackGroup(byte* src, long rowBytes, int nb, int rows, byte* dst)
    {
        KPacked.CheckGroup(nb, rows);
        for (int b = 0; b < nb; b++)
        {
            byte* sb = dst + (long)b * SuperBytes;
            ushort* d = (ushort*)(sb + DOffset), dmin = (ushort*)(sb + DminOffset);
            uint* scales = (uint*)(sb + ScaleOffset), qs = (uint*)(sb + QuantOffset);
            for (int r = 0; r < GroupRows; r++)
            {
                byte* blk = src + Math.Min(r, rows - 1) * rowBytes + (long)b * BlockBytes;
                d[r] = Unsafe.ReadUnaligned<ushort>(blk);
                dmin[r] = Unsafe.ReadUnaligned<ushort>(blk + 2);
                for (int i = 0; i < 3; i++)
                {
                    scales[i * GroupRows + r] = Unsafe.ReadUnaligned<uint>(blk + 4 + 4 * i);
                }
                for (int k = 0; k < 32; k++)
                {
                    qs[k * GroupRows + r] = Unsafe.ReadUnaligned<uint>(blk + 16 + 4 * k);
                }
            }
        }
    }

    /// <summary>Row <paramref name="r"/> (0..15) of a packed group back to nb GGUF-layout blocks at <paramref name="dst"/>: <see cref="PackGroup"/>'s exact inverse.</summary>
    public static void UnpackRow(byte* group, int nb, int r, byte* dst)
    {
        KPacked.CheckGroup(nb, r + 1);
        for (int b = 0; b < nb; b++)
        {
            byte* sb = group + (long)b * SuperBytes;
            byte* blk = dst + (long)b * BlockBytes;
            Unsafe.WriteUnaligned(blk, ((ushort*)(sb + DOffset))[r]);
            Unsafe.WriteUnaligned(blk + 2, ((ushort*)(sb + DminOffset))[r]);
            for (int i = 0; i < 3; i++)
            {
                Unsafe.WriteUnaligned(blk + 4 + 4 * i, ((uint*)(sb + ScaleOffset))[i * GroupRows + r]);
            }
            for (int k = 0; k < 32; k++)
            {
                Unsafe.WriteUnaligned(blk + 16 + 4 * k, ((uint*)(sb + QuantOffset))[k * GroupRows + r]);
            }
        }
    }

    /// <summary>Once per product on the calling thread: the per-sub-block activation sums the min term reads.</summary>
    public static void Prepare(Q8Activations act) => act.PrepareMinSums();

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16; r1 a multiple of 16 or n), t in [0, tokens), after
    /// <see cref="Prepare"/>. packed: the matrix's first group (G groups of <see cref="GroupBytes"/>); y: (T, n). AVX-512 (<see cref="Run256"/> for AVX2).
    /// </summary>
    public static void Run(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        if (QuantDispatch.UseGeneratedKernels)
        {
            if (nb > 0 && r0 < r1)
            {
                Q4KVnni.Run(packed, nb, n, act, tokens, y, r0, r1);
            }
        }
        else
        {
            KPacked.Run<Kernel>(packed, nb, n, act, tokens, y, r0, r1);
        }
    }

    private static byte[] BuildControls()
    {
        var bytes = GC.AllocateArray<byte>(384, pinned: true);
        for (int j = 0; j < 4; j++)
        {
            for (int i = 0; i < 64; i += 4)
            {
                byte src = (byte)((i & 15) + j);
                bytes[64 * j + i] = src;
                bytes[64 * j + i + 1] = 0x80;
                bytes[64 * j + i + 2] = src;
                bytes[64 * j + i + 3] = 0x80;
                if (j < 2)
                {
                    bytes[256 + 64 * j + i] = (byte)((i & 15) + 2 * j);
                    bytes[256 + 64 * j + i + 1] = 0x80;
                    bytes[256 + 64 * j + i + 2] = (byte)((i & 15) + 2 * j + 1);
                    bytes[256 + 64 * j + i + 3] = 0x80;
                }
            }
        }
        return bytes;
    }

    /// <summary>This format's tiles and expansion for <see cref="KPacked.Run{TK}"/>; token data: <see cref="Q8Activations.MinSums"/>.</summary>
    internal readonly struct Kernel : IKPackedKernel
    {
        public static long SuperBytes => Q4KPacked.SuperBytes;

        public static long ExpandedStride => Expanded.Stride;

        public static int ExpandMinTokens => Q4KPacked.ExpandMinTokens;

        public static nint TokenData(Q8Activations act, int t) => (nint)act.MinSums(t);

        public static void Expand(byte* g, int nb, byte* dst) => Q4KPacked.Expand(g, nb, dst);

        public static void Tile<TN>(bool expanded, byte* src, int nb, Q8Row* tok, nint* data, float* y, int n, int rows, float* partial)
            where TN : struct, ITokenCount
        {
            if (expanded)
            {
                Tile<TN, Expanded>(src, nb, tok, (int**)data, Controls, y, n, rows, partial);
            }
            else
            {
                Tile<TN, Packed>(src, nb, tok, (int**)data, Controls, y, n, rows, partial);
            }
        }
    }

    /// <summary>
    /// Expands one packed group (nb super-blocks) into the <see cref="Expanded"/> layout at <paramref name="dst"/>.
    /// </summary>
    internal static void Expand(byte* g, int nb, byte* dst)
    {
        byte* ctrl = Controls;
        for (int b = 0; b < nb; b++)
        {
            byte* sb = g + (long)b * SuperBytes;
            byte* eb = dst + (long)b * Expanded.Stride;
            var scales = Packed.Scales(sb);
            var mins = Packed.Mins(sb, ctrl);
            for (int s = 0; s < 8; s++)
            {
                for (int k = 0; k < 8; k++)
                {
                    Packed.Plane(sb, s / 2, s % 2, k).Store(eb + s * 512L + 64 * k);
                }
                var pair = Packed.ScalePair(sb, s < 4 ? scales.Low : scales.High, s, ctrl);
                pair.AsInt32().Store((int*)(eb + Expanded.ScaleOffset + s * 64L));
            }
            mins.Store(eb + Expanded.MinPairOffset);
            Packed.Dmin(sb).Store((float*)(eb + Expanded.DminOffset));
            Packed.D(sb).Store((float*)(eb + Expanded.DOffset));
        }
    }

    /// <summary>
    /// 16 rows x TN.Value (1..8) tokens over all super-blocks of the group at <paramref name="g"/>; stores the first
    /// <paramref name="rows"/> rows of each token (y: token t at y + t n).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TN, TSrc>(byte* g, int nb, Q8Row* tok, int** sums, byte* ctrl, float* y, int n, int rows, float* partial)
        where TN : struct, ITokenCount
        where TSrc : struct, ISource
    {
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default, c6 = default, c7 = default;
        sbyte* x0 = tok[0].Q, x1 = tok[1].Q, x2 = tok[2].Q, x3 = tok[3].Q, x4 = tok[4].Q, x5 = tok[5].Q, x6 = tok[6].Q, x7 = tok[7].Q;
        for (int b = 0; b < nb; b++)
        {
            byte* sb = g + b * TSrc.Stride;
            var scales = TSrc.Scales(sb);
            Vector512<int> i0 = default, i1 = default, i2 = default, i3 = default, i4 = default, i5 = default, i6 = default, i7 = default;
            for (int c = 0; c < 4; c++)
            {
                if (TSrc.Prefetch && TN.Value > 1)
                {
                    PackedLayouts.PrefetchLines(sb + 2 * TSrc.Stride + 576 * c, 576); // a quarter of the super-block 2 ahead
                }
                var src = c < 2 ? scales.Low : scales.High;
                long xo = 256L * b + 64 * c;
                // Sub-block 2c (the low nibbles of chunk c), then 2c + 1 (the high ones): two calls, so that each
                // half's shift is a constant (none for the low nibbles) rather than a loop variable.
                SubBlock<TN, TSrc>(sb, c, 0, TSrc.ScalePair(sb, src, 2 * c, ctrl), xo, x0, x1, x2, x3, x4, x5, x6, x7,
                    ref i0, ref i1, ref i2, ref i3, ref i4, ref i5, ref i6, ref i7);
                SubBlock<TN, TSrc>(sb, c, 1, TSrc.ScalePair(sb, src, 2 * c + 1, ctrl), xo + 32, x0, x1, x2, x3, x4, x5, x6, x7,
                    ref i0, ref i1, ref i2, ref i3, ref i4, ref i5, ref i6, ref i7);
            }
            // Per token: acc = fma(d, float(isum) d_x, acc), then acc = fma(-dmin, float(msum) d_x, acc).
            var d = TSrc.D(sb);
            var dmin = TSrc.Dmin(sb);
            var m = TSrc.Mins(sb, ctrl);
            long so = 8L * b;
            c0 = Q4KInterleaved.Finish(c0, i0, d, dmin, m, tok[0].D[b], sums[0] + so);
            if (TN.Value > 1)
            {
                c1 = Q4KInterleaved.Finish(c1, i1, d, dmin, m, tok[1].D[b], sums[1] + so);
            }
            if (TN.Value > 2)
            {
                c2 = Q4KInterleaved.Finish(c2, i2, d, dmin, m, tok[2].D[b], sums[2] + so);
            }
            if (TN.Value > 3)
            {
                c3 = Q4KInterleaved.Finish(c3, i3, d, dmin, m, tok[3].D[b], sums[3] + so);
            }
            if (TN.Value > 4)
            {
                c4 = Q4KInterleaved.Finish(c4, i4, d, dmin, m, tok[4].D[b], sums[4] + so);
            }
            if (TN.Value > 5)
            {
                c5 = Q4KInterleaved.Finish(c5, i5, d, dmin, m, tok[5].D[b], sums[5] + so);
            }
            if (TN.Value > 6)
            {
                c6 = Q4KInterleaved.Finish(c6, i6, d, dmin, m, tok[6].D[b], sums[6] + so);
            }
            if (TN.Value > 7)
            {
                c7 = Q4KInterleaved.Finish(c7, i7, d, dmin, m, tok[7].D[b], sums[7] + so);
            }
        }
        Q4_0Interleaved.StoreTile(TN.Value, y, n, rows, partial, c0, c1, c2, c3, c4, c5, c6, c7);
    }

    /// <summary>A super-block's 6-bit scales (or mins), bytewise: Low = values 0..3, High = values 4..7 of each row's dword.</summary>
    private readonly struct ScaleBytes(Vector512<byte> low, Vector512<byte> high)
    {
        public readonly Vector512<byte> Low = low;
        public readonly Vector512<byte> High = high;
    }

    /// <summary>Where a tile reads a super-block's nibbles, scales, mins and d from.</summary>
    private interface ISource
    {
        /// <summary>Bytes from one super-block to the next.</summary>
        static abstract long Stride { get; }

        /// <summary>
        /// Whether tiles of 2 tokens and more prefetch the super-block 2 ahead (the packed group, read from memory by
        /// its first tile; a 1-token tile streams at memory speed without, and the expanded buffer is in L2).
        /// </summary>
        static abstract bool Prefetch { get; }

        /// <summary>Vector k (0..7) of sub-block 2c + half: its values 4k..4k+3 as bytes 0..15 of the 16 rows.</summary>
        static abstract Vector512<byte> Plane(byte* sb, int c, int half, int k);

        /// <summary>Once per super-block: the scale bytes (unused by sources that store ready pairs).</summary>
        static abstract ScaleBytes Scales(byte* sb);

        /// <summary>sc[s] of the 16 rows in both int16 halves (src = Low or High of <see cref="Scales"/>).</summary>
        static abstract Vector512<short> ScalePair(byte* sb, Vector512<byte> src, int s, byte* ctrl);

        /// <summary>Once per super-block, after the integer sums: the rows' min pairs.</summary>
        static abstract MinPairs Mins(byte* sb, byte* ctrl);

        /// <summary>dmin of the 16 rows.</summary>
        static abstract Vector512<float> Dmin(byte* sb);

        /// <summary>d of the 16 rows.</summary>
        static abstract Vector512<float> D(byte* sb);
    }

    /// <summary>The packed layout itself: nibbles masked (and shifted), scales and mins unpacked in registers.</summary>
    private readonly struct Packed : ISource
    {
        public static long Stride => SuperBytes;

        public static bool Prefetch => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<byte> Plane(byte* sb, int c, int half, int k)
        {
            var u = Vector512.Load(sb + QuantOffset + c * 512L + 64 * k);
            return (half == 0 ? u : Vector512.ShiftRightLogical(u.AsUInt16(), 4).AsByte()) & Vector512.Create((byte)0x0F);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static ScaleBytes Scales(byte* sb)
        {
            // sc[0..3] = A & 63, sc[4..7] = (C & 15) | (A >> 6) << 4, bytewise (as KQuantRows.UnpackScalesK4).
            var a = Vector512.Load((uint*)(sb + ScaleOffset));
            var c = Vector512.Load((uint*)(sb + ScaleOffset + 128));
            return new((a & Vector512.Create(0x3F3F3F3Fu)).AsByte(),
                ((c & Vector512.Create(0x0F0F0F0Fu)) | Vector512.ShiftLeft(Vector512.ShiftRightLogical(a, 6) & Vector512.Create(0x03030303u), 4)).AsByte());
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<short> ScalePair(byte* sb, Vector512<byte> src, int s, byte* ctrl) =>
            Avx512BW.Shuffle(src, Vector512.Load(ctrl + 64 * (s & 3))).AsInt16();

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static MinPairs Mins(byte* sb, byte* ctrl)
        {
            // m[0..3] = B & 63, m[4..7] = (C >> 4) | (B >> 6) << 4, bytewise; then pairs (m[2i], m[2i + 1]) as int16.
            var bv = Vector512.Load((uint*)(sb + ScaleOffset + 64));
            var c = Vector512.Load((uint*)(sb + ScaleOffset + 128));
            var low = (bv & Vector512.Create(0x3F3F3F3Fu)).AsByte();
            var high = ((Vector512.ShiftRightLogical(c, 4) & Vector512.Create(0x0F0F0F0Fu))
                | Vector512.ShiftLeft(Vector512.ShiftRightLogical(bv, 6) & Vector512.Create(0x03030303u), 4)).AsByte();
            var first = Vector512.Load(ctrl + 256);
            var second = Vector512.Load(ctrl + 320);
            return new(Avx512BW.Shuffle(low, first).AsInt16(), Avx512BW.Shuffle(low, second).AsInt16(),
                Avx512BW.Shuffle(high, first).AsInt16(), Avx512BW.Shuffle(high, second).AsInt16());
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Dmin(byte* sb) => Q4_0Packed.Halves(Vector256.Load((short*)(sb + DminOffset)));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> D(byte* sb) => Q4_0Packed.Halves(Vector256.Load((short*)(sb + DOffset)));
    }

    /// <summary>
    /// The expanded layout of a group (per super-block, 4992 bytes, as <see cref="Q4KInterleaved"/>'s repacked groups):
    /// nibble planes (8 sub-blocks, 8, 16) dwords, sc pairs (8, 16) int32, min pairs (4, 16) int32, dmin (16) floats,
    /// d (16) floats.
    /// </summary>
    private readonly struct Expanded : ISource
    {
        public static bool Prefetch => false;

        public const long ScaleOffset = 8 * 512;
        public const long MinPairOffset = ScaleOffset + 512;
        public const long DminOffset = MinPairOffset + 256;
        public const long DOffset = DminOffset + 64;

        public const long Stride = DOffset + 64;

        static long ISource.Stride => Stride;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<byte> Plane(byte* sb, int c, int half, int k) => Vector512.Load(sb + (2 * c + half) * 512L + 64 * k);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static ScaleBytes Scales(byte* sb) => default;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<short> ScalePair(byte* sb, Vector512<byte> src, int s, byte* ctrl) => Vector512.Load((short*)(sb + ScaleOffset + s * 64L));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static MinPairs Mins(byte* sb, byte* ctrl) => new(sb + MinPairOffset);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Dmin(byte* sb) => Vector512.Load((float*)(sb + DminOffset));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> D(byte* sb) => Vector512.Load((float*)(sb + DOffset));
    }

    /// <summary>
    /// One sub-block (2c + <paramref name="half"/>) of a tile: for each of the TN.Value tokens, i_t += sc (sum of the
    /// sub-block's 8 q x products in int16), with the sub-block's 8 planes loaded once for all tokens. o: the sub-block's
    /// offset in each token's quants; scv: sc of the 16 rows (<see cref="ISource.ScalePair"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SubBlock<TN, TSrc>(byte* sb, int c, int half, Vector512<short> scv, long o,
        sbyte* x0, sbyte* x1, sbyte* x2, sbyte* x3, sbyte* x4, sbyte* x5, sbyte* x6, sbyte* x7,
        ref Vector512<int> i0, ref Vector512<int> i1, ref Vector512<int> i2, ref Vector512<int> i3,
        ref Vector512<int> i4, ref Vector512<int> i5, ref Vector512<int> i6, ref Vector512<int> i7)
        where TN : struct, ITokenCount
        where TSrc : struct, ISource
    {
        var p0 = TSrc.Plane(sb, c, half, 0);
        var p1 = TSrc.Plane(sb, c, half, 1);
        var p2 = TSrc.Plane(sb, c, half, 2);
        var p3 = TSrc.Plane(sb, c, half, 3);
        var p4 = TSrc.Plane(sb, c, half, 4);
        var p5 = TSrc.Plane(sb, c, half, 5);
        var p6 = TSrc.Plane(sb, c, half, 6);
        var p7 = TSrc.Plane(sb, c, half, 7);
        i0 += Avx512BW.MultiplyAddAdjacent(Sum(p0, p1, p2, p3, p4, p5, p6, p7, x0 + o), scv);
        if (TN.Value > 1)
        {
            i1 += Avx512BW.MultiplyAddAdjacent(Sum(p0, p1, p2, p3, p4, p5, p6, p7, x1 + o), scv);
        }
        if (TN.Value > 2)
        {
            i2 += Avx512BW.MultiplyAddAdjacent(Sum(p0, p1, p2, p3, p4, p5, p6, p7, x2 + o), scv);
        }
        if (TN.Value > 3)
        {
            i3 += Avx512BW.MultiplyAddAdjacent(Sum(p0, p1, p2, p3, p4, p5, p6, p7, x3 + o), scv);
        }
        if (TN.Value > 4)
        {
            i4 += Avx512BW.MultiplyAddAdjacent(Sum(p0, p1, p2, p3, p4, p5, p6, p7, x4 + o), scv);
        }
        if (TN.Value > 5)
        {
            i5 += Avx512BW.MultiplyAddAdjacent(Sum(p0, p1, p2, p3, p4, p5, p6, p7, x5 + o), scv);
        }
        if (TN.Value > 6)
        {
            i6 += Avx512BW.MultiplyAddAdjacent(Sum(p0, p1, p2, p3, p4, p5, p6, p7, x6 + o), scv);
        }
        if (TN.Value > 7)
        {
            i7 += Avx512BW.MultiplyAddAdjacent(Sum(p0, p1, p2, p3, p4, p5, p6, p7, x7 + o), scv);
        }
    }

    /// <summary>The int16 sums (2 per row, 16 products each) of one sub-block's 8 nibble vectors with a token's 32 activations at <paramref name="x"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<short> Sum(Vector512<byte> p0, Vector512<byte> p1, Vector512<byte> p2, Vector512<byte> p3,
        Vector512<byte> p4, Vector512<byte> p5, Vector512<byte> p6, Vector512<byte> p7, sbyte* x) =>
        (Avx512BW.MultiplyAddAdjacent(p0, Vector512.Create(*(int*)x).AsSByte())
        + Avx512BW.MultiplyAddAdjacent(p1, Vector512.Create(*(int*)(x + 4)).AsSByte()))
        + (Avx512BW.MultiplyAddAdjacent(p2, Vector512.Create(*(int*)(x + 8)).AsSByte())
        + Avx512BW.MultiplyAddAdjacent(p3, Vector512.Create(*(int*)(x + 12)).AsSByte()))
        + ((Avx512BW.MultiplyAddAdjacent(p4, Vector512.Create(*(int*)(x + 16)).AsSByte())
        + Avx512BW.MultiplyAddAdjacent(p5, Vector512.Create(*(int*)(x + 20)).AsSByte()))
        + (Avx512BW.MultiplyAddAdjacent(p6, Vector512.Create(*(int*)(x + 24)).AsSByte())
        + Avx512BW.MultiplyAddAdjacent(p7, Vector512.Create(*(int*)(x + 28)).AsSByte())));

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16), t in [0, tokens), AVX2 (<see cref="Packed256"/>): a 1-token
    /// product streams each group once, both halves per super-block (<see cref="Decode256"/>); more tokens run tiles of
    /// up to 4 tokens over the whole group (<see cref="Tile256{TN}"/>; the group stays in L2 across its tiles), from
    /// <see cref="Expand256MinTokens"/> tokens on over the group expanded once (<see cref="TileExpanded256{TN}"/>). Needs
    /// <see cref="Prepare"/> for this product.
    /// </summary>
    public static void Run256(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1) =>
        Packed256.Run<Kernel256>(packed, nb, n, act, tokens, y, r0, r1);

    /// <summary>This format's AVX2 kernels for <see cref="Packed256.Run{TK}"/>.</summary>
    private readonly struct Kernel256 : IPacked256
    {
        public static long GroupBytes(int nb) => Q4KPacked.GroupBytes(nb);

        public static nint TokenData(Q8Activations act, int t) => (nint)act.MinSums(t);

        public static void Decode(byte* g, int nb, Q8Row a, nint data, float* y, int rows) => Decode256(g, nb, a, (int*)data, y, rows);

        public static int ExpandMinTokens => Expand256MinTokens;

        public static long ExpandedBytes(int nb) => nb * Expanded256Bytes;

        public static void Expand(byte* g, int nb, byte* dst) => Expand256(g, nb, dst);

        public static void Tile<TN>(byte* g, int nb, bool first, Q8Row* tok, nint* data, float* y, int n, int rows)
            where TN : struct, ITokenCount => Tile256<TN>(g, nb, first, tok, (int**)data, y, n, rows);

        public static void TileExpanded<TN>(byte* g, byte* e, int nb, Q8Row* tok, nint* data, float* y, int n, int rows)
            where TN : struct, ITokenCount => TileExpanded256<TN>(g, e, nb, tok, (int**)data, y, n, rows);
    }

    /// <summary>
    /// Tokens from which the AVX2 product expands each group once (<see cref="Expand256"/>): its tiles then load the
    /// nibbles as bytes and the sub-block scales as int16 pairs instead of unpacking them (a shift and an and per half
    /// dword, a shuffle per pass) in every tile of 4 tokens. Measured on the 2-core AMD EPYC (Zen 3), weights of std
    /// 0.014, 256 tokens, GFLOP/s packed / expanded, runs alternating: (4096, 4096), 1 thread: 153-162 / 161-175;
    /// (14336, 4096), 2 threads: 271-300 / 288-361; at 16 and 32 tokens the two read the same within the drift
    /// (113-150 / 115-131).
    /// </summary>
    internal const int Expand256MinTokens = 16;

    /// <summary>Bytes of one super-block expanded for AVX2 (<see cref="Expand256"/>): 4096 of quants, 512 of scale pairs.</summary>
    private const int Expanded256Bytes = 4608;

    /// <summary>Offset of the scale pairs in an expanded super-block.</summary>
    private const int Expanded256Scales = 4096;

    /// <summary>
    /// The quants (0..15, one per byte) and sub-block scales of the group at g (nb super-blocks), unpacked once as the
    /// tiles would (<see cref="Nibbles"/>, <see cref="SubBlockScales"/>), to dst: per super-block
    /// (<see cref="Expanded256Bytes"/>), sub-block s = 2c + part's 8 dwords i, both halves h, at 512 s + 64 i + 32 h; then
    /// its scale pairs of half h at 4096 + 64 s + 32 h. Mins, d and dmin stay in the packed group.
    /// Example: sub-block 5 (chunk 2, high nibbles), dword 7, rows 8..15: byte 2560 + 448 + 32 = 3040.
    /// </summary>
    private static void Expand256(byte* g, int nb, byte* dst)
    {
        byte* controls = Controls;
        var nibble = Vector256.Create((byte)0x0F);
        for (int b = 0; b < nb; b++)
        {
            byte* sb = g + (long)b * SuperBytes;
            byte* eb = dst + (long)b * Expanded256Bytes;
            for (int c = 0; c < 4; c++)
            {
                for (int part = 0; part < 2; part++)
                {
                    int s = 2 * c + part;
                    for (int h = 0; h < 2; h++)
                    {
                        for (int i = 0; i < 8; i++)
                        {
                            Nibbles(sb + QuantOffset + 512L * c + 64 * i + 32 * h, 4 * part, nibble).Store(eb + 512 * s + 64 * i + 32 * h);
                        }
                        SubBlockScales(sb + 32 * h, c, part, controls).Store((short*)(eb + Expanded256Scales + 64 * s + 32 * h));
                    }
                }
            }
        }
    }

    /// <summary>
    /// <see cref="Tile256{TN}"/> over an expanded group (e, <see cref="Expand256"/>; mins, d and dmin from the packed
    /// group at g): the same integers and float operations, one loop body for the 8 sub-blocks.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileExpanded256<TN>(byte* g, byte* e, int nb, Q8Row* tok, int** mins, float* y, int n, int rows)
        where TN : struct, ITokenCount
    {
        byte* controls = Controls; // read once (see Decode256)
        float* acc = stackalloc float[Packed256.TileLanes]; // (token, half, lane): 16 j + 8 h + lane
        int* isum = stackalloc int[Packed256.TileLanes];
        new Span<float>(acc, Packed256.TileLanes).Clear();
        sbyte* x0 = tok[0].Q, x1 = tok[1].Q, x2 = tok[2].Q, x3 = tok[3].Q;
        for (int b = 0; b < nb; b++)
        {
            byte* sb = g + (long)b * SuperBytes;
            byte* eb = e + (long)b * Expanded256Bytes;
            new Span<int>(isum, Packed256.TileLanes).Clear();
            for (int s = 0; s < 8; s++)
            {
                byte* u = eb + 512 * s;
                long xo = 256L * b + 32 * s;
                sbyte* p0 = x0 + xo, p1 = x1 + xo, p2 = x2 + xo, p3 = x3 + xo;
                Vector256<short> s00 = default, s01 = default, s10 = default, s11 = default, s20 = default, s21 = default, s30 = default, s31 = default;
                // The sub-block's 8 dwords.
                Packed256.MulTile16<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31, u, p0, p1, p2, p3);
                Packed256.MulTile16<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31, u + 256, p0 + 16, p1 + 16, p2 + 16, p3 + 16);
                var sc0 = Vector256.Load((short*)(eb + Expanded256Scales + 64 * s));
                var sc1 = Vector256.Load((short*)(eb + Expanded256Scales + 64 * s + 32));
                AddScaledTile<TN>(isum, s00, s01, s10, s11, s20, s21, s30, s31, sc0, sc1);
            }
            FinishSuper<TN>(sb, b, tok, mins, acc, isum, controls);
        }
        Packed256.StoreGroupTile(TN.Value, acc, y, n, rows);
    }

    /// <summary>isum += sc (sums) for each token and half of a tile: token j, half h's int16 sums s{j}{h}, scale pairs sc{h}.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddScaledTile<TN>(int* isum, Vector256<short> s00, Vector256<short> s01, Vector256<short> s10, Vector256<short> s11,
        Vector256<short> s20, Vector256<short> s21, Vector256<short> s30, Vector256<short> s31, Vector256<short> sc0, Vector256<short> sc1)
        where TN : struct, ITokenCount
    {
        Packed256.AddScaled(isum, s00, s01, sc0, sc1);
        if (TN.Value > 1)
        {
            Packed256.AddScaled(isum + 16, s10, s11, sc0, sc1);
        }
        if (TN.Value > 2)
        {
            Packed256.AddScaled(isum + 32, s20, s21, sc0, sc1);
        }
        if (TN.Value > 3)
        {
            Packed256.AddScaled(isum + 48, s30, s31, sc0, sc1);
        }
    }

    /// <summary>
    /// The end of super-block b of a tile: per half, the min term and the two multiply-adds of the class comment
    /// (<see cref="HalfMins"/>, <see cref="Finish256"/>) for each token (buffers as <see cref="Tile256{TN}"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void FinishSuper<TN>(byte* sb, int b, Q8Row* tok, int** mins, float* acc, int* isum, byte* controls)
        where TN : struct, ITokenCount
    {
        for (int h = 0; h < 2; h++)
        {
            var mp = HalfMins(sb + 32 * h, controls);
            var d = Packed256.Halves(sb + DOffset + 16 * h);
            var dmin = Packed256.Halves(sb + DminOffset + 16 * h);
            for (int j = 0; j < TN.Value; j++)
            {
                int at = 16 * j + 8 * h;
                Finish256(Vector256.Load(acc + at), Vector256.Load(isum + at), mp.Sum(mins[j] + 8L * b), d, dmin, tok[j].D[b]).Store(acc + at);
            }
        }
    }

    /// <summary>
    /// AVX2: the group at g (16 rows, both halves) x TN.Value (1..4) tokens over all super-blocks; stores the first
    /// <paramref name="rows"/> rows of each token. Per 64-value chunk c, two passes over its 8 quant dwords: the low
    /// nibbles (sub-block 2c), then the high ones (2c + 1); in each, every token's broadcast 4-byte group multiplies the
    /// dword of both halves (<see cref="Packed256.MulPair"/>) into 8 int16 sums (token x half, at most
    /// 8 * 2 * 15 * 127 = 30480) held in registers, then one vpmaddwd by the rows' scale of that sub-block adds
    /// sc[s] (sum q x) to the token's int32 isum of the half. The isums (token j, half h at 16 j + 8 h) and float
    /// accumulators live in stack buffers, read and written once per pass and super-block: the registers stay with the
    /// sums (8), the two weight vectors and the broadcast. Per super-block and half, the min term and the two
    /// multiply-adds of the class comment (<see cref="HalfMins"/>, <see cref="Finish256"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile256<TN>(byte* g, int nb, bool first, Q8Row* tok, int** mins, float* y, int n, int rows)
        where TN : struct, ITokenCount
    {
        byte* controls = Controls; // read once (see Decode256)
        var nibble = Vector256.Create((byte)0x0F);
        float* acc = stackalloc float[Packed256.TileLanes]; // (token, half, lane): 16 j + 8 h + lane
        int* isum = stackalloc int[Packed256.TileLanes];
        new Span<float>(acc, Packed256.TileLanes).Clear();
        sbyte* x0 = tok[0].Q, x1 = tok[1].Q, x2 = tok[2].Q, x3 = tok[3].Q;
        for (int b = 0; b < nb; b++)
        {
            byte* sb = g + (long)b * SuperBytes;
            if (first)
            {
                // The first tile over a group brings it in from memory; the next ones find it in L2.
                PackedLayouts.PrefetchLines(sb + SuperBytes, SuperBytes);
            }
            new Span<int>(isum, Packed256.TileLanes).Clear();
            for (int c = 0; c < 4; c++)
            {
                byte* q = sb + QuantOffset + 512L * c;
                long xo = 256L * b + 64 * c;
                // The chunk's activations of each token (pointers set once: the loops then address them with an index alone).
                sbyte* p0 = x0 + xo, p1 = x1 + xo, p2 = x2 + xo, p3 = x3 + xo;
                for (int part = 0; part < 2; part++)
                {
                    // part 0: low nibbles (sub-block 2c, activations 0..31 of the chunk); part 1: high (2c + 1, 32..63).
                    int shift = 4 * part;
                    int xp = 32 * part;
                    Vector256<short> s00 = default, s01 = default, s10 = default, s11 = default, s20 = default, s21 = default, s30 = default, s31 = default;
                    // The chunk's 8 dwords, unrolled by hand (the JIT keeps the loop).
                    Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                        Nibbles(q, shift, nibble), Nibbles(q + 32, shift, nibble), p0 + xp, p1 + xp, p2 + xp, p3 + xp);
                    Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                        Nibbles(q + 64, shift, nibble), Nibbles(q + 96, shift, nibble), p0 + xp + 4, p1 + xp + 4, p2 + xp + 4, p3 + xp + 4);
                    Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                        Nibbles(q + 128, shift, nibble), Nibbles(q + 160, shift, nibble), p0 + xp + 8, p1 + xp + 8, p2 + xp + 8, p3 + xp + 8);
                    Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                        Nibbles(q + 192, shift, nibble), Nibbles(q + 224, shift, nibble), p0 + xp + 12, p1 + xp + 12, p2 + xp + 12, p3 + xp + 12);
                    Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                        Nibbles(q + 256, shift, nibble), Nibbles(q + 288, shift, nibble), p0 + xp + 16, p1 + xp + 16, p2 + xp + 16, p3 + xp + 16);
                    Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                        Nibbles(q + 320, shift, nibble), Nibbles(q + 352, shift, nibble), p0 + xp + 20, p1 + xp + 20, p2 + xp + 20, p3 + xp + 20);
                    Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                        Nibbles(q + 384, shift, nibble), Nibbles(q + 416, shift, nibble), p0 + xp + 24, p1 + xp + 24, p2 + xp + 24, p3 + xp + 24);
                    Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
                        Nibbles(q + 448, shift, nibble), Nibbles(q + 480, shift, nibble), p0 + xp + 28, p1 + xp + 28, p2 + xp + 28, p3 + xp + 28);
                    AddScaledTile<TN>(isum, s00, s01, s10, s11, s20, s21, s30, s31,
                        SubBlockScales(sb, c, part, controls), SubBlockScales(sb + 32, c, part, controls));
                }
            }
            FinishSuper<TN>(sb, b, tok, mins, acc, isum, controls);
        }
        Packed256.StoreGroupTile(TN.Value, acc, y, n, rows);
    }

    /// <summary>The nibbles at bit <paramref name="shift"/> (0: low, 4: high) of the 32 bytes at <paramref name="p"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Nibbles(byte* p, int shift, Vector256<byte> nibble) =>
        Vector256.ShiftRightLogical(Vector256.Load(p).AsUInt16(), shift).AsByte() & nibble;

    /// <summary>
    /// A half group's (hb: its dwords of a super-block) scale of sub-block 2c + part, in both int16 halves of each
    /// row's dword: sc[0..3] = V0 and 63, sc[4..7] = (V2 and 15) or ((V0 shr 2) and 0x30), per byte, then one vpshufb.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> SubBlockScales(byte* hb, int c, int part, byte* controls)
    {
        var v0 = Vector256.Load(hb + ScaleOffset);
        var scs = c < 2 ? v0 & Vector256.Create((byte)0x3F)
            : (Vector256.Load(hb + ScaleOffset + 128) & Vector256.Create((byte)0x0F)) | (Vector256.ShiftRightLogical(v0.AsUInt32(), 2).AsByte() & Vector256.Create((byte)0x30));
        return Avx2.Shuffle(scs, Vector256.Load(controls + 128 * (c & 1) + 64 * part)).AsInt16();
    }

    /// <summary>
    /// AVX2, 1 token, both halves of a group (16 rows) super-block by super-block, each of the token's broadcasts shared
    /// by the halves: the integers and float operations of <see cref="Tile256{TN}"/>, in one pass over the group's
    /// bytes (half by half, the first pass would read every line from memory for half of its work). Stores the first
    /// <paramref name="rows"/> rows to y[0..rows).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Decode256(byte* g, int nb, Q8Row a, int* mins, float* y, int rows)
    {
        // Read once: a static field read in the loops would keep its class-initialisation check (a possible call) there,
        // and the JIT then spills the loop's vector registers around it.
        byte* controls = Controls;
        var nibble = Vector256.Create((byte)0x0F);
        Vector256<float> c0 = default, c1 = default;
        for (int b = 0; b < nb; b++)
        {
            byte* sb = g + (long)b * SuperBytes;
            Vector256<int> i0 = default, i1 = default;
            for (int c = 0; c < 4; c++)
            {
                PackedLayouts.PrefetchLines(sb + 2 * SuperBytes + 576 * c, 576);
                byte* q = sb + QuantOffset + 512L * c;
                sbyte* x = a.Q + 256L * b + 64 * c;
                Vector256<short> l0 = default, u0 = default, l1 = default, u1 = default;
                for (int k = 0; k < 8; k++)
                {
                    var xl = Packed256.Broadcast4(x + 4 * k);
                    var xh = Packed256.Broadcast4(x + 32 + 4 * k);
                    var v0 = Vector256.Load(q + 64 * k);
                    var v1 = Vector256.Load(q + 64 * k + 32);
                    l0 += Packed256.Mul(v0 & nibble, xl);
                    u0 += Packed256.Mul(Packed256.High(v0, nibble), xh);
                    l1 += Packed256.Mul(v1 & nibble, xl);
                    u1 += Packed256.Mul(Packed256.High(v1, nibble), xh);
                }
                i0 += ScaleChunk(sb, c, l0, u0, controls);
                i1 += ScaleChunk(sb + 32, c, l1, u1, controls);
            }
            var dx = a.D[b];
            c0 = Finish256(c0, i0, HalfMins(sb, controls).Sum(mins + 8L * b), Packed256.Halves(sb + DOffset), Packed256.Halves(sb + DminOffset), dx);
            c1 = Finish256(c1, i1, HalfMins(sb + 32, controls).Sum(mins + 8L * b), Packed256.Halves(sb + DOffset + 16), Packed256.Halves(sb + DminOffset + 16), dx);
        }
        Packed256.Store(c0, y, Math.Min(rows, Packed256.HalfRows));
        if (rows > Packed256.HalfRows)
        {
            Packed256.Store(c1, y + Packed256.HalfRows, rows - Packed256.HalfRows);
        }
    }

    /// <summary>
    /// sc[2c] (sum over sub-block 2c) + sc[2c + 1] (sum over 2c + 1) of a half group (hb: its dwords of a super-block),
    /// from the int16 sums of chunk c's low (l) and high (u) nibbles: two vpmaddwd by the scales in both int16 halves.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> ScaleChunk(byte* hb, int c, Vector256<short> l, Vector256<short> u, byte* controls) =>
        Avx2.MultiplyAddAdjacent(l, SubBlockScales(hb, c, 0, controls)) + Avx2.MultiplyAddAdjacent(u, SubBlockScales(hb, c, 1, controls));

    /// <summary>A half group's min pairs of a super-block (hb: its dwords): m[0..3] = V1 and 63, m[4..7] = ((V2 shr 4) and 15) or ((V1 shr 2) and 0x30).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static MinPairs256 HalfMins(byte* hb, byte* controls)
    {
        var v1 = Vector256.Load(hb + ScaleOffset + 64);
        var v2 = Vector256.Load(hb + ScaleOffset + 128);
        var m03 = v1 & Vector256.Create((byte)0x3F);
        var m47 = (Vector256.ShiftRightLogical(v2.AsUInt32(), 4).AsByte() & Vector256.Create((byte)0x0F))
            | (Vector256.ShiftRightLogical(v1.AsUInt32(), 2).AsByte() & Vector256.Create((byte)0x30));
        var pairs01 = Vector256.Load(controls + 256);
        var pairs23 = Vector256.Load(controls + 320);
        return new MinPairs256(Avx2.Shuffle(m03, pairs01).AsInt16(), Avx2.Shuffle(m03, pairs23).AsInt16(),
            Avx2.Shuffle(m47, pairs01).AsInt16(), Avx2.Shuffle(m47, pairs23).AsInt16());
    }

    /// <summary>acc = fma(d, float(isum) d_x, acc), then acc = fma(-dmin, float(msum) d_x, acc) (the class comment's order).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Finish256(Vector256<float> acc, Vector256<int> isum, Vector256<int> msum, Vector256<float> d, Vector256<float> dmin, float dx)
    {
        var x = Vector256.Create(dx);
        acc = Fma.MultiplyAdd(d, Avx.ConvertToVector256Single(isum) * x, acc);
        return Fma.MultiplyAddNegated(dmin, Avx.ConvertToVector256Single(msum) * x, acc);
    }

    /// <summary>A half group's min pairs of one super-block: msum = sum_s m[s] S[s] from a token's 4 S pairs (<see cref="Q8Activations.PrepareMinSums"/>, entries 4..7).</summary>
    private readonly struct MinPairs256(Vector256<short> p01, Vector256<short> p23, Vector256<short> p45, Vector256<short> p67)
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Vector256<int> Sum(int* m) =>
            (Avx2.MultiplyAddAdjacent(p01, Vector256.Create(m[4]).AsInt16()) + Avx2.MultiplyAddAdjacent(p23, Vector256.Create(m[5]).AsInt16()))
            + (Avx2.MultiplyAddAdjacent(p45, Vector256.Create(m[6]).AsInt16()) + Avx2.MultiplyAddAdjacent(p67, Vector256.Create(m[7]).AsInt16()));
    }

    /// <summary>
    /// The plain scalar twin of <see cref="Run"/> over the packed layout (every ISA; call <see cref="Prepare"/> first):
    /// the sequence of <see cref="Q4KInterleaved.RunScalar"/>, reading each (row, super-block) from its group.
    /// </summary>
    public static void RunScalar(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        long groupBytes = GroupBytes(nb);
        Span<byte> scales = stackalloc byte[12];
        for (int t = 0; t < tokens; t++)
        {
            var a = act.Row(t);
            for (int r = r0; r < r1; r++)
            {
                byte* g = packed + r / GroupRows * groupBytes;
                int lane = r % GroupRows;
                float acc = 0;
                for (int b = 0; b < nb; b++)
                {
                    byte* sb = g + (long)b * SuperBytes;
                    for (int i = 0; i < 12; i++)
                    {
                        scales[i] = sb[ScaleOffset + (i / 4 * GroupRows + lane) * 4 + i % 4];
                    }
                    float d = QuantDot.HalfScalar(sb + DOffset + 2 * lane);
                    float dmin = QuantDot.HalfScalar(sb + DminOffset + 2 * lane);
                    int isum = 0, msum = 0;
                    for (int s = 0; s < 8; s++)
                    {
                        var (scale, min) = BlockDequantizer.ScaleMinK4(s, scales);
                        int dot = 0, sum = 0;
                        for (int l = 0; l < 32; l++)
                        {
                            // Value l of sub-block s: qs byte 32 (s / 2) + l = dword k = 8 (s / 2) + l / 4, byte l % 4.
                            int k = 8 * (s / 2) + l / 4;
                            int qbyte = sb[QuantOffset + (k * GroupRows + lane) * 4 + l % 4];
                            int x = a.Q[256L * b + 32 * s + l];
                            dot += ((qbyte >> (4 * (s % 2))) & 0x0F) * x;
                            sum += x;
                        }
                        isum += scale * dot;
                        msum += min * sum;
                    }
                    acc = MathF.FusedMultiplyAdd(d, isum * a.D[b], acc);
                    acc = MathF.FusedMultiplyAdd(-dmin, msum * a.D[b], acc);
                }
                y[(long)t * n + r] = acc;
            }
        }
    }
}
