import Foundation
import Hummingbird
import HummingbirdCore
import NIOCore

/// What the two read-only HTTP endpoints (the metrics endpoint and the local
/// API) accept, and how they refuse the rest. Both only ever answer GET
/// without a body, so everything else can be refused early and cheaply.
public enum HTTPGuard {
    /// A request whose head (request line and headers) is not complete this
    /// long after the connection opened, or after the previous answer on a
    /// kept-alive connection, is dropped: a client that trickles its headers
    /// (slowloris) or idles would otherwise hold its connection forever.
    /// Answers being written, the API's stream included, are not cut.
    public static let idleSeconds: Int64 = 10
    /// Bounds of a request's head; past them the answer is 400 and nothing
    /// more of the request is read. Prometheus, curl and flowtop send a few
    /// hundred bytes.
    public static let maxHeaderFieldBytes = 8 * 1024
    public static let maxHeaderBytes = 16 * 1024
    public static let maxHeaderFields = 100

    static var http1: HTTP1Channel.Configuration {
        .init(
            idleTimeout: .seconds(idleSeconds),
            httpDecoderConfiguration: .init(
                maxHeaderFieldSize: maxHeaderFieldBytes,
                maxHeaderListSize: maxHeaderBytes,
                maxHeaderFieldCount: maxHeaderFields))
    }

    static var server: HTTPServerBuilder { .http1(configuration: http1) }

    /// The same HTTP/1 channel under a web config (TLS per connection).
    static func server(securedBy security: WebSecurity) -> HTTPServerBuilder {
        .init { responder in WebConfigChannel(base: HTTP1Channel(responder: responder, configuration: http1), security: security) }
    }

    /// Hummingbird's basic context plus the connection, so that a refusal can
    /// stop reading what the client still sends, and a stuck stream can be
    /// closed from outside its task.
    public struct Context: RequestContext {
        public var coreContext: CoreRequestContextStorage
        let channel: any Channel
        public init(source: ApplicationRequestContextSource) {
            coreContext = .init(source: source)
            channel = source.channel
        }
    }

    /// Why a request is refused before routing, if it is: a method other than
    /// GET (405), or a body (413; nothing here reads one). Pure, so the
    /// property tests can hold it to the same answer as the server.
    public static func refusal(method: String, contentLength: String?, transferEncoding: String?)
        -> (status: Int, message: String)?
    {
        guard method == "GET" else {
            return (405, "\(method) is not allowed: this endpoint is read-only (GET)")
        }
        let declared = contentLength.map { $0.trimmingCharacters(in: .whitespaces) != "0" } ?? false
        if declared || transferEncoding != nil {
            return (413, "a request body is not accepted here (send GET without one)")
        }
        return nil
    }

    /// Refuses what `refusal` refuses, with `render` making the answer's
    /// body; the connection is then closed instead of reading a body that may
    /// never end.
    struct ReadOnly: RouterMiddleware {
        let render: @Sendable (HTTPResponse.Status, String) -> Response

        func handle(
            _ request: Request, context: Context,
            next: (Request, Context) async throws -> Response
        ) async throws -> Response {
            guard
                let (code, message) = refusal(
                    method: request.method.rawValue,
                    contentLength: request.headers[.contentLength],
                    transferEncoding: request.headers[.transferEncoding])
            else {
                return try await next(request, context)
            }
            var response = render(HTTPResponse.Status(code: code), message)
            response.headers[.connection] = "close"
            if code == 405 { response.headers[.allow] = "GET" }
            // Hummingbird would otherwise read and discard the rest of the
            // body before the next request; with input shut, it ends the
            // connection once this answer is written.
            context.channel.close(mode: .input, promise: nil)
            return response
        }
    }
}
