using System.ClientModel;
using System.Net.Http.Headers;
using Bora.Loading;
using Bora.Server;
using Bora.Serving;

namespace Bora.Clients.Tests;

/// <summary>A live <see cref="BoraServer"/> on 127.0.0.1 (a free port) with an API key.</summary>
public sealed class Live(BoraServer server, LoadedModel model, string modelId, StringWriter log) : IAsyncDisposable
{
    public const string Key = "sk-bora-clients-test";

    public BoraServer Server { get; } = server;

    public LoadedModel Model { get; } = model;

    public string ModelId { get; } = modelId;

    public StringWriter Log { get; } = log;

    public Uri BaseAddress => Server.BaseAddress;

    /// <summary>http://127.0.0.1:PORT (no trailing slash).</summary>
    public string BaseUrl => Server.BaseAddress.ToString().TrimEnd('/');

    public InferenceEngine Engine => Server.Engine!;

    /// <summary>The OpenAI SDK's options for this server (endpoint /v1, no retries so errors surface at once).</summary>
    public OpenAI.OpenAIClientOptions SdkOptions() => new() { Endpoint = new Uri(BaseAddress, "v1"), RetryPolicy = new System.ClientModel.Primitives.ClientRetryPolicy(0), NetworkTimeout = TimeSpan.FromSeconds(60) };

    public OpenAI.Chat.ChatClient ChatClient(string? key = Key, string? model = null) =>
        new(model ?? ModelId, new ApiKeyCredential(key ?? Key), SdkOptions());

    public HttpClient Http()
    {
        var c = new HttpClient { BaseAddress = BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
        c.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", Key);
        return c;
    }

    public static async Task<Live> StartAsync(LoadedModel model, string modelId, EngineOptions? engine = null)
    {
        var log = new StringWriter();
        var server = await BoraServer.StartAsync(new ServerOptions
        {
            Port = 0,
            ApiKey = Key,
            ModelId = modelId,
            MaxTokensLimit = 400,
            Engine = engine ?? new EngineOptions { BlockSize = 8, MaxBatchTokens = 128, MaxChunkTokens = 64, MaxRunning = 40, MaxWaiting = 64 },
        }, () => model, TextWriter.Synchronized(log));
        await server.Ready.WaitAsync(TimeSpan.FromSeconds(60));
        return new Live(server, model, modelId, log);
    }

    public ValueTask DisposeAsync() => Server.DisposeAsync();
}

/// <summary>One server over bora-kjv and one over the tiny v3 model, shared by every test of the "live servers" collection.</summary>
public sealed class LiveServers : IAsyncLifetime
{
    public Live Kjv { get; private set; } = null!;

    /// <summary>Null when the shared test data is absent.</summary>
    public Live? TinyV3 { get; private set; }

    /// <summary>The <see cref="ScriptedModel"/> that calls get_weather, then answers; null when the shared test data is absent.</summary>
    public Live? Scripted { get; private set; }

    public async Task InitializeAsync()
    {
        Kjv = await Live.StartAsync(TestModels.LoadKjv(), TestModels.KjvId);
        if (TestModels.V3Available)
        {
            TinyV3 = await Live.StartAsync(TestModels.LoadTinyV3(), TestModels.TinyV3Id);
            Scripted = await Live.StartAsync(ScriptedModel.Load(), ScriptedModel.Id);
        }
    }

    public async Task DisposeAsync()
    {
        await Kjv.DisposeAsync();
        if (TinyV3 is not null)
        {
            await TinyV3.DisposeAsync();
        }
        if (Scripted is not null)
        {
            await Scripted.DisposeAsync();
        }
    }
}

[CollectionDefinition(Name)]
public sealed class LiveServersCollection : ICollectionFixture<LiveServers>
{
    public const string Name = "live servers";
}
