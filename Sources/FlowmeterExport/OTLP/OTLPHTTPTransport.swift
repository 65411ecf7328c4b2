import AsyncHTTPClient
import FlowmeterCore
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL

/// OTLP/HTTP with binary protobuf (the specification's http/protobuf): a POST
/// of the ExportMetricsServiceRequest, over async-http-client (connection
/// reuse, TLS from swift-nio-ssl, HTTP/2 when the collector offers it by ALPN).
public final class OTLPHTTPTransport: OTLPTransport {
    let client: HTTPClient
    let settings: OTLPTransportSettings
    let headers: HTTPHeaders
    let url: String

    public init(_ settings: OTLPTransportSettings) throws {
        self.settings = settings
        let tls = try settings.loadTLS()
        let timeout = TimeAmount.milliseconds(Int64(settings.timeoutSeconds * 1000))
        var config = HTTPClient.Configuration()
        config.timeout = .init(connect: timeout, read: timeout)
        if settings.endpoint.tls {
            var t = TLSConfiguration.makeClientConfiguration()
            if let roots = tls.roots { t.trustRoots = .certificates(roots) }
            if let key = tls.key {
                t.certificateChain = tls.chain.map { .certificate($0) }
                t.privateKey = .privateKey(key)
            }
            config.tlsConfiguration = t
        }
        // No redirects: a 3xx is the collector's misconfiguration, and
        // following one could carry the auth header elsewhere.
        config.redirectConfiguration = .disallow
        // A refused or failed connection fails the attempt at once (the pool
        // would otherwise retry it until the timeout): the pusher's backoff,
        // which honours the collector's Retry-After, decides when to try again.
        config.connectionPool.retryConnectionEstablishment = false
        client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: config)
        var h = HTTPHeaders()
        h.add(name: "Content-Type", value: "application/x-protobuf")
        h.add(name: "User-Agent", value: "flowmeterd/\(FlowmeterVersion.current)")
        if settings.gzip { h.add(name: "Content-Encoding", value: "gzip") }
        for (k, v) in settings.headers { h.add(name: k, value: v) }
        headers = h
        url = settings.endpoint.description
    }

    public func send(_ request: [UInt8]) async -> OTLPOutcome {
        var req = HTTPClientRequest(url: url)
        req.method = .POST
        req.headers = headers
        let body = settings.gzip ? Gzip.compress(request) : request
        req.body = .bytes(ByteBuffer(bytes: body))
        do {
            let response = try await client.execute(req, timeout: .milliseconds(Int64(settings.timeoutSeconds * 1000)))
            // A response is small (a partial_success at most); a bigger one is not the collector's.
            let bytes = try await response.body.collect(upTo: 1 << 20)
            return OTLPOutcome.http(
                status: Int(response.status.code), retryAfter: response.headers.first(name: "Retry-After"),
                body: Array(buffer: bytes))
        } catch {
            return .retry(TransportError.describe(error, endpoint: settings.endpoint), retryAfterSeconds: nil)
        }
    }

    public func shutdown() async {
        try? await client.shutdown()
    }
}
