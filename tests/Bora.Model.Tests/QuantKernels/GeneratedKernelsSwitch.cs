using Bora.Numerics.Quant;

namespace Bora.Model.Tests.QuantKernels;

/// <summary>
/// Sets <see cref="QuantDispatch.GeneratedKernels"/> for a using block and restores it after. Tests running beside
/// one another are unaffected: the generated and the managed kernels give the same bits (which these tests assert).
/// </summary>
internal readonly struct GeneratedKernelsSwitch : IDisposable
{
    private readonly bool _before;

    private GeneratedKernelsSwitch(bool before) => _before = before;

    public static GeneratedKernelsSwitch Set(bool generated)
    {
        var restore = new GeneratedKernelsSwitch(QuantDispatch.GeneratedKernels);
        QuantDispatch.GeneratedKernels = generated;
        return restore;
    }

    public void Dispose() => QuantDispatch.GeneratedKernels = _before;
}
