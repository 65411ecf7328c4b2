import FlowmeterCore
import Foundation

/// JSON-lines flow log: one object per evicted flow, one per connection
/// event (schema in README, "Flow log"). Each line is a `FlowLogRecord`
/// written by `WireJSON.flowLog`. The lines were written by hand before;
/// the Codable records are not slower (`flowmeter-bench flowlog`: 5.7 µs a
/// record against 8.0, most of either the addresses' and timestamps' text),
/// and FlowLogGoldenTests holds them to the hand encoder's bytes.
public enum FlowLogEncoder {
    /// Schema version of the flow-log objects.
    public static let schemaVersion = 1

    /// `pair`: the service pair the flow's socket belongs to (TCP and UDP
    /// flows, when socket telemetry runs), written as `service`, `peer_service`.
    /// `drops`: packets of the flow the kernel dropped in the same pass, by
    /// reason, written as `drops` and `drop_reasons` (left out when none).
    public static func encode(
        _ r: FlowRecord, interface: String, clock: ClockMapping, pair: ServicePair? = nil, drops: DropsByReason? = nil
    ) -> String {
        line(FlowLogRecord.Flow(r, interface: interface, clock: clock, pair: pair, drops: drops))
    }

    /// One connection record (schema in README, "Flow log").
    /// `pod`: the owner's Kubernetes identity, when the runtime named it;
    /// `node`: written with it.
    public static func encodeConnection(
        _ e: SocketEvent, cgroupPath: String?, clock: ClockMapping, pod: PodIdentity? = nil, node: String? = nil
    ) -> String {
        line(FlowLogRecord.Connection(e, cgroupPath: cgroupPath, clock: clock, pod: pod, node: node))
    }

    /// One DNS record: a query that ended (schema in docs/flow-log.md).
    public static func encodeDNS(_ o: DNSOutcome, pair: ServicePair?, clock: ClockMapping) -> String {
        line(FlowLogRecord.DNS(o, pair: pair, clock: clock))
    }

    /// A record has only strings, integers and a fixed-point number: nothing
    /// that JSON cannot carry, so encoding cannot fail.
    static func line<T: Encodable>(_ record: T) -> String {
        (try? WireJSON.flowLog.string(record)) ?? "{}"
    }
}

/// The flow log's records (schema 1). A key's place in the line is its
/// property's place here: the records are written with the keys in the order
/// they are encoded, which for synthesized Codable is the order of the
/// properties. Optional properties that are nil are left out of the line.
public enum FlowLogRecord {
    /// An evicted flow.
    public struct Flow: Encodable, Sendable, Equatable {
        public var version = FlowLogEncoder.schemaVersion
        public var type = "flow"
        public var interface: String
        public var ifindex: UInt32
        public var direction: String
        public var family: String
        /// Family "other" (not IP): the EtherType, in place of the protocol, addresses and ports.
        public var ethertype: UInt16?
        public var protocolName: String?
        public var protocolNumber: UInt8?
        public var srcAddr: String?
        public var dstAddr: String?
        public var srcPort: UInt16?
        public var dstPort: UInt16?
        public var service: String?
        public var peerService: String?
        public var packets: UInt64
        public var bytes: UInt64
        /// Packets of this flow the kernel dropped (skb:kfree_skb) in the
        /// same interval, and how many per reason; only when there were any.
        public var drops: UInt64?
        public var dropReasons: [DropReasonCount]?
        /// TCP only.
        public var tcpFlags: String?
        public var tcpFlagsRaw: UInt8?
        /// Only when the flow has any (fragment, l4_truncated, malformed).
        public var flags: [String]?
        public var firstSeen: String
        public var lastSeen: String
        public var source: String

        enum CodingKeys: String, CodingKey {
            case version, type, interface, ifindex, direction, family, ethertype
            case protocolName = "protocol", protocolNumber = "protocol_number"
            case srcAddr = "src_addr", dstAddr = "dst_addr", srcPort = "src_port", dstPort = "dst_port"
            case service, peerService = "peer_service", packets, bytes, drops, dropReasons = "drop_reasons"
            case tcpFlags = "tcp_flags", tcpFlagsRaw = "tcp_flags_raw", flags
            case firstSeen = "first_seen", lastSeen = "last_seen", source
        }

        public init(_ r: FlowRecord, interface: String, clock: ClockMapping, pair: ServicePair? = nil, drops: DropsByReason? = nil) {
            let k = r.key
            self.interface = interface
            ifindex = k.ifindex
            direction = k.direction.label
            family = k.family.label
            if k.family == .other {
                ethertype = k.destinationPort
            } else {
                protocolName = IPProtocolName.name(k.ipProtocol, family: k.family)
                protocolNumber = k.ipProtocol
                srcAddr = k.source.description
                dstAddr = k.destination.description
                srcPort = k.sourcePort
                dstPort = k.destinationPort
            }
            service = pair?.service
            peerService = pair?.peer
            packets = r.stats.packets
            bytes = r.stats.bytes
            if let drops, !drops.isEmpty {
                self.drops = drops.values.reduce(0, +)
                dropReasons = drops.sorted { $0.key < $1.key }.map { DropReasonCount(reason: $0.key, packets: $0.value) }
            }
            if k.family != .other && k.ipProtocol == 6 {
                tcpFlags = TCPFlags.describe(r.stats.tcpFlags)
                tcpFlagsRaw = r.stats.tcpFlags
            }
            var flags: [String] = []
            if k.flags.contains(.fragment) { flags.append("fragment") }
            if k.flags.contains(.l4Truncated) { flags.append("l4_truncated") }
            if k.flags.contains(.malformed) { flags.append("malformed") }
            self.flags = flags.isEmpty ? nil : flags
            firstSeen = rfc3339(nanosSinceEpoch: clock.wallNanos(monotonic: r.stats.firstSeenNanos))
            lastSeen = rfc3339(nanosSinceEpoch: clock.wallNanos(monotonic: r.stats.lastSeenNanos))
            source = r.source.rawValue
        }
    }

    /// One reason's share of a flow's drops.
    public struct DropReasonCount: Encodable, Sendable, Equatable {
        public var reason: String
        public var packets: UInt64
    }

    /// A connection event: open, close, failed, or update (a long-lived socket's counters).
    public struct Connection: Encodable, Sendable, Equatable {
        public var version = FlowLogEncoder.schemaVersion
        public var type = "connection"
        public var event: String
        public var time: String
        public var protocolName: String
        public var family: String
        public var role: String
        public var localAddr: String
        public var localPort: UInt16
        public var remoteAddr: String
        public var remotePort: UInt16
        /// The owning process, when known.
        public var pid: UInt32?
        public var tid: UInt32?
        public var process: String?
        public var cgroupID: UInt64?
        public var cgroupPath: String?
        /// The owner's Kubernetes pod, when the container runtime named it
        /// (docs/kubernetes.md); left out while the lookup is pending.
        public var namespace: String?
        public var pod: String?
        public var container: String?
        public var workload: String?
        public var workloadKind: String?
        public var node: String?
        /// Close and update.
        public var bytesSent: UInt64?
        public var bytesReceived: UInt64?
        /// Close and update, TCP.
        public var srttMicros: UInt32?
        public var retransmits: UInt32?
        public var resetsSent: UInt32?
        public var resetsReceived: UInt32?
        /// Close and update, when the start is known: milliseconds, three decimals ("2.000").
        public var durationMillis: WireJSON.Fragment?
        /// Failed.
        public var reason: String?
        public var errorNumber: UInt32?

        enum CodingKeys: String, CodingKey {
            case version, type, event, time, protocolName = "protocol", family, role
            case localAddr = "local_addr", localPort = "local_port", remoteAddr = "remote_addr", remotePort = "remote_port"
            case pid, tid, process, cgroupID = "cgroup_id", cgroupPath = "cgroup_path"
            case namespace, pod, container, workload, workloadKind = "workload_kind", node
            case bytesSent = "bytes_sent", bytesReceived = "bytes_received", srttMicros = "srtt_us", retransmits
            case resetsSent = "resets_sent", resetsReceived = "resets_received", durationMillis = "duration_ms"
            case reason, errorNumber = "errno"
        }

        public init(_ e: SocketEvent, cgroupPath: String?, clock: ClockMapping, pod: PodIdentity? = nil, node: String? = nil) {
            event =
                switch e.kind {
                case .open: "open";
                case .close: "close";
                case .failed: "failed";
                case .update: "update"
                }
            time = rfc3339(nanosSinceEpoch: clock.wallNanos(monotonic: e.timestampNanos))
            protocolName = IPProtocolName.name(e.ipProtocol, family: e.family)
            family = e.family.label
            role =
                switch e.role {
                case .client: "client";
                case .server: "server";
                case .unknown: "unknown"
                }
            localAddr = e.localAddress.description
            localPort = e.localPort
            remoteAddr = e.remoteAddress.description
            remotePort = e.remotePort
            if let owner = e.owner {
                pid = owner.tgid
                tid = owner.pid
                process = owner.name
                cgroupID = owner.cgroupID
                self.cgroupPath = cgroupPath
            }
            if let pod {
                namespace = pod.metadata.namespace
                self.pod = pod.metadata.pod
                container = pod.metadata.container
                workload = pod.workload.name
                workloadKind = pod.workload.kind.rawValue
                self.node = node
            }
            switch e.kind {
            case .close, .update:
                bytesSent = e.bytesSent
                bytesReceived = e.bytesReceived
                if e.ipProtocol == 6 {
                    srttMicros = e.srttMicros
                    retransmits = e.retransmits
                    resetsSent = e.resetsSent
                    resetsReceived = e.resetsReceived
                }
                if e.startNanos > 0 && e.timestampNanos >= e.startNanos {
                    durationMillis = .fixed(Double(e.timestampNanos - e.startNanos) / 1e6, decimals: 3)
                }
            case .failed:
                reason = e.reason.label
                errorNumber = e.error
            case .open:
                break
            }
        }
    }
}

extension FlowLogRecord {
    /// A DNS query a local client sent, as it ended: answered, or timed out.
    public struct DNS: Encodable, Sendable, Equatable {
        public struct Answer: Encodable, Sendable, Equatable {
            /// The owner name (absent with names off).
            public var name: String?
            public var type: String
            public var ttl: UInt32
            /// A, AAAA.
            public var address: String?
            /// CNAME (absent with names off).
            public var target: String?
        }
        public var version = FlowLogEncoder.schemaVersion
        public var type = "dns"
        /// "answer" or "timeout".
        public var event: String
        public var time: String
        public var protocolName: String
        public var clientAddr: String
        public var clientPort: UInt16
        public var serverAddr: String
        public var serverPort: UInt16
        public var service: String?
        public var peerService: String?
        public var id: UInt16
        /// The question's name; absent with names off (--no-dns-names).
        public var name: String?
        public var qtype: String
        public var rcode: String
        /// Query to answer, milliseconds, three decimals.
        public var latencyMillis: WireJSON.Fragment?
        /// The header's answer count.
        public var answerCount: UInt16?
        public var answers: [Answer]?
        /// The kernel's copy ended before the message did: `answers` may lack some.
        public var truncated: Bool?

        enum CodingKeys: String, CodingKey {
            case version, type, event, time, protocolName = "protocol"
            case clientAddr = "client_addr", clientPort = "client_port", serverAddr = "server_addr", serverPort = "server_port"
            case service, peerService = "peer_service", id, name, qtype, rcode, latencyMillis = "latency_ms"
            case answerCount = "answer_count", answers, truncated
        }

        public init(_ o: DNSOutcome, pair: ServicePair?, clock: ClockMapping) {
            event = o.rcode == DNSNames.timeout ? "timeout" : "answer"
            time = rfc3339(nanosSinceEpoch: clock.wallNanos(monotonic: o.timestampNanos))
            protocolName = o.key.ipProtocol == 6 ? "tcp" : "udp"
            clientAddr = o.key.client.description
            clientPort = o.key.clientPort
            serverAddr = o.key.server.description
            serverPort = o.key.serverPort
            service = pair?.service
            peerService = pair?.peer
            id = o.key.txid
            name = o.name
            qtype = o.qtype
            rcode = o.rcode
            if let l = o.latency {
                latencyMillis = .fixed(l * 1e3, decimals: 3)
                answerCount = o.answerCount
                answers = o.answers.map {
                    Answer(
                        name: $0.name.isEmpty ? nil : $0.name, type: DNSNames.qtype($0.type), ttl: $0.ttl,
                        address: $0.address?.description, target: $0.target)
                }
                truncated = o.truncated
            }
        }
    }
}

/// Appends lines to a file (or stdout for "-"), flushing after each batch so a
/// reader (or a crash) sees whole intervals. With `maxBytes` it rotates by
/// size: FILE becomes FILE.1 (FILE.1 becomes FILE.2, ..., up to `keep`) and a
/// new FILE starts; a batch is never split across files. `reopen()` (SIGHUP)
/// opens FILE again by name, for logrotate's move-then-signal rotation.
public final class FlowLogWriter: @unchecked Sendable {
    private var fd: Int32
    private var size: Int
    private let lock = NSLock()
    public let path: String
    public let maxBytes: Int?
    public let keep: Int
    /// Rotations done so far.
    public private(set) var rotations = 0

    public init(path: String, maxBytes: Int? = nil, keep: Int = 5) throws {
        self.path = path
        self.maxBytes = path == "-" ? nil : maxBytes
        self.keep = max(1, keep)
        if path == "-" {
            fd = STDOUT_FILENO
            size = 0
            return
        }
        fd = try Self.open(path)
        size = Self.fileSize(fd)
    }

    private static func open(_ path: String) throws -> Int32 {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw ValueError("cannot open flow log \(path): \(String(cString: strerror(errno)))")
        }
        return fd
    }

    private static func fileSize(_ fd: Int32) -> Int {
        var st = stat()
        return fstat(fd, &st) == 0 ? Int(st.st_size) : 0
    }

    /// Writes one batch; false when the write failed (disk full, ...).
    @discardableResult
    public func write(lines: [String]) -> Bool {
        guard !lines.isEmpty else { return true }
        var buf = lines.joined(separator: "\n")
        buf += "\n"
        return lock.withLock {
            if let maxBytes, size > 0, size + buf.utf8.count > maxBytes { rotateLocked() }
            let n = buf.utf8.count
            var off = 0
            var ok = true
            buf.withUTF8 { p in
                while off < n {
                    let w = Glibc.write(fd, p.baseAddress! + off, n - off)
                    if w < 0 { if errno == EINTR { continue }; ok = false; return }
                    off += w
                }
            }
            size += off
            return ok
        }
    }

    private func rotateLocked() {
        for i in stride(from: keep - 1, through: 1, by: -1) {
            rename("\(path).\(i)", "\(path).\(i + 1)")
        }
        rename(path, "\(path).1")
        reopenLocked()
        rotations += 1
    }

    private func reopenLocked() {
        guard path != "-", let new = try? Self.open(path) else { return }
        Glibc.close(fd)
        fd = new
        size = Self.fileSize(fd)
    }

    /// Opens the file again by its name (after logrotate moved it away).
    public func reopen() { lock.withLock { reopenLocked() } }

    public func close() {
        lock.withLock {
            if path != "-" { fsync(fd) }
        }
    }
}
