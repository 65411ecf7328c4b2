"""The /metrics endpoint speaks valid Prometheus text format."""
from __future__ import annotations

import shutil
import subprocess
import time

import fmlib
from conftest import IF_A, V4_B, V6_B, scrape_settled, unique_port

FAMILIES = {
    "flowmeter_interface_io_bytes_total": "counter",
    "flowmeter_interface_packets_total": "counter",
    "flowmeter_ringbuf_lost_records_total": "counter",
    "flowmeter_flow_table_entries": "gauge",
    "flowmeter_flow_table_insert_failures_total": "counter",
    "flowmeter_records_total": "counter",
    "flowmeter_sockets_tracked": "gauge",
    "flowmeter_hook_info": "gauge",
    "flowmeter_series_dropped_total": "counter",
    "flowmeter_build_info": "gauge",
    "flowmeter_malformed_packets_total": "counter",
}


def test_metrics_format(netpair, daemons, tmp_path):
    pair = netpair
    port = unique_port()
    d = daemons(pair.a, "--interfaces", IF_A, "--interval", "1s", "--metrics-listen", f"127.0.0.1:{port}",
                "--state-dir", str(tmp_path / "state")).wait_ready()
    iface = ("flowmeter_interface_io_bytes_total", "flowmeter_interface_packets_total")
    pair.nettool(pair.a, "ping", V4_B, "2")
    pair.nettool(pair.a, "ping", V6_B, "2")
    time.sleep(1.2)
    ctype, body = scrape_settled(pair, pair.a, port, iface)
    first = fmlib.parse_exposition(body)
    pair.nettool(pair.a, "ping", V4_B, "1")
    time.sleep(1.2)
    _, body2 = scrape_settled(pair, pair.a, port, iface)
    second = fmlib.parse_exposition(body2)
    assert d.terminate() == 0, d.stderr

    print(body)
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, f"Content-Type {ctype!r}"
    assert not first.problems, "exposition problems:\n" + "\n".join(first.problems) + "\n\n" + body
    assert not second.problems, "\n".join(second.problems)
    for fam, kind in FAMILIES.items():
        assert first.types.get(fam) == kind, f"{fam}: TYPE {first.types.get(fam)}, expected {kind}"
        assert first.helps.get(fam), f"{fam} has no HELP text"
        assert any(k[0] == fam for k in first.samples), f"{fam} has no sample"
    assert all(name.startswith("flowmeter_") for name in first.types), list(first.types)
    assert first.value("flowmeter_hook_info", hook="tc", mode="tcx") == 1
    build = [dict(k[1]) for k in first.samples if k[0] == "flowmeter_build_info"]
    assert len(build) == 1 and build[0].get("version"), build
    # Traffic was counted on the interface, in both directions, and counters only grow.
    for name in ("flowmeter_interface_io_bytes_total", "flowmeter_interface_packets_total"):
        for direction in ("transmit", "receive"):
            v1 = first.value(name, interface=IF_A, direction=direction)
            v2 = second.value(name, interface=IF_A, direction=direction)
            assert v1 and v1 >= 2, f"{name}{{{direction}}} = {v1}"
            assert v2 > v1, f"{name}{{{direction}}} went from {v1} to {v2} after one more ping"
    for key, v in first.samples.items():
        if first.types.get(key[0]) == "counter":
            assert second.samples.get(key, 0) >= v, f"counter {key} went down"

    promtool = shutil.which("promtool")
    if promtool is None:
        print("promtool not installed: the `promtool check metrics` part is left out")
    else:
        p = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, f"promtool check metrics:\n{p.stdout}{p.stderr}"
