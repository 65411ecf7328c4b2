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
from conftest import IF_A, REPO, V4_A, V4_B, V6_A, V6_B, Daemon, scrape, unique_port, wait_for

IMAGE = "docker.io/library/fm-pod:test"
CHECKOUT_UID = "7a1c2b3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
LEDGER_UID = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"

# Once CTL/listen exists, serves connections on PORT until killed: reads each
# to EOF, answers a third of what it got (so each connection's sizes are the
# client's choice). It listens only when told: a socket opened before
# flowmeterd has no owner, nor have the connections it accepts.
SERVER = r"""
import os, socket, sys, time
port, ctl = int(sys.argv[1]), sys.argv[2]
while not os.path.exists(f"{ctl}/listen"):
    time.sleep(0.05)
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", port)); l.listen(8)
while True:
    c, _ = l.accept(); c.settimeout(60)
    got = 0
    while True:
        b = c.recv(65536)
        if not b: break
        got += len(b)
    c.sendall(b"s" * (got // 3))
    c.close()
"""

# Connects once per trigger file CTL/go-TAG-N (its text: the bytes to send),
# reads to EOF, then writes CTL/done-TAG-N with what it got.
CLIENT = r"""
import os, socket, sys, time
addr, port, ctl, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
i = 0
while True:
    go = f"{ctl}/go-{tag}-{i}"
    deadline = time.time() + 300
    while not os.path.exists(go):
        assert time.time() < deadline, "no trigger"
        time.sleep(0.05)
    time.sleep(0.05)
    up = int(open(go).read())
    s = socket.create_connection((addr, port), timeout=30)
    s.sendall(b"c" * up)
    s.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        b = s.recv(65536)
        if not b: break
        got += len(b)
    s.close()
    open(f"{ctl}/done-{tag}-{i}", "w").write(str(got))
    i += 1
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
        self.apps: dict[str, str] = {}

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

    def start_sandbox(self) -> None:
        # The sandbox holds the pod's labels and its network namespace, as the pause container does.
        sandbox_labels = [a for k, v in self.labels.items() for a in ("--label", f"{k}={v}")]
        self.runtime.ctr("run", "-d", "--label", "io.cri-containerd.kind=sandbox", *self.kubelet_labels(),
                         *sandbox_labels, "--cgroup", self.cgroup(self.sandbox),
                         "--with-ns", f"network:/run/netns/{self.netns}", IMAGE, self.sandbox)

    def start(self, container: str, ctl: Path, *cmd: str) -> None:
        """An app container of the pod, running cmd with the host's /usr and the control directory."""
        cid = self.apps[container] = container_id()
        self.runtime.ctr("run", "-d", "--label", "io.cri-containerd.kind=container", *self.kubelet_labels(),
                         "--label", f"io.kubernetes.container.name={container}",
                         "--cgroup", self.cgroup(cid), "--with-ns", f"network:/run/netns/{self.netns}",
                         "--mount", "type=bind,src=/usr,dst=/usr,options=rbind:ro",
                         "--mount", f"type=bind,src={ctl},dst=/ctl,options=rbind:rw",
                         IMAGE, cid, *cmd)


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


def endpoint_rows(m: fmlib.Exposition) -> set[tuple]:
    """flowmeter_endpoint_info's rows: (address, service, namespace, workload, pod, node)."""
    out = set()
    for (name, labels), v in m.samples.items():
        if name == "flowmeter_endpoint_info":
            assert v == 1
            d = dict(labels)
            out.add((d["address"], d["service"], d["namespace"], d["workload"], d["pod"], d["node"]))
    return out


def lookups(m: fmlib.Exposition, outcome: str) -> float:
    return m.value("flowmeter_metadata_lookups_total", source="containerd", outcome=outcome) or 0


def pair_bytes(m: fmlib.Exposition, service: str, peer: str, direction: str) -> float | None:
    return m.value("flowmeter_network_io_bytes_total", service=service, peer_service=peer, transport="tcp",
                   direction=direction)


class Shop:
    """The two pods (checkout: containers web and worker; ledger: ledger), the
    control directory and the daemon."""

    def __init__(self, pair, runtime: Containerd, daemons, tmp_path: Path):
        self.pair, self.runtime = pair, runtime
        self.ctl = tmp_path / "ctl"
        self.ctl.mkdir()
        self.port = unique_port()
        self.metrics_port = unique_port()
        self.flow_log = tmp_path / "flows.jsonl"
        self.daemons, self.tmp = daemons, tmp_path
        self.daemon = None
        self.count: dict[str, int] = {}
        self.checkout = Pod(runtime, pair.a, "shop", "checkout-7c9d5b8f6d-x2x7q", CHECKOUT_UID, "burstable", True,
                            {"pod-template-hash": "7c9d5b8f6d", "app": "checkout"})
        self.ledger = Pod(runtime, pair.b, "shop", "ledger-0", LEDGER_UID, "besteffort", False,
                          {"controller-revision-hash": "ledger-5d8c7b9f4", "app": "ledger",
                           "statefulset.kubernetes.io/pod-name": "ledger-0"})

    def start_daemon(self):
        self.daemon = self.daemons(self.pair.a, "--interfaces", IF_A, "--interval", "1s",
                                   "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
                                   "--flow-log", str(self.flow_log), "--state-dir", str(self.tmp / "state"),
                                   "--containerd-socket", self.runtime.socket, "--node-name", "node-a")
        self.daemon.wait_ready()

    def start_pods(self, clients=("web",)) -> None:
        self.ledger.start_sandbox()
        self.checkout.start_sandbox()
        self.ledger.start("ledger", self.ctl, "/usr/bin/python3", "-c", SERVER, str(self.port), "/ctl")
        for c in clients:
            self.checkout.start(c, self.ctl, "/usr/bin/python3", "-c", CLIENT, V4_B, str(self.port), "/ctl", c)

    def listen(self) -> None:
        """The ledger starts listening (after the daemon started)."""
        (self.ctl / "listen").write_text("")

    def connect(self, client: str, up: int) -> None:
        """Client container `client` makes one connection sending `up` bytes; waits for its end."""
        i = self.count.get(client, 0)
        self.count[client] = i + 1
        tmp = self.ctl / f".go-{client}-{i}"
        tmp.write_text(str(up))
        tmp.rename(self.ctl / f"go-{client}-{i}")
        done = self.ctl / f"done-{client}-{i}"
        wait_for(done.exists, timeout=60, what=f"connection {i} of the {client} container")
        assert int(done.read_text()) == up // 3

    def metrics(self) -> fmlib.Exposition:
        return fmlib.parse_exposition(scrape(self.pair, self.pair.a, self.metrics_port)[1])

    def wait_bytes(self, service: str, peer: str, up: int) -> fmlib.Exposition:
        """Waits until the pair shows `up` bytes sent by service and up // 3 back, from both ends."""
        def settled():
            m = self.metrics()
            return (pair_bytes(m, service, peer, "transmit") == up and pair_bytes(m, service, peer, "receive") == up // 3
                    and pair_bytes(m, peer, service, "transmit") == up // 3 and pair_bytes(m, peer, service, "receive") == up)
        wait_for(settled, timeout=20, interval=0.5, what=f"{up} bytes from {service} to {peer}, {up // 3} back")
        return self.metrics()

    def wait_lookups(self, outcome: str, at_least: float) -> None:
        try:
            wait_for(lambda: lookups(self.metrics(), outcome) >= at_least, timeout=20, interval=0.2,
                     what=f"{at_least} lookups with outcome {outcome}")
        except AssertionError as e:
            body = scrape(self.pair, self.pair.a, self.metrics_port)[1]
            raise AssertionError(f"{e}; metrics:\n" + "\n".join(
                l for l in body.splitlines() if "lookups" in l or "network_io_bytes" in l)) from None


def test_pods_named_by_namespace_and_workload(netpair, containerd, daemons, tmp_path):
    up = 1_234_567
    shop = Shop(netpair, containerd, daemons, tmp_path)
    shop.start_daemon()
    shop.start_pods()
    shop.listen()
    # Warm-up: its sockets ask for both containers' names (pod:<uid> meanwhile).
    shop.connect("web", 1)
    shop.wait_lookups("found", 2)
    time.sleep(1.5)  # a pass takes the new names (the generation) before the measured connection
    shop.connect("web", up)
    m = shop.wait_bytes("shop/checkout", "shop/ledger", up)
    # No lookup failed; the warm-up went under pod:<uid> (pending), the measured one did not.
    assert lookups(m, "unavailable") == 0 and lookups(m, "error") == 0 and lookups(m, "not_found") == 0
    assert (pair_bytes(m, f"pod:{CHECKOUT_UID}", f"pod:{LEDGER_UID}", "transmit") or 0) < up

    # Connection records carry the pod, container and workload.
    def closes():
        return [r for r in fmlib.read_flow_log(str(shop.flow_log), kind="connection") if r.get("event") == "close"]
    wait_for(lambda: any(r.get("workload") == "checkout" and r.get("bytes_sent") == up for r in closes()),
             timeout=10, what="the checkout close record")
    client = [r for r in closes() if r.get("workload") == "checkout" and r.get("bytes_sent") == up]
    server = [r for r in closes() if r.get("workload") == "ledger" and r.get("bytes_received") == up]
    assert len(client) == 1 and len(server) == 1, closes()
    c, s = client[0], server[0]
    assert (c["namespace"], c["pod"], c["container"], c["workload"], c["workload_kind"], c["node"]) == \
        ("shop", "checkout-7c9d5b8f6d-x2x7q", "web", "checkout", "Deployment", "node-a")
    assert (s["namespace"], s["pod"], s["container"], s["workload"], s["workload_kind"], s["node"]) == \
        ("shop", "ledger-0", "ledger", "ledger", "StatefulSet", "node-a")
    assert s["bytes_sent"] == up // 3 and c["bytes_received"] == up // 3

    # Every address of the named pods, read from their network namespaces;
    # the node's (namespace A's) are the checkout pod's here, and the pod's name wins.
    ledger_rows = {(a, "shop/ledger", "shop", "ledger", "ledger-0", "node-a") for a in (V4_B, V6_B)}
    checkout_rows = {(a, "shop/checkout", "shop", "checkout", "checkout-7c9d5b8f6d-x2x7q", "node-a") for a in (V4_A, V6_A)}
    wait_for(lambda: endpoint_rows(shop.metrics()) == ledger_rows | checkout_rows, timeout=15, interval=0.5,
             what=f"endpoint_info rows {ledger_rows | checkout_rows}")
    # A pod that goes away takes its rows with it at the next read (every 5 s).
    shop.runtime.ctr("tasks", "kill", "-s", "KILL", shop.ledger.apps["ledger"])
    shop.runtime.ctr("tasks", "kill", "-s", "KILL", shop.ledger.sandbox)
    wait_for(lambda: endpoint_rows(shop.metrics()) == checkout_rows, timeout=15, interval=0.5,
             what="the ledger's endpoint_info rows to vanish")


def test_runtime_down_at_start_and_killed_mid_run(netpair, containerd, daemons, tmp_path):
    """Counting never stops for the runtime: while it is down, pods are named
    pod:<uid> and the failures are counted; when it is back, the names are."""
    shop = Shop(netpair, containerd, daemons, tmp_path)
    shop.start_pods(clients=("web", "worker"))
    checkout, ledger = f"pod:{CHECKOUT_UID}", f"pod:{LEDGER_UID}"

    # Down at start: the shims keep the containers running.
    containerd.stop()
    shop.start_daemon()
    shop.listen()
    if not os.path.exists(containerd.socket):
        assert f"no containerd socket at {containerd.socket}" in shop.daemon.stderr
    shop.connect("web", 700_001)
    shop.wait_lookups("unavailable", 2)
    m = shop.wait_bytes(checkout, ledger, 700_001)
    assert lookups(m, "found") == 0

    # Back: after the retry time the next connection asks again, and names come back.
    containerd.start()
    time.sleep(2.5)
    shop.connect("web", 1)
    shop.wait_lookups("found", 2)
    time.sleep(1.5)
    shop.connect("web", 300_003)
    shop.wait_bytes("shop/checkout", "shop/ledger", 300_003)

    # Killed mid-run: known names stay; a container not asked about yet (worker) falls back, counted.
    failed_before = lookups(shop.metrics(), "unavailable")
    containerd.stop(signal.SIGKILL)
    shop.connect("worker", 90_000)
    shop.wait_bytes(checkout, "shop/ledger", 90_000)
    shop.wait_lookups("unavailable", failed_before + 1)
    shop.connect("web", 60_000)
    shop.wait_bytes("shop/checkout", "shop/ledger", 300_003 + 60_000)

    # Back again: the worker is named too.
    containerd.start()
    time.sleep(2.5)
    shop.connect("worker", 1)
    shop.wait_lookups("found", 3)
    time.sleep(1.5)
    shop.connect("worker", 33_000)
    shop.wait_bytes("shop/checkout", "shop/ledger", 300_003 + 60_000 + 33_000)
    records = [r for r in fmlib.read_flow_log(str(shop.flow_log), kind="connection")
               if r.get("event") == "close" and r.get("bytes_sent") == 33_000]
    assert [(r.get("container"), r.get("workload")) for r in records] == [("worker", "checkout")]


def test_peer_on_another_node_named_through_prometheus(netpair, containerd, daemons, tmp_path):
    """Two "nodes": namespaces A and B, each with its own containerd, pod and
    flowmeterd (its own veth, its own metrics address), scraped by a real
    Prometheus that loads the shipped recording rules. checkout (node-a)
    sends to ledger (node-b); node-a knows ledger only as an address, node-b
    exports that address as shop/ledger, and the rules name the pair
    shop/checkout -> shop/ledger.

    Both "nodes" share this machine's kernel, so each flowmeterd sees the
    other's sockets too. To make ledger an address to node-a, as it would be
    from another kernel, ledger listens after node-b's flowmeterd started and
    before node-a's: node-a has no owner for its sockets (a socket older than
    it), and with series.peer_addresses such an unnamed local endpoint is
    labelled with its address, as a remote one is."""
    from test_services import fetch
    import urllib.parse

    runtime_b = Containerd(tmp_path / "node-b")
    (tmp_path / "node-b").mkdir()
    runtime_b.start()
    prom = None
    try:
        runtime_b.import_image()
        ctl = tmp_path / "ctl"
        ctl.mkdir()
        port, metrics_a, metrics_b, pport = unique_port(), unique_port(), unique_port(), unique_port()
        checkout = Pod(containerd, netpair.a, "shop", "checkout-7c9d5b8f6d-x2x7q", CHECKOUT_UID, "burstable", True,
                       {"pod-template-hash": "7c9d5b8f6d"})
        ledger = Pod(runtime_b, netpair.b, "shop", "ledger-0", LEDGER_UID, "besteffort", False,
                     {"controller-revision-hash": "ledger-5d8c7b9f4", "statefulset.kubernetes.io/pod-name": "ledger-0"})

        def node_daemon(ns, dev, addr, mport, runtime, node):
            d = daemons(ns, "--interfaces", dev, "--interval", "1s", "--metrics-listen", f"{addr}:{mport}",
                        "--state-dir", str(tmp_path / f"state-{node}"), "--containerd-socket", runtime.socket,
                        "--node-name", node, "--peer-addresses")
            d.wait_ready()
            return d

        node_daemon(netpair.b, "veth-b", V4_B, metrics_b, runtime_b, "node-b")
        ledger.start_sandbox()
        ledger.start("ledger", ctl, "/usr/bin/python3", "-c", SERVER, str(port), "/ctl")
        (ctl / "listen").write_text("")
        # The listener is up (a connect from namespace B's own side would be
        # counted; wait on the socket table instead).
        wait_for(lambda: f":{port:04X}" in netpair.run(netpair.b, "cat", "/proc/net/tcp").stdout, timeout=20,
                 what="the ledger to listen")
        node_daemon(netpair.a, IF_A, V4_A, metrics_a, containerd, "node-a")
        checkout.start_sandbox()
        checkout.start("web", ctl, "/usr/bin/python3", "-c", CLIENT, V4_B, str(port), "/ctl", "web")

        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{REPO / 'deploy' / 'prometheus' / 'flowmeter-rules.yaml'}']\n"
            "scrape_configs:\n  - job_name: flowmeter\n"
            f"    static_configs:\n      - targets: ['{V4_A}:{metrics_a}', '{V4_B}:{metrics_b}']\n")
        prom = netpair.popen(netpair.a, "prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}")

        def query(expr):
            try:
                body = json.loads(fetch(netpair, f"http://127.0.0.1:{pport}/api/v1/query?"
                                        + urllib.parse.urlencode({"query": expr}))[1])
                return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in body["data"]["result"]}
            except (AssertionError, ValueError, KeyError):
                return {}

        # Warm-up (checkout's lookup on node-a), then the measured connection.
        def connect(i, up):
            (ctl / f".go-web-{i}").write_text(str(up))
            (ctl / f".go-web-{i}").rename(ctl / f"go-web-{i}")
            wait_for((ctl / f"done-web-{i}").exists, timeout=60, what=f"connection {i}")
            assert int((ctl / f"done-web-{i}").read_text()) == up // 3
        connect(0, 1)
        found_a = f'sum(flowmeter_metadata_lookups_total{{outcome="found",instance="{V4_A}:{metrics_a}"}})'
        wait_for(lambda: query(found_a).get((), 0) >= 1, timeout=30, interval=0.5, what="node-a to name checkout")
        time.sleep(1.5)
        up = 456_789
        connect(1, up)

        # node-a's own view: checkout to an address.
        key = lambda **kw: tuple(sorted(kw.items()))  # noqa: E731
        raw = 'sum by (instance, service, peer_service, direction) (flowmeter_network_io_bytes_total{transport="tcp"})'
        wait_for(lambda: query(raw).get(key(instance=f"{V4_A}:{metrics_a}", service="shop/checkout",
                                            peer_service=V4_B, direction="transmit")) == up,
                 timeout=30, interval=1, what="node-a's checkout -> 10.200.0.2 bytes in Prometheus")
        # node-b's endpoint_info names the address.
        info = query(f'flowmeter_endpoint_info{{address="{V4_B}"}}')
        assert [dict(k)["service"] for k in info] == ["shop/ledger"] and all(dict(k)["node"] == "node-b" for k in info)
        # The shipped rules join them: shop/checkout -> shop/ledger, exact bytes each way.
        rule = 'flowmeter:network_io_bytes:sum{service="shop/checkout",peer_service="shop/ledger"}'
        wait_for(lambda: query(rule).get(key(__name__="flowmeter:network_io_bytes:sum", service="shop/checkout",
                                             peer_service="shop/ledger", transport="tcp", direction="transmit")) == up,
                 timeout=30, interval=1, what="the recording rule to name the cross-node pair")
        got = query(rule)
        assert got[key(__name__="flowmeter:network_io_bytes:sum", service="shop/checkout", peer_service="shop/ledger",
                       transport="tcp", direction="receive")] == up // 3
        assert len(got) == 2
    finally:
        if prom is not None and prom.poll() is None:
            prom.terminate()
            prom.wait(timeout=20)
        runtime_b.cleanup()


class Podman:
    """podman's Docker-compatible API service (`podman system service`) with
    storage of the test's own. Root here lacks CAP_SYS_RESOURCE and podman's
    default rlimits are above the hard limits, so containers get lower ones."""

    def __init__(self, workdir: Path):
        self.dir = Path(f"/run/fm-podman-{os.getpid()}-{unique_port()}")
        self.dir.mkdir(parents=True)
        self.socket = str(self.dir / "docker.sock")
        self.base = ["podman", "--root", str(self.dir / "root"), "--runroot", str(self.dir / "run"),
                     "--cgroup-manager", "cgroupfs", "--events-backend", "none"]
        self.log = workdir / "podman.log"
        self.proc = None
        self.workdir = workdir

    def podman(self, *args: str) -> str:
        r = subprocess.run([*self.base, *args], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {r.stderr}")
        return r.stdout.strip()

    def start(self) -> "Podman":
        rootfs = self.workdir / "podman-rootfs"
        rootfs.mkdir()
        shutil.copy2("/bin/busybox", rootfs / "busybox")
        for d in ("usr", "tmp", "proc", "sys", "dev", "etc", "ctl"):
            (rootfs / d).mkdir(exist_ok=True)
        for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")):
            (rootfs / link).symlink_to(target)
        tar = self.workdir / "podman-rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
        self.podman("import", str(tar), "localhost/fm-pod:test")
        self.proc = subprocess.Popen([*self.base, "system", "service", "--time=0", f"unix://{self.socket}"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        wait_for(lambda: os.path.exists(self.socket), timeout=20, what="podman's API socket")
        return self

    def run(self, pod: "Pod", container: str | None, ctl: Path, *cmd: str, sandbox_id: str | None = None) -> str:
        """A container of `pod` as cri-dockerd makes them: the sandbox (container None) or an app container."""
        labels = {"io.kubernetes.pod.name": pod.name, "io.kubernetes.pod.namespace": pod.namespace,
                  "io.kubernetes.pod.uid": pod.uid}
        if container is None:
            labels |= {"io.kubernetes.docker.type": "podsandbox", **pod.labels}
        else:
            labels |= {"io.kubernetes.docker.type": "container", "io.kubernetes.container.name": container,
                       "io.kubernetes.sandbox.id": sandbox_id}
        args = ["run", "-d", "--cgroup-parent", f"/kubepods/{pod.qos}/pod{pod.uid}",
                "--network", f"ns:/run/netns/{pod.netns}", "--ulimit", "nofile=1024:1024",
                "--ulimit", "nproc=1024:1024", "-v", "/usr:/usr:ro", "-v", f"{ctl}:/ctl"]
        for k, v in labels.items():
            args += ["--label", f"{k}={v}"]
        return self.podman(*args, "localhost/fm-pod:test", *(cmd or ("/busybox", "sleep", "3600")))

    def cleanup(self) -> None:
        subprocess.run([*self.base, "rm", "-af", "-t", "0"], capture_output=True, timeout=120)
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        subprocess.run([*self.base, "system", "reset", "-f"], capture_output=True, timeout=120)
        subprocess.run(["umount", "-R", str(self.dir / "root")], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def test_pod_named_through_the_docker_api_of_podman(netpair, containerd, daemons, tmp_path):
    """ledger runs under podman (cri-dockerd's labels, its sandbox named by
    io.kubernetes.sandbox.id, cgroupfs layout libpod-<id>), checkout under
    containerd; one flowmeterd asks both, and names the pair exactly."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (tools/test installs it)")
    podman = Podman(tmp_path).start()
    try:
        ctl = tmp_path / "ctl"
        ctl.mkdir()
        port, mport = unique_port(), unique_port()
        d = daemons(netpair.a, "--interfaces", IF_A, "--interval", "1s", "--metrics-listen", f"127.0.0.1:{mport}",
                    "--state-dir", str(tmp_path / "state"), "--containerd-socket", containerd.socket,
                    "--docker-socket", podman.socket, "--node-name", "node-a")
        d.wait_ready()
        ledger = Pod(containerd, netpair.b, "shop", "ledger-0", LEDGER_UID, "besteffort", False,
                     {"controller-revision-hash": "ledger-5d8c7b9f4", "statefulset.kubernetes.io/pod-name": "ledger-0"})
        sandbox = podman.run(ledger, None, ctl)
        podman.run(ledger, "ledger", ctl, "/usr/bin/python3", "-c", SERVER, str(port), "/ctl", sandbox_id=sandbox)
        checkout = Pod(containerd, netpair.a, "shop", "checkout-7c9d5b8f6d-x2x7q", CHECKOUT_UID, "burstable", True,
                       {"pod-template-hash": "7c9d5b8f6d"})
        checkout.start_sandbox()
        checkout.start("web", ctl, "/usr/bin/python3", "-c", CLIENT, V4_B, str(port), "/ctl", "web")
        (ctl / "listen").write_text("")

        def metrics():
            return fmlib.parse_exposition(scrape(netpair, netpair.a, mport)[1])

        def connect(i, up):
            (ctl / f".go-web-{i}").write_text(str(up))
            (ctl / f".go-web-{i}").rename(ctl / f"go-web-{i}")
            wait_for((ctl / f"done-web-{i}").exists, timeout=60, what=f"connection {i}")
        connect(0, 1)
        wait_for(lambda: (metrics().value("flowmeter_metadata_lookups_total", source="docker", outcome="found") or 0) >= 1
                 and (metrics().value("flowmeter_metadata_lookups_total", source="containerd", outcome="found") or 0) >= 1,
                 timeout=20, interval=0.3, what="checkout named by containerd and ledger by podman's Docker API")
        time.sleep(1.5)
        up = 222_222
        connect(1, up)

        def settled():
            m = metrics()
            return (pair_bytes(m, "shop/checkout", "shop/ledger", "transmit") == up
                    and pair_bytes(m, "shop/ledger", "shop/checkout", "transmit") == up // 3)
        wait_for(settled, timeout=20, interval=0.5, what="the pair's bytes under the workloads' names")
        m = metrics()
        assert pair_bytes(m, "shop/checkout", "shop/ledger", "receive") == up // 3
        assert pair_bytes(m, "shop/ledger", "shop/checkout", "receive") == up
        # ledger is not containerd's: it said so, and the Docker API named it.
        assert (m.value("flowmeter_metadata_lookups_total", source="containerd", outcome="not_found") or 0) >= 1
    finally:
        podman.cleanup()
