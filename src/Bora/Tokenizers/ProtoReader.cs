using Bora.Formats;

namespace Bora.Tokenizers;

/// <summary>Protocol-buffer wire types (https://protobuf.dev/programming-guides/encoding/).</summary>
internal enum WireType
{
    Varint = 0,
    Fixed64 = 1,
    LengthDelimited = 2,
    StartGroup = 3,
    EndGroup = 4,
    Fixed32 = 5,
}

/// <summary>
/// A minimal, bounds-checked reader of the protocol-buffer wire format: a message is a sequence of
/// (tag, value) records where tag = (field_number &lt;&lt; 3) | wire_type. Every read validates the
/// remaining length first, so a truncated or corrupt buffer gives a <see cref="ModelFormatException"/>
/// that names the file, the message being read and the byte offset — never an out-of-range access or
/// an allocation sized by untrusted data.
/// </summary>
/// <remarks>
/// Worked example: the bytes <c>0A 03 61 62 63</c> are tag 0x0A = field 1, wire type 2 (length-delimited),
/// then a varint length 3, then the payload "abc". The bytes <c>15 00 00 80 3F</c> are tag 0x15 = field 2,
/// wire type 5 (fixed32), little-endian float 1.0.
/// </remarks>
internal ref struct ProtoReader
{
    private readonly ReadOnlySpan<byte> _data;
    private readonly string _source;
    private readonly string _context;
    private readonly long _baseOffset;
    private int _pos;

    /// <param name="data">The message bytes.</param>
    /// <param name="source">The file name, for error messages.</param>
    /// <param name="context">The message being read, e.g. "ModelProto.pieces[3]", for error messages.</param>
    /// <param name="baseOffset">Offset of <paramref name="data"/> in the file, for error messages.</param>
    public ProtoReader(ReadOnlySpan<byte> data, string source, string context, long baseOffset = 0)
    {
        _data = data;
        _source = source;
        _context = context;
        _baseOffset = baseOffset;
        _pos = 0;
    }

    /// <summary>True when the whole message has been read.</summary>
    public readonly bool AtEnd => _pos >= _data.Length;

    /// <summary>Offset of the next byte in the file.</summary>
    public readonly long FileOffset => _baseOffset + _pos;

    /// <summary>Reads the next tag; false at the end of the message.</summary>
    public bool TryReadTag(out int field, out WireType wireType)
    {
        field = 0;
        wireType = WireType.Varint;
        if (AtEnd)
        {
            return false;
        }
        long at = FileOffset;
        ulong tag = ReadVarint();
        ulong number = tag >> 3;
        if (number == 0 || number > 536_870_911)
        {
            throw Error(at, $"invalid field number {number} (expected 1..536870911); the data is corrupt or not a SentencePiece model");
        }
        field = (int)number;
        wireType = (WireType)(tag & 7);
        if (wireType is WireType.StartGroup or WireType.EndGroup || (int)wireType > 5)
        {
            throw Error(at, $"field {field} has unsupported wire type {(int)wireType} (expected 0, 1, 2 or 5)");
        }
        return true;
    }

    /// <summary>Reads a base-128 varint of at most 10 bytes.</summary>
    public ulong ReadVarint()
    {
        long at = FileOffset;
        ulong result = 0;
        for (int shift = 0; shift < 70; shift += 7)
        {
            if (_pos >= _data.Length)
            {
                throw Error(at, "truncated varint (the message ends in the middle of a number)");
            }
            byte b = _data[_pos++];
            result |= (ulong)(b & 0x7F) << shift;
            if (b < 0x80)
            {
                return result;
            }
        }
        throw Error(at, "varint longer than 10 bytes");
    }

    /// <summary>Reads an int32 varint field value (negative values are sign-extended 10-byte varints).</summary>
    public int ReadInt32(string fieldName)
    {
        long at = FileOffset;
        long v = unchecked((long)ReadVarint());
        if (v is < int.MinValue or > int.MaxValue)
        {
            throw Error(at, $"{fieldName} = {v} does not fit in int32");
        }
        return (int)v;
    }

    /// <summary>Reads a bool varint field value.</summary>
    public bool ReadBool() => ReadVarint() != 0;

    /// <summary>Reads a little-endian fixed32 value as a float.</summary>
    public float ReadFloat()
    {
        long at = FileOffset;
        if (_data.Length - _pos < 4)
        {
            throw Error(at, "truncated fixed32 value");
        }
        float v = System.Buffers.Binary.BinaryPrimitives.ReadSingleLittleEndian(_data.Slice(_pos, 4));
        _pos += 4;
        return v;
    }

    /// <summary>
    /// Reads a length-delimited payload of at most <paramref name="maxLength"/> bytes;
    /// <paramref name="payloadOffset"/> receives its offset in the file.
    /// </summary>
    public ReadOnlySpan<byte> ReadBytes(string fieldName, int maxLength, out long payloadOffset)
    {
        long at = FileOffset;
        ulong length = ReadVarint();
        long remaining = _data.Length - _pos;
        if (length > (ulong)remaining)
        {
            throw Error(at, $"{fieldName} claims {length} bytes but only {remaining} remain in {_context} (truncated or corrupt file)");
        }
        if (length > (ulong)maxLength)
        {
            throw Error(at, $"{fieldName} is {length} bytes long; at most {maxLength} bytes expected");
        }
        payloadOffset = FileOffset;
        var slice = _data.Slice(_pos, (int)length);
        _pos += (int)length;
        return slice;
    }

    /// <summary>Skips a field value of an unknown or unused field.</summary>
    public void Skip(int field, WireType wireType)
    {
        long at = FileOffset;
        switch (wireType)
        {
            case WireType.Varint:
                ReadVarint();
                break;
            case WireType.Fixed64:
                if (_data.Length - _pos < 8)
                {
                    throw Error(at, $"truncated fixed64 value of field {field}");
                }
                _pos += 8;
                break;
            case WireType.Fixed32:
                if (_data.Length - _pos < 4)
                {
                    throw Error(at, $"truncated fixed32 value of field {field}");
                }
                _pos += 4;
                break;
            case WireType.LengthDelimited:
                ReadBytes($"field {field}", int.MaxValue, out _);
                break;
            default:
                throw Error(at, $"field {field} has unsupported wire type {(int)wireType}");
        }
    }

    /// <summary>Checks that a field has the expected wire type.</summary>
    public readonly void Expect(int field, WireType actual, WireType expected, string fieldName)
    {
        if (actual != expected)
        {
            throw Error(FileOffset, $"{fieldName} (field {field}) has wire type {(int)actual}; expected {(int)expected}");
        }
    }

    /// <summary>
    /// Reads an int32 varint field after checking its wire type; a value that does not fit names it
    /// "{context}.{fieldName}" (e.g. "trainer_spec.unk_id").
    /// </summary>
    public int Int32Field(int field, WireType wireType, string fieldName)
    {
        Expect(field, wireType, WireType.Varint, fieldName);
        return ReadInt32($"{_context}.{fieldName}");
    }

    /// <summary>Reads a bool varint field after checking its wire type.</summary>
    public bool BoolField(int field, WireType wireType, string fieldName)
    {
        Expect(field, wireType, WireType.Varint, fieldName);
        return ReadBool();
    }

    /// <summary>An error at a file offset, naming the file and the message being read.</summary>
    public readonly ModelFormatException Error(long fileOffset, string problem) =>
        ModelFormatException.In(_source, $"{_context} at byte {fileOffset}: {problem}");
}
