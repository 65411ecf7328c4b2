#!/usr/bin/env python3
"""End-to-end benchmarks of flowmeterd against real traffic (issue 7, items 2, 4, 5, 6, 8).

    python3 tools/bench_e2e.py SUBCOMMAND --flowmeterd PATH [options] [--json FILE]

Subcommands (root only; each prints a plain-text table, --json dumps the raw numbers,
--figures appends the kept figures as JSON lines for tools/bench_results.py):

  iperf    End-to-end overhead (item 4). Two namespaces A and B joined by a veth pair;
           iperf3 TCP from A to B, --rounds rounds of --seconds each, per round one run
           of every configuration (--configs) in an order rotated from round to round:
             baseline          no collector;
             flowmeterd        one flowmeterd per namespace (see "Deployment" below), with
                               its defaults: drop and DNS hooks on;
             flowmeterd-nodns  the same with --dns-ports off (flowmeterd has no switch
                               for the drop hook; it runs only for dropped packets, and
                               its runs show in the bpf_stats tables);
             softflowd         one softflowd per namespace on the same veth ends, exporting
                               NetFlow to a port nobody listens on;
             pmacctd           one pmacctd per namespace on the same veth ends (libpcap),
                               aggregating on src/dst host, port and protocol in its print
                               plugin, which writes the flows to a CSV file every second.
           Per configuration: median Gbit/s and median of the per-round ratios to that
           round's baseline; retransmits; data-path CPU per GB and its ratio to the
           baseline's; the collectors' own CPU per GB (utime+stime from /proc/PID/stat);
           the whole machine's busy CPU per GB (/proc/stat).
           iperf3's client and server share one CPU (--cpu, default 1): on two vCPUs an
           unpinned sender migrates between CPUs, its packets land in two CPUs' veth
           backlogs and arrive out of order, and the fast retransmits that follow swing
           the throughput by up to 2x from run to run, more than any collector costs.
           The data-path CPU is iperf3's client and server CPU time (from its JSON) plus
           ksoftirqd's. Ticks taken in softirq are charged to the interrupted task (this
           kernel has no IRQ time accounting), so it includes what the BPF programs and
           softflowd's packet socket add to the path, which the collectors' own CPU time
           does not; it stays within a few percent from run to run, the throughput does
           not. On the development VM any process that wakes up every millisecond, even a
           bare sleep loop, lifts iperf3's throughput by up to 1.6x (iperf3 then gets
           more of its CPU); flowmeterd's threads do that, so its throughput ratio can
           come out above 1. Both ratios are printed with their verdicts. One extra
           flowmeterd run with kernel.bpf_stats_enabled=1 (restored afterwards), outside
           the comparison, prints the BPF programs' own time per GB.
           Targets (tools/bench_results.py): flowmeterd >= 0.98x baseline, and ahead of
           the peers.
  churn    Short TCP connections (items 5 and 2). A forking Python client in A opens,
           writes 32 bytes, reads them back and closes as fast as it can against a
           forking server in B: --churn-rounds rounds, per round one phase of
           --churn-seconds for every configuration (as for iperf, the order rotated),
           collectors started afresh for each phase. Reports per configuration the
           median connections/s, the median of the per-round ratios to that round's
           baseline, the collectors' own CPU seconds per 10,000 connections; for every
           flowmeterd phase the records lost on the events and flows rings (target 0) and
           the connections daemon A counted against the client's own count; RSS at the
           end of the last flowmeterd phase; and, in one more flowmeterd phase with
           kernel.bpf_stats_enabled=1 (restored afterwards), the run count and ns per run
           of each of the daemons' programs.
  memory   Resident memory (item 6): idle with the default flags, idle with a table big
           enough for --flows, and while --flows distinct UDP 5-tuples go through a veth
           the daemon watches, once the daemon reports them in its table (median of 5
           samples 1 s apart each). Targets: idle <= 40 MiB, 100k flows <= 150 MiB.
  startup  Time from starting flowmeterd to tc attached, socket hooks attached, "serving
           metrics" and the first /metrics answer, median of --starts starts. Target:
           everything (the first answer) <= 1 s.
  idle     Idle VmRSS (default flags, one veth) of --flowmeterd and each --also binary,
           started in turn --starts times; then, from the last start of each, resident
           MiB per kind of mapping (smaps: the binary's text, rodata and CoW data, the
           Swift libraries, the BPF rings, malloc arenas, thread stacks), the binary's
           resident pages per ELF section (pagemap) and, for an unstripped binary, per
           library or Swift module (its symbol table), and the threads by name.
  all      startup, memory, iperf, churn, one after the other.

Deployment. tc attaches by interface name inside the daemon's own network namespace, so
no single daemon can reach both ends of a veth pair between two namespaces. Each
namespace therefore runs one flowmeterd on its veth end: A's with socket and DNS hooks
(tracepoints and the root cgroup, host-wide: one set sees the sockets of both namespaces,
as one daemon per node would), B's with --hooks off --dns-ports off, so no socket event
or DNS packet is handled twice. The drop hook (a host-wide tracepoint) has no switch, so
both daemons' drop programs run for every dropped packet. Every packet thus
meets four tc programs (egress of one end, ingress of the other, both ways), as it would
on a node that watches both containers' veths. Collector CPU is the sum of both daemons.
softflowd and pmacctd get the same two vantage points. Daemons run with --interval 1s (five times
the default's evictions: the verification below waits for one, and it costs more, not
less). Offloads stay at the veth defaults (TSO/GSO on), as on a real node.

What is checked, so that a run cannot silently measure nothing: iperf3's JSON must show
bytes; flowmeterd's interface counters on both ends must reach at least the payload
iperf3 reported (L3 bytes: payload plus headers) and its socket-hook payload bytes for
the iperf3 client must match iperf3's to 1%; softflowd must have processed packets;
pmacctd's print plugin must have written packets; the churn client must have completed
connections and the daemon must count them as opened (client and server ends); the memory run waits for the daemon's
flowmeter_flow_table_entries to reach the number of flows sent.

Durations on the development machine (2 vCPUs, shared with other builds at load 6-11):
startup 7 s, memory 25 s, iperf about 3 min (5 rounds x 5 configurations x 5 s, one cost
run, starts and verification), churn about 4 min (3 rounds x 5 configurations x 10 s, one
cost phase, settling); all about 8 min.

Everything created (namespaces, processes, the temporary directory, the sysctl
kernel.bpf_stats_enabled) is removed or restored on exit, also on Ctrl-C, SIGTERM or an
error. Traffic stays inside the namespaces this script creates.
"""
from __future__ import annotations

import argparse
import atexit
import bisect
import ctypes
import http.client
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_results as br  # noqa: E402  (figure ids, targets, results.json)

PID = os.getpid()
PREFIX = "fmbe"  # namespaces: fmbe-<role>-<pid>
CLONE_NEWNET = 0x40000000
CLK_TCK = os.sysconf("SC_CLK_TCK")

V4_A, V4_B = "10.211.0.1", "10.211.0.2"
MAC_A, MAC_B = "02:00:0a:d3:00:01", "02:00:0a:d3:00:02"
IF_A, IF_B = "veth-a", "veth-b"
METRICS_PORT = 9810          # inside our namespaces, so never in anyone's way
IPERF_PORT = 5201
CHURN_PORT = 5300            # below the client namespace's ephemeral range
NETFLOW_PORT = 9995

_libc = ctypes.CDLL(None, use_errno=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------
# cleanup


class Scope:
    """Undo actions, run last-in first-out by close(). One scope per subcommand,
    so that one part's namespaces and processes are gone before the next
    starts; the root scope is closed by atexit as well, for the paths that
    skip the finally blocks."""

    def __init__(self, name: str):
        self.name = name
        self._undo: list[tuple[str, object]] = []
        self._lock = threading.Lock()

    def defer(self, what: str, fn) -> None:
        with self._lock:
            self._undo.append((what, fn))

    def close(self) -> None:
        while True:
            with self._lock:
                if not self._undo:
                    return
                what, fn = self._undo.pop()
            try:
                fn()
            except Exception as e:  # cleanup must go on with the rest
                print(f"bench_e2e: cleanup of {what} failed: {e}", file=sys.stderr)


ROOT = Scope("root")
atexit.register(ROOT.close)


def _on_signal(signum, _frame):
    # Turned into an exception so the finally blocks run in the main thread.
    raise SystemExit(128 + signum)


def sh(*cmd: str, check: bool = True, timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise BenchError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout}{p.stderr}")
    return p


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        hint = {"iperf3": "apt-get install -y iperf3", "softflowd": "apt-get install -y softflowd",
                "softflowctl": "apt-get install -y softflowd", "bpftool": "apt-get install -y bpftool",
                "nsenter": "apt-get install -y util-linux", "ip": "apt-get install -y iproute2",
                "ss": "apt-get install -y iproute2"}
        raise BenchError("missing tools: " + ", ".join(f"{t} ({hint.get(t, 'install it')})" for t in missing))


# ---------------------------------------------------------------------------
# namespaces and processes


def enter_netns(ns: str) -> None:
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns({ns}): {os.strerror(e)}")
    finally:
        os.close(fd)


def in_netns(ns: str, fn, *args):
    """fn(*args) on a thread of its own that joined ns: the namespace is per
    thread, so the main thread never changes it (and no helper process is
    spawned per scrape, which would disturb the CPU measurements)."""
    box: dict = {}

    def run():
        try:
            enter_netns(ns)
            box["v"] = fn(*args)
        except BaseException as e:
            box["e"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]


def http_get(ns: str, port: int, path: str = "/metrics", timeout: float = 10) -> str:
    def get():
        # http.client rather than urllib: no *_proxy variable may reroute it.
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            body = r.read().decode()
            if r.status != 200:
                raise BenchError(f"GET {path}: HTTP {r.status}")
            return body
        finally:
            c.close()
    return in_netns(ns, get)


def clean_env() -> dict:
    # An unrelated FLOWMETER_* variable would change (or stop) the daemon.
    return {k: v for k, v in os.environ.items() if not k.startswith("FLOWMETER_")}


def stop_process(p: subprocess.Popen, timeout: float = 15) -> int | None:
    """SIGTERM, then SIGKILL; only the process we started, by its pid."""
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
    try:
        return p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None


def spawn(scope: Scope, ns: str | None, cmd: list[str], **kw) -> subprocess.Popen:
    """Starts cmd in ns. nsenter execs it (no fork), so the Popen's pid is the
    program itself, and it keeps the host's mounts (cgroup2 for the daemon)."""
    full = (["nsenter", f"--net=/run/netns/{ns}"] if ns else []) + cmd
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("env", clean_env())
    p = subprocess.Popen(full, **kw)
    scope.defer(f"process {p.pid} ({cmd[0]})", lambda: stop_process(p))
    return p


def remove_stale_namespaces() -> None:
    """Namespaces of earlier runs of this script whose process is gone."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        m = re.match(rf"^({PREFIX}-\w+-(\d+))\b", line)
        if m and not Path(f"/proc/{m.group(2)}").exists():
            subprocess.run(["ip", "netns", "del", m.group(1)], capture_output=True)


def add_netns(scope: Scope, role: str) -> str:
    ns = f"{PREFIX}-{role}-{PID}"
    sh("ip", "netns", "add", ns)

    def delete():
        # Whatever still runs in our own namespace was started by us.
        r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        for pid in r.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    scope.defer(f"namespace {ns}", delete)
    sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w",
       # Keeps the links silent apart from the benchmark's traffic (no MLD, RS, DAD).
       "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    return ns


def make_pair(scope: Scope) -> tuple[str, str]:
    """Namespaces A and B, veth-a (10.211.0.1) <-> veth-b (10.211.0.2), static neighbours."""
    a, b = add_netns(scope, "a"), add_netns(scope, "b")
    sh("ip", "-n", a, "link", "add", IF_A, "address", MAC_A, "type", "veth",
       "peer", "name", IF_B, "address", MAC_B, "netns", b)
    for ns, dev, addr, peer, peer_mac in ((a, IF_A, V4_A, V4_B, MAC_B), (b, IF_B, V4_B, V4_A, MAC_A)):
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        sh("ip", "-n", ns, "neigh", "add", peer, "lladdr", peer_mac, "dev", dev, "nud", "permanent")
        sh("ip", "-n", ns, "link", "set", dev, "up")
    deadline = time.monotonic() + 10
    while "state UP" not in sh("ip", "-n", a, "link", "show", IF_A).stdout:
        if time.monotonic() > deadline:
            raise BenchError("veth pair did not come up")
        time.sleep(0.05)
    return a, b


# ---------------------------------------------------------------------------
# measurements


def read_line(p: subprocess.Popen, timeout: float) -> str:
    """One line of a child's stdout, or an error after timeout."""
    r, _, _ = select.select([p.stdout], [], [], timeout)
    if not r:
        raise BenchError(f"no output within {timeout}s from {' '.join(map(str, p.args))[:100]}")
    return p.stdout.readline()


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_busy_seconds(cpu: int | None = None) -> float:
    """CPU seconds all CPUs (or one) spent not idle (user, nice, system, irq, softirq, steal)."""
    want = "cpu" if cpu is None or cpu < 0 else f"cpu{cpu}"
    with open("/proc/stat") as f:
        for line in f:
            fields = line.split()
            if fields[0] == want:
                user, nice, system, _idle, _iowait, irq, softirq, steal = [int(x) for x in fields[1:9]]
                return (user + nice + system + irq + softirq + steal) / CLK_TCK
    raise BenchError(f"no {want} line in /proc/stat")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for {pid}")


def rss_parts_mib(pid: int) -> dict:
    """VmRSS split into anonymous memory and mapped files (the binary and its
    libraries count in full once touched, though shared with nothing else)."""
    parts = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("RssAnon", "RssFile", "RssShmem"):
                parts[k] = int(v.split()[0]) / 1024
    return parts


def top_mappings_mib(pid: int, n: int = 6) -> list[tuple[str, float]]:
    """Resident MiB per mapped file (or [heap], [anon]), largest first: what
    the RSS is made of."""
    per: dict[str, float] = {}
    name = "[anon]"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                name = head[5] if len(head) > 5 else "[anon]"
            elif head and head[0] == "Rss:":
                per[name] = per.get(name, 0) + int(head[1]) / 1024
    return sorted(per.items(), key=lambda kv: -kv[1])[:n]


SMAPS_HEAD = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")
SWIFT_LIBS = re.compile(r"/libswift|/libFoundation|/lib_Foundation|/libicu|/libdispatch|/libBlocksRuntime|/lib_FoundationICU")
ARENA_ALIGN = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit: every thread arena's heap starts on it


def smaps_breakdown(pid: int, binary: str) -> dict:
    """Resident KiB of the idle daemon per kind of mapping, from /proc/PID/smaps:
    what each MiB of VmRSS is. Anonymous mappings are told apart by their
    neighbours: a thread stack has a one-page PROT_NONE guard just below it
    (glibc's pthread stacks), a malloc arena's heap starts on a 64 MiB boundary
    with the rest of its 64 MiB reserved PROT_NONE above it; the rest is
    anonymous mmap (large malloc blocks, the Swift runtime's own allocations)."""
    binary = os.path.realpath(binary)
    maps = []
    cur = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = SMAPS_HEAD.match(line)
            if m:
                cur = {"start": int(m.group(1), 16), "end": int(m.group(2), 16), "perms": m.group(3),
                       "name": m.group(4).strip(), "rss": 0, "anon": 0}
                maps.append(cur)
            elif cur is not None and line.startswith("Rss:"):
                cur["rss"] = int(line.split()[1])
            elif cur is not None and line.startswith("Anonymous:"):
                cur["anon"] = int(line.split()[1])
    kinds: dict[str, list[int]] = {}

    def add(kind: str, mp: dict) -> None:
        k = kinds.setdefault(kind, [0, 0, 0])
        k[0] += mp["rss"]
        k[1] += 1
        k[2] += mp["end"] - mp["start"]

    for i, mp in enumerate(maps):
        name, size = mp["name"], mp["end"] - mp["start"]
        prev = maps[i - 1] if i else None
        nxt = maps[i + 1] if i + 1 < len(maps) else None
        if name.startswith("anon_inode:bpf"):
            add("BPF ring buffers (mmapped " + name[len("anon_inode:"):] + ")", mp)
        elif name and os.path.realpath(name) == binary:
            add("the binary: " + ("text" if "x" in mp["perms"] else "rodata" if "w" not in mp["perms"] else "data")
                + (" (its anonymous CoW pages)" if mp["anon"] and "w" in mp["perms"] else ""), mp)
        elif name.startswith("/") and SWIFT_LIBS.search(name):
            add("Swift runtime, Foundation, ICU, dispatch libraries", mp)
        elif name.startswith("/"):
            add("other libraries: " + os.path.basename(name).split(".so")[0], mp)
        elif name == "[heap]":
            add("anon: main arena ([heap])", mp)
        elif name == "[stack]":
            add("anon: main thread stack", mp)
        elif name.startswith("["):
            add("kernel: " + name, mp)
        elif mp["perms"].startswith("---"):
            add("reserved PROT_NONE (guards, arena reserve)", mp)
        elif (prev and prev["end"] == mp["start"] and prev["perms"].startswith("---")
              and prev["end"] - prev["start"] <= 64 << 10 and not prev["name"]):
            add("anon: thread stacks", mp)
        elif mp["start"] % ARENA_ALIGN == 0 and nxt and nxt["start"] == mp["end"] and nxt["perms"].startswith("---"):
            add("anon: thread malloc arenas", mp)
        else:
            add("anon: other mmap (large malloc blocks, runtime)", mp)
    threads = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            threads.append(Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip())
        except FileNotFoundError:
            continue
    return {"kinds": {k: {"rss_kib": v[0], "mappings": v[1], "size_kib": v[2] // 1024} for k, v in kinds.items()},
            "threads": threads, "rollup_kib": sum(m["rss"] for m in maps),
            "binary_sections_kib": binary_sections_resident_kib(pid, binary),
            "components_kib": resident_by_component_kib(pid, binary)}


def binary_mappings(pid: int, binary: str) -> tuple[list[tuple[int, int]], int | None]:
    """The address ranges `binary` is mapped at in process `pid`, and its load
    base (the start of its mapping at file offset 0; None if not mapped)."""
    ranges, base = [], None
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            head = line.split()
            if len(head) > 5 and os.path.realpath(head[5]) == binary:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                if base is None and int(head[2], 16) == 0:
                    base = lo
                ranges.append((lo, hi))
    return ranges, base


def binary_sections_resident_kib(pid: int, binary: str) -> dict[str, float]:
    """Resident KiB of the binary per ELF section (readelf's section table,
    /proc/PID/pagemap's present bit, root only): which part of the file the
    resident pages are (code, relocations, symbol tables, unwind tables,
    metadata). A page shared by two sections counts for each in proportion."""
    binary = os.path.realpath(binary)
    out = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True, check=True).stdout
    sections = []
    for line in out.splitlines():
        m = re.match(r"^\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", line)
        if m and int(m.group(2), 16) and int(m.group(3), 16):
            sections.append((int(m.group(2), 16), int(m.group(3), 16), m.group(1)))
    ranges, base = binary_mappings(pid, binary)
    per: dict[str, float] = {}
    if base is None:
        return per
    page = os.sysconf("SC_PAGE_SIZE")
    with open(f"/proc/{pid}/pagemap", "rb") as pm:
        for lo, hi in ranges:
            pm.seek(lo // page * 8)
            entries = pm.read((hi - lo) // page * 8)
            for i in range(0, len(entries), 8):
                if not int.from_bytes(entries[i:i + 8], "little") >> 63:
                    continue
                a = lo + i // 8 * page - base
                hit = False
                for start, size, name in sections:
                    overlap = min(a + page, start + size) - max(a, start)
                    if overlap > 0:
                        per[name] = per.get(name, 0) + overlap / 1024
                        hit = True
                if not hit:
                    per["(between sections)"] = per.get("(between sections)", 0) + page / 1024
    return dict(sorted(per.items(), key=lambda kv: -kv[1]))


def symbol_component(name: str) -> str:
    """Which library or module a symbol of the static build belongs to, by its
    name: the Swift module of a mangled name, else the C/C++ library's prefix."""
    m = re.match(r"^\$s(\d+)([A-Za-z_]\w*)", name)
    if m and len(m.group(2)) >= int(m.group(1)):
        return "Swift module " + m.group(2)[:int(m.group(1))]
    if name.startswith(("$s", "_swift", "swift")) or name.startswith("_ZN5swift"):
        return "Swift runtime and standard library"
    for prefix, comp in (("icudt", "ICU data (icudt*_dat)"), ("_ZN6icu_", "ICU"), ("u_", "ICU"), ("ucol_", "ICU"), ("ures_", "ICU"), ("ucnv_", "ICU"),
                         ("udata_", "ICU"), ("uloc_", "ICU"), ("uprv_", "ICU"), ("utrie", "ICU"), ("ubrk_", "ICU"),
                         ("bpf_", "libbpf"), ("btf_", "libbpf"), ("libbpf_", "libbpf"), ("bpf_object", "libbpf"),
                         ("elf", "libelf"), ("gelf_", "libelf"), ("__libelf", "libelf"),
                         ("_dispatch", "libdispatch"), ("dispatch_", "libdispatch"),
                         ("CF", "CoreFoundation"), ("__CF", "CoreFoundation"), ("_CF", "CoreFoundation"),
                         ("nghttp2", "nghttp2"), ("CNIOBoringSSL", "BoringSSL"), ("llhttp", "llhttp"),
                         ("inflate", "zlib"), ("deflate", "zlib"), ("_ZNSt", "libstdc++"), ("_ZSt", "libstdc++"),
                         ("_ZN9__gnu", "libstdc++"), ("yaml_", "libyaml")):
        if name.startswith(prefix):
            return comp
    return "other C/C++ (" + ("C++" if name.startswith("_Z") else "C") + ")"


def resident_by_component_kib(pid: int, binary: str) -> dict[str, float]:
    """Resident KiB of the binary's pages per library or module, code and data
    apart (pagemap's present bit against the symbol table; needs an unstripped
    binary, e.g. tools/package's .build-vm one): whose code and data stay
    mapped. Pages with no symbol (relocations, unwind and symbol tables) are
    left out: binary_sections_resident_kib shows those."""
    binary = os.path.realpath(binary)
    nm = subprocess.run(["nm", "-n", "--defined-only", binary], capture_output=True, text=True)
    syms = []
    for line in nm.stdout.splitlines():
        f = line.split(maxsplit=2)
        if len(f) == 3 and f[1] in "tTwWdDrRbB":
            syms.append((int(f[0], 16), ("code: " if f[1] in "tTwW" else "data: ") + f[2]))
    if not syms:
        return {}
    ranges, base = binary_mappings(pid, binary)
    page = os.sysconf("SC_PAGE_SIZE")
    per: dict[str, float] = {}
    addrs = [a for a, _ in syms]
    with open(f"/proc/{pid}/pagemap", "rb") as pm:
        for lo, hi in ranges:
            pm.seek(lo // page * 8)
            entries = pm.read((hi - lo) // page * 8)
            for i in range(0, len(entries), 8):
                if not int.from_bytes(entries[i:i + 8], "little") >> 63:
                    continue
                a = lo + i // 8 * page - base
                j = max(bisect.bisect_right(addrs, a) - 1, 0)
                # Each symbol runs to the next one's address.
                while j < len(syms) and syms[j][0] < a + page:
                    start = max(syms[j][0], a)
                    end = min(syms[j + 1][0] if j + 1 < len(syms) else a + page, a + page)
                    if end > start:
                        kind, _, name = syms[j][1].partition(": ")
                        comp = kind + ": " + symbol_component(name)
                        per[comp] = per.get(comp, 0) + (end - start) / 1024
                    j += 1
    return dict(sorted(per.items(), key=lambda kv: -kv[1]))


def print_smaps_breakdowns(parts: dict) -> None:
    """One table, a column per binary, a row per kind of mapping, resident MiB."""
    names = list(parts)
    kinds = sorted({k for p in parts.values() for k in p["kinds"]},
                   key=lambda k: -max(p["kinds"].get(k, {"rss_kib": 0})["rss_kib"] for p in parts.values()))
    print("\nresident MiB per kind of mapping (/proc/PID/smaps, last start of each binary):")
    for i, b in enumerate(names):
        print(f"  [{i}] {b}")
    print(f"  {'':<62}" + "".join(f"{'[' + str(i) + ']':>9}" for i in range(len(names))))
    for k in kinds:
        row = "".join(f"{parts[b]['kinds'].get(k, {'rss_kib': 0})['rss_kib'] / 1024:9.2f}" for b in names)
        print(f"  {k[:62]:<62}{row}")
    print(f"  {'total (sum of Rss)':<62}" + "".join(f"{parts[b]['rollup_kib'] / 1024:9.2f}" for b in names))
    for i, b in enumerate(names):
        t = parts[b]["threads"]
        counts: dict[str, int] = {}
        for n in t:
            counts[n] = counts.get(n, 0) + 1
        print(f"  [{i}] {len(t)} threads: " + ", ".join(f"{n} x{c}" if c > 1 else n for n, c in counts.items()))
    print("  the binary's resident pages per ELF section (pagemap), MiB:")
    for i, b in enumerate(names):
        secs = parts[b]["binary_sections_kib"]
        print(f"  [{i}] " + ", ".join(f"{n} {k / 1024:.2f}" for n, k in list(secs.items())[:12] if k >= 64))
    for i, b in enumerate(names):
        comps = parts[b]["components_kib"]
        if comps:
            print(f"  [{i}] resident pages per library or Swift module (symbol table), MiB: "
                  + ", ".join(f"{n} {k / 1024:.2f}" for n, k in list(comps.items())[:24] if k >= 64))


def sample_rss_mib(pid: int, n: int = 5) -> tuple[float, list[float]]:
    values = []
    for i in range(n):
        values.append(rss_kib(pid) / 1024)
        if i + 1 < n:
            time.sleep(1)
    return statistics.median(values), values


SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict, float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if m:
            out.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def msum(samples, name: str, **want) -> float:
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in want.items()))


def fmt_target(ok: bool, miss: str) -> str:
    return "met" if ok else f"not met by {miss}"


def median(xs):
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------------------
# flowmeterd


class Daemon:
    """One flowmeterd. Its stderr is read by a thread that stamps each line
    with the monotonic time it arrived (for the start-up split) and keeps a
    copy in the scope's directory."""

    def __init__(self, scope: Scope, binary: str, ns: str, args: list[str], name: str, tmp: Path):
        self.scope, self.binary, self.ns, self.args, self.name = scope, binary, ns, args, name
        self.log_path = tmp / f"{name}.stderr"
        self.lines: list[tuple[float, str]] = []
        self.proc: subprocess.Popen | None = None
        self.t0 = 0.0

    def start(self) -> "Daemon":
        self.t0 = time.monotonic()
        self.proc = spawn(self.scope, self.ns, [self.binary, *self.args],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self):
        with open(self.log_path, "w") as log:
            for raw in iter(self.proc.stderr.readline, b""):
                now = time.monotonic()
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append((now, line))
                log.write(line + "\n")
                log.flush()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_tail(self, n: int = 15) -> str:
        return "\n".join(l for _, l in self.lines[-n:])

    def line_time(self, suffix: str) -> float | None:
        """When the first log line ending in "] <suffix>" arrived (swift-log
        puts the metadata before the message, the message last)."""
        for t, l in list(self.lines):
            if l.endswith(f"] {suffix}"):
                return t
        return None

    def wait_line(self, suffix: str, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        while True:
            t = self.line_time(suffix)
            if t is not None:
                return t
            if self.proc.poll() is not None:
                time.sleep(0.1)  # let the reader catch the last lines
                raise BenchError(f"{self.name} exited ({self.proc.returncode}) before logging {suffix!r}:\n{self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} did not log {suffix!r} within {timeout}s:\n{self.stderr_tail()}")
            time.sleep(0.002)

    def ready(self, timeout: float = 30) -> "Daemon":
        self.wait_line("serving metrics", timeout)
        return self

    def metrics(self, port: int = METRICS_PORT):
        return parse_metrics(http_get(self.ns, port))

    def cpu(self) -> float:
        return proc_cpu_seconds(self.pid)

    def stop(self) -> None:
        rc = stop_process(self.proc, timeout=30)
        self._reader.join(timeout=5)
        if rc != 0:
            raise BenchError(f"{self.name} exited {rc} after SIGTERM:\n{self.stderr_tail()}")


def daemon_args(tmp: Path, name: str, interfaces: str, *extra: str, config: Path | None = None) -> list[str]:
    if config is None:
        config = tmp / "empty.yaml"
        # An explicit (empty) file, so /etc/flowmeter/flowmeter.yaml cannot sneak in.
        config.write_text("series:\n  expiry: 5m\n")
    return ["--config", str(config), "--interfaces", interfaces, "--metrics-listen", f"127.0.0.1:{METRICS_PORT}",
            "--api-socket", "off", "--state-dir", str(tmp / f"state-{name}"), *extra]


def daemon_prog_ids(pid: int) -> set[int]:
    """The BPF programs a process holds a file descriptor of: exactly the
    daemon's own, whatever else is loaded on the host meanwhile."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return ids


def bpf_prog_stats(ids: set[int]) -> dict[int, dict]:
    out = sh("bpftool", "-j", "prog", "show", timeout=60).stdout.strip()
    progs = json.loads(out) if out else []
    # bpftool leaves run_time_ns/run_cnt out while they are 0.
    return {p["id"]: {"name": p.get("name", "?"), "type": p.get("type", "?"),
                      "run_time_ns": p.get("run_time_ns", 0), "run_cnt": p.get("run_cnt", 0)}
            for p in progs if p.get("id") in ids}


def foreign_socket_hooks(own: set[int] = frozenset()) -> list[str]:
    """Socket-hook programs of flowmeterds this script did not start. They are
    host-wide, so they run on this benchmark's sockets too, in every phase
    (baselines included)."""
    out = sh("bpftool", "-j", "prog", "show", timeout=60).stdout.strip()
    return sorted(p.get("name", "") for p in (json.loads(out) if out else [])
                  if p.get("name", "").startswith("fm_") and p["id"] not in own)


def note_foreign(result: dict, own: set[int] = frozenset()) -> None:
    names = foreign_socket_hooks(own) if shutil.which("bpftool") else []
    result["foreign_socket_hooks"] = names
    if names:
        print(f"note: {len(names)} socket-hook programs of another flowmeterd on this host ran on this traffic "
              f"as well, in every phase ({', '.join(sorted(set(names)))})")


def prog_deltas(ids: dict[str, set[int]], p0: dict, p1: dict) -> list[dict]:
    """Runs and run time of each daemon's programs between two bpf_prog_stats()."""
    progs = []
    for label, pids in ids.items():
        for i in sorted(pids):
            if i not in p1:
                continue
            runs = p1[i]["run_cnt"] - p0.get(i, {}).get("run_cnt", 0)
            ns = p1[i]["run_time_ns"] - p0.get(i, {}).get("run_time_ns", 0)
            progs.append({"daemon": label, "id": i, "name": p1[i]["name"], "type": p1[i]["type"],
                          "runs": runs, "run_time_ns": ns, "ns_per_run": ns / runs if runs else None})
    return progs


class Sysctl:
    """Sets a sysctl for the life of a scope and puts the old value back."""

    def __init__(self, scope: Scope, key: str, value: str):
        path = Path("/proc/sys") / key.replace(".", "/")
        old = path.read_text().strip()
        path.write_text(value)
        scope.defer(f"sysctl {key}={old}", lambda: path.write_text(old))


# ---------------------------------------------------------------------------
# startup (item 8)


def bench_startup(args, scope: Scope, tmp: Path) -> dict:
    need_tools("ip", "nsenter")
    a, _b = make_pair(scope)
    rows = []
    for i in range(args.starts):
        d = Daemon(scope, args.flowmeterd, a, daemon_args(tmp, f"start{i}", IF_A), f"flowmeterd-start{i}", tmp).start()
        t_tc = d.wait_line("attached") - d.t0
        t_hooks = d.wait_line("socket hooks attached") - d.t0
        t_serving = d.wait_line("serving metrics") - d.t0
        deadline = time.monotonic() + 10
        while True:
            try:
                body = http_get(a, METRICS_PORT, timeout=2)
                t_first = time.monotonic() - d.t0
                break
            except (OSError, BenchError):
                if time.monotonic() > deadline:
                    raise BenchError(f"no /metrics answer within 10 s of start {i}:\n{d.stderr_tail()}")
                time.sleep(0.002)
        if "flowmeter_build_info" not in body:
            raise BenchError("/metrics answered without flowmeter_build_info")
        rows.append({"tc_attached": t_tc, "socket_hooks_attached": t_hooks, "serving_metrics": t_serving,
                     "first_metrics_answer": t_first})
        d.stop()
        time.sleep(0.5)
    keys = ("tc_attached", "socket_hooks_attached", "serving_metrics", "first_metrics_answer")
    med = {k: median([r[k] for r in rows]) for k in keys}
    print(f"\nflowmeterd start-up: exec to each point, seconds ({args.starts} starts, daemon in a namespace "
          f"with one veth, --interfaces {IF_A}; t0 is taken before spawning nsenter, which execs flowmeterd)")
    print(f"{'start':<8}{'tc attached':>14}{'hooks attached':>16}{'serving metrics':>17}{'first /metrics':>16}")
    for i, r in enumerate(rows, 1):
        print(f"{i:<8}" + "".join(f"{r[k]:>{w}.3f}" for k, w in zip(keys, (14, 16, 17, 16))))
    print(f"{'median':<8}" + "".join(f"{med[k]:>{w}.3f}" for k, w in zip(keys, (14, 16, 17, 16))))
    t = med["first_metrics_answer"]
    fig = br.FIGURES["startup.first_answer_s"]
    print(f"target: loaded, attached and answering {fig.target[0]} {fig.target[1]:g} s: {t:.3f} s, {br.verdict(fig, t)}")
    for fid, key in (("startup.tc_attached_s", "tc_attached"), ("startup.hooks_attached_s", "socket_hooks_attached"),
                     ("startup.first_answer_s", "first_metrics_answer")):
        br.emit(args.figures, fid, [r[key] for r in rows])
    return {"starts": rows, "median": med, "target_met": br.verdict(fig, t) == "met"}


# ---------------------------------------------------------------------------
# idle RSS of two builds (the static executable of tools/package against the
# dynamic one), interleaved in one run


def bench_idle(args, scope: Scope, tmp: Path) -> dict:
    """Idle VmRSS (default flags, one veth) of --flowmeterd and of each
    --also binary, started in turn --starts times, 3 s after ready each."""
    need_tools("ip")
    ns = add_netns(scope, "i")
    sh("ip", "-n", ns, "link", "add", "fmi0", "type", "veth", "peer", "name", "fmi1")
    sh("ip", "-n", ns, "link", "set", "fmi0", "up")
    sh("ip", "-n", ns, "link", "set", "fmi1", "up")
    binaries = [args.flowmeterd] + [os.path.abspath(b) for b in args.also]
    samples: dict = {b: [] for b in binaries}
    anon: dict = {b: [] for b in binaries}
    smaps: dict = {}
    for i in range(args.starts):
        for b in binaries:
            d = Daemon(scope, b, ns, daemon_args(tmp, f"idle-{i}", "fmi0"), f"flowmeterd-idle-{i}", tmp).start().ready()
            time.sleep(3)
            mib, _ = sample_rss_mib(d.pid, 3)
            samples[b].append(mib)
            anon[b].append(rss_parts_mib(d.pid)["RssAnon"])
            if i + 1 == args.starts:
                smaps[b] = smaps_breakdown(d.pid, b)
            d.stop()
    result = {b: {"median_mib": statistics.median(v), "samples": v, "anon_median_mib": statistics.median(anon[b]),
                  "file_bytes": os.path.getsize(b)} for b, v in samples.items()}
    print(f"\nidle VmRSS, default flags, one veth: median of {args.starts} starts (each: median of 3 samples), "
          "binaries started in turn")
    base = result[binaries[0]]["median_mib"]
    for b in binaries:
        r = result[b]
        print(f"  {r['median_mib']:6.1f} MiB (anon {r['anon_median_mib']:5.1f} MiB)  x{r['median_mib'] / base:.2f}  "
              f"{r['file_bytes'] / 2**20:6.1f} MiB file  {b}")
    print_smaps_breakdowns(smaps)
    for b in binaries:
        result[b]["smaps"] = smaps[b]
    br.emit(args.figures, "idle.rss_mib", result[binaries[0]]["samples"])
    return {"binaries": result}


# ---------------------------------------------------------------------------
# memory (item 6)


SENDER = r"""
import select, socket, sys, time
n, addrs, base, seconds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
per = -(-n // addrs)
targets = [(f"10.128.0.{1 + i // per}", base + i % per) for i in range(n)]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
deadline = time.monotonic() + seconds
cycles = errors = 0
while time.monotonic() < deadline:
    t = time.monotonic()
    for dst in targets:
        try:
            s.sendto(b"x", dst)
        except OSError:
            errors += 1
    cycles += 1
    if cycles == 1:
        print(f"cycle {time.monotonic() - t:.3f}", flush=True)
    if select.select([sys.stdin], [], [], 0)[0]:
        break
print(f"done {cycles} {errors}", flush=True)
"""


def bench_memory(args, scope: Scope, tmp: Path) -> dict:
    need_tools("ip", "nsenter")
    n = args.flows
    table = 1 << max(n - 1, 1).bit_length()
    if table < n * 1.2:
        table *= 2
    ns = add_netns(scope, "m")
    # The destinations sit behind a gateway on a veth whose other end is in the
    # same namespace and does not forward: the datagrams go out of fmb0 (where
    # the daemon counts them) and are dropped on fmb1.
    sh("ip", "-n", ns, "link", "add", "fmb0", "type", "veth", "peer", "name", "fmb1")
    sh("ip", "-n", ns, "addr", "add", "10.127.0.1/24", "dev", "fmb0")
    sh("ip", "-n", ns, "addr", "add", "10.127.0.2/24", "dev", "fmb1")
    sh("ip", "-n", ns, "link", "set", "fmb0", "up")
    sh("ip", "-n", ns, "link", "set", "fmb1", "up")
    # ARP between two ends in one namespace does not resolve (the request's
    # source is a local address); an unresolved gateway would hold the
    # datagrams and block the sender on its send buffer.
    mac1 = json.loads(sh("ip", "-j", "-n", ns, "link", "show", "fmb1").stdout)[0]["address"]
    sh("ip", "-n", ns, "neigh", "add", "10.127.0.2", "lladdr", mac1, "dev", "fmb0", "nud", "permanent")
    sh("ip", "-n", ns, "route", "add", "10.128.0.0/16", "via", "10.127.0.2", "dev", "fmb0")

    result: dict = {"flows": n, "flow_table_size": table}

    # Idle with every default except where the daemon must not collide with others.
    d = Daemon(scope, args.flowmeterd, ns, daemon_args(tmp, "idle", "fmb0"), "flowmeterd-idle", tmp).start().ready()
    time.sleep(3)
    result["idle_default_mib"], result["idle_default_samples"] = sample_rss_mib(d.pid)
    result["idle_default_parts"] = rss_parts_mib(d.pid)
    result["idle_default_top_mappings"] = top_mappings_mib(d.pid)
    # The default size depends on the CPU count; the daemon logs what it chose.
    m = re.search(r"flow_table_size=(\d+)", "\n".join(l for _, l in d.lines))
    result["default_flow_table_size"] = int(m.group(1)) if m else None
    d.stop()

    d = Daemon(scope, args.flowmeterd, ns, daemon_args(tmp, "big", "fmb0", "--flow-table-size", str(table)),
               "flowmeterd-big", tmp).start().ready()
    time.sleep(3)
    result["idle_big_table_mib"], result["idle_big_table_samples"] = sample_rss_mib(d.pid)

    sender = spawn(scope, ns, [sys.executable, "-c", SENDER, str(n), "4", "10000", "120"],
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    first = read_line(sender, 30).split()
    if not first or first[0] != "cycle":
        raise BenchError(f"the UDP sender failed: {first}")
    cycle = float(first[1])
    result["sender_cycle_seconds"] = cycle
    if cycle > 4:
        raise BenchError(f"one pass over the {n} flows takes {cycle:.1f} s, longer than the 5 s interval allows")
    # The gauge is the number of flows the last eviction found: all of them
    # once a whole interval has passed with the sender cycling.
    deadline = time.monotonic() + 40
    entries = 0
    while time.monotonic() < deadline:
        entries = msum(d.metrics(), "flowmeter_flow_table_entries")
        if entries >= n:
            break
        time.sleep(1)
    if entries < n:
        raise BenchError(f"the daemon reports {entries:.0f} flows in its table, fewer than the {n} sent")
    result["loaded_mib"], result["loaded_samples"] = sample_rss_mib(d.pid)
    result["loaded_parts"] = rss_parts_mib(d.pid)
    m = d.metrics()
    result["flow_table_entries"] = msum(m, "flowmeter_flow_table_entries")
    result["insert_failures"] = msum(m, "flowmeter_flow_table_insert_failures_total")
    result["flows_ring_lost"] = msum(m, "flowmeter_ringbuf_lost_records_total", ring="flows")
    result["tx_packets"] = msum(m, "flowmeter_interface_packets_total", interface="fmb0", direction="transmit")
    sender.stdin.close()
    sender.wait(timeout=30)
    d.stop()

    idle, loaded = result["idle_default_mib"], result["loaded_mib"]
    idle_fig, loaded_fig = br.FIGURES["memory.idle_rss_mib"], br.FIGURES["memory.flows_100k_rss_mib"]
    idle_ok, loaded_ok = br.verdict(idle_fig, idle) == "met", br.verdict(loaded_fig, loaded) == "met"
    br.emit(args.figures, "memory.idle_rss_mib", result["idle_default_samples"])
    if n == 100_000:
        br.emit(args.figures, "memory.flows_100k_rss_mib", result["loaded_samples"])
    print("\nflowmeterd resident memory (VmRSS, median of 5 samples 1 s apart)")
    print(f"{'state':<62}{'RSS':>10}  {'anon':>9}  {'files':>9}  target")
    parts = lambda k: f"{result[k]['RssAnon']:>5.1f} MiB  {result[k]['RssFile']:>5.1f} MiB  "
    print(f"{'idle, default flags (flow table ' + str(result['default_flow_table_size']) + ')':<62}{idle:>6.1f} MiB  "
          f"{parts('idle_default_parts')}"
          f"{idle_fig.target[0]} {idle_fig.target[1]:g} MiB: {br.verdict(idle_fig, idle)}")
    print(f"{'idle, --flow-table-size ' + str(table):<62}{result['idle_big_table_mib']:>6.1f} MiB")
    print(f"{f'{n:,} active flows (--flow-table-size {table}, interval 5s)':<62}{loaded:>6.1f} MiB  "
          f"{parts('loaded_parts')}"
          + (f"<= 150 MiB: {br.verdict(loaded_fig, loaded)}" if n >= 100_000
             else "(the 150 MiB target is for 100,000 flows)"))
    print(f"daemon's flowmeter_flow_table_entries {result['flow_table_entries']:,.0f} (sent {n:,} distinct UDP 5-tuples, "
          f"one pass every {cycle:.2f} s), insert failures {result['insert_failures']:.0f}, "
          f"flows ring lost {result['flows_ring_lost']:.0f}, packets counted {result['tx_packets']:,.0f}")
    print("largest resident mappings when idle (anon_inode:bpf-map: the mmapped ring buffers): " + ", ".join(
        f"{os.path.basename(k)} {v:.1f} MiB" for k, v in result["idle_default_top_mappings"]))
    result["targets_met"] = {"idle": idle_ok, "loaded": loaded_ok}
    return result



# ---------------------------------------------------------------------------
# iperf (item 4)


# The configurations an iperf or churn round runs, in this order (rotated from
# round to round). "flowmeterd" is the default daemon: socket, drop and DNS
# hooks on. "flowmeterd-nodns" differs only by --dns-ports off (flowmeterd has
# no switch for the drop hook; it runs only for dropped packets, and its run
# count is in the bpf_stats tables). softflowd and pmacctd are the peers.
CONFIGS = ["baseline", "flowmeterd", "flowmeterd-nodns", "softflowd", "pmacctd"]
FLOWMETERD_CONFIGS = {"flowmeterd": (), "flowmeterd-nodns": ("--dns-ports", "off")}
PEER_TOOLS = {"softflowd": ("softflowd", "softflowctl"), "pmacctd": ("pmacctd",)}


def parse_configs(text: str) -> list[str]:
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in chosen if c not in CONFIGS]
    if bad:
        raise BenchError(f"--configs: unknown {', '.join(bad)} (known: {', '.join(CONFIGS)})")
    if "baseline" not in chosen or "flowmeterd" not in chosen:
        raise BenchError("--configs must include baseline and flowmeterd (every ratio is against the baseline)")
    return [c for c in CONFIGS if c in chosen]


def config_key(config: str) -> str:
    """The configuration as it appears in figure ids (tools/bench_results.py)."""
    return config.replace("-", "_")


def tree_pids(pid: int) -> list[int]:
    """pid and its live descendants (pmacctd forks a plugin process, and the
    print plugin forks a writer at every refresh)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of pid and its live descendants, plus cutime + cstime of
    each (the children they reaped): a process's CPU is counted once, alive or
    reaped, so the difference of two readings is what the tree used between them."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


PMACCTD_CONF = """\
! pmacctd on one veth end, for tools/bench_e2e.py: flows aggregated on the
! 5-tuple by the print plugin, purged to a CSV file every second (a collector
! that aggregates and exports, as softflowd and flowmeterd do).
daemonize: false
pcap_interface: {dev}
aggregate: src_host, dst_host, src_port, dst_port, proto
plugins: print
print_refresh_time: 1
print_output: csv
print_output_file: {out}
print_output_file_append: true
logfile: {log}
"""


def pmacctd_counted(out: Path) -> dict:
    """Packets, bytes and rows pmacctd's print plugin wrote (all refreshes)."""
    packets = nbytes = rows = 0
    if out.exists():
        header = None
        for line in out.read_text().splitlines():
            cols = line.split(",")
            if cols and cols[0] == "SRC_IP":
                header = cols
                continue
            if header and len(cols) == len(header):
                rows += 1
                packets += int(cols[header.index("PACKETS")])
                nbytes += int(cols[header.index("BYTES")])
    return {"packets": packets, "bytes": nbytes, "rows": rows}


class Collectors:
    """Starts and stops one configuration's collectors on both veth ends."""

    def __init__(self, args, scope: Scope, tmp: Path, a: str, b: str, services: str):
        self.args, self.scope, self.tmp, self.a, self.b = args, scope, tmp, a, b
        self.n = 0
        cfg = tmp / "collectors.yaml"
        # Names the traffic's sockets on daemon A (its hooks are host-wide), so
        # its counts can be told apart from anything else on the host.
        cfg.write_text(services)
        self.config = cfg

    def start(self, config: str) -> dict:
        self.n += 1
        run = {"config": config, "daemons": [], "softflowd": [], "pmacctd": []}
        if config in FLOWMETERD_CONFIGS:
            extra = FLOWMETERD_CONFIGS[config]
            da = Daemon(self.scope, self.args.flowmeterd, self.a,
                        daemon_args(self.tmp, f"a{self.n}", IF_A, "--interval", "1s", *extra, config=self.config),
                        f"flowmeterd-a{self.n}", self.tmp).start()
            # B's daemon is there for its tc programs only: socket and DNS hooks
            # are host-wide (tracepoints, the root cgroup), so A's see both
            # namespaces' sockets, and B's would run them a second time. (The
            # drop hook is host-wide too and has no switch: both daemons' run.)
            db = Daemon(self.scope, self.args.flowmeterd, self.b,
                        daemon_args(self.tmp, f"b{self.n}", IF_B, "--interval", "1s", "--hooks", "off",
                                    "--dns-ports", "off"),
                        f"flowmeterd-b{self.n}", self.tmp).start()
            da.ready()
            db.ready()
            run["daemons"] = [da, db]
        elif config == "softflowd":
            for ns, dev in ((self.a, IF_A), (self.b, IF_B)):
                ctl = self.tmp / f"sf-{dev}-{self.n}.ctl"
                p = spawn(self.scope, ns, ["softflowd", "-d", "-i", dev, "-n", f"127.0.0.1:{NETFLOW_PORT}",
                                           "-p", str(self.tmp / f"sf-{dev}-{self.n}.pid"), "-c", str(ctl)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                run["softflowd"].append((p, ctl))
            for p, ctl in run["softflowd"]:
                deadline = time.monotonic() + 10
                while not ctl.exists():
                    if p.poll() is not None or time.monotonic() > deadline:
                        raise BenchError(f"softflowd did not start (exit {p.poll()})")
                    time.sleep(0.02)
        elif config == "pmacctd":
            for ns, dev in ((self.a, IF_A), (self.b, IF_B)):
                base = self.tmp / f"pm-{dev}-{self.n}"
                conf, out, log = base.with_suffix(".conf"), base.with_suffix(".csv"), base.with_suffix(".log")
                conf.write_text(PMACCTD_CONF.format(dev=dev, out=out, log=log))
                p = spawn(self.scope, ns, ["pmacctd", "-f", str(conf)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                run["pmacctd"].append((p, out, log))
            for p, out, log in run["pmacctd"]:
                # Up when the capture is open ("link type") and the plugin has its cache.
                deadline = time.monotonic() + 10
                while True:
                    text = log.read_text() if log.exists() else ""
                    if "link type is" in text and "cache entries=" in text:
                        break
                    if p.poll() is not None or time.monotonic() > deadline:
                        raise BenchError(f"pmacctd did not start (exit {p.poll()}): {text[-500:]}")
                    time.sleep(0.02)
        return run

    @staticmethod
    def pids(run: dict) -> list[int]:
        return ([d.pid for d in run["daemons"]] + [p.pid for p, _ in run["softflowd"]]
                + [p.pid for p, _, _ in run["pmacctd"]])

    @staticmethod
    def cpu(run: dict) -> list[float]:
        """Each collector's CPU seconds so far (its process tree)."""
        return [tree_cpu_seconds(p) for p in Collectors.pids(run)]

    def stop(self, run: dict) -> None:
        for d in run["daemons"]:
            d.stop()
        for p, _ in run["softflowd"]:
            stop_process(p)
        for p, _, _ in run["pmacctd"]:
            kids = tree_pids(p.pid)[1:]
            stop_process(p)
            # The plugin follows its core; one that did not is ours to end, by pid.
            time.sleep(0.2)
            for k in kids:
                try:
                    if Path(f"/proc/{k}/comm").read_text().startswith("pmacctd"):  # not a reused pid
                        os.kill(k, signal.SIGKILL)
                except (OSError, ProcessLookupError):
                    pass

    @staticmethod
    def verify_peers(run: dict) -> dict | list | None:
        """softflowd's or pmacctd's own counts; an error if one saw nothing."""
        if run["softflowd"]:
            v = [softflowd_stats(ctl) for _, ctl in run["softflowd"]]
            if any(not s["packets"] for s in v):
                raise BenchError(f"softflowd processed no packets: {v}")
            return v
        if run["pmacctd"]:
            # The print plugin writes once a second (print_refresh_time).
            deadline = time.monotonic() + 3
            while True:
                v = [pmacctd_counted(out) for _, out, _ in run["pmacctd"]]
                if all(s["packets"] for s in v) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            if any(not s["packets"] for s in v):
                raise BenchError(f"pmacctd's print plugin wrote no packets: {v}")
            return v
        return None


def softflowd_stats(ctl: Path) -> dict:
    out = sh("softflowctl", "-c", str(ctl), "statistics").stdout
    stats = {}
    for key, pat in (("packets", r"Packets processed: (\d+)"), ("pcap_received", r"received by libpcap: (\d+)"),
                     ("pcap_dropped", r"dropped by libpcap: (\d+)"), ("flows", r"active flows: (\d+)")):
        m = re.search(pat, out)
        stats[key] = int(m.group(1)) if m else None
    return stats


def iperf_once(a: str, seconds: float, extra: tuple = ()) -> dict:
    p = subprocess.run(["nsenter", f"--net=/run/netns/{a}", "iperf3", "-c", V4_B, "-p", str(IPERF_PORT),
                        "-t", str(seconds), "-J", "--connect-timeout", "3000", *extra],
                       capture_output=True, text=True, timeout=seconds + 60, env=clean_env())
    try:
        j = json.loads(p.stdout)
    except json.JSONDecodeError:
        raise BenchError(f"iperf3 printed no JSON (exit {p.returncode}): {p.stdout[-500:]} {p.stderr[-500:]}")
    if "error" in j:
        raise BenchError(f"iperf3: {j['error']}")
    end = j["end"]
    rx = end["sum_received"]
    if not rx.get("bytes"):
        raise BenchError("iperf3 moved no bytes")
    cpu = end.get("cpu_utilization_percent", {})
    return {"bytes": rx["bytes"], "sent_bytes": end["sum_sent"]["bytes"], "seconds": rx["seconds"],
            "gbps": rx["bits_per_second"] / 1e9, "retransmits": end["sum_sent"].get("retransmits"),
            # iperf3's own getrusage deltas, client and server, as a share of the test's duration.
            "iperf_cpu": (cpu.get("host_total", 0) + cpu.get("remote_total", 0)) / 100 * rx["seconds"]}


def rotated(configs: list, rounds: int):
    """(round, configuration): each round runs every configuration once,
    starting one further along than the round before, so none always runs
    first (after the warm-up) or right after the same neighbour."""
    for rnd in range(rounds):
        k = rnd % len(configs)
        for config in configs[k:] + configs[:k]:
            yield rnd, config


def ksoftirqd_pids(cpu: int) -> list[int]:
    """The softirq threads that take over the data path's softirqs when they pile up."""
    want = re.compile(rf"ksoftirqd/{cpu}$" if cpu >= 0 else r"ksoftirqd/\d+$")
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if want.match(Path(f"/proc/{d}/comm").read_text().strip()):
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def verify_flowmeterd_iperf(run: dict, r: dict) -> dict:
    """The daemons must have counted the transfer: L3 bytes on both ends at
    least the payload, and the client's payload bytes from the socket hooks
    within 1% of iperf3's."""
    da, db = run["daemons"]
    want = r["sent_bytes"]
    deadline = time.monotonic() + 8
    while True:
        ma, mb = da.metrics(), db.metrics()
        tx = msum(ma, "flowmeter_interface_io_bytes_total", interface=IF_A, direction="transmit")
        rx = msum(mb, "flowmeter_interface_io_bytes_total", interface=IF_B, direction="receive")
        payload = msum(ma, "flowmeter_network_io_bytes_total", service="bench-iperf-client", direction="transmit")
        if (tx >= want and rx >= want and abs(payload - want) <= 0.01 * want) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    v = {"l3_tx_a": tx, "l3_rx_b": rx, "payload_hooks": payload, "iperf_payload": want,
         "events_lost": msum(ma, "flowmeter_ringbuf_lost_records_total", ring="events"),
         "flows_lost": msum(ma, "flowmeter_ringbuf_lost_records_total", ring="flows")
         + msum(mb, "flowmeter_ringbuf_lost_records_total", ring="flows")}
    if not (want <= tx <= want * 1.2 and want <= rx <= want * 1.2):
        raise BenchError(f"flowmeterd counted {tx:.0f} B on {IF_A} transmit and {rx:.0f} B on {IF_B} receive "
                         f"for {want} B of iperf3 payload")
    if abs(payload - want) > 0.01 * want:
        raise BenchError(f"socket hooks counted {payload:.0f} payload bytes for iperf3's {want}")
    return v


def bench_iperf(args, scope: Scope, tmp: Path) -> dict:
    configs = parse_configs(args.configs)
    need_tools("ip", "nsenter", "ss", "iperf3", "bpftool", *[t for c in configs for t in PEER_TOOLS.get(c, ())])
    a, b = make_pair(scope)
    server = spawn(scope, b, ["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while f":{IPERF_PORT}" not in sh("ip", "netns", "exec", b, "ss", "-Hltn").stdout:
        if server.poll() is not None or time.monotonic() > deadline:
            raise BenchError("iperf3 server did not start")
        time.sleep(0.05)
    col = Collectors(args, scope, tmp, a, b,
                     f"services:\n  - name: bench-iperf-server\n    ports: {IPERF_PORT}\n"
                     "  - name: bench-iperf-client\n    process: iperf3\n")
    runs = []
    pin = () if args.cpu < 0 else ("-A", f"{args.cpu},{args.cpu}")
    softirq_threads = ksoftirqd_pids(args.cpu)
    iperf_once(a, 1, pin)  # warm-up: caches, the server's first accept
    for rnd, config in rotated(configs, args.rounds):
        run = col.start(config)
        try:
            time.sleep(0.5)
            c0 = Collectors.cpu(run)
            s0 = system_busy_seconds()
            k0 = sum(proc_cpu_seconds(p) for p in softirq_threads)
            r = iperf_once(a, args.seconds, pin)
            k1 = sum(proc_cpu_seconds(p) for p in softirq_threads)
            s1 = system_busy_seconds()
            c1 = Collectors.cpu(run)
            r.update(round=rnd, config=config, collector_cpu=sum(c1) - sum(c0),
                     collector_cpu_each=[y - x for x, y in zip(c0, c1)], system_cpu=s1 - s0,
                     ksoftirqd_cpu=k1 - k0, datapath_cpu=r["iperf_cpu"] + k1 - k0)
            if config in FLOWMETERD_CONFIGS:
                r["verify"] = verify_flowmeterd_iperf(run, r)
            else:
                r["verify"] = Collectors.verify_peers(run)
        finally:
            col.stop(run)
        runs.append(r)
        print(f"  round {rnd + 1} {config:<17} {r['gbps']:7.2f} Gbit/s  collector CPU {r['collector_cpu']:5.2f} s  "
              f"system CPU {r['system_cpu']:5.2f} s", file=sys.stderr)

    # One more flowmeterd run, outside the comparison (the statistics cost two
    # clock reads per program run): what the programs themselves take per GB.
    stats = Scope("bpf_stats")
    try:
        Sysctl(stats, "kernel.bpf_stats_enabled", "1")
        run = col.start("flowmeterd")
        try:
            time.sleep(0.5)
            da, db = run["daemons"]
            ids = {"a": daemon_prog_ids(da.pid), "b": daemon_prog_ids(db.pid)}
            all_ids = set().union(*ids.values())
            q0 = bpf_prog_stats(all_ids)
            costed = iperf_once(a, args.seconds, pin)
            q1 = bpf_prog_stats(all_ids)
        finally:
            col.stop(run)
    finally:
        stats.close()
    bpf_progs = [p for p in prog_deltas(ids, q0, q1) if p["runs"]]
    costed_gb = costed["bytes"] / 1e9
    bpf_per_gb = sum(p["run_time_ns"] for p in bpf_progs) / 1e9 / costed_gb

    base = {x["round"]: x for x in runs if x["config"] == "baseline"}
    summary, per_round = {}, {}
    for config in configs:
        rs = [x for x in runs if x["config"] == config]
        gb = [x["bytes"] / 1e9 for x in rs]
        per_round[config] = {
            "gbps": [x["gbps"] for x in rs],
            "ratio": [x["gbps"] / base[x["round"]]["gbps"] for x in rs],
            "collector_cpu_per_gb": [x["collector_cpu"] / g for x, g in zip(rs, gb)],
            "cost_ratio": [base[x["round"]]["datapath_cpu"] / base[x["round"]]["bytes"]
                           / (x["datapath_cpu"] / x["bytes"]) for x in rs],
        }
        summary[config] = {
            "gbps": median(per_round[config]["gbps"]),
            "gbps_min": min(x["gbps"] for x in rs), "gbps_max": max(x["gbps"] for x in rs),
            "ratio": median(per_round[config]["ratio"]),
            "collector_cpu_per_gb": median(per_round[config]["collector_cpu_per_gb"]),
            "system_cpu_per_gb": median([x["system_cpu"] / g for x, g in zip(rs, gb)]),
            "datapath_cpu_per_gb": median([x["datapath_cpu"] / g for x, g in zip(rs, gb)]),
            "cost_ratio": median(per_round[config]["cost_ratio"]),
            "retransmits": median([x["retransmits"] or 0 for x in rs]),
        }
    fm = summary["flowmeterd"]
    where = "unpinned" if args.cpu < 0 else f"client and server on CPU {args.cpu}"
    print(f"\niperf3 TCP A -> B over a veth pair ({where}), {args.rounds} rounds x {args.seconds} s, "
          f"configurations rotated each round; medians")
    print(f"{'':<18}{'':>8}{'':>15}{'vs':>10}{'':>9}{'data-path':>11}{'baseline /':>12}{'collector':>11}{'all CPUs':>10}")
    print(f"{'config':<18}{'Gbit/s':>8}{'min..max':>15}{'baseline':>10}{'retrans':>9}{'CPU s/GB':>11}"
          f"{'this cost':>12}{'CPU s/GB':>11}{'s/GB':>10}")
    for config in configs:
        x = summary[config]
        cpu = "-" if config == "baseline" else f"{x['collector_cpu_per_gb']:.4f}"
        print(f"{config:<18}{x['gbps']:>8.2f}{x['gbps_min']:>7.2f}..{x['gbps_max']:<6.2f}{x['ratio']:>9.3f}x"
              f"{x['retransmits']:>9.0f}{x['datapath_cpu_per_gb']:>11.4f}{x['cost_ratio']:>11.3f}x{cpu:>11}"
              f"{x['system_cpu_per_gb']:>10.4f}")
    print("flowmeterd: drop and DNS hooks on (the defaults); flowmeterd-nodns: --dns-ports off (the drop hook has no\n"
          "switch; it runs only for dropped packets, see its runs below).")
    ratio_v = br.verdict(br.FIGURES["iperf.flowmeterd_ratio"], fm["ratio"])
    cost_v = br.verdict(br.FIGURES["iperf.flowmeterd_cost_ratio"], fm["cost_ratio"])
    print(f"target flowmeterd {br.FIGURES['iperf.flowmeterd_ratio'].target[0]} "
          f"{br.FIGURES['iperf.flowmeterd_ratio'].target[1]}x baseline, throughput: {fm['ratio']:.3f}x, {ratio_v}; "
          f"CPU per GB (target {br.FIGURES['iperf.flowmeterd_cost_ratio'].target[1]}x): {fm['cost_ratio']:.3f}x, {cost_v}")
    ahead = {}
    for peer in ("softflowd", "pmacctd"):
        if peer not in summary:
            continue
        sf = summary[peer]
        ahead[peer] = {"throughput": fm["gbps"] > sf["gbps"], "cost": fm["cost_ratio"] > sf["cost_ratio"],
                       "own_cpu": fm["collector_cpu_per_gb"] < sf["collector_cpu_per_gb"]}
        behind = "%.2f Gbit/s" % (sf["gbps"] - fm["gbps"])
        cost_behind = "%.3fx" % (sf["cost_ratio"] - fm["cost_ratio"])
        print(f"target flowmeterd ahead of {peer}, throughput: {fm['gbps']:.2f} vs {sf['gbps']:.2f} Gbit/s, "
              f"{fmt_target(ahead[peer]['throughput'], behind)}; data-path CPU per GB: "
              f"{fm['cost_ratio']:.3f}x vs {sf['cost_ratio']:.3f}x, "
              f"{fmt_target(ahead[peer]['cost'], cost_behind)}; own CPU per GB: "
              f"{fm['collector_cpu_per_gb']:.4f} vs {sf['collector_cpu_per_gb']:.4f} s")
    print("data-path CPU: iperf3 client + server utime+stime (their JSON) + ksoftirqd, per GB of payload. Ticks in\n"
          "softirq count to the task they interrupted (no IRQ time accounting here), so this includes the BPF\n"
          "programs and the packet-socket copies; 'baseline / this cost' is the throughput a CPU-bound path would\n"
          "keep. Throughput itself also depends on how much CPU iperf3 gets, which on a shared machine swings more\n"
          "than any collector costs. Collector CPU: the collectors' own processes (both ends; pmacctd's core, plugin\n"
          "and the plugin's writers), BPF not included. All CPUs: the machine's busy time per GB, including whatever\n"
          "else ran meanwhile.")
    base_dp = summary["baseline"]["datapath_cpu_per_gb"]
    print(f"\nflowmeterd's BPF programs in one more run with kernel.bpf_stats_enabled=1 ({costed['gbps']:.2f} Gbit/s, "
          f"{costed_gb:.2f} GB): {bpf_per_gb:.4f} CPU s per GB = {bpf_per_gb / base_dp * 100:.1f}% of the "
          f"baseline's data-path CPU per GB")
    print(f"{'daemon':<7}{'program':<21}{'runs':>12}{'runs/GB':>12}{'ns/run':>9}{'ms/GB':>9}")
    for p in sorted(bpf_progs, key=lambda p: (p["daemon"], -p["runs"])):
        print(f"{p['daemon']:<7}{p['name']:<21}{p['runs']:>12,}{p['runs'] / costed_gb:>12,.0f}{p['ns_per_run']:>9.0f}"
              f"{p['run_time_ns'] / 1e6 / costed_gb:>9.2f}")
    fr = [x for x in runs if x["config"] in FLOWMETERD_CONFIGS]
    v = fr[-1]["verify"]
    print(f"check (last flowmeterd run): iperf3 payload {v['iperf_payload']:,} B; flowmeterd L3 {IF_A} transmit "
          f"{v['l3_tx_a']:,.0f} B, {IF_B} receive {v['l3_rx_b']:,.0f} B; socket-hook payload {v['payload_hooks']:,.0f} B; "
          f"lost records {max(x['verify']['events_lost'] + x['verify']['flows_lost'] for x in fr):.0f} (any run)")
    if "softflowd" in configs:
        sv = [x for x in runs if x["config"] == "softflowd"][-1]["verify"]
        print(f"check (last softflowd run): packets processed {IF_A} {sv[0]['packets']:,}, {IF_B} {sv[1]['packets']:,}; "
              f"libpcap drops {sv[0]['pcap_dropped']}, {sv[1]['pcap_dropped']}")
    if "pmacctd" in configs:
        last = [x for x in runs if x["config"] == "pmacctd"][-1]
        pv = last["verify"]
        print(f"check (last pmacctd run): its print plugin wrote {IF_A} {pv[0]['packets']:,} packets, "
              f"{pv[0]['bytes']:,} B; {IF_B} {pv[1]['packets']:,} packets, {pv[1]['bytes']:,} B "
              f"(iperf3 payload {last['sent_bytes']:,} B; L3 bytes include headers)")
    emit = lambda fid, xs, value=None: br.emit(args.figures, fid, xs, value)
    emit("iperf.baseline_gbps", per_round["baseline"]["gbps"])
    for config in configs[1:]:
        key = config_key(config)
        emit(f"iperf.{key}_ratio", per_round[config]["ratio"])
        emit(f"iperf.{key}_cpu_s_per_gb", per_round[config]["collector_cpu_per_gb"])
        if config in FLOWMETERD_CONFIGS:
            emit(f"iperf.{key}_cost_ratio", per_round[config]["cost_ratio"])
    emit("iperf.bpf_cpu_s_per_gb", [bpf_per_gb])
    res = {"runs": runs, "summary": summary, "configs": configs,
           "targets_met": {"ratio": ratio_v == "met", "cost_ratio": cost_v == "met", "ahead": ahead},
           "bpf_cost_run": {"iperf": costed, "programs": bpf_progs, "bpf_cpu_seconds_per_gb": bpf_per_gb}}
    note_foreign(res)
    return res


# ---------------------------------------------------------------------------
# churn (items 5 and 2)


CHURN_SERVER = r"""
import os, signal, socket, sys
addr, port, procs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open("/proc/self/comm", "w") as f:
    f.write("fmchurn-srv")
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((addr, port))
l.listen(4096)
kids = []
for _ in range(procs):
    pid = os.fork()
    if pid == 0:
        while True:
            c, _ = l.accept()
            try:
                c.settimeout(5)
                d = c.recv(64)
                if d:
                    c.sendall(d)
                    c.recv(64)      # the client's FIN: the client closes first
            except OSError:
                pass
            c.close()
    kids.append(pid)
print("ready", flush=True)
sys.stdin.read()
for k in kids:
    os.kill(k, signal.SIGKILL)
for k in kids:
    os.waitpid(k, 0)
"""

CHURN_CLIENT = r"""
import json, os, socket, sys, time
addr, port, seconds, procs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
# Optional connections/s per process (tools/soak.py): a soak must not saturate the machine.
rate = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
# The daemon names the client end by this process name (a rule in its config).
with open("/proc/self/comm", "w") as f:
    f.write("fmchurn-cli")
start = time.monotonic()
deadline = start + seconds
pipes = []
for _ in range(procs):
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        n = err = 0
        payload = b"x" * 32
        slot = time.monotonic()
        while time.monotonic() < deadline:
            if rate:
                slot += 1 / rate
                pause = slot - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                else:
                    slot = time.monotonic()  # fell behind: no burst to catch up
            s = socket.socket()
            try:
                s.settimeout(5)
                s.connect((addr, port))
                s.sendall(payload)
                if s.recv(64):
                    n += 1
                else:
                    err += 1
            except OSError:
                err += 1
            finally:
                s.close()
        os.write(w, f"{n} {err}".encode())
        os._exit(0)
    os.close(w)
    pipes.append(r)
n = err = 0
for r in pipes:
    a, b = os.read(r, 100).split()
    n += int(a); err += int(b)
for _ in pipes:
    os.wait()
print(json.dumps({"connections": n, "errors": err, "seconds": time.monotonic() - start}), flush=True)
"""


def churn_phase(a: str, seconds: float, procs: int, scope: Scope) -> dict:
    p = spawn(scope, a, [sys.executable, "-c", CHURN_CLIENT, V4_B, str(CHURN_PORT), str(seconds), str(procs)],
              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=seconds + 60)
    if p.returncode != 0:
        raise BenchError(f"churn client failed ({p.returncode}): {err[-1000:]}")
    r = json.loads(out.strip().splitlines()[-1])
    if r["connections"] == 0:
        raise BenchError(f"the churn client completed no connection ({r['errors']} errors)")
    r["rate"] = r["connections"] / r["seconds"]
    return r


def settled_metrics(d: Daemon, key, timeout: float = 20) -> list:
    """Scrapes until key(samples) is the same twice, more than an interval apart."""
    deadline = time.monotonic() + timeout
    m = d.metrics()
    while True:
        time.sleep(1.3)
        nxt = d.metrics()
        if key(nxt) == key(m) or time.monotonic() > deadline:
            return nxt
        m = nxt


def verify_churn(run: dict, n: int) -> dict:
    """What daemon A counted of the n connections the client made in one
    phase, its lost records (both daemons) and its RSS at the end."""
    da, db = run["daemons"]

    def opened(m):
        return (msum(m, "flowmeter_tcp_connections_opened_total", service="churn-client", role="client"),
                msum(m, "flowmeter_tcp_connections_opened_total", service="churn-server", role="server"))
    m = settled_metrics(da, opened)
    mb = db.metrics()
    cli, srv = opened(m)
    events_lost = msum(m, "flowmeter_ringbuf_lost_records_total", ring="events")
    flows_lost = (msum(m, "flowmeter_ringbuf_lost_records_total", ring="flows")
                  + msum(mb, "flowmeter_ringbuf_lost_records_total", ring="flows"))
    v = {"opened_client": cli, "opened_server": srv, "events_lost": events_lost, "flows_lost": flows_lost,
         "rss_a_mib": rss_kib(da.pid) / 1024, "rss_b_mib": rss_kib(db.pid) / 1024}
    # A lost open event is a connection not counted; a lost close is not.
    missing = (n - cli) + (n - srv)
    if missing > events_lost:
        others = {}
        for name, labels, val in m:
            if name == "flowmeter_tcp_connections_opened_total" and val and \
                    (labels.get("service"), labels.get("role")) not in (("churn-client", "client"), ("churn-server", "server")):
                k = f"{labels.get('service')}/{labels.get('peer_service')}/{labels.get('role')}"
                others[k] = others.get(k, 0) + val
        v["other_opened"] = others
    if not (cli > 0 and srv > 0 and cli <= n and srv <= n and missing <= events_lost + 0.01 * n):
        # Kept and reported: the rates measured are still what they are.
        v["error"] = (f"flowmeterd counted {cli:.0f}/{srv:.0f} opened connections of the client's {n} "
                      f"with {events_lost:.0f} events lost")
    return v


def bench_churn(args, scope: Scope, tmp: Path) -> dict:
    configs = parse_configs(args.configs)
    need_tools("ip", "nsenter", "bpftool", *[t for c in configs for t in PEER_TOOLS.get(c, ())])
    a, b = make_pair(scope)
    # Ports for the client: a wide range, and TIME_WAIT ports reused after a
    # second (timestamps on), or the client would run out of them at a few
    # hundred connections per second.
    sh("ip", "netns", "exec", a, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=10000 65000",
       "net.ipv4.tcp_tw_reuse=1")
    server = spawn(scope, b, [sys.executable, "-c", CHURN_SERVER, V4_B, str(CHURN_PORT), str(args.server_procs)],
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if read_line(server, 10).strip() != "ready":
        raise BenchError("churn server did not start")
    procs = args.client_procs
    col = Collectors(args, scope, tmp, a, b,
                     f"services:\n  - name: churn-server\n    ports: {CHURN_PORT}\n"
                     "  - name: churn-client\n    process: fmchurn-cli\n")
    churn_phase(a, 1, procs, scope)  # warm-up

    phases = []
    for rnd, config in rotated(configs, args.churn_rounds):
        run = col.start(config)
        try:
            time.sleep(0.5)
            c0 = Collectors.cpu(run)
            s0 = system_busy_seconds()
            r = churn_phase(a, args.churn_seconds, procs, scope)
            s1 = system_busy_seconds()
            c1 = Collectors.cpu(run)
            r.update(round=rnd, config=config, collector_cpu=sum(c1) - sum(c0),
                     collector_cpu_each=[y - x for x, y in zip(c0, c1)], system_cpu=s1 - s0)
            if config in FLOWMETERD_CONFIGS:
                r["verify"] = verify_churn(run, r["connections"])
            else:
                r["verify"] = Collectors.verify_peers(run)
        finally:
            col.stop(run)
        phases.append(r)
        print(f"  round {rnd + 1} {config:<17} {r['rate']:8.0f} conn/s  collector CPU {r['collector_cpu']:5.2f} s",
              file=sys.stderr)

    # One more flowmeterd phase with kernel.bpf_stats_enabled=1, outside the
    # comparison (the statistics add two clock reads per program run): each
    # program's runs and time per connection.
    stats = Scope("bpf_stats")
    try:
        Sysctl(stats, "kernel.bpf_stats_enabled", "1")
        run = col.start("flowmeterd")
        try:
            time.sleep(0.5)
            da, db = run["daemons"]
            ids = {"a": daemon_prog_ids(da.pid), "b": daemon_prog_ids(db.pid)}
            all_ids = set().union(*ids.values())
            p0 = bpf_prog_stats(all_ids)
            costed = churn_phase(a, args.churn_seconds, procs, scope)
            p1 = bpf_prog_stats(all_ids)
            foreign = foreign_socket_hooks(all_ids)
        finally:
            col.stop(run)
    finally:
        stats.close()
    server.stdin.close()
    server.wait(timeout=15)
    progs = prog_deltas(ids, p0, p1)
    nc = costed["connections"]

    base = {x["round"]: x for x in phases if x["config"] == "baseline"}
    per_round, summary = {}, {}
    for config in configs:
        rs = [x for x in phases if x["config"] == config]
        per_round[config] = {"rate": [x["rate"] for x in rs],
                             "ratio": [x["rate"] / base[x["round"]]["rate"] for x in rs],
                             "cpu_per_10k": [x["collector_cpu"] / x["connections"] * 10_000 for x in rs],
                             "system_per_10k": [x["system_cpu"] / x["connections"] * 10_000 for x in rs]}
        summary[config] = {k: median(v) for k, v in per_round[config].items()}
        summary[config].update(rate_min=min(per_round[config]["rate"]), rate_max=max(per_round[config]["rate"]),
                               errors=sum(x["errors"] for x in rs))
    fr = [x for x in phases if x["config"] in FLOWMETERD_CONFIGS]
    lost = sum(x["verify"]["events_lost"] + x["verify"]["flows_lost"] for x in fr)
    last = [x for x in phases if x["config"] == "flowmeterd"][-1]

    print(f"\nTCP connection churn A -> B ({procs} client processes, {args.server_procs} server processes; connect, "
          f"32 bytes each way, close), {args.churn_rounds} rounds x {args.churn_seconds:g} s, configurations rotated "
          "each round; medians")
    print(f"{'config':<18}{'conn/s':>9}{'min..max':>17}{'vs baseline':>13}{'own CPU s':>11}{'all CPUs s':>12}{'errors':>8}")
    print(f"{'':<18}{'':>9}{'':>17}{'':>13}{'per 10k':>11}{'per 10k':>12}")
    for config in configs:
        x = summary[config]
        cpu = "-" if config == "baseline" else f"{x['cpu_per_10k']:.3f}"
        print(f"{config:<18}{x['rate']:>9.0f}{x['rate_min']:>8.0f}..{x['rate_max']:<7.0f}{x['ratio']:>12.3f}x{cpu:>11}"
              f"{x['system_per_10k']:>12.2f}{x['errors']:>8}")
    print("flowmeterd: drop and DNS hooks on (the defaults); flowmeterd-nodns: --dns-ports off (the drop hook has no\n"
          "switch; its runs are in the table below). Own CPU: the collectors' processes on both ends (pmacctd's core,\n"
          "plugin and writers), BPF not included.")
    fm = summary["flowmeterd"]
    rv = br.verdict(br.FIGURES["churn.flowmeterd_ratio"], fm["ratio"])
    print(f"target rate with flowmeterd {br.FIGURES['churn.flowmeterd_ratio'].target[0]} "
          f"{br.FIGURES['churn.flowmeterd_ratio'].target[1]}x of no collector: {fm['ratio']:.3f}x, {rv}")
    lv = br.verdict(br.FIGURES["churn.lost_records"], lost)
    print(f"lost records over the {len(fr)} flowmeterd phases (events and flows rings): {lost:.0f}; target 0: {lv}")
    v = last["verify"]
    print(f"RSS at the end of the last flowmeterd phase: A {v['rss_a_mib']:.1f} MiB, B {v['rss_b_mib']:.1f} MiB")
    bad = [x for x in fr if "error" in x["verify"]]
    for x in fr:
        n, xv = x["connections"], x["verify"]
        missing = (n - xv["opened_client"]) + (n - xv["opened_server"])
        print(f"connections, round {x['round'] + 1} {x['config']}: client made {n:,}; flowmeterd counted opened "
              f"{xv['opened_client']:,.0f} as client, {xv['opened_server']:,.0f} as server"
              + ("" if missing == 0 else f"; {missing:,.0f} ends not counted, {xv['events_lost']:,.0f} events lost")
              + ("" if "other_opened" not in xv else "; opened under other labels (this daemon sees the whole host): "
                 + (", ".join(f"{k} {c:.0f}" for k, c in sorted(xv["other_opened"].items())) or "none")))
    for peer in ("softflowd", "pmacctd"):
        if peer in configs:
            pv = [x for x in phases if x["config"] == peer][-1]["verify"]
            print(f"check (last {peer} phase): packets {IF_A} {pv[0]['packets']:,}, {IF_B} {pv[1]['packets']:,}"
                  + (f"; flows written {pv[0]['rows']:,}, {pv[1]['rows']:,}" if peer == "pmacctd" else ""))
    print(f"\nBPF programs in one more flowmeterd phase with kernel.bpf_stats_enabled=1 ({nc:,} connections, "
          f"{costed['rate']:.0f} conn/s)")
    print(f"{'daemon':<7}{'program':<21}{'type':<14}{'runs':>12}{'runs/conn':>11}{'ns/run':>9}{'ns/conn':>10}")
    for p in sorted(progs, key=lambda p: (p["daemon"], -p["runs"])):
        npr = f"{p['ns_per_run']:.0f}" if p["ns_per_run"] else "-"
        print(f"{p['daemon']:<7}{p['name']:<21}{p['type']:<14}{p['runs']:>12,}{p['runs'] / nc:>11.2f}{npr:>9}"
              f"{p['run_time_ns'] / nc:>10.0f}")
    total = sum(p["run_time_ns"] for p in progs)
    print(f"all programs: {total / nc:.0f} ns of BPF per connection ({total / 1e9:.2f} CPU s over the phase)")
    state = [p for p in progs if p["daemon"] == "a" and p["name"].startswith("fm_state") and p["runs"]]
    state_ns = (sum(p["run_time_ns"] for p in state) / sum(p["runs"] for p in state)) if state else None
    if foreign:
        print(f"note: {len(foreign)} socket-hook programs of another flowmeterd on this host ran on these "
              f"connections as well, in every phase ({', '.join(sorted(set(foreign)))})")

    emit = lambda fid, xs, value=None: br.emit(args.figures, fid, xs, value)
    emit("churn.baseline_rate", per_round["baseline"]["rate"])
    for config in configs[1:]:
        key = config_key(config)
        emit(f"churn.{key}_ratio", per_round[config]["ratio"])
        emit(f"churn.{key}_cpu_s_per_10k", per_round[config]["cpu_per_10k"])
    emit("churn.lost_records", [x["verify"]["events_lost"] + x["verify"]["flows_lost"] for x in fr], lost)
    emit("churn.bpf_ns_per_connection", [total / nc])
    if state_ns is not None:
        emit("churn.state_change_ns_per_run", [state_ns])
    emit("churn.rss_end_mib", [v["rss_a_mib"]])
    result = {"client_procs": procs, "server_procs": args.server_procs, "configs": configs, "phases": phases,
              "summary": summary, "lost_records": lost, "bpf_cost_phase": costed, "programs": progs,
              "state_change_ns_per_run": state_ns, "foreign_socket_hooks": foreign}
    if bad:
        result["error"] = "; ".join(f"round {x['round'] + 1} {x['config']}: {x['verify']['error']}" for x in bad)
        print(f"bench_e2e churn: FAILED: {result['error']}", file=sys.stderr)
    return result


# ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("subcommand", choices=["iperf", "churn", "memory", "startup", "idle", "all"])
    ap.add_argument("--flowmeterd", required=True, help="the daemon binary (a release build)")
    ap.add_argument("--json", help="write the raw numbers to this file")
    ap.add_argument("--rounds", type=int, default=5, help="iperf: rounds (default 5)")
    ap.add_argument("--seconds", type=int, default=5, help="iperf: seconds per run (default 5)")
    ap.add_argument("--cpu", type=int, default=1,
                    help="iperf: the CPU iperf3's client and server share (default 1; -1: not pinned)")
    ap.add_argument("--churn-seconds", type=float, default=10,
                    help="churn: seconds per phase, one phase per configuration and round (default 10)")
    ap.add_argument("--churn-rounds", type=int, default=3, help="churn: rounds (default 3)")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"iperf, churn: the configurations each round runs (default {','.join(CONFIGS)}; "
                         "baseline and flowmeterd are required)")
    ap.add_argument("--figures", default=os.environ.get("BENCH_FIGURES") or None, help="append each figure (tools/bench_results.py ids, per-round samples) as a "
                                      "JSON line to this file (default $BENCH_FIGURES); tools/bench collects them into "
                                      "out/bench/results.json")
    ap.add_argument("--client-procs", type=int, default=3, help="churn: client processes (default 3)")
    ap.add_argument("--server-procs", type=int, default=2, help="churn: server processes (default 2)")
    ap.add_argument("--flows", type=int, default=100_000, help="memory: active flows (default 100000)")
    ap.add_argument("--starts", type=int, default=5, help="startup, idle: starts (default 5)")
    ap.add_argument("--also", action="append", default=[],
                    help="idle: another flowmeterd to measure in the same run (repeatable), e.g. the static "
                         "one of tools/package (dpkg-deb -x out/flowmeter_*.deb DIR: DIR/usr/sbin/flowmeterd)")
    args = ap.parse_args()

    if os.geteuid() != 0:
        print("bench_e2e: needs root (namespaces, BPF)", file=sys.stderr)
        return 1
    args.flowmeterd = os.path.abspath(args.flowmeterd)
    if not os.access(args.flowmeterd, os.X_OK):
        print(f"bench_e2e: no flowmeterd at {args.flowmeterd} (swift build -c release --product flowmeterd)",
              file=sys.stderr)
        return 1
    try:
        parse_configs(args.configs)
    except BenchError as e:
        print(f"bench_e2e: {e}", file=sys.stderr)
        return 2
    if args.rounds < 1 or args.churn_rounds < 1 or args.seconds < 1 or args.churn_seconds <= 0:
        print("bench_e2e: --rounds, --churn-rounds, --seconds and --churn-seconds must be positive", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    remove_stale_namespaces()
    tmp = Path(tempfile.mkdtemp(prefix="fmbench-e2e-"))
    ROOT.defer(f"directory {tmp}", lambda: shutil.rmtree(tmp, ignore_errors=True))

    parts = {"startup": bench_startup, "memory": bench_memory, "iperf": bench_iperf, "churn": bench_churn}
    chosen = list(parts) if args.subcommand == "all" else [args.subcommand]
    parts["idle"] = bench_idle
    results: dict = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                                 "loadavg_at_start": os.getloadavg()}}
    status = 0
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"note: load average {load:.2f} on {os.cpu_count()} CPUs before starting: other work shares the "
              "machine, and every number below includes its interference")
    try:
        for name in chosen:
            scope = Scope(name)
            ROOT.defer(f"scope {name}", scope.close)
            t = time.monotonic()
            sub = tmp / name
            sub.mkdir()
            try:
                results[name] = parts[name](args, scope, sub)
                if "error" in results[name]:
                    status = 1
            except BenchError as e:
                print(f"\nbench_e2e {name}: FAILED: {e}", file=sys.stderr)
                results[name] = {"error": str(e)}
                status = 1
            finally:
                scope.close()
            results[name] = {**results.get(name, {}), "duration_seconds": time.monotonic() - t}
            print(f"({name}: {results[name]['duration_seconds']:.0f} s, load average {os.getloadavg()[0]:.2f})")
    finally:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2, default=str)
        ROOT.close()
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench_e2e: interrupted; everything it created is removed", file=sys.stderr)
        sys.exit(130)
