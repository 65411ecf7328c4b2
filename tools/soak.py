#!/usr/bin/env python3
"""Soak test of flowmeterd (issue 8): mixed traffic for a while, then RSS growth, lost
records, and the daemons' interface totals against the kernel's own counters.

    python3 tools/soak.py --flowmeterd PATH [--minutes 10] [--warmup-minutes M] [--json FILE]

Topology and daemons as in tools/bench_e2e.py: namespaces A and B joined by a veth pair,
one flowmeterd per namespace (A with socket hooks, B with --hooks off), both with the
production interval (5s) and series expiry 1m: with the default 5m, series created
during the warm-up would still be live at the end of a 10-minute run and the growth
measure would compare two different populations; with 1m the set of live series is in
its steady state once the warm-up (default 20% of the run) is over.

Traffic, all from A to B, concurrent, each part bounded by the run's end and rate-limited
so that the machine is far from saturated (this is about correctness over time):
  bulk    iperf3 TCP at --bulk-mbit (200) Mbit/s, repeated runs of up to 20 s;
  churn   the bench_e2e churn client at --churn-rate (200) connections/s;
  udp     --udp-rate (1000) datagrams/s of 200 bytes to a counting receiver;
  resets  --reset-rate (20)/s connections to a closed port (answered by a RST) and as
          many abortive closes (SO_LINGER 0, the close sends a RST) on the churn server.

Totals. The kernel's veth counters (rx/tx packets and bytes) are read after the daemons
attached and before any traffic, and again after the traffic stopped and the daemons'
counters stood still for two intervals. The daemons count wire packets, splitting a
GSO super-packet into its segments, while veth counts skbs; TSO, GSO and GRO are
therefore turned off on both veth ends for the soak, so that one skb is one wire
packet (with them left on, --keep-offloads, the kernel's veth-a tx packets came out
at 1/7 of the daemon's in a 1-minute run). Packets must then match exactly, and bytes
by L2 = L3 + 14 x packets (the kernel counts the Ethernet header, the daemon the IP
total length; no VLANs here).

Targets: RSS growth < 5% from the end of the warm-up to the end (RSS sampled every
second under traffic; each end is the median of a window of a minute, or a third of
the time after the warm-up if shorter, so that a transient does not decide it), zero lost records on both rings of both
daemons, totals exact. Exit status 1 if any is missed, 2 on a setup error.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_e2e as be  # noqa: E402

UDP_PORT = 5400
CLOSED_PORT = 5999  # nothing listens here in B: every SYN gets a RST
RST_RATE_DEFAULT = 20

UDP_RECEIVER = r"""
import select, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
n = nbytes = 0
while True:
    r, _, _ = select.select([s, sys.stdin], [], [], 1)
    if sys.stdin in r:
        break
    if s in r:
        d = s.recv(65536)
        n += 1
        nbytes += len(d)
# What is still queued arrived as well.
s.setblocking(False)
try:
    while True:
        nbytes += len(s.recv(65536)); n += 1
except BlockingIOError:
    pass
print(f"{n} {nbytes}", flush=True)
"""

UDP_SENDER = r"""
import socket, sys, time
addr, port, seconds, rate, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"u" * size
deadline = time.monotonic() + seconds
n = err = 0
slot = time.monotonic()
while time.monotonic() < deadline:
    # Ten datagrams per wake-up: 1000/s without a timer every millisecond.
    slot += 10 / rate
    pause = slot - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    for _ in range(10):
        try:
            s.sendto(payload, (addr, port)); n += 1
        except OSError:
            err += 1
print(f"{n} {n * size} {err}", flush=True)
"""

RESETS = r"""
import socket, struct, sys, time
addr, closed, open_port, seconds, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
deadline = time.monotonic() + seconds
refused = aborted = err = 0
slot = time.monotonic()
while time.monotonic() < deadline:
    slot += 1 / rate
    pause = slot - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((addr, closed))
        err += 1
    except ConnectionRefusedError:
        refused += 1
    except OSError:
        err += 1
    finally:
        s.close()
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((addr, open_port))
        s.sendall(b"r" * 32)
        s.recv(64)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        aborted += 1
    except OSError:
        err += 1
    finally:
        s.close()
print(f"{refused} {aborted} {err}", flush=True)
"""


def kernel_counters(ns: str, dev: str) -> dict:
    j = json.loads(be.sh("ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev).stdout)[0]
    st = j.get("stats64") or j["stats"]
    return {"rx_packets": st["rx"]["packets"], "rx_bytes": st["rx"]["bytes"], "rx_dropped": st["rx"]["dropped"],
            "tx_packets": st["tx"]["packets"], "tx_bytes": st["tx"]["bytes"], "tx_dropped": st["tx"]["dropped"]}


def daemon_counters(m, dev: str) -> dict:
    out = {}
    for d, k in (("receive", "rx"), ("transmit", "tx")):
        out[f"{k}_packets"] = be.msum(m, "flowmeter_interface_packets_total", interface=dev, direction=d)
        out[f"{k}_bytes"] = be.msum(m, "flowmeter_interface_io_bytes_total", interface=dev, direction=d)
    return out


def lost(m) -> dict:
    return {r: be.msum(m, "flowmeter_ringbuf_lost_records_total", ring=r) for r in ("events", "flows")}


def offloads_off(ns: str, dev: str) -> dict:
    be.sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off")
    feats = be.sh("ip", "netns", "exec", ns, "ethtool", "-k", dev).stdout
    want = ("tcp-segmentation-offload:", "generic-segmentation-offload:", "generic-receive-offload:")
    return {line.split(":")[0].strip(): line.split(":")[1].strip()
            for line in feats.splitlines() if line.strip().startswith(want)}


class Worker(threading.Thread):
    """One traffic generator; its exception is kept and re-raised by the main thread."""

    def __init__(self, name: str, fn):
        super().__init__(name=name, daemon=True)
        self.fn, self.result, self.error = fn, None, None

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as e:
            self.error = e


def run_proc(scope, ns: str, code: str, *argv, timeout: float) -> list[str]:
    p = be.spawn(scope, ns, [sys.executable, "-c", code, *map(str, argv)],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        raise be.BenchError(f"traffic process failed ({p.returncode}): {err[-800:]}")
    return out.split()


def soak(args, scope: be.Scope, tmp: Path) -> dict:
    be.need_tools("ip", "nsenter", "iperf3", "ethtool")
    total = args.minutes * 60
    warmup = args.warmup_minutes * 60
    if not 0 < warmup < total - 20:
        raise be.BenchError(f"the warm-up ({warmup:.0f} s) must be shorter than the run ({total:.0f} s) by 20 s or more")
    a, b = be.make_pair(scope)
    result: dict = {"minutes": args.minutes, "warmup_minutes": args.warmup_minutes, "interval": args.interval,
                    "rates": {"bulk_mbit": args.bulk_mbit, "churn_per_s": args.churn_rate,
                              "udp_per_s": args.udp_rate, "resets_per_s": args.reset_rate}}
    if not args.keep_offloads:
        result["offloads"] = {be.IF_A: offloads_off(a, be.IF_A), be.IF_B: offloads_off(b, be.IF_B)}

    cfg = tmp / "soak.yaml"
    cfg.write_text("series:\n  expiry: 1m\n"
                   f"services:\n  - name: soak-churn\n    ports: {be.CHURN_PORT}\n"
                   f"  - name: soak-udp\n    ports: {UDP_PORT}\n"
                   f"  - name: soak-iperf\n    ports: {be.IPERF_PORT}\n")
    iv = ["--interval", args.interval]
    da = be.Daemon(scope, args.flowmeterd, a, be.daemon_args(tmp, "a", be.IF_A, *iv, config=cfg),
                   "flowmeterd-a", tmp).start()
    db = be.Daemon(scope, args.flowmeterd, b, be.daemon_args(tmp, "b", be.IF_B, *iv, "--hooks", "off", config=cfg),
                   "flowmeterd-b", tmp).start()
    da.ready()
    db.ready()
    daemons = {"a": (da, be.IF_A, a), "b": (db, be.IF_B, b)}

    # Servers first: they only listen, so nothing crosses the veth before the first reading.
    iperf_srv = be.spawn(scope, b, ["iperf3", "-s", "-p", str(be.IPERF_PORT)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    churn_srv = be.spawn(scope, b, [sys.executable, "-c", be.CHURN_SERVER, be.V4_B, str(be.CHURN_PORT), "2"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if be.read_line(churn_srv, 10).strip() != "ready":
        raise be.BenchError("churn server did not start")
    udp_rx = be.spawn(scope, b, [sys.executable, "-c", UDP_RECEIVER, be.V4_B, str(UDP_PORT)],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if be.read_line(udp_rx, 10).strip() != "ready":
        raise be.BenchError("UDP receiver did not start")
    time.sleep(0.5)  # iperf3 -s has no ready line; it binds at once

    k0 = {n: kernel_counters(ns, dev) for n, (_, dev, ns) in daemons.items()}
    d0 = {n: daemon_counters(d.metrics(), dev) for n, (d, dev, _) in daemons.items()}

    t0 = time.monotonic()
    t_end = t0 + total

    def bulk():
        runs, nbytes, retr = 0, 0, 0
        while True:
            left = int(t_end - time.monotonic())
            if left < 2:
                return {"runs": runs, "bytes": nbytes, "retransmits": retr}
            r = be.iperf_once(a, min(20, left), ("-b", f"{args.bulk_mbit}M"))
            runs += 1
            nbytes += r["sent_bytes"]
            retr += r["retransmits"] or 0

    def churn():
        out = run_proc(scope, a, be.CHURN_CLIENT, be.V4_B, be.CHURN_PORT, total, 1, args.churn_rate,
                       timeout=total + 60)
        return json.loads(" ".join(out))

    def udp():
        n, nbytes, err = map(int, run_proc(scope, a, UDP_SENDER, be.V4_B, UDP_PORT, total, args.udp_rate, 200,
                                           timeout=total + 60))
        return {"datagrams": n, "payload_bytes": nbytes, "errors": err}

    def resets():
        refused, aborted, err = map(int, run_proc(scope, a, RESETS, be.V4_B, CLOSED_PORT, be.CHURN_PORT, total,
                                                  args.reset_rate, timeout=total + 60))
        return {"refused": refused, "aborted": aborted, "errors": err}

    workers = [Worker(n, f) for n, f in (("bulk", bulk), ("churn", churn), ("udp", udp), ("resets", resets))]
    for w in workers:
        w.start()

    def rss(d):
        return be.rss_kib(d.pid) / 1024

    def check_workers():
        for w in workers:
            if w.error:
                raise be.BenchError(f"{w.name} traffic failed: {w.error}")
        for d, _, _ in daemons.values():
            if d.proc.poll() is not None:
                raise be.BenchError(f"{d.name} exited ({d.proc.returncode}):\n{d.stderr_tail()}")

    print(f"soak: {args.minutes:g} min, warm-up {args.warmup_minutes:g} min, interval {args.interval}, "
          f"bulk {args.bulk_mbit} Mbit/s, churn {args.churn_rate:g}/s, UDP {args.udp_rate:g}/s, "
          f"resets {args.reset_rate:g}+{args.reset_rate:g}/s", flush=True)
    # RSS is sampled every second and each end of the comparison is the median of a window
    # (a minute, or a third of what follows the warm-up), not one instant: the socket hooks
    # are host-wide, so sockets of anything else on the host (other tests' churn) pass
    # through daemon a's tables and lift its RSS for a while; a leak lifts the whole window.
    window = min(60.0, (total - warmup) / 3)
    own_ids = be.daemon_prog_ids(da.pid) | be.daemon_prog_ids(db.pid)
    foreign: set = set()
    samples: list[tuple[float, float, float]] = []
    warm: dict = {}
    progress = []
    next_tick = t0 + 60
    next_sample = t0
    stop_at = t_end - 2  # the last samples still under traffic
    while True:
        now = time.monotonic()
        check_workers()
        if now >= next_sample:
            samples.append((now - t0, rss(da), rss(db)))
            next_sample += 1
        if not warm and now >= t0 + warmup + window:
            win = [x for x in samples if warmup <= x[0] < warmup + window]
            warm = {"a": statistics.median(x[1] for x in win), "b": statistics.median(x[2] for x in win)}
            print(f"  {now - t0:5.0f} s  after warm-up ({warmup:.0f}-{warmup + window:.0f} s, median): "
                  f"RSS a {warm['a']:.1f} MiB, b {warm['b']:.1f} MiB", flush=True)
            continue
        if now >= next_tick and now < stop_at:
            m = {n: d.metrics() for n, (d, _, _) in daemons.items()}
            if shutil.which("bpftool"):
                foreign.update(be.foreign_socket_hooks(own_ids))
            line = {"t": round(now - t0), **{f"rss_{n}_mib": round(rss(d), 2) for n, (d, _, _) in daemons.items()},
                    **{f"lost_{n}": sum(lost(m[n]).values()) for n in m},
                    "veth_a_tx_packets": daemon_counters(m["a"], be.IF_A)["tx_packets"]}
            progress.append(line)
            print(f"  {line['t']:5d} s  RSS a {line['rss_a_mib']:.1f} MiB, b {line['rss_b_mib']:.1f} MiB; "
                  f"lost a {line['lost_a']:.0f}, b {line['lost_b']:.0f}; "
                  f"veth-a tx packets (daemon a) {line['veth_a_tx_packets']:,.0f}", flush=True)
            next_tick += 60
            continue
        if now >= stop_at:
            break
        time.sleep(0.2)
    last = [x for x in samples if x[0] >= stop_at - t0 - window]
    end = {"a": statistics.median(x[1] for x in last), "b": statistics.median(x[2] for x in last)}
    after = [x for x in samples if x[0] >= warmup]
    peak = {"a": max(x[1] for x in after), "b": max(x[2] for x in after)}
    for w in workers:
        w.join(timeout=max(1, t_end - time.monotonic()) + 90)
        if w.is_alive():
            raise be.BenchError(f"{w.name} traffic did not finish")
    check_workers()
    traffic = {w.name: w.result for w in workers}
    churn_srv.stdin.close()
    churn_srv.wait(timeout=15)
    udp_rx.stdin.close()
    got = be.read_line(udp_rx, 15).split()
    traffic["udp"]["received"], traffic["udp"]["received_payload_bytes"] = int(got[0]), int(got[1])
    be.stop_process(iperf_srv)

    # Nothing crosses the veth any more: wait until each daemon has flushed the last interval.
    totals_key = lambda dev: (lambda m: tuple(daemon_counters(m, dev).values()))
    iv_s = float(args.interval.rstrip("s"))
    settled = {}
    for n, (d, dev, _) in daemons.items():
        deadline = time.monotonic() + 6 * iv_s + 10
        m = d.metrics()
        while True:
            time.sleep(2 * iv_s + 0.5)
            nxt = d.metrics()
            if totals_key(dev)(nxt) == totals_key(dev)(m) or time.monotonic() > deadline:
                break
            m = nxt
        settled[n] = nxt
    k1 = {n: kernel_counters(ns, dev) for n, (_, dev, ns) in daemons.items()}
    d1 = {n: daemon_counters(settled[n], dev) for n, (_, dev, _) in daemons.items()}
    lost_all = {n: lost(settled[n]) for n in daemons}
    services = [(name, labels, v) for name, labels, v in settled["a"]
                if name.startswith(("flowmeter_network_", "flowmeter_tcp_connections_opened", "flowmeter_tcp_resets"))]
    # The receiver's socket (the hooks are host-wide, so A's daemon sees it): the sender's
    # unconnected sendto() has no peer the daemon can name, so it lands under peer "unknown".
    udp_payload = be.msum(settled["a"], "flowmeter_network_io_bytes_total", service="soak-udp",
                          direction="receive")
    aborts_seen = be.msum(settled["a"], "flowmeter_tcp_resets_total", peer_service="soak-churn", direction="transmit")
    rss_final = {n: rss(d) for n, (d, _, _) in daemons.items()}
    for d, _, _ in daemons.values():
        d.stop()

    # Verdicts.
    ok = True
    print(f"\nresident memory (VmRSS sampled every second under traffic; median of the {window:.0f} s after "
          f"the warm-up and of the last {window:.0f} s)")
    print(f"{'daemon':<8}{'after warm-up':>16}{'end':>12}{'growth':>10}{'peak':>12}  target < 5%")
    growth = {}
    for n in daemons:
        g = (end[n] - warm[n]) / warm[n] * 100
        growth[n] = g
        met = g < 5
        ok &= met
        print(f"{n:<8}{warm[n]:>12.1f} MiB{end[n]:>8.1f} MiB{g:>9.2f}%{peak[n]:>8.1f} MiB  "
              f"{be.fmt_target(met, f'{g - 5:.2f} points')}")
    if foreign:
        print(f"note: other flowmeterds' socket hooks were loaded during the run ({', '.join(sorted(foreign))}): "
              "other tests ran on this host, and their sockets pass through daemon a's tables too (hooks are "
              "host-wide), so a's RSS includes them")

    print("\nlost records (flowmeter_ringbuf_lost_records_total)")
    lost_total = 0
    for n in daemons:
        lost_total += sum(lost_all[n].values())
        print(f"  {n}: events {lost_all[n]['events']:.0f}, flows {lost_all[n]['flows']:.0f}")
    print(f"  target 0: {be.fmt_target(lost_total == 0, f'{lost_total:.0f} records')}")
    ok &= lost_total == 0

    print("\ntotals: flowmeterd's interface counters vs the kernel's (deltas over the run)")
    print(f"{'interface':<16}{'kernel pkts':>14}{'daemon pkts':>14}{'diff':>8}"
          f"{'kernel L2 B':>16}{'daemon L3+14/pkt':>18}{'diff':>8}{'dropped':>9}")
    totals = []
    exact = True
    for n, (_, dev, _) in daemons.items():
        for k in ("tx", "rx"):
            kp = k1[n][f"{k}_packets"] - k0[n][f"{k}_packets"]
            kb = k1[n][f"{k}_bytes"] - k0[n][f"{k}_bytes"]
            dp = int(d1[n][f"{k}_packets"] - d0[n][f"{k}_packets"])
            db_ = int(d1[n][f"{k}_bytes"] - d0[n][f"{k}_bytes"])
            l2 = db_ + 14 * dp
            dropped = k1[n][f"{k}_dropped"] - k0[n][f"{k}_dropped"]
            row = {"interface": dev, "direction": k, "kernel_packets": kp, "daemon_packets": dp,
                   "kernel_bytes": kb, "daemon_l3_bytes": db_, "daemon_l2_bytes": l2, "dropped": dropped}
            totals.append(row)
            exact &= kp == dp and kb == l2
            print(f"{dev + ' ' + k:<16}{kp:>14,}{dp:>14,}{dp - kp:>+8}{kb:>16,}{l2:>18,}{l2 - kb:>+8}{dropped:>9}")
    print(f"  target exact: {be.fmt_target(exact, 'the differences above')}")
    ok &= exact

    u = traffic["udp"]
    print(f"\ntraffic: bulk {traffic['bulk']['runs']} iperf3 runs, {traffic['bulk']['bytes'] / 1e9:.2f} GB, "
          f"{traffic['bulk']['retransmits']} retransmits; churn {traffic['churn']['connections']:,} connections "
          f"({traffic['churn']['errors']} errors); UDP {u['datagrams']:,} sent, {u['received']:,} received "
          f"({u['errors']} send errors); resets {traffic['resets']['refused']:,} refused + "
          f"{traffic['resets']['aborted']:,} aborted ({traffic['resets']['errors']} errors)")
    print(f"informational: UDP payload bytes sent {u['payload_bytes']:,}, received by soak-udp per flowmeterd "
          f"{udp_payload:,.0f} ({udp_payload - u['payload_bytes']:+,.0f}); RSTs sent by clients of soak-churn per "
          f"flowmeterd {aborts_seen:,.0f}, abortive closes made {traffic['resets']['aborted']:,}")
    print(f"final RSS: a {rss_final['a']:.1f} MiB, b {rss_final['b']:.1f} MiB")
    print(f"\nsoak verdict: {'all targets met' if ok else 'TARGETS MISSED'}")
    result.update({"rss_warmup_mib": warm, "rss_end_mib": end, "rss_peak_mib": peak,
                   "rss_window_seconds": window, "rss_samples": samples, "foreign_socket_hooks": sorted(foreign), "rss_growth_pct": growth, "progress": progress,
                   "lost_records": lost_all, "totals": totals, "totals_exact": exact, "traffic": traffic, "service_samples_a": services, "udp_payload_daemon": udp_payload, "aborts_daemon": aborts_seen,
                   "kernel_start": k0, "kernel_end": k1, "daemon_start": d0, "daemon_end": d1,
                   "targets_met": ok})
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flowmeterd", required=True, help="the daemon binary (a release build)")
    ap.add_argument("--minutes", type=float, default=10, help="length of the run (default 10)")
    ap.add_argument("--warmup-minutes", type=float, help="RSS baseline taken after this (default 20%% of the run)")
    ap.add_argument("--interval", default="5s", help="daemons' --interval (default 5s, the production default)")
    ap.add_argument("--bulk-mbit", type=int, default=200, help="iperf3 rate limit, Mbit/s (default 200)")
    ap.add_argument("--churn-rate", type=float, default=200, help="short TCP connections/s (default 200)")
    ap.add_argument("--udp-rate", type=float, default=1000, help="UDP datagrams/s (default 1000)")
    ap.add_argument("--reset-rate", type=float, default=RST_RATE_DEFAULT,
                    help="refused connections/s, and as many abortive closes (default 20)")
    ap.add_argument("--keep-offloads", action="store_true",
                    help="leave TSO/GSO/GRO on (packet totals then differ: veth counts skbs)")
    ap.add_argument("--json", help="write the raw numbers to this file")
    args = ap.parse_args()
    if args.warmup_minutes is None:
        args.warmup_minutes = 0.2 * args.minutes
    if os.geteuid() != 0:
        print("soak: needs root (namespaces, BPF)", file=sys.stderr)
        return 2
    args.flowmeterd = os.path.abspath(args.flowmeterd)
    if not os.access(args.flowmeterd, os.X_OK):
        print(f"soak: no flowmeterd at {args.flowmeterd}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, be._on_signal)
    signal.signal(signal.SIGHUP, be._on_signal)
    be.remove_stale_namespaces()
    tmp = Path(tempfile.mkdtemp(prefix="fmsoak-"))
    be.ROOT.defer(f"directory {tmp}", lambda: shutil.rmtree(tmp, ignore_errors=True))
    scope = be.Scope("soak")
    be.ROOT.defer("scope soak", scope.close)
    result: dict = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                                "loadavg_at_start": os.getloadavg()}}
    status = 0
    try:
        result.update(soak(args, scope, tmp))
        status = 0 if result["targets_met"] else 1
    except be.BenchError as e:
        print(f"\nsoak: FAILED: {e}", file=sys.stderr)
        result["error"] = str(e)
        status = 2
    finally:
        scope.close()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2, default=str)
        be.ROOT.close()
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("soak: interrupted; everything it created is removed", file=sys.stderr)
        sys.exit(130)
