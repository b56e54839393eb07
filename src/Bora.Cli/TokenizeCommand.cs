using System.Text.Json;
using Bora.Loading;

namespace Bora.Cli;

/// <summary><c>bora tokenize --model PATH --text TEXT [--no-bos] [--json]</c>.</summary>
internal static class TokenizeCommand
{
    private static readonly JsonSerializerOptions RelaxedJson = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static int Run(string[] args, TextWriter stdout)
    {
        var a = new CliArguments("tokenize", args, ["model", "text"], ["json", "no-bos"]);
        var tokenizer = ModelLoader.LoadTokenizer(a.Require("model"));
        var ids = tokenizer.Encode(a.Require("text"), addBos: !a.Flag("no-bos"));
        if (a.Flag("json"))
        {
            stdout.WriteLine(JsonSerializer.Serialize(new { ids = ids.Select(i => i.Value).ToArray() }));
            return 0;
        }
        foreach (var id in ids)
        {
            stdout.WriteLine($"{id.Value,7}  {JsonSerializer.Serialize(tokenizer.PieceOf(id), RelaxedJson)}");
        }
        return 0;
    }
}
