using Bora.Numerics.Quant;

namespace Bora.Numerics;

/// <summary>
/// A weight matrix kept in a GGUF block format (Q8_0, Q4_0, Q4_K, Q6_K) and multiplied without
/// dequantizing: activations are quantized on the fly to 8 bits (<see cref="Q8Activations"/>, blocks of
/// 32 for Q8_0 / Q4_0, 256 for Q4_K / Q6_K) and each row is an integer dot product per block. Kernels
/// (<see cref="MatMul(ReadOnlySpan{float}, Span{float}, int, QuantIsa, bool)"/> picks per product):
/// <list type="bullet">
/// <item>A packed matrix (<see cref="Pack"/>, done at load from AVX2 on, <see cref="Model.WeightMapper.DefaultPackAtLoad"/>): every token count runs rows in
/// vector lanes over the pre-packed 16-row groups (<see cref="PackedLayouts"/>; AVX-512, AVX2, or the scalar twin).</item>
/// <item>AVX-512, Q4_0 from 2 tokens, Q8_0 from 3, Q4_K from 16 (<see cref="QuantDispatch"/>): rows in vector lanes, each 16-row group repacked once per
/// product into a per-thread buffer (<see cref="Q4_0Interleaved"/>, <see cref="Q8_0Interleaved"/>, <see cref="Q4KInterleaved"/>).</item>
/// <item>Otherwise Q4_0 / Q8_0 at AVX2 and up: register-blocked tiles and 4-row decode steps (<see cref="QuantGemm"/>);
/// Q4_K / Q6_K at AVX-512: row kernels (<see cref="KQuantRows"/>).</item>
/// <item>Everything else (Vector128, scalar, Q6_K prefill below AVX-512...): one <see cref="QuantDot"/> dot product per
/// (row, token), also reachable as the benchmark baseline (<see cref="RowByRowBaseline"/>).</item>
/// </list>
/// Rows are split into one contiguous range per thread (multiples of 16 rows) on <see cref="NumericsThreads.For"/>;
/// a (row, token) result never depends on the thread count, nor on the token count as long as both counts take the same
/// kernel family (rows in lanes or not; the two differ only in float rounding).
/// Results differ from float32 over the dequantized weights only by the activation rounding (relative error about
/// 1/254 of each block's largest activation) and float summation order.
/// Storage: row r is bytes [r * RowBytes, (r + 1) * RowBytes) of a <see cref="WeightStorage"/> region starting at
/// <see cref="StorageOffset"/>: (N, K / BE * BB) with BE, BB the block elements and bytes, in GGUF's stored layout
/// (no repacking). The region is either a pinned array or the memory-mapped model file itself (GGUF blocks are
/// already in this layout, so a loaded model reads them where they lie, with no copy).
/// Letters: N = rows (outputs), K = cols (inputs), T = tokens.
/// </summary>
public sealed unsafe class QuantizedMatrix : WeightMatrix
{
    /// <summary>Row-by-row path: tokens per tile (the row range is swept once per tile; each weight row stays in L1 across the tile's tokens).</summary>
    private const int TokenTile = 8;

    /// <summary>Multiply-adds below which a product runs on the calling thread.</summary>
    private const long ParallelThreshold = 1L << 18;

    /// <summary>Thread row ranges are multiples of this many rows: 16 floats = one 64-byte cache line of each token's output.</summary>
    private const int RowAlign = 16;

    /// <summary>Work items per thread: enough for the pool to even out a thread that another process delays.</summary>
    private const int ItemsPerThread = 4;

    [ThreadStatic]
    private static Job? t_job;

    private readonly WeightStorage _storage; // holds the blocks, (N, RowBytes) from _offset
    private readonly long _offset;

    /// <summary>
    /// Wraps <paramref name="blocks"/>, which holds <paramref name="rows"/> rows of <paramref name="cols"/>
    /// values in <paramref name="type"/>'s block layout, row-major. With <paramref name="copy"/> the bytes are
    /// copied into a pinned array; pass false only for an array from <see cref="AllocateBlocks"/> (kernels
    /// take raw pointers into it, so it must never move).
    /// </summary>
    public QuantizedMatrix(DType type, byte[] blocks, int rows, int cols, bool copy = true) : base(rows, cols)
    {
        ArgumentNullException.ThrowIfNull(blocks);
        long size = CheckGeometry(type, rows, cols);
        if (blocks.LongLength != size)
        {
            throw new ArgumentException($"a ({rows}, {cols}) {type} matrix needs {size} bytes; got {blocks.LongLength}", nameof(blocks));
        }
        Type = type;
        RowBytes = (int)((long)cols / DTypeInfo.BlockElements(type) * DTypeInfo.BlockBytes(type));
        BlocksPerRow = cols / DTypeInfo.BlockElements(type);
        if (copy)
        {
            var pinned = AllocateBlocks(blocks.LongLength);
            blocks.CopyTo(pinned, 0);
            blocks = pinned;
        }
        _storage = WeightStorage.Pinned(blocks);
        _offset = 0;
    }

    /// <summary>
    /// A matrix over bytes [<paramref name="offset"/>, offset + rows * RowBytes) of <paramref name="storage"/> (not
    /// copied; typically the memory-mapped model file), which hold <paramref name="rows"/> rows of
    /// <paramref name="cols"/> values in <paramref name="type"/>'s block layout, row-major. The matrix keeps the
    /// storage alive.
    /// </summary>
    /// <exception cref="ArgumentException">An unsupported type, partial blocks, or a region outside the storage.</exception>
    public QuantizedMatrix(DType type, WeightStorage storage, long offset, int rows, int cols) : base(rows, cols)
    {
        ArgumentNullException.ThrowIfNull(storage);
        long size = CheckGeometry(type, rows, cols);
        if (offset < 0 || offset > storage.Length || size > storage.Length - offset)
        {
            throw new ArgumentException($"a ({rows}, {cols}) {type} matrix needs {size} bytes from offset {offset}; the storage has {storage.Length}", nameof(offset));
        }
        Type = type;
        RowBytes = (int)((long)cols / DTypeInfo.BlockElements(type) * DTypeInfo.BlockBytes(type));
        BlocksPerRow = cols / DTypeInfo.BlockElements(type);
        _storage = storage;
        _offset = offset;
    }

    /// <summary>A packed matrix (<see cref="QuantLayout.Groups16"/>) over <paramref name="storage"/> from <paramref name="offset"/>.</summary>
    private QuantizedMatrix(DType type, WeightStorage storage, long offset, int rows, int cols, QuantLayout layout) : base(rows, cols)
    {
        Type = type;
        RowBytes = (int)((long)cols / DTypeInfo.BlockElements(type) * DTypeInfo.BlockBytes(type));
        BlocksPerRow = cols / DTypeInfo.BlockElements(type);
        _storage = storage;
        _offset = offset;
        Layout = layout;
    }

    /// <summary>Checks the type and column count; returns the bytes of a (rows, cols) matrix (at most Array.MaxLength).</summary>
    private static long CheckGeometry(DType type, int rows, int cols)
    {
        if (!IsSupported(type))
        {
            throw new ArgumentException($"{type} is not a quantized block format this matrix supports (Q8_0, Q4_0, Q4_K, Q6_K)", nameof(type));
        }
        int be = DTypeInfo.BlockElements(type);
        if (cols % be != 0)
        {
            throw new ArgumentException($"a {type} matrix needs a multiple of {be} columns; got {cols}", nameof(cols));
        }
        long size = (long)cols / be * DTypeInfo.BlockBytes(type) * rows;
        if (size > Array.MaxLength)
        {
            throw new ArgumentException($"a ({rows}, {cols}) {type} matrix of {size} bytes is larger than one span can address ({Array.MaxLength})", nameof(rows));
        }
        return size;
    }

    /// <summary>Threads used by MatVec / MatMul: the Bora-wide <see cref="NumericsThreads.MaxThreads"/> (setting it sets that).</summary>
    public static int MaxThreads
    {
        get => NumericsThreads.MaxThreads;
        set => NumericsThreads.MaxThreads = value;
    }

    /// <summary>The storage format.</summary>
    public DType Type { get; }

    /// <summary>Bytes per row: K / BE blocks.</summary>
    public int RowBytes { get; }

    /// <summary>Blocks per row.</summary>
    public int BlocksPerRow { get; }

    /// <summary>How the blocks are held: GGUF's rows, or packed 16-row groups (<see cref="Pack"/>).</summary>
    public QuantLayout Layout { get; }

    /// <summary>
    /// The raw blocks in GGUF's layout, (N, RowBytes). Not a copy (valid while the storage is not disposed).
    /// A packed matrix has no such span: use <see cref="ReadRow"/>, <see cref="Dequantize"/> or <see cref="CopyRowBlocks"/>.
    /// </summary>
    /// <exception cref="InvalidOperationException">The matrix is packed.</exception>
    public ReadOnlySpan<byte> Blocks => Layout == QuantLayout.Rows
        ? new(BlockPointer, RowBytes * Rows)
        : throw new InvalidOperationException("a packed QuantizedMatrix (Layout Groups16) holds no GGUF row span; read rows with CopyRowBlocks or ReadRow");

    /// <summary>Bytes the matrix's blocks occupy in its storage (the packed layout pads the last group to 16 rows).</summary>
    public long StoredBytes => Layout == QuantLayout.Rows ? (long)RowBytes * Rows : Groups * PackedLayouts.GroupBytes(Type, BlocksPerRow);

    private long Groups => (Rows + PackedLayouts.GroupRows - 1) / PackedLayouts.GroupRows;

    /// <summary>The memory holding the blocks (a pinned array, or the mapped model file).</summary>
    public WeightStorage Storage => _storage;

    /// <summary>Byte offset of row 0 in <see cref="Storage"/>.</summary>
    public long StorageOffset => _offset;

    /// <summary>Row 0's (or group 0's) first byte: <see cref="StoredBytes"/> from here. Throws once the storage is disposed.</summary>
    private byte* BlockPointer => _storage.Pointer(_offset, StoredBytes);

    /// <summary>Whether <see cref="Pack"/> has a packed layout for <paramref name="type"/> (Q8_0, Q4_0, Q4_K, Q6_K).</summary>
    public static bool CanPack(DType type) => PackedLayouts.Supports(type);

    /// <summary>
    /// This matrix packed into 16-row groups (<see cref="QuantLayout.Groups16"/>) in a new 64-byte aligned pinned
    /// buffer of the same size (up to the last group's padding): an offline transform, done once (at load), after which
    /// every product, decode included, runs rows in vector lanes with no per-product repacking. Results equal the
    /// unpacked matrix's rows-in-lanes products bit for bit. Returns this matrix when already packed.
    /// </summary>
    /// <exception cref="NotSupportedException">The format has no packed layout (<see cref="CanPack"/>).</exception>
    public QuantizedMatrix Pack()
    {
        if (Layout == QuantLayout.Groups16)
        {
            return this;
        }
        var packed = PackBlocks(Type, BlockPointer, Rows, Cols);
        GC.KeepAlive(_storage);
        return packed;
    }

    /// <summary>
    /// Packs the (<paramref name="rows"/>, RowBytes) GGUF blocks at <paramref name="blocks"/> (not kept) into a new
    /// packed matrix (<see cref="AllocatePacked"/>, then <see cref="PackRows"/> of all rows).
    /// </summary>
    internal static QuantizedMatrix PackBlocks(DType type, byte* blocks, int rows, int cols)
    {
        var m = AllocatePacked(type, rows, cols);
        m.PackRows(0, rows, blocks);
        return m;
    }

    /// <summary>
    /// A packed (<see cref="QuantLayout.Groups16"/>) matrix whose groups are not yet filled: a new pinned buffer of
    /// ceil(N / 16) groups, 64-byte aligned (whole-line vector loads). Fill it with <see cref="PackRows"/> before use.
    /// </summary>
    /// <exception cref="NotSupportedException">The format has no packed layout (<see cref="CanPack"/>).</exception>
    internal static QuantizedMatrix AllocatePacked(DType type, int rows, int cols)
    {
        if (!PackedLayouts.Supports(type))
        {
            throw new NotSupportedException($"{type} has no packed 16-row layout; pack only where QuantizedMatrix.CanPack is true");
        }
        CheckGeometry(type, rows, cols);
        int nb = cols / DTypeInfo.BlockElements(type);
        long groups = (rows + PackedLayouts.GroupRows - 1) / PackedLayouts.GroupRows;
        var storage = WeightStorage.Allocate(groups * PackedLayouts.GroupBytes(type, nb) + 63);
        long offset = (64 - (long)((nuint)storage.Pointer(0, storage.Length) % 64)) % 64;
        return new QuantizedMatrix(type, storage, offset, rows, cols, QuantLayout.Groups16);
    }

    /// <summary>
    /// Packs rows [<paramref name="row0"/>, row0 + <paramref name="count"/>) (row0 a multiple of 16; count a multiple of
    /// 16 unless it ends the matrix) from the GGUF blocks at <paramref name="src"/> (count rows, RowBytes apart) into
    /// this packed matrix's groups, in parallel on <see cref="NumericsThreads.For"/>. Lets a loader pack a large
    /// matrix through a small staging buffer, chunk by chunk.
    /// </summary>
    /// <exception cref="InvalidDataException">A Q4_0 / Q8_0 block scale is an infinity or a NaN (<see cref="PackedLayouts.CheckBlockScales"/>).</exception>
    internal void PackRows(int row0, int count, byte* src)
    {
        const int G = PackedLayouts.GroupRows;
        if (Layout != QuantLayout.Groups16 || row0 < 0 || row0 % G != 0 || count < 0 || count > Rows - row0 || (count % G != 0 && row0 + count != Rows))
        {
            throw new ArgumentOutOfRangeException(nameof(row0), $"rows [{row0}, {row0 + count}) of a packed ({Rows}, {Cols}) matrix: whole 16-row groups expected");
        }
        int nb = BlocksPerRow;
        long groupBytes = PackedLayouts.GroupBytes(Type, nb);
        byte* dst = BlockPointer + row0 / G * groupBytes;
        int groups = (count + G - 1) / G;
        var type = Type;
        long rowBytes = RowBytes;
        int items = Math.Max(1, Math.Min(groups, NumericsThreads.MaxThreads * 4));
        NumericsThreads.For(items, item =>
        {
            for (long g = (long)item * groups / items, end = (long)(item + 1) * groups / items; g < end; g++)
            {
                int r = (int)g * G;
                PackedLayouts.CheckBlockScales(type, src + r * rowBytes, rowBytes, nb, Math.Min(G, count - r), row0 + r);
                PackedLayouts.PackGroup(type, src + r * rowBytes, rowBytes, nb, Math.Min(G, count - r), dst + g * groupBytes);
            }
        });
        GC.KeepAlive(_storage);
    }

    /// <summary>
    /// Whether a product of <paramref name="tokens"/> tokens at <paramref name="isa"/> runs the tiled / packed kernels
    /// (<see cref="PrepareKernels"/>, <see cref="RunKernels"/>) rather than one <see cref="QuantDot"/> per (row, token).
    /// Always true for a packed matrix.
    /// </summary>
    internal bool HasKernels(QuantIsa isa, int tokens) => Layout == QuantLayout.Groups16 || QuantGemm.Covers(Type, isa, tokens);

    /// <summary>Once per product, on the calling thread, after quantizing <paramref name="act"/>: what the kernels read.</summary>
    internal void PrepareKernels(QuantIsa isa, Q8Activations act)
    {
        if (Layout == QuantLayout.Groups16)
        {
            PackedLayouts.Prepare(Type, act);
        }
        else
        {
            QuantGemm.Prepare(Type, isa, act);
        }
    }

    /// <summary>
    /// y[t, r] for r in [r0, r1) (r0 a multiple of 16) and t in [0, tokens), after <see cref="PrepareKernels"/>; one
    /// place that picks the kernel for the layout. y: (T, N).
    /// </summary>
    internal void RunKernels(QuantIsa isa, Q8Activations act, int tokens, float* y, int r0, int r1)
    {
        if (Layout == QuantLayout.Groups16)
        {
            PackedLayouts.Run(Type, isa, BlockPointer, BlocksPerRow, Rows, act, tokens, y, r0, r1);
        }
        else
        {
            QuantGemm.Run(Type, isa, BlockPointer, RowBytes, BlocksPerRow, Rows, act, tokens, y, r0, r1);
        }
        GC.KeepAlive(_storage);
    }

    /// <summary>Row <paramref name="row"/>'s blocks in GGUF's layout (RowBytes bytes) into <paramref name="dst"/>, whatever the layout.</summary>
    public void CopyRowBlocks(int row, Span<byte> dst)
    {
        if ((uint)row >= (uint)Rows)
        {
            throw new ArgumentOutOfRangeException(nameof(row), row, $"the matrix has {Rows} rows");
        }
        if (dst.Length < RowBytes)
        {
            throw new ArgumentException($"a row needs {RowBytes} bytes; got {dst.Length}", nameof(dst));
        }
        byte* p = BlockPointer;
        if (Layout == QuantLayout.Rows)
        {
            new ReadOnlySpan<byte>(p + (long)row * RowBytes, RowBytes).CopyTo(dst);
        }
        else
        {
            fixed (byte* d = dst)
            {
                PackedLayouts.UnpackRow(Type, p + row / PackedLayouts.GroupRows * PackedLayouts.GroupBytes(Type, BlocksPerRow), BlocksPerRow, row % PackedLayouts.GroupRows, d);
            }
        }
        GC.KeepAlive(_storage);
    }

    /// <summary>Whether <paramref name="type"/> can be held by a <see cref="QuantizedMatrix"/>.</summary>
    public static bool IsSupported(DType type) => type is DType.Q8_0 or DType.Q4_0 or DType.Q4_K or DType.Q6_K;

    /// <summary>A pinned, uninitialised byte array for <see cref="QuantizedMatrix(DType, byte[], int, int, bool)"/> with copy = false.</summary>
    public static byte[] AllocateBlocks(long bytes)
    {
        if (bytes < 0 || bytes > Array.MaxLength)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), bytes, "a quantized matrix is held in one array of at most Array.MaxLength bytes");
        }
        return GC.AllocateUninitializedArray<byte>((int)bytes, pinned: true);
    }

    /// <summary>Quantizes a float32 (N, K) matrix (tests, benchmarks). K must be a multiple of the block size.</summary>
    public static QuantizedMatrix Quantize(DType type, ReadOnlySpan<float> data, int rows, int cols)
    {
        var blocks = AllocateBlocks(DTypeInfo.ByteSize(type, (long)rows * cols)
            ?? throw new ArgumentException($"a ({rows}, {cols}) matrix is not a whole number of {type} blocks", nameof(cols)));
        BlockQuantizer.FromFloat32(type, data, blocks);
        return new QuantizedMatrix(type, blocks, rows, cols, copy: false);
    }

    /// <summary>Activation block size used with <paramref name="type"/>: 32 for Q8_0 / Q4_0, 256 for the K formats.</summary>
    public static int ActivationBlock(DType type) => type is DType.Q4_K or DType.Q6_K ? 256 : 32;

    public override void ReadRow(int row, Span<float> dst)
    {
        CheckReadRow(row, dst);
        if (Layout == QuantLayout.Rows)
        {
            BlockDequantizer.ToFloat32(Type, Blocks.Slice(row * RowBytes, RowBytes), dst);
            GC.KeepAlive(_storage);
            return;
        }
        var blocks = RowBytes <= 16384 ? stackalloc byte[RowBytes] : new byte[RowBytes];
        CopyRowBlocks(row, blocks);
        BlockDequantizer.ToFloat32(Type, blocks, dst);
    }

    /// <summary>All rows dequantized to float32, (N, K).</summary>
    public float[] Dequantize()
    {
        var all = new float[(long)Rows * Cols];
        if (Layout == QuantLayout.Rows)
        {
            BlockDequantizer.ToFloat32(Type, Blocks, all);
            GC.KeepAlive(_storage);
            return all;
        }
        for (int r = 0; r < Rows; r++)
        {
            ReadRow(r, all.AsSpan((int)((long)r * Cols), Cols));
        }
        return all;
    }

    public override void MatVec(ReadOnlySpan<float> x, Span<float> y)
    {
        CheckMatVec(x, y);
        MatMul(x, y, 1, QuantDot.Best);
    }

    public override void MatMul(ReadOnlySpan<float> x, Span<float> y, int tokens)
    {
        CheckMatMul(x, y, tokens);
        MatMul(x, y, tokens, QuantDot.Best);
    }

    /// <summary><see cref="MatMul(ReadOnlySpan{float}, Span{float}, int)"/> with a chosen instruction set (tests, benchmarks).</summary>
    public void MatMul(ReadOnlySpan<float> x, Span<float> y, int tokens, QuantIsa isa) =>
        MatMul(x, y, tokens, isa, RowByRowBaseline);

    /// <summary>
    /// Benchmarks only: when true, every product runs the previous row-by-row kernels (one <see cref="QuantDot"/>
    /// dot product per (row, token)) instead of the tiled ones of <see cref="QuantGemm"/>, on the same worker pool.
    /// </summary>
    public static bool RowByRowBaseline { get; set; }

    /// <summary>
    /// <see cref="MatMul(ReadOnlySpan{float}, Span{float}, int, QuantIsa)"/>, choosing the kernels: the tiled
    /// register-blocked ones (where <see cref="QuantGemm"/> covers the format and ISA) or, with
    /// <paramref name="rowByRow"/>, one <see cref="QuantDot"/> dot product per (row, token) (the baseline).
    /// </summary>
    public void MatMul(ReadOnlySpan<float> x, Span<float> y, int tokens, QuantIsa isa, bool rowByRow)
    {
        CheckMatMul(x, y, tokens);
        if (!QuantDot.IsSupported(isa))
        {
            throw new PlatformNotSupportedException($"{isa} is not supported on this CPU / runtime configuration");
        }
        if (tokens == 0 || Rows == 0)
        {
            return;
        }
        long profileStart = NumericsProfile.Start();
        var job = t_job ??= new Job();
        var act = job.Activations;
        if (isa == QuantIsa.Scalar)
        {
            act.QuantizeScalar(x, tokens, Cols, ActivationBlock(Type));
        }
        else
        {
            act.Quantize(x, tokens, Cols, ActivationBlock(Type));
        }
        NumericsProfile.Stop(ProfileSection.QuantizeActivations, profileStart);
        long prepareStart = NumericsProfile.Start();
        if (!rowByRow || Layout == QuantLayout.Groups16)
        {
            PrepareKernels(isa, act);
        }
        NumericsProfile.Stop(ProfileSection.PrepareActivations, prepareStart);
        fixed (float* py = y)
        {
            long work = (long)Rows * Cols * tokens;
            int threads = work < ParallelThreshold ? 1 : Math.Max(1, MaxThreads);
            // ItemsPerThread equal items per thread (claimed dynamically by the pool), the last ones cut into pieces
            // (RowItems), each a whole number of RowAlign-row ranges (no shared output cache lines).
            int equal = threads == 1 ? 1 : Math.Min(threads * ItemsPerThread, (Rows + RowAlign - 1) / RowAlign);
            int items = RowItems.Count(equal, threads);
            job.Set(this, py, tokens, isa, rowByRow, equal, threads);
            long parallelStart = NumericsProfile.Start();
            try
            {
                if (items == 1)
                {
                    job.Run(0);
                }
                else
                {
                    NumericsThreads.For(items, job.RunItem);
                }
            }
            finally
            {
                job.Clear();
            }
            if (parallelStart != 0)
            {
                int used = items == 1 ? 1 : Math.Min(items, Math.Max(1, MaxThreads));
                NumericsProfile.Add(ProfileSection.KernelCapacity, used * (System.Diagnostics.Stopwatch.GetTimestamp() - parallelStart));
            }
        }
        GC.KeepAlive(_storage);
        NumericsProfile.Stop(ProfileSection, profileStart);
    }

    /// <summary>The <see cref="NumericsProfile"/> section of this matrix's whole products.</summary>
    internal ProfileSection ProfileSection => Type switch
    {
        DType.Q8_0 => ProfileSection.MatMulQ8_0,
        DType.Q4_0 => ProfileSection.MatMulQ4_0,
        DType.Q4_K => ProfileSection.MatMulQ4_K,
        _ => ProfileSection.MatMulQ6_K,
    };

    /// <summary>
    /// One product's arguments, shared by the worker threads (y is pinned by the caller for the whole call).
    /// One instance per calling thread, reused (with its activation buffers and its delegate): no allocation per call.
    /// </summary>
    private sealed class Job
    {
        private QuantizedMatrix? _m;
        private float* _y;
        private int _tokens, _equal, _threads;
        private QuantIsa _isa;
        private bool _rowByRow;

        public Job() => RunItem = Run;

        /// <summary>(T, K) quantized activations of the current product.</summary>
        public Q8Activations Activations { get; } = new();

        /// <summary><see cref="Run"/> as a cached delegate.</summary>
        public Action<int> RunItem { get; }

        public void Set(QuantizedMatrix m, float* y, int tokens, QuantIsa isa, bool rowByRow, int equal, int threads)
        {
            _y = y;
            (_m, _tokens, _isa, _rowByRow, _equal, _threads) = (m, tokens, isa, rowByRow, equal, threads);
        }

        public void Clear()
        {
            _m = null;
            _y = null;
        }

        /// <summary>Item i: the rows <see cref="RowItems.Boundary"/> gives (equal items, the last ones cut into pieces).</summary>
        public void Run(int item)
        {
            long start = NumericsProfile.Start();
            RunCore(item);
            NumericsProfile.Stop(ProfileSection.KernelBusy, start);
        }

        private void RunCore(int item)
        {
            var m = _m!;
            int n = m.Rows;
            int r0 = Boundary(item, n), r1 = Boundary(item + 1, n);
            if (r0 >= r1)
            {
                return;
            }
            if ((!_rowByRow || m.Layout == QuantLayout.Groups16) && m.HasKernels(_isa, _tokens))
            {
                m.RunKernels(_isa, Activations, _tokens, _y, r0, r1);
                return;
            }
            switch (m.Type)
            {
                case DType.Q8_0:
                    Rows<Q8_0Dot>(m, r0, r1);
                    break;
                case DType.Q4_0:
                    Rows<Q4_0Dot>(m, r0, r1);
                    break;
                case DType.Q4_K:
                    Rows<Q4KDot>(m, r0, r1);
                    break;
                default:
                    Rows<Q6KDot>(m, r0, r1);
                    break;
            }
        }

        private int Boundary(int item, int n) => RowItems.Boundary(item, _equal, _threads, n, RowAlign);

        /// <summary>Tiles of <see cref="TokenTile"/> tokens sweep rows [r0, r1); inside a tile each row is dotted with every token.</summary>
        private void Rows<TOp>(QuantizedMatrix m, int r0, int r1)
            where TOp : struct, IQuantDotOperator
        {
            int n = m.Rows, nb = m.BlocksPerRow;
            long rowBytes = m.RowBytes;
            byte* w = m.BlockPointer;
            Span<Q8Row> rows = stackalloc Q8Row[TokenTile];
            for (int t0 = 0; t0 < _tokens; t0 += TokenTile)
            {
                int tt = Math.Min(TokenTile, _tokens - t0);
                for (int t = 0; t < tt; t++)
                {
                    rows[t] = Activations.Row(t0 + t);
                }
                for (int r = r0; r < r1; r++)
                {
                    byte* wr = w + r * rowBytes;
                    for (int t = 0; t < tt; t++)
                    {
                        _y[(long)(t0 + t) * n + r] = QuantDot.Dot<TOp>(_isa, wr, rows[t], nb);
                    }
                }
            }
        }
    }
}
