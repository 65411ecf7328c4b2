import FlowmeterABI
import FlowmeterBPF
import FlowmeterCore
import Testing

/// The layout pinned in abi_asserts.c, checked again as Swift imports it.
@Suite struct ABITests {
    @Test func sizes() {
        #expect(MemoryLayout<fm_flow_key>.size == 44)
        #expect(MemoryLayout<fm_flow_stats>.size == 40)
        #expect(MemoryLayout<fm_flow_event>.size == 96)
        #expect(ABI.flowEventSize == Int(fm_abi_flow_event_size))
    }

    @Test func offsets() {
        #expect(MemoryLayout<fm_flow_key>.offset(of: \.saddr) == 0)
        #expect(MemoryLayout<fm_flow_key>.offset(of: \.daddr) == 16)
        #expect(MemoryLayout<fm_flow_key>.offset(of: \.ifindex) == 32)
        #expect(MemoryLayout<fm_flow_key>.offset(of: \.sport) == 36)
        #expect(MemoryLayout<fm_flow_key>.offset(of: \.dport) == 38)
        #expect(MemoryLayout<fm_flow_key>.offset(of: \.direction) == 40)
        #expect(MemoryLayout<fm_flow_key>.offset(of: \.family) == 41)
        #expect(MemoryLayout<fm_flow_key>.offset(of: \.protocol) == 42)
        #expect(MemoryLayout<fm_flow_key>.offset(of: \.flags) == 43)
        #expect(MemoryLayout<fm_flow_stats>.offset(of: \.packets) == 0)
        #expect(MemoryLayout<fm_flow_stats>.offset(of: \.bytes) == 8)
        #expect(MemoryLayout<fm_flow_stats>.offset(of: \.first_seen_ns) == 16)
        #expect(MemoryLayout<fm_flow_stats>.offset(of: \.last_seen_ns) == 24)
        #expect(MemoryLayout<fm_flow_stats>.offset(of: \.tcp_flags) == 32)
        #expect(MemoryLayout<fm_flow_event>.offset(of: \.version) == 0)
        #expect(MemoryLayout<fm_flow_event>.offset(of: \.kind) == 2)
        #expect(MemoryLayout<fm_flow_event>.offset(of: \.cpu) == 4)
        #expect(MemoryLayout<fm_flow_event>.offset(of: \.key) == 8)
        #expect(MemoryLayout<fm_flow_event>.offset(of: \.stats) == 56)
    }

    /// A ring record written byte by byte as the kernel lays it out (x86-64,
    /// little-endian): TCP 10.0.0.1:443 -> 10.0.0.2:51000 on ifindex 7,
    /// transmit, 3 packets, 4500 bytes, SYN|ACK.
    static let goldenEvent: [UInt8] = [
        0x01, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00,                         // version 1, kind 1, cpu 2
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1,                  // saddr ::ffff:10.0.0.1
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2,                  // daddr ::ffff:10.0.0.2
        0x07, 0x00, 0x00, 0x00,                                                 // ifindex 7
        0xbb, 0x01, 0x38, 0xc7,                                                 // sport 443, dport 51000
        0x01, 0x04, 0x06, 0x00,                                                 // transmit, ipv4, tcp, flags 0
        0x00, 0x00, 0x00, 0x00,                                                 // pad
        0x03, 0, 0, 0, 0, 0, 0, 0,                                              // packets 3
        0x94, 0x11, 0, 0, 0, 0, 0, 0,                                           // bytes 4500
        0x00, 0xe4, 0x0b, 0x54, 0x02, 0, 0, 0,                                  // first 10_000_000_000 ns
        0x00, 0xf2, 0x05, 0x2a, 0x01, 0, 0, 0,                                  // last ... see below
        0x12, 0, 0, 0, 0, 0, 0, 0,                                              // SYN|ACK, pad
    ]

    @Test func goldenBytesDecode() throws {
        #expect(Self.goldenEvent.count == 96)
        let r = try #require(Self.goldenEvent.withUnsafeBytes { ABI.decodeFlowEvent($0) })
        #expect(r.source == .flowsRing)
        #expect(r.key.source == IPAddress16.v4(10, 0, 0, 1))
        #expect(r.key.destination == IPAddress16.v4(10, 0, 0, 2))
        #expect(r.key.source.description == "10.0.0.1")
        #expect(r.key.ifindex == 7)
        #expect(r.key.sourcePort == 443 && r.key.destinationPort == 51000)
        #expect(r.key.direction == .transmit && r.key.family == .ipv4 && r.key.ipProtocol == 6)
        #expect(r.key.flags == [])
        #expect(r.stats.packets == 3 && r.stats.bytes == 4500)
        #expect(r.stats.firstSeenNanos == 10_000_000_000)
        #expect(r.stats.lastSeenNanos == 0x01_2a05_f200)
        #expect(r.stats.tcpFlags == 0x12)
    }

    @Test func rejectsOtherVersionsAndShortRecords() {
        var other = Self.goldenEvent
        other[0] = 2
        #expect(other.withUnsafeBytes { ABI.decodeFlowEvent($0) } == nil)
        #expect(Array(Self.goldenEvent.prefix(95)).withUnsafeBytes { ABI.decodeFlowEvent($0) } == nil)
    }

    /// Swift's view of a C key built field by field has the golden byte layout.
    @Test func keyEncodesToGoldenBytes() {
        var k = fm_flow_key()
        k.ifindex = 7; k.sport = 443; k.dport = 51000; k.direction = 1; k.family = 4; k.protocol = 6
        withUnsafeMutableBytes(of: &k.saddr) { $0[10] = 0xff; $0[11] = 0xff; $0[12] = 10; $0[15] = 1 }
        withUnsafeMutableBytes(of: &k.daddr) { $0[10] = 0xff; $0[11] = 0xff; $0[12] = 10; $0[15] = 2 }
        let bytes = withUnsafeBytes(of: k) { Array($0) }
        #expect(bytes == Array(Self.goldenEvent[8..<52]))
    }
}

@Suite struct FlowTableSizingTests {
    @Test func defaultSizeStaysUnderTheMemoryBudget() {
        #expect(FlowAccountingProgram.defaultFlowTableSize(cpus: 2) == 65536)
        #expect(FlowAccountingProgram.defaultFlowTableSize(cpus: 8) == 65536)
        for cpus in [16, 32, 64, 128, 256] {
            let size = FlowAccountingProgram.defaultFlowTableSize(cpus: cpus)
            #expect(size < 65536 && size >= 4096 && size & (size - 1) == 0, "\(cpus) CPUs: \(size)")
            #expect(FlowAccountingProgram.tableMemoryBytes(size: size, cpus: cpus) <= 64 << 20 || size == 4096)
        }
        #expect(FlowAccountingProgram.defaultFlowTableSize(cpus: 1024) == 4096)
    }
}
