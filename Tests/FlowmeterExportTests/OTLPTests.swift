import FlowmeterCore
import FlowmeterExport
import FlowmeterOTLPProto
import SwiftProtobuf
import Testing

/// An ExportMetricsServiceRequest as the tests read it: decoded with the
/// generated types (a round trip through the wire form), proto3 defaults as nil.
struct DecodedRequest {
    struct Point {
        var attributes: [[String]]
        var start: UInt64?
        var time: UInt64?
        /// NumberDataPoint.as_double
        var value: Double?
        /// HistogramDataPoint fields
        var count: UInt64?
        var sum: Double?
        var bucketCounts: [UInt64] = []
        var bounds: [Double] = []
    }

    struct Metric {
        var name: String
        var description: String?
        var unit: String?
        /// "sum", "gauge" or "histogram"
        var kind: String
        var temporality: UInt64?
        var monotonic: UInt64?
        var points: [Point]
    }

    struct DecodeError: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    var resource: [[String]]
    var scopeName: String?
    var scopeVersion: String?
    var metrics: [Metric]

    func metric(_ name: String) throws -> Metric {
        try #require(metrics.first { $0.name == name }, "no metric \(name)")
    }

    static func nonEmpty(_ s: String) -> String? { s.isEmpty ? nil : s }
    static func nonZero(_ v: UInt64) -> UInt64? { v == 0 ? nil : v }

    /// Every attribute value is a string.
    static func attributes(_ kvs: [Opentelemetry_Proto_Common_V1_KeyValue]) throws -> [[String]] {
        try kvs.map { kv in
            guard case .stringValue(let v) = kv.value.value else { throw DecodeError("attribute \(kv.key): \(kv.value)") }
            return [kv.key, v]
        }
    }

    /// Fails on fields the generated types do not know (unknown fields).
    static func known(_ m: some SwiftProtobuf.Message, _ what: String) throws {
        guard m.unknownFields.data.isEmpty else { throw DecodeError("\(what) has unknown fields") }
    }

    init(_ bytes: [UInt8]) throws {
        let req = try OTLPExportRequest(serializedBytes: bytes)
        try Self.known(req, "ExportMetricsServiceRequest")
        guard req.resourceMetrics.count == 1 else { throw DecodeError("\(req.resourceMetrics.count) ResourceMetrics") }
        let rm = req.resourceMetrics[0]
        guard rm.hasResource else { throw DecodeError("no Resource") }
        resource = try Self.attributes(rm.resource.attributes)
        guard rm.scopeMetrics.count == 1 else { throw DecodeError("\(rm.scopeMetrics.count) ScopeMetrics") }
        let sm = rm.scopeMetrics[0]
        guard sm.hasScope else { throw DecodeError("no InstrumentationScope") }
        scopeName = Self.nonEmpty(sm.scope.name)
        scopeVersion = Self.nonEmpty(sm.scope.version)
        metrics = try sm.metrics.map { m in
            try Self.known(m, "Metric \(m.name)")
            var out = Metric(
                name: m.name, description: Self.nonEmpty(m.description_p), unit: Self.nonEmpty(m.unit), kind: "", points: [])
            func number(_ p: Opentelemetry_Proto_Metrics_V1_NumberDataPoint) throws -> Point {
                guard case .asDouble(let v) = p.value else { throw DecodeError("\(m.name): a point without as_double") }
                return Point(
                    attributes: try Self.attributes(p.attributes), start: Self.nonZero(p.startTimeUnixNano),
                    time: Self.nonZero(p.timeUnixNano), value: v)
            }
            switch m.data {
            case .gauge(let g):
                out.kind = "gauge"
                out.points = try g.dataPoints.map(number)
            case .sum(let s):
                out.kind = "sum"
                out.temporality = Self.nonZero(UInt64(s.aggregationTemporality.rawValue))
                out.monotonic = s.isMonotonic ? 1 : nil
                out.points = try s.dataPoints.map(number)
            case .histogram(let h):
                out.kind = "histogram"
                out.temporality = Self.nonZero(UInt64(h.aggregationTemporality.rawValue))
                out.points = try h.dataPoints.map { p in
                    guard p.hasSum else { throw DecodeError("\(m.name): a histogram point without sum") }
                    return Point(
                        attributes: try Self.attributes(p.attributes), start: Self.nonZero(p.startTimeUnixNano),
                        time: Self.nonZero(p.timeUnixNano), count: Self.nonZero(p.count), sum: p.sum,
                        bucketCounts: p.bucketCounts, bounds: p.explicitBounds)
                }
            default:
                throw DecodeError("\(m.name): data \(String(describing: m.data))")
            }
            return out
        }
    }
}

@Suite struct OTLPTests {
    static let start: UInt64 = 1_796_000_000_123_456_789
    static let now: UInt64 = 1_796_000_060_987_654_321
    static let resource = [("service.name", "flowmeterd"), ("host.name", "node-1"), ("k8s.node.name", "")]
    static let version = "1.2.3"
    static let oddMode = "cgroup \"/\"\\x\nend"

    static let client = IPAddress16.v4(10, 0, 0, 1), server = IPAddress16.v4(10, 0, 0, 2)

    /// A record of the client end (10.0.0.1:40000, process "checkout") of a
    /// connection to postgres (10.0.0.2:5432).
    static func ev(
        _ kind: SocketEvent.Kind, id: UInt64, ts: UInt64, sent: UInt64 = 0, received: UInt64 = 0,
        srtt: UInt32 = 0, retrans: UInt32 = 0, reason: SocketEvent.FailReason = .none
    ) -> SocketEvent {
        SocketEvent(
            kind: kind, role: .client, family: .ipv4, ipProtocol: 6, reason: reason, socketID: id,
            timestampNanos: ts, startNanos: 1, owner: SocketOwner(tgid: 1, pid: 1, name: "checkout", cgroupID: 0),
            localAddress: client, remoteAddress: server, localPort: 40000, remotePort: 5432,
            srttMicros: srtt, bytesSent: sent, bytesReceived: received, retransmits: retrans,
            resetsSent: 0, resetsReceived: 0, error: 0)
    }

    static func flow(_ d: Direction, packets: UInt64, bytes: UInt64) -> FlowRecord {
        FlowRecord(
            key: FlowKey(
                source: .zero, destination: .zero, ifindex: 2, sourcePort: 0, destinationPort: 0,
                direction: d, family: .ipv4, ipProtocol: 1, flags: []),
            stats: FlowStats(packets: packets, bytes: bytes, firstSeenNanos: 0, lastSeenNanos: 0, tcpFlags: 0),
            source: .flowMap)
    }

    /// Interface totals, hooks, and one TCP pair checkout -> postgres with
    /// bytes, retransmits, two RTT samples (250 µs, 3 ms) and a refused connect.
    static func snapshot() -> Accounting {
        var a = Accounting()
        a.add([flow(.transmit, packets: 4, bytes: 4000), flow(.receive, packets: 3, bytes: 1_234_567)], names: [2: "eth0"])
        a.hooks = [HookMode(hook: "tc", mode: "tcx"), HookMode(hook: "sockops", mode: oddMode)]
        a.kernel.flowsRingLost = 7
        a.setFlowTableEntries(12)
        a.socketTelemetry = true
        a.addSocketEvents(5)
        var udp = ev(.open, id: 13, ts: 1)
        udp.ipProtocol = 17
        a.connections = [ev(.open, id: 11, ts: 1), ev(.open, id: 12, ts: 1), udp]
        let resolver = ServiceResolver(
            rules: [ServiceRule(service: "postgres", ports: try! PortRange(parsing: "5432"))],
            peers: [PeerRule(service: "postgres", ports: try! PortRange(parsing: "5432"))])
        var agg = ServiceAggregator(resolver: resolver, limits: .defaults)
        agg.apply(
            [
                ev(.failed, id: 3, ts: 5, reason: .refused),
                ev(.open, id: 1, ts: 10),
                ev(.update, id: 1, ts: 20, sent: 100, received: 7, srtt: 250),
                ev(.close, id: 1, ts: 40, sent: 400, received: 9, srtt: 3000, retrans: 2),
            ], cgroupPath: { _ in nil })
        agg.markExposed(Set(agg.pairs.keys))
        a.services = agg
        return a
    }

    static func decoded(_ a: Accounting = snapshot()) throws -> DecodedRequest {
        try DecodedRequest(
            OTLPEncoder.request(
                a, resource: resource, scopeVersion: version,
                startUnixNanos: start, nowUnixNanos: now))
    }

    static let pairLabels = [["service", "checkout"], ["peer_service", "postgres"], ["transport", "tcp"]]

    /// Families with at least one sample, in exposition order.
    static func familiesWithSamples(_ text: String) -> [String] {
        let lines = text.split(separator: "\n").map(String.init)
        return lines.compactMap { l -> String? in
            guard l.hasPrefix("# TYPE ") else { return nil }
            let name = String(l.split(separator: " ")[2])
            return lines.contains {
                !$0.hasPrefix("#")
                    && ($0.hasPrefix(name + "{") || $0.hasPrefix(name + " ")
                        || $0.hasPrefix(name + "_bucket{"))
            } ? name : nil
        }
    }

    /// Drops reach OTLP through the same families as /metrics: one metric
    /// each, labelled with the kernel's reason.
    @Test func dropsAreMetricsInBoth() throws {
        var a = Self.snapshot()
        a.dropsCounted = true
        var agg = a.services!
        agg.apply([Self.ev(.open, id: 9, ts: 50)], cgroupPath: { _ in nil })
        a.services = agg
        let key = FlowKey(
            source: Self.client, destination: Self.server, ifindex: 2, sourcePort: 40000, destinationPort: 5432,
            direction: .transmit, family: .ipv4, ipProtocol: 6, flags: [])
        a.count(
            drops: [DropSample(key: DropKey(flow: key, netns: 5, reason: 64), reason: "QDISC_DROP", packets: 6)],
            names: [2: "eth0"], ownNetns: 5, now: 60)
        let seen = Set(a.services!.pairs.keys)
        a.services?.markExposed(seen)
        let text = MetricsRenderer.render(a, version: Self.version)
        #expect(text.contains("flowmeter_interface_drops_total{interface=\"eth0\",direction=\"transmit\",reason=\"QDISC_DROP\"} 6\n"))
        #expect(
            text.contains(
                "flowmeter_packet_drops_total{service=\"checkout\",peer_service=\"postgres\",transport=\"tcp\",reason=\"QDISC_DROP\"} 6\n"))
        let r = try Self.decoded(a)
        let iface = try r.metric("flowmeter.interface.drops")
        #expect(iface.kind == "sum" && iface.monotonic == 1 && iface.unit == "1")
        #expect(iface.points.map(\.attributes) == [[["interface", "eth0"], ["direction", "transmit"], ["reason", "QDISC_DROP"]]])
        #expect(iface.points.map(\.value) == [6])
        let pair = try r.metric("flowmeter.packet.drops")
        #expect(pair.points.map(\.attributes) == [Self.pairLabels + [["reason", "QDISC_DROP"]]])
        #expect(pair.points.map(\.value) == [6])
        // Without the hook, neither family exists.
        #expect(!MetricsRenderer.render(Self.snapshot(), version: Self.version).contains("drops_total"))
    }

    @Test func resourceAndScope() throws {
        let r = try Self.decoded()
        #expect(r.resource == [["service.name", "flowmeterd"], ["host.name", "node-1"], ["k8s.node.name", ""]])
        #expect(r.scopeName == "flowmeterd")
        #expect(r.scopeVersion == "1.2.3")
    }

    @Test func everyFamilyOfTheExpositionIsOneMetric() throws {
        let text = MetricsRenderer.render(Self.snapshot(), version: Self.version)
        let present = Self.familiesWithSamples(text)
        // The fixture fills every family of these.
        typealias C = MetricCatalog
        let filled = [
            C.interfaceBytes, C.interfacePackets, C.ringLost, C.flowTableEntries, C.insertFailures,
            C.records, C.socketsTracked, C.hookInfo, C.seriesDropped, C.buildInfo, C.malformed, C.networkBytes,
            C.networkPackets, C.tcpOpened, C.tcpFailed, C.tcpActive, C.tcpRetransmits, C.tcpResets, C.tcpRTT,
        ].map(\.name)
        #expect(Set(filled).isSubset(of: present))
        #expect(Set(present).isSubset(of: MetricCatalog.all.map(\.name)))
        let r = try Self.decoded()
        #expect(r.metrics.map(\.name) == present.map(OTLPEncoder.otlpName))
        for f in MetricCatalog.all {
            guard present.contains(f.name) else {
                #expect(!r.metrics.contains { $0.name == OTLPEncoder.otlpName(f.name) }, "\(f.name)")
                continue
            }
            let m = try r.metric(OTLPEncoder.otlpName(f.name))
            #expect(m.description == f.help, "\(f.name)")
            #expect(m.unit == OTLPEncoder.otlpUnit(f.name), "\(f.name)")
            #expect(m.kind == ["counter": "sum", "gauge": "gauge", "histogram": "histogram"][f.kind.rawValue], "\(f.name)")
            #expect(!m.points.isEmpty, "\(f.name)")
            for p in m.points {
                #expect(p.start == Self.start && p.time == Self.now, "\(f.name)")
            }
        }
    }

    @Test func familiesWithoutSamplesAreNoMetric() throws {
        let text = MetricsRenderer.render(Accounting(), version: Self.version)
        // No interfaces, hooks or services: their families have a header and no sample.
        #expect(text.contains("# TYPE flowmeter_interface_io_bytes_total counter\n"))
        #expect(text.contains("# TYPE flowmeter_hook_info gauge\n"))
        let r = try Self.decoded(Accounting())
        let names = r.metrics.map(\.name)
        for absent in [
            "flowmeter.interface.io.bytes", "flowmeter.interface.packets", "flowmeter.hook.info",
            "flowmeter.sockets.tracked", "flowmeter.network.io.bytes", "flowmeter.tcp.rtt.seconds",
        ] {
            #expect(!names.contains(absent), "\(absent)")
        }
        for present in [
            "flowmeter.ringbuf.lost.records", "flowmeter.flow.table.entries", "flowmeter.records",
            "flowmeter.series.dropped", "flowmeter.build.info",
        ] {
            #expect(names.contains(present), "\(present)")
        }
        #expect(r.metrics.map(\.name) == Self.familiesWithSamples(text).map(OTLPEncoder.otlpName))
    }

    @Test func counterIsACumulativeMonotonicSum() throws {
        let text = MetricsRenderer.render(Self.snapshot(), version: Self.version)
        #expect(
            text.contains(
                "flowmeter_network_io_bytes_total{service=\"checkout\",peer_service=\"postgres\",transport=\"tcp\",direction=\"transmit\"} 400\n"
            ))
        #expect(
            text.contains(
                "flowmeter_network_io_bytes_total{service=\"checkout\",peer_service=\"postgres\",transport=\"tcp\",direction=\"receive\"} 9\n"
            ))
        let m = try Self.decoded().metric("flowmeter.network.io.bytes")
        #expect(m.kind == "sum" && m.temporality == 2 && m.monotonic == 1)
        #expect(m.unit == "By")
        #expect(m.description == MetricCatalog.networkBytes.help)
        #expect(m.points.count == 2)
        #expect(
            m.points.map(\.attributes) == [
                Self.pairLabels + [["direction", "transmit"]],
                Self.pairLabels + [["direction", "receive"]],
            ])
        #expect(m.points.map(\.value) == [400, 9])
        #expect(m.points.allSatisfy { $0.start == Self.start && $0.time == Self.now && $0.count == nil })

        let failed = try Self.decoded().metric("flowmeter.tcp.connections.failed")
        #expect(failed.kind == "sum" && failed.temporality == 2 && failed.monotonic == 1 && failed.unit == "1")
        #expect(failed.points.map(\.attributes) == [Self.pairLabels + [["reason", "refused"]]])
        #expect(failed.points.map(\.value) == [1])

        let iface = try Self.decoded().metric("flowmeter.interface.io.bytes")
        #expect(text.contains("flowmeter_interface_io_bytes_total{interface=\"eth0\",direction=\"receive\"} 1234567\n"))
        #expect(
            iface.points.map(\.attributes) == [
                [["interface", "eth0"], ["direction", "receive"]],
                [["interface", "eth0"], ["direction", "transmit"]],
            ])
        #expect(iface.points.map(\.value) == [1_234_567, 4000])
    }

    @Test func gaugeIsAGauge() throws {
        let r = try Self.decoded()
        let active = try r.metric("flowmeter.tcp.connections.active")
        #expect(active.kind == "gauge" && active.temporality == nil && active.monotonic == nil && active.unit == "1")
        // Zero values are on the wire (as_double is a oneof member).
        #expect(active.points.map(\.attributes) == [Self.pairLabels + [["role", "client"]], Self.pairLabels + [["role", "server"]]])
        #expect(active.points.map(\.value) == [0, 0])

        let tracked = try r.metric("flowmeter.sockets.tracked")
        #expect(tracked.points.map(\.attributes) == [[["transport", "tcp"]], [["transport", "udp"]]])
        #expect(tracked.points.map(\.value) == [2, 1])

        // Label values with quote, backslash and newline come back unescaped.
        let hooks = try r.metric("flowmeter.hook.info")
        #expect(hooks.points.map(\.attributes) == [[["hook", "tc"], ["mode", "tcx"]], [["hook", "sockops"], ["mode", Self.oddMode]]])
        #expect(hooks.points.map(\.value) == [1, 1])

        let build = try r.metric("flowmeter.build.info")
        #expect(build.points.map(\.attributes) == [[["version", "1.2.3"]]])
        #expect(build.points.map(\.value) == [1])
        #expect(try r.metric("flowmeter.flow.table.entries").points.map(\.value) == [12])
        #expect(try r.metric("flowmeter.flow.table.entries").points.map(\.attributes) == [[]])
    }

    @Test func histogramBucketsAreNotCumulative() throws {
        let text = MetricsRenderer.render(Self.snapshot(), version: Self.version)
        let base = "service=\"checkout\",peer_service=\"postgres\",transport=\"tcp\""
        #expect(text.contains("flowmeter_tcp_rtt_seconds_bucket{\(base),le=\"0.00025\"} 1\n"))
        #expect(text.contains("flowmeter_tcp_rtt_seconds_bucket{\(base),le=\"0.005\"} 2\n"))
        #expect(text.contains("flowmeter_tcp_rtt_seconds_bucket{\(base),le=\"+Inf\"} 2\n"))
        #expect(text.contains("flowmeter_tcp_rtt_seconds_count{\(base)} 2\n"))

        let m = try Self.decoded().metric("flowmeter.tcp.rtt.seconds")
        #expect(m.kind == "histogram" && m.temporality == 2 && m.monotonic == nil)
        #expect(m.unit == "s")
        #expect(m.description == MetricCatalog.tcpRTT.help)
        #expect(m.points.count == 1)
        let p = try #require(m.points.first)
        #expect(p.attributes == Self.pairLabels)
        #expect(p.bounds == Histogram.rttBuckets)
        // 250 µs in the (100 µs, 250 µs] bucket, 3 ms in (2.5 ms, 5 ms]; nothing above 2.5 s.
        #expect(p.bucketCounts == [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        #expect(p.count == 2)
        #expect(p.sum == 0.00025 + 0.003)
        #expect(p.start == Self.start && p.time == Self.now)
        #expect(p.value == nil)
    }

    @Test func everySampleIsOnePoint() throws {
        let text = MetricsRenderer.render(Self.snapshot(), version: Self.version)
        let samples = text.split(separator: "\n").filter { !$0.hasPrefix("#") }
        let histogramSeries = samples.filter { $0.contains("_count{") || $0.contains("_count ") }.count
        let numberSamples = samples.filter { !$0.contains("_bucket{") && !$0.contains("_sum{") && !$0.contains("_count{") }.count
        let r = try Self.decoded()
        #expect(r.metrics.filter { $0.kind == "histogram" }.map(\.points.count).reduce(0, +) == histogramSeries)
        #expect(r.metrics.filter { $0.kind != "histogram" }.map(\.points.count).reduce(0, +) == numberSamples)
    }

    @Test func theWireFormDecodesToTheBuiltMessage() throws {
        let families = MetricsRenderer.families(Self.snapshot(), version: Self.version)
        let message = OTLPEncoder.message(
            families: families, resource: Self.resource, scopeVersion: Self.version, startUnixNanos: Self.start,
            nowUnixNanos: Self.now)
        let bytes = OTLPEncoder.request(
            families: families, resource: Self.resource, scopeVersion: Self.version, startUnixNanos: Self.start,
            nowUnixNanos: Self.now)
        #expect(try OTLPExportRequest(serializedBytes: bytes) == message)
        // One Metric per family with series, in family order.
        let metrics = message.resourceMetrics[0].scopeMetrics[0].metrics
        #expect(metrics.map(\.name) == families.filter { !$0.series.isEmpty }.map { OTLPEncoder.otlpName($0.name) })
    }

    @Test func namesAndUnits() {
        #expect(OTLPEncoder.otlpName("flowmeter_network_io_bytes_total") == "flowmeter.network.io.bytes")
        #expect(OTLPEncoder.otlpName("flowmeter_tcp_rtt_seconds") == "flowmeter.tcp.rtt.seconds")
        #expect(OTLPEncoder.otlpName("flowmeter_build_info") == "flowmeter.build.info")
        #expect(OTLPEncoder.otlpName("flowmeter_total_x") == "flowmeter.total.x")
        #expect(OTLPEncoder.otlpUnit("flowmeter_network_io_bytes_total") == "By")
        #expect(OTLPEncoder.otlpUnit("flowmeter_interface_io_bytes_total") == "By")
        #expect(OTLPEncoder.otlpUnit("x_bytes") == "By")
        #expect(OTLPEncoder.otlpUnit("flowmeter_tcp_rtt_seconds") == "s")
        #expect(OTLPEncoder.otlpUnit("flowmeter_network_packets_total") == "1")
        #expect(OTLPEncoder.otlpUnit("flowmeter_flow_table_entries") == "1")
        #expect(OTLPEncoder.otlpUnit("flowmeter_bytes_per_packet") == "1")
    }

    @Test func exactBytesOfASmallRequest() {
        let bytes = OTLPEncoder.request(
            families: [], resource: [("a", "b")], scopeVersion: "v",
            startUnixNanos: 1, nowUnixNanos: 2)
        let kv: [UInt8] = [0x0A, 0x01, 0x61, 0x12, 0x03, 0x0A, 0x01, 0x62]
        let resource: [UInt8] = [0x0A, 0x08] + kv
        let scope: [UInt8] = [0x0A, 0x0A] + Array("flowmeterd".utf8) + [0x12, 0x01, 0x76]
        let scopeMetrics: [UInt8] = [0x0A, UInt8(scope.count)] + scope
        let rm: [UInt8] = [0x0A, UInt8(resource.count)] + resource + [0x12, UInt8(scopeMetrics.count)] + scopeMetrics
        #expect(bytes == [0x0A, UInt8(rm.count)] + rm)
    }

    @Test func exactBytesOfAGaugeAndAHistogram() throws {
        let g = MetricFamilyData(name: "g", kind: .gauge, help: "", series: [.init(labels: [], value: .number(0.5))])
        let h = MetricFamilyData(
            name: "h_seconds", kind: .histogram, help: "",
            series: [
                .init(
                    labels: [("k", "v")],
                    value: .histogram(.init(bounds: [1], counts: [300, 2], sum: 2, count: 302)))
            ])
        let bytes = OTLPEncoder.request(families: [g, h], resource: [], scopeVersion: "", startUnixNanos: 0x0102, nowUnixNanos: 0x0304)
        func le(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> UInt64(8 * $0)) } }
        /// A length up to 16383 as a varint.
        func len(_ b: [UInt8]) -> [UInt8] { b.count < 128 ? [UInt8(b.count)] : [UInt8(b.count & 0x7F | 0x80), UInt8(b.count >> 7)] }
        let point: [UInt8] = [0x11] + le(0x0102) + [0x19] + le(0x0304) + [0x21] + le(0.5.bitPattern)
        let gaugeMetric: [UInt8] = [0x0A, 0x01, 0x67, 0x1A, 0x01, 0x31, 0x2A, UInt8(point.count + 2), 0x0A, UInt8(point.count)] + point
        let kv: [UInt8] = [0x0A, 0x01, 0x6B, 0x12, 0x03, 0x0A, 0x01, 0x76]
        var hp: [UInt8] = [0x11] + le(0x0102) + [0x19] + le(0x0304) + [0x21] + le(302) + [0x29] + le(2.0.bitPattern)
        hp += [0x32, 16] + le(300) + le(2) + [0x3A, 8] + le(1.0.bitPattern)
        hp += [0x4A, UInt8(kv.count)] + kv
        let histogram: [UInt8] = [0x0A, UInt8(hp.count)] + hp + [0x10, 0x02]
        let histogramMetric: [UInt8] =
            [0x0A, 0x09] + Array("h.seconds".utf8) + [0x1A, 0x01, 0x73, 0x4A, UInt8(histogram.count)] + histogram
        let scope: [UInt8] = [0x0A, 0x0A] + Array("flowmeterd".utf8)
        let sm: [UInt8] =
            [0x0A] + len(scope) + scope + [0x12] + len(gaugeMetric) + gaugeMetric
            + [0x12] + len(histogramMetric) + histogramMetric
        let rm: [UInt8] = [0x0A, 0x00, 0x12] + len(sm) + sm
        #expect(sm.count > 127 && rm.count > 127)  // two-byte lengths
        #expect(bytes == [0x0A] + len(rm) + rm)
        // Lengths past 127 take a two-byte varint.
        let long = String(repeating: "x", count: 300)
        let big = OTLPEncoder.request(families: [], resource: [("k", long)], scopeVersion: "", startUnixNanos: 0, nowUnixNanos: 0)
        let r = try DecodedRequest(big)
        #expect(r.resource == [["k", long]] && r.scopeVersion == nil)
        // AnyValue { string_value: 300 bytes }: tag 0x0A, length 300 = 0xAC 0x02.
        let anyValue: [UInt8] = [0x0A, 0xAC, 0x02] + Array(long.utf8)
        #expect(big.indices.contains { big[$0...].starts(with: anyValue) })
    }

    @Test func parserReadsBackWhatExpositionWrites() {
        var e = Exposition()
        e.family(
            .init(name: "c_total", kind: .counter, help: "a \\ b\nc"),
            [([("a", "q\"u\\o\nte"), ("b", "")], 3), ([], 1.5), ([("x", "y")], .infinity), ([("x", "z")], 1e20)])
        e.family(.init(name: "empty", kind: .gauge, help: "none"), [])
        e.family(.init(name: "n", kind: .gauge, help: "nan"), [([], .nan), ([("s", "-")], -.infinity)])
        var h = Histogram(bounds: [0.5, 1])
        h.observe(0.25); h.observe(0.75); h.observe(0.75); h.observe(7)
        e.histogram(
            .init(name: "h_seconds", kind: .histogram, help: "hist"),
            [([("p", "1")], h), ([("p", "2")], Histogram(bounds: [0.5, 1]))])
        let parsed = ExpositionParser.parse(e.body)
        #expect(parsed.errors.isEmpty)
        let f = parsed.families
        #expect(f.map(\.name) == ["c_total", "empty", "n", "h_seconds"])
        #expect(f.map(\.kind) == [.counter, .gauge, .gauge, .histogram])
        #expect(f.map(\.help) == ["a \\ b\nc", "none", "nan", "hist"])
        #expect(
            f[0].series == [
                .init(labels: [("a", "q\"u\\o\nte"), ("b", "")], value: .number(3)),
                .init(labels: [], value: .number(1.5)),
                .init(labels: [("x", "y")], value: .number(.infinity)),
                .init(labels: [("x", "z")], value: .number(1e20)),
            ])
        #expect(f[1].series.isEmpty)
        #expect(f[2].series.count == 2)
        if case .number(let v) = f[2].series[0].value { #expect(v.isNaN) } else { Issue.record("NaN sample") }
        #expect(f[2].series[1] == .init(labels: [("s", "-")], value: .number(-.infinity)))
        #expect(
            f[3].series == [
                .init(labels: [("p", "1")], value: .histogram(.init(bounds: [0.5, 1], counts: [1, 2, 1], sum: 8.75, count: 4))),
                .init(labels: [("p", "2")], value: .histogram(.init(bounds: [0.5, 1], counts: [0, 0, 0], sum: 0, count: 0))),
            ])
    }

    @Test func parserReportsWhatItCannotRead() {
        let text = "# HELP a x\n# TYPE a counter\na{l=\"v} 1\nb 2\na 3\n# TYPE h histogram\nh_bucket{le=\"1\"} 5\nh_bucket{le=\"+Inf\"} 4\n"
        let parsed = ExpositionParser.parse(text)
        #expect(parsed.errors.map(\.line) == [3, 4, 0])
        #expect(parsed.families.map(\.name) == ["a", "h"])
        #expect(parsed.families.first?.series == [.init(labels: [], value: .number(3))])
        #expect(parsed.families.last?.series.isEmpty == true)
    }
}
