using System.Text;

namespace Bora.Tokenizers.Tests;

/// <summary>Writes protocol-buffer wire format, for building test models.</summary>
internal sealed class ProtoWriter
{
    private readonly MemoryStream _ms = new();

    public byte[] ToArray() => _ms.ToArray();

    public ProtoWriter Varint(ulong v)
    {
        while (v >= 0x80)
        {
            _ms.WriteByte((byte)(v | 0x80));
            v >>= 7;
        }
        _ms.WriteByte((byte)v);
        return this;
    }

    public ProtoWriter Tag(int field, WireType wt) => Varint(((ulong)field << 3) | (ulong)wt);

    public ProtoWriter VarintField(int field, long v) => Tag(field, WireType.Varint).Varint(unchecked((ulong)v));

    public ProtoWriter FloatField(int field, float v)
    {
        Tag(field, WireType.Fixed32);
        Span<byte> b = stackalloc byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteSingleLittleEndian(b, v);
        _ms.Write(b);
        return this;
    }

    public ProtoWriter BytesField(int field, ReadOnlySpan<byte> bytes)
    {
        Tag(field, WireType.LengthDelimited).Varint((ulong)bytes.Length);
        _ms.Write(bytes);
        return this;
    }

    public ProtoWriter StringField(int field, string s) => BytesField(field, Encoding.UTF8.GetBytes(s));

    public ProtoWriter Raw(ReadOnlySpan<byte> bytes)
    {
        _ms.Write(bytes);
        return this;
    }

    /// <summary>Serializes one ModelProto.SentencePiece.</summary>
    public static byte[] Piece(string piece, float score, SentencePieceType type) =>
        new ProtoWriter().StringField(1, piece).FloatField(2, score).VarintField(3, (int)type).ToArray();
}

/// <summary>Rewrites a .model file: pieces, and varint fields of trainer_spec / normalizer_spec.</summary>
internal static class ModelEdit
{
    /// <param name="data">The original ModelProto.</param>
    /// <param name="piece">Maps (id, entry) to a new entry, or null to drop the piece.</param>
    /// <param name="trainerVarints">trainer_spec varint fields to set (field number -> value).</param>
    /// <param name="normalizerVarints">normalizer_spec varint fields to set.</param>
    public static byte[] Rewrite(
        byte[] data,
        Func<int, SentencePieceEntry, SentencePieceEntry?>? piece = null,
        Dictionary<int, long>? trainerVarints = null,
        Dictionary<int, long>? normalizerVarints = null)
    {
        var model = SentencePieceModel.Parse(data, "original");
        var w = new ProtoWriter();
        int index = 0;
        var r = new ProtoReader(data, "original", "ModelProto");
        while (r.TryReadTag(out int field, out WireType wt))
        {
            if (field == 1)
            {
                r.ReadBytes("piece", int.MaxValue, out _);
                var e = piece is null ? model.Pieces[index] : piece(index, model.Pieces[index]);
                index++;
                if (e is { } entry)
                {
                    w.BytesField(1, ProtoWriter.Piece(entry.Piece, entry.Score, entry.Type));
                }
            }
            else if (field is 2 or 3 && wt == WireType.LengthDelimited)
            {
                var body = r.ReadBytes("spec", int.MaxValue, out _);
                var overrides = field == 2 ? trainerVarints : normalizerVarints;
                w.BytesField(field, RewriteVarints(body.ToArray(), overrides ?? []));
            }
            else
            {
                throw new InvalidOperationException($"unexpected field {field} in test model");
            }
        }
        return w.ToArray();
    }

    private static byte[] RewriteVarints(byte[] body, Dictionary<int, long> overrides)
    {
        var w = new ProtoWriter();
        var r = new ProtoReader(body, "spec", "spec");
        while (r.TryReadTag(out int field, out WireType wt))
        {
            switch (wt)
            {
                case WireType.Varint:
                    ulong v = r.ReadVarint();
                    if (!overrides.ContainsKey(field))
                    {
                        w.VarintField(field, (long)v);
                    }
                    break;
                case WireType.Fixed32:
                    w.FloatField(field, r.ReadFloat());
                    break;
                case WireType.LengthDelimited:
                    w.BytesField(field, r.ReadBytes("f", int.MaxValue, out _));
                    break;
                default:
                    throw new InvalidOperationException($"unexpected wire type {wt}");
            }
        }
        foreach (var (field, value) in overrides)
        {
            w.VarintField(field, value);
        }
        return w.ToArray();
    }
}
