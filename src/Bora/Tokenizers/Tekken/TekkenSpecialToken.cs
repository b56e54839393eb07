namespace Bora.Tokenizers.Tekken;

/// <summary>One special token of a Tekken file: id (= rank) <paramref name="Id"/>, its text and control flag.</summary>
public readonly record struct TekkenSpecialToken(int Id, string Text, bool IsControl);
