import FlowmeterABI
import FlowmeterBPF
import FlowmeterCore
import Foundation
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
        0x01, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00,  // version 1, kind 1, cpu 2
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1,  // saddr ::ffff:10.0.0.1
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2,  // daddr ::ffff:10.0.0.2
        0x07, 0x00, 0x00, 0x00,  // ifindex 7
        0xbb, 0x01, 0x38, 0xc7,  // sport 443, dport 51000
        0x01, 0x04, 0x06, 0x00,  // transmit, ipv4, tcp, flags 0
        0x00, 0x00, 0x00, 0x00,  // pad
        0x03, 0, 0, 0, 0, 0, 0, 0,  // packets 3
        0x94, 0x11, 0, 0, 0, 0, 0, 0,  // bytes 4500
        0x00, 0xe4, 0x0b, 0x54, 0x02, 0, 0, 0,  // first 10_000_000_000 ns
        0x00, 0xf2, 0x05, 0x2a, 0x01, 0, 0, 0,  // last ... see below
        0x12, 0, 0, 0, 0, 0, 0, 0,  // SYN|ACK, pad
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
        withUnsafeMutableBytes(of: &k.saddr) {
            $0[10] = 0xff; $0[11] = 0xff; $0[12] = 10; $0[15] = 1
        }
        withUnsafeMutableBytes(of: &k.daddr) {
            $0[10] = 0xff; $0[11] = 0xff; $0[12] = 10; $0[15] = 2
        }
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

/// The socket-telemetry records, as Swift imports them.
@Suite struct SocketABITests {
    @Test func sizesAndOffsets() {
        #expect(MemoryLayout<fm_owner>.size == 32)
        #expect(MemoryLayout<fm_sock_state>.size == 80)
        #expect(MemoryLayout<fm_sock_state>.offset(of: \.udp_bytes_sent) == 40)
        #expect(MemoryLayout<fm_sock_state>.offset(of: \.sport) == 72)
        #expect(MemoryLayout<fm_sock_state>.offset(of: \.opened) == 76)
        #expect(MemoryLayout<fm_listener_key>.size == 8)
        #expect(MemoryLayout<fm_sock_event>.size == 136)
        #expect(MemoryLayout<fm_sock_event>.offset(of: \.sock_id) == 8)
        #expect(MemoryLayout<fm_sock_event>.offset(of: \.owner) == 32)
        #expect(MemoryLayout<fm_sock_event>.offset(of: \.saddr) == 64)
        #expect(MemoryLayout<fm_sock_event>.offset(of: \.sport) == 96)
        #expect(MemoryLayout<fm_sock_event>.offset(of: \.srtt_us) == 100)
        #expect(MemoryLayout<fm_sock_event>.offset(of: \.bytes_sent) == 104)
        #expect(MemoryLayout<fm_sock_event>.offset(of: \.retransmits) == 120)
        #expect(MemoryLayout<fm_sock_event>.offset(of: \.err) == 132)
        #expect(ABI.sockEventSize == 136)
    }

    /// The DNS program's key and record (bpf/flowmeter_dns.bpf.c), as Swift imports them.
    @Test func dnsSizesAndOffsets() {
        #expect(MemoryLayout<fm_dns_key>.size == 40)
        #expect(MemoryLayout<fm_dns_key>.offset(of: \.cport) == 32)
        #expect(MemoryLayout<fm_dns_key>.offset(of: \.txid) == 36)
        #expect(MemoryLayout<fm_dns_key>.offset(of: \.protocol) == 38)
        #expect(MemoryLayout<fm_dns_event>.size == 592)
        #expect(MemoryLayout<fm_dns_event>.offset(of: \.key) == 8)
        #expect(MemoryLayout<fm_dns_event>.offset(of: \.qdcount) == 48)
        #expect(MemoryLayout<fm_dns_event>.offset(of: \.copied) == 54)
        #expect(MemoryLayout<fm_dns_event>.offset(of: \.ts_ns) == 56)
        #expect(MemoryLayout<fm_dns_event>.offset(of: \.cgroup_id) == 72)
        #expect(MemoryLayout<fm_dns_event>.offset(of: \.payload) == 80)
    }

    /// The drop program's key (bpf/flowmeter_drops.bpf.c), as Swift imports it.
    @Test func dropKeySizesAndOffsets() {
        #expect(MemoryLayout<fm_drop_key>.size == 56)
        #expect(MemoryLayout<fm_drop_key>.offset(of: \.daddr) == 16)
        #expect(MemoryLayout<fm_drop_key>.offset(of: \.reason) == 32)
        #expect(MemoryLayout<fm_drop_key>.offset(of: \.ifindex) == 36)
        #expect(MemoryLayout<fm_drop_key>.offset(of: \.netns) == 40)
        #expect(MemoryLayout<fm_drop_key>.offset(of: \.sport) == 44)
        #expect(MemoryLayout<fm_drop_key>.offset(of: \.direction) == 48)
        #expect(MemoryLayout<fm_drop_key>.offset(of: \.protocol) == 50)
        #expect(FM_DROP_REASON_NONE == DropReasonNames.none)
    }

    /// A close record written byte by byte (little-endian): client socket of
    /// pid 4242 "curl" in cgroup 77, 10.0.0.1:40000 -> 10.0.0.2:443, 1500 bytes
    /// sent, 9000 received, srtt 250 us, 2 retransmits, 1 reset received.
    static func goldenClose() -> [UInt8] {
        func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
        var b: [UInt8] = []
        b += le(1, 2) + le(2, 2) + [1, 4, 6, 0]  // version, kind close, client, ipv4, tcp, reason
        b += le(0xffff_8880_1234_5678, 8)  // sock_id
        b += le(5_000_000_000, 8) + le(4_000_000_000, 8)  // ts, start
        b += le(77, 8) + le(4242, 4) + le(4243, 4)  // owner: cgroup, tgid, pid
        b += Array("curl".utf8) + [UInt8](repeating: 0, count: 12)  // comm
        b += [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1]
        b += [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 2]
        b += le(40000, 2) + le(443, 2) + le(250, 4)  // ports, srtt
        b += le(1500, 8) + le(9000, 8)  // bytes
        b += le(2, 4) + le(0, 4) + le(1, 4) + le(104, 4)  // retrans, resets sent/received, err
        return b
    }

    @Test func goldenCloseDecodes() throws {
        let bytes = Self.goldenClose()
        #expect(bytes.count == 136)
        let e = try #require(bytes.withUnsafeBytes { ABI.decodeSocketEvent($0) })
        #expect(e.kind == .close && e.role == .client && e.family == .ipv4 && e.ipProtocol == 6)
        #expect(e.socketID == 0xffff_8880_1234_5678)
        #expect(e.owner == SocketOwner(tgid: 4242, pid: 4243, name: "curl", cgroupID: 77))
        #expect(e.localAddress.description == "10.0.0.1" && e.remoteAddress.description == "10.0.0.2")
        #expect(e.localPort == 40000 && e.remotePort == 443 && e.srttMicros == 250)
        #expect(e.bytesSent == 1500 && e.bytesReceived == 9000)
        #expect(e.retransmits == 2 && e.resetsSent == 0 && e.resetsReceived == 1 && e.error == 104)
        #expect(e.startNanos == 4_000_000_000 && e.timestampNanos == 5_000_000_000)
    }

    @Test func unknownOwnerAndBadRecords() {
        var b = Self.goldenClose()
        for i in 32..<64 { b[i] = 0 }  // an all-zero owner: the socket predates flowmeterd
        #expect(b.withUnsafeBytes { ABI.decodeSocketEvent($0) }?.owner == nil)
        var v = Self.goldenClose(); v[0] = 9
        #expect(v.withUnsafeBytes { ABI.decodeSocketEvent($0) } == nil)
        var k = Self.goldenClose(); k[2] = 99
        #expect(k.withUnsafeBytes { ABI.decodeSocketEvent($0) } == nil)
        #expect(Array(Self.goldenClose().prefix(100)).withUnsafeBytes { ABI.decodeSocketEvent($0) } == nil)
    }
}

@Suite struct CgroupPathTests {
    @Test func findsTheCgroup2Mount() {
        let mounts = """
            proc /proc proc rw 0 0
            cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0
            cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0
            """
        #expect(CgroupPaths.cgroup2Mount(in: mounts) == "/sys/fs/cgroup/unified")
        #expect(CgroupPaths.cgroup2Mount(in: "cgroup2 /sys/fs/my\\040cg cgroup2 rw 0 0") == "/sys/fs/my cg")
        #expect(CgroupPaths.cgroup2Mount(in: "proc /proc proc rw 0 0") == nil)
        #expect(CgroupPaths(mounts: "proc /proc proc rw 0 0").path(of: 1) == nil)
    }

    @Test(.privileged) func resolvesTheIDsOfRealCgroups() throws {
        let paths = CgroupPaths()
        let root = try #require(paths.root)
        let rel = "/fm-unit-\(getpid())"
        #expect(mkdir(root + rel, 0o755) == 0)
        defer { rmdir(root + rel) }
        var st = stat()
        #expect(stat(root + rel, &st) == 0)
        #expect(paths.path(of: UInt64(st.st_ino)) == rel)
        #expect(paths.path(of: 0) == nil)
    }
}
