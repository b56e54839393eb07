using System.Text.Json;
using Bora.Chat;

namespace Bora.Tokenizers.Tests.Chat;

/// <summary>
/// mistral-common's own golden chats (tests/data/samples): each sample.json rendered for each version it has
/// must give exactly tokens_vN.json and text_vN.txt.
/// </summary>
public class ChatGoldenTests
{
    internal static readonly Dictionary<int, string> ModelFiles = new()
    {
        [1] = "tokenizer.model.v1",
        [2] = "mistral_instruct_tokenizer_240216.model.v2",
        [3] = "mistral_instruct_tokenizer_240323.model.v3",
        [7] = "mistral_instruct_tokenizer_241114.model.v7",
    };

    private static readonly Dictionary<int, SentencePieceTokenizer> Loaded = [];

    internal static string SamplesDir => TestPaths.Shared("tokenizers", "mistral", "mistral-common-samples");

    internal static SentencePieceTokenizer Tokenizer(int version)
    {
        lock (Loaded)
        {
            if (!Loaded.TryGetValue(version, out var tok))
            {
                tok = SentencePieceTokenizer.Load(TestPaths.Shared("tokenizers", "mistral", ModelFiles[version]));
                Loaded[version] = tok;
            }
            return tok;
        }
    }

    internal static ChatRenderer Renderer(int version) => new(Tokenizer(version), (TokenizerVersion)version);

    /// <summary>Sample folder and version for every tokens_vN.json present.</summary>
    public static TheoryData<string, int> Cases()
    {
        var data = new TheoryData<string, int>();
        if (!Directory.Exists(SamplesDir))
        {
            data.Add("", 0);
            return data;
        }
        foreach (var dir in Directory.GetDirectories(SamplesDir).Order(StringComparer.Ordinal))
        {
            foreach (var f in Directory.GetFiles(dir, "tokens_v*.json").Order(StringComparer.Ordinal))
            {
                int v = int.Parse(Path.GetFileNameWithoutExtension(f)["tokens_v".Length..], System.Globalization.CultureInfo.InvariantCulture);
                data.Add(Path.GetFileName(dir), v);
            }
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Sample_renders_to_golden_tokens_and_text(string sample, int version)
    {
        if (version == 0)
        {
            Console.WriteLine($"skipped: {SamplesDir} not found");
            return;
        }
        string dir = Path.Combine(SamplesDir, sample);
        var request = ChatRequest.Load(Path.Combine(dir, "sample.json"));
        var rendered = Renderer(version).Render(request);

        using var golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, $"tokens_v{version}.json")));
        int[] expected = golden.RootElement.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        int[] actual = rendered.Tokens.Select(t => t.Value).ToArray();
        string expectedText = File.ReadAllText(Path.Combine(dir, $"text_v{version}.txt"));
        if (sample == "parallel_calls" && version == 2)
        {
            // This one pair is not what any released mistral-common renders for v2, so it is checked by derivation
            // rather than equality. Evidence (git history of mistralai/mistral-common, read 2026-11):
            // - The files are byte-identical to tests/data/samples/parallel_calls/{tokens,text}_v2.json/.txt of the
            //   first public commit dde00bc (2024-04-17) and unchanged since (HEAD bc022b9, v1.11.7).
            // - In dde00bc, every release tag and HEAD, tests/test_integration_samples.py lists parallel_calls with
            //   "versions": [3] only, so mistral-common never checked this v2 golden.
            // - In dde00bc and every release tag (v1.1.0 .. v1.11.7), the v2 tokenizer's encode_tool_message
            //   renders each tool message on its own as [TOOL_RESULTS] json.dumps([one result]) [/TOOL_RESULTS]
            //   ("Currently only supports single tool results"; tokens/tokenizers/sentencepiece.py, later
            //   instruct.py), and InstructRequestNormalizer._aggregate_tool_messages merges nothing (its docstring:
            //   "We currently do not do any aggregation for tool messages", in v1.11.7 "Normalize tool messages
            //   without aggregation across messages"). Two consecutive tool messages therefore give two blocks,
            //   as Bora renders.
            // - text_v2.txt is decoded text (spaces, not U+2581), while every release's Tokenized.text joins the
            //   pieces (to_string); so the file came from some other, unreleased tool.
            // The golden must equal our tokens with the two blocks merged into one list, and everything else identical.
            var tok = Tokenizer(2);
            int results = tok.IdOf("[TOOL_RESULTS]").Value, endResults = tok.IdOf("[/TOOL_RESULTS]").Value;
            int first = Array.IndexOf(actual, results);
            Assert.True(first > 0);
            Assert.Equal(2, actual.Count(t => t == results));
            var merged = new List<object?>
            {
                new PyDict { ["name"] = "send_email", ["content"] = "Email sent to finance1@company.com" },
                new PyDict { ["name"] = "send_email", ["content"] = "Email sent to finance2@company.com" },
            };
            int[] oldStyle = [.. actual[..first], results, .. tok.Encode(PythonJson.Dumps(merged), addBos: false).Select(t => t.Value), endResults];
            Assert.Equal(expected, oldStyle);
            // Its text is the pieces joined with U+2581 shown as a space.
            Assert.Equal(expectedText, Renderer(2).PiecesText(expected.Select(i => new TokenId(i)).ToArray()).Replace('\u2581', ' '));
            return;
        }
        Assert.Equal(expected, actual);
        Assert.Equal(expectedText, rendered.Text);
    }
}
