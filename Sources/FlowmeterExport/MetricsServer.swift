import Hummingbird
import Logging
import FlowmeterCore

/// The read-only HTTP endpoint: GET /metrics (Prometheus text), GET /healthz.
public enum MetricsServer {
    /// Builds the Hummingbird application (a swift-service-lifecycle Service).
    /// `render` produces the exposition text on each scrape.
    public static func make(listen: ListenAddress, logger: Logger,
                            onRunning: @escaping @Sendable (Int) async -> Void = { _ in },
                            render: @escaping @Sendable () -> String) -> some ApplicationProtocol {
        let router = Router()
        router.get("/metrics") { _, _ -> Response in
            let body = render()
            return Response(status: .ok,
                            headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        router.get("/healthz") { _, _ -> String in "ok\n" }
        return Application(
            router: router,
            configuration: .init(address: .hostname(listen.host, port: listen.port), serverName: "flowmeterd"),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? listen.port) },
            logger: logger
        )
    }
}
