"""The Kubernetes manifests (deploy/kubernetes, docs/kubernetes.md) render and
are valid.

Needs no root. Renders the kustomization with `kubectl kustomize` (Debian's
kubernetes-client; `kustomize build` if only that is installed; FLOWMETER_KUBECTL
names another kubectl), then validates every rendered object against the
Kubernetes API schema of each release that kubernetes-validate ships, strict:
an unknown field or a value of the wrong type fails. The tests prove the
validator would notice, by mutating a rendered DaemonSet. The PodMonitor's
CRD schema is not available offline: its fields are checked against a schema
written here from the Prometheus Operator's API reference, strict on the
fields it uses, with the Kubernetes parts (metadata, label selector) from the
Kubernetes schema. tools/test installs both the renderer and the validator.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "kubernetes"
PODMONITOR = BASE / "prometheus-operator"
NAMESPACE = "flowmeter"
POD_LABELS = {"app.kubernetes.io/name": "flowmeter", "app.kubernetes.io/component": "node-agent"}


from unprivileged import _privileged, _remove_stale_namespaces  # noqa: F401  (these tests need no root)


try:
    import yaml  # PyYAML, which kubernetes-validate brings
except ImportError:
    yaml = None


def validator():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed (tools/test installs it: pip install kubernetes-validate==1.37.0)")
    return kubernetes_validate


def renderer() -> list[str]:
    kubectl = os.environ.get("FLOWMETER_KUBECTL") or shutil.which("kubectl")
    if kubectl:
        return [kubectl, "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    pytest.fail("neither kubectl nor kustomize is installed (tools/test installs Debian's kubernetes-client)")


def render(path: Path) -> list[dict]:
    if yaml is None:
        pytest.fail("PyYAML is not installed (tools/test installs kubernetes-validate, which brings it)")
    p = subprocess.run([*renderer(), str(path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"{' '.join(renderer())} {path} failed:\n{p.stderr}"
    return [d for d in yaml.safe_load_all(p.stdout) if d]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(BASE)


@pytest.fixture(scope="module")
def podmonitor_objects() -> list[dict]:
    return render(PODMONITOR)


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def versions() -> list[str]:
    """Every Kubernetes release kubernetes-validate has schemas of (one per minor)."""
    try:
        import kubernetes_validate.utils as u
    except ImportError:
        return ["latest"]
    return u.all_versions()


# ---------------------------------------------------------------------------
# schema


@pytest.mark.parametrize("version", versions())
def test_every_object_validates_strictly(base, version):
    kv = validator()
    if version == "latest":
        version = kv.utils.latest_version()
    errors = []
    for obj in base:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")
        except kv.utils.SchemaNotFoundError as e:
            errors.append(e.message)
    assert not errors, f"against Kubernetes {version}:\n" + "\n".join(errors)


def rejected(obj: dict) -> str | None:
    """The validator's complaint about obj (latest Kubernetes, strict), or None."""
    kv = validator()
    try:
        kv.validate(obj, kv.utils.latest_version(), strict=True)
    except kv.ValidationError as e:
        return f"{'.'.join(map(str, e.path))}: {e.message}"
    return None


def test_validator_rejects_an_unknown_field(base):
    ds = one(base, "DaemonSet")
    assert rejected(ds) is None
    for where, mutate in [
        ("spec", lambda d: d["spec"].__setitem__("bogusField", 1)),
        ("securityContext", lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"]
         .__setitem__("privilegedd", False)),
        ("hostPath volume", lambda d: next(v for v in d["spec"]["template"]["spec"]["volumes"] if "hostPath" in v)
         ["hostPath"].__setitem__("readOnly", True)),
        ("probe", lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].__setitem__("path", "/readyz")),
    ]:
        bad = copy.deepcopy(ds)
        mutate(bad)
        why = rejected(bad)
        assert why is not None, f"an unknown field in the {where} passed"
        assert "Additional properties are not allowed" in why, why


def test_validator_rejects_a_wrong_type(base):
    ds = one(base, "DaemonSet")
    for where, mutate in [
        ("hostNetwork as a string", lambda d: d["spec"]["template"]["spec"].__setitem__("hostNetwork", "true")),
        ("containerPort as a string", lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0]
         .__setitem__("containerPort", "9810")),
        ("args as a string", lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("args", "--config x")),
        ("capabilities as a string", lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"]
         ["capabilities"].__setitem__("add", "BPF")),
    ]:
        bad = copy.deepcopy(ds)
        mutate(bad)
        why = rejected(bad)
        assert why is not None, f"{where} passed"
        assert "is not of type" in why, why


# ---------------------------------------------------------------------------
# what the objects say


def test_base_objects(base):
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in base)
    config_name = one(base, "ConfigMap")["metadata"]["name"]
    assert re.fullmatch(r"flowmeter-config-[a-z0-9]{10}", config_name), config_name
    assert kinds == sorted([("Namespace", NAMESPACE), ("ServiceAccount", "flowmeter"), ("ConfigMap", config_name),
                            ("Service", "flowmeter-metrics"), ("DaemonSet", "flowmeter")]), kinds
    for o in base:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == NAMESPACE, o["metadata"]
    assert not any(o["kind"] == "PodMonitor" for o in base), "the PodMonitor belongs to the optional overlay"
    labels = one(base, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged", labels
    sa = one(base, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False, sa
    assert not any(o["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding") for o in base)


def version() -> str:
    text = (REPO / "Sources" / "FlowmeterCore" / "Version.swift").read_text()
    return re.search(r'current = "([^"]+)"', text).group(1)


def test_daemonset(base):
    ds = one(base, "DaemonSet")
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["template"]["metadata"]["labels"] == POD_LABELS
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    rolling = spec["updateStrategy"]["rollingUpdate"]
    assert rolling.get("maxUnavailable") == 1 and "maxSurge" not in rolling, rolling
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["serviceAccountName"] == one(base, "ServiceAccount")["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False

    [c] = pod["containers"]
    assert c["image"] == f"flowmeter:{version()}", c["image"]
    assert c["imagePullPolicy"] == "IfNotPresent"
    # --persist: a rolling update hands the attached programs to the next pod.
    assert c["args"] == ["--config", "/etc/flowmeter/flowmeter.yaml", "--persist"]
    assert not any(e["name"] == "FLOWMETER_API_SOCKET" for e in c.get("env", []))
    sc = c["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "NET_ADMIN"]}, sc
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert c["ports"] == [{"name": "metrics", "containerPort": 9810, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    res = c["resources"]
    assert set(res) == {"requests", "limits"} and all(set(res[k]) == {"cpu", "memory"} for k in res), res

    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == set(volumes), (mounts, volumes)
    host = {v["hostPath"]["path"]: mounts[n]["mountPath"] for n, v in volumes.items() if "hostPath" in v}
    assert host == {"/sys/fs/bpf": "/sys/fs/bpf", "/sys/kernel/tracing": "/sys/kernel/tracing",
                    "/sys/fs/cgroup": "/sys/fs/cgroup", "/run/flowmeter": "/run/flowmeter",
                    "/run/containerd": "/run/containerd"}, host
    # containerd's socket directory, which the default containerd_socket is in
    # (pods named <namespace>/<workload>); created if missing, read-only.
    containerd = next(v for v in volumes.values() if v.get("hostPath", {}).get("path") == "/run/containerd")
    assert containerd["hostPath"]["type"] == "DirectoryOrCreate", containerd
    example = (REPO / "config" / "flowmeter.example.yaml").read_text()
    assert re.search(r"^containerd_socket: /run/containerd/[^/\s]+$", example, re.M), "containerd_socket moved"
    # The node's name for pod records and flowmeter_endpoint_info.
    assert {"name": "FLOWMETER_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in c["env"], c["env"]
    # Written: the API socket and clsact record, and the pins of --persist.
    writable = {"/run/flowmeter", "/sys/fs/bpf"}
    assert all(m.get("readOnly") for m in mounts.values() if m["mountPath"] not in writable), mounts
    assert not any(m.get("readOnly") for m in mounts.values() if m["mountPath"] in writable), mounts
    bpffs = next(m for m in mounts.values() if m["mountPath"] == "/sys/fs/bpf")
    assert bpffs.get("mountPropagation") == "HostToContainer", bpffs
    config = [v for v in volumes.values() if "configMap" in v]
    assert len(config) == 1 and config[0]["configMap"]["name"] == one(base, "ConfigMap")["metadata"]["name"]
    assert mounts[config[0]["name"]]["mountPath"] == "/etc/flowmeter"


def test_config_is_the_example(base):
    """The ConfigMap holds config/flowmeter.example.yaml as it is (kustomize
    reads no file outside deploy/kubernetes, so it holds a copy), and what the
    pod needs of it holds: the API socket and the state directory on the
    node's /run/flowmeter, the metrics port the one the probes use."""
    example = (REPO / "config" / "flowmeter.example.yaml").read_bytes()
    assert (BASE / "flowmeter.yaml").read_bytes() == example, \
        "deploy/kubernetes/flowmeter.yaml differs from config/flowmeter.example.yaml: copy it again"
    data = one(base, "ConfigMap")["data"]
    assert list(data) == ["flowmeter.yaml"] and data["flowmeter.yaml"].encode() == example
    cfg = yaml.safe_load(example)
    assert cfg["api_socket"].startswith("/run/flowmeter/") and cfg["state_dir"] == "/run/flowmeter", cfg
    assert cfg["metrics_listen"].rsplit(":", 1)[1] == "9810", cfg["metrics_listen"]


def test_service(base):
    svc = one(base, "Service")["spec"]
    assert svc["clusterIP"] == "None"
    assert svc["selector"].items() <= POD_LABELS.items()
    assert svc["ports"] == [{"name": "metrics", "port": 9810, "targetPort": "metrics", "protocol": "TCP"}]


def test_docs_state_the_manifest_resources(base):
    """docs/kubernetes.md gives the same requests and limits as the DaemonSet."""
    res = one(base, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["resources"]
    doc = (REPO / "docs" / "kubernetes.md").read_text()
    for kind in ("requests", "limits"):
        for what, value in res[kind].items():
            assert f"`{value}`" in doc, f"docs/kubernetes.md does not give the {what} {kind[:-1]} `{value}`"


# ---------------------------------------------------------------------------
# the PodMonitor (optional overlay)

def podmonitor_schema() -> dict:
    """PodMonitor fields as the Prometheus Operator's API reference
    (monitoring.coreos.com/v1) defines them, for the fields used here; any
    other field fails. Metadata and the label selector are Kubernetes' own."""
    strict = lambda props, required=(): {"type": "object", "properties": props, "required": list(required),  # noqa: E731
                                         "additionalProperties": False}
    string = {"type": "string"}
    relabel = strict({"sourceLabels": {"type": "array", "items": string}, "separator": string,
                      "targetLabel": string, "regex": string, "modulus": {"type": "integer"},
                      "replacement": string,
                      "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                                          "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                                          "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal",
                                          "KeepEqual", "dropequal", "DropEqual"]}})
    duration = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                             r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
    endpoint = strict({"port": string, "path": string, "scheme": {"enum": ["http", "https"]},
                       "interval": duration, "scrapeTimeout": duration, "honorLabels": {"type": "boolean"},
                       "relabelings": {"type": "array", "items": relabel},
                       "metricRelabelings": {"type": "array", "items": relabel}})
    return strict({
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"$ref": "k8s:#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"},
        "spec": strict({
            "selector": {"$ref": "k8s:#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector"},
            "namespaceSelector": strict({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": string}}),
            "jobLabel": string,
            "podTargetLabels": {"type": "array", "items": string},
            "podMetricsEndpoints": {"type": "array", "items": endpoint, "minItems": 1},
        }, required=["selector"]),
    }, required=["apiVersion", "kind", "metadata", "spec"])


def podmonitor_validator():
    kv = validator()
    import importlib.resources
    import jsonschema
    from referencing import Registry, Resource
    latest = kv.utils.latest_version()
    defs = json.loads(importlib.resources.files("kubernetes_validate").joinpath(
        f"kubernetes-json-schema/v{latest}-local-strict/_definitions.json").read_text())
    registry = Registry().with_resource("k8s:", Resource.from_contents(defs))
    return jsonschema.Draft202012Validator(podmonitor_schema(), registry=registry)


def test_podmonitor(podmonitor_objects, base):
    [pm] = podmonitor_objects
    v = podmonitor_validator()
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in v.iter_errors(pm)]
    assert not errors, "\n".join(errors)
    assert pm["metadata"]["namespace"] == NAMESPACE
    ds = one(base, "DaemonSet")
    assert pm["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"] for p in ds["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert all(e["port"] in ports for e in pm["spec"]["podMetricsEndpoints"]), pm["spec"]

    # The hand-written schema is strict too.
    for mutate in (lambda p: p["spec"].__setitem__("podMetricsEndpoint", []),
                   lambda p: p["spec"]["podMetricsEndpoints"][0].__setitem__("targetPort", 9810),
                   lambda p: p["spec"]["podMetricsEndpoints"][0].__setitem__("interval", 30),
                   lambda p: p["spec"].pop("selector"),
                   lambda p: p["metadata"].__setitem__("labelz", {})):
        bad = copy.deepcopy(pm)
        mutate(bad)
        assert list(v.iter_errors(bad)), f"accepted: {bad}"


def test_package_renders_the_same_manifests(base):
    """tools/package writes the rendered base next to the .deb (for `kubectl
    apply -f` without the source tree): the objects validated above. Runs
    where tools/package ran (tools/test sets FLOWMETER_DEB)."""
    deb = os.environ.get("FLOWMETER_DEB")
    if not deb:
        if os.environ.get("CI"):
            pytest.fail("FLOWMETER_DEB is not set: tools/package did not run before the tests")
        pytest.skip("FLOWMETER_DEB is not set (tools/package did not run)")
    files = sorted(Path(deb).parent.glob("flowmeter_*_kubernetes.yaml"))
    assert len(files) == 1, f"expected one rendered manifest file next to {deb}: {files}"
    packaged = [d for d in yaml.safe_load_all(files[0].read_text()) if d]
    assert packaged == base, f"{files[0]} differs from the rendering of deploy/kubernetes: run tools/package again"
