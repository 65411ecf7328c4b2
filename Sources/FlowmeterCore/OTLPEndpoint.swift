import Foundation

/// The two OTLP transports (the OpenTelemetry specification's
/// OTEL_EXPORTER_OTLP_PROTOCOL values; its JSON encoding is not offered).
public enum OTLPProtocol: String, Sendable, CaseIterable {
    case grpc
    case httpProtobuf = "http/protobuf"
}

/// Where OTLP goes: http[s]://HOST[:PORT][/PATH]. https:// (and only it)
/// means TLS, for both transports. The path is the HTTP request's (default
/// /v1/metrics, today's behaviour); gRPC names its method itself, so a gRPC
/// endpoint takes no path.
public struct OTLPEndpoint: Sendable, Equatable, CustomStringConvertible {
    public let tls: Bool
    public let host: String
    public let port: Int
    public let path: String
    /// The URL with its default parts written out (no user info: none is accepted).
    public var description: String {
        "\(tls ? "https" : "http")://\(hostForURL):\(port)\(path)"
    }
    /// The host as a URL writes it (an IPv6 literal in brackets).
    public var hostForURL: String { host.contains(":") ? "[\(host)]" : host }

    /// Parses `url` for `proto`. Ports default to 80 and 443, as in any URL.
    public init(parsing url: String, for proto: OTLPProtocol = .httpProtobuf) throws {
        let rest: Substring
        if url.hasPrefix("http://") {
            tls = false; rest = url.dropFirst(7)
        } else if url.hasPrefix("https://") {
            tls = true; rest = url.dropFirst(8)
        } else {
            throw ValueError("\(url): the scheme must be http:// or https://")
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = String(rest[..<slash])
        let given = String(rest[slash...])
        guard !authority.contains("@") else { throw ValueError("\(url): user info in the URL is not supported (use --otlp-header)") }
        let defaultPort = tls ? 443 : 80
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw ValueError("\(url): unclosed [ in the host") }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { throw ValueError("\(url): junk after ]") }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            portText = authority[authority.index(after: colon)...]
        } else {
            host = authority
        }
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p) else { throw ValueError("\(url): needs a valid port (1 to 65535)") }
            port = p
        } else {
            port = defaultPort
        }
        guard !host.isEmpty else { throw ValueError("\(url): needs a host") }
        switch proto {
        case .httpProtobuf:
            path = given.isEmpty ? "/v1/metrics" : given
        case .grpc:
            guard given.isEmpty || given == "/" else {
                throw ValueError(
                    "\(url): a gRPC endpoint takes no path (the method is opentelemetry.proto.collector.metrics.v1.MetricsService/Export)")
            }
            path = ""
        }
    }
}

/// Request headers for the collector (`--otlp-header`, the
/// OTEL_EXPORTER_OTLP_HEADERS format: `key=value` pairs, comma-separated,
/// values percent-decoded as the W3C Baggage format that variable uses).
public enum OTLPHeaders {
    /// Header names whose values are secrets: never logged.
    static let secret: Set<String> = ["authorization", "proxy-authorization", "cookie", "x-api-key", "api-key"]

    /// One "key=value" entry, checked; the key lower-cased (HTTP/2 and gRPC metadata want it so).
    public static func parse(_ entry: String) throws -> (String, String) {
        guard let eq = entry.firstIndex(of: "=") else {
            throw ValueError("\(redactedEntry(entry)): a header is key=value")
        }
        let key = entry[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
        let raw = entry[entry.index(after: eq)...].trimmingCharacters(in: .whitespaces)
        guard !key.isEmpty, key.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
            throw ValueError("\(redactedEntry(entry)): a header name is letters, digits, '-', '_' or '.'")
        }
        guard let value = raw.removingPercentEncoding else {
            throw ValueError("header \(key): the value has a bad percent-encoding")
        }
        guard !value.contains(where: { $0 == "\r" || $0 == "\n" || $0 == "\0" }) else {
            throw ValueError("header \(key): the value has a line break or NUL")
        }
        guard !["content-type", "content-length", "content-encoding", "host", "te", "user-agent"].contains(key),
            !key.hasPrefix("grpc-")
        else {
            throw ValueError("header \(key) is set by flowmeterd itself")
        }
        return (key, value)
    }

    /// A comma-separated list of entries (OTEL_EXPORTER_OTLP_HEADERS).
    public static func parseList(_ text: String) throws -> [(String, String)] {
        try text.split(separator: ",").map { String($0) }.filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }.map(parse)
    }

    /// Headers for the logs: names only, with the values of secret ones replaced.
    public static func forLog(_ headers: [(String, String)]) -> String {
        headers.map { secret.contains($0.0) ? "\($0.0)=<redacted>" : "\($0.0)=\($0.1)" }.joined(separator: ",")
    }

    /// An entry for an error message: the key, never the value (it may be a token).
    static func redactedEntry(_ entry: String) -> String {
        let key = entry.split(separator: "=", maxSplits: 1).first.map(String.init) ?? ""
        // Without '=' the whole entry may be a value ("authorization Bearer ..."): none of it is shown.
        return entry.contains("=") ? "\(key)=<value>" : "a header entry without '=' (\(entry.count) characters)"
    }

    /// Layers header lists: later lists win per name (flags over the file,
    /// FLOWMETER_OTLP_HEADERS over OTEL_EXPORTER_OTLP_HEADERS, and so on).
    public static func merge(_ lists: [[(String, String)]]) -> [(String, String)] {
        var out: [(String, String)] = []
        for list in lists {
            for (k, v) in list {
                if let i = out.firstIndex(where: { $0.0 == k }) { out[i].1 = v } else { out.append((k, v)) }
            }
        }
        return out
    }
}
