import FlowmeterCore
import Testing

/// The drop accounting's pure part: reason names from a kernel's enum (or
/// none), cumulative counts to deltas, and drops tied to interfaces and
/// service pairs. Runs on any kernel, including those without the hook.
@Suite struct DropsTests {
    // A 6.x-like enum, and a 5.17-like one (no "not dropped yet", NOT_SPECIFIED = 0).
    static let v6 = DropReasonNames(enumerators: [
        ("SKB_NOT_DROPPED_YET", 0), ("SKB_CONSUMED", 1), ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
        ("SKB_DROP_REASON_NO_SOCKET", 3), ("SKB_DROP_REASON_NETFILTER_DROP", 12), ("SKB_DROP_REASON_QDISC_DROP", 64),
    ])
    static let v517 = DropReasonNames(enumerators: [
        ("SKB_DROP_REASON_NOT_SPECIFIED", 0), ("SKB_DROP_REASON_NO_SOCKET", 1), ("SKB_DROP_REASON_PKT_TOO_SMALL", 2),
    ])

    @Test func reasonsAreTheKernelsNamesLessThePrefix() {
        #expect(Self.v6.label(12) == "NETFILTER_DROP")
        #expect(Self.v6.label(3) == "NO_SOCKET")
        #expect(Self.v6.label(64) == "QDISC_DROP")
        // The same name has another value on another kernel: never a table compiled in.
        #expect(Self.v517.label(1) == "NO_SOCKET")
        #expect(Self.v517.label(0) == "NOT_SPECIFIED")
        #expect(Self.v6.label(0) == "SKB_NOT_DROPPED_YET")
    }

    @Test func kernelsWithoutReasonsSayUnknown() {
        let none = DropReasonNames(enumerators: [])
        #expect(none.label(DropReasonNames.none) == "unknown")
        #expect(Self.v6.label(DropReasonNames.none) == "unknown")
        #expect(none.names.isEmpty)
    }

    @Test func valuesTheEnumDoesNotNameStayDistinct() {
        // A subsystem's reason (6.6+: the subsystem in the upper 16 bits).
        #expect(Self.v6.label(0x0002_0005) == "SUBSYS_2_5")
        #expect(Self.v6.label(200) == "REASON_200")
    }

    @Test func consumedPacketsAreNotDrops() {
        #expect(Self.v6.isNotDrop(1))
        #expect(Self.v6.isNotDrop(0))
        #expect(!Self.v6.isNotDrop(2) && !Self.v6.isNotDrop(12))
        // On 5.17 value 0 is a real drop (NOT_SPECIFIED), and 1 is NO_SOCKET.
        #expect(!Self.v517.isNotDrop(0) && !Self.v517.isNotDrop(1))
    }

    static func key(reason: UInt32, ifindex: UInt32 = 2, netns: UInt32 = 7, direction: Direction = .receive, sport: UInt16 = 40000)
        -> DropKey
    {
        DropKey(
            flow: FlowKey(
                source: .v4(10, 0, 0, 1), destination: .v4(10, 0, 0, 2), ifindex: ifindex, sourcePort: sport,
                destinationPort: 5432, direction: direction, family: .ipv4, ipProtocol: 6, flags: []),
            netns: netns, reason: reason)
    }

    @Test func cumulativeCountsBecomeDeltasAndIdleKeysAreFound() {
        var d = DropDeltas()
        let a = Self.key(reason: 12), b = Self.key(reason: 3)
        var r = d.take([a: 5])
        #expect(r.drops == [a: 5] && r.idle.isEmpty)
        r = d.take([a: 8, b: 1])
        #expect(r.drops == [a: 3, b: 1] && r.idle.isEmpty)
        r = d.take([a: 8, b: 4])
        #expect(r.drops == [b: 3] && r.idle == [a])
        d.forget(r.idle)
        // Removed, then made again by the kernel: all of it is new.
        r = d.take([a: 2, b: 4])
        #expect(r.drops == [a: 2] && r.idle == [b])
        // A key that came back smaller without our removal (made again after one): counted from zero.
        r = d.take([a: 1, b: 4])
        #expect(r.drops == [a: 1])
    }

    @Test func interfaceDropsCountOnlyThisNamespace() {
        var acc = Accounting()
        let drops = [
            DropSample(key: Self.key(reason: 12, netns: 7), reason: "NETFILTER_DROP", packets: 4),
            DropSample(key: Self.key(reason: 12, netns: 7, sport: 40001), reason: "NETFILTER_DROP", packets: 1),
            DropSample(key: Self.key(reason: 12, netns: 9), reason: "NETFILTER_DROP", packets: 100),
            DropSample(key: Self.key(reason: 64, netns: 7, direction: .transmit), reason: "QDISC_DROP", packets: 2),
            DropSample(key: Self.key(reason: 3, ifindex: 0, netns: 0), reason: "NO_SOCKET", packets: 50),
        ]
        acc.count(drops: drops, names: [2: "eth0"], ownNetns: 7, now: 1)
        #expect(acc.interfaceDrops == ["eth0": [.receive: ["NETFILTER_DROP": 5], .transmit: ["QDISC_DROP": 2]]])
        let byFlow = Accounting.dropsByFlow(drops, ownNetns: 7)
        #expect(byFlow[Self.key(reason: 12).flow] == ["NETFILTER_DROP": 4])
        #expect(byFlow.count == 3)
    }

    @Test func dropsAreNamedToTheSocketOfTheirTuple() {
        typealias T = ServiceAggregatorTests
        var a = ServiceAggregator(resolver: T.resolver, limits: T.limits())
        a.apply([T.ev(.open, id: 1, ts: 10), T.ev(.open, id: 2, ts: 11, serverEnd: true)], cgroupPath: { _ in nil })
        // Received by the server (10.0.0.1:40000 -> 10.0.0.2:5432): the server's pair.
        let toServer = Self.key(reason: 12)
        // The same packet seen leaving the client's interface: the client's pair.
        let fromClient = Self.key(reason: 64, direction: .transmit)
        // A packet no socket is tied to.
        var stray = Self.key(reason: 3, sport: 9)
        stray.flow.destinationPort = 9
        a.apply(
            drops: [
                DropSample(key: toServer, reason: "NETFILTER_DROP", packets: 3),
                DropSample(key: fromClient, reason: "QDISC_DROP", packets: 2),
                DropSample(key: stray, reason: "NO_SOCKET", packets: 7),
            ], now: 20)
        #expect(a.pairs[T.sc]?.drops == ["NETFILTER_DROP": 3])
        #expect(a.pairs[T.cs]?.drops == ["QDISC_DROP": 2])
        #expect(!a.pairs.values.contains { $0.drops["NO_SOCKET"] != nil })
    }

    @Test func aDropToANodesOtherSocketFindsTheSender() {
        // Only the client's socket exists (its server is elsewhere): a drop of
        // its packet on the receiving side still belongs to it.
        typealias T = ServiceAggregatorTests
        var a = ServiceAggregator(resolver: T.resolver, limits: T.limits())
        a.apply([T.ev(.open, id: 1, ts: 10)], cgroupPath: { _ in nil })
        a.apply(drops: [DropSample(key: Self.key(reason: 3), reason: "NO_SOCKET", packets: 4)], now: 20)
        #expect(a.pairs[T.cs]?.drops == ["NO_SOCKET": 4])
    }
}
