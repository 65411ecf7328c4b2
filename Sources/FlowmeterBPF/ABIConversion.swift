// The one place where kernel records become Swift values.
import FlowmeterABI
import FlowmeterCore

extension IPAddress16 {
    init(
        tuple t: (
            UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
            UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8
        )
    ) {
        // Two big-endian loads: the compiler did not merge the sixteen byte
        // shifts, and this runs twice per ring record (flowmeter-bench ring).
        let (hi, lo) = withUnsafeBytes(of: t) {
            (UInt64(bigEndian: $0.loadUnaligned(as: UInt64.self)), UInt64(bigEndian: $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
        }
        self.init(hi: hi, lo: lo)
    }
}

extension FlowKey {
    /// From the kernel's struct fm_flow_key.
    public init(abi k: fm_flow_key) {
        self.init(
            source: IPAddress16(tuple: k.saddr), destination: IPAddress16(tuple: k.daddr),
            ifindex: k.ifindex, sourcePort: k.sport, destinationPort: k.dport,
            direction: Direction(rawValue: k.direction) ?? .receive,
            family: Family(rawValue: k.family) ?? .other,
            ipProtocol: k.protocol, flags: FlowKeyFlags(rawValue: k.flags))
    }
}

extension FlowStats {
    /// From the kernel's struct fm_flow_stats (one CPU's slice).
    public init(abi s: fm_flow_stats) {
        self.init(
            packets: s.packets, bytes: s.bytes, firstSeenNanos: s.first_seen_ns,
            lastSeenNanos: s.last_seen_ns, tcpFlags: s.tcp_flags)
    }
}

/// ABI facts the loader checks and the tests pin.
public enum ABI {
    public static let version = UInt16(FM_ABI_VERSION)
    public static let flowEventSize = MemoryLayout<fm_flow_event>.size
    public static let defaultFlowTableSize = Int(FM_DEFAULT_FLOW_TABLE_SIZE)
    public static let defaultFlowsRingBytes = Int(FM_DEFAULT_FLOWS_RING_BYTES)

    /// Decodes a "flows" ring record; nil if its size or version is not ours.
    public static func decodeFlowEvent(_ data: UnsafeRawBufferPointer) -> FlowRecord? {
        guard data.count >= MemoryLayout<fm_flow_event>.size else { return nil }
        let ev = data.loadUnaligned(as: fm_flow_event.self)
        guard ev.version == UInt16(FM_ABI_VERSION), ev.kind == UInt16(FM_FLOW_EVENT_OVERFLOW.rawValue) else { return nil }
        return FlowRecord(key: FlowKey(abi: ev.key), stats: FlowStats(abi: ev.stats), source: .flowsRing)
    }
}

extension ABI {
    public static let sockEventSize = MemoryLayout<fm_sock_event>.size

    /// Decodes an "events" ring record; nil if its size, version or kind is not ours.
    public static func decodeSocketEvent(_ data: UnsafeRawBufferPointer) -> SocketEvent? {
        guard data.count >= MemoryLayout<fm_sock_event>.size else { return nil }
        let e = data.loadUnaligned(as: fm_sock_event.self)
        guard e.version == UInt16(FM_ABI_VERSION), let kind = SocketEvent.Kind(rawValue: e.kind) else { return nil }
        let comm = withUnsafeBytes(of: e.owner.comm) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let owner: SocketOwner? =
            e.owner.tgid == 0 && e.owner.cgroup_id == 0
            ? nil
            : SocketOwner(tgid: e.owner.tgid, pid: e.owner.pid, name: comm, cgroupID: e.owner.cgroup_id)
        return SocketEvent(
            kind: kind, role: SocketEvent.Role(rawValue: e.role) ?? .unknown,
            family: Family(rawValue: e.family) ?? .other, ipProtocol: e.protocol,
            reason: SocketEvent.FailReason(rawValue: e.reason) ?? .other, socketID: e.sock_id,
            timestampNanos: e.ts_ns, startNanos: e.start_ns, owner: owner,
            localAddress: IPAddress16(tuple: e.saddr), remoteAddress: IPAddress16(tuple: e.daddr),
            localPort: e.sport, remotePort: e.dport, srttMicros: e.srtt_us, bytesSent: e.bytes_sent,
            bytesReceived: e.bytes_received, retransmits: e.retransmits, resetsSent: e.resets_sent,
            resetsReceived: e.resets_received, error: e.err)
    }
}
