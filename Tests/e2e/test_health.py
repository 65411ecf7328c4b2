"""/healthz and /readyz on the metrics listener (docs/flowmeterd.md, "Health
endpoints"): with a 3 s interval, /readyz answers 503 with its reason until the
first interval has been evicted and 200 after it, and /healthz answers 200 all
along."""
from __future__ import annotations

import http.client
import json
import os
import time

from conftest import IF_A, in_netns, unique_port

INTERVAL = 3.0


def get(ns: str, port: int, path: str) -> tuple[int, str, str]:
    """GET path from the daemon listening on ns's loopback: (status, content type, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with in_netns(ns):
        conn.connect()
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type", ""), r.read().decode()
    finally:
        conn.close()


def test_readyz_after_the_first_interval_healthz_throughout(netpair, daemons, tmp_path):
    port = unique_port()
    d = daemons(netpair.a, "--interfaces", IF_A, "--interval", f"{INTERVAL:g}s",
                "--metrics-listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state")).wait_ready()
    # The interval clock starts with the servers, so the first eviction is
    # about 3 s away: the programs are attached, the interval not evicted.
    t0 = time.monotonic()
    status, ctype, body = get(netpair.a, port, "/readyz")
    assert status == 503, (status, body)
    assert ctype == "application/json", ctype
    assert json.loads(body) == {"ready": False, "reasons": ["the first interval has not been evicted yet"]}, body
    assert get(netpair.a, port, "/healthz")[::2] == (200, "ok\n")

    # Poll both until /readyz turns 200; /healthz is 200 at every poll.
    answers = []
    became_ready = None
    while time.monotonic() - t0 < INTERVAL + 15:
        h = get(netpair.a, port, "/healthz")
        assert h[0] == 200 and h[2] == "ok\n", h
        status, ctype, body = get(netpair.a, port, "/readyz")
        answers.append((round(time.monotonic() - t0, 2), status))
        if status == 200:
            became_ready = time.monotonic() - t0
            assert ctype == "application/json", ctype
            assert json.loads(body) == {"ready": True}, body
            break
        assert status == 503, (status, body)
        assert json.loads(body)["reasons"] == ["the first interval has not been evicted yet"], body
        time.sleep(0.1)
    assert became_ready is not None, f"/readyz never answered 200: {answers}\n{d.stderr}"
    # Not before the first interval could have ended (the daemon announced
    # "serving metrics" at most a second or so after its interval clock started).
    assert became_ready > INTERVAL - 1.5, f"ready after {became_ready:.2f} s, before the first interval: {answers}"

    # It stays ready (idle: no reader stalls), and /healthz stays 200.
    deadline = time.monotonic() + INTERVAL + 0.5
    while time.monotonic() < deadline:
        assert get(netpair.a, port, "/readyz")[:1] == (200,)
        assert get(netpair.a, port, "/healthz")[0] == 200
        time.sleep(0.5)
    assert d.terminate() == 0, d.stderr
