"""Socket telemetry end to end: a server and a client in different network
namespaces and different cgroup v2 groups; their connection records carry the
right pids, process names, cgroup paths, roles and exact payload bytes, and a
connect to a closed port gives a failure with reason "refused"."""
from __future__ import annotations

import pytest

import json
import re
import os
import signal
import subprocess
import time

from conftest import IF_A, IF_B, V4_B, V6_B, unique_port, wait_for

# Every test here asserts on socket telemetry: it runs once per update path (conftest).
pytestmark = pytest.mark.socket_updates

SERVER = r"""
import socket, sys
addr, port, up, down = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((addr, port)); l.listen(1); l.settimeout(20)
print("ready", open("/proc/self/comm").read().strip(), flush=True)
c, _ = l.accept(); c.settimeout(20)
got = 0
while got < up:
    b = c.recv(65536)
    if not b: break
    got += len(b)
c.sendall(b"s" * down)
while c.recv(65536): pass   # until the client's FIN
c.close(); l.close()
print(got, flush=True)
"""

CLIENT = r"""
import errno, socket, sys
addr, port, up, down, closed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
s = socket.create_connection((addr, port), timeout=20)
local = s.getsockname()[1]
s.sendall(b"c" * up)
got = 0
while got < down:
    b = s.recv(65536)
    if not b: break
    got += len(b)
s.shutdown(socket.SHUT_WR)
s.recv(1)          # the server's FIN
s.close()
r = socket.socket(); r.settimeout(5)
refused = r.connect_ex((addr, closed)) == errno.ECONNREFUSED
r.close()
print(local, got, refused, open("/proc/self/comm").read().strip(), flush=True)
"""


def cgroup2_root() -> str:
    for line in open("/proc/self/mounts"):
        f = line.split()
        if f[2] == "cgroup2":
            return f[1]
    raise AssertionError("no cgroup2 mount")


def in_cgroup(cgroup: str, ns: str, *cmd: str) -> list[str]:
    """Joins the cgroup, then the network namespace, then execs cmd (same pid)."""
    return ["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec ip netns exec {ns} "$@"', "sh", *cmd]


def test_connection_records_with_owners(netpair, flowmeterd, tmp_path):
    pair = netpair
    root = cgroup2_root()
    rel = f"/fm-e2e-{os.getpid()}-{unique_port()}"
    base = root + rel
    os.makedirs(base + "/srv")
    os.makedirs(base + "/cli")
    up, down = 1_234_567, 345_678
    sport, closed, mport = unique_port(), unique_port(), unique_port()
    flow_log = tmp_path / "flows.jsonl"
    err = open(tmp_path / "daemon.stderr", "w")
    # nsenter keeps the host's mounts (ip netns exec would hide the cgroup2 mount).
    daemon = subprocess.Popen(["nsenter", f"--net=/run/netns/{pair.a}", flowmeterd, "--interfaces", IF_A,
                               "--interval", "1s", "--metrics-listen", f"127.0.0.1:{mport}", "--flow-log",
                               str(flow_log), "--state-dir", str(tmp_path / "state")],
                              stdout=subprocess.DEVNULL, stderr=err)
    server = client = None
    try:
        wait_for(lambda: "serving metrics" in (tmp_path / "daemon.stderr").read_text() or daemon.poll() is not None,
                 timeout=20, what="flowmeterd to start")
        assert daemon.poll() is None, (tmp_path / "daemon.stderr").read_text()
        assert "socket hooks attached" in (tmp_path / "daemon.stderr").read_text()
        server = subprocess.Popen(in_cgroup(base + "/srv", pair.b, "python3", "-c", SERVER, V4_B, str(sport), str(up), str(down)),
                                  stdout=subprocess.PIPE, text=True)
        ready, server_comm = server.stdout.readline().split()
        assert ready == "ready"
        client = subprocess.Popen(in_cgroup(base + "/cli", pair.a, "python3", "-c", CLIENT, V4_B, str(sport), str(up),
                                            str(down), str(closed)), stdout=subprocess.PIPE, text=True)
        cout, _ = client.communicate(timeout=60)
        cport, got, refused, client_comm = cout.split()
        assert int(got) == down and refused == "True", cout
        assert int(server.communicate(timeout=30)[0].strip()) == up
        time.sleep(1.5)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0, (tmp_path / "daemon.stderr").read_text()
    finally:
        for p in (server, client, daemon):
            if p and p.poll() is None:
                p.kill()
                p.wait()
        err.close()
        for d in ("/srv", "/cli", ""):
            try:
                os.rmdir(base + d)
            except OSError:
                pass

    conns = [json.loads(l) for l in flow_log.read_text().splitlines() if '"type":"connection"' in l]
    print("\n".join(json.dumps(c) for c in conns if c.get("pid") in (server.pid, client.pid)))
    cport = int(cport)

    def one(**want):
        found = [c for c in conns if all(c.get(k) == v for k, v in want.items())]
        assert len(found) == 1, f"records matching {want}: {found}"
        return found[0]

    c_open = one(event="open", local_port=cport, remote_port=sport)
    c_close = one(event="close", local_port=cport, remote_port=sport)
    s_open = one(event="open", local_port=sport, remote_port=cport)
    s_close = one(event="close", local_port=sport, remote_port=cport)
    for r in (c_open, c_close):
        assert (r["role"], r["pid"], r["process"], r["cgroup_path"]) == ("client", client.pid, client_comm, rel + "/cli"), r
        assert r["local_addr"] == "10.200.0.1" and r["remote_addr"] == V4_B, r
    for r in (s_open, s_close):
        assert (r["role"], r["pid"], r["process"], r["cgroup_path"]) == ("server", server.pid, server_comm, rel + "/srv"), r
    assert (c_close["bytes_sent"], c_close["bytes_received"]) == (up, down), c_close
    assert (s_close["bytes_sent"], s_close["bytes_received"]) == (down, up), s_close
    assert c_close["srtt_us"] > 0 and c_close["resets_sent"] == 0 and s_close["resets_received"] == 0
    fail = one(event="failed", remote_port=closed)
    assert (fail["reason"], fail["pid"], fail["cgroup_path"], fail["role"]) == ("refused", client.pid, rel + "/cli", "client"), fail


CLIENT2 = r"""
import socket, struct, sys
addr, port, up, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = socket.create_connection((addr, port), timeout=30)
print(s.getsockname()[1], flush=True)
s.sendall(b"c" * up)
s.recv(1)                               # the server's one-byte answer: all data arrived
if mode == "pause":
    print("idle", flush=True)
    sys.stdin.readline()                # the test reads `ss -ti` now
if mode == "abort":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
else:
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
print("done", flush=True)
"""

SERVER2 = r"""
import socket, sys
addr, port, up = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((addr, port)); l.listen(1); l.settimeout(60)
print("ready", flush=True)
c, _ = l.accept(); c.settimeout(60)
got = 0
while got < up:
    b = c.recv(65536)
    if not b: break
    got += len(b)
c.sendall(b"k")
try:
    while c.recv(65536): pass
except ConnectionResetError:
    pass
c.close(); l.close()
print(got, flush=True)
"""


class Telemetry:
    """flowmeterd in namespace A (nsenter: the host's mounts stay), writing a flow log."""

    def __init__(self, pair, flowmeterd, tmp_path):
        self.log = tmp_path / "flows.jsonl"
        self.err_path = tmp_path / "daemon.stderr"
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{pair.a}", flowmeterd, "--interfaces", IF_A,
                                      "--interval", "1s", "--metrics-listen", f"127.0.0.1:{unique_port()}",
                                      "--flow-log", str(self.log), "--state-dir", str(tmp_path / "state")],
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        wait_for(lambda: "serving metrics" in self.err_path.read_text() or self.proc.poll() is not None,
                 timeout=20, what="flowmeterd to start")
        assert self.proc.poll() is None, self.err_path.read_text()

    def stop(self) -> list[dict]:
        time.sleep(1.2)
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=20) == 0, self.err_path.read_text()
        self.err.close()
        return [json.loads(l) for l in self.log.read_text().splitlines() if '"type":"connection"' in l]

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.err.close()


def close_records(conns, client_port, server_port):
    c = [r for r in conns if r["event"] == "close" and r["local_port"] == client_port and r["remote_port"] == server_port]
    s = [r for r in conns if r["event"] == "close" and r["local_port"] == server_port and r["remote_port"] == client_port]
    assert len(c) == 1 and len(s) == 1, f"close records: client {c}, server {s}"
    return c[0], s[0]


def run_pair(pair, up, mode, on_idle=None):
    sport = unique_port()
    server = pair.popen(pair.b, "python3", "-c", SERVER2, V4_B, str(sport), str(up))
    assert server.stdout.readline().strip() == "ready"
    client = pair.popen(pair.a, "python3", "-c", CLIENT2, V4_B, str(sport), str(up), mode, stdin=subprocess.PIPE)
    cport = int(client.stdout.readline())
    if mode == "pause":
        assert client.stdout.readline().strip() == "idle"
        on_idle(cport, sport)
        client.stdin.write("\n")
        client.stdin.flush()
    assert client.stdout.readline().strip() == "done"
    assert int(pair.finish(server).strip().splitlines()[-1]) == up
    return cport, sport


def retrans_segs(pair, ns) -> int:
    lines = [l.split() for l in pair.run(ns, "cat", "/proc/net/snmp").stdout.splitlines() if l.startswith("Tcp:")]
    return int(lines[1][lines[0].index("RetransSegs")])


def test_retransmits_match_the_kernel(netpair, flowmeterd, tmp_path):
    """Drop a share of the client's packets at the server (nftables numgen):
    the connection's retransmit count equals the kernel's own RetransSegs
    delta in the client's namespace, where this connection is the only one."""
    pair = netpair
    t = Telemetry(pair, flowmeterd, tmp_path)
    try:
        sport = unique_port()
        for rule in (["add", "table", "inet", "fmdrop"],
                     ["add", "chain", "inet", "fmdrop", "in", "{ type filter hook input priority 0; }"],
                     ["add", "rule", "inet", "fmdrop", "in", "tcp", "dport", str(sport), "numgen", "random", "mod", "20", "==", "0", "drop"]):
            pair.run(pair.b, "nft", *rule)
        # Wire-sized segments: with TSO/GSO and GRO a 2 MB transfer can be a few
        # dozen super-packets, and a 1-in-20 drop then often drops none.
        pair.run(pair.a, "ethtool", "-K", IF_A, "tso", "off", "gso", "off")
        pair.run(pair.b, "ethtool", "-K", IF_B, "gro", "off")
        before = retrans_segs(pair, pair.a)
        server = pair.popen(pair.b, "python3", "-c", SERVER2, V4_B, str(sport), str(2_000_000))
        assert server.stdout.readline().strip() == "ready"
        client = pair.popen(pair.a, "python3", "-c", CLIENT2, V4_B, str(sport), str(2_000_000), "graceful")
        cport = int(client.stdout.readline())
        assert client.stdout.readline().strip() == "done"
        pair.finish(server)
        delta = retrans_segs(pair, pair.a) - before
        conns = t.stop()
    finally:
        t.close()
    c, _ = close_records(conns, cport, sport)
    print(f"retransmits: record {c['retransmits']}, kernel RetransSegs delta {delta}")
    assert delta > 0, "nothing was retransmitted: the drop rule did not work"
    assert c["retransmits"] == delta
    assert c["bytes_sent"] == 2_000_000


def test_rtt_matches_ss(netpair, flowmeterd, tmp_path):
    """A TBF shaper on the client's egress adds queueing delay; the srtt in the
    close record is within 20% of what `ss -ti` shows for the idle socket."""
    pair = netpair
    pair.run(pair.a, "tc", "qdisc", "add", "dev", IF_A, "root", "tbf", "rate", "20mbit", "burst", "32kbit", "latency", "400ms")
    t = Telemetry(pair, flowmeterd, tmp_path)
    seen = {}

    def read_ss(cport, sport):
        out = pair.run(pair.a, "ss", "-tin", "dst", V4_B, "dport", f"= :{sport}", "sport", f"= :{cport}").stdout
        m = re.search(r"\brtt:([0-9.]+)/", out)
        assert m, out
        seen["rtt_ms"] = float(m.group(1))

    try:
        cport, sport = run_pair(pair, 1_500_000, "pause", read_ss)
        conns = t.stop()
    finally:
        t.close()
    c, _ = close_records(conns, cport, sport)
    rec_ms = c["srtt_us"] / 1000
    print(f"srtt: record {rec_ms:.3f} ms, ss {seen['rtt_ms']:.3f} ms")
    assert seen["rtt_ms"] > 1, f"the shaper added no delay (rtt {seen['rtt_ms']} ms)"
    assert abs(rec_ms - seen["rtt_ms"]) <= 0.2 * seen["rtt_ms"]


def test_abortive_close_resets(netpair, flowmeterd, tmp_path):
    """SO_LINGER 0: one reset sent by the client, one received by the server."""
    pair = netpair
    t = Telemetry(pair, flowmeterd, tmp_path)
    try:
        cport, sport = run_pair(pair, 100_000, "abort")
        conns = t.stop()
    finally:
        t.close()
    c, s = close_records(conns, cport, sport)
    assert (c["resets_sent"], c["resets_received"]) == (1, 0), c
    assert (s["resets_sent"], s["resets_received"]) == (0, 1), s
    assert c["bytes_sent"] == 100_000 and s["bytes_received"] == 100_000


UDP_SERVER = r"""
import socket, sys
addr, port, ups, downs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ups, downs = [int(x) for x in ups.split(",")], [int(x) for x in downs.split(",")]
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM); s.bind((addr, port)); s.settimeout(20)
print("ready", flush=True)
got, peer = [], None
for _ in ups:
    b, peer = s.recvfrom(65536)
    got.append(len(b))
for n in downs:
    s.sendto(b"d" * n, peer)
s.recvfrom(16)                 # the client's "bye": it has every reply
s.close()
print(",".join(map(str, got)), flush=True)
"""

UDP_CLIENT = r"""
import socket, sys
addr, port, ups, downs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ups, downs = [int(x) for x in ups.split(",")], [int(x) for x in downs.split(",")]
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(20)
s.connect((addr, port))
for n in ups:
    s.send(b"u" * n)
got = [len(s.recv(65536)) for _ in downs]
s.send(b"bye")
print(s.getsockname()[1], ",".join(map(str, got)), open("/proc/self/comm").read().strip(), flush=True)
s.close()
"""


def test_udp_sockets_exact_bytes(netpair, flowmeterd, tmp_path):
    """Datagrams of known sizes each way, over IPv4 and IPv6 between the
    namespaces: each UDP socket's open and close records carry its owner, its
    role and its exact payload bytes (a datagram above the MTU is fragmented on
    the wire and still counts its payload once)."""
    pair = netpair
    ups, downs = [1, 512, 1472, 4000], [300, 7, 2000]
    up_bytes = sum(ups) + len(b"bye")   # the client's last datagram tells the server it is done
    t = Telemetry(pair, flowmeterd, tmp_path)
    results = []
    try:
        for addr in (V4_B, V6_B):
            sport = unique_port()
            server = pair.popen(pair.b, "python3", "-c", UDP_SERVER, addr, str(sport),
                                ",".join(map(str, ups)), ",".join(map(str, downs)))
            assert server.stdout.readline().strip() == "ready"
            client = pair.popen(pair.a, "python3", "-c", UDP_CLIENT, addr, str(sport),
                                ",".join(map(str, ups)), ",".join(map(str, downs)))
            cport, got, comm = pair.finish(client).split()
            assert got == ",".join(map(str, downs))
            assert pair.finish(server).strip().splitlines()[-1] == ",".join(map(str, ups))
            results.append((addr, int(cport), sport, client.pid, comm))
        conns = t.stop()
    finally:
        t.close()
    udp = [c for c in conns if c["protocol"] == "udp"]
    print("\n".join(json.dumps(c) for c in udp))
    for addr, cport, sport, pid, comm in results:
        recs = {e: [c for c in udp if c["local_port"] == cport and c["event"] == e] for e in ("open", "close")}
        assert len(recs["open"]) == 1 and len(recs["close"]) == 1, (addr, recs)
        close = recs["close"][0]
        assert (close["role"], close["pid"], close["process"]) == ("client", pid, comm), close
        assert (close["remote_addr"], close["remote_port"]) == (addr, sport), close
        assert (close["bytes_sent"], close["bytes_received"]) == (up_bytes, sum(downs)), close
        assert "srtt_us" not in close and "retransmits" not in close, close
    # The servers live in namespace B, which flowmeterd (namespace A) sees as
    # well: socket hooks are node-wide.
    for addr, cport, sport, pid, comm in results:
        s = [c for c in udp if c["local_port"] == sport and c["event"] == "close"]
        assert len(s) == 1, s
        assert (s[0]["role"], s[0]["bytes_sent"], s[0]["bytes_received"]) == ("server", sum(downs), up_bytes), s[0]


LONG_CLIENT = r"""
import socket, sys, time
addr, port, first, second, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.create_connection((addr, port), timeout=20)
print(s.getsockname()[1], flush=True)
s.sendall(b"a" * first)
time.sleep(pause)              # long-lived: idle for a few intervals
s.sendall(b"b" * second)
s.shutdown(socket.SHUT_WR)
s.recv(1)
s.close()
short = socket.create_connection((addr, port + 1), timeout=20)   # short-lived: open and close only
print(short.getsockname()[1], flush=True)
short.sendall(b"x" * 10)
short.shutdown(socket.SHUT_WR)
short.recv(1)
short.close()
print("done", flush=True)
"""

SINK = r"""
import socket, sys, threading
addr, port = sys.argv[1], int(sys.argv[2])
def serve(p):
    l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind((addr, p)); l.listen(1); l.settimeout(30)
    c, _ = l.accept(); c.settimeout(30)
    while c.recv(65536): pass
    c.close(); l.close()
ts = [threading.Thread(target=serve, args=(p,)) for p in (port, port + 1)]
for t in ts: t.start()
print("ready", flush=True)
for t in ts: t.join()
print("done", flush=True)
"""


def test_long_lived_connection_updates(netpair, flowmeterd, tmp_path):
    """A connection that lives for several 1 s intervals gets update records
    with its bytes so far (exact while it idles), at most one per interval and
    none while nothing moves; a connection shorter than an interval gets open
    and close only."""
    pair = netpair
    first, second, pause = 300_000, 70_000, 3.5
    t = Telemetry(pair, flowmeterd, tmp_path)
    try:
        sport = unique_port()
        server = pair.popen(pair.b, "python3", "-c", SINK, V4_B, str(sport))
        assert server.stdout.readline().strip() == "ready"
        client = pair.popen(pair.a, "python3", "-c", LONG_CLIENT, V4_B, str(sport), str(first), str(second), str(pause))
        out = pair.finish(client).split()
        cport, short_port = int(out[0]), int(out[1])
        assert out[-1] == "done"
        pair.finish(server)
        conns = t.stop()
    finally:
        t.close()
    mine = [c for c in conns if c["local_port"] == cport and c["remote_port"] == sport]
    print("\n".join(json.dumps(c) for c in mine))
    updates = [c for c in mine if c["event"] == "update"]
    close = [c for c in mine if c["event"] == "close"]
    assert len(close) == 1 and close[0]["bytes_sent"] == first + second, close
    # While idle the connection was read at least twice; the first of those
    # reads reports exactly the first burst, the second (unchanged) nothing.
    assert any(u["bytes_sent"] == first for u in updates), updates
    assert sum(1 for u in updates if u["bytes_sent"] == first) == 1, updates
    assert len(updates) <= pause / 1.0 + 2, updates
    assert all(u["role"] == "client" and u["pid"] == client.pid for u in updates), updates
    sent = [u["bytes_sent"] for u in updates] + [close[0]["bytes_sent"]]
    assert sent == sorted(sent), sent
    short = [c["event"] for c in conns if c["local_port"] == short_port]
    assert sorted(short) == ["close", "open"], short
