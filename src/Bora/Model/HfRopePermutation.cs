namespace Bora.Model;

/// <summary>
/// Row order of q_proj/k_proj in Hugging Face checkpoints. Bora (like mistral-inference and GGUF)
/// applies RoPE to interleaved pairs (x[2i], x[2i+1]) of each head; transformers applies it to
/// halves (x[i], x[i + Dh/2]) and so its conversion script stores the rows of Wq and Wk permuted:
/// <c>w.view(n_heads, Dh / 2, 2, cols).transpose(1, 2).reshape(rows, cols)</c>.
/// Within each head, interleaved row 2i + j (pair i, member j) becomes HF row j * Dh/2 + i.
/// <para>
/// Worked example, one head of Dh = 4 with interleaved rows (a0, b0, a1, b1) — pairs (a0, b0) and
/// (a1, b1): <see cref="Permute"/> gives HF rows (a0, a1, b0, b1), the first members then the second
/// members; <see cref="Unpermute"/> turns (a0, a1, b0, b1) back into (a0, b0, a1, b1). With two such
/// heads (rows 0..7) the same happens inside rows 0..3 and inside rows 4..7.
/// </para>
/// Letters: H = heads, Dh = rows / H, K = cols.
/// </summary>
public static class HfRopePermutation
{
    /// <summary>Interleaved-pair (Bora/GGUF/Mistral) rows to HF rotate-half rows. w: (H * Dh, K).</summary>
    public static float[] Permute(ReadOnlySpan<float> w, int nHeads, int rows, int cols) =>
        Reorder(w, rows, cols, PermuteRowOrder(nHeads, rows));

    /// <summary>HF rotate-half rows back to interleaved-pair rows. w: (H * Dh, K).</summary>
    public static float[] Unpermute(ReadOnlySpan<float> w, int nHeads, int rows, int cols) =>
        Reorder(w, rows, cols, UnpermuteRowOrder(nHeads, rows));

    /// <summary>
    /// For each HF row r, the interleaved row it comes from: hf[r] = interleaved[order[r]].
    /// Dh = 4: order = (0, 2, 1, 3).
    /// </summary>
    public static int[] PermuteRowOrder(int nHeads, int rows)
    {
        int dh = HeadDim(nHeads, rows);
        int half = dh / 2;
        var order = new int[rows];
        for (int h = 0; h < nHeads; h++)
        {
            for (int j = 0; j < 2; j++)
            {
                for (int i = 0; i < half; i++)
                {
                    order[h * dh + j * half + i] = h * dh + 2 * i + j;
                }
            }
        }
        return order;
    }

    /// <summary>
    /// For each interleaved row r, the HF row it comes from: interleaved[r] = hf[order[r]].
    /// Dh = 4: order = (0, 2, 1, 3) (Dh = 4 is its own inverse; Dh = 6 gives (0, 3, 1, 4, 2, 5)).
    /// </summary>
    public static int[] UnpermuteRowOrder(int nHeads, int rows)
    {
        var forward = PermuteRowOrder(nHeads, rows);
        var inverse = new int[rows];
        for (int r = 0; r < rows; r++)
        {
            inverse[forward[r]] = r;
        }
        return inverse;
    }

    private static int HeadDim(int nHeads, int rows)
    {
        if (nHeads <= 0 || rows < 0 || rows % nHeads != 0 || rows / nHeads % 2 != 0)
        {
            throw new ArgumentException($"{rows} rows cannot be split into {nHeads} heads of even width");
        }
        return rows / nHeads;
    }

    private static float[] Reorder(ReadOnlySpan<float> w, int rows, int cols, int[] order)
    {
        if ((long)rows * cols != w.Length)
        {
            throw new ArgumentException($"a ({rows}, {cols}) matrix needs {(long)rows * cols} values; got {w.Length}");
        }
        var result = new float[w.Length];
        for (int r = 0; r < rows; r++)
        {
            w.Slice(order[r] * cols, cols).CopyTo(result.AsSpan(r * cols, cols));
        }
        return result;
    }
}
