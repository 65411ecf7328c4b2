#!/usr/bin/env bash
# Builds bpf/flowmeter_tc.bpf.c as it was at git revision REV (with that
# revision's headers) into OUT/flowmeter_tc-REV.bpf.o, with the flags
# Sources/BPFEmbed uses, for `flowmeter-bench tc --baseline`: the old and the
# current program then run interleaved in one benchmark run.
#   bash bench/tc_baseline.sh REV [OUT]      # prints the object's path
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rev="${1:?usage: bench/tc_baseline.sh REV [OUT]}"
out="${2:-$root/out/bench}"
mkdir -p "$out"
. "$root/bench/bpf_clang.sh" bench/tc_baseline.sh
sha=$(git -C "$root" rev-parse --short "$rev^{commit}")
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
git -C "$root" archive "$sha" bpf Sources/FlowmeterABI/include | tar -x -C "$src"
obj="$out/flowmeter_tc-$sha.bpf.o"
"$clang" -target bpf -O2 -g -mcpu=v3 -D__TARGET_ARCH_x86 \
    -I "$src/bpf/include" -I "$src/bpf" -I "$src/Sources/FlowmeterABI/include" \
    -c "$src/bpf/flowmeter_tc.bpf.c" -o "$obj"
echo "$obj"
