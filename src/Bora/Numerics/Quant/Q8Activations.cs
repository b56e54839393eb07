using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Bora.Numerics.Quant;

/// <summary>
/// Activations quantized on the fly to 8 bits for integer dot products with quantized weights, like
/// ggml's Q8_0 (blocks of 32, for Q8_0 / Q4_0 weights) and Q8_K (blocks of 256, for Q4_K / Q6_K weights).
/// Each block of B values x gets a float scale d = max|x| / 127 and q = round(x / d) in [-127, 127]
/// (ties to even; d = 0 and q = 0 for an all-zero block). -128 never occurs, which the sign trick of
/// the maddubs kernels relies on.
/// Letters: T = tokens, K = values per token (a multiple of B), B = block size (32 or 256).
/// Buffers (pinned, so kernels take raw pointers without fixing):
/// <list type="bullet">
/// <item><see cref="Quants"/>: (T, K) int8, row-major.</item>
/// <item><see cref="Scales"/>: (T, K / B) float, the d of each block.</item>
/// <item><see cref="Sums16"/>: (T, K / 16) int16, the sum of q over each run of 16 values (|sum| &lt;= 2032).
/// Weight formats with an offset or a min (Q4_0's -8, Q4_K's min, Q6_K's -32) use them.</item>
/// <item><see cref="ScaledSums"/>: (T, K / B) float, d times the sum of the block's q (one rounding of an exact
/// integer sum): the tiled Q4_0 kernels (<see cref="QuantGemm"/>) subtract 8 of it per block.</item>
/// </list>
/// Example: K = 64, B = 32, token t: block j covers Quants[64t + 32j .. +32), has scale Scales[2t + j] and
/// sums Sums16[4t + 2j] and Sums16[4t + 2j + 1].
/// </summary>
public sealed unsafe class Q8Activations
{
    private sbyte[] _q = [];
    private float[] _d = [];
    private short[] _s16 = [];
    private float[] _ds = [];
    private float[] _pairs = [];
    private float[] _ds8 = [];
    private int[] _off16 = [];
    private int[] _off32 = [];
    private int[] _mins = [];

    /// <summary>T of the last <see cref="Quantize"/>.</summary>
    public int Tokens { get; private set; }

    /// <summary>K of the last <see cref="Quantize"/>.</summary>
    public int Cols { get; private set; }

    /// <summary>B of the last <see cref="Quantize"/>.</summary>
    public int BlockSize { get; private set; }

    /// <summary>(T, K) quantized values.</summary>
    public ReadOnlySpan<sbyte> Quants => _q.AsSpan(0, Tokens * Cols);

    /// <summary>(T, K / B) block scales.</summary>
    public ReadOnlySpan<float> Scales => _d.AsSpan(0, Tokens * (Cols / Math.Max(1, BlockSize)));

    /// <summary>(T, K / 16) sums of each 16 quantized values.</summary>
    public ReadOnlySpan<short> Sums16 => _s16.AsSpan(0, Tokens * Cols / 16);

    /// <summary>(T, K / B) block scale times block sum.</summary>
    public ReadOnlySpan<float> ScaledSums => _ds.AsSpan(0, Tokens * (Cols / Math.Max(1, BlockSize)));

    /// <summary>
    /// Per-token block-pair data for the 512-bit kernels of <see cref="QuantGemm"/>, (T, K / 64, 32) floats, filled by
    /// <see cref="PreparePairs"/> (blocks of 32 only): for pair p (blocks 2p, 2p + 1), floats [0, 16) are d_x of block 2p
    /// in lanes 0..7 and of block 2p + 1 in lanes 8..15; floats [16, 32) are either d_x sum(x) in the same pattern
    /// (<c>negated</c> false) or the 64 bytes -q of the pair (<c>negated</c> true).
    /// Example: K = 128, token 1, pair 1 starts at float (1 * 2 + 1) * 32 = 96.
    /// </summary>
    internal float* Pairs(int t) => PairsReady ? (float*)Unsafe.AsPointer(ref _pairs[0]) + (long)t * PairFloats : null;

    /// <summary>Whether <see cref="PreparePairs"/> ran since the last <see cref="Quantize"/>.</summary>
    internal bool PairsReady { get; private set; }

    /// <summary>Floats of <see cref="Pairs"/> per token: (K / 64) * 32.</summary>
    internal long PairFloats => Cols / 64 * 32L;

    /// <summary>
    /// (K / B) values o d_x sum(x) of token <paramref name="t"/>, the term of a weight offset o (8 for Q4_0's nibbles,
    /// 128 for Q8_0 stored as w + 128), after <see cref="PrepareOffsetSums"/>.
    /// </summary>
    internal float* OffsetSums(int t) => (float*)Unsafe.AsPointer(ref _ds8[0]) + (long)t * (Cols / BlockSize);

    /// <summary>Fills <see cref="OffsetSums"/>: <paramref name="offset"/> (a power of two, so exact) times <see cref="ScaledSums"/>.</summary>
    internal void PrepareOffsetSums(int offset)
    {
        int count = Tokens * (Cols / BlockSize);
        Ensure(ref _ds8, count);
        for (int i = 0; i < count; i++)
        {
            _ds8[i] = offset * _ds[i];
        }
    }

    /// <summary>
    /// Fills <see cref="MinSums"/> for activation blocks of 256 (the Q4_K min term, which Q4_K kernels take as the exact
    /// integer sum over a super-block of m[s] (sum of the 32 quants of sub-block s)): per token and super-block, 8 int32.
    /// With S[s] = the sum of sub-block s's quants (|S| &lt;= 4064), split as S = 128 hi + lo (lo = S &amp; 127 in 0..127,
    /// hi = S &gt;&gt; 7 in -32..31, both fit a signed byte for vpdpbusd):
    /// [0] lo[0..3] as bytes, [1] lo[4..7], [2] hi[0..3], [3] hi[4..7], then [4 + i] the int16 pair (S[2i], S[2i + 1])
    /// (low half first, for vpmaddwd / vpdpwssd). (T, K / 256, 8).
    /// Example: S = 300, -5, 0, ... : lo bytes 44, 123, 0, ..; hi bytes 2, -1, 0, ..; pair 0 = 300 | (-5 &lt;&lt; 16).
    /// </summary>
    internal void PrepareMinSums()
    {
        if (BlockSize != 256)
        {
            throw new InvalidOperationException("the Q4_K min sums need activation blocks of 256");
        }
        int blocks = Tokens * (Cols / 256);
        Ensure(ref _mins, 8 * blocks);
        for (int b = 0; b < blocks; b++)
        {
            int* m = (int*)Unsafe.AsPointer(ref _mins[8 * b]);
            sbyte* bytes = (sbyte*)m;
            for (int s = 0; s < 8; s++)
            {
                int sum = _s16[16 * b + 2 * s] + _s16[16 * b + 2 * s + 1];
                bytes[4 * (s / 4) + s % 4] = (sbyte)(sum & 127);
                bytes[8 + 4 * (s / 4) + s % 4] = (sbyte)(sum >> 7);
                ((short*)(m + 4))[s] = (short)sum;
            }
        }
    }

    /// <summary>Token <paramref name="t"/>'s (K / 256, 8) values of <see cref="PrepareMinSums"/>.</summary>
    internal int* MinSums(int t) => (int*)Unsafe.AsPointer(ref _mins[0]) + (long)t * (Cols / 256) * 8;

    /// <summary>
    /// Once per product (after <see cref="Quantize"/>), for <see cref="Q6KInterleaved"/>: per token and group of 16
    /// quants x[0..16), one int32 holding two int16 halves, low = offset (x0 + x1 + x4 + x5 + x8 + x9 + x12 + x13),
    /// high = offset (x2 + x3 + x6 + x7 + x10 + x11 + x14 + x15): the part of each vpmaddwd pair that a weight offset of
    /// <paramref name="offset"/> contributes (|offset| * 8 * 127 must fit int16: offset at most 32). (T, K / 16).
    /// Example: x = 1, 2, ..., 16 and offset 32: low = 32 (1 + 2 + 5 + 6 + 9 + 10 + 13 + 14) = 1920, high = 32 (3 + 4 + 7 + 8 + 11 + 12 + 15 + 16) = 2432.
    /// </summary>
    internal void PrepareOffsets16(int offset)
    {
        if ((uint)offset > 32)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), offset, "the offset sums must fit int16: 0 .. 32");
        }
        long count = (long)Tokens * Cols / 16;
        Ensure(ref _off16, (int)count);
        for (long g = 0; g < count; g++)
        {
            sbyte* x = (sbyte*)Unsafe.AsPointer(ref _q[0]) + 16 * g;
            int lo = 0, hi = 0;
            for (int k = 0; k < 16; k += 4)
            {
                lo += x[k] + x[k + 1];
                hi += x[k + 2] + x[k + 3];
            }
            _off16[g] = (ushort)(short)(offset * lo) | (offset * hi << 16);
        }
    }

    /// <summary>
    /// Once per product (after <see cref="Quantize"/>), for <see cref="Q6KVnni"/>: per token and group of 16 quants
    /// x[0..16), the int32 -offset (x0 + ... + x15), which a vpdpbusd sum of u x starts from to give the sum of
    /// (u - offset) x. (T, K / 16). Example: x = 1, 2, ..., 16 and offset 32: -32 * 136 = -4352.
    /// </summary>
    internal void PrepareNegatedOffsets(int offset)
    {
        long count = (long)Tokens * Cols / 16;
        Ensure(ref _off32, (int)count);
        for (long g = 0; g < count; g++)
        {
            _off32[g] = -offset * _s16[g]; // Sums16: the sum of each 16 quants
        }
    }

    /// <summary>Token t's <see cref="PrepareNegatedOffsets"/> values: (K / 16) int32.</summary>
    internal int* NegatedOffsets(int t) => (int*)Unsafe.AsPointer(ref _off32[0]) + (long)t * (Cols / 16);

    /// <summary>Token t's <see cref="PrepareOffsets16"/> values: (K / 16) int32.</summary>
    internal int* Offsets16(int t) => (int*)Unsafe.AsPointer(ref _off16[0]) + (long)t * (Cols / 16);

    /// <summary>Fills <see cref="Pairs"/> from the last <see cref="Quantize"/> (which must have used blocks of 32).</summary>
    internal void PreparePairs(bool negated)
    {
        if (BlockSize != 32)
        {
            throw new InvalidOperationException("block pairs need activation blocks of 32");
        }
        long total = Tokens * PairFloats;
        Ensure(ref _pairs, (int)total);
        PairsReady = true;
        int pairs = Cols / 64;
        for (int t = 0; t < Tokens; t++)
        {
            var row = Row(t);
            float* dst = Pairs(t);
            for (int p = 0; p < pairs; p++, dst += 32)
            {
                var lanes = Vector256.Create(row.D[2 * p]);
                lanes.Store(dst);
                Vector256.Create(row.D[2 * p + 1]).Store(dst + 8);
                if (negated)
                {
                    var q = row.Q + 64L * p;
                    for (int j = 0; j < 64; j += 16)
                    {
                        (Vector128<sbyte>.Zero - Vector128.Load(q + j)).Store((sbyte*)(dst + 16) + j);
                    }
                }
                else
                {
                    Vector256.Create(row.DS[2 * p]).Store(dst + 16);
                    Vector256.Create(row.DS[2 * p + 1]).Store(dst + 24);
                }
            }
        }
    }

    /// <summary>Pointers to token <paramref name="t"/>'s rows of the three buffers.</summary>
    internal Q8Row Row(int t) => new(
        (sbyte*)Unsafe.AsPointer(ref _q[0]) + (long)t * Cols,
        (float*)Unsafe.AsPointer(ref _d[0]) + (long)t * (Cols / BlockSize),
        (short*)Unsafe.AsPointer(ref _s16[0]) + (long)t * (Cols / 16),
        (float*)Unsafe.AsPointer(ref _ds[0]) + (long)t * (Cols / BlockSize));

    /// <summary>Quantizes x: (T, K) row-major, in blocks of <paramref name="blockSize"/> (32 or 256).</summary>
    public void Quantize(ReadOnlySpan<float> x, int tokens, int cols, int blockSize) =>
        QuantizeCore(x, tokens, cols, blockSize, vectorized: true);

    /// <summary>The plain scalar twin of <see cref="Quantize"/>; tests assert both agree bit for bit.</summary>
    public void QuantizeScalar(ReadOnlySpan<float> x, int tokens, int cols, int blockSize) =>
        QuantizeCore(x, tokens, cols, blockSize, vectorized: false);

    private void QuantizeCore(ReadOnlySpan<float> x, int tokens, int cols, int blockSize, bool vectorized)
    {
        if (blockSize is not (32 or 256))
        {
            throw new ArgumentOutOfRangeException(nameof(blockSize), blockSize, "activation blocks are 32 or 256 values");
        }
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        ArgumentOutOfRangeException.ThrowIfNegative(cols);
        if (cols % blockSize != 0)
        {
            throw new ArgumentException($"{cols} values per token is not a whole number of blocks of {blockSize}", nameof(cols));
        }
        long n = (long)tokens * cols;
        if (x.Length != n)
        {
            throw new ArgumentException($"{tokens} tokens of {cols} values need {n} inputs; got {x.Length}", nameof(x));
        }
        if (n > Array.MaxLength)
        {
            throw new ArgumentException($"{n} activations do not fit one buffer", nameof(x));
        }
        Ensure(ref _q, (int)n);
        Ensure(ref _d, (int)(n / blockSize));
        Ensure(ref _s16, (int)(n / 16));
        Ensure(ref _ds, (int)(n / blockSize));
        (Tokens, Cols, BlockSize) = (tokens, cols, blockSize);
        PairsReady = false;
        int blocks = (int)(n / blockSize);
        bool simd = vectorized && Vector128.IsHardwareAccelerated;
        int threads = NumericsThreads.MaxThreads;
        if (!simd || threads == 1 || n < ParallelValues)
        {
            QuantizeBlocks(x, 0, blocks, simd);
            return;
        }
        // Large batches (prefill): ranges of blocks on the shared worker pool. Every block is quantized on its own,
        // so the result does not depend on the split.
        fixed (float* px = x)
        {
            _pendingX = px;
            (_pendingBlocks, _pendingItems) = (blocks, threads * 2);
            try
            {
                NumericsThreads.For(_pendingItems, _quantizeItem ??= QuantizeItem);
            }
            finally
            {
                _pendingX = null;
            }
        }
    }

    /// <summary>Values per call from which <see cref="Quantize"/> splits the blocks over the worker threads.</summary>
    private const long ParallelValues = 1L << 16;

    private float* _pendingX; // (T, K) input of the parallel Quantize in progress
    private int _pendingBlocks, _pendingItems;
    private Action<int>? _quantizeItem;

    /// <summary>Item i of a parallel <see cref="Quantize"/>: blocks [i B / items, (i + 1) B / items).</summary>
    private void QuantizeItem(int i)
    {
        int b0 = (int)((long)i * _pendingBlocks / _pendingItems), b1 = (int)((long)(i + 1) * _pendingBlocks / _pendingItems);
        QuantizeBlocks(new ReadOnlySpan<float>(_pendingX, (int)((long)_pendingBlocks * BlockSize)), b0, b1, simd: true);
    }

    /// <summary>Quantizes blocks [b0, b1) of x (blocks of <see cref="BlockSize"/>) into the buffers.</summary>
    private void QuantizeBlocks(ReadOnlySpan<float> x, int b0, int b1, bool simd)
    {
        int blockSize = BlockSize;
        for (int b = b0; b < b1; b++)
        {
            var xb = x.Slice(b * blockSize, blockSize);
            var qb = _q.AsSpan(b * blockSize, blockSize);
            var sb = _s16.AsSpan(b * (blockSize / 16), blockSize / 16);
            float d = !simd ? BlockScalar(xb, qb, sb) : Vector256.IsHardwareAccelerated ? Block256(xb, qb, sb) : Block128(xb, qb, sb);
            int sum = 0;
            foreach (short s in sb)
            {
                sum += s;
            }
            _d[b] = d;
            _ds[b] = d * sum;
        }
    }

    /// <summary>Grows a pinned buffer to at least <paramref name="n"/> elements (at least one, so &amp;buf[0] is valid).</summary>
    private static void Ensure<T>(ref T[] buf, int n)
    {
        if (buf.Length < Math.Max(1, n))
        {
            buf = GC.AllocateUninitializedArray<T>(Math.Max(1, n), pinned: true);
        }
    }

    /// <summary>A block's scale d = amax / 127 and the multiplier 127 / amax that maps it to q (0 for an all-zero block); every quantizer of the block takes them from here.</summary>
    private static float Scale(float amax, out float inverse)
    {
        inverse = amax > 0 ? 127f / amax : 0f;
        return amax / 127f;
    }

    /// <summary>Scalar: one block; returns d.</summary>
    private static float BlockScalar(ReadOnlySpan<float> x, Span<sbyte> q, Span<short> s16)
    {
        float amax = 0;
        for (int i = 0; i < x.Length; i++)
        {
            amax = MathF.Max(amax, MathF.Abs(x[i]));
        }
        float d = Scale(amax, out float id);
        for (int g = 0; g < x.Length / 16; g++)
        {
            int sum = 0;
            for (int i = 16 * g; i < 16 * g + 16; i++)
            {
                int v = (int)Math.Clamp(MathF.Round(x[i] * id), -127f, 127f);
                q[i] = (sbyte)v;
                sum += v;
            }
            s16[g] = (short)sum;
        }
        return d;
    }

    /// <summary>
    /// Vector256: same arithmetic as <see cref="BlockScalar"/>, 8 values a step; each 32 values narrow to one vector
    /// of bytes (one store), each 16 to one sum. Before it, every decode product spent 1.3% of a 7B decode step here
    /// (Block128: 15 us per call, a slice and a 16-byte copy per 16 values).
    /// </summary>
    private static unsafe float Block256(ReadOnlySpan<float> x, Span<sbyte> q, Span<short> s16)
    {
        fixed (float* px = x)
        fixed (sbyte* pq = q)
        {
            int n = x.Length; // a multiple of 32
            var vmax = Vector256<float>.Zero;
            for (int i = 0; i < n; i += 8)
            {
                vmax = Vector256.Max(vmax, Vector256.Abs(Vector256.Load(px + i)));
            }
            var m = Vector128.Max(vmax.GetLower(), vmax.GetUpper());
            float amax = MathF.Max(MathF.Max(m[0], m[1]), MathF.Max(m[2], m[3]));
            float d = Scale(amax, out float id);
            var vid = Vector256.Create(id);
            var lo = Vector256.Create(-127f);
            var hi = Vector256.Create(127f);
            for (int o = 0; o < n; o += 32)
            {
                var i0 = Vector256.ConvertToInt32(Vector256.Clamp(Vector256.Round(Vector256.Load(px + o) * vid), lo, hi));
                var i1 = Vector256.ConvertToInt32(Vector256.Clamp(Vector256.Round(Vector256.Load(px + o + 8) * vid), lo, hi));
                var i2 = Vector256.ConvertToInt32(Vector256.Clamp(Vector256.Round(Vector256.Load(px + o + 16) * vid), lo, hi));
                var i3 = Vector256.ConvertToInt32(Vector256.Clamp(Vector256.Round(Vector256.Load(px + o + 24) * vid), lo, hi));
                Vector256.Narrow(Vector256.Narrow(i0, i1), Vector256.Narrow(i2, i3)).Store(pq + o);
                s16[o / 16] = (short)Vector256.Sum(i0 + i1);
                s16[o / 16 + 1] = (short)Vector256.Sum(i2 + i3);
            }
            return d;
        }
    }

    /// <summary>Vector128 (any ISA): same arithmetic as <see cref="BlockScalar"/>, 4 values a step.</summary>
    private static float Block128(ReadOnlySpan<float> x, Span<sbyte> q, Span<short> s16)
    {
        var vmax = Vector128<float>.Zero;
        for (int i = 0; i < x.Length; i += 4)
        {
            vmax = Vector128.Max(vmax, Vector128.Abs(Vector128.Create(x.Slice(i, 4))));
        }
        float amax = MathF.Max(MathF.Max(vmax[0], vmax[1]), MathF.Max(vmax[2], vmax[3]));
        float d = Scale(amax, out float id);
        var vid = Vector128.Create(id);
        var lo = Vector128.Create(-127f);
        var hi = Vector128.Create(127f);
        for (int g = 0; g < x.Length / 16; g++)
        {
            int o = 16 * g;
            var i0 = Vector128.ConvertToInt32(Vector128.Clamp(Vector128.Round(Vector128.Create(x.Slice(o, 4)) * vid), lo, hi));
            var i1 = Vector128.ConvertToInt32(Vector128.Clamp(Vector128.Round(Vector128.Create(x.Slice(o + 4, 4)) * vid), lo, hi));
            var i2 = Vector128.ConvertToInt32(Vector128.Clamp(Vector128.Round(Vector128.Create(x.Slice(o + 8, 4)) * vid), lo, hi));
            var i3 = Vector128.ConvertToInt32(Vector128.Clamp(Vector128.Round(Vector128.Create(x.Slice(o + 12, 4)) * vid), lo, hi));
            var b = Vector128.Narrow(Vector128.Narrow(i0, i1), Vector128.Narrow(i2, i3));
            b.CopyTo(q.Slice(o, 16));
            s16[g] = (short)Vector128.Sum((i0 + i1) + (i2 + i3));
        }
        return d;
    }
}

/// <summary>Raw pointers to one token's quantized activations (see <see cref="Q8Activations"/>).</summary>
internal readonly unsafe struct Q8Row(sbyte* q, float* d, short* s16, float* ds)
{
    /// <summary>(K) int8 values.</summary>
    public readonly sbyte* Q = q;

    /// <summary>(K / B) block scales.</summary>
    public readonly float* D = d;

    /// <summary>(K / 16) sums of 16 values.</summary>
    public readonly short* S16 = s16;

    /// <summary>(K / B) block scale times the block's sum of q.</summary>
    public readonly float* DS = ds;
}
