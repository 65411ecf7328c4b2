import FlowmeterCore
import Foundation
import NIOSSL

/// One export attempt's transport: HTTP/protobuf (`OTLPHTTPTransport`) or
/// gRPC (`OTLPGRPCTransport`). The queue, backoff and counting around it are
/// `OTLPPusher`'s, the same for both.
public protocol OTLPTransport: Sendable {
    /// Sends one ExportMetricsServiceRequest (serialized) and says how it went.
    /// Network and TLS failures are `.retry` with a message naming the cause.
    func send(_ request: [UInt8]) async -> OTLPOutcome
    /// Closes connections; no send follows.
    func shutdown() async
}

/// Everything a transport needs, checked at start.
public struct OTLPTransportSettings: Sendable {
    public var proto: OTLPProtocol
    public var endpoint: OTLPEndpoint
    /// Sent with every request (HTTP headers, gRPC metadata).
    public var headers: [(String, String)]
    /// PEM file of the CA(s) that sign the collector's certificate; nil: the system's roots.
    public var caFile: String?
    /// PEM client certificate (chain) and key for mTLS; both or neither.
    public var clientCertFile: String?
    public var clientKeyFile: String?
    public var gzip: Bool
    /// Per attempt: connecting, TLS and the answer together.
    public var timeoutSeconds: Double

    public init(
        proto: OTLPProtocol, endpoint: OTLPEndpoint, headers: [(String, String)] = [], caFile: String? = nil,
        clientCertFile: String? = nil, clientKeyFile: String? = nil, gzip: Bool = false, timeoutSeconds: Double = 10
    ) {
        self.proto = proto; self.endpoint = endpoint; self.headers = headers; self.caFile = caFile
        self.clientCertFile = clientCertFile; self.clientKeyFile = clientKeyFile; self.gzip = gzip
        self.timeoutSeconds = timeoutSeconds
    }

    /// The files, loaded now so that a bad one stops the start with its name
    /// (not a failure at the first export).
    public func loadTLS() throws -> (roots: [NIOSSLCertificate]?, chain: [NIOSSLCertificate], key: NIOSSLPrivateKey?) {
        guard endpoint.tls else {
            if caFile != nil || clientCertFile != nil || clientKeyFile != nil {
                throw ValueError(
                    "--otlp-ca-file, --otlp-client-cert and --otlp-client-key need an https:// endpoint (\(endpoint) is plain http)")
            }
            return (nil, [], nil)
        }
        guard (clientCertFile == nil) == (clientKeyFile == nil) else {
            throw ValueError("--otlp-client-cert and --otlp-client-key go together (mTLS needs both)")
        }
        func certs(_ path: String, _ flag: String) throws -> [NIOSSLCertificate] {
            guard FileManager.default.isReadableFile(atPath: path) else { throw ValueError("\(flag) \(path): no such readable file") }
            let c: [NIOSSLCertificate]
            do { c = try NIOSSLCertificate.fromPEMFile(path) } catch {
                throw ValueError("\(flag) \(path): not a PEM certificate file (\(error))")
            }
            guard !c.isEmpty else { throw ValueError("\(flag) \(path): no certificate in the file") }
            return c
        }
        let roots = try caFile.map { try certs($0, "--otlp-ca-file") }
        let chain = try clientCertFile.map { try certs($0, "--otlp-client-cert") } ?? []
        var key: NIOSSLPrivateKey?
        if let k = clientKeyFile {
            guard FileManager.default.isReadableFile(atPath: k) else { throw ValueError("--otlp-client-key \(k): no such readable file") }
            do { key = try NIOSSLPrivateKey(file: k, format: .pem) } catch {
                throw ValueError("--otlp-client-key \(k): not a PEM private key (\(error))")
            }
        }
        return (roots, chain, key)
    }
}

enum TransportError {
    /// An error from NIO, NIOSSL, async-http-client or grpc-swift, said so
    /// that an operator sees the cause (the TLS ones in particular).
    static func describe(_ error: any Error, endpoint: OTLPEndpoint) -> String {
        let text = String(describing: error)
        if text.contains("CERTIFICATE_VERIFY_FAILED") || text.contains("certificate verify failed") {
            return
                "TLS handshake with \(endpoint.hostForURL):\(endpoint.port) failed: the collector's certificate is not signed by a trusted CA (system roots, or --otlp-ca-file) [\(text)]"
        }
        if text.contains("hostname") && text.contains("mismatch") || text.contains("unableToValidateCertificate") {
            return
                "TLS handshake with \(endpoint.hostForURL):\(endpoint.port) failed: the certificate does not name \(endpoint.host) [\(text)]"
        }
        if text.contains("handshakeFailed") || text.contains("SSL") || text.contains("TLS") {
            return "TLS handshake with \(endpoint.hostForURL):\(endpoint.port) failed: \(text)"
        }
        return text
    }
}

extension OTLPTransportSettings {
    /// The transport these settings name; a bad TLS file is an error naming it.
    public func makeTransport() throws -> any OTLPTransport {
        switch proto {
        case .httpProtobuf: return try OTLPHTTPTransport(self)
        case .grpc: return try OTLPGRPCTransport(self)
        }
    }

    /// OTEL_EXPORTER_OTLP_HEADERS, then OTEL_EXPORTER_OTLP_METRICS_HEADERS
    /// (the specification's signal-specific variable wins), each checked; an
    /// error names the variable, never a value.
    public static func otelHeaders(_ env: [String: String]) throws -> [[(String, String)]] {
        try ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"].compactMap { name in
            guard let v = env[name] else { return nil }
            do { return try OTLPHeaders.parseList(v) } catch { throw ValueError("\(name): \(error)") }
        }
    }
}
