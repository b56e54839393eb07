#!/usr/bin/python3
"""Oracle for Bora's SentencePiece tests: runs Google's official SentencePiece on a batch.

Usage: /usr/bin/python3 spm_oracle.py MODEL REQUEST.json

REQUEST.json is {"encode": [text, ...], "decode": [[id, ...], ...]} (either key may be absent).
Prints one JSON object on stdout:
  {"sentencepiece": version,
   "encode": [{"ids": [...], "text": decode(ids)}, ...],   # ids without BOS/EOS
   "decode": [text, ...]}
Lone UTF-16 surrogates (written as \\uD800-style escapes by the C# tests, whose strings may hold them)
cannot be converted to UTF-8; each is replaced by U+FFFD first, as .NET's Encoding.UTF8 and Bora do.
Exits with status 3 and a message on stderr when the sentencepiece module is missing.
"""
import json
import re
import sys

LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def main():
    try:
        import sentencepiece as spm
    except ImportError:
        sys.stderr.write("python module 'sentencepiece' is missing for %s: "
                         "run `apt-get install -y python3-sentencepiece`\n" % sys.executable)
        return 3
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    model, request_path = sys.argv[1], sys.argv[2]
    with open(request_path, "r", encoding="utf-8") as f:
        request = json.load(f)
    sp = spm.SentencePieceProcessor(model_file=model)
    out = {"sentencepiece": getattr(spm, "__version__", "?"), "encode": [], "decode": []}
    for text in request.get("encode", []):
        # json.load joins escaped surrogate pairs into one character, so only lone ones are left here.
        ids = sp.encode(LONE_SURROGATE.sub("\ufffd", text))
        out["encode"].append({"ids": ids, "text": sp.decode(ids)})
    for ids in request.get("decode", []):
        out["decode"].append(sp.decode(ids))
    json.dump(out, sys.stdout, ensure_ascii=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
