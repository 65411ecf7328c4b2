#!/usr/bin/env bash
# The kernel's own cost of a new flow, apart from the tc program: builds
# bench/htab_insert.bpf.c and bench/htab_insert.c and runs them against an
# object of bpf/flowmeter_tc.bpf.c (default: the committed one, built by
# bench/tc_baseline.sh HEAD). Root. docs/benchmarks.md, "Where a new flow's
# time goes".
# OLD_TC_OBJ: another build's object, run in the same rounds (its rows say OLD).
#   bash bench/htab_insert.sh [TC_OBJ] [ROUNDS] [PER] [OLD_TC_OBJ]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/out/bench"
mkdir -p "$out"
tc_obj="${1:-}"
[ -n "$tc_obj" ] || tc_obj=$(bash "$root/bench/tc_baseline.sh" HEAD "$out")
clang="${FLOWMETER_BPF_CLANG:-}"
if [ -z "$clang" ]; then
    for c in /opt/swift/usr/bin/clang clang clang-16 clang-15 clang-14; do
        if command -v "$c" >/dev/null; then clang="$c"; break; fi
    done
fi
[ -n "$clang" ] || { echo "bench/htab_insert.sh: no clang for -target bpf (set FLOWMETER_BPF_CLANG)" >&2; exit 1; }
"$clang" -target bpf -O2 -g -mcpu=v3 -D__TARGET_ARCH_x86 -Wall -Werror -Wno-unused-function \
    -I "$root/bpf/include" -I "$root/bpf" -I "$root/Sources/FlowmeterABI/include" \
    -c "$root/bench/htab_insert.bpf.c" -o "$out/htab_insert.bpf.o"
"${CC:-cc}" -O2 -Wall -Werror "$root/bench/htab_insert.c" -o "$out/htab_insert" -lbpf
if [ "$(sysctl -n kernel.bpf_stats_enabled)" != 0 ]; then
    echo "bench/htab_insert.sh: kernel.bpf_stats_enabled is on (it adds two clock reads to every run): turn it off" >&2
    exit 1
fi
"$out/htab_insert" "$out/htab_insert.bpf.o" "$tc_obj" "${2:-15}" "${3:-200}" ${4:+"$4"}
