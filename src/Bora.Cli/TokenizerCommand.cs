using System.Globalization;
using Bora.Training;

namespace Bora.Cli;

/// <summary><c>bora tokenizer train --data corpus.txt --vocab-size N [--out tokenizer.model]</c>.</summary>
internal static class TokenizerCommand
{
    public const string Usage = "tokenizer train --data corpus.txt --vocab-size N [--out tokenizer.model] [--character-coverage F]";

    public static int Run(string[] args, TextWriter stdout)
    {
        if (args.Length == 0 || args[0] != "train")
        {
            throw new UsageException("'tokenizer' needs a subcommand: " + Usage);
        }
        var a = new CliArguments("tokenizer train", args[1..], ["data", "vocab-size", "out", "character-coverage"], []);
        int vocab = a.GetInt("vocab-size", 0, min: BpeTokenizerTrainer.ReservedPieces + 1);
        if (a.Get("vocab-size") is null)
        {
            throw new UsageException("'tokenizer train': --vocab-size is required");
        }
        var output = a.Get("out") ?? "tokenizer.model";
        var options = new BpeTrainerOptions { CharacterCoverage = a.GetFloat("character-coverage", 0.9995f) };
        var pieces = BpeTokenizerTrainer.TrainFile(a.Require("data"), vocab, output, options);
        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"wrote {output}: {pieces.Count} pieces (SentencePiece BPE, byte fallback)"));
        return 0;
    }
}
