import FlowmeterCore
import Foundation
import Logging
import Testing

@testable import FlowmeterExport

/// Basic auth's pure parts and the bcrypt check (libxcrypt) against hashes
/// made by another implementation (Apache's htpasswd -B), and the errors of
/// TLS files that cannot be loaded. The server side (TLS handshakes, 401s,
/// reloads) is tested end to end with Prometheus (Tests/e2e/test_web_config.py).
@Suite struct WebSecurityTests {
    // htpasswd -nbBC 4 alice 'correct horse'; htpasswd -nbBC 5 bob 'b:ob pass'
    static let alice = "$2y$04$uGLYZKL9kRymrImh3HlXW.jeHr/32clAhz61dYNEJOXgLY5yIY/Xi"
    static let bob = "$2y$05$WbNoax2kunDAy/ZlQYI09uBt9Uo7qRvaCYSUa95OKNa91sgqJphuW"

    static func header(_ s: String) -> String { "Basic " + Data(s.utf8).base64EncodedString() }

    @Test func credentials() {
        #expect(BasicAuth.credentials(Self.header("alice:correct horse"))! == ("alice", "correct horse"))
        // The password may hold colons; the first one ends the user.
        #expect(BasicAuth.credentials(Self.header("bob:b:ob pass"))! == ("bob", "b:ob pass"))
        #expect(BasicAuth.credentials("basic " + Data("u:".utf8).base64EncodedString())! == ("u", ""))
        #expect(BasicAuth.credentials(nil) == nil)
        #expect(BasicAuth.credentials("Bearer abc") == nil)
        #expect(BasicAuth.credentials("Basic !!!") == nil)
        #expect(BasicAuth.credentials(Self.header("no colon")) == nil)
        #expect(BasicAuth.credentials("Basic") == nil)
    }

    @Test func constantTimeEqual() {
        #expect(BasicAuth.constantTimeEqual([1, 2, 3], [1, 2, 3]))
        #expect(!BasicAuth.constantTimeEqual([1, 2, 3], [1, 2, 4]))
        #expect(!BasicAuth.constantTimeEqual([1, 2, 3], [1, 2]))
        #expect(BasicAuth.constantTimeEqual([], []))
    }

    @Test func bcryptAgainstHtpasswd() {
        #expect(BasicAuth.bcryptMatches(password: "correct horse", hash: Self.alice))
        #expect(!BasicAuth.bcryptMatches(password: "correct horsf", hash: Self.alice))
        #expect(!BasicAuth.bcryptMatches(password: "", hash: Self.alice))
        #expect(BasicAuth.bcryptMatches(password: "b:ob pass", hash: Self.bob))
        #expect(!BasicAuth.bcryptMatches(password: "correct horse", hash: Self.bob))
        // $2b$ and $2a$ spell the same hash for such passwords.
        #expect(BasicAuth.bcryptMatches(password: "correct horse", hash: "$2b$" + Self.alice.dropFirst(4)))
        #expect(!BasicAuth.bcryptMatches(password: "correct\0horse", hash: Self.alice))
        #expect(!BasicAuth.bcryptMatches(password: "x", hash: "not a hash"))
    }

    @Test func authorize() async throws {
        let s = try WebSecurity(
            WebConfig(source: "w", basicAuthUsers: ["alice": Self.alice, "bob": Self.bob]), logger: Logger(label: "t"))
        #expect(await s.authorize(Self.header("alice:correct horse")))
        // A second time from the cache, and the cache does not let a wrong one pass.
        #expect(await s.authorize(Self.header("alice:correct horse")))
        #expect(!(await s.authorize(Self.header("alice:correct horsf"))))
        #expect(await s.authorize(Self.header("bob:b:ob pass")))
        #expect(!(await s.authorize(Self.header("carol:correct horse"))))
        #expect(!(await s.authorize(nil)))
        // A reload replaces the users: alice's cached success does not survive it.
        try s.apply(WebConfig(source: "w", basicAuthUsers: ["bob": Self.bob]))
        #expect(!(await s.authorize(Self.header("alice:correct horse"))))
        #expect(await s.authorize(Self.header("bob:b:ob pass")))
        // No users: no auth.
        try s.apply(WebConfig(source: "w"))
        #expect(await s.authorize(nil))
    }

    @Test func missingFilesNameTheKey() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("websec-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let notPEM = dir + "/not.pem"
        try "hello\n".write(toFile: notPEM, atomically: true, encoding: .utf8)
        func error(_ tls: WebConfig.TLS) -> WebConfigError? {
            do {
                _ = try WebSecurity(WebConfig(source: "web.yml", tls: tls), logger: Logger(label: "t"))
                return nil
            } catch { return error }
        }
        let missing = error(.init(certFile: dir + "/nope.crt", keyFile: dir + "/nope.key"))
        #expect(missing?.key == "tls_server_config.cert_file")
        #expect(missing?.description == "web.yml: tls_server_config.cert_file: cannot read \(dir)/nope.crt: No such file or directory")
        let garbage = error(.init(certFile: notPEM, keyFile: notPEM))
        #expect(garbage?.key == "tls_server_config.cert_file")
        #expect(garbage?.message.hasPrefix("\(notPEM) holds no PEM certificate") == true, "\(garbage?.message ?? "")")
    }
}
