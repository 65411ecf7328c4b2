// CPU per OTLP export at N series (tools/bench otlp [N]): the former
// transport, a blocking hand-written HTTP/1.1 POST over a raw socket
// (FormerPost below, kept here only as the baseline this benchmark measures
// against; flowmeterd no longer has it), against the kept-library transports
// that replaced it: async-http-client (plain, gzip, TLS) and grpc-swift 2
// (plain, TLS). Each export is the whole cost on the daemon's side: building
// and encoding the request from the families, compressing, sending and
// reading the answer. CPU is the process's (every thread: NIO's event loops
// included), from getrusage, per export; the receivers are other processes
// (Tests/e2e/otlp_receiver.py --quiet, started by tools/bench). Variants are
// interleaved round by round; medians are printed.
import FlowmeterCore
import FlowmeterExport
import Foundation
import Synchronization

enum OTLPBench {
    /// N counter series shaped like the per-pair ones (4 labels).
    static func families(_ n: Int) -> [MetricFamilyData] {
        var series: [MetricFamilyData.Series] = []
        for i in 0..<n {
            let peer: String = "10.\(i / 65536 % 256).\(i / 256 % 256).\(i % 256)"
            let transport: String = i % 3 == 0 ? "udp" : "tcp"
            let direction: String = i % 2 == 0 ? "transmit" : "receive"
            let labels: [(String, String)] = [
                ("service", "svc-\(i % 97)"), ("peer_service", peer), ("transport", transport), ("direction", direction),
            ]
            series.append(MetricFamilyData.Series(labels: labels, value: .number(Double(i * 1500))))
        }
        return [
            MetricFamilyData(
                name: "flowmeter_network_io_bytes_total", kind: .counter, help: "Payload bytes per service pair.", series: series)
        ]
    }

    static func cpuSeconds() -> Double {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Double(u.ru_utime.tv_sec) + Double(u.ru_utime.tv_usec) / 1e6 + Double(u.ru_stime.tv_sec) + Double(u.ru_stime.tv_usec) / 1e6
    }

    /// Waits for an async send on this thread (as OTLPPusher's thread does).
    static func blocking(_ t: any OTLPTransport, _ body: [UInt8]) -> OTLPOutcome {
        let done = DispatchSemaphore(value: 0)
        let out = Mutex<OTLPOutcome?>(nil)
        Task {
            let r = await t.send(body)
            out.withLock { $0 = r }
            done.signal()
        }
        done.wait()
        return out.withLock { $0! }
    }

    /// args: series rounds httpPort grpcPort tlsHTTPPort tlsGRPCPort caFile
    static func run(_ args: [String]) throws {
        guard args.count == 7, let n = Int(args[0]), let rounds = Int(args[1]) else {
            throw ValueError("usage: flowmeter-bench otlp SERIES ROUNDS HTTP_PORT GRPC_PORT TLS_HTTP_PORT TLS_GRPC_PORT CA_FILE")
        }
        let fam = families(n)
        func request() -> [UInt8] {
            OTLPEncoder.request(
                families: fam, resource: [("service.name", "flowmeterd")], scopeVersion: "bench", startUnixNanos: 1,
                nowUnixNanos: UInt64(Date().timeIntervalSince1970 * 1e9))
        }
        let size = request().count
        func settings(_ proto: OTLPProtocol, _ url: String, gzip: Bool = false) throws -> OTLPTransportSettings {
            let tls = url.hasPrefix("https")
            return OTLPTransportSettings(
                proto: proto, endpoint: try OTLPEndpoint(parsing: url, for: proto), caFile: tls ? args[6] : nil, gzip: gzip)
        }
        let former = try FormerPost.Endpoint(host: "127.0.0.1", port: UInt16(args[2])!, path: "/v1/metrics")
        let variants: [(String, (([UInt8]) -> Bool))] = try {
            let http = try settings(.httpProtobuf, "http://127.0.0.1:\(args[2])/v1/metrics").makeTransport()
            let httpGzip = try settings(.httpProtobuf, "http://127.0.0.1:\(args[2])/v1/metrics", gzip: true).makeTransport()
            let https = try settings(.httpProtobuf, "https://127.0.0.1:\(args[4])/v1/metrics").makeTransport()
            let grpc = try settings(.grpc, "http://127.0.0.1:\(args[3])").makeTransport()
            let grpcs = try settings(.grpc, "https://127.0.0.1:\(args[5])").makeTransport()
            func ok(_ o: OTLPOutcome) -> Bool { if case .accepted = o { return true } else { return false } }
            return [
                ("former: hand-written HTTP/1.1 POST", { (try? FormerPost.post(former, body: $0)) == 200 }),
                ("http/protobuf, async-http-client", { ok(blocking(http, $0)) }),
                ("http/protobuf, async-http-client, gzip", { ok(blocking(httpGzip, $0)) }),
                ("http/protobuf, async-http-client, TLS", { ok(blocking(https, $0)) }),
                ("grpc, grpc-swift 2", { ok(blocking(grpc, $0)) }),
                ("grpc, grpc-swift 2, TLS", { ok(blocking(grpcs, $0)) }),
            ]
        }()
        // One warm-up export each (connections, TLS handshakes), not measured.
        for (name, send) in variants where !send(request()) { throw ValueError("otlp bench: \(name): the warm-up export failed") }
        var cpu: [String: [Double]] = [:], wall: [String: [Double]] = [:]
        for round in 0..<rounds {
            let order = round % 2 == 0 ? variants : variants.reversed()
            for (name, send) in order {
                let c0 = cpuSeconds(), w0 = Date()
                let body = request()
                guard send(body) else { throw ValueError("otlp bench: \(name): an export failed") }
                cpu[name, default: []].append((cpuSeconds() - c0) * 1000)
                wall[name, default: []].append(Date().timeIntervalSince(w0) * 1000)
            }
        }
        print("otlp: \(n) series, request \(size) bytes, \(rounds) rounds; CPU of the exporting process per export (encode + send)")
        print("variant".padding(toLength: 44, withPad: " ", startingAt: 0) + "  CPU ms (median)  wall ms (median)")
        let base = median(cpu[variants[0].0]!)
        for (name, _) in variants {
            let c = median(cpu[name]!)
            print(
                name.padding(toLength: 44, withPad: " ", startingAt: 0)
                    + String(format: "  %14.1f  %16.1f   %.2fx the former", c, median(wall[name]!), c / base))
        }
    }
}

/// The transport flowmeterd had before async-http-client and grpc-swift: one
/// blocking HTTP/1.1 POST per export on a new connection (Connection: close).
/// Kept only as this benchmark's baseline.
enum FormerPost {
    struct Endpoint { let host: String, port: UInt16, path: String }

    static func post(_ e: Endpoint, body: [UInt8]) throws -> Int {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(e.host, String(e.port), &hints, &res) == 0, let a = res else { throw ValueError("resolve \(e.host)") }
        defer { freeaddrinfo(a) }
        let fd = socket(a.pointee.ai_family, a.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), a.pointee.ai_protocol)
        guard fd >= 0 else { throw ValueError("socket") }
        defer { close(fd) }
        guard connect(fd, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 else { throw ValueError("connect") }
        var req = Array(
            "POST \(e.path) HTTP/1.1\r\nHost: \(e.host):\(e.port)\r\nContent-Type: application/x-protobuf\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n"
                .utf8)
        req += body
        var off = 0
        while off < req.count {
            let w = req.withUnsafeBytes { send(fd, $0.baseAddress! + off, req.count - off, Int32(MSG_NOSIGNAL)) }
            guard w > 0 else { throw ValueError("send") }
            off += w
        }
        var head: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while !head.contains(0x0A) {
            let r = recv(fd, &buf, buf.count, 0)
            guard r > 0 else { throw ValueError("no response") }
            head += buf[0..<r]
        }
        let line = String(decoding: head.prefix { $0 != 0x0D && $0 != 0x0A }, as: UTF8.self)
        let parts = line.split(separator: " ")
        guard parts.count >= 2, let code = Int(parts[1]) else { throw ValueError("bad response") }
        return code
    }
}
