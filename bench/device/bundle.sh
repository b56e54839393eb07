#!/usr/bin/env bash
# Packs what the device check (run.sh) needs into one archive for the device tool's `carry` (64 MiB at most): the .NET
# runtime (the lent machine has no .NET), Bora.Model.Tests with Bora.DeviceRunner beside it, Bora.Bench with
# LLamaSharp's linux-x64 AVX2 / AVX-512 builds only, and Mistral's tokenizer.model.v1 (which `Bora.Bench synthesize`
# reads from ../shared/testdata). Usage, from the repository root: bash bench/device/bundle.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
archive=$root/bench/Bora.Bench/bin/devbundle.tar.xz
tokenizer=$root/../shared/testdata/tokenizers/mistral/tokenizer.model.v1
[ -f "$tokenizer" ] || { echo "bundle.sh: $tokenizer not found (../shared beside the repository)" >&2; exit 1; }
dotnet build "$root/Bora.sln" -c Release --nologo -v q
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
# The runtime this machine runs the builds with: the newest Microsoft.NETCore.App and Microsoft.AspNetCore.App.
dotnet_root=$(dirname "$(readlink -f "$(command -v dotnet)")")
mkdir -p "$stage/dotnet/shared"
cp "$dotnet_root/dotnet" "$stage/dotnet/"
cp -r "$dotnet_root/host" "$stage/dotnet/"
for fw in Microsoft.NETCore.App Microsoft.AspNetCore.App; do
    version=$(ls "$dotnet_root/shared/$fw" | sort -V | tail -1)
    mkdir -p "$stage/dotnet/shared/$fw"
    cp -r "$dotnet_root/shared/$fw/$version" "$stage/dotnet/shared/$fw/"
done
copy_build() { # $1: build output folder, $2: destination; without symbols, docs and other platforms' native builds
    mkdir -p "$2"
    (cd "$1" && tar cf - --exclude=./runtimes --exclude='*.pdb' --exclude='*.xml' .) | tar xf - -C "$2"
}
copy_build "$root/tests/Bora.Model.Tests/bin/Release/net10.0" "$stage/tests"
cp "$root/bench/Bora.DeviceRunner/bin/Release/net10.0/Bora.DeviceRunner.dll" \
   "$root/bench/Bora.DeviceRunner/bin/Release/net10.0/Bora.DeviceRunner.runtimeconfig.json" "$stage/tests/"
bench=$root/bench/Bora.Bench/bin/Release/net10.0
copy_build "$bench" "$stage/bench"
mkdir -p "$stage/bench/runtimes/linux-x64/native"
cp -r "$bench/runtimes/linux-x64/native/avx2" "$bench/runtimes/linux-x64/native/avx512" "$stage/bench/runtimes/linux-x64/native/"
cp "$tokenizer" "$stage/"
(cd "$stage" && tar cf - .) | xz -T2 -6 > "$archive.tmp"
mv "$archive.tmp" "$archive"
bytes=$(stat -c %s "$archive")
echo "bundle.sh: $archive, $((bytes / 1048576)) MiB"
[ "$bytes" -le $((64 * 1048576)) ] || { echo "bundle.sh: over the 64 MiB that carry takes" >&2; exit 1; }
