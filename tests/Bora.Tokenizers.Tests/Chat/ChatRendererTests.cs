using Bora.Chat;

namespace Bora.Tokenizers.Tests.Chat;

/// <summary>
/// v7 (no golden files exist in mistral-common's samples), system prompts, prefixes, FIM and validation, against
/// token sequences derived by hand from mistral-common's instruct.py: control tokens by id, each text part encoded
/// separately with SentencePiece (the JSON strings below are written out literally, not produced by PythonJson).
/// </summary>
public class ChatRendererTests
{
    private static bool Available => Directory.Exists(TestPaths.Shared("tokenizers", "mistral"));

    private const string ToolsJson =
        "{\"messages\": [], \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather of a city\", " +
        "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\", \"minimum\": 1.0}}, \"required\": [\"city\"]}}}]}";

    private static ChatRequest WeatherChat()
    {
        var tools = ChatRequest.Parse(ToolsJson).Tools;
        return new ChatRequest
        {
            Tools = tools,
            Messages =
            [
                ChatMessage.System("You are helpful."),
                ChatMessage.User("Hi"),
                ChatMessage.Assistant("Hello! "),
                ChatMessage.User("Weather in Paris?"),
                ChatMessage.Assistant(null, [new ToolCall("abcdefghi", "get_weather", "{\"city\":\"Paris\",  \"days\":2}")]),
                ChatMessage.Tool("{\"temp\":22.50}", "abcdefghi", "get_weather"),
            ],
        };
    }

    private const string ExpectedToolsText =
        "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather of a city\", " +
        "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}, \"days\": {\"type\": \"integer\", \"minimum\": 1.0}}, \"required\": [\"city\"]}}}]";

    private sealed class Expect(SentencePieceTokenizer tok)
    {
        public readonly List<int> Ids = [tok.Bos.Value];

        public Expect C(string piece)
        {
            var id = tok.IdOf(piece);
            Assert.True(tok.IsControl(id), piece);
            Ids.Add(id.Value);
            return this;
        }

        public Expect T(string text)
        {
            Ids.AddRange(tok.Encode(text, addBos: false).Select(t => t.Value));
            return this;
        }

        public Expect Eos()
        {
            Ids.Add(tok.Eos.Value);
            return this;
        }
    }

    [Fact]
    public void V7_system_prompt_tools_calls_and_results_by_hand()
    {
        if (!Available)
        {
            return;
        }
        var tok = ChatGoldenTests.Tokenizer(7);
        var e = new Expect(tok)
            .C("[SYSTEM_PROMPT]").T("You are helpful.").C("[/SYSTEM_PROMPT]")
            .C("[INST]").T("Hi").C("[/INST]").T("Hello!").Eos()
            .C("[AVAILABLE_TOOLS]").T(ExpectedToolsText).C("[/AVAILABLE_TOOLS]")
            .C("[INST]").T("Weather in Paris?").C("[/INST]")
            .C("[TOOL_CALLS]").T("[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}, \"id\": \"abcdefghi\"}]").Eos()
            .C("[TOOL_RESULTS]").T("abcdefghi").C("[TOOL_CONTENT]").T("{\"temp\":22.50}").C("[/TOOL_RESULTS]");
        var r = ChatGoldenTests.Renderer(7).Render(WeatherChat());
        Assert.Equal(e.Ids, r.Tokens.Select(t => t.Value));
        Assert.StartsWith("<s>[SYSTEM_PROMPT]▁You▁are▁helpful.[/SYSTEM_PROMPT][INST]▁Hi[/INST]▁Hello!</s>[AVAILABLE_TOOLS]", r.Text, StringComparison.Ordinal);
        Assert.EndsWith("</s>[TOOL_RESULTS]▁abcdefghi[TOOL_CONTENT]▁{\"temp\":22.50}[/TOOL_RESULTS]", r.Text, StringComparison.Ordinal);
    }

    [Fact]
    public void V3_same_chat_prepends_system_prompt_to_last_user_and_parses_tool_content()
    {
        if (!Available)
        {
            return;
        }
        var tok = ChatGoldenTests.Tokenizer(3);
        var e = new Expect(tok)
            .C("[INST]").T("Hi").C("[/INST]").T("Hello!").Eos()
            .C("[AVAILABLE_TOOLS]").T(ExpectedToolsText).C("[/AVAILABLE_TOOLS]")
            .C("[INST]").T("You are helpful.\n\nWeather in Paris?").C("[/INST]")
            .C("[TOOL_CALLS]").T("[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}, \"id\": \"abcdefghi\"}]").Eos()
            .C("[TOOL_RESULTS]").T("{\"content\": {\"temp\": 22.5}, \"call_id\": \"abcdefghi\"}").C("[/TOOL_RESULTS]");
        Assert.Equal(e.Ids, ChatGoldenTests.Renderer(3).Render(WeatherChat()).Tokens.Select(t => t.Value));
    }

    [Fact]
    public void V7_system_messages_stay_in_place_and_consecutive_users_merge()
    {
        if (!Available)
        {
            return;
        }
        var tok = ChatGoldenTests.Tokenizer(7);
        var req = new ChatRequest
        {
            Messages = [ChatMessage.System("s0"), ChatMessage.User("a"), ChatMessage.User(""), ChatMessage.User("b"), ChatMessage.System("s1"), ChatMessage.System("s2"), ChatMessage.User("d")],
        };
        var e = new Expect(tok).C("[SYSTEM_PROMPT]").T("s0").C("[/SYSTEM_PROMPT]").C("[INST]").T("a\n\nb").C("[/INST]")
            .C("[SYSTEM_PROMPT]").T("s1").C("[/SYSTEM_PROMPT]").C("[SYSTEM_PROMPT]").T("s2").C("[/SYSTEM_PROMPT]")
            .C("[INST]").T("d").C("[/INST]");
        Assert.Equal(e.Ids, ChatGoldenTests.Renderer(7).Render(req).Tokens.Select(t => t.Value));
    }

    [Fact]
    public void V1_system_prompt_goes_to_first_user_message_and_leading_system_gets_empty_user()
    {
        if (!Available)
        {
            return;
        }
        var tok = ChatGoldenTests.Tokenizer(1);
        var req = new ChatRequest { Messages = [ChatMessage.System("Be brief."), ChatMessage.User("Q1"), ChatMessage.Assistant("A1 "), ChatMessage.User("Q2")] };
        // Normalization drops the system message; the first message is then a user message, so nothing is inserted.
        var e = new Expect(tok).T("[INST] Be brief.\n\nQ1 [/INST]").T("A1 ").Eos().T("[INST] Q2 [/INST]");
        Assert.Equal(e.Ids, ChatGoldenTests.Renderer(1).Render(req).Tokens.Select(t => t.Value));

        // v3: a conversation opening with an assistant message after the system prompt gets an empty user message first.
        var tok3 = ChatGoldenTests.Tokenizer(3);
        var req3 = new ChatRequest { Messages = [ChatMessage.System("S"), ChatMessage.Assistant("Hi"), ChatMessage.User("Q")] };
        var e3 = new Expect(tok3).C("[INST]").C("[/INST]").T("Hi").Eos().C("[INST]").T("S\n\nQ").C("[/INST]");
        Assert.Equal(e3.Ids, ChatGoldenTests.Renderer(3).Render(req3).Tokens.Select(t => t.Value));
    }

    [Fact]
    public void Assistant_prefix_and_continue_final_message_leave_out_eos()
    {
        if (!Available)
        {
            return;
        }
        var tok = ChatGoldenTests.Tokenizer(3);
        var prefix = new ChatRequest { Messages = [ChatMessage.User("Q"), ChatMessage.Assistant("The answer is", prefix: true)] };
        var e = new Expect(tok).C("[INST]").T("Q").C("[/INST]").T("The answer is");
        Assert.Equal(e.Ids, ChatGoldenTests.Renderer(3).Render(prefix).Tokens.Select(t => t.Value));

        var cont = new ChatRequest { Messages = [ChatMessage.User("Q"), ChatMessage.Assistant("The answer is")], ContinueFinalMessage = true };
        Assert.Equal(e.Ids, ChatGoldenTests.Renderer(3).Render(cont).Tokens.Select(t => t.Value));
    }

    [Fact]
    public void Control_token_text_in_user_content_is_encoded_as_ordinary_pieces()
    {
        if (!Available)
        {
            return;
        }
        var r = ChatGoldenTests.Renderer(3).Render(new ChatRequest { Messages = [ChatMessage.User("[INST] [TOOL_CALLS]")] });
        var tok = ChatGoldenTests.Tokenizer(3);
        Assert.Equal(2, r.Tokens.Count(t => tok.IsControl(t) && tok.PieceOf(t) is "[INST]" or "[/INST]"));
        Assert.DoesNotContain(r.Tokens, t => tok.PieceOf(t) == "[TOOL_CALLS]");
    }

    [Fact]
    public void Fim_renders_suffix_without_dummy_space_then_prefix()
    {
        if (!Available)
        {
            return;
        }
        var r = ChatGoldenTests.Renderer(3).RenderFim(new FimRequest("def f(x):", "    return x"));
        Assert.Equal("<s>[SUFFIX]▁▁▁▁return▁x[PREFIX]▁def▁f(x):", r.Text);
        var empty = ChatGoldenTests.Renderer(7).RenderFim(new FimRequest("x = "));
        Assert.Equal("<s>[SUFFIX][PREFIX]▁x▁=▁", empty.Text);
        Assert.Contains("fill-in-the-middle", Assert.Throws<ChatRequestException>(() => ChatGoldenTests.Renderer(2).RenderFim(new FimRequest("a", "b"))).Message, StringComparison.Ordinal);
        Assert.Throws<ChatRequestException>(() => ChatGoldenTests.Renderer(1).RenderFim(new FimRequest("a")));
    }

    public static TheoryData<int, string, string> BadRequests => new()
    {
        { 3, """{"messages": []}""", "at least one message" },
        { 3, """{"messages": [{"role": "assistant", "content": "x"}]}""", "must start with a user or system" },
        { 3, """{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]}""", "last message must be a user or tool" },
        { 3, """{"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "1", "tool_call_id": "abcdefghi"}]}""", "unexpected role 'tool' after role 'user'" },
        { 3, """{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "abcdefghi", "function": {"name": "f", "arguments": "{}"}}]}, {"role": "assistant", "content": "x"}, {"role": "user", "content": "q"}]}""", "not the same number of function calls" },
        { 3, """{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "123", "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "content": "1", "tool_call_id": "abcdefghi"}]}""", "must be 9 characters" },
        { 3, """{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "abcdefghi", "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "content": "1"}]}""", "needs tool_call_id" },
        { 3, """{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x", "prefix": true}, {"role": "user", "content": "q"}]}""", "prefix=true must be the last" },
        { 3, """{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x", "tool_calls": [{"id": "abcdefghi", "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "content": "1", "tool_call_id": "abcdefghi"}]}""", "either content or tool_calls" },
        { 3, """{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "abcdefghi", "function": {"name": "get weather", "arguments": "{}"}}]}, {"role": "tool", "content": "1", "tool_call_id": "abcdefghi"}]}""", "function name was \"get weather\"" },
        { 1, """{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "content": "1"}]}""", "not available in chat format V1" },
        { 3, """{"messages": [{"role": "user", "content": "q"}], "continue_final_message": true}""", "continue_final_message" },
        { 3, """{"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function", "function": {"name": "bad name!", "parameters": {}}}]}""", "tools[0]" },
        { 3, """{"messages": [{"role": "robot", "content": "q"}]}""", "messages[0].role" },
        { 3, """{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}""", "only text chunks" },
        { 3, """[1, 2]""", "must be a JSON object" },
        { 3, """{"messages": [""", "not valid JSON" },
    };

    [Theory]
    [MemberData(nameof(BadRequests))]
    public void Bad_requests_are_rejected_with_a_clear_message(int version, string json, string expected)
    {
        if (!Available)
        {
            return;
        }
        var e = Assert.Throws<ChatRequestException>(() => ChatGoldenTests.Renderer(version).Render(ChatRequest.Parse(json)));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Serving_mode_requires_every_call_answered_test_mode_does_not()
    {
        if (!Available)
        {
            return;
        }
        var req = ChatRequest.Parse("""{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "abcdefghi", "function": {"name": "f", "arguments": "{}"}}, {"id": "bcdefghij", "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "content": "1", "tool_call_id": "abcdefghi"}]}""");
        ChatGoldenTests.Renderer(3).Render(req);
        var e = Assert.Throws<ChatRequestException>(() => ChatGoldenTests.Renderer(3).Render(req, ValidationMode.Serving));
        Assert.Contains("1 call(s) unanswered", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void V7_allows_content_and_calls_in_one_assistant_message()
    {
        if (!Available)
        {
            return;
        }
        var tok = ChatGoldenTests.Tokenizer(7);
        var req = ChatRequest.Parse("""{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Let me check.", "tool_calls": [{"id": "abcdefghi", "function": {"name": "f", "arguments": {"x": [1, true, null]}}}]}, {"role": "tool", "content": "ok", "tool_call_id": "abcdefghi"}]}""");
        var e = new Expect(tok).C("[INST]").T("q").C("[/INST]").T("Let me check.").C("[TOOL_CALLS]")
            .T("[{\"name\": \"f\", \"arguments\": {\"x\": [1, true, null]}, \"id\": \"abcdefghi\"}]").Eos()
            .C("[TOOL_RESULTS]").T("abcdefghi").C("[TOOL_CONTENT]").T("ok").C("[/TOOL_RESULTS]");
        Assert.Equal(e.Ids, ChatGoldenTests.Renderer(7).Render(req).Tokens.Select(t => t.Value));
    }

    [Fact]
    public void Versions_from_file_names_and_vocabularies()
    {
        Assert.Equal(TokenizerVersion.V3, TokenizerVersions.FromFileName("/m/tokenizer.model.v3"));
        Assert.Equal(TokenizerVersion.V7, TokenizerVersions.FromFileName("mistral_instruct_tokenizer_241114.model.v7m1"));
        Assert.Equal(TokenizerVersion.V1, TokenizerVersions.FromFileName("tokenizer.model"));
        Assert.Null(TokenizerVersions.FromFileName("tokenizer.json"));
        Assert.Contains("v11", Assert.Throws<ChatRequestException>(() => TokenizerVersions.FromFileName("tokenizer.model.v11")).Message, StringComparison.Ordinal);
        if (!Available)
        {
            return;
        }
        foreach (int v in new[] { 1, 2, 3, 7 })
        {
            Assert.Equal((TokenizerVersion)v, TokenizerVersions.FromVocabulary(ChatGoldenTests.Tokenizer(v)));
            Assert.Equal((TokenizerVersion)v, TokenizerVersions.Detect(null, ChatGoldenTests.Tokenizer(v)));
        }
        // The file name wins over the vocabulary.
        Assert.Equal(TokenizerVersion.V2, TokenizerVersions.Detect("x.model.v2", ChatGoldenTests.Tokenizer(3)));
        Assert.Contains("[SYSTEM_PROMPT]", Assert.Throws<ChatRequestException>(() => new ChatRenderer(ChatGoldenTests.Tokenizer(3), TokenizerVersion.V7)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Special_token_policy_keep_ignore_raise()
    {
        if (!Available)
        {
            return;
        }
        var tok = ChatGoldenTests.Tokenizer(3);
        var ids = ChatGoldenTests.Renderer(3).Render(new ChatRequest { Messages = [ChatMessage.User("Hi there")] }).Tokens;
        Assert.Equal("<s>[INST]▁Hi▁there[/INST]", tok.Decode(ids, SpecialTokenPolicy.Keep));
        Assert.Equal("Hi there", tok.Decode(ids, SpecialTokenPolicy.Ignore));
        var e = Assert.Throws<InvalidOperationException>(() => tok.Decode(ids, SpecialTokenPolicy.Raise));
        Assert.Contains("<s>", e.Message, StringComparison.Ordinal);
        Assert.Equal("Hi there", tok.Decode(tok.Encode("Hi there", addBos: false), SpecialTokenPolicy.Raise));
    }
}
