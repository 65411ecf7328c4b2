/// The metrics endpoint's web config (`--web-config FILE`), in the format of
/// the Prometheus exporter toolkit, so that a file written for node_exporter
/// works here: TLS server settings and bcrypt basic-auth users. Parsed and
/// checked by FlowmeterConfig (`WebConfig.parse`), put to work by
/// FlowmeterExport (`WebSecurity`).
public struct WebConfig: Sendable, Equatable {
    /// The file it was read from; every error names it.
    public var source: String
    /// nil: plain HTTP.
    public var tls: TLS?
    /// User name to bcrypt hash; empty: no basic auth.
    public var basicAuthUsers: [String: String]

    public init(source: String, tls: TLS? = nil, basicAuthUsers: [String: String] = [:]) {
        self.source = source; self.tls = tls; self.basicAuthUsers = basicAuthUsers
    }

    public struct TLS: Sendable, Equatable {
        public var certFile: String
        public var keyFile: String
        public var clientAuth: ClientAuth
        /// The CAs a client certificate is verified against.
        public var clientCAFile: String?
        public var minVersion: TLSVersion
        public var maxVersion: TLSVersion

        public init(
            certFile: String, keyFile: String, clientAuth: ClientAuth = .noClientCert, clientCAFile: String? = nil,
            minVersion: TLSVersion = .tls12, maxVersion: TLSVersion = .tls13
        ) {
            self.certFile = certFile; self.keyFile = keyFile; self.clientAuth = clientAuth
            self.clientCAFile = clientCAFile; self.minVersion = minVersion; self.maxVersion = maxVersion
        }

        /// The files whose change is a certificate renewal.
        public var files: [String] { [certFile, keyFile] + (clientCAFile.map { [$0] } ?? []) }
    }

    /// Go's tls.ClientAuthType names, which the exporter toolkit uses as they are.
    public enum ClientAuth: String, Sendable, CaseIterable {
        case noClientCert = "NoClientCert"
        /// Asks for a certificate; none, or any, is accepted (not verified).
        case requestClientCert = "RequestClientCert"
        /// A certificate is required but not verified.
        case requireAnyClientCert = "RequireAnyClientCert"
        /// A certificate is optional; one that is given must verify against client_ca_file.
        case verifyClientCertIfGiven = "VerifyClientCertIfGiven"
        /// A certificate is required and must verify against client_ca_file.
        case requireAndVerifyClientCert = "RequireAndVerifyClientCert"

        /// Whether client_ca_file is needed (the certificate is verified).
        public var verifies: Bool { self == .verifyClientCertIfGiven || self == .requireAndVerifyClientCert }
    }

    public enum TLSVersion: String, Sendable, CaseIterable, Comparable {
        case tls10 = "TLS10", tls11 = "TLS11", tls12 = "TLS12", tls13 = "TLS13"

        public static func < (a: TLSVersion, b: TLSVersion) -> Bool {
            allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
        }
    }

    /// Whether `hash` is a bcrypt hash as htpasswd -B and the exporter
    /// toolkit's docs make them: `$2a$`, `$2b$` or `$2y$`, a two-digit cost
    /// from 04 to 31, then 53 characters of bcrypt's base64 (salt and hash).
    public static func bcryptProblem(_ hash: String) -> String? {
        let b = Array(hash.utf8)
        guard b.count >= 7, b[0] == UInt8(ascii: "$"), b[1] == UInt8(ascii: "2"),
            [UInt8(ascii: "a"), UInt8(ascii: "b"), UInt8(ascii: "y")].contains(b[2]), b[3] == UInt8(ascii: "$")
        else { return "not a bcrypt hash (it starts with $2a$, $2b$ or $2y$; make one with htpasswd -nBC 10 \"\" | tr -d ':\\n')" }
        guard let cost = Int(String(decoding: b[4..<6], as: UTF8.self)), b[6] == UInt8(ascii: "$"), (4...31).contains(cost),
            b[4] != UInt8(ascii: "+")
        else { return "bcrypt cost must be two digits from 04 to 31 (as in $2y$10$...)" }
        let rest = b[7...]
        let alphabet = Set("./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789".utf8)
        guard rest.count == 53, rest.allSatisfy(alphabet.contains) else {
            return "bcrypt hash must have 53 characters of salt and hash after the cost, from [./A-Za-z0-9] (got \(rest.count))"
        }
        return nil
    }
}
