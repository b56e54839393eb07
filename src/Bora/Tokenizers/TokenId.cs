namespace Bora.Tokenizers;

/// <summary>A token id of a model's vocabulary.</summary>
public readonly record struct TokenId(int Value)
{
    public override string ToString() => Value.ToString(System.Globalization.CultureInfo.InvariantCulture);
}
