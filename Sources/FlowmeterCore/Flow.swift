// Flow values as the rest of the daemon sees them. FlowmeterBPF converts the
// kernel records (struct fm_flow_key / fm_flow_stats) into these in one place;
// nothing above it knows the C layout.

/// Direction of a packet relative to the interface it crossed.
public enum Direction: UInt8, Sendable, Hashable, CaseIterable {
    case receive = 0
    case transmit = 1

    /// The label value used in metrics and logs.
    public var label: String { self == .receive ? "receive" : "transmit" }
}

/// Address family of a flow. `.other` is a frame that is not IP (or an IP
/// header too malformed to trust); it still counts toward interface totals.
public enum Family: UInt8, Sendable, Hashable {
    case other = 0
    case ipv4 = 4
    case ipv6 = 6

    public var label: String {
        switch self {
        case .other: "other"
        case .ipv4: "ipv4"
        case .ipv6: "ipv6"
        }
    }
}

/// Bits of `FlowKey.flags` (mirrors enum fm_key_flags).
public struct FlowKeyFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// A non-first IP fragment: no L4 header, ports are 0.
    public static let fragment = FlowKeyFlags(rawValue: 1)
    /// The L4 header was missing or cut short: ports are 0.
    public static let l4Truncated = FlowKeyFlags(rawValue: 2)
    /// Not trusted as IP: counted under its ethertype only.
    public static let malformed = FlowKeyFlags(rawValue: 4)
}

/// A 16-byte address in network order; IPv4 is stored v4-mapped (::ffff:a.b.c.d).
public struct IPAddress16: Sendable, Hashable {
    public var hi: UInt64  // bytes 0..7, big-endian
    public var lo: UInt64  // bytes 8..15, big-endian

    public init(hi: UInt64, lo: UInt64) { self.hi = hi; self.lo = lo }

    public init<C: Collection>(bytes: C) where C.Element == UInt8 {
        precondition(bytes.count == 16, "IPAddress16 needs 16 bytes")
        var h: UInt64 = 0, l: UInt64 = 0
        for (i, b) in bytes.enumerated() {
            if i < 8 { h = h << 8 | UInt64(b) } else { l = l << 8 | UInt64(b) }
        }
        hi = h; lo = l
    }

    /// v4-mapped form of a dotted-quad address given as 4 bytes.
    public static func v4(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) -> IPAddress16 {
        IPAddress16(hi: 0, lo: 0x0000_FFFF_0000_0000 | UInt64(a) << 24 | UInt64(b) << 16 | UInt64(c) << 8 | UInt64(d))
    }

    public static let zero = IPAddress16(hi: 0, lo: 0)

    public var bytes: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: hi >> (56 - 8 * UInt64($0))) }
            + (0..<8).map { UInt8(truncatingIfNeeded: lo >> (56 - 8 * UInt64($0))) }
    }

    public var isV4Mapped: Bool { hi == 0 && (lo >> 32) == 0xFFFF }

    /// The IPv4 address as 4 bytes when v4-mapped.
    public var v4Bytes: [UInt8]? { isV4Mapped ? Array(bytes[12..<16]) : nil }

    /// Text form: dotted quad for v4-mapped addresses, RFC 5952 for IPv6.
    public var description: String {
        if let v4 = v4Bytes { return v4.map(String.init).joined(separator: ".") }
        return Self.formatIPv6(bytes)
    }

    static func formatIPv6(_ b: [UInt8]) -> String {
        let groups = (0..<8).map { UInt16(b[2 * $0]) << 8 | UInt16(b[2 * $0 + 1]) }
        // RFC 5952: the longest run (>= 2) of zero groups becomes "::", first one on ties.
        var bestStart = -1, bestLen = 0, i = 0
        while i < 8 {
            if groups[i] == 0 {
                var j = i
                while j < 8 && groups[j] == 0 { j += 1 }
                if j - i > bestLen { bestStart = i; bestLen = j - i }
                i = j
            } else {
                i += 1
            }
        }
        if bestLen < 2 { bestStart = -1 }
        func hex(_ r: Range<Int>) -> String { r.map { String(groups[$0], radix: 16) }.joined(separator: ":") }
        if bestStart < 0 { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLen)..<8)
    }
}

/// One flow: interface, direction and 5-tuple (mirrors struct fm_flow_key).
public struct FlowKey: Sendable, Hashable {
    public var source: IPAddress16
    public var destination: IPAddress16
    public var ifindex: UInt32
    public var sourcePort: UInt16
    /// Destination port; ICMP: (type << 8) | code; family `.other`: the ethertype.
    public var destinationPort: UInt16
    public var direction: Direction
    public var family: Family
    public var ipProtocol: UInt8
    public var flags: FlowKeyFlags

    public init(
        source: IPAddress16, destination: IPAddress16, ifindex: UInt32, sourcePort: UInt16,
        destinationPort: UInt16, direction: Direction, family: Family, ipProtocol: UInt8,
        flags: FlowKeyFlags
    ) {
        self.source = source; self.destination = destination; self.ifindex = ifindex
        self.sourcePort = sourcePort; self.destinationPort = destinationPort
        self.direction = direction; self.family = family; self.ipProtocol = ipProtocol; self.flags = flags
    }
}

/// Counters of one flow (mirrors struct fm_flow_stats, summed over CPUs).
public struct FlowStats: Sendable, Hashable {
    /// Wire packets (a GSO/GRO super-packet counts as its segments).
    public var packets: UInt64
    /// L3 wire bytes: the sum of the IP total lengths of those packets.
    public var bytes: UInt64
    /// CLOCK_MONOTONIC nanoseconds of the first and latest packet.
    public var firstSeenNanos: UInt64
    public var lastSeenNanos: UInt64
    /// OR of the TCP flag bytes seen.
    public var tcpFlags: UInt8

    public init(packets: UInt64, bytes: UInt64, firstSeenNanos: UInt64, lastSeenNanos: UInt64, tcpFlags: UInt8) {
        self.packets = packets; self.bytes = bytes
        self.firstSeenNanos = firstSeenNanos; self.lastSeenNanos = lastSeenNanos; self.tcpFlags = tcpFlags
    }

    public static let zero = FlowStats(packets: 0, bytes: 0, firstSeenNanos: 0, lastSeenNanos: 0, tcpFlags: 0)

    /// Adds another slice of the same flow (another CPU, another eviction).
    public mutating func merge(_ o: FlowStats) {
        guard o.packets > 0 else { return }
        if packets == 0 {
            firstSeenNanos = o.firstSeenNanos
            lastSeenNanos = o.lastSeenNanos
        } else {
            firstSeenNanos = min(firstSeenNanos, o.firstSeenNanos)
            lastSeenNanos = max(lastSeenNanos, o.lastSeenNanos)
        }
        packets &+= o.packets
        bytes &+= o.bytes
        tcpFlags |= o.tcpFlags
    }
}

/// Where a flow record came from.
public enum FlowSource: String, Sendable {
    /// Evicted from the in-kernel flow table.
    case flowMap = "flow_map"
    /// A single packet the full flow table could not take, via the "flows" ring.
    case flowsRing = "flows_ring"
}

/// A flow and its counters over one eviction interval.
public struct FlowRecord: Sendable, Hashable {
    public var key: FlowKey
    public var stats: FlowStats
    public var source: FlowSource

    public init(key: FlowKey, stats: FlowStats, source: FlowSource) {
        self.key = key; self.stats = stats; self.source = source
    }
}

public enum IPProtocolName {
    /// Lower-case protocol name for logs, the number as text when unknown.
    public static func name(_ p: UInt8, family: Family) -> String {
        if family == .other { return "none" }
        switch p {
        case 1: return "icmp"
        case 6: return "tcp"
        case 17: return "udp"
        case 58: return "icmpv6"
        case 132: return "sctp"
        default: return String(p)
        }
    }
}

public enum TCPFlags {
    /// Flags as letters in the order tcpdump shows them (F S R P . U E W).
    public static func describe(_ f: UInt8) -> String {
        let names: [(UInt8, Character)] = [
            (0x01, "F"), (0x02, "S"), (0x04, "R"), (0x08, "P"),
            (0x10, "."), (0x20, "U"), (0x40, "E"), (0x80, "W"),
        ]
        return String(names.compactMap { f & $0.0 != 0 ? $0.1 : nil })
    }
}
