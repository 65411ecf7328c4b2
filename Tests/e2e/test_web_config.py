"""--web-config: the metrics endpoint under TLS, client certificates and bcrypt
basic auth, in the Prometheus exporter-toolkit format. A real Prometheus
(Debian's) scrapes it; Python's ssl module is the client that is refused.
Certificates are made here with openssl, hashes with Apache's htpasswd (an
implementation of bcrypt other than the daemon's libxcrypt)."""
from __future__ import annotations

import hashlib
import json
import signal
import ssl
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from conftest import IF_A, PYTHON, sh, unique_port, wait_for

# An HTTPS GET from inside a namespace: prints "STATUS <code>", the
# WWW-Authenticate header and the sha256 of the server's certificate, or
# "ERROR <what>" when the connection or handshake fails.
CLIENT = r"""
import base64, hashlib, http.client, ssl, sys
url_port, path, ca, cert, key, auth = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
if cert:
    ctx.load_cert_chain(cert, key)
try:
    c = http.client.HTTPSConnection("127.0.0.1", int(url_port), context=ctx, timeout=10)
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    c.request("GET", path, headers=headers)
    r = c.getresponse()
    body = r.read()
    der = c.sock.getpeercert(binary_form=True)
    print("STATUS", r.status)
    print("AUTH", r.getheader("WWW-Authenticate"))
    print("CERT", hashlib.sha256(der).hexdigest())
    print("BODY", body[:200])
except (ssl.SSLError, ConnectionError, OSError) as e:
    print("ERROR", type(e).__name__, e)
"""


def openssl(*args: str) -> None:
    sh("openssl", *args, timeout=60)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(crt))
    return key, crt


def make_cert(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, crt, extfile = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt", d / f"{name}.ext"
    extfile.write_text(ext + "\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
            "-keyout", str(key), "-out", str(csr))
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]), "-CAcreateserial",
            "-days", "2", "-extfile", str(extfile), "-out", str(crt))
    return key, crt


def fingerprint(crt: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(crt.read_text())).hexdigest()


def bcrypt(user: str, password: str) -> str:
    out = sh("htpasswd", "-nbBC", "5", user, password).stdout.strip()
    return out.split(":", 1)[1]


@pytest.fixture
def pki(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    server_ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"
    client_ext = "extendedKeyUsage=clientAuth"
    ca = make_ca(d, "server-ca")
    client_ca = make_ca(d, "client-ca")
    rogue_ca = make_ca(d, "rogue-ca")
    return {
        "dir": d, "ca": ca[1], "client_ca": client_ca[1],
        "server": make_cert(d, "server", ca, server_ext),
        "renewed": make_cert(d, "renewed", ca, server_ext),
        "client": make_cert(d, "client", client_ca, client_ext),
        "rogue": make_cert(d, "rogue", rogue_ca, client_ext),
    }


def get(pair, port: int, pki, path="/metrics", auth="", cert=None, ca=True) -> dict:
    key, crt = cert if cert else ("", "")
    out = pair.run(pair.a, PYTHON, "-c", CLIENT, str(port), path, str(pki["ca"]) if ca else "",
                   str(crt), str(key), auth, timeout=30).stdout
    res = {}
    for line in out.splitlines():
        k, _, v = line.partition(" ")
        res[k] = v
    return res


def start(daemons, pair, port: int, web: Path):
    return daemons(pair.a, "--interfaces", IF_A, "--interval", "1s", "--metrics-listen", f"127.0.0.1:{port}",
                   "--api-socket", "off", "--web-config", str(web))


class Prometheus:
    """Debian's Prometheus in namespace A, scraping every second."""

    def __init__(self, pair, tmp_path: Path, jobs: str):
        self.pair, self.port = pair, unique_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n" + jobs)
        self.proc = pair.popen(pair.a, "prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{self.port}", stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)

    def api(self, path: str) -> dict:
        script = ("import sys, urllib.request; "
                  "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())")
        out = self.pair.run(self.pair.a, PYTHON, "-c", script, f"http://127.0.0.1:{self.port}{path}",
                            check=False, timeout=15)
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def targets(self) -> dict:
        """job -> (health, lastError) of its one target."""
        t = self.api("/api/v1/targets").get("data", {}).get("activeTargets", [])
        return {x["labels"]["job"]: (x["health"], x["lastError"]) for x in t}

    def query(self, expr: str) -> list:
        return self.api("/api/v1/query?" + urllib.parse.urlencode({"query": expr})).get("data", {}).get("result", [])


def test_prometheus_scrapes_over_tls_with_basic_auth(netpair, daemons, tmp_path, pki):
    pair, port = netpair, unique_port()
    server_key, server_crt = pki["server"]
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {server_crt}\n  key_file: {server_key}\n"
                   f"basic_auth_users:\n  prometheus: '{bcrypt('prometheus', 'scrape me')}'\n")
    d = start(daemons, pair, port, web).wait_ready()
    assert f"https://127.0.0.1:{port}/metrics" in d.stderr
    prom = Prometheus(pair, tmp_path, (
        f"  - job_name: authed\n    scheme: https\n    tls_config: {{ca_file: {pki['ca']}}}\n"
        f"    basic_auth: {{username: prometheus, password: 'scrape me'}}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        f"  - job_name: anonymous\n    scheme: https\n    tls_config: {{ca_file: {pki['ca']}}}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        f"  - job_name: wrong_password\n    scheme: https\n    tls_config: {{ca_file: {pki['ca']}}}\n"
        f"    basic_auth: {{username: prometheus, password: 'scrape you'}}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"))
    wait_for(lambda: len(prom.targets()) == 3 and all(h != "unknown" for h, _ in prom.targets().values()),
             timeout=30, interval=0.5, what="Prometheus to scrape all three jobs")
    t = prom.targets()
    assert t["authed"] == ("up", ""), t
    assert t["anonymous"][0] == "down" and "401" in t["anonymous"][1], t
    assert t["wrong_password"][0] == "down" and "401" in t["wrong_password"][1], t
    wait_for(lambda: prom.query('flowmeter_build_info{job="authed"}'), timeout=20, interval=0.5,
             what="flowmeter_build_info in Prometheus")
    assert prom.query('flowmeter_build_info{job="anonymous"}') == []

    # Without credentials: 401 with a Basic challenge, on every path.
    for path in ("/metrics", "/healthz", "/readyz"):
        r = get(pair, port, pki, path)
        assert r.get("STATUS") == "401" and r["AUTH"].startswith("Basic realm="), (path, r)
    r = get(pair, port, pki, "/healthz", auth="prometheus:scrape me")
    assert r.get("STATUS") == "200" and r["CERT"] == fingerprint(server_crt), r
    assert get(pair, port, pki, auth="nobody:scrape me").get("STATUS") == "401"
    # Plain HTTP on the TLS port gets no answer.
    plain = pair.run(pair.a, PYTHON, "-c",
                     "import sys, urllib.request\n"
                     "try:\n urllib.request.urlopen(sys.argv[1], timeout=5); print('answered')\n"
                     "except Exception as e:\n print('refused', type(e).__name__)\n",
                     f"http://127.0.0.1:{port}/metrics").stdout
    assert plain.startswith("refused"), plain
    prom.proc.terminate()


def test_prometheus_scrapes_with_client_certificate(netpair, daemons, tmp_path, pki):
    pair, port = netpair, unique_port()
    server_key, server_crt = pki["server"]
    client_key, client_crt = pki["client"]
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {server_crt}\n  key_file: {server_key}\n"
                   f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki['client_ca']}\n"
                   f"  min_version: TLS12\n")
    start(daemons, pair, port, web).wait_ready()
    prom = Prometheus(pair, tmp_path, (
        f"  - job_name: mtls\n    scheme: https\n"
        f"    tls_config: {{ca_file: {pki['ca']}, cert_file: {client_crt}, key_file: {client_key}}}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
        f"  - job_name: rogue\n    scheme: https\n"
        f"    tls_config: {{ca_file: {pki['ca']}, cert_file: {pki['rogue'][1]}, key_file: {pki['rogue'][0]}}}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"))
    wait_for(lambda: len(prom.targets()) == 2 and all(h != "unknown" for h, _ in prom.targets().values()),
             timeout=30, interval=0.5, what="Prometheus to scrape both jobs")
    t = prom.targets()
    assert t["mtls"] == ("up", ""), t
    assert t["rogue"][0] == "down" and "tls" in t["rogue"][1].lower(), t
    wait_for(lambda: prom.query('flowmeter_build_info{job="mtls"}'), timeout=20, interval=0.5,
             what="flowmeter_build_info in Prometheus")

    assert get(pair, port, pki, cert=pki["client"]).get("STATUS") == "200"
    # A certificate of another CA, or none, fails the handshake: no HTTP answer at all.
    for cert in (pki["rogue"], None):
        r = get(pair, port, pki, cert=cert)
        assert "STATUS" not in r and "ERROR" in r, (cert, r)
    prom.proc.terminate()


@pytest.mark.parametrize("name,content,expected", [
    ("bad_yaml", "tls_server_config: [\n", ["YAML syntax error"]),
    ("unknown_key", "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  certfile: b\n",
     ["tls_server_config.certfile", "unknown key", "did you mean \"cert_file\""]),
    ("missing_cert", "tls_server_config:\n  cert_file: /nonexistent/server.crt\n  key_file: /nonexistent/server.key\n",
     ["tls_server_config.cert_file", "cannot read /nonexistent/server.crt: No such file or directory"]),
    ("bad_hash", "basic_auth_users:\n  alice: '$2y$10$tooshort'\n", ["basic_auth_users.alice", "53 characters"]),
    ("bad_client_auth", "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  client_auth_type: Always\n",
     ["tls_server_config.client_auth_type", "unknown client_auth_type \"Always\""]),
])
def test_bad_web_config_refuses_to_start(netpair, daemons, tmp_path, name, content, expected):
    web = tmp_path / f"{name}.yml"
    web.write_text(content)
    d = start(daemons, netpair, unique_port(), web)
    assert d.proc.wait(timeout=30) == 1, d.stderr
    err = d.stderr
    assert f"flowmeterd: --web-config: {web}" in err, err
    for text in expected:
        assert text in err, (text, err)
    assert "serving metrics" not in err and "attached" not in err, err


def test_sighup_reloads_users_and_renewed_certificate_is_served(netpair, daemons, tmp_path, pki):
    pair, port = netpair, unique_port()
    server_key, server_crt = pki["server"]
    live_key, live_crt = tmp_path / "live.key", tmp_path / "live.crt"
    live_key.write_bytes(server_key.read_bytes())
    live_crt.write_bytes(server_crt.read_bytes())
    web = tmp_path / "web.yml"
    tls = f"tls_server_config:\n  cert_file: {live_crt.name}\n  key_file: {live_key.name}\n"  # relative: the file's directory
    web.write_text(tls + f"basic_auth_users:\n  alice: '{bcrypt('alice', 'a-pass')}'\n")
    d = start(daemons, pair, port, web).wait_ready()
    assert get(pair, port, pki, auth="alice:a-pass").get("STATUS") == "200"
    assert get(pair, port, pki, auth="bob:b-pass").get("STATUS") == "401"

    # SIGHUP: bob replaces alice.
    web.write_text(tls + f"basic_auth_users:\n  bob: '{bcrypt('bob', 'b-pass')}'\n")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("basic_auth_users=1", timeout=15)
    assert get(pair, port, pki, auth="bob:b-pass").get("STATUS") == "200"
    assert get(pair, port, pki, auth="alice:a-pass").get("STATUS") == "401"

    # A broken file on SIGHUP changes nothing, and says so.
    web.write_text(tls + "basic_auth_users:\n  carol: plaintext\n")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("web_config=(not reloaded)", timeout=15)
    assert "error flowmeterd: error=" in d.stderr and "web config not reloaded; the previous one stays" in d.stderr
    assert "basic_auth_users.carol: not a bcrypt hash" in d.stderr
    assert get(pair, port, pki, auth="bob:b-pass").get("STATUS") == "200"
    assert d.proc.poll() is None

    # Renewal: new files in place (as certbot or cert-manager write them),
    # no signal; the next connection gets the new certificate.
    before = get(pair, port, pki, auth="bob:b-pass")
    assert before["CERT"] == fingerprint(server_crt)
    renewed_key, renewed_crt = pki["renewed"]
    for src, dst in ((renewed_key, live_key), (renewed_crt, live_crt)):
        tmp = dst.with_suffix(".new")
        tmp.write_bytes(src.read_bytes())
        tmp.rename(dst)
    after = get(pair, port, pki, auth="bob:b-pass")
    assert after.get("STATUS") == "200" and after["CERT"] == fingerprint(renewed_crt), after
    assert "certificate files changed; loaded them again" in d.stderr
    # Half a renewal (a certificate without its key) keeps the last good pair serving.
    other_key, other_crt = pki["server"]
    live_crt.write_bytes(other_crt.read_bytes())
    r = get(pair, port, pki, auth="bob:b-pass")
    assert r.get("STATUS") == "200" and r["CERT"] == fingerprint(renewed_crt), r
    d.wait_log("cannot be loaded; the previous certificate serves", timeout=5)
    live_key.write_bytes(other_key.read_bytes())
    r = get(pair, port, pki, auth="bob:b-pass")
    assert r.get("STATUS") == "200" and r["CERT"] == fingerprint(server_crt), r


def test_client_auth_types_switched_by_sighup(netpair, daemons, tmp_path, pki):
    """Each of Go's client auth types, as the toolkit means them, on one
    daemon whose web config a SIGHUP switches (TLS settings reload too)."""
    pair, port = netpair, unique_port()
    server_key, server_crt = pki["server"]
    web = tmp_path / "web.yml"

    def config(auth: str) -> None:
        ca = f"  client_ca_file: {pki['client_ca']}\n" if auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") else ""
        web.write_text(f"tls_server_config:\n  cert_file: {server_crt}\n  key_file: {server_key}\n"
                       f"  client_auth_type: {auth}\n{ca}")

    # client auth type -> accepted? for (no certificate, the client CA's, another CA's)
    expected = {
        "NoClientCert": (True, True, True),
        "RequestClientCert": (True, True, True),
        "RequireAnyClientCert": (False, True, True),
        "VerifyClientCertIfGiven": (True, True, False),
        "RequireAndVerifyClientCert": (False, True, False),
    }
    d = None
    for i, (auth, accepted) in enumerate(expected.items()):
        config(auth)
        if d is None:
            d = start(daemons, pair, port, web).wait_ready()
        else:
            d.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: d.stderr.count("configuration reloaded") == i, timeout=15, what="the reload")
            assert f"client_auth={auth}" in d.stderr
        got = tuple(get(pair, port, pki, cert=c).get("STATUS") == "200" for c in (None, pki["client"], pki["rogue"]))
        assert got == accepted, (auth, got)


def test_config_check_loads_the_web_config(flowmeterd, tmp_path, pki):
    """`flowmeterd config check` checks the web config the file names, its
    certificate files included, as the daemon would load them."""
    server_key, server_crt = pki["server"]
    web, cfg = tmp_path / "web.yml", tmp_path / "flowmeter.yaml"
    cfg.write_text(f"web_config: {web}\n")
    r = sh(flowmeterd, "config", "check", str(cfg), check=False)
    assert r.returncode == 1 and f"web_config: {web}: cannot read the web config: No such file or directory" in r.stderr, r.stderr
    # The renewed certificate with the first key: they do not belong together.
    web.write_text(f"tls_server_config:\n  cert_file: {pki['renewed'][1]}\n  key_file: {server_key}\n")
    r = sh(flowmeterd, "config", "check", str(cfg), check=False)
    assert r.returncode == 1 and "tls_server_config.key_file" in r.stderr and "cannot serve with cert_file" in r.stderr, r.stderr
    web.write_text(f"tls_server_config:\n  cert_file: {server_crt}\n  key_file: {server_key}\n")
    r = sh(flowmeterd, "config", "check", str(cfg), check=False)
    assert r.returncode == 0 and f"web config {web}" in r.stdout, r.stdout + r.stderr
