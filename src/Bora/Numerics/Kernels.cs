using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace Bora.Numerics;

/// <summary>
/// Vectorised float32 kernels of the transformer. Each has a plain-loop twin in
/// <see cref="ScalarKernels"/>; tests assert they agree. Letters: n = vector length, Dh = head width.
/// </summary>
public static class Kernels
{
    /// <summary>
    /// RMSNorm: y = x * rsqrt(mean(x^2) + eps) * weight, all (n). y may be x itself.
    /// </summary>
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, float eps, Span<float> y)
    {
        CheckSame(x.Length, weight.Length, y.Length);
        if (x.Length == 0)
        {
            return;
        }
        float meanSquare = TensorPrimitives.SumOfSquares(x) / x.Length;
        float inv = 1f / MathF.Sqrt(meanSquare + eps);
        TensorPrimitives.Multiply(x, inv, y);
        TensorPrimitives.Multiply(y, weight, y);
    }

    /// <summary>
    /// Rotary embedding of one head on interleaved pairs, in place:
    /// (x[2i], x[2i+1]) becomes (x[2i] c_i - x[2i+1] s_i, x[2i] s_i + x[2i+1] c_i), i.e. the complex
    /// number x[2i] + j x[2i+1] times e^(j angle_i). Inputs come from <see cref="RopeTable.Fill"/>:
    /// cosDup = (c0, c0, c1, c1, ...) and sinSigned = (-s0, s0, -s1, s1, ...), each (Dh); then the
    /// result is x * cosDup + swapPairs(x) * sinSigned where swapPairs(x) = (x1, x0, x3, x2, ...).
    /// </summary>
    public static void Rope(Span<float> x, ReadOnlySpan<float> cosDup, ReadOnlySpan<float> sinSigned)
    {
        CheckSame(x.Length, cosDup.Length, sinSigned.Length);
        if (x.Length % 2 != 0)
        {
            throw new ArgumentException($"rotary embedding needs an even head width; got {x.Length}");
        }
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var swap = Vector256.Create(1, 0, 3, 2, 5, 4, 7, 6);
            for (; i + 8 <= x.Length; i += 8)
            {
                var v = Vector256.Create<float>(x.Slice(i, 8));
                var c = Vector256.Create(cosDup.Slice(i, 8));
                var s = Vector256.Create(sinSigned.Slice(i, 8));
                var r = v * c + Vector256.Shuffle(v, swap) * s;
                r.CopyTo(x.Slice(i, 8));
            }
        }
        for (; i < x.Length; i += 2)
        {
            float a = x[i], b = x[i + 1];
            x[i] = a * cosDup[i] + b * sinSigned[i];
            x[i + 1] = b * cosDup[i + 1] + a * sinSigned[i + 1];
        }
    }

    /// <summary>Softmax in place over (n): x = exp(x - max) / sum(exp(x - max)). Empty input is left alone.</summary>
    public static void Softmax(Span<float> x)
    {
        if (x.Length == 0)
        {
            return;
        }
        float max = TensorPrimitives.Max(x);
        TensorPrimitives.Subtract(x, max, x);
        TensorPrimitives.Exp(x, x);
        float sum = TensorPrimitives.Sum(x);
        TensorPrimitives.Multiply(x, 1f / sum, x);
    }

    /// <summary>SwiGLU gate, in place: gate = silu(gate) * up = gate * sigmoid(gate) * up, both (n).</summary>
    public static void SiluMul(Span<float> gate, ReadOnlySpan<float> up)
    {
        CheckSame(gate.Length, up.Length, up.Length);
        const int Chunk = 64;
        Span<float> sig = stackalloc float[Chunk];
        for (int i = 0; i < gate.Length; i += Chunk)
        {
            int m = Math.Min(Chunk, gate.Length - i);
            var g = gate.Slice(i, m);
            var s = sig[..m];
            TensorPrimitives.Sigmoid(g, s);
            TensorPrimitives.Multiply(g, s, g);
            TensorPrimitives.Multiply(g, up.Slice(i, m), g);
        }
    }

    /// <summary>Dot product of two (n) vectors.</summary>
    public static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b) => TensorPrimitives.Dot(a, b);

    /// <summary>y += alpha * x, both (n).</summary>
    public static void Axpy(float alpha, ReadOnlySpan<float> x, Span<float> y)
    {
        CheckSame(x.Length, y.Length, y.Length);
        TensorPrimitives.MultiplyAdd(x, alpha, y, y);
    }

    private static void CheckSame(int a, int b, int c)
    {
        if (a != b || a != c)
        {
            throw new ArgumentException($"kernel operands differ in length: {a}, {b}, {c}");
        }
    }
}

/// <summary>Plain-loop twins of <see cref="Kernels"/>, the reference the tests compare against.</summary>
public static class ScalarKernels
{
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, float eps, Span<float> y)
    {
        if (x.Length == 0)
        {
            return;
        }
        double ss = 0;
        for (int i = 0; i < x.Length; i++)
        {
            ss += (double)x[i] * x[i];
        }
        float inv = (float)(1.0 / Math.Sqrt(ss / x.Length + eps));
        for (int i = 0; i < x.Length; i++)
        {
            y[i] = x[i] * inv * weight[i];
        }
    }

    /// <summary>
    /// Rotary embedding from first principles: pair i of the head rotates by
    /// position * theta^(-2i/Dh), angles and trigonometry in double.
    /// </summary>
    public static void Rope(Span<float> x, int position, float theta)
    {
        int dh = x.Length;
        for (int i = 0; i < dh / 2; i++)
        {
            double angle = position * Math.Pow(theta, -2.0 * i / dh);
            double c = Math.Cos(angle), s = Math.Sin(angle);
            double a = x[2 * i], b = x[2 * i + 1];
            x[2 * i] = (float)(a * c - b * s);
            x[2 * i + 1] = (float)(a * s + b * c);
        }
    }

    public static void Softmax(Span<float> x)
    {
        if (x.Length == 0)
        {
            return;
        }
        float max = float.NegativeInfinity;
        for (int i = 0; i < x.Length; i++)
        {
            max = Math.Max(max, x[i]);
        }
        double sum = 0;
        for (int i = 0; i < x.Length; i++)
        {
            sum += Math.Exp(x[i] - max);
        }
        for (int i = 0; i < x.Length; i++)
        {
            x[i] = (float)(Math.Exp(x[i] - max) / sum);
        }
    }

    public static void SiluMul(Span<float> gate, ReadOnlySpan<float> up)
    {
        for (int i = 0; i < gate.Length; i++)
        {
            double g = gate[i];
            gate[i] = (float)(g / (1 + Math.Exp(-g)) * up[i]);
        }
    }

    public static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++)
        {
            s += (double)a[i] * b[i];
        }
        return (float)s;
    }

    public static void Axpy(float alpha, ReadOnlySpan<float> x, Span<float> y)
    {
        for (int i = 0; i < x.Length; i++)
        {
            y[i] += alpha * x[i];
        }
    }
}
