"""The JSON-lines flow log as a file operators keep: every line follows the
documented schema (version 1), rotation by size keeps at most the configured
number of old files without splitting a line, and SIGHUP reopens the file after
logrotate moved it."""
from __future__ import annotations

import json
import os
import signal
import time

from conftest import IF_A, NETTOOL, V4_B, unique_port, wait_for
import fmlib

# The flow-log schema of docs/flow-log.md: key -> type, for every key a record may carry.
FLOW_KEYS = {
    "version": int, "type": str, "interface": str, "ifindex": int, "direction": str, "family": str,
    "protocol": str, "protocol_number": int, "src_addr": str, "dst_addr": str, "src_port": int, "dst_port": int,
    "ethertype": int, "packets": int, "bytes": int, "tcp_flags": str, "tcp_flags_raw": int, "flags": list,
    "first_seen": str, "last_seen": str, "source": str, "service": str, "peer_service": str,
    "drops": int, "drop_reasons": list,
}
FLOW_REQUIRED = {"version", "type", "interface", "ifindex", "direction", "family", "packets", "bytes",
                 "first_seen", "last_seen", "source"}
CONNECTION_KEYS = {
    "version": int, "type": str, "event": str, "time": str, "protocol": str, "family": str, "role": str,
    "local_addr": str, "local_port": int, "remote_addr": str, "remote_port": int, "pid": int, "tid": int,
    "process": str, "cgroup_id": int, "cgroup_path": str, "bytes_sent": int, "bytes_received": int,
    "duration_ms": float, "srtt_us": int, "retransmits": int, "resets_sent": int, "resets_received": int,
    "reason": str, "errno": int,
}
CONNECTION_REQUIRED = {"version", "type", "event", "time", "protocol", "family", "role", "local_addr", "local_port",
                       "remote_addr", "remote_port"}


def check_schema(record: dict) -> None:
    keys, required = (FLOW_KEYS, FLOW_REQUIRED) if record["type"] == "flow" else (CONNECTION_KEYS, CONNECTION_REQUIRED)
    assert record["version"] == 1, record
    assert required <= record.keys(), (required - record.keys(), record)
    for k, v in record.items():
        assert k in keys, f"undocumented key {k!r}: {record}"
        want = keys[k]
        assert isinstance(v, want) or (want is float and isinstance(v, int)), (k, v, record)


def test_schema_rotation_and_reopen(netpair, daemons, tmp_path):
    pair = netpair
    log = tmp_path / "flows.jsonl"
    port = unique_port()
    # The UDP echo server answers; each client run is a new flow.
    echo_port = unique_port()
    echo = pair.popen(pair.b, "python3", NETTOOL, "udp-echo", V4_B, str(echo_port), "200")
    assert echo.stdout.readline().strip() == "ready"
    d = daemons(pair.a, "--interfaces", IF_A, "--interval", "500ms", "--metrics-listen", f"127.0.0.1:{port}",
                "--flow-log", str(log), "--flow-log-max-size", "16K", "--flow-log-keep", "2",
                "--state-dir", str(tmp_path / "state")).wait_ready()
    # About 1.5 KB of lines per run; a tick's batch stays far below 16 KiB.
    for _ in range(80):
        pair.nettool(pair.a, "udp-client", V4_B, str(echo_port), "100,200")
    wait_for(lambda: (tmp_path / "flows.jsonl.2").exists(), timeout=20, what="two rotations")
    time.sleep(1)
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("flows.jsonl"))
    assert files == ["flows.jsonl", "flows.jsonl.1", "flows.jsonl.2"], files
    for name in files:
        text = (tmp_path / name).read_text()
        # Whole lines only, and never over the size (each batch is much smaller).
        assert text.endswith("\n"), name
        assert len(text.encode()) <= 16384, (name, len(text.encode()))
        for line in text.splitlines():
            check_schema(json.loads(line))

    # logrotate: move the file away, then SIGHUP; new lines go to a new file.
    os.rename(log, tmp_path / "moved.jsonl")
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: log.exists(), timeout=10, what="the flow log reopened")
    moved_size = (tmp_path / "moved.jsonl").stat().st_size
    pair.nettool(pair.a, "udp-client", V4_B, str(echo_port), "100,200")
    wait_for(lambda: log.stat().st_size > 0, timeout=10, what="new lines in the reopened file")
    assert (tmp_path / "moved.jsonl").stat().st_size == moved_size
    for line in log.read_text().splitlines():
        check_schema(json.loads(line))
    m = fmlib.parse_exposition(pair.run(pair.a, "python3", "-c",
                                        f"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())").stdout)
    assert m.value("flowmeter_export_records_total", exporter="flow_log", outcome="sent") > 0
    assert m.value("flowmeter_export_records_total", exporter="flow_log", outcome="failed") == 0
    assert m.value("flowmeter_export_last_success_timestamp_seconds", exporter="flow_log") > time.time() - 60
    assert d.terminate() == 0, d.stderr
    echo.kill()
