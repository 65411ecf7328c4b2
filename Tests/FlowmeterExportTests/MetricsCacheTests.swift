import FlowmeterCore
import FlowmeterExport
import Testing

/// flowmeterd keeps each service pair's labels between scrapes
/// (`MetricsCache`). A kept entry must never change what /metrics says:
/// after new pairs, pairs that moved to other labels and pairs that expired,
/// the cached render is byte for byte the uncached one, and the cache holds
/// exactly the pairs there are.
@Suite struct MetricsCacheTests {
    static let second: UInt64 = 1_000_000_000

    /// A UDP socket of process `name` connected to 10.128.0.`host`.
    static func event(_ kind: SocketEvent.Kind, id: UInt64, host: UInt8, ts: UInt64, sent: UInt64 = 0, name: String)
        -> SocketEvent
    {
        SocketEvent(
            kind: kind, role: .client, family: .ipv4, ipProtocol: 17, reason: .none, socketID: id,
            timestampNanos: ts, startNanos: 1, owner: SocketOwner(tgid: 7, pid: 7, name: name, cgroupID: 0),
            localAddress: .v4(10, 127, 0, 1), remoteAddress: .v4(10, 128, 0, host), localPort: UInt16(30_000 + id),
            remotePort: 9, srttMicros: 0, bytesSent: sent, bytesReceived: sent / 2, retransmits: 0,
            resetsSent: 0, resetsReceived: 0, error: 0)
    }

    /// Cached and uncached renders agree in both formats, and so do the
    /// families (OTLP's input); the cache holds one entry per current pair
    /// (it is not consulted without service metrics).
    static func expectSame(_ a: Accounting, _ cache: MetricsCache, _ step: Comment) {
        for om in [false, true] {
            let cached = MetricsRenderer.renderBytes(a, version: "1.0", openMetrics: om, cache: cache)
            let fresh = MetricsRenderer.renderBytes(a, version: "1.0", openMetrics: om)
            #expect(cached == fresh, step)
            // And both are what the generic label writer makes of the same series.
            var plain = MetricsRenderer.families(a, version: "1.0")
            for f in plain.indices {
                for s in plain[f].series.indices { plain[f].series[s].labels = plain[f].series[s].labels }
            }
            #expect(Exposition.renderBytes(plain, openMetrics: om) == fresh, step)
        }
        #expect(MetricsRenderer.families(a, version: "1.0", cache: cache) == MetricsRenderer.families(a, version: "1.0"), step)
        if let agg = a.services { #expect(cache.count == agg.pairs.count, step) }
    }

    @Test func cachedLabelsFollowNewMovedAndExpiredPairs() throws {
        var agg = ServiceAggregator(
            resolver: ServiceResolver(rules: [], peers: []),
            limits: AggregationLimits(
                maxSeriesPerMetric: 100, seriesExpiry: FlowDuration(nanoseconds: 60 * Self.second), peerAddresses: true))
        var a = Accounting()
        a.socketTelemetry = true
        a.dropsCounted = true
        a.dnsCounted = true
        let cache = MetricsCache()
        // A process name that needs escaping in a label value.
        let odd = "we\"ird\\n\name"
        agg.apply(
            [
                Self.event(.open, id: 1, host: 1, ts: 10, name: "python3"),
                Self.event(.update, id: 1, host: 1, ts: 20, sent: 100, name: "python3"),
                Self.event(.open, id: 2, host: 2, ts: 10, name: odd),
                Self.event(.update, id: 2, host: 2, ts: 20, sent: 300, name: odd),
            ], cgroupPath: { _ in nil })
        a.services = agg
        Self.expectSame(a, cache, "first scrape: new pairs, shown at zero")
        let text = MetricsRenderer.render(a, version: "1.0", cache: cache)
        #expect(
            text.contains(
                #"flowmeter_network_io_bytes_total{service="we\"ird\\n\name",peer_service="10.128.0.2",transport="udp",direction="transmit"} 0"#
            ))
        agg.markExposed(agg.unexposed)
        a.services = agg
        Self.expectSame(a, cache, "second scrape: the same pairs, with counts")
        #expect(
            MetricsRenderer.render(a, version: "1.0", cache: cache).contains(
                #"peer_service="10.128.0.2",transport="udp",direction="transmit"} 300"#))

        // A new pair while the others stay; the previous scrape's bytes,
        // still held (by a slow client), are not written over.
        let held = MetricsRenderer.renderBytes(a, version: "1.0", cache: cache)
        let heldCopy = Array(held)
        agg.apply(
            [Self.event(.open, id: 3, host: 3, ts: 30, name: "curl"), Self.event(.update, id: 3, host: 3, ts: 31, sent: 5, name: "curl")],
            cgroupPath: { _ in nil })
        a.services = agg
        Self.expectSame(a, cache, "a new pair")
        #expect(MetricsRenderer.renderBytes(a, version: "1.0", cache: cache) != held)
        #expect(held == heldCopy)
        // Once no one holds the last scrape's bytes, the next scrape writes
        // into the same memory (no fresh megabyte to map and fault in).
        let address = { (b: [UInt8]) in b.withUnsafeBufferPointer { UInt(bitPattern: $0.baseAddress) } }
        let first = address(MetricsRenderer.renderBytes(a, version: "1.0", cache: cache))
        #expect(address(MetricsRenderer.renderBytes(a, version: "1.0", cache: cache)) == first)

        // New rules name 10.128.0.1 "db": socket 1's traffic moves to (python3, db, udp).
        agg.reconfigure(
            resolver: ServiceResolver(rules: [], peers: [PeerRule(service: "db", cidr: try CIDR(parsing: "10.128.0.1/32"))]),
            limits: agg.limits)
        agg.apply([Self.event(.update, id: 1, host: 1, ts: 40, sent: 150, name: "python3")], cgroupPath: { _ in nil })
        a.services = agg
        #expect(agg.pairs[ServicePair(service: "python3", peer: "db", transport: "udp")] != nil)
        Self.expectSame(a, cache, "a pair under new labels")

        // Sockets 1 and 2 close; a minute later their pairs (and the old
        // python3 -> 10.128.0.1 one) expire, curl's socket still sends.
        agg.apply(
            [
                Self.event(.close, id: 1, host: 1, ts: 50, sent: 150, name: "python3"),
                Self.event(.close, id: 2, host: 2, ts: 50, sent: 300, name: odd),
                Self.event(.update, id: 3, host: 3, ts: 60 * Self.second, sent: 9, name: "curl"),
            ], cgroupPath: { _ in nil })
        agg.expire(now: 50 + 61 * Self.second)
        a.services = agg
        #expect(agg.pairs.keys.map(\.service) == ["curl"])
        Self.expectSame(a, cache, "pairs expired")
        #expect(!MetricsRenderer.render(a, version: "1.0", cache: cache).contains("python3"))

        // A pair that comes back after it expired is made anew.
        agg.apply([Self.event(.open, id: 4, host: 2, ts: 70 * Self.second, name: odd)], cgroupPath: { _ in nil })
        a.services = agg
        Self.expectSame(a, cache, "an expired pair back")
        a.services = nil
        Self.expectSame(a, cache, "no service metrics")
    }
}
