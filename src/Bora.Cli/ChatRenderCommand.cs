using System.Text.Json;
using Bora.Chat;
using Bora.Loading;

namespace Bora.Cli;

/// <summary>
/// <c>bora chat-render --model PATH --request REQUEST.json [--version vN] [--json]</c>: renders a chat-completion
/// request (messages, tools) for the model's chat format version, as mistral-common does, and prints the
/// version, the token ids and the text (pieces joined).
/// </summary>
internal static class ChatRenderCommand
{
    private static readonly JsonSerializerOptions RelaxedJson = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static int Run(string[] args, TextWriter stdout)
    {
        var a = new CliArguments("chat-render", args, ["model", "request", "version"], ["json"]);
        string model = a.Require("model");
        var tokenizer = ModelLoader.LoadTokenizer(model);
        string? file = Directory.Exists(model) ? ModelSource.FindTokenizer(model) : model;
        TokenizerVersion version = a.Get("version") is { } v
            ? v.TrimStart('v', 'V') switch
            {
                "1" => TokenizerVersion.V1,
                "2" => TokenizerVersion.V2,
                "3" => TokenizerVersion.V3,
                "7" => TokenizerVersion.V7,
                _ => throw new UsageException($"'chat-render': --version {v} is not one of v1, v2, v3, v7"),
            }
            : TokenizerVersions.Detect(file, tokenizer);
        var request = ChatRequest.Load(a.Require("request"));
        var rendered = new ChatRenderer(tokenizer, version).Render(request);
        string name = "v" + (int)version;
        if (a.Flag("json"))
        {
            stdout.WriteLine(JsonSerializer.Serialize(new { version = name, tokens = rendered.Tokens.Select(t => t.Value).ToArray(), text = rendered.Text }, RelaxedJson));
            return 0;
        }
        stdout.WriteLine($"version: {name}");
        stdout.WriteLine($"tokens ({rendered.Tokens.Length}): {string.Join(' ', rendered.Tokens.Select(t => t.Value))}");
        stdout.WriteLine($"text: {rendered.Text}");
        return 0;
    }
}
