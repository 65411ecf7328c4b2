import FlowmeterCore
import FlowmeterTestSupport
import Testing

/// FlowTable (the collector's per-tick sums per flow) against plain
/// Dictionary arithmetic, and the accounting built on it against the
/// record-by-record accounting it replaced.
@Suite struct FlowTableSumTests {
    static func key(
        _ n: Int, proto: UInt8 = 6, ifindex: UInt32 = 2, direction: Direction = .transmit,
        family: Family = .ipv4
    ) -> FlowKey {
        FlowKey(
            source: .v4(10, 0, UInt8(n >> 8 & 0xff), UInt8(n & 0xff)), destination: .v4(10, 9, 0, UInt8(n % 7)),
            ifindex: ifindex, sourcePort: UInt16(30000 + n % 5000), destinationPort: proto == 17 ? 53 : 443,
            direction: direction, family: family, ipProtocol: family == .other ? 0 : proto, flags: [])
    }

    static func record(_ k: FlowKey, packets: UInt64, bytes: UInt64, source: FlowSource = .flowsRing) -> FlowRecord {
        FlowRecord(
            key: k, stats: FlowStats(packets: packets, bytes: bytes, firstSeenNanos: 1, lastSeenNanos: 2, tcpFlags: 0),
            source: source)
    }

    @Test func sumsPerKeyInFirstSeenOrder() {
        var t = FlowTable(minimumCapacity: 4, seed: 1)
        let a = Self.key(1), b = Self.key(2)
        #expect(t.add(a, packets: 1, bytes: 100) == 0)
        #expect(t.add(b, packets: 2, bytes: 50, source: .flowsRing) == 1)
        #expect(t.add(a, packets: 3, bytes: 10, source: .flowsRing) == 0)
        #expect(t.count == 2 && t.records == 3)
        #expect(
            t.entries == [
                FlowTable.Entry(key: a, packets: 4, bytes: 110, records: 2),
                FlowTable.Entry(key: b, packets: 2, bytes: 50, records: 1),
            ])
        #expect((0..<3).map(t.entry(ofRecord:)) == [0, 1, 0])
        #expect(t.recordsFromMap == 1 && t.recordsFromRing == 2)
        #expect(t.index(of: b) == 1 && t.index(of: Self.key(3)) == nil)
    }

    @Test func everyKeyFieldSeparatesFlows() {
        let base = Self.key(1)
        var variants = [base]
        func with(_ change: (inout FlowKey) -> Void) { var k = base; change(&k); variants.append(k) }
        with { $0.source = .v4(10, 0, 0, 2) }
        with { $0.source = IPAddress16(hi: 1, lo: base.source.lo) }
        with { $0.destination = .v4(10, 9, 0, 2) }
        with { $0.destination = IPAddress16(hi: 1, lo: base.destination.lo) }
        with { $0.ifindex = 3 }
        with { $0.sourcePort = 1 }
        with { $0.destinationPort = 1 }
        with { $0.direction = .receive }
        with { $0.family = .ipv6 }
        with { $0.ipProtocol = 17 }
        with { $0.flags = .fragment }
        var t = FlowTable(seed: 7)
        for k in variants + variants { t.add(k, packets: 1, bytes: 1) }
        #expect(t.count == variants.count)
        #expect(t.entries.map(\.key) == variants && t.entries.allSatisfy { $0.packets == 2 && $0.records == 2 })
    }

    /// Many records over a few hundred keys, through growth, against a
    /// Dictionary, for a few seeds (the probe sequences differ with each).
    @Test(arguments: [0, 1, 0xDEAD_BEEF] as [UInt64])
    func matchesADictionaryThroughGrowth(seed: UInt64) {
        var rng = SeededRandom(seed: seed)
        let keys = (0..<700).map { Self.key($0, proto: $0 % 3 == 0 ? 17 : 6, ifindex: UInt32(1 + $0 % 3)) }
        let records = (0..<20_000).map { _ in
            Self.record(
                keys[Int(rng.next() % 700)], packets: rng.next() % 4 + 1, bytes: rng.next() % 1500,
                source: rng.next() % 5 == 0 ? .flowMap : .flowsRing)
        }
        var t = FlowTable(minimumCapacity: 8, seed: seed)
        // In slices, as the ring reader hands them over, and one by one.
        t.add(Array(records[..<5000]))
        t.add(Array(records[5000..<12_000]))
        for r in records[12_000...] { t.add(r.key, packets: r.stats.packets, bytes: r.stats.bytes, source: r.source) }

        var want: [FlowKey: (packets: UInt64, bytes: UInt64, records: UInt64)] = [:]
        var order: [FlowKey] = []
        for r in records {
            if want[r.key] == nil { order.append(r.key) }
            want[r.key, default: (0, 0, 0)].packets += r.stats.packets
            want[r.key, default: (0, 0, 0)].bytes += r.stats.bytes
            want[r.key, default: (0, 0, 0)].records += 1
        }
        #expect(t.entries.map(\.key) == order)
        #expect(t.entries.allSatisfy { e in want[e.key].map { $0 == (e.packets, e.bytes, e.records) } ?? false })
        #expect(t.records == records.count)
        #expect(records.indices.allSatisfy { t[t.entry(ofRecord: $0)].key == records[$0].key })
        #expect(t.recordsFromMap == UInt64(records.filter { $0.source == .flowMap }.count))
        #expect(t.recordsFromMap + t.recordsFromRing == UInt64(records.count))
    }

    /// A batch that fills the table exactly, then brings only flows it
    /// already has, does not grow it (the ring bench's 65,536 flows: 8 MB of
    /// slots, not 16); the first new flow after that does, and every sum is
    /// the same as without a full table.
    @Test func growsOnlyForANewFlow() {
        var t = FlowTable(minimumCapacity: 64, seed: 5)
        let full = t.capacity
        let keys = (0..<full).map { Self.key($0) }
        let repeated = (0..<4).flatMap { round in keys.map { Self.record($0, packets: UInt64(round + 1), bytes: 10) } }
        t.add(repeated)
        #expect(t.count == full && t.capacity == full && t.records == repeated.count)
        #expect(t.entries.allSatisfy { $0.packets == 10 && $0.bytes == 40 && $0.records == 4 })
        // In one batch: old flows, a new one (the table grows mid-batch), old ones again.
        let extra = Self.key(full + 1)
        let mixed =
            [Self.record(keys[0], packets: 1, bytes: 1), Self.record(extra, packets: 7, bytes: 7)]
            + keys.map { Self.record($0, packets: 1, bytes: 1) }
        t.add(mixed)
        #expect(t.count == full + 1 && t.capacity > full)
        #expect(t[t.index(of: extra)!] == FlowTable.Entry(key: extra, packets: 7, bytes: 7, records: 1))
        #expect(t[0] == FlowTable.Entry(key: keys[0], packets: 12, bytes: 42, records: 6))
        #expect(t.entries.dropFirst().filter { $0.key != extra }.allSatisfy { $0.packets == 11 && $0.records == 5 })
        #expect((0..<mixed.count).allSatisfy { t[t.entry(ofRecord: repeated.count + $0)].key == mixed[$0].key })
    }

    @Test func removeAllEmptiesAndKeepsWorking() {
        var t = FlowTable(minimumCapacity: 16, seed: 3)
        for n in 0..<10_000 { t.add(Self.key(n), packets: 1, bytes: 1) }
        #expect(t.count == 10_000 && t.capacity >= 10_000)
        t.removeAll()
        #expect(t.isEmpty && t.records == 0 && t.recordsFromMap == 0 && t.index(of: Self.key(5)) == nil)
        #expect(t.capacity >= 10_000)  // kept for the next tick like this one
        t.add(Self.key(5), packets: 2, bytes: 3)
        t.add(Self.key(5), packets: 2, bytes: 3)
        #expect(t.entries == [FlowTable.Entry(key: Self.key(5), packets: 4, bytes: 6, records: 2)])
        t.removeAll()
        // A burst's capacity goes once a tick needed far less.
        #expect(t.isEmpty && t.capacity < 10_000)
        t.add(Self.key(6), packets: 1, bytes: 1)
        #expect(t.index(of: Self.key(6)) == 0 && t.index(of: Self.key(5)) == nil)
    }

    @Test func copiesAreIndependent() {
        var a = FlowTable(seed: 9)
        a.add(Self.key(1), packets: 1, bytes: 1)
        var b = a
        b.add(Self.key(1), packets: 5, bytes: 5)
        b.add(Self.key(2), packets: 1, bytes: 1)
        let c = b
        b.removeAll()
        #expect(a.entries == [FlowTable.Entry(key: Self.key(1), packets: 1, bytes: 1, records: 1)])
        #expect(c.count == 2 && c[0].packets == 6 && b.isEmpty)
    }

    /// Accounting.count on the tick's table gives what the record-by-record
    /// accounting (Accounting.add, ServiceAggregator.apply(flows:)) gave:
    /// interface totals, records by source, pair counters, the pair of every
    /// record, and the series folded past a small cap.
    @Test(arguments: [false, true])
    func accountingPerFlowEqualsPerRecord(peerAddresses: Bool) {
        var rng = SeededRandom(seed: peerAddresses ? 5 : 6)
        let limits = AggregationLimits(
            maxSeriesPerMetric: 6, seriesExpiry: FlowDuration(nanoseconds: 60_000_000_000),
            peerAddresses: peerAddresses)
        var services = ServiceAggregator(
            resolver: ServiceResolver(rules: [], peers: [PeerRule(service: "dns", ports: try! PortRange(parsing: "53"))]),
            limits: limits)
        // Sockets for some of the flows, so those join by 5-tuple.
        let opens = (0..<12).map { n -> SocketEvent in
            let k = Self.key(n)
            return SocketEvent(
                kind: .open, role: .client, family: .ipv4, ipProtocol: 6, reason: .none, socketID: UInt64(n + 1),
                timestampNanos: 10, startNanos: 1, owner: SocketOwner(tgid: 1, pid: 1, name: "app\(n % 4)", cgroupID: 0),
                localAddress: k.source, remoteAddress: k.destination, localPort: k.sourcePort,
                remotePort: k.destinationPort, srttMicros: 0, bytesSent: 0, bytesReceived: 0, retransmits: 0,
                resetsSent: 0, resetsReceived: 0, error: 0)
        }
        services.apply(opens, cgroupPath: { _ in nil })
        var keys = (0..<40).map {
            Self.key(
                $0, proto: $0 % 4 == 0 ? 17 : 6, ifindex: UInt32(1 + $0 % 3),
                direction: $0 % 5 == 0 ? .receive : .transmit)
        }
        keys.append(Self.key(90, proto: 1))  // ICMP: no pair
        keys.append(Self.key(91, family: .other))  // not IP: interface totals only
        let records = (0..<3000).map { _ in
            Self.record(
                keys[Int(rng.next() % UInt64(keys.count))], packets: rng.next() % 3 + 1, bytes: rng.next() % 1000,
                source: rng.next() % 3 == 0 ? .flowMap : .flowsRing)
        }
        let names: [UInt32: String] = [1: "eth0", 2: "eth1"]

        var perRecord = Accounting()
        perRecord.services = services
        perRecord.add(records, names: names)
        let recordPairs = perRecord.services!.apply(flows: records, now: 100)

        var perFlow = Accounting()
        perFlow.services = services
        var t = FlowTable(minimumCapacity: 4, seed: 42)
        t.add(records)
        let entryPairs = perFlow.count(flows: t, names: names, now: 100)

        #expect(perFlow.interfaces == perRecord.interfaces)
        #expect(perFlow.records == perRecord.records)
        #expect(perFlow.services!.pairs == perRecord.services!.pairs)
        #expect(perFlow.services!.seriesDropped == perRecord.services!.seriesDropped)
        #expect(perFlow.services!.seriesDropped > 0, "the cap never folded: the test proves less than it says")
        #expect(perFlow.services!.unexposed == perRecord.services!.unexposed)
        #expect(records.indices.allSatisfy { entryPairs[t.entry(ofRecord: $0)] == recordPairs[$0] })
    }
}
