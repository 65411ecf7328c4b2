#!/usr/bin/env python3
"""Socket-hook cost per connection of two flowmeterd builds on the same connections.

The socket hooks are host-wide tracepoints, so two daemons with socket hooks
both run their programs on every connection: each build's state-change, UDP
and sock_release programs handle exactly the same events, under exactly the
same machine load, in one run. That is the only fair comparison on a shared,
noisy machine (tools/bench churn's ratios swing by 2x there between runs).

Daemon OLD runs in namespace A (tc on veth-a), NEW in namespace B (tc on
veth-b); the churn client of tools/bench_e2e.py (connect, 32 bytes each way,
close) runs A -> B. Per round both daemons are started fresh, in alternating
order (the program attached first runs first at each tracepoint), and the
round's per-program run count and run time come from bpf_stats. Statistics
are held on with a BPF_ENABLE_STATS file descriptor, which other benchmarks
toggling kernel.bpf_stats_enabled cannot turn off meanwhile.

Prints, per round and as medians over rounds: runs per connection and ns per
run of each socket-hook program of each build, the sum of socket-hook ns per
connection, and NEW / OLD. tc programs are left out: each daemon's tc sits
on its own end of the veth, so theirs are not the same packets.

  tools/sockhooks_ab.py --old OLD_FLOWMETERD --new NEW_FLOWMETERD [--seconds 8] [--rounds 4]
Root only. Everything it creates is removed on exit (bench_e2e's scopes).
"""
import argparse
import ctypes
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_e2e", Path(__file__).with_name("bench_e2e.py"))
be = importlib.util.module_from_spec(spec)
spec.loader.exec_module(be)

SYS_bpf = 321           # x86_64
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
SOCKET_HOOKS = ("fm_state", "fm_udp", "fm_reset", "fm_listen")


def enable_stats() -> int:
    """kernel.bpf_stats_enabled for as long as the returned fd is open."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = (ctypes.c_uint32 * 4)(BPF_STATS_RUN_TIME, 0, 0, 0)
    fd = libc.syscall(SYS_bpf, BPF_ENABLE_STATS, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise be.BenchError(f"BPF_ENABLE_STATS: {os.strerror(err)}")
    return fd


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="flowmeterd before the change")
    ap.add_argument("--new", required=True, help="flowmeterd after the change")
    ap.add_argument("--seconds", type=float, default=8, help="churn seconds per round (default 8)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds, start order alternating (default 4)")
    ap.add_argument("--client-procs", type=int, default=3)
    ap.add_argument("--server-procs", type=int, default=2)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("sockhooks_ab: needs root", file=sys.stderr)
        return 1
    be.need_tools("ip", "nsenter", "bpftool")
    be.remove_stale_namespaces()
    scope = be.Scope("sockhooks_ab")
    be.ROOT.defer("scope", scope.close)
    tmp = Path(tempfile.mkdtemp(prefix="fm-sockhooks-ab-"))
    scope.defer("tmp", lambda: shutil.rmtree(tmp, ignore_errors=True))
    print(f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    stats_fd = enable_stats()
    scope.defer("stats fd", lambda: os.close(stats_fd))

    a, b = be.make_pair(scope)
    be.sh("ip", "netns", "exec", a, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=10000 65000",
          "net.ipv4.tcp_tw_reuse=1")
    server = be.spawn(scope, b, [sys.executable, "-c", be.CHURN_SERVER, be.V4_B, str(be.CHURN_PORT),
                                 str(args.server_procs)], stdin=be.subprocess.PIPE, stdout=be.subprocess.PIPE,
                      text=True)
    if be.read_line(server, 10).strip() != "ready":
        raise be.BenchError("churn server did not start")
    be.churn_phase(a, 1, args.client_procs, scope)  # warm-up

    per = {"old": {}, "new": {}}   # label -> name -> list of (runs/conn, ns/run, ns/conn)
    totals = {"old": [], "new": []}
    for r in range(args.rounds):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        daemons = {}
        for label in order:
            ns, dev = (a, be.IF_A) if label == "old" else (b, be.IF_B)
            d = be.Daemon(scope, os.path.abspath(getattr(args, label)), ns,
                          be.daemon_args(tmp, f"{label}{r}", dev, "--interval", "1s"), f"{label}{r}", tmp).start()
            d.ready()
            daemons[label] = d
        time.sleep(1)
        ids = {label: be.daemon_prog_ids(d.pid) for label, d in daemons.items()}
        p0 = be.bpf_prog_stats(set().union(*ids.values()))
        run = be.churn_phase(a, args.seconds, args.client_procs, scope)
        p1 = be.bpf_prog_stats(set().union(*ids.values()))
        for d in daemons.values():
            d.stop()
        n = run["connections"]
        print(f"\nround {r + 1} (started first: {order[0]}): {n:,} connections, {run['rate']:.0f}/s, "
              f"load average {os.getloadavg()[0]:.2f}")
        print(f"  {'build':<5} {'program':<21}{'runs/conn':>10}{'ns/run':>9}{'ns/conn':>9}")
        for p in sorted(be.prog_deltas(ids, p0, p1), key=lambda p: (p["daemon"], p["name"])):
            if not p["name"].startswith(SOCKET_HOOKS) or not p["runs"]:
                continue
            row = (p["runs"] / n, p["ns_per_run"], p["run_time_ns"] / n)
            per[p["daemon"]].setdefault(p["name"], []).append(row)
            print(f"  {p['daemon']:<5} {p['name']:<21}{row[0]:>10.2f}{row[1]:>9.0f}{row[2]:>9.0f}")
        for label in ("old", "new"):
            t = sum(p["run_time_ns"] for p in be.prog_deltas(ids, p0, p1)
                    if p["daemon"] == label and p["name"].startswith(SOCKET_HOOKS)) / n
            totals[label].append(t)
            print(f"  {label:<5} socket hooks together: {t:.0f} ns per connection")
    server.stdin.close()
    server.wait(timeout=15)

    print(f"\nmedians over {args.rounds} rounds (both builds on the same connections in every round)")
    print(f"  {'program':<21}{'runs/conn':>10}{'old ns/run':>11}{'new ns/run':>11}{'new/old':>8}")
    for name in sorted(set(per["old"]) | set(per["new"])):
        o, nw = per["old"].get(name, []), per["new"].get(name, [])
        if not o or not nw:
            continue
        mo, mn = median([x[1] for x in o]), median([x[1] for x in nw])
        print(f"  {name:<21}{median([x[0] for x in nw]):>10.2f}{mo:>11.0f}{mn:>11.0f}{mn / mo:>8.2f}")
    mo, mn = median(totals["old"]), median(totals["new"])
    print(f"  socket hooks per connection: old {mo:.0f} ns, new {mn:.0f} ns ({mn / mo:.2f}x)")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except be.BenchError as e:
        print(f"sockhooks_ab: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        be.ROOT.close()
