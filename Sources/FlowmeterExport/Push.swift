import FlowmeterCore
import Foundation
import Synchronization

/// A destination given as http://HOST[:PORT]/PATH.
public struct HTTPEndpoint: Sendable, Equatable, CustomStringConvertible {
    public let host: String
    public let port: UInt16
    public let path: String
    public var description: String { "http://\(host.contains(":") ? "[\(host)]" : host):\(port)\(path)" }

    public init(parsing url: String) throws {
        guard url.hasPrefix("http://") else { throw ValueError("\(url): only http:// is supported") }
        let rest = url.dropFirst(7)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = String(rest[..<slash])
        path = slash == rest.endIndex ? "/v1/metrics" : String(rest[slash...])
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw ValueError("\(url): unclosed [ in the host") }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            port = after.hasPrefix(":") ? UInt16(after.dropFirst()) ?? 0 : 80
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            port = UInt16(authority[authority.index(after: colon)...]) ?? 0
        } else {
            host = authority
            port = 80
        }
        guard !host.isEmpty, port != 0 else { throw ValueError("\(url): needs a host and a valid port") }
    }
}

/// Connected sockets to a HOST:PORT (getaddrinfo, every address tried).
enum Dial {
    static func connect(host: String, port: UInt16, type: Int32, timeoutSeconds: Int) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = type
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &res)
        guard rc == 0, let first = res else {
            throw ValueError("cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(first) }
        var lastErr: Int32 = 0
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let a = p {
            let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), a.pointee.ai_protocol)
            if fd >= 0 {
                var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                if Glibc.connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 { return fd }
                lastErr = errno
                close(fd)
            }
            p = a.pointee.ai_next
        }
        throw ValueError("cannot connect to \(host):\(port): \(String(cString: strerror(lastErr)))")
    }
}

/// One blocking HTTP/1.1 POST (Connection: close). Plain HTTP only: the
/// exporter talks to a collector on the node or its network. Returns the
/// status code.
enum HTTPPost {
    static func post(_ e: HTTPEndpoint, contentType: String, body: [UInt8], timeoutSeconds: Int = 10) throws -> Int {
        let fd = try Dial.connect(host: e.host, port: e.port, type: Int32(SOCK_STREAM.rawValue), timeoutSeconds: timeoutSeconds)
        defer { close(fd) }
        let hostHeader = e.host.contains(":") ? "[\(e.host)]:\(e.port)" : "\(e.host):\(e.port)"
        var req = Array(
            "POST \(e.path) HTTP/1.1\r\nHost: \(hostHeader)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\nUser-Agent: flowmeterd/\(FlowmeterVersion.current)\r\nConnection: close\r\n\r\n"
                .utf8)
        req += body
        var off = 0
        while off < req.count {
            let w = req.withUnsafeBytes { send(fd, $0.baseAddress! + off, req.count - off, Int32(MSG_NOSIGNAL)) }
            if w < 0 {
                if errno == EINTR { continue }
                throw ValueError("send to \(e): \(String(cString: strerror(errno)))")
            }
            off += w
        }
        // The status line is all we need; read until it is complete.
        var head: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while !head.contains(0x0A) {
            let r = recv(fd, &buf, buf.count, 0)
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { throw ValueError("no response from \(e)\(r < 0 ? ": " + String(cString: strerror(errno)) : "")") }
            head += buf[0..<r]
        }
        let line = String(decoding: head.prefix { $0 != 0x0D && $0 != 0x0A }, as: UTF8.self)
        let parts = line.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let code = Int(parts[1]) else {
            throw ValueError("bad response from \(e): \(line)")
        }
        return code
    }
}

/// Pushes OTLP metrics on a thread of its own: a bounded queue of export
/// requests, retried with exponential backoff while the collector is down.
/// Requests carry cumulative values, so when the queue is full the oldest is
/// dropped (a newer one carries everything it had); every drop is counted.
public final class OTLPPusher: @unchecked Sendable {
    public struct Counters: Sendable, Equatable {
        /// Requests handed over (enqueued), sent, failed attempts, dropped.
        public var queued: UInt64 = 0, sent: UInt64 = 0, failed: UInt64 = 0, dropped: UInt64 = 0
        public var lastSuccessUnixSeconds: Double = 0
        /// Requests waiting (the one being sent included).
        public var queueLength = 0
    }

    public let endpoint: HTTPEndpoint
    public let capacity: Int
    private let minBackoff: Double, maxBackoff: Double
    private let state: Mutex<(queue: [[UInt8]], counters: Counters, running: Bool)>
    private let wake = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let onError: @Sendable (String) -> Void

    public init(
        endpoint: HTTPEndpoint, capacity: Int = 16, minBackoffSeconds: Double = 0.5, maxBackoffSeconds: Double = 30,
        onError: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.endpoint = endpoint; self.capacity = max(1, capacity)
        self.minBackoff = minBackoffSeconds; self.maxBackoff = maxBackoffSeconds; self.onError = onError
        state = Mutex(([], Counters(), true))
        let t = Thread { [self] in loop() }
        t.name = "flowmeter-otlp"
        t.start()
    }

    public var counters: Counters {
        state.withLock { s in
            var c = s.counters
            c.queueLength = s.queue.count
            return c
        }
    }

    /// Queues one export request (never blocks).
    public func enqueue(_ body: [UInt8]) {
        state.withLock { s in
            if s.queue.count >= capacity {
                s.queue.removeFirst()
                s.counters.dropped += 1
            }
            s.queue.append(body)
            s.counters.queued += 1
        }
        wake.signal()
    }

    /// Stops after one last attempt at what is queued (bounded by `timeout`);
    /// what is still queued then counts as dropped.
    public func stop(timeout: Double = 5) {
        state.withLock { $0.running = false }
        wake.signal()
        _ = finished.wait(timeout: .now() + timeout)
    }

    private func loop() {
        var backoff = minBackoff
        while true {
            let next: [UInt8]? = state.withLock { $0.queue.first }
            let running = state.withLock { $0.running }
            guard let body = next else {
                if !running { break }
                _ = wake.wait(timeout: .now() + 1)
                continue
            }
            do {
                let code = try HTTPPost.post(endpoint, contentType: "application/x-protobuf", body: body)
                guard (200..<300).contains(code) else { throw ValueError("HTTP \(code)") }
                state.withLock { s in
                    if !s.queue.isEmpty { s.queue.removeFirst() }
                    s.counters.sent += 1
                    s.counters.lastSuccessUnixSeconds = Date().timeIntervalSince1970
                }
                backoff = minBackoff
            } catch {
                state.withLock { $0.counters.failed += 1 }
                onError("\(error)")
                if !running {
                    state.withLock { s in
                        s.counters.dropped += UInt64(s.queue.count); s.queue.removeAll()
                    }
                    break
                }
                // Sleep, but wake early to stop.
                _ = wake.wait(timeout: .now() + backoff)
                backoff = min(maxBackoff, backoff * 2)
            }
        }
        finished.signal()
    }
}

/// Sends IPFIX messages over UDP to one collector.
public final class IPFIXSender: @unchecked Sendable {
    public let collector: String
    private let fd: Int32

    /// HOST:PORT or [V6]:PORT.
    public init(collector: String) throws {
        self.collector = collector
        let addr = try ListenAddress(parsing: collector)
        fd = try Dial.connect(host: addr.host, port: UInt16(addr.port), type: Int32(SOCK_DGRAM.rawValue), timeoutSeconds: 2)
    }

    /// Sends each message; returns the flow records sent and not sent (and
    /// the last error). A connected UDP socket reports an earlier datagram's
    /// ICMP "port unreachable" as ECONNREFUSED on a later send.
    public func send(_ messages: [[UInt8]]) -> (sent: Int, failed: Int, error: String?) {
        var sent = 0, failed = 0
        var lastError: String?
        for m in messages {
            let w = m.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, m.count, Int32(MSG_NOSIGNAL)) }
            let n = Self.dataRecords(in: m)
            if w == m.count {
                sent += n
            } else {
                failed += n
                lastError = String(cString: strerror(errno))
            }
        }
        return (sent, failed, lastError)
    }

    /// Data records in one message (its data sets' lengths over the record size of their template).
    static func dataRecords(in m: [UInt8]) -> Int {
        var off = IPFIXEncoder.headerBytes, n = 0
        while off + 4 <= m.count {
            let id = Int(m[off]) << 8 | Int(m[off + 1]), len = Int(m[off + 2]) << 8 | Int(m[off + 3])
            guard len >= 4 else { break }
            if id == Int(IPFIXEncoder.ipv4TemplateID) { n += (len - 4) / IPFIXEncoder.ipv4RecordBytes }
            if id == Int(IPFIXEncoder.ipv6TemplateID) { n += (len - 4) / IPFIXEncoder.ipv6RecordBytes }
            off += len
        }
        return n
    }

    deinit { close(fd) }
}
