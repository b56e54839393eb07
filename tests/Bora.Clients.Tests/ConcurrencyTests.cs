using System.Globalization;
using System.Net;
using System.Text;
using System.Text.RegularExpressions;
using Bora.Serving;
using OpenAI.Chat;

namespace Bora.Clients.Tests;

/// <summary>
/// Continuous batching changes nothing but speed: many concurrent streaming clients (the OpenAI .NET SDK) each get
/// exactly what Bora's single-sequence generator produces for their seed; clients that go away free their KV blocks.
/// </summary>
[Collection(LiveServersCollection.Name)]
public partial class ConcurrencyTests(LiveServers servers)
{
    private const int Clients = 32, Tokens = 24;

    [Fact]
    public async Task Thirty_two_concurrent_streaming_clients_with_different_seeds_get_what_they_get_alone()
    {
        var live = servers.Kjv;
        var prompt = Reference.Prompt(live.Model, ("user", "And God said"));
        var alone = Enumerable.Range(0, Clients).Select(i => Reference.Generate(live.Model, prompt, Tokens, 1f, (ulong)(500 + i)).Text).ToArray();
        Assert.True(alone.Distinct().Count() > Clients / 2, "different seeds should give different answers");
        int peakBefore = live.Engine.PeakBatchSequences;
        var together = await Task.WhenAll(Enumerable.Range(0, Clients).Select(i => StreamChat(live, "And God said", 500 + i))).WaitAsync(TimeSpan.FromSeconds(120));
        for (int i = 0; i < Clients; i++)
        {
            Assert.Equal(alone[i], together[i]);
        }
        Assert.True(live.Engine.PeakBatchSequences >= 8, $"the clients shared at most {live.Engine.PeakBatchSequences} sequences per forward pass (before: {peakBefore})");
    }

    private static async Task<string> StreamChat(Live live, string user, int seed)
    {
#pragma warning disable OPENAI001 // Seed is marked experimental in the SDK
        var options = new ChatCompletionOptions { MaxOutputTokenCount = Tokens, Temperature = 1, Seed = seed };
#pragma warning restore OPENAI001
        var text = new StringBuilder();
        await foreach (var u in live.ChatClient().CompleteChatStreamingAsync([new UserChatMessage(user)], options))
        {
            foreach (var part in u.ContentUpdate)
            {
                text.Append(part.Text);
            }
        }
        return text.ToString();
    }

    /// <summary>
    /// A server whose KV pool holds exactly one full-context sequence: after each client that disconnects mid-stream, a
    /// request needing the whole pool must still run — it could not if the disconnected sequence had kept its blocks.
    /// </summary>
    [Fact]
    public async Task Clients_that_disconnect_mid_stream_free_their_blocks()
    {
        var model = TestModels.LoadKjv();
        int context = model.Config.MaxSeqLen;
        await using var live = await Live.StartAsync(model, TestModels.KjvId, new EngineOptions { BlockSize = 8, KvCacheTokens = context, MaxRunning = 4 });
        var (blocks, blockSize) = live.Engine.KvPool;
        Assert.Equal(context, blocks * blockSize);
        using var http = live.Http();
        var prompt = Reference.Prompt(model, ("user", "And God said"));
        int fill = context - prompt.Length; // prompt + completion = the whole pool
        for (int round = 0; round < 3; round++)
        {
            using (var req = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = Body(fill, stream: true, seed: round) })
            using (var r = await http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead))
            {
                Assert.Equal(HttpStatusCode.OK, r.StatusCode);
                using var reader = new StreamReader(await r.Content.ReadAsStreamAsync());
                for (int events = 0; events < 3;)
                {
                    string? line = await reader.ReadLineAsync();
                    Assert.NotNull(line);
                    events += line.StartsWith("data: ", StringComparison.Ordinal) ? 1 : 0;
                }
            } // disposing the response closes the connection mid-stream
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            using var full = await http.PostAsync("/v1/chat/completions", Body(fill, stream: false, seed: round), timeout.Token);
            Assert.Equal(HttpStatusCode.OK, full.StatusCode);
        }
        Assert.Equal(0, live.Engine.RunningCount);
    }

    private static StringContent Body(int maxTokens, bool stream, int seed) => new(
        $$"""{"messages":[{"role":"user","content":"And God said"}],"max_tokens":{{maxTokens}},"temperature":1,"seed":{{seed}},"stream":{{(stream ? "true" : "false")}}}""",
        Encoding.UTF8, "application/json");

    [Fact]
    public async Task A_disconnected_client_brings_kv_blocks_used_back_to_idle_in_metrics()
    {
        var live = servers.Kjv;
        using var http = live.Http();
        double idle = await Gauge(http, "bora_kv_cache_blocks_used");
        Assert.Equal(live.Engine.KvPool.Blocks, await Gauge(http, "bora_kv_cache_blocks_total"));
        using (var req = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = Body(200, stream: true, seed: 1) })
        using (var r = await http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead))
        {
            using var reader = new StreamReader(await r.Content.ReadAsStreamAsync());
            await reader.ReadLineAsync();
            await reader.ReadLineAsync();
            Assert.True(await Gauge(http, "bora_kv_cache_blocks_used") > idle, "a running sequence should hold blocks");
        }
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        double used;
        while ((used = await Gauge(http, "bora_kv_cache_blocks_used")) > idle && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20);
        }
        Assert.Equal(idle, used);
        Assert.Equal(0, await Gauge(http, "bora_running_sequences"));
    }

    /// <summary>The value of an unlabelled Prometheus gauge or counter in /metrics.</summary>
    private static async Task<double> Gauge(HttpClient http, string name)
    {
        string text = await http.GetStringAsync("/metrics");
        var m = Regex.Match(text, "^" + Regex.Escape(name) + @"(?:\{[^}]*\})?\s+(\S+)", RegexOptions.Multiline);
        Assert.True(m.Success, $"/metrics has no {name}:\n{text}");
        return double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
    }
}
