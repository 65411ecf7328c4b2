import FlowmeterABI
import FlowmeterCore
import Foundation
import Testing

@testable import FlowmeterBPF

/// The ring mappings with their second data copy zapped (RingMapping): the
/// records that wrap past the end of the ring still read whole, and the
/// mapping's resident size is the ring once plus the wrap window.
@Suite(.privileged, .serialized) struct RingMappingTests {
    /// Every record our programs put into a ring, with its 8-byte header,
    /// fits in the window of the second copy that stays mapped.
    @Test func everyRecordFitsTheWrapWindow() {
        for size in [
            MemoryLayout<fm_flow_event>.size, MemoryLayout<fm_sock_event>.size, MemoryLayout<fm_dns_event>.size,
        ] {
            #expect(size + 8 <= RingMapping.wrapWindow)
        }
    }

    /// Resident KiB of the mapping [start, end) in /proc/self/smaps.
    func residentKiB(_ r: RingMapping.Range) -> Int? {
        guard let text = readProcFile("/proc/self/smaps") else { return nil }
        let head = String(r.start, radix: 16) + "-" + String(r.end, radix: 16) + " "
        var inside = false
        for line in text.split(separator: "\n") {
            if line.first?.isHexDigit == true && line.contains("-") && line.split(separator: " ").count >= 5 {
                inside = line.hasPrefix(head)
            } else if inside, line.hasPrefix("Rss:") {
                return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1])
            }
        }
        return nil
    }

    /// A 32 KiB flows ring, lapped eleven times by 104-byte records (96 and
    /// the header, which do not divide the ring, so records straddle its
    /// end): every record is read, exact, and none lost; the mapping holds
    /// 4 KiB + 32 KiB + the window, not 4 KiB + 64 KiB.
    @Test func wrappedRecordsReadWholeFromTheTrimmedMapping() throws {
        let ringBytes = 32 * 1024
        let prog = try FlowAccountingProgram(flowTableSize: 1, ringBytes: ringBytes)
        let before = Set(RingMapping.readOnlyRingMappings())
        let ring = try FlowsRing(ringFD: prog.flowsRingFD)
        let mine = RingMapping.readOnlyRingMappings().filter { !before.contains($0) }
        try #require(mine.count == 1)
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        #expect(Int(mine[0].end - mine[0].start) == page + 2 * ringBytes)
        #expect(residentKiB(mine[0]) == (page + ringBytes + RingMapping.wrapWindow) / 1024)

        var sentBytes: UInt64 = 0, sent = 0
        var received: [FlowRecord] = []
        // 250 records (26 KB) between drains, so the ring never fills.
        for round in 0..<14 {
            for i in 0..<250 {
                let p = PacketBuilder().ipv4(
                    src: v4a, dst: v4b, l4: .udp(sport: UInt16(1000 + (round * 250 + i) % 60000), dport: 53), payload: i % 7)
                sentBytes += UInt64(p.count - 14)
                sent += 1
                _ = try prog.testRun(.ingress, packet: p, ifindex: 1)
            }
            ring.consumeNow()
            let batch = ring.take()
            #expect(batch.rejected == 0)
            received += batch.records
        }
        let inMap = try prog.drainAll()
        #expect(try prog.readCounters().flowsRingLost == 0)
        #expect(received.count + inMap.reduce(0) { $0 + Int($1.stats.packets) } == sent)
        #expect((received + inMap).reduce(0) { $0 + $1.stats.bytes } == sentBytes)
        // Lapped: more than ten times the ring's size went through it.
        #expect(received.count * (ABI.flowEventSize + 8) > 10 * ringBytes)
    }
}
