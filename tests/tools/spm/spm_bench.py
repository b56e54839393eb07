#!/usr/bin/python3
"""Encode-throughput benchmark of Google's SentencePiece for bench/Bora.TokenizerBench.

Usage: /usr/bin/python3 spm_bench.py MODEL TEXT_FILE RUNS

Encodes every line of the file (split on "\\n", no BOS/EOS), one sp.encode call per line on one thread,
once untimed (warm-up) and then RUNS times, timing only the encode loop (start-up and model loading
excluded). Prints one JSON object: {"sentencepiece": version, "seconds": [...], "tokens": ids of one pass}.
"""
import json
import sys
import time


def main():
    try:
        import sentencepiece as spm
    except ImportError:
        sys.stderr.write("python module 'sentencepiece' is missing for %s: "
                         "run `apt-get install -y python3-sentencepiece`\n" % sys.executable)
        return 3
    if len(sys.argv) != 4:
        sys.stderr.write(__doc__)
        return 2
    model, path, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with open(path, "r", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    sp = spm.SentencePieceProcessor(model_file=model)
    encode = sp.encode

    def one_pass():
        return sum(len(encode(line)) for line in lines)

    tokens = one_pass()
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        n = one_pass()
        seconds.append(time.perf_counter() - t0)
        if n != tokens:
            raise RuntimeError("token count changed between runs: %d then %d" % (tokens, n))
    json.dump({"sentencepiece": getattr(spm, "__version__", "?"), "seconds": seconds, "tokens": tokens}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
