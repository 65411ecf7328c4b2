import FlowmeterCore
import Synchronization

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

    /// The exposition so far, as UTF-8 bytes: written straight into one
    /// buffer (`ExpositionBytes`), because building a String per sample and
    /// per label made a scrape of 10,000 series cost 27 ms
    /// (`flowmeter-bench scrape`, docs/benchmarks.md).
    public var bytes: [UInt8] { out.bytes }
    private var out = ExpositionBytes()
    /// The text so far.
    public var text: String { String(decoding: out.bytes, as: UTF8.self) }
    /// OpenMetrics 1.0 instead of the 0.0.4 text format: counter families are
    /// named without "_total" in HELP and TYPE, and the text ends with "# EOF".
    public let openMetrics: Bool

    public static let textContentType = "text/plain; version=0.0.4; charset=utf-8"
    public static let openMetricsContentType = "application/openmetrics-text; version=1.0.0; charset=utf-8"

    public init(openMetrics: Bool = false, reservingCapacity bytes: Int = 0) {
        self.openMetrics = openMetrics
        out.bytes.reserveCapacity(bytes)
    }

    private mutating func header(_ f: Family) {
        let name = openMetrics && f.kind == .counter && f.name.hasSuffix("_total") ? String(f.name.dropLast(6)) : f.name
        // Written as bytes: escaping the help through Foundation's
        // replacingOccurrences was 4% of a scrape of 10,000 series (perf).
        out.append("# HELP ")
        out.append(name)
        out.space()
        out.escaped(f.help, quotes: false)
        out.append("\n# TYPE ")
        out.append(name)
        out.space()
        out.append(f.kind.rawValue)
        out.newline()
    }

    /// One family with its series: counters and gauges as one sample per
    /// series; a histogram as, per series, the cumulative "le" buckets,
    /// +Inf, sum and count.
    public mutating func family(_ f: MetricFamilyData) {
        header(Family(name: f.name, kind: f.kind, help: f.help))
        // The bounds' text, made once per family unless a series has other bounds.
        var boundsText: (bounds: [Double], text: [String]) = ([], [])
        for s in f.series {
            switch s.value {
            case .number(let v):
                out.append(f.name)
                out.labels(s)
                out.space()
                out.value(v)
                out.newline()
            case .histogram(let h):
                if h.bounds != boundsText.bounds { boundsText = (h.bounds, h.bounds.map(Self.format)) }
                var running: UInt64 = 0
                for (i, bound) in boundsText.text.enumerated() {
                    running += h.counts[i]
                    out.append(f.name)
                    out.append("_bucket")
                    out.labels(s, le: bound)
                    out.space()
                    out.integer(running)
                    out.newline()
                }
                out.append(f.name)
                out.append("_bucket")
                out.labels(s, le: "+Inf")
                out.space()
                out.integer(h.count)
                out.newline()
                out.append(f.name)
                out.append("_sum")
                out.labels(s)
                out.space()
                out.value(h.sum)
                out.newline()
                out.append(f.name)
                out.append("_count")
                out.labels(s)
                out.space()
                out.integer(h.count)
                out.newline()
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
        String(decoding: renderBytes(families, openMetrics: openMetrics), as: UTF8.self)
    }

    /// The same as UTF-8 bytes (what is served).
    /// `reusing`: a buffer to write into (emptied first), whose memory is
    /// used again if nothing else holds it (hence consumed: a copy held by
    /// the caller during the call would make it shared).
    public static func renderBytes(
        _ families: [MetricFamilyData], openMetrics: Bool, reusing buffer: consuming [UInt8] = []
    ) -> [UInt8] {
        // About 110 bytes a sample (a service pair's sample is 100-130): one allocation for most scrapes.
        let samples = families.reduce(0) { n, f in
            n + f.series.reduce(0) { if case .histogram(let h) = $1.value { $0 + h.bounds.count + 3 } else { $0 + 1 } }
        }
        var e = Exposition(openMetrics: openMetrics)
        e.out.bytes = consume buffer
        e.out.bytes.removeAll(keepingCapacity: true)
        e.out.bytes.reserveCapacity(16_384 + samples * 128)
        for f in families { e.family(f) }
        if openMetrics { e.out.append("# EOF\n") }
        return e.out.bytes
    }

    /// The exposition as served: OpenMetrics ends with "# EOF".
    public var body: String { openMetrics ? text + "# EOF\n" : text }

    static func escapeLabel(_ v: String) -> String {
        var o = ExpositionBytes()
        o.escaped(v)
        return String(decoding: o.bytes, as: UTF8.self)
    }

    /// A sample value as Prometheus's own client libraries print it:
    /// integers (below 1e15) without a fraction, other finite values in
    /// Swift's shortest round-tripping form.
    static func format(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return String(v)
    }
}

/// The exposition's bytes, appended to one buffer. Integers (what nearly
/// every sample is) are written digit by digit into it; other values go
/// through `Exposition.format`, which stays the one definition of the
/// number format (the integer path writes what it would).
struct ExpositionBytes {
    var bytes: [UInt8] = []

    @inline(__always) mutating func append(_ s: String) {
        var s = s
        s.withUTF8 { bytes.append(contentsOf: $0) }
    }

    @inline(__always) mutating func byte(_ b: UInt8) { bytes.append(b) }
    @inline(__always) mutating func space() { bytes.append(0x20) }
    @inline(__always) mutating func newline() { bytes.append(0x0A) }

    /// `{k="v",...}` (nothing for no labels), values escaped, `le` last if given.
    mutating func labels(_ labels: [(String, String)], le: String? = nil) {
        if labels.isEmpty && le == nil { return }
        byte(UInt8(ascii: "{"))
        labelList(labels)
        if let le {
            if !labels.isEmpty { byte(UInt8(ascii: ",")) }
            pair("le", le)
        }
        byte(UInt8(ascii: "}"))
    }

    /// A series' labels as `labels(_:le:)` writes them: a service pair's
    /// from their text made once (`SharedLabels`), then its one extra label.
    @inline(__always) mutating func labels(_ s: MetricFamilyData.Series, le: String? = nil) {
        guard let shared = s.shared else { return labels(s.labels, le: le) }
        if shared.labels.isEmpty { return labels(s.labels, le: le) }
        byte(UInt8(ascii: "{"))
        bytes.append(contentsOf: shared.text)
        if let extra = s.extra {
            byte(UInt8(ascii: ","))
            pair(extra.0, extra.1)
        }
        if let le {
            byte(UInt8(ascii: ","))
            pair("le", le)
        }
        byte(UInt8(ascii: "}"))
    }

    /// `k="v",...` without braces.
    mutating func labelList(_ labels: [(String, String)]) {
        var first = true
        for (k, v) in labels {
            if !first { byte(UInt8(ascii: ",")) }
            first = false
            pair(k, v)
        }
    }

    @inline(__always) private mutating func pair(_ k: String, _ v: String) {
        append(k)
        byte(UInt8(ascii: "="))
        byte(UInt8(ascii: "\""))
        escaped(v)
        byte(UInt8(ascii: "\""))
    }

    /// A label value with backslash, double quote and newline escaped (a
    /// help text without `quotes`: backslash and newline). UTF-8 bytes of
    /// other characters never equal those three, so escaping bytes is
    /// escaping characters.
    mutating func escaped(_ v: String, quotes: Bool = true) {
        var v = v
        v.withUTF8 { u in
            var from = 0
            for i in 0..<u.count {
                let c = u[i]
                guard c == 0x5C || (quotes && c == 0x22) || c == 0x0A else { continue }
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: u[from..<i]))
                bytes.append(0x5C)
                bytes.append(c == 0x0A ? UInt8(ascii: "n") : c)
                from = i + 1
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: u[from...]))
        }
    }

    /// A sample value, as `Exposition.format` writes it.
    @inline(__always) mutating func value(_ v: Double) {
        if v == v.rounded(), abs(v) < 1e15 {
            // Exactly String(Int64(v)) (-0.0 included: "0").
            let i = Int64(v)
            if i < 0 { byte(UInt8(ascii: "-")) }
            integer(i.magnitude)
        } else {
            append(Exposition.format(v))
        }
    }

    /// Decimal digits of `v`, as String(v) writes them.
    @inline(__always) mutating func integer(_ v: UInt64) {
        if v < 10 {
            bytes.append(0x30 &+ UInt8(truncatingIfNeeded: v))
            return
        }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for UInt64.max's 20 digits
        withUnsafeMutableBytes(of: &digits) { d in
            var n = v, i = d.count
            repeat {
                i -= 1
                d[i] = 0x30 &+ UInt8(truncatingIfNeeded: n % 10)
                n /= 10
            } while n > 0
            bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: d[i...]))
        }
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
    /// `cache` keeps the service pairs' labels between scrapes (flowmeterd
    /// passes one); without, they are made anew: the same text either way.
    public static func render(_ a: Accounting, version: String, openMetrics: Bool = false, cache: MetricsCache? = nil)
        -> String
    {
        Exposition.render(families(a, version: version, cache: cache), openMetrics: openMetrics)
    }

    /// The same as UTF-8 bytes, what /metrics sends (no String in between).
    public static func renderBytes(
        _ a: Accounting, version: String, openMetrics: Bool = false, cache: MetricsCache? = nil
    ) -> [UInt8] {
        let families = families(a, version: version, cache: cache)
        guard let cache else { return Exposition.renderBytes(families, openMetrics: openMetrics) }
        // The last scrape's buffer, written over: a fresh one of a megabyte
        // or more is mapped and page-faulted in anew at every scrape.
        let bytes = Exposition.renderBytes(families, openMetrics: openMetrics, reusing: cache.takeBuffer())
        cache.keepBuffer(bytes)
        return bytes
    }

    typealias Samples = [(labels: [(String, String)], value: Double)]

    static func numbers(_ f: Exposition.Family, _ samples: Samples) -> MetricFamilyData {
        MetricFamilyData(
            name: f.name, kind: f.kind, help: f.help,
            series: samples.map { .init(labels: $0.labels, value: .number($0.value)) })
    }

    /// Every family, in exposition order.
    public static func families(_ a: Accounting, version: String, cache: MetricsCache? = nil) -> [MetricFamilyData] {
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
        if let agg = a.services { out += services(agg, drops: a.dropsCounted, dns: a.dnsCounted, cache: cache) }
        return out
    }

    /// A service pair's labels, in exposition order.
    static func pairLabels(_ p: ServicePair) -> [(String, String)] {
        [("service", p.service), ("peer_service", p.peer), ("transport", p.transport)]
    }

    static func services(
        _ agg: ServiceAggregator, drops: Bool = false, dns: Bool = false, cache: MetricsCache? = nil
    ) -> [MetricFamilyData] {
        // Most series of a large scrape are here (four or more per pair).
        // The pairs are sorted as positions in the aggregator's dictionary
        // and their counts read in place there: sorting (pair, PairStats)
        // tuples copied every PairStats, retaining and releasing every array
        // and dictionary in it, at each move of the sort (a tenth of a scrape
        // of 10,000 series in `perf`, docs/benchmarks.md).
        var out: [MetricFamilyData] = []
        let stored = agg.pairs
        let positions = Array(stored.indices)
        let unsortedKeys = Array(stored.keys)
        let order = unsortedKeys.indices.sorted { unsortedKeys[$0] < unsortedKeys[$1] }
        let at = order.map { positions[$0] }
        let keys = order.map { unsortedKeys[$0] }
        // As exposed (zero until a scrape saw the pair): made only for the few new pairs.
        var fresh: [Int: PairStats] = [:]
        if !agg.unexposed.isEmpty {
            for i in keys.indices where agg.unexposed.contains(keys[i]) { fresh[i] = agg.exposed(keys[i], stored.values[at[i]]) }
        }
        /// What pair `i` (in exposition order) shows, read in place.
        func shown<T>(_ i: Int, _ read: (PairStats) -> T) -> T {
            if !fresh.isEmpty, let s = fresh[i] { return read(s) }
            return read(stored.values[at[i]])
        }
        let tcp = keys.indices.filter { keys[$0].transport == "tcp" }
        // Each pair's labels: one shared object per pair, kept between
        // scrapes by the cache (a pair is its labels, so a kept one is never
        // stale), so a series costs no label array and no escaping.
        let shared = cache?.labels(for: keys) ?? keys.map { SharedLabels(pairLabels($0)) }
        func family(_ f: Exposition.Family, capacity: Int, _ fill: (inout [MetricFamilyData.Series]) -> Void) {
            var series: [MetricFamilyData.Series] = []
            series.reserveCapacity(capacity)
            fill(&series)
            out.append(MetricFamilyData(name: f.name, kind: f.kind, help: f.help, series: series))
        }
        func number(_ i: Int, _ extra: (String, String)? = nil, _ v: some BinaryInteger) -> MetricFamilyData.Series {
            .init(shared: shared[i], extra: extra, value: .number(Double(v)))
        }
        func histogram(_ i: Int, _ h: Histogram) -> MetricFamilyData.Series {
            .init(shared: shared[i], value: .histogram(.init(bounds: h.bounds, counts: h.counts, sum: h.sum, count: h.count)))
        }
        let directions: [Direction] = [.transmit, .receive]
        let roles: [(String, Int)] = [("client", 0), ("server", 1)]
        family(MetricCatalog.networkBytes, capacity: 2 * keys.count) { out in
            for i in keys.indices {
                for d in directions { out.append(number(i, ("direction", d.label), shown(i) { $0.bytes[Int(d.rawValue)] })) }
            }
        }
        family(MetricCatalog.networkPackets, capacity: 2 * keys.count) { out in
            for i in keys.indices {
                for d in directions { out.append(number(i, ("direction", d.label), shown(i) { $0.packets[Int(d.rawValue)] })) }
            }
        }
        if drops {
            family(MetricCatalog.packetDrops, capacity: 0) { out in
                for i in keys.indices {
                    for (reason, n) in shown(i, { $0.drops }).sorted(by: { $0.key < $1.key }) {
                        out.append(number(i, ("reason", reason), n))
                    }
                }
            }
        }
        family(MetricCatalog.tcpOpened, capacity: 2 * tcp.count) { out in
            for t in tcp {
                for (role, r) in roles { out.append(number(t, ("role", role), shown(t) { $0.opened[r] })) }
            }
        }
        family(MetricCatalog.tcpFailed, capacity: 0) { out in
            for t in tcp {
                for (reason, n) in shown(t, { $0.failed }).sorted(by: { $0.key < $1.key }) { out.append(number(t, ("reason", reason), n)) }
            }
        }
        family(MetricCatalog.tcpActive, capacity: 2 * tcp.count) { out in
            for t in tcp {
                for (role, r) in roles { out.append(number(t, ("role", role), shown(t) { $0.active[r] })) }
            }
        }
        family(MetricCatalog.tcpRetransmits, capacity: tcp.count) { out in
            for t in tcp { out.append(number(t, nil, shown(t) { $0.retransmits })) }
        }
        family(MetricCatalog.tcpResets, capacity: 2 * tcp.count) { out in
            for t in tcp {
                for d in directions { out.append(number(t, ("direction", d.label), shown(t) { $0.resets[Int(d.rawValue)] })) }
            }
        }
        family(MetricCatalog.tcpRTT, capacity: tcp.count) { out in
            for t in tcp { out.append(histogram(t, shown(t) { $0.rtt })) }
        }
        if dns {
            // The label sets from the counts, the values as exposed (zero until a scrape saw the pair).
            let asked = keys.indices.filter { !stored.values[at[$0]].dns.requests.isEmpty }
            family(MetricCatalog.dnsRequests, capacity: 0) { out in
                for i in asked {
                    let counts = shown(i) { $0.dns.requests }
                    for k in stored.values[at[i]].dns.requests.keys.sorted() {
                        // Two labels after the pair's: a label array of its own (few series).
                        out.append(
                            .init(
                                labels: shared[i].labels + [("qtype", k.qtype), ("rcode", k.rcode)],
                                value: .number(Double(counts[k] ?? 0))))
                    }
                }
            }
            family(MetricCatalog.dnsLatency, capacity: asked.count) { out in
                for i in asked { out.append(histogram(i, shown(i) { $0.dns.latency })) }
            }
        }
        return out
    }
}

/// What flowmeterd keeps from one /metrics scrape for the next, so that
/// neither the output nor its cost depends on anything else:
///  - service pairs' labels: flowmeterd renders /metrics every scrape from
///    the aggregator's pairs, which live for minutes to hours, and making
///    each pair's labels and their escaped text anew was a large part of a
///    scrape of 10,000 series (`flowmeter-bench scrape`, docs/benchmarks.md).
///    A pair's labels are a function of the pair alone, so an entry is never
///    stale; entries of pairs that are gone (expired) are dropped at the next
///    scrape that sees fewer pairs than entries.
///  - the output buffer: written over by the next scrape once the HTTP
///    server has copied it out (if a concurrent scrape still holds it, that
///    one writes a copy: copy-on-write).
public final class MetricsCache: Sendable {
    private let entries = Mutex<[ServicePair: SharedLabels]>([:])
    private let buffer = Mutex<[UInt8]>([])

    func takeBuffer() -> [UInt8] {
        buffer.withLock { b in
            defer { b = [] }; return b
        }
    }
    func keepBuffer(_ bytes: [UInt8]) { buffer.withLock { $0 = bytes } }

    public init() {}

    /// Pairs with labels kept (for tests).
    public var count: Int { entries.withLock { $0.count } }

    /// The labels of `pairs` (every pair there is now), in their order,
    /// made for the pairs not kept yet; entries of other pairs are let go.
    func labels(for pairs: [ServicePair]) -> [SharedLabels] {
        entries.withLock { kept in
            let out = pairs.map { p in
                if let l = kept[p] { return l }
                let l = SharedLabels(MetricsRenderer.pairLabels(p))
                kept[p] = l
                return l
            }
            if kept.count > pairs.count {
                let current = Set(pairs)
                kept = kept.filter { current.contains($0.key) }
            }
            return out
        }
    }
}
