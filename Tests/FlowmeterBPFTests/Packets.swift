// Builds test packets byte by byte. Lengths and header fields are computed
// unless a test overrides them to make a packet malformed on purpose.

struct Packet {
    var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { bytes += [UInt8(v >> 8), UInt8(v & 0xff)] }
    mutating func u32(_ v: UInt32) { u16(UInt16(v >> 16)); u16(UInt16(v & 0xffff)) }
    mutating func raw(_ b: [UInt8]) { bytes += b }

    mutating func setU16(at i: Int, _ v: UInt16) { bytes[i] = UInt8(v >> 8); bytes[i + 1] = UInt8(v & 0xff) }
}

enum L4 {
    case tcp(sport: UInt16, dport: UInt16, flags: UInt8, optionWords: Int = 0)
    case udp(sport: UInt16, dport: UInt16)
    case icmp(type: UInt8, code: UInt8)
    case raw(proto: UInt8)

    var proto: UInt8 {
        switch self {
        case .tcp: 6
        case .udp: 17
        case .icmp: 1
        case .raw(let p): p
        }
    }

    func header(payload: Int) -> [UInt8] {
        var p = Packet()
        switch self {
        case let .tcp(s, d, f, w):
            p.u16(s); p.u16(d); p.u32(1000); p.u32(2000)
            p.u8(UInt8((5 + w) << 4)); p.u8(f); p.u16(65535); p.u16(0); p.u16(0)
            for _ in 0..<w { p.raw([1, 1, 1, 1]) }
        case let .udp(s, d):
            p.u16(s); p.u16(d); p.u16(UInt16(8 + payload)); p.u16(0)
        case let .icmp(t, c):
            p.u8(t); p.u8(c); p.u16(0); p.u32(0x0001_0001)
        case .raw:
            break
        }
        return p.bytes
    }
}

struct PacketBuilder {
    var vlanTags: [UInt16] = []  // TPIDs: 0x8100 or 0x88a8
    var srcMAC: [UInt8] = [2, 0, 0, 0, 0, 1]
    var dstMAC: [UInt8] = [2, 0, 0, 0, 0, 2]

    func ethernet(_ ethertype: UInt16) -> Packet {
        var p = Packet()
        p.raw(dstMAC); p.raw(srcMAC)
        var types = vlanTags + [ethertype]
        p.u16(types.removeFirst())
        for (i, t) in types.enumerated() { p.u16(UInt16(100 + i)); p.u16(t) }  // TCI, next type
        return p
    }

    /// IPv4 packet; `options` bytes (multiple of 4) make ihl > 5.
    func ipv4(
        src: [UInt8], dst: [UInt8], l4: L4, payload: Int, options: [UInt8] = [],
        fragOffset: UInt16 = 0, moreFragments: Bool = false, l4HeaderPresent: Bool = true
    ) -> [UInt8] {
        var p = ethernet(0x0800)
        let hdr = l4HeaderPresent ? l4.header(payload: payload) : []
        let ihl = 5 + options.count / 4
        let total = ihl * 4 + hdr.count + payload
        p.u8(UInt8(0x40 | ihl)); p.u8(0); p.u16(UInt16(total)); p.u16(0x1234)
        p.u16((moreFragments ? 0x2000 : 0) | (fragOffset & 0x1fff)); p.u8(64); p.u8(l4.proto); p.u16(0)
        p.raw(src); p.raw(dst); p.raw(options)
        p.raw(hdr)
        p.raw([UInt8](repeating: 0xab, count: payload))
        return p.bytes
    }

    enum Ext { case hopByHop(words: Int), routing(words: Int), destOpts(words: Int), fragment(offset: UInt16, more: Bool) }

    func ipv6(src: [UInt8], dst: [UInt8], l4: L4, payload: Int, ext: [Ext] = [], l4HeaderPresent: Bool = true) -> [UInt8] {
        var p = ethernet(0x86DD)
        let l4proto: UInt8 = {
            if case .icmp = l4 { return 58 }
            return l4.proto
        }()
        let hdr = l4HeaderPresent ? l4.header(payload: payload) : []
        var extBytes: [UInt8] = []
        let codes: [UInt8] = ext.map {
            switch $0 {
            case .hopByHop: 0;
            case .routing: 43;
            case .destOpts: 60;
            case .fragment: 44
            }
        }
        for (i, e) in ext.enumerated() {
            let next = i + 1 < codes.count ? codes[i + 1] : l4proto
            switch e {
            case .hopByHop(let w), .routing(let w), .destOpts(let w):
                extBytes += [next, UInt8(w)] + [UInt8](repeating: 1, count: 6 + 8 * w)
            case let .fragment(off, more):
                let fo = (off << 3) | (more ? 1 : 0)
                extBytes += [next, 0, UInt8(fo >> 8), UInt8(fo & 0xff), 0, 0, 0, 7]
            }
        }
        p.u32(0x6000_0000); p.u16(UInt16(extBytes.count + hdr.count + payload))
        p.u8(codes.first ?? l4proto); p.u8(64)
        p.raw(src); p.raw(dst)
        p.raw(extBytes); p.raw(hdr)
        p.raw([UInt8](repeating: 0xcd, count: payload))
        return p.bytes
    }
}

let v4a: [UInt8] = [10, 0, 0, 1], v4b: [UInt8] = [10, 0, 0, 2]
let v6a: [UInt8] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
let v6b: [UInt8] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]
