// The web config file (--web-config): the Prometheus exporter toolkit's format
// (docs/web-configuration.md of prometheus/exporter-toolkit), read with the
// same node reader as the config file, so every problem names the file, its
// line, the key and what is wrong, and all of them come at once.
//
// Keys of that format flowmeterd does not implement are refused by name rather
// than ignored: a file that asks for a cipher list, SAN checks or a rate limit
// must not silently run without them.

import FlowmeterCore
import Foundation
import Yams

extension WebConfig {
    static let topLevelKeys = ["tls_server_config", "basic_auth_users"]
    static let tlsKeys = ["cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"]
    /// In the toolkit's format, not implemented here.
    static let unsupported: [String: String] = [
        "http_server_config": "HTTP/2 and extra response headers are not offered",
        "rate_limit": "no rate limit is offered",
        "cert": "give the certificate as a file, cert_file",
        "key": "give the key as a file, key_file",
        "client_ca": "give the client CAs as a file, client_ca_file",
        "client_allowed_sans": "client certificates are not matched by SAN",
        "cipher_suites": "BoringSSL's default suites are used",
        "prefer_server_cipher_suites": "BoringSSL's default suites are used",
        "curve_preferences": "BoringSSL's default curves are used",
    ]

    /// Parses a web config. `source` names it in the problems (its path);
    /// relative file names in it are taken from `directory` (the file's own
    /// directory, as the exporter toolkit does). Checks what can be checked
    /// without reading the certificate files (FlowmeterExport reads those).
    public static func parse(yaml: String, source: String, directory: String) throws(ConfigError) -> WebConfig {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml, .default, .default, .utf8)
        } catch {
            throw ConfigError([FileConfig.syntaxProblem(error, yaml: yaml, source: source)])
        }
        var config = WebConfig(source: source)
        // An empty file is the toolkit's "no TLS, no auth".
        guard let root, !isNull(root) else { return config }
        var r = NodeReader(source: source)
        func resolve(_ path: String) -> String {
            path.hasPrefix("/") || directory.isEmpty ? path : (directory as NSString).appendingPathComponent(path)
        }
        let top = topLevelKeys + ["http_server_config", "rate_limit"]
        for (key, path, value) in r.entries(root, "", allowed: top, expected: "a mapping of settings", placeHints: false) ?? [] {
            switch key {
            case "tls_server_config":
                config.tls = tls(value, path, &r, resolve)
            case "basic_auth_users":
                config.basicAuthUsers = users(value, path, &r)
            default:
                r.report(value, path, "not supported by flowmeterd (\(unsupported[key]!)); remove it")
            }
        }
        guard r.problems.isEmpty else {
            throw ConfigError(
                r.problems.enumerated().sorted {
                    ($0.element.line ?? 0, $0.element.column ?? 0, $0.offset) < ($1.element.line ?? 0, $1.element.column ?? 0, $1.offset)
                }.map(\.element))
        }
        return config
    }

    static func tls(_ node: Node, _ path: String, _ r: inout NodeReader, _ resolve: (String) -> String) -> TLS? {
        let allowed =
            tlsKeys + [
                "cert", "key", "client_ca", "client_allowed_sans", "cipher_suites", "prefer_server_cipher_suites", "curve_preferences",
            ]
        guard let entries = r.entries(node, path, allowed: allowed, expected: "a mapping (cert_file, key_file, ...)", placeHints: false)
        else { return nil }
        var cert: String?, key: String?, ca: String?
        var auth = ClientAuth.noClientCert, authNode: Node?
        var minV = TLSVersion.tls12, maxV = TLSVersion.tls13, versionNode: Node?
        func file(_ v: Node, _ p: String) -> String? {
            guard let t = r.text(v, p, expected: "a file name") else { return nil }
            guard !t.isEmpty else {
                r.report(v, p, "empty file name")
                return nil
            }
            return resolve(t)
        }
        func version(_ v: Node, _ p: String) -> TLSVersion? {
            r.value(v, p, expected: "a TLS version") { t in
                guard let version = TLSVersion(rawValue: t) else {
                    throw ValueError(
                        "unknown TLS version \(quoted(t)); one of \(TLSVersion.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                return version
            }
        }
        for (k, p, v) in entries {
            switch k {
            case "cert_file": cert = file(v, p)
            case "key_file": key = file(v, p)
            case "client_ca_file": ca = file(v, p)
            case "client_auth_type":
                authNode = v
                auth =
                    r.value(v, p, expected: "a client auth type") { t in
                        guard let a = ClientAuth(rawValue: t) else {
                            let hint =
                                closest(to: t, in: ClientAuth.allCases.map(\.rawValue)).map { " (did you mean \(quoted($0))?)" } ?? ""
                            throw ValueError(
                                "unknown client_auth_type \(quoted(t))\(hint); one of \(ClientAuth.allCases.map(\.rawValue).joined(separator: ", "))"
                            )
                        }
                        return a
                    } ?? auth
            case "min_version":
                versionNode = v
                minV = version(v, p) ?? minV
            case "max_version":
                versionNode = versionNode ?? v
                maxV = version(v, p) ?? maxV
            default:
                r.report(v, p, "not supported by flowmeterd (\(unsupported[k]!)); remove it")
            }
        }
        let problemsBefore = r.problems.count
        if cert == nil && !entries.contains(where: { $0.key == "cert_file" }) {
            r.report(node, "\(path).cert_file", "missing: TLS needs the server's certificate (PEM)")
        }
        if key == nil && !entries.contains(where: { $0.key == "key_file" }) {
            r.report(node, "\(path).key_file", "missing: TLS needs the certificate's private key (PEM)")
        }
        if auth.verifies && ca == nil && !entries.contains(where: { $0.key == "client_ca_file" }) {
            r.report(
                authNode ?? node, "\(path).client_ca_file",
                "missing: client_auth_type \(auth.rawValue) verifies client certificates against it")
        }
        if auth == .noClientCert, ca != nil, let n = entries.first(where: { $0.key == "client_ca_file" }) {
            r.report(
                n.value, n.path,
                "given, but client_auth_type is NoClientCert, so no client certificate is asked for (set client_auth_type: RequireAndVerifyClientCert)"
            )
        }
        if minV > maxV, let versionNode {
            r.report(versionNode, "\(path).min_version", "\(minV.rawValue) is above max_version \(maxV.rawValue)")
        }
        guard r.problems.count == problemsBefore, let cert, let key else { return nil }
        return TLS(certFile: cert, keyFile: key, clientAuth: auth, clientCAFile: ca, minVersion: minV, maxVersion: maxV)
    }

    static func users(_ node: Node, _ path: String, _ r: inout NodeReader) -> [String: String] {
        guard case .mapping(let mapping) = node else {
            r.report(node, path, "expected a mapping of user names to bcrypt hashes, got \(kind(node))")
            return [:]
        }
        var out: [String: String] = [:]
        for (keyNode, value) in mapping {
            guard case .scalar(let k) = keyNode, !isNull(keyNode) else {
                r.report(keyNode, path, "expected a user name, got \(kind(keyNode))")
                continue
            }
            let name = k.string, p = "\(path).\(name)"
            // Basic auth sends "user:password": a colon would split the name.
            if name.contains(":") || name.unicodeScalars.contains(where: { $0.value < 0x20 || $0 == "\u{7F}" }) {
                r.report(keyNode, p, "a user name cannot contain \":\" or control characters (basic auth could not send it)")
                continue
            }
            guard let hash = r.text(value, p, expected: "a bcrypt hash") else { continue }
            if let problem = bcryptProblem(hash) {
                r.report(value, p, problem)
                continue
            }
            out[name] = hash
        }
        return out
    }

    /// Reads and parses the file at `path`; a missing or unreadable file is a
    /// ConfigError naming it.
    public static func load(path: String) throws(ConfigError) -> WebConfig {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            // The system's words (No such file or directory, Permission denied) where it has them.
            let reason = access(path, R_OK) != 0 ? String(cString: strerror(errno)) : (error as NSError).localizedDescription
            throw ConfigError([.init(source: path, path: "", message: "cannot read the web config: \(reason)")])
        }
        return try parse(yaml: text, source: path, directory: (path as NSString).deletingLastPathComponent)
    }
}
