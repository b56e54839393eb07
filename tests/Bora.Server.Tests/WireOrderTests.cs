using System.Text.Json;

namespace Bora.Server.Tests;

/// <summary>
/// The response records share base types (<see cref="ResponseHead"/>, <see cref="ChatChoiceLogprobs"/>), whose
/// properties System.Text.Json would write after the records' own: the bytes must stay in OpenAI's order (id, object,
/// created, model, choices, usage; logprobs last in a choice), with null usage / logprobs left out.
/// </summary>
public class WireOrderTests
{
    [Fact]
    public void Responses_are_written_in_openai_field_order()
    {
        var usage = new Usage(1, 2, 3);
        var logprobs = new ChatLogprobs([]);
        Assert.Equal(
            """{"id":"id1","object":"chat.completion","created":7,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop","logprobs":{"content":[]}},{"index":1,"message":{"role":"assistant","content":null},"finish_reason":null}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}""",
            JsonSerializer.Serialize(
                new ChatResponse("id1", "chat.completion", 7, "m", [new ChatChoice(0, new ChatMessageOut("assistant", "hi"), "stop") { Logprobs = logprobs }, new ChatChoice(1, new ChatMessageOut("assistant", null), null)], usage),
                ApiJsonContext.Default.ChatResponse));
        Assert.Equal(
            """{"id":"id2","object":"chat.completion.chunk","created":8,"model":"m","choices":[{"index":0,"delta":{"role":null,"content":"x"},"finish_reason":null,"logprobs":{"content":[]}}]}""",
            JsonSerializer.Serialize(
                new ChatChunk("id2", "chat.completion.chunk", 8, "m", [new ChatChunkChoice(0, new ChatMessageOut(null, "x"), null) { Logprobs = logprobs }], null),
                ApiJsonContext.Default.ChatChunk));
        Assert.Equal(
            """{"id":"id3","object":"text_completion","created":9,"model":"m","choices":[{"index":0,"text":"t","logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}""",
            JsonSerializer.Serialize(
                new CompletionResponse("id3", "text_completion", 9, "m", [new CompletionChoice(0, "t", null, "length")], usage),
                ApiJsonContext.Default.CompletionResponse));
    }
}
