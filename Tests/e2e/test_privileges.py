"""Privileges: once attached and serving, every thread of flowmeterd keeps only
the capabilities it still needs (effective, permitted and bounding sets), has
nothing inheritable or ambient and has no_new_privs set; the daemon still
counts traffic, sees connections, reloads on SIGHUP, reopens its flow log and
attaches to interfaces that appear later. Without the capabilities it needs
to start, it says which are missing in one line and exits 1."""
from __future__ import annotations

import errno
import grp
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import fmlib
from conftest import IF_A, V4_B, scrape, unique_port, wait_for

CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF = 12, 21, 39
NEW_A, NEW_B = "veth-n", "veth-m"


def bpf_capability() -> int:
    """What bpf() checks: CAP_BPF where the kernel has it (5.8+), else CAP_SYS_ADMIN."""
    return CAP_BPF if int(Path("/proc/sys/kernel/cap_last_cap").read_text()) >= CAP_BPF else CAP_SYS_ADMIN


def threads(pid: int) -> dict[int, dict]:
    """tid -> the Cap* masks (ints), NoNewPrivs and Name of every thread of pid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
        f = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        f = {k: v.strip() for k, v in f.items()}
        out[int(tid)] = {"name": f["Name"], "nnp": f["NoNewPrivs"],
                         **{k: int(f[k], 16) for k in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb")}}
    return out


def assert_every_thread_keeps(pid: int, keep: int) -> dict[int, dict]:
    ts = threads(pid)
    wrong = {tid: t for tid, t in ts.items()
             if (t["CapEff"], t["CapPrm"], t["CapBnd"], t["CapInh"], t["CapAmb"], t["nnp"]) != (keep, keep, keep, 0, 0, "1")}
    assert not wrong, (f"{len(wrong)} of {len(ts)} threads hold more than {keep:#x} or lack no_new_privs:\n"
                       + "\n".join(f"{tid} {t}" for tid, t in wrong.items()))
    return ts


@pytest.mark.socket_updates
def test_threads_keep_only_what_is_needed(netpair, daemons, tmp_path):
    pair = netpair
    port, sport = unique_port(), unique_port()
    log = tmp_path / "flows.jsonl"
    sock = tmp_path / "api.sock"
    config = tmp_path / "flowmeter.yaml"
    config.write_text("services:\n  - name: caps-one\n    ports: 1\n")
    # --api-group: the API socket is chowned to a group root is not in, which
    # needs CAP_CHOWN, so the drop must come after it.
    d = daemons(pair.a, "--config", str(config), "--interval", "1s", "--metrics-listen", f"127.0.0.1:{port}",
                "--flow-log", str(log), "--api-socket", str(sock), "--api-group", "nogroup",
                "--state-dir", str(tmp_path / "state")).wait_ready()
    d.wait_log("dropped capabilities", timeout=10)
    keep = (1 << bpf_capability()) | (1 << CAP_NET_ADMIN)
    line = next(l for l in d.stderr.splitlines() if "dropped capabilities" in l)
    assert " info " in line and "kept=CAP_NET_ADMIN,CAP_BPF" in line.replace("CAP_SYS_ADMIN", "CAP_BPF"), line
    assert os.stat(sock).st_gid == grp.getgrnam("nogroup").gr_gid, "the API socket was not chowned before the drop"

    before = assert_every_thread_keeps(d.proc.pid, keep)
    assert len(before) >= 4, f"expected a multi-threaded daemon, found {len(before)} thread(s)"

    # Traffic is counted, and socket telemetry sees a TCP connection.
    server = pair.server(pair.b, "tcp-server", V4_B, str(sport))
    assert pair.nettool(pair.a, "tcp-client", V4_B, str(sport), "123456").strip() == "123456"
    assert pair.finish(server).strip() == "123456"

    def counted():
        m = fmlib.parse_exposition(scrape(pair, pair.a, port)[1])
        tx = m.value("flowmeter_interface_packets_total", interface=IF_A, direction="transmit") or 0
        try:
            records = fmlib.read_flow_log(str(log), kind="connection")
        except AssertionError:
            return False  # a batch half written as we read
        conns = [r for r in records if r["event"] == "close" and r["remote_port"] == sport and r["role"] == "client"]
        return tx > 0 and conns and conns[0]
    close = wait_for(counted, timeout=15, interval=0.3, what="packets on /metrics and the connection's close record")
    assert (close["bytes_sent"], close["bytes_received"]) == (123456, 8), close

    # SIGHUP: the flow log is reopened by name and the config read again.
    os.rename(log, tmp_path / "moved.jsonl")
    config.write_text("services:\n  - name: caps-one\n    ports: 1\n  - name: caps-two\n    ports: 2\n")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("service_rules=2", timeout=10)
    assert "configuration reloaded" in d.stderr, d.stderr
    wait_for(lambda: log.exists(), timeout=10, what="the flow log reopened")

    # An interface made after the drop is attached and counted.
    pair.run(pair.a, "ip", "link", "add", NEW_A, "type", "veth", "peer", "name", NEW_B, "netns", pair.b)
    pair.run(pair.a, "ip", "addr", "add", "10.201.0.1/24", "dev", NEW_A)
    pair.run(pair.b, "ip", "addr", "add", "10.201.0.2/24", "dev", NEW_B)
    pair.run(pair.b, "ip", "link", "set", NEW_B, "up")
    pair.run(pair.a, "ip", "link", "set", NEW_A, "up")
    d.wait_log(f"interface={NEW_A}", timeout=10)
    pair.nettool(pair.a, "ping", "10.201.0.2", "3")

    def new_counted():
        m = fmlib.parse_exposition(scrape(pair, pair.a, port)[1])
        return (m.value("flowmeter_interface_packets_total", interface=NEW_A, direction="transmit") or 0) >= 3
    wait_for(new_counted, timeout=10, interval=0.3, what=f"packets counted on {NEW_A}")
    assert log.stat().st_size > 0, "nothing written to the reopened flow log"

    # Threads made since the drop (the pools grow on demand) got the reduced sets too.
    after = assert_every_thread_keeps(d.proc.pid, keep)
    print(f"{len(before)} threads at the drop, {len(after)} now, {len(set(after) - set(before))} new")
    for bad in ("could not drop", "cannot attach", " error ", " warning "):
        assert bad not in d.stderr, d.stderr
    assert d.terminate() == 0, d.stderr
    assert "detached and flushed" in d.stderr


def test_without_following_only_bpf_is_kept(netpair, daemons, tmp_path):
    """TCX links go with their file descriptors, so with no interface to
    attach later nothing needs CAP_NET_ADMIN after the start."""
    pair = netpair
    port = unique_port()
    d = daemons(pair.a, "--interfaces", IF_A, "--no-follow-interfaces", "--tc-mode", "tcx", "--interval", "1s",
                "--metrics-listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state")).wait_ready()
    d.wait_log("dropped capabilities", timeout=10)
    assert_every_thread_keeps(d.proc.pid, 1 << bpf_capability())
    pair.nettool(pair.a, "ping", V4_B, "3")

    def counted():
        m = fmlib.parse_exposition(scrape(pair, pair.a, port)[1])
        return (m.value("flowmeter_interface_packets_total", interface=IF_A, direction="receive") or 0) >= 3
    wait_for(counted, timeout=10, interval=0.3, what="the pings counted")
    assert d.terminate() == 0, d.stderr
    assert "could not drop" not in d.stderr and "detached and flushed" in d.stderr, d.stderr


NEEDS = "(it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON to start; run as root, or grant them)"


@pytest.mark.parametrize("how,missing", [
    # CAP_SYS_ADMIN stays, and stands in for CAP_BPF and CAP_PERFMON.
    (["--inh-caps=-all", "--bounding-set=-bpf,-net_admin,-perfmon"], "CAP_NET_ADMIN"),
    (["--inh-caps=-all", "--bounding-set=-bpf,-net_admin,-perfmon,-sys_admin"], "CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"),
    (["--reuid=nobody", "--regid=nogroup", "--clear-groups"], "CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON"),
], ids=["bounding-set", "bounding-set-no-sys-admin", "nobody"])
def test_missing_capabilities_named(netpair, flowmeterd, tmp_path, how, missing):
    p = netpair.run(netpair.a, "setpriv", *how, flowmeterd, "--interfaces", IF_A,
                    "--metrics-listen", f"127.0.0.1:{unique_port()}",
                    "--state-dir", str(tmp_path / "state"), check=False, timeout=30)
    assert p.returncode == 1, f"exit {p.returncode}\nstderr: {p.stderr}"
    assert p.stderr.splitlines() == [f"flowmeterd: missing capabilities: {missing} {NEEDS}"], p.stderr
    assert p.stdout == ""


# The per-thread change on its own, in a throwaway process: threads that block
# signals the way libdispatch's workers do, threads made and ended while the
# change runs, threads made after it; and one thread that blocks everything.
SHIM_CHILD = r"""
import ctypes, json, os, signal, sys, threading, time
lib = ctypes.CDLL(sys.argv[1])
keep, unreachable = int(sys.argv[2]), sys.argv[3] == "1"
class Result(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in ("threads", "unacknowledged", "failed", "first_error", "signal")]
stop = threading.Event()
SYNC = {signal.SIGILL, signal.SIGTRAP, signal.SIGBUS, signal.SIGFPE, signal.SIGSEGV, signal.SIGSYS,
        signal.SIGPIPE, signal.SIGPROF, signal.SIGKILL, signal.SIGSTOP}
def idle(block=()):
    if block:
        signal.pthread_sigmask(signal.SIG_BLOCK, block)
    stop.wait()
    if block:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, block)
        time.sleep(0.2)  # a signal left pending would be delivered now
made = []
def spawner():
    # New threads, some short-lived, while the change runs (ctypes drops the GIL).
    while not stop.is_set() and len(made) < 400:
        t = threading.Thread(target=(lambda: time.sleep(0.002)) if len(made) % 2 else idle)
        t.start()
        made.append(t)
        time.sleep(0.0005)
everything = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
ts = [threading.Thread(target=idle) for _ in range(3)]
ts += [threading.Thread(target=idle, args=(everything - SYNC,)) for _ in range(3)]
if unreachable:
    ts.append(threading.Thread(target=idle, args=(everything,)))
ts.append(threading.Thread(target=spawner))
for t in ts:
    t.start()
time.sleep(0.05)
r = Result()
last = int(open("/proc/sys/kernel/cap_last_cap").read())
started = time.monotonic()
rc = lib.fm_priv_restrict_all_threads(ctypes.c_uint64(keep), last, 1, 1000, ctypes.byref(r))
took = time.monotonic() - started
later = [threading.Thread(target=idle) for _ in range(3)]
for t in later:
    t.start()
time.sleep(0.05)
status = {}
for tid in os.listdir("/proc/self/task"):
    try:
        status[tid] = open(f"/proc/self/task/{tid}/status").read()
    except FileNotFoundError:
        pass
print(json.dumps({"rc": rc, "threads": r.threads, "unacknowledged": r.unacknowledged, "failed": r.failed,
                  "first_error": r.first_error, "signal": r.signal, "took": took, "made": len(made),
                  "status": status}), flush=True)
stop.set()
for t in ts + later + made:
    t.join()
print("alive", flush=True)
"""


@pytest.fixture(scope="module")
def shim_library(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("clang")
    assert cc, "no C compiler (cc or the Swift toolchain's clang) to build the privileges shim"
    src = Path(__file__).resolve().parents[2] / "Sources" / "CPrivileges"
    out = tmp_path_factory.mktemp("shim") / "libfmpriv.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-I", str(src / "include"),
                    "-o", str(out), str(src / "privileges.c"), "-lpthread"], check=True)
    return str(out)


def run_shim(lib: str, keep: int, unreachable: bool) -> tuple[dict, str]:
    p = subprocess.run([sys.executable, "-c", SHIM_CHILD, lib, str(keep), "1" if unreachable else "0"],
                       capture_output=True, text=True, timeout=60)
    lines = p.stdout.splitlines()
    assert p.returncode == 0 and lines, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return json.loads(lines[0]), lines[-1]


def status_sets(text: str) -> tuple:
    f = {k: v.strip() for k, v in (l.split(":", 1) for l in text.splitlines() if ":" in l)}
    return tuple(int(f[k], 16) for k in ("CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb")) + (f["NoNewPrivs"],)


def test_shim_reaches_every_thread(shim_library):
    keep = (1 << bpf_capability()) | (1 << CAP_NET_ADMIN)
    r, last = run_shim(shim_library, keep, unreachable=False)
    summary = {k: v for k, v in r.items() if k != "status"}
    assert (r["rc"], r["unacknowledged"], r["failed"], r["first_error"]) == (0, 0, 0, 0), summary
    assert r["signal"] in (signal.SIGSYS, signal.SIGPROF), summary
    wrong = {tid: status_sets(s) for tid, s in r["status"].items() if status_sets(s) != (keep, keep, keep, 0, 0, "1")}
    assert not wrong, (summary, wrong)
    assert len(r["status"]) >= 10, summary
    assert last == "alive"
    print(summary)


def test_shim_reports_a_thread_it_cannot_reach(shim_library):
    """A thread that blocks every signal cannot be changed: the call says so
    within its time limit, and the signal left pending there is discarded,
    so unblocking it later does not kill the process."""
    keep = 1 << bpf_capability()
    r, last = run_shim(shim_library, keep, unreachable=True)
    summary = {k: v for k, v in r.items() if k != "status"}
    assert r["rc"] == -1 and r["unacknowledged"] == 1 and r["first_error"] == errno.ETIMEDOUT, summary
    assert r["took"] < 5, summary
    assert last == "alive", "the process did not survive the thread unblocking its signals"
