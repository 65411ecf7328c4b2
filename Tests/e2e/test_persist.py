"""--persist: a restart loses nothing. A stop leaves the tc programs attached
and their maps pinned; the kernel counts on while no daemon runs; the next
start adopts all of it and reports the gap in its first interval. SIGKILL
adopts as well; `flowmeterd uninstall` removes every trace; pinned maps of
another ABI are detached and recreated, with one line saying so.

Each test pins under its own directory of /sys/fs/bpf (several daemons of
other tests may run at once), which the fixture uninstalls and removes
whatever the outcome."""
from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import fmlib
from conftest import IF_A, MAC_A, V4_A, V4_B, NetPair, flowmeter_links, flowmeter_progs, unique_port, wait_for
from test_lifecycle import assert_attached, assert_clean, our_filters, snapshot

# A bpf filesystem of the tests' own, outside /sys: `ip netns exec`, which
# starts the daemons, mounts a fresh sysfs without /sys/fs/bpf on it.
BPFFS = Path("/run/flowmeter-e2e-bpffs")
_ids = itertools.count(1)


@pytest.fixture(scope="session")
def bpffs():
    BPFFS.mkdir(exist_ok=True)
    if subprocess.run(["mountpoint", "-q", str(BPFFS)]).returncode != 0:
        subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], check=True)
    return BPFFS
# The pins of one run: the ABI record and the five maps (plus TCX links).
MAP_PINS = {"abi", "flows_a", "flows_b", "flow_tables", "flows", "fm_stats"}


@pytest.fixture
def pins(netpair, flowmeterd, bpffs, tmp_path):
    """(pin dir, state dir) for this test; uninstalled afterwards, in the
    daemon's namespace, and the directory removed if anything is left."""
    d = bpffs / f"fm-test-{os.getpid()}-{next(_ids)}"
    state = tmp_path / "state"
    yield d, state
    netpair.run(netpair.a, flowmeterd, "uninstall", "--pin-dir", str(d), "--state-dir", str(state), check=False)
    if d.exists():
        shutil.rmtree(d, ignore_errors=True)


def args(mode: str, pin_dir: Path, state: Path, flow_log: Path, interval: str = "1s") -> list[str]:
    return ["--interfaces", IF_A, "--tc-mode", mode, "--interval", interval, "--hooks", "off",
            "--metrics-listen", f"127.0.0.1:{unique_port()}", "--flow-log", str(flow_log),
            "--state-dir", str(state), "--persist", "--pin-dir", str(pin_dir)]


def uninstall(pair: NetPair, flowmeterd: str, pin_dir: Path, state: Path) -> str:
    p = pair.run(pair.a, flowmeterd, "uninstall", "--pin-dir", str(pin_dir), "--state-dir", str(state))
    return p.stdout


def still_attached(pair: NetPair, mode: str, before: dict) -> None:
    """Our programs stay on the interface with no daemon running."""
    now = snapshot(pair)
    if mode == "tcx":
        links = {i: l for i, l in now["links"].items() if i not in before["links"]}
        assert len(links) == 2, f"expected the two pinned TCX links, got {links}"
    else:
        for hook in ("ingress", "egress"):
            assert len(our_filters(now["tc"][hook])) == 1, now["tc"][hook]


def logged_totals(*logs: Path) -> tuple[dict, dict]:
    """Per flow and per direction (the interface's totals), over the logs."""
    records = [r for p in logs if p.exists() for r in fmlib.read_flow_log(str(p))]
    flows = fmlib.summarize_flow_log(records, interface=IF_A)
    directions: dict = {}
    for k, v in flows.items():
        directions.setdefault(k.direction, fmlib.Counts()).add(v.packets, v.bytes)
    return flows, directions


def assert_exact(cap_path: Path, logs: tuple[Path, ...]) -> fmlib.CaptureSummary:
    truth = fmlib.summarize_capture(fmlib.read_pcap(str(cap_path)), MAC_A)
    flows, directions = logged_totals(*logs)
    diff = [f"  {k.short()}: capture {truth.per_flow.get(k, fmlib.Counts()).as_tuple()}, logs {flows.get(k, fmlib.Counts()).as_tuple()}"
            for k in sorted(set(truth.per_flow) | set(flows))
            if truth.per_flow.get(k, fmlib.Counts()).as_tuple() != flows.get(k, fmlib.Counts()).as_tuple()]
    assert not diff, "flows differ from the capture:\n" + "\n".join(diff)
    for d in ("transmit", "receive"):
        assert directions.get(d, fmlib.Counts()).as_tuple() == truth.per_direction[d].as_tuple(), \
            f"interface {d} totals: logs {directions.get(d)}, capture {truth.per_direction[d]}"
    return truth


@pytest.mark.parametrize("mode", ["tcx", "clsact"])
def test_restart_during_transfer_counts_every_packet(netpair, daemons, capture, flowmeterd, pins, tmp_path, mode):
    """A TCP stream runs across a SIGTERM and a start 3 s later: the two
    runs' flow logs together equal the capture, per flow and per direction,
    and the capture shows the stream went on while no daemon ran."""
    pair = netpair
    pair.set_offloads(False)  # one skb per wire packet: the capture is the truth as is
    pin_dir, state = pins
    before = snapshot(pair)
    logs = (tmp_path / "first.jsonl", tmp_path / "second.jsonl")
    cap = capture(pair, pair.a, IF_A)
    first = daemons(pair.a, *args(mode, pin_dir, state, logs[0])).wait_ready()
    port = unique_port()
    srv = pair.server(pair.b, "tcp-server", V4_B, str(port))
    client = pair.popen(pair.a, "python3", str(Path(__file__).parent / "nettool.py"), "tcp-stream", V4_B, str(port), "8", "4096")
    time.sleep(2)
    assert first.terminate() == 0, first.stderr
    stopped = time.time()
    assert "left attached and counting for the next start" in first.stderr, first.stderr
    assert MAP_PINS <= set(os.listdir(pin_dir)), os.listdir(pin_dir)
    still_attached(pair, mode, before)
    time.sleep(3)
    started = time.time()
    second = daemons(pair.a, *args(mode, pin_dir, state, logs[1])).wait_ready()
    assert "adopted what the last run left counting" in second.stderr, second.stderr
    assert "attachments_adopted=2" in second.stderr, second.stderr
    assert_attached(pair, mode, before, second.proc.pid)  # one link/filter per direction, not two
    out, _ = client.communicate(timeout=60)
    assert client.returncode == 0, out
    assert int(pair.finish(srv)) == int(out), "the server did not get the whole stream"
    time.sleep(1.5)
    cap.stop()
    assert second.terminate() == 0, second.stderr
    truth = assert_exact(cap.path, logs)
    frames = fmlib.read_pcap(str(cap.path))
    in_gap = [f for f in frames if stopped + 0.2 < f.ts < started - 0.2]
    assert len(in_gap) > 100, f"only {len(in_gap)} frames while no daemon ran: the test proves nothing"
    print(f"{truth.frames} frames, {len(in_gap)} of them while no daemon ran: all counted")
    removed = uninstall(pair, flowmeterd, pin_dir, state)
    assert "removed" in removed, removed
    assert_clean(pair, before, {first.proc.pid, second.proc.pid})


@pytest.mark.parametrize("mode", ["tcx", "clsact"])
def test_sigkill_then_start_adopts(netpair, daemons, capture, flowmeterd, pins, tmp_path, mode):
    """A killed run cannot flush: what it counted waits in the pinned table,
    and the next start reports it. With an interval that never elapsed in
    the first run, every packet is the second run's to report."""
    pair = netpair
    pin_dir, state = pins
    before = snapshot(pair)
    logs = (tmp_path / "first.jsonl", tmp_path / "second.jsonl")
    cap = capture(pair, pair.a, IF_A)
    first = daemons(pair.a, *args(mode, pin_dir, state, logs[0], interval="1h")).wait_ready()
    running = assert_attached(pair, mode, before, first.proc.pid)
    first_progs = {i for i in running["progs"] if i not in before["progs"]}
    assert pair.nettool(pair.a, "ping", V4_B, "5").strip() == "5"
    assert first.kill() < 0
    still_attached(pair, mode, before)
    assert pair.nettool(pair.a, "ping", V4_B, "3").strip() == "3"  # counted with no daemon
    second = daemons(pair.a, *args(mode, pin_dir, state, logs[1])).wait_ready()
    assert "attachments_adopted=2" in second.stderr, second.stderr
    now = assert_attached(pair, mode, before, second.proc.pid)
    # The killed run's programs are swapped out and gone.
    wait_for(lambda: not (set(flowmeter_progs()) & first_progs), timeout=10, what="the killed run's programs to go")
    if mode == "clsact":
        for hook in ("ingress", "egress"):
            assert int(re.search(r"\bid (\d+)", our_filters(now["tc"][hook])[0]).group(1)) not in first_progs
    time.sleep(1.5)
    cap.stop()
    assert second.terminate() == 0, second.stderr
    assert not logs[0].exists() or logs[0].read_text() == "", "the first run evicted before its interval"
    truth = assert_exact(cap.path, logs)
    assert truth.per_direction["transmit"].packets >= 8, truth.per_direction
    uninstall(pair, flowmeterd, pin_dir, state)
    assert_clean(pair, before, {first.proc.pid, second.proc.pid})


@pytest.mark.parametrize("mode", ["tcx", "clsact"])
def test_uninstall_leaves_nothing(netpair, daemons, flowmeterd, pins, tmp_path, mode):
    """After a persisting stop, uninstall removes every program, link,
    qdisc, filter and pin; a second uninstall finds nothing."""
    pair = netpair
    pin_dir, state = pins
    pair.run(pair.a, "tc", "qdisc", "del", "dev", IF_A, "clsact", check=False)
    before = snapshot(pair)
    d = daemons(pair.a, *args(mode, pin_dir, state, tmp_path / "log.jsonl")).wait_ready()
    assert d.terminate() == 0, d.stderr
    still_attached(pair, mode, before)
    if mode == "clsact":
        assert re.search(r"^qdisc clsact\b", pair.tc_state(pair.a, IF_A)["qdisc"], re.M)
    out = uninstall(pair, flowmeterd, pin_dir, state)
    assert re.search(r"^removed \d+ pin\(s\) under ", out, re.M), out
    if mode == "tcx":
        assert "removed 2 TCX link(s)" in out, out
    else:
        assert "removed 2 tc filter(s) on veth-a" in out and "removed clsact qdisc on veth-a" in out, out
    assert not pin_dir.exists(), os.listdir(pin_dir)
    assert_clean(pair, before, {d.proc.pid})
    assert uninstall(pair, flowmeterd, pin_dir, state).strip() == "nothing to remove"


def test_uninstall_under_a_running_daemon_detaches_at_stop(netpair, daemons, flowmeterd, pins, tmp_path):
    """Pins removed while the daemon runs (the DaemonSet's removal step):
    its stop finds nothing to hand on, and detaches as without --persist."""
    pair = netpair
    pin_dir, state = pins
    before = snapshot(pair)
    d = daemons(pair.a, *args("tcx", pin_dir, state, tmp_path / "log.jsonl")).wait_ready()
    uninstall(pair, flowmeterd, pin_dir, state)
    assert d.terminate() == 0, d.stderr
    assert "left attached" not in d.stderr, d.stderr
    assert_clean(pair, before, {d.proc.pid})


def test_other_abi_is_recreated_with_one_line(netpair, daemons, pins, tmp_path):
    """A pin directory whose ABI record names another version is not
    adopted: detached, recreated, one warning saying what was lost."""
    pair = netpair
    pin_dir, state = pins
    pin_dir.mkdir()
    abi = pin_dir / "abi"
    subprocess.run(["bpftool", "map", "create", str(abi), "type", "array", "key", "4", "value", "16",
                    "entries", "1", "name", "abi"], check=True, capture_output=True)
    # version 999, key and stats sizes 0: no version of flowmeterd matches.
    subprocess.run(["bpftool", "map", "update", "pinned", str(abi), "key", "0", "0", "0", "0",
                    "value", "0xe7", "0x03", "0", "0", *["0"] * 12], check=True, capture_output=True)
    d = daemons(pair.a, *args("tcx", pin_dir, state, tmp_path / "log.jsonl")).wait_ready()
    lines = [l for l in d.stderr.splitlines() if "cannot be adopted" in l]
    assert len(lines) == 1 and "pinned by ABI version 999" in lines[0] and "is lost" in lines[0], d.stderr
    assert "adopted what" not in d.stderr
    assert MAP_PINS <= set(os.listdir(pin_dir))
    assert d.terminate() == 0, d.stderr


def test_sockets_opened_before_a_restart_are_followed(netpair, daemons, pins, tmp_path):
    """The socket hooks detach at the stop, but their tables stay pinned: a
    connection opened before the restart, which sends again and closes after
    it, is closed in the second run's log with its owner and its exact
    bytes (without the tables the second run would never hear of it)."""
    from test_sockets import LONG_CLIENT, SINK

    pair = netpair
    pin_dir, state = pins
    first, second, pause = 300_000, 70_000, 7.0
    logs = (tmp_path / "first.jsonl", tmp_path / "second.jsonl")

    def start(log: Path):
        a = args("tcx", pin_dir, state, log)
        a[a.index("--hooks") + 1] = "auto"
        return daemons(pair.a, *a).wait_ready()

    d1 = start(logs[0])
    sport = unique_port()
    server = pair.popen(pair.b, "python3", "-c", SINK, V4_B, str(sport))
    assert server.stdout.readline().strip() == "ready"
    client = pair.popen(pair.a, "python3", "-c", LONG_CLIENT, V4_B, str(sport), str(first), str(second), str(pause))
    cport = int(client.stdout.readline())
    time.sleep(1.5)
    assert d1.terminate() == 0, d1.stderr
    assert {"fm_socks", "fm_listeners", "fm_sock_stats"} <= set(os.listdir(pin_dir)), os.listdir(pin_dir)
    d2 = start(logs[1])
    assert "adopted the socket tables" in d2.stderr, d2.stderr
    assert pair.finish(client).split()[-1] == "done"
    pair.finish(server)
    time.sleep(1.5)
    assert d2.terminate() == 0, d2.stderr
    before = [c for c in fmlib.read_flow_log(str(logs[0]), "connection") if c["local_port"] == cport]
    after = [c for c in fmlib.read_flow_log(str(logs[1]), "connection") if c["local_port"] == cport]
    # The first run saw it open (and, at its stop, its bytes so far); not its close.
    assert [c["event"] for c in before][:1] == ["open"] and "close" not in [c["event"] for c in before], before
    close = [c for c in after if c["event"] == "close"]
    assert len(close) == 1, after
    assert close[0]["bytes_sent"] == first + second, close
    assert close[0]["pid"] == client.pid and close[0]["role"] == "client", close
