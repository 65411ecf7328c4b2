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
clang="${FLOWMETER_BPF_CLANG:-}"
if [ -z "$clang" ]; then
    for c in /opt/swift/usr/bin/clang clang clang-16 clang-15 clang-14; do
        if command -v "$c" >/dev/null; then clang="$c"; break; fi
    done
fi
[ -n "$clang" ] || { echo "bench/tc_baseline.sh: no clang for -target bpf (set FLOWMETER_BPF_CLANG)" >&2; exit 1; }
sha=$(git -C "$root" rev-parse --short "$rev^{commit}")
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
git -C "$root" archive "$sha" bpf Sources/FlowmeterABI/include | tar -x -C "$src"
obj="$out/flowmeter_tc-$sha.bpf.o"
"$clang" -target bpf -O2 -g -mcpu=v3 -D__TARGET_ARCH_x86 \
    -I "$src/bpf/include" -I "$src/bpf" -I "$src/Sources/FlowmeterABI/include" \
    -c "$src/bpf/flowmeter_tc.bpf.c" -o "$obj"
echo "$obj"
