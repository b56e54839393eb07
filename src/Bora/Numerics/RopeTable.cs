namespace Bora.Numerics;

/// <summary>
/// Rotary-embedding angles for heads of width Dh: pair i (elements 2i, 2i+1) at position p turns by
/// p * f_i with f_i = 1 / theta^(2i / Dh), as mistral-inference's precompute_freqs_cis (float32
/// frequencies, float32 angle p * f_i) and llama.cpp's rope mode 0.
/// Worked example, Dh = 4, theta = 10000: f = (1, 0.01); at p = 3 the angles are (3, 0.03), so
/// cosDup = (cos 3, cos 3, cos 0.03, cos 0.03) and sinSigned = (-sin 3, sin 3, -sin 0.03, sin 0.03).
/// </summary>
public sealed class RopeTable
{
    private readonly float[] _freq; // (Dh / 2)

    public RopeTable(int headDim, float theta)
    {
        if (headDim <= 0 || headDim % 2 != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(headDim), headDim, "head width must be positive and even");
        }
        if (!(theta > 0))
        {
            throw new ArgumentOutOfRangeException(nameof(theta), theta, "rope theta must be positive");
        }
        HeadDim = headDim;
        Theta = theta;
        _freq = new float[headDim / 2];
        for (int i = 0; i < _freq.Length; i++)
        {
            _freq[i] = 1f / MathF.Pow(theta, 2f * i / headDim);
        }
    }

    /// <summary>Dh.</summary>
    public int HeadDim { get; }

    public float Theta { get; }

    /// <summary>Writes the (Dh) duplicated cosines and sign-alternated sines for <paramref name="position"/> (see <see cref="Kernels.Rope"/>).</summary>
    public void Fill(int position, Span<float> cosDup, Span<float> sinSigned)
    {
        if (cosDup.Length != HeadDim || sinSigned.Length != HeadDim)
        {
            throw new ArgumentException($"rope tables hold {HeadDim} values per position");
        }
        for (int i = 0; i < _freq.Length; i++)
        {
            float angle = position * _freq[i];
            float c = (float)Math.Cos(angle), s = (float)Math.Sin(angle);
            cosDup[2 * i] = c;
            cosDup[2 * i + 1] = c;
            sinSigned[2 * i] = -s;
            sinSigned[2 * i + 1] = s;
        }
    }
}
