import FlowmeterCore
import Foundation
import Hummingbird
import Logging

/// The read-only HTTP endpoint: GET /metrics (Prometheus text 0.0.4, or
/// OpenMetrics 1.0 when the scraper's Accept header asks for it), GET /healthz
/// (200 `ok` while the process runs), GET /readyz (200 `{"ready":true}`, or 503
/// with the reasons as JSON; see `Readiness`).
/// Other methods get 405 and a request with a body 413 (`HTTPGuard`), unknown
/// paths 404; each refusal is plain text. With a web config (`WebSecurity`):
/// TLS, client certificates and basic auth (401 before anything else).
public enum MetricsServer {
    /// Builds the Hummingbird application (a swift-service-lifecycle Service).
    /// `render` produces the exposition text on each scrape; `readiness` is
    /// read on each GET /readyz.
    public static func make(
        listen: ListenAddress, logger: Logger,
        security: WebSecurity? = nil,
        onRunning: @escaping @Sendable (Int) async -> Void = { _ in },
        readiness: @escaping @Sendable () -> Readiness,
        render: @escaping @Sendable (_ openMetrics: Bool) -> String
    ) -> some ApplicationProtocol {
        make(
            listen: listen, logger: logger, security: security, onRunning: onRunning, readiness: readiness,
            renderBytes: { Array(render($0).utf8) })
    }

    /// The same with the exposition rendered as UTF-8 bytes (what flowmeterd
    /// serves: `MetricsRenderer.renderBytes`, no String in between).
    public static func make(
        listen: ListenAddress, logger: Logger,
        security: WebSecurity? = nil,
        onRunning: @escaping @Sendable (Int) async -> Void = { _ in },
        readiness: @escaping @Sendable () -> Readiness,
        renderBytes render: @escaping @Sendable (_ openMetrics: Bool) -> [UInt8]
    ) -> some ApplicationProtocol {
        let router = Router(context: HTTPGuard.Context.self)
        // Authentication first: without credentials nothing else is answered.
        if let security { router.add(middleware: BasicAuthGate<HTTPGuard.Context>(security: security)) }
        router.add(
            middleware: HTTPGuard.ReadOnly(render: { status, message in
                Response(
                    status: status, headers: [.contentType: "text/plain; charset=utf-8"],
                    body: .init(byteBuffer: ByteBuffer(string: message + "\n")))
            }))
        router.get("/metrics") { request, _ -> Response in
            let om = wantsOpenMetrics(request.headers[.accept])
            let body = render(om)
            return Response(
                status: .ok,
                headers: [.contentType: om ? Exposition.openMetricsContentType : Exposition.textContentType],
                body: pieces(body))
        }
        router.get("/healthz") { _, _ -> String in "ok\n" }
        router.get("/readyz") { _, _ -> Response in
            let r = readiness()
            return Response(
                status: r.isReady ? .ok : .serviceUnavailable,
                headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: readinessJSON(r) + "\n")))
        }
        return Application(
            router: router,
            server: security.map { HTTPGuard.server(securedBy: $0) } ?? HTTPGuard.server,
            configuration: .init(address: .hostname(listen.host, port: listen.port), serverName: "flowmeterd"),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? listen.port) },
            logger: logger
        )
    }

    /// A body of `bytes` with its length, handed to the server in pieces of
    /// 64 KiB: each piece is copied into a ByteBuffer small enough for malloc
    /// to serve from memory it keeps, where one ByteBuffer of a whole
    /// exposition of 10,000 series (1.4 MiB) was mapped and page-faulted in
    /// anew at every scrape (docs/benchmarks.md).
    static func pieces(_ bytes: [UInt8], of size: Int = 65_536) -> ResponseBody {
        ResponseBody(contentLength: bytes.count) { writer in
            try await writer.write(
                contentsOf: stride(from: 0, to: bytes.count, by: size).lazy.map {
                    ByteBuffer(bytes: bytes[$0..<min($0 + size, bytes.count)])
                })
            try await writer.finish(nil)
        }
    }

    /// The body of /readyz: `{"ready":true}`, or `{"ready":false,"reasons":[...]}`.
    public static func readinessJSON(_ r: Readiness) -> String {
        let reasons = r.reasons
        guard !reasons.isEmpty else { return #"{"ready":true}"# }
        return #"{"ready":false,"reasons":["# + reasons.map(APIServer.jsonString).joined(separator: ",") + "]}"
    }

    /// Content negotiation, as Prometheus does it: OpenMetrics when the Accept
    /// header lists application/openmetrics-text with a q-value no lower than
    /// any text/plain entry.
    public static func wantsOpenMetrics(_ accept: String?) -> Bool {
        guard let accept else { return false }
        var om = -1.0, text = -1.0
        for entry in accept.split(separator: ",") {
            let parts = entry.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
            guard let type = parts.first?.lowercased() else { continue }
            var q = 1.0
            for p in parts.dropFirst() where p.hasPrefix("q=") { q = Double(p.dropFirst(2)) ?? 1.0 }
            if type == "application/openmetrics-text" { om = max(om, q) }
            if type == "text/plain" || type == "*/*" { text = max(text, q) }
        }
        return om > 0 && om >= text
    }
}
