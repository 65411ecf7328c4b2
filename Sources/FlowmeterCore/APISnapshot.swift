import FlowmeterCore
import Foundation

/// What the local API serves (`GET /v1/snapshot`, and each line of
/// `GET /v1/stream`): the daemon's state as one JSON document. Version 1; a
/// key may be added within a version, never removed or changed. Counters are
/// cumulative since the daemon started (rates are the client's business:
/// two snapshots and their `time_unix_ms`).
public struct APISnapshot: Codable, Sendable, Equatable {
    public static let version = 1
    /// The snapshot lists at most this many connections, and at most
    /// `Accounting.maxListedFlows` flows: it goes to every stream client every
    /// second, and a node with 60,000 sockets would make it 15 MB.
    public static let maxListedConnections = 10_000

    // The Swift names are the wire's (flowtop and the tests spell them so);
    // each type still lists its keys, so that a renamed property cannot
    // silently rename a key of schema 1.

    public struct Hook: Codable, Sendable, Equatable {
        public var hook: String
        public var mode: String
        enum CodingKeys: String, CodingKey { case hook, mode }
    }

    public struct Interface: Codable, Sendable, Equatable {
        public var name: String
        public var tx_bytes: UInt64, rx_bytes: UInt64, tx_packets: UInt64, rx_packets: UInt64
        /// Packets the kernel dropped on it each way (all reasons); nil
        /// without the drop hook.
        public var tx_drops: UInt64? = nil, rx_drops: UInt64? = nil
        enum CodingKeys: String, CodingKey { case name, tx_bytes, rx_bytes, tx_packets, rx_packets, tx_drops, rx_drops }
    }

    public struct Service: Codable, Sendable, Equatable {
        public var service: String, peer_service: String, transport: String
        /// Payload bytes (socket hooks) and wire packets (tc) each way.
        public var tx_bytes: UInt64, rx_bytes: UInt64, tx_packets: UInt64, rx_packets: UInt64
        public var connections_opened: UInt64, connections_active: Int, connections_failed: UInt64
        public var retransmits: UInt64, resets_sent: UInt64, resets_received: UInt64
        /// RTT quantiles from the histogram (linear within a bucket, as PromQL's
        /// histogram_quantile); nil without samples.
        public var rtt_p50_seconds: Double?, rtt_p99_seconds: Double?
        /// Packets the kernel dropped of the pair's 5-tuples (all reasons);
        /// nil without the drop hook.
        public var drops: UInt64? = nil
        /// DNS queries the pair's clients sent (counted as they ended), those
        /// whose rcode was not NOERROR (timeouts included), and the median
        /// latency; nil without the DNS programs.
        public var dns_requests: UInt64? = nil, dns_errors: UInt64? = nil, dns_p50_seconds: Double? = nil
        enum CodingKeys: String, CodingKey {
            case service, peer_service, transport, tx_bytes, rx_bytes, tx_packets, rx_packets
            case connections_opened, connections_active, connections_failed, retransmits, resets_sent, resets_received
            case rtt_p50_seconds, rtt_p99_seconds, drops, dns_requests, dns_errors, dns_p50_seconds
        }
    }

    public struct Connection: Codable, Sendable, Equatable {
        public var id: String
        public var protocol_: String
        public var role: String
        public var local: String, remote: String
        public var pid: UInt32?, process: String?, cgroup_id: UInt64?
        public var bytes_sent: UInt64, bytes_received: UInt64
        public var srtt_us: UInt32?
        public var state: String
        enum CodingKeys: String, CodingKey {
            case id, protocol_ = "protocol", role, local, remote, pid, process, cgroup_id, bytes_sent, bytes_received, srtt_us, state
        }
    }

    public struct Flow: Codable, Sendable, Equatable {
        public var interface: String, direction: String, protocol_: String
        public var src: String, dst: String
        public var packets: UInt64, bytes: UInt64
        public var service: String?, peer_service: String?
        enum CodingKeys: String, CodingKey {
            case interface, direction, protocol_ = "protocol", src, dst, packets, bytes, service, peer_service
        }
    }

    public struct SelfMetrics: Codable, Sendable, Equatable {
        public var flows_ring_lost: UInt64, events_ring_lost: UInt64
        public var flow_table_entries: UInt64, flow_table_insert_failures: UInt64
        public var series_dropped: UInt64, sockets_tracked: Int
        enum CodingKeys: String, CodingKey {
            case flows_ring_lost, events_ring_lost, flow_table_entries, flow_table_insert_failures, series_dropped, sockets_tracked
        }
    }

    public var version: Int
    public var time_unix_ms: Int64
    public var host: String, kernel: String, flowmeter_version: String
    public var uptime_seconds: Double
    public var interval_seconds: Double
    public var hooks: [Hook]
    public var interfaces: [Interface]
    public var services: [Service]
    public var connections: [Connection]
    /// The flows of the last interval (per-interval counts, not cumulative).
    public var flows: [Flow]
    public var self_metrics: SelfMetrics

    enum CodingKeys: String, CodingKey {
        case version, time_unix_ms, host, kernel, flowmeter_version, uptime_seconds, interval_seconds
        case hooks, interfaces, services, connections, flows, self_metrics
    }

    public struct Context: Sendable {
        public var host: String, kernel: String, version: String
        public var startUnixMs: Int64, intervalSeconds: Double
        public var interfaceNames: [UInt32: String]
        public init(
            host: String, kernel: String, version: String, startUnixMs: Int64, intervalSeconds: Double,
            interfaceNames: [UInt32: String]
        ) {
            self.host = host; self.kernel = kernel; self.version = version; self.startUnixMs = startUnixMs
            self.intervalSeconds = intervalSeconds; self.interfaceNames = interfaceNames
        }
    }

    /// The snapshot of an accounting state (pure).
    public static func make(_ a: Accounting, context c: Context, nowUnixMs: Int64) -> APISnapshot {
        func endpoint(_ addr: IPAddress16, _ port: UInt16) -> String {
            let t = addr.description
            return t.contains(":") ? "[\(t)]:\(port)" : "\(t):\(port)"
        }
        let interfaces = a.interfaces.keys.sorted().map { name -> Interface in
            let d = a.interfaces[name] ?? [:]
            var i = Interface(
                name: name, tx_bytes: d[.transmit]?.bytes ?? 0, rx_bytes: d[.receive]?.bytes ?? 0,
                tx_packets: d[.transmit]?.packets ?? 0, rx_packets: d[.receive]?.packets ?? 0)
            if a.dropsCounted {
                let drops = a.interfaceDrops[name] ?? [:]
                i.tx_drops = drops[.transmit]?.values.reduce(0, +) ?? 0
                i.rx_drops = drops[.receive]?.values.reduce(0, +) ?? 0
            }
            return i
        }
        let tx = Int(Direction.transmit.rawValue), rx = Int(Direction.receive.rawValue)
        let services = (a.services?.pairs ?? [:]).sorted { $0.key < $1.key }.map { p, s in
            var x = Service(
                service: p.service, peer_service: p.peer, transport: p.transport,
                tx_bytes: s.bytes[tx], rx_bytes: s.bytes[rx], tx_packets: s.packets[tx], rx_packets: s.packets[rx],
                connections_opened: s.opened.reduce(0, +), connections_active: s.active.reduce(0, +),
                connections_failed: s.failed.values.reduce(0, +), retransmits: s.retransmits,
                resets_sent: s.resets[tx], resets_received: s.resets[rx],
                rtt_p50_seconds: quantile(0.5, s.rtt), rtt_p99_seconds: quantile(0.99, s.rtt))
            if a.dropsCounted { x.drops = s.drops.values.reduce(0, +) }
            if a.dnsCounted {
                x.dns_requests = s.dns.requests.values.reduce(0, +)
                x.dns_errors = s.dns.requests.filter { $0.key.rcode != "NOERROR" }.values.reduce(0, +)
                x.dns_p50_seconds = quantile(0.5, s.dns.latency)
            }
            return x
        }
        // Past the cap, the busiest connections (the total is in self_metrics.sockets_tracked).
        var listed = a.connections
        if listed.count > Self.maxListedConnections {
            listed.sort { $0.bytesSent &+ $0.bytesReceived > $1.bytesSent &+ $1.bytesReceived }
            listed.removeLast(listed.count - Self.maxListedConnections)
        }
        let connections = listed.sorted { ($0.startNanos, $0.socketID) < ($1.startNanos, $1.socketID) }.map { e in
            Connection(
                id: String(e.socketID, radix: 16), protocol_: e.ipProtocol == 17 ? "udp" : "tcp",
                role: e.role == .client ? "client" : e.role == .server ? "server" : "unknown",
                local: endpoint(e.localAddress, e.localPort), remote: endpoint(e.remoteAddress, e.remotePort),
                pid: e.owner?.tgid, process: e.owner?.name, cgroup_id: e.owner?.cgroupID,
                bytes_sent: e.bytesSent, bytes_received: e.bytesReceived,
                srtt_us: e.ipProtocol == 6 ? e.srttMicros : nil,
                state: e.kind == .open ? "open" : "active")
        }
        let flows = a.lastFlows.compactMap { f, pair -> Flow? in
            let k = f.key
            guard k.family != .other else { return nil }
            return Flow(
                interface: c.interfaceNames[k.ifindex] ?? "if\(k.ifindex)", direction: k.direction.label,
                protocol_: IPProtocolName.name(k.ipProtocol, family: k.family),
                src: endpoint(k.source, k.sourcePort), dst: endpoint(k.destination, k.destinationPort),
                packets: f.stats.packets, bytes: f.stats.bytes, service: pair?.service, peer_service: pair?.peer)
        }
        return APISnapshot(
            version: version, time_unix_ms: nowUnixMs, host: c.host, kernel: c.kernel, flowmeter_version: c.version,
            uptime_seconds: Double(nowUnixMs - c.startUnixMs) / 1000, interval_seconds: c.intervalSeconds,
            hooks: a.hooks.map { Hook(hook: $0.hook, mode: $0.mode) }, interfaces: interfaces, services: services,
            connections: connections, flows: flows,
            self_metrics: SelfMetrics(
                flows_ring_lost: a.kernel.flowsRingLost, events_ring_lost: a.socketEventsLost,
                flow_table_entries: a.flowTableEntries,
                flow_table_insert_failures: a.kernel.flowInsertFailures,
                series_dropped: a.services?.seriesDropped ?? 0,
                sockets_tracked: a.connections.count))
    }

    /// The q-quantile of a histogram, interpolated linearly within its bucket
    /// (the first bucket starts at 0; past the last bound, the last bound).
    public static func quantile(_ q: Double, _ h: Histogram) -> Double? {
        guard h.count > 0 else { return nil }
        let rank = q * Double(h.count)
        let cum = h.cumulative
        for (i, c) in cum.enumerated() where Double(c) >= rank {
            guard i < h.bounds.count else { return h.bounds.last }
            let lower = i == 0 ? 0 : h.bounds[i - 1]
            let below = i == 0 ? 0 : Double(cum[i - 1])
            let inBucket = Double(c) - below
            return inBucket > 0 ? lower + (h.bounds[i] - lower) * (rank - below) / inBucket : h.bounds[i]
        }
        return h.bounds.last
    }

    /// The document `GET /v1/snapshot` serves ("{}" if a Double in it is
    /// not finite, which JSON cannot carry).
    public func json() -> String {
        (try? WireJSON.api.string(self)) ?? "{}"
    }
}

// In an extension, so that the memberwise initializer stays.
extension APISnapshot {
    public init(from decoder: any Decoder) throws {
        try self.init(from: decoder, over: nil)
    }

    /// Decodes a document; with `base`, the keys it lacks are base's (a
    /// stream delta carries only the top-level keys that changed). Written
    /// out rather than synthesized for that, so the compiler still sees
    /// every property set.
    init(from decoder: any Decoder, over base: APISnapshot?) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func field<T: Decodable>(_ key: CodingKeys, _ path: KeyPath<APISnapshot, T>) throws -> T {
            if let base, !c.contains(key) { return base[keyPath: path] }
            return try c.decode(T.self, forKey: key)
        }
        version = try field(.version, \.version)
        time_unix_ms = try field(.time_unix_ms, \.time_unix_ms)
        host = try field(.host, \.host)
        kernel = try field(.kernel, \.kernel)
        flowmeter_version = try field(.flowmeter_version, \.flowmeter_version)
        uptime_seconds = try field(.uptime_seconds, \.uptime_seconds)
        interval_seconds = try field(.interval_seconds, \.interval_seconds)
        hooks = try field(.hooks, \.hooks)
        interfaces = try field(.interfaces, \.interfaces)
        services = try field(.services, \.services)
        connections = try field(.connections, \.connections)
        flows = try field(.flows, \.flows)
        self_metrics = try field(.self_metrics, \.self_metrics)
    }
}
