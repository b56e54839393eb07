using System.Text.Json;
using Bora.Server.Benchmark;

namespace Bora.Clients.Tests;

/// <summary><c>bora bench serve</c>: the percentile and report code, and a fast smoke run on the small models.</summary>
[Collection(LiveServersCollection.Name)]
public class ServeBenchTests(LiveServers servers)
{
    /// <summary>Percentiles are sums of a few doubles; anything past this is a real difference.</summary>
    private const double Tolerance = 1e-12;

    [Theory]
    // Worked by hand with numpy's linear rule (rank = p/100 * (n - 1)):
    [InlineData(new double[] { 1, 2, 3, 4 }, 50, 2.5)]               // rank 1.5
    [InlineData(new double[] { 4, 3, 2, 1 }, 99, 3.97)]              // unsorted input; rank 2.97
    [InlineData(new double[] { 15, 20, 35, 40, 50 }, 40, 29)]        // rank 1.6: 20 + 0.6 * 15
    [InlineData(new double[] { 15, 20, 35, 40, 50 }, 0, 15)]
    [InlineData(new double[] { 15, 20, 35, 40, 50 }, 100, 50)]
    [InlineData(new double[] { 7 }, 99, 7)]
    [InlineData(new double[] { 2, 2, 2, 10 }, 50, 2)]                // rank 1.5 between two equal values
    public void Percentile_interpolates_linearly_between_closest_ranks(double[] values, double p, double expected)
    {
        Assert.Equal(expected, ServeBenchmark.Percentile(values, p), Tolerance);
    }

    [Fact]
    public void Percentile_of_nothing_is_NaN_and_bad_p_is_refused()
    {
        Assert.True(double.IsNaN(ServeBenchmark.Percentile([], 50)));
        Assert.Throws<ArgumentOutOfRangeException>(() => ServeBenchmark.Percentile([1.0], 101));
        Assert.Throws<ArgumentOutOfRangeException>(() => ServeBenchmark.Percentile([1.0], double.NaN));
    }

    [Fact]
    public void Percentile_agrees_with_a_sort_and_index_twin_on_random_data()
    {
        var rng = new Random(3);
        for (int n = 1; n < 60; n++)
        {
            var v = Enumerable.Range(0, n).Select(_ => rng.NextDouble() * 100).ToArray();
            var sorted = v.Order().ToArray();
            foreach (double p in new[] { 0.0, 10, 50, 90, 99, 100 })
            {
                // Twin: the value at the exact position p% of the way from the smallest to the largest, by walking.
                double pos = p / 100 * (n - 1);
                int i = 0;
                while (i + 1 < n && i + 1 <= pos)
                {
                    i++;
                }
                double twin = i + 1 < n ? sorted[i] * (1 - (pos - i)) + sorted[i + 1] * (pos - i) : sorted[i];
                Assert.Equal(twin, ServeBenchmark.Percentile(v, p), 1e-9);
            }
        }
    }

    [Fact]
    public void Summarize_pools_gaps_of_all_requests_and_divides_tokens_by_wall_time()
    {
        var requests = new[]
        {
            new RequestTiming(0.10, [0.01, 0.02, 0.03], 4, 10),
            new RequestTiming(0.30, [0.05], 2, 12),
        };
        var r = ServeBenchmark.Summarize(2, requests, wallSeconds: 0.5);
        Assert.Equal(2, r.Clients);
        Assert.Equal(6, r.OutputTokens);
        Assert.Equal(12.0, r.OutputTokensPerSecond, Tolerance);
        Assert.Equal(11.0, r.PromptTokens, Tolerance);
        Assert.Equal(0.20, r.TtftP50, Tolerance);
        Assert.Equal(0.025, r.ItlP50, Tolerance); // gaps 0.01 0.02 0.03 0.05: rank 1.5
        Assert.Equal(0.1 + 0.99 * 0.2, r.TtftP99, Tolerance);
        string table = ServeBenchmark.FormatTable([ServeBenchmark.Summarize(1, [requests[0]], 1.0), r], new Dictionary<int, double> { [1] = 5, [2] = 8 });
        var lines = table.TrimEnd().Split('\n');
        Assert.Equal(3, lines.Length);
        Assert.Contains("TTFT p50 ms", lines[0], StringComparison.Ordinal);
        Assert.Contains("llama.cpp", lines[0], StringComparison.Ordinal);
        Assert.EndsWith("1.60", lines[2].TrimEnd(), StringComparison.Ordinal);   // llama.cpp 8 / 5
        Assert.Contains(" 3.00 ", lines[2], StringComparison.Ordinal);          // Bora 12 / 4 tok/s
    }

    [Fact]
    public void Bench_serve_smoke_run_in_process_reports_every_level()
    {
        string model = TestModels.V3Available ? TestModels.TinyV3Path : TestModels.KjvPath;
        var (code, stdout, stderr) = Cli("bench", "serve", "--model", model, "--clients", "1,2", "--prompt-tokens", "8", "--gen-tokens", "6", "--threads", "1", "--json");
        Assert.True(code == 0, stderr);
        using var doc = JsonDocument.Parse(stdout);
        var levels = doc.RootElement.GetProperty("levels").EnumerateArray().ToList();
        Assert.Equal([1, 2], levels.Select(l => l.GetProperty("clients").GetInt32()));
        foreach (var l in levels)
        {
            int n = l.GetProperty("clients").GetInt32();
            Assert.InRange(l.GetProperty("output_tokens").GetInt32(), n, n * 6);
            Assert.True(l.GetProperty("output_tok_s").GetDouble() > 0);
            Assert.True(l.GetProperty("ttft_p50_s").GetDouble() > 0);
            Assert.True(l.GetProperty("ttft_p99_s").GetDouble() >= l.GetProperty("ttft_p50_s").GetDouble());
            Assert.True(l.GetProperty("prompt_tokens").GetDouble() >= 2);
        }
        Assert.Contains("bench serve: N=2", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Bench_serve_against_a_running_server_prints_the_table()
    {
        var live = servers.Kjv;
        var (code, stdout, stderr) = Cli("bench", "serve", "--url", live.BaseUrl, "--api-key", Live.Key, "--clients", "2", "--prompt-tokens", "6", "--gen-tokens", "4");
        Assert.True(code == 0, stderr);
        var lines = stdout.TrimEnd().Split('\n');
        Assert.Equal(2, lines.Length);
        Assert.StartsWith("   2 ", lines[1], StringComparison.Ordinal);
        var (badCode, _, badErr) = Cli("bench", "serve", "--url", live.BaseUrl, "--api-key", "wrong", "--clients", "1", "--gen-tokens", "2");
        Assert.NotEqual(0, badCode);
        Assert.Contains("401", badErr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("0")]
    [InlineData("1,x")]
    [InlineData(",")]
    public void Bad_client_lists_are_usage_errors(string clients)
    {
        var (code, _, stderr) = Cli("bench", "serve", "--model", TestModels.KjvPath, "--clients", clients);
        Assert.Equal(2, code);
        Assert.Contains("--clients", stderr, StringComparison.Ordinal);
    }

    private static (int Code, string Stdout, string Stderr) Cli(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Bora.Cli.Program.Run(args, stdout, stderr, TextReader.Null);
        return (code, stdout.ToString(), stderr.ToString());
    }
}
