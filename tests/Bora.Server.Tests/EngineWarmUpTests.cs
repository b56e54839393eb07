using Bora.Generation;
using Bora.Model;
using Bora.Serving;
using Bora.Tokenizers;

namespace Bora.Server.Tests;

/// <summary><see cref="InferenceEngine.WarmUp"/>: throwaway generations that leave no trace in what requests get.</summary>
public class EngineWarmUpTests
{
    [Fact]
    public async Task Warm_up_runs_rounds_leaves_the_engine_idle_and_changes_no_request_s_tokens()
    {
        if (Setup() is not var (tok, config))
        {
            return;
        }
        // Blocks of 4 positions: the warm-up's 8-token prompt fills two, so they do enter the prefix cache, and the
        // request below starts with the same tokens to hit them.
        var options = new EngineOptions { BlockSize = 4 };
        using var cold = new InferenceEngine(RandomModels.Build(config, seed: 5), tok, options);
        using var warm = new InferenceEngine(RandomModels.Build(config, seed: 5), tok, options);

        int rounds = warm.WarmUp(TimeSpan.FromMilliseconds(300));
        Assert.InRange(rounds, 1, InferenceEngine.MaxWarmUpRounds);
        Assert.Equal(0, warm.PeakBatchSequences);

        TokenId[] prompt = [tok.Bos, .. Enumerable.Range(1, 7).Select(i => new TokenId(tok.Bos.Value + i)), .. tok.Encode("the end", addBos: false)];
        var sampling = new SamplingOptions { Temperature = 1, Seed = 11, MaxTokens = 12 };
        var expected = await Tokens(cold.Submit(prompt, sampling));
        var actual = await Tokens(warm.Submit(prompt, sampling));
        Assert.Equal(expected, actual);
        Assert.Equal(12, actual.Count);
        Assert.True(warm.PrefixCachedTokens >= 8, $"the request reused {warm.PrefixCachedTokens} warm-up prompt positions; expected 8");
        Assert.Equal(1, warm.PeakBatchSequences);
    }

    [Fact]
    public async Task Warm_up_fits_a_short_context_and_stops_quietly_when_the_pool_cannot_hold_it()
    {
        if (Setup() is not var (tok, config))
        {
            return;
        }
        // A 6-position context: 3 prompt + 3 generated positions per warm-up sequence.
        using (var shortContext = new InferenceEngine(RandomModels.Build(config, seed: 5), tok, new EngineOptions { ContextLength = 6, BlockSize = 2 }))
        {
            Assert.InRange(shortContext.WarmUp(TimeSpan.FromMilliseconds(50)), 1, InferenceEngine.MaxWarmUpRounds);
        }
        // A pool of 4 positions cannot hold 8 + 8: the engine refuses the warm-up sequences, WarmUp returns 0, and a
        // request that fits is served.
        using var tiny = new InferenceEngine(RandomModels.Build(config, seed: 5), tok, new EngineOptions { BlockSize = 2, KvCacheTokens = 4 });
        Assert.Equal(0, tiny.WarmUp(TimeSpan.FromMilliseconds(50)));
        var ids = await Tokens(tiny.Submit([tok.Bos], new SamplingOptions { Temperature = 0, MaxTokens = 3 }));
        Assert.InRange(ids.Count, 1, 3);
    }

    /// <summary>Mistral's v3 tokenizer and a small random dense config over its vocabulary; null without the shared test data.</summary>
    private static (ITokenizer Tokenizer, ModelConfig Config)? Setup()
    {
        string path = RandomV3Server.TokenizerPath;
        if (!File.Exists(path))
        {
            return null;
        }
        var tok = SentencePieceTokenizer.Load(path);
        return (tok, RandomModels.Dense() with { VocabSize = tok.VocabSize });
    }

    private static async Task<List<int>> Tokens(GenerationHandle h)
    {
        var ids = new List<int>();
        await foreach (var d in h.Deltas.ReadAllAsync())
        {
            if (d.Token is { } t)
            {
                ids.Add(t.Value);
            }
        }
        await h.Completion;
        return ids;
    }
}
