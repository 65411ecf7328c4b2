"""Per-service metrics end to end: three services as processes in their own
cgroup v2 groups, in two network namespaces, named by a port rule, a cgroup
rule and a systemd-style cgroup path; known traffic between them; /metrics
shows exactly the payload bytes per pair and direction, the connection counts
and the failures. A real Prometheus server scrapes the daemon and PromQL
returns the same totals; promtool finds no problem in the exposition; SIGHUP
with a changed rule moves new traffic and keeps old counters."""
from __future__ import annotations

import pytest

import json
import os
import signal
import subprocess
import time
import urllib.parse

import fmlib
from conftest import IF_A, V4_B, unique_port, wait_for
from test_sockets import cgroup2_root, in_cgroup

# Every test here asserts on socket telemetry: it runs once per update path (conftest).
pytestmark = pytest.mark.socket_updates

SERVER = r"""
import socket, sys, threading
addr, port, down = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conns = int(sys.argv[4]) if len(sys.argv) > 4 else 1
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((addr, port)); l.listen(8); l.settimeout(60)
print("ready", flush=True)
for _ in range(conns):
    c, _ = l.accept(); c.settimeout(30)
    got = 0
    while True:
        b = c.recv(65536)
        if not b: break
        got += len(b)
    c.sendall(b"s" * down)
    c.close()
    print(got, flush=True)
l.close()
"""

CLIENT = r"""
import errno, socket, sys
addr = sys.argv[1]
for spec in sys.argv[2:]:
    port, up, down = (int(x) for x in spec.split(":"))
    if up < 0:
        r = socket.socket(); r.settimeout(5)
        assert r.connect_ex((addr, port)) == errno.ECONNREFUSED
        r.close()
        continue
    s = socket.create_connection((addr, port), timeout=20)
    s.sendall(b"c" * up)
    s.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        b = s.recv(65536)
        if not b: break
        got += len(b)
    assert got == down, (got, down)
    s.close()
print("done", flush=True)
"""


FETCH = r"""
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Accept": sys.argv[2]} if len(sys.argv) > 2 else {})
with urllib.request.urlopen(req, timeout=10) as r:
    sys.stdout.write(r.headers.get("Content-Type", "") + "\n" + r.read().decode())
"""


def fetch(pair, url, accept=None) -> tuple[str, str]:
    """GET url from inside namespace A: (content type, body)."""
    out = pair.run(pair.a, "python3", "-c", FETCH, url, *([accept] if accept else [])).stdout
    ctype, body = out.split("\n", 1)
    return ctype, body


class Services:
    """The three services' cgroups, the config file and flowmeterd (nsenter: the host's mounts stay)."""

    def __init__(self, pair, flowmeterd, tmp_path, pg_port):
        self.pair, self.tmp = pair, tmp_path
        root = cgroup2_root()
        self.rel = f"/fm-svc-{os.getpid()}-{unique_port()}"
        self.base = root + self.rel
        for d in ("checkout", "inventory.service", "db"):
            os.makedirs(f"{self.base}/{d}")
        self.config = tmp_path / "flowmeter.yaml"
        self.write_config("postgres", pg_port)
        self.port = unique_port()
        self.err_path = tmp_path / "daemon.stderr"
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{pair.a}", flowmeterd, "--config", str(self.config),
                                      "--interfaces", IF_A, "--interval", "1s",
                                      "--metrics-listen", f"127.0.0.1:{self.port}",
                                      "--flow-log", str(tmp_path / "flows.jsonl"),
                                      "--state-dir", str(tmp_path / "state")],
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        wait_for(lambda: "serving metrics" in self.err_path.read_text() or self.proc.poll() is not None,
                 timeout=20, what="flowmeterd to start")
        assert self.proc.poll() is None, self.err_path.read_text()

    def write_config(self, db_name, pg_port):
        self.config.write_text(
            "services:\n"
            f"  - name: {db_name}        # by port\n"
            f"    ports: {pg_port}\n"
            "  - name: checkout        # by cgroup\n"
            f"    cgroup: \"{self.rel}/checkout\"\n"
            "series:\n"
            "  expiry: 10m\n")

    def run(self, where, cg, *cmd):
        """Starts cmd in cgroup cg, then in namespace `where` (joined in that
        order: `ip netns exec` hides the cgroup2 mount)."""
        p = subprocess.Popen(in_cgroup(f"{self.base}/{cg}", where, *cmd), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.pair.procs.append(p)
        return p

    def metrics(self) -> fmlib.Exposition:
        return fmlib.parse_exposition(fetch(self.pair, f"http://127.0.0.1:{self.port}/metrics")[1])

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()
        for d in ("checkout", "inventory.service", "db", ""):
            try:
                os.rmdir(f"{self.base}/{d}")
            except OSError:
                pass


def bytes_of(m, service, peer, direction):
    return m.value("flowmeter_network_io_bytes_total", service=service, peer_service=peer, transport="tcp",
                   direction=direction)


def settled(svc, check, timeout=15):
    """Waits until the scraped metrics satisfy check (the kernel records arrive within an interval or two)."""
    last = None

    def ok():
        nonlocal last
        last = svc.metrics()
        return check(last)
    try:
        wait_for(ok, timeout=timeout, interval=0.5, what="metrics to settle")
    except AssertionError:
        raise AssertionError("metrics did not settle:\n" + "\n".join(
            f"{k} {v}" for k, v in sorted(last.samples.items()) if "network_io" in k[0] or "tcp_conn" in k[0]))
    return last


def test_service_pairs_exact(netpair, flowmeterd, tmp_path):
    pair = netpair
    pg_port, inv_port, closed = unique_port(), unique_port(), unique_port()
    pg_up, pg_down, inv_up, inv_down = 123_457, 34_567, 4_321, 98_765
    svc = Services(pair, flowmeterd, tmp_path, pg_port)
    prom = None
    try:
        # A real Prometheus in namespace A scrapes it every second, from before the
        # traffic: it is the first to see the new pairs, at zero.
        pport = unique_port()
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: flowmeter\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{svc.port}']\n")
        prom = pair.popen(pair.a, "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                          f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}")
        # postgres (named by its port) and inventory (a systemd-style cgroup) in namespace B
        pg = svc.run(pair.b, "db", "python3", "-c", SERVER, V4_B, str(pg_port), str(pg_down), "2")
        inv = svc.run(pair.b, "inventory.service", "python3", "-c", SERVER, V4_B, str(inv_port), str(inv_down))
        assert pg.stdout.readline().strip() == "ready" and inv.stdout.readline().strip() == "ready"
        # checkout (named by its cgroup) in namespace A
        client = svc.run(pair.a, "checkout", "python3", "-c", CLIENT, V4_B, f"{pg_port}:{pg_up}:{pg_down}",
                         f"{inv_port}:{inv_up}:{inv_down}", f"{closed}:-1:0")
        assert pair.finish(client).strip() == "done"
        assert pair.finish(inv).strip() == str(inv_up)

        q = 'sum by (service, peer_service, direction) (flowmeter_network_io_bytes_total{transport="tcp"})'

        def query(expr):
            return json.loads(fetch(pair, f"http://127.0.0.1:{pport}/api/v1/query?"
                                    + urllib.parse.urlencode({"query": expr}))[1])

        def answer():
            try:
                return {(r["metric"]["service"], r["metric"]["peer_service"], r["metric"]["direction"]): float(r["value"][1])
                        for r in query(q)["data"]["result"]}
            except (AssertionError, ValueError, KeyError):
                return {}
        wait_for(lambda: answer().get(("checkout", "postgres", "transmit")) == pg_up
                 and answer().get(("inventory", "checkout", "receive")) == inv_up, timeout=30, interval=1,
                 what="Prometheus to answer the PromQL query")
        got = answer()
        assert got[("checkout", "postgres", "transmit")] == pg_up and got[("checkout", "postgres", "receive")] == pg_down
        assert got[("postgres", "checkout", "transmit")] == pg_down and got[("inventory", "checkout", "receive")] == inv_up
        # "How many bytes per second does checkout send to postgres": a new
        # pair is first exposed at zero, so rate() and increase() see the
        # whole transfer: the series' span in the window is exactly the
        # transfer, and increase() is that, extrapolated by Prometheus from
        # the last sample to the window's end (up to one scrape interval
        # over a span of at least 5 s: at most 20% more).
        time.sleep(5)
        series = 'flowmeter_network_io_bytes_total{service="checkout",peer_service="postgres",direction="transmit"}'
        span = query(f"max_over_time({series}[2m]) - min_over_time({series}[2m])")
        assert float(span["data"]["result"][0]["value"][1]) == pg_up, span
        inc = float(query(f"increase({series}[2m])")["data"]["result"][0]["value"][1])
        assert pg_up <= inc <= pg_up * 1.2, (inc, pg_up)

        m = settled(svc, lambda m: bytes_of(m, "checkout", "inventory", "receive") == inv_down
                    and bytes_of(m, "postgres", "checkout", "transmit") == pg_down)
        for service, peer, tx, rx in (("checkout", "postgres", pg_up, pg_down), ("postgres", "checkout", pg_down, pg_up),
                                      ("checkout", "inventory", inv_up, inv_down), ("inventory", "checkout", inv_down, inv_up)):
            assert bytes_of(m, service, peer, "transmit") == tx, (service, peer)
            assert bytes_of(m, service, peer, "receive") == rx, (service, peer)
            role = "client" if service == "checkout" else "server"
            assert m.value("flowmeter_tcp_connections_opened_total", service=service, peer_service=peer,
                           transport="tcp", role=role) == 1, (service, peer)
            assert m.value("flowmeter_tcp_connections_active", service=service, peer_service=peer,
                           transport="tcp", role=role) == 0, (service, peer)
            if service == "checkout":
                # tc runs on veth-a in namespace A: its flows join checkout's sockets.
                for d in ("transmit", "receive"):
                    assert m.value("flowmeter_network_packets_total", service=service, peer_service=peer,
                                   transport="tcp", direction=d) > 0, (service, peer, d)
            assert m.value("flowmeter_tcp_rtt_seconds_count", service=service, peer_service=peer, transport="tcp") >= 1
        assert m.value("flowmeter_tcp_connections_failed_total", service="checkout", peer_service="unknown",
                       transport="tcp", reason="refused") == 1

        # tc flows carry the service pair of the socket that owns their 5-tuple.
        flows = [json.loads(l) for l in (tmp_path / "flows.jsonl").read_text().splitlines() if '"type":"flow"' in l]
        pg_flows = [f for f in flows if f.get("dst_port") == pg_port and f["direction"] == "transmit"]
        assert pg_flows and all((f.get("service"), f.get("peer_service")) == ("checkout", "postgres") for f in pg_flows), pg_flows
        back = [f for f in flows if f.get("src_port") == pg_port and f["direction"] == "receive"]
        assert back and all((f.get("service"), f.get("peer_service")) == ("checkout", "postgres") for f in back), back

        # promtool lints the exposition as Prometheus would read it.
        text = fetch(pair, f"http://127.0.0.1:{svc.port}/metrics")[1]
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert lint.returncode == 0 and lint.stdout.strip() == "" and lint.stderr.strip() == "", lint.stdout + lint.stderr

        # SIGHUP with the database renamed: old series keep their counts, new traffic lands on the new name.
        svc.write_config("db", pg_port)
        svc.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in svc.err_path.read_text(), timeout=10, what="the reload")
        client = svc.run(pair.a, "checkout", "python3", "-c", CLIENT, V4_B, f"{pg_port}:1000:{pg_down}")
        assert pair.finish(client).strip() == "done"
        m = settled(svc, lambda m: bytes_of(m, "checkout", "db", "transmit") == 1000)
        assert bytes_of(m, "checkout", "postgres", "transmit") == pg_up
        assert bytes_of(m, "db", "checkout", "receive") == 1000 and bytes_of(m, "postgres", "checkout", "receive") == pg_up
        pair.finish(pg)
    finally:
        if prom and prom.poll() is None:
            prom.terminate()
            prom.wait(timeout=20)
        svc.close()
    assert svc.proc.returncode == 0, svc.err_path.read_text()


def test_openmetrics_negotiated(netpair, flowmeterd, tmp_path):
    """Accept: application/openmetrics-text gets OpenMetrics (counter families
    without _total in TYPE, "# EOF" last); anything else gets text 0.0.4."""
    svc = Services(netpair, flowmeterd, tmp_path, unique_port())
    try:
        url = f"http://127.0.0.1:{svc.port}/metrics"
        ctype, body = fetch(netpair, url, "application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
        assert ctype.startswith("application/openmetrics-text; version=1.0.0"), ctype
        assert body.endswith("# EOF\n") and "# TYPE flowmeter_records counter\n" in body, body[-300:]
        ctype, body = fetch(netpair, url)
        assert ctype.startswith("text/plain; version=0.0.4"), ctype
        assert "# EOF" not in body and "# TYPE flowmeter_records_total counter\n" in body
    finally:
        svc.close()
