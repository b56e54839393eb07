using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Bora.Numerics.Quant;

/// <summary>
/// Q6_K weights packed once at load into groups of 16 rows (rows in vector lanes), and the products over that layout:
/// <see cref="Run"/> (AVX-512, tiles of 1..8 tokens), <see cref="Run256"/> (AVX2) and their scalar twin <see cref="RunScalar"/>. All compute each
/// (row, token) exactly as <see cref="Q6KInterleaved.RunScalar"/> does over the GGUF rows: the exact integer
/// isum = sum_j sc[j] sum((u - 32) x over sub-block j of 16), then acc = fma(d, isum d_x, acc) per super-block.
/// <para>Layout of a group: super-blocks b = 0..nb-1 follow each other, <see cref="SuperBytes"/> = 3392 bytes each
/// (16 * 210 = 3360 bytes of the file, padded by 32 bytes so that every vector stays 64-byte aligned: +0.95%); inside
/// super-block b (offsets in bytes): [0, 32) the 16 rows' f16 d; [32, 64) zero; [64, 320) the 16 int8 scales as 4
/// vectors of 16 dwords (vector i holds scales 4i..4i+3 of every row, lane r = row r); [320, 3392) 48 quant vectors of
/// 16 dwords: 32 ql vectors (128 bytes of low nibbles; ql vector v holds ql[4v..4v+3] of every row) and 16 qh vectors
/// (64 bytes of high bit pairs), in the order the tiles read them: for (h, p) = (0, 0), (0, 1), (1, 0), (1, 1), for
/// i = 0..3, ql vector 16h + 4p + i, ql vector 16h + 8 + 4p + i, qh vector 8h + 4p + i (<see cref="LowVectorOffset"/>,
/// <see cref="HighVectorOffset"/>). Read in that order a super-block is one forward stream (the file's order, all of
/// ql then all of qh, read by sub-block, jumps back and forth: <see cref="Q6KVnni"/>'s tile streamed it from memory at
/// 40% of the read, against 90-94% now). Value e = 128h + 32k + l of a row (h 0..1, k 0..3, l 0..31; sub-block j = e / 16 = 8h + 2k + p)
/// has its low nibble in ql byte 64h + 32 (k &amp; 1) + l (the high nibble of that byte when k &gt;= 2) and its high 2
/// bits in qh byte 32h + l, bits 2k, 2k + 1; a dword of either holds 4 consecutive l.
/// Example: values 200..203 of super-block 1 of the group's row 5 (h = 1, k = 2, l = 8..11, so p = 0, i = 2): low
/// nibbles = the high nibbles of ql bytes 72..75 = ql vector 18, the 30th vector (12 * 2 + 3 * 2 + 0), at byte 3392 +
/// 320 + 30 * 64 + 5 * 4 = 5652; high bits = bits 4, 5 of qh bytes 40..43 = qh vector 10, the 32nd (12 * 2 + 3 * 2 +
/// 2), at byte 3392 + 320 + 32 * 64 + 5 * 4 = 5780.</para>
/// <para>Per sub-block j and token: 4 vpmaddubsw of the unsigned u = q + 32 (0..63, built in registers from ql and qh)
/// with the token's broadcast 4-byte groups add up in int16 with wrap-around, minus the token's offset pairs
/// (<see cref="Q8Activations.PrepareOffsets16"/>) leaves each lane's exact sum of (u - 32) x (at most 8 * 32 * 127 =
/// 32512), and one vpmaddwd by the rows' sc[j] (sign-extended into both int16 halves) adds sc[j] sum((u - 32) x) to
/// the int32 isum (exact: at most 16 * 128 * 65024 &lt; 2^31).</para>
/// <para>Where the CPU runs Bora's generated kernels (AVX-512 VNNI), <see cref="Q6KVnni"/>'s tiles take products of
/// every token count instead of the managed tiles below (measured faster at 1 to 512 tokens).
/// From <see cref="ExpandMinTokens"/> tokens on, each group is first expanded once per product into a per-thread
/// buffer of ready u, scale pairs and float d (5184 bytes per super-block, as <see cref="Q6KInterleaved"/>'s repacked
/// groups), which its tiles then read without rebuilding u every 8 tokens: same integers, same results.</para>
/// Letters: N = rows (n), K = cols = 256 nb, T = tokens, nb = super-blocks per row, G = ceil(N / 16) groups.
/// </summary>
internal static unsafe class Q6KPacked
{
    /// <summary>Rows per group: one per float lane of a 512-bit vector.</summary>
    internal const int GroupRows = KPacked.GroupRows;

    /// <summary>Bytes of one GGUF Q6_K block (256 values).</summary>
    internal const int BlockBytes = 210;

    /// <summary>Bytes of one super-block of a group: 16 rows' blocks (3360) and 32 bytes of alignment padding.</summary>
    internal const int SuperBytes = 3392;

    /// <summary>
    /// Tokens from which <see cref="Run"/> expands each group once into a per-thread buffer. Measured on the 2-core
    /// AVX-512 box (<c>bench/Bora.Bench matmul --types q6_k --shapes w1 --compare-packed 1</c>, 2 threads, GFLOP/s
    /// expanded / packed tiles): T = 16: 283 / 410, 24: 339 / 403, 32: 371 / 404, 48: 408 / 408, 64: 441 / 420,
    /// 128: 466 / 410. Rebuilding u from ql and qh in every tile of 8 tokens is cheaper than writing and re-reading
    /// the 5184-byte expanded super-blocks until about 48 tokens.
    /// </summary>
    internal const int ExpandMinTokens = 48;

    private const int DOffset = 0;
    private const int ScaleOffset = 64;
    /// <summary>Byte offset of the first quant vector in a super-block.</summary>
    private const int QuantOffset = 320;

    /// <summary>
    /// Byte offset in a super-block of ql vector <paramref name="v"/> = 16h + 8c + 4p + i (h, c, p 0..1, i 0..3: ql
    /// bytes 4v..4v + 3 of each row): 320 + 64 (12 (2h + p) + 3i + c). See the class summary's order.
    /// </summary>
    internal static int LowVectorOffset(int v) => QuantOffset + 64 * (12 * (2 * (v >> 4) + ((v >> 2) & 1)) + 3 * (v & 3) + ((v >> 3) & 1));

    /// <summary>Byte offset in a super-block of qh vector <paramref name="w"/> = 8h + 4p + i (qh bytes 4w..4w + 3 of each row): 320 + 64 (12 (2h + p) + 3i + 2).</summary>
    internal static int HighVectorOffset(int w) => QuantOffset + 64 * (12 * (2 * (w >> 3) + ((w >> 2) & 1)) + 3 * (w & 3) + 2);

    /// <summary>The weight offset: q = u - 32.</summary>
    private const int Offset = 32;

    /// <summary>Bytes of one packed group of rows of <paramref name="nb"/> super-blocks: 3392 nb (16 * 212 per super-block, the file's 16 * 210 and padding).</summary>
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
            new Span<byte>(sb + 32, 32).Clear();
            for (int r = 0; r < GroupRows; r++)
            {
                byte* blk = src + Math.Min(r, rows - 1) * rowBytes + (long)b * BlockBytes;
                ((ushort*)(sb + DOffset))[r] = Unsafe.ReadUnaligned<ushort>(blk + 208);
                for (int i = 0; i < 4; i++)
                {
                    ((uint*)(sb + ScaleOffset))[i * GroupRows + r] = Unsafe.ReadUnaligned<uint>(blk + 192 + 4 * i);
                }
                for (int i = 0; i < 32; i++)
                {
                    ((uint*)(sb + LowVectorOffset(i)))[r] = Unsafe.ReadUnaligned<uint>(blk + 4 * i);
                }
                for (int i = 0; i < 16; i++)
                {
                    ((uint*)(sb + HighVectorOffset(i)))[r] = Unsafe.ReadUnaligned<uint>(blk + 128 + 4 * i);
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
            Unsafe.WriteUnaligned(blk + 208, ((ushort*)(sb + DOffset))[r]);
            for (int i = 0; i < 4; i++)
            {
                Unsafe.WriteUnaligned(blk + 192 + 4 * i, ((uint*)(sb + ScaleOffset))[i * GroupRows + r]);
            }
            for (int i = 0; i < 32; i++)
            {
                Unsafe.WriteUnaligned(blk + 4 * i, ((uint*)(sb + LowVectorOffset(i)))[r]);
            }
            for (int i = 0; i < 16; i++)
            {
                Unsafe.WriteUnaligned(blk + 128 + 4 * i, ((uint*)(sb + HighVectorOffset(i)))[r]);
            }
        }
    }

    /// <summary>
    /// Once per product on the calling thread: the tokens' offset pairs (32 times sums of x) the kernel subtracts, and
    /// the negated offsets <see cref="Q6KVnni"/>'s generated tiles read.
    /// </summary>
    public static void Prepare(Q8Activations act)
    {
        act.PrepareOffsets16(Offset);
        Q6KVnni.Prepare(act);
    }

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16; r1 a multiple of 16 or n), t in [0, tokens), after
    /// <see cref="Prepare"/>. packed: the matrix's first group (G groups of <see cref="GroupBytes"/>); y: (T, n). AVX-512 (<see cref="Run256"/> for AVX2).
    /// </summary>
    public static void Run(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        if (act.Tokens == tokens && nb > 0 && r0 < r1 && QuantDispatch.UseGeneratedKernels)
        {
            Q6KVnni.Run(packed, nb, n, act, tokens, y, r0, r1);
            return;
        }
        KPacked.Run<Kernel>(packed, nb, n, act, tokens, y, r0, r1);
    }

    /// <summary>This format's tiles and expansion for <see cref="KPacked.Run{TK}"/>; token data: the offset pairs (<see cref="Q8Activations.Offsets16"/>).</summary>
    private readonly struct Kernel : IKPackedKernel
    {
        public static long SuperBytes => Q6KPacked.SuperBytes;

        public static long ExpandedStride => Expanded.Stride;

        public static int ExpandMinTokens => Q6KPacked.ExpandMinTokens;

        public static nint TokenData(Q8Activations act, int t) => (nint)act.Offsets16(t);

        public static void Expand(byte* g, int nb, byte* dst) => Q6KPacked.Expand(g, nb, dst);

        public static void Tile<TN>(bool expanded, byte* src, int nb, Q8Row* tok, nint* data, float* y, int n, int rows, float* partial)
            where TN : struct, ITokenCount
        {
            if (expanded)
            {
                Tile<TN, Expanded>(src, nb, tok, (int**)data, y, n, rows, partial);
            }
            else if (TN.Value == 1)
            {
                TileOne(src, nb, tok, (int**)data, y, n, rows, partial);
            }
            else
            {
                Tile<TN, Packed>(src, nb, tok, (int**)data, y, n, rows, partial);
            }
        }
    }

    /// <summary>Expands one packed group (nb super-blocks) into the <see cref="Expanded"/> layout at <paramref name="dst"/>.</summary>
    private static void Expand(byte* g, int nb, byte* dst)
    {
        for (int b = 0; b < nb; b++)
        {
            byte* sb = g + (long)b * SuperBytes;
            byte* eb = dst + (long)b * Expanded.Stride;
            for (int hp = 0; hp < 4; hp++)
            {
                ExpandSubBlock(sb, eb, hp >> 1, hp & 1, 0);
                ExpandSubBlock(sb, eb, hp >> 1, hp & 1, 1);
                ExpandSubBlock(sb, eb, hp >> 1, hp & 1, 2);
                ExpandSubBlock(sb, eb, hp >> 1, hp & 1, 3);
            }
            Packed.D(sb).Store((float*)(eb + Expanded.DOffset));
        }
    }

    /// <summary>Sub-block j = 8h + 2k + p of one packed super-block into its expanded super-block (k a constant at each call).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ExpandSubBlock(byte* sb, byte* eb, int h, int p, int k)
    {
        int j = 8 * h + 2 * k + p;
        Packed.U(sb, h, p, k, 0).Store(eb + j * 256L);
        Packed.U(sb, h, p, k, 1).Store(eb + j * 256L + 64);
        Packed.U(sb, h, p, k, 2).Store(eb + j * 256L + 128);
        Packed.U(sb, h, p, k, 3).Store(eb + j * 256L + 192);
        Packed.ScalePair(sb, j).Store((short*)(eb + Expanded.ScaleOffset + j * 64L));
    }

    /// <summary>
    /// 16 rows x TN.Value (1..8) tokens (quants and scales tok, offset pairs offs) over all super-blocks of one group
    /// read through <typeparamref name="TSrc"/>; stores the first <paramref name="rows"/> rows of each token.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile<TN, TSrc>(byte* g, int nb, Q8Row* tok, int** offs, float* y, int n, int rows, float* partial)
        where TN : struct, ITokenCount
        where TSrc : struct, ISource
    {
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default, c6 = default, c7 = default;
        for (int b = 0; b < nb; b++)
        {
            byte* sb = g + b * TSrc.Stride;
            Vector512<int> i0 = default, i1 = default, i2 = default, i3 = default, i4 = default, i5 = default, i6 = default, i7 = default;
            if (TSrc.IsPacked)
            {
                // Sub-block j = 8h + 2k + p in the order (h, p) then k = 0..3, one call per k: the four sub-blocks of one
                // (h, p) share their ql and qh vectors, and each call's shifts are constants (a loop over j chose them by
                // branches at run time). The int32 sums are exact, so the order does not change them.
                for (int hp = 0; hp < 4; hp++)
                {
                    PackedLayouts.PrefetchLines(sb + 2 * TSrc.Stride + 1024 * hp, 1024);
                    int h = hp >> 1, p = hp & 1;
                    SubBlock<TN, TSrc>(sb, b, h, p, 0, tok, offs, ref i0, ref i1, ref i2, ref i3, ref i4, ref i5, ref i6, ref i7);
                    SubBlock<TN, TSrc>(sb, b, h, p, 1, tok, offs, ref i0, ref i1, ref i2, ref i3, ref i4, ref i5, ref i6, ref i7);
                    SubBlock<TN, TSrc>(sb, b, h, p, 2, tok, offs, ref i0, ref i1, ref i2, ref i3, ref i4, ref i5, ref i6, ref i7);
                    SubBlock<TN, TSrc>(sb, b, h, p, 3, tok, offs, ref i0, ref i1, ref i2, ref i3, ref i4, ref i5, ref i6, ref i7);
                }
            }
            else
            {
                // Ready u vectors: sub-blocks in memory order.
                for (int j = 0; j < 16; j++)
                {
                    SubBlock<TN, TSrc>(sb, b, j >> 3, j & 1, (j >> 1) & 3, tok, offs, ref i0, ref i1, ref i2, ref i3, ref i4, ref i5, ref i6, ref i7);
                }
            }
            var d = TSrc.D(sb);
            c0 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i0) * Vector512.Create(tok[0].D[b]), c0);
            if (TN.Value > 1)
            {
                c1 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i1) * Vector512.Create(tok[1].D[b]), c1);
            }
            if (TN.Value > 2)
            {
                c2 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i2) * Vector512.Create(tok[2].D[b]), c2);
            }
            if (TN.Value > 3)
            {
                c3 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i3) * Vector512.Create(tok[3].D[b]), c3);
            }
            if (TN.Value > 4)
            {
                c4 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i4) * Vector512.Create(tok[4].D[b]), c4);
            }
            if (TN.Value > 5)
            {
                c5 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i5) * Vector512.Create(tok[5].D[b]), c5);
            }
            if (TN.Value > 6)
            {
                c6 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i6) * Vector512.Create(tok[6].D[b]), c6);
            }
            if (TN.Value > 7)
            {
                c7 = Avx512F.FusedMultiplyAdd(d, Avx512F.ConvertToVector512Single(i7) * Vector512.Create(tok[7].D[b]), c7);
            }
        }
        Q4_0Interleaved.StoreTile(TN.Value, y, n, rows, partial, c0, c1, c2, c3, c4, c5, c6, c7);
    }

    /// <summary>
    /// <see cref="Tile{TN, TSrc}"/> for one token over the packed layout (decode where the generated tile is not used):
    /// per (h, p) the 16 u vectors are built in the order the layout stores their sources, one forward stream through
    /// memory (sub-block by sub-block the loads jump by 3 lines and streamed 47% of the read, against 69-73% so). The
    /// same integers and float operations as the generic tile.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileOne(byte* g, int nb, Q8Row* tok, int** offs, float* y, int n, int rows, float* partial)
    {
        Vector512<float> c0 = default;
        Vector512<int> unused = default;
        for (int b = 0; b < nb; b++)
        {
            byte* sb = g + b * (long)SuperBytes;
            Vector512<int> i0 = default;
            for (int hp = 0; hp < 4; hp++)
            {
                PackedLayouts.PrefetchLines(sb + 2 * SuperBytes + 1024 * hp, 1024);
                int h = hp >> 1, p = hp & 1, j0 = 8 * h + p;
                Packed.Build(sb, h, p, 0, out var u00, out var u10, out var u20, out var u30);
                Packed.Build(sb, h, p, 1, out var u01, out var u11, out var u21, out var u31);
                Packed.Build(sb, h, p, 2, out var u02, out var u12, out var u22, out var u32);
                Packed.Build(sb, h, p, 3, out var u03, out var u13, out var u23, out var u33);
                SubBlockOf<Tokens1>(u00, u01, u02, u03, Packed.ScalePair(sb, j0), b, j0, tok, offs, ref i0, ref unused, ref unused, ref unused, ref unused, ref unused, ref unused, ref unused);
                SubBlockOf<Tokens1>(u10, u11, u12, u13, Packed.ScalePair(sb, j0 + 2), b, j0 + 2, tok, offs, ref i0, ref unused, ref unused, ref unused, ref unused, ref unused, ref unused, ref unused);
                SubBlockOf<Tokens1>(u20, u21, u22, u23, Packed.ScalePair(sb, j0 + 4), b, j0 + 4, tok, offs, ref i0, ref unused, ref unused, ref unused, ref unused, ref unused, ref unused, ref unused);
                SubBlockOf<Tokens1>(u30, u31, u32, u33, Packed.ScalePair(sb, j0 + 6), b, j0 + 6, tok, offs, ref i0, ref unused, ref unused, ref unused, ref unused, ref unused, ref unused, ref unused);
            }
            c0 = Avx512F.FusedMultiplyAdd(Packed.D(sb), Avx512F.ConvertToVector512Single(i0) * Vector512.Create(tok[0].D[b]), c0);
        }
        Q4_0Interleaved.StoreTile(1, y, n, rows, partial, c0, default, default, default, default, default, default, default);
    }

    /// <summary>
    /// Sub-block j = 8h + 2k + p of super-block <paramref name="b"/> for the TN.Value tokens: i_t += sc[j] x (the exact
    /// int16 pair sums of (u - 32) x). <paramref name="k"/> is a constant at every call, so the shifts that build u are too.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SubBlock<TN, TSrc>(byte* sb, int b, int h, int p, int k, Q8Row* tok, int** offs,
        ref Vector512<int> i0, ref Vector512<int> i1, ref Vector512<int> i2, ref Vector512<int> i3,
        ref Vector512<int> i4, ref Vector512<int> i5, ref Vector512<int> i6, ref Vector512<int> i7)
        where TN : struct, ITokenCount
        where TSrc : struct, ISource
    {
        int j = 8 * h + 2 * k + p;
        SubBlockOf<TN>(TSrc.U(sb, h, p, k, 0), TSrc.U(sb, h, p, k, 1), TSrc.U(sb, h, p, k, 2), TSrc.U(sb, h, p, k, 3), TSrc.ScalePair(sb, j),
            b, j, tok, offs, ref i0, ref i1, ref i2, ref i3, ref i4, ref i5, ref i6, ref i7);
    }

    /// <summary>Sub-block j of super-block <paramref name="b"/> from its ready u vectors w0..w3 and scale pair sc: i_t += sc[j] x (the exact int16 pair sums of (u - 32) x).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SubBlockOf<TN>(Vector512<byte> w0, Vector512<byte> w1, Vector512<byte> w2, Vector512<byte> w3, Vector512<short> sc,
        int b, int j, Q8Row* tok, int** offs,
        ref Vector512<int> i0, ref Vector512<int> i1, ref Vector512<int> i2, ref Vector512<int> i3,
        ref Vector512<int> i4, ref Vector512<int> i5, ref Vector512<int> i6, ref Vector512<int> i7)
        where TN : struct, ITokenCount
    {
        long xo = 256L * b + 16 * j, oo = 16L * b + j;
        i0 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, tok[0].Q + xo, offs[0][oo]), sc);
        if (TN.Value > 1)
        {
            i1 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, tok[1].Q + xo, offs[1][oo]), sc);
        }
        if (TN.Value > 2)
        {
            i2 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, tok[2].Q + xo, offs[2][oo]), sc);
        }
        if (TN.Value > 3)
        {
            i3 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, tok[3].Q + xo, offs[3][oo]), sc);
        }
        if (TN.Value > 4)
        {
            i4 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, tok[4].Q + xo, offs[4][oo]), sc);
        }
        if (TN.Value > 5)
        {
            i5 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, tok[5].Q + xo, offs[5][oo]), sc);
        }
        if (TN.Value > 6)
        {
            i6 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, tok[6].Q + xo, offs[6][oo]), sc);
        }
        if (TN.Value > 7)
        {
            i7 += Avx512BW.MultiplyAddAdjacent(Sum(w0, w1, w2, w3, tok[7].Q + xo, offs[7][oo]), sc);
        }
    }

    /// <summary>
    /// One sub-block of 16 values for the 16 rows (u vectors w0..w3) and one token (quants x, offset pair off): per row
    /// the int16 pair (sum of (u - 32) x over values 0, 1, 4, 5, 8, 9, 12, 13; over 2, 3, 6, 7, 10, 11, 14, 15), exact.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<short> Sum(Vector512<byte> w0, Vector512<byte> w1, Vector512<byte> w2, Vector512<byte> w3, sbyte* x, int off) =>
        (Avx512BW.MultiplyAddAdjacent(w0, Vector512.Create(*(int*)x).AsSByte())
        + Avx512BW.MultiplyAddAdjacent(w1, Vector512.Create(*(int*)(x + 4)).AsSByte()))
        + (Avx512BW.MultiplyAddAdjacent(w2, Vector512.Create(*(int*)(x + 8)).AsSByte())
        + Avx512BW.MultiplyAddAdjacent(w3, Vector512.Create(*(int*)(x + 12)).AsSByte()))
        - Vector512.Create(off).AsInt16();

    /// <summary>Where a tile reads a super-block's u vectors, scale pairs and d from.</summary>
    private interface ISource
    {
        /// <summary>Bytes from one super-block to the next.</summary>
        static abstract long Stride { get; }

        /// <summary>
        /// Whether this is the packed layout, read from memory: the tile prefetches the super-block two ahead and walks
        /// the sub-blocks so that the shifts of <see cref="U"/> are constants; the expanded layout needs neither.
        /// </summary>
        static abstract bool IsPacked { get; }

        /// <summary>
        /// Vector i (0..3) of sub-block j = 8h + 2k + p (h 0..1, k 0..3, p 0..1): u of values 16j + 4i .. 16j + 4i + 3
        /// of the 16 rows (dword r = row r).
        /// </summary>
        static abstract Vector512<byte> U(byte* sb, int h, int p, int k, int i);

        /// <summary>sc[j] of the 16 rows in both int16 halves of lane r.</summary>
        static abstract Vector512<short> ScalePair(byte* sb, int j);

        /// <summary>d of the 16 rows.</summary>
        static abstract Vector512<float> D(byte* sb);
    }

    /// <summary>The packed layout itself: u built from ql and qh, the scale pair from one vpshufb and an arithmetic shift.</summary>
    private readonly struct Packed : ISource
    {
        public static long Stride => SuperBytes;

        public static bool IsPacked => true;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<byte> U(byte* sb, int h, int p, int k, int i)
        {
            // Values 16j + 4i.. of sub-block j = 8h + 2k + p: l = 16p + 4i, so dword q = l / 4 = 4p + i of the half: ql
            // vector 16h + 8 (k & 1) + q and qh vector 8h + q, here written linear in h and p (the loop's variables).
            var ql = Vector512.Load(sb + QuantOffset + 768 * (2 * h + p) + 64 * (3 * i + (k & 1)));
            var qh = Vector512.Load(sb + QuantOffset + 768 * (2 * h + p) + 64 * (3 * i + 2)).AsUInt16();
            return Combine(ql, qh, k);
        }

        /// <summary>Vector i of the sub-blocks k = 0..3 of (h, p), from the three vectors that follow each other in the layout.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Build(byte* sb, int h, int p, int i, out Vector512<byte> k0, out Vector512<byte> k1, out Vector512<byte> k2, out Vector512<byte> k3)
        {
            byte* v = sb + QuantOffset + 768 * (2 * h + p) + 192 * i; // ql vectors 16h + 4p + i, 16h + 8 + 4p + i, qh vector 8h + 4p + i
            var ql0 = Vector512.Load(v);
            var ql1 = Vector512.Load(v + 64);
            var qh = Vector512.Load(v + 128).AsUInt16();
            k0 = Combine(ql0, qh, 0);
            k1 = Combine(ql1, qh, 1);
            k2 = Combine(ql0, qh, 2);
            k3 = Combine(ql1, qh, 3);
        }

        /// <summary>
        /// u of sub-block quarter <paramref name="k"/> (a constant at every call) from its ql vector (the low nibbles
        /// for k &lt; 2, the high ones from 2) and qh vector (bits 2k, 2k + 1 of each byte).
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static Vector512<byte> Combine(Vector512<byte> ql, Vector512<ushort> qh, int k)
        {
            var low = k >= 2 ? Vector512.ShiftRightLogical(ql.AsUInt16(), 4).AsByte() : ql;
            // Bits 2k, 2k + 1 of each qh byte to bits 4, 5 (16-bit shifts: only bits 4, 5 of each byte are kept).
            var high = k switch
            {
                0 => Vector512.ShiftLeft(qh, 4),
                1 => Vector512.ShiftLeft(qh, 2),
                2 => qh,
                _ => Vector512.ShiftRightLogical(qh, 2),
            };
            return (low & Vector512.Create((byte)0x0F)) | (high.AsByte() & Vector512.Create((byte)0x30));
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<short> ScalePair(byte* sb, int j)
        {
            // Byte j % 4 of each dword into the high byte of both int16 halves, then shifted down with its sign.
            var v = Vector512.Load(sb + ScaleOffset + 64L * (j >> 2));
            return Vector512.ShiftRightArithmetic(Avx512BW.Shuffle(v, PickControl(j & 3)).AsInt16(), 8);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> D(byte* sb) => Q4_0Packed.Halves(Vector256.Load((short*)(sb + DOffset)));
    }

    /// <summary>
    /// The vpshufb control that moves byte <paramref name="j"/> (0..3) of each dword into bytes 1 and 3 of that dword
    /// (zeros in bytes 0 and 2): dword d of each 128-bit lane gets the bytes (0x80, 4d + j, 0x80, 4d + j).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<byte> PickControl(int j) =>
        (Vector512.Create(0x00800080u, 0x04800480u, 0x08800880u, 0x0C800C80u, 0x00800080u, 0x04800480u, 0x08800880u, 0x0C800C80u,
            0x00800080u, 0x04800480u, 0x08800880u, 0x0C800C80u, 0x00800080u, 0x04800480u, 0x08800880u, 0x0C800C80u)
        + Vector512.Create((uint)j * 0x01000100u)).AsByte();

    /// <summary>
    /// The expanded layout of a group (per super-block, 5184 bytes): u (16 sub-blocks, 4, 16) dwords, scale pairs
    /// (16, 16) int32, d (16) floats, as <see cref="Q6KInterleaved"/>'s repacked groups.
    /// </summary>
    private readonly struct Expanded : ISource
    {
        public const long ScaleOffset = 16 * 256;
        public const long DOffset = ScaleOffset + 1024;

        public static long Stride => DOffset + 64;

        public static bool IsPacked => false;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<byte> U(byte* sb, int h, int p, int k, int i) => Vector512.Load(sb + (8 * h + 2 * k + p) * 256L + 64 * i);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<short> ScalePair(byte* sb, int j) => Vector512.Load((short*)(sb + ScaleOffset + j * 64L));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> D(byte* sb) => Vector512.Load((float*)(sb + DOffset));
    }

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16), t in [0, tokens), AVX2 (<see cref="Packed256"/>): a 1-token
    /// product streams each group once, both halves per super-block (<see cref="Decode256"/>); more tokens run tiles of
    /// up to 4 tokens over the whole group (<see cref="Tile256{TN}"/>; the group stays in L2 across its tiles), from
    /// <see cref="Expand256MinTokens"/> tokens on over the group expanded once (<see cref="TileExpanded256{TN}"/>).
    /// Needs <see cref="Prepare"/> for this product.
    /// </summary>
    public static void Run256(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1) =>
        Packed256.Run<Kernel256>(packed, nb, n, act, tokens, y, r0, r1);

    /// <summary>This format's AVX2 kernels for <see cref="Packed256.Run{TK}"/>.</summary>
    private readonly struct Kernel256 : IPacked256
    {
        public static long GroupBytes(int nb) => Q6KPacked.GroupBytes(nb);

        public static nint TokenData(Q8Activations act, int t) => (nint)act.Offsets16(t);

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
    /// Tokens from which the AVX2 product expands each group once (<see cref="Expand256"/>): its tiles then load u
    /// instead of building it from ql and qh (6 operations per half dword) in every tile of 4 tokens, and one inlined
    /// loop body serves the 16 sub-blocks (<see cref="Tile256{TN}"/> calls four compiled copies, one per k). Measured on
    /// the 2-core AMD EPYC (Zen 3), (4096, 4096), 1 thread, GFLOP/s packed / expanded, runs alternating: T = 4:
    /// 78-85 / 71-72, 8: 69-78 / 75-87, 12: 71-87 / 80-110, 16: 76-84 / 103-116, 256: 80-103 / 153-159; 2 threads,
    /// T = 256: (4096, 14336) 157-192 / 275-285, (1024, 4096) 141-153 / 219-228.
    /// </summary>
    internal const int Expand256MinTokens = 16;

    /// <summary>Bytes of one super-block expanded for AVX2 (<see cref="Expand256"/>): 16 sub-blocks x 4 dwords x 16 rows of u.</summary>
    private const int Expanded256Bytes = 4096;

    /// <summary>
    /// The u (0..63) of every value of the group at g (nb super-blocks), built once as the tiles would
    /// (<see cref="Unsigned"/>), to dst: per super-block (<see cref="Expanded256Bytes"/>), the sub-blocks in the
    /// layout's order s = 4 (2h + p) + k (sub-block j = 8h + 2k + p), each 4 dwords i, each both halves: half h' of dword
    /// i of slot s at 256 s + 64 i + 32 h'. The scales and d stay in the packed group.
    /// Example: sub-block j = 13 (h = 1, k = 2, p = 1: s = 14), dword 3, rows 8..15 at 256 * 14 + 192 + 32 = 3808.
    /// </summary>
    private static void Expand256(byte* g, int nb, byte* dst)
    {
        for (int b = 0; b < nb; b++)
        {
            byte* sb = g + (long)b * SuperBytes;
            byte* eb = dst + (long)b * Expanded256Bytes;
            for (int hp = 0; hp < 4; hp++)
            {
                for (int i = 0; i < 4; i++)
                {
                    for (int half = 0; half < 2; half++)
                    {
                        byte* v = sb + QuantOffset + 768 * hp + 192 * i + 32 * half;
                        byte* e = eb + 1024 * hp + 64 * i + 32 * half;
                        Unsigned(v, 0).Store(e);
                        Unsigned(v, 1).Store(e + 256);
                        Unsigned(v, 2).Store(e + 512);
                        Unsigned(v, 3).Store(e + 768);
                    }
                }
            }
        }
    }

    /// <summary>
    /// <see cref="Tile256{TN}"/> over an expanded group (e, <see cref="Expand256"/>; scales and d from the packed group
    /// at g): the same integers and float operations, each sub-block's u loaded, so one loop body serves all 16.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileExpanded256<TN>(byte* g, byte* e, int nb, Q8Row* tok, int** offs, float* y, int n, int rows)
        where TN : struct, ITokenCount
    {
        float* acc = stackalloc float[Packed256.TileLanes]; // (token, half, lane): 16 j + 8 h + lane
        int* isum = stackalloc int[Packed256.TileLanes];
        new Span<float>(acc, Packed256.TileLanes).Clear();
        sbyte* x0 = tok[0].Q, x1 = tok[1].Q, x2 = tok[2].Q, x3 = tok[3].Q;
        for (int b = 0; b < nb; b++)
        {
            byte* sb = g + (long)b * SuperBytes;
            byte* eb = e + (long)b * Expanded256Bytes;
            new Span<int>(isum, Packed256.TileLanes).Clear();
            for (int s = 0; s < 16; s++)
            {
                int hp = s >> 2;
                int j = 8 * (hp >> 1) + 2 * (s & 3) + (hp & 1);
                byte* u = eb + 256 * s;
                long xo = 256L * b + 16 * j;
                sbyte* p0 = x0 + xo, p1 = x1 + xo, p2 = x2 + xo, p3 = x3 + xo;
                Vector256<short> s00 = default, s01 = default, s10 = default, s11 = default, s20 = default, s21 = default, s30 = default, s31 = default;
                Packed256.MulTile16<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31, u, p0, p1, p2, p3);
                AddSubBlock<TN>(sb, b, j, offs, isum, s00, s01, s10, s11, s20, s21, s30, s31);
            }
            FinishSuper<TN>(sb, b, tok, acc, isum);
        }
        Packed256.StoreGroupTile(TN.Value, acc, y, n, rows);
    }

    /// <summary>
    /// AVX2, 1 token, both halves of a group (16 rows) super-block by super-block, each of the token's broadcasts shared
    /// by the halves (one pass over the group's bytes); stores the first <paramref name="rows"/> rows to y[0..rows). The
    /// sub-blocks go in the layout's order: per (h, p), the sub-blocks k = 0, 1 then 2, 3 (j = 8h + 2k + p), each pair
    /// built vector by vector from the ql and qh vectors that follow each other in memory (<see cref="HalvesPair256"/>),
    /// then acc = fma(d, float(isum) d_x, acc) per super-block, as the class comment.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Decode256(byte* g, int nb, Q8Row a, int* offs, float* y, int rows)
    {
        Vector256<float> c0 = default, c1 = default;
        for (int b = 0; b < nb; b++)
        {
            byte* sb = g + (long)b * SuperBytes;
            Vector256<int> i0 = default, i1 = default;
            for (int hp = 0; hp < 4; hp++)
            {
                PackedLayouts.PrefetchLines(sb + 2 * SuperBytes + 1024 * hp, 1024);
                int h = hp >> 1, p = hp & 1;
                HalvesPair256(sb, a.Q + 256L * b, offs + 16L * b, h, p, 0, ref i0, ref i1);
                HalvesPair256(sb, a.Q + 256L * b, offs + 16L * b, h, p, 2, ref i0, ref i1);
            }
            var dx = Vector256.Create(a.D[b]);
            c0 = Fma.MultiplyAdd(Packed256.Halves(sb + DOffset), Avx.ConvertToVector256Single(i0) * dx, c0);
            c1 = Fma.MultiplyAdd(Packed256.Halves(sb + DOffset + 16), Avx.ConvertToVector256Single(i1) * dx, c1);
        }
        Packed256.Store(c0, y, Math.Min(rows, Packed256.HalfRows));
        if (rows > Packed256.HalfRows)
        {
            Packed256.Store(c1, y + Packed256.HalfRows, rows - Packed256.HalfRows);
        }
    }

    /// <summary>
    /// Sub-blocks k0 and k0 + 1 (k0 = 0 or 2, a constant at each call) of (h, p) for both halves of a super-block (sb)
    /// and one token (x: its super-block quants; o: its offset pairs): vector by vector (i = 0..3: values 4i..4i + 3 of
    /// each sub-block), u built (<see cref="Unsigned"/>) for each half; per half two int16 sums (4 vpmaddubsw each,
    /// wrapping), then i += sc[j] (sum - offset pair) for j = 8h + 2k + p.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void HalvesPair256(byte* sb, sbyte* x, int* o, int h, int p, int k0, ref Vector256<int> i0, ref Vector256<int> i1)
    {
        int ja = 8 * h + 2 * k0 + p, jb = ja + 2;
        Vector256<short> a0 = default, b0 = default, a1 = default, b1 = default;
        int vo = QuantOffset + 768 * (2 * h + p);
        for (int i = 0; i < 4; i++)
        {
            var xa = Packed256.Broadcast4(x + 16 * ja + 4 * i);
            var xb = Packed256.Broadcast4(x + 16 * jb + 4 * i);
            var ua = Unsigned(sb + vo + 192 * i, k0);
            var ub = Unsigned(sb + vo + 192 * i, k0 + 1);
            a0 += Packed256.Mul(ua, xa);
            b0 += Packed256.Mul(ub, xb);
            var va = Unsigned(sb + 32 + vo + 192 * i, k0);
            var vb = Unsigned(sb + 32 + vo + 192 * i, k0 + 1);
            a1 += Packed256.Mul(va, xa);
            b1 += Packed256.Mul(vb, xb);
        }
        var oa = Vector256.Create(o[ja]).AsInt16();
        var ob = Vector256.Create(o[jb]).AsInt16();
        i0 += Avx2.MultiplyAddAdjacent(a0 - oa, ScalePair256(sb, ja)) + Avx2.MultiplyAddAdjacent(b0 - ob, ScalePair256(sb, jb));
        i1 += Avx2.MultiplyAddAdjacent(a1 - oa, ScalePair256(sb + 32, ja)) + Avx2.MultiplyAddAdjacent(b1 - ob, ScalePair256(sb + 32, jb));
    }

    /// <summary>
    /// AVX2: the group at g (16 rows, both halves) x TN.Value (1..4) tokens over all super-blocks; stores the first
    /// <paramref name="rows"/> rows of each token. The sub-blocks go in the layout's order (per (h, p), k = 0..3), one
    /// at a time over both halves (<see cref="SubBlock256{TN, TQ}"/>): its int16 sums (token x half) stay in registers and
    /// each broadcast serves 16 rows. The isums (token j, half h at 16 j + 8 h) and float accumulators live in stack
    /// buffers, then acc = fma(d, float(isum) d_x, acc) per super-block, as the class comment.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Tile256<TN>(byte* g, int nb, bool first, Q8Row* tok, int** offs, float* y, int n, int rows)
        where TN : struct, ITokenCount
    {
        float* acc = stackalloc float[Packed256.TileLanes]; // (token, half, lane): 16 j + 8 h + lane
        int* isum = stackalloc int[Packed256.TileLanes];
        new Span<float>(acc, Packed256.TileLanes).Clear();
        for (int b = 0; b < nb; b++)
        {
            byte* sb = g + (long)b * SuperBytes;
            new Span<int>(isum, Packed256.TileLanes).Clear();
            for (int hp = 0; hp < 4; hp++)
            {
                if (first)
                {
                    // The first tile over a group brings it in from memory; the next ones find it in L2.
                    PackedLayouts.PrefetchLines(sb + 2 * SuperBytes + 1024 * hp, 1024);
                }
                int h = hp >> 1, p = hp & 1;
                SubBlock256<TN, Bits0>(sb, b, h, p, tok, offs, isum);
                SubBlock256<TN, Bits1>(sb, b, h, p, tok, offs, isum);
                SubBlock256<TN, Bits2>(sb, b, h, p, tok, offs, isum);
                SubBlock256<TN, Bits3>(sb, b, h, p, tok, offs, isum);
            }
            FinishSuper<TN>(sb, b, tok, acc, isum);
        }
        Packed256.StoreGroupTile(TN.Value, acc, y, n, rows);
    }

    /// <summary>The end of super-block b of a tile: acc = fma(d, float(isum) d_x, acc) per token and half (buffers as <see cref="Tile256{TN}"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void FinishSuper<TN>(byte* sb, int b, Q8Row* tok, float* acc, int* isum)
        where TN : struct, ITokenCount
    {
        for (int half = 0; half < 2; half++)
        {
            var d = Packed256.Halves(sb + DOffset + 16 * half);
            for (int j = 0; j < TN.Value; j++)
            {
                int at = 16 * j + 8 * half;
                var sum = Avx.ConvertToVector256Single(Vector256.Load(isum + at)) * Vector256.Create(tok[j].D[b]);
                Fma.MultiplyAdd(d, sum, Vector256.Load(acc + at)).Store(acc + at);
            }
        }
    }

    /// <summary>
    /// Sub-block j = 8h + 2k + p (k = TQ.Value) of super-block b for both halves (sb) and TN.Value tokens: its 4 dwords
    /// (values 4i..4i + 3, u built per half, <see cref="Unsigned"/>) times each token's broadcasts into int16 sums
    /// (wrapping), then isum += sc[j] (sum - the token's offset pair) per token and half. Compiled once per (TN, k), not
    /// inlined: four inlined copies made the tile too large for the JIT, which then left calls to trivial getters in it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void SubBlock256<TN, TQ>(byte* sb, int b, int h, int p, Q8Row* tok, int** offs, int* isum)
        where TN : struct, ITokenCount
        where TQ : struct, ITokenCount
    {
        int k = TQ.Value;
        int j = 8 * h + 2 * k + p;
        byte* v = sb + QuantOffset + 768 * (2 * h + p);
        long xo = 256L * b + 16 * j;
        sbyte* p0 = tok[0].Q + xo, p1 = tok[1].Q + xo, p2 = tok[2].Q + xo, p3 = tok[3].Q + xo;
        Vector256<short> s00 = default, s01 = default, s10 = default, s11 = default, s20 = default, s21 = default, s30 = default, s31 = default;
        Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
            Unsigned(v, k), Unsigned(v + 32, k), p0, p1, p2, p3);
        Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
            Unsigned(v + 192, k), Unsigned(v + 224, k), p0 + 4, p1 + 4, p2 + 4, p3 + 4);
        Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
            Unsigned(v + 384, k), Unsigned(v + 416, k), p0 + 8, p1 + 8, p2 + 8, p3 + 8);
        Packed256.MulTile<TN>(ref s00, ref s01, ref s10, ref s11, ref s20, ref s21, ref s30, ref s31,
            Unsigned(v + 576, k), Unsigned(v + 608, k), p0 + 12, p1 + 12, p2 + 12, p3 + 12);
        AddSubBlock<TN>(sb, b, j, offs, isum, s00, s01, s10, s11, s20, s21, s30, s31);
    }

    /// <summary>
    /// isum += sc[j] (sum - the token's offset pair) for each token and half of a tile, from the int16 sums of
    /// sub-block j of super-block b (token j', half h in s{j'}{h}).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void AddSubBlock<TN>(byte* sb, int b, int j, int** offs, int* isum, Vector256<short> s00, Vector256<short> s01,
        Vector256<short> s10, Vector256<short> s11, Vector256<short> s20, Vector256<short> s21, Vector256<short> s30, Vector256<short> s31)
        where TN : struct, ITokenCount
    {
        var sc0 = ScalePair256(sb, j);
        var sc1 = ScalePair256(sb + 32, j);
        long o = 16L * b + j;
        var o0 = Vector256.Create(offs[0][o]).AsInt16();
        Packed256.AddScaled(isum, s00 - o0, s01 - o0, sc0, sc1);
        if (TN.Value > 1)
        {
            var o1 = Vector256.Create(offs[1][o]).AsInt16();
            Packed256.AddScaled(isum + 16, s10 - o1, s11 - o1, sc0, sc1);
        }
        if (TN.Value > 2)
        {
            var o2 = Vector256.Create(offs[2][o]).AsInt16();
            Packed256.AddScaled(isum + 32, s20 - o2, s21 - o2, sc0, sc1);
        }
        if (TN.Value > 3)
        {
            var o3 = Vector256.Create(offs[3][o]).AsInt16();
            Packed256.AddScaled(isum + 48, s30 - o3, s31 - o3, sc0, sc1);
        }
    }

    /// <summary>k = 0: bits 0, 1 of qh and the low nibbles of the first ql vector (<see cref="SubBlock256{TN, TQ}"/>).</summary>
    private readonly struct Bits0 : ITokenCount
    {
        public static int Value => 0;
    }

    /// <summary>k = 1: bits 2, 3 of qh and the low nibbles of the second ql vector.</summary>
    private readonly struct Bits1 : ITokenCount
    {
        public static int Value => 1;
    }

    /// <summary>k = 2: bits 4, 5 of qh and the high nibbles of the first ql vector.</summary>
    private readonly struct Bits2 : ITokenCount
    {
        public static int Value => 2;
    }

    /// <summary>k = 3: bits 6, 7 of qh and the high nibbles of the second ql vector.</summary>
    private readonly struct Bits3 : ITokenCount
    {
        public static int Value => 3;
    }

    /// <summary>
    /// u of sub-block k (a constant at each call) of a half group's dword, from the ql, ql and qh vectors at v, v + 64,
    /// v + 128: the low (k &lt; 2) or high nibble of ql vector k and 1, or'd with bits 2k, 2k + 1 of qh moved to bits 4, 5.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Unsigned(byte* v, int k)
    {
        var nibble = Vector256.Create((byte)0x0F);
        var bits45 = Vector256.Create((byte)0x30);
        var ql = Vector256.Load(v + 64 * (k & 1));
        var qh = Vector256.Load(v + 128).AsUInt16();
        var low = k < 2 ? ql & nibble : Packed256.High(ql, nibble);
        var high = k switch
        {
            0 => Vector256.ShiftLeft(qh, 4),
            1 => Vector256.ShiftLeft(qh, 2),
            2 => qh,
            _ => Vector256.ShiftRightLogical(qh, 2),
        };
        return low | (high.AsByte() & bits45);
    }

    /// <summary>sc[j] of a half group's 8 rows (hb: its dwords) in both int16 halves of each dword (vpshufb to the high bytes, arithmetic shift down).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> ScalePair256(byte* hb, int j)
    {
        var v = Vector256.Load(hb + ScaleOffset + 64L * (j >> 2));
        return Vector256.ShiftRightArithmetic(Avx2.Shuffle(v, PickControl(j & 3).GetLower()).AsInt16(), 8);
    }

    /// <summary>
    /// The plain scalar twin of <see cref="Run"/> over the packed layout (every ISA; <see cref="Prepare"/> is not needed):
    /// the sequence of <see cref="Q6KInterleaved.RunScalar"/>, reading each (row, super-block) from its group.
    /// </summary>
    public static void RunScalar(byte* packed, int nb, int n, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        long groupBytes = GroupBytes(nb);
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
                    int isum = 0;
                    for (int j = 0; j < 16; j++)
                    {
                        int dot = 0;
                        for (int l = 0; l < 16; l++)
                        {
                            dot += (Quant(sb, lane, 16 * j + l) - Offset) * a.Q[256L * b + 16 * j + l];
                        }
                        int sc = (sbyte)sb[ScaleOffset + (j / 4 * GroupRows + lane) * 4 + j % 4];
                        isum += sc * dot;
                    }
                    acc = MathF.FusedMultiplyAdd(QuantDot.HalfScalar(sb + DOffset + 2 * lane), isum * a.D[b], acc);
                }
                y[(long)t * n + r] = acc;
            }
        }
    }

    /// <summary>The unsigned 6-bit quant u (0..63) of value e of row <paramref name="lane"/> in the packed super-block at <paramref name="sb"/>.</summary>
    private static int Quant(byte* sb, int lane, int e)
    {
        int h = e / 128, k = e % 128 / 32, l = e % 32;
        int qlByte = 64 * h + 32 * (k & 1) + l, qhByte = 32 * h + l;
        int ql = sb[LowVectorOffset(qlByte / 4) + lane * 4 + qlByte % 4];
        int qh = sb[HighVectorOffset(qhByte / 4) + lane * 4 + qhByte % 4];
        return (k >= 2 ? ql >> 4 : ql & 0x0F) | (((qh >> (2 * k)) & 3) << 4);
    }
}
