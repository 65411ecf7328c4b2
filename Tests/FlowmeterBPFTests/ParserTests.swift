import FlowmeterBPF
import FlowmeterCore
import Foundation
import Testing

/// Crafted packets through the real tc program (BPF_PROG_TEST_RUN), each
/// checked against hand-computed expectations and against the reference parser.
@Suite(.privileged, .serialized) struct ParserTests {
    struct Expect {
        var family: Family
        var proto: UInt8 = 0
        var sport: UInt16 = 0
        var dport: UInt16 = 0
        var flags: FlowKeyFlags = []
        var packets: UInt64 = 1
        var bytes: UInt64
        var tcpFlags: UInt8 = 0
        var src: IPAddress16? = nil
    }

    static let lo: UInt32 = 1

    /// Runs one packet through `program` and returns the one flow it produced.
    func runOne(_ packet: [UInt8], gso: UInt32 = 0, program: FlowAccountingProgram.Program = .ingress) throws -> FlowRecord {
        let prog = try FlowAccountingProgram(flowTableSize: 64)
        let (verdict, _) = try prog.testRun(program, packet: packet, ifindex: Self.lo, gsoSegs: gso)
        #expect(verdict == -1, "programs must return TC_ACT_UNSPEC / TCX_NEXT")
        let flows = try prog.drainAll()
        #expect(flows.count == 1)
        return try #require(flows.first)
    }

    func check(
        _ name: String, _ packet: [UInt8], gso: UInt32 = 0, _ e: Expect,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let r = try runOne(packet, gso: gso)
        let k = r.key
        #expect(k.family == e.family, "\(name): family", sourceLocation: sourceLocation)
        #expect(k.ipProtocol == e.proto, "\(name): protocol", sourceLocation: sourceLocation)
        #expect(
            k.sourcePort == e.sport && k.destinationPort == e.dport, "\(name): ports \(k.sourcePort) \(k.destinationPort)",
            sourceLocation: sourceLocation)
        #expect(k.flags == e.flags, "\(name): flags \(k.flags.rawValue)", sourceLocation: sourceLocation)
        #expect(r.stats.packets == e.packets, "\(name): packets", sourceLocation: sourceLocation)
        #expect(r.stats.bytes == e.bytes, "\(name): bytes \(r.stats.bytes)", sourceLocation: sourceLocation)
        #expect(r.stats.tcpFlags == e.tcpFlags, "\(name): tcp flags", sourceLocation: sourceLocation)
        #expect(k.direction == .receive && k.ifindex == Self.lo, sourceLocation: sourceLocation)
        if let src = e.src { #expect(k.source == src, "\(name): source", sourceLocation: sourceLocation) }
        if k.family == .other { #expect(k.source == .zero && k.destination == .zero, sourceLocation: sourceLocation) }
        // The reference parser must agree with the kernel on every crafted packet too.
        let ref = ReferenceParser.parse(packet, direction: .receive, ifindex: Self.lo, gsoSegs: gso)
        #expect(
            ref.key == k && ref.bytes == r.stats.bytes && ref.packets == r.stats.packets && ref.tcpFlags == r.stats.tcpFlags,
            "\(name): reference parser disagrees: \(ref)", sourceLocation: sourceLocation)
    }

    @Test func ipv4TCP() throws {
        let p = PacketBuilder().ipv4(src: v4a, dst: v4b, l4: .tcp(sport: 40000, dport: 443, flags: 0x18), payload: 100)
        try check(
            "ipv4 tcp", p,
            Expect(
                family: .ipv4, proto: 6, sport: 40000, dport: 443, bytes: 140, tcpFlags: 0x18,
                src: .v4(10, 0, 0, 1)))
    }

    @Test func vlanAndDoubleVlan() throws {
        let one = PacketBuilder(vlanTags: [0x8100]).ipv4(src: v4a, dst: v4b, l4: .udp(sport: 53, dport: 5353), payload: 20)
        try check("802.1Q", one, Expect(family: .ipv4, proto: 17, sport: 53, dport: 5353, bytes: 48))
        let two = PacketBuilder(vlanTags: [0x88A8, 0x8100]).ipv6(src: v6a, dst: v6b, l4: .udp(sport: 1, dport: 2), payload: 7)
        try check("802.1ad + 802.1Q", two, Expect(family: .ipv6, proto: 17, sport: 1, dport: 2, bytes: 55))
        // A third tag is beyond what we unwrap: counted as a non-IP frame of type 0x8100.
        let three = PacketBuilder(vlanTags: [0x88A8, 0x8100, 0x8100]).ipv4(src: v4a, dst: v4b, l4: .udp(sport: 1, dport: 2), payload: 0)
        try check("three tags", three, Expect(family: .other, dport: 0x8100, bytes: UInt64(three.count - 14 - 8)))
    }

    @Test func ipv4WithOptions() throws {
        let p = PacketBuilder().ipv4(
            src: v4a, dst: v4b, l4: .tcp(sport: 1234, dport: 80, flags: 0x02), payload: 0,
            options: [UInt8](repeating: 1, count: 12))
        try check("ipv4 ihl=8", p, Expect(family: .ipv4, proto: 6, sport: 1234, dport: 80, bytes: 32 + 20, tcpFlags: 0x02))
    }

    @Test func ipv6ExtensionHeaders() throws {
        let p = PacketBuilder().ipv6(
            src: v6a, dst: v6b, l4: .tcp(sport: 5, dport: 6, flags: 0x10, optionWords: 3),
            payload: 10, ext: [.hopByHop(words: 0), .routing(words: 2), .destOpts(words: 1)])
        try check(
            "ipv6 hbh+rt+dst", p,
            Expect(
                family: .ipv6, proto: 6, sport: 5, dport: 6,
                bytes: 40 + 8 + 24 + 16 + 32 + 10, tcpFlags: 0x10))
    }

    @Test func fragments() throws {
        let b = PacketBuilder()
        let first4 = b.ipv4(src: v4a, dst: v4b, l4: .udp(sport: 7, dport: 8), payload: 64, moreFragments: true)
        try check("ipv4 first fragment", first4, Expect(family: .ipv4, proto: 17, sport: 7, dport: 8, bytes: 20 + 8 + 64))
        let later4 = b.ipv4(src: v4a, dst: v4b, l4: .udp(sport: 7, dport: 8), payload: 64, fragOffset: 9, l4HeaderPresent: false)
        try check("ipv4 later fragment", later4, Expect(family: .ipv4, proto: 17, flags: .fragment, bytes: 20 + 64))
        let first6 = b.ipv6(src: v6a, dst: v6b, l4: .udp(sport: 7, dport: 8), payload: 16, ext: [.fragment(offset: 0, more: true)])
        try check("ipv6 first fragment", first6, Expect(family: .ipv6, proto: 17, sport: 7, dport: 8, bytes: 40 + 8 + 8 + 16))
        let later6 = b.ipv6(
            src: v6a, dst: v6b, l4: .udp(sport: 7, dport: 8), payload: 16,
            ext: [.hopByHop(words: 0), .fragment(offset: 100, more: false)], l4HeaderPresent: false)
        try check("ipv6 later fragment", later6, Expect(family: .ipv6, proto: 17, flags: .fragment, bytes: 40 + 8 + 8 + 16))
    }

    @Test func icmpAndICMPv6() throws {
        let b = PacketBuilder()
        try check(
            "icmp echo", b.ipv4(src: v4a, dst: v4b, l4: .icmp(type: 8, code: 0), payload: 56),
            Expect(family: .ipv4, proto: 1, dport: 0x0800, bytes: 84))
        try check(
            "icmpv6 echo", b.ipv6(src: v6a, dst: v6b, l4: .icmp(type: 128, code: 0), payload: 56),
            Expect(family: .ipv6, proto: 58, dport: 0x8000, bytes: 104))
        // ICMP's protocol number inside IPv6 is not ICMPv6: no type/code.
        try check(
            "proto 1 in ipv6", b.ipv6(src: v6a, dst: v6b, l4: .raw(proto: 1), payload: 8),
            Expect(family: .ipv6, proto: 1, bytes: 48))
    }

    @Test func truncatedAndMalformed() throws {
        let b = PacketBuilder()
        // TCP header cut to 10 bytes (IP total length says so too): L4 truncated, ports 0.
        var cut = b.ipv4(src: v4a, dst: v4b, l4: .tcp(sport: 1, dport: 2, flags: 2), payload: 0)
        cut.removeLast(10)
        var p = Packet(bytes: cut); p.setU16(at: 16, 30)
        try check("tcp truncated", p.bytes, Expect(family: .ipv4, proto: 6, flags: .l4Truncated, bytes: 30))
        // TCP data offset below 5 words.
        var doff = b.ipv4(src: v4a, dst: v4b, l4: .tcp(sport: 1, dport: 2, flags: 2), payload: 4)
        doff[14 + 20 + 12] = 0x30
        try check("tcp doff 3", doff, Expect(family: .ipv4, proto: 6, flags: .l4Truncated, bytes: 44))
        // IPv4 / IPv6 header cut short. BPF_PROG_TEST_RUN refuses such frames when
        // the outer ethertype is IP (EINVAL), so they travel behind a VLAN tag,
        // which reaches the same parser path.
        let tagged = PacketBuilder(vlanTags: [0x8100])
        let shortIP = Array(tagged.ipv4(src: v4a, dst: v4b, l4: .udp(sport: 1, dport: 2), payload: 0).prefix(18 + 12))
        try check("ipv4 header cut", shortIP, Expect(family: .other, dport: 0x0800, flags: .malformed, bytes: 12))
        let shortIP6 = Array(tagged.ipv6(src: v6a, dst: v6b, l4: .udp(sport: 1, dport: 2), payload: 0).prefix(18 + 39))
        try check("ipv6 header cut", shortIP6, Expect(family: .other, dport: 0x86DD, flags: .malformed, bytes: 39))
        // Total length larger than the packet.
        var long = Packet(bytes: b.ipv4(src: v4a, dst: v4b, l4: .udp(sport: 1, dport: 2), payload: 10))
        long.setU16(at: 16, 1400)
        try check("ipv4 total length too big", long.bytes, Expect(family: .other, dport: 0x0800, flags: .malformed, bytes: 38))
        // Version 5 in an IPv4 ethertype; IHL below 5.
        var v5 = b.ipv4(src: v4a, dst: v4b, l4: .udp(sport: 1, dport: 2), payload: 10); v5[14] = 0x55
        try check("bad version", v5, Expect(family: .other, dport: 0x0800, flags: .malformed, bytes: 38))
        var ihl = b.ipv4(src: v4a, dst: v4b, l4: .udp(sport: 1, dport: 2), payload: 10); ihl[14] = 0x44
        try check("ihl 4", ihl, Expect(family: .other, dport: 0x0800, flags: .malformed, bytes: 38))
        // IPv6 payload length beyond the packet; extension header cut short.
        var v6 = Packet(bytes: b.ipv6(src: v6a, dst: v6b, l4: .udp(sport: 1, dport: 2), payload: 10)); v6.setU16(at: 18, 999)
        try check("ipv6 payload too big", v6.bytes, Expect(family: .other, dport: 0x86DD, flags: .malformed, bytes: 58))
        var ext = Packet(
            bytes: b.ipv6(
                src: v6a, dst: v6b, l4: .udp(sport: 1, dport: 2), payload: 0, ext: [.routing(words: 0)],
                l4HeaderPresent: false))
        ext.bytes.removeLast(4); ext.setU16(at: 18, 4)
        try check("ipv6 ext cut", ext.bytes, Expect(family: .ipv6, proto: 43, flags: .l4Truncated, bytes: 44))
        // A VLAN tag that is cut off.
        let vlanCut = Array(PacketBuilder(vlanTags: [0x8100]).ethernet(0x0800).bytes.prefix(16))
        try check("vlan cut", vlanCut, Expect(family: .other, dport: 0x8100, flags: .malformed, bytes: 2))
    }

    @Test func nonIP() throws {
        var arp = PacketBuilder().ethernet(0x0806)
        arp.raw([UInt8](repeating: 0, count: 28))
        try check("arp", arp.bytes, Expect(family: .other, dport: 0x0806, bytes: 28))
    }

    @Test func gsoSuperPackets() throws {
        // A TSO super-packet of 10 segments, 14480 payload bytes, TCP timestamps (12 option bytes):
        // each wire packet repeats the 20 + 32 header bytes.
        let tso = PacketBuilder().ipv4(src: v4a, dst: v4b, l4: .tcp(sport: 1, dport: 2, flags: 0x10, optionWords: 3), payload: 1448)
        try check(
            "tso ipv4", tso, gso: 10,
            Expect(
                family: .ipv4, proto: 6, sport: 1, dport: 2, packets: 10,
                bytes: UInt64(20 + 32 + 1448) + 9 * 52, tcpFlags: 0x10))
        let usoV6 = PacketBuilder().ipv6(src: v6a, dst: v6b, l4: .udp(sport: 3, dport: 4), payload: 1200)
        try check(
            "uso ipv6", usoV6, gso: 4,
            Expect(
                family: .ipv6, proto: 17, sport: 3, dport: 4, packets: 4,
                bytes: UInt64(40 + 8 + 1200) + 3 * 48))
    }

    @Test func egressCountsAsTransmit() throws {
        let prog = try FlowAccountingProgram(flowTableSize: 64)
        let p = PacketBuilder().ipv4(src: v4a, dst: v4b, l4: .udp(sport: 1, dport: 2), payload: 0)
        _ = try prog.testRun(.egress, packet: p, ifindex: Self.lo)
        _ = try prog.testRun(.egress, packet: p, ifindex: Self.lo)
        _ = try prog.testRun(.ingress, packet: p, ifindex: Self.lo)
        let flows = try prog.drainAll()
        #expect(flows.count == 2)
        #expect(flows.first { $0.key.direction == .transmit }?.stats.packets == 2)
        #expect(flows.first { $0.key.direction == .receive }?.stats.packets == 1)
    }
}

/// What happens when the flow table is full, and across evictions.
@Suite(.privileged, .serialized) struct FlowTableTests {
    @Test func fullTableSendsPacketsThroughTheRing() throws {
        let size = 8
        let prog = try FlowAccountingProgram(flowTableSize: size)
        let ring = try FlowsRing(ringFD: prog.flowsRingFD)
        var sentBytes: UInt64 = 0
        for round in 0..<3 {
            for flow in 0..<20 {
                let p = PacketBuilder().ipv4(src: v4a, dst: v4b, l4: .udp(sport: UInt16(1000 + flow), dport: 53), payload: round)
                sentBytes += UInt64(p.count - 14)
                _ = try prog.testRun(.ingress, packet: p, ifindex: 1)
            }
        }
        let inMap = try prog.drainAll()
        ring.consumeNow()
        let viaRing = ring.take()
        let counters = try prog.readCounters()
        #expect(inMap.count == size)
        #expect(inMap.allSatisfy { $0.stats.packets == 3 })
        #expect(viaRing.records.count == (20 - size) * 3)
        #expect(viaRing.records.allSatisfy { $0.source == .flowsRing && $0.stats.packets == 1 })
        #expect(viaRing.rejected == 0)
        #expect(counters.flowInsertFailures == UInt64((20 - size) * 3))
        #expect(counters.flowsRingLost == 0)
        let all = inMap + viaRing.records
        #expect(all.reduce(0) { $0 + $1.stats.packets } == 60)
        #expect(all.reduce(0) { $0 + $1.stats.bytes } == sentBytes)
    }

    /// A reader at its hard limit stops draining: the records wait in the
    /// kernel ring, none is lost or dropped, and each `take` lets the next
    /// limit's worth in (RingLimits; docs/reliability.md, "Memory").
    @Test func aReaderAtItsLimitLeavesRecordsInTheKernelRing() throws {
        let prog = try FlowAccountingProgram(flowTableSize: 1)
        let reader = try RingReader<FlowRecord>(
            ringFD: prog.flowsRingFD, name: "limit-test", softLimit: 4, hardLimit: 10,
            decode: ABI.decodeFlowEvent)
        reader.start()
        defer { reader.stop() }
        var sentBytes: UInt64 = 0
        for flow in 0..<30 {
            let p = PacketBuilder().ipv4(src: v4a, dst: v4b, l4: .udp(sport: UInt16(2000 + flow), dport: 53), payload: flow)
            sentBytes += UInt64(p.count - 14)
            _ = try prog.testRun(.ingress, packet: p, ifindex: 1)
        }
        // 29 records in the ring (the table took one flow). The thread drains
        // within its 100 ms poll, up to the limit, and then waits.
        func settle() -> [FlowRecord] {
            let deadline = ContinuousClock.now + .seconds(3)
            while !reader.backlogged && ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.02) }
            Thread.sleep(forTimeInterval: 0.3)
            return reader.take().records
        }
        let first = settle()
        #expect(first.count == 10)
        #expect(reader.stallCount >= 1)
        let second = settle()
        #expect(second.count == 10)
        // The last 9: past the soft limit, under the hard one.
        let third = settle()
        #expect(third.count == 9)
        let viaRing = first + second + third
        let inMap = try prog.drainAll()
        #expect(try prog.readCounters().flowsRingLost == 0)
        #expect(Set(viaRing.map(\.key.sourcePort)).count == 29)
        #expect((viaRing + inMap).reduce(0) { $0 + $1.stats.bytes } == sentBytes)
    }

    /// A SYN is inserted without a lookup first (bpf/flowmeter_tc.bpf.c): a
    /// retransmitted SYN, and a SYN-ACK on the same key, find the flow there
    /// and are added to it; in a full table a SYN of a flow it holds is still
    /// added, and a SYN of a new flow goes through the ring, counted.
    @Test func synsOfKnownFlowsAddAndNewOnesInAFullTableGoThroughTheRing() throws {
        let size = 4
        let prog = try FlowAccountingProgram(flowTableSize: size)
        let ring = try FlowsRing(ringFD: prog.flowsRingFD)
        func packet(_ sport: UInt16, _ flags: UInt8, _ payload: Int) -> [UInt8] {
            PacketBuilder().ipv4(src: v4a, dst: v4b, l4: .tcp(sport: sport, dport: 443, flags: flags), payload: payload)
        }
        // Flow 1000: SYN, the SYN again, a SYN-ACK, an ACK.
        var bytes1000: UInt64 = 0
        for (flags, payload) in [(UInt8(0x02), 0), (0x02, 0), (0x12, 0), (0x10, 7)] {
            let p = packet(1000, flags, payload)
            bytes1000 += UInt64(p.count - 14)
            _ = try prog.testRun(.ingress, packet: p, ifindex: 1)
        }
        // Fill the table with ACK-led flows, then SYNs: of flow 1000 (in the
        // table) and of flow 2000 (not: no room).
        for sport in 1001..<UInt16(1000 + size) { _ = try prog.testRun(.ingress, packet: packet(sport, 0x10, 1), ifindex: 1) }
        let syn1000 = packet(1000, 0x02, 0), syn2000 = packet(2000, 0x02, 0)
        bytes1000 += UInt64(syn1000.count - 14)
        _ = try prog.testRun(.ingress, packet: syn1000, ifindex: 1)
        _ = try prog.testRun(.ingress, packet: syn2000, ifindex: 1)

        let inMap = try prog.drainAll()
        ring.consumeNow()
        let viaRing = ring.take()
        let counters = try prog.readCounters()
        #expect(inMap.count == size)
        let flow1000 = try #require(inMap.first { $0.key.sourcePort == 1000 })
        #expect(flow1000.stats.packets == 5)
        #expect(flow1000.stats.bytes == bytes1000)
        #expect(flow1000.stats.tcpFlags == 0x12)
        #expect(viaRing.records.count == 1)
        #expect(viaRing.records.first?.key.sourcePort == 2000)
        #expect(viaRing.records.first?.stats.bytes == UInt64(syn2000.count - 14))
        #expect(viaRing.records.first?.stats.tcpFlags == 0x02)
        #expect(counters.flowInsertFailures == 1)
        #expect(counters.flowsRingLost == 0)
    }

    @Test func evictionsAreExactAndSwapTables() throws {
        let prog = try FlowAccountingProgram(flowTableSize: 1024)
        let p = PacketBuilder().ipv6(src: v6a, dst: v6b, l4: .tcp(sport: 9, dport: 10, flags: 0x10), payload: 3)
        var total: UInt64 = 0
        for n in [5, 0, 7, 1] {
            for _ in 0..<n { _ = try prog.testRun(.egress, packet: p, ifindex: 1) }
            let flows = try prog.evict()
            #expect(flows.count == (n == 0 ? 0 : 1))
            #expect(flows.first?.stats.packets ?? 0 == UInt64(n))
            total += flows.first?.stats.packets ?? 0
        }
        #expect(total == 13)
        #expect(try prog.drainAll().isEmpty)
        #expect(prog.batchOps == true)
    }
}
