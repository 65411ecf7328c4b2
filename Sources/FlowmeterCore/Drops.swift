// Packet drops as the daemon counts them (bpf/flowmeter_drops.bpf.c): the
// kernel keeps cumulative counts per (reason, interface, direction,
// 5-tuple); the daemon reads them once an interval, takes differences, and
// counts them on interfaces and service pairs (docs/metrics.md, "Drops").

/// One kernel count key: where the packet was dropped and why.
public struct DropKey: Sendable, Hashable {
    /// Interface (0: none), direction and the packet's 5-tuple, as the tc
    /// programs key flows (flags always empty). Family `.other`: no IP header.
    public var flow: FlowKey
    /// Inode number of the interface's network namespace (0: unknown).
    public var netns: UInt32
    /// The kernel's enum skb_drop_reason value, or `DropReasonNames.none`.
    public var reason: UInt32

    public init(flow: FlowKey, netns: UInt32, reason: UInt32) {
        self.flow = flow; self.netns = netns; self.reason = reason
    }
}

/// Drops of one key in one interval, with the reason named.
public struct DropSample: Sendable, Equatable {
    public var key: DropKey
    public var reason: String
    public var packets: UInt64
    public init(key: DropKey, reason: String, packets: UInt64) {
        self.key = key; self.reason = reason; self.packets = packets
    }
}

/// The names of the running kernel's `enum skb_drop_reason`, read from its
/// BTF (never a table compiled in: the enum grows with every release).
public struct DropReasonNames: Sendable, Equatable {
    /// The key's reason on kernels whose tracepoint has none (FM_DROP_REASON_NONE).
    public static let none: UInt32 = 0xFFFF_FFFF
    /// What a drop without a reason is called.
    public static let unknown = "unknown"

    /// value -> name as the kernel spells it, less the "SKB_DROP_REASON_"
    /// prefix (SKB_DROP_REASON_NETFILTER_DROP: "NETFILTER_DROP"); empty on a
    /// kernel without the enum.
    public let names: [UInt32: String]

    /// From the enum's (name, value) pairs as BTF lists them.
    public init(enumerators: [(name: String, value: UInt32)]) {
        var m: [UInt32: String] = [:]
        for (name, value) in enumerators where m[value] == nil {
            m[value] = name.hasPrefix("SKB_DROP_REASON_") ? String(name.dropFirst("SKB_DROP_REASON_".count)) : name
        }
        names = m
    }

    /// The label of a key's reason: its name; "unknown" without a reason; a
    /// value the enum does not name (a subsystem's reason, 6.6+: the
    /// subsystem in the upper 16 bits) as "SUBSYS_<s>_<code>".
    public func label(_ reason: UInt32) -> String {
        if reason == Self.none { return Self.unknown }
        if let n = names[reason] { return n }
        return reason >> 16 != 0 ? "SUBSYS_\(reason >> 16)_\(reason & 0xFFFF)" : "REASON_\(reason)"
    }

    /// Whether a value means "not a drop": consumed packets, and the enum's
    /// "not dropped yet" placeholder, are never counted.
    public func isNotDrop(_ reason: UInt32) -> Bool {
        guard let n = names[reason] else { return false }
        return n == "SKB_CONSUMED" || n == "SKB_NOT_DROPPED_YET"
    }
}

/// Turns the kernel's cumulative counts into each interval's drops, and
/// finds keys idle since the last read (the daemon removes them, so the
/// bounded kernel table keeps room for new ones).
public struct DropDeltas: Sendable {
    private var last: [DropKey: UInt64] = [:]
    public init() {}

    /// `cumulative`: every key the kernel holds, summed over CPUs. Returns
    /// the drops since the last call (keys with none left out) and the keys
    /// that did not change since then. A key that came back with a smaller
    /// count was removed and made again: all of it is new.
    public mutating func take(_ cumulative: [DropKey: UInt64]) -> (drops: [DropKey: UInt64], idle: [DropKey]) {
        var drops: [DropKey: UInt64] = [:], idle: [DropKey] = []
        for (k, v) in cumulative {
            let before = last[k]
            if let before, before == v {
                idle.append(k)
            } else {
                drops[k] = before.map { v > $0 ? v - $0 : v } ?? v
            }
        }
        last = cumulative
        return (drops, idle)
    }

    /// The idle keys are gone from the kernel: a key made again starts at zero.
    public mutating func forget(_ keys: [DropKey]) {
        for k in keys { last[k] = nil }
    }
}

/// Drops counted on one interface and direction, by reason.
public typealias DropsByReason = [String: UInt64]
