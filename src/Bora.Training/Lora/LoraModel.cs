using System.Numerics;
using Bora.Model;
using Bora.Model.Lora;
using Bora.Numerics;

namespace Bora.Training.Lora;

/// <summary>
/// A <see cref="TrainingModel{T}"/> whose base weights are frozen and whose adapted matrices compute
/// W x + s B (A x): every linear product goes through an <see cref="ILinearOp{T}"/>, so the existing forward
/// and backward passes run unchanged and gradients reach only the LoRA factors (the norms' and embedding's
/// gradients are still accumulated by the base model but never applied).
/// </summary>
public sealed class LoraModel<T>
    where T : unmanaged, IFloatingPointIeee754<T>
{
    private LoraModel(ModelParameters<T> baseParameters, LoraParameters<T> lora, TrainingModel<T> model)
    {
        Base = baseParameters;
        Lora = lora;
        Model = model;
    }

    /// <summary>The frozen base (matrices unallocated when built over <see cref="TransformerWeights"/>).</summary>
    public ModelParameters<T> Base { get; }

    /// <summary>The trainable factors.</summary>
    public LoraParameters<T> Lora { get; }

    /// <summary>The forward / backward pass (Forward, Backward, Logits, CrossEntropy).</summary>
    public TrainingModel<T> Model { get; }

    /// <summary>LoRA over base weights held densely in <paramref name="baseParameters"/> (used in double by the gradient checks).</summary>
    public static LoraModel<T> OverDense(ModelParameters<T> baseParameters, LoraParameters<T> lora, int batch, int seqLen, TrainingModelOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(baseParameters);
        ArgumentNullException.ThrowIfNull(lora);
        options ??= new TrainingModelOptions();
        var scratch = new LoraScratch<T>();
        int threads = Math.Max(1, options.MaxThreads);
        var ops = BuildOps(baseParameters, lora, p => new FrozenDenseOp<T>(p, scratch, threads), scratch, threads);
        return new LoraModel<T>(baseParameters, lora, new TrainingModel<T>(baseParameters, batch, seqLen, options, ops));
    }

    /// <summary>
    /// LoRA over loaded <paramref name="weights"/> of any storage (QLoRA over quantized matrices): only the token
    /// embedding and norms are copied; every other product reads the original matrices (see <see cref="FrozenMatrixOp"/>).
    /// Float32 only.
    /// </summary>
    public static LoraModel<float> OverWeights(TransformerWeights weights, LoraParameters<float> lora, int batch, int seqLen, TrainingModelOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(weights);
        ArgumentNullException.ThrowIfNull(lora);
        options ??= new TrainingModelOptions();
        var baseParameters = ModelParameters<float>.EmbeddingAndNormsFrom(weights);
        var matrices = new Dictionary<Parameter<float>, WeightMatrix>();
        for (int l = 0; l < weights.Layers.Count; l++)
        {
            var lw = weights.Layers[l];
            var lp = baseParameters.Layers[l];
            matrices[lp.Wq] = lw.Wq;
            matrices[lp.Wk] = lw.Wk;
            matrices[lp.Wv] = lw.Wv;
            matrices[lp.Wo] = lw.Wo;
            if (lw.Moe is { } moe)
            {
                matrices[lp.Router!] = moe.Router;
                for (int e = 0; e < moe.Experts.Count; e++)
                {
                    matrices[lp.Experts[e].W1] = moe.Experts[e].W1;
                    matrices[lp.Experts[e].W2] = moe.Experts[e].W2;
                    matrices[lp.Experts[e].W3] = moe.Experts[e].W3;
                }
            }
            else
            {
                matrices[lp.FeedForward!.W1] = lw.FeedForward!.W1;
                matrices[lp.FeedForward.W2] = lw.FeedForward.W2;
                matrices[lp.FeedForward.W3] = lw.FeedForward.W3;
            }
        }
        matrices[baseParameters.Output] = weights.Output;
        var scratch = new LoraScratch<float>();
        int threads = Math.Max(1, options.MaxThreads);
        var ops = LoraModel<float>.BuildOps(baseParameters, lora, p => new FrozenMatrixOp(matrices[p], scratch, threads), scratch, threads);
        return new LoraModel<float>(baseParameters, lora, new TrainingModel<float>(baseParameters, batch, seqLen, options, ops));
    }

    /// <summary>One op per weight matrix: the frozen base, wrapped in a <see cref="LoraOp{T}"/> where adapted.</summary>
    private static Dictionary<Parameter<T>, ILinearOp<T>> BuildOps(ModelParameters<T> p, LoraParameters<T> lora, Func<Parameter<T>, ILinearOp<T>> frozen, LoraScratch<T> scratch, int threads)
    {
        if (!ReferenceEquals(p.Config, lora.Config) && p.Config != lora.Config)
        {
            throw new ArgumentException("the LoRA factors were made for a different model config");
        }
        var ops = new Dictionary<Parameter<T>, ILinearOp<T>>();
        void Add(Parameter<T> w, LoraKey? key)
        {
            ILinearOp<T> op = frozen(w);
            if (key is { } k && lora.Factors.TryGetValue(k, out var f))
            {
                op = new LoraOp<T>(op, f.A, f.B, lora.Scale, scratch, threads);
            }
            ops[w] = op;
        }
        for (int l = 0; l < p.Layers.Count; l++)
        {
            var lp = p.Layers[l];
            Add(lp.Wq, new LoraKey(l, LoraModule.Q));
            Add(lp.Wk, new LoraKey(l, LoraModule.K));
            Add(lp.Wv, new LoraKey(l, LoraModule.V));
            Add(lp.Wo, new LoraKey(l, LoraModule.O));
            if (lp.FeedForward is { } ffn)
            {
                Add(ffn.W1, new LoraKey(l, LoraModule.W1));
                Add(ffn.W2, new LoraKey(l, LoraModule.W2));
                Add(ffn.W3, new LoraKey(l, LoraModule.W3));
            }
            else
            {
                Add(lp.Router!, null);
                for (int e = 0; e < lp.Experts.Count; e++)
                {
                    Add(lp.Experts[e].W1, new LoraKey(l, LoraModule.W1, e));
                    Add(lp.Experts[e].W2, new LoraKey(l, LoraModule.W2, e));
                    Add(lp.Experts[e].W3, new LoraKey(l, LoraModule.W3, e));
                }
            }
        }
        Add(p.Output, null);
        return ops;
    }
}
