using Bora.Loading;
using Bora.Model;
using Bora.Model.Lora;

namespace Bora.Training.Lora;

/// <summary>Applying a PEFT adapter folder to a loaded model at run time (<c>bora generate --lora DIR</c>).</summary>
public static class LoraLoading
{
    /// <summary>
    /// The model with the adapter in <paramref name="adapterFolder"/> applied at run time (each adapted matrix wrapped
    /// in a <see cref="LoraMatrix"/>; the base weights are shared), or the model itself when the folder is null.
    /// </summary>
    public static LoadedModel WithLora(this LoadedModel model, string? adapterFolder)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (adapterFolder is null)
        {
            return model;
        }
        var adapter = LoraAdapter.Load(adapterFolder, model.Config);
        var transformer = new Transformer(adapter.Apply(model.Model.Weights)) { MaxTokensPerPass = model.Model.MaxTokensPerPass, KvType = model.Model.KvType };
        return new LoadedModel(model.Source, model.Config, transformer, model.Tokenizer);
    }
}
