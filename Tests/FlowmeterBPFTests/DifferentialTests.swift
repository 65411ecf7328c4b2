import FlowmeterBPF
import FlowmeterCore
import FlowmeterTestSupport
import Foundation
import Testing

/// 10,000+ random and mutated packets through the real tc program, compared
/// flow by flow with the Swift reference parser.
@Suite(.privileged) struct DifferentialTests {
    /// Builds a plausible packet from small pools (so flows repeat and
    /// accumulate), then sometimes damages it.
    static func randomPacket(_ g: inout SeededRandom) -> (bytes: [UInt8], gso: UInt32) {
        var b = PacketBuilder()
        switch Int.random(in: 0..<10, using: &g) {
        case 0: b.vlanTags = [0x8100]
        case 1: b.vlanTags = [0x88A8, 0x8100]
        case 2 where Bool.random(using: &g): b.vlanTags = [0x8100, 0x8100, 0x8100]
        default: break
        }
        let sport = [UInt16(80), 443, 53, 40000, 51000][Int.random(in: 0..<5, using: &g)]
        let dport = [UInt16(80), 443, 53, 8080][Int.random(in: 0..<4, using: &g)]
        let l4: L4 =
            switch Int.random(in: 0..<6, using: &g) {
            case 0, 1:
                .tcp(sport: sport, dport: dport, flags: UInt8.random(in: 0...255, using: &g), optionWords: Int.random(in: 0...3, using: &g))
            case 2, 3: .udp(sport: sport, dport: dport)
            case 4: .icmp(type: [0, 3, 8, 11, 128, 129][Int.random(in: 0..<6, using: &g)], code: UInt8.random(in: 0...3, using: &g))
            default: .raw(proto: [0, 47, 50, 132, 253][Int.random(in: 0..<5, using: &g)])
            }
        let payload = Int.random(in: 0...300, using: &g)
        var bytes: [UInt8]
        switch Int.random(in: 0..<10, using: &g) {
        case 0..<5:
            let opts = Bool.random(using: &g) ? [] : [UInt8](repeating: 1, count: 4 * Int.random(in: 1...10, using: &g))
            let frag = Int.random(in: 0..<8, using: &g)
            bytes = b.ipv4(
                src: [v4a, v4b][Int.random(in: 0..<2, using: &g)], dst: v4b, l4: l4, payload: payload, options: opts,
                fragOffset: frag == 0 ? UInt16.random(in: 1...200, using: &g) : 0, moreFragments: frag == 1,
                l4HeaderPresent: frag != 0)
        case 5..<9:
            var ext: [PacketBuilder.Ext] = []
            for _ in 0..<Int.random(in: 0...3, using: &g) {
                switch Int.random(in: 0..<4, using: &g) {
                case 0: ext.append(.hopByHop(words: Int.random(in: 0...2, using: &g)))
                case 1: ext.append(.routing(words: Int.random(in: 0...2, using: &g)))
                case 2: ext.append(.destOpts(words: Int.random(in: 0...2, using: &g)))
                default:
                    ext.append(
                        .fragment(offset: Bool.random(using: &g) ? 0 : UInt16.random(in: 1...100, using: &g), more: Bool.random(using: &g)))
                }
            }
            bytes = b.ipv6(src: [v6a, v6b][Int.random(in: 0..<2, using: &g)], dst: v6a, l4: l4, payload: payload, ext: ext)
        default:
            var p = b.ethernet([0x0806, 0x88CC, 0x8847, 0x0800, 0x86DD][Int.random(in: 0..<5, using: &g)])
            p.raw((0..<Int.random(in: 0...80, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) })
            bytes = p.bytes
        }
        // Mutations: flip bytes, cut, or extend with trailing garbage (padding).
        switch Int.random(in: 0..<10, using: &g) {
        case 0, 1:
            for _ in 0..<Int.random(in: 1...4, using: &g) {
                let i = Int.random(in: 12..<bytes.count, using: &g)
                bytes[i] = UInt8.random(in: 0...255, using: &g)
            }
        case 2:
            bytes = Array(bytes.prefix(Int.random(in: 14...bytes.count, using: &g)))
        case 3:
            bytes += (0..<Int.random(in: 1...40, using: &g)).map { _ in UInt8.random(in: 0...255, using: &g) }
        default: break
        }
        let gso: UInt32 = Int.random(in: 0..<10, using: &g) == 0 ? UInt32.random(in: 2...45, using: &g) : 0
        return (bytes, gso)
    }

    @Test func kernelMatchesReferenceOnRandomPackets() throws {
        let count = 12_000
        var g = SeededRandom(seed: 0xF10E_2026)
        let prog = try FlowAccountingProgram(flowTableSize: 65536)
        var expected: [FlowKey: ReferenceParser.Result] = [:]
        var refused = 0
        for _ in 0..<count {
            let (bytes, gso) = Self.randomPacket(&g)
            let dir: Direction = Bool.random(using: &g) ? .receive : .transmit
            // BPF_PROG_TEST_RUN itself refuses a frame whose ethertype is IPv4 or
            // IPv6 but which is shorter than that IP header (EINVAL before our
            // program runs). Exactly those are left out; the parser tests reach
            // the same truncation paths behind a VLAN tag.
            let ethertype = Int(bytes[12]) << 8 | Int(bytes[13])
            let testRunRefuses = (ethertype == 0x0800 && bytes.count < 34) || (ethertype == 0x86DD && bytes.count < 54)
            let verdict: Int32
            do {
                verdict = try prog.testRun(dir == .receive ? .ingress : .egress, packet: bytes, ifindex: 1, gsoSegs: gso).verdict
            } catch let e as BPFError where e.errno == EINVAL && testRunRefuses {
                refused += 1
                continue
            }
            #expect(!testRunRefuses, "test run accepted a frame it was expected to refuse")
            #expect(verdict == -1)
            let r = ReferenceParser.parse(bytes, direction: dir, ifindex: 1, gsoSegs: gso)
            if var e = expected[r.key] {
                e.packets += r.packets; e.bytes += r.bytes; e.tcpFlags |= r.tcpFlags
                expected[r.key] = e
            } else {
                expected[r.key] = r
            }
        }
        #expect(count - refused >= 10_000, "only \(count - refused) packets ran (\(refused) refused by test run)")
        let flows = try prog.drainAll()
        let counters = try prog.readCounters()
        #expect(counters.flowInsertFailures == 0)
        var kernel: [FlowKey: FlowStats] = [:]
        for f in flows { kernel[f.key, default: .zero].merge(f.stats) }
        #expect(kernel.count == expected.count, "flows: kernel \(kernel.count), reference \(expected.count)")
        var mismatches: [String] = []
        for (k, e) in expected {
            guard let s = kernel[k] else { mismatches.append("missing in kernel: \(k) \(e)"); continue }
            if s.packets != e.packets || s.bytes != e.bytes || s.tcpFlags != e.tcpFlags {
                mismatches.append("\(k): kernel \(s.packets)p \(s.bytes)B \(s.tcpFlags), reference \(e.packets)p \(e.bytes)B \(e.tcpFlags)")
            }
        }
        for k in kernel.keys where expected[k] == nil { mismatches.append("only in kernel: \(k) \(kernel[k]!)") }
        #expect(mismatches.isEmpty, "\(mismatches.count) mismatches, first: \(mismatches.prefix(5).joined(separator: "\n"))")
        #expect(kernel.values.reduce(0) { $0 + $1.packets } >= UInt64(count))
        // The generator must reach the interesting paths, or the comparison proves little.
        let keys = Array(expected.keys)
        #expect(keys.contains { $0.flags.contains(.malformed) })
        #expect(keys.contains { $0.flags.contains(.fragment) && $0.family == .ipv6 })
        #expect(keys.contains { $0.flags.contains(.fragment) && $0.family == .ipv4 })
        #expect(keys.contains { $0.flags.contains(.l4Truncated) })
        #expect(keys.contains { $0.family == .other && !$0.flags.contains(.malformed) })
        #expect(keys.contains { $0.family == .ipv6 && $0.ipProtocol == 6 && $0.sourcePort != 0 })
    }
}
