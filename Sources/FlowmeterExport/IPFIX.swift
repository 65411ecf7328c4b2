// IPFIX (RFC 7011) message builder for flow records. Pure: it turns flows into
// the bytes of IPFIX Messages and keeps the exporter state that belongs to
// the byte stream (sequence number, when templates were last sent). The UDP
// sender owns the socket and hands each returned message to one datagram.
//
// What follows RFC 7011 (and the element definitions of RFC 7012 / the IANA
// "IPFIX Information Elements" registry):
//
// - §3.1 Message Header (16 bytes, network byte order):
//     version (10) | length | export time (s) | sequence number | observation domain id
//   The sequence number is the count, modulo 2^32, of Data Records sent in this
//   Observation Domain *before* this message; a message with templates only
//   (we never send one) would not advance it.
// - §3.3 Sets: set id (2 = Template Set, >= 256 = Data Set for that template)
//   and set length, which includes the 4-byte set header and any padding.
//   §3.3.1 lets an exporter pad a set to a 4-byte boundary. Every record here
//   is fixed length and a multiple of 4 (template records 56 bytes, IPv4 data
//   records 56, IPv6 data records 80), so sets are always aligned and no
//   padding is ever written; the code pads only if a layout change broke that.
// - §3.4.1 Template Records: template id, field count, then (element id,
//   length) pairs. Only IANA elements are used, so no enterprise bit/number.
// - §8.4 / §10.3.6 Transport over UDP. UDP is what plain IPFIX collectors
//   accept without session setup, but it is unreliable and has no session: a
//   collector that starts (or restarts, or misses a datagram) after our
//   templates went out cannot decode data until it sees them again. So the
//   templates are resent periodically: in the first message ever, in the first
//   message of a `messages(for:…)` call once `templateRefreshSeconds` have
//   passed since they were last sent (also when the export clock went
//   backwards), and on demand via `forceTemplates()` (e.g. a new collector
//   address). Over UDP, templates are never withdrawn (§8.4), only refreshed.
//   Each message must fit one datagram without IP fragmentation, hence
//   `maxMessageBytes` (default 1400: a 1500-byte MTU minus IPv6 and UDP headers
//   with room to spare).
//
// Templates (256: IPv4 flows, 257: IPv6 flows), fields in this order:
//
//   element                    id  len  value
//   sourceIPv4Address           8    4  key.source (v4-mapped: last 4 bytes)    [256]
//   sourceIPv6Address          27   16  key.source                              [257]
//   destinationIPv4Address     12    4  key.destination                         [256]
//   destinationIPv6Address     28   16  key.destination                         [257]
//   sourceTransportPort         7    2  key.sourcePort
//   destinationTransportPort   11    2  key.destinationPort (ICMP: type<<8|code, as the key has it)
//   protocolIdentifier          4    1  key.ipProtocol
//   tcpControlBits              6    2  stats.tcpFlags (OR over the flow) for TCP, else 0
//   octetDeltaCount             1    8  stats.bytes (L3 bytes in the interval)
//   packetDeltaCount            2    8  stats.packets
//   flowStartMilliseconds     152    8  wall clock ms of stats.firstSeenNanos (via ClockMapping)
//   flowEndMilliseconds       153    8  wall clock ms of stats.lastSeenNanos
//   ingressInterface           10    4  key.ifindex when direction is receive, else 0
//   egressInterface            14    4  key.ifindex when direction is transmit, else 0
//   flowDirection              61    1  0 = ingress (receive), 1 = egress (transmit)
//
// Flows of family `.other` (not IP) have no addresses to report; they are
// skipped and counted in `skippedNonIP`. Within one call, IPv4 flows are
// written before IPv6 flows (each in input order), so a message holds at most
// one Data Set per template.
import FlowmeterCore

/// One field of an IPFIX template: an IANA information element and its length.
public struct IPFIXField: Sendable, Hashable {
    public let elementID: UInt16
    public let length: UInt16
    public let name: String
    public init(_ name: String, _ elementID: UInt16, _ length: UInt16) {
        self.name = name; self.elementID = elementID; self.length = length
    }
}

/// Builds RFC 7011 IPFIX messages from flow records (see the top of this file).
public struct IPFIXEncoder: Sendable {
    public static let version: UInt16 = 10
    public static let templateSetID: UInt16 = 2
    public static let ipv4TemplateID: UInt16 = 256
    public static let ipv6TemplateID: UInt16 = 257
    public static let headerBytes = 16
    public static let setHeaderBytes = 4

    /// The IPv4 template's fields, in record order.
    public static let ipv4Fields: [IPFIXField] = fields(
        source: .init("sourceIPv4Address", 8, 4),
        destination: .init("destinationIPv4Address", 12, 4))
    /// The IPv6 template's fields, in record order.
    public static let ipv6Fields: [IPFIXField] = fields(
        source: .init("sourceIPv6Address", 27, 16),
        destination: .init("destinationIPv6Address", 28, 16))

    private static func fields(source: IPFIXField, destination: IPFIXField) -> [IPFIXField] {
        [
            source, destination,
            .init("sourceTransportPort", 7, 2), .init("destinationTransportPort", 11, 2),
            .init("protocolIdentifier", 4, 1), .init("tcpControlBits", 6, 2),
            .init("octetDeltaCount", 1, 8), .init("packetDeltaCount", 2, 8),
            .init("flowStartMilliseconds", 152, 8), .init("flowEndMilliseconds", 153, 8),
            .init("ingressInterface", 10, 4), .init("egressInterface", 14, 4),
            .init("flowDirection", 61, 1),
        ]
    }

    /// Data record lengths: 56 (IPv4) and 80 (IPv6) bytes.
    public static let ipv4RecordBytes = ipv4Fields.reduce(0) { $0 + Int($1.length) }
    public static let ipv6RecordBytes = ipv6Fields.reduce(0) { $0 + Int($1.length) }

    /// The Template Set carrying both templates (116 bytes), built once.
    static let templateSet: [UInt8] = {
        var b: [UInt8] = []
        b.be16(templateSetID); b.be16(0)
        for (id, fields) in [(ipv4TemplateID, ipv4Fields), (ipv6TemplateID, ipv6Fields)] {
            b.be16(id); b.be16(UInt16(fields.count))
            for f in fields { b.be16(f.elementID); b.be16(f.length) }
        }
        b.padSet(from: 0, minRecord: 4 + 4 * ipv4Fields.count)
        b.patch16(at: 2, UInt16(b.count))
        return b
    }()

    /// The smallest message that can carry the templates and one IPv6 record
    /// (216 bytes); a smaller `maxMessageBytes` is raised to this.
    public static let minimumMessageBytes = headerBytes + templateSet.count + setHeaderBytes + ipv6RecordBytes
    /// The message length field is 16 bits.
    public static let maximumMessageBytes = Int(UInt16.max)

    public let observationDomain: UInt32
    /// The effective limit: the init's value clamped to minimumMessageBytes...65535.
    public let maxMessageBytes: Int
    public let templateRefreshSeconds: UInt32

    /// Data records encoded so far (all calls); the next message's sequence number is this mod 2^32.
    public private(set) var recordsEncoded: UInt64 = 0
    /// Flows of family `.other` that were skipped (no IP addresses to export).
    public private(set) var skippedNonIP: UInt64 = 0
    /// Messages returned so far.
    public private(set) var messagesEncoded: UInt64 = 0
    /// Export time (seconds) of the last message that carried the templates; nil before the first.
    public private(set) var templatesSentAt: UInt32?
    private var templatesForced = false

    /// Sequence number the next message will carry (RFC 7011 §3.1).
    public var sequenceNumber: UInt32 { UInt32(truncatingIfNeeded: recordsEncoded) }

    public init(observationDomain: UInt32, maxMessageBytes: Int = 1400, templateRefreshSeconds: UInt32 = 60) {
        self.observationDomain = observationDomain
        self.maxMessageBytes = min(max(maxMessageBytes, Self.minimumMessageBytes), Self.maximumMessageBytes)
        self.templateRefreshSeconds = templateRefreshSeconds
    }

    /// Sends the templates again in the next message (e.g. a new collector).
    public mutating func forceTemplates() { templatesForced = true }

    /// Whether the next message, at this export time, will carry the templates.
    public func templatesDue(exportTimeSeconds now: UInt32) -> Bool {
        guard let last = templatesSentAt, !templatesForced else { return true }
        // Wrapping difference: a clock that went backwards shows as a huge gap and resends.
        return now &- last >= templateRefreshSeconds
    }

    /// Encodes `flows` into IPFIX messages of at most `maxMessageBytes` each.
    /// Non-IP flows are skipped (counted in `skippedNonIP`); with nothing to
    /// encode it returns no message and leaves the template timing alone.
    public mutating func messages(
        for flows: [FlowRecord], exportTimeSeconds: UInt32,
        clock: ClockMapping
    ) -> [[UInt8]] {
        var v4: [FlowRecord] = [], v6: [FlowRecord] = []
        for f in flows {
            switch f.key.family {
            case .ipv4: v4.append(f)
            case .ipv6: v6.append(f)
            case .other: skippedNonIP &+= 1
            }
        }
        var out: [[UInt8]] = []
        var i4 = 0, i6 = 0
        var withTemplates = templatesDue(exportTimeSeconds: exportTimeSeconds)
        while i4 < v4.count || i6 < v6.count {
            var m: [UInt8] = []
            m.reserveCapacity(maxMessageBytes)
            m.be16(Self.version); m.be16(0)  // length patched below
            m.be32(exportTimeSeconds)
            m.be32(sequenceNumber)
            m.be32(observationDomain)
            if withTemplates {
                m += Self.templateSet
                withTemplates = false
                templatesSentAt = exportTimeSeconds
                templatesForced = false
            }
            var records = 0
            for (isV6, list) in [(false, v4), (true, v6)] {
                let recordBytes = isV6 ? Self.ipv6RecordBytes : Self.ipv4RecordBytes
                let next = isV6 ? i6 : i4
                let room = maxMessageBytes - m.count - Self.setHeaderBytes
                guard next < list.count, room >= recordBytes else { continue }
                let n = min(list.count - next, room / recordBytes)
                let start = m.count
                m.be16(isV6 ? Self.ipv6TemplateID : Self.ipv4TemplateID); m.be16(0)
                for f in list[next..<(next + n)] { Self.appendRecord(f, v6: isV6, clock: clock, to: &m) }
                m.padSet(from: start, minRecord: recordBytes)
                m.patch16(at: start + 2, UInt16(m.count - start))
                if isV6 { i6 += n } else { i4 += n }
                records += n
            }
            // minimumMessageBytes guarantees at least one record per message.
            precondition(records > 0 && m.count <= maxMessageBytes, "IPFIX message layout")
            m.patch16(at: 2, UInt16(m.count))
            recordsEncoded &+= UInt64(records)
            messagesEncoded &+= 1
            out.append(m)
        }
        return out
    }

    private static func appendRecord(_ r: FlowRecord, v6: Bool, clock: ClockMapping, to b: inout [UInt8]) {
        let k = r.key, s = r.stats
        if v6 {
            b += k.source.bytes
            b += k.destination.bytes
        } else {
            b.be32(UInt32(truncatingIfNeeded: k.source.lo))
            b.be32(UInt32(truncatingIfNeeded: k.destination.lo))
        }
        b.be16(k.sourcePort)
        b.be16(k.destinationPort)
        b.append(k.ipProtocol)
        b.be16(k.ipProtocol == 6 ? UInt16(s.tcpFlags) : 0)
        b.be64(s.bytes)
        b.be64(s.packets)
        b.be64(wallMillis(s.firstSeenNanos, clock))
        b.be64(wallMillis(s.lastSeenNanos, clock))
        b.be32(k.direction == .receive ? k.ifindex : 0)
        b.be32(k.direction == .transmit ? k.ifindex : 0)
        b.append(k.direction == .receive ? 0 : 1)
    }

    /// Milliseconds since the Unix epoch (floor); a time before the epoch is 0
    /// since dateTimeMilliseconds is unsigned.
    static func wallMillis(_ monotonic: UInt64, _ clock: ClockMapping) -> UInt64 {
        let ns = clock.wallNanos(monotonic: monotonic)
        return ns <= 0 ? 0 : UInt64(ns / 1_000_000)
    }
}

private extension [UInt8] {
    mutating func be16(_ v: UInt16) { append(UInt8(v >> 8)); append(UInt8(truncatingIfNeeded: v)) }
    mutating func be32(_ v: UInt32) { be16(UInt16(v >> 16)); be16(UInt16(truncatingIfNeeded: v)) }
    mutating func be64(_ v: UInt64) { be32(UInt32(v >> 32)); be32(UInt32(truncatingIfNeeded: v)) }
    mutating func patch16(at i: Int, _ v: UInt16) {
        self[i] = UInt8(v >> 8); self[i + 1] = UInt8(truncatingIfNeeded: v)
    }
    /// Pads the set that starts at `start` to a 4-byte boundary (RFC 7011
    /// §3.3.1: padding must be shorter than the smallest record). A no-op with
    /// this file's templates; kept so a layout change cannot misalign sets.
    mutating func padSet(from start: Int, minRecord: Int) {
        let pad = (4 - (count - start) % 4) % 4
        if pad > 0 && pad < minRecord { append(contentsOf: repeatElement(0, count: pad)) }
    }
}
