namespace Bora.Model;

/// <summary>
/// Hyper-parameters of a Mistral-family decoder (Mistral, Mixtral, Llama). Letters used in shape
/// comments across the model code:
/// D = <see cref="Dim"/>, L = <see cref="NLayers"/>, Hq = <see cref="NHeads"/>,
/// Hkv = <see cref="NKvHeads"/>, Dh = <see cref="HeadDim"/>, F = <see cref="HiddenDim"/>,
/// V = <see cref="VocabSize"/>, E = <see cref="NExperts"/>, A = <see cref="NExpertsPerToken"/>,
/// W = <see cref="SlidingWindow"/>, T = tokens in a forward call.
/// </summary>
public sealed record ModelConfig
{
    /// <summary>D: model (residual stream) width.</summary>
    public required int Dim { get; init; }

    /// <summary>L: transformer blocks.</summary>
    public required int NLayers { get; init; }

    /// <summary>Hq: query heads.</summary>
    public required int NHeads { get; init; }

    /// <summary>Hkv: key/value heads (grouped-query attention when less than Hq).</summary>
    public required int NKvHeads { get; init; }

    /// <summary>Dh: width of one head; may differ from D / Hq (Mistral NeMo).</summary>
    public required int HeadDim { get; init; }

    /// <summary>F: hidden width of the SwiGLU feed-forward (of each expert for MoE).</summary>
    public required int HiddenDim { get; init; }

    /// <summary>V: vocabulary size (rows of the embedding and output head).</summary>
    public required int VocabSize { get; init; }

    /// <summary>RMSNorm epsilon.</summary>
    public float NormEps { get; init; } = 1e-5f;

    /// <summary>RoPE base frequency.</summary>
    public float RopeTheta { get; init; } = 10000f;

    /// <summary>W: sliding attention window (keys attended per query, itself included), or null for full attention.</summary>
    public int? SlidingWindow { get; init; }

    /// <summary>Longest context the model was trained for.</summary>
    public int MaxSeqLen { get; init; } = 4096;

    /// <summary>E: experts per MoE layer; 0 for a dense FFN.</summary>
    public int NExperts { get; init; }

    /// <summary>A: experts selected per token (top-k) in MoE layers.</summary>
    public int NExpertsPerToken { get; init; }

    /// <summary>True when the output head shares the token embedding matrix.</summary>
    public bool TiedEmbeddings { get; init; }

    public bool IsMoE => NExperts > 0;

    /// <summary>
    /// Checks every field is in range; <paramref name="source"/> names the file the config came from.
    /// </summary>
    public void Validate(string source)
    {
        static void Positive(string source, string field, long value)
        {
            if (value <= 0)
            {
                throw Formats.ModelFormatException.In(source, $"config field '{field}' is {value}; expected a positive integer");
            }
        }
        Positive(source, "dim", Dim);
        Positive(source, "n_layers", NLayers);
        Positive(source, "n_heads", NHeads);
        Positive(source, "n_kv_heads", NKvHeads);
        Positive(source, "head_dim", HeadDim);
        Positive(source, "hidden_dim", HiddenDim);
        Positive(source, "vocab_size", VocabSize);
        Positive(source, "max_seq_len", MaxSeqLen);
        if (NHeads % NKvHeads != 0)
        {
            throw Formats.ModelFormatException.In(source, $"n_heads {NHeads} is not a multiple of n_kv_heads {NKvHeads}");
        }
        if (HeadDim % 2 != 0)
        {
            throw Formats.ModelFormatException.In(source, $"head_dim {HeadDim} must be even for rotary embeddings");
        }
        if (SlidingWindow is { } w && w <= 0)
        {
            throw Formats.ModelFormatException.In(source, $"sliding_window {w}; expected a positive integer or null");
        }
        if (NExperts < 0 || (NExperts > 0 && (NExpertsPerToken <= 0 || NExpertsPerToken > NExperts)))
        {
            throw Formats.ModelFormatException.In(source, $"num_experts_per_tok {NExpertsPerToken} must be between 1 and num_local_experts {NExperts}");
        }
        if (!(NormEps > 0) || !(RopeTheta > 0))
        {
            throw Formats.ModelFormatException.In(source, $"norm_eps {NormEps} and rope_theta {RopeTheta} must be positive");
        }
    }
}
