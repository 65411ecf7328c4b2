import FlowmeterCore
import FlowmeterOTLPProto
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import GRPCProtobuf
import NIOSSL

/// OTLP/gRPC: the unary MetricsService/Export call over grpc-swift 2's
/// HTTP/2 transport (swift-nio-ssl for https://), with the method descriptor
/// and response type of the stub generated from the vendored
/// metrics_service.proto (Sources/FlowmeterOTLPProto). The queue holds
/// requests already encoded (smaller than the messages, and encoded once
/// however often they are retried), so the request goes out through a
/// pass-through serializer rather than the stub's typed `export`.
public final class OTLPGRPCTransport: OTLPTransport {
    typealias Service = Opentelemetry_Proto_Collector_Metrics_V1_MetricsService
    typealias Response = Opentelemetry_Proto_Collector_Metrics_V1_ExportMetricsServiceResponse

    let client: GRPCClient<HTTP2ClientTransport.Posix>
    let settings: OTLPTransportSettings
    let metadata: Metadata
    let runner: Task<Void, Never>

    public init(_ settings: OTLPTransportSettings) throws {
        self.settings = settings
        // Checked here (a bad file stops the start with its name); the
        // transport then reads the same files.
        _ = try settings.loadTLS()
        let security: HTTP2ClientTransport.Posix.TransportSecurity
        if settings.endpoint.tls {
            security = .tls { t in
                if let ca = settings.caFile { t.trustRoots = .certificates([.file(path: ca, format: .pem)]) }
                if let cert = settings.clientCertFile, let key = settings.clientKeyFile {
                    t.certificateChain = [.file(path: cert, format: .pem)]
                    t.privateKey = .file(path: key, format: .pem)
                }
            }
        } else {
            security = .plaintext
        }
        // An IP literal is its own target: given to the DNS resolver it would
        // also become the TLS SNI name, which TLS forbids for addresses (the
        // certificate is then checked against the address itself).
        let host = settings.endpoint.host, port = settings.endpoint.port
        let target: any ResolvableTarget
        var v4 = in_addr(), v6 = in6_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            target = .ipv4(address: host, port: port)
        } else if inet_pton(AF_INET6, host, &v6) == 1 {
            target = .ipv6(address: host, port: port)
        } else {
            target = .dns(host: host, port: port)
        }
        let transport = try HTTP2ClientTransport.Posix(
            target: target,
            transportSecurity: security,
            config: .defaults { c in
                c.compression.algorithm = settings.gzip ? .gzip : .none
                c.compression.enabledAlgorithms = settings.gzip ? [.gzip] : .none
                c.connection.maxIdleTime = .seconds(300)
            })
        client = GRPCClient(transport: transport)
        var md = Metadata()
        md.addString("flowmeterd/\(FlowmeterVersion.current)", forKey: "user-agent")
        for (k, v) in settings.headers { md.addString(v, forKey: k) }
        metadata = md
        let c = client
        // The client's connections live in this task until shutdown.
        runner = Task { try? await c.runConnections() }
    }

    struct PassThrough: MessageSerializer {
        func serialize<Bytes: GRPCContiguousBytes>(_ message: [UInt8]) throws -> Bytes { Bytes(message) }
    }

    public func send(_ request: [UInt8]) async -> OTLPOutcome {
        var options = CallOptions.defaults
        options.timeout = .milliseconds(Int64(settings.timeoutSeconds * 1000))
        // Fail at once while the collector is down (the pusher's backoff
        // decides when to try again), rather than wait for a connection.
        options.waitForReady = false
        options.compression = settings.gzip ? .gzip : CompressionAlgorithm.none
        do {
            let response = try await client.unary(
                request: ClientRequest(message: request, metadata: metadata),
                descriptor: Service.Method.Export.descriptor,
                serializer: PassThrough(),
                deserializer: ProtobufDeserializer<Response>(),
                options: options
            ) { try $0.message }
            return OTLPOutcome.accepted(response)
        } catch let error as RPCError {
            var retryAfter: Double?
            if let status = try? error.unpackGoogleRPCStatus(),
                let info = status.details.compactMap(\.retryInfo).first
            {
                let c = info.delay.components
                retryAfter = Double(c.seconds) + Double(c.attoseconds) / 1e18
            }
            let message =
                error.code == .unavailable || error.code == .deadlineExceeded
                ? TransportError.describe(error, endpoint: settings.endpoint) : error.message
            return OTLPOutcome.grpc(code: error.code.rawValue, message: message, retryInfoSeconds: retryAfter)
        } catch {
            return .retry(TransportError.describe(error, endpoint: settings.endpoint), retryAfterSeconds: nil)
        }
    }

    public func shutdown() async {
        client.beginGracefulShutdown()
        _ = await runner.value
    }
}
