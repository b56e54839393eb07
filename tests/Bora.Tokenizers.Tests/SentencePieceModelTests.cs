using Bora.Formats;

namespace Bora.Tokenizers.Tests;

/// <summary>Reading .model files: the real models' fields, and clear errors for broken files.</summary>
public class SentencePieceModelTests
{
    private static string Tok512 => TestPaths.Shared("models", "stories260K", "tok512.model");

    private static string Mistral(string name) => TestPaths.Shared("tokenizers", "mistral", name);

    private static bool Present(string path)
    {
        if (File.Exists(path))
        {
            return true;
        }
        Console.WriteLine($"skipped: shared test data not found at {path}");
        return false;
    }

    [Fact]
    public void Tok512_fields_are_read()
    {
        if (!Present(Tok512))
        {
            return;
        }
        var m = SentencePieceModel.Load(Tok512);
        Assert.Equal(512, m.Pieces.Count);
        Assert.Equal(SentencePieceModel.ModelTypeBpe, m.ModelType);
        Assert.Equal((0, 1, 2, -1), (m.UnkId, m.BosId, m.EosId, m.PadId));
        Assert.True(m.ByteFallback);
        Assert.Equal("identity", m.NormalizerName);
        Assert.Empty(m.PrecompiledCharsMap);
        Assert.True(m.AddDummyPrefix);
        Assert.True(m.RemoveExtraWhitespaces);
        Assert.True(m.EscapeWhitespaces);
        Assert.False(m.TreatWhitespaceAsSuffix);
        Assert.Equal(new SentencePieceEntry("<unk>", 0, SentencePieceType.Unknown), m.Pieces[0]);
        Assert.Equal(new SentencePieceEntry("<s>", 0, SentencePieceType.Control), m.Pieces[1]);
        Assert.Equal(new SentencePieceEntry("<0x00>", 0, SentencePieceType.Byte), m.Pieces[3]);
        Assert.Equal(256, m.Pieces.Count(p => p.Type == SentencePieceType.Byte));
    }

    [Fact]
    public void Mistral_fields_are_read()
    {
        string v1 = Mistral("tokenizer.model.v1"), v3 = Mistral("mistral_instruct_tokenizer_240323.model.v3"),
            v7 = Mistral("mistral_instruct_tokenizer_241114.model.v7");
        if (!Present(v1) || !Present(v3) || !Present(v7))
        {
            return;
        }
        var m1 = SentencePieceModel.Load(v1);
        Assert.Equal(32000, m1.Pieces.Count);
        Assert.False(m1.RemoveExtraWhitespaces);
        Assert.True(m1.AddDummyPrefix);
        Assert.True(m1.ByteFallback);
        var m3 = SentencePieceModel.Load(v3);
        Assert.Equal(32768, m3.Pieces.Count);
        Assert.Equal("[INST]", m3.Pieces[3].Piece);
        Assert.Equal(SentencePieceType.Control, m3.Pieces[3].Type);
        var t7 = SentencePieceTokenizer.Load(v7);
        Assert.Equal(22, Enumerable.Range(0, t7.VocabSize).Count(i => t7.TypeOf(new TokenId(i)) == SentencePieceType.UserDefined));
        Assert.True(t7.IsControl(t7.IdOf("[SYSTEM_PROMPT]")));
        Assert.Equal(SentencePieceType.UserDefined, t7.TypeOf(t7.IdOf("[REF]")));
    }

    private static ModelFormatException LoadBytes(byte[] data, out string path)
    {
        string dir = TestPaths.NewTempDir("spm-bad");
        path = Path.Combine(dir, "bad.model");
        File.WriteAllBytes(path, data);
        try
        {
            string p = path;
            return Assert.Throws<ModelFormatException>(() => SentencePieceTokenizer.Load(p));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>Every truncation point gives a ModelFormatException naming the file (never a crash or hang).</summary>
    [Fact]
    public void Truncated_files_give_a_clear_error()
    {
        if (!Present(Tok512))
        {
            return;
        }
        byte[] data = File.ReadAllBytes(Tok512);
        string dir = TestPaths.NewTempDir("spm-trunc");
        try
        {
            string path = Path.Combine(dir, "truncated.model");
            var cuts = Enumerable.Range(0, 64).Concat(Enumerable.Range(0, 200).Select(i => 64 + i * ((data.Length - 65) / 200)))
                .Concat(Enumerable.Range(data.Length - 64, 64)).Distinct();
            // Offsets where a top-level field ends: a cut there is a well-formed (smaller) ModelProto.
            var boundaries = new HashSet<int>();
            var reader = new ProtoReader(data, "tok512", "ModelProto");
            while (reader.TryReadTag(out int f, out WireType wt))
            {
                reader.Skip(f, wt);
                boundaries.Add((int)reader.FileOffset);
            }
            int loaded = 0;
            foreach (int cut in cuts)
            {
                File.WriteAllBytes(path, data[..cut]);
                try
                {
                    SentencePieceTokenizer.Load(path);
                    Assert.True(boundaries.Contains(cut), $"a file cut at byte {cut} of {data.Length} loaded without error");
                    loaded++;
                }
                catch (ModelFormatException ex)
                {
                    Assert.Contains(path, ex.Message, StringComparison.Ordinal);
                }
            }
            Assert.True(loaded <= 1, "only the cut just before normalizer_spec (defaults apply) may load");
            // A cut inside a piece says "truncated" or names the length that does not fit.
            File.WriteAllBytes(path, data[..1000]);
            var mid = Assert.Throws<ModelFormatException>(() => SentencePieceTokenizer.Load(path));
            Assert.Matches("truncated|claims", mid.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static byte[] MinimalModel(Action<ProtoWriter>? extraPieces = null, Action<ProtoWriter>? trainer = null, Action<ProtoWriter>? normalizer = null)
    {
        var w = new ProtoWriter();
        w.BytesField(1, ProtoWriter.Piece("<unk>", 0, SentencePieceType.Unknown));
        w.BytesField(1, ProtoWriter.Piece("<s>", 0, SentencePieceType.Control));
        w.BytesField(1, ProtoWriter.Piece("</s>", 0, SentencePieceType.Control));
        w.BytesField(1, ProtoWriter.Piece("\u2581", -1, SentencePieceType.Normal));
        w.BytesField(1, ProtoWriter.Piece("a", -2, SentencePieceType.Normal));
        extraPieces?.Invoke(w);
        var t = new ProtoWriter().VarintField(3, 2);
        trainer?.Invoke(t);
        w.BytesField(2, t.ToArray());
        var n = new ProtoWriter().StringField(1, "identity").VarintField(4, 0);
        normalizer?.Invoke(n);
        w.BytesField(3, n.ToArray());
        return w.ToArray();
    }

    [Fact]
    public void Minimal_hand_built_model_loads_and_encodes()
    {
        string dir = TestPaths.NewTempDir("spm-min");
        try
        {
            string path = Path.Combine(dir, "min.model");
            File.WriteAllBytes(path, MinimalModel(p => p.BytesField(1, ProtoWriter.Piece("\u2581a", -0.5f, SentencePieceType.Normal))));
            var tok = SentencePieceTokenizer.Load(path);
            Assert.Equal([1, 5, 4, 3, 0], tok.Encode("aa b", addBos: true).Select(t => t.Value));
            Assert.Equal("aa \u2047 ", tok.Decode([new(5), new(4), new(0)]));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Piece_over_one_megabyte_is_rejected()
    {
        var ex = LoadBytes(MinimalModel(p => p.BytesField(1, new ProtoWriter().StringField(1, new string('x', (1 << 20) + 1)).ToArray())), out string path);
        Assert.Contains(path, ex.Message, StringComparison.Ordinal);
        Assert.Contains("pieces[5].piece is 1048577 bytes long; at most 1048576", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Length_beyond_the_buffer_is_rejected_without_allocating()
    {
        var w = new ProtoWriter().Tag(1, WireType.LengthDelimited).Varint(1UL << 40).Raw([1, 2, 3]);
        var ex = LoadBytes(w.ToArray(), out string path);
        Assert.Contains(path, ex.Message, StringComparison.Ordinal);
        Assert.Contains("claims 1099511627776 bytes but only 3 remain", ex.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(40, 9, "trainer_spec.unk_id = 9 is out of range")]
    [InlineData(41, 512, "trainer_spec.bos_id = 512 is out of range")]
    [InlineData(42, -7, "trainer_spec.eos_id = -7 is out of range")]
    [InlineData(43, 5, "trainer_spec.pad_id = 5 is out of range")]
    [InlineData(40, 1, "trainer_spec.unk_id = 1 but the UNKNOWN piece is 0")]
    [InlineData(41, -1, "needs both BOS and EOS")]
    [InlineData(3, 1, "model_type = 1 (UNIGRAM) is not supported")]
    [InlineData(3, 4, "model_type = 4 (CHAR) is not supported")]
    public void Bad_trainer_ids_and_types_are_rejected(int field, long value, string expected)
    {
        var ex = LoadBytes(MinimalModel(trainer: t => t.VarintField(field, value)), out string path);
        Assert.Contains(path, ex.Message, StringComparison.Ordinal);
        Assert.Contains(expected, ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Bad_pieces_are_rejected()
    {
        (Action<ProtoWriter> Pieces, Action<ProtoWriter>? Trainer, string Expected)[] cases =
        [
            (p => p.BytesField(1, new ProtoWriter().StringField(1, "b").VarintField(3, 9).ToArray()), null, "pieces[5].type = 9; expected 1 (NORMAL) .. 6 (BYTE)"),
            (p => p.BytesField(1, ProtoWriter.Piece("a", 0, SentencePieceType.Normal)), null, "piece 5 \"a\" is already defined as piece 4"),
            (p => p.BytesField(1, ProtoWriter.Piece("<unk2>", 0, SentencePieceType.Unknown)), null, "second UNKNOWN piece"),
            (p => p.BytesField(1, ProtoWriter.Piece("<0x41>", 0, SentencePieceType.Byte)), null, "byte piece 5 \"<0x41>\" is found although byte_fallback is false"),
            (p => p.BytesField(1, ProtoWriter.Piece("<0x4g>", 0, SentencePieceType.Byte)), t => t.VarintField(35, 1), "byte piece 5 \"<0x4g>\" is invalid"),
            (p => p.BytesField(1, ProtoWriter.Piece("<0x41>", 0, SentencePieceType.Byte)), t => t.VarintField(35, 1), "no byte piece <0x00>"),
            (p => p.BytesField(1, new ProtoWriter().FloatField(2, 1).ToArray()), null, "pieces[5] at byte"),
            (p => p.BytesField(1, new ProtoWriter().BytesField(1, [0xFF, 0xFE]).ToArray()), null, "pieces[5].piece at byte"),
            (p => p.Tag(1, WireType.StartGroup), null, "unsupported wire type 3"),
            (p => p.Tag(1, WireType.Fixed32).Raw([0, 0, 0, 0]), null, "pieces (field 1) has wire type 5; expected 2"),
        ];
        foreach (var (pieces, trainer, expected) in cases)
        {
            var ex = LoadBytes(MinimalModel(pieces, trainer), out string path);
            Assert.Contains(path, ex.Message, StringComparison.Ordinal);
            Assert.Contains(expected, ex.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Unimplemented_normalization_is_rejected()
    {
        var ex = LoadBytes(MinimalModel(normalizer: n => n.StringField(1, "nmt_nfkc").BytesField(2, [1, 2, 3, 4, 5])), out string path);
        Assert.Contains(path, ex.Message, StringComparison.Ordinal);
        Assert.Contains("\"nmt_nfkc\" has a 5-byte precompiled_charsmap; only identity normalization", ex.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Missing_empty_and_garbage_files_are_rejected()
    {
        string missing = Path.Combine(Path.GetTempPath(), "bora-no-such-" + Guid.NewGuid().ToString("N") + ".model");
        var ex = Assert.Throws<ModelFormatException>(() => SentencePieceTokenizer.Load(missing));
        Assert.Contains(missing, ex.Message, StringComparison.Ordinal);
        Assert.Contains("empty", LoadBytes([], out _).Message, StringComparison.Ordinal);
        Assert.Contains("varint longer than 10 bytes", LoadBytes(Enumerable.Repeat((byte)0xFF, 32).ToArray(), out _).Message, StringComparison.Ordinal);
        Assert.Contains("invalid field number 0", LoadBytes([0x00, 0x01], out _).Message, StringComparison.Ordinal);
        Assert.Contains("has no pieces", LoadBytes(new ProtoWriter().VarintField(99, 1).ToArray(), out _).Message, StringComparison.Ordinal);
    }
}
