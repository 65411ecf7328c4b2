"""The OCI image (tools/package): its index, manifest, config and one layer,
and flowmeterd run from it by a real OCI runtime, runc.

The image is FLOWMETER_IMAGE (tools/test builds it with tools/package before
pytest, and FLOWMETER_DEB is the package of the same run); unset, this module
runs tools/package itself.

The container is made the way a node's runtime makes the DaemonSet's pod: umoci
unpacks the archive into a bundle (rootfs and a default config.json whose
process is the image's entrypoint), and the config is then given what
deploy/kubernetes/daemonset.yaml asks for, read from that file so the two
cannot drift apart: host network, PID and UTS namespaces; the capabilities
the securityContext adds and no others (bounding, effective and permitted;
none inheritable or ambient); no_new_privs (allowPrivilegeEscalation: false);
a read-only root; and each hostPath volume bind-mounted where the pod mounts
it, read-only where it says so. Three hostPaths are redirected: /run/flowmeter
to a directory of the test's own (the node's is not ours to touch),
/run/containerd to an empty one (a node without containerd; test_pods.py
tests the names a containerd gives), and /sys/fs/cgroup to this machine's
cgroup2 mount (here a hybrid hierarchy puts it at /sys/fs/cgroup/unified; on a
node with the unified hierarchy it is /sys/fs/cgroup itself).

"Host network" in the OCI spec means no network namespace of the container's
own: the container shares runc's. runc is started inside test namespace A
(nsenter --net, which changes nothing else), so the containerised daemon sees
the test's veth pair as its host's interfaces, and the node's real interfaces
and traffic stay out of it.

rlimits: root here lacks CAP_SYS_RESOURCE, so a spec that raises a limit above
the current hard limit fails to start. umoci's default spec sets
RLIMIT_NOFILE to 1024; the spec is given none, so the daemon inherits runc's
limits, as it would a containerd without an rlimit setting.

Capabilities: the daemon starts with exactly the DaemonSet's three (BPF,
PERFMON, NET_ADMIN), counts, and passes `check --selftest`, so nothing more is
needed; with any one of them removed it refuses to start and names it, so
each is needed.

Every container is deleted (runc delete --force) and its bundle directory
removed whatever the outcome; runc keeps its state in a directory of this
module's, which must be empty at the end, and no flowmeter_ BPF program may be
left behind.
"""
from __future__ import annotations

import copy
import gzip
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
import yaml

import fmlib
from conftest import IF_A, MAC_A, REPO, V4_B, V6_B, Daemon, flowmeter_progs, scrape_settled, unique_port
from test_accounting import diff_flows, tcp_transfer
from test_sockets import cgroup2_root

DAEMONSET = REPO / "deploy" / "kubernetes" / "daemonset.yaml"
ARCHIVE = re.compile(r"flowmeter_(\d+\.\d+\.\d+)_amd64\.oci\.tar")
LABELS = ("org.opencontainers.image.version", "org.opencontainers.image.revision",
          "org.opencontainers.image.source", "org.opencontainers.image.licenses",
          "org.opencontainers.image.title", "org.opencontainers.image.description",
          "org.opencontainers.image.created")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
# glibc loads it with dlopen to unwind an exiting thread, so ldd does not list it.
LIBGCC_S = "lib/x86_64-linux-gnu/libgcc_s.so.1"
# The files the image is meant to hold besides glibc's (which ldd decides).
OWN_FILES = {
    "usr/sbin/flowmeterd",
    LIBGCC_S,
    "etc/nsswitch.conf",
    "usr/share/doc/flowmeter/copyright",
    "usr/share/doc/libc6/copyright",
    "usr/share/doc/libc6/SOURCE",
    "usr/share/doc/libgcc-s1/copyright",
    "usr/share/doc/libgcc-s1/SOURCE",
    "usr/share/common-licenses/Apache-2.0",
    "usr/share/common-licenses/GPL-2",
    "usr/share/common-licenses/GPL-3",
    "usr/share/common-licenses/LGPL-2.1",
    "usr/share/common-licenses/LGPL-3",
}
NEEDS = "(it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON to start; run as root, or grant them)"
TCP_BYTES = 500_000


def run(*cmd: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def blob(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    assert algo == "sha256", digest
    return layout / "blobs" / "sha256" / hexd


def sha256_of(path: Path, opener=open) -> str:
    h = hashlib.sha256()
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------- artifacts


@pytest.fixture(scope="module")
def artifacts() -> tuple[Path, Path | None]:
    """(the image archive, the .deb of the same tools/package run or None)."""
    given = os.environ.get("FLOWMETER_IMAGE")
    if given is not None:
        if not given:
            pytest.fail("tools/package failed before the tests (see out/test-logs/package.log)", pytrace=False)
        image = Path(given)
        deb = Path(os.environ["FLOWMETER_DEB"]) if os.environ.get("FLOWMETER_DEB") else None
    else:
        p = run(str(REPO / "tools" / "package"), timeout=3000, check=False)
        assert p.returncode == 0, f"tools/package failed:\n{p.stderr[-6000:]}"
        lines = p.stdout.split()
        image = Path(next(l for l in lines if l.endswith(".oci.tar")))
        deb = Path(next(l for l in lines if l.endswith(".deb")))
    assert image.is_file(), f"no image archive at {image}"
    assert ARCHIVE.fullmatch(image.name), image.name
    return image, deb


@pytest.fixture(scope="module")
def version(artifacts) -> str:
    return ARCHIVE.fullmatch(artifacts[0].name).group(1)


@pytest.fixture(scope="module")
def layout(artifacts, tmp_path_factory):
    """The archive unpacked: an OCI image layout."""
    root = tmp_path_factory.mktemp("layout")
    with tarfile.open(artifacts[0]) as t:
        names = t.getnames()
        t.extractall(root, filter="data")
    try:
        assert sorted(names)[:2] == ["blobs", "blobs/sha256"] and "oci-layout" in names and "index.json" in names, names
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def image(layout):
    """(index.json, the manifest, the config) of the one image in the layout."""
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout / "index.json").read_text())
    assert len(index["manifests"]) == 1, index
    desc = index["manifests"][0]
    assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json", desc
    manifest = json.loads(blob(layout, desc["digest"]).read_text())
    config = json.loads(blob(layout, manifest["config"]["digest"]).read_text())
    return index, manifest, config


@pytest.fixture(scope="module")
def tools():
    for tool in ("runc", "umoci", "nsenter"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (tools/test installs it)")


@pytest.fixture(scope="module")
def unpacked(layout, version, tools, tmp_path_factory):
    """umoci's bundle of the image: rootfs/ and its default config.json.
    Removed at the end of the module."""
    bundle = tmp_path_factory.mktemp("bundle") / "flowmeter"
    try:
        run("umoci", "unpack", "--image", f"{layout}:{version}", str(bundle))
        yield bundle
    finally:
        shutil.rmtree(bundle, ignore_errors=True)
        assert not bundle.exists(), f"{bundle} was not removed"


def pod_spec() -> tuple[dict, dict]:
    """(the DaemonSet's pod spec, its flowmeterd container)."""
    ds = yaml.safe_load(DAEMONSET.read_text())
    pod = ds["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "flowmeterd"]
    return pod, container


# ---------------------------------------------------------------- the image itself


def test_index_manifest_and_config(image, version, artifacts):
    index, manifest, config = image
    desc = index["manifests"][0]
    # umoci's tag, and the name containerd gives it on import: the DaemonSet's image.
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == version
    _, container = pod_spec()
    assert container["image"] == f"flowmeter:{version}", \
        f"the DaemonSet runs {container['image']}, tools/package builds flowmeter:{version}"
    assert desc["annotations"]["io.containerd.image.name"] == f"docker.io/library/flowmeter:{version}"
    assert manifest["schemaVersion"] == 2 and manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert (config["os"], config["architecture"]) == ("linux", "amd64")

    c = config["config"]
    assert c["Entrypoint"] == ["/usr/sbin/flowmeterd"] and not c.get("Cmd"), c
    assert c.get("User", "") in ("", "0", "0:0") and c.get("WorkingDir") == "/", c
    labels = c["Labels"]
    assert set(LABELS) <= set(labels), f"missing labels: {set(LABELS) - set(labels)}"
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.title"] == "flowmeterd" and labels["org.opencontainers.image.description"]
    assert labels["org.opencontainers.image.source"]
    assert RFC3339.match(labels["org.opencontainers.image.created"]) and \
        labels["org.opencontainers.image.created"] == config["created"], (labels, config["created"])
    # The revision is a commit of this repository, the one the binary names.
    rev = labels["org.opencontainers.image.revision"]
    assert re.fullmatch(r"[0-9a-f]{40}", rev), rev
    if (REPO / ".git").exists():
        assert run("git", "-C", str(REPO), "cat-file", "-e", f"{rev}^{{commit}}", check=False).returncode == 0, \
            f"revision {rev} is no commit of this repository"
    # The licenses claim no license for Flowmeter's own code while
    # deploy/debian/copyright declares none, and name glibc's, which the
    # image adds to what the package's executables carry.
    licenses = labels["org.opencontainers.image.licenses"]
    undeclared = re.search(r"^Files: \*\n(?:.+\n)*?License: undeclared$",
                           (REPO / "deploy/debian/copyright").read_text(), re.M)
    assert bool(undeclared) == ("LicenseRef-Flowmeter-undeclared" in licenses), licenses
    for spdx in ("GPL-2.0-only OR BSD-2-Clause", "LGPL-2.1-only OR BSD-2-Clause", "Zlib",
                 "Apache-2.0 WITH Swift-exception", "MIT", "LGPL-2.1-or-later",
                 "GPL-3.0-or-later WITH GCC-exception-3.1"):
        assert spdx in licenses, f"{spdx} not in the licenses label {licenses!r}"
    # Built at HEAD by tools/test: the revision is HEAD's.
    if os.environ.get("FLOWMETER_IMAGE"):
        head = run("git", "-C", str(REPO), "rev-parse", "HEAD", check=False).stdout.strip()
        if head:
            assert rev == head, f"image revision {rev}, HEAD {head}"


def test_layer_holds_only_what_is_intended(layout, image, artifacts, unpacked):
    _, manifest, config = image
    # One layer, whose digest and uncompressed digest (diff_id) are right.
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip", layer
    path = blob(layout, layer["digest"])
    assert sha256_of(path) == layer["digest"] and path.stat().st_size == layer["size"]
    assert config["rootfs"]["diff_ids"] == [sha256_of(path, gzip.open)]
    for d in (manifest["config"],):
        assert sha256_of(blob(layout, d["digest"])) == d["digest"]

    with tarfile.open(path, "r:gz") as t:  # a truncated stream fails here
        members = t.getmembers()
    files = {m.name.removeprefix("./") for m in members if not m.isdir()}
    dirs = {m.name.removeprefix("./").rstrip("/") for m in members if m.isdir()} - {".", ""}
    # glibc: the files the image's flowmeterd loads, as the interpreter and ldd name them.
    binary = unpacked / "rootfs" / "usr/sbin/flowmeterd"
    interp = re.search(r"Requesting program interpreter: (\S+)]", run("readelf", "-l", str(binary)).stdout).group(1)
    libs = [l.split()[2] for l in run("ldd", str(binary)).stdout.splitlines() if " => " in l]
    glibc = {p.lstrip("/") for p in [interp, *libs]}
    assert {"lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6"} <= glibc, glibc
    assert files == OWN_FILES | glibc, (f"unexpected: {sorted(files - OWN_FILES - glibc)}; "
                                        f"missing: {sorted((OWN_FILES | glibc) - files)}")
    parents = {str(Path(f).parents[i]) for f in files for i in range(len(Path(f).parents) - 1)}
    assert dirs == parents, f"directories beyond the files' parents: {sorted(dirs - parents)}"
    for m in members:
        assert (m.uid, m.gid) == (0, 0), f"{m.name} owned by {m.uid}:{m.gid}"
        assert not m.mode & 0o7000, f"{m.name} has mode {m.mode:o}"
        assert m.isfile() or m.isdir(), f"{m.name} is neither a file nor a directory"
    # The glibc files are this machine's libc6 (which the build linked
    # against) and libgcc-s1, and each names the source it was built from.
    for f in glibc | {LIBGCC_S}:
        assert (unpacked / "rootfs" / f).read_bytes() == Path("/" + f).resolve().read_bytes(), f
    assert "apt-get source glibc=" in (unpacked / "rootfs/usr/share/doc/libc6/SOURCE").read_text()
    assert re.search(r"apt-get source gcc-\d+=", (unpacked / "rootfs/usr/share/doc/libgcc-s1/SOURCE").read_text())
    # One build: the image's flowmeterd is the package's, byte for byte.
    deb = artifacts[1]
    if deb is not None:
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
            with tarfile.open(fileobj=p.stdout, mode="r|") as t:
                for m in t:
                    if m.name == "./usr/sbin/flowmeterd":
                        packaged = hashlib.sha256(t.extractfile(m).read()).hexdigest()
                        break
        assert hashlib.sha256(binary.read_bytes()).hexdigest() == packaged, \
            "the image's flowmeterd differs from the package's"


# ---------------------------------------------------------------- under runc

_ids = itertools.count(1)


class Container:
    """One runc container of the image, configured like the DaemonSet's pod,
    run from inside network namespace `ns`. Its own bundle directory holds
    config.json (the root is the shared unpacked rootfs, read-only)."""

    def __init__(self, unpacked: Path, state: Path, workdir: Path, ns: str, args: list[str],
                 caps: list[str] | None = None, masked: list[str] = ()):
        n = next(_ids)
        self.id = f"flowmeter-e2e-{os.getpid()}-{n}"
        self.state = state
        self.ns = ns
        self.bundle = workdir / f"bundle-{n}"
        self.run_dir = workdir / f"run-{n}"  # the container's /run/flowmeter
        self.bundle.mkdir()
        self.run_dir.mkdir(mode=0o755)
        # The container's /run/containerd: an empty directory, as on a node
        # without containerd (the daemon then names pods pod:<uid>).
        self.containerd_dir = workdir / f"containerd-{n}"
        self.containerd_dir.mkdir(mode=0o711)
        self.cgroups_path = f"/{self.id}"
        self.spec = self.make_spec(unpacked, args, caps)
        # Paths hidden from the container (runc mounts /dev/null over a file).
        self.spec["linux"]["maskedPaths"] = self.spec["linux"].get("maskedPaths", []) + list(masked)
        (self.bundle / "config.json").write_text(json.dumps(self.spec, indent=1))
        self.daemon: Daemon | None = None

    def make_spec(self, unpacked: Path, args: list[str], caps: list[str] | None) -> dict:
        spec = copy.deepcopy(json.loads((unpacked / "config.json").read_text()))
        pod, container = pod_spec()
        sc = container["securityContext"]
        assert not sc.get("privileged"), "the DaemonSet must not run privileged"
        assert sc["capabilities"]["drop"] == ["ALL"], sc
        if caps is None:
            caps = ["CAP_" + c for c in sc["capabilities"]["add"]]
        proc = spec["process"]
        # The image's entrypoint as umoci put it in the spec, then our arguments.
        assert proc["args"] == ["/usr/sbin/flowmeterd"], proc["args"]
        proc["args"] = proc["args"] + args
        proc["terminal"] = False
        proc["env"] = [e for e in proc["env"] if not e.startswith("TERM=")]
        # The pod's variables, the downward API's spec.nodeName as this host's name.
        for e in container.get("env", []):
            if "value" in e:
                proc["env"].append(f"{e['name']}={e['value']}")
            else:
                assert e["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}, e
                proc["env"].append(f"{e['name']}={socket.gethostname()}")
        proc["capabilities"] = {"bounding": caps, "effective": caps, "permitted": caps,
                                "inheritable": [], "ambient": []}
        proc["noNewPrivileges"] = sc.get("allowPrivilegeEscalation") is False
        assert sc.get("runAsUser") == 0 and proc["user"]["uid"] == 0
        # See the module docstring: no rlimits, the daemon inherits runc's.
        proc.pop("rlimits", None)
        spec["root"] = {"path": str(unpacked / "rootfs"), "readonly": bool(sc.get("readOnlyRootFilesystem"))}
        # hostNetwork: no network namespace, and (as Kubernetes does) the
        # node's UTS namespace; hostPID: no PID namespace.
        drop = set()
        if pod.get("hostNetwork"):
            drop |= {"network", "uts"}
            spec.pop("hostname", None)
        if pod.get("hostPID"):
            drop.add("pid")
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] not in drop]
        spec["linux"]["cgroupsPath"] = self.cgroups_path
        # The pod's volumes where the pod mounts them, over umoci's defaults.
        volumes = {v["name"]: v for v in pod["volumes"]}
        redirect = {"/run/flowmeter": str(self.run_dir), "/sys/fs/cgroup": cgroup2_root(),
                    "/run/containerd": str(self.containerd_dir)}
        targets = set()
        mounts = []
        for vm in container["volumeMounts"]:
            v = volumes[vm["name"]]
            if "configMap" in v:
                continue  # the config: the tests give flags instead
            assert "hostPath" in v, f"volume {vm['name']}: only hostPath and configMap volumes are mapped here"
            src = redirect.get(v["hostPath"]["path"], v["hostPath"]["path"])
            opts = ["rbind", "rprivate", "nosuid", "nodev", "noexec"] + (["ro"] if vm.get("readOnly") else [])
            mounts.append({"destination": vm["mountPath"], "type": "bind", "source": src, "options": opts})
            targets.add(vm["mountPath"])
        for need in ("/sys/fs/bpf", "/sys/kernel/tracing", "/sys/fs/cgroup", "/run/flowmeter", "/run/containerd"):
            assert need in targets, f"the DaemonSet does not mount {need}"
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] not in targets] + mounts
        return spec

    def command(self, *runc_args: str) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.ns}", "runc", "--root", str(self.state), *runc_args]

    def run(self, timeout: float = 120) -> subprocess.CompletedProcess:
        """Runs to the end (foreground); the container is gone afterwards."""
        try:
            return subprocess.run(self.command("run", "--bundle", str(self.bundle), self.id),
                                  capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        finally:
            self.remove()

    def start(self, workdir: Path) -> Daemon:
        """Starts `runc run` in the foreground as a Daemon: runc passes its
        stdout and stderr to the container and forwards signals to it."""
        cmd = self.command("run", "--bundle", str(self.bundle), self.id)
        self.daemon = Daemon(cmd[0], None, cmd[1:], workdir, self.id).start()
        return self.daemon

    def pid(self) -> int:
        st = json.loads(run("runc", "--root", str(self.state), "state", self.id).stdout)
        assert st["status"] == "running", st
        return st["pid"]

    def remove(self) -> None:
        if self.daemon is not None:
            self.daemon.close()
        p = run("runc", "--root", str(self.state), "delete", "--force", self.id, check=False)
        assert p.returncode == 0 or "does not exist" in p.stderr, p.stderr
        shutil.rmtree(self.bundle, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.containerd_dir, ignore_errors=True)


@pytest.fixture
def containers(unpacked, tmp_path):
    """Factory: containers(ns, *args, caps=None) -> Container. Every container
    is deleted and its bundle removed at teardown; runc's state directory must
    then be empty, the containers' cgroups gone, and no flowmeter_ program
    left loaded."""
    state = tmp_path / "runc"
    state.mkdir()
    before = set(flowmeter_progs())
    made: list[Container] = []

    def make(ns: str, *args: str, caps: list[str] | None = None, masked: list[str] = ()) -> Container:
        c = Container(unpacked, state, tmp_path, ns, list(args), caps, masked)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.remove()
            if c.daemon is not None:
                print(f"----- {c.id} ({' '.join(c.spec['process']['args'])}) stderr -----\n{c.daemon.stderr}")
        listed = json.loads(run("runc", "--root", str(state), "list", "--format", "json").stdout or "null")
        shutil.rmtree(state, ignore_errors=True)
        assert not listed, f"containers left behind: {listed}"
        for c in made:
            assert not c.bundle.exists() and not c.run_dir.exists()
            left = [p for p in Path("/sys/fs/cgroup").glob(f"*{c.cgroups_path}") if p.exists()]
            left += [p for p in [Path(cgroup2_root() + c.cgroups_path)] if p.exists()]
            assert not left, f"cgroups left behind: {left}"
        # Programs are freed shortly after the last reference goes.
        deadline = time.monotonic() + 10
        while (leaked := set(flowmeter_progs()) - before) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not leaked, f"flowmeter_ programs left loaded: {leaked}"


def test_version_and_selftest_in_the_container(netpair, containers, version):
    v = containers(netpair.a, "--version").run()
    assert v.returncode == 0, f"--version in the container exited {v.returncode}:\n{v.stderr}"
    assert re.fullmatch(rf"{re.escape(version)} \(commit [0-9a-f]{{7,40}}(-dirty)?\)\n", v.stdout), v.stdout
    # Why libgcc_s.so.1 is in the image although ldd does not list it: hidden,
    # the first thread that exits aborts the daemon.
    no = containers(netpair.a, "--version", masked=["/" + LIBGCC_S]).run()
    assert no.returncode != 0 and "libgcc_s.so.1 must be installed for pthread_exit to work" in no.stderr, \
        f"exit {no.returncode} without libgcc_s.so.1:\n{no.stdout}\n{no.stderr}"

    p = containers(netpair.a, "check", "--selftest").run(timeout=180)
    out = p.stdout
    assert p.returncode == 0, f"check --selftest in the container exited {p.returncode}:\n{out}\n{p.stderr}"
    m = re.search(r"^(\d+) passed, (\d+) failed$", out, re.M)
    assert m and int(m.group(1)) > 0 and m.group(2) == "0", out
    # The live checks ran: it attached to the container's (namespace A's) loopback.
    assert re.search(r"attach to lo\b", out) and "count loopback UDP exactly" in out, out


@pytest.mark.parametrize("missing", ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"])
def test_each_capability_is_needed(netpair, containers, missing):
    """Without one of the DaemonSet's capabilities the daemon in the container
    does not start and names it (the proof that each is needed; that no other
    is needed is test_counts_a_tcp_exchange_exactly's)."""
    _, container = pod_spec()
    caps = ["CAP_" + c for c in container["securityContext"]["capabilities"]["add"]]
    assert missing in caps
    p = containers(netpair.a, "--interfaces", IF_A, "--metrics-listen", f"127.0.0.1:{unique_port()}",
                   caps=[c for c in caps if c != missing]).run(timeout=60)
    assert p.returncode == 1, f"exit {p.returncode}\nstderr: {p.stderr}"
    assert p.stderr.splitlines() == [f"flowmeterd: missing capabilities: {missing} {NEEDS}"], p.stderr


def test_counts_a_tcp_exchange_exactly(netpair, containers, capture, tmp_path):
    pair = netpair
    pair.set_offloads(False)  # every skb one wire packet, as in the capture
    mport = unique_port()
    cap = capture(pair, pair.a, IF_A)
    c = containers(pair.a, "--interfaces", IF_A, "--interval", "1s", "--metrics-listen", f"127.0.0.1:{mport}",
                   "--flow-log", "/run/flowmeter/flows.jsonl")
    d = c.start(tmp_path).wait_ready()
    pid = c.pid()

    # What the container is: the daemon's own process, seen from the host (host PID).
    status = dict(l.split(":\t", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in l)
    assert status["Name"].strip() == "flowmeterd", status["Name"]
    caps = {"CAP_BPF": 39, "CAP_PERFMON": 38, "CAP_NET_ADMIN": 12}
    want = sum(1 << b for b in caps.values())
    assert int(status["CapBnd"], 16) == want, f"bounding set {status['CapBnd']}, want only {sorted(caps)}"
    # Once attached and serving it gives up CAP_PERFMON itself (the bounding
    # set cannot shrink without CAP_SETPCAP, which it is not given).
    d.wait_log("dropped capabilities", timeout=10)
    line = next(l for l in d.stderr.splitlines() if "dropped capabilities" in l)
    assert "kept=CAP_NET_ADMIN,CAP_BPF" in line, line
    eff = int(dict(l.split(":\t", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if ":\t" in l)["CapEff"], 16)
    assert eff == (1 << caps["CAP_BPF"]) | (1 << caps["CAP_NET_ADMIN"]), f"effective {eff:#x}"
    assert status["NoNewPrivs"].strip() == "1"
    mounts = {f[4]: f for f in (l.split() for l in Path(f"/proc/{pid}/mountinfo").read_text().splitlines())}
    assert "ro" in mounts["/"][5].split(","), f"root is not read-only: {mounts['/']}"
    # Host network: runc's namespace, test namespace A.
    assert os.readlink(f"/proc/{pid}/ns/net") == f"net:[{os.stat(f'/var/run/netns/{pair.a}').st_ino}]"
    # The API socket and the flow log are on the test's /run/flowmeter.
    assert (c.run_dir / "flowmeter.sock").exists(), sorted(os.listdir(c.run_dir))

    server_port = tcp_transfer(pair, TCP_BYTES)
    tcp6_port = tcp_transfer(pair, 100_000, V6_B)
    time.sleep(1.2)
    _, body = scrape_settled(pair, pair.a, mport, ("flowmeter_interface_io_bytes_total",
                                                   "flowmeter_interface_packets_total"))
    assert d.terminate() == 0, f"flowmeterd in the container exited {d.returncode} on SIGTERM:\n{d.stderr}"
    cap.stop()

    frames = fmlib.read_pcap(str(cap.path))
    truth = fmlib.summarize_capture(frames, MAC_A)
    assert truth.frames > 300, f"capture has only {truth.frames} frames: {cap.stats}"
    expo = fmlib.parse_exposition(body)
    assert not expo.problems, "\n".join(expo.problems)
    for direction in ("transmit", "receive"):
        w = truth.per_direction[direction]
        got = (expo.value("flowmeter_interface_packets_total", interface=IF_A, direction=direction),
               expo.value("flowmeter_interface_io_bytes_total", interface=IF_A, direction=direction))
        print(f"{direction}: container daemon {got[0]} packets / {got[1]} bytes, capture {w.packets} / {w.bytes}")
        assert got == (w.packets, w.bytes), f"{direction}: /metrics {got}, capture {(w.packets, w.bytes)}"
    assert expo.value("flowmeter_ringbuf_lost_records_total", ring="flows") == 0
    hooks = [dict(k[1]) for k in expo.samples if k[0] == "flowmeter_hook_info"]
    assert any(h["hook"] == "tc" for h in hooks), hooks
    assert any(h["hook"] != "tc" for h in hooks), f"no socket hook attached in the container: {hooks}"

    # The flow log, written to the mounted /run/flowmeter, equals the capture flow by flow.
    log = c.run_dir / "flows.jsonl"
    records = fmlib.read_flow_log(str(log))
    problems = [f"{r}: {p}" for r in records for p in fmlib.check_flow_record(r)]
    assert not problems, "\n".join(problems[:20])
    logged = fmlib.summarize_flow_log(records, IF_A)
    mismatches = diff_flows(truth.per_flow, logged)
    assert not mismatches, "flows differ between capture and flow log:\n" + "\n".join(mismatches)
    ports = {k.dport for k in logged if k.direction == "transmit" and k.protocol == 6}
    assert {server_port, tcp6_port} <= ports, ports
    # The socket hooks (on the cgroup2 root mounted from the host) saw the client's connection.
    conns = fmlib.read_flow_log(str(log), "connection")
    assert any(r.get("event") == "close" and r.get("remote_port") == server_port for r in conns), conns[:10]


def test_restart_of_the_pod_adopts_and_loses_nothing(netpair, containers, capture, tmp_path):
    """The DaemonSet's --persist under runc: a container stops during a TCP
    stream, the next starts 3 s later on the node's bpffs mount (the pod's
    /sys/fs/bpf volume) and adopts; the two flow logs together equal the
    capture. Then `flowmeterd uninstall` in a container with the same three
    capabilities removes the pins and links."""
    from test_persist import assert_exact

    pair = netpair
    pair.set_offloads(False)
    pin_dir = f"/sys/fs/bpf/fm-image-test-{os.getpid()}-{next(_ids)}"
    flags = ["--interfaces", IF_A, "--interval", "1s", "--hooks", "off", "--persist", "--pin-dir", pin_dir,
             "--flow-log", "/run/flowmeter/flows.jsonl"]
    cap = capture(pair, pair.a, IF_A)
    try:
        first = containers(pair.a, *flags, "--metrics-listen", f"127.0.0.1:{unique_port()}")
        d1 = first.start(tmp_path).wait_ready()
        port = unique_port()
        srv = pair.server(pair.b, "tcp-server", V4_B, str(port))
        client = pair.popen(pair.a, "python3", str(Path(__file__).parent / "nettool.py"), "tcp-stream", V4_B, str(port), "7", "4096")
        time.sleep(2)
        assert d1.terminate() == 0, d1.stderr
        assert "left attached and counting for the next start" in d1.stderr, d1.stderr
        log1 = tmp_path / "first.jsonl"
        shutil.copy(first.run_dir / "flows.jsonl", log1)
        assert {"abi", "flows_a", f"tcx_{if_index(pair)}_ingress"} <= set(os.listdir(pin_dir)), os.listdir(pin_dir)
        time.sleep(3)
        second = containers(pair.a, *flags, "--metrics-listen", f"127.0.0.1:{unique_port()}")
        d2 = second.start(tmp_path).wait_ready()
        assert "attachments_adopted=2" in d2.stderr, d2.stderr
        out, _ = client.communicate(timeout=60)
        assert client.returncode == 0 and int(pair.finish(srv)) == int(out)
        time.sleep(1.5)
        cap.stop()
        assert d2.terminate() == 0, d2.stderr
        log2 = tmp_path / "second.jsonl"
        shutil.copy(second.run_dir / "flows.jsonl", log2)
        assert_exact(cap.path, (log1, log2))
        p = containers(pair.a, "uninstall", "--pin-dir", pin_dir).run()
        assert p.returncode == 0, p.stderr
        assert "removed 2 TCX link(s)" in p.stdout, p.stdout
        assert not os.path.exists(pin_dir), os.listdir(pin_dir)
    finally:
        if os.path.exists(pin_dir):
            subprocess.run(["ip", "netns", "exec", pair.a, os.environ.get("FLOWMETER_BIN", str(REPO / ".build/debug/flowmeterd")),
                            "uninstall", "--pin-dir", pin_dir], capture_output=True)
            shutil.rmtree(pin_dir, ignore_errors=True)


def if_index(pair) -> int:
    return int(pair.run(pair.a, "cat", f"/sys/class/net/{IF_A}/ifindex").stdout)
