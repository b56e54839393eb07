using System.Net.Http.Headers;
using Bora.Loading;

namespace Bora.Server.Tests;

/// <summary>
/// One live server on 127.0.0.1 (a free port) shared by the tests of a class: a subclass says which model it serves
/// (<see cref="LoadModel"/>; null when the shared test data it needs is absent, and then no server starts) and with
/// which options (<see cref="Options"/>). <see cref="Client"/> points at the server and, when the options set an API
/// key, sends it as a bearer token; the server's log goes to <see cref="Log"/>.
/// </summary>
/// <param name="clientTimeoutSeconds">The timeout of <see cref="Client"/>'s requests.</param>
/// <param name="readySeconds">How long the server may take to become ready.</param>
public abstract class LiveServerFixture(double clientTimeoutSeconds = 60, double readySeconds = 30) : IAsyncLifetime
{
    public BoraServer? Server { get; private set; }

    /// <summary>The served model; null when the shared test data is absent.</summary>
    public LoadedModel? Model { get; private set; }

    public HttpClient Client { get; } = new() { Timeout = TimeSpan.FromSeconds(clientTimeoutSeconds) };

    public StringWriter Log { get; } = new();

    /// <summary>The model to serve, or null when the shared test data it needs is absent.</summary>
    protected abstract LoadedModel? LoadModel();

    /// <summary>The server's options (Port 0: a free port).</summary>
    protected abstract ServerOptions Options();

    public async Task InitializeAsync()
    {
        Model = LoadModel();
        if (Model is null)
        {
            return;
        }
        var options = Options();
        Server = await BoraServer.StartAsync(options, () => Model, TextWriter.Synchronized(Log));
        await Server.Ready.WaitAsync(TimeSpan.FromSeconds(readySeconds));
        Client.BaseAddress = Server.BaseAddress;
        if (options.ApiKey is { } key)
        {
            Client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        }
    }

    public virtual async Task DisposeAsync()
    {
        Client.Dispose();
        if (Server is not null)
        {
            await Server.DisposeAsync();
        }
    }
}
