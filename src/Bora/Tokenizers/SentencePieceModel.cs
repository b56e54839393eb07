using System.Text;
using Bora.Formats;

namespace Bora.Tokenizers;

/// <summary>
/// The type of a vocabulary entry, numbered as in SentencePiece's <c>ModelProto.SentencePiece.Type</c>
/// and in GGUF's <c>tokenizer.ggml.token_type</c> (the two use the same numbers).
/// </summary>
public enum SentencePieceType
{
    /// <summary>An ordinary piece produced by BPE merges.</summary>
    Normal = 1,

    /// <summary>The unknown piece (&lt;unk&gt;); exactly one per vocabulary.</summary>
    Unknown = 2,

    /// <summary>A control token (&lt;s&gt;, &lt;/s&gt;, [INST], ...): never produced by encoding text, invisible when decoding.</summary>
    Control = 3,

    /// <summary>A user-defined piece: always matched as a whole symbol, never split or merged.</summary>
    UserDefined = 4,

    /// <summary>A piece that may be formed by merges but is then split back into its two parts.</summary>
    Unused = 5,

    /// <summary>A byte-fallback piece &lt;0xXX&gt; for one UTF-8 byte.</summary>
    Byte = 6,
}

/// <summary>One vocabulary entry of a SentencePiece model.</summary>
/// <param name="Piece">The piece text (U+2581 stands for a space).</param>
/// <param name="Score">Merge priority for BPE: the adjacent pair whose merged piece scores highest merges first.</param>
/// <param name="Type">The entry's type.</param>
public readonly record struct SentencePieceEntry(string Piece, float Score, SentencePieceType Type);

/// <summary>
/// The contents of a SentencePiece <c>.model</c> file (a serialized <c>ModelProto</c> protocol buffer),
/// reduced to the fields that affect encoding and decoding. Reading validates the wire format and the
/// sizes before allocating; any problem is a <see cref="ModelFormatException"/> that names the file.
/// </summary>
/// <remarks>
/// Field numbers read (from sentencepiece_model.proto): ModelProto { 1 pieces, 2 trainer_spec,
/// 3 normalizer_spec, 5 denormalizer_spec }; SentencePiece { 1 piece, 2 score, 3 type };
/// TrainerSpec { 3 model_type, 24 treat_whitespace_as_suffix, 35 byte_fallback, 40 unk_id, 41 bos_id,
/// 42 eos_id, 43 pad_id, 44 unk_surface }; NormalizerSpec { 1 name, 2 precompiled_charsmap,
/// 3 add_dummy_prefix, 4 remove_extra_whitespaces, 5 escape_whitespaces }. Other fields (training
/// options) are skipped. Absent fields take the proto2 defaults of that file.
/// </remarks>
public sealed class SentencePieceModel
{
    /// <summary>The largest piece accepted (real pieces are a few bytes; this bounds corrupt files).</summary>
    public const int MaxPieceBytes = 1 << 20;

    /// <summary>The largest .model file accepted (Mistral's are about 0.6 MB).</summary>
    public const long MaxFileBytes = 256L << 20;

    /// <summary>TrainerSpec.ModelType values.</summary>
    public const int ModelTypeUnigram = 1, ModelTypeBpe = 2, ModelTypeWord = 3, ModelTypeChar = 4;

    /// <summary>The file (or other source name) the model was read from, used in error messages.</summary>
    public required string Source { get; init; }

    /// <summary>The vocabulary; the index is the token id.</summary>
    public required IReadOnlyList<SentencePieceEntry> Pieces { get; init; }

    /// <summary>TrainerSpec.model_type: 1 unigram (the proto default), 2 BPE, 3 word, 4 char.</summary>
    public int ModelType { get; init; } = ModelTypeUnigram;

    /// <summary>TrainerSpec.unk_id (default 0).</summary>
    public int UnkId { get; init; }

    /// <summary>TrainerSpec.bos_id (default 1; -1 = none).</summary>
    public int BosId { get; init; } = 1;

    /// <summary>TrainerSpec.eos_id (default 2; -1 = none).</summary>
    public int EosId { get; init; } = 2;

    /// <summary>TrainerSpec.pad_id (default -1 = none).</summary>
    public int PadId { get; init; } = -1;

    /// <summary>TrainerSpec.byte_fallback: unknown characters become &lt;0xXX&gt; byte pieces.</summary>
    public bool ByteFallback { get; init; }

    /// <summary>TrainerSpec.treat_whitespace_as_suffix: the dummy space goes at the end instead of the start.</summary>
    public bool TreatWhitespaceAsSuffix { get; init; }

    /// <summary>TrainerSpec.unk_surface as stored, or null when absent (decoding then uses " \u2047 ").</summary>
    public string? UnkSurface { get; init; }

    /// <summary>NormalizerSpec.name (informational: "identity", "nmt_nfkc", ...).</summary>
    public string NormalizerName { get; init; } = "";

    /// <summary>NormalizerSpec.precompiled_charsmap: empty for identity normalization.</summary>
    public byte[] PrecompiledCharsMap { get; init; } = [];

    /// <summary>NormalizerSpec.add_dummy_prefix (default true): a space is prepended before encoding.</summary>
    public bool AddDummyPrefix { get; init; } = true;

    /// <summary>NormalizerSpec.remove_extra_whitespaces (default true): leading, trailing and repeated spaces are dropped.</summary>
    public bool RemoveExtraWhitespaces { get; init; } = true;

    /// <summary>NormalizerSpec.escape_whitespaces (default true): spaces become U+2581.</summary>
    public bool EscapeWhitespaces { get; init; } = true;

    /// <summary>Size of denormalizer_spec.precompiled_charsmap (0 when there is no denormalizer).</summary>
    public int DenormalizerCharsMapBytes { get; init; }

    /// <summary>Reads and validates a SentencePiece .model file.</summary>
    public static SentencePieceModel Load(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var info = new FileInfo(path);
        if (!info.Exists)
        {
            throw ModelFormatException.In(path, "file not found (expected a SentencePiece .model file)");
        }
        if (info.Length > MaxFileBytes)
        {
            throw ModelFormatException.In(path, $"file is {info.Length} bytes; a SentencePiece model of at most {MaxFileBytes} bytes expected");
        }
        return Parse(File.ReadAllBytes(path), path);
    }

    /// <summary>Parses a serialized ModelProto; <paramref name="source"/> names it in error messages.</summary>
    public static SentencePieceModel Parse(ReadOnlySpan<byte> data, string source)
    {
        if (data.Length == 0)
        {
            throw ModelFormatException.In(source, "file is empty (expected a SentencePiece ModelProto)");
        }

        var pieces = new List<SentencePieceEntry>();
        var top = new ProtoReader(data, source, "ModelProto");
        TrainerFields trainer = new();
        NormalizerFields normalizer = new();
        int denormalizerBytes = 0;
        while (top.TryReadTag(out int field, out WireType wt))
        {
            switch (field)
            {
                case 1:
                    {
                        top.Expect(field, wt, WireType.LengthDelimited, "pieces");
                        var body = top.ReadBytes($"pieces[{pieces.Count}]", int.MaxValue, out long off);
                        pieces.Add(ReadPiece(body, source, pieces.Count, off));
                        break;
                    }
                case 2:
                    {
                        top.Expect(field, wt, WireType.LengthDelimited, "trainer_spec");
                        var body = top.ReadBytes("trainer_spec", int.MaxValue, out long off);
                        ReadTrainer(new ProtoReader(body, source, "trainer_spec", off), ref trainer, source);
                        break;
                    }
                case 3:
                    {
                        top.Expect(field, wt, WireType.LengthDelimited, "normalizer_spec");
                        var body = top.ReadBytes("normalizer_spec", int.MaxValue, out long off);
                        ReadNormalizer(new ProtoReader(body, source, "normalizer_spec", off), ref normalizer);
                        break;
                    }
                case 5:
                    {
                        top.Expect(field, wt, WireType.LengthDelimited, "denormalizer_spec");
                        var body = top.ReadBytes("denormalizer_spec", int.MaxValue, out long off);
                        NormalizerFields denorm = new();
                        ReadNormalizer(new ProtoReader(body, source, "denormalizer_spec", off), ref denorm);
                        denormalizerBytes = denorm.CharsMap?.Length ?? 0;
                        break;
                    }
                default:
                    top.Skip(field, wt);
                    break;
            }
        }

        if (pieces.Count == 0)
        {
            throw ModelFormatException.In(source, "ModelProto has no pieces (expected a vocabulary)");
        }
        CheckId(source, "trainer_spec.unk_id", trainer.UnkId, pieces.Count, allowNone: false);
        CheckId(source, "trainer_spec.bos_id", trainer.BosId, pieces.Count, allowNone: true);
        CheckId(source, "trainer_spec.eos_id", trainer.EosId, pieces.Count, allowNone: true);
        CheckId(source, "trainer_spec.pad_id", trainer.PadId, pieces.Count, allowNone: true);

        return new SentencePieceModel
        {
            Source = source,
            Pieces = pieces,
            ModelType = trainer.ModelType,
            UnkId = trainer.UnkId,
            BosId = trainer.BosId,
            EosId = trainer.EosId,
            PadId = trainer.PadId,
            ByteFallback = trainer.ByteFallback,
            TreatWhitespaceAsSuffix = trainer.TreatWhitespaceAsSuffix,
            UnkSurface = trainer.UnkSurface,
            NormalizerName = normalizer.Name ?? "",
            PrecompiledCharsMap = normalizer.CharsMap ?? [],
            AddDummyPrefix = normalizer.AddDummyPrefix,
            RemoveExtraWhitespaces = normalizer.RemoveExtraWhitespaces,
            EscapeWhitespaces = normalizer.EscapeWhitespaces,
            DenormalizerCharsMapBytes = denormalizerBytes,
        };
    }

    private static void CheckId(string source, string name, int id, int count, bool allowNone)
    {
        if (allowNone && id == -1)
        {
            return;
        }
        if (id < 0 || id >= count)
        {
            throw ModelFormatException.In(source, $"{name} = {id} is out of range; expected {(allowNone ? "-1 (none) or " : "")}0..{count - 1} for a vocabulary of {count} pieces");
        }
    }

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    private static string ReadString(ReadOnlySpan<byte> bytes, string source, string fieldName, long offset)
    {
        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            throw ModelFormatException.In(source, $"{fieldName} at byte {offset} is not valid UTF-8");
        }
    }

    private static SentencePieceEntry ReadPiece(ReadOnlySpan<byte> body, string source, int index, long offset)
    {
        string context = $"pieces[{index}]";
        var r = new ProtoReader(body, source, context, offset);
        string? piece = null;
        float score = 0;
        int type = (int)SentencePieceType.Normal;
        while (r.TryReadTag(out int field, out WireType wt))
        {
            switch (field)
            {
                case 1:
                    r.Expect(field, wt, WireType.LengthDelimited, "piece");
                    var bytes = r.ReadBytes($"{context}.piece", MaxPieceBytes, out long off);
                    piece = ReadString(bytes, source, $"{context}.piece", off);
                    break;
                case 2:
                    r.Expect(field, wt, WireType.Fixed32, "score");
                    score = r.ReadFloat();
                    break;
                case 3:
                    long at = r.FileOffset;
                    type = r.Int32Field(field, wt, "type");
                    if (type is < 1 or > 6)
                    {
                        throw r.Error(at, $"{context}.type = {type}; expected 1 (NORMAL) .. 6 (BYTE)");
                    }
                    break;
                default:
                    r.Skip(field, wt);
                    break;
            }
        }
        if (string.IsNullOrEmpty(piece))
        {
            throw ModelFormatException.In(source, $"{context} at byte {offset} has an empty piece string (SentencePiece requires a non-empty piece)");
        }
        return new SentencePieceEntry(piece, score, (SentencePieceType)type);
    }

    private struct TrainerFields()
    {
        public int ModelType = ModelTypeUnigram;
        public int UnkId;
        public int BosId = 1;
        public int EosId = 2;
        public int PadId = -1;
        public bool ByteFallback;
        public bool TreatWhitespaceAsSuffix;
        public string? UnkSurface;
    }

    private static void ReadTrainer(ProtoReader r, ref TrainerFields t, string source)
    {
        while (r.TryReadTag(out int field, out WireType wt))
        {
            switch (field)
            {
                case 3:
                    t.ModelType = r.Int32Field(field, wt, "model_type");
                    break;
                case 24:
                    t.TreatWhitespaceAsSuffix = r.BoolField(field, wt, "treat_whitespace_as_suffix");
                    break;
                case 35:
                    t.ByteFallback = r.BoolField(field, wt, "byte_fallback");
                    break;
                case 40:
                    t.UnkId = r.Int32Field(field, wt, "unk_id");
                    break;
                case 41:
                    t.BosId = r.Int32Field(field, wt, "bos_id");
                    break;
                case 42:
                    t.EosId = r.Int32Field(field, wt, "eos_id");
                    break;
                case 43:
                    t.PadId = r.Int32Field(field, wt, "pad_id");
                    break;
                case 44:
                    r.Expect(field, wt, WireType.LengthDelimited, "unk_surface");
                    var bytes = r.ReadBytes("trainer_spec.unk_surface", MaxPieceBytes, out long off);
                    t.UnkSurface = ReadString(bytes, source, "trainer_spec.unk_surface", off);
                    break;
                default:
                    r.Skip(field, wt);
                    break;
            }
        }
    }

    private struct NormalizerFields()
    {
        public string? Name;
        public byte[]? CharsMap;
        public bool AddDummyPrefix = true;
        public bool RemoveExtraWhitespaces = true;
        public bool EscapeWhitespaces = true;
    }

    private static void ReadNormalizer(ProtoReader r, ref NormalizerFields n)
    {
        while (r.TryReadTag(out int field, out WireType wt))
        {
            switch (field)
            {
                case 1:
                    r.Expect(field, wt, WireType.LengthDelimited, "name");
                    var name = r.ReadBytes("normalizer_spec.name", 4096, out _);
                    n.Name = Encoding.UTF8.GetString(name);
                    break;
                case 2:
                    r.Expect(field, wt, WireType.LengthDelimited, "precompiled_charsmap");
                    n.CharsMap = r.ReadBytes("normalizer_spec.precompiled_charsmap", int.MaxValue, out _).ToArray();
                    break;
                case 3:
                    n.AddDummyPrefix = r.BoolField(field, wt, "add_dummy_prefix");
                    break;
                case 4:
                    n.RemoveExtraWhitespaces = r.BoolField(field, wt, "remove_extra_whitespaces");
                    break;
                case 5:
                    n.EscapeWhitespaces = r.BoolField(field, wt, "escape_whitespaces");
                    break;
                default:
                    r.Skip(field, wt);
                    break;
            }
        }
    }
}
