"""Socket telemetry end to end: a server and a client in different network
namespaces and different cgroup v2 groups; their connection records carry the
right pids, process names, cgroup paths, roles and exact payload bytes, and a
connect to a closed port gives a failure with reason "refused"."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from conftest import IF_A, V4_B, unique_port, wait_for

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
