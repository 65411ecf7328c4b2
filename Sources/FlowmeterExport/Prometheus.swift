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

    /// One family with its series: counters and gauges as one sample per
    /// series; a histogram as, per series, the cumulative "le" buckets,
    /// +Inf, sum and count.
    public mutating func family(_ f: MetricFamilyData) {
        header(Family(name: f.name, kind: f.kind, help: f.help))
        for s in f.series {
            switch s.value {
            case .number(let v):
                sample(f.name, s.labels, Self.format(v))
            case .histogram(let h):
                var running: UInt64 = 0
                for (i, bound) in h.bounds.enumerated() {
                    running += h.counts[i]
                    sample(f.name + "_bucket", s.labels + [("le", Self.format(bound))], String(running))
                }
                sample(f.name + "_bucket", s.labels + [("le", "+Inf")], String(h.count))
                sample(f.name + "_sum", s.labels, Self.format(h.sum))
                sample(f.name + "_count", s.labels, String(h.count))
            }
        }
    }

    /// A counter or gauge family from its samples.
    public mutating func family(_ f: Family, _ samples: [(labels: [(String, String)], value: Double)]) {
        family(
            MetricFamilyData(
                name: f.name, kind: f.kind, help: f.help,
                series: samples.map { .init(labels: $0.labels, value: .number($0.value)) }))
    }

    /// A histogram family from its series.
    public mutating func histogram(_ f: Family, _ series: [(labels: [(String, String)], value: Histogram)]) {
        family(
            MetricFamilyData(
                name: f.name, kind: f.kind, help: f.help,
                series: series.map {
                    .init(
                        labels: $0.labels,
                        value: .histogram(
                            .init(
                                bounds: $0.value.bounds, counts: $0.value.counts,
                                sum: $0.value.sum, count: $0.value.count)))
                }))
    }

    /// The text of these families, in order.
    public static func render(_ families: [MetricFamilyData], openMetrics: Bool) -> String {
        var e = Exposition(openMetrics: openMetrics)
        for f in families { e.family(f) }
        return e.body
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
        help:
            "L3 bytes (sum of IP total lengths; non-IP frames: length after the link-layer header) seen by tc on an interface, by direction."
    )
    public static let interfacePackets = Exposition.Family(
        name: "flowmeter_interface_packets_total", kind: .counter,
        help: "Wire packets seen by tc on an interface, by direction (a GSO/GRO super-packet counts as its segments).")
    public static let interfaceDrops = Exposition.Family(
        name: "flowmeter_interface_drops_total", kind: .counter,
        help:
            "Packets the kernel dropped (skb:kfree_skb) on an interface, by direction and the kernel's drop reason (\"unknown\" on kernels before 5.17)."
    )
    public static let dropsLost = Exposition.Family(
        name: "flowmeter_drops_lost_total", kind: .counter,
        help:
            "Packet drops neither the kernel's drop table nor its overflow table (per interface, without the 5-tuple) had room for: counted in no drop metric."
    )
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
        help:
            "Records received from the kernel, by source (flow_map: evicted flow entries; flows_ring: overflow packets; events_ring: socket events; socket_updates: counters of live sockets, read each interval)."
    )
    public static let socketsTracked = Exposition.Family(
        name: "flowmeter_sockets_tracked", kind: .gauge,
        help: "Live TCP connections and UDP sockets in flowmeterd's connection table, by transport.")
    public static let hookInfo = Exposition.Family(
        name: "flowmeter_hook_info", kind: .gauge,
        help: "Hooks in use: 1 for each hook and the mode it was attached with.")
    public static let seriesDropped = Exposition.Family(
        name: "flowmeter_series_dropped_total", kind: .counter,
        help: "Series not created because a cardinality cap was reached.")
    public static let metadataLookups = Exposition.Family(
        name: "flowmeter_metadata_lookups_total", kind: .counter,
        help:
            "Lookups of a local pod's container in the container runtime (docs/kubernetes.md), by runtime (source) and outcome: found, not_found, unavailable (runtime unreachable), error. Until found, the pod is named pod:<uid>."
    )
    public static let endpointInfo = Exposition.Family(
        name: "flowmeter_endpoint_info", kind: .gauge,
        help:
            "1 for each address of this node's pods the container runtime named, and of the node itself (service node:<node>), with who holds it: for Prometheus to name peers on other nodes (deploy/prometheus, docs/kubernetes.md). Read every 5 s; a pod that is gone vanishes at the next read."
    )
    public static let buildInfo = Exposition.Family(
        name: "flowmeter_build_info", kind: .gauge,
        help: "Build information of the running flowmeterd.")
    public static let malformed = Exposition.Family(
        name: "flowmeter_malformed_packets_total", kind: .counter,
        help: "Packets whose IP header could not be trusted; counted on the interface as non-IP under their ethertype.")

    public static let exportRecords = Exposition.Family(
        name: "flowmeter_export_records_total", kind: .counter,
        help:
            "Records each exporter handled, by outcome: queued (handed to it), sent, failed (attempts; OTLP retries), dropped (never delivered). Units: flow_log lines, ipfix flow records, otlp export requests."
    )
    public static let exportQueue = Exposition.Family(
        name: "flowmeter_export_queue_length", kind: .gauge,
        help: "Records waiting in each exporter's queue (OTLP requests not yet delivered; 0 for exporters that send at once).")
    public static let exportRejectedPoints = Exposition.Family(
        name: "flowmeter_export_rejected_points_total", kind: .counter,
        help: "Data points an OTLP collector refused in requests it accepted (partial_success.rejected_data_points).")
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
    public static let packetDrops = Exposition.Family(
        name: "flowmeter_packet_drops_total", kind: .counter,
        help:
            "Packets the kernel dropped (skb:kfree_skb) per service pair of the socket their 5-tuple belongs to, by the kernel's drop reason (\"unknown\" on kernels before 5.17)."
    )
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

    public static let dnsRequests = Exposition.Family(
        name: "flowmeter_dns_requests_total", kind: .counter,
        help:
            "DNS queries local clients sent per service pair (client's service, server), counted once each as it ended: by the question's type and the answer's rcode, or rcode=\"timeout\" when no answer came within --dns-timeout."
    )
    public static let dnsLatency = Exposition.Family(
        name: "flowmeter_dns_latency_seconds", kind: .histogram,
        help: "Seconds from a DNS query to its answer per service pair, timed in the kernel (answered queries only).")
    public static let dnsLost = Exposition.Family(
        name: "flowmeter_dns_lost_total", kind: .counter,
        help:
            "DNS messages and queries not counted, by reason: ring (the DNS ring had no room), pending_full (the kernel's pending-query table was full: its answer cannot be matched), evicted (flowmeterd's table of waiting queries was full), unmatched (an answer to no waiting query: after its timeout, or to a query sent before the start)."
    )

    public static let dnsNamesEvicted = Exposition.Family(
        name: "flowmeter_dns_names_evicted_total", kind: .counter,
        help:
            "Resolved names the DNS name cache (which name each local client resolved to each address, for peer naming) let go of before they expired, because it was full."
    )

    public static let all = [
        interfaceBytes, interfacePackets, interfaceDrops, dropsLost, ringLost, flowTableEntries, insertFailures,
        records, socketsTracked, hookInfo, seriesDropped, metadataLookups, endpointInfo, buildInfo, malformed,
        exportRecords, exportRejectedPoints, exportLastSuccess, exportQueue,
        networkBytes, networkPackets, packetDrops, tcpOpened, tcpFailed, tcpActive, tcpRetransmits,
        tcpResets, tcpRTT, dnsRequests, dnsLatency, dnsLost, dnsNamesEvicted,
    ]
}

/// The metrics of one accounting snapshot: built once as metric families,
/// then written as Prometheus text (/metrics) or sent as OTLP (OTLPEncoder),
/// so a family, series, label or value cannot exist in one and not the other.
public enum MetricsRenderer {
    /// Renders the whole exposition from one snapshot of the accounting state.
    public static func render(_ a: Accounting, version: String, openMetrics: Bool = false) -> String {
        Exposition.render(families(a, version: version), openMetrics: openMetrics)
    }

    typealias Samples = [(labels: [(String, String)], value: Double)]

    static func numbers(_ f: Exposition.Family, _ samples: Samples) -> MetricFamilyData {
        MetricFamilyData(
            name: f.name, kind: f.kind, help: f.help,
            series: samples.map { .init(labels: $0.labels, value: .number($0.value)) })
    }

    /// Every family, in exposition order.
    public static func families(_ a: Accounting, version: String) -> [MetricFamilyData] {
        var out: [MetricFamilyData] = []
        func add(_ f: Exposition.Family, _ samples: Samples) { out.append(numbers(f, samples)) }
        let ifaces = a.interfaces.keys.sorted()
        func perInterface(_ value: (InterfaceTotals) -> UInt64) -> Samples {
            ifaces.flatMap { name in
                Direction.allCases.compactMap { d in
                    a.interfaces[name]?[d].map { ([("interface", name), ("direction", d.label)], Double(value($0))) }
                }
            }
        }
        add(MetricCatalog.interfaceBytes, perInterface(\.bytes))
        add(MetricCatalog.interfacePackets, perInterface(\.packets))
        if a.dropsCounted {
            add(
                MetricCatalog.interfaceDrops,
                a.interfaceDrops.keys.sorted().flatMap { name in
                    Direction.allCases.flatMap { d in
                        (a.interfaceDrops[name]?[d] ?? [:]).sorted { $0.key < $1.key }.map {
                            ([("interface", name), ("direction", d.label), ("reason", $0.key)], Double($0.value))
                        }
                    }
                })
            add(MetricCatalog.dropsLost, [([], Double(a.dropsLost))])
        }
        add(
            MetricCatalog.ringLost,
            [([("ring", "flows")], Double(a.kernel.flowsRingLost))]
                + (a.socketTelemetry ? [([("ring", "events")], Double(a.socketEventsLost))] : []))
        add(MetricCatalog.flowTableEntries, [([], Double(a.flowTableEntries))])
        add(MetricCatalog.insertFailures, [([], Double(a.kernel.flowInsertFailures))])
        add(
            MetricCatalog.records,
            [FlowSource.flowMap, .flowsRing].map { ([("source", $0.rawValue)], Double(a.records[$0] ?? 0)) }
                + (a.socketTelemetry
                    ? [
                        ([("source", "events_ring")], Double(a.socketEvents)),
                        ([("source", "socket_updates")], Double(a.socketUpdates)),
                    ] : []))
        if a.socketTelemetry {
            let tcp = a.connections.reduce(0) { $0 + ($1.ipProtocol == 6 ? 1 : 0) }
            add(
                MetricCatalog.socketsTracked,
                [
                    ([("transport", "tcp")], Double(tcp)),
                    ([("transport", "udp")], Double(a.connections.count - tcp)),
                ])
        }
        add(MetricCatalog.hookInfo, a.hooks.map { ([("hook", $0.hook), ("mode", $0.mode)], 1) })
        add(MetricCatalog.seriesDropped, [([], Double(a.services?.seriesDropped ?? 0))])
        add(
            MetricCatalog.metadataLookups,
            a.metadataLookups.map { ([("source", $0.source), ("outcome", $0.outcome.rawValue)], Double($0.count)) })
        add(
            MetricCatalog.endpointInfo,
            a.endpoints.map {
                (
                    [
                        ("address", $0.address), ("service", $0.service), ("namespace", $0.namespace),
                        ("workload", $0.workload), ("pod", $0.pod), ("node", $0.node),
                    ], 1
                )
            })
        add(MetricCatalog.malformed, [([], Double(a.kernel.malformedPackets))])
        add(MetricCatalog.buildInfo, [([("version", version)], 1)])
        let exporters = a.exports.keys.sorted()
        add(
            MetricCatalog.exportRecords,
            exporters.flatMap { name -> Samples in
                let x = a.exports[name]!
                return [("queued", x.queued), ("sent", x.sent), ("failed", x.failed), ("dropped", x.dropped)]
                    .map { ([("exporter", name), ("outcome", $0.0)], Double($0.1)) }
            })
        add(
            MetricCatalog.exportRejectedPoints,
            exporters.compactMap { n in a.exports[n]!.rejectedPoints.map { ([("exporter", n)], Double($0)) } })
        add(MetricCatalog.exportQueue, exporters.map { ([("exporter", $0)], Double(a.exports[$0]!.queueLength)) })
        add(MetricCatalog.exportLastSuccess, exporters.map { ([("exporter", $0)], a.exports[$0]!.lastSuccessUnixSeconds) })
        if a.dnsCounted {
            let l = a.dnsLost
            add(
                MetricCatalog.dnsLost,
                [("ring", l.ring), ("pending_full", l.pendingFull), ("evicted", l.evicted), ("unmatched", l.unmatched)]
                    .map { ([("reason", $0.0)], Double($0.1)) })
            add(MetricCatalog.dnsNamesEvicted, [([], Double(a.services?.dnsNames.evicted ?? 0))])
        }
        if let agg = a.services { out += services(agg, drops: a.dropsCounted, dns: a.dnsCounted) }
        return out
    }

    static func services(_ agg: ServiceAggregator, drops: Bool = false, dns: Bool = false) -> [MetricFamilyData] {
        var out: [MetricFamilyData] = []
        func add(_ f: Exposition.Family, _ samples: Samples) { out.append(numbers(f, samples)) }
        let sorted: [(key: ServicePair, value: PairStats)] = agg.pairs.sorted { $0.key < $1.key }
        let pairs: [(ServicePair, PairStats)] = sorted.map { ($0.key, agg.exposed($0.key, $0.value)) }
        let tcp = pairs.filter { $0.0.transport == "tcp" }
        func base(_ p: ServicePair) -> [(String, String)] {
            [("service", p.service), ("peer_service", p.peer), ("transport", p.transport)]
        }
        let directions: [Direction] = [.transmit, .receive]
        let roles: [(String, Int)] = [("client", 0), ("server", 1)]
        add(
            MetricCatalog.networkBytes,
            pairs.flatMap { p, s in
                directions.map { (base(p) + [("direction", $0.label)], Double(s.bytes[Int($0.rawValue)])) }
            })
        add(
            MetricCatalog.networkPackets,
            pairs.flatMap { p, s in
                directions.map { (base(p) + [("direction", $0.label)], Double(s.packets[Int($0.rawValue)])) }
            })
        if drops {
            add(
                MetricCatalog.packetDrops,
                pairs.flatMap { p, s in
                    s.drops.sorted { $0.key < $1.key }.map { (base(p) + [("reason", $0.key)], Double($0.value)) }
                })
        }
        add(
            MetricCatalog.tcpOpened,
            tcp.flatMap { p, s in
                roles.map { (base(p) + [("role", $0.0)], Double(s.opened[$0.1])) }
            })
        add(
            MetricCatalog.tcpFailed,
            tcp.flatMap { p, s in
                s.failed.sorted { $0.key < $1.key }.map { (base(p) + [("reason", $0.key)], Double($0.value)) }
            })
        add(
            MetricCatalog.tcpActive,
            tcp.flatMap { p, s in
                roles.map { (base(p) + [("role", $0.0)], Double(s.active[$0.1])) }
            })
        add(MetricCatalog.tcpRetransmits, tcp.map { p, s in (base(p), Double(s.retransmits)) })
        add(
            MetricCatalog.tcpResets,
            tcp.flatMap { p, s in
                directions.map { (base(p) + [("direction", $0.label)], Double(s.resets[Int($0.rawValue)])) }
            })
        let rtt = MetricCatalog.tcpRTT
        out.append(
            MetricFamilyData(
                name: rtt.name, kind: rtt.kind, help: rtt.help,
                series: tcp.map { p, s in
                    .init(
                        labels: base(p),
                        value: .histogram(.init(bounds: s.rtt.bounds, counts: s.rtt.counts, sum: s.rtt.sum, count: s.rtt.count)))
                }))
        if dns {
            // The label sets from the counts, the values as exposed (zero until a scrape saw the pair).
            let asked = sorted.filter { !$0.value.dns.requests.isEmpty }.map { ($0.key, agg.exposed($0.key, $0.value), $0.value) }
            add(
                MetricCatalog.dnsRequests,
                asked.flatMap { p, shown, raw in
                    raw.dns.requests.keys.sorted().map {
                        (base(p) + [("qtype", $0.qtype), ("rcode", $0.rcode)], Double(shown.dns.requests[$0] ?? 0))
                    }
                })
            let lat = MetricCatalog.dnsLatency
            out.append(
                MetricFamilyData(
                    name: lat.name, kind: lat.kind, help: lat.help,
                    series: asked.map { p, s, _ in
                        let h = s.dns.latency
                        return .init(
                            labels: base(p), value: .histogram(.init(bounds: h.bounds, counts: h.counts, sum: h.sum, count: h.count)))
                    }))
        }
        return out
    }
}
