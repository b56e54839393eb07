using Bora.Training.Lora;

namespace Bora.Cli;

/// <summary><c>bora merge-lora --model M --lora DIR --out DIR2</c>: writes base + adapter as a new model folder (see <see cref="LoraMerge"/>).</summary>
internal static class MergeLoraCommand
{
    public const string Usage = "merge-lora --model PATH --lora ADAPTER_DIR --out NEW_MODEL_DIR";

    public static int Run(string[] args, TextWriter stdout)
    {
        var a = new CliArguments("merge-lora", args, ["model", "lora", "out"], []);
        var file = LoraMerge.Merge(a.Require("model"), a.Require("lora"), a.Require("out"));
        stdout.WriteLine($"bora merge-lora: wrote {file}");
        return 0;
    }
}
