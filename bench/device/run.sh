#!/usr/bin/env bash
# The device check, run on the lent machine from the repository root with bundle.sh's archive carried along:
#   run(command="bash bench/device/run.sh", carry=["bench/Bora.Bench/bin/devbundle.tar.xz"], timeout_s=590)
# 1. the kernel tests (Category=Kernels: every SIMD kernel against its scalar twin, the AVX-512 and generated VNNI ones
#    included where the CPU has them) through Bora.DeviceRunner; 2. for each of ROWS (SHAPE/LAYERS/TYPE, default
#    "mistral-7b/32/q4_0 mistral-7b/32/q4_k_m mistral-7b/32/q8_0"; issue 4's table adds mixtral-8x7b/4/q4_0), a
#    random-weight GGUF of that shape and `Bora.Bench model --compare-llama-cpp` on it: 2 threads, prompt 512, 128 decode
#    steps, REPEATS runs (default 1). Outputs go to $OUT (the tool brings them back). Each step has a time
#    limit (TEST_S, MODEL_S seconds) so that what finished still comes back; a 7B row takes 3-4 minutes per repeat.
set -u
bundle=/tmp/bora-device
mkdir -p "$bundle" && tar xJf bench/Bora.Bench/bin/devbundle.tar.xz -C "$bundle" || { echo "run.sh: no bundle (bash bench/device/bundle.sh, then carry it)"; exit 1; }
export DOTNET_ROOT=$bundle/dotnet PATH=$bundle/dotnet:$PATH DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
out=${OUT:-/tmp/bora-device-out}
mkdir -p "$out" ../shared/testdata/tokenizers/mistral
cp "$bundle/tokenizer.model.v1" ../shared/testdata/tokenizers/mistral/
lscpu > "$out/lscpu.txt"
if [ "${TEST_S:-200}" -gt 0 ]; then
    (cd "$bundle/tests" && timeout "${TEST_S:-200}" dotnet Bora.DeviceRunner.dll Bora.Model.Tests.dll "${TRAIT:-Category=Kernels}") > "$out/kernels.txt" 2>&1
    echo "kernel tests: rc $?, $(tail -1 "$out/kernels.txt")"
    grep FAIL "$out/kernels.txt" | head -20
fi
for row in ${ROWS:-mistral-7b/32/q4_0 mistral-7b/32/q4_k_m mistral-7b/32/q8_0}; do
    IFS=/ read -r shape layers type <<<"$row"
    start=$(date +%s)
    name=$shape-${layers}L-$type
    model=/tmp/bora-device-$name.gguf
    timeout 150 dotnet "$bundle/bench/Bora.Bench.dll" synthesize --synthesize "$shape" --layers "$layers" --type "$type" \
        --out "$model" > "$out/synth-$name.txt" 2>&1
    timeout "${MODEL_S:-400}" dotnet "$bundle/bench/Bora.Bench.dll" model --model "$model" --threads 2 --prompt-tokens 512 \
        --gen-tokens 128 --repeats "${REPEATS:-1}" --compare-llama-cpp > "$out/model-$name.txt" 2>&1
    echo "$name: rc $?, $(( $(date +%s) - start )) s"
    tail -6 "$out/model-$name.txt"
    rm -f "$model"
done
