"""DNS end to end (bpf/flowmeter_dns.bpf.c on cgroup_skb of the cgroup v2
root): a real dnsmasq (and, for SERVFAIL, bind9) in namespace A answers dig
in namespace B over UDP and TCP; flowmeterd counts each query once per (service pair, qtype, rcode),
exactly, times it in the kernel, and turns unanswered queries into
rcode="timeout".

The client's service is named by a rule on its source port (dig -b), the
server's by a rule on port 53; dnsmasq's own socket names the peer.
"""
from __future__ import annotations

import json
import struct
import time

import fmlib
import pytest
from conftest import IF_A, V4_A, V4_B, V6_A, V6_B, scrape, sh, unique_port, wait_for

FAMILY = "flowmeter_dns_requests_total"
# One name per case, served by dnsmasq (--local=/test/: other names under
# test are NXDOMAIN, never forwarded).
LONG = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 56]) + ".test"  # 253 characters: the limit


def dnsmasq(pair, tmp_path):
    """dnsmasq in A on V4_A:53, UDP and TCP: svc.test (A, AAAA), an SRV
    record, many.test with 60 A records (an answer past the kernel's copy),
    the 253-character name, NXDOMAIN for the rest of .test, and REFUSED for
    refused.test (forwarded to an upstream with no route)."""
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"10.1.0.{i} many.test\n" for i in range(1, 61)) + f"10.1.9.9 {LONG}\n")
    p = pair.popen(pair.a, "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                   "--pid-file=", f"--listen-address={V4_A},{V6_A}", "--bind-interfaces", "--port=53",
                   "--local=/test/", "--host-record=svc.test,10.1.2.4,fd00::4",
                   "--srv-host=_http._tcp.svc.test,svc.test,80", "--server=/refused.test/192.0.2.1",
                   f"--addn-hosts={hosts}", "--log-facility=-")
    def listening():
        assert p.poll() is None, p.stderr.read()
        return pair.run(pair.a, "ss", "-Htln", "sport = :53", check=False).stdout.strip()
    wait_for(listening, timeout=10, what="dnsmasq to listen")
    return p


def named(pair, tmp_path, port: int, upstream_port: int):
    """bind9's named in A on V4_A:port, forwarding only to an upstream on
    V4_A:upstream_port that does not answer (nothing listens there): every
    query it gets is SERVFAIL. Runs as root (the test's directory is root's)."""
    d = tmp_path / "named"
    d.mkdir()
    (d / "named.conf").write_text(f"""options {{
    directory "{d}";
    pid-file none;
    listen-on port {port} {{ {V4_A}; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-query {{ any; }};
    allow-recursion {{ any; }};
    forwarders {{ {V4_A} port {upstream_port}; }};
    forward only;
    dnssec-validation no;
}};
""")
    p = pair.popen(pair.a, "named", "-g", "-c", str(d / "named.conf"))
    def listening():
        assert p.poll() is None, p.stderr.read()
        return pair.run(pair.a, "ss", "-Htln", f"sport = :{port}", check=False).stdout.strip()
    wait_for(listening, timeout=20, what="named to listen")
    return p


def dig(pair, port: int, name: str, qtype: str, tcp: bool, server: str = V4_A, server_port: int = 53) -> str:
    """One query from B with source port `port`, one try; dig's status line."""
    source = V6_B if ":" in server else V4_B
    args = ["dig", f"@{server}", "-p", str(server_port), "-b", f"{source}#{port}", "+tries=1", "+timeout=2"]
    if tcp:
        args.append("+tcp")
    p = pair.run(pair.b, *args, name, qtype, check=False, timeout=15)
    for line in p.stdout.splitlines():
        if "status:" in line:
            return line.split("status:")[1].split(",")[0].strip()
    return "no answer"


def dns_series(m: fmlib.Exposition, **labels) -> dict[tuple[str, str], float]:
    """(qtype, rcode) -> value of the DNS request series matching `labels`."""
    out = {}
    for (name, lbls), v in m.samples.items():
        d = dict(lbls)
        if name == FAMILY and all(d.get(k) == x for k, x in labels.items()):
            out[(d["qtype"], d["rcode"])] = v
    return out


def start(pair, daemons, tmp_path, cport: int, extra_ports: str = "", *extra: str):
    config = tmp_path / "flowmeter.yaml"
    config.write_text(f"services:\n  - name: dnscli\n    ports: {cport}-{cport + 39}\n"
                      "  - name: dnssrv\n    ports: 53\n")
    port = unique_port()
    d = daemons(pair.a, "--config", str(config), "--interfaces", "veth-a", "--interval", "1s",
                "--metrics-listen", f"127.0.0.1:{port}", "--dns-ports", "53" + extra_ports,
                "--dns-timeout", "1s", "--state-dir", str(tmp_path / "state"),
                "--flow-log", str(tmp_path / "flows.jsonl"), *extra).wait_ready()
    assert "DNS hook attached" in d.stderr, d.stderr
    return d, port


def settle(pair, port, want_total: int, **labels) -> fmlib.Exposition:
    """Scrapes until the DNS series matching `labels` add up to want_total
    (a query is counted once it ended: a pass later, timeouts after
    --dns-timeout), then once more a second later: nothing more comes."""
    def total():
        m = fmlib.parse_exposition(scrape(pair, pair.a, port)[1])
        return sum(dns_series(m, **labels).values())
    try:
        wait_for(lambda: total() >= want_total, timeout=20, interval=0.3, what="DNS counts")
    except AssertionError:
        pass  # the exact comparison below shows what came
    time.sleep(2.2)
    m = fmlib.parse_exposition(scrape(pair, pair.a, port)[1])
    assert not m.problems, m.problems
    return m


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_rcodes_exact(netpair, daemons, tmp_path, transport):
    """A, AAAA, SRV, NXDOMAIN (also for a name at the 253-character limit),
    REFUSED (UDP), SERVFAIL (bind9 with an upstream that does not answer), and an answer of 60 records (longer than the kernel copies): each
    query counted once under its qtype and rcode, on the pair of the client's
    service and the server's."""
    pair = netpair
    tcp = transport == "tcp"
    cport = unique_port() // 40 * 40 % 50000 + 10000
    named_port, upstream = unique_port(), unique_port()
    d, port = start(pair, daemons, tmp_path, cport, f",{named_port}")
    dnsmasq(pair, tmp_path)
    named(pair, tmp_path, named_port, upstream)
    plan = [("svc.test", "A", "NOERROR")] * 3 + [("svc.test", "AAAA", "NOERROR")] * 2 + [
        ("_http._tcp.svc.test", "SRV", "NOERROR"), ("nope.test", "A", "NXDOMAIN"), ("nope2.test", "AAAA", "NXDOMAIN"),
        ("many.test", "A", "NOERROR"), (LONG, "A", "NOERROR"), ("x" + LONG[1:], "A", "NXDOMAIN")]
    if not tcp:
        # dnsmasq closes a TCP query it cannot forward without an answer.
        plan.append(("refused.test", "A", "REFUSED"))
    want: dict[tuple[str, str], int] = {}
    for i, (name, qtype, rcode) in enumerate(plan):
        got = dig(pair, cport + i, name, qtype, tcp)
        assert got == rcode, (name, qtype, got)
        want[(qtype, rcode)] = want.get((qtype, rcode), 0) + 1
    # SERVFAIL from bind9, whose upstream does not answer (twice: A and AAAA).
    assert dig(pair, cport + 30, "x.example", "A", tcp, server_port=named_port) == "SERVFAIL"
    assert dig(pair, cport + 31, "y.example", "AAAA", tcp, server_port=named_port) == "SERVFAIL"
    m = settle(pair, port, len(plan) + 2, service="dnscli", transport=transport)
    got = dns_series(m, service="dnscli", peer_service="dnssrv", transport=transport)
    assert got == {k: float(v) for k, v in want.items()}, (got, want)
    servfail = dns_series(m, service="dnscli", peer_service="named", transport=transport)
    assert servfail == {("A", "SERVFAIL"): 1.0, ("AAAA", "SERVFAIL"): 1.0}, servfail
    # Every answered query was timed: one latency sample each.
    count = m.value("flowmeter_dns_latency_seconds_count", service="dnscli", peer_service="dnssrv",
                    transport=transport)
    assert count == len(plan), count
    lost = {dict(l)["reason"]: v for (n, l), v in m.samples.items() if n == "flowmeter_dns_lost_total"}
    assert lost.get("ring") == 0 and lost.get("pending_full") == 0, lost
    assert d.terminate() == 0, d.stderr
    # The flow log: one dns record per query, with its name and answers.
    recs = [r for r in fmlib.read_flow_log(str(tmp_path / "flows.jsonl"), kind="dns")
            if r.get("service") == "dnscli" and r.get("peer_service") == "dnssrv"]
    assert sorted((r["name"], r["qtype"], r["rcode"]) for r in recs) == sorted(
        (n.lower(), q, rc) for n, q, rc in plan), recs
    assert all(r["protocol"] == transport and r["peer_service"] == "dnssrv" and r["event"] == "answer"
               and r["server_addr"] == V4_A and r["server_port"] == 53 and r["client_addr"] == V4_B for r in recs), recs
    by = {(r["name"], r["qtype"]): r for r in recs}
    a = by[("svc.test", "A")]
    assert [(x["type"], x["address"]) for x in a["answers"]] == [("A", "10.1.2.4")] and a["truncated"] is False, a
    assert a["answers"][0]["ttl"] >= 0 and a["answers"][0]["name"] == "svc.test", a
    assert [x["address"] for x in by[("svc.test", "AAAA")]["answers"]] == ["fd00::4"]
    # 60 records do not fit the kernel's 512-byte copy: the record says so.
    many = by[("many.test", "A")]
    assert many["answer_count"] == 60 and many["truncated"] is True and 0 < len(many["answers"]) < 60, many
    assert {x["address"] for x in many["answers"]} <= {f"10.1.0.{i}" for i in range(1, 61)}, many
    # The name at the limit is whole, in the question and in its answer.
    long = by[(LONG, "A")]
    assert long["truncated"] is False and [(x["name"], x["address"]) for x in long["answers"]] == [(LONG, "10.1.9.9")], long


def test_timeout(netpair, daemons, tmp_path):
    """A query to a DNS port nobody answers on counts as rcode="timeout",
    once, after --dns-timeout; no latency sample."""
    pair = netpair
    cport = unique_port() // 40 * 40 % 50000 + 10000
    silent = unique_port()
    d, port = start(pair, daemons, tmp_path, cport, extra_ports=f",{silent}")
    assert dig(pair, cport, "svc.test", "A", False, server_port=silent) == "no answer"
    assert dig(pair, cport + 1, "svc.test", "AAAA", False, server_port=silent) == "no answer"
    m = settle(pair, port, 2, service="dnscli")
    assert dns_series(m, service="dnscli", transport="udp") == {("A", "timeout"): 1.0, ("AAAA", "timeout"): 1.0}
    count = m.value("flowmeter_dns_latency_seconds_count", service="dnscli", peer_service="unknown", transport="udp")
    assert count == 0, count
    assert d.terminate() == 0, d.stderr


def test_latency_against_capture(netpair, daemons, tmp_path, capture):
    """The kernel's latency of one query is within 1 ms of the gap between
    the query and its answer in a capture on the server's veth (the program
    runs in the client's socket path, one veth crossing from there each way:
    the kernel's time is the longer by microseconds)."""
    pair = netpair
    cport = unique_port() // 40 * 40 % 50000 + 10000
    d, port = start(pair, daemons, tmp_path, cport)
    dnsmasq(pair, tmp_path)
    c = capture(pair, pair.a, IF_A, "dns")
    assert dig(pair, cport, "svc.test", "A", False) == "NOERROR"
    time.sleep(1.5)  # tcpdump hands packets over in blocks, at most a second late
    c.stop()
    frames = fmlib.read_pcap(str(c.path))
    # Ethernet + IPv4 (20 bytes, no options here) + UDP ports.
    def udp_ports(f):
        if len(f.data) < 38 or f.data[12:14] != b"\x08\x00" or f.data[23] != 17:
            return None
        return struct.unpack("!HH", f.data[34:38])
    q = [f.ts for f in frames if udp_ports(f) == (cport, 53)]
    r = [f.ts for f in frames if udp_ports(f) == (53, cport)]
    assert len(q) == 1 and len(r) == 1, (q, r, c.stats)
    gap = r[0] - q[0]
    m = settle(pair, port, 1, service="dnscli")
    labels = dict(service="dnscli", peer_service="dnssrv", transport="udp")
    assert m.value("flowmeter_dns_latency_seconds_count", **labels) == 1
    kernel = m.value("flowmeter_dns_latency_seconds_sum", **labels)
    print(f"DNS latency: kernel {kernel * 1e6:.1f} us, capture gap {gap * 1e6:.1f} us, "
          f"difference {(kernel - gap) * 1e6:.1f} us")
    # The kernel's interval encloses the wire's (microsecond timestamps: 2 us of slack).
    assert gap - 2e-6 <= kernel < gap + 0.001, (kernel, gap)
    assert d.terminate() == 0, d.stderr


def test_names_off(netpair, daemons, tmp_path):
    """--no-dns-names: the dns records keep addresses, TTLs and counts, but
    no name of the question or of an answer."""
    pair = netpair
    cport = unique_port() // 40 * 40 % 50000 + 10000
    d, port = start(pair, daemons, tmp_path, cport, "", "--no-dns-names")
    dnsmasq(pair, tmp_path)
    assert dig(pair, cport, "svc.test", "A", False) == "NOERROR"
    assert dig(pair, cport + 1, "nope.test", "A", False) == "NXDOMAIN"
    m = settle(pair, port, 2, service="dnscli")
    assert dns_series(m, service="dnscli", transport="udp") == {("A", "NOERROR"): 1.0, ("A", "NXDOMAIN"): 1.0}
    assert d.terminate() == 0, d.stderr
    recs = [r for r in fmlib.read_flow_log(str(tmp_path / "flows.jsonl"), kind="dns") if r.get("service") == "dnscli"]
    assert len(recs) == 2, recs
    assert all("name" not in r and all("name" not in x and "target" not in x for x in r["answers"]) for r in recs), recs
    assert [x["address"] for r in recs for x in r["answers"]] == ["10.1.2.4"], recs
    text = (tmp_path / "flows.jsonl").read_text()
    assert "svc.test" not in text and "nope.test" not in text


def test_peer_named_by_resolved_name(netpair, daemons, tmp_path):
    """A client in B resolves ledger.shop.svc.cluster.local (dnsmasq in A,
    TTL 2 s) to a "ClusterIP" that an nftables DNAT rule in B sends to a
    server in A, as kube-proxy does, and connects: its pair is
    ledgercli -> shop/ledger with the exact bytes. Once the TTL and the grace
    (1 s) are over, a new connection to the address is not named by it.
    The ClusterIP is routed into the veth first: without the DNAT rule its
    packets would go to A, never off the machine."""
    pair = netpair
    cluster_ip, cluster_port, backend = "10.96.0.15", 80, unique_port()
    cport = unique_port() // 40 * 40 % 50000 + 10000
    config = tmp_path / "flowmeter.yaml"
    config.write_text(f"services:\n  - name: ledgercli\n    ports: {cport}-{cport + 39}\n")
    port = unique_port()
    d = daemons(pair.a, "--config", str(config), "--interfaces", "veth-a", "--interval", "1s",
                "--metrics-listen", f"127.0.0.1:{port}", "--dns-name-grace", "1s",
                "--state-dir", str(tmp_path / "state")).wait_ready()
    assert "DNS hook attached" in d.stderr, d.stderr
    p = pair.popen(pair.a, "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                   "--pid-file=", f"--listen-address={V4_A}", "--bind-interfaces", "--port=53",
                   "--local=/cluster.local/", f"--host-record=ledger.shop.svc.cluster.local,{cluster_ip},2")
    def listening():
        assert p.poll() is None, p.stderr.read()
        return pair.run(pair.a, "ss", "-Hlun", "sport = :53", check=False).stdout.strip()
    wait_for(listening, timeout=10, what="dnsmasq to listen")
    pair.run(pair.b, "ip", "route", "add", f"{cluster_ip}/32", "dev", "veth-b")
    pair.run(pair.b, "nft", "add", "table", "ip", "fmdnat")
    pair.run(pair.b, "nft", "add", "chain", "ip", "fmdnat", "output", "{ type nat hook output priority -100; }")
    pair.run(pair.b, "nft", "add", "rule", "ip", "fmdnat", "output", "ip", "daddr", cluster_ip, "tcp", "dport",
             str(cluster_port), "counter", "dnat", "to", f"{V4_A}:{backend}")

    def transfer(client_port: int, nbytes: int) -> None:
        server = pair.server(pair.a, "tcp-server", V4_A, str(backend))
        assert int(pair.nettool(pair.b, "tcp-send", cluster_ip, str(cluster_port), str(nbytes), str(client_port))) == nbytes
        pair.finish(server)

    answer = pair.run(pair.b, "dig", f"@{V4_A}", "+short", "+tries=1", "ledger.shop.svc.cluster.local", "A").stdout.split()
    assert answer == [cluster_ip], answer
    transfer(cport, 300_000)
    # The DNAT rule did the work (its counter), so the bytes went to A's server.
    rules = json.loads(pair.run(pair.b, "nft", "-j", "list", "table", "ip", "fmdnat").stdout)["nftables"]
    counters = [e["counter"]["packets"] for x in rules if "rule" in x for e in x["rule"]["expr"] if "counter" in e]
    assert len(counters) == 1 and counters[0] > 0, rules
    # TTL 2 s + grace 1 s later, the name is gone: a new connection is not named by it.
    time.sleep(3.5)
    transfer(cport + 1, 200_000)

    def bytes_of(m, peer):
        return m.value("flowmeter_network_io_bytes_total", service="ledgercli", peer_service=peer, transport="tcp",
                       direction="transmit")
    def done():
        m = fmlib.parse_exposition(scrape(pair, pair.a, port)[1])
        return bytes_of(m, "shop/ledger") == 300_000 and bytes_of(m, "unknown") == 200_000
    try:
        wait_for(done, timeout=20, interval=0.5, what="the pairs' bytes")
    finally:
        m = fmlib.parse_exposition(scrape(pair, pair.a, port)[1])
        seen = {dict(l).get("peer_service"): v for (n, l), v in m.samples.items()
                if n == "flowmeter_network_io_bytes_total" and dict(l).get("service") == "ledgercli"
                and dict(l).get("direction") == "transmit"}
        print("ledgercli transmit bytes by peer:", seen)
    assert bytes_of(m, "shop/ledger") == 300_000 and bytes_of(m, "unknown") == 200_000, seen
    assert d.terminate() == 0, d.stderr


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_ipv6(netpair, daemons, tmp_path, transport):
    """The same over IPv6: queries counted per rcode, timed, and the flow
    log's addresses are B's and A's IPv6 addresses."""
    pair = netpair
    tcp = transport == "tcp"
    cport = unique_port() // 40 * 40 % 50000 + 10000
    d, port = start(pair, daemons, tmp_path, cport)
    dnsmasq(pair, tmp_path)
    assert dig(pair, cport, "svc.test", "AAAA", tcp, server=V6_A) == "NOERROR"
    assert dig(pair, cport + 1, "svc.test", "A", tcp, server=V6_A) == "NOERROR"
    assert dig(pair, cport + 2, "nope.test", "A", tcp, server=V6_A) == "NXDOMAIN"
    m = settle(pair, port, 3, service="dnscli", transport=transport)
    assert dns_series(m, service="dnscli", peer_service="dnssrv", transport=transport) == {
        ("AAAA", "NOERROR"): 1.0, ("A", "NOERROR"): 1.0, ("A", "NXDOMAIN"): 1.0}
    assert m.value("flowmeter_dns_latency_seconds_count", service="dnscli", peer_service="dnssrv",
                   transport=transport) == 3
    assert d.terminate() == 0, d.stderr
    recs = [r for r in fmlib.read_flow_log(str(tmp_path / "flows.jsonl"), kind="dns") if r.get("service") == "dnscli"]
    assert len(recs) == 3 and all(r["client_addr"] == V6_B and r["server_addr"] == V6_A for r in recs), recs
    aaaa = [r for r in recs if r["qtype"] == "AAAA"][0]
    assert [x["address"] for x in aaaa["answers"]] == ["fd00::4"], aaaa
