import FlowmeterCore
import FlowmeterOTLPProto
import Foundation
import Synchronization
import Testing

@testable import FlowmeterExport

/// The transport-independent parts of the OTLP exporter: what a response
/// means (HTTP statuses, Retry-After, gRPC codes, partial_success), headers,
/// gzip, and the pusher's queue and counting over a scripted transport (a
/// fake only here, for the pure logic; the e2e tests use real receivers).
@Suite struct OTLPTransportTests {
    /// The two messages CI saw for one wrong-CA fault (grpc-swift adds a
    /// sentence to the first attempt's detail) are one kind; a different
    /// cause, or a changed endpoint, is another.
    @Test func failureKindIgnoresLibraryDetailAndRetryDelay() {
        let summary = "gRPC UNAVAILABLE: TLS handshake with 127.0.0.1:1 failed: the collector's certificate is not signed by a trusted CA"
        let first = summary + " [unavailable: \"Channel is in a transient failure state. The server closed\" (cause: \"x\")]"
        let second = summary + " [unavailable: \"The server closed\" (cause: \"x\")]"
        #expect(OTLPPusher.failureKind(first) == OTLPPusher.failureKind(second))
        #expect(OTLPPusher.failureKind(first) == summary)
        #expect(OTLPPusher.failureKind("HTTP 503 (retrying after 3 s, as the collector asked)") == "HTTP 503")
        #expect(OTLPPusher.failureKind("HTTP 503 (retrying after 9 s, as the collector asked)") == OTLPPusher.failureKind("HTTP 503"))
        #expect(OTLPPusher.failureKind("HTTP 503") != OTLPPusher.failureKind("HTTP 400: bad [x]"))
        #expect(OTLPPusher.failureKind(summary) != OTLPPusher.failureKind(summary.replacingOccurrences(of: ":1 ", with: ":2 ")))
    }

    @Test func httpStatuses() throws {
        #expect(OTLPOutcome.http(status: 200, retryAfter: nil, body: []) == .accepted(rejectedPoints: 0, message: ""))
        var r = Opentelemetry_Proto_Collector_Metrics_V1_ExportMetricsServiceResponse()
        r.partialSuccess.rejectedDataPoints = 7
        r.partialSuccess.errorMessage = "too old"
        #expect(
            OTLPOutcome.http(status: 200, retryAfter: nil, body: try r.serializedBytes())
                == .accepted(rejectedPoints: 7, message: "too old"))
        #expect(OTLPOutcome.http(status: 503, retryAfter: "3", body: []) == .retry("HTTP 503", retryAfterSeconds: 3))
        #expect(OTLPOutcome.http(status: 429, retryAfter: nil, body: []) == .retry("HTTP 429", retryAfterSeconds: nil))
        #expect(OTLPOutcome.http(status: 502, retryAfter: "junk", body: []) == .retry("HTTP 502", retryAfterSeconds: nil))
        // A huge Retry-After is bounded.
        #expect(OTLPOutcome.http(status: 503, retryAfter: "86400", body: []) == .retry("HTTP 503", retryAfterSeconds: 300))
        #expect(OTLPOutcome.http(status: 400, retryAfter: nil, body: Array("bad metric\n".utf8)) == .reject("HTTP 400: bad metric"))
        #expect(OTLPOutcome.http(status: 401, retryAfter: "5", body: []) == .reject("HTTP 401"))
    }

    @Test func retryAfterAsAnHTTPDate() {
        let now = Date(timeIntervalSince1970: 1_700_000_000)  // Tue, 14 Nov 2023 22:13:20 GMT
        #expect(OTLPOutcome.retryAfterSeconds("Tue, 14 Nov 2023 22:13:30 GMT", now: now) == 10)
        #expect(OTLPOutcome.retryAfterSeconds("Tue, 14 Nov 2023 22:13:00 GMT", now: now) == 0)
        #expect(OTLPOutcome.retryAfterSeconds("soon", now: now) == nil)
    }

    @Test func grpcCodes() {
        #expect(
            OTLPOutcome.grpc(code: 14, message: "down", retryInfoSeconds: nil) == .retry("gRPC UNAVAILABLE: down", retryAfterSeconds: nil))
        #expect(OTLPOutcome.grpc(code: 4, message: "", retryInfoSeconds: 2) == .retry("gRPC DEADLINE_EXCEEDED", retryAfterSeconds: 2))
        // RESOURCE_EXHAUSTED is retried only with RetryInfo.
        #expect(OTLPOutcome.grpc(code: 8, message: "", retryInfoSeconds: nil) == .reject("gRPC RESOURCE_EXHAUSTED"))
        #expect(OTLPOutcome.grpc(code: 8, message: "", retryInfoSeconds: 1.5) == .retry("gRPC RESOURCE_EXHAUSTED", retryAfterSeconds: 1.5))
        #expect(OTLPOutcome.grpc(code: 16, message: "no token", retryInfoSeconds: nil) == .reject("gRPC UNAUTHENTICATED: no token"))
        #expect(OTLPOutcome.grpc(code: 3, message: "", retryInfoSeconds: 9) == .reject("gRPC INVALID_ARGUMENT"))
    }

    @Test func headers() throws {
        let h = try OTLPHeaders.parseList("Authorization=Bearer%20s3cret, x-scope-orgid=t1,")
        #expect(h.map { $0.0 } == ["authorization", "x-scope-orgid"] && h[0].1 == "Bearer s3cret")
        #expect(OTLPHeaders.forLog(h) == "authorization=<redacted>,x-scope-orgid=t1")
        // Errors name the key, never the value.
        do {
            _ = try OTLPHeaders.parse("bad key=s3cret")
            Issue.record("accepted a bad name")
        } catch { #expect(!"\(error)".contains("s3cret"), "\(error)") }
        do {
            _ = try OTLPHeaders.parse("authorization s3cret")
            Issue.record("accepted an entry without '='")
        } catch { #expect(!"\(error)".contains("s3cret"), "\(error)") }
        #expect(throws: ValueError.self) { try OTLPHeaders.parse("content-type=text/plain") }
        #expect(throws: ValueError.self) { try OTLPHeaders.parse("x=a%0Db") }
        let merged = OTLPHeaders.merge([[("a", "1"), ("b", "2")], [("b", "3")]])
        #expect(merged.map { "\($0.0)=\($0.1)" } == ["a=1", "b=3"])
    }

    /// gzip output that gunzip (Debian's gzip) turns back into the input.
    @Test func gzipIsGzip() throws {
        var input: [UInt8] = []
        for i in 0..<50_000 { input.append(UInt8(truncatingIfNeeded: i * 7 % 251)) }
        let z = Gzip.compress(input)
        #expect(z.count < input.count && z[0] == 0x1f && z[1] == 0x8b)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/gzip")
        p.arguments = ["-dc"]
        let inPipe = Pipe(), outPipe = Pipe()
        p.standardInput = inPipe
        p.standardOutput = outPipe
        try p.run()
        inPipe.fileHandleForWriting.write(Data(z))
        try inPipe.fileHandleForWriting.close()
        let out = outPipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0 && Array(out) == input)
    }

    /// Answers each attempt from a script (then accepts everything).
    final class Scripted: OTLPTransport {
        let script: Mutex<[OTLPOutcome]>
        let seen = Mutex<[(body: [UInt8], at: Date)]>([])
        init(_ s: [OTLPOutcome]) { script = Mutex(s) }
        func send(_ request: [UInt8]) async -> OTLPOutcome {
            seen.withLock { $0.append((request, Date())) }
            return script.withLock { $0.isEmpty ? .accepted(rejectedPoints: 0, message: "") : $0.removeFirst() }
        }
        func shutdown() async {}
    }

    func waitFor(_ what: () -> Bool) async throws {
        for _ in 0..<200 where !what() { try await Task.sleep(for: .milliseconds(20)) }
    }

    @Test func queueDropsTheOldestAndCountsIt() async throws {
        let t = Scripted(Array(repeating: .retry("down", retryAfterSeconds: nil), count: 100))
        let p = OTLPPusher(transport: t, capacity: 2, minBackoffSeconds: 5, maxBackoffSeconds: 5)
        for i in 0..<5 { p.enqueue([UInt8(i)]) }
        let c = p.counters
        #expect(c.queued == 5 && c.dropped == 3 && c.queueLength == 2 && c.sent == 0)
        // Generous: the attempt runs as a Task, and other tests' synchronous
        // work may hold the (2-thread) cooperative pool for a while. stop()
        // blocks its caller until that Task ends, so it waits on a thread of
        // its own: blocking one of the pool's two threads here left the
        // Task one thread, or none while another test blocked the other
        // (seen once: the stop timed out after 60 s).
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            Thread {
                p.stop(timeout: 60); done.resume()
            }.start()
        }
        let end = p.counters
        // On stop, what could not be delivered is dropped too: nothing is left unaccounted.
        #expect(end.queued == end.sent + end.dropped && end.queueLength == 0 && end.failed >= 1)
    }

    @Test func retriesHonourRetryAfterAndCountEachRequestOnce() async throws {
        let t = Scripted([
            .retry("HTTP 503", retryAfterSeconds: 1), .reject("HTTP 400"),
            .accepted(rejectedPoints: 3, message: "stale"),
        ])
        let partial = Mutex<[Int64]>([])
        let p = OTLPPusher(
            transport: t, capacity: 8, minBackoffSeconds: 0.05, maxBackoffSeconds: 0.05,
            onPartial: { n, _ in partial.withLock { $0.append(n) } })
        p.enqueue([1])
        try await waitFor { p.counters.queued == p.counters.sent + p.counters.dropped }
        p.enqueue([2])
        try await waitFor { p.counters.sent == 1 }
        p.enqueue([3])
        try await waitFor { p.counters.sent == 2 }
        p.stop()
        let c = p.counters
        let seen = t.seen.withLock { $0 }
        // [1]: 503 (retried after the second the collector asked, not the
        // 50 ms backoff), then 400 (rejected: dropped, not retried);
        // [2]: accepted with 3 points refused; [3]: accepted.
        #expect(seen.map(\.body) == [[1], [1], [2], [3]])
        #expect(seen[1].at.timeIntervalSince(seen[0].at) >= 0.95)
        #expect(c.queued == 3 && c.sent == 2 && c.dropped == 1 && c.failed == 2 && c.rejectedPoints == 3)
        #expect(partial.withLock { $0 } == [3])
    }
}
