"""OTLP over both transports to receivers built from the official parts:
grpcio serving the opentelemetry-proto package's MetricsService stub, and an
HTTP server decoding with the same package's classes (otlp_receiver.py).
TLS and mTLS from certificates made here with openssl; a required
authorization header; gzip checked on the wire; a wrong CA; an outage; and
the interop sample: one recorded export per transport, decoded with the
official classes and checked field by field against /metrics."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import fmlib
from conftest import IF_A, NETTOOL, V4_B, unique_port, wait_for
from test_export import Receiver, scrape

SECRET = "s3cret-token-42"


def openssl(*args: str) -> None:
    r = subprocess.run(["openssl", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def make_pki(d: Path) -> dict[str, str]:
    """A CA, the collector's certificate for 127.0.0.1 signed by it, a client
    certificate signed by it (mTLS), and a second, unrelated CA."""
    p = {k: str(d / f"{k}.pem") for k in ("ca", "ca_key", "server", "server_key", "client", "client_key", "other_ca", "other_ca_key")}
    for ca, key, cn in (("ca", "ca_key", "flowmeter test CA"), ("other_ca", "other_ca_key", "unrelated CA")):
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                "-subj", f"/CN={cn}", "-keyout", p[key], "-out", p[ca])
    for name, key, cn, ext in (("server", "server_key", "collector", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
                               ("client", "client_key", "flowmeterd", "extendedKeyUsage=clientAuth")):
        csr = str(d / f"{name}.csr")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={cn}",
                "-keyout", p[key], "-out", csr)
        extfile = d / f"{name}.ext"
        extfile.write_text(ext + "\n")
        openssl("x509", "-req", "-in", csr, "-CA", p["ca"], "-CAkey", p["ca_key"], "-CAcreateserial", "-days", "2",
                "-extfile", str(extfile), "-out", p[name])
    return p


def equal_to_metrics(pair, mport, rx) -> bool:
    """The last export carries exactly what /metrics shows for the series
    that stand still (the UDP transfer, the interfaces)."""
    m = scrape(pair, mport)
    time.sleep(1.2)  # two more pushes
    last = rx.requests[-1]
    want = {}
    for (name, labels), v in m.samples.items():
        if name in ("flowmeter_interface_io_bytes_total", "flowmeter_interface_packets_total") or (
                name == "flowmeter_network_io_bytes_total" and ("transport", "udp") in labels):
            want[(name[:-len("_total")].replace("_", "."), labels)] = v
    got = {(n, frozenset(p[0].items())): p[1] for n, info in last["metrics"].items() for p in info["points"]
           if n in {k[0] for k in want} and p[0].get("transport", "udp") == "udp"}
    if not want or got != want:
        print("DIFF", {k: v for k, v in want.items() if got.get(k) != v}, {k: v for k, v in got.items() if want.get(k) != v})
        return False
    return True


def otlp_unit(name: str) -> str:
    base = name[:-6] if name.endswith("_total") else name
    return "By" if base.endswith("_bytes") else "s" if base.endswith("_seconds") else "1"


def families_of(exposition: fmlib.Exposition) -> dict[str, set]:
    """Family name -> the label sets of its series (histograms without le)."""
    families: dict[str, set] = {}
    for (name, labels) in exposition.samples:
        fam = name
        if fam not in exposition.types:
            fam = name.rsplit("_", 1)[0]  # _bucket, _sum, _count
        if exposition.types[fam] == "histogram":
            labels = frozenset((k, v) for k, v in labels if k != "le")
        families.setdefault(fam, set()).add(labels)
    return families


def check_interop(raw: bytes, before: fmlib.Exposition, after: fmlib.Exposition, started_ns: tuple[int, int]) -> int:
    """Decodes one recorded request with the official classes and checks it
    field by field against the families of /metrics, scraped just before and
    just after it was made: every family with series is one metric with the
    mapped name and unit, the HELP as description, and the kind and
    temporality of its type; every series is one data point with the labels
    as string attributes; every point starts when the daemon started.
    Returns the number of points checked."""
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as svc
    from opentelemetry.proto.metrics.v1 import metrics_pb2
    req = svc.ExportMetricsServiceRequest.FromString(raw)
    assert len(req.resource_metrics) == 1 and len(req.resource_metrics[0].scope_metrics) == 1
    rm = req.resource_metrics[0]
    assert {kv.key for kv in rm.resource.attributes} == {"service.name", "service.version", "host.name"}
    sm = rm.scope_metrics[0]
    assert sm.scope.name == "flowmeterd" and sm.scope.version
    def otlp_name(f):
        return (f[:-6] if f.endswith("_total") else f).replace("_", ".")
    fam_before, families = families_of(before), families_of(after)
    by_name = {m.name: m for m in sm.metrics}
    # A family may get its first series between the two scrapes (a first
    # packet drop, say); none disappears in that time.
    assert {otlp_name(f) for f in fam_before} <= set(by_name) <= {otlp_name(f) for f in families}, (
        set(by_name) ^ {otlp_name(f) for f in fam_before})
    exposition = after
    points = 0
    for fam in families:
        if otlp_name(fam) not in by_name:
            continue
        label_sets = families[fam]
        m = by_name[otlp_name(fam)]
        assert m.unit == otlp_unit(fam), (fam, m.unit)
        assert m.description == exposition.helps[fam], fam
        t = exposition.types[fam]
        kind = m.WhichOneof("data")
        if t == "counter":
            assert kind == "sum" and m.sum.is_monotonic, fam
            assert m.sum.aggregation_temporality == metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE, fam
            pts = m.sum.data_points
        elif t == "gauge":
            assert kind == "gauge", fam
            pts = m.gauge.data_points
        else:
            assert t == "histogram" and kind == "histogram", fam
            assert m.histogram.aggregation_temporality == metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE, fam
            pts = m.histogram.data_points
        attrs = set()
        for p in pts:
            assert all(a.value.WhichOneof("value") == "string_value" for a in p.attributes), fam
            attrs.add(frozenset((a.key, a.value.string_value) for a in p.attributes))
            assert started_ns[0] <= p.start_time_unix_nano <= started_ns[1], (fam, p.start_time_unix_nano, started_ns)
            assert p.time_unix_nano >= p.start_time_unix_nano
            points += 1
        # Series come and go between the scrape and the recorded export only
        # for the loopback TCP of scrapes and exports themselves; the label
        # sets of families without per-pair series are the same.
        if not fam.startswith(("flowmeter_network", "flowmeter_tcp", "flowmeter_packet_drops", "flowmeter_export")):
            assert attrs == label_sets == fam_before.get(fam, label_sets), (fam, attrs ^ label_sets)
    return points


PROTOS = {"grpc": "grpc", "http/protobuf": "http"}


@pytest.mark.socket_updates
@pytest.mark.parametrize("proto", ["grpc", "http/protobuf"])
def test_otlp_over_mtls_with_header_gzip_outage_and_interop(proto, netpair, daemons, tmp_path, monkeypatch):
    pair = netpair
    pki = make_pki(tmp_path)
    rec = tmp_path / "recorded"
    rec.mkdir()
    mport, rport, queue = unique_port(), unique_port(), 2
    rx = Receiver(pair, PROTOS[proto], rport, "--cert", pki["server"], "--key", pki["server_key"],
                  "--client-ca", pki["ca"], "--require-header", f"authorization=Bearer {SECRET}",
                  "--record", str(rec), "--partial", "5")
    endpoint = f"https://127.0.0.1:{rport}" + ("/v1/metrics" if proto == "http/protobuf" else "")
    # A second header from the OpenTelemetry variable, under the flags.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=team%20a")
    started_ns = [time.time_ns(), 0]
    d = daemons(pair.a, "--interfaces", IF_A, "--interval", "500ms", "--metrics-listen", f"127.0.0.1:{mport}",
                "--otlp-endpoint", endpoint, "--otlp-protocol", proto, "--otlp-queue-size", str(queue),
                "--otlp-ca-file", pki["ca"], "--otlp-client-cert", pki["client"], "--otlp-client-key", pki["client_key"],
                "--otlp-header", f"Authorization=Bearer%20{SECRET}", "--otlp-compression", "gzip", "--otlp-timeout", "3s",
                "--state-dir", str(tmp_path / "state")).wait_ready()
    started_ns[1] = time.time_ns()
    echo_port = unique_port()
    echo = pair.popen(pair.b, "python3", NETTOOL, "udp-echo", V4_B, str(echo_port), "3")
    assert echo.stdout.readline().strip() == "ready"
    pair.nettool(pair.a, "udp-client", V4_B, str(echo_port), "1000,2000,3000")
    wait_for(lambda: len(rx.requests) >= 3, timeout=20, what="OTLP requests")
    wait_for(lambda: equal_to_metrics(pair, mport, rx), timeout=20, interval=0.2, what="the OTLP values to equal /metrics")

    last = rx.requests[-1]
    # mTLS: the receiver required and saw a client certificate; the headers came.
    assert last["peer_cert"], last
    assert last["headers"]["authorization"] == f"Bearer {SECRET}" and last["headers"]["x-tenant"] == "team a"
    assert not [r for r in rx.poll() if "refused" in r]
    if proto == "http/protobuf":
        # gzip on the wire: the header, the gzip magic, and fewer bytes than the protobuf.
        assert last["encoding"] == "gzip" and last["wire_gzip_magic"] and last["wire_bytes"] < last["body_bytes"], last
        assert last["path"] == "/v1/metrics" and last["ctype"] == "application/x-protobuf"
    udp = [p for p in last["metrics"]["flowmeter.network.io.bytes"]["points"]
           if p[0]["transport"] == "udp" and p[0]["direction"] == "transmit" and p[0]["service"] == "python3"]
    assert sorted((p[0]["peer_service"], p[1]) for p in udp) == [("python3", 6000.0), ("unknown", 6000.0)], udp

    # partial_success: the receiver refused 5 points in its first answer.
    m = scrape(pair, mport)
    assert m.value("flowmeter_export_rejected_points_total", exporter="otlp") == 5

    # Interop sample: the last recorded request, decoded with the official
    # classes, against the families of a scrape taken with it.
    n = len(list(rec.iterdir()))
    before = scrape(pair, mport)
    wait_for(lambda: len(list(rec.iterdir())) >= n + 2, timeout=10, what="a recorded export after the scrape")
    newest = max(rec.iterdir(), key=lambda f: int(f.stem.split("-")[1]))
    raw = newest.read_bytes()
    after = scrape(pair, mport)
    assert check_interop(raw, before, after, tuple(started_ns)) > 20

    # Outage: sends fail and are counted, the queue keeps the newest, the rest are dropped.
    received_before = len(rx.requests)
    rx.stop()
    down_at = time.time_ns()
    time.sleep(4)
    mid = scrape(pair, mport)
    assert mid.value("flowmeter_export_records_total", exporter="otlp", outcome="failed") > 0
    assert mid.value("flowmeter_export_records_total", exporter="otlp", outcome="dropped") >= 4
    assert mid.value("flowmeter_export_queue_length", exporter="otlp") == queue
    up_at = time.time_ns()
    rx.start()
    wait_for(lambda: sum(1 for r in rx.requests if r["time"] > up_at) >= 3, timeout=40, what="export to resume")
    survivors = [r for r in rx.requests if down_at < r["time"] < up_at]
    assert len(survivors) <= queue

    # Nothing counted twice: every request made before the last one was
    # either received exactly once or counted as dropped.
    def counter(r, outcome):
        return next(p[1] for p in r["metrics"]["flowmeter.export.records"]["points"]
                    if p[0] == {"exporter": "otlp", "outcome": outcome})
    reqs = rx.requests
    last = reqs[-1]
    made_before = counter(last, "queued")
    queued_values = [counter(r, "queued") for r in reqs]
    assert len(queued_values) == len(set(queued_values)), "a request arrived twice"
    received = sum(1 for q in queued_values if q < made_before)
    assert received + counter(last, "dropped") == made_before, (received, counter(last, "dropped"), made_before)
    assert received_before <= received
    # The token is never logged; the header's name is, with its value hidden.
    assert SECRET not in d.stderr and "authorization=<redacted>" in d.stderr, d.stderr
    assert d.terminate() == 0, d.stderr
    rx.stop()
    echo.kill()


@pytest.mark.parametrize("proto", ["grpc", "http/protobuf"])
def test_otlp_wrong_ca_is_a_clear_counted_failure(proto, netpair, daemons, tmp_path):
    """A collector whose certificate the given CA did not sign: no request
    arrives, each attempt counts as failed, the log says why, once."""
    pair = netpair
    pki = make_pki(tmp_path)
    mport, rport = unique_port(), unique_port()
    rx = Receiver(pair, PROTOS[proto], rport, "--cert", pki["server"], "--key", pki["server_key"])
    endpoint = f"https://127.0.0.1:{rport}" + ("/v1/metrics" if proto == "http/protobuf" else "")
    d = daemons(pair.a, "--interfaces", IF_A, "--interval", "500ms", "--metrics-listen", f"127.0.0.1:{mport}",
                "--otlp-endpoint", endpoint, "--otlp-protocol", proto, "--otlp-ca-file", pki["other_ca"],
                "--otlp-header", f"authorization=Bearer%20{SECRET}",
                "--state-dir", str(tmp_path / "state")).wait_ready()
    wait_for(lambda: (scrape(pair, mport).value("flowmeter_export_records_total", exporter="otlp", outcome="failed") or 0) >= 2,
             timeout=20, what="failed attempts")
    m = scrape(pair, mport)
    assert m.value("flowmeter_export_records_total", exporter="otlp", outcome="sent") == 0
    assert rx.requests == []
    assert "not signed by a trusted CA" in d.stderr, d.stderr
    assert d.stderr.count("OTLP push failed") == 1, d.stderr
    assert SECRET not in d.stderr
    assert d.terminate() == 0, d.stderr
    rx.stop()


def test_otlp_http_honours_retry_after(netpair, daemons, tmp_path):
    """503 and 429 with Retry-After: the daemon waits as long as asked before
    the next attempt of the same request, counts each failure, and then the
    request arrives once."""
    pair = netpair
    mport, rport = unique_port(), unique_port()
    rx = Receiver(pair, "http", rport, "--http-script", "503:2,429:1")
    d = daemons(pair.a, "--interfaces", IF_A, "--interval", "500ms", "--metrics-listen", f"127.0.0.1:{mport}",
                "--otlp-endpoint", f"http://127.0.0.1:{rport}/v1/metrics", "--otlp-queue-size", "64",
                "--state-dir", str(tmp_path / "state")).wait_ready()
    wait_for(lambda: len(rx.requests) >= 1, timeout=20, what="the first accepted request")
    lines = rx.poll()
    assert [r.get("scripted") for r in lines[:2]] == [503, 429], lines[:3]
    assert lines[1]["at"] - lines[0]["at"] >= 1.9 and lines[2]["at"] - lines[1]["at"] >= 0.9, [r["at"] for r in lines[:3]]
    first = rx.requests[0]
    assert first["metrics"]["flowmeter.export.records"]  # the retried request itself, not a later one
    m = scrape(pair, mport)
    assert m.value("flowmeter_export_records_total", exporter="otlp", outcome="failed") == 2
    assert m.value("flowmeter_export_records_total", exporter="otlp", outcome="dropped") == 0
    assert "retrying after 2.0 s, as the collector asked" in d.stderr, d.stderr
    assert d.terminate() == 0, d.stderr
    rx.stop()


DOCS = Path(__file__).resolve().parents[2] / "docs" / "exporting.md"


def doc_example(name: str) -> list[str]:
    """The flowmeterd arguments of the fenced sh block after
    `<!-- example: NAME` in docs/exporting.md (continuation lines joined)."""
    import shlex
    lines = DOCS.read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(f"<!-- example: {name} "))
    assert lines[start + 1].startswith("```"), lines[start + 1]
    end = next(i for i in range(start + 2, len(lines)) if lines[i].startswith("```"))
    text = "\n".join(l for l in lines[start + 2:end] if not l.startswith("OTLP_TOKEN="))
    words = shlex.split(text.replace("\\\n", " ").replace("$OTLP_TOKEN", SECRET))
    assert words[0] == "flowmeterd", words
    return words[1:]


@pytest.mark.parametrize("name", ["otlp-grpc", "otlp-http"])
def test_docs_otlp_examples_run(name, netpair, daemons, tmp_path):
    """The TLS-and-header examples of docs/exporting.md, as written, with the
    collector's name and the files replaced by the test's: the receiver
    (requiring the header, and the client certificate where the example
    gives one) gets the metrics."""
    pair = netpair
    pki = make_pki(tmp_path)
    mport, rport = unique_port(), unique_port()
    args = doc_example(name)
    proto = args[args.index("--otlp-protocol") + 1]
    mtls = "--otlp-client-cert" in args
    rx = Receiver(pair, PROTOS[proto], rport, "--cert", pki["server"], "--key", pki["server_key"],
                  "--require-header", f"authorization=Bearer {SECRET}", *(["--client-ca", pki["ca"]] if mtls else []))
    subst = {"/etc/flowmeter/collector-ca.pem": pki["ca"], "/etc/flowmeter/client.pem": pki["client"],
             "/etc/flowmeter/client-key.pem": pki["client_key"]}
    args = [subst.get(a, a.replace("collector.example:4317", f"127.0.0.1:{rport}")
                      .replace("collector.example:4318", f"127.0.0.1:{rport}")) for a in args]
    d = daemons(pair.a, *args, "--interfaces", IF_A, "--interval", "500ms", "--metrics-listen", f"127.0.0.1:{mport}",
                "--state-dir", str(tmp_path / "state")).wait_ready()
    wait_for(lambda: len(rx.requests) >= 2, timeout=20, what="exports from the documented command")
    assert not [r for r in rx.poll() if "refused" in r]
    assert rx.requests[-1]["peer_cert"] == mtls
    assert SECRET not in d.stderr
    assert d.terminate() == 0, d.stderr
    rx.stop()


@pytest.mark.parametrize("case", ["missing-ca", "not-pem", "cert-without-key", "ca-with-http", "grpc-path", "bad-otel-headers"])
def test_otlp_bad_settings_stop_the_start(case, netpair, flowmeterd, tmp_path):
    """A bad OTLP setting stops the start with a message naming the flag or
    variable and the problem; a header's value is never echoed."""
    pki = make_pki(tmp_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    env, args, want = [], [], ""
    https = "https://127.0.0.1:4318/v1/metrics"
    if case == "missing-ca":
        args, want = ["--otlp-endpoint", https, "--otlp-ca-file", str(tmp_path / "nosuch.pem")], "--otlp-ca-file"
    elif case == "not-pem":
        args, want = ["--otlp-endpoint", https, "--otlp-ca-file", str(junk)], "not a PEM certificate file"
    elif case == "cert-without-key":
        args, want = ["--otlp-endpoint", https, "--otlp-client-cert", pki["client"]], "go together"
    elif case == "ca-with-http":
        args, want = ["--otlp-endpoint", "http://127.0.0.1:4318/v1/metrics", "--otlp-ca-file", pki["ca"]], "need an https:// endpoint"
    elif case == "grpc-path":
        args, want = ["--otlp-protocol", "grpc", "--otlp-endpoint", "http://127.0.0.1:4317/v1/metrics"], "a gRPC endpoint takes no path"
    else:
        env, args, want = ["env", f"OTEL_EXPORTER_OTLP_HEADERS=authorization {SECRET}"], ["--otlp-endpoint", https], "OTEL_EXPORTER_OTLP_HEADERS"
    p = netpair.run(netpair.a, *env, flowmeterd, "--interfaces", IF_A, "--hooks", "off", *args,
                    "--metrics-listen", f"127.0.0.1:{unique_port()}", "--state-dir", str(tmp_path / "state"), check=False)
    assert p.returncode != 0, p.stderr
    assert want in p.stderr, p.stderr
    assert SECRET not in p.stderr
