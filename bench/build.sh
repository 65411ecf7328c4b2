#!/usr/bin/env bash
# Builds the ring benchmark's C side into OUT (default: out/bench):
#   OUT/ring_producer.bpf.o  the record producer (BPF), loaded by both consumers
#   OUT/ring_consumer        the C reference consumers, driven by `flowmeter-bench ring`
# Same clang choice and flags as Sources/BPFEmbed uses for bpf/*.bpf.c, so the
# producer is built the way flowmeterd's own programs are.
#   bash bench/build.sh [OUT]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/out/bench}"
mkdir -p "$out"
. "$root/bench/bpf_clang.sh" bench/build.sh
"$clang" -target bpf -O2 -g -mcpu=v3 -D__TARGET_ARCH_x86 -Wall -Werror -Wno-unused-function \
    -I "$root/bpf/include" -I "$root/bpf" -I "$root/Sources/FlowmeterABI/include" \
    -c "$root/bench/ring_producer.bpf.c" -o "$out/ring_producer.bpf.o"
"${CC:-cc}" -O2 -g -Wall -Werror -I "$root/Sources/FlowmeterABI/include" \
    "$root/bench/ring_consumer.c" -o "$out/ring_consumer" -lbpf
echo "$out/ring_producer.bpf.o $out/ring_consumer"
