import FlowmeterCore

/// Prometheus text exposition (format 0.0.4), written by hand rather than
/// through swift-prometheus: the series set is rebuilt from the accounting
/// state on every scrape (interfaces come and go, and later series expire),
/// which a registry of long-lived metric objects does not model.
public struct Exposition {
    public enum Kind: String, Sendable { case counter, gauge, histogram }

    /// One metric family as defined once in `MetricCatalog`.
    public struct Family: Sendable {
        public let name: String
        public let kind: Kind
        public let help: String
        public init(name: String, kind: Kind, help: String) { self.name = name; self.kind = kind; self.help = help }
    }

    private(set) public var text = ""
    /// OpenMetrics 1.0 instead of the 0.0.4 text format: counter families are
    /// named without "_total" in HELP and TYPE, and the text ends with "# EOF".
    public let openMetrics: Bool

    public static let textContentType = "text/plain; version=0.0.4; charset=utf-8"
    public static let openMetricsContentType = "application/openmetrics-text; version=1.0.0; charset=utf-8"

    public init(openMetrics: Bool = false) { self.openMetrics = openMetrics }

    private mutating func header(_ f: Family) {
        let name = openMetrics && f.kind == .counter && f.name.hasSuffix("_total") ? String(f.name.dropLast(6)) : f.name
        text += "# HELP \(name) \(Self.escapeHelp(f.help))\n# TYPE \(name) \(f.kind.rawValue)\n"
    }

    private mutating func sample(_ name: String, _ labels: [(String, String)], _ value: String) {
        text += name
        if !labels.isEmpty {
            text += "{" + labels.map { "\($0.0)=\"\(Self.escapeLabel($0.1))\"" }.joined(separator: ",") + "}"
        }
        text += " " + value + "\n"
    }

    public mutating func family(_ f: Family, _ samples: [(labels: [(String, String)], value: Double)]) {
        header(f)
        for s in samples { sample(f.name, s.labels, Self.format(s.value)) }
    }

    /// A histogram family: per series the cumulative "le" buckets, +Inf, sum and count.
    public mutating func histogram(_ f: Family, _ series: [(labels: [(String, String)], value: Histogram)]) {
        header(f)
        for s in series {
            let cum = s.value.cumulative
            for (i, bound) in s.value.bounds.enumerated() {
                sample(f.name + "_bucket", s.labels + [("le", Self.format(bound))], String(cum[i]))
            }
            sample(f.name + "_bucket", s.labels + [("le", "+Inf")], String(s.value.count))
            sample(f.name + "_sum", s.labels, Self.format(s.value.sum))
            sample(f.name + "_count", s.labels, String(s.value.count))
        }
    }

    /// The exposition as served: OpenMetrics ends with "# EOF".
    public var body: String { openMetrics ? text + "# EOF\n" : text }

    static func escapeLabel(_ v: String) -> String {
        var o = ""
        for c in v.unicodeScalars {
            switch c {
            case "\\": o += "\\\\"
            case "\"": o += "\\\""
            case "\n": o += "\\n"
            default: o.unicodeScalars.append(c)
            }
        }
        return o
    }

    static func escapeHelp(_ v: String) -> String {
        v.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\n", with: "\\n")
    }

    static func format(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return String(v)
    }
}

/// Every metric flowmeterd exports: the one definition of names, types and help.
public enum MetricCatalog {
    public static let interfaceBytes = Exposition.Family(
        name: "flowmeter_interface_io_bytes_total", kind: .counter,
        help: "L3 bytes (sum of IP total lengths; non-IP frames: length after the link-layer header) seen by tc on an interface, by direction.")
    public static let interfacePackets = Exposition.Family(
        name: "flowmeter_interface_packets_total", kind: .counter,
        help: "Wire packets seen by tc on an interface, by direction (a GSO/GRO super-packet counts as its segments).")
    public static let ringLost = Exposition.Family(
        name: "flowmeter_ringbuf_lost_records_total", kind: .counter,
        help: "Records the kernel could not reserve in a ring buffer (failed reservations, summed over CPUs).")
    public static let flowTableEntries = Exposition.Family(
        name: "flowmeter_flow_table_entries", kind: .gauge,
        help: "Flows found in the kernel flow table at the last eviction.")
    public static let insertFailures = Exposition.Family(
        name: "flowmeter_flow_table_insert_failures_total", kind: .counter,
        help: "New flows the kernel flow table could not take; each such packet was sent through the flows ring instead.")
    public static let records = Exposition.Family(
        name: "flowmeter_records_total", kind: .counter,
        help: "Records received from the kernel, by source (flow_map: evicted flow entries; flows_ring: overflow packets; events_ring: socket events; socket_updates: counters of live sockets, read each interval).")
    public static let socketsTracked = Exposition.Family(
        name: "flowmeter_sockets_tracked", kind: .gauge,
        help: "Live TCP connections and UDP sockets in flowmeterd's connection table, by transport.")
    public static let hookInfo = Exposition.Family(
        name: "flowmeter_hook_info", kind: .gauge,
        help: "Hooks in use: 1 for each hook and the mode it was attached with.")
    public static let seriesDropped = Exposition.Family(
        name: "flowmeter_series_dropped_total", kind: .counter,
        help: "Series not created because a cardinality cap was reached.")
    public static let buildInfo = Exposition.Family(
        name: "flowmeter_build_info", kind: .gauge,
        help: "Build information of the running flowmeterd.")
    public static let malformed = Exposition.Family(
        name: "flowmeter_malformed_packets_total", kind: .counter,
        help: "Packets whose IP header could not be trusted; counted on the interface as non-IP under their ethertype.")

    public static let exportRecords = Exposition.Family(
        name: "flowmeter_export_records_total", kind: .counter,
        help: "Records each exporter handled, by outcome: queued (handed to it), sent, failed (attempts; OTLP retries), dropped (never delivered). Units: flow_log lines, ipfix flow records, otlp export requests.")
    public static let exportQueue = Exposition.Family(
        name: "flowmeter_export_queue_length", kind: .gauge,
        help: "Records waiting in each exporter's queue (OTLP requests not yet delivered; 0 for exporters that send at once).")
    public static let exportLastSuccess = Exposition.Family(
        name: "flowmeter_export_last_success_timestamp_seconds", kind: .gauge,
        help: "Unix time of each exporter's last successful send (0 before the first).")

    // Per service pair (labels service, peer_service, transport, and
    // direction or role where they apply). docs/metrics.md, "Metric reference".
    public static let networkBytes = Exposition.Family(
        name: "flowmeter_network_io_bytes_total", kind: .counter,
        help: "Payload bytes (what the application sent or received; no headers) per service pair, by direction, from the socket hooks.")
    public static let networkPackets = Exposition.Family(
        name: "flowmeter_network_packets_total", kind: .counter,
        help: "Wire packets per service pair, by direction, from tc flows joined to their socket by 5-tuple.")
    public static let tcpOpened = Exposition.Family(
        name: "flowmeter_tcp_connections_opened_total", kind: .counter,
        help: "TCP connections established per service pair, by the local end's role.")
    public static let tcpFailed = Exposition.Family(
        name: "flowmeter_tcp_connections_failed_total", kind: .counter,
        help: "TCP connects that failed per service pair, by reason (refused, timeout, unreachable, other).")
    public static let tcpActive = Exposition.Family(
        name: "flowmeter_tcp_connections_active", kind: .gauge,
        help: "Live TCP connections opened while flowmeterd ran, per service pair, by the local end's role.")
    public static let tcpRetransmits = Exposition.Family(
        name: "flowmeter_tcp_retransmits_total", kind: .counter,
        help: "TCP segments retransmitted per service pair.")
    public static let tcpResets = Exposition.Family(
        name: "flowmeter_tcp_resets_total", kind: .counter,
        help: "TCP resets per service pair, by direction (transmit: sent, receive: received).")
    public static let tcpRTT = Exposition.Family(
        name: "flowmeter_tcp_rtt_seconds", kind: .histogram,
        help: "Smoothed RTT of TCP connections per service pair: one sample per connection update and one at close.")

    public static let all = [interfaceBytes, interfacePackets, ringLost, flowTableEntries, insertFailures,
                             records, socketsTracked, hookInfo, seriesDropped, buildInfo, malformed,
                             exportRecords, exportLastSuccess, exportQueue,
                             networkBytes, networkPackets, tcpOpened, tcpFailed, tcpActive, tcpRetransmits,
                             tcpResets, tcpRTT]
}

public enum MetricsRenderer {
    /// Renders the whole exposition from one snapshot of the accounting state.
    public static func render(_ a: Accounting, version: String, openMetrics: Bool = false) -> String {
        var e = Exposition(openMetrics: openMetrics)
        let ifaces = a.interfaces.keys.sorted()
        func perInterface(_ value: (InterfaceTotals) -> UInt64) -> [(labels: [(String, String)], value: Double)] {
            ifaces.flatMap { name in
                Direction.allCases.compactMap { d in
                    a.interfaces[name]?[d].map { ([("interface", name), ("direction", d.label)], Double(value($0))) }
                }
            }
        }
        e.family(MetricCatalog.interfaceBytes, perInterface(\.bytes))
        e.family(MetricCatalog.interfacePackets, perInterface(\.packets))
        e.family(MetricCatalog.ringLost, [([("ring", "flows")], Double(a.kernel.flowsRingLost))]
                 + (a.socketTelemetry ? [([("ring", "events")], Double(a.socketEventsLost))] : []))
        e.family(MetricCatalog.flowTableEntries, [([], Double(a.flowTableEntries))])
        e.family(MetricCatalog.insertFailures, [([], Double(a.kernel.flowInsertFailures))])
        e.family(MetricCatalog.records, [FlowSource.flowMap, .flowsRing].map { ([("source", $0.rawValue)], Double(a.records[$0] ?? 0)) }
                 + (a.socketTelemetry ? [([("source", "events_ring")], Double(a.socketEvents)),
                                         ([("source", "socket_updates")], Double(a.socketUpdates))] : []))
        if a.socketTelemetry {
            let tcp = a.connections.reduce(0) { $0 + ($1.ipProtocol == 6 ? 1 : 0) }
            e.family(MetricCatalog.socketsTracked, [([("transport", "tcp")], Double(tcp)),
                                                    ([("transport", "udp")], Double(a.connections.count - tcp))])
        }
        e.family(MetricCatalog.hookInfo, a.hooks.map { ([("hook", $0.hook), ("mode", $0.mode)], 1) })
        e.family(MetricCatalog.seriesDropped, [([], Double(a.services?.seriesDropped ?? 0))])
        e.family(MetricCatalog.malformed, [([], Double(a.kernel.malformedPackets))])
        e.family(MetricCatalog.buildInfo, [([("version", version)], 1)])
        let exporters = a.exports.keys.sorted()
        e.family(MetricCatalog.exportRecords, exporters.flatMap { name -> [(labels: [(String, String)], value: Double)] in
            let x = a.exports[name]!
            return [("queued", x.queued), ("sent", x.sent), ("failed", x.failed), ("dropped", x.dropped)]
                .map { ([("exporter", name), ("outcome", $0.0)], Double($0.1)) }
        })
        e.family(MetricCatalog.exportQueue, exporters.map { ([("exporter", $0)], Double(a.exports[$0]!.queueLength)) })
        e.family(MetricCatalog.exportLastSuccess, exporters.map { ([("exporter", $0)], a.exports[$0]!.lastSuccessUnixSeconds) })
        if let agg = a.services { services(agg, into: &e) }
        return e.body
    }

    static func services(_ agg: ServiceAggregator, into e: inout Exposition) {
        let sorted: [(key: ServicePair, value: PairStats)] = agg.pairs.sorted { $0.key < $1.key }
        let pairs: [(ServicePair, PairStats)] = sorted.map { ($0.key, agg.exposed($0.key, $0.value)) }
        let tcp = pairs.filter { $0.0.transport == "tcp" }
        func base(_ p: ServicePair) -> [(String, String)] {
            [("service", p.service), ("peer_service", p.peer), ("transport", p.transport)]
        }
        let directions: [Direction] = [.transmit, .receive]
        let roles: [(String, Int)] = [("client", 0), ("server", 1)]
        e.family(MetricCatalog.networkBytes, pairs.flatMap { p, s in
            directions.map { (base(p) + [("direction", $0.label)], Double(s.bytes[Int($0.rawValue)])) }
        })
        e.family(MetricCatalog.networkPackets, pairs.flatMap { p, s in
            directions.map { (base(p) + [("direction", $0.label)], Double(s.packets[Int($0.rawValue)])) }
        })
        e.family(MetricCatalog.tcpOpened, tcp.flatMap { p, s in
            roles.map { (base(p) + [("role", $0.0)], Double(s.opened[$0.1])) }
        })
        e.family(MetricCatalog.tcpFailed, tcp.flatMap { p, s in
            s.failed.sorted { $0.key < $1.key }.map { (base(p) + [("reason", $0.key)], Double($0.value)) }
        })
        e.family(MetricCatalog.tcpActive, tcp.flatMap { p, s in
            roles.map { (base(p) + [("role", $0.0)], Double(s.active[$0.1])) }
        })
        e.family(MetricCatalog.tcpRetransmits, tcp.map { p, s in (base(p), Double(s.retransmits)) })
        e.family(MetricCatalog.tcpResets, tcp.flatMap { p, s in
            directions.map { (base(p) + [("direction", $0.label)], Double(s.resets[Int($0.rawValue)])) }
        })
        e.histogram(MetricCatalog.tcpRTT, tcp.map { p, s in (base(p), s.rtt) })
    }
}
