using System.Runtime.InteropServices;
using Bora.Numerics.Quant;

namespace Bora.Numerics;

/// <summary>
/// Several quantized products y_j = W_j x_j run as one parallel job (a layer's Wq / Wk / Wv, a dense FFN's W1 / W3, the
/// experts of a sparse MoE): one worker-pool dispatch for all of them instead of one per product (threads
/// balance across the products, one barrier), and products that read the same input rows (the same array, offset,
/// token count and activation format: Wq and Wk, an expert's W1 and W3) share one activation quantization.
/// <para>Each (row, token) result is bit-identical to <see cref="QuantizedMatrix.MatMul(ReadOnlySpan{float}, Span{float}, int)"/>
/// of that product alone: the same activation quantization and the same <see cref="QuantGemm"/> kernel per row
/// range, whose results depend neither on the row range nor on the thread. Products the tiled kernels do not cover
/// (no AVX2, a format / token count without a tiled kernel, <see cref="QuantizedMatrix.RowByRowBaseline"/>) run
/// through <see cref="QuantizedMatrix.MatMul(ReadOnlySpan{float}, Span{float}, int)"/> one by one in
/// <see cref="Run"/>.</para>
/// Usage: <see cref="Add"/> each product (the input is quantized then, so x may be overwritten after), then
/// <see cref="Run"/>; the outputs must not move or be read until Run returns. One instance per calling thread;
/// buffers are reused, so a warm batch allocates nothing.
/// Letters: N = rows of W_j, K = its cols, T = tokens of the product.
/// </summary>
public sealed unsafe class QuantizedProductBatch
{
    /// <summary>Row ranges are multiples of this many rows (16 floats = one cache line of a token's output).</summary>
    private const int RowAlign = 16;

    /// <summary>Work items per thread, as <see cref="QuantizedMatrix"/> gives the pool.</summary>
    private const int ItemsPerThread = 4;

    private readonly List<Q8Activations> _acts = [];
    private readonly List<InputKey> _inputs = [];
    private readonly List<Product> _products = [];
    private readonly List<Item> _items = [];
    private readonly List<GCHandle> _pins = [];
    private readonly Action<int> _runItem;
    private readonly QuantIsa _isa = QuantDot.Best;

    public QuantizedProductBatch() => _runItem = RunItem;

    /// <summary>Products added since the last <see cref="Run"/>.</summary>
    public int Count => _products.Count;

    /// <summary>
    /// Adds y[yOffset ..][t, r] = W row r . x[xOffset ..][t] for t &lt; <paramref name="tokens"/>:
    /// x (T, K) from <paramref name="xOffset"/>, y (T, N) from <paramref name="yOffset"/>. Quantizes x now unless an
    /// earlier product of this batch reads the same rows in the same activation format.
    /// </summary>
    public void Add(QuantizedMatrix w, float[] x, int xOffset, int tokens, float[] y, int yOffset)
    {
        ArgumentNullException.ThrowIfNull(w);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(y);
        long inLength = (long)tokens * w.Cols, outLength = (long)tokens * w.Rows;
        if (tokens < 0 || xOffset < 0 || yOffset < 0 || xOffset + inLength > x.Length || yOffset + outLength > y.Length)
        {
            throw new ArgumentException($"a {w.ShapeText} product of {tokens} tokens needs x[{xOffset} .. +{inLength}) of {x.Length} and y[{yOffset} .. +{outLength}) of {y.Length}");
        }
        if (tokens == 0 || w.Rows == 0)
        {
            return;
        }
        if (QuantizedMatrix.RowByRowBaseline || !QuantDot.IsSupported(_isa) || !w.HasKernels(_isa, tokens))
        {
            // Not batched: run now, as MatMul alone would (the outputs of a batch are only valid after Run anyway).
            w.MatMul(x.AsSpan(xOffset, (int)inLength), y.AsSpan(yOffset, (int)outLength), tokens);
            return;
        }
        var key = new InputKey(x, xOffset, tokens, w.Cols, w.Type, w.Layout);
        int input = _inputs.IndexOf(key);
        if (input < 0)
        {
            input = _inputs.Count;
            if (_acts.Count == input)
            {
                _acts.Add(new Q8Activations());
            }
            var act = _acts[input];
            long start = NumericsProfile.Start();
            act.Quantize(x.AsSpan(xOffset, (int)inLength), tokens, w.Cols, QuantizedMatrix.ActivationBlock(w.Type));
            NumericsProfile.Stop(ProfileSection.QuantizeActivations, start);
            start = NumericsProfile.Start();
            w.PrepareKernels(_isa, act);
            NumericsProfile.Stop(ProfileSection.PrepareActivations, start);
            _inputs.Add(key);
        }
        _products.Add(new Product(w, input, y, yOffset, tokens));
    }

    /// <summary>Runs every added product (in parallel on <see cref="NumericsThreads.For"/>) and empties the batch.</summary>
    public void Run()
    {
        try
        {
            if (_products.Count == 0)
            {
                return;
            }
            double totalWork = 0;
            foreach (var p in _products)
            {
                totalWork += Work(p);
            }
            int threads = Math.Max(1, NumericsThreads.MaxThreads);
            // ItemsPerThread items per thread and product, as many as the products would get one by one, dealt out
            // by work (N K T) so that the items are of about one size; then the last ones are cut short (SplitTail).
            int target = threads == 1 ? _products.Count : threads * ItemsPerThread * _products.Count;
            for (int pi = 0; pi < _products.Count; pi++)
            {
                var p = _products[pi];
                // Items of this product: its share of the target rounded up, whole RowAlign-row ranges.
                int groups = (p.W.Rows + RowAlign - 1) / RowAlign;
                int k = (int)Math.Clamp(Math.Ceiling(target * Work(p) / totalWork), 1, groups);
                for (int i = 0; i < k; i++)
                {
                    int r0 = Boundary(i, k, p.W.Rows), r1 = Boundary(i + 1, k, p.W.Rows);
                    if (r0 < r1)
                    {
                        _items.Add(new Item(pi, r0, r1));
                    }
                }
                _pins.Add(GCHandle.Alloc(p.Y, GCHandleType.Pinned));
            }
            SplitTail(threads);
            long start = NumericsProfile.Start();
            NumericsThreads.For(_items.Count, _runItem);
            foreach (var p in _products)
            {
                GC.KeepAlive(p.W.Storage);
            }
            if (start != 0)
            {
                Profile(System.Diagnostics.Stopwatch.GetTimestamp() - start, Math.Min(_items.Count, threads), totalWork);
            }
        }
        finally
        {
            foreach (var h in _pins)
            {
                h.Free();
            }
            _pins.Clear();
            _items.Clear();
            _products.Clear();
            _inputs.Clear();
        }
    }

    /// <summary>
    /// Records a run of <paramref name="ticks"/> on <paramref name="threads"/> threads: the capacity, and each product's
    /// share of the run's wall time (its N K T over <paramref name="totalWork"/>, the sum Run dealt items by) in its format's section (its quantization is in
    /// <see cref="Add"/>'s section, not there).
    /// </summary>
    private void Profile(long ticks, int threads, double totalWork)
    {
        NumericsProfile.Add(ProfileSection.KernelCapacity, threads * ticks);
        foreach (var p in _products)
        {
            NumericsProfile.Add(p.W.ProfileSection, (long)(ticks * (Work(p) / totalWork)));
        }
    }

    /// <summary>
    /// Cuts each of the last <paramref name="threads"/> items into <see cref="RowItems.TailPieces"/> pieces (empty ones
    /// dropped), so that the items claimed last are short (<see cref="RowItems"/>).
    /// </summary>
    private void SplitTail(int threads)
    {
        if (threads <= 1)
        {
            return;
        }
        int first = Math.Max(0, _items.Count - threads);
        var tail = _items.GetRange(first, _items.Count - first);
        _items.RemoveRange(first, tail.Count);
        foreach (var item in tail)
        {
            for (int q = 0; q < RowItems.TailPieces; q++)
            {
                int r0 = RowItems.Piece(q, item.R0, item.R1, RowAlign), r1 = RowItems.Piece(q + 1, item.R0, item.R1, RowAlign);
                if (r0 < r1)
                {
                    _items.Add(item with { R0 = r0, R1 = r1 });
                }
            }
        }
    }

    private static double Work(Product p) => (double)p.W.Rows * p.W.Cols * p.Tokens;

    /// <summary>Row i n / k rounded down to a multiple of <see cref="RowAlign"/> (n for i = k).</summary>
    private static int Boundary(int i, int k, int n) => i >= k ? n : (int)((long)i * n / k) / RowAlign * RowAlign;

    private void RunItem(int index)
    {
        var item = _items[index];
        var p = _products[item.Product];
        float* y = (float*)_pins[item.Product].AddrOfPinnedObject() + p.YOffset;
        long start = NumericsProfile.Start();
        p.W.RunKernels(_isa, _acts[p.Input], p.Tokens, y, item.R0, item.R1);
        NumericsProfile.Stop(ProfileSection.KernelBusy, start);
    }

    /// <summary>What makes two products' quantized inputs the same.</summary>
    private readonly record struct InputKey(float[] X, int Offset, int Tokens, int Cols, DType Type, QuantLayout Layout);

    /// <summary>One product: W, the index of its quantized input, and y (T, N) from YOffset.</summary>
    private readonly record struct Product(QuantizedMatrix W, int Input, float[] Y, int YOffset, int Tokens);

    /// <summary>Rows [R0, R1) of product <see cref="Product"/>.</summary>
    private readonly record struct Item(int Product, int R0, int R1);
}
