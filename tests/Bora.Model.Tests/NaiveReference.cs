namespace Bora.Model.Tests;

/// <summary>
/// An independent forward pass with plain loops in double precision, no cache: every position of
/// the sequence is recomputed from scratch with a band mask (key j visible to query i when
/// i - W &lt; j &lt;= i). Reads weights only through ReadRow. Written from the paper's formulas, not
/// from <see cref="Transformer"/>: RoPE rotates pairs (2i, 2i+1) by pos * theta^(-2i/Dh); MoE picks
/// the top-A logits by a stable sort and softmaxes them.
/// </summary>
internal static class NaiveReference
{
    /// <summary>Logits (T, V) for every position.</summary>
    public static float[] Forward(TransformerWeights w, int[] tokens)
    {
        var c = w.Config;
        int t = tokens.Length, d = c.Dim, dh = c.HeadDim, hq = c.NHeads, hkv = c.NKvHeads;
        var x = new double[t][];
        for (int i = 0; i < t; i++)
        {
            x[i] = Row(w.TokenEmbedding, tokens[i]);
        }
        foreach (var layer in w.Layers)
        {
            var xn = x.Select(r => Norm(r, layer.AttentionNorm, c.NormEps)).ToArray();
            var q = xn.Select(r => MatVec(layer.Wq, r)).ToArray();
            var k = xn.Select(r => MatVec(layer.Wk, r)).ToArray();
            var v = xn.Select(r => MatVec(layer.Wv, r)).ToArray();
            for (int i = 0; i < t; i++)
            {
                Rotate(q[i], i, dh, c.RopeTheta);
                Rotate(k[i], i, dh, c.RopeTheta);
            }
            for (int i = 0; i < t; i++)
            {
                var att = new double[hq * dh];
                for (int h = 0; h < hq; h++)
                {
                    int g = h * hkv / hq; // kv head shared by query heads g*Hq/Hkv .. (g+1)*Hq/Hkv - 1
                    var scores = new List<(int J, double S)>();
                    for (int j = 0; j <= i; j++)
                    {
                        if (c.SlidingWindow is { } win && i - j >= win)
                        {
                            continue;
                        }
                        double s = 0;
                        for (int e = 0; e < dh; e++)
                        {
                            s += q[i][h * dh + e] * k[j][g * dh + e];
                        }
                        scores.Add((j, s / Math.Sqrt(dh)));
                    }
                    double max = scores.Max(s => s.S);
                    double z = scores.Sum(s => Math.Exp(s.S - max));
                    foreach (var (j, s) in scores)
                    {
                        double p = Math.Exp(s - max) / z;
                        for (int e = 0; e < dh; e++)
                        {
                            att[h * dh + e] += p * v[j][g * dh + e];
                        }
                    }
                }
                Add(x[i], MatVec(layer.Wo, att));
            }
            for (int i = 0; i < t; i++)
            {
                var h = Norm(x[i], layer.FfnNorm, c.NormEps);
                double[] y;
                if (layer.Moe is { } moe)
                {
                    var logits = MatVec(moe.Router, h);
                    var top = Enumerable.Range(0, logits.Length).OrderByDescending(e => logits[e]).ThenBy(e => e).Take(c.NExpertsPerToken).ToArray();
                    double max = top.Max(e => logits[e]);
                    double z = top.Sum(e => Math.Exp(logits[e] - max));
                    y = new double[d];
                    foreach (int e in top)
                    {
                        var o = SwiGlu(moe.Experts[e], h);
                        double weight = Math.Exp(logits[e] - max) / z;
                        for (int n = 0; n < d; n++)
                        {
                            y[n] += weight * o[n];
                        }
                    }
                }
                else
                {
                    y = SwiGlu(layer.FeedForward!, h);
                }
                Add(x[i], y);
            }
        }
        var result = new float[t * c.VocabSize];
        for (int i = 0; i < t; i++)
        {
            var logits = MatVec(w.Output, Norm(x[i], w.FinalNorm, c.NormEps));
            for (int n = 0; n < c.VocabSize; n++)
            {
                result[i * c.VocabSize + n] = (float)logits[n];
            }
        }
        return result;
    }

    private static double[] SwiGlu(FeedForwardWeights f, double[] x)
    {
        var a = MatVec(f.W1, x);
        var b = MatVec(f.W3, x);
        for (int n = 0; n < a.Length; n++)
        {
            a[n] = a[n] / (1 + Math.Exp(-a[n])) * b[n];
        }
        return MatVec(f.W2, a);
    }

    private static void Rotate(double[] x, int pos, int dh, double theta)
    {
        for (int h = 0; h < x.Length; h += dh)
        {
            for (int i = 0; i < dh / 2; i++)
            {
                double angle = pos * Math.Pow(theta, -2.0 * i / dh);
                double a = x[h + 2 * i], b = x[h + 2 * i + 1];
                x[h + 2 * i] = a * Math.Cos(angle) - b * Math.Sin(angle);
                x[h + 2 * i + 1] = a * Math.Sin(angle) + b * Math.Cos(angle);
            }
        }
    }

    private static double[] Norm(double[] x, float[] weight, float eps)
    {
        double ms = x.Sum(v => v * v) / x.Length;
        double inv = 1 / Math.Sqrt(ms + eps);
        return [.. x.Select((v, i) => v * inv * weight[i])];
    }

    private static double[] Row(Numerics.WeightMatrix m, int r)
    {
        var f = new float[m.Cols];
        m.ReadRow(r, f);
        return [.. f.Select(v => (double)v)];
    }

    private static double[] MatVec(Numerics.WeightMatrix m, double[] x)
    {
        var y = new double[m.Rows];
        var row = new float[m.Cols];
        for (int r = 0; r < m.Rows; r++)
        {
            m.ReadRow(r, row);
            double s = 0;
            for (int c = 0; c < m.Cols; c++)
            {
                s += row[c] * x[c];
            }
            y[r] = s;
        }
        return y;
    }

    private static void Add(double[] x, double[] y)
    {
        for (int i = 0; i < x.Length; i++)
        {
            x[i] += y[i];
        }
    }
}
