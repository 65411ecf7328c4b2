#!/usr/bin/env python3
"""Memory and scrape time of flowmeterd with N live per-service series
(tools/bench series [N], default 10,000 series).

Starts the release flowmeterd in a network namespace of its own, with the
series cap above N and peers labelled by address, then opens N/4 UDP sockets,
each connected to a different address behind a gateway on a veth, and sends one
datagram from each: N/4 (python3, <address>, udp) pairs, every one live, each
four series (bytes and packets, both directions). Prints flowmeterd's resident
memory before and with the series (median of 5 samples, 1 s apart), the size
of /metrics and its scrape time: the median of 20 GETs made one after another
by one client inside the namespace, so the time is the daemon's render and
transfer, not a client's start-up. With BENCH_FIGURES set (tools/bench does),
appends the figures to that file for tools/bench_results.py. Root only;
everything it creates is removed on exit.

With --profile FILE (after N and the binary), also records the daemon with
`perf record -g` while one client scrapes /metrics 200 times in a row, into
FILE (read it with `perf report -i FILE --no-children`).
"""
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_results as br  # noqa: E402  (figure ids and targets)

NS = f"fmbench{os.getpid()}"
PORT = 19810


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


OPENER = r"""
import resource, socket, sys
n = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n + 256), max(hard, n + 256)))
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((f"10.128.{1 + i // 250}.{1 + i % 250}", 9))
    s.send(b"x")
    socks.append(s)
print("ready", flush=True)
sys.stdin.read()   # until the benchmark closes our stdin
"""


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def sample_rss(pid, n=5, into=None):
    values = []
    for _ in range(n):
        values.append(rss_kib(pid))
        time.sleep(1)
    if into is not None:
        into.extend(v / 1024 for v in values)
    return statistics.median(values)


SCRAPER = r"""
import sys, time, urllib.request
n, url = int(sys.argv[1]), sys.argv[2]
times = []
for _ in range(n):
    t = time.monotonic()
    b = urllib.request.urlopen(url, timeout=30).read()
    times.append(time.monotonic() - t)
sys.stdout.write(" ".join(f"{x:.5f}" for x in times) + "\n" + b.decode())
"""


def scrapes(n=1):
    """(last body, [seconds]) of n /metrics GETs in a row from inside the namespace."""
    out = sh("ip", "netns", "exec", NS, sys.executable, "-c", SCRAPER, str(n),
             f"http://127.0.0.1:{PORT}/metrics").stdout
    secs, body = out.split("\n", 1)
    return body, [float(x) for x in secs.split()]


def scrape():
    body, secs = scrapes(1)
    return body, secs[0]


def udp_series(body):
    return sum(1 for l in body.splitlines()
               if l.startswith("flowmeter_network_io_bytes_total{") and 'transport="udp"' in l and 'direction="transmit"' in l)


def main():
    n = max(1, (int(sys.argv[1]) if len(sys.argv) > 1 else 10_000) // 4)
    binary = sys.argv[2] if len(sys.argv) > 2 else "flowmeterd"
    profile = sys.argv[4] if len(sys.argv) > 4 and sys.argv[3] == "--profile" else None
    tmp = tempfile.mkdtemp(prefix="fmbench-")
    cfg = os.path.join(tmp, "bench.yaml")
    with open(cfg, "w") as f:
        f.write(f"series:\n  max_per_metric: {n + 1000}\n  expiry: 1h\n  peer_addresses: true\n")
    sh("ip", "netns", "add", NS)
    daemon = None
    socks = []
    try:
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        # The addresses sit behind a gateway on a veth whose other end is in
        # the same namespace and does not forward: one neighbour entry, and
        # the datagrams are dropped there.
        sh("ip", "-n", NS, "link", "add", "fmb0", "type", "veth", "peer", "name", "fmb1")
        sh("ip", "-n", NS, "addr", "add", "10.127.0.1/24", "dev", "fmb0")
        sh("ip", "-n", NS, "addr", "add", "10.127.0.2/24", "dev", "fmb1")
        sh("ip", "-n", NS, "link", "set", "fmb0", "up")
        sh("ip", "-n", NS, "link", "set", "fmb1", "up")
        sh("ip", "-n", NS, "route", "add", "10.128.0.0/16", "via", "10.127.0.2", "dev", "fmb0")
        daemon = subprocess.Popen(["ip", "netns", "exec", NS, binary, "--config", cfg, "--interfaces", "fmb0",
                                   "--interval", "1s", "--metrics-listen", f"127.0.0.1:{PORT}",
                                   "--state-dir", os.path.join(tmp, "state"), "--log-level", "warning"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                scrape()
                break
            except subprocess.CalledProcessError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"flowmeterd did not start: {daemon.stderr.read() if daemon.poll() is not None else ''}")
                time.sleep(0.3)
        time.sleep(2)
        base_samples, loaded_samples = [], []
        base = sample_rss(daemon.pid, into=base_samples)
        base_body, base_secs = scrape()

        # The sockets live in a child inside the namespace until we are done.
        opener = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", OPENER, str(n)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        socks.append(opener)
        if opener.stdout.readline().strip() != "ready":
            raise SystemExit("the socket opener failed")
        deadline = time.monotonic() + 60
        while udp_series(scrape()[0]) < n and time.monotonic() < deadline:
            time.sleep(1)
        body, _ = scrape()
        series = udp_series(body)
        loaded = sample_rss(daemon.pid, into=loaded_samples)
        _, times = scrapes(20)
        lines = sum(1 for l in body.splitlines() if l and not l.startswith("#"))
        if profile:
            perf = subprocess.Popen(["perf", "record", "-g", "-o", profile, "-p", str(daemon.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
            _, ptimes = scrapes(200)
            perf.send_signal(2)  # SIGINT: perf writes its file and exits
            perf.wait(timeout=60)
            print(f"  profiled 200 scrapes (median {statistics.median(ptimes) * 1000:.1f} ms) into {profile}")
        print(f"flowmeterd with {series} live UDP service pairs ({n} sockets, {4 * series} series), interval 1s")
        print(f"  RSS before:          {base / 1024:8.1f} MiB  (/metrics {len(base_body) / 1024:.0f} KiB, {base_secs * 1000:.1f} ms)")
        print(f"  RSS with the pairs:  {loaded / 1024:8.1f} MiB")
        print(f"  per pair:            {(loaded - base) * 1024 / max(series, 1):8.0f} bytes")
        print(f"  /metrics:            {len(body) / 1024 / 1024:8.1f} MiB, {lines} samples, "
              f"scrape median {statistics.median(times) * 1000:.1f} ms (20 scrapes)")
        med = statistics.median(times) * 1000
        fig = br.FIGURES["series.scrape_ms"]
        print(f"  target: /metrics with 10,000 series scraped in {fig.target[0]} {fig.target[1]:g} ms: {med:.1f} ms, "
              + br.verdict(fig, med))
        # Kept in out/bench/results.json (tools/bench sets BENCH_FIGURES): only for
        # the 10,000 series the ids and the target are about.
        figures = os.environ.get("BENCH_FIGURES")
        if 4 * n == 10_000 and series == n:
            br.emit(figures, "series.rss_before_mib", base_samples)
            br.emit(figures, "series.rss_10k_mib", loaded_samples)
            br.emit(figures, "series.bytes_per_pair", [(loaded - base) * 1024 / max(series, 1)])
            br.emit(figures, "series.scrape_ms", [t * 1000 for t in times])
        if series < n:
            print(f"  WARNING: only {series} of {n} pairs appeared", file=sys.stderr)
            return 1
        return 0
    finally:
        for p in socks:
            p.stdin.close()
            p.wait(timeout=30)
        if daemon and daemon.poll() is None:
            daemon.terminate()
            daemon.wait(timeout=30)
        sh("ip", "netns", "del", NS, check=False)


if __name__ == "__main__":
    sys.exit(main())
