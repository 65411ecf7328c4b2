// flowmeter-bench scrape: what one /metrics render costs with 10,000
// service series (2,500 UDP service pairs, peers named by address, as
// `tools/bench series` sets up in the kernel), in time and in calls into the
// allocator. Measures the renderer flowmeterd runs (`MetricsRenderer`:
// families, then the bytes served, with a `MetricsCache` kept from scrape to
// scrape as flowmeterd keeps one) against the same without the cache and
// against the text renderer it had before, which is kept here, and only here,
// as the baseline: it built a String per sample and per label. All render the
// same families, and their outputs are checked to be the same bytes first.
// Needs no root and no kernel.
import CMallocCount
import FlowmeterCore
import FlowmeterExport
import Foundation

/// The former Prometheus text renderer, verbatim but for its name.
struct LegacyExposition {
    private(set) var text = ""
    let openMetrics: Bool

    init(openMetrics: Bool = false) { self.openMetrics = openMetrics }

    private mutating func header(_ f: MetricFamilyData) {
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

    mutating func family(_ f: MetricFamilyData) {
        header(f)
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

    static func render(_ families: [MetricFamilyData], openMetrics: Bool) -> String {
        var e = LegacyExposition(openMetrics: openMetrics)
        for f in families { e.family(f) }
        return e.body
    }

    var body: String { openMetrics ? text + "# EOF\n" : text }

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

enum ScrapeBench {
    /// An accounting state like `tools/bench series`'s: `pairs` UDP sockets
    /// of one process, each connected to its own address, with traffic both
    /// ways; a few TCP pairs with RTT histograms and some export counters, so
    /// every kind of sample is rendered.
    static func accounting(pairs: Int) -> Accounting {
        var a = Accounting()
        a.socketTelemetry = true
        a.hooks = [HookMode(hook: "tc", mode: "tcx"), HookMode(hook: "sockops", mode: "cgroup")]
        a.add(
            (1...4).flatMap { i in
                [Direction.transmit, .receive].map { d in
                    FlowRecord(
                        key: FlowKey(
                            source: .v4(10, 0, 0, UInt8(i)), destination: .v4(10, 9, 0, 1), ifindex: UInt32(i),
                            sourcePort: 5000, destinationPort: 53, direction: d, family: .ipv4, ipProtocol: 17, flags: []),
                        stats: FlowStats(packets: 12_345, bytes: 9_876_543, firstSeenNanos: 0, lastSeenNanos: 0, tcpFlags: 0),
                        source: .flowMap)
                }
            }, names: [1: "eth0", 2: "eth1", 3: "veth3f2a91c", 4: "wg0"])
        var agg = ServiceAggregator(
            resolver: ServiceResolver(rules: [], peers: []),
            limits: AggregationLimits(
                maxSeriesPerMetric: pairs + 1000, seriesExpiry: FlowDuration(nanoseconds: 3_600_000_000_000), peerAddresses: true))
        var events: [SocketEvent] = []
        let tcp = 16
        for i in 0..<(pairs + tcp) {
            let isTCP = i >= pairs
            let remote = IPAddress16.v4(10, 128, UInt8(1 + i / 250), UInt8(1 + i % 250))
            func event(_ kind: SocketEvent.Kind, ts: UInt64, sent: UInt64 = 0, received: UInt64 = 0) -> SocketEvent {
                SocketEvent(
                    kind: kind, role: .client, family: .ipv4, ipProtocol: isTCP ? 6 : 17, reason: .none,
                    socketID: UInt64(i + 1), timestampNanos: ts, startNanos: 1_000,
                    owner: SocketOwner(tgid: 4242, pid: 4242, name: isTCP ? "curl" : "python3", cgroupID: 77),
                    localAddress: .v4(10, 127, 0, 1), remoteAddress: remote, localPort: UInt16(20_000 + i % 40_000),
                    remotePort: isTCP ? 443 : 9, srttMicros: UInt32(100 + i * 37 % 5000), bytesSent: sent,
                    bytesReceived: received, retransmits: 0, resetsSent: 0, resetsReceived: 0, error: 0)
            }
            events.append(event(.open, ts: 2_000))
            events.append(event(.update, ts: 3_000, sent: UInt64(1 + i * 7919 % 100_000), received: UInt64(i * 104_729 % 3_000_000)))
        }
        agg.apply(events, cgroupPath: { _ in "/user.slice/user-0.slice/session-1.scope" })
        agg.markExposed(Set(agg.pairs.keys))
        a.services = agg
        var log = ExportStats(), otlp = ExportStats()
        (log.queued, log.sent) = (123_456, 123_456)
        (otlp.queued, otlp.sent, otlp.failed, otlp.dropped, otlp.queueLength) = (4_000, 3_990, 3, 1, 6)
        otlp.lastSuccessUnixSeconds = 1_796_000_123.25
        otlp.rejectedPoints = 2
        a.exports = ["flow_log": log, "otlp": otlp]
        return a
    }

    static func run(series: Int, rounds: Int) throws {
        let a = accounting(pairs: max(1, series / 4))
        let version = "0.0.0-bench"
        let families = MetricsRenderer.families(a, version: version)
        let cache = MetricsCache()
        // The same bytes, in both formats, before anything is timed.
        for om in [false, true] {
            let old = Array(LegacyExposition.render(families, openMetrics: om).utf8)
            let new = MetricsRenderer.renderBytes(a, version: version, openMetrics: om, cache: cache)
            guard old == new, MetricsRenderer.renderBytes(a, version: version, openMetrics: om) == new else {
                let at = (0..<min(old.count, new.count)).first { old[$0] != new[$0] } ?? min(old.count, new.count)
                throw BenchError(
                    "scrape: the renderers differ (openMetrics \(om)) at byte \(at): "
                        + "\(String(decoding: old[max(0, at - 80)..<min(old.count, at + 80)], as: UTF8.self)) | "
                        + "\(String(decoding: new[max(0, at - 80)..<min(new.count, at + 80)], as: UTF8.self))")
            }
        }
        let body = MetricsRenderer.renderBytes(a, version: version)
        let text = String(decoding: body, as: UTF8.self)
        let services = text.split(separator: "\n").filter { $0.hasPrefix("flowmeter_network_") }.count
        let samples = text.split(separator: "\n").filter { !$0.hasPrefix("#") }.count

        // Each variant is what a scrape runs, from the accounting snapshot to
        // the bytes handed to the HTTP server (the former one's String was
        // copied into a ByteBuffer; a [UInt8] copy stands in for that copy).
        var sink = 0
        let variants: [(key: String, name: String, run: () -> Void)] = [
            (
                "old", "former: families, String text, copied to bytes",
                {
                    let t = LegacyExposition.render(MetricsRenderer.families(a, version: version), openMetrics: false)
                    sink &+= Array(t.utf8).count
                }
            ),
            (
                "new", "flowmeterd: renderBytes with its MetricsCache",
                { sink &+= MetricsRenderer.renderBytes(a, version: version, cache: cache).count }
            ),
            (
                "families", "of which: MetricsRenderer.families",
                { sink &+= MetricsRenderer.families(a, version: version, cache: cache).count }
            ),
            (
                "uncached", "renderBytes without a cache (labels made anew)",
                { sink &+= MetricsRenderer.renderBytes(a, version: version).count }
            ),
        ]
        for v in variants { v.run() }  // warm-up
        var times: [String: [Double]] = [:], allocs: [String: [Double]] = [:]
        for r in 0..<rounds {
            for i in 0..<variants.count {
                let v = variants[(i + r) % variants.count]
                let m0 = fm_malloc_calls()
                let t0 = RingBench.monotonicNanos()
                v.run()
                let t1 = RingBench.monotonicNanos()
                let m1 = fm_malloc_calls()
                times[v.key, default: []].append(Double(t1 - t0))
                allocs[v.key, default: []].append(Double(m1 - m0))
            }
        }
        print(
            "/metrics render: \(samples) samples (\(services) per service pair, \(a.services?.pairs.count ?? 0) pairs), "
                + "\(body.count / 1024) KiB; median of \(rounds) interleaved rounds")
        print("variant".padding(toLength: 52, withPad: " ", startingAt: 0) + "        ms   allocations")
        for v in variants {
            print(
                v.name.padding(toLength: 52, withPad: " ", startingAt: 0)
                    + String(format: "%10.2f %13.0f", median(times[v.key]!) / 1e6, median(allocs[v.key]!)))
        }
        let ratio = median(times["old"]!) / median(times["new"]!)
        print(
            String(
                format: "new vs former: %.2fx faster; allocations per render %.0f (former %.0f)", ratio, median(allocs["new"]!),
                median(allocs["old"]!)))
        print(
            String(
                format: "the cache: %.2fx faster than without (allocations %.0f against %.0f)",
                median(times["uncached"]!) / median(times["new"]!), median(allocs["new"]!), median(allocs["uncached"]!)))
        if sink == 42 { print("") }  // keeps the results used
    }
}
