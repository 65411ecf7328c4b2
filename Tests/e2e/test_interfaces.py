"""Attachments follow interfaces: new ones are attached and counted, deleted
ones let go, and churn leaves no link, filter or program behind."""
from __future__ import annotations

import subprocess
import time

import pytest

import fmlib
from conftest import IF_A, flowmeter_links, flowmeter_progs, scrape, sh, unique_port, wait_for

NEW_A, NEW_C = "veth-n", "veth-c"


def our_filter_on(ns: str, dev: str) -> bool:
    out = subprocess.run(["tc", "-n", ns, "filter", "show", "dev", dev, "ingress"], capture_output=True, text=True).stdout
    return "handle 0xf10e" in out


@pytest.mark.parametrize("mode", ["tcx", "clsact"])
def test_follows_interfaces(netpair, daemons, tmp_path, mode):
    pair = netpair
    port = unique_port()
    state = tmp_path / "state"
    other = f"{pair.a}-c"
    progs_before = flowmeter_progs()
    d = daemons(pair.a, "--tc-mode", mode, "--interval", "1s", "--metrics-listen", f"127.0.0.1:{port}",
                "--state-dir", str(state)).wait_ready()
    ours = {p: v for p, v in flowmeter_progs().items() if p not in progs_before}
    assert len(ours) >= 2, ours

    def links() -> int:
        return len(flowmeter_links(ours))

    base_links = links()
    assert base_links == (2 if mode == "tcx" else 0)  # veth-a only (lo is never taken by default)
    try:
        sh("ip", "netns", "add", other)
        sh("ip", "-n", other, "link", "set", "lo", "up")
        sh("ip", "-n", pair.a, "link", "add", NEW_A, "type", "veth", "peer", "name", NEW_C, "netns", other)
        sh("ip", "-n", pair.a, "addr", "add", "10.201.0.1/24", "dev", NEW_A)
        sh("ip", "-n", other, "addr", "add", "10.201.0.2/24", "dev", NEW_C)
        sh("ip", "-n", other, "link", "set", NEW_C, "up")
        sh("ip", "-n", pair.a, "link", "set", NEW_A, "up")
        d.wait_log(f"interface={NEW_A}", timeout=10)
        if mode == "tcx":
            wait_for(lambda: links() == base_links + 2, timeout=10, what="tcx links on the new interface")
        else:
            wait_for(lambda: our_filter_on(pair.a, NEW_A), timeout=10, what="our filter on the new interface")
            assert NEW_A in (state / "tc-attachments").read_text()

        pair.nettool(pair.a, "ping", "10.201.0.2", "5")
        time.sleep(1.5)
        _, body = scrape(pair, pair.a, port)
        m = fmlib.parse_exposition(body)
        tx = m.value("flowmeter_interface_packets_total", interface=NEW_A, direction="transmit")
        rx = m.value("flowmeter_interface_packets_total", interface=NEW_A, direction="receive")
        assert tx is not None and tx >= 5 and rx is not None and rx >= 5, body

        # Churn: 20 veth pairs up and gone again, while the daemon runs.
        for i in range(20):
            sh("ip", "-n", pair.a, "link", "add", f"vx{i}", "type", "veth", "peer", "name", f"vy{i}", "netns", other)
            sh("ip", "-n", pair.a, "link", "set", f"vx{i}", "up")
        time.sleep(0.5)
        for i in range(20):
            sh("ip", "-n", pair.a, "link", "del", f"vx{i}")
        sh("ip", "-n", pair.a, "link", "del", NEW_A)
        wait_for(lambda: links() == base_links, timeout=10, what="links back to their start value")
        if mode == "clsact":
            wait_for(lambda: "vx" not in (state / "tc-attachments").read_text()
                     and NEW_A not in (state / "tc-attachments").read_text(),
                     timeout=10, what="state file back to veth-a only")
            assert IF_A in (state / "tc-attachments").read_text()
        assert len(ours) == len({p: v for p, v in flowmeter_progs().items() if p not in progs_before}), \
            "programs were loaded per interface"
        assert " error" not in d.stderr and "warning" not in d.stderr.replace("not following", ""), d.stderr
    finally:
        subprocess.run(["ip", "netns", "del", other], capture_output=True)
    assert d.terminate() == 0, d.stderr
    assert not {p for p in flowmeter_progs() if p not in progs_before}, "programs left after exit"


def test_tc_mode_is_pending_until_the_first_interface(netpair, daemons, tmp_path):
    """With --tc-mode auto and no matching interface at start, nothing has
    chosen between TCX and clsact yet: hook_info says "pending", then the
    mode the first attach took once an interface appears."""
    pair = netpair
    port = unique_port()
    d = daemons(pair.a, "--interfaces", "vq*", "--interval", "1s", "--hooks", "off",
                "--metrics-listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state")).wait_ready()

    def tc_modes() -> list[str]:
        m = fmlib.parse_exposition(scrape(pair, pair.a, port)[1])
        return [dict(k[1])["mode"] for k in m.samples if k[0] == "flowmeter_hook_info" and dict(k[1])["hook"] == "tc"]

    assert tc_modes() == ["pending"], tc_modes()
    sh("ip", "-n", pair.a, "link", "add", "vq0", "type", "veth", "peer", "name", "vq1")
    sh("ip", "-n", pair.a, "link", "set", "vq1", "up")
    sh("ip", "-n", pair.a, "link", "set", "vq0", "up")
    d.wait_log("interface=vq0", timeout=10)
    expected = "tcx" if flowmeter_links() else None  # what this kernel gave: a link, or a filter
    modes = tc_modes()
    assert len(modes) == 1 and modes[0] in ("tcx", "clsact"), modes
    if expected:
        assert modes == [expected], modes
    else:
        assert modes == ["clsact"] and our_filter_on(pair.a, "vq0"), modes
    assert d.terminate() == 0, d.stderr
