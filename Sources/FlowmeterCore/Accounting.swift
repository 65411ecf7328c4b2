// What the daemon has counted so far, built from flow records. Pure state:
// the collector feeds it, the exporters read snapshots of it.

/// Per interface and direction: packets and L3 bytes seen by tc.
public struct InterfaceTotals: Sendable, Equatable {
    public var packets: UInt64 = 0
    public var bytes: UInt64 = 0
    public init(packets: UInt64 = 0, bytes: UInt64 = 0) { self.packets = packets; self.bytes = bytes }
}

/// Counters the kernel keeps for us (cumulative since load, summed over CPUs).
public struct KernelCounters: Sendable, Equatable {
    /// Failed reservations on the "flows" ring: packets that went uncounted.
    public var flowsRingLost: UInt64 = 0
    /// New flows the flow table could not take (sent through the ring instead).
    public var flowInsertFailures: UInt64 = 0
    /// Packets counted as malformed (family other).
    public var malformedPackets: UInt64 = 0
    /// Packets seen while no flow table was installed (sent through the ring).
    public var flowTableMissing: UInt64 = 0
    public init() {}
}

/// Which hook serves which job, e.g. ("tc", "tcx").
public struct HookMode: Sendable, Equatable, Hashable {
    public var hook: String
    public var mode: String
    public init(hook: String, mode: String) { self.hook = hook; self.mode = mode }
}

/// How one exporter is doing. Units are the exporter's: flow-log lines, IPFIX
/// flow records, OTLP export requests.
public struct ExportStats: Sendable, Equatable {
    /// Handed to the exporter (sent, failed for good, dropped, or waiting).
    public var queued: UInt64 = 0
    public var sent: UInt64 = 0
    /// Attempts that failed (an OTLP batch retried later counts each failure).
    public var failed: UInt64 = 0
    /// Given up on: never delivered.
    public var dropped: UInt64 = 0
    /// Wall clock (Unix seconds) of the last success; 0 before the first.
    public var lastSuccessUnixSeconds: Double = 0
    /// Waiting to be sent (OTLP's queue); 0 for exporters that send at once.
    public var queueLength = 0
    /// Data points the receiver refused in accepted requests (OTLP's
    /// partial_success); nil for exporters without such answers.
    public var rejectedPoints: UInt64?
    public init() {}
}

/// The daemon's counted state.
public struct Accounting: Sendable {
    /// Keyed by interface name; an index we have no name for shows as "if<N>".
    public private(set) var interfaces: [String: [Direction: InterfaceTotals]] = [:]
    /// Flow records received, by source.
    public private(set) var records: [FlowSource: UInt64] = [:]
    /// Entries found in the flow table at the last eviction (live flows per interval).
    public private(set) var flowTableEntries: UInt64 = 0
    public var kernel = KernelCounters()
    public var hooks: [HookMode] = []
    /// Socket telemetry, when its hooks are attached: records received from the
    /// "events" ring, and the kernel's count of events lost (failed ring reservations).
    public var socketTelemetry = false
    public private(set) var socketEvents: UInt64 = 0
    /// UPDATE records read from the socket update iterator.
    public private(set) var socketUpdates: UInt64 = 0
    public var socketEventsLost: UInt64 = 0
    /// Live TCP connections and UDP sockets (the connection table), as of the last tick.
    public var connections: [SocketEvent] = []
    /// The flows of the last interval, with the service pair each was counted
    /// under: at most `maxListedFlows`, the largest (by bytes) if there were more.
    public var lastFlows: [(record: FlowRecord, pair: ServicePair?)] = []
    /// The API lists at most this many flows per interval. A full kernel
    /// table sends a record per packet, and the list goes to every API
    /// client every second: it is for people and scripts looking at the top,
    /// the flow log and IPFIX have every record.
    public static let maxListedFlows = 10_000

    /// `listed` followed by `batch` (each record with `pair(i)`), or their
    /// `maxListedFlows` largest by bytes, in their order. Picks by index
    /// before it copies: the batch can be a backlog of a hundred thousand.
    public static func largestFlows(
        _ listed: [(record: FlowRecord, pair: ServicePair?)], _ batch: [FlowRecord],
        pair: (Int) -> ServicePair?
    ) -> [(record: FlowRecord, pair: ServicePair?)] {
        let n = listed.count, total = n + batch.count
        func entry(_ i: Int) -> (record: FlowRecord, pair: ServicePair?) { i < n ? listed[i] : (batch[i - n], pair(i - n)) }
        guard total > maxListedFlows else { return (0..<total).map(entry) }
        func bytes(_ i: Int) -> UInt64 { i < n ? listed[i].record.stats.bytes : batch[i - n].stats.bytes }
        return (0..<total).sorted { bytes($0) > bytes($1) }.prefix(maxListedFlows).sorted().map(entry)
    }
    /// Per exporter (flow_log, ipfix, otlp) health, for those configured.
    public var exports: [String: ExportStats] = [:]
    /// Packets dropped on this namespace's interfaces (`flowmeter_interface_drops_total`),
    /// by interface name, direction and reason; counted when the drop program runs.
    public private(set) var interfaceDrops: [String: [Direction: DropsByReason]] = [:]
    /// Whether the drop program runs (the drop metrics are shown only then).
    public var dropsCounted = false
    /// Whether the DNS program runs (the DNS metrics are shown only then).
    public var dnsCounted = false
    /// DNS messages and queries counted nowhere (flowmeter_dns_lost_total).
    public var dnsLost = DNSLost()
    /// Drops neither kernel drop table had room for (counted nowhere else).
    public var dropsLost: UInt64 = 0
    /// Per service pair state, when socket telemetry runs.
    public var services: ServiceAggregator?
    /// Container runtime lookups of pods' names, by runtime and outcome
    /// (empty when no runtime is configured).
    public var metadataLookups: [LookupCount] = []
    /// Addresses of this node's named pods and of the node (flowmeter_endpoint_info).
    public var endpoints: [EndpointInfo] = []
    /// What `/readyz` answers: start-up marks the programs attached, the
    /// pipeline its interval passes, reader stalls and the detach.
    public var readiness = Readiness()

    public init() {}

    /// Adds one eviction's (or ring drain's) records.
    public mutating func add(_ batch: [FlowRecord], names: [UInt32: String]) {
        for r in batch {
            let name = names[r.key.ifindex] ?? "if\(r.key.ifindex)"
            var t = interfaces[name, default: [:]][r.key.direction, default: InterfaceTotals()]
            t.packets &+= r.stats.packets
            t.bytes &+= r.stats.bytes
            interfaces[name, default: [:]][r.key.direction] = t
            records[r.source, default: 0] &+= 1
        }
    }

    /// Counts one tick's records (evicted and from the ring), summed per
    /// flow in `flows`: interface totals, records by source and, with socket
    /// telemetry, service pairs. Equal to `add` and `services.apply(flows:)`
    /// record by record, but the string-keyed work runs once per flow, which
    /// matters when the ring brings one record per packet. Returns the pair
    /// of each entry of `flows` (empty without socket telemetry).
    @discardableResult
    public mutating func count(flows: FlowTable, names: [UInt32: String], now: UInt64) -> [ServicePair?] {
        // Interfaces are few: sum per (ifindex, direction) in a list searched
        // linearly, and name them (hashing strings) once each at the end.
        var perInterface: [(key: UInt64, totals: InterfaceTotals)] = []
        for i in 0..<flows.count {
            let e = flows[i]
            let k = UInt64(e.key.ifindex) << 1 | UInt64(e.key.direction.rawValue)
            var at = perInterface.firstIndex { $0.key == k } ?? -1
            if at < 0 {
                at = perInterface.count
                perInterface.append((k, InterfaceTotals()))
            }
            perInterface[at].totals.packets &+= e.packets
            perInterface[at].totals.bytes &+= e.bytes
        }
        for (k, t) in perInterface {
            let ifindex = UInt32(truncatingIfNeeded: k >> 1), dir = Direction(rawValue: UInt8(k & 1)) ?? .receive
            let name = names[ifindex] ?? "if\(ifindex)"
            var sum = interfaces[name, default: [:]][dir, default: InterfaceTotals()]
            sum.packets &+= t.packets
            sum.bytes &+= t.bytes
            interfaces[name, default: [:]][dir] = sum
        }
        if flows.recordsFromMap > 0 { records[.flowMap, default: 0] &+= flows.recordsFromMap }
        if flows.recordsFromRing > 0 { records[.flowsRing, default: 0] &+= flows.recordsFromRing }
        return services?.apply(flows: flows, now: now) ?? []
    }

    /// Counts one interval's drops: on this namespace's interfaces
    /// (`ownNetns`: ifindexes of other namespaces name other devices), and,
    /// with socket telemetry, on the service pair of the socket each
    /// packet's 5-tuple belongs to.
    public mutating func count(drops: [DropSample], names: [UInt32: String], ownNetns: UInt32, now: UInt64) {
        for d in drops where d.packets > 0 && d.key.flow.ifindex != 0 && d.key.netns == ownNetns {
            let name = names[d.key.flow.ifindex] ?? "if\(d.key.flow.ifindex)"
            interfaceDrops[name, default: [:]][d.key.flow.direction, default: [:]][d.reason, default: 0] &+= d.packets
        }
        services?.apply(drops: drops, now: now)
    }

    /// Drops on this namespace's interfaces by flow key (flags empty), as
    /// tc keys its flows: what the flow records of the same pass carry.
    public static func dropsByFlow(_ drops: [DropSample], ownNetns: UInt32) -> [FlowKey: DropsByReason] {
        var out: [FlowKey: DropsByReason] = [:]
        for d in drops where d.packets > 0 && d.key.flow.ifindex != 0 && d.key.netns == ownNetns && d.key.flow.family != .other {
            out[d.key.flow, default: [:]][d.reason, default: 0] &+= d.packets
        }
        return out
    }

    public mutating func setFlowTableEntries(_ n: Int) { flowTableEntries = UInt64(n) }

    public mutating func addSocketEvents(_ n: Int) { socketEvents &+= UInt64(n) }
    public mutating func addSocketUpdates(_ n: Int) { socketUpdates &+= UInt64(n) }
}

/// Converts CLOCK_MONOTONIC nanoseconds (what bpf_ktime_get_ns returns) to wall
/// time, given one simultaneous reading of both clocks.
public struct ClockMapping: Sendable {
    public let realtimeNanos: Int64
    public let monotonicNanos: Int64
    public init(realtimeNanos: Int64, monotonicNanos: Int64) {
        self.realtimeNanos = realtimeNanos; self.monotonicNanos = monotonicNanos
    }
    public func wallNanos(monotonic: UInt64) -> Int64 {
        realtimeNanos + (Int64(truncatingIfNeeded: monotonic) - monotonicNanos)
    }
}

/// RFC 3339 UTC timestamp with nanoseconds: 2026-11-29T16:12:00.123456789Z.
public func rfc3339(nanosSinceEpoch ns: Int64) -> String {
    let secs = ns >= 0 ? ns / 1_000_000_000 : (ns - 999_999_999) / 1_000_000_000
    let frac = ns - secs * 1_000_000_000
    var days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400
    let sod = secs - days * 86400
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    days += 719_468
    let era = (days >= 0 ? days : days - 146_096) / 146_097
    let doe = days - era * 146_097
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
    var y = yoe + era * 400
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    let mp = (5 * doy + 2) / 153
    let d = doy - (153 * mp + 2) / 5 + 1
    let m = mp < 10 ? mp + 3 : mp - 9
    if m <= 2 { y += 1 }
    func pad(_ v: Int64, _ w: Int) -> String {
        let s = String(v); return String(repeating: "0", count: max(0, w - s.count)) + s
    }
    return "\(pad(y, 4))-\(pad(m, 2))-\(pad(d, 2))T\(pad(sod / 3600, 2)):\(pad(sod % 3600 / 60, 2)):\(pad(sod % 60, 2)).\(pad(frac, 9))Z"
}
