import FlowmeterTestSupport
import Foundation
import Logging
import Testing

@testable import FlowmeterCore
@testable import FlowmeterExport

/// Property tests of the two HTTP endpoints with seeded random requests over
/// real sockets: the local API on a unix socket and the metrics endpoint on
/// loopback TCP, each the real server (Hummingbird, our middleware and
/// routes). Whatever arrives, the server answers within a bound or closes,
/// never with 5xx, gives 200 only to GET of a path it serves, and keeps
/// serving afterwards. Well-formed requests get exactly the status the
/// table of docs/reliability.md, "Bad input", promises.
@Suite(.serialized) struct HTTPFuzzTests {
    static let snapshot = APISnapshot(
        version: 1, time_unix_ms: 1_000, host: "h", kernel: "k", flowmeter_version: "v", uptime_seconds: 1,
        interval_seconds: 1, hooks: [.init(hook: "tc", mode: "tcx")],
        interfaces: [.init(name: "eth0", tx_bytes: 1, rx_bytes: 2, tx_packets: 1, rx_packets: 1)],
        services: [], connections: [], flows: [],
        self_metrics: .init(
            flows_ring_lost: 0, events_ring_lost: 0, flow_table_entries: 0,
            flow_table_insert_failures: 0, series_dropped: 0, sockets_tracked: 0))

    static var quiet: Logger {
        var l = Logger(label: "fuzz")
        l.logLevel = .critical
        return l
    }

    /// Attached, one interval passed, no stall: /readyz answers 200.
    static var ready: Readiness {
        var r = Readiness()
        r.attachment = .attached
        r.intervalPassed(stalls: ["flows": 0])
        return r
    }

    @Test func apiRequests() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fm-fuzz-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("api.sock").path
        let (ready, readyGo) = AsyncStream<Void>.makeStream()
        let app = APIServer.make(
            socketPath: path, logger: Self.quiet, onRunning: { readyGo.yield() },
            snapshot: { Self.snapshot })
        let server = Task { try await app.runService(gracefulShutdownSignals: []) }
        defer { server.cancel() }
        for await _ in ready { break }

        await Self.fuzz("HTTP fuzz (API, unix socket)", .unix(path), api: true)
    }

    /// Random requests to a running server, each checked; and that it still
    /// answers every 200 cases and at the end.
    static func fuzz(_ name: String, _ target: Endpoint, api: Bool) async {
        var run = FuzzRun(name, cases: 2000, seconds: 15)
        run = await onThread { [run] in
            var run = run
            _ = run.run { r, i, run in
                let req = RequestGen.request(&r, api: api)
                Property.check(req, on: target, api: api, i, &run)
                if i % 200 == 0 { Property.stillServes(target, api: api, i, &run) }
            }
            Property.stillServes(target, api: api, -1, &run)
            return run
        }
        run.report()
    }

    @Test func metricsRequests() async throws {
        let (ready, readyGo) = AsyncStream<Int>.makeStream()
        let app = MetricsServer.make(
            listen: ListenAddress(host: "127.0.0.1", port: 0), logger: Self.quiet,
            onRunning: { port in readyGo.yield(port) },
            readiness: { Self.ready },
            render: { om in om ? "# EOF\n" : "flowmeter_build_info{version=\"v\"} 1\n" })
        let server = Task { try await app.runService(gracefulShutdownSignals: []) }
        defer { server.cancel() }
        var port = 0
        for await p in ready { port = p; break }

        await Self.fuzz("HTTP fuzz (metrics, TCP)", .tcp(port), api: false)
    }

    /// The pure parts the servers rely on, with random text.
    @Test func headerAndTextHelpers() {
        var run = FuzzRun("HTTP fuzz (helpers)", cases: 5000, seconds: 5)
        _ = run.run { r, i, run in
            // Accept: OpenMetrics only when the header names it.
            let accept = RequestGen.acceptHeader(&r)
            run.note(i, accept)
            if MetricsServer.wantsOpenMetrics(accept), !accept.lowercased().contains("application/openmetrics-text") {
                run.fail(i, "OpenMetrics chosen for an Accept header that does not name it", input: accept)
            }
            // Error messages echo the client's path: always valid JSON, the same text back.
            let text = RequestGen.randomText(&r, count: r.int(0...40))
            let doc = "{\"e\":\(APIServer.jsonString(text))}"
            let back = (try? JSONSerialization.jsonObject(with: Data(doc.utf8))) as? [String: String]
            if back.map({ Array($0["e"]?.unicodeScalars ?? "".unicodeScalars) }) != Array(text.unicodeScalars) {
                run.fail(i, "jsonString did not round-trip", input: text)
            }
        }
        run.report()
    }

    @Test(
        arguments: [
            ("GET", nil, nil, nil), ("HEAD", nil, nil, 405), ("POST", "0", nil, 405), ("PUT", nil, "chunked", 405),
            ("GET", "0", nil, nil), ("GET", " 0 ", nil, nil), ("GET", "5", nil, 413), ("GET", nil, "chunked", 413),
        ] as [(String, String?, String?, Int?)])
    func refusals(method: String, contentLength: String?, transferEncoding: String?, status: Int?) {
        #expect(HTTPGuard.refusal(method: method, contentLength: contentLength, transferEncoding: transferEncoding)?.status == status)
    }

    /// Runs blocking socket code on a thread of its own, off the cooperative
    /// pool that the server's tasks need.
    static func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { c in
            let t = Thread { c.resume(returning: body()) }
            t.stackSize = 8 << 20
            t.start()
        }
    }
}

// MARK: - Properties

enum Endpoint: Sendable {
    case unix(String)
    case tcp(Int)
}

struct Answer {
    var status: Int?  // nil: closed without an answer
    var headers: [String: String] = [:]
    var body: [UInt8] = []
    var timedOut = false
}

enum Property {
    static let apiPaths: Set<String> = ["/v1/snapshot", "/v1/stream"]
    static let metricsPaths: Set<String> = ["/metrics", "/healthz", "/readyz"]

    static func check(_ req: GeneratedRequest, on target: Endpoint, api: Bool, _ i: Int, _ run: inout FuzzRun) {
        let shown = String(decoding: req.bytes.prefix(2000), as: UTF8.self)
        run.note(i, shown)
        let a = exchange(req.bytes, target)
        if a.timedOut { run.fail(i, "no answer and no close within 5 s", input: shown); return }
        guard let status = a.status else {
            if req.expected != nil { run.fail(i, "closed without an answer to a well-formed request", input: shown) }
            return
        }
        if let want = req.expected, want != status {
            run.fail(i, "status \(status), want \(want)", input: shown)
        }
        if status >= 500 || ![200, 400, 404, 405, 413].contains(status) {
            run.fail(i, "status \(status)", input: shown)
        }
        // What got past HTTP's parser, as a client would read its first line.
        // HTTP's parser skips empty lines before a request, so does this.
        let start = req.bytes.drop(while: { $0 == 13 || $0 == 10 })
        let line = start.split(separator: UInt8(ascii: "\r"), maxSplits: 1, omittingEmptySubsequences: false).first ?? []
        let words = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        let method = words.first ?? ""
        if [200, 404, 413].contains(status), method != "GET" {
            run.fail(i, "\(status) for method \(String(reflecting: method)): only GET gets past the guard", input: shown)
        }
        if status == 405, method == "GET" { run.fail(i, "405 for GET", input: shown) }
        if status == 200 {
            var target = words.count > 1 ? words[1] : ""
            if let r = target.range(of: "://") {
                target = String(target[r.upperBound...].drop(while: { $0 != "/" }))
            }
            let path = String(target.prefix { $0 != "?" && $0 != "#" })
            if !served(path, api: api) {
                run.fail(i, "200 for path \(String(reflecting: path)), which is not served", input: shown)
            }
        }
        // Refusals from our code say why: JSON on the API, text on /metrics.
        // (Answers to HEAD have no body by HTTP's rules; after CONNECT the
        // parser hands the connection over and the body is not sent.)
        if [404, 405, 413].contains(status), api || status != 404, method != "HEAD", method != "CONNECT" {
            let body = String(decoding: a.body, as: UTF8.self)
            if api {
                let doc = (try? JSONSerialization.jsonObject(with: Data(a.body))) as? [String: Any]
                if doc?["version"] as? Int != 1 || doc?["status"] as? Int != status || (doc?["error"] as? String ?? "").isEmpty {
                    run.fail(i, "\(status) without the JSON error document: \(String(reflecting: body))", input: shown)
                }
            } else if body.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
                run.fail(i, "\(status) without a reason", input: shown)
            }
        }
        if [405, 413].contains(status), a.headers["connection"]?.lowercased() != "close" {
            run.fail(i, "\(status) does not close the connection", input: shown)
        }
    }

    /// The router ignores empty path components ("/metrics/", "//metrics");
    /// the API answers only below "/v1/".
    static func served(_ path: String, api: Bool) -> Bool {
        let normal = "/" + path.split(separator: "/").joined(separator: "/")
        return api ? path.hasPrefix("/v1/") && apiPaths.contains(normal) : metricsPaths.contains(normal)
    }

    static func stillServes(_ target: Endpoint, api: Bool, _ i: Int, _ run: inout FuzzRun) {
        let path = api ? "/v1/snapshot" : "/metrics"
        let req = Array("GET \(path) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8)
        let a = exchange(req, target)
        let ok = a.status == 200 && (!api || (try? JSONDecoder().decode(APISnapshot.self, from: Data(a.body))) != nil)
        if !ok { run.fail(i, "a plain GET \(path) after the random requests: \(a.status.map(String.init) ?? "no answer")", input: "") }
    }

    /// Sends `bytes`, ends the sending side (so a partial request is all the
    /// server will ever get), and reads one answer's head and body.
    static func exchange(_ bytes: [UInt8], _ target: Endpoint) -> Answer {
        let fd: Int32
        switch target {
        case .unix(let path):
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
            let r = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard r == 0 else { close(fd); return Answer(status: nil) }
        case .tcp(let port):
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
            let r = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard r == 0 else { close(fd); return Answer(status: nil) }
        }
        defer { close(fd) }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n > 0 { off += n; continue }
            // A server that refused the request stops reading it; give up
            // sending after a second without room (the answer is still there
            // to read) rather than wait for its idle timeout.
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && poll(&p, 1, 1000) == 1 { continue }
            break
        }
        shutdown(fd, Int32(SHUT_WR))
        var data: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        var answer = Answer()
        var bodyStart: Int?
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { answer.timedOut = true; break }
            if n <= 0 { break }
            data += buf[0..<n]
            if bodyStart == nil, let end = headEnd(data) {
                bodyStart = end + 4
                parseHead(Array(data[..<end]), into: &answer)
            }
            if let s = bodyStart {
                // Enough: the body's length, or the head of a stream that never ends.
                if let len = answer.headers["content-length"].flatMap({ Int($0) }), data.count - s >= len { break }
                if answer.headers["content-length"] == nil { break }
            }
        }
        if let s = bodyStart {
            let len = answer.headers["content-length"].flatMap { Int($0) } ?? 0
            answer.body = Array(data[min(s, data.count)..<min(s + len, data.count)])
        } else if !data.isEmpty {
            answer.status = -1  // bytes that are no HTTP answer
        }
        return answer
    }

    static func headEnd(_ d: [UInt8]) -> Int? {
        guard d.count >= 4 else { return nil }
        for i in 0...(d.count - 4) where d[i] == 13 && d[i + 1] == 10 && d[i + 2] == 13 && d[i + 3] == 10 { return i }
        return nil
    }

    static func parseHead(_ head: [UInt8], into a: inout Answer) {
        let lines = String(decoding: head, as: UTF8.self).components(separatedBy: "\r\n")
        let first = lines.first?.split(separator: " ") ?? []
        a.status = first.count > 1 && first[0].hasPrefix("HTTP/1.") ? Int(first[1]) ?? -1 : -1
        for l in lines.dropFirst() {
            guard let colon = l.firstIndex(of: ":") else { continue }
            a.headers[l[..<colon].lowercased()] = l[l.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
    }
}

// MARK: - Requests

struct GeneratedRequest {
    var bytes: [UInt8]
    /// The status a well-formed request must get; nil when the request was
    /// mangled and only the general properties hold.
    var expected: Int?
}

enum RequestGen {
    static let wellFormedMethods = ["GET", "GET", "GET", "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"]
    static let oddMethods = ["get", "BREW", "G ET", "", "CONNECT", "PRI", "GET\u{0}", "ÄÖÜ", String(repeating: "G", count: 300)]

    static func request(_ r: inout SeededRandom, api: Bool) -> GeneratedRequest {
        let served =
            api
            ? ["/v1/snapshot", "/v1/snapshot", "/v1/snapshot?x=1", "/v1/snapshot?view=flows&filter=a%20b"]
            : ["/metrics", "/metrics", "/healthz", "/readyz", "/metrics?x=1"]
        let unserved = [
            "/v1/", "/v1", "/", "/v2/snapshot", "/v1/nothing", "/metrics", "//v1/snapshot", "/v1/%73napshot",
            "/v1/snapshotx", "/V1/SNAPSHOT", "/v1/snapshot/extra", "/v1/snapshot/", "/v1//snapshot",
            "/metric", "/metricsx", "/v1/snapshot", "/METRICS", "/healthz/x", "//metrics", "/%6detrics", "/metrics/",
            "/ready", "/readyz/x",
        ]
        let odd = [
            "*", "http://flowmeter/v1/snapshot", "http://x/metrics", "/v1/snap\u{e9}", "/\u{1}", "", "v1/snapshot",
            "/" + String(repeating: "a", count: r.pick([100, 9000, 20000])), "/v1/snapshot#frag",
        ]
        var wellFormed = true
        let method: String
        if r.chance(0.9) { method = r.pick(wellFormedMethods) } else { method = r.pick(oddMethods); wellFormed = false }
        let path: String
        switch r.int(0...9) {
        case 0...4: path = r.pick(served)
        case 5...7: path = r.pick(unserved)
        default: path = r.pick(odd); wellFormed = false
        }
        let version =
            r.chance(0.9)
            ? r.pick(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"])
            : r.pick(["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "http/1.1", "HTTP/1.1 ", "HTTP/11", ""])
        if !version.hasPrefix("HTTP/1.") || version.count != 8 || version == "HTTP/1.2" { wellFormed = false }

        var headers: [(String, String)] = []
        if r.chance(0.9) { headers.append(("Host", "flowmeter")) }
        headers.append(("Connection", "close"))
        var contentLength: String?
        var transferEncoding: String?
        var body: [UInt8] = []
        switch r.int(0...9) {
        case 0:
            contentLength = r.pick(["0", "5", "100000"])
            body = Array(repeating: UInt8(ascii: "x"), count: min(Int(contentLength!)!, r.pick([0, 5, 100000])))
        case 1:
            transferEncoding = "chunked"
            body = Array("5\r\nhello\r\n0\r\n\r\n".utf8)
        case 2:
            contentLength = r.pick(["-1", "abc", "99999999999999999999999", "5, 6", ""])
            wellFormed = false
        default: break
        }
        if let cl = contentLength { headers.append(("Content-Length", cl)) }
        if let te = transferEncoding { headers.append(("Transfer-Encoding", te)) }
        if !api && r.chance(0.3) { headers.append(("Accept", acceptHeader(&r))) }
        for _ in 0..<r.pick([0, 0, 1, 3, 150]) {
            let name =
                r.chance(0.9) ? r.pick(["X-A", "User-Agent", "Accept-Encoding", "X-Forwarded-For"]) : randomText(&r, count: r.int(0...12))
            let value = r.chance(0.9) ? r.pick(["1", "curl/8", "gzip", ""]) : randomText(&r, count: r.pick([3, 20, 9000]))
            headers.append((name, value))
        }
        for (n, v) in headers {
            let okName =
                !n.isEmpty
                && n.unicodeScalars.allSatisfy {
                    $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "-_".unicodeScalars.contains($0))
                }
            let okValue = v.unicodeScalars.allSatisfy { $0.value >= 0x20 && $0.value < 0x7f }
            if !okName || !okValue { wellFormed = false }
        }
        let head = "\(method) \(path) \(version)\r\n" + headers.map { "\($0.0): \($0.1)\r\n" }.joined() + "\r\n"
        let headBytes = Array(head.utf8)
        // Past the bounds (HTTPGuard) the parser refuses with 400; near them
        // the exact accounting (names, values, the target) decides, so no
        // status is promised there.
        let overBounds =
            headBytes.count > HTTPGuard.maxHeaderBytes + 1000 || headers.count > HTTPGuard.maxHeaderFields + 5
            || headers.contains(where: { $0.1.utf8.count > HTTPGuard.maxHeaderFieldBytes + 100 }) || path.utf8.count > 17000
        let nearBounds =
            headBytes.count > HTTPGuard.maxHeaderBytes - 1000 || headers.count > HTTPGuard.maxHeaderFields - 5
            || headers.contains(where: { $0.1.utf8.count > HTTPGuard.maxHeaderFieldBytes - 100 }) || path.utf8.count > 7000
        var bytes = headBytes + body
        var expected: Int?
        if wellFormed && overBounds {
            expected = 400
        } else if wellFormed && !nearBounds {
            let p = String(path.prefix { $0 != "?" })
            expected =
                HTTPGuard.refusal(method: method, contentLength: contentLength, transferEncoding: transferEncoding)?.status
                ?? (Property.served(p, api: api) ? 200 : 404)
        }
        if r.chance(0.3) {
            bytes = mutate(bytes, &r)
            expected = nil
        }
        return GeneratedRequest(bytes: bytes, expected: expected)
    }

    static func mutate(_ input: [UInt8], _ r: inout SeededRandom) -> [UInt8] {
        var b = input
        for _ in 0..<r.int(1...4) {
            switch r.int(0...6) {
            case 0: if !b.isEmpty { b[r.int(0...(b.count - 1))] ^= 1 << UInt8(r.int(0...7)) }
            case 1: if !b.isEmpty { b[r.int(0...(b.count - 1))] = UInt8(r.int(0...255)) }
            case 2: b = Array(b.prefix(r.int(0...b.count)))
            case 3: b.insert(contentsOf: Array(randomText(&r, count: r.int(1...8)).utf8), at: r.int(0...b.count))
            case 4:  // CRLF made LF, or a stray CRLF
                if let i = b.firstIndex(of: 13) { b.remove(at: i) } else { b.insert(contentsOf: [13, 10], at: r.int(0...b.count)) }
            case 5: b += b  // pipelined: the same request twice
            default:
                if b.count > 2 {
                    let from = r.int(0...(b.count - 2)), to = min(b.count, from + r.int(1...40))
                    b.removeSubrange(from..<to)
                }
            }
        }
        return b
    }

    static func acceptHeader(_ r: inout SeededRandom) -> String {
        let types = [
            "application/openmetrics-text", "text/plain", "*/*", "application/json", "APPLICATION/OPENMETRICS-TEXT",
            "application/openmetrics-text;version=1.0.0", randomText(&r, count: 6),
        ]
        let params = ["", ";q=0.5", ";q=0", ";q=1", ";q=nan", ";q=-1", ";q=inf", ";q=", ";escaping=allow-utf-8", ";q=0.9;version=0.0.4"]
        return (0..<r.int(0...5)).map { _ in r.pick(types) + r.pick(params) }.joined(separator: r.pick([",", ", ", ",,", " , "]))
    }

    static func randomText(_ r: inout SeededRandom, count: Int) -> String {
        let pool: [UnicodeScalar] =
            Array("aZ09 -_:/?#%&=.,;\"\\{}[]\t".unicodeScalars)
            + [
                UnicodeScalar(0x0)!, UnicodeScalar(0x1)!, UnicodeScalar(0xa)!, UnicodeScalar(0xd)!, UnicodeScalar(0x7f)!,
                UnicodeScalar(0xe9)!, UnicodeScalar(0x2028)!, UnicodeScalar(0x202e)!, UnicodeScalar(0xfeff)!, UnicodeScalar(0x1f642)!,
            ]
        var s = String.UnicodeScalarView()
        for _ in 0..<count { s.append(r.pick(pool)) }
        return String(s)
    }
}
