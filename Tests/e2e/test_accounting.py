"""Accounting against ground truth: a tcpdump capture of the same interface.

The daemon runs in namespace A on veth-a. tcpdump starts before the daemon
attaches and stops after it detaches, so both see the same packets; the link
is otherwise silent (see NetPair). With offloads off every skb is one wire
packet, so the totals must agree exactly.
"""
from __future__ import annotations

import time

import pytest

import fmlib
from conftest import IF_A, MAC_A, V4_A, V4_B, V6_A, V6_B, NetPair, scrape_settled, unique_port

TCP_BYTES = 3_000_000
MTU = 1500
# Datagram payload sizes: the largest that fit one packet, and one that fragments.
UDP_SIZES = {4: [1, 100, 1000, 1472, 3000], 6: [1, 100, 1000, 1452, 3000]}
PINGS = 3


def udp_wire_packets(family: int, size: int) -> tuple[list[int], list[int]]:
    """IP packet lengths Linux sends for one UDP datagram at MTU 1500, split into
    (packets that carry the UDP header, later fragments)."""
    if family == 4:
        whole = 20 + 8 + size
        if whole <= MTU:
            return [whole], []
        per = (MTU - 20) & ~7
        body, lens = 8 + size, []
        while body > 0:
            take = min(per, body)
            lens.append(20 + take)
            body -= take
        return lens[:1], lens[1:]
    whole = 40 + 8 + size
    if whole <= MTU:
        return [whole], []
    per = (MTU - 40 - 8) & ~7
    body, lens = 8 + size, []
    while body > 0:
        take = min(per, body)
        lens.append(40 + 8 + take)
        body -= take
    return lens[:1], lens[1:]


def ifindex(pair: NetPair, ns: str, dev: str) -> int:
    return int(pair.run(ns, "cat", f"/sys/class/net/{dev}/ifindex").stdout)


def tcp_transfer(pair: NetPair, nbytes: int, server_addr: str = V4_B) -> int:
    port = unique_port()
    srv = pair.server(pair.b, "tcp-server", server_addr, str(port))
    got = int(pair.nettool(pair.a, "tcp-client", server_addr, str(port), str(nbytes)))
    assert int(pair.finish(srv)) == nbytes
    assert got == nbytes, f"server counted {got} bytes, client sent {nbytes}"
    return port


def udp_exchange(pair: NetPair, server_ns: str, client_ns: str, server_addr: str, sizes: list[int]) -> int:
    port = unique_port()
    srv = pair.server(server_ns, "udp-echo", server_addr, str(port), str(len(sizes)))
    echoed = pair.nettool(client_ns, "udp-client", server_addr, str(port), ",".join(map(str, sizes))).strip()
    pair.finish(srv)
    assert echoed == ",".join(map(str, sizes)), f"echoed sizes {echoed}, sent {sizes}"
    return port


def diff_flows(expected: dict, actual: dict) -> list[str]:
    lines = []
    for k in sorted(set(expected) | set(actual)):
        e = expected.get(k, fmlib.Counts()).as_tuple()
        a = actual.get(k, fmlib.Counts()).as_tuple()
        if e != a:
            lines.append(f"  {k.short()}: capture packets/bytes {e}, flow log {a}")
    return lines


@pytest.mark.parametrize("mode", ["auto", "clsact"])
def test_exact_totals(netpair, daemons, capture, tmp_path, mode):
    pair = netpair
    pair.set_offloads(False)
    mport = unique_port()
    flow_log = tmp_path / "flows.jsonl"

    cap = capture(pair, pair.a, IF_A)
    d = daemons(pair.a, "--interfaces", IF_A, "--interval", "1s", "--metrics-listen", f"127.0.0.1:{mport}",
                "--flow-log", str(flow_log), "--state-dir", str(tmp_path / "state"), "--tc-mode", mode).wait_ready()

    tcp_port = tcp_transfer(pair, TCP_BYTES)
    tcp6_port = tcp_transfer(pair, 200_000, V6_B)
    udp_ports = {}
    for fam, srv_ns, cli_ns, addr in ((4, pair.b, pair.a, V4_B), (6, pair.b, pair.a, V6_B),
                                      (4, pair.a, pair.b, V4_A), (6, pair.a, pair.b, V6_A)):
        udp_ports[(fam, addr)] = udp_exchange(pair, srv_ns, cli_ns, addr, UDP_SIZES[fam])
    for ns, addr in ((pair.a, V4_B), (pair.a, V6_B), (pair.b, V4_A), (pair.b, V6_A)):
        assert pair.nettool(ns, "ping", addr, str(PINGS)).strip() == str(PINGS)

    # Everything sent has been evicted once the totals stop moving (1s interval).
    time.sleep(1.2)
    ctype, body = scrape_settled(pair, pair.a, mport, ("flowmeter_interface_io_bytes_total",
                                                       "flowmeter_interface_packets_total"))
    rc = d.terminate()
    assert rc == 0, f"flowmeterd exited {rc} on SIGTERM:\n{d.stderr}"
    cap.stop()

    frames = fmlib.read_pcap(str(cap.path))
    truth = fmlib.summarize_capture(frames, MAC_A)
    assert truth.frames > 2000, f"capture has only {truth.frames} frames: {cap.stats}"
    print(f"capture: {truth.frames} frames; per direction: "
          + ", ".join(f"{k} {v.packets} packets / {v.bytes} bytes" for k, v in sorted(truth.per_direction.items())))

    # --- /metrics interface totals == capture, per direction
    expo = fmlib.parse_exposition(body)
    assert not expo.problems, "\n".join(expo.problems)
    for direction in ("transmit", "receive"):
        want = truth.per_direction[direction]
        got_b = expo.value("flowmeter_interface_io_bytes_total", interface=IF_A, direction=direction)
        got_p = expo.value("flowmeter_interface_packets_total", interface=IF_A, direction=direction)
        print(f"metrics {direction}: {got_p} packets / {got_b} bytes (capture {want.packets} / {want.bytes})")
        assert (got_p, got_b) == (want.packets, want.bytes), \
            f"{direction}: /metrics says {got_p} packets / {got_b} bytes, capture {want.packets} / {want.bytes}"
    for name, labels in (("flowmeter_ringbuf_lost_records_total", {"ring": "flows"}),
                         ("flowmeter_flow_table_insert_failures_total", {}),
                         ("flowmeter_malformed_packets_total", {}),
                         ("flowmeter_records_total", {"source": "flows_ring"})):
        assert expo.value(name, **labels) == 0, f"{name}{labels} = {expo.value(name, **labels)}"
    assert expo.value("flowmeter_records_total", source="flow_map") > 0
    # auto picks TCX on this kernel (6.6+)
    assert expo.value("flowmeter_hook_info", hook="tc", mode="tcx" if mode == "auto" else mode) == 1

    # --- flow log == capture, per flow (summed over intervals), and no extra flows
    records = fmlib.read_flow_log(str(flow_log))
    assert records, f"empty flow log:\n{d.stderr}"
    problems = [f"{r}: {p}" for r in records for p in fmlib.check_flow_record(r)]
    assert not problems, "flow log records break the schema:\n" + "\n".join(problems[:20])
    idx = ifindex(pair, pair.a, IF_A)
    wrong_if = [r for r in records if r["interface"] != IF_A or r["ifindex"] != idx]
    assert not wrong_if, f"records for another interface than {IF_A} ({idx}): {wrong_if[:3]}"
    logged = fmlib.summarize_flow_log(records)
    mismatches = diff_flows(truth.per_flow, logged)
    assert not mismatches, (f"{len(mismatches)} of {len(set(truth.per_flow) | set(logged))} flows differ "
                            "between capture and flow log:\n" + "\n".join(mismatches))
    # The flow log ends with the final flush, so it also equals the per-direction totals.
    for direction in ("transmit", "receive"):
        s = fmlib.Counts()
        for k, v in logged.items():
            if k.direction == direction:
                s.add(v.packets, v.bytes)
        assert s.as_tuple() == truth.per_direction[direction].as_tuple()

    # --- and against first principles, independent of the capture
    data = [(k, v) for k, v in logged.items()
            if k.direction == "transmit" and k.protocol == 6 and k.dst == V4_B and k.dport == tcp_port]
    assert len(data) == 1, f"expected one client->server TCP flow, got {data}"
    (dk, dv), = data
    print(f"tcp data flow {dk.short()}: {dv.packets} packets / {dv.bytes} bytes")
    assert dv.bytes >= TCP_BYTES + 40 * dv.packets, f"TCP data flow has {dv.bytes} bytes, sent {TCP_BYTES} of payload"
    flags = 0
    for r in records:
        if r.get("protocol_number") == 6 and r["direction"] == "transmit" and r["dst_port"] == tcp_port:
            flags |= r["tcp_flags_raw"]
    assert flags & 0x13 == 0x13, f"client->server TCP flags {flags:#x}: expected SYN, ACK and FIN"
    data6 = [(k, v) for k, v in logged.items()
             if k.direction == "transmit" and k.family == "ipv6" and k.protocol == 6 and k.dport == tcp6_port]
    assert len(data6) == 1 and data6[0][1].bytes >= 200_000 + 60 * data6[0][1].packets, data6
    for (fam, addr), port in udp_ports.items():
        ported, frags = [], []
        for size in UDP_SIZES[fam]:
            p, f = udp_wire_packets(fam, size)
            ported += p
            frags += f
        a_is_client = addr in (V4_B, V6_B)
        direction = "transmit" if a_is_client else "receive"
        fl = [v for k, v in logged.items() if k.direction == direction and k.protocol == 17 and k.dport == port
              and k.dst == addr]
        assert len(fl) == 1 and fl[0].as_tuple() == (len(ported), sum(ported)), \
            f"UDP to {addr}:{port} ({direction}): flow log {[x.as_tuple() for x in fl]}, expected {(len(ported), sum(ported))}"
        echo = [v for k, v in logged.items() if k.direction != direction and k.protocol == 17 and k.sport == port
                and k.src == addr]
        assert len(echo) == 1 and echo[0].as_tuple() == (len(ported), sum(ported)), \
            f"UDP echo from {addr}:{port}: flow log {[x.as_tuple() for x in echo]}, expected {(len(ported), sum(ported))}"
    frag_keys = [k for k in logged if "fragment" in k.flags]
    assert frag_keys and all(k.sport == 0 and k.dport == 0 for k in frag_keys), frag_keys
    icmp = {(k.direction, k.family, k.dport): v.packets for k, v in logged.items() if k.protocol in (1, 58)}
    assert icmp.get(("transmit", "ipv4", 8 << 8)) == PINGS and icmp.get(("receive", "ipv4", 0)) == PINGS, icmp
    assert icmp.get(("transmit", "ipv6", 128 << 8)) == PINGS and icmp.get(("receive", "ipv6", 129 << 8)) == PINGS, icmp


def _transfer_run(pair: NetPair, daemons, capture, tmp_path, name: str, offloads: bool):
    """One TCP transfer A -> B with flowmeterd on veth-a. Returns the flow log's
    data flow (key, counts) and the capture of the run, in which TSO/GSO
    super-packets are expanded to the segments they become."""
    pair.set_offloads(offloads)
    mport = unique_port()
    flow_log = tmp_path / f"{name}.jsonl"
    cap = capture(pair, pair.a, IF_A, name)
    d = daemons(pair.a, "--interfaces", IF_A, "--interval", "1s", "--metrics-listen", f"127.0.0.1:{mport}",
                "--flow-log", str(flow_log), "--state-dir", str(tmp_path / "state")).wait_ready()
    port = tcp_transfer(pair, TCP_BYTES)
    time.sleep(1.2)
    rc = d.terminate()
    assert rc == 0, f"flowmeterd exited {rc} on SIGTERM:\n{d.stderr}"
    cap.stop()
    logged = fmlib.summarize_flow_log(fmlib.read_flow_log(str(flow_log)))
    data = [(k, v) for k, v in logged.items()
            if k.direction == "transmit" and k.protocol == 6 and k.src == V4_A and k.dst == V4_B and k.dport == port]
    assert len(data) == 1, f"{name}: expected one client->server flow, got {data}"
    frames = fmlib.read_pcap(str(cap.path))
    mss = fmlib.tcp_mss(frames)
    assert mss, f"{name}: no SYN/SYN-ACK with an MSS option in the capture"
    truth = fmlib.summarize_capture(frames, MAC_A, gso_mss=mss)
    return data[0], truth


def test_offloads_on_within_1_percent(netpair, daemons, capture, tmp_path):
    """The same transfer with offloads on (veth default: TSO/GSO super-packets
    reach tc) and off (one skb per wire packet): the data flow's packets and
    bytes agree within 1%. Each run is also held exactly to its own capture, in
    which the super-packets are expanded to the segments they stand for."""
    for attempt in range(1, 4):
        (kon, on), cap_on = _transfer_run(netpair, daemons, capture, tmp_path, f"offloads-on-{attempt}", True)
        (koff, off), cap_off = _transfer_run(netpair, daemons, capture, tmp_path, f"offloads-off-{attempt}", False)
        print(f"offloads on : {on.packets} packets, {on.bytes} bytes (capture: {cap_on.per_flow[kon].packets} "
              f"packets, {cap_on.per_flow[kon].bytes} bytes from {cap_on.super_packets} super-packets; "
              f"largest skb {cap_on.max_l3_len} bytes)")
        print(f"offloads off: {off.packets} packets, {off.bytes} bytes (capture: {cap_off.per_flow[koff].packets} "
              f"packets, {cap_off.per_flow[koff].bytes} bytes; largest skb {cap_off.max_l3_len} bytes)")
        # The "on" run must really have carried GSO super-packets, else it proves nothing.
        assert cap_on.super_packets > 0 and cap_on.max_l3_len > MTU, \
            f"offloads on, but no skb above the MTU was seen ({cap_on.max_l3_len})"
        assert cap_off.super_packets == 0 and cap_off.max_l3_len <= MTU
        # Each run against its own capture: exact.
        assert off.as_tuple() == cap_off.per_flow[koff].as_tuple(), "offloads off: flow log != capture"
        assert on.as_tuple() == cap_on.per_flow[kon].as_tuple(), \
            "offloads on: flow log != capture with super-packets expanded to MSS-sized segments"
        # Compare the runs only when both carried the same stream: a retransmission
        # (payload beyond what was sent) is traffic one run had and the other not.
        resent = (cap_on.tcp_payload[kon] - TCP_BYTES, cap_off.tcp_payload[koff] - TCP_BYTES)
        if resent == (0, 0):
            break
        print(f"retransmitted payload bytes (on, off): {resent}; transferring again")
    else:
        raise AssertionError("three attempts, each with TCP retransmissions: the runs cannot be compared")
    for what, a, b in (("packets", on.packets, off.packets), ("bytes", on.bytes, off.bytes)):
        print(f"{what}: offloads on {a}, off {b}, difference {abs(a - b) / b:.3%}")
        assert abs(a - b) <= 0.01 * b, f"{what}: offloads on {a}, off {b}: differ by {abs(a - b) / b:.2%}"
    assert on.bytes >= TCP_BYTES and off.bytes >= TCP_BYTES


SINK = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: no drops at the socket
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(10)
want, got = int(sys.argv[3]), 0
print("ready", flush=True)
while got < want:
    s.recv(65535)
    got += 1
print(got, flush=True)
"""

SPRAY = """
import socket, sys
dst, port, flows, each = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
for rnd in range(each):
    for i, s in enumerate(socks):
        s.sendto(bytes(10 + (i % 50) + rnd), (dst, port))
print(flows * each)
"""


def test_full_flow_table_loses_nothing(netpair, daemons, capture, tmp_path):
    """More concurrent flows than the kernel table holds: the packets that find
    no room travel through the flows ring, and the totals still equal the
    capture exactly; the insert-failure counter counts exactly those packets."""
    pair = netpair
    pair.set_offloads(False)
    mport, uport = unique_port(), unique_port()
    flows, each, table = 120, 3, 16
    flow_log = tmp_path / "flows.jsonl"
    cap = capture(pair, pair.a, IF_A)
    d = daemons(pair.a, "--interfaces", IF_A, "--interval", "1s", "--metrics-listen", f"127.0.0.1:{mport}",
                "--flow-log", str(flow_log), "--flow-table-size", str(table),
                "--state-dir", str(tmp_path / "state")).wait_ready()
    sink = pair.popen(pair.b, "python3", "-c", SINK, V4_B, str(uport), str(flows * each))
    assert sink.stdout.readline().strip() == "ready"
    assert pair.run(pair.a, "python3", "-c", SPRAY, V4_B, str(uport), str(flows), str(each)).stdout.strip() \
        == str(flows * each)
    assert pair.finish(sink).strip().splitlines()[-1] == str(flows * each)
    time.sleep(1.2)
    _, body = scrape_settled(pair, pair.a, mport, ("flowmeter_interface_io_bytes_total",
                                                   "flowmeter_interface_packets_total",
                                                   "flowmeter_flow_table_insert_failures_total"))
    assert d.terminate() == 0, d.stderr
    cap.stop()

    truth = fmlib.summarize_capture(fmlib.read_pcap(str(cap.path)), MAC_A)
    expo = fmlib.parse_exposition(body)
    for direction in ("transmit", "receive"):
        want = truth.per_direction.get(direction, fmlib.Counts())
        got = (expo.value("flowmeter_interface_packets_total", interface=IF_A, direction=direction) or 0,
               expo.value("flowmeter_interface_io_bytes_total", interface=IF_A, direction=direction) or 0)
        assert got == want.as_tuple(), f"{direction}: /metrics {got}, capture {want.as_tuple()}"
    records = fmlib.read_flow_log(str(flow_log))
    logged = fmlib.summarize_flow_log(records)
    mismatches = diff_flows(truth.per_flow, logged)
    assert not mismatches, "\n".join(mismatches)
    via_ring = [r for r in records if r["source"] == "flows_ring"]
    failures = expo.value("flowmeter_flow_table_insert_failures_total")
    print(f"{len(records)} flow-log records, {len(via_ring)} through the ring; insert failures {failures}")
    # All flows were live in one interval: at most `table` fit, each overflow packet is one ring record.
    assert len(via_ring) > 0 and failures == len(via_ring) == sum(r["packets"] for r in via_ring)
    assert expo.value("flowmeter_records_total", source="flows_ring") == len(via_ring)
    assert expo.value("flowmeter_ringbuf_lost_records_total", ring="flows") == 0


def test_ring_overflow_is_counted_exactly(netpair, daemons, capture, tmp_path):
    """The daemon stopped (SIGSTOP) while a burst of new flows meets a full
    table and a one-page ring: the records that found no room in the ring are
    counted, exactly. insert failures = ring records received + records lost,
    and the packets /metrics counts = the packets captured - the records lost."""
    pair = netpair
    pair.set_offloads(False)
    mport, uport = unique_port(), unique_port()
    flows = 400  # a 4 KiB ring holds about 40 records of 96 bytes
    cap = capture(pair, pair.a, IF_A)
    d = daemons(pair.a, "--interfaces", IF_A, "--interval", "1s", "--metrics-listen", f"127.0.0.1:{mport}",
                "--flow-table-size", "1", "--flows-ring-size", "4096",
                "--state-dir", str(tmp_path / "state")).wait_ready()
    sink = pair.popen(pair.b, "python3", "-c", SINK, V4_B, str(uport), str(flows))
    assert sink.stdout.readline().strip() == "ready"
    d.proc.send_signal(19)  # SIGSTOP: nobody drains the ring now
    try:
        pair.run(pair.a, "python3", "-c", SPRAY, V4_B, str(uport), str(flows), "1")
        assert pair.finish(sink).strip().splitlines()[-1] == str(flows)
    finally:
        d.proc.send_signal(18)  # SIGCONT
    time.sleep(1.2)
    # (flowmeter_records_total also counts socket events, which every scrape
    # itself causes: settle on what only the test traffic moves.)
    _, body = scrape_settled(pair, pair.a, mport, ("flowmeter_interface_packets_total",
                                                   "flowmeter_flow_table_insert_failures_total",
                                                   "flowmeter_ringbuf_lost_records_total"))
    assert d.terminate() == 0, d.stderr
    cap.stop()
    truth = fmlib.summarize_capture(fmlib.read_pcap(str(cap.path)), MAC_A)
    expo = fmlib.parse_exposition(body)
    lost = expo.value("flowmeter_ringbuf_lost_records_total", ring="flows")
    via_ring = expo.value("flowmeter_records_total", source="flows_ring")
    failures = expo.value("flowmeter_flow_table_insert_failures_total")
    counted = sum(expo.value("flowmeter_interface_packets_total", interface=IF_A, direction=dr) or 0
                  for dr in ("transmit", "receive"))
    captured = sum(c.packets for c in truth.per_direction.values())
    print(f"captured {captured}, counted {counted}; insert failures {failures} = ring {via_ring} + lost {lost}")
    assert lost > 0, "the ring never overflowed: the test proves nothing"
    assert failures == via_ring + lost
    assert counted == captured - lost
