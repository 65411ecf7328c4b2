"""Bad input and what the user gets (docs/reliability.md, "Bad input"):
config files with mistakes, unknown interfaces, a forced hook rung the kernel
cannot give, and malformed, oversized and slow requests to the local API and
the metrics endpoint. Each case checks the message names the cause, the exit
status, and that nothing is left attached in the test's own namespace."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import IF_A, in_netns, sh, unique_port, wait_for

# The daemon's bounds (Sources/FlowmeterExport/HTTPGuard.swift).
IDLE_SECONDS = 10
MAX_HEADER_BYTES = 16 * 1024

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\S+ \w+ flowmeterd: ")


def run_in(pair, *args: str, timeout: float = 30):
    return pair.run(pair.a, *args, check=False, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """The daemon's own error lines (log lines and libbpf's indented detail aside)."""
    return [l for l in stderr.splitlines() if l.startswith("flowmeterd: ")]


def assert_nothing_attached(pair, state: Path) -> None:
    """No filter, qdisc, TCX link or state record of ours on the test's interface.
    (Only this namespace is looked at: other tests load programs meanwhile.)"""
    for direction in ("ingress", "egress"):
        out = sh("tc", "-n", pair.a, "filter", "show", "dev", IF_A, direction, check=False).stdout
        assert out.strip() == "", f"{direction} filters left on {IF_A}:\n{out}"
    qdisc = sh("tc", "-n", pair.a, "qdisc", "show", "dev", IF_A).stdout
    assert "clsact" not in qdisc, qdisc
    net = json.loads(pair.run(pair.a, "bpftool", "-j", "net", "show", "dev", IF_A).stdout or "[]")
    attached = [e for entry in net for kind in ("tc", "tcx", "xdp") for e in (entry.get(kind) or [])]
    assert attached == [], attached
    records = state / "tc-attachments"
    assert not records.exists() or records.read_text().strip() == "", records.read_text()


# ---------------------------------------------------------------------------
# config files and variables

CONFIG_CASES = [
    # (id, file text, line, what the message must say)
    ("malformed-yaml", "interval: 5s\ninterfaces: [veth-a\nlog_level: info\n", 3, "YAML syntax error"),
    ("second-document", "interval: 5s\n---\ninterval: 6s\n", 2, "holds one document"),
    ("duplicate-key", "interval: 5s\nhooks: off\ninterval: 6s\n", 1, 'key "interval" given more than once'),
    ("unknown-key", "interval: 5s\nintervall: 6s\n", 2, 'unknown key (did you mean "interval"?)'),
    ("swapped-letters", "ohoks: off\n", 1, 'unknown key (did you mean "hooks"?)'),
    ("wrong-level", "expiry: 5m\n", 1, "expiry belongs under series:"),
    ("wrong-type-list", "interfaces: veth-a\n", 1, "expected a list of interface names"),
    ("wrong-type-number", "flow_table_size: lots\n", 1, 'expected a whole number, got "lots"'),
    ("base-60-number", "flow_table_size: 1:0:0:0:0:0:0:0:0:0:0:0\n", 1, "expected a whole number"),
    ("listen-port-range", 'metrics_listen: "127.0.0.1:70000"\n', 1, "port must be a number from 0 to 65535"),
    ("rule-port-range", "services:\n  - name: web\n    ports: 70000\n", 3, '"70000" is not a port or port range'),
    ("cidr-prefix", "peers:\n  - name: dns\n    cidr: 10.0.0.0/33\n", 3, "prefix length must be 0 to 32"),
    ("cidr-address", "peers:\n  - name: dns\n    cidr: 10.0.0.300/8\n", 3, '"10.0.0.300/8" is not an address prefix'),
    ("nul-in-path", 'flow_log: "/tmp/a\\0b"\n', 1, "contains a NUL character"),
]


@pytest.mark.parametrize("text,line,says", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_file_mistake(netpair, flowmeterd, tmp_path, text, line, says):
    """The daemon refuses the file with its line and the cause, exit 1, before
    attaching anything; `config check` prints the same line."""
    cfg = tmp_path / "flowmeter.yaml"
    cfg.write_text(text)
    state = tmp_path / "state"
    p = run_in(netpair, flowmeterd, "--config", str(cfg), "--interfaces", IF_A, "--hooks", "off",
               "--metrics-listen", f"127.0.0.1:{unique_port()}", "--state-dir", str(state))
    assert p.returncode == 1, f"exit {p.returncode}\nstderr: {p.stderr}"
    errors = error_lines(p.stderr)
    assert errors and errors[0].startswith(f"flowmeterd: {cfg}:{line}:") and says in errors[0], p.stderr
    assert "serving metrics" not in p.stderr and "attached" not in p.stderr, p.stderr
    assert_nothing_attached(netpair, state)
    c = subprocess.run([flowmeterd, "config", "check", str(cfg)], capture_output=True, text=True, timeout=30)
    assert c.returncode == 1 and c.stderr.startswith(f"{cfg}:{line}:") and says in c.stderr, c.stderr


def test_environment_mistake(netpair, flowmeterd, tmp_path):
    """A misspelt FLOWMETER_* variable is an error with a hint, not ignored."""
    state = tmp_path / "state"
    p = run_in(netpair, "env", "FLOWMETER_INTREVAL=5s", flowmeterd, "--interfaces", IF_A, "--hooks", "off",
               "--metrics-listen", f"127.0.0.1:{unique_port()}", "--state-dir", str(state))
    assert p.returncode == 1, p.stderr
    assert error_lines(p.stderr) and error_lines(p.stderr)[0].startswith(
        "flowmeterd: environment: FLOWMETER_INTREVAL: unknown variable (did you mean FLOWMETER_INTERVAL?)"), p.stderr
    assert_nothing_attached(netpair, state)


# ---------------------------------------------------------------------------
# interfaces


@pytest.mark.parametrize("follow", ["--follow-interfaces", "--no-follow-interfaces"])
def test_unknown_interface_name(netpair, flowmeterd, tmp_path, follow):
    """A literal name that is not there is an error in both modes: a typo
    fails at once; the message lists the host's interfaces and says how to
    wait for one that appears later."""
    state = tmp_path / "state"
    p = run_in(netpair, flowmeterd, "--interfaces", f"{IF_A},nosuch0", follow, "--hooks", "off",
               "--metrics-listen", f"127.0.0.1:{unique_port()}", "--state-dir", str(state))
    assert p.returncode == 1, p.stderr
    errors = error_lines(p.stderr)
    assert len(errors) == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert errors[0].startswith("flowmeterd: --interfaces: unknown interface nosuch0 (this host has: "), errors
    assert IF_A in errors[0] and "glob such as nosuch0*" in errors[0], errors
    assert_nothing_attached(netpair, state)


def test_interface_glob_waits_when_following(netpair, daemons, flowmeterd, tmp_path):
    """A glob that matches nothing yet: with following on, the daemon waits and
    attaches when the interface appears; with it off, that is an error."""
    state = tmp_path / "state"
    p = run_in(netpair, flowmeterd, "--interfaces", "nosuch*", "--no-follow-interfaces", "--hooks", "off",
               "--metrics-listen", f"127.0.0.1:{unique_port()}", "--state-dir", str(state))
    assert p.returncode == 1 and error_lines(p.stderr) == [
        "flowmeterd: no interface to attach to (all excluded, or none is up); see --interfaces"], p.stderr
    d = daemons(netpair.a, "--interfaces", "nosuch*", "--hooks", "off", "--metrics-listen", f"127.0.0.1:{unique_port()}",
                "--state-dir", str(tmp_path / "state2")).wait_ready()
    assert "no matching interface yet; waiting for one to appear" in d.stderr, d.stderr
    sh("ip", "-n", netpair.a, "link", "add", "nosuch0", "type", "veth", "peer", "name", "other0")
    sh("ip", "-n", netpair.a, "link", "set", "nosuch0", "up")
    d.wait_log("interface=nosuch0", timeout=10)
    assert d.terminate() == 0, d.stderr


# ---------------------------------------------------------------------------
# a forced hook rung


@pytest.mark.parametrize("mode", ["tcx", "clsact"])
@pytest.mark.parametrize("rung", ["fentry", "kprobe"])
def test_forced_rung_unavailable(netpair, flowmeterd, daemons, tmp_path, rung, mode):
    """`--hooks fentry|kprobe` where `check` says the kernel cannot give it
    (the development machines: fentry refused with EPERM, no kprobes): exit 1,
    an error naming the rung and the kernel's reason, and the tc attachment
    made before the hooks failed is undone. Where the rung is available, the
    daemon runs on it instead."""
    check = run_in(netpair, flowmeterd, "check").stdout
    state = tmp_path / "state"
    args = ["--interfaces", IF_A, "--hooks", rung, "--tc-mode", mode, "--metrics-listen", f"127.0.0.1:{unique_port()}",
            "--state-dir", str(state)]
    if re.search(rf"^{rung}\s+yes\b", check, re.M):
        d = daemons(netpair.a, *args).wait_ready()
        assert d.terminate() == 0, d.stderr
        return
    reason = re.search(rf"^{rung}\s+no\s+(.*)$", check, re.M).group(1)   # e.g. "kprobe/tcp_set_state: attach: No such file..."
    p = run_in(netpair, flowmeterd, *args, timeout=60)
    assert p.returncode == 1, p.stderr
    errors = error_lines(p.stderr)
    assert len(errors) == 1, p.stderr
    assert errors[0].startswith(f"flowmeterd: --hooks {rung}: ") and f"({rung}: " in errors[0], errors
    errno_text = reason.rsplit(": ", 1)[-1]
    assert errno_text in errors[0], (errno_text, errors)
    # Besides that line only log lines: libbpf's own report is behind FLOWMETER_LIBBPF_DEBUG.
    assert "FLOWMETER_LIBBPF_DEBUG=1" in errors[0], errors
    for l in p.stderr.splitlines():
        assert l in errors or LOG_LINE.match(l), l
    assert_nothing_attached(netpair, state)


# ---------------------------------------------------------------------------
# HTTP: the local API (unix socket) and the metrics endpoint (TCP)



class Endpoint:
    """Raw-socket client of one of the daemon's HTTP endpoints."""

    def __init__(self, unix: str | None = None, ns: str | None = None, port: int | None = None):
        self.unix, self.ns, self.port = unix, ns, port

    def connect(self, timeout: float = 10) -> socket.socket:
        if self.unix:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(self.unix)
            return s
        with in_netns(self.ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(("127.0.0.1", self.port))
        return s

    def exchange(self, raw: bytes, timeout: float = 10) -> tuple[int | None, dict, bytes]:
        """Sends `raw`, ends the sending side, reads until the server closes.
        (None, {}, b"") when the server closed without an answer."""
        s = self.connect(timeout)
        try:
            try:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass
            data = b""
            while True:
                try:
                    b = s.recv(65536)
                except ConnectionResetError:
                    break
                if not b:
                    break
                data += b
        finally:
            s.close()
        return parse_answer(data)

    def get(self, path: str) -> tuple[int | None, dict, bytes]:
        return self.exchange(f"GET {path} HTTP/1.1\r\nHost: flowmeter\r\nConnection: close\r\n\r\n".encode())


def parse_answer(data: bytes) -> tuple[int | None, dict, bytes]:
    if not data:
        return None, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return status, headers, body


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def check_refusals(ep: Endpoint, served: str, api: bool) -> None:
    """Malformed, unknown, read-only and oversized requests: the status, the
    reason (JSON on the API, text on /metrics), and the connection closed
    where the request was refused."""
    def reason(body: bytes, status: int) -> str:
        if api:
            doc = json.loads(body)
            assert doc["version"] == 1 and doc["status"] == status and doc["error"], doc
            return doc["error"]
        assert body.strip(), body
        return body.decode()

    # Not HTTP at all, or not HTTP/1.x: 400, and the connection is closed.
    for raw in (b"NOT HTTP AT ALL\r\n\r\n", b"\x00\x01\x02\xff\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                f"GET {served}\r\n\r\n".encode(), f"GET {served} HTTP/7.3\r\n\r\n".encode(),
                f"GET {served} HTTP/1.1\nHost: x\n\n".encode(), f"BREW {served} HTTP/1.1\r\n\r\n".encode(),
                f"GET {served} HTTP/1.1\r\nContent-Length: -1\r\n\r\n".encode(),
                f"GET {served} HTTP/1.1\r\nHo".encode()):
        status, headers, _ = ep.exchange(raw)
        assert status == 400 and headers.get("connection") == "close", (raw, status, headers)
    # Unknown paths: 404 (the API says which paths it has).
    for path in (("/v2/snapshot", "/v1/nothing", "/", "/metrics") if api else ("/v1/snapshot", "/", "/metricsx")):
        status, _, body = ep.get(path)
        assert status == 404, (path, status)
        if api:
            assert "/v1/snapshot" in reason(body, 404), body
    # Paths that reach for files: the endpoints serve only their own state and
    # read no file a request names. /etc/passwd's first line is what leaking would show.
    passwd = Path("/etc/passwd").read_bytes().split(b"\n")[0]
    assert passwd.startswith(b"root:"), passwd
    for path in ("/etc/passwd", "/../../../../etc/passwd", f"{served}/../../../../etc/passwd",
                 "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2f..%2fetc%2fpasswd", "//etc/passwd",
                 "/proc/self/environ", "file:///etc/passwd"):
        status, _, body = ep.get(path)
        assert status in (400, 404), (path, status)
        assert passwd not in body and b"FLOWMETER" not in body, (path, body[:200])
    # A query naming a file is ignored: the answer is the endpoint's own.
    status, _, body = ep.get(f"{served}?file=/etc/passwd&path=../../etc/passwd")
    assert status == 200 and passwd not in body, (status, body[:200])
    # Read-only: other methods get 405 with Allow: GET, and the connection ends.
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
        status, headers, body = ep.exchange(f"{method} {served} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
        assert status == 405 and headers.get("allow") == "GET" and headers.get("connection") == "close", (method, status, headers)
        if method != "HEAD":   # an answer to HEAD has no body
            assert method in reason(body, 405)
    # A body on a GET: 413, not read.
    status, headers, body = ep.exchange(f"GET {served} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".encode())
    assert status == 413 and headers.get("connection") == "close" and "body" in reason(body, 413), (status, headers)
    # Heads past the bound: one long header, a long target, many headers.
    for raw in (f"GET {served} HTTP/1.1\r\nX-Big: {'a' * 4 * MAX_HEADER_BYTES}\r\n\r\n".encode(),
                f"GET {served}?{'a' * 4 * MAX_HEADER_BYTES} HTTP/1.1\r\n\r\n".encode(),
                (f"GET {served} HTTP/1.1\r\n" + "X-A: b\r\n" * 2000 + "\r\n").encode()):
        status, headers, _ = ep.exchange(raw)
        assert status == 400 and headers.get("connection") == "close", (raw[:60], status)
    # And what is served still is.
    assert ep.get(served)[0] == 200


def check_oversized_body(ep: Endpoint, served: str, pid: int) -> None:
    """A POST announcing 10 GB: the 405 comes at once and the daemon stops
    reading; it neither buffers nor drains what keeps coming."""
    before = rss_kib(pid)
    s = ep.connect(timeout=2)
    s.sendall(f"POST {served} HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n".encode())
    chunk = b"x" * 65536
    sent, t0 = 0, time.monotonic()
    try:
        while sent < 256 << 20 and time.monotonic() - t0 < 10:
            s.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    # The socket buffers take a few MB; the rest is refused.
    assert sent < 32 << 20, f"the daemon read {sent} bytes of a body it refused"
    try:
        answer = s.recv(65536)
        status = parse_answer(answer)[0] if answer else None
    except ConnectionResetError:
        status = None   # TCP: the reset can beat the answer to the client
    s.close()
    assert status in (405, None), status
    assert rss_kib(pid) - before < 20 * 1024, (before, rss_kib(pid))
    assert ep.get(served)[0] == 200


def check_slow_clients(ep: Endpoint, served: str, n: int) -> None:
    """Clients that send part of a request and stall (slowloris, one byte every
    half second) and clients that connect and say nothing: everyone else is
    answered meanwhile, and the daemon closes each stalled connection about
    IDLE_SECONDS after it opened."""
    closed_after: list[float] = []
    lock = threading.Lock()

    def stall(trickle: bool) -> None:
        s = ep.connect(timeout=IDLE_SECONDS + 15)
        t0 = time.monotonic()
        try:
            if trickle:
                s.settimeout(0.5)
                for b in f"GET {served} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode() + b"a" * 100:
                    s.send(bytes([b]))
                    try:
                        if s.recv(1) == b"":
                            break
                    except socket.timeout:
                        continue
                    except ConnectionResetError:
                        break
            else:
                s.sendall(f"GET {served[:3]}".encode())
                s.recv(1)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass
        with lock:
            closed_after.append(time.monotonic() - t0)
        s.close()

    threads = [threading.Thread(target=stall, args=(i % 2 == 0,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    time.sleep(1)
    for _ in range(10):
        t0 = time.monotonic()
        assert ep.get(served)[0] == 200
        assert time.monotonic() - t0 < 2, "a stalled client held up another"
        time.sleep(0.2)
    for t in threads:
        t.join(timeout=IDLE_SECONDS + 20)
    assert len(closed_after) == n, closed_after
    assert all(IDLE_SECONDS - 1 <= t <= IDLE_SECONDS + 8 for t in closed_after), closed_after


def test_api_bad_requests(netpair, daemons, tmp_path):
    sock = str(tmp_path / "api.sock")
    d = daemons(netpair.a, "--interfaces", IF_A, "--hooks", "off", "--metrics-listen", f"127.0.0.1:{unique_port()}",
                "--api-socket", sock, "--state-dir", str(tmp_path / "state")).wait_ready()
    wait_for(lambda: "serving the API" in d.stderr, timeout=10, what="the API")
    ep = Endpoint(unix=sock)
    check_refusals(ep, "/v1/snapshot", api=True)
    check_oversized_body(ep, "/v1/snapshot", d.proc.pid)

    # The stream is exempt from the idle bound: it runs on while the slow
    # clients are dropped around it.
    lines: list[bytes] = []
    stream = ep.connect(timeout=5)
    stream.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: flowmeter\r\n\r\n")

    def read_stream() -> None:
        buf, t0 = b"", time.monotonic()
        while time.monotonic() - t0 < IDLE_SECONDS + 4:
            b = stream.recv(65536)
            if not b:
                break
            buf += b
        lines.extend(l for l in buf.split(b"\r\n") if l.startswith(b"{"))
    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    check_slow_clients(ep, "/v1/snapshot", n=20)
    reader.join(timeout=30)
    stream.close()
    assert len(lines) >= IDLE_SECONDS + 2, f"{len(lines)} stream lines"
    assert all(json.loads(l)["version"] == 1 for l in lines)
    assert d.terminate() == 0, d.stderr


def test_metrics_bad_requests(netpair, daemons, tmp_path):
    port = unique_port()
    d = daemons(netpair.a, "--interfaces", IF_A, "--hooks", "off", "--metrics-listen", f"127.0.0.1:{port}",
                "--state-dir", str(tmp_path / "state")).wait_ready()
    ep = Endpoint(ns=netpair.a, port=port)
    check_refusals(ep, "/metrics", api=False)
    check_oversized_body(ep, "/metrics", d.proc.pid)
    check_slow_clients(ep, "/metrics", n=10)
    assert ep.get("/healthz")[0] == 200
    assert d.terminate() == 0, d.stderr
