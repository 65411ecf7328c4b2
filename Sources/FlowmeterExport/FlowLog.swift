import FlowmeterCore
import Foundation

/// JSON-lines flow log: one object per evicted flow (schema in docs/flow-log.md).
public enum FlowLogEncoder {
    /// Schema version of the flow-log objects.
    public static let schemaVersion = 1

    /// `pair`: the service pair the flow's socket belongs to (TCP and UDP
    /// flows, when socket telemetry runs), written as `service`, `peer_service`.
    public static func encode(_ r: FlowRecord, interface: String, clock: ClockMapping, pair: ServicePair? = nil) -> String {
        let k = r.key
        var o = "{\"version\":\(schemaVersion),\"type\":\"flow\""
        o += ",\"interface\":" + quote(interface)
        o += ",\"ifindex\":\(k.ifindex)"
        o += ",\"direction\":\"\(k.direction.label)\""
        o += ",\"family\":\"\(k.family.label)\""
        if k.family == .other {
            o += ",\"ethertype\":\(k.destinationPort)"
        } else {
            o += ",\"protocol\":" + quote(IPProtocolName.name(k.ipProtocol, family: k.family))
            o += ",\"protocol_number\":\(k.ipProtocol)"
            o += ",\"src_addr\":" + quote(k.source.description)
            o += ",\"dst_addr\":" + quote(k.destination.description)
            o += ",\"src_port\":\(k.sourcePort),\"dst_port\":\(k.destinationPort)"
        }
        if let pair { o += ",\"service\":" + quote(pair.service) + ",\"peer_service\":" + quote(pair.peer) }
        o += ",\"packets\":\(r.stats.packets),\"bytes\":\(r.stats.bytes)"
        if k.family != .other && k.ipProtocol == 6 {
            o += ",\"tcp_flags\":" + quote(TCPFlags.describe(r.stats.tcpFlags))
            o += ",\"tcp_flags_raw\":\(r.stats.tcpFlags)"
        }
        var flags: [String] = []
        if k.flags.contains(.fragment) { flags.append("fragment") }
        if k.flags.contains(.l4Truncated) { flags.append("l4_truncated") }
        if k.flags.contains(.malformed) { flags.append("malformed") }
        if !flags.isEmpty { o += ",\"flags\":[" + flags.map(quote).joined(separator: ",") + "]" }
        o += ",\"first_seen\":" + quote(rfc3339(nanosSinceEpoch: clock.wallNanos(monotonic: r.stats.firstSeenNanos)))
        o += ",\"last_seen\":" + quote(rfc3339(nanosSinceEpoch: clock.wallNanos(monotonic: r.stats.lastSeenNanos)))
        o += ",\"source\":\"\(r.source.rawValue)\"}"
        return o
    }

    /// One connection record (schema in docs/flow-log.md).
    public static func encodeConnection(_ e: SocketEvent, cgroupPath: String?, clock: ClockMapping) -> String {
        let event =
            switch e.kind {
            case .open: "open";
            case .close: "close";
            case .failed: "failed";
            case .update: "update"
            }
        let role =
            switch e.role {
            case .client: "client";
            case .server: "server";
            case .unknown: "unknown"
            }
        var o = "{\"version\":\(schemaVersion),\"type\":\"connection\",\"event\":\"\(event)\""
        o += ",\"time\":" + quote(rfc3339(nanosSinceEpoch: clock.wallNanos(monotonic: e.timestampNanos)))
        o += ",\"protocol\":" + quote(IPProtocolName.name(e.ipProtocol, family: e.family))
        o += ",\"family\":\"\(e.family.label)\",\"role\":\"\(role)\""
        o += ",\"local_addr\":" + quote(e.localAddress.description) + ",\"local_port\":\(e.localPort)"
        o += ",\"remote_addr\":" + quote(e.remoteAddress.description) + ",\"remote_port\":\(e.remotePort)"
        if let owner = e.owner {
            o += ",\"pid\":\(owner.tgid),\"tid\":\(owner.pid),\"process\":" + quote(owner.name)
            o += ",\"cgroup_id\":\(owner.cgroupID)"
            if let cgroupPath { o += ",\"cgroup_path\":" + quote(cgroupPath) }
        }
        switch e.kind {
        case .close, .update:
            o += ",\"bytes_sent\":\(e.bytesSent),\"bytes_received\":\(e.bytesReceived)"
            if e.ipProtocol == 6 {
                o += ",\"srtt_us\":\(e.srttMicros),\"retransmits\":\(e.retransmits)"
                o += ",\"resets_sent\":\(e.resetsSent),\"resets_received\":\(e.resetsReceived)"
            }
            if e.startNanos > 0 && e.timestampNanos >= e.startNanos {
                o += ",\"duration_ms\":" + String(format: "%.3f", Double(e.timestampNanos - e.startNanos) / 1e6)
            }
        case .failed:
            o += ",\"reason\":\"\(e.reason.label)\",\"errno\":\(e.error)"
        case .open:
            break
        }
        return o + "}"
    }

    static func quote(_ s: String) -> String {
        var o = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": o += "\\\""
            case "\\": o += "\\\\"
            case "\n": o += "\\n"
            case "\r": o += "\\r"
            case "\t": o += "\\t"
            default:
                if c.value < 0x20 { o += String(format: "\\u%04x", c.value) } else { o.unicodeScalars.append(c) }
            }
        }
        return o + "\""
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
