import FlowmeterCore
import Foundation
import Synchronization

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

/// Pushes OTLP metrics on a thread of its own: a bounded queue of export
/// requests, retried with exponential backoff while the collector is down.
/// Requests carry cumulative values, so when the queue is full the oldest is
/// dropped (a newer one carries everything it had); every drop is counted.
/// The transport (HTTP/protobuf or gRPC) is asynchronous; this thread waits
/// for each attempt, so one request is in flight at a time, in order.
public final class OTLPPusher: @unchecked Sendable {
    public struct Counters: Sendable, Equatable {
        /// Requests handed over (enqueued), sent, failed attempts, dropped.
        public var queued: UInt64 = 0, sent: UInt64 = 0, failed: UInt64 = 0, dropped: UInt64 = 0
        /// Data points receivers refused in requests they accepted (partial_success).
        public var rejectedPoints: UInt64 = 0
        public var lastSuccessUnixSeconds: Double = 0
        /// Requests waiting (the one being sent included).
        public var queueLength = 0
    }

    public let capacity: Int
    let transport: any OTLPTransport
    private let minBackoff: Double, maxBackoff: Double
    private let state: Mutex<(queue: [[UInt8]], counters: Counters, running: Bool)>
    private let wake = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private let onError: @Sendable (String) -> Void
    private let onPartial: @Sendable (Int64, String) -> Void

    /// What two failure messages must share to be "the same failure" for a
    /// log that says each kind once: the message without its bracketed
    /// library detail and without a collector-given retry delay. Those vary
    /// between attempts of one failure (grpc-swift's first attempt adds
    /// "Channel is in a transient failure state", a Retry-After may change),
    /// and a log keyed on the whole text said one fault twice.
    public static func failureKind(_ message: String) -> String {
        var out = "", depth = 0
        for c in message {
            if c == "[" { depth += 1; continue }
            if c == "]" { depth = max(0, depth - 1); continue }
            if depth == 0 { out.append(c) }
        }
        if let r = out.range(of: " (retrying after ") { out = String(out[..<r.lowerBound]) }
        return out.trimmingCharacters(in: .whitespaces)
    }

    /// `onError` hears every failed attempt (and every rejected request);
    /// `onPartial` every accepted request with refused points.
    public init(
        transport: any OTLPTransport, capacity: Int = 16, minBackoffSeconds: Double = 0.5, maxBackoffSeconds: Double = 30,
        onError: @escaping @Sendable (String) -> Void = { _ in },
        onPartial: @escaping @Sendable (Int64, String) -> Void = { _, _ in }
    ) {
        self.transport = transport; self.capacity = max(1, capacity)
        self.minBackoff = minBackoffSeconds; self.maxBackoff = maxBackoffSeconds
        self.onError = onError; self.onPartial = onPartial
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

    /// One attempt, waited for on this (non-cooperative) thread.
    private func attempt(_ body: [UInt8]) -> OTLPOutcome {
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<OTLPOutcome?>(nil)
        let transport = self.transport
        Task {
            let r = await transport.send(body)
            result.withLock { $0 = r }
            done.signal()
        }
        done.wait()
        return result.withLock { $0! }
    }

    private func loop() {
        var backoff = minBackoff
        sending: while true {
            let next: [UInt8]? = state.withLock { $0.queue.first }
            let running = state.withLock { $0.running }
            guard let body = next else {
                if !running { break }
                _ = wake.wait(timeout: .now() + 1)
                continue
            }
            switch attempt(body) {
            case .accepted(let rejected, let message):
                state.withLock { s in
                    if !s.queue.isEmpty { s.queue.removeFirst() }
                    s.counters.sent += 1
                    s.counters.rejectedPoints += UInt64(rejected)
                    s.counters.lastSuccessUnixSeconds = Date().timeIntervalSince1970
                }
                if rejected > 0 || !message.isEmpty { onPartial(rejected, message) }
                backoff = minBackoff
            case .reject(let why):
                // Sending it again cannot succeed: a failed attempt, and the
                // request is dropped (its values reach the collector with the
                // next request, should that one be accepted).
                state.withLock { s in
                    if !s.queue.isEmpty { s.queue.removeFirst() }
                    s.counters.failed += 1
                    s.counters.dropped += 1
                }
                onError("the collector rejected the request (not retried): \(why)")
                if !running { continue }
                _ = wake.wait(timeout: .now() + backoff)
                backoff = min(maxBackoff, backoff * 2)
            case .retry(let why, let after):
                state.withLock { $0.counters.failed += 1 }
                onError(after.map { "\(why) (retrying after \($0) s, as the collector asked)" } ?? why)
                if !running {
                    state.withLock { s in
                        s.counters.dropped += UInt64(s.queue.count); s.queue.removeAll()
                    }
                    break sending
                }
                // Sleep (at least as long as the collector asked), but wake early to stop.
                let wait = max(backoff, after ?? 0)
                let deadline = Date().addingTimeInterval(wait)
                while Date() < deadline, state.withLock({ $0.running }) {
                    _ = wake.wait(timeout: .now() + deadline.timeIntervalSinceNow)
                }
                backoff = min(maxBackoff, backoff * 2)
            }
        }
        let transport = self.transport
        let closed = DispatchSemaphore(value: 0)
        Task {
            await transport.shutdown()
            closed.signal()
        }
        _ = closed.wait(timeout: .now() + 2)
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
