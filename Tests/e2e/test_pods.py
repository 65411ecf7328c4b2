"""Kubernetes identity end to end, against a real containerd (Debian's, with
runc): two "pods" made the way the kubelet's CRI plugin makes them, a sandbox
container and an app container each, with the kubelet's labels, in cgroups
under kubepods (one per cgroup-driver layout: cgroupfs and systemd), in two
network namespaces joined by a veth:

- shop/checkout-7c9d5b8f6d-x2x7q (Deployment checkout, pod-template-hash
  7c9d5b8f6d), systemd layout, burstable;
- shop/ledger-0 (StatefulSet ledger), cgroupfs layout, besteffort.

The test runs its own containerd (own socket, root and state under
/run/fm-ctrd-*), so it can stop and kill it, and leaves the machine's alone.
The image is built here from a static binary (busybox-static) with umoci and
imported with `ctr images import`; no registry. The app containers run the
host's python3 (its /usr bind-mounted read-only) for exact TCP transfers.

Lookups run off the collector's path: the first connection of a new
container is named pod:<uid> while its lookup is pending. So each test first
makes a warm-up connection, waits for the lookups to be counted, then makes
the measured one.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import fmlib
from conftest import IF_A, V4_B, Daemon, scrape, unique_port, wait_for

IMAGE = "docker.io/library/fm-pod:test"
CHECKOUT_UID = "7a1c2b3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
LEDGER_UID = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"

# Serves `conns` connections on PORT: reads to EOF, answers DOWN bytes.
SERVER = r"""
import socket, sys
port, down, conns = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", port)); l.listen(8); l.settimeout(120)
for i in range(conns):
    c, _ = l.accept(); c.settimeout(60)
    got = 0
    while True:
        b = c.recv(65536)
        if not b: break
        got += len(b)
    c.sendall(b"s" * (down if i == conns - 1 else 1))
    c.close()
    print("served", got, flush=True)
"""

# Connects once per trigger file (CTL/go-N appears): sends UP bytes (1 on
# warm-ups), reads to EOF, then writes CTL/done-N with what it got.
CLIENT = r"""
import os, socket, sys, time
addr, port, up, n, ctl = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
for i in range(n):
    deadline = time.time() + 120
    while not os.path.exists(f"{ctl}/go-{i}"):
        assert time.time() < deadline, "no trigger"
        time.sleep(0.05)
    s = socket.create_connection((addr, port), timeout=30)
    s.sendall(b"c" * (up if i == n - 1 else 1))
    s.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        b = s.recv(65536)
        if not b: break
        got += len(b)
    s.close()
    open(f"{ctl}/done-{i}", "w").write(str(got))
"""


class Containerd:
    """A containerd of the test's own, with the pod image imported."""

    def __init__(self, workdir: Path):
        # A unix socket path has at most 107 bytes: not under pytest's tmp_path.
        self.dir = Path(f"/run/fm-ctrd-{os.getpid()}-{unique_port()}")
        self.dir.mkdir(parents=True)
        self.socket = str(self.dir / "containerd.sock")
        self.config = self.dir / "config.toml"
        # The CRI plugin is off: the test plays the kubelet with ctr.
        self.config.write_text(
            "version = 2\n"
            f'root = "{self.dir}/root"\n'
            f'state = "{self.dir}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n')
        self.log = workdir / "containerd.log"
        self.proc: subprocess.Popen | None = None
        self.workdir = workdir

    def start(self) -> "Containerd":
        self.proc = subprocess.Popen(["containerd", "--config", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "a"))
        wait_for(lambda: self.ctr("version", check=False).returncode == 0, timeout=20,
                 what="containerd to answer")
        return self

    def stop(self, sig=signal.SIGTERM) -> None:
        """Stops containerd; the containers' shims keep them running."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["ctr", "--address", self.socket, "-n", "k8s.io", *args],
                           capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)}: {r.stderr}")
        return r

    def import_image(self) -> None:
        """The pod image: busybox-static as /busybox (the sandbox's `sleep`),
        and merged-/usr symlinks so a bind-mounted /usr runs."""
        work = self.workdir / "image"
        layout, bundle = work / "layout", work / "bundle"
        work.mkdir()
        subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
        subprocess.run(["umoci", "new", "--image", f"{layout}:pod"], check=True)
        subprocess.run(["umoci", "unpack", "--image", f"{layout}:pod", str(bundle)], check=True,
                       stdout=subprocess.DEVNULL)
        rootfs = bundle / "rootfs"
        shutil.copy2("/bin/busybox", rootfs / "busybox")
        for d in ("usr", "tmp", "proc", "sys", "dev", "etc", "ctl"):
            (rootfs / d).mkdir(exist_ok=True)
        for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")):
            (rootfs / link).symlink_to(target)
        subprocess.run(["umoci", "repack", "--image", f"{layout}:pod", str(bundle)], check=True)
        subprocess.run(["umoci", "config", "--image", f"{layout}:pod", "--config.entrypoint", "/busybox",
                        "--config.cmd", "sleep", "--config.cmd", "3600"], check=True)
        index = json.loads((layout / "index.json").read_text())
        index["manifests"][0].setdefault("annotations", {})["io.containerd.image.name"] = IMAGE
        (layout / "index.json").write_text(json.dumps(index))
        tar = work / "pod.tar"
        subprocess.run(["tar", "-C", str(layout), "-cf", str(tar), "oci-layout", "index.json", "blobs"], check=True)
        self.ctr("images", "import", str(tar))

    def cleanup(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        for t in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "kill", "-s", "KILL", t, check=False)
        deadline = time.monotonic() + 20
        for c in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            while self.ctr("tasks", "delete", c, check=False).returncode != 0 and time.monotonic() < deadline:
                if "not found" in self.ctr("tasks", "ls", check=False).stdout:
                    break
                if c not in self.ctr("tasks", "ls", "-q", check=False).stdout:
                    break
                time.sleep(0.2)
            self.ctr("containers", "delete", c, check=False)
        self.stop()
        subprocess.run(["umount", "-R", str(self.dir / "root")], capture_output=True)
        subprocess.run(["umount", "-R", str(self.dir / "state")], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def container_id() -> str:
    return os.urandom(32).hex()


class Pod:
    """A sandbox and one app container, labelled as the kubelet's CRI plugin does."""

    def __init__(self, runtime: Containerd, netns: str, namespace: str, name: str, uid: str, qos: str,
                 systemd: bool, labels: dict[str, str]):
        self.runtime, self.netns = runtime, netns
        self.namespace, self.name, self.uid = namespace, name, uid
        self.qos, self.systemd, self.labels = qos, systemd, labels
        self.sandbox = container_id()
        self.app = container_id()

    def cgroup(self, cid: str) -> str:
        if self.systemd:
            q = f"kubepods-{self.qos}"
            return (f"/kubepods.slice/{q}.slice/{q}-pod{self.uid.replace('-', '_')}.slice/"
                    f"cri-containerd-{cid}.scope")
        return f"/kubepods/{self.qos}/pod{self.uid}/{cid}"

    def kubelet_labels(self) -> list[str]:
        pod = {"io.kubernetes.pod.name": self.name, "io.kubernetes.pod.namespace": self.namespace,
               "io.kubernetes.pod.uid": self.uid}
        return [a for k, v in pod.items() for a in ("--label", f"{k}={v}")]

    def start(self, container: str, ctl: Path, *cmd: str) -> None:
        # The sandbox holds the pod's labels and its network namespace, as the pause container does.
        sandbox_labels = [a for k, v in self.labels.items() for a in ("--label", f"{k}={v}")]
        self.runtime.ctr("run", "-d", "--label", "io.cri-containerd.kind=sandbox", *self.kubelet_labels(),
                         *sandbox_labels, "--cgroup", self.cgroup(self.sandbox),
                         "--with-ns", f"network:/run/netns/{self.netns}", IMAGE, self.sandbox)
        self.runtime.ctr("run", "-d", "--label", "io.cri-containerd.kind=container", *self.kubelet_labels(),
                         "--label", f"io.kubernetes.container.name={container}",
                         "--cgroup", self.cgroup(self.app), "--with-ns", f"network:/run/netns/{self.netns}",
                         "--mount", "type=bind,src=/usr,dst=/usr,options=rbind:ro",
                         "--mount", f"type=bind,src={ctl},dst=/ctl,options=rbind:rw",
                         IMAGE, self.app, *cmd)


@pytest.fixture
def containerd(flowmeterd, tmp_path):
    for tool in ("containerd", "ctr", "runc", "umoci"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (tools/test installs containerd, runc and umoci)")
    rt = Containerd(tmp_path).start()
    try:
        rt.import_image()
        yield rt
    finally:
        rt.cleanup()


@pytest.fixture
def daemons(flowmeterd, tmp_path):
    """Factory: daemons(ns, *args) starts flowmeterd in network namespace ns
    with nsenter, not `ip netns exec` (conftest's): that remounts /sys, and the
    daemon would not see the cgroup2 mount it reads the pods' cgroup paths
    from. All are killed at teardown, and their stderr printed."""
    started: list[Daemon] = []

    def start(ns: str, *args: str) -> Daemon:
        d = Daemon("nsenter", None, [f"--net=/run/netns/{ns}", flowmeterd, *args], tmp_path,
                   f"flowmeterd-{len(started) + 1}")
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.close()
        print(f"----- {d.name} ({' '.join(d.args)}) exit {d.proc.returncode if d.proc else None} stderr -----")
        print(d.stderr)


def lookups(m: fmlib.Exposition, outcome: str) -> float:
    return m.value("flowmeter_metadata_lookups_total", source="containerd", outcome=outcome) or 0


def pair_bytes(m: fmlib.Exposition, service: str, peer: str, direction: str) -> float | None:
    return m.value("flowmeter_network_io_bytes_total", service=service, peer_service=peer, transport="tcp",
                   direction=direction)


class Shop:
    """The two pods, the control directory and the daemon."""

    def __init__(self, pair, runtime: Containerd, daemons, tmp_path: Path, connections: int, up: int, down: int):
        self.pair, self.runtime = pair, runtime
        self.ctl = tmp_path / "ctl"
        self.ctl.mkdir()
        self.port = unique_port()
        self.metrics_port = unique_port()
        self.flow_log = tmp_path / "flows.jsonl"
        self.daemon = daemons(pair.a, "--interfaces", IF_A, "--interval", "1s",
                              "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
                              "--flow-log", str(self.flow_log), "--state-dir", str(tmp_path / "state"),
                              "--containerd-socket", runtime.socket, "--node-name", "node-a")
        self.checkout = Pod(runtime, pair.a, "shop", "checkout-7c9d5b8f6d-x2x7q", CHECKOUT_UID, "burstable", True,
                            {"pod-template-hash": "7c9d5b8f6d", "app": "checkout"})
        self.ledger = Pod(runtime, pair.b, "shop", "ledger-0", LEDGER_UID, "besteffort", False,
                          {"controller-revision-hash": "ledger-5d8c7b9f4", "app": "ledger",
                           "statefulset.kubernetes.io/pod-name": "ledger-0"})
        self.connections, self.up, self.down = connections, up, down

    def start_pods(self) -> None:
        self.daemon.wait_ready()
        self.ledger.start("ledger", self.ctl, "/usr/bin/python3", "-c", SERVER, str(self.port), str(self.down),
                          str(self.connections))
        self.checkout.start("web", self.ctl, "/usr/bin/python3", "-c", CLIENT, V4_B, str(self.port), str(self.up),
                            str(self.connections), "/ctl")

    def connect(self, i: int) -> int:
        """Triggers the client's connection i and waits for it to end: bytes it received."""
        (self.ctl / f"go-{i}").write_text("")
        done = self.ctl / f"done-{i}"
        wait_for(done.exists, timeout=60, what=f"connection {i} of the checkout pod")
        return int(done.read_text())

    def metrics(self) -> fmlib.Exposition:
        return fmlib.parse_exposition(scrape(self.pair, self.pair.a, self.metrics_port)[1])


def test_pods_named_by_namespace_and_workload(netpair, containerd, daemons, tmp_path):
    up, down = 1_234_567, 345_678
    shop = Shop(netpair, containerd, daemons, tmp_path, connections=2, up=up, down=down)
    shop.start_pods()
    # Warm-up: its sockets ask for both containers' names (pod:<uid> meanwhile).
    assert shop.connect(0) == 1
    wait_for(lambda: lookups(shop.metrics(), "found") >= 2, timeout=20, what="both containers looked up")
    time.sleep(1.5)  # a pass takes the new names (the generation) before the measured connection
    assert shop.connect(1) == down

    def settled():
        m = shop.metrics()
        return (pair_bytes(m, "shop/checkout", "shop/ledger", "transmit") == up
                and pair_bytes(m, "shop/ledger", "shop/checkout", "transmit") == down)
    wait_for(settled, timeout=20, interval=0.5, what="the measured connection's bytes under the workloads' names")
    m = shop.metrics()
    # Exact payload bytes each way, from both ends.
    assert pair_bytes(m, "shop/checkout", "shop/ledger", "transmit") == up
    assert pair_bytes(m, "shop/checkout", "shop/ledger", "receive") == down
    assert pair_bytes(m, "shop/ledger", "shop/checkout", "transmit") == down
    assert pair_bytes(m, "shop/ledger", "shop/checkout", "receive") == up
    # The warm-up went under pod:<uid> (pending), nothing else did; no lookup failed.
    assert lookups(m, "unavailable") == 0 and lookups(m, "error") == 0 and lookups(m, "not_found") == 0

    # Connection records carry the pod, container and workload.
    wait_for(lambda: any(r.get("event") == "close" and r.get("workload") == "checkout"
                         for r in fmlib.read_flow_log(str(shop.flow_log), kind="connection")),
             timeout=10, what="the checkout close record")
    records = fmlib.read_flow_log(str(shop.flow_log), kind="connection")
    client = [r for r in records if r.get("event") == "close" and r.get("workload") == "checkout"
              and r.get("bytes_sent") == up]
    server = [r for r in records if r.get("event") == "close" and r.get("workload") == "ledger"
              and r.get("bytes_sent") == down]
    assert len(client) == 1 and len(server) == 1, records
    c, s = client[0], server[0]
    assert (c["namespace"], c["pod"], c["container"], c["workload"], c["workload_kind"], c["node"]) == \
        ("shop", "checkout-7c9d5b8f6d-x2x7q", "web", "checkout", "Deployment", "node-a")
    assert (s["namespace"], s["pod"], s["container"], s["workload"], s["workload_kind"], s["node"]) == \
        ("shop", "ledger-0", "ledger", "ledger", "StatefulSet", "node-a")
    assert s["bytes_received"] == up and c["bytes_received"] == down
