#!/usr/bin/env bash
# Issue 4's benchmark table, Bora beside llama.cpp (LLamaSharp) on the same random-weight GGUF, same threads, in one
# process per row, the two engines alternating run by run (bench/Bora.Bench `model --compare-llama-cpp`).
#
#   bench/table.sh                      # every row of the issue's table
#   bench/table.sh "q4_0 2" "q8_0 2"    # chosen rows: "TYPE THREADS [SHAPE LAYERS]"
#
# Environment: LAYERS (default 32, Mistral 7B's), PROMPT (512), GEN (128), REPEATS (3), DIR (/tmp/bora-table, where the
# synthesized files go; a file already there is reused), KEEP=1 keeps the files afterwards (default: each is deleted
# after its last row, they are 4-15 GB). Prints one markdown row per line as it goes, then the whole table. "decode GB/s" is the weight bytes a decode step reads times tok/s, beside the machine's read bandwidth at those threads (bench model's probe).
set -euo pipefail
cd "$(dirname "$0")/.."

LAYERS=${LAYERS:-32}
PROMPT=${PROMPT:-512}
GEN=${GEN:-128}
REPEATS=${REPEATS:-3}
DIR=${DIR:-/tmp/bora-table}
mkdir -p "$DIR"

if [ $# -eq 0 ]; then
    set -- "q4_0 1" "q4_0 2" "q4_k_m 2" "q8_0 1" "q8_0 2" "f16 2" "q4_0 2 mixtral-8x7b 4"
fi

dotnet build bench/Bora.Bench -c Release -v q -nologo >/dev/null
bench="dotnet bench/Bora.Bench/bin/Release/net10.0/Bora.Bench.dll"

rows=("$@")
table="| shape | format | threads | Bora prefill tok/s | llama.cpp prefill tok/s | ratio | Bora decode tok/s | llama.cpp decode tok/s | ratio | decode GB/s Bora / llama.cpp / machine | Bora peak RSS / (file + KV) |"
table+=$'\n'"|---|---|---|---|---|---|---|---|---|---|---|"
echo "$table"
for i in "${!rows[@]}"; do
    read -r type threads shape layers <<<"${rows[$i]}"
    shape=${shape:-mistral-7b}
    layers=${layers:-$LAYERS}
    file="$DIR/$shape-${layers}L-$type.gguf"
    if [ ! -f "$file" ]; then
        $bench synthesize --synthesize "$shape" --layers "$layers" --type "$type" --out "$file" >&2
    fi
    # Bora alone first for its memory figure (the compare run's peak includes llama.cpp's own mapping and buffers).
    mem=$($bench model --model "$file" --threads "$threads" --prompt-tokens 16 --gen-tokens 4 --repeats 1 --json 2>/dev/null | tail -1)
    json=$($bench model --model "$file" --threads "$threads" --prompt-tokens "$PROMPT" --gen-tokens "$GEN" \
        --repeats "$REPEATS" --compare-llama-cpp --json 2>/dev/null | tail -1)
    row=$(jq -rn --argjson r "$json" --argjson m "$mem" --arg shape "$shape ${layers}L" --arg type "$type" --arg threads "$threads" \
        '"| \($shape) | \($type) | \($threads) | \($r.bora.prefill_tok_s*100|round/100) | \($r.llama_cpp.prefill_tok_s*100|round/100) | \($r.ratio.prefill*100|round/100)x | \($r.bora.decode_tok_s*100|round/100) | \($r.llama_cpp.decode_tok_s*100|round/100) | \($r.ratio.decode*100|round/100)x | \($r.decode_read.bora_gb_s*10|round/10) / \($r.decode_read.llama_cpp_gb_s*10|round/10) / \($r.decode_read.machine_read_gb_s*10|round/10) | \(($m.memory.peak_rss_bytes / ($m.memory.file_bytes + $m.memory.kv_cache_bytes))*1000|round/10) % |"')
    echo "$row"
    table+=$'\n'"$row"
    # Delete the file once no later row uses it.
    used_later=0
    for j in "${rows[@]:$((i + 1))}"; do
        read -r t2 _ s2 l2 <<<"$j"
        if [ "$DIR/${s2:-mistral-7b}-${l2:-$LAYERS}L-$t2.gguf" = "$file" ]; then used_later=1; fi
    done
    if [ "${KEEP:-0}" != 1 ] && [ $used_later = 0 ]; then rm -f "$file"; fi
done
echo
echo "prompt $PROMPT tokens, $GEN decode steps, median of $REPEATS, $(nproc) processors, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$table"
