import CLibbpf
import FlowmeterABI
import FlowmeterCore
import Foundation

/// The DNS programs (bpf/flowmeter_dns.bpf.c): cgroup_skb egress and
/// ingress on the cgroup v2 root, so they see every local socket's packets
/// in every network namespace. Optional: a kernel (or a host without a
/// cgroup v2 hierarchy) that refuses them loses DNS and nothing else.
public final class DNSPrograms: @unchecked Sendable {
    private typealias P = BPFNames.FlowmeterDns.Program
    private typealias Maps = BPFNames.FlowmeterDns.Map

    let object: BPFObject
    private var links: [OpaquePointer] = []
    let pendingFD: Int32
    let statsFD: Int32
    public let ringFD: Int32
    /// The ports whose traffic is parsed as DNS.
    public let ports: [UInt16]

    /// Loads the programs with `ports` as the DNS ports and `pendingSize`
    /// queries waiting at once, and attaches them to the cgroup v2 root.
    /// Throws, naming the step, when the kernel or the host refuses.
    public init(ports: [UInt16], pendingSize: Int = Int(FM_DNS_PENDING_SIZE)) throws {
        guard !ports.isEmpty else { throw BPFError("no DNS ports", errno: EINVAL) }
        guard pendingSize >= 1, pendingSize <= 1 << 20 else {
            throw BPFError("DNS pending table size \(pendingSize) is out of range (1 ... 1048576)", errno: EINVAL)
        }
        let obj = try BPFObject(BPFNames.FlowmeterDns.self)
        let r = bpf_map__set_max_entries(try obj.map(Maps.fm_dns_pending), UInt32(pendingSize))
        if r != 0 { throw BPFError.from("set size of \(Maps.fm_dns_pending)", result: r) }
        try obj.load()
        object = obj
        self.ports = ports
        pendingFD = try obj.mapFD(Maps.fm_dns_pending)
        statsFD = try obj.mapFD(Maps.fm_dns_stats)
        ringFD = try obj.mapFD(Maps.fm_dns_events)
        let portsFD = try obj.mapFD(Maps.fm_dns_ports)
        for p in ports {
            var k = UInt32(p)
            var one: UInt8 = 1
            let r = bpf_map_update_elem(portsFD, &k, &one, 0)
            if r != 0 { throw BPFError.from("set DNS port \(p)", result: r) }
        }
        let root = SocketPrograms.openCgroup2Root(mounted: CgroupPaths().root)
        guard root >= 0 else { throw BPFError("no cgroup v2 hierarchy to attach the DNS programs to", errno: ENOENT) }
        defer { close(root) }
        for name in [P.fm_dns_egress, P.fm_dns_ingress] {
            guard let l = bpf_program__attach_cgroup(try obj.program(name), root) else {
                let e = fm_errno()
                detach()
                throw BPFError("attach \(name.name) (\(name.section)) to the cgroup v2 root", errno: e)
            }
            links.append(l)
        }
    }

    /// A reader of the DNS ring (started by its owner).
    public func reader() throws -> RingReader<DNSEvent> {
        try RingReader(
            ringFD: ringFD, name: "fm_dns_events", softLimit: 1 << 16, hardLimit: 1 << 18,
            decode: { DNSPrograms.decode($0) })
    }

    /// A ring record as an event; nil for a size or version that is not ours.
    static func decode(_ b: UnsafeRawBufferPointer) -> DNSEvent? {
        guard b.count >= MemoryLayout<fm_dns_event>.size else { return nil }
        let e = b.loadUnaligned(as: fm_dns_event.self)
        guard e.version == FM_ABI_VERSION, let kind = DNSEvent.Kind(rawValue: e.kind) else { return nil }
        let copied = min(Int(e.copied), Int(FM_DNS_COPY_BYTES))
        let off = MemoryLayout<fm_dns_event>.offset(of: \.payload)!
        let payload = Array(b[off..<(off + copied)])
        return DNSEvent(
            kind: kind, key: DNSQueryKey(abi: e.key), rcode: e.rcode, qdcount: e.qdcount, ancount: e.ancount,
            length: e.length, truncated: e.flags & UInt8(FM_DNS_TRUNCATED.rawValue) != 0,
            matched: e.flags & UInt8(FM_DNS_MATCHED.rawValue) != 0,
            notTracked: e.flags & UInt8(FM_DNS_NOT_TRACKED.rawValue) != 0,
            repeated: e.flags & UInt8(FM_DNS_REPEATED.rawValue) != 0,
            timestampNanos: e.ts_ns, latencyNanos: e.latency_ns, cgroupID: e.cgroup_id, payload: payload)
    }

    /// Removes queries from the kernel's pending table (timed out: a late
    /// answer is then unmatched, never counted twice).
    public func forget(_ keys: [DNSQueryKey]) {
        for k in keys {
            var abi = k.abi
            _ = bpf_map_delete_elem(pendingFD, &abi)
        }
    }

    /// The programs' counters (cumulative, summed over CPUs).
    public func readCounters() throws -> (messages: UInt64, ringLost: UInt64, pendingFull: UInt64) {
        let values = UnsafeMutablePointer<UInt64>.allocate(capacity: possibleCPUs)
        defer { values.deallocate() }
        func read(_ idx: UInt32) throws -> UInt64 {
            var key = idx
            let r = bpf_map_lookup_elem(statsFD, &key, values)
            if r != 0 { throw BPFError.from("read DNS counter \(idx)", result: r) }
            return (0..<possibleCPUs).reduce(0) { $0 &+ values[$1] }
        }
        return (
            try read(UInt32(FM_DNS_STAT_MESSAGES.rawValue)), try read(UInt32(FM_DNS_STAT_RING_LOST.rawValue)),
            try read(UInt32(FM_DNS_STAT_PENDING_FULL.rawValue))
        )
    }

    /// Detaches the programs: nothing more is seen.
    public func detach() {
        for l in links { bpf_link__destroy(l) }
        links = []
    }

    deinit { detach() }
}

extension DNSQueryKey {
    init(abi k: fm_dns_key) {
        self.init(
            client: IPAddress16(tuple: k.client), server: IPAddress16(tuple: k.server), clientPort: k.cport,
            serverPort: k.sport, txid: k.txid, ipProtocol: k.protocol)
    }

    var abi: fm_dns_key {
        var k = fm_dns_key()
        withUnsafeMutableBytes(of: &k.client) { $0.copyBytes(from: client.bytes) }
        withUnsafeMutableBytes(of: &k.server) { $0.copyBytes(from: server.bytes) }
        k.cport = clientPort
        k.sport = serverPort
        k.txid = txid
        k.protocol = ipProtocol
        return k
    }
}
