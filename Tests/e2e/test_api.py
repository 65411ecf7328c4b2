"""The local API on its unix socket: permissions, the snapshot's schema, the
stream, JSON errors for bad requests, and a client that stops reading does not
stall the daemon."""
from __future__ import annotations

import pytest

import grp
import json
import os
import socket
import stat
import subprocess
import time

from conftest import IF_A, NETTOOL, V4_B, daemon_binary, unique_port, wait_for

GROUP = "adm"   # exists on Debian; `nobody` is not in it


def request(path: str, raw: bytes) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 exchange on the unix socket: (status, headers, body)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall(raw)
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return status, headers, body


def get(path: str, url: str, method: str = "GET") -> tuple[int, dict, bytes]:
    return request(path, f"{method} {url} HTTP/1.1\r\nHost: flowmeter\r\nConnection: close\r\n\r\n".encode())


@pytest.mark.socket_updates
def test_api(netpair, daemons, tmp_path):
    pair = netpair
    sock = str(tmp_path / "api" / "flowmeter.sock")
    d = daemons(pair.a, "--interfaces", IF_A, "--interval", "500ms", "--metrics-listen", f"127.0.0.1:{unique_port()}",
                "--api-socket", sock, "--api-group", GROUP, "--state-dir", str(tmp_path / "state")).wait_ready()
    wait_for(lambda: "serving the API" in d.stderr, timeout=10, what="the API")

    # The socket: mode 0660, owned by root and the configured group; others cannot connect.
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660, oct(st.st_mode)
    assert (st.st_uid, st.st_gid) == (0, grp.getgrnam(GROUP).gr_gid)
    probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
             "try:\n  s.connect(sys.argv[1]); print('connected')\nexcept PermissionError: print('denied')\n")
    out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "python3", "-c", probe, sock],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "denied", out.stdout + out.stderr

    # Traffic, then the snapshot shows it.
    echo_port = unique_port()
    echo = pair.popen(pair.b, "python3", NETTOOL, "udp-echo", V4_B, str(echo_port), "4")
    assert echo.stdout.readline().strip() == "ready"
    pair.nettool(pair.a, "udp-client", V4_B, str(echo_port), "700,300")

    def snap():
        status, headers, body = get(sock, "/v1/snapshot")
        assert status == 200 and headers["content-type"] == "application/json", (status, headers)
        return json.loads(body)
    s = wait_for(lambda: (lambda x: x if any(i["name"] == IF_A and i["tx_bytes"] > 0 for i in x["interfaces"])
                          and any(v["transport"] == "udp" and v["tx_bytes"] == 1000 for v in x["services"]) else None)(snap()),
                 timeout=15, interval=0.3, what="the transfer in the snapshot")
    assert s["version"] == 1 and s["host"] == os.uname().nodename and s["kernel"] == os.uname().release
    assert {"hooks", "interfaces", "services", "connections", "flows", "self_metrics", "uptime_seconds",
            "interval_seconds", "time_unix_ms", "flowmeter_version"} <= s.keys()
    assert {"hook": "tc", "mode": "tcx"} in s["hooks"]
    svc = next(v for v in s["services"] if v["transport"] == "udp" and v["tx_bytes"] == 1000)
    assert set(svc) >= {"service", "peer_service", "tx_bytes", "rx_bytes", "tx_packets", "rx_packets", "connections_opened",
                        "connections_active", "connections_failed", "retransmits", "resets_sent", "resets_received"}
    assert s["interval_seconds"] == 0.5 and s["self_metrics"]["flows_ring_lost"] == 0

    # Bad requests: JSON errors with a 4xx status.
    for url, method, code in (("/v2/snapshot", "GET", 404), ("/v1/nothing", "GET", 404), ("/v1/snapshot", "POST", 405),
                              ("/metrics", "GET", 404)):
        status, headers, body = get(sock, url, method)
        err = json.loads(body)
        assert status == code and err["status"] == code and err["version"] == 1 and err["error"], (url, status, body)
    status, _, _ = request(sock, b"NOT HTTP AT ALL\r\n\r\n")
    assert 400 <= status < 500

    # The stream: one snapshot per second.
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(10)
    c.connect(sock)
    c.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: flowmeter\r\n\r\n")
    buf = b""
    t0 = time.monotonic()
    while buf.count(b"\n{") < 3 and time.monotonic() - t0 < 10:
        buf += c.recv(65536)
    c.close()
    chunks = [l for l in buf.split(b"\r\n") if l.startswith(b"{")]
    lines = [json.loads(l) for l in chunks]
    times = [l["time_unix_ms"] for l in lines]
    assert len(times) >= 3 and times == sorted(times) and times[-1] - times[0] >= 1500, times
    # The whole snapshot first, then deltas with only what changed.
    assert lines[0]["stream"] == "full" and "hooks" in lines[0] and "interfaces" in lines[0]
    assert all(l["stream"] == "delta" and l["version"] == 1 and "hooks" not in l and "host" not in l for l in lines[1:]), lines[1:]

    # A client that stops reading: the daemon goes on counting and answering others.
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(sock)
    slow.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: flowmeter\r\n\r\n")
    before = snap()
    time.sleep(4)
    pair.nettool(pair.a, "udp-client", V4_B, str(echo_port), "700,300")
    after = wait_for(lambda: (lambda x: x if x["time_unix_ms"] > before["time_unix_ms"] and
                              sum(i["tx_packets"] for i in x["interfaces"]) > sum(i["tx_packets"] for i in before["interfaces"])
                              else None)(snap()), timeout=10, interval=0.3, what="counting to go on")
    assert after["uptime_seconds"] > before["uptime_seconds"] + 3
    # Large snapshots (3,000 flows in an interval) fill the socket's buffers;
    # once a write has been stuck for 5 s the daemon drops the client.
    # Under load the burst may spread over intervals, whose smaller deltas the
    # buffers can still take: then another burst (at most four, bounded).
    burst = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
             "b=int(sys.argv[2])\n"
             "for p in range(b,b+3000): s.sendto(b'x',(sys.argv[1],p))\n")
    dropped_at = None
    slow.settimeout(1)
    for first_port in (20000, 24000, 28000, 32000):
        pair.run(pair.a, "python3", "-c", burst, V4_B, str(first_port))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and dropped_at is None:
            if "API stream client too slow; dropped" in d.stderr:
                dropped_at = time.monotonic()
            else:
                time.sleep(0.5)
        if dropped_at is not None:
            break
    assert dropped_at is not None, d.stderr[-2000:]
    # The dropped connection ends: what was buffered, then EOF.
    slow.settimeout(5)
    while True:
        b = slow.recv(1 << 20)
        if not b:
            break
    slow.close()
    assert snap()["version"] == 1   # the API still answers
    echo.kill()
    assert d.terminate() == 0, d.stderr
    assert not os.path.exists(sock) or stat.S_ISSOCK(os.stat(sock).st_mode)


def test_api_socket_refusals(netpair, daemons, tmp_path):
    """A second daemon on a socket the first still answers on, a path that is
    not a socket, and an unknown group: each an error naming the cause, and
    nothing at the path is removed."""
    pair = netpair
    sock = str(tmp_path / "api.sock")
    first = daemons(pair.a, "--interfaces", IF_A, "--metrics-listen", f"127.0.0.1:{unique_port()}",
                    "--api-socket", sock, "--state-dir", str(tmp_path / "s1")).wait_ready()
    wait_for(lambda: "serving the API" in first.stderr, timeout=10, what="the API")

    def run(*args):
        return pair.run(pair.a, daemon_binary(), "--interfaces", IF_A, "--metrics-listen", f"127.0.0.1:{unique_port()}",
                        "--state-dir", str(tmp_path / "s2"), *args, check=False, timeout=30)
    p = run("--api-socket", sock)
    assert p.returncode == 1 and "in use by another flowmeterd" in p.stderr, p.stderr
    assert get(sock, "/v1/snapshot")[0] == 200   # the first one's socket is untouched
    plain = tmp_path / "not-a-socket"
    plain.write_text("keep me")
    p = run("--api-socket", str(plain))
    assert p.returncode == 1 and "is not a socket" in p.stderr and plain.read_text() == "keep me", p.stderr
    p = run("--api-socket", str(tmp_path / "other.sock"), "--api-group", "no-such-group-fm")
    assert p.returncode == 1 and "no group named no-such-group-fm" in p.stderr, p.stderr
    assert first.terminate() == 0, first.stderr
