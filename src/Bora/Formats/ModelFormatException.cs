namespace Bora.Formats;

/// <summary>
/// A checkpoint, config or tokenizer file that cannot be used. The message names the file and
/// the field or value at fault and says what was expected.
/// </summary>
public sealed class ModelFormatException : Exception
{
    public ModelFormatException(string message) : base(message) { }

    public ModelFormatException(string message, Exception inner) : base(message, inner) { }

    /// <summary>Builds the standard "file: what is wrong" message.</summary>
    public static ModelFormatException In(string path, string problem) => new($"{path}: {problem}");
}
