"""Packet drops end to end (bpf/flowmeter_drops.bpf.c on skb:kfree_skb):
real drops made by nftables, by the UDP stack (no socket) and by a TBF
qdisc, counted against the kernel's own counters (the nft rule's counter,
/proc/net/snmp, `tc -s qdisc`), with the reason names checked against the
kernel's enum as bpftool reads it from the host's BTF, independently of
flowmeterd.

flowmeterd runs in namespace A and counts drops on A's interfaces; the
socket hooks see the sockets of both namespaces, so a drop in A of a packet
sent from B is tied to the sending socket's service pair.
"""
from __future__ import annotations

import contextlib
import json
import os
import re

import fmlib
import pytest
from conftest import IF_A, V4_A, V4_B, V6_A, bpftool_json, scrape_settled, sh, unique_port

FAMILIES = ("flowmeter_interface_drops_total", "flowmeter_packet_drops_total")


@pytest.fixture(scope="session")
def kernel_reasons() -> dict[str, int]:
    """The host kernel's enum skb_drop_reason (names less SKB_DROP_REASON_ ->
    value), from `bpftool btf dump`; empty on kernels without it (before 5.17)."""
    out = sh("bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", timeout=120).stdout
    m = re.search(r"^\[\d+\] ENUM 'skb_drop_reason'[^\n]*\n((?:\t'[^']+' val=-?\d+\n)+)", out, re.M)
    if not m:
        return {}
    return {name.removeprefix("SKB_DROP_REASON_"): int(v) for name, v in re.findall(r"'([^']+)' val=(-?\d+)", m.group(1))}


def label(reasons: dict[str, int], name: str) -> str:
    """What flowmeterd must call the kernel's reason `name` on this kernel."""
    if not reasons:
        return "unknown"
    assert name in reasons, f"this kernel's enum skb_drop_reason has no {name}: {sorted(reasons)}"
    return name


def start(pair, daemons, tmp_path, services: dict[str, int]):
    """flowmeterd in A with a 1 s interval, a flow log, and service rules by local port."""
    config = tmp_path / "flowmeter.yaml"
    config.write_text("services:\n" + "".join(f"  - name: {n}\n    ports: {p}\n" for n, p in services.items())
                      if services else "{}\n")
    port = unique_port()
    d = daemons(pair.a, "--config", str(config), "--interfaces", IF_A, "--interval", "1s",
                "--metrics-listen", f"127.0.0.1:{port}", "--flow-log", str(tmp_path / "flows.jsonl"),
                "--state-dir", str(tmp_path / "state")).wait_ready()
    # The hook is there on this machine's kernel: one line says which twin.
    assert "drop hook attached" in d.stderr, d.stderr
    assert " warning " not in d.stderr, d.stderr
    return d, port


def nft(pair, ns: str, *rules: str) -> None:
    """A table `fmdrops` with an input chain holding `rules`."""
    pair.run(ns, "nft", "add", "table", "inet", "fmdrops")
    pair.run(ns, "nft", "add", "chain", "inet", "fmdrops", "input",
             "{ type filter hook input priority 0; policy accept; }")
    for r in rules:
        pair.run(ns, "nft", "add", "rule", "inet", "fmdrops", "input", *r.split())


def nft_counter(pair, ns: str) -> int:
    """Packets counted by the (one) dropping rule of table fmdrops."""
    out = json.loads(pair.run(ns, "nft", "-j", "list", "table", "inet", "fmdrops").stdout)
    counters = [e["counter"]["packets"] for x in out["nftables"] if "rule" in x
                for e in x["rule"]["expr"] if "counter" in e]
    assert len(counters) == 1, out
    return counters[0]


def drops(m: fmlib.Exposition, family: str, **labels) -> dict[str, float]:
    """reason -> value of the series of `family` matching `labels`."""
    out = {}
    for (name, lbls), v in m.samples.items():
        d = dict(lbls)
        if name == family and all(d.get(k) == v2 for k, v2 in labels.items()):
            out[d["reason"]] = v
    return out


def settled(pair, port) -> fmlib.Exposition:
    _, body = scrape_settled(pair, pair.a, port, FAMILIES)
    m = fmlib.parse_exposition(body)
    assert not m.problems, m.problems
    return m


def test_netfilter_drop(netpair, daemons, tmp_path, kernel_reasons):
    """An nftables rule dropping one UDP port in A: the drop count equals the
    rule's counter and the client's sends, on the interface, on the sending
    socket's service pair and on the flow record, all as NETFILTER_DROP."""
    pair = netpair
    dport, sport, n = unique_port(), unique_port(), 40
    d, port = start(pair, daemons, tmp_path, {"dropcli": sport})
    nft(pair, pair.a, f"udp dport {dport} counter drop")
    assert int(pair.nettool(pair.b, "udp-send", V4_A, str(dport), str(n), "200", str(sport))) == n
    assert nft_counter(pair, pair.a) == n
    want = label(kernel_reasons, "NETFILTER_DROP")
    m = settled(pair, port)
    assert drops(m, "flowmeter_interface_drops_total", interface=IF_A, direction="receive") == {want: n}
    assert drops(m, "flowmeter_packet_drops_total", service="dropcli", peer_service="unknown",
                 transport="udp") == {want: n}
    assert d.terminate() == 0, d.stderr
    # The flow records of the dropped datagrams carry them, with the reason.
    recs = [r for r in fmlib.read_flow_log(str(tmp_path / "flows.jsonl"))
            if r.get("dst_port") == dport and r.get("src_port") == sport and r["direction"] == "receive"]
    assert sum(r["packets"] for r in recs) == n, recs
    assert sum(r.get("drops", 0) for r in recs) == n, recs
    assert [x for r in recs for x in r.get("drop_reasons", [])] == [{"reason": want, "packets": n}], recs
    # The flow keeps the tc flow's pair (its local end, A's port, has no
    # socket, so the sender names the peer).
    assert all((r["service"], r["peer_service"]) == ("unknown", "dropcli") for r in recs), recs


def udp_noports(pair, ns: str, v6: bool) -> int:
    """Udp NoPorts (/proc/net/snmp), or Udp6NoPorts (/proc/net/snmp6), of the namespace."""
    if v6:
        for line in pair.run(ns, "cat", "/proc/net/snmp6").stdout.splitlines():
            if line.startswith("Udp6NoPorts"):
                return int(line.split()[1])
        raise AssertionError("no Udp6NoPorts in /proc/net/snmp6")
    lines = [l.split() for l in pair.run(ns, "cat", "/proc/net/snmp").stdout.splitlines() if l.startswith("Udp:")]
    return int(lines[1][lines[0].index("NoPorts")])


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_closed_port(netpair, daemons, tmp_path, kernel_reasons, family):
    """UDP to a port nobody listens on: NO_SOCKET (or the kernel's name for
    it), as many as the UDP stack's own NoPorts counter went up; IPv4 and
    IPv6 headers both parsed to the sender's socket."""
    pair = netpair
    v6 = family == "ipv6"
    dport, sport, n = unique_port(), unique_port(), 25
    d, port = start(pair, daemons, tmp_path, {"dropcli": sport})
    before = udp_noports(pair, pair.a, v6)
    assert int(pair.nettool(pair.b, "udp-send", V6_A if v6 else V4_A, str(dport), str(n), "64", str(sport))) == n
    assert udp_noports(pair, pair.a, v6) - before == n
    want = label(kernel_reasons, "NO_SOCKET")
    m = settled(pair, port)
    assert drops(m, "flowmeter_interface_drops_total", interface=IF_A, direction="receive") == {want: n}
    assert drops(m, "flowmeter_packet_drops_total", service="dropcli", peer_service="unknown",
                 transport="udp") == {want: n}
    assert d.terminate() == 0, d.stderr


def test_tbf_overflow(netpair, daemons, tmp_path, kernel_reasons):
    """A TBF qdisc on A's veth overflowing: the transmit drops on the interface
    equal the qdisc's own drop count (`tc -s qdisc`)."""
    pair = netpair
    dport, sport, n = unique_port(), unique_port(), 300
    d, port = start(pair, daemons, tmp_path, {"blaster": sport})
    pair.run(pair.a, "tc", "qdisc", "add", "dev", IF_A, "root", "tbf", "rate", "1mbit", "burst", "1600", "limit", "3000")
    assert int(pair.nettool(pair.a, "udp-send", V4_B, str(dport), str(n), "1000", str(sport))) == n
    stats = json.loads(pair.run(pair.a, "tc", "-s", "-j", "qdisc", "show", "dev", IF_A).stdout)
    tbf = [q for q in stats if q.get("kind") == "tbf"]
    assert len(tbf) == 1, stats
    qdrops = tbf[0]["drops"]
    assert 0 < qdrops < n, tbf
    m = settled(pair, port)
    seen = drops(m, "flowmeter_interface_drops_total", interface=IF_A, direction="transmit")
    # The kernel gives tbf's overflow one reason; which one depends on the
    # kernel (QDISC_DROP where the enum has it, "unknown" before 5.17).
    assert sum(seen.values()) == qdrops and len(seen) == 1, (seen, qdrops)
    reason = next(iter(seen))
    print("TBF overflow reason:", reason, "drops:", qdrops)
    if kernel_reasons:
        assert reason in kernel_reasons and reason in ("QDISC_DROP", "QDISC_OVERLIMIT"), seen
    else:
        assert reason == "unknown", seen
    # The sending socket's pair: the qdisc's drops (and B's NO_SOCKET drops, counted in B's namespace).
    pair_drops = drops(m, "flowmeter_packet_drops_total", service="blaster", transport="udp")
    assert pair_drops.get(reason) == qdrops, pair_drops
    assert d.terminate() == 0, d.stderr


def test_tcp_drops_on_service_pair(netpair, daemons, tmp_path, kernel_reasons):
    """A TCP transfer whose data segments nftables drops one in eight: the
    drops are named to the server's service pair and equal the rule's
    counter, and the client retransmits them."""
    pair = netpair
    dport, sport = unique_port(), unique_port()
    d, port = start(pair, daemons, tmp_path, {"dropsrv": dport, "dropcli": sport})
    nft(pair, pair.a, f"tcp dport {dport} meta length gt 500 numgen inc mod 8 == 0 counter drop")
    server = pair.server(pair.a, "tcp-server", V4_A, str(dport))
    nbytes = 2_000_000
    assert int(pair.nettool(pair.b, "tcp-send", V4_A, str(dport), str(nbytes), str(sport))) == nbytes
    pair.finish(server)
    dropped = nft_counter(pair, pair.a)
    assert dropped > 0
    want = label(kernel_reasons, "NETFILTER_DROP")
    m = settled(pair, port)
    got = drops(m, "flowmeter_packet_drops_total", service="dropsrv", peer_service="dropcli", transport="tcp")
    print("TCP pair drops:", got)
    # TCP itself may drop a segment too (one arriving after its socket is
    # gone, say, in either namespace): reported under its own reason, not
    # mixed into the rule's count.
    assert got.get(want) == dropped, got
    assert m.value("flowmeter_tcp_retransmits_total", service="dropcli", peer_service="dropsrv", transport="tcp") > 0
    on_if = drops(m, "flowmeter_interface_drops_total", interface=IF_A, direction="receive")
    assert on_if.get(want) == dropped, on_if
    assert d.terminate() == 0, d.stderr


def test_queue_purge_at_close_is_not_a_drop(netpair, daemons, tmp_path, kernel_reasons):
    """Connections whose client closes first, as tools/bench's churn does:
    the server's FIN reaches the client's closed socket and is freed with
    it (kfree_skb with QUEUE_PURGE, 6.5+), once per connection. Like
    SKB_CONSUMED, that is no drop: no series, no flow-record drop, and no
    drop-table key (each cost a hash insert in the kernel and a read and a
    delete in the daemon, per connection)."""
    if "QUEUE_PURGE" not in kernel_reasons:
        pytest.skip("this kernel has no SKB_DROP_REASON_QUEUE_PURGE (before 6.5): purges carry another reason")
    pair = netpair
    dport, n = unique_port(), 200
    d, port = start(pair, daemons, tmp_path, {"echosrv": dport})
    # The kernel does purge here: a private tracefs instance counts the
    # events of that reason (host-wide; other purges only add to it).
    tracing = "/sys/kernel/tracing"
    if not os.path.isdir(f"{tracing}/instances"):
        sh("mount", "-t", "tracefs", "tracefs", tracing)
    inst = f"{tracing}/instances/fm-purge-{os.getpid()}"
    os.mkdir(inst)
    try:
        event = f"{inst}/events/skb/kfree_skb"
        with open(f"{event}/filter", "w") as f:
            f.write(f"reason == {kernel_reasons['QUEUE_PURGE']}")
        with open(f"{event}/enable", "w") as f:
            f.write("1")
        server = pair.server(pair.b, "echo-server", V4_B, str(dport), str(n))
        assert int(pair.nettool(pair.a, "echo-clients", V4_B, str(dport), str(n))) == n
        pair.finish(server)
        with open(f"{event}/enable", "w") as f:
            f.write("0")
        with open(f"{inst}/trace") as f:
            counted = sum(1 for l in f if "QUEUE_PURGE" in l)
    finally:
        os.rmdir(inst)
    assert counted >= n, f"the kernel purged {counted} queues for {n} connections: the test tests nothing"
    # Right after the connections, while per-5-tuple keys would still be in
    # the table (keys go only after an idle interval). The table is
    # host-wide: only keys with the test's port are the test's. This
    # daemon's table is found by the map ids its descriptors hold.
    ids = set()
    for fd in os.listdir(f"/proc/{d.proc.pid}/fdinfo"):
        with contextlib.suppress(OSError), open(f"/proc/{d.proc.pid}/fdinfo/{fd}") as f:
            ids.update(int(l.split()[1]) for l in f if l.startswith("map_id:"))
    tables = [m for m in bpftool_json("map", "show") if m.get("name") == "fm_drops" and m["id"] in ids]
    assert len(tables) == 1, tables
    keys = [k["formatted"]["key"] for k in bpftool_json("map", "dump", "id", str(tables[0]["id"]))]
    ours = [k for k in keys if dport in (k["sport"], k["dport"])]
    assert ours == [], f"{len(ours)} drop-table keys with the test's port after {n} connections: {ours[:3]}"
    _, body = scrape_settled(pair, pair.a, port, ("flowmeter_interface_packets_total",))
    m = fmlib.parse_exposition(body)
    assert m.value("flowmeter_tcp_connections_opened_total", service="echosrv", peer_service="python3",
                   transport="tcp", role="server") == n
    purges = [lbls for (name, lbls), _ in m.samples.items()
              if name in FAMILIES and dict(lbls).get("reason") == "QUEUE_PURGE"]
    assert purges == [], purges
    assert d.terminate() == 0, d.stderr


def test_full_drop_table_keeps_interface_counts(netpair, daemons, tmp_path, kernel_reasons):
    """More distinct 5-tuples dropped at once than the kernel's drop table
    holds (16,384 keys): the interface count stays exact (the drops past
    the table's room count under the interface's key without the 5-tuple),
    and nothing is lost."""
    pair = netpair
    dport, n = unique_port(), 18000
    d, port = start(pair, daemons, tmp_path, {})
    nft(pair, pair.a, f"udp dport {dport} counter drop")
    assert int(pair.nettool(pair.b, "udp-spray", V4_A, str(dport), "20000", str(n), timeout=120)) == n
    assert nft_counter(pair, pair.a) == n
    want = label(kernel_reasons, "NETFILTER_DROP")
    m = settled(pair, port)
    assert drops(m, "flowmeter_interface_drops_total", interface=IF_A, direction="receive").get(want) == n
    assert m.value("flowmeter_drops_lost_total") == 0
    assert d.terminate() == 0, d.stderr
