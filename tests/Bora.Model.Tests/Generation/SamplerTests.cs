using Bora.Generation;
using Bora.Tokenizers;

namespace Bora.Model.Tests.Generation;

public sealed class SamplerTests
{
    /// <summary>Probabilities are float32 softmax outputs compared to double hand computations.</summary>
    private const float ProbabilityTolerance = 1e-6f;

    /// <summary>Sampling-frequency tolerance for 20,000 seeded draws (3 sigma of a binomial at p = 0.5 is ~0.011).</summary>
    private const double FrequencyTolerance = 0.015;

    private static readonly SamplingOptions NoFilters = new() { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f, Seed = 7 };

    private static float[] LogitsOfProbabilities(params double[] p) => [.. p.Select(x => (float)Math.Log(x))];

    private static int[] Ids(ReadOnlySpan<TokenProbability> c) => [.. c.ToArray().Select(x => x.Id.Value)];

    /// <summary>
    /// With no filter, Sample draws without building the candidate list (block sums, then a walk): its frequencies over
    /// many draws match softmax(logits / T) computed here in double, for a vocabulary of several 64-token blocks plus a
    /// tail, tokens of zero probability (-infinity) never drawn. Bound: 5 standard errors of each frequency
    /// (sqrt(p (1 - p) / draws)) plus 1e-4, so a correct sampler fails it with odds far below one in a million.
    /// </summary>
    [Fact]
    public void Unfiltered_Sampling_FollowsTheSoftmax()
    {
        const int vocab = 200, draws = 60_000;
        const float temperature = 0.7f;
        var rng = new Random(3);
        var logits = new float[vocab];
        for (int i = 0; i < vocab; i++)
        {
            logits[i] = i % 17 == 5 ? float.NegativeInfinity : (float)(rng.NextDouble() * 6 - 3);
        }
        double max = logits.Max();
        double[] e = [.. logits.Select(l => float.IsNegativeInfinity(l) ? 0 : Math.Exp((l - max) / temperature))];
        double z = e.Sum();
        var sampler = new Sampler(vocab, new SamplingOptions { Temperature = temperature, TopK = 0, TopP = 1f, MinP = 0f, Seed = 11 });
        var counts = new int[vocab];
        for (int d = 0; d < draws; d++)
        {
            counts[sampler.Sample(logits, []).Value]++;
        }
        for (int i = 0; i < vocab; i++)
        {
            double p = e[i] / z, f = (double)counts[i] / draws;
            Assert.True(Math.Abs(f - p) <= 5 * Math.Sqrt(p * (1 - p) / draws) + 1e-4, $"token {i}: frequency {f} against probability {p}");
        }
        Assert.Equal(0, counts[5]);
    }

    [Fact]
    public void Greedy_PicksArgmax_TiesToLowestId()
    {
        var s = new Sampler(5, SamplingOptions.Greedy);
        Assert.Equal(3, s.Sample([0.1f, -2f, 0.5f, 4f, 3.9f], []).Value);
        Assert.Equal(1, s.Sample([0f, 2f, 1f, 2f, 2f], []).Value);
        Assert.Equal(0, s.Sample([float.NegativeInfinity, float.NegativeInfinity, float.NegativeInfinity, float.NegativeInfinity, float.NegativeInfinity], []).Value);
    }

    [Fact]
    public void TopK1_EqualsGreedy()
    {
        var rng = new Random(1234);
        var greedy = new Sampler(100, SamplingOptions.Greedy);
        var topk1 = new Sampler(100, NoFilters with { TopK = 1, Temperature = 1.5f });
        for (int trial = 0; trial < 200; trial++)
        {
            float[] logits = [.. Enumerable.Range(0, 100).Select(_ => (float)rng.NextDouble() * 4)];
            Assert.Equal(greedy.Sample(logits, []), topk1.Sample(logits, []));
        }
    }

    [Fact]
    public void TopK_KeepsTheKLargest_InDescendingOrder_TiesById()
    {
        var s = new Sampler(6, NoFilters with { TopK = 3 });
        var c = s.Candidates([1f, 5f, 3f, 5f, -1f, 3f], []);
        Assert.Equal([1, 3, 2], Ids(c));
    }

    /// <summary>
    /// Top-p without top-k finds its nucleus among the tokens above a bisected threshold instead of sorting the whole
    /// vocabulary: the survivors are the first tokens of the order written out here (logit descending, then id) until
    /// their mass, computed here in double, reaches p times the total. Covered: peaked and broad distributions with many
    /// ties and -infinity, and flat ones (more than half the vocabulary: the full-sort fallback).
    /// </summary>
    [Theory]
    [InlineData(0.5f, 3.0)]
    [InlineData(0.95f, 3.0)]
    [InlineData(0.9f, 0.3)]
    [InlineData(0.99f, 0.05)]
    [InlineData(0.9f, 0.0)]
    [InlineData(0.1f, 0.0)]
    public void TopP_Nucleus_EqualsThePrefixOfTheFullOrder(float topP, double spread)
    {
        const int vocab = 1000;
        var logits = TiedLogits(vocab, seed: 21, spread, infinityEvery: 97);
        int[] order = FullOrder(logits);
        double max = logits[order[0]];
        double total = logits.Sum(l => Math.Exp(l - max)), cumulative = 0;
        int n = 0;
        while (n < vocab && cumulative < topP * total)
        {
            cumulative += Math.Exp(logits[order[n++]] - max);
        }
        var s = new Sampler(vocab, NoFilters with { TopP = topP });
        Assert.Equal(order[..n], Ids(s.Candidates(logits, [])));
    }

    /// <summary>
    /// Min-p alone keys and sorts only the tokens above its threshold; they must be the same tokens in the same order as
    /// the full order cut at logit &gt;= max + ln(minP) (written out here with LINQ), on peaked and broad logits with
    /// ties and -infinity, a vocabulary that is not a multiple of 16 (the vector loop's tail), and flat ones (more than
    /// half the vocabulary survives: the full-sort fallback).
    /// </summary>
    [Theory]
    [InlineData(0.05f, 3.0)]
    [InlineData(0.5f, 3.0)]
    [InlineData(0.05f, 0.3)]
    [InlineData(0.9f, 0.05)]
    [InlineData(0.05f, 0.0)]
    [InlineData(1f, 1.0)]
    public void MinP_Alone_EqualsTheCutOfTheFullOrder(float minP, double spread)
    {
        const int vocab = 1009;
        var logits = TiedLogits(vocab, seed: 5, spread, infinityEvery: 89);
        logits[vocab - 1] = logits.Max(); // a survivor in the tail, tied with the maximum
        int[] order = FullOrder(logits);
        float threshold = logits[order[0]] + MathF.Log(minP);
        int[] expected = [.. order.TakeWhile(i => logits[i] >= threshold)];
        var s = new Sampler(vocab, NoFilters with { MinP = minP });
        Assert.Equal(expected, Ids(s.Candidates(logits, [])));
    }

    /// <summary>
    /// Logits on a grid of 41 levels spread * (0, 1/4, .., 10) (so many ties; spread 0: all equal, a flat distribution),
    /// with -infinity at every <paramref name="infinityEvery"/>-th id from 3.
    /// </summary>
    private static float[] TiedLogits(int vocab, int seed, double spread, int infinityEvery)
    {
        var rng = new Random(seed);
        var logits = new float[vocab];
        for (int i = 0; i < vocab; i++)
        {
            logits[i] = i % infinityEvery == 3 ? float.NegativeInfinity : (float)(Math.Round(rng.NextDouble() * 40) * spread / 4);
        }
        return logits;
    }

    /// <summary>Every id in the samplers' order, written out with LINQ: logit descending, then id ascending.</summary>
    private static int[] FullOrder(float[] logits) => [.. Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i)];

    /// <summary>
    /// Top-k selects its k survivors without sorting the whole vocabulary: for many ties, -0 / +0 and -infinity, and k
    /// from 1 to V - 1, the survivors are exactly the first k of the order written out here (logit descending, then id).
    /// </summary>
    [Fact]
    public void TopK_Selection_EqualsThePrefixOfTheFullOrder()
    {
        const int vocab = 300;
        var rng = new Random(8);
        var logits = new float[vocab];
        for (int i = 0; i < vocab; i++)
        {
            logits[i] = (i % 23) switch
            {
                0 => float.NegativeInfinity,
                1 => -0f,
                2 => 0f,
                _ => rng.Next(-6, 7) / 2f, // 13 values: many ties
            };
        }
        int[] order = [.. Enumerable.Range(0, vocab).OrderByDescending(i => logits[i] + 0f).ThenBy(i => i)];
        foreach (int k in new[] { 1, 2, 5, 40, 64, 299 })
        {
            var s = new Sampler(vocab, NoFilters with { TopK = k });
            Assert.Equal(order[..k], Ids(s.Candidates(logits, [])));
        }
    }

    [Fact]
    public void SameSeed_SameTokens_DifferentSeed_DifferentTokens()
    {
        // A flat-ish distribution over 64 tokens.
        float[] logits = [.. Enumerable.Range(0, 64).Select(i => (float)Math.Sin(i) * 0.1f)];
        int[] Draw(ulong seed)
        {
            var s = new Sampler(64, NoFilters with { Seed = seed });
            return [.. Enumerable.Range(0, 50).Select(_ => s.Sample(logits, []).Value)];
        }
        Assert.Equal(Draw(42), Draw(42));
        Assert.NotEqual(Draw(42), Draw(43));
        Assert.True(Draw(42).Distinct().Count() > 20, "a flat distribution should give many different tokens");
    }

    [Fact]
    public void RandomSeed_IsReported_AndReproduces()
    {
        float[] logits = [.. Enumerable.Range(0, 64).Select(i => (float)Math.Cos(i) * 0.1f)];
        var a = new Sampler(64, NoFilters with { Seed = null });
        int[] first = [.. Enumerable.Range(0, 30).Select(_ => a.Sample(logits, []).Value)];
        var b = new Sampler(64, NoFilters with { Seed = a.Seed });
        int[] again = [.. Enumerable.Range(0, 30).Select(_ => b.Sample(logits, []).Value)];
        Assert.Equal(first, again);
    }

    [Fact]
    public void TopP_KeepsSmallestSetReachingP()
    {
        // Probabilities by id: 0.15, 0.5, 0.05, 0.3 -> sorted 0.5 (id 1), 0.3 (id 3), 0.15 (id 0), 0.05 (id 2).
        float[] logits = LogitsOfProbabilities(0.15, 0.5, 0.05, 0.3);
        int[] Kept(float p) => Ids(new Sampler(4, NoFilters with { TopP = p }).Candidates(logits, []));
        Assert.Equal([1], Kept(0.4f));          // 0.5 >= 0.4
        Assert.Equal([1, 3], Kept(0.75f));      // 0.5 < 0.75 <= 0.8
        Assert.Equal([1, 3, 0], Kept(0.9f));    // 0.8 < 0.9 <= 0.95
        Assert.Equal([1, 3, 0, 2], Kept(0.99f));
        Assert.Equal([0, 1, 2, 3], Ids(new Sampler(4, NoFilters).Candidates(logits, []))); // off: all, in id order

        // Survivors are renormalized: 0.5 / 0.8 and 0.3 / 0.8.
        var c = new Sampler(4, NoFilters with { TopP = 0.75f }).Candidates(logits, []);
        Assert.Equal(0.625f, c[0].Probability, ProbabilityTolerance);
        Assert.Equal(0.375f, c[1].Probability, ProbabilityTolerance);
    }

    [Fact]
    public void MinP_DropsTokensBelowMinPTimesMax()
    {
        float[] logits = LogitsOfProbabilities(0.15, 0.5, 0.05, 0.3);
        int[] Kept(float minP) => Ids(new Sampler(4, NoFilters with { MinP = minP }).Candidates(logits, []));
        Assert.Equal([1, 3, 0, 2], Kept(0.05f)); // threshold 0.025: all
        Assert.Equal([1, 3, 0], Kept(0.2f));     // threshold 0.10: drops 0.05
        Assert.Equal([1, 3], Kept(0.5f));        // threshold 0.25: drops 0.15
        Assert.Equal([1], Kept(0.7f));           // threshold 0.35
        Assert.Equal([1], Kept(1f));

        var c = new Sampler(4, NoFilters with { MinP = 0.2f }).Candidates(logits, []);
        Assert.Equal(0.5f / 0.95f, c[0].Probability, ProbabilityTolerance);
        Assert.Equal(0.15f / 0.95f, c[2].Probability, ProbabilityTolerance);
    }

    [Fact]
    public void Filters_RunInLlamaCppOrder_TopKThenTopPThenMinP()
    {
        // Probabilities 0.4, 0.3, 0.2, 0.1. top-k 3 renormalizes to 4/9, 3/9, 2/9 before top-p 0.75:
        // 4/9 + 3/9 = 0.78 >= 0.75 keeps two. Without top-k, 0.4 + 0.3 = 0.7 < 0.75 keeps three.
        float[] logits = LogitsOfProbabilities(0.4, 0.3, 0.2, 0.1);
        Assert.Equal([0, 1], Ids(new Sampler(4, NoFilters with { TopK = 3, TopP = 0.75f }).Candidates(logits, [])));
        Assert.Equal([0, 1, 2], Ids(new Sampler(4, NoFilters with { TopP = 0.75f }).Candidates(logits, [])));
        // min-p runs after top-p: top-p 0.75 keeps three, min-p 0.3 (threshold 0.12) keeps those three.
        // Had min-p run first, top-p would see 4/9, 3/9, 2/9 and keep two.
        Assert.Equal([0, 1, 2], Ids(new Sampler(4, NoFilters with { TopP = 0.75f, MinP = 0.3f }).Candidates(logits, [])));
    }

    [Fact]
    public void Temperature_ScalesLogitsBeforeSoftmax()
    {
        float[] logits = [2f, 1f, 0f];
        var c = new Sampler(3, NoFilters with { Temperature = 0.5f }).Candidates(logits, []);
        double[] e = [Math.Exp(4), Math.Exp(2), Math.Exp(0)];
        double sum = e.Sum();
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(i, c[i].Id.Value);
            Assert.Equal(logits[i] / 0.5f, c[i].Logit);
            Assert.Equal((float)(e[i] / sum), c[i].Probability, ProbabilityTolerance);
        }
    }

    [Fact]
    public void RepetitionPenalty_HandComputed()
    {
        // Window N = 3 of history [0, 1, 1, 3] is [1, 1, 3]: token 1 (-1 -> -2, once), token 3 (2 -> 1);
        // token 0 is outside the window and keeps 3; token 2 was not seen and keeps 0.5.
        var s = new Sampler(4, NoFilters with { RepetitionPenalty = 2f, RepeatLastN = 3 });
        var c = s.Candidates([3f, -1f, 0.5f, 2f], [new(0), new(1), new(1), new(3)]);
        Assert.Equal([3f, -2f, 0.5f, 1f], c.ToArray().Select(x => x.Logit).ToArray());

        // Greedy after the penalty: 3 / 1.5 = 2 < 2.5, so token 1 wins.
        var g = new Sampler(2, SamplingOptions.Greedy with { RepetitionPenalty = 1.5f });
        Assert.Equal(1, g.Sample([3f, 2.5f], [new(0)]).Value);
        Assert.Equal(0, g.Sample([3f, 2.5f], []).Value);
        // RepeatLastN = 0 disables it.
        var off = new Sampler(2, SamplingOptions.Greedy with { RepetitionPenalty = 1.5f, RepeatLastN = 0 });
        Assert.Equal(0, off.Sample([3f, 2.5f], [new(0)]).Value);
    }

    [Fact]
    public void Draws_FollowTheDistribution()
    {
        var s = new Sampler(3, NoFilters with { Seed = 99 });
        float[] logits = LogitsOfProbabilities(0.5, 0.3, 0.2);
        var counts = new int[3];
        const int N = 20_000;
        for (int i = 0; i < N; i++)
        {
            counts[s.Sample(logits, []).Value]++;
        }
        Assert.Equal(0.5, counts[0] / (double)N, FrequencyTolerance);
        Assert.Equal(0.3, counts[1] / (double)N, FrequencyTolerance);
        Assert.Equal(0.2, counts[2] / (double)N, FrequencyTolerance);
    }

    [Fact]
    public void Sample_DoesNotAllocate()
    {
        const int V = 1000;
        var s = new Sampler(V, new SamplingOptions { Temperature = 0.7f, TopK = 50, TopP = 0.9f, MinP = 0.02f, RepetitionPenalty = 1.1f, Seed = 1 });
        float[] logits = [.. Enumerable.Range(0, V).Select(i => (float)Math.Sin(i * 0.37) * 3)];
        TokenId[] history = [.. Enumerable.Range(0, 100).Select(i => new TokenId(i * 7 % V))];
        s.Sample(logits, history); // warm up (JIT, static init)
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 100; i++)
        {
            s.Sample(logits, history);
        }
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void BadInput_IsRejectedClearly()
    {
        var s = new Sampler(3, NoFilters);
        Assert.Contains("expected V = 3", Assert.Throws<ArgumentException>(() => s.Sample([1f, 2f], [])).Message, StringComparison.Ordinal);
        Assert.Contains("token 1 is NaN", Assert.Throws<ArgumentException>(() => s.Sample([1f, float.NaN, 0f], [])).Message, StringComparison.Ordinal);
        var p = new Sampler(3, NoFilters with { RepetitionPenalty = 1.2f });
        Assert.Contains("outside the vocabulary", Assert.Throws<ArgumentException>(() => p.Sample([1f, 2f, 3f], [new(5)])).Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("Temperature", -0.1f)]
    [InlineData("Temperature", float.NaN)]
    [InlineData("TopP", 0f)]
    [InlineData("TopP", 1.5f)]
    [InlineData("MinP", -0.1f)]
    [InlineData("MinP", 1.1f)]
    [InlineData("RepetitionPenalty", 0f)]
    public void Validation_NamesTheField(string field, float value)
    {
        SamplingOptions o = field switch
        {
            "Temperature" => new() { Temperature = value },
            "TopP" => new() { TopP = value },
            "MinP" => new() { MinP = value },
            _ => new() { RepetitionPenalty = value },
        };
        var e = Assert.Throws<ArgumentException>(o.Validate);
        Assert.Contains($"sampling option {field} is", e.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => new Sampler(4, o));
    }

    [Fact]
    public void Validation_IntegersAndStopStrings()
    {
        Assert.Throws<ArgumentException>(new SamplingOptions { TopK = -1 }.Validate);
        Assert.Throws<ArgumentException>(new SamplingOptions { MaxTokens = -1 }.Validate);
        Assert.Throws<ArgumentException>(new SamplingOptions { RepeatLastN = -1 }.Validate);
        Assert.Contains("non-empty", Assert.Throws<ArgumentException>(new SamplingOptions { StopStrings = ["ok", ""] }.Validate).Message, StringComparison.Ordinal);
        Assert.Contains("surrogate", Assert.Throws<ArgumentException>(new SamplingOptions { StopStrings = ["a\uD83D"] }.Validate).Message, StringComparison.Ordinal);
        new SamplingOptions { StopStrings = ["\n\n", "😀"] }.Validate();
        SamplingOptions.Greedy.Validate();
        new SamplingOptions().Validate();
    }

    [Fact]
    public void Xoshiro256StarStar_KnownAnswers()
    {
        // Reference outputs of xoshiro256** for the state {1, 2, 3, 4} (as in the rand_xoshiro crate's tests).
        var rng = new Xoshiro256StarStar(1, 2, 3, 4);
        ulong[] expected = [11520, 0, 1509978240, 1215971899390074240, 1216172134540287360, 607988272756665600,
            16172922978634559625, 8476171486693032832, 10595114339597558777, 2904607092377533576];
        foreach (ulong e in expected)
        {
            Assert.Equal(e, rng.NextUInt64());
        }
        ulong state = 0;
        Assert.Equal(0xE220A8397B1DCDAFUL, Xoshiro256StarStar.SplitMix64(ref state));
        var d = new Xoshiro256StarStar(5);
        for (int i = 0; i < 1000; i++)
        {
            double x = d.NextDouble();
            Assert.InRange(x, 0.0, 0.9999999999999999);
        }
    }
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(255)]
    [InlineData(1000)]
    [InlineData(32000)]
    public void SortKeys_MatchesTheComparisonSort(int n)
    {
        // Keys as the sampler builds them (high half from a logit, low half the ascending id), with many equal
        // logits, both zeros, infinities and values that differ only in their lowest byte, so every radix pass and
        // the skipped-pass path run; the reference is the framework's comparison sort.
        var rng = new Random(n + 1);
        float[] specials = [0f, -0f, float.NegativeInfinity, 1f, 1.0000001f, -3.5f, float.MaxValue, float.Epsilon];
        var keys = new ulong[n];
        for (int i = 0; i < n; i++)
        {
            float logit = rng.Next(4) switch
            {
                0 => specials[rng.Next(specials.Length)],
                1 => rng.Next(-5, 5),
                _ => (float)(rng.NextDouble() * 40 - 20),
            };
            uint bits = BitConverter.SingleToUInt32Bits(logit);
            keys[i] = ((ulong)bits << 32) | (uint)i;
        }
        var expected = keys.ToArray();
        Array.Sort(expected);
        Sampler.SortKeys(keys, new ulong[n]);
        Assert.Equal(expected, keys);

        var same = Enumerable.Range(0, n).Select(i => (0x1234_5678UL << 32) | (uint)i).ToArray(); // every pass skipped
        Sampler.SortKeys(same, new ulong[n]);
        Assert.Equal(Enumerable.Range(0, n).Select(i => (0x1234_5678UL << 32) | (uint)i), same);
    }

    [Fact]
    public void SortedFilters_GiveTheSameDrawsAsTheComparisonSort()
    {
        // Top-k / top-p / min-p candidates of a 32000-token row: ids and probabilities in the order the
        // comparison sort of (descending logit, ascending id) gives, computed independently here.
        const int V = 32000;
        var rng = new Random(5);
        var logits = new float[V];
        for (int i = 0; i < V; i++)
        {
            logits[i] = i % 97 == 0 ? 2.5f : (float)(rng.NextDouble() * 6 - 3); // ties at 2.5 order by id
        }
        var sampler = new Sampler(V, new SamplingOptions { Temperature = 1f, TopK = 0, TopP = 0.5f, MinP = 0f, Seed = 3 });
        var got = Ids(sampler.Candidates(logits, []));
        var order = Enumerable.Range(0, V).OrderByDescending(i => logits[i]).ThenBy(i => i).ToArray();
        Assert.Equal(order.Take(got.Length), got);
        float max = logits[order[0]];
        double total = order.Sum(i => Math.Exp(logits[i] - max)), cumulative = 0;
        int keep = 0;
        while (cumulative < 0.5 * total)
        {
            cumulative += Math.Exp(logits[order[keep++]] - max);
        }
        Assert.Equal(keep, got.Length);
    }
}
