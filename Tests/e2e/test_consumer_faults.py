"""Exporter and consumer faults: a real Prometheus and a scrape loop of our own
reading /metrics while SIGHUP swaps the configuration many times (renamed
services, other series limits, files with mistakes); and stream consumers of
the local API (flowtop in tmux, raw clients) that vanish at bad moments. In
both the daemon must keep serving whole answers and keep counting exactly.

Seeds are printed; FM_FAULT_SEED=<int> replays one (see test_faults.py)."""
from __future__ import annotations

import pytest

import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import fmlib
from conftest import IF_A, MAC_A, PYTHON, V4_A, V4_B, read_line, scrape_settled, unique_port, wait_for
from test_bad_input import Endpoint
from test_faults import LOG_LINE, SINK, fault_seed
from test_flowtop import FLOWTOP, Pane, tmux
from test_services import fetch

BYTES = "flowmeter_interface_io_bytes_total"
PACKETS = "flowmeter_interface_packets_total"
NET_BYTES = "flowmeter_network_io_bytes_total"
OPENED = "flowmeter_tcp_connections_opened_total"


def bad_log_lines(stderr: str) -> list[str]:
    """The daemon's warning, error and critical log lines."""
    return [l for l in stderr.splitlines()
            if (m := LOG_LINE.match(l)) and m.group(1) in ("warning", "error", "critical")]


# ---------------------------------------------------------------------------
# 1. Prometheus scraping during reload

# TCP clients in namespace A, one connection after another until a line on
# stdin, LIMIT connections or 90 s: connection i sends up(i) bytes,
# half-closes, reads the server's down(i) bytes. Prints connections, bytes
# up, bytes down.
RELOAD_CLIENT = r"""
import select, socket, sys, time
addr, port, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
n = up = down = 0
end = time.monotonic() + 90
while time.monotonic() < end and n < limit:
    u, d = 1000 + (n * 37) % 5000, 500 + (n * 53) % 3000
    s = socket.create_connection((addr, port), timeout=20)
    s.sendall(bytes([n % 251]) * u)
    s.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        b = s.recv(65536)
        if not b: break
        got += len(b)
    s.close()
    assert got == d, (n, got, d)
    n += 1; up += u; down += d
    if select.select([sys.stdin], [], [], 0.04)[0]:
        break
print(n, up, down, flush=True)
"""

# Its server in namespace B: answers connection i with down(i) bytes once the
# client's side is closed. Ends on a line on stdin (or after 120 s); prints
# connections, bytes received, bytes sent.
RELOAD_SERVER = r"""
import select, socket, sys, time
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2]))); l.listen(16)
print("ready", flush=True)
n = got = sent = 0
end = time.monotonic() + 120
while time.monotonic() < end:
    r, _, _ = select.select([l, sys.stdin], [], [], 1.0)
    if sys.stdin in r:
        break
    if l not in r:
        continue
    c, _ = l.accept(); c.settimeout(20)
    while True:
        b = c.recv(65536)
        if not b: break
        got += len(b)
    d = 500 + (n * 53) % 3000
    c.sendall(b"s" * d)
    c.close()
    n += 1; sent += d
print(n, got, sent, flush=True)
"""

SERVICE_PREFIX = "store-"
PEER_NAME = "shoppers"
MIN_CAP = 10           # the lowest series.max_per_metric the daemon takes
SCRAPE_INTERVAL = 0.4   # Prometheus; its scrape timeout is the same (it may not be longer)


def valid_config(port: int, name: str, cap: int, expiry: str) -> str:
    # The peer rule pins the server side's pair to (name, shoppers): without
    # it the peer is named by the client's socket, and an ordering race
    # between the two ends' records could give a pair that folds under a
    # low cap.
    return ("services:\n"
            f"  - name: {name}\n"
            f"    ports: {port}\n"
            "peers:\n"
            f"  - name: {PEER_NAME}\n"
            f"    cidr: {V4_A}/32\n"
            "series:\n"
            f"  max_per_metric: {cap}\n"
            f"  expiry: {expiry}\n")


# Files with one mistake each, all renaming the service to a name that must
# never be served: (file text, what the log line must say, the line it names).
def invalid_configs(port: int) -> list[tuple[str, str, int]]:
    return [
        (f"services:\n  - name: broken-port\n    ports: {port}\n  - name: other\n    ports: 70000\n",
         '"70000" is not a port or port range', 5),
        (f"services:\n  - name: broken-key\n    ports: {port}\nseries:\n  max_per_metrik: 10\n",
         'unknown key (did you mean "max_per_metric"?)', 5),
        (f"services: [\n  {{name: broken-yaml, ports: {port}}}\n", "YAML syntax error", 3),
    ]


def write_atomically(path: Path, text: str) -> None:
    """What configuration management does; a reader never sees half a file."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def is_counter(ex: fmlib.Exposition, name: str) -> bool:
    """Counter samples, and the parts of histograms that only grow."""
    if ex.types.get(name) == "counter":
        return True
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    return base != name and ex.types.get(base) == "histogram"


class Scraper(threading.Thread):
    """Scrapes /metrics back to back from inside namespace A and checks every
    answer against the one before: 200, the whole body (Content-Length),
    parseable, no family or series gone, no counter lower."""

    def __init__(self, ns: str, port: int):
        super().__init__(daemon=True)
        self.ep = Endpoint(ns=ns, port=port)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latest: fmlib.Exposition | None = None
        self.scrapes = 0
        self.problems: list[str] = []

    def run(self):
        prev = None
        while not self.stop.is_set():
            try:
                status, headers, body = self.ep.get("/metrics")
            except OSError as e:
                self._problem(f"scrape {self.scrapes + 1}: {e!r}")
                time.sleep(0.05)
                continue
            problems = []
            if status != 200:
                problems.append(f"status {status}")
            if headers.get("content-length") != str(len(body)):
                problems.append(f"{len(body)} bytes, Content-Length {headers.get('content-length')}")
            text = body.decode(errors="replace")
            if not text.endswith("\n"):
                problems.append(f"does not end with a newline: {text[-80:]!r}")
            ex = fmlib.parse_exposition(text)
            problems += ex.problems
            if prev is not None:
                gone = set(prev.types) - set(ex.types)
                if gone:
                    problems.append(f"families gone: {sorted(gone)}")
                for key, old in prev.samples.items():
                    new = ex.samples.get(key)
                    if new is None:
                        problems.append(f"series gone: {key[0]}{dict(key[1])}")
                    elif is_counter(ex, key[0]) and new < old:
                        problems.append(f"counter went back: {key[0]}{dict(key[1])} {old:.0f} -> {new:.0f}")
            for (name, labels), _ in ex.samples.items():
                service = dict(labels).get("service", "")
                if service.startswith("broken-"):
                    problems.append(f"a service of a refused config is served: {name}{dict(labels)}")
            with self.lock:
                self.scrapes += 1
                if problems:
                    self.problems += [f"scrape {self.scrapes}: {p}" for p in problems[:5]]
                if not ex.problems:
                    self.latest = ex
                    prev = ex
            time.sleep(0.02)

    def _problem(self, p: str):
        with self.lock:
            self.problems.append(p)

    def snapshot(self) -> tuple[fmlib.Exposition | None, int]:
        with self.lock:
            return self.latest, self.scrapes

    def wait_newer(self, than: int, timeout: float = 10) -> fmlib.Exposition:
        """A scrape begun after scrape number `than` was counted (the one in
        flight then may have begun before: it is skipped)."""
        return wait_for(lambda: (lambda ex, n: ex if n > than + 1 else None)(*self.snapshot()),
                        timeout=timeout, interval=0.02, what="a newer scrape")


def server_side(ex: fmlib.Exposition, metric: str, **want) -> dict:
    """service name -> value of `metric` over the server side's pairs."""
    out: dict = {}
    for (name, labels), v in ex.samples.items():
        l = dict(labels)
        if name == metric and l.get("peer_service") == PEER_NAME and l.get("transport") == "tcp" \
                and all(l.get(k) == w for k, w in want.items()):
            out[l["service"]] = out.get(l["service"], 0) + v
    return out


@pytest.mark.socket_updates
def test_prometheus_scraping_during_reload(netpair, daemons, capture, tmp_path):
    pair = netpair
    rng = random.Random(fault_seed())
    # Offloads off: every skb is one wire packet, so the capture is the truth.
    pair.set_offloads(False)
    svc_port, mport, pport = unique_port(), unique_port(), unique_port()
    cfg = tmp_path / "flowmeter.yaml"
    write_atomically(cfg, valid_config(svc_port, f"{SERVICE_PREFIX}0", 2000, "10m"))

    cap = capture(pair, pair.a, IF_A)
    d = daemons(pair.a, "--config", str(cfg), "--interfaces", IF_A, "--interval", "500ms",
                "--metrics-listen", f"127.0.0.1:{mport}", "--state-dir", str(tmp_path / "state")).wait_ready()
    (tmp_path / "prometheus.yml").write_text(
        f"global:\n  scrape_interval: {int(SCRAPE_INTERVAL * 1000)}ms\n"
        f"  scrape_timeout: {int(SCRAPE_INTERVAL * 1000)}ms\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: flowmeter\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n")
    prom = pair.popen(pair.a, "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                      f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def query(expr: str, at: float) -> list:
        doc = json.loads(fetch(pair, f"http://127.0.0.1:{pport}/api/v1/query?"
                               + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"}))[1])
        assert doc["status"] == "success", doc
        return doc["data"]["result"]

    server = pair.popen(pair.b, PYTHON, "-c", RELOAD_SERVER, V4_B, str(svc_port), stdin=subprocess.PIPE)
    assert read_line(server, 10).strip() == "ready"
    client = pair.popen(pair.a, PYTHON, "-c", RELOAD_CLIENT, V4_B, str(svc_port), "100000", stdin=subprocess.PIPE)
    scraper = Scraper(pair.a, mport)
    scraper.start()
    try:
        # Before the window: Prometheus up, the first service pair counted.
        def prom_up():
            try:
                return query('up{job="flowmeter"}', time.time())
            except (AssertionError, ValueError, KeyError):
                return None
        wait_for(prom_up, timeout=30, interval=0.5, what="Prometheus to scrape flowmeterd")
        wait_for(lambda: (lambda ex, _: ex and server_side(ex, OPENED, role="server").get(f"{SERVICE_PREFIX}0", 0) > 0)(
            *scraper.snapshot()), timeout=20, what="the first service's connections on /metrics")
        t_start = time.time()

        # The rounds: renames (cap high), limit changes alone (the lowest cap
        # allowed; each rename adds two pairs, so the later ones are below
        # the pairs that exist, which must stay and go on counting), and
        # files with mistakes. Each waits for its own log line, as a second
        # SIGHUP before the first is handled coalesces with it.
        bad = invalid_configs(svc_port)
        plan = []
        for k in range(1, 25):
            if k % 8 == 4:
                plan.append(("invalid", bad[(k // 8) % len(bad)]))
            elif k % 2 == 1:
                plan.append(("limits", None))
            else:
                plan.append(("rename", None))
        plan.append(("rename", None))   # the last file is a valid rename
        current, renames, limits_changes, refusals, below_cap = f"{SERVICE_PREFIX}0", 0, 0, [], []
        for k, (kind, spec) in enumerate(plan, 1):
            # At least two Prometheus scrapes per round.
            round_end = time.monotonic() + 2 * SCRAPE_INTERVAL
            reloaded = d.stderr.count("configuration reloaded")
            refused = d.stderr.count("configuration not reloaded")
            ex, _ = scraper.snapshot()
            if kind == "rename":
                renames += 1
                current = f"{SERVICE_PREFIX}{k}"
                cap_now, text = 1500 + k, valid_config(svc_port, current, 1500 + k, rng.choice(["10m", "15m", "1h"]))
            elif kind == "limits":
                limits_changes += 1
                cap_now = MIN_CAP + rng.randrange(2)
                text = valid_config(svc_port, current, cap_now, "10m")
                pairs = {(dict(l)["service"], dict(l)["peer_service"], dict(l)["transport"])
                         for (name, l) in ex.samples if name == NET_BYTES}
                below_cap.append(len(pairs) > cap_now)
            else:
                text, says, line = spec
            write_atomically(cfg, text)
            opened_before = server_side(ex, OPENED, role="server").get(current, 0)
            d.proc.send_signal(signal.SIGHUP)
            if kind == "invalid":
                wait_for(lambda: d.stderr.count("configuration not reloaded") == refused + 1, timeout=10,
                         what=f"round {k}: the refused reload's log line")
                line_text = [l for l in d.stderr.splitlines() if "configuration not reloaded" in l][-1]
                refusals.append(line_text)
                assert f"{cfg}:{line}:" in line_text and says in line_text, line_text
                # What is served is unchanged: new connections still land on the last valid name.
                after = scraper.wait_newer(scraper.snapshot()[1])
                wait_for(lambda: server_side(scraper.snapshot()[0], OPENED, role="server").get(current, 0)
                         >= server_side(after, OPENED, role="server").get(current, 0) + 2,
                         timeout=15, what=f"round {k}: connections after the refused reload on {current}")
            else:
                wait_for(lambda: d.stderr.count("configuration reloaded") == reloaded + 1, timeout=10,
                         what=f"round {k}: the reload's log line")
                last = [l for l in d.stderr.splitlines() if "configuration reloaded" in l][-1]
                assert f"service_rules=1 peer_rules=1 max_series_per_metric={cap_now}" in last, last
                if kind == "rename":
                    wait_for(lambda: server_side(scraper.snapshot()[0], OPENED, role="server").get(current, 0) > 0,
                             timeout=15, what=f"round {k}: connections of the renamed service {current}")
                else:
                    # Traffic goes on under the low cap on the pair that exists.
                    wait_for(lambda: server_side(scraper.snapshot()[0], OPENED, role="server").get(current, 0)
                             > opened_before, timeout=15, what=f"round {k}: connections under cap {cap_now}")
            assert d.proc.poll() is None, d.stderr[-3000:]
            time.sleep(max(0.0, round_end - time.monotonic()))
        # Every series served now has been scraped by Prometheus by the window's end.
        ex_at_end = scraper.snapshot()[0]
        time.sleep(3 * SCRAPE_INTERVAL)
        t_end = time.time()
        assert sum(below_cap) >= 3, f"the low cap was below the pairs that exist in only {below_cap}"

        client.stdin.write("stop\n")
        client.stdin.flush()
        conns, up, down = map(int, pair.finish(client, timeout=30).split())
        server.stdin.write("stop\n")
        server.stdin.flush()
        assert pair.finish(server, timeout=30).split() == [str(conns), str(up), str(down)]

        def settled(conns: int, up: int) -> fmlib.Exposition:
            """The first scrape with every connection's records in (over every name)."""
            def ok():
                ex = scraper.wait_newer(scraper.snapshot()[1])
                rx = server_side(ex, NET_BYTES, direction="receive")
                return ex if sum(rx.values()) == up and sum(server_side(ex, OPENED, role="server").values()) == conns else None
            try:
                return wait_for(ok, timeout=20, interval=0.3, what="the service counters to settle")
            except AssertionError:
                ex = scraper.snapshot()[0]
                raise AssertionError(f"server side receive bytes {server_side(ex, NET_BYTES, direction='receive')} "
                                     f"(want {up} in all), connections {server_side(ex, OPENED, role='server')} "
                                     f"(want {conns} in all)") from None
        ex_before = settled(conns, up)

        # After the rounds, the last name is in effect: a known exchange lands
        # on it exactly (it is the only traffic from here on).
        server = pair.popen(pair.b, PYTHON, "-c", RELOAD_SERVER, V4_B, str(svc_port), stdin=subprocess.PIPE)
        assert read_line(server, 10).strip() == "ready"
        client = pair.popen(pair.a, PYTHON, "-c", RELOAD_CLIENT, V4_B, str(svc_port), "1", stdin=subprocess.PIPE)
        one = pair.finish(client, timeout=30).split()
        server.stdin.write("stop\n")
        server.stdin.flush()
        assert pair.finish(server, timeout=30).split() == one and one[0] == "1", one
        conns, up, down = conns + 1, up + int(one[1]), down + int(one[2])
        ex = settled(conns, up)
        for metric, labels, delta in ((NET_BYTES, {"direction": "receive"}, int(one[1])),
                                      (NET_BYTES, {"direction": "transmit"}, int(one[2])),
                                      (OPENED, {"role": "server"}, 1)):
            was, now = server_side(ex_before, metric, **labels), server_side(ex, metric, **labels)
            assert {k: v - was.get(k, 0) for k, v in now.items() if v != was.get(k, 0)} == {current: delta}, \
                (metric, labels, was, now)
        assert sum(server_side(ex, NET_BYTES, direction="transmit").values()) == down
        names = set(server_side(ex, OPENED, role="server"))
        assert names <= {f"{SERVICE_PREFIX}{k}" for k in range(len(plan) + 1)}, names
        assert len(names) == renames + 1, f"{renames} renames, server-side names {sorted(names)}"

        # Prometheus over the window: every scrape up, complete, no counter reset.
        wait_for(lambda: (lambda r: r and float(r[0]["value"][1]) > t_end + 1)(
            query('timestamp(up{job="flowmeter"})', time.time())), timeout=15, interval=0.5,
            what="Prometheus to scrape past the window")
        window = f"{math.ceil(t_end - t_start)}s"
        ups = query(f'min_over_time(up{{job="flowmeter"}}[{window}])', t_end)
        count = query(f'count_over_time(up{{job="flowmeter"}}[{window}])', t_end)
        slowest = query(f'max_over_time(scrape_duration_seconds{{job="flowmeter"}}[{window}])', t_end)
        samples = query(f'min_over_time(scrape_samples_scraped{{job="flowmeter"}}[{window}])', t_end)
        print(f"window {window}: {count[0]['value'][1]} Prometheus scrapes (slowest "
              f"{float(slowest[0]['value'][1]) * 1000:.0f} ms, at least {samples[0]['value'][1]} samples each), "
              f"{scraper.snapshot()[1]} of ours")
        assert ups and float(ups[0]["value"][1]) == 1, f"a Prometheus scrape failed in the window: {ups}"
        expected_scrapes = (t_end - t_start) / SCRAPE_INTERVAL
        assert float(count[0]["value"][1]) >= 0.6 * expected_scrapes, (count, expected_scrapes)
        # resets() drops the metric name, so each family is labelled back
        # (series of two families would otherwise collide).
        counters = sorted({n for n, _ in ex_at_end.samples if is_counter(ex_at_end, n) and not n.endswith("_sum")})
        resets = query(" or ".join(f'label_replace(resets({n}{{job="flowmeter"}}[{window}]), "metric", "{n}", "", "")'
                                   for n in counters), t_end)
        nonzero = [(r["metric"], r["value"][1]) for r in resets if float(r["value"][1]) != 0]
        assert not nonzero, f"counter resets seen by Prometheus: {nonzero}"
        seen = {(r["metric"]["metric"], frozenset((k, v) for k, v in r["metric"].items()
                                                  if k not in ("metric", "job", "instance"))) for r in resets}
        served = {k for k in ex_at_end.samples if k[0] in counters}
        assert served <= seen, f"counter series Prometheus has no samples of: {sorted(served - seen)[:10]}"
        grew = query(f'increase({BYTES}{{interface="{IF_A}"}}[{window}]) > 0', t_end)
        assert len(grew) == 2, grew

        # Interface totals exactly what crossed the link (tcpdump saw it too).
        _, body = scrape_settled(pair, pair.a, mport, (BYTES, PACKETS))
        final = fmlib.parse_exposition(body)
        scraper.stop.set()
        scraper.join(timeout=15)
        assert d.terminate() == 0, d.stderr[-3000:]
        cap.stop()
        truth = fmlib.summarize_capture(fmlib.read_pcap(str(cap.path)), MAC_A)
        for direction in ("transmit", "receive"):
            want = truth.per_direction[direction]
            got = (final.value(PACKETS, interface=IF_A, direction=direction),
                   final.value(BYTES, interface=IF_A, direction=direction))
            assert got == (want.packets, want.bytes), f"{direction}: counted {got}, capture {want.as_tuple()}"

        # Our own scrapes: every one whole, nothing gone, nothing lower.
        _, n = scraper.snapshot()
        assert not scraper.problems, f"{len(scraper.problems)} problems in {n} scrapes:\n" + "\n".join(scraper.problems[:30])
        assert n >= 100, f"only {n} scrapes of our own"

        # The log: one line per reload, one error line per refused file, nothing else amiss.
        valid = renames + limits_changes
        assert d.stderr.count("configuration reloaded") == valid, d.stderr[-3000:]
        assert bad_log_lines(d.stderr) == refusals, "\n".join(bad_log_lines(d.stderr))
        assert len(refusals) == sum(1 for k, _ in plan if k == "invalid") >= 3
        print(f"{conns} connections, {up} bytes up, {down} down; {renames} renames, {limits_changes} limit "
              f"changes, {len(refusals)} refused files; capture {truth.frames} frames")
    finally:
        scraper.stop.set()
        for p in (client, server):
            if p.poll() is None:
                p.kill()
        if prom.poll() is None:
            prom.terminate()
            prom.wait(timeout=20)


# ---------------------------------------------------------------------------
# 2. stream consumers disconnecting mid-stream

STREAM_REQUEST = b"GET /v1/stream HTTP/1.1\r\nHost: flowmeter\r\n\r\n"
PAYLOAD = 200
ROUNDS = 30

# A paced UDP sender in namespace A: DST PORT SIZE; a datagram every 5 ms until
# a line arrives on stdin (at most 100 s), reading the echoes as they come; then
# waits for the last echoes (a socket closed before they arrive would make the
# kernel answer with ICMP, traffic no one planned). Prints sent and echoed.
PACED = r"""
import select, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.connect((sys.argv[1], int(sys.argv[2])))
s.setblocking(False)
size = int(sys.argv[3]); end = time.monotonic() + 100; sent = got = 0
def drain():
    global got
    while True:
        try:
            s.recv(65535); got += 1
        except BlockingIOError:
            return
while time.monotonic() < end:
    s.send(b"p" * size); sent += 1
    drain()
    if select.select([sys.stdin], [], [], 0.005)[0]:
        break
end = time.monotonic() + 5
while got < sent and time.monotonic() < end:
    select.select([s], [], [], 0.1)
    drain()
print(sent, got, flush=True)
"""


def fd_kinds(pid: int) -> dict:
    """What the process has open, by kind (sockets, pipes, anon inodes, files)."""
    kinds: dict = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue   # closed meanwhile
        kind = re.sub(r"\[\d+\]$", "", target) if target.startswith(("socket:", "pipe:", "anon_inode:")) else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def threads(pid: int) -> int:
    return int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


class Stream:
    """A well-behaved /v1/stream client: reads the head, then decodes the
    chunks; every complete line is one JSON message, kept with its arrival time."""

    def __init__(self, path: str, timeout: float = 10):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.s.sendall(STREAM_REQUEST)
        self.raw = b""
        self.text = b""
        self.messages: list[tuple[float, dict]] = []
        while b"\r\n\r\n" not in self.raw:
            self._recv()
        head, _, self.raw = self.raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}

    def _recv(self):
        b = self.s.recv(65536)
        if not b:
            raise EOFError(f"stream closed by the daemon after {len(self.messages)} messages")
        self.raw += b

    def read(self, n: int) -> list[tuple[float, dict]]:
        """Reads until n more messages have arrived."""
        want = len(self.messages) + n
        while len(self.messages) < want:
            while b"\r\n" not in self.raw:
                self._recv()
            size_line, _, rest = self.raw.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            assert size > 0, f"the stream ended (last chunk) after {len(self.messages)} messages"
            while len(rest) < size + 2:
                self._recv()
                size_line, _, rest = self.raw.partition(b"\r\n")
            assert rest[size:size + 2] == b"\r\n", rest[size:size + 10]
            self.text += rest[:size]
            self.raw = rest[size + 2:]
            while b"\n" in self.text:
                line, _, self.text = self.text.partition(b"\n")
                self.messages.append((time.monotonic(), json.loads(line)))
        return self.messages[-n:]

    def close(self):
        self.s.close()


# Consumers that vanish at bad moments. Each gets the socket path and its own
# random.Random, and returns what it saw (for the log of the round).

def partial_chunk(path: str, rng: random.Random) -> str:
    """Reads zero or more whole messages, then part of the next chunk, and
    closes with the rest unread. A small receive buffer keeps the daemon's
    write of the full snapshot pending when the close comes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    s.settimeout(10)
    s.connect(path)
    s.sendall(STREAM_REQUEST)
    whole = rng.choice([0, 0, 1])
    data = b""
    while data.count(b"\n{") < whole or b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head = data.split(b"\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 200"), head
    extra = rng.randrange(1, 1500)
    got = 0
    while got < extra:
        b = s.recv(min(4096, extra - got))
        if not b:
            break
        got += len(b)
    s.close()
    return f"partial: {whole} whole, {got} bytes more"


def request_then_close(path: str, rng: random.Random) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(STREAM_REQUEST)
    time.sleep(rng.choice([0, 0, 0.001, 0.01]))
    s.close()
    return "closed after the request"


def half_close_vanish(path: str, rng: random.Random) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(STREAM_REQUEST)
    s.shutdown(socket.SHUT_WR)
    wait = rng.uniform(0, 1.2)
    time.sleep(wait)
    s.close()
    return f"half-closed, gone after {wait:.2f} s"


def mid_request(path: str, rng: random.Random) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    cut = rng.randrange(1, len(STREAM_REQUEST))
    s.sendall(STREAM_REQUEST[:cut])
    time.sleep(rng.choice([0, 0.05, 0.3]))
    s.close()
    return f"gone after {cut} bytes of the request"


RAW_KINDS = [partial_chunk, request_then_close, half_close_vanish, mid_request]


def test_flowtop_disconnecting_mid_stream(netpair, daemons, tmp_path):
    pair = netpair
    rng = random.Random(fault_seed())
    sock = str(tmp_path / "api.sock")
    mport, udp_port = unique_port(), unique_port()
    d = daemons(pair.a, "--interfaces", IF_A, "--interval", "500ms", "--metrics-listen", f"127.0.0.1:{mport}",
                "--api-socket", sock, "--state-dir", str(tmp_path / "state")).wait_ready()
    wait_for(lambda: "serving the API" in d.stderr, timeout=10, what="the API")
    pid = d.proc.pid
    metrics = Endpoint(ns=pair.a, port=mport)

    def counted(name: str, direction: str) -> float:
        status, _, body = metrics.get("/metrics")
        assert status == 200, status
        return fmlib.parse_exposition(body.decode()).value(name, interface=IF_A, direction=direction) or 0.0

    echo = pair.popen(pair.b, PYTHON, "-c", SINK, V4_B, str(udp_port), "3", "echo")
    assert read_line(echo, 10).strip() == "ready"
    sender = pair.popen(pair.a, PYTHON, "-c", PACED, V4_B, str(udp_port), str(PAYLOAD), stdin=subprocess.PIPE)
    pane = Pane(f"fmdis{os.getpid()}", 120, 32)
    witness = None
    try:
        # Warm-up: every kind of consumer once, done properly, so that what
        # the daemon makes on first use (its API connection machinery, the
        # worker threads) is in the baseline.
        pane.type(f"{FLOWTOP} --socket {sock}")
        pane.key("Enter")
        pane.wait(r"hooks: tc=")
        pane.key("q")
        w = Stream(sock)
        w.read(2)
        w.close()
        assert Endpoint(unix=sock).get("/v1/snapshot")[0] == 200
        # Worker threads come and go with load, up to the pools' bounds: the
        # baseline is the most seen in two idle seconds. Descriptors are all
        # made at start or per connection, so their baseline is exact.
        base_threads = 0
        for _ in range(10):
            base_threads = max(base_threads, threads(pid))
            time.sleep(0.2)
        base_fds = fd_kinds(pid)
        print(f"baseline: {sum(base_fds.values())} fds {base_fds}, {base_threads} threads")

        # A witness reads the stream all along: the others' faults must not cost it a message.
        witness = Stream(sock)
        witness.read(1)
        witness_error: list[str] = []

        def watch():
            try:
                while not stop_watch.is_set():
                    witness.read(1)
            except (OSError, EOFError, AssertionError, ValueError) as e:
                if not stop_watch.is_set():
                    witness_error.append(repr(e))
        stop_watch = threading.Event()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()

        samples: list[tuple[float, float]] = []
        peak_sockets, peak_threads, history = 0, 0, []
        for r in range(1, ROUNDS + 1):
            samples.append((time.monotonic(), counted(BYTES, "transmit")))
            results: list[str] = []
            errors: list[str] = []

            def run(kind, seed):
                try:
                    results.append(kind(sock, random.Random(seed)))
                except Exception as e:   # reported below, with the round
                    errors.append(f"{kind.__name__}: {e!r}")
            clients = [threading.Thread(target=run, args=(k, rng.randrange(1 << 30)), daemon=True)
                       for k in RAW_KINDS for _ in range(2)]
            for c in clients:
                c.start()
            if r % 2:
                # flowtop mid-stream: once it shows the daemon's header it has the
                # full snapshot; SIGKILL a random moment later (between messages or in one).
                tmux("respawn-pane", "-k", "-t", pane.name, f"exec {FLOWTOP} --socket {sock}")
                top = int(tmux("display-message", "-p", "-t", pane.name, "#{pane_pid}").strip())
                pane.wait(r"hooks: tc=.*up \d")
                assert Path(f"/proc/{top}/comm").read_text().strip() == "flowtop"
                peak_sockets = max(peak_sockets, fd_kinds(pid).get("socket:", 0))
                delay = rng.uniform(0, 1.5)
                time.sleep(delay)
                os.kill(top, signal.SIGKILL)
                results.append(f"flowtop SIGKILLed {delay:.2f} s after its first screen")
            for c in clients:
                c.join(timeout=20)
            assert not errors, f"round {r}: {errors}"
            assert d.proc.poll() is None, f"round {r}: flowmeterd exited {d.proc.returncode}:\n{d.stderr[-3000:]}"
            peak_threads = max(peak_threads, threads(pid))
            history.append(f"round {r}: " + "; ".join(sorted(results)))
        print("\n".join(history[:3] + ["..."]))

        # The witness got a message about every second all along.
        stop_watch.set()
        watcher.join(timeout=5)
        witness.close()
        times = [t for t, _ in witness.messages]
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert not witness_error, witness_error
        assert len(times) >= (times[-1] - times[0]) * 0.9 and max(gaps) < 2.5, \
            f"{len(times)} witness messages, largest gap {max(gaps):.2f} s"
        assert all(m["stream"] == "delta" and m["version"] == 1 for _, m in witness.messages[1:])

        # Once every consumer is gone, the daemon holds what it held before.
        def back():
            return fd_kinds(pid) == base_fds and threads(pid) <= base_threads
        try:
            wait_for(back, timeout=20, interval=0.2, what="fds and threads back to the baseline")
        except AssertionError:
            raise AssertionError(f"fds {fd_kinds(pid)} (baseline {base_fds}), threads {threads(pid)} "
                                 f"(baseline {base_threads})") from None
        print(f"peak {peak_sockets} sockets, {peak_threads} threads; back to {fd_kinds(pid)}, {threads(pid)} threads")
        # The count does see consumers: flowtop's and the witness's connections at least.
        assert peak_sockets >= base_fds["socket:"] + 2, (peak_sockets, base_fds)

        # A new consumer: the whole snapshot, then deltas.
        fresh = Stream(sock)
        assert fresh.status == 200 and fresh.headers.get("content-type") == "application/x-ndjson", fresh.headers
        msgs = [m for _, m in fresh.read(3)]
        fresh.close()
        assert msgs[0]["stream"] == "full" and {"hooks", "interfaces", "services", "connections", "flows",
                                                "self_metrics", "host"} <= msgs[0].keys(), msgs[0].keys()
        assert all(m["stream"] == "delta" for m in msgs[1:]), msgs[1:]
        assert [m["time_unix_ms"] for m in msgs] == sorted(m["time_unix_ms"] for m in msgs)

        # Counting went on, exactly.
        sender.stdin.write("stop\n")
        sender.stdin.flush()
        sent, got = map(int, pair.finish(sender, timeout=30).split())
        echoed = int(pair.finish(echo, timeout=30).strip())
        assert sent == got == echoed, (sent, got, echoed)
        want = {"transmit": (sent, sent * (PAYLOAD + 28)), "receive": (got, got * (PAYLOAD + 28))}
        wait_for(lambda: all((counted(PACKETS, k), counted(BYTES, k)) == v for k, v in want.items()),
                 timeout=10, interval=0.3, what=f"{sent} datagrams each way on /metrics")
        time.sleep(1.2)   # past another eviction: nothing more arrives
        for direction, (packets, nbytes) in want.items():
            assert (counted(PACKETS, direction), counted(BYTES, direction)) == (packets, nbytes), direction
        values = [v for _, v in samples]
        assert values == sorted(values), f"counter went down: {values}"
        # Samples 0.9 s apart span at least one 500 ms eviction of a sender's 200 datagrams a second.
        rising = [(a, b) for (ta, a), (tb, b) in zip(samples, samples[1:]) if tb - ta >= 0.9]
        assert len(rising) >= ROUNDS // 2 and all(b > a for a, b in rising), f"counting stalled: {samples}"

        # The log: nothing amiss, and no consumer was too slow (each one closed).
        assert bad_log_lines(d.stderr) == [], "\n".join(bad_log_lines(d.stderr))
        assert "too slow" not in d.stderr, d.stderr[-3000:]
        assert d.terminate() == 0, d.stderr[-3000:]
    finally:
        if witness is not None:
            witness.close()
        pane.close()
        for p in (sender, echo):
            if p.poll() is None:
                p.kill()
