#!/usr/bin/env bash
# The drop program's cost (bpf/flowmeter_drops.bpf.c) from bpf_stats: one
# flowmeterd in namespace A with an nftables rule dropping a UDP port, N
# datagrams to it from namespace B; run_time_ns / run_cnt of the fm_drop_*
# program over the blast, and the daemon's count against the rule's.
# Usage (root): tools/bench_drops.sh FLOWMETERD [N]  (tools/bench drops [N])
set -euo pipefail
# Where tools/bench_results.py is (the figure ids), for the Python below.
export BENCH_TOOLS="$(cd "$(dirname "$0")" && pwd)"
bin="$1" n="${2:-200000}"
a="fmbench-a-$$" b="fmbench-b-$$" state="$(mktemp -d)" port=19987
old="$(sysctl -n kernel.bpf_stats_enabled)"
daemon=""
cleanup() {
    [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
    ip netns del "$a" 2>/dev/null || true
    ip netns del "$b" 2>/dev/null || true
    sysctl -q -w kernel.bpf_stats_enabled="$old"
    rm -rf "$state"
}
trap cleanup EXIT
ip netns add "$a"; ip netns add "$b"
ip -n "$a" link add veth-a type veth peer name veth-b netns "$b"
ip -n "$a" addr add 10.201.0.1/24 dev veth-a; ip -n "$b" addr add 10.201.0.2/24 dev veth-b
ip -n "$a" link set veth-a up; ip -n "$b" link set veth-b up; ip -n "$a" link set lo up
ip netns exec "$a" nft add table inet fmbench
ip netns exec "$a" nft add chain inet fmbench input '{ type filter hook input priority 0; policy accept; }'
ip netns exec "$a" nft add rule inet fmbench input udp dport 9999 counter drop
sysctl -q -w kernel.bpf_stats_enabled=1
ip netns exec "$a" "$bin" --interfaces veth-a --interval 1s --metrics-listen "127.0.0.1:$port" \
    --state-dir "$state/s" 2>"$state/err" &
daemon=$!
for _ in $(seq 100); do grep -q "serving metrics" "$state/err" && break; sleep 0.1; done
grep "drop hook attached" "$state/err" || { cat "$state/err" >&2; exit 1; }
prog() { bpftool -j prog show | python3 -c 'import json,sys; print(json.dumps([p for p in json.load(sys.stdin) if p.get("name","").startswith("fm_drop")][0]))'; }
before="$(prog)"
ip netns exec "$b" python3 -c "
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range($n): s.sendto(b'x' * 64, ('10.201.0.1', 9999))"
after="$(prog)"
sleep 2.5
python3 - "$before" "$after" <<'PY'
import json, sys
b, a = json.loads(sys.argv[1]), json.loads(sys.argv[2])
cnt, ns = a.get("run_cnt", 0) - b.get("run_cnt", 0), a.get("run_time_ns", 0) - b.get("run_time_ns", 0)
print(f"{a['name']} ({a['type']}): {cnt} runs, {ns} ns: {ns / max(cnt, 1):.0f} ns per dropped packet")
# Kept in out/bench/results.json when tools/bench sets BENCH_FIGURES.
import os
sys.path.insert(0, os.environ.get("BENCH_TOOLS", "tools"))
import bench_results as br
if cnt:
    br.emit(os.environ.get("BENCH_FIGURES"), "drops.ns_per_drop", [ns / cnt])
PY
echo "nft rule: $(ip netns exec "$a" nft list table inet fmbench | grep -o 'packets [0-9]*')"
ip netns exec "$a" python3 -c "
import urllib.request
for l in urllib.request.urlopen('http://127.0.0.1:$port/metrics').read().decode().splitlines():
    if l.startswith('flowmeter_interface_drops_total'): print(l)"
