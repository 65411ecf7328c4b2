#!/usr/bin/env python3
"""Where each BPF program's time goes, from a system-wide perf profile.

Reads `perf script` output of `perf record -a -g` (taken with
/proc/sys/net/core/bpf_jit_kallsyms=1, so JITed programs have symbols
bpf_prog_<tag>_<name>) and, for every sample whose call chain passes through
a BPF program, counts the leaf function under the program that owns it:
the program's own instructions, or the helper or kernel function it was in
(bpf_ringbuf_submit -> irq_work_queue -> native_write_msr, a map update,
copy_from_kernel_nofault of a probe read ...). With --chain it prints the
whole chain from the leaf up to the program instead of the leaf alone.

Used for docs/benchmarks.md, "Where a connection's BPF time goes":
  sysctl -w net.core.bpf_jit_kallsyms=1
  tools/bench churn --churn-seconds 20 &   # or tools/bench_e2e.py churn ...
  sleep 16; perf record -a -g -o churn.data -- sleep 8
  perf script -i churn.data | tools/bpf_perf_attribution.py [--chain] [--top N]
No root needed to read the script output; it only parses text.
"""
import argparse
import collections
import re
import sys

PROG = re.compile(r"bpf_prog_[0-9a-f]+_(\w+)")
OFFSET = re.compile(r"\+0x[0-9a-f]+$")


def frame_symbol(line: str) -> str:
    # A frame line is "<address> <symbol>+0x<off> (<dso>)".
    parts = line.split()
    sym = parts[1] if len(parts) > 1 else parts[0]
    return OFFSET.sub("", sym)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chain", action="store_true", help="count whole chains from the leaf to the program")
    ap.add_argument("--top", type=int, default=12, help="entries per program (default 12)")
    args = ap.parse_args()

    by_prog = collections.defaultdict(collections.Counter)
    total = 0
    stack: list[str] = []

    def flush() -> None:
        nonlocal total, stack
        if stack:
            total += 1
            for i, frame in enumerate(stack):
                m = PROG.search(frame)
                if m:
                    syms = [frame_symbol(f) for f in stack[: i + 1]]
                    key = " <- ".join(syms) if args.chain else syms[0]
                    # Tags differ between loads; the name is what the docs use.
                    key = PROG.sub(lambda mm: mm.group(1), key)
                    by_prog[m.group(1)][key] += 1
                    break
        stack = []

    for raw in sys.stdin:
        line = raw.rstrip("\n")
        if not line.strip():
            flush()
        elif line[0] in " \t":
            stack.append(line.strip())
        else:
            flush()
    flush()
    if total == 0:
        print("no samples in the input (expected `perf script` output of perf record -g)", file=sys.stderr)
        return 1
    print(f"{total} samples")
    for prog, counts in sorted(by_prog.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(counts.values())
        print(f"{prog}: {n} samples, {100 * n / total:.2f}% of all")
        for key, k in counts.most_common(args.top):
            print(f"  {k:7d} {100 * k / n:5.1f}%  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
