import FlowmeterCore
import FlowmeterOTLPProto
import Foundation
import SwiftProtobuf

/// What one export attempt came to, the same for both transports, decided
/// here from the status (pure: unit-tested without a network). The rules are
/// the OTLP specification's ("Failures" and "Throttling" of the OTLP/HTTP and
/// OTLP/gRPC sections).
public enum OTLPOutcome: Sendable, Equatable {
    /// The receiver took the request. `rejectedPoints` (partial_success) of
    /// its data points it refused; `message` is its explanation, if any.
    case accepted(rejectedPoints: Int64, message: String)
    /// Try the same request again later: not before `retryAfterSeconds` when
    /// the receiver said (Retry-After, gRPC RetryInfo), else after the backoff.
    case retry(String, retryAfterSeconds: Double?)
    /// The receiver refuses this request for good (a bad request, auth
    /// failure, ...): sending it again cannot succeed, so it is dropped.
    case reject(String)

    /// Longest wait a Retry-After or RetryInfo can impose (a bad value from a
    /// receiver must not stall the exporter for hours).
    public static let maxRetryAfterSeconds: Double = 300

    /// The outcome of an HTTP response: 2xx with its ExportMetricsServiceResponse
    /// body (partial_success); 429, 502, 503, 504 retried, honouring Retry-After
    /// (seconds or an HTTP date); any other status rejects the request.
    public static func http(status: Int, retryAfter: String?, body: [UInt8], now: Date = Date()) -> OTLPOutcome {
        switch status {
        case 200..<300:
            return partialSuccess(body)
        case 429, 502, 503, 504:
            return .retry("HTTP \(status)", retryAfterSeconds: retryAfter.flatMap { retryAfterSeconds($0, now: now) })
        default:
            return .reject("HTTP \(status)\(statusMessage(body).map { ": \($0)" } ?? "")")
        }
    }

    /// From an accepted response's body: the partial_success, if the body is a
    /// response (an empty body is a full success).
    static func partialSuccess(_ body: [UInt8]) -> OTLPOutcome {
        guard !body.isEmpty,
            let r = try? Opentelemetry_Proto_Collector_Metrics_V1_ExportMetricsServiceResponse(serializedBytes: body)
        else { return .accepted(rejectedPoints: 0, message: "") }
        return accepted(r)
    }

    /// From a decoded response.
    public static func accepted(_ r: Opentelemetry_Proto_Collector_Metrics_V1_ExportMetricsServiceResponse) -> OTLPOutcome {
        .accepted(rejectedPoints: max(0, r.partialSuccess.rejectedDataPoints), message: r.partialSuccess.errorMessage)
    }

    /// Retry-After: delay-seconds or an HTTP-date (RFC 9110 10.2.3), bounded.
    public static func retryAfterSeconds(_ value: String, now: Date) -> Double? {
        let v = value.trimmingCharacters(in: .whitespaces)
        if let s = Int(v), s >= 0 { return min(Double(s), maxRetryAfterSeconds) }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        guard let date = f.date(from: v) else { return nil }
        return min(max(0, date.timeIntervalSince(now)), maxRetryAfterSeconds)
    }

    /// A rejecting receiver's explanation when it is text (a protobuf
    /// google.rpc.Status body is binary and is left out), shortened.
    static func statusMessage(_ body: [UInt8]) -> String? {
        guard !body.isEmpty, let text = String(validating: body.prefix(200), as: UTF8.self),
            text.allSatisfy({ !$0.isASCII || $0 == " " || ($0.isASCII && !$0.isWhitespace && $0.asciiValue! >= 0x20) || $0 == "\n" })
        else { return nil }
        let line = text.split(separator: "\n").first.map(String.init) ?? ""
        return line.isEmpty ? nil : line
    }

    /// gRPC status codes (GRPCCore's raw values) the specification retries:
    /// CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE,
    /// DATA_LOSS; RESOURCE_EXHAUSTED only when the server sent RetryInfo
    /// (it can recover). Everything else rejects the request.
    public static func grpc(code: Int, message: String, retryInfoSeconds: Double?) -> OTLPOutcome {
        let text = "gRPC \(grpcName(code))\(message.isEmpty ? "" : ": \(message)")"
        switch code {
        case 1, 4, 10, 11, 14, 15:
            return .retry(text, retryAfterSeconds: retryInfoSeconds.map { min(max(0, $0), maxRetryAfterSeconds) })
        case 8 where retryInfoSeconds != nil:
            return .retry(text, retryAfterSeconds: retryInfoSeconds.map { min(max(0, $0), maxRetryAfterSeconds) })
        default:
            return .reject(text)
        }
    }

    static func grpcName(_ code: Int) -> String {
        let names = [
            "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
            "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
            "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
        ]
        return names.indices.contains(code) ? names[code] : "code \(code)"
    }
}
