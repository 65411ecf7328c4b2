import FlowmeterCore
import Foundation
import Hummingbird
import Logging
import NIOCore
import Synchronization

/// The local API on a unix socket (read by flowtop and scripts):
///   GET /v1/snapshot   the daemon's state as one JSON document (APISnapshot)
///   GET /v1/stream     every second a line (NDJSON): the whole snapshot
///                      first, then deltas (SnapshotStream)
/// Anything else gets a 4xx with a JSON error. The API reads copies of the
/// state, so the collector never waits for it. Each stream client has a task
/// of its own; one that stops reading parks only that task on the socket's
/// backpressure, and once a write has been stuck for `slowClientSeconds` the
/// connection is closed: a slow client is dropped, not waited for.
public enum APIServer {
    public static let slowClientSeconds: Double = 5

    /// The request context: it carries the connection, so a stuck stream can
    /// be closed from outside its task.
    public typealias Context = HTTPGuard.Context

    public static func make(
        socketPath: String, logger: Logger, streamEverySeconds: Double = 1,
        onRunning: @escaping @Sendable () async -> Void = {},
        snapshot: @escaping @Sendable () -> APISnapshot
    ) -> some ApplicationProtocol {
        let router = Router(context: Context.self)
        router.add(middleware: HTTPGuard.ReadOnly(render: { status, message in error(status, message) }))
        router.add(middleware: JSONErrors())
        router.get("/v1/snapshot") { _, _ -> Response in
            json(.ok, snapshot().json() + "\n")
        }
        router.get("/v1/stream") { _, context -> Response in
            let channel = context.channel
            let body = ResponseBody { writer in
                // The watchdog closes the connection when a write has not
                // completed for slowClientSeconds; the stuck write then fails.
                let pendingSince = Mutex<Date?>(nil)
                let watchdog = Task {
                    while !Task.isCancelled {
                        try? await Task.sleep(nanoseconds: 500_000_000)
                        if let t = pendingSince.withLock({ $0 }), Date().timeIntervalSince(t) > slowClientSeconds {
                            logger.notice("API stream client too slow; dropped", metadata: ["waited_seconds": "\(Int(slowClientSeconds))"])
                            channel.close(promise: nil)
                            return
                        }
                    }
                }
                defer { watchdog.cancel() }
                var stream = SnapshotStream()
                while !Task.isCancelled {
                    let line = ByteBuffer(string: stream.line(for: snapshot()) + "\n")
                    pendingSince.withLock { $0 = Date() }
                    try await writer.write(line)
                    pendingSince.withLock { $0 = nil }
                    try await Task.sleep(nanoseconds: UInt64(streamEverySeconds * 1e9))
                }
                try await writer.finish(nil)
            }
            return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: body)
        }
        return Application(
            router: router,
            server: HTTPGuard.server,
            configuration: .init(address: .unixDomainSocket(path: socketPath), serverName: "flowmeterd"),
            onServerRunning: { _ in await onRunning() },
            logger: logger
        )
    }

    static func json(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    /// The body of every error answer (schema 1): `{"version":1,"error":"...","status":404}`.
    struct ErrorBody: Encodable {
        var version = APISnapshot.version
        var error: String
        var status: Int
        enum CodingKeys: String, CodingKey { case version, error, status }
    }

    static func error(_ status: HTTPResponse.Status, _ message: String) -> Response {
        json(status, jsonString(ErrorBody(error: message, status: status.code)) + "\n")
    }

    /// A value in the error bodies' format. Messages echo the request's
    /// path, which is the client's text: control characters too must not
    /// break the document, and the format escapes the separators and a
    /// byte-order mark as well (`WireJSON.Escapes.invisiblesEscaped`).
    /// The body has nothing JSON cannot carry, so encoding cannot fail.
    static func jsonString<T: Encodable>(_ value: T) -> String {
        (try? WireJSON.apiError.string(value)) ?? "{}"
    }

    /// Every error answer our code gives is JSON: unknown paths and versions
    /// here, methods and bodies in `HTTPGuard.ReadOnly`. (A request HTTP
    /// cannot parse gets Hummingbird's bare 400 and the connection closes.)
    struct JSONErrors<Context: RequestContext>: RouterMiddleware {
        func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
            if !request.uri.path.hasPrefix("/v1/") {
                return error(.notFound, "unknown path \(request.uri.path): this API serves /v1/snapshot and /v1/stream")
            }
            do {
                return try await next(request, context)
            } catch let e as HTTPError where e.status == .notFound {
                return error(.notFound, "unknown path \(request.uri.path): this API serves /v1/snapshot and /v1/stream")
            }
        }
    }
}
