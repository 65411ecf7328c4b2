"""Fixtures for the flowmeterd end-to-end tests.

Every test builds its own pair of network namespaces joined by a veth pair,
runs flowmeterd inside one of them, sends traffic only between the two
namespaces, and removes everything again (processes first, then the
namespaces) whatever the outcome.

Environment:
  FLOWMETER_BIN                 the daemon (default: <repo>/.build/debug/flowmeterd)
  FLOWMETER_REQUIRE_PRIVILEGED  "1": not being root is a failure, not a skip

Tests marked `socket_updates` assert on socket telemetry; each runs once per
value of SOCKET_UPDATE_PATHS, given to every daemon it starts through
FLOWMETER_SOCKET_UPDATES: `auto` (what the host picks: the iterator where the
kernel takes it) and `raw-tp` (the path for kernels that refuse iterators,
forced), so both paths are tested on every machine.
"""
from __future__ import annotations

import ctypes
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NETTOOL = str(HERE / "nettool.py")
# Several daemons run at once in these tests; none takes the default API
# socket unless a test gives one (flags beat the environment).
os.environ["FLOWMETER_API_SOCKET"] = "off"
PYTHON = sys.executable
PREFIX = "fm"  # namespace names: fm-a-<pid>-<n>, fm-b-<pid>-<n>

# Addresses used only inside the namespaces a test creates.
MAC_A, MAC_B = "02:00:0a:c8:00:01", "02:00:0a:c8:00:02"
V4_A, V4_B = "10.200.0.1", "10.200.0.2"
V6_A, V6_B = "fd00:200::1", "fd00:200::2"
IF_A, IF_B = "veth-a", "veth-b"

# The --socket-updates values every socket_updates test runs with.
SOCKET_UPDATE_PATHS = ("auto", "raw-tp")


def pytest_configure(config):
    config.addinivalue_line("markers", "socket_updates: runs once per socket update path (auto, raw-tp)")
    _take_machine_lock()


# Socket hooks, cgroup attachments and `bpftool prog show` are machine-wide:
# two privileged runs at once see each other's programs and traffic, and the
# leak checks fail. So privileged runs take turns on one lock, held until the
# process exits (the kernel drops it with the file descriptor).
LOCK_PATH = "/run/lock/flowmeter-e2e.lock"
_lock_file = None


def _take_machine_lock():
    global _lock_file
    if os.geteuid() != 0 or _lock_file is not None:
        return
    import fcntl

    os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
    _lock_file = open(LOCK_PATH, "w")
    try:
        fcntl.flock(_lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"conftest: waiting for another privileged test run ({LOCK_PATH})", file=sys.stderr, flush=True)
        fcntl.flock(_lock_file, fcntl.LOCK_EX)


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("socket_updates"):
        metafunc.parametrize("socket_updates", SOCKET_UPDATE_PATHS, indirect=True)


@pytest.fixture(autouse=True)
def socket_updates(request):
    """The update path this test's daemons use (None: the daemon's default).
    Set in the environment, so daemons started by any means inherit it."""
    path = getattr(request, "param", None)
    if path is None:
        yield None
        return
    old = os.environ.get("FLOWMETER_SOCKET_UPDATES")
    os.environ["FLOWMETER_SOCKET_UPDATES"] = path
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("FLOWMETER_SOCKET_UPDATES", None)
        else:
            os.environ["FLOWMETER_SOCKET_UPDATES"] = old


# ---------------------------------------------------------------------------
# network namespaces from Python

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


@contextmanager
def in_netns(name: str):
    """Sockets made inside the block belong to namespace `name` (this thread
    moves there and back), so a test can talk to a daemon listening on the
    namespace's loopback."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


_seq = itertools.count(1)
_ports = itertools.count(0)


def unique_port() -> int:
    """A port nobody else in this run uses (10000-59999, spread by pid)."""
    return 10000 + (os.getpid() * 97 + next(_ports)) % 50000


def daemon_binary() -> str:
    return os.environ.get("FLOWMETER_BIN") or str(REPO / ".build" / "debug" / "flowmeterd")


# ---------------------------------------------------------------------------
# privilege gate


@pytest.fixture(scope="session", autouse=True)
def _privileged():
    """Every e2e test needs root. Not root: skip, or fail when
    FLOWMETER_REQUIRE_PRIVILEGED=1 (CI runs as root and must not skip)."""
    if os.geteuid() != 0:
        reason = "the flowmeterd e2e tests need root (network namespaces, BPF)"
        if os.environ.get("FLOWMETER_REQUIRE_PRIVILEGED") == "1":
            pytest.fail(f"FLOWMETER_REQUIRE_PRIVILEGED=1 but not running as root: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def flowmeterd() -> str:
    path = daemon_binary()
    if not os.access(path, os.X_OK):
        pytest.fail(f"flowmeterd binary not found at {path} (run `swift build` or set FLOWMETER_BIN)")
    for tool in ("ip", "tc", "tcpdump", "ethtool", "bpftool", "setpriv", "strace"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (tools/test installs it)")
    return path


# ---------------------------------------------------------------------------
# processes


def sh(*cmd: str, check: bool = True, timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess:
    """Runs a command, returns the completed process (text output)."""
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"command failed ({p.returncode}): {' '.join(cmd)}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Polls predicate() until it returns something truthy; fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """One line of a child's stdout, bounded in time."""
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    if not r:
        raise AssertionError(f"no output from {proc.args} within {timeout}s")
    return proc.stdout.readline()


def stop_process(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 5) -> int:
    """Signals one process we started (by pid) and reaps it; SIGKILL if it lingers."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=10)


# ---------------------------------------------------------------------------
# namespaces


QUIET_SYSCTLS = [
    # No duplicate address detection, router solicitations or router advertisements.
    "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.all.dad_transmits=0", "net.ipv6.conf.default.dad_transmits=0",
    "net.ipv6.conf.all.router_solicitations=0", "net.ipv6.conf.default.router_solicitations=0",
    "net.ipv6.conf.all.accept_ra=0", "net.ipv6.conf.default.accept_ra=0",
    # The unsolicited MLD reports sent at link-up cannot be switched off; squeeze
    # their retransmissions into the first milliseconds so the settle time covers them.
    "net.ipv6.conf.default.mldv1_unsolicited_report_interval=10",
    "net.ipv6.conf.default.mldv2_unsolicited_report_interval=10",
]


class NetPair:
    """Two namespaces, A and B, joined by veth-a (in A) <-> veth-b (in B), with
    IPv4 and IPv6 addresses, static neighbours (no ARP/ND) and no multicast, so
    the link is silent unless a test sends something."""

    def __init__(self, tag: str):
        self.a = f"{PREFIX}-a-{tag}"
        self.b = f"{PREFIX}-b-{tag}"
        self.procs: list[subprocess.Popen] = []

    # -- life cycle
    def create(self) -> "NetPair":
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
            sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", *QUIET_SYSCTLS)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.a, "link", "add", IF_A, "address", MAC_A, "type", "veth",
           "peer", "name", IF_B, "address", MAC_B, "netns", self.b)
        for ns, dev, v4, v6, peer_v4, peer_v6, peer_mac in (
                (self.a, IF_A, V4_A, V6_A, V4_B, V6_B, MAC_B),
                (self.b, IF_B, V4_B, V6_B, V4_A, V6_A, MAC_A)):
            sh("ip", "-n", ns, "link", "set", "dev", dev, "multicast", "off")
            sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "neigh", "add", peer_v4, "lladdr", peer_mac, "dev", dev, "nud", "permanent")
            sh("ip", "-n", ns, "neigh", "add", peer_v6, "lladdr", peer_mac, "dev", dev, "nud", "permanent")
        sh("ip", "-n", self.a, "link", "set", IF_A, "up")
        sh("ip", "-n", self.b, "link", "set", IF_B, "up")
        # The kernel reacts to carrier-up through linkwatch, up to a second later:
        # only then does it add the link-local addresses and send the MLD reports
        # for their groups (retransmitted within 10 ms, see QUIET_SYSCTLS). Wait
        # for both link-local addresses, then a little longer; from then on the
        # link is silent.
        def link_local_ready():
            for ns, dev in ((self.a, IF_A), (self.b, IF_B)):
                out = sh("ip", "-n", ns, "-6", "addr", "show", "dev", dev, "scope", "link").stdout
                if "fe80::" not in out or "tentative" in out:
                    return False
            return True
        wait_for(link_local_ready, timeout=10, interval=0.02, what="link-local addresses on the veth pair")
        time.sleep(0.3)
        return self

    def destroy(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for ns in (self.a, self.b):
            # Anything still running inside our own namespace was started by this test.
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    # -- commands inside a namespace
    def run(self, ns: str, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout)

    def popen(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)
        self.procs.append(p)
        return p

    def nettool(self, ns: str, *args: str, timeout: float = 60) -> str:
        p = self.run(ns, PYTHON, NETTOOL, *args, check=False, timeout=timeout)
        if p.returncode != 0:
            raise AssertionError(f"nettool {' '.join(args)} in {ns} failed: {p.stdout} {p.stderr}")
        return p.stdout

    def server(self, ns: str, *args: str) -> subprocess.Popen:
        p = self.popen(ns, PYTHON, NETTOOL, *args)
        line = read_line(p, 10)
        if line.strip() != "ready":
            raise AssertionError(f"nettool {args} did not start: {line!r} {p.stderr.read() if p.poll() is not None else ''}")
        return p

    @staticmethod
    def finish(p: subprocess.Popen, timeout: float = 30) -> str:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise AssertionError(f"{p.args} did not finish in {timeout}s: {err}")
        if p.returncode != 0:
            raise AssertionError(f"{p.args} exited {p.returncode}: {err}")
        return out

    def set_offloads(self, on: bool) -> None:
        state = "on" if on else "off"
        for ns, dev in ((self.a, IF_A), (self.b, IF_B)):
            # "tx off" first: without tx checksumming the kernel refuses TSO anyway.
            self.run(ns, "ethtool", "-K", dev, "tx", state, "rx", state, "tso", state, "gso", state,
                     "gro", state, check=False)
            feats = self.offloads(ns, dev)
            want = (state == "on")
            for f in ("tcp-segmentation-offload", "generic-segmentation-offload", "tx-checksumming"):
                if (feats.get(f) == "on") != want and not (want and "fixed" in feats.get(f + "_raw", "")):
                    raise AssertionError(f"{dev} in {ns}: {f} is {feats.get(f)}, wanted {state}")

    def offloads(self, ns: str, dev: str) -> dict:
        out = self.run(ns, "ethtool", "-k", dev).stdout
        feats = {}
        for line in out.splitlines():
            m = re.match(r"^(\S[^:]*): (on|off)(.*)$", line.strip())
            if m:
                feats[m.group(1)] = m.group(2)
                feats[m.group(1) + "_raw"] = m.group(3)
        return feats

    # -- kernel state as the tests compare it
    def tc_state(self, ns: str, dev: str) -> dict:
        return {
            "qdisc": self.run(ns, "tc", "qdisc", "show", "dev", dev).stdout,
            "ingress": self.run(ns, "tc", "filter", "show", "dev", dev, "ingress", check=False).stdout,
            "egress": self.run(ns, "tc", "filter", "show", "dev", dev, "egress", check=False).stdout,
            "net": self.run(ns, "bpftool", "net", "show").stdout,
        }


@pytest.fixture
def netpair(flowmeterd):
    tag = f"{os.getpid()}-{next(_seq)}"
    pair = NetPair(tag)
    try:
        pair.create()
        yield pair
    finally:
        pair.destroy()


@pytest.fixture(scope="session", autouse=True)
def _remove_stale_namespaces(_privileged):
    """Namespaces of earlier runs of this suite whose process is gone."""
    if os.geteuid() != 0:
        yield
        return
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        m = re.match(rf"^({PREFIX}-[ab]-(\d+)-\d+)\b", line)
        if m and not Path(f"/proc/{m.group(2)}").exists():
            subprocess.run(["ip", "netns", "del", m.group(1)], capture_output=True)
    yield


# ---------------------------------------------------------------------------
# the daemon


class Daemon:
    def __init__(self, binary: str, ns: str | None, args: list[str], workdir: Path, name: str):
        self.binary = binary
        self.ns = ns
        self.args = args
        self.name = name
        self.stderr_path = workdir / f"{name}.stderr"
        self.stdout_path = workdir / f"{name}.stdout"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    def start(self) -> "Daemon":
        cmd = ([*(["ip", "netns", "exec", self.ns] if self.ns else []), self.binary, *self.args])
        self._err = open(self.stderr_path, "w")
        self._out = open(self.stdout_path, "w")
        # `ip netns exec` execs the command, so proc.pid is the daemon itself.
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL)
        return self

    @property
    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.stderr:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"flowmeterd exited ({self.proc.returncode}) before logging {text!r}:\n{self.stderr}")
            time.sleep(0.05)
        raise AssertionError(f"flowmeterd did not log {text!r} within {timeout}s:\n{self.stderr}")

    def wait_ready(self, timeout: float = 20) -> "Daemon":
        self.wait_log("serving metrics", timeout)
        return self

    def terminate(self, sig=signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"flowmeterd did not exit within {timeout}s of signal {sig!r}:\n{self.stderr}")
        return self.returncode

    def kill(self) -> int:
        return self.terminate(signal.SIGKILL)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for f in (getattr(self, "_err", None), getattr(self, "_out", None)):
            if f:
                f.close()


@pytest.fixture
def daemons(flowmeterd, tmp_path):
    """Factory: daemons(ns, *args) starts flowmeterd (not yet ready). All are
    killed at teardown, and their stderr is printed (pytest shows it for
    failing tests)."""
    started: list[Daemon] = []

    def start(ns: str | None, *args: str) -> Daemon:
        d = Daemon(flowmeterd, ns, list(args), tmp_path, f"flowmeterd-{len(started) + 1}")
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.close()
        print(f"----- {d.name} ({' '.join(d.args)}) exit {d.proc.returncode if d.proc else None} stderr -----")
        print(d.stderr)


def scrape(pair: NetPair, ns: str, port: int) -> tuple[str, str]:
    """GET /metrics from inside ns. Returns (content type, body)."""
    out = pair.nettool(ns, "get", f"http://127.0.0.1:{port}/metrics", timeout=15)
    head, _, body = out.partition("\n\n")
    return head.removeprefix("content-type: "), body


def scrape_settled(pair: NetPair, ns: str, port: int, names: tuple[str, ...], gap: float = 1.3,
                   timeout: float = 20) -> tuple[str, str]:
    """Scrapes until the samples of `names` are the same in two scrapes `gap`
    seconds apart (more than one eviction interval), so that a slow tick on a
    busy machine cannot leave the last packets out. Returns the last scrape."""
    def values(body: str) -> list[str]:
        return sorted(l for l in body.splitlines() if l.split("{")[0].split(" ")[0] in names)
    deadline = time.monotonic() + timeout
    ctype, body = scrape(pair, ns, port)
    while True:
        time.sleep(gap)
        ctype, nxt = scrape(pair, ns, port)
        if values(nxt) == values(body) and values(nxt):
            return ctype, nxt
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics still changing after {timeout}s:\n{nxt}")
        body = nxt


# ---------------------------------------------------------------------------
# capture


class Capture:
    """tcpdump -w on one interface inside a namespace."""

    def __init__(self, pair: NetPair, ns: str, dev: str, path: Path):
        self.pair, self.ns, self.dev, self.path = pair, ns, dev, path
        self.proc = None
        self.stats = ""

    def start(self, timeout: float = 10) -> "Capture":
        self.proc = self.pair.popen(self.ns, "tcpdump", "-i", self.dev, "-n", "-s", "256", "-B", "16384",
                                    "-U", "-w", str(self.path), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        buf = ""
        while "listening on" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"tcpdump did not start: {buf}")
            r, _, _ = select.select([self.proc.stderr], [], [], left)
            if r:
                buf += self.proc.stderr.readline()
        return self

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.stats = err
        m = re.search(r"(\d+) packets? dropped by kernel", err)
        if m and int(m.group(1)) != 0:
            raise AssertionError(f"tcpdump dropped packets, the capture is incomplete: {err}")
        return err


@pytest.fixture
def capture(tmp_path):
    made: list[Capture] = []

    def start(pair: NetPair, ns: str, dev: str, name: str = "capture") -> Capture:
        c = Capture(pair, ns, dev, tmp_path / f"{name}.pcap").start()
        made.append(c)
        return c

    yield start
    for c in made:
        if c.proc and c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait(timeout=10)


# ---------------------------------------------------------------------------
# bpftool views of the whole host (programs and links are not per namespace)


def bpftool_json(*args: str):
    out = sh("bpftool", "-j", *args).stdout.strip()
    return json.loads(out) if out else []


def flowmeter_progs() -> dict:
    """id -> name of every loaded BPF program whose name starts with flowmeter_."""
    return {p["id"]: p.get("name", "") for p in bpftool_json("prog", "show")
            if p.get("name", "").startswith("flowmeter_")}


def flowmeter_links(progs: dict | None = None) -> dict:
    """id -> link info of every BPF link whose program is a flowmeter_ one."""
    progs = flowmeter_progs() if progs is None else progs
    return {l["id"]: l for l in bpftool_json("link", "show") if l.get("prog_id") in progs}
