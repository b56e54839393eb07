using Bora.Model;
using Bora.Serving;
using Bora.Tokenizers;

namespace Bora.Server.Tests;

/// <summary>The engine's KV pool takes the model's KV type: --kv-cache-mib holds twice the blocks at F16.</summary>
public class EngineKvTypeTests
{
    [Fact]
    public void An_F16_pool_holds_twice_the_blocks_of_an_F32_pool_in_the_same_MiB()
    {
        string path = RandomV3Server.TokenizerPath;
        if (!File.Exists(path))
        {
            return;
        }
        var tok = SentencePieceTokenizer.Load(path);
        // 32 layers of 2 x 12 values: 2 * 32 * 16 * 24 * 4 = 98304 bytes per F32 block of 16 positions, 49152 at F16.
        var config = RandomModels.Dense() with { VocabSize = tok.VocabSize, NLayers = 32 };
        var options = new EngineOptions { KvCacheMiB = 3 };
        using var f16 = new InferenceEngine(RandomModels.Build(config, seed: 5, KvCacheType.F16), tok, options);
        using var f32 = new InferenceEngine(RandomModels.Build(config, seed: 5, KvCacheType.F32), tok, options);
        Assert.Equal(KvCacheType.F16, f16.KvType);
        Assert.Equal(KvCacheType.F32, f32.KvType);
        Assert.Equal(3 * 1024 * 1024 / 98304, f32.KvBlockCount);
        Assert.Equal(2 * f32.KvBlockCount, f16.KvBlockCount);
    }
}
