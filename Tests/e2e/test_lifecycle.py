"""Attach and detach: nothing of flowmeterd stays in the kernel after it stops,
and a restart after SIGKILL cleans up what the killed run left (clsact)."""
from __future__ import annotations

import json
import re
import signal
import subprocess

import pytest

import fmlib
from conftest import V4_B, IF_A, Daemon, NetPair, flowmeter_links, flowmeter_progs, unique_port, wait_for

BPF_LINK_TYPE_TCX = 11
OUR_FILTER = re.compile(r"handle 0xf10e\b")


def our_filters(text: str) -> list[str]:
    """tc filter lines with flowmeterd's handle (and a flowmeter_ program)."""
    return [l for l in text.splitlines() if OUR_FILTER.search(l)]


def has_clsact(qdisc_text: str) -> bool:
    return re.search(r"^qdisc clsact\b", qdisc_text, re.M) is not None


def leftovers(before_progs: dict, allowed_pids: set[int]) -> dict:
    """flowmeter_ programs loaded since `before` that are not held by some other,
    unrelated process still running (an engineer's own flowmeterd, say)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True).stdout
    extra = {}
    for p in json.loads(out or "[]"):
        if not p.get("name", "").startswith("flowmeter_") or p["id"] in before_progs:
            continue
        pids = {x.get("pid") for x in p.get("pids", [])}
        if pids and not (pids & allowed_pids):
            continue  # someone else's live process holds it
        extra[p["id"]] = p
    return extra


def snapshot(pair: NetPair) -> dict:
    progs = flowmeter_progs()
    return {"tc": pair.tc_state(pair.a, IF_A), "progs": progs, "links": flowmeter_links(progs)}


def daemon_args(mode: str, tmp_path, port: int) -> list[str]:
    return ["--interfaces", IF_A, "--tc-mode", mode, "--interval", "1s",
            "--metrics-listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state")]


def assert_attached(pair: NetPair, mode: str, before: dict, pid: int) -> dict:
    """The running daemon's attachment is visible, exactly once per direction."""
    now = snapshot(pair)
    tc = now["tc"]
    new_progs = {i: n for i, n in now["progs"].items() if i not in before["progs"]}
    assert {"flowmeter_ingre", "flowmeter_egres"} <= set(new_progs.values()) or \
        {"flowmeter_ingress", "flowmeter_egress"} <= set(new_progs.values()), \
        f"loaded programs: {new_progs}"
    if mode == "tcx":
        links = {i: l for i, l in now["links"].items() if i not in before["links"]}
        # bpftool before v7.3 knows no tcx links: it prints the bare type number.
        assert all(l.get("type") in ("tcx", BPF_LINK_TYPE_TCX) for l in links.values()), links
        kinds = sorted(now["progs"][l["prog_id"]][:15] for l in links.values())
        assert kinds == ["flowmeter_egres", "flowmeter_ingre"], f"links of pid {pid}: {links}"
        if "tcx" in tc["net"]:  # bpftool v7.3+ lists tcx attachments per device
            assert re.search(r"tcx/ingress.*flowmeter_ingre", tc["net"], re.S), tc["net"]
            assert re.search(r"tcx/egress.*flowmeter_egres", tc["net"], re.S), tc["net"]
        assert our_filters(tc["ingress"]) == [] and our_filters(tc["egress"]) == []
        assert has_clsact(tc["qdisc"]) == has_clsact(before["tc"]["qdisc"]), tc["qdisc"]
    else:
        assert has_clsact(tc["qdisc"]), f"no clsact qdisc on {IF_A}: {tc['qdisc']}"
        for hook in ("ingress", "egress"):
            f = our_filters(tc[hook])
            assert len(f) == 1, f"{hook}: expected exactly one filter with handle 0xf10e, got:\n{tc[hook]}"
            assert "flowmeter_" in f[0] and "pref 1 " in f[0], f[0]
    return now


def assert_clean(pair: NetPair, before: dict, pids: set[int]) -> None:
    """Nothing of ours remains: the kernel state equals the state before the start."""
    try:
        wait_for(lambda: not leftovers(before["progs"], pids), timeout=10, what="flowmeter_ programs to be unloaded")
    except AssertionError:
        raise AssertionError(f"programs left loaded: {leftovers(before['progs'], pids)}") from None
    after = snapshot(pair)
    new_links = {i: l for i, l in after["links"].items() if i not in before["links"]}
    assert not new_links, f"links left behind: {new_links}"
    for k in ("qdisc", "ingress", "egress", "net"):
        assert after["tc"][k] == before["tc"][k], \
            f"{k} differs after stop.\nbefore:\n{before['tc'][k]}\nafter:\n{after['tc'][k]}"


@pytest.mark.parametrize("mode", ["tcx", "clsact"])
def test_clean_detach_sigterm(netpair, daemons, tmp_path, mode):
    pair = netpair
    before = snapshot(pair)
    d = daemons(pair.a, *daemon_args(mode, tmp_path, unique_port())).wait_ready()
    assert_attached(pair, mode, before, d.proc.pid)
    rc = d.terminate()
    assert rc == 0, f"exit {rc} on SIGTERM:\n{d.stderr}"
    assert_clean(pair, before, {d.proc.pid})


@pytest.mark.parametrize("mode", ["tcx", "clsact"])
def test_sigkill_then_restart(netpair, daemons, tmp_path, mode):
    pair = netpair
    before = snapshot(pair)
    args = daemon_args(mode, tmp_path, unique_port())
    first = daemons(pair.a, *args).wait_ready()
    running = assert_attached(pair, mode, before, first.proc.pid)
    first_progs = {i for i in running["progs"] if i not in before["progs"]}
    assert first.kill() == -signal.SIGKILL

    if mode == "clsact":
        # A killed process cannot detach: its filters and qdisc stay. Seeing them
        # proves this test would notice leftovers.
        tc = pair.tc_state(pair.a, IF_A)
        assert has_clsact(tc["qdisc"]), tc["qdisc"]
        assert len(our_filters(tc["ingress"])) == 1 and len(our_filters(tc["egress"])) == 1, tc
    else:
        # TCX links die with the process.
        wait_for(lambda: not ({i for i in flowmeter_progs()} & first_progs), timeout=10,
                 what="the killed daemon's programs to go")
        assert not {i: l for i, l in flowmeter_links().items() if i not in before["links"]}

    second = daemons(pair.a, *args).wait_ready()
    now = assert_attached(pair, mode, before, second.proc.pid)  # exactly one filter/link per direction
    if mode == "clsact":
        # The filters in place are the new run's, the killed run's programs are gone.
        wait_for(lambda: not (set(flowmeter_progs()) & first_progs), timeout=10,
                 what="the killed run's programs to be released")
        for hook in ("ingress", "egress"):
            line = our_filters(now["tc"][hook])[0]
            m = re.search(r"\bid (\d+)", line)
            assert m and int(m.group(1)) not in first_progs, f"{hook} filter still runs the killed run's program: {line}"
    rc = second.terminate()
    assert rc == 0, f"exit {rc} on SIGTERM:\n{second.stderr}"
    assert_clean(pair, before, {first.proc.pid, second.proc.pid})


# What the Kubernetes DaemonSet grants (deploy/kubernetes/daemonset.yaml): no CAP_SYS_ADMIN.
POD_CAPS = ["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all,+bpf,+perfmon,+net_admin"]


def test_sigkill_then_restart_without_sys_admin(netpair, flowmeterd, tmp_path):
    """With only the pod's three capabilities, the kernel does not give a
    program's name by id (CAP_SYS_ADMIN). On an interface whose clsact qdisc
    is not ours (as a CNI leaves one), the killed run's filters then stay
    with the qdisc, and only the program ids in the state record tell them
    as ours: the restart removes them and attaches, instead of failing with
    "File exists" for good."""
    pair = netpair
    pair.run(pair.a, "tc", "qdisc", "add", "dev", IF_A, "clsact")
    before = snapshot(pair)
    args = [*daemon_args("clsact", tmp_path, unique_port()), "--hooks", "off"]
    started = []

    def start(name: str) -> Daemon:
        d = Daemon("setpriv", pair.a, [*POD_CAPS, flowmeterd, *args], tmp_path, name)
        started.append(d)
        return d.start().wait_ready()

    try:
        first = start("first")
        running = assert_attached(pair, "clsact", before, first.proc.pid)
        first_progs = {i for i in running["progs"] if i not in before["progs"]}
        assert first.kill() == -signal.SIGKILL
        record = (tmp_path / "state" / "tc-attachments").read_text()
        assert re.fullmatch(rf"clsact \d+ {IF_A} created=0 programs=\d+,\d+\n", record), record
        assert {int(i) for i in record.split("programs=")[1].split(",")} <= first_progs, record

        second = start("second")
        assert "removed=2 tc filter(s) on veth-a" in second.stderr, second.stderr
        now = assert_attached(pair, "clsact", before, second.proc.pid)
        wait_for(lambda: not (set(flowmeter_progs()) & first_progs), timeout=10,
                 what="the killed run's programs to be released")
        for hook in ("ingress", "egress"):
            line = our_filters(now["tc"][hook])[0]
            m = re.search(r"\bid (\d+)", line)
            assert m and int(m.group(1)) not in first_progs, f"{hook} filter still runs the killed run's program: {line}"
        assert second.terminate() == 0, second.stderr
        assert_clean(pair, before, {first.proc.pid, second.proc.pid})
    finally:
        for d in started:
            d.close()
            print(f"----- {d.name} exit {d.proc.returncode if d.proc else None} stderr -----\n{d.stderr}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_final_flush_on_signal(netpair, daemons, tmp_path, sig):
    """With an interval that never elapses, only the flush at shutdown writes
    the flow log: what was counted must be in it, and the exit status is 0."""
    pair = netpair
    flow_log = tmp_path / "flows.jsonl"
    d = daemons(pair.a, "--interfaces", IF_A, "--interval", "1h", "--metrics-listen", f"127.0.0.1:{unique_port()}",
                "--flow-log", str(flow_log), "--state-dir", str(tmp_path / "state")).wait_ready()
    assert pair.nettool(pair.a, "ping", V4_B, "4").strip() == "4"
    assert not flow_log.exists() or flow_log.read_text() == "", "flow log written before any eviction"
    rc = d.terminate(sig)
    assert rc == 0, f"exit {rc} on {sig!r}:\n{d.stderr}"
    logged = fmlib.summarize_flow_log(fmlib.read_flow_log(str(flow_log)))
    requests = [v for k, v in logged.items() if k.direction == "transmit" and k.protocol == 1 and k.dport == 8 << 8]
    replies = [v for k, v in logged.items() if k.direction == "receive" and k.protocol == 1 and k.dport == 0]
    assert [v.as_tuple() for v in requests] == [(4, 4 * 60)], logged
    assert [v.as_tuple() for v in replies] == [(4, 4 * 60)], logged
