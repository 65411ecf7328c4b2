"""Parsers the end-to-end tests compare the daemon against.

Nothing here talks to the daemon: a pcap reader that turns a tcpdump capture
into flow keys and L3 byte counts by the rules flowmeterd documents, a
flow-log reader, and a Prometheus text-format parser.
"""
from __future__ import annotations

import collections
import ipaddress
import json
import re
import struct
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------
# pcap

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
LINKTYPE_ETHERNET = 1

IPV6_EXT_HEADERS = (0, 43, 60, 44)  # hop-by-hop, routing, destination options, fragment
FM_MAX_VLAN_TAGS = 2
FM_MAX_IPV6_EXT = 8


@dataclass(frozen=True)
class Frame:
    ts: float
    orig_len: int
    data: bytes  # the captured bytes (possibly cut at the snap length)


def read_pcap(path: str) -> list[Frame]:
    """Reads a classic pcap file (what `tcpdump -w` writes), either byte order,
    micro- or nanosecond timestamps. Ethernet link type only."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 24:
        raise ValueError(f"{path}: {len(blob)} bytes, not a pcap file")
    magic_le = struct.unpack("<I", blob[:4])[0]
    if magic_le in (0xA1B2C3D4, 0xA1B23C4D):
        end = "<"
    elif struct.unpack(">I", blob[:4])[0] in (0xA1B2C3D4, 0xA1B23C4D):
        end = ">"
    else:
        raise ValueError(f"{path}: bad pcap magic {blob[:4].hex()} (pcapng is not supported)")
    magic = struct.unpack(end + "I", blob[:4])[0]
    frac = 1e-9 if magic == 0xA1B23C4D else 1e-6
    _vmaj, _vmin, _tz, _sig, _snap, linktype = struct.unpack(end + "HHiIII", blob[4:24])
    if linktype & 0x0FFFFFFF != LINKTYPE_ETHERNET:
        raise ValueError(f"{path}: link type {linktype}, expected Ethernet (1)")
    frames = []
    off = 24
    while off + 16 <= len(blob):
        sec, sub, incl, orig = struct.unpack(end + "IIII", blob[off:off + 16])
        off += 16
        if off + incl > len(blob):
            break  # a record cut short by a killed writer; not ours to count
        frames.append(Frame(sec + sub * frac, orig, blob[off:off + incl]))
        off += incl
    return frames


def mac_text(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


@dataclass(frozen=True, order=True)
class FlowKey:
    """One flow as flowmeterd keys it (per interface; the tests use one
    interface per daemon, so the interface is left out)."""
    direction: str          # "transmit" / "receive"
    family: str             # "ipv4" / "ipv6" / "other"
    protocol: int           # IP protocol number; 0 for "other"
    src: str                # address text ("" for other)
    dst: str
    sport: int
    dport: int              # ICMP: (type << 8) | code; other: ethertype
    flags: tuple = ()       # sorted subset of ("fragment", "l4_truncated", "malformed")

    def short(self) -> str:
        f = ("[" + ",".join(self.flags) + "]") if self.flags else ""
        if self.family == "other":
            return f"{self.direction} other ethertype=0x{self.dport:04x}{f}"
        return (f"{self.direction} {self.family} proto={self.protocol} "
                f"{self.src}:{self.sport} -> {self.dst}:{self.dport}{f}")


@dataclass
class Counts:
    packets: int = 0
    bytes: int = 0

    def add(self, packets: int, nbytes: int) -> None:
        self.packets += packets
        self.bytes += nbytes

    def as_tuple(self) -> tuple[int, int]:
        return (self.packets, self.bytes)


def _l4(data: bytes, proto: int, family: str, l4off: int, l3end: int, flags: set) -> tuple[int, int]:
    """Ports of the L4 header at l4off, following flowmeter's rules."""
    if proto == 6:
        if l4off + 20 > l3end or l4off + 20 > len(data):
            flags.add("l4_truncated")
            return 0, 0
        doff = (data[l4off + 12] >> 4) * 4
        if doff < 20 or l4off + doff > l3end:
            flags.add("l4_truncated")
            return 0, 0
        return struct.unpack("!HH", data[l4off:l4off + 4])
    if proto == 17:
        if l4off + 8 > l3end or l4off + 8 > len(data):
            flags.add("l4_truncated")
            return 0, 0
        return struct.unpack("!HH", data[l4off:l4off + 4])
    if (proto == 1 and family == "ipv4") or (proto == 58 and family == "ipv6"):
        if l4off + 4 > l3end or l4off + 4 > len(data):
            flags.add("l4_truncated")
            return 0, 0
        return 0, (data[l4off] << 8) | data[l4off + 1]
    return 0, 0


def classify(frame: Frame, direction: str) -> tuple[FlowKey, int]:
    """Flow key and L3 byte count of one captured (non-GSO) frame.

    Bytes: IPv4 total length; IPv6 payload length + 40; anything else the
    frame length after the Ethernet (and VLAN) header(s). Assumes the snap
    length covers the headers (the tests capture with -s 256)."""
    d = frame.data
    if frame.orig_len < ETH_HLEN or len(d) < ETH_HLEN:
        return FlowKey(direction, "other", 0, "", "", 0, 0, ("malformed",)), 0
    proto = struct.unpack("!H", d[12:14])[0]
    off = ETH_HLEN
    for _ in range(FM_MAX_VLAN_TAGS):
        if proto not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        proto = struct.unpack("!H", d[off + 2:off + 4])[0]
        off += 4
    l3avail = frame.orig_len - off
    flags: set = set()
    if proto == ETH_P_IP and len(d) >= off + 20 and d[off] >> 4 == 4:
        ihl = (d[off] & 0x0F) * 4
        tot = struct.unpack("!H", d[off + 2:off + 4])[0]
        if ihl >= 20 and tot >= ihl and tot <= l3avail:
            ipproto = d[off + 9]
            src = str(ipaddress.IPv4Address(d[off + 12:off + 16]))
            dst = str(ipaddress.IPv4Address(d[off + 16:off + 20]))
            frag = struct.unpack("!H", d[off + 6:off + 8])[0] & 0x1FFF
            if frag:
                flags.add("fragment")
                sport = dport = 0
            else:
                sport, dport = _l4(d, ipproto, "ipv4", off + ihl, off + tot, flags)
            return FlowKey(direction, "ipv4", ipproto, src, dst, sport, dport, tuple(sorted(flags))), tot
    elif proto == ETH_P_IPV6 and len(d) >= off + 40 and d[off] >> 4 == 6:
        plen = struct.unpack("!H", d[off + 4:off + 6])[0]
        if 40 + plen <= l3avail:
            l3len = 40 + plen if plen else l3avail  # payload length 0: jumbogram
            src = str(ipaddress.IPv6Address(d[off + 8:off + 24]))
            dst = str(ipaddress.IPv6Address(d[off + 24:off + 40]))
            nh = d[off + 6]
            l3end = off + l3len
            l4off = off + 40
            done = False
            for _ in range(FM_MAX_IPV6_EXT):
                if nh not in IPV6_EXT_HEADERS:
                    break
                if l4off + 8 > l3end or l4off + 4 > len(d):
                    flags.add("l4_truncated")
                    done = True
                    break
                if nh == 44:
                    fo = struct.unpack("!H", d[l4off + 2:l4off + 4])[0]
                    nh = d[l4off]
                    l4off += 8
                    if fo & 0xFFF8:
                        flags.add("fragment")
                        done = True
                        break
                else:
                    nxt, hlen = d[l4off], d[l4off + 1]
                    nh = nxt
                    l4off += (hlen + 1) * 8
            if done or nh in IPV6_EXT_HEADERS:
                sport = dport = 0
            else:
                sport, dport = _l4(d, nh, "ipv6", l4off, l3end, flags)
            return FlowKey(direction, "ipv6", nh, src, dst, sport, dport, tuple(sorted(flags))), l3len
    # Not IP, or an IP header the daemon would not trust.
    malformed = proto in (ETH_P_IP, ETH_P_IPV6)
    return (FlowKey(direction, "other", 0, "", "", 0, proto, ("malformed",) if malformed else ()),
            max(l3avail, 0))


def tcp_headers(frame: Frame) -> tuple[int, int, int] | None:
    """(offset of the TCP header, L3+L4 header bytes, TCP payload bytes) of an
    unfragmented IPv4/IPv6 TCP frame (IPv6 without extension headers); None
    for anything else. Lengths come from the frame length, not the IP header:
    a GSO super-packet's may not fit the header's 16 bits."""
    d = frame.data
    off = ETH_HLEN
    if len(d) < off + 40 or struct.unpack("!H", d[12:14])[0] not in (ETH_P_IP, ETH_P_IPV6):
        return None
    if d[off] >> 4 == 4:
        if d[off + 9] != 6 or struct.unpack("!H", d[off + 6:off + 8])[0] & 0x3FFF:
            return None
        l3hdr = (d[off] & 0x0F) * 4
    elif d[off] >> 4 == 6:
        if d[off + 6] != 6:
            return None
        l3hdr = 40
    else:
        return None
    th = off + l3hdr
    if len(d) < th + 20:
        return None
    hdr = l3hdr + (d[th + 12] >> 4) * 4
    return th, hdr, frame.orig_len - off - hdr


def tcp_mss(frames: list[Frame]) -> int | None:
    """Segment size of the TCP connection in a capture: the smaller MSS option
    of SYN and SYN-ACK, less 12 bytes when both carry timestamps."""
    mss, ts = [], []
    for fr in frames:
        h = tcp_headers(fr)
        if h is None or not fr.data[h[0] + 13] & 0x02:  # SYN
            continue
        th, d = h[0], fr.data
        opts = d[th + 20:th + (d[th + 12] >> 4) * 4]
        i, has_ts = 0, False
        while i < len(opts):
            kind = opts[i]
            if kind == 0:
                break
            if kind == 1 or i + 1 >= len(opts):
                i += 1
                continue
            ln = opts[i + 1]
            if kind == 2 and ln == 4:
                mss.append(struct.unpack("!H", opts[i + 2:i + 4])[0])
            if kind == 8:
                has_ts = True
            i += max(ln, 2)
        ts.append(has_ts)
    if len(ts) < 2 or not mss:
        return None
    return min(mss) - (12 if all(ts) else 0)


@dataclass
class CaptureSummary:
    frames: int = 0
    per_direction: dict = field(default_factory=lambda: collections.defaultdict(Counts))
    per_flow: dict = field(default_factory=lambda: collections.defaultdict(Counts))
    tcp_payload: dict = field(default_factory=lambda: collections.defaultdict(int))  # per flow key
    max_l3_len: int = 0
    super_packets: int = 0


def summarize_capture(frames: list[Frame], local_mac: str, gso_mss: int | None = None,
                      mtu: int = 1500) -> CaptureSummary:
    """Direction by source MAC: frames sent by `local_mac` are transmit.

    With gso_mss, a TCP frame longer than the MTU is a GSO/TSO super-packet
    (tcpdump sees the skb before segmentation): it counts as the
    ceil(payload / gso_mss) wire packets it becomes, each repeating the
    headers."""
    s = CaptureSummary()
    local = bytes.fromhex(local_mac.replace(":", ""))
    for fr in frames:
        direction = "transmit" if fr.data[6:12] == local else "receive"
        key, nbytes = classify(fr, direction)
        packets = 1
        h = tcp_headers(fr)
        if h is not None:
            _, hdr, payload = h
            s.tcp_payload[key] += payload
            if gso_mss and hdr + payload > mtu:
                packets = -(-payload // gso_mss)
                nbytes = payload + packets * hdr
                s.super_packets += 1
        s.frames += 1
        s.per_direction[direction].add(packets, nbytes)
        s.per_flow[key].add(packets, nbytes)
        s.max_l3_len = max(s.max_l3_len, fr.orig_len - ETH_HLEN)
    return s


# ---------------------------------------------------------------------------
# flow log

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
TCP_FLAG_LETTERS = [(0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"),
                    (0x10, "."), (0x20, "U"), (0x40, "E"), (0x80, "W")]
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


def read_flow_log(path: str, kind: str | None = "flow") -> list[dict]:
    """The records of one type ("flow", "connection" or "dns"; None: all).
    Every line must be JSON with a known type."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise AssertionError(f"{path}:{n}: not JSON ({e}): {line!r}") from None
            if r.get("type") not in ("flow", "connection", "dns"):
                raise AssertionError(f"{path}:{n}: unknown record type: {line!r}")
            if kind is None or r["type"] == kind:
                out.append(r)
    return out


def check_flow_record(r: dict) -> list[str]:
    """Schema problems of one flow-log object (empty list when fine)."""
    p = []
    need = ["version", "type", "interface", "ifindex", "direction", "family", "packets", "bytes",
            "first_seen", "last_seen", "source"]
    for k in need:
        if k not in r:
            p.append(f"missing {k}")
    if p:
        return p
    if r["version"] != 1:
        p.append(f"version {r['version']!r}")
    if r["type"] != "flow":
        p.append(f"type {r['type']!r}")
    if r["direction"] not in ("transmit", "receive"):
        p.append(f"direction {r['direction']!r}")
    if r["source"] not in ("flow_map", "flows_ring"):
        p.append(f"source {r['source']!r}")
    for k in ("first_seen", "last_seen"):
        if not isinstance(r[k], str) or not RFC3339.match(r[k]):
            p.append(f"{k} {r[k]!r} is not RFC 3339")
    if not (isinstance(r["packets"], int) and r["packets"] > 0):
        p.append(f"packets {r['packets']!r}")
    if not (isinstance(r["bytes"], int) and r["bytes"] >= 0):
        p.append(f"bytes {r['bytes']!r}")
    fam = r["family"]
    if fam == "other":
        if "ethertype" not in r:
            p.append("family other without ethertype")
    elif fam in ("ipv4", "ipv6"):
        for k in ("protocol", "protocol_number", "src_addr", "dst_addr", "src_port", "dst_port"):
            if k not in r:
                p.append(f"missing {k}")
        if p:
            return p
        pn = r["protocol_number"]
        want = PROTO_NAMES.get(pn, str(pn))
        if r["protocol"] != want:
            p.append(f"protocol {r['protocol']!r} for number {pn}, expected {want!r}")
        try:
            a = ipaddress.ip_address(r["src_addr"]), ipaddress.ip_address(r["dst_addr"])
            if any(x.version != (4 if fam == "ipv4" else 6) for x in a):
                p.append(f"address family mismatch: {r['src_addr']} {r['dst_addr']} for {fam}")
            elif any(str(x) != t for x, t in zip(a, (r["src_addr"], r["dst_addr"]))):
                p.append(f"addresses not in canonical text form: {r['src_addr']} {r['dst_addr']}")
        except ValueError as e:
            p.append(str(e))
        if pn == 6:
            if "tcp_flags" not in r or "tcp_flags_raw" not in r:
                p.append("tcp flow without tcp_flags/tcp_flags_raw")
            else:
                letters = "".join(c for bit, c in TCP_FLAG_LETTERS if r["tcp_flags_raw"] & bit)
                if r["tcp_flags"] != letters:
                    p.append(f"tcp_flags {r['tcp_flags']!r} != letters of raw {r['tcp_flags_raw']} ({letters!r})")
        if pn in (1, 58) and r["src_port"] != 0:
            p.append(f"icmp flow with src_port {r['src_port']}")
    else:
        p.append(f"family {fam!r}")
    return p


def flow_log_key(r: dict) -> FlowKey:
    flags = tuple(sorted(r.get("flags", [])))
    if r["family"] == "other":
        return FlowKey(r["direction"], "other", 0, "", "", 0, int(r["ethertype"]), flags)
    return FlowKey(r["direction"], r["family"], int(r["protocol_number"]), r["src_addr"], r["dst_addr"],
                   int(r["src_port"]), int(r["dst_port"]), flags)


def summarize_flow_log(records: list[dict], interface: str | None = None) -> dict:
    """Sums packets/bytes per flow key over all intervals."""
    out: dict = collections.defaultdict(Counts)
    for r in records:
        if interface is not None and r["interface"] != interface:
            continue
        out[flow_log_key(r)].add(r["packets"], r["bytes"])
    return out


# ---------------------------------------------------------------------------
# Prometheus text format (0.0.4)

_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE_RE = re.compile(
    rf"^(?P<name>{_METRIC_NAME})"
    rf"(?:\{{(?P<labels>(?:{_LABEL_NAME}={_LABEL_VALUE}(?:,{_LABEL_NAME}={_LABEL_VALUE})*)?,?)\}})?"
    rf" (?P<value>[^ ]+)(?: (?P<ts>-?\d+))?$")
LABEL_RE = re.compile(rf"({_LABEL_NAME})=({_LABEL_VALUE})")
HELP_RE = re.compile(rf"^# HELP ({_METRIC_NAME}) (.*)$")
TYPE_RE = re.compile(rf"^# TYPE ({_METRIC_NAME}) (counter|gauge|histogram|summary|untyped)$")


def _unescape(v: str) -> str:
    return v[1:-1].replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def _parse_value(v: str) -> float:
    if v in ("+Inf", "Inf"):
        return float("inf")
    if v == "-Inf":
        return float("-inf")
    if v == "NaN":
        return float("nan")
    return float(v)


@dataclass
class Exposition:
    samples: dict  # (name, frozenset(labels)) -> value
    types: dict    # family -> type
    helps: dict    # family -> help text
    problems: list

    def value(self, name: str, **labels) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))


def parse_exposition(text: str) -> Exposition:
    """Parses and checks Prometheus text: every sample belongs to a family
    whose # HELP and # TYPE came before it; no family declared twice; no
    duplicate series; values are numbers."""
    samples: dict = {}
    types: dict = {}
    helps: dict = {}
    problems: list = []
    families_seen_samples: set = set()
    current = None
    if text and not text.endswith("\n"):
        problems.append("exposition does not end with a newline")
    for n, line in enumerate(text.split("\n"), 1):
        if line == "":
            continue
        if line.startswith("#"):
            m = HELP_RE.match(line)
            if m:
                if m.group(1) in helps:
                    problems.append(f"line {n}: second # HELP for {m.group(1)}")
                helps[m.group(1)] = m.group(2)
                current = m.group(1)
                continue
            m = TYPE_RE.match(line)
            if m:
                if m.group(1) in types:
                    problems.append(f"line {n}: second # TYPE for {m.group(1)}")
                if m.group(1) in families_seen_samples:
                    problems.append(f"line {n}: # TYPE for {m.group(1)} after its samples")
                types[m.group(1)] = m.group(2)
                current = m.group(1)
                continue
            if line.startswith("# HELP") or line.startswith("# TYPE"):
                problems.append(f"line {n}: malformed comment {line!r}")
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            problems.append(f"line {n}: not a sample line: {line!r}")
            continue
        name = m.group("name")
        family = None
        for cand in (name, re.sub(r"_(bucket|sum|count)$", "", name)):
            if cand in types:
                family = cand
                break
        if family is None:
            problems.append(f"line {n}: sample {name} has no # TYPE before it")
        elif family not in helps:
            problems.append(f"line {n}: sample {name} has no # HELP before it")
        elif family != current:
            problems.append(f"line {n}: sample {name} is not under its family's header (current family {current})")
        else:
            t = types[family]
            if name != family and t not in ("histogram", "summary"):
                problems.append(f"line {n}: sample {name} in {t} family {family}")
        families_seen_samples.add(family or name)
        labels = {}
        for lm in LABEL_RE.finditer(m.group("labels") or ""):
            if lm.group(1) in labels:
                problems.append(f"line {n}: label {lm.group(1)} twice")
            labels[lm.group(1)] = _unescape(lm.group(2))
        try:
            value = _parse_value(m.group("value"))
        except ValueError:
            problems.append(f"line {n}: value {m.group('value')!r} is not a number")
            continue
        key = (name, frozenset(labels.items()))
        if key in samples:
            problems.append(f"line {n}: duplicate series {name}{labels}")
        samples[key] = value
        if family and types.get(family) == "counter" and not value >= 0:
            problems.append(f"line {n}: counter {name} has value {value}")
    for fam in types:
        if fam not in helps:
            problems.append(f"family {fam} has # TYPE but no # HELP")
    return Exposition(samples, types, helps, problems)
