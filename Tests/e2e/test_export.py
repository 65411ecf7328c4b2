"""The doors to observability pipelines, each checked by a real consumer:
OTLP/HTTP to a receiver that decodes with the official protobuf schema
(opentelemetry-proto), and IPFIX to Debian's nfcapd, read back with nfdump."""
from __future__ import annotations

import pytest

import csv
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import fmlib
from conftest import IF_A, NETTOOL, V4_B, V6_B, unique_port, wait_for

# The OTLP receiver of every OTLP test (HTTP and gRPC, TLS, scripted answers):
# opentelemetry-proto's classes, grpcio for gRPC.
RECEIVER = str(Path(__file__).with_name("otlp_receiver.py"))


def scrape(pair, port):
    code = f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())"
    return fmlib.parse_exposition(pair.run(pair.a, "python3", "-c", code).stdout)


class Receiver:
    """otlp_receiver.py in namespace A: one JSON object per line it printed
    (a decoded request, or a scripted or refused answer)."""

    def __init__(self, pair, proto: str, port: int, *args: str):
        self.pair, self.port, self.args, self.lines = pair, port, ["--proto", proto, "--port", str(port), *args], []
        self.start()

    def start(self):
        self.proc = self.pair.popen(self.pair.a, "python3", RECEIVER, *self.args)
        line = self.proc.stdout.readline().strip()
        assert line == "ready", (line, self.proc.stderr.read() if self.proc.poll() is not None else "")
        os.set_blocking(self.proc.stdout.fileno(), False)

    def poll(self) -> list[dict]:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                return self.lines
            self.lines.append(json.loads(line))

    @property
    def requests(self) -> list[dict]:
        """The decoded export requests only."""
        return [r for r in self.poll() if "metrics" in r]

    def stop(self):
        self.poll()
        self.proc.kill()
        self.proc.wait()


@pytest.mark.socket_updates
def test_otlp_push_matches_metrics_and_survives_a_receiver_outage(netpair, daemons, tmp_path):
    pair = netpair
    mport, rport, queue = unique_port(), unique_port(), 2
    rx = Receiver(pair, "http", rport)
    d = daemons(pair.a, "--interfaces", IF_A, "--interval", "500ms", "--metrics-listen", f"127.0.0.1:{mport}",
                "--otlp-endpoint", f"http://127.0.0.1:{rport}/v1/metrics", "--otlp-queue-size", str(queue),
                "--state-dir", str(tmp_path / "state")).wait_ready()
    echo_port = unique_port()
    echo = pair.popen(pair.b, "python3", NETTOOL, "udp-echo", V4_B, str(echo_port), "3")
    assert echo.stdout.readline().strip() == "ready"
    pair.nettool(pair.a, "udp-client", V4_B, str(echo_port), "1000,2000,3000")
    wait_for(lambda: len(rx.requests) >= 3, timeout=20, what="OTLP requests")

    # After the traffic settles, the last push carries exactly what /metrics shows.
    def same():
        m = scrape(pair, mport)
        time.sleep(1.2)   # two more pushes
        last = rx.requests[-1]
        want = {}
        for (name, labels), v in m.samples.items():
            # The scrapes and pushes themselves are TCP on loopback and move
            # between the two reads; the UDP transfer and veth-a are still.
            if name in ("flowmeter_interface_io_bytes_total", "flowmeter_interface_packets_total") or (
                    name == "flowmeter_network_io_bytes_total" and ("transport", "udp") in labels):
                want[(name[:-len("_total")].replace("_", "."), labels)] = v
        got = {(n, frozenset(p[0].items())): p[1] for n, info in last["metrics"].items() for p in info["points"]
               if n in {k[0] for k in want} and p[0].get("transport", "udp") == "udp"}
        ok = bool(want) and got == want
        if not ok:
            print("DIFF want-got", {k: v for k, v in want.items() if got.get(k) != v}, "got-want", {k: v for k, v in got.items() if want.get(k) != v})
        return ok, (want, got)
    wait_for(lambda: same()[0], timeout=20, interval=0.2, what="the OTLP values to equal /metrics")
    last = rx.requests[-1]
    assert last["path"] == "/v1/metrics" and last["ctype"] == "application/x-protobuf"
    assert last["resource"]["service.name"] == "flowmeterd" and last["resource"]["host.name"] == os.uname().nodename
    assert last["resource"]["service.version"], last["resource"]
    assert last["scope"] == "flowmeterd"
    io_bytes = last["metrics"]["flowmeter.interface.io.bytes"]
    assert io_bytes["kind"] == "sum" and io_bytes["temporality"] == 2 and io_bytes["monotonic"] and io_bytes["unit"] == "By"
    udp = [p for p in last["metrics"]["flowmeter.network.io.bytes"]["points"]
           if p[0]["transport"] == "udp" and p[0]["direction"] == "transmit" and p[0]["service"] == "python3"]
    # The client (connected: its peer is the echo socket's service) and the
    # echo server (unconnected: peer unknown) each sent the 6,000 bytes.
    assert sorted((p[0]["peer_service"], p[1]) for p in udp) == [("python3", 6000.0), ("unknown", 6000.0)], udp

    # Receiver down: sends fail, the queue keeps the newest requests, the rest are dropped.
    received_before = len(rx.requests)
    rx.stop()
    down_at = time.time_ns()
    time.sleep(4)
    mid = scrape(pair, mport)
    assert mid.value("flowmeter_export_records_total", exporter="otlp", outcome="failed") > 0
    assert mid.value("flowmeter_export_records_total", exporter="otlp", outcome="dropped") >= 4
    assert mid.value("flowmeter_export_queue_length", exporter="otlp") == queue
    up_at = time.time_ns()
    rx.start()
    wait_for(lambda: sum(1 for r in rx.requests if r["time"] > up_at) >= 3, timeout=30, what="export to resume")
    # At most the queue's worth of requests made while the receiver was down
    # arrive (newer ones push them out while the sender backs off).
    survivors = [r for r in rx.requests if down_at < r["time"] < up_at]
    assert len(survivors) <= queue, [r["time"] for r in rx.requests]
    # Each request carries the daemon's own export counters as of its making:
    # "queued" is the number of requests made before it. Every one of those
    # was either received or counted as dropped, exactly.
    def counter(r, outcome):
        return next(p[1] for p in r["metrics"]["flowmeter.export.records"]["points"]
                    if p[0] == {"exporter": "otlp", "outcome": outcome})
    last = rx.requests[-1]
    made_before = counter(last, "queued")
    received = sum(1 for r in rx.requests if counter(r, "queued") < made_before)
    assert received + counter(last, "dropped") == made_before, (received, counter(last, "dropped"), made_before)
    assert counter(last, "dropped") >= 4
    assert received_before <= received
    assert d.terminate() == 0, d.stderr
    rx.stop()
    echo.kill()


def test_ipfix_to_nfcapd(netpair, daemons, tmp_path):
    """nfcapd receives the IPFIX export; nfdump reads back flows whose
    addresses, ports, protocol, packets and bytes equal the flow log's, for a
    known transfer over IPv4 and IPv6."""
    pair = netpair
    cport, mport = unique_port(), unique_port()
    outdir = tmp_path / "nfcapd"
    outdir.mkdir()
    nfcapd = pair.popen(pair.a, "nfcapd", "-b", "127.0.0.1", "-p", str(cport), "-w", str(outdir), "-t", "3600")
    log = tmp_path / "flows.jsonl"
    d = daemons(pair.a, "--interfaces", IF_A, "--interval", "500ms", "--metrics-listen", f"127.0.0.1:{mport}",
                "--flow-log", str(log), "--ipfix-collector", f"127.0.0.1:{cport}", "--ipfix-observation-domain", "42",
                "--state-dir", str(tmp_path / "state")).wait_ready()
    ports = {}
    for addr in (V4_B, V6_B):
        p = unique_port()
        ports[addr] = p
        echo = pair.popen(pair.b, "python3", NETTOOL, "udp-echo", addr, str(p), "4")
        assert echo.stdout.readline().strip() == "ready"
        pair.nettool(pair.a, "udp-client", addr, str(p), "100,1200,300,50")
        pair.finish(echo)
    time.sleep(1.5)
    assert d.terminate() == 0, d.stderr
    nfcapd.send_signal(signal.SIGTERM)
    nfcapd.wait(timeout=20)
    files = [f for f in outdir.iterdir() if f.name.startswith("nfcapd.") and "current" not in f.name]
    assert files, list(outdir.iterdir())
    out = subprocess.run(["nfdump", "-R", str(outdir), "-o", "csv", "-N"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # A header line (ts,te,td,sa,da,sp,dp,pr,...,ipkt,ibyt,...), the flows, then a blank line and a summary.
    table = out.stdout.split("\n\n")[0]
    rows = list(csv.DictReader(io.StringIO(table)))
    assert rows and {"sa", "da", "sp", "dp", "pr", "ipkt", "ibyt"} <= rows[0].keys(), out.stdout
    flows = [r for r in fmlib.read_flow_log(str(log)) if r.get("protocol") == "udp"]
    for addr, port in ports.items():
        want = sorted((f["src_addr"], f["dst_addr"], f["src_port"], f["dst_port"], f["packets"], f["bytes"])
                      for f in flows if port in (f["src_port"], f["dst_port"]))
        got = sorted((r["sa"], r["da"], int(r["sp"]), int(r["dp"]), int(r["ipkt"]), int(r["ibyt"]))
                     for r in rows if (r.get("pr") or "").strip().upper() in ("UDP", "17")
                     and port in (int(r["sp"]), int(r["dp"])))
        assert want and got == want, (addr, want, got)
