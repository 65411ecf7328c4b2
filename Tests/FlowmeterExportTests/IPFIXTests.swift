import FlowmeterCore
import FlowmeterExport
import Testing

// A small, independent IPFIX decoder: header, sets, template records, and data
// records read by the templates it has seen (kept across messages, as a
// collector does).
private struct Decoded {
    var version: UInt16 = 0
    var length: UInt16 = 0
    var exportTime: UInt32 = 0
    var sequence: UInt32 = 0
    var domain: UInt32 = 0
    /// (set id, set length) in message order.
    var sets: [(id: UInt16, length: Int)] = []
    /// Templates defined in this message, in order.
    var templates: [(id: UInt16, fields: [[UInt16]])] = []
    /// Data records: template id and the raw bytes of each element by element id.
    var records: [(template: UInt16, fields: [UInt16: [UInt8]])] = []
}

private enum DecodeError: Error { case short, badSet, unknownTemplate(UInt16), trailing }

private struct Reader {
    let b: [UInt8]
    var i: Int
    mutating func bytes(_ n: Int) throws -> [UInt8] {
        guard i + n <= b.count else { throw DecodeError.short }
        defer { i += n }
        return Array(b[i..<(i + n)])
    }
    mutating func u16() throws -> UInt16 { UInt16(try uint(bytes(2))) }
    mutating func u32() throws -> UInt32 { UInt32(try uint(bytes(4))) }
}

private func uint(_ b: [UInt8]) -> UInt64 { b.reduce(0) { $0 << 8 | UInt64($1) } }

private func decode(_ msg: [UInt8], templates: inout [UInt16: [[UInt16]]]) throws -> Decoded {
    var r = Reader(b: msg, i: 0)
    var d = Decoded()
    d.version = try r.u16()
    d.length = try r.u16()
    d.exportTime = try r.u32()
    d.sequence = try r.u32()
    d.domain = try r.u32()
    while r.i < msg.count {
        let setStart = r.i
        let id = try r.u16()
        let len = Int(try r.u16())
        guard len >= 4, setStart + len <= msg.count else { throw DecodeError.badSet }
        d.sets.append((id, len))
        let end = setStart + len
        if id == 2 {
            while end - r.i >= 4 {
                let tid = try r.u16()
                let count = Int(try r.u16())
                var fields: [[UInt16]] = []
                for _ in 0..<count { fields.append([try r.u16(), try r.u16()]) }
                templates[tid] = fields
                d.templates.append((tid, fields))
            }
        } else if id >= 256 {
            guard let t = templates[id] else { throw DecodeError.unknownTemplate(id) }
            let recLen = t.reduce(0) { $0 + Int($1[1]) }
            while end - r.i >= recLen {
                var fields: [UInt16: [UInt8]] = [:]
                for f in t { fields[f[0]] = try r.bytes(Int(f[1])) }
                d.records.append((id, fields))
            }
        }
        guard r.i <= end else { throw DecodeError.badSet }
        r.i = end  // skip padding
    }
    guard r.i == msg.count else { throw DecodeError.trailing }
    return d
}

private func decodeAll(_ msgs: [[UInt8]], templates: inout [UInt16: [[UInt16]]]) throws -> [Decoded] {
    try msgs.map { try decode($0, templates: &templates) }
}

/// Element ids of the fields in the task's table.
private enum E {
    static let octets: UInt16 = 1, packets: UInt16 = 2, proto: UInt16 = 4, tcpBits: UInt16 = 6
    static let srcPort: UInt16 = 7, srcV4: UInt16 = 8, ingress: UInt16 = 10, dstPort: UInt16 = 11
    static let dstV4: UInt16 = 12, egress: UInt16 = 14, srcV6: UInt16 = 27, dstV6: UInt16 = 28
    static let direction: UInt16 = 61, start: UInt16 = 152, end: UInt16 = 153
}

private let expectedV4Template: [[UInt16]] = [
    [8, 4], [12, 4], [7, 2], [11, 2], [4, 1], [6, 2], [1, 8], [2, 8],
    [152, 8], [153, 8], [10, 4], [14, 4], [61, 1],
]
private let expectedV6Template: [[UInt16]] = [
    [27, 16], [28, 16], [7, 2], [11, 2], [4, 1], [6, 2], [1, 8], [2, 8],
    [152, 8], [153, 8], [10, 4], [14, 4], [61, 1],
]

// Wall = 1_700_000_000.123456789 s when monotonic = 5 s.
private let clock = ClockMapping(realtimeNanos: 1_700_000_000_123_456_789, monotonicNanos: 5_000_000_000)

private func flow(
    _ family: Family, src: IPAddress16, dst: IPAddress16, sport: UInt16 = 0, dport: UInt16 = 0,
    proto: UInt8 = 6, ifindex: UInt32 = 2, dir: Direction = .receive, packets: UInt64 = 1,
    bytes: UInt64 = 60, first: UInt64 = 5_000_000_000, last: UInt64 = 5_000_000_000,
    tcp: UInt8 = 0
) -> FlowRecord {
    FlowRecord(
        key: FlowKey(
            source: src, destination: dst, ifindex: ifindex, sourcePort: sport,
            destinationPort: dport, direction: dir, family: family, ipProtocol: proto, flags: []),
        stats: FlowStats(
            packets: packets, bytes: bytes, firstSeenNanos: first, lastSeenNanos: last,
            tcpFlags: tcp),
        source: .flowMap)
}

private func v4Flow(_ n: Int) -> FlowRecord {
    flow(
        .ipv4, src: .v4(10, 0, UInt8(n >> 8), UInt8(n & 0xFF)), dst: .v4(192, 168, 1, 1),
        sport: UInt16(1000 + n), dport: 443, packets: UInt64(n + 1), bytes: UInt64(100 * (n + 1)))
}

private func v6Flow(_ n: Int) -> FlowRecord {
    flow(
        .ipv6, src: IPAddress16(hi: 0x2001_0db8_0000_0000, lo: UInt64(n)), dst: IPAddress16(hi: 0x2001_0db8_0000_0001, lo: 1),
        sport: 53, dport: UInt16(2000 + n), proto: 17, dir: .transmit, packets: UInt64(n + 7), bytes: UInt64(n * 3))
}

private let nonIP = flow(.other, src: .zero, dst: .zero, dport: 0x0806, proto: 0)

private func hasTemplates(_ d: Decoded) -> Bool { d.sets.first?.id == 2 }

@Suite struct IPFIXTests {
    @Test func headerFields() throws {
        var enc = IPFIXEncoder(observationDomain: 0xDEAD_BEEF)
        let msgs = enc.messages(for: [v4Flow(1)], exportTimeSeconds: 1_700_000_042, clock: clock)
        #expect(msgs.count == 1)
        var t: [UInt16: [[UInt16]]] = [:]
        let d = try decode(msgs[0], templates: &t)
        #expect(d.version == 10)
        #expect(Int(d.length) == msgs[0].count)
        #expect(d.length == 16 + 116 + 4 + 56)
        #expect(d.exportTime == 1_700_000_042)
        #expect(d.sequence == 0)
        #expect(d.domain == 0xDEAD_BEEF)
        #expect(
            Array(msgs[0][0..<16]) == [
                0x00, 0x0A, 0x00, 0xC0, 0x65, 0x53, 0xF1, 0x2A,
                0, 0, 0, 0, 0xDE, 0xAD, 0xBE, 0xEF,
            ])
        // Template set first, then one data set; lengths add up, all aligned.
        #expect(d.sets.map(\.id) == [2, 256])
        #expect(d.sets.map(\.length) == [116, 60])
        #expect(d.sets.allSatisfy { $0.length % 4 == 0 })
        #expect(enc.sequenceNumber == 1)
        #expect(enc.recordsEncoded == 1)
    }

    @Test func templatesExact() throws {
        var enc = IPFIXEncoder(observationDomain: 1)
        let msgs = enc.messages(for: [v4Flow(1)], exportTimeSeconds: 100, clock: clock)
        var t: [UInt16: [[UInt16]]] = [:]
        let d = try decode(msgs[0], templates: &t)
        #expect(d.templates.map(\.id) == [256, 257])
        #expect(d.templates[0].fields == expectedV4Template)
        #expect(d.templates[1].fields == expectedV6Template)
        #expect(IPFIXEncoder.ipv4Fields.map { [$0.elementID, $0.length] } == expectedV4Template)
        #expect(IPFIXEncoder.ipv6Fields.map { [$0.elementID, $0.length] } == expectedV6Template)
        #expect(IPFIXEncoder.ipv4RecordBytes == 56)
        #expect(IPFIXEncoder.ipv6RecordBytes == 80)
    }

    @Test func templateRefreshTiming() throws {
        var enc = IPFIXEncoder(observationDomain: 1, templateRefreshSeconds: 60)
        var t: [UInt16: [[UInt16]]] = [:]
        func call(_ time: UInt32, _ flows: [FlowRecord] = [v4Flow(1), v6Flow(1)]) throws -> [Decoded] {
            try decodeAll(enc.messages(for: flows, exportTimeSeconds: time, clock: clock), templates: &t)
        }
        let first = try call(1000)
        #expect(first.map(hasTemplates) == [true])
        #expect(enc.templatesSentAt == 1000)
        #expect(try call(1001).map(hasTemplates) == [false])
        #expect(try call(1059).map(hasTemplates) == [false])
        let refreshed = try call(1060)
        #expect(refreshed.map(hasTemplates) == [true])
        #expect(refreshed[0].sets.map(\.id) == [2, 256, 257])
        #expect(enc.templatesSentAt == 1060)
        #expect(try call(1061).map(hasTemplates) == [false])
        enc.forceTemplates()
        #expect(try call(1062).map(hasTemplates) == [true])
        #expect(try call(1063).map(hasTemplates) == [false])
        // Export clock stepped backwards: resend rather than wait ~136 years.
        #expect(try call(500).map(hasTemplates) == [true])
        #expect(try call(501).map(hasTemplates) == [false])
    }

    @Test func templatesOnlyInFirstMessageOfACall() throws {
        var enc = IPFIXEncoder(observationDomain: 1)
        var t: [UInt16: [[UInt16]]] = [:]
        let ds = try decodeAll(
            enc.messages(for: (0..<100).map(v4Flow), exportTimeSeconds: 10, clock: clock),
            templates: &t)
        #expect(ds.count > 1)
        #expect(ds.map(hasTemplates) == [true] + Array(repeating: false, count: ds.count - 1))
    }

    @Test func refreshZeroSendsTemplatesEveryCall() throws {
        var enc = IPFIXEncoder(observationDomain: 1, templateRefreshSeconds: 0)
        var t: [UInt16: [[UInt16]]] = [:]
        for time: UInt32 in [5, 5, 6] {
            let ds = try decodeAll(enc.messages(for: [v4Flow(0)], exportTimeSeconds: time, clock: clock), templates: &t)
            #expect(ds.map(hasTemplates) == [true])
        }
    }

    @Test func ipv4RecordRoundTrip() throws {
        // TCP, received on ifindex 7; first seen 1.5 s and last seen 3.25 s after the mapping point.
        let f = flow(
            .ipv4, src: .v4(10, 1, 2, 3), dst: .v4(203, 0, 113, 250), sport: 51234, dport: 443, proto: 6,
            ifindex: 7, dir: .receive, packets: 0x1_0000_0001, bytes: 0x0123_4567_89AB_CDEF,
            first: 6_500_000_000, last: 8_250_999_999, tcp: 0x1B)
        var enc = IPFIXEncoder(observationDomain: 9)
        var t: [UInt16: [[UInt16]]] = [:]
        let d = try decode(enc.messages(for: [f], exportTimeSeconds: 1, clock: clock)[0], templates: &t)
        #expect(d.records.count == 1)
        let r = d.records[0]
        #expect(r.template == 256)
        #expect(r.fields[E.srcV4] == [10, 1, 2, 3])
        #expect(r.fields[E.dstV4] == [203, 0, 113, 250])
        #expect(r.fields[E.srcPort] == [0xC8, 0x22])
        #expect(r.fields[E.dstPort] == [0x01, 0xBB])
        #expect(r.fields[E.proto] == [6])
        #expect(r.fields[E.tcpBits] == [0x00, 0x1B])
        #expect(r.fields[E.octets] == [0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF])
        #expect(uint(r.fields[E.packets]!) == 0x1_0000_0001)
        // 1_700_000_000.123456789 + 1.5 = ...001.623456789 -> 1_700_000_001_623 ms
        #expect(uint(r.fields[E.start]!) == 1_700_000_001_623)
        // + 3.250999999 = ...003.374456788 -> 1_700_000_003_374 ms
        #expect(uint(r.fields[E.end]!) == 1_700_000_003_374)
        #expect(uint(r.fields[E.ingress]!) == 7)
        #expect(uint(r.fields[E.egress]!) == 0)
        #expect(r.fields[E.direction] == [0])
        #expect(r.fields.count == 13)
    }

    @Test func ipv6RecordRoundTrip() throws {
        let src = IPAddress16(bytes: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef])
        let dst = IPAddress16(bytes: [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x02, 0x11, 0x22, 0xff, 0xfe, 0x33, 0x44, 0x55])
        // UDP with stray flag bits in the stats: tcpControlBits must still be 0.
        let f = flow(
            .ipv6, src: src, dst: dst, sport: 5353, dport: 53, proto: 17, ifindex: 0x0102_0304,
            dir: .transmit, packets: 12, bytes: 3456, first: 5_000_000_000, last: 65_000_000_000, tcp: 0x12)
        var enc = IPFIXEncoder(observationDomain: 9)
        var t: [UInt16: [[UInt16]]] = [:]
        let d = try decode(enc.messages(for: [f], exportTimeSeconds: 1, clock: clock)[0], templates: &t)
        #expect(d.sets.map(\.id) == [2, 257])
        #expect(d.sets.map(\.length) == [116, 84])
        #expect(d.records.count == 1)
        let r = d.records[0]
        #expect(r.template == 257)
        #expect(r.fields[E.srcV6] == src.bytes)
        #expect(r.fields[E.srcV6] == [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef])
        #expect(r.fields[E.dstV6] == [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x02, 0x11, 0x22, 0xff, 0xfe, 0x33, 0x44, 0x55])
        #expect(uint(r.fields[E.srcPort]!) == 5353)
        #expect(uint(r.fields[E.dstPort]!) == 53)
        #expect(r.fields[E.proto] == [17])
        #expect(r.fields[E.tcpBits] == [0, 0])
        #expect(uint(r.fields[E.octets]!) == 3456)
        #expect(uint(r.fields[E.packets]!) == 12)
        #expect(uint(r.fields[E.start]!) == 1_700_000_000_123)
        #expect(uint(r.fields[E.end]!) == 1_700_000_060_123)
        #expect(uint(r.fields[E.ingress]!) == 0)
        #expect(r.fields[E.egress] == [0x01, 0x02, 0x03, 0x04])
        #expect(r.fields[E.direction] == [1])
        #expect(r.fields.count == 13)
    }

    @Test func icmpTypeCodeInDestinationPort() throws {
        // Echo request (type 8, code 0) and port unreachable (3, 3), as the key stores them.
        let echo = flow(.ipv4, src: .v4(10, 0, 0, 1), dst: .v4(10, 0, 0, 2), sport: 0, dport: 8 << 8, proto: 1)
        let unreach = flow(
            .ipv6, src: IPAddress16(hi: 1, lo: 2), dst: IPAddress16(hi: 3, lo: 4), sport: 0,
            dport: 3 << 8 | 3, proto: 58, tcp: 0x02)
        var enc = IPFIXEncoder(observationDomain: 9)
        var t: [UInt16: [[UInt16]]] = [:]
        let d = try decode(enc.messages(for: [echo, unreach], exportTimeSeconds: 1, clock: clock)[0], templates: &t)
        #expect(d.records.map(\.template) == [256, 257])
        #expect(d.records[0].fields[E.dstPort] == [0x08, 0x00])
        #expect(d.records[0].fields[E.srcPort] == [0, 0])
        #expect(d.records[0].fields[E.proto] == [1])
        #expect(d.records[1].fields[E.dstPort] == [0x03, 0x03])
        #expect(d.records[1].fields[E.proto] == [58])
        #expect(d.records[1].fields[E.tcpBits] == [0, 0])
    }

    @Test func wallClockBeforeEpochIsZero() throws {
        let early = ClockMapping(realtimeNanos: 1_000_000, monotonicNanos: 5_000_000_000)
        var enc = IPFIXEncoder(observationDomain: 9)
        var t: [UInt16: [[UInt16]]] = [:]
        let f = flow(.ipv4, src: .v4(1, 1, 1, 1), dst: .v4(2, 2, 2, 2), first: 1_000_000_000, last: 5_002_999_999)
        let r = try decode(enc.messages(for: [f], exportTimeSeconds: 1, clock: early)[0], templates: &t).records[0]
        #expect(uint(r.fields[E.start]!) == 0)
        #expect(uint(r.fields[E.end]!) == 3)
    }

    @Test func fiveHundredV4FlowsSplitExactly() throws {
        var enc = IPFIXEncoder(observationDomain: 3, maxMessageBytes: 1400)
        let flows = (0..<500).map(v4Flow)
        let msgs = enc.messages(for: flows, exportTimeSeconds: 77, clock: clock)
        var t: [UInt16: [[UInt16]]] = [:]
        let ds = try decodeAll(msgs, templates: &t)
        // First message: (1400 - 16 - 116 - 4) / 56 = 22 records; then (1400 - 16 - 4) / 56 = 24.
        #expect(ds.map(\.records.count) == [22] + Array(repeating: 24, count: 19) + [22])
        #expect(
            msgs.map(\.count) == [16 + 116 + 4 + 22 * 56] + Array(repeating: 16 + 4 + 24 * 56, count: 19)
                + [16 + 4 + 22 * 56])
        #expect(msgs.allSatisfy { $0.count <= 1400 })
        var expectedSeq: UInt32 = 0
        for d in ds {
            #expect(d.sequence == expectedSeq)
            #expect(d.exportTime == 77)
            #expect(d.domain == 3)
            expectedSeq += UInt32(d.records.count)
        }
        #expect(enc.recordsEncoded == 500)
        #expect(enc.sequenceNumber == 500)
        #expect(enc.messagesEncoded == 21)
        // Every flow comes back, in order.
        let srcPorts = ds.flatMap(\.records).map { UInt16(uint($0.fields[E.srcPort]!)) }
        let expectedPorts: [UInt16] = (0..<500).map { (i: Int) -> UInt16 in UInt16(1000 + i) }
        #expect(srcPorts == expectedPorts)
        let octets = ds.flatMap(\.records).map { uint($0.fields[E.octets]!) }
        let expectedOctets: [UInt64] = (0..<500).map { (i: Int) -> UInt64 in UInt64(100 * (i + 1)) }
        #expect(octets == expectedOctets)
    }

    @Test func fiveHundredMixedFlowsStayUnderLimit() throws {
        var enc = IPFIXEncoder(observationDomain: 3, maxMessageBytes: 1400)
        // Interleaved input; the encoder writes IPv4 first, then IPv6, each in input order.
        let flows = (0..<500).map { $0 % 2 == 0 ? v4Flow($0) : v6Flow($0) }
        let msgs = enc.messages(for: flows, exportTimeSeconds: 77, clock: clock)
        var t: [UInt16: [[UInt16]]] = [:]
        let ds = try decodeAll(msgs, templates: &t)
        #expect(msgs.count > 1)
        #expect(msgs.allSatisfy { $0.count <= 1400 })
        for (m, d) in zip(msgs, ds) {
            #expect(Int(d.length) == m.count)
            #expect(d.sets.reduce(16) { $0 + $1.length } == m.count)
            #expect(d.sets.allSatisfy { $0.length % 4 == 0 })
            // Full: whatever was pending (an IPv4 record, or an IPv6 set with one record) did not fit.
            #expect(m.count + 4 + 80 > 1400 || m == msgs.last!)
        }
        let all = ds.flatMap(\.records)
        #expect(all.count == 500)
        #expect(all.map(\.template) == Array(repeating: 256, count: 250) + Array(repeating: 257, count: 250))
        let v4Ports = all.prefix(250).map { uint($0.fields[E.srcPort]!) }
        let expectedV4Ports: [UInt64] = stride(from: 0, to: 500, by: 2).map { (i: Int) -> UInt64 in UInt64(1000 + i) }
        #expect(v4Ports == expectedV4Ports)
        let v6Ports = all.suffix(250).map { uint($0.fields[E.dstPort]!) }
        let expectedV6Ports: [UInt64] = stride(from: 1, to: 500, by: 2).map { (i: Int) -> UInt64 in UInt64(2000 + i) }
        #expect(v6Ports == expectedV6Ports)
        let v6Src = all.suffix(250).map { $0.fields[E.srcV6]! }
        let expectedV6Src: [[UInt8]] = stride(from: 1, to: 500, by: 2).map { (i: Int) -> [UInt8] in
            IPAddress16(hi: 0x2001_0db8_0000_0000, lo: UInt64(i)).bytes
        }
        #expect(v6Src == expectedV6Src)
        var expectedSeq: UInt32 = 0
        for d in ds {
            #expect(d.sequence == expectedSeq)
            expectedSeq += UInt32(d.records.count)
        }
        #expect(expectedSeq == 500)
    }

    @Test func sequenceContinuesAcrossCalls() throws {
        var enc = IPFIXEncoder(observationDomain: 4, maxMessageBytes: 300)
        var t: [UInt16: [[UInt16]]] = [:]
        var expectedSeq: UInt32 = 0
        for (call, n) in [3, 0, 10, 1, 7].enumerated() {
            let flows = (0..<n).map(v4Flow) + [nonIP]
            let ds = try decodeAll(enc.messages(for: flows, exportTimeSeconds: UInt32(call), clock: clock), templates: &t)
            for d in ds {
                #expect(d.sequence == expectedSeq)
                expectedSeq += UInt32(d.records.count)
            }
            #expect(enc.sequenceNumber == expectedSeq)
        }
        #expect(expectedSeq == 21)
        #expect(enc.recordsEncoded == 21)
        #expect(enc.skippedNonIP == 5)
    }

    @Test func nonIPFlowsAreLeftOutAndCounted() throws {
        var enc = IPFIXEncoder(observationDomain: 5)
        var t: [UInt16: [[UInt16]]] = [:]
        // Only non-IP: nothing to send, and the templates stay pending.
        #expect(enc.messages(for: [nonIP, nonIP], exportTimeSeconds: 10, clock: clock).isEmpty)
        #expect(enc.skippedNonIP == 2)
        #expect(enc.recordsEncoded == 0)
        #expect(enc.templatesSentAt == nil)
        let ds = try decodeAll(
            enc.messages(
                for: [nonIP, v4Flow(1), nonIP, v6Flow(2), nonIP],
                exportTimeSeconds: 11, clock: clock), templates: &t)
        #expect(ds.count == 1)
        #expect(hasTemplates(ds[0]))
        #expect(ds[0].records.map(\.template) == [256, 257])
        #expect(enc.skippedNonIP == 5)
        #expect(enc.recordsEncoded == 2)
        #expect(enc.sequenceNumber == 2)
        #expect(enc.messages(for: [], exportTimeSeconds: 12, clock: clock).isEmpty)
    }

    @Test func tinyLimitIsRaisedToOneRecordWithTemplates() throws {
        var enc = IPFIXEncoder(observationDomain: 6, maxMessageBytes: 100)
        #expect(IPFIXEncoder.minimumMessageBytes == 16 + 116 + 4 + 80)
        #expect(enc.maxMessageBytes == 216)
        #expect(IPFIXEncoder(observationDomain: 6, maxMessageBytes: 100_000).maxMessageBytes == 65535)
        var t: [UInt16: [[UInt16]]] = [:]
        let msgs = enc.messages(for: [v6Flow(1), v6Flow(2), v6Flow(3)], exportTimeSeconds: 1, clock: clock)
        let ds = try decodeAll(msgs, templates: &t)
        #expect(msgs.map(\.count) == [216, 16 + 4 + 2 * 80])
        #expect(ds.map(\.records.count) == [1, 2])
        #expect(ds.map(\.sequence) == [0, 1])
    }
}
