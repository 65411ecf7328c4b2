import FlowmeterCore

/// An independent implementation, in Swift, of the accounting rules the tc
/// program implements (docs/how-it-works.md, "What a packet counts as").
/// The differential test runs both on the same packets and demands the same
/// flows.
enum ReferenceParser {
    struct Result: Equatable {
        var key: FlowKey
        var packets: UInt64
        var bytes: UInt64
        var tcpFlags: UInt8
    }

    static func parse(_ b: [UInt8], direction: Direction, ifindex: UInt32, gsoSegs: UInt32) -> Result {
        let segs = UInt64(gsoSegs > 1 ? gsoSegs : 1)
        let len = b.count
        func be16(_ i: Int) -> Int { Int(b[i]) << 8 | Int(b[i + 1]) }
        var key = FlowKey(
            source: .zero, destination: .zero, ifindex: ifindex, sourcePort: 0, destinationPort: 0,
            direction: direction, family: .other, ipProtocol: 0, flags: [])
        var tcpFlags: UInt8 = 0
        func malformed(_ ethertype: Int, bytes: Int) -> Result {
            key.source = .zero; key.destination = .zero; key.family = .other; key.ipProtocol = 0
            key.sourcePort = 0; key.destinationPort = UInt16(ethertype); key.flags = .malformed
            return Result(key: key, packets: segs, bytes: UInt64(bytes), tcpFlags: 0)
        }
        guard len >= 14 else { return malformed(0, bytes: 0) }
        var proto = be16(12)
        var off = 14
        for _ in 0..<2 where proto == 0x8100 || proto == 0x88A8 {
            guard off + 4 <= len else { return malformed(proto, bytes: len - off) }
            proto = be16(off + 2)
            off += 4
        }
        let l3avail = len - off
        let l3len: Int, l4off: Int
        var l4hdr = 0

        // Returns the L4 header length repeated in each GSO segment.
        func parseL4(_ p: UInt8, family: Family, at o: Int, end: Int) -> Int {
            switch p {
            case 6:
                guard o + 20 <= end else { key.flags.insert(.l4Truncated); return 0 }
                let doff = Int(b[o + 12] >> 4) * 4
                guard doff >= 20, o + doff <= end else { key.flags.insert(.l4Truncated); return 0 }
                key.sourcePort = UInt16(be16(o)); key.destinationPort = UInt16(be16(o + 2))
                tcpFlags = b[o + 13]
                return doff
            case 17:
                guard o + 8 <= end else { key.flags.insert(.l4Truncated); return 0 }
                key.sourcePort = UInt16(be16(o)); key.destinationPort = UInt16(be16(o + 2))
                return 8
            case 1 where family == .ipv4, 58 where family == .ipv6:
                guard o + 4 <= end else { key.flags.insert(.l4Truncated); return 0 }
                key.destinationPort = UInt16(b[o]) << 8 | UInt16(b[o + 1])
                return 0
            default:
                return 0
            }
        }

        if proto == 0x0800 {
            guard off + 20 <= len else { return malformed(proto, bytes: l3avail) }
            let ihl = Int(b[off] & 0x0f) * 4, tot = be16(off + 2)
            guard b[off] >> 4 == 4, ihl >= 20, ihl <= l3avail else { return malformed(proto, bytes: l3avail) }
            if segs > 1 {
                l3len = l3avail
            } else {
                guard tot >= ihl, tot <= l3avail else { return malformed(proto, bytes: l3avail) }
                l3len = tot
            }
            key.family = .ipv4
            key.ipProtocol = b[off + 9]
            key.source = IPAddress16.v4(b[off + 12], b[off + 13], b[off + 14], b[off + 15])
            key.destination = IPAddress16.v4(b[off + 16], b[off + 17], b[off + 18], b[off + 19])
            l4off = off + ihl
            if be16(off + 6) & 0x1fff != 0 {
                key.flags.insert(.fragment)
            } else {
                l4hdr = parseL4(key.ipProtocol, family: .ipv4, at: l4off, end: off + l3len)
            }
        } else if proto == 0x86DD {
            guard off + 40 <= len, b[off] >> 4 == 6 else { return malformed(proto, bytes: l3avail) }
            let plen = be16(off + 4)
            if segs > 1 || plen == 0 {
                l3len = l3avail
            } else {
                guard 40 + plen <= l3avail else { return malformed(proto, bytes: l3avail) }
                l3len = 40 + plen
            }
            key.family = .ipv6
            key.source = IPAddress16(bytes: b[(off + 8)..<(off + 24)])
            key.destination = IPAddress16(bytes: b[(off + 24)..<(off + 40)])
            let ext: Set<UInt8> = [0, 43, 44, 60]
            var nh = b[off + 6]
            let end = off + l3len
            var o = off + 40
            var stop = false
            for _ in 0..<8 where !stop && ext.contains(nh) {
                guard o + 8 <= end else { key.flags.insert(.l4Truncated); stop = true; break }
                if nh == 44 {
                    let fo = be16(o + 2)
                    nh = b[o]
                    o += 8
                    if fo & 0xfff8 != 0 { key.flags.insert(.fragment); stop = true }
                } else {
                    nh = b[o]
                    o += (Int(b[o + 1]) + 1) * 8
                }
            }
            l4off = o
            key.ipProtocol = nh
            if !stop && !ext.contains(nh) {
                l4hdr = parseL4(nh, family: .ipv6, at: o, end: end)
            }
        } else {
            key.destinationPort = UInt16(proto)
            return Result(key: key, packets: segs, bytes: UInt64(l3avail) * segs, tcpFlags: 0)
        }
        let bytes = segs > 1 ? UInt64(l3len) + (segs - 1) * UInt64(l4off - off + l4hdr) : UInt64(l3len)
        return Result(key: key, packets: segs, bytes: bytes, tcpFlags: tcpFlags)
    }
}
