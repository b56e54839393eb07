#!/usr/bin/env bash
# Re-runs the quantized-kernel tests with narrower instruction sets switched off, so each ISA path is also the
# process's best one (QuantDot.Best, printed by BestIsaIsSupportedAndScalarAlwaysIs). Usage, from the repo root:
#   tests/Bora.Model.Tests/QuantKernels/run-isa-matrix.sh [-c Release]
# Note: on .NET 10 the AVX-512 switch is DOTNET_EnableAVX512; DOTNET_EnableAVX512F is accepted but ignored
# (it is kept here because the issue names it).
set -euo pipefail
cd "$(dirname "$0")/../../.."
dotnet build tests/Bora.Model.Tests "$@" >/dev/null
for setting in "" DOTNET_EnableAVX512F=0 DOTNET_EnableAVX512=0 DOTNET_EnableAVX2=0 DOTNET_EnableHWIntrinsic=0; do
    echo "== ${setting:-default}"
    env ${setting} dotnet test tests/Bora.Model.Tests --no-build "$@" --filter "FullyQualifiedName~QuantKernels" \
        --logger "console;verbosity=normal" | grep -E "QuantDot.Best|Total tests|Passed:|Failed:|\[FAIL\]" || { echo "FAILED with ${setting}"; exit 1; }
done
