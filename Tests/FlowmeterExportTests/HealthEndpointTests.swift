import Foundation
import Logging
import Synchronization
import Testing

@testable import FlowmeterCore
@testable import FlowmeterExport

/// /healthz and /readyz on the real metrics server (loopback TCP): /readyz
/// answers what the readiness says at each request, as JSON, 200 or 503;
/// /healthz answers 200 whatever it says; the request guard still holds.
@Suite(.serialized) struct HealthEndpointTests {
    static func request(_ method: String, _ path: String) -> [UInt8] {
        Array("\(method) \(path) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8)
    }

    static func json(_ a: Answer) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(a.body)) as? [String: Any])
    }

    @Test func readyzFollowsTheReadinessHealthzAlwaysAnswers() async throws {
        let state = Mutex(Readiness())
        let (running, runningGo) = AsyncStream<Int>.makeStream()
        let app = MetricsServer.make(
            listen: ListenAddress(host: "127.0.0.1", port: 0), logger: HTTPFuzzTests.quiet,
            onRunning: { port in runningGo.yield(port) },
            readiness: { state.withLock { $0 } },
            render: { _ in "flowmeter_build_info{version=\"v\"} 1\n" })
        let server = Task { try await app.runService(gracefulShutdownSignals: []) }
        defer { server.cancel() }
        var port = 0
        for await p in running { port = p; break }
        let target = Endpoint.tcp(port)
        func send(_ method: String, _ path: String) async -> Answer {
            await HTTPFuzzTests.onThread { Property.exchange(Self.request(method, path), target) }
        }

        // Before the attach and the first interval: 503 with both reasons.
        var a = await send("GET", "/readyz")
        #expect(a.status == 503)
        #expect(a.headers["content-type"] == "application/json")
        var doc = try Self.json(a)
        #expect(doc["ready"] as? Bool == false)
        #expect(doc["reasons"] as? [String] == ["the programs are not attached yet", "the first interval has not been evicted yet"])
        a = await send("GET", "/healthz")
        #expect(a.status == 200 && String(decoding: a.body, as: UTF8.self) == "ok\n")

        state.withLock { $0.attachment = .attached }
        a = await send("GET", "/readyz")
        #expect(a.status == 503)
        #expect(try Self.json(a)["reasons"] as? [String] == ["the first interval has not been evicted yet"])

        // The first interval pass: ready.
        state.withLock { $0.intervalPassed(stalls: ["flows": 0, "events": 0]) }
        a = await send("GET", "/readyz")
        #expect(a.status == 200)
        #expect(String(decoding: a.body, as: UTF8.self) == "{\"ready\":true}\n")

        // A reader stalled in the last interval: 503 again, naming the ring.
        state.withLock { $0.intervalPassed(stalls: ["flows": 0, "events": 1]) }
        a = await send("GET", "/readyz")
        #expect(a.status == 503)
        doc = try Self.json(a)
        let reasons = try #require(doc["reasons"] as? [String])
        #expect(reasons.count == 1 && reasons[0].hasPrefix("the events ring's reader stalled during the last interval"))
        a = await send("GET", "/healthz")
        #expect(a.status == 200)

        // Stopping.
        state.withLock {
            $0.intervalPassed(stalls: ["flows": 0, "events": 1]); $0.attachment = .detached
        }
        a = await send("GET", "/readyz")
        #expect(a.status == 503)
        #expect(try Self.json(a)["reasons"] as? [String] == ["the programs are detached: flowmeterd is stopping"])

        // The guard and the other routes are as before.
        a = await send("HEAD", "/readyz")
        #expect(a.status == 405 && a.headers["allow"] == "GET")
        a = await send("POST", "/healthz")
        #expect(a.status == 405)
        a = await send("GET", "/readyz/x")
        #expect(a.status == 404)
        a = await send("GET", "/metrics")
        #expect(a.status == 200 && String(decoding: a.body, as: UTF8.self).contains("flowmeter_build_info"))
    }

    @Test func readinessJSONIsExact() throws {
        var r = Readiness()
        #expect(
            MetricsServer.readinessJSON(r)
                == #"{"ready":false,"reasons":["the programs are not attached yet","the first interval has not been evicted yet"]}"#)
        r.attachment = .attached
        r.intervalPassed(stalls: [:])
        #expect(MetricsServer.readinessJSON(r) == #"{"ready":true}"#)
    }
}
