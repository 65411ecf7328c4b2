import FlowmeterCore
import Testing

@testable import FlowmeterConfig

/// The problems `WebConfig.parse` reports, as printed; [] if it parses.
func webProblems(_ yaml: String) -> [String] {
    do {
        _ = try WebConfig.parse(yaml: yaml, source: "web.yml", directory: "/etc/fm")
        return []
    } catch {
        return error.problems.map(\.description)
    }
}

// A hash htpasswd made (htpasswd -nbBC 4 alice 'correct horse'): the format
// is checked here, the password in FlowmeterExportTests.
let aliceHash = "$2y$04$uGLYZKL9kRymrImh3HlXW.jeHr/32clAhz61dYNEJOXgLY5yIY/Xi"

@Suite struct WebConfigTests {
    @Test func fullFileParses() throws {
        let c = try WebConfig.parse(
            yaml: """
                tls_server_config:
                  cert_file: server.crt
                  key_file: /abs/server.key
                  client_auth_type: RequireAndVerifyClientCert
                  client_ca_file: ca.crt
                  min_version: TLS13
                basic_auth_users:
                  alice: \(aliceHash)
                """, source: "web.yml", directory: "/etc/fm")
        // Relative names are the file's directory's, as in the exporter toolkit.
        #expect(
            c.tls
                == WebConfig.TLS(
                    certFile: "/etc/fm/server.crt", keyFile: "/abs/server.key", clientAuth: .requireAndVerifyClientCert,
                    clientCAFile: "/etc/fm/ca.crt", minVersion: .tls13, maxVersion: .tls13))
        #expect(c.basicAuthUsers == ["alice": aliceHash])
        #expect(c.source == "web.yml")
    }

    @Test func defaultsAndEmptyFile() throws {
        let c = try WebConfig.parse(yaml: "tls_server_config:\n  cert_file: a\n  key_file: b\n", source: "w", directory: "")
        #expect(c.tls?.clientAuth == .noClientCert && c.tls?.minVersion == .tls12 && c.tls?.maxVersion == .tls13)
        #expect(c.tls?.certFile == "a")
        #expect(c.basicAuthUsers.isEmpty)
        let empty = try WebConfig.parse(yaml: "", source: "w", directory: "")
        #expect(empty.tls == nil && empty.basicAuthUsers.isEmpty)
        let usersOnly = try WebConfig.parse(yaml: "basic_auth_users:\n  alice: '\(aliceHash)'\n", source: "w", directory: "")
        #expect(usersOnly.tls == nil && usersOnly.basicAuthUsers.count == 1)
    }

    @Test(arguments: [
        (
            "tls_server_config: [",
            "web.yml:2:1: YAML syntax error: did not find expected node content (while parsing a flow node at line 2, column 1)"
        ),
        (
            "tls_sever_config: {}",
            "web.yml:1:1: tls_sever_config: unknown key (did you mean \"tls_server_config\"?); allowed here: tls_server_config, basic_auth_users, http_server_config, rate_limit"
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: NoClientCerts\n",
            "web.yml:4:21: tls_server_config.client_auth_type: unknown client_auth_type \"NoClientCerts\" (did you mean \"NoClientCert\"?); one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert"
        ),
        (
            "tls_server_config:\n  cert_file: a\n",
            "web.yml:2:3: tls_server_config.key_file: missing: TLS needs the certificate's private key (PEM)"
        ),
        (
            "tls_server_config:\n  key_file: a\n",
            "web.yml:2:3: tls_server_config.cert_file: missing: TLS needs the server's certificate (PEM)"
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: VerifyClientCertIfGiven\n",
            "web.yml:4:21: tls_server_config.client_ca_file: missing: client_auth_type VerifyClientCertIfGiven verifies client certificates against it"
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: ca\n",
            "web.yml:4:19: tls_server_config.client_ca_file: given, but client_auth_type is NoClientCert, so no client certificate is asked for (set client_auth_type: RequireAndVerifyClientCert)"
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS14\n",
            "web.yml:4:16: tls_server_config.min_version: unknown TLS version \"TLS14\"; one of TLS10, TLS11, TLS12, TLS13"
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n",
            "web.yml:4:16: tls_server_config.min_version: TLS13 is above max_version TLS12"
        ),
        (
            "tls_server_config:\n  cert_file: [a]\n  key_file: b\n",
            "web.yml:2:14: tls_server_config.cert_file: expected a file name, got a list"
        ),
        (
            "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            "web.yml:4:18: tls_server_config.cipher_suites: not supported by flowmeterd (BoringSSL's default suites are used); remove it"
        ),
        (
            "rate_limit: {interval: 1s, burst: 2}",
            "web.yml:1:13: rate_limit: not supported by flowmeterd (no rate limit is offered); remove it"
        ),
        (
            "basic_auth_users:\n  alice: secret\n",
            "web.yml:2:10: basic_auth_users.alice: not a bcrypt hash (it starts with $2a$, $2b$ or $2y$; make one with htpasswd -nBC 10 \"\" | tr -d ':\\n')"
        ),
        (
            "basic_auth_users:\n  alice: $2y$3$uGLYZKL9kRymrImh3HlXW.jeHr/32clAhz61dYNEJOXgLY5yIY/Xi\n",
            "web.yml:2:10: basic_auth_users.alice: bcrypt cost must be two digits from 04 to 31 (as in $2y$10$...)"
        ),
        (
            "basic_auth_users:\n  alice: $2y$04$uGLYZKL9kRymrImh3HlXW.jeHr/32clAhz61dYNEJOXgLY5yIY/X\n",
            "web.yml:2:10: basic_auth_users.alice: bcrypt hash must have 53 characters of salt and hash after the cost, from [./A-Za-z0-9] (got 52)"
        ),
        (
            "basic_auth_users:\n  \"a:b\": \(aliceHash)\n",
            "web.yml:2:3: basic_auth_users.a:b: a user name cannot contain \":\" or control characters (basic auth could not send it)"
        ),
        ("basic_auth_users: [alice]", "web.yml:1:19: basic_auth_users: expected a mapping of user names to bcrypt hashes, got a list"),
    ])
    func problemsNameFileLineKey(yaml: String, expected: String) {
        #expect(webProblems(yaml) == [expected])
    }

    @Test func allProblemsAtOnce() {
        let p = webProblems("tls_server_config:\n  cert_file: a\n  client_auth_type: Nope\nbasic_auth_users:\n  bob: x\n")
        #expect(p.count == 3, "\(p)")
        #expect(p.allSatisfy { $0.hasPrefix("web.yml:") })
    }

    @Test(arguments: [
        ("$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", nil as String?),
        ("$2b$31$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", nil),
        ("$2x$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", "not a bcrypt hash"),
        ("$2y$32$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", "bcrypt cost"),
        ("$2y$1a$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", "bcrypt cost"),
        ("$2y$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhW!", "53 characters"),
        ("", "not a bcrypt hash"),
    ])
    func bcryptFormat(hash: String, problem: String?) {
        let p = WebConfig.bcryptProblem(hash)
        if let problem { #expect(p?.contains(problem) == true, "\(p ?? "nil")") } else { #expect(p == nil) }
    }
}
