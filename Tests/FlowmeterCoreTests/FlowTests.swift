import FlowmeterCore
import Testing

@Suite struct FlowTests {
    @Test func addressText() {
        #expect(IPAddress16.v4(192, 168, 1, 20).description == "192.168.1.20")
        func v6(_ s: [UInt8]) -> String { IPAddress16(bytes: s).description }
        #expect(v6([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]) == "fd00::1")
        #expect(v6([UInt8](repeating: 0, count: 16)) == "::")
        #expect(v6([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]) == "::1")
        #expect(v6([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]) == "2001:db8:1::1:0:1")
        #expect(v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]) == "2001:db8:0:1::1")
        #expect(v6([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0]) == "fe80::1234:5678:9abc:def0")
        // A single zero group is not shortened (RFC 5952 4.2.2).
        #expect(v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]) == "2001:db8:0:1:1:1:1:1")
        #expect(IPAddress16.v4(1, 2, 3, 4).bytes == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4])
    }

    @Test func statsMergeKeepsEarliestAndLatest() {
        var s = FlowStats.zero
        s.merge(FlowStats(packets: 2, bytes: 100, firstSeenNanos: 50, lastSeenNanos: 60, tcpFlags: 0x02))
        s.merge(FlowStats(packets: 0, bytes: 0, firstSeenNanos: 0, lastSeenNanos: 0, tcpFlags: 0))  // an idle CPU slot
        s.merge(FlowStats(packets: 1, bytes: 40, firstSeenNanos: 40, lastSeenNanos: 45, tcpFlags: 0x10))
        #expect(s == FlowStats(packets: 3, bytes: 140, firstSeenNanos: 40, lastSeenNanos: 60, tcpFlags: 0x12))
    }

    @Test func tcpFlagLetters() {
        #expect(TCPFlags.describe(0x12) == "S.")
        #expect(TCPFlags.describe(0x19) == "FP.")
        #expect(TCPFlags.describe(0xff) == "FSRP.UEW")
        #expect(TCPFlags.describe(0) == "")
    }

    static func record(_ ifindex: UInt32, _ dir: Direction, packets: UInt64, bytes: UInt64, source: FlowSource = .flowMap) -> FlowRecord {
        FlowRecord(
            key: FlowKey(
                source: .zero, destination: .zero, ifindex: ifindex, sourcePort: 0, destinationPort: 0,
                direction: dir, family: .ipv4, ipProtocol: 17, flags: []),
            stats: FlowStats(packets: packets, bytes: bytes, firstSeenNanos: 1, lastSeenNanos: 2, tcpFlags: 0),
            source: source)
    }

    @Test func accountingSumsPerInterfaceAndDirection() {
        var a = Accounting()
        let names: [UInt32: String] = [2: "eth0"]
        a.add([Self.record(2, .receive, packets: 3, bytes: 300), Self.record(2, .transmit, packets: 1, bytes: 60)], names: names)
        a.add(
            [Self.record(2, .receive, packets: 2, bytes: 100, source: .flowsRing), Self.record(9, .receive, packets: 1, bytes: 1)],
            names: names)
        #expect(a.interfaces["eth0"]?[.receive] == InterfaceTotals(packets: 5, bytes: 400))
        #expect(a.interfaces["eth0"]?[.transmit] == InterfaceTotals(packets: 1, bytes: 60))
        #expect(a.interfaces["if9"]?[.receive] == InterfaceTotals(packets: 1, bytes: 1))
        #expect(a.records[.flowMap] == 3 && a.records[.flowsRing] == 1)
    }

    @Test func rfc3339Formatting() {
        #expect(rfc3339(nanosSinceEpoch: 0) == "1970-01-01T00:00:00.000000000Z")
        #expect(rfc3339(nanosSinceEpoch: 1_796_000_000_123_456_789) == "2026-11-30T00:53:20.123456789Z")
        #expect(rfc3339(nanosSinceEpoch: 951_782_400_000_000_000) == "2000-02-29T00:00:00.000000000Z")
        #expect(rfc3339(nanosSinceEpoch: -1) == "1969-12-31T23:59:59.999999999Z")
    }

    @Test func clockMapping() {
        let c = ClockMapping(realtimeNanos: 1_000_000_000_000, monotonicNanos: 5_000)
        #expect(c.wallNanos(monotonic: 6_000) == 1_000_000_001_000)
        #expect(c.wallNanos(monotonic: 4_000) == 999_999_999_000)
    }
    @Test func theAPIListsTheLargestFlowsPastItsCap() {
        let n = Accounting.maxListedFlows
        let few = (0..<3).map { (record: Self.record(UInt32($0), .receive, packets: 1, bytes: UInt64($0)), pair: ServicePair?.none) }
        #expect(
            Accounting.largestFlows(few, [Self.record(7, .transmit, packets: 1, bytes: 1)], pair: { _ in nil })
                .map(\.record.key.ifindex) == [0, 1, 2, 7])
        // n + 500 flows with bytes in a scrambled order: the n largest stay, in their order.
        let many = (0..<(n + 500)).map { i in Self.record(UInt32(i), .receive, packets: 1, bytes: UInt64((i * 7_919) % (n + 500))) }
        let pair = ServicePair(service: "s", peer: "p", transport: "udp")
        let kept = Accounting.largestFlows(Array(few.prefix(0)), many, pair: { $0 % 2 == 0 ? pair : nil })
        #expect(kept.count == n)
        #expect(kept.allSatisfy { $0.record.stats.bytes >= 500 })
        #expect(kept.map(\.record.key.ifindex) == kept.map(\.record.key.ifindex).sorted())
        #expect(kept.allSatisfy { ($0.pair != nil) == ($0.record.key.ifindex % 2 == 0) })
    }
}
