#!/usr/bin/env bash
# Where the tc program's time goes (docs/benchmarks.md): perf samples
# (cpu-clock: this VM kind has no hardware counters) of the existing-flow
# packet in a BPF_PROG_TEST_RUN loop (bench/tc_loop.c), split by kernel
# symbol and, inside the JIT-compiled program, by instruction. Samples on the
# two instructions after a call are the cost of returning from it (a return is
# dearer under the SRSO "safe RET" mitigation); they are listed per callee.
# Root. OBJ: an object of bpf/flowmeter_tc.bpf.c (bench/tc_baseline.sh REV
# builds one of any revision; `bench/tc_baseline.sh HEAD` the committed one).
#   bash bench/tc_profile.sh OBJ [SECONDS] [v4|v6]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
obj="${1:?usage: bench/tc_profile.sh OBJ [SECONDS] [v4|v6]}"
secs="${2:-10}" case="${3:-v4}"
out="$root/out/bench"
mkdir -p "$out"
"${CC:-cc}" -O2 -Wall -Werror "$root/bench/tc_loop.c" -o "$out/tc_loop" -lbpf
echo 1 >/proc/sys/net/core/bpf_jit_kallsyms
perf record -q -e cpu-clock -F 10000 -g -o "$out/tc_profile.data" -- \
    "$out/tc_loop" "$obj" "$secs" "$case" "$out/tc_profile.jit" | tee "$out/tc_profile.txt"
median=$(sed -n 's/.*median \([0-9]*\) ns per run.*/\1/p' "$out/tc_profile.txt" | tail -1)
perf script -i "$out/tc_profile.data" -F ip,sym,symoff 2>/dev/null >"$out/tc_profile.samples"
objdump -D -b binary -m i386:x86-64 --no-show-raw-insn "$out/tc_profile.jit" >"$out/tc_profile.jit.s"
python3 - "$out" "$median" <<'PY'
import collections, re, sys
out, median = sys.argv[1], float(sys.argv[2])
# One sample = its stack, leaf first; keep those taken inside the test run loop.
samples, stack = [], []
for line in open(f"{out}/tc_profile.samples"):
    line = line.strip()
    if not line:
        if stack and any("bpf_test_run" in s for _, s in stack):
            samples.append(stack)
        stack = []
        continue
    ip, _, sym = line.partition(" ")
    stack.append((int(ip, 16), sym))
leaf = collections.Counter(re.sub(r"\+0x[0-9a-f]+$", "", s[0][1]) for s in samples)
total = len(samples)
prog = next((k for k in leaf if k.startswith("bpf_prog_") and k.endswith("_flowmeter_ingress")), None)
print(f"\n{total} samples in the test-run loop; {median:.0f} ns per run (median of the batches)")
print(f"{'symbol':58} {'share':>6} {'ns/run':>7}")
for sym, n in leaf.most_common(16):
    print(f"{sym:58} {100*n/total:5.1f}% {median*n/total:7.1f}")
if not prog:
    sys.exit(0)
# The program's own samples by instruction offset, and its start address.
offs, start = collections.Counter(), None
for s in samples:
    ip, sym = s[0]
    if sym.startswith(prog + "+0x"):
        off = int(sym.rsplit("+0x", 1)[1], 16)
        offs[off] += 1
        start = ip - off
kallsyms = []
for line in open("/proc/kallsyms"):
    a, _, name = line.split()[:3]
    kallsyms.append((int(a, 16), name))
kallsyms.sort()
import bisect
def name_of(addr):
    i = bisect.bisect_right(kallsyms, (addr, "\xff")) - 1
    return kallsyms[i][1] if i >= 0 else hex(addr)
insns = []
for line in open(f"{out}/tc_profile.jit.s"):
    m = re.match(r"\s*([0-9a-f]+):\s+(.*)", line)
    if m:
        insns.append((int(m.group(1), 16), m.group(2).strip()))
after_call = collections.Counter()
attributed = 0
for i, (off, text) in enumerate(insns):
    m = re.match(r"call\s+0x([0-9a-f]+)", text)
    if not m or start is None:
        continue
    callee = name_of((start + int(m.group(1), 16)) & (2**64 - 1))
    for j in (1, 2):
        if i + j < len(insns):
            after_call[callee] += offs.get(insns[i + j][0], 0)
            attributed += offs.get(insns[i + j][0], 0)
body = sum(offs.values())
print(f"\ninside {prog}: {body} samples ({median*body/total:.1f} ns/run); on the two instructions after a call:")
for callee, n in after_call.most_common():
    print(f"  after call {callee:44} {100*n/total:5.1f}% {median*n/total:7.1f}")
rest = body - attributed
print(f"  {'the rest of the program (parsing, key, updates)':55} {100*rest/total:5.1f}% {median*rest/total:7.1f}")
PY
