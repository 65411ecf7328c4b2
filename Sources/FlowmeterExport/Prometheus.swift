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

    public init() {}

    public mutating func family(_ f: Family, _ samples: [(labels: [(String, String)], value: Double)]) {
        text += "# HELP \(f.name) \(Self.escapeHelp(f.help))\n# TYPE \(f.name) \(f.kind.rawValue)\n"
        for s in samples {
            text += f.name
            if !s.labels.isEmpty {
                text += "{" + s.labels.map { "\($0.0)=\"\(Self.escapeLabel($0.1))\"" }.joined(separator: ",") + "}"
            }
            text += " " + Self.format(s.value) + "\n"
        }
    }

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

    public static let all = [interfaceBytes, interfacePackets, ringLost, flowTableEntries, insertFailures,
                             records, socketsTracked, hookInfo, seriesDropped, buildInfo, malformed]
}

public enum MetricsRenderer {
    /// Renders the whole exposition from one snapshot of the accounting state.
    public static func render(_ a: Accounting, version: String) -> String {
        var e = Exposition()
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
            e.family(MetricCatalog.socketsTracked, [([("transport", "tcp")], Double(a.liveSockets.tcp)),
                                                    ([("transport", "udp")], Double(a.liveSockets.udp))])
        }
        e.family(MetricCatalog.hookInfo, a.hooks.map { ([("hook", $0.hook), ("mode", $0.mode)], 1) })
        e.family(MetricCatalog.seriesDropped, [([], 0)])
        e.family(MetricCatalog.malformed, [([], Double(a.kernel.malformedPackets))])
        e.family(MetricCatalog.buildInfo, [([("version", version)], 1)])
        return e.text
    }
}
