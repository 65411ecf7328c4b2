#!/usr/bin/env bash
# The kernel's own cost of a new flow, apart from the tc program: builds
# bench/htab_insert.bpf.c and bench/htab_insert.c and runs them against an
# object of bpf/flowmeter_tc.bpf.c (default: the committed one, built by
# bench/tc_baseline.sh HEAD). Root. docs/benchmarks.md, "Where a new flow's
# time goes".
# OLD_TC_OBJ: another build's object, run in the same rounds (its rows say OLD).
# RUNS (default 1) runs in fresh processes, the two objects' load order
# alternating (the first-loaded object's table measured dearer whichever build
# it was), then the median per program over the runs of ns over its empty one.
#   bash bench/htab_insert.sh [TC_OBJ] [ROUNDS] [PER] [OLD_TC_OBJ] [RUNS]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/out/bench"
mkdir -p "$out"
tc_obj="${1:-}"
[ -n "$tc_obj" ] || tc_obj=$(bash "$root/bench/tc_baseline.sh" HEAD "$out")
. "$root/bench/bpf_clang.sh" bench/htab_insert.sh
"$clang" -target bpf -O2 -g -mcpu=v3 -D__TARGET_ARCH_x86 -Wall -Werror -Wno-unused-function \
    -I "$root/bpf/include" -I "$root/bpf" -I "$root/Sources/FlowmeterABI/include" \
    -c "$root/bench/htab_insert.bpf.c" -o "$out/htab_insert.bpf.o"
"${CC:-cc}" -O2 -Wall -Werror "$root/bench/htab_insert.c" -o "$out/htab_insert" -lbpf
if [ "$(sysctl -n kernel.bpf_stats_enabled)" != 0 ]; then
    echo "bench/htab_insert.sh: kernel.bpf_stats_enabled is on (it adds two clock reads to every run): turn it off" >&2
    exit 1
fi
old="${4:-}" runs="${5:-1}"
if [ -z "$old" ] || [ "$runs" -le 1 ]; then
    exec "$out/htab_insert" "$out/htab_insert.bpf.o" "$tc_obj" "${2:-15}" "${3:-200}" ${old:+"$old"}
fi
for i in $(seq "$runs"); do
    if [ $((i % 2)) = 1 ]; then
        "$out/htab_insert" "$out/htab_insert.bpf.o" "$tc_obj" "${2:-15}" "${3:-200}" "$old"
    else
        # The same programs with the objects loaded the other way round: swap the row labels back.
        "$out/htab_insert" "$out/htab_insert.bpf.o" "$old" "${2:-15}" "${3:-200}" "$tc_obj" |
            sed -e 's/^flowmeter_tc: new/SWAP new/' -e 's/^OLD flowmeter_tc: new/flowmeter_tc: new/' \
                -e 's/^SWAP new/OLD flowmeter_tc: new/'
    fi
done | tee "$out/htab_insert.runs.txt"
python3 - "$out/htab_insert.runs.txt" "$runs" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"(.+?)\s+(\d+) ns\s+(\d+) ns\s+[\d.]+x$", line.rstrip())
    if m:
        rows.setdefault(m.group(1), []).append(float(m.group(3)))
print(f"\nmedian of {sys.argv[2]} runs, ns over the empty program (min..max):")
for name, xs in rows.items():
    print(f"{name:46} {statistics.median(xs):6.1f} ({min(xs):.0f}..{max(xs):.0f})")
PY
