"""What a user sees for bad input, missing privileges and `flowmeterd check`."""
from __future__ import annotations

import re
import time
from pathlib import Path
import subprocess

import pytest

from conftest import IF_A, sh, unique_port


def run_in(pair, *args: str, timeout: float = 30):
    return pair.run(pair.a, *args, check=False, timeout=timeout)


def test_unknown_interface(netpair, flowmeterd, tmp_path):
    p = run_in(netpair, flowmeterd, "--interfaces", f"{IF_A},nosuch0", "--metrics-listen",
               f"127.0.0.1:{unique_port()}", "--state-dir", str(tmp_path / "state"))
    assert p.returncode == 1, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert "unknown interface" in p.stderr and "nosuch0" in p.stderr, p.stderr


@pytest.mark.parametrize("flag,value", [
    ("--interval", "abc"),
    ("--interval", "0s"),
    ("--interval", "-5s"),
    ("--metrics-listen", "nope"),
    ("--metrics-listen", "127.0.0.1:99999"),
    ("--tc-mode", "bogus"),
    ("--flow-table-size", "0"),
    ("--flows-ring-size", "5000"),
    ("--flows-ring-size", "1024"),
    ("--log-level", "loud"),
    ("--hooks", "bogus"),
])
def test_bad_flag_value(netpair, flowmeterd, tmp_path, flag, value):
    try:
        p = run_in(netpair, flowmeterd, "--interfaces", IF_A, "--state-dir", str(tmp_path / "state"),
                   "--metrics-listen", f"127.0.0.1:{unique_port()}", f"{flag}={value}", timeout=15)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{flag}={value} was accepted: flowmeterd kept running\n{e.stderr}") from None
    assert p.returncode != 0, f"{flag}={value} was accepted\nstderr: {p.stderr}"
    assert flag in p.stderr, f"stderr does not name {flag}:\n{p.stderr}"
    assert "serving metrics" not in p.stderr


@pytest.mark.parametrize("how", [
    ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
    ["setpriv", "--inh-caps=-all", "--bounding-set=-all"],
], ids=["nobody", "root-without-caps"])
@pytest.mark.parametrize("sub", [[], ["check"]], ids=["run", "check"])
def test_missing_capabilities(netpair, flowmeterd, tmp_path, how, sub):
    p = run_in(netpair, *how, flowmeterd, *sub, *([] if sub else ["--interfaces", IF_A, "--state-dir",
                                                                  str(tmp_path / "state")]))
    assert p.returncode == 1, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{p.stderr}"
    assert re.match(r"^flowmeterd: missing capabilities: CAP_\w+", lines[0]), lines[0]
    assert "CAP_BPF" in lines[0] and "CAP_NET_ADMIN" in lines[0], lines[0]


def test_check(netpair, flowmeterd):
    # Inside the test namespace: check probes by attaching to (that namespace's) lo.
    p = run_in(netpair, flowmeterd, "check")
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert re.search(r"^tcx\s+yes\b", p.stdout, re.M), p.stdout
    for feature in ("btf", "ringbuf", "tc"):
        assert re.search(rf"^{feature}\s+yes\b", p.stdout, re.M), p.stdout
    # One row per program type the socket object uses, each found by loading
    # a program of that type; "would use" names the update path from them.
    rows = program_type_rows(p.stdout)
    assert set(rows) == set(PROGRAM_TYPES), p.stdout
    updates = re.search(r"^  socket updates\s+(.*)$", p.stdout, re.M).group(1)
    if rows["iter_map_elem"]:
        assert updates.startswith("iterator (iter/bpf_map_elem); "), updates
        assert ("fallback raw_tp run" in updates) == rows["raw_tp_run"], updates
    elif rows["raw_tp_run"]:
        assert updates.startswith("raw_tp run (BPF_PROG_TEST_RUN); the iterator (iter/bpf_map_elem) is refused"), updates
    # A refused row says which step failed, with the errno's name.
    for name, ok in rows.items():
        if not ok:
            detail = re.search(rf"^{name}\s+no\s+(.*)$", p.stdout, re.M).group(1)
            assert re.search(r": (load|attach|BPF_PROG_TEST_RUN|create the iterator|read): .*\(E[A-Z0-9]+\)", detail), detail
    print(p.stdout)


PROGRAM_TYPES = ("fentry", "fexit", "kprobe", "kretprobe", "tp_btf", "tracepoint", "raw_tp_run", "iter_map_elem",
                 "cgroup_sock_release")


def program_type_rows(check_out: str) -> dict[str, bool]:
    """{program type: available} from `check`'s rows."""
    rows = {}
    for name in PROGRAM_TYPES:
        m = re.search(rf"^{name}\s+(yes|no)\b", check_out, re.M)
        if m:
            rows[name] = m.group(1) == "yes"
    return rows


def test_version_and_help(flowmeterd):
    p = sh(flowmeterd, "run", "--help")
    for flag in ("--interfaces", "--interval", "--metrics-listen", "--flow-log", "--tc-mode", "--state-dir"):
        assert flag in p.stdout, f"--help does not mention {flag}"
    assert sh(flowmeterd, "--version").stdout.strip()


def test_metrics_address_in_use(netpair, flowmeterd, tmp_path):
    """A taken metrics port: one error naming the flag, exit 1, and nothing left attached."""
    port = unique_port()
    holder = netpair.popen(netpair.a, "python3", "-c",
                           "import socket,sys,time\n"
                           f"s=socket.socket(); s.bind(('127.0.0.1',{port})); s.listen()\n"
                           "print('ready', flush=True); time.sleep(30)",
                           stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        p = run_in(netpair, flowmeterd, "--interfaces", IF_A, "--state-dir", str(tmp_path / "state"),
                   "--metrics-listen", f"127.0.0.1:{port}")
        assert p.returncode == 1, f"exit {p.returncode}\nstderr: {p.stderr}"
        assert f"--metrics-listen 127.0.0.1:{port}" in p.stderr and "in use" in p.stderr, p.stderr
        links = sh("ip", "netns", "exec", netpair.a, "bpftool", "link", "show").stdout
        progs = sh("bpftool", "prog", "show").stdout
        assert "flowmeter_" not in progs, progs
        assert links.strip() == "", f"links left behind:\n{links}"
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("updates", ["auto", "raw-tp"])
@pytest.mark.parametrize("hooks", ["auto", "tracepoint", "tracepoint-classic"])
def test_selftest(netpair, flowmeterd, hooks, updates):
    """`check --selftest` on this kernel: tc accounting and the socket hooks
    (exact bytes, owners, roles, resets, a refused connect) on the rung given,
    with updates of a long-lived connection by every path the request allows
    (auto: each the kernel takes; raw-tp: the path without iterators alone)."""
    rows = program_type_rows(run_in(netpair, flowmeterd, "check").stdout)
    # `ip netns exec` gives the command a fresh /sys without tracefs, which the
    # classic tracepoints need, and without the cgroup2 mount, where the
    # tracepoint rung's UDP close hook attaches; mount both in that private
    # mount namespace.
    p = run_in(netpair, "sh", "-c", 'mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing; '
               'mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup; '
               'exec "$0" check --selftest --hooks "$1" --socket-updates "$2"', flowmeterd, hooks, updates, timeout=60)
    print(p.stdout)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    assert re.search(r"^(\d+) passed, 0 failed$", p.stdout, re.M), p.stdout
    # This kernel (6.18) has the sock_*_length tracepoints: UDP is seen on every rung.
    assert "UDP sockets: unsupported" not in p.stdout, p.stdout
    assert int(re.search(r"^(\d+) passed", p.stdout, re.M).group(1)) >= 21, p.stdout
    assert re.search(r"^ok .*updates by raw_tp", p.stdout, re.M), p.stdout
    by_iterator = re.search(r"^ok .*updates by iterator", p.stdout, re.M) is not None
    assert by_iterator == (updates == "auto" and rows["iter_map_elem"]), p.stdout
    assert f"socket_updates={'iterator' if by_iterator else 'raw_tp'})" in p.stdout, p.stdout
    if hooks == "tracepoint-classic":
        assert "tcp_state=tracepoint," in p.stdout, p.stdout


def test_classic_tracepoints_without_tracefs(netpair, flowmeterd):
    """Without tracefs the classic tracepoints cannot attach: the error says so."""
    p = run_in(netpair, "sh", "-c", 'umount /sys/kernel/tracing 2>/dev/null; '
               'exec "$0" check --selftest --hooks tracepoint-classic', flowmeterd, timeout=60)
    assert p.returncode == 1, p.stdout
    assert "tracefs is not mounted" in p.stdout, p.stdout


@pytest.mark.parametrize("rung", ["fentry", "kprobe"])
def test_forced_rung_matches_check(netpair, flowmeterd, rung):
    """A forced rung does what `check` said it would: where check reports it
    available, the self-test passes on it; where not (here: fentry is refused
    with EPERM and kprobes are not configured), the self-test fails and names
    the program it could not load or attach, and why."""
    out = run_in(netpair, flowmeterd, "check").stdout
    available = re.search(rf"^{rung}\s+yes\b", out, re.M) is not None
    p = run_in(netpair, flowmeterd, "check", "--selftest", "--hooks", rung, timeout=60)
    line = next(l for l in p.stdout.splitlines() if "attach socket hooks" in l)
    if available:
        assert p.returncode == 0 and line.startswith("ok"), p.stdout
    else:
        assert p.returncode == 1, p.stdout
        assert line.startswith("FAIL") and f"--hooks {rung}" in line and f"{rung}:" in line, line


def test_run_hooks(netpair, flowmeterd, daemons, tmp_path):
    """`run --hooks`: a forced rung that `check` reports unavailable is an error
    naming --hooks; `off` runs without socket hooks; `auto` exports one
    flowmeter_hook_info series per socket hook besides tc (and the drop
    hook, which does not depend on --hooks)."""
    import fmlib
    from conftest import scrape
    check = run_in(netpair, flowmeterd, "check").stdout
    for rung in ("fentry", "kprobe"):
        if re.search(rf"^{rung}\s+no\b", check, re.M):
            p = run_in(netpair, flowmeterd, "--interfaces", IF_A, "--hooks", rung, "--state-dir",
                       str(tmp_path / "s1"), "--metrics-listen", f"127.0.0.1:{unique_port()}")
            assert p.returncode == 1 and f"--hooks {rung}" in p.stderr, p.stderr
    for hooks, socket_series in (("off", 0), ("auto", 8)):
        port = unique_port()
        d = daemons(netpair.a, "--interfaces", IF_A, "--hooks", hooks, "--metrics-listen", f"127.0.0.1:{port}",
                    "--state-dir", str(tmp_path / hooks)).wait_ready()
        m = fmlib.parse_exposition(scrape(netpair, netpair.a, port)[1])
        seen = [dict(k[1]) for k in m.samples if k[0] == "flowmeter_hook_info"]
        assert sum(1 for h in seen if h["hook"] not in ("tc", "drops", "dns")) == socket_series, seen
        assert any(h["hook"] == "tc" for h in seen), seen
        if hooks == "auto":
            want = "iterator" if program_type_rows(check)["iter_map_elem"] else "raw_tp"
            assert {"hook": "socket_updates", "mode": want} in seen, seen
        assert d.terminate() == 0, d.stderr


@pytest.mark.parametrize("updates", ["iterator", "raw-tp"])
def test_run_socket_updates(netpair, flowmeterd, daemons, tmp_path, updates):
    """`run --socket-updates`: a path whose program type `check` reports
    refused is one error line naming the type, the program and the errno, exit
    1, before anything is attached; an accepted one runs, and
    flowmeter_hook_info says so. With auto on a kernel that refuses the
    iterator, the refusal is logged once, as one line, with what serves instead."""
    import fmlib
    from conftest import scrape
    rows = program_type_rows(run_in(netpair, flowmeterd, "check").stdout)
    ptype = "iter_map_elem" if updates == "iterator" else "raw_tp_run"
    state = tmp_path / "state"
    args = ["--interfaces", IF_A, "--metrics-listen", f"127.0.0.1:{unique_port()}", "--state-dir", str(state)]
    if not rows[ptype]:
        p = run_in(netpair, flowmeterd, *args, "--socket-updates", updates, timeout=60)
        assert p.returncode == 1, p.stderr
        lines = [l for l in p.stderr.splitlines() if l.startswith("flowmeterd: ")]
        assert len(lines) == 1 and p.stderr.strip() == lines[0], p.stderr
        assert lines[0].startswith(f"flowmeterd: --socket-updates {updates}: the kernel refuses {ptype} programs"), lines
        assert re.search(r"\((E[A-Z]+)\)", lines[0]), lines
        # Said before anything was loaded or attached.
        assert "flowmeter_" not in sh("bpftool", "prog", "show").stdout
        assert sh("ip", "netns", "exec", netpair.a, "bpftool", "link", "show").stdout.strip() == ""
        return
    port = unique_port()
    d = daemons(netpair.a, "--interfaces", IF_A, "--socket-updates", updates, "--metrics-listen", f"127.0.0.1:{port}",
                "--state-dir", str(state)).wait_ready()
    m = fmlib.parse_exposition(scrape(netpair, netpair.a, port)[1])
    seen = [dict(k[1]) for k in m.samples if k[0] == "flowmeter_hook_info"]
    assert {"hook": "socket_updates", "mode": updates.replace("-", "_")} in seen, seen
    # Forced, the other path is not asked for, so no refusal of it is logged.
    assert "(iter/bpf_map_elem) refused" not in d.stderr and "(raw_tp) refused" not in d.stderr, d.stderr
    assert d.terminate() == 0, d.stderr
    # auto: the iterator's refusal (if any) is one warning line.
    d = daemons(netpair.a, "--interfaces", IF_A, "--metrics-listen", f"127.0.0.1:{unique_port()}",
                "--state-dir", str(tmp_path / "auto")).wait_ready()
    refusals = [l for l in d.stderr.splitlines() if "program fm_updates (iter/bpf_map_elem) refused by the kernel" in l]
    if rows["iter_map_elem"]:
        assert refusals == [], d.stderr
    else:
        assert len(refusals) == 1 and "socket updates use the raw_tp run (fm_updates_run) instead" in refusals[0], d.stderr
        # A fallback serves: a notice, not a warning (a hardened host is not a fault).
        assert " notice " in refusals[0], refusals
    assert d.terminate() == 0, d.stderr


def test_config_check(flowmeterd, tmp_path):
    """`config check`: the shipped example is valid; a file with several
    mistakes gets every one, each with its line and key, and exit 1."""
    example = Path(__file__).resolve().parents[2] / "config" / "flowmeter.example.yaml"
    p = subprocess.run([flowmeterd, "config", "check", str(example)], capture_output=True, text=True)
    assert p.returncode == 0 and "ok" in p.stdout and p.stderr == "", p.stdout + p.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("interval: 5 parsecs\n"
                   "services:\n"
                   "  - name: checkout\n"
                   "    ports: 80-70\n"
                   "  - name: nothing\n"
                   "intervall: 5s\n")
    p = subprocess.run([flowmeterd, "config", "check", str(bad)], capture_output=True, text=True)
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 4, p.stderr
    assert lines[0].startswith(f"{bad}:1:") and "interval" in lines[0], lines
    assert lines[1].startswith(f"{bad}:4:") and "services[0].ports" in lines[1], lines
    assert lines[2].startswith(f"{bad}:5:") and "services[1]" in lines[2], lines
    assert lines[3].startswith(f"{bad}:6:") and "intervall" in lines[3], lines
    p = subprocess.run([flowmeterd, "config", "check", str(tmp_path / "missing.yaml")], capture_output=True, text=True)
    assert p.returncode == 1 and "missing.yaml" in p.stderr, p.stderr


def test_config_precedence(netpair, flowmeterd, tmp_path):
    """Flags over FLOWMETER_* over the file: the metrics port comes from the
    flag when given, else the environment, else the file; a bad file stops
    the daemon with the file's line."""
    cfg = tmp_path / "f.yaml"
    file_port, env_port, flag_port = unique_port(), unique_port(), unique_port()
    cfg.write_text(f"metrics_listen: \"127.0.0.1:{file_port}\"\nhooks: off\ninterfaces: [{IF_A}]\n")
    for env, flags, want in (({}, [], file_port), ({"FLOWMETER_METRICS_LISTEN": f"127.0.0.1:{env_port}"}, [], env_port),
                             ({"FLOWMETER_METRICS_LISTEN": f"127.0.0.1:{env_port}"},
                              ["--metrics-listen", f"127.0.0.1:{flag_port}"], flag_port)):
        d = subprocess.Popen(["ip", "netns", "exec", netpair.a, "env", *[f"{k}={v}" for k, v in env.items()], flowmeterd,
                              "--config", str(cfg), "--state-dir", str(tmp_path / "s"), *flags],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            line = ""
            deadline = time.monotonic() + 20
            while "serving metrics" not in line and time.monotonic() < deadline:
                line = d.stderr.readline()
                assert line, "daemon exited"
            assert f":{want}/metrics" in line, line
        finally:
            d.terminate()
            d.wait(timeout=20)
    cfg.write_text("interval: -3s\n")
    p = run_in(netpair, flowmeterd, "--config", str(cfg), timeout=30)
    assert p.returncode == 1 and f"{cfg}:1:" in p.stderr and "interval" in p.stderr, p.stderr
