"""The Debian package (tools/package): lintian, the systemd unit, install and
purge on this machine, the unit under a real systemd in a VM
(tools/vmtest-unit), and the static executables.

The package is FLOWMETER_DEB (tools/test builds it with tools/package before
pytest); unset, this module runs tools/package itself (seconds once .build-vm
is built, several minutes from scratch). It is installed with dpkg -i on this
machine, where systemd is not PID 1, so the maintainer scripts must enable the
unit without starting it, and dpkg --purge must leave nothing behind.

Lintian: no errors. The warning kept, and why (also in docs/install.md):
  initial-upload-closes-no-bugs: the changelog closes no Debian bug; the
    package is built by the project, not uploaded to Debian, so there is no
    ITP bug to close.
The overrides (usr/share/lintian/overrides/flowmeter) are the four
embedded-library errors of static linking, each expected here by name.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import IF_A, REPO, V4_B, V6_B, Daemon, scrape_settled, unique_port

PACKAGE = "flowmeter"
UNIT = "/lib/systemd/system/flowmeterd.service"
# Lintian warnings allowed to stay (see the module docstring), and the tags
# the package's overrides must silence, with their files.
KEPT_WARNINGS = {"initial-upload-closes-no-bugs"}
OVERRIDDEN = {
    "embedded-library libyaml [usr/sbin/flowmeterd]",
    "embedded-library zlib [usr/sbin/flowmeterd]",
    "embedded-library ncurses [usr/bin/flowtop]",
    "embedded-library zlib [usr/bin/flowtop]",
}
# The unit's systemd-analyze security exposure must stay below this (2.5 when
# written; the docs give the number).
MAX_EXPOSURE = 4.0
# What ldd may list: glibc (libc, libm, libpthread, libdl, librt), its
# loader and the kernel's vDSO.
GLIBC = re.compile(r"^(linux-vdso\.so\.1|lib(c|m|pthread|dl|rt)\.so\.\d+|/lib64/ld-linux-x86-64\.so\.2)$")
VERSION = re.compile(r"^(\d+\.\d+\.\d+) \(commit ([0-9a-f]{7,40}(-dirty)?|unknown)\)$")


def run(*cmd: str, timeout: float = 300, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def dpkg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """dpkg, waiting (up to 2 minutes) while another dpkg or apt holds its lock."""
    deadline = time.monotonic() + 120
    while True:
        p = run("dpkg", *args, timeout=timeout, check=False)
        if p.returncode == 0 or "lock" not in p.stderr or time.monotonic() > deadline:
            return p
        time.sleep(2)


def installed() -> bool:
    p = run("dpkg-query", "-W", "-f=${Status}", PACKAGE, check=False)
    return p.returncode == 0 and "installed" in p.stdout and "not-installed" not in p.stdout


def head_commit() -> str | None:
    p = run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD", check=False)
    return p.stdout.strip() if p.returncode == 0 else None


@pytest.fixture(scope="module")
def deb() -> Path:
    given = os.environ.get("FLOWMETER_DEB")
    if given is not None:
        if not given:
            pytest.fail("tools/package failed before the tests (see out/test-logs/package.log)", pytrace=False)
        path = Path(given)
    else:
        p = run(str(REPO / "tools" / "package"), timeout=3000, check=False)
        assert p.returncode == 0, f"tools/package failed:\n{p.stderr[-6000:]}"
        path = Path(p.stdout.strip().splitlines()[-1])
    assert path.is_file(), f"no package at {path}"
    assert re.fullmatch(r"flowmeter_\d+\.\d+\.\d+-\d+_amd64\.deb", path.name), path.name
    return path


@pytest.fixture(scope="module")
def unpacked(deb, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deb")
    run("dpkg-deb", "-R", str(deb), str(root))
    return root


def test_lintian_reports_no_errors(deb):
    p = run("lintian", "--display-info", "--show-overrides", "--tag-display-limit", "0", str(deb),
            timeout=600, check=False)
    lines = [l for l in p.stdout.splitlines() if re.match(r"^[EWIPXO]: ", l)]
    errors = [l for l in lines if l.startswith("E: ")]
    assert not errors, "lintian errors:\n" + "\n".join(errors)
    warnings = {l.split()[2] for l in lines if l.startswith("W: ")}
    assert warnings <= KEPT_WARNINGS, f"new lintian warnings: {sorted(warnings - KEPT_WARNINGS)}\n{p.stdout}"
    overridden = {l.split(": ", 2)[2] for l in lines if l.startswith("O: ")}
    assert overridden == OVERRIDDEN, f"overridden tags: {sorted(overridden)}"
    # 1 is lintian's own failure; 2 (its --fail-on) also counts the overridden
    # errors when --show-overrides shows them, so it is expected here.
    assert p.returncode in (0, 2), f"lintian exited {p.returncode}:\n{p.stdout}\n{p.stderr}"


def test_contents(unpacked):
    for path, mode in (("usr/sbin/flowmeterd", 0o755), ("usr/bin/flowtop", 0o755),
                       ("etc/flowmeter/flowmeter.yaml", 0o644), ("lib/systemd/system/flowmeterd.service", 0o644),
                       ("etc/logrotate.d/flowmeterd", 0o644), ("usr/share/man/man8/flowmeterd.8.gz", 0o644),
                       ("usr/share/man/man1/flowtop.1.gz", 0o644), ("usr/share/doc/flowmeter/copyright", 0o644),
                       ("usr/share/doc/flowmeter/changelog.Debian.gz", 0o644),
                       ("DEBIAN/postinst", 0o755), ("DEBIAN/prerm", 0o755), ("DEBIAN/postrm", 0o755)):
        f = unpacked / path
        assert f.is_file(), f"{path} is not in the package"
        assert f.stat().st_mode & 0o7777 == mode, f"{path}: mode {f.stat().st_mode & 0o7777:o}, want {mode:o}"
    conffiles = (unpacked / "DEBIAN" / "conffiles").read_text().split()
    assert "/etc/flowmeter/flowmeter.yaml" in conffiles
    # The config is the example's, checked by the daemon itself.
    run(str(unpacked / "usr/sbin/flowmeterd"), "config", "check", str(unpacked / "etc/flowmeter/flowmeter.yaml"))
    # The man pages are the argument parser's, and name every subcommand.
    man8 = run("zcat", str(unpacked / "usr/share/man/man8/flowmeterd.8.gz")).stdout
    assert '"Generated by swift-argument-parser"' in man8 and ".Dt FLOWMETERD 8" in man8
    for sub in ("run", "check", "config"):
        assert f".It Em {sub}" in man8, f"flowmeterd(8) lacks the subcommand {sub}"
    # The unit's reload is the SIGHUP the daemon reopens its flow log on, and
    # logrotate reloads through it.
    unit = (unpacked / "lib/systemd/system/flowmeterd.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "systemctl reload flowmeterd.service" in (unpacked / "etc/logrotate.d/flowmeterd").read_text()


def test_binaries_link_only_glibc(unpacked):
    for path in ("usr/sbin/flowmeterd", "usr/bin/flowtop"):
        out = run("ldd", str(unpacked / path)).stdout
        libs = [l.split()[0] for l in out.splitlines() if l.strip()]
        others = [l for l in libs if not GLIBC.match(l)]
        assert not others, f"{path} links more than glibc dynamically: {others}\n{out}"
        assert any(l.startswith("libc.so.") for l in libs), out


def test_unit_exposure(unpacked):
    p = run("systemd-analyze", "security", "--offline=true", "--no-pager",
            str(unpacked / "lib/systemd/system/flowmeterd.service"), check=False)
    m = re.search(r"Overall exposure level for flowmeterd\.service: (\d+\.\d+)", p.stdout)
    assert m, f"no exposure level in:\n{p.stdout}\n{p.stderr}"
    print(f"systemd-analyze security: exposure {m.group(1)}")
    assert float(m.group(1)) < MAX_EXPOSURE, p.stdout


def unit_capabilities(unit: str) -> list[str]:
    line = next(l for l in unit.splitlines() if l.startswith("CapabilityBoundingSet="))
    return line.split("=", 1)[1].split()


@pytest.fixture
def package_lock():
    """Installing is machine-wide: two runs of this suite at once (two work
    trees) take turns, or one would purge what the other tests."""
    with open("/run/lock/flowmeter-package-test.lock", "w") as f:
        deadline = time.monotonic() + 1800
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "another test run held the package lock for 30 minutes"
                time.sleep(2)
        yield


def test_install_run_purge(deb, unpacked, netpair, tmp_path, package_lock):
    if installed():
        assert dpkg("--purge", PACKAGE).returncode == 0
    paths = [os.path.normpath("/" + l.split(" -> ")[0].split(maxsplit=5)[5])
             for l in run("dpkg-deb", "-c", str(deb)).stdout.splitlines()]
    existed = {p for p in paths if os.path.lexists(p)}
    wants = Path("/etc/systemd/system/multi-user.target.wants/flowmeterd.service")
    assert not wants.exists()

    p = dpkg("-i", str(deb))
    assert p.returncode == 0, f"dpkg -i exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    try:
        listed = [os.path.normpath(l) for l in run("dpkg", "-L", PACKAGE).stdout.splitlines() if l.startswith("/")]
        for f in ("/usr/sbin/flowmeterd", "/usr/bin/flowtop", "/etc/flowmeter/flowmeter.yaml", UNIT,
                  "/etc/logrotate.d/flowmeterd", "/usr/share/man/man8/flowmeterd.8.gz"):
            assert f in listed and os.path.isfile(f), f"{f} not installed"
        conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", PACKAGE).stdout
        assert "/etc/flowmeter/flowmeter.yaml" in conffiles
        # Enabled (the symlink deb-systemd-helper makes), not started: no systemd here.
        assert wants.is_symlink() and os.readlink(wants) == UNIT

        version = run("/usr/sbin/flowmeterd", "--version").stdout.strip()
        m = VERSION.match(version)
        assert m, f"flowmeterd --version: {version!r}"
        commit = head_commit()
        if commit:
            assert m.group(2).removesuffix("-dirty") == commit, f"{version!r}, HEAD is {commit}"
        assert run("/usr/bin/flowtop", "--version").stdout.strip() == version
        check = run("/usr/sbin/flowmeterd", "check", timeout=120, check=False)
        assert check.returncode == 0, f"flowmeterd check exited {check.returncode}:\n{check.stdout}\n{check.stderr}"
        assert "Would use:" in check.stdout

        # The installed unit passes systemd-analyze verify (ExecStart and the
        # man page of Documentation= exist now).
        v = run("systemd-analyze", "verify", UNIT, check=False)
        assert v.returncode == 0 and not v.stderr.strip() and not v.stdout.strip(), \
            f"systemd-analyze verify exited {v.returncode}:\n{v.stdout}\n{v.stderr}"

        # The installed daemon as the unit starts it, as far as capabilities
        # go: root with the unit's bounding set, no_new_privs, the installed
        # config. Its own drop leaves CAP_BPF and CAP_NET_ADMIN. Kept in a
        # namespace of its own by --interfaces and private paths.
        caps = unit_capabilities(Path(UNIT).read_text())
        assert caps == ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"], caps
        bounding = "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
        port = unique_port()
        # setpriv execs the daemon, so the process is the daemon itself.
        d = Daemon("setpriv", netpair.a, ["--bounding-set", bounding, "--inh-caps", "-all", "--no-new-privs",
                                          "/usr/sbin/flowmeterd", "run", "--config", "/etc/flowmeter/flowmeter.yaml",
                                          "--interfaces", IF_A, "--interval", "1s",
                                          "--metrics-listen", f"127.0.0.1:{port}",
                                          "--api-socket", str(tmp_path / "api.sock"),
                                          "--state-dir", str(tmp_path / "state")],
                   tmp_path, "installed-flowmeterd").start()
        try:
            d.wait_ready()
            d.wait_log("dropped capabilities", timeout=10)
            line = next(l for l in d.stderr.splitlines() if "dropped capabilities" in l)
            assert "kept=CAP_NET_ADMIN,CAP_BPF" in line, line
            netpair.nettool(netpair.a, "ping", V4_B, "2")
            netpair.nettool(netpair.a, "ping", V6_B, "2")
            _, body = scrape_settled(netpair, netpair.a, port, ("flowmeter_interface_packets_total",))
            sent = [l for l in body.splitlines() if l.startswith("flowmeter_interface_packets_total{")
                    and f'interface="{IF_A}"' in l and 'direction="transmit"' in l]
            assert sent and float(sent[0].rsplit(" ", 1)[1]) >= 4, body
            assert d.terminate() == 0, d.stderr
        finally:
            d.close()
            print(f"----- installed flowmeterd stderr -----\n{d.stderr}")
    except BaseException:
        if installed():
            dpkg("--purge", PACKAGE)
        raise

    p = dpkg("--purge", PACKAGE)
    assert p.returncode == 0, f"dpkg --purge exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    assert not installed()
    left = [f for f in listed if f not in existed and os.path.lexists(f)]
    assert not left, f"left behind after purge: {left}"
    for d in ("/etc/flowmeter", "/var/log/flowmeter"):
        assert not os.path.lexists(d), f"{d} left behind after purge"
    assert not wants.is_symlink(), "the unit's enablement symlink was left behind"
    assert not list(Path("/var/lib/systemd/deb-systemd-helper-enabled").rglob("flowmeterd.service*"))
    assert not list(Path("/var/lib/systemd/deb-systemd-helper-masked").glob("flowmeterd.service*"))


def test_build_commit_without_git(tmp_path):
    """tools/build-commit (the BuildCommit plugin's script) names the commit of
    a git work tree, and says "unknown" outside one or without git."""
    script = str(REPO / "tools" / "build-commit")
    out = tmp_path / "out"
    run("sh", script, str(REPO), str(out))
    commit = head_commit()
    text = (out / "BuildCommit.swift").read_text()
    m = re.search(r'public static let commit = "([^"]*)"', text)
    assert m, text
    if commit:
        assert m.group(1).removesuffix("-dirty") == commit
    # Unchanged text: the file is not rewritten (no rebuild).
    before = (out / "BuildCommit.swift").stat().st_mtime_ns
    time.sleep(0.01)
    run("sh", script, str(REPO), str(out))
    assert (out / "BuildCommit.swift").stat().st_mtime_ns == before
    # Not a git work tree.
    plain = tmp_path / "tarball"
    plain.mkdir()
    run("sh", script, str(plain), str(tmp_path / "o2"))
    assert 'commit = "unknown"' in (tmp_path / "o2" / "BuildCommit.swift").read_text()
    # No git on the PATH: only the tools the script needs besides it.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mkdir", "cmp", "mv", "rm"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    run("/bin/sh", script, str(REPO), str(tmp_path / "o3"), env={"PATH": str(bin_dir)})
    assert 'commit = "unknown"' in (tmp_path / "o3" / "BuildCommit.swift").read_text()


def test_version_of_the_tested_binary(flowmeterd):
    """The binary the e2e tests run (plain `swift build`) shows its commit too:
    one of this repository's, and HEAD's when it was built after HEAD was made
    (tools/test builds it first; a binary older than HEAD names an older commit)."""
    version = run(flowmeterd, "--version").stdout.strip()
    m = VERSION.match(version)
    assert m, f"--version: {version!r}"
    commit = head_commit()
    if commit:
        named = m.group(2).removesuffix("-dirty")
        assert run("git", "-C", str(REPO), "cat-file", "-e", f"{named}^{{commit}}", check=False).returncode == 0, \
            f"{version!r} names no commit of this repository"
        head_time = int(run("git", "-C", str(REPO), "log", "-1", "--format=%ct").stdout)
        if os.stat(flowmeterd).st_mtime > head_time:
            assert named == commit, f"{version!r}, built after HEAD ({commit}) was made"
