using System.Text;
using Bora.Numerics;
using Bora.Tokenizers;

namespace Bora.Model.Tests;

/// <summary>
/// A real trained GQA model: Karpathy's stories260K in llama2.c's legacy .bin format, read here by a
/// few lines of test code. Greedy decoding from BOS must print the text llama2.c's run.c prints.
/// </summary>
public class Stories260KTests
{
    private static string Dir => TestPaths.Shared("models", "stories260K");

    /// <summary>
    /// llama2.c legacy checkpoint: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size
    /// (negative = separate classifier), seq_len), then float32 arrays token_embedding (V, D),
    /// rms_att (L, D), wq (L, Hq*Dh, D), wk (L, Hkv*Dh, D), wv (L, Hkv*Dh, D), wo (L, D, Hq*Dh),
    /// rms_ffn (L, D), w1 (L, F, D), w2 (L, D, F), w3 (L, F, D), rms_final (D), two RoPE tables, [wcls].
    /// </summary>
    private static TransformerWeights LoadLlama2c(string path)
    {
        using var r = new BinaryReader(File.OpenRead(path));
        int d = r.ReadInt32(), f = r.ReadInt32(), layers = r.ReadInt32(), hq = r.ReadInt32(), hkv = r.ReadInt32(), v = r.ReadInt32(), seq = r.ReadInt32();
        bool shared = v > 0;
        v = Math.Abs(v);
        int dh = d / hq;
        float[] Read(int n)
        {
            var bytes = r.ReadBytes(n * 4);
            Assert.Equal(n * 4, bytes.Length);
            var a = new float[n];
            Buffer.BlockCopy(bytes, 0, a, 0, bytes.Length);
            return a;
        }
        F32Matrix[] Mats(int rows, int cols) => [.. Enumerable.Range(0, layers).Select(_ => new F32Matrix(Read(rows * cols), rows, cols))];
        float[][] Vecs(int n) => [.. Enumerable.Range(0, layers).Select(_ => Read(n))];
        var emb = new F32Matrix(Read(v * d), v, d);
        var att = Vecs(d);
        var wq = Mats(hq * dh, d);
        var wk = Mats(hkv * dh, d);
        var wv = Mats(hkv * dh, d);
        var wo = Mats(d, hq * dh);
        var ffn = Vecs(d);
        var w1 = Mats(f, d);
        var w2 = Mats(d, f);
        var w3 = Mats(f, d);
        var final = Read(d);
        Read(seq * dh / 2 * 2);
        var output = shared ? emb : new F32Matrix(Read(v * d), v, d);
        Assert.Equal(r.BaseStream.Length, r.BaseStream.Position);
        return new TransformerWeights
        {
            Config = new ModelConfig
            {
                Dim = d,
                NLayers = layers,
                NHeads = hq,
                NKvHeads = hkv,
                HeadDim = dh,
                HiddenDim = f,
                VocabSize = v,
                NormEps = 1e-5f,
                RopeTheta = 10000f,
                MaxSeqLen = seq,
                TiedEmbeddings = shared,
            },
            TokenEmbedding = emb,
            Layers = [.. Enumerable.Range(0, layers).Select(i => new LayerWeights
            {
                AttentionNorm = att[i], Wq = wq[i], Wk = wk[i], Wv = wv[i], Wo = wo[i], FfnNorm = ffn[i],
                FeedForward = new FeedForwardWeights { W1 = w1[i], W2 = w2[i], W3 = w3[i] },
            })],
            FinalNorm = final,
            Output = output,
        };
    }

    /// <summary>llama2.c tokenizer .bin: int32 max_len, then per token float32 score, int32 length, bytes.</summary>
    private static byte[][] LoadPieces(string path, int vocab)
    {
        using var r = new BinaryReader(File.OpenRead(path));
        r.ReadInt32();
        var pieces = new byte[vocab][];
        for (int i = 0; i < vocab; i++)
        {
            r.ReadSingle();
            pieces[i] = r.ReadBytes(r.ReadInt32());
        }
        return pieces;
    }

    /// <summary>run.c's decode: strip the leading space after BOS; "&lt;0xHH&gt;" pieces are raw bytes.</summary>
    private static byte[] Decode(byte[][] pieces, int prev, int token)
    {
        var piece = pieces[token];
        if (prev == 1 && piece.Length > 0 && piece[0] == (byte)' ')
        {
            piece = piece[1..];
        }
        var text = Encoding.ASCII.GetString(piece);
        if (text.Length == 6 && text.StartsWith("<0x", StringComparison.Ordinal) && text.EndsWith('>'))
        {
            return [Convert.ToByte(text[3..5], 16)];
        }
        return piece;
    }

    [Fact]
    public void Greedy_generation_from_bos_matches_llama2c_run_c()
    {
        if (!Directory.Exists(Dir))
        {
            Console.WriteLine($"skipped: {Dir} is absent");
            return;
        }
        var weights = LoadLlama2c(Path.Combine(Dir, "stories260K.bin"));
        Assert.Equal((64, 5, 8, 4, 172, 512), (weights.Config.Dim, weights.Config.NLayers, weights.Config.NHeads, weights.Config.NKvHeads, weights.Config.HiddenDim, weights.Config.VocabSize));
        var pieces = LoadPieces(Path.Combine(Dir, "tok512.bin"), weights.Config.VocabSize);
        var model = new Transformer(weights);

        // run.c: steps = 256 positions, stop when the next token is BOS.
        const int Steps = 256;
        var cache = model.CreateCache(Steps);
        var logits = new float[weights.Config.VocabSize];
        var output = new List<byte>();
        int token = 1;
        for (int pos = 0; pos < Steps; pos++)
        {
            model.Forward([new TokenId(token)], cache, logits);
            int next = Array.IndexOf(logits, logits.Max());
            if (next == 1)
            {
                break;
            }
            output.AddRange(Decode(pieces, token, next));
            token = next;
        }
        string expected = File.ReadAllText(Path.Combine(Dir, "runc-greedy-from-bos.txt")).TrimEnd();
        Assert.Equal(expected, Encoding.UTF8.GetString([.. output]).TrimEnd());
    }
}
