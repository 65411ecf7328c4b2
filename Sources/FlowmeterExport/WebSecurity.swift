import FlowmeterCore
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// A web config that cannot be put to work: the file, the key and why.
public struct WebConfigError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let key: String
    public let message: String
    public var description: String { "\(file): \(key): \(message)" }
}

/// The metrics endpoint's web config at work: the TLS context each new
/// connection gets, and the basic-auth check of each request.
///
/// Replaced as a whole by `apply` (SIGHUP); a file that fails leaves the
/// previous one working. Certificate renewal needs no signal: each new
/// connection compares the certificate, key and CA files with what was loaded
/// (device, inode, size, modification and change times) and loads them again
/// when they changed, as the exporter toolkit picks up renewed files. A
/// renewal caught half-way (a new certificate with the old key) is logged and
/// the previous context serves until the files fit together.
public final class WebSecurity: Sendable {
    struct Loaded: Sendable {
        var config: WebConfig
        var tls: TLSContext?
        /// The stamps a rebuild last failed on, so that the failure is logged once.
        var failedStamps: [FileStamp]?
    }

    struct TLSContext: Sendable {
        let context: NIOSSLContext
        /// Verification that accepts any certificate, for the two client auth
        /// types that ask for one but do not verify it.
        let acceptAny: Bool
        let stamps: [FileStamp]
    }

    private let state: Mutex<Loaded>
    /// Per user: hash, NUL, password of the last request that passed bcrypt,
    /// so a scraper's every request does not cost a bcrypt run (as the
    /// toolkit caches). Emptied when the users change.
    private let verified = Mutex<[String: [UInt8]]>([:])
    private let logger: Logger

    /// Loads the certificate files; throws what is wrong with them.
    public init(_ config: WebConfig, logger: Logger) throws(WebConfigError) {
        self.logger = logger
        state = Mutex(
            Loaded(config: config, tls: try config.tls.map { t throws(WebConfigError) in try Self.load(t, source: config.source) }))
    }

    /// A reloaded file (SIGHUP): in force for the next connection and request.
    public func apply(_ config: WebConfig) throws(WebConfigError) {
        let tls = try config.tls.map { t throws(WebConfigError) in try Self.load(t, source: config.source) }
        state.withLock { $0 = Loaded(config: config, tls: tls) }
        verified.withLock { $0.removeAll() }
    }

    /// One line for the log: what is in force.
    public var summary: String {
        state.withLock { s in
            let tls = s.config.tls.map { "tls=\($0.minVersion.rawValue)+ client_auth=\($0.clientAuth.rawValue)" } ?? "tls=off"
            return "\(tls) basic_auth_users=\(s.config.basicAuthUsers.count)"
        }
    }

    public var usesTLS: Bool { state.withLock { $0.config.tls != nil } }

    /// The TLS context for a connection that opens now (nil: plain HTTP),
    /// loaded again first if its files changed.
    func contextForNewConnection() -> TLSContext? {
        let (config, current, failed) = state.withLock { ($0.config, $0.tls, $0.failedStamps) }
        guard let t = config.tls, let current else { return nil }
        let now = t.files.map(FileStamp.init(path:))
        guard now != current.stamps, now != failed else { return current }
        do {
            let fresh = try Self.load(t, source: config.source)
            state.withLock { s in
                // Unless a SIGHUP replaced the config meanwhile.
                if s.config == config { s.tls = fresh; s.failedStamps = nil }
            }
            logger.notice("web config: certificate files changed; loaded them again", metadata: ["file": "\(config.source)"])
            return fresh
        } catch {
            state.withLock { s in if s.config == config { s.failedStamps = now } }
            logger.warning(
                "web config: certificate files changed but cannot be loaded; the previous certificate serves until they can",
                metadata: ["error": "\(error)"])
            return current
        }
    }

    /// Whether the request may pass: always without basic_auth_users, else
    /// when its basic-auth credentials match a user's bcrypt hash.
    public func authorize(_ authorization: String?) async -> Bool {
        let users = state.withLock { $0.config.basicAuthUsers }
        guard !users.isEmpty else { return true }
        guard let (user, password) = BasicAuth.credentials(authorization) else { return false }
        let hash = users[user]
        let key = Array((hash ?? "").utf8) + [0] + Array(password.utf8)
        if hash != nil, let seen = verified.withLock({ $0[user] }), BasicAuth.constantTimeEqual(seen, key) { return true }
        // An unknown user still costs a bcrypt run (against a configured
        // hash, so of the same cost): the time must not tell which names exist.
        let against = hash ?? users.values.min()!
        let matches: Bool
        do {
            matches = try await NIOThreadPool.singleton.runIfActive { BasicAuth.bcryptMatches(password: password, hash: against) }
        } catch { return false }
        guard matches, hash != nil else { return false }
        verified.withLock { v in
            // Only if the users did not change during the check.
            if state.withLock({ $0.config.basicAuthUsers[user] }) == hash { v[user] = key }
        }
        return true
    }

    /// Reads and checks the TLS files and builds their context.
    static func load(_ t: WebConfig.TLS, source: String) throws(WebConfigError) -> TLSContext {
        let key = "tls_server_config"
        // Stamps first: a file that changes while it is read is read again on the next connection.
        let stamps = t.files.map(FileStamp.init(path:))
        func bytes(_ path: String, _ field: String) throws(WebConfigError) -> [UInt8] {
            do { return Array(try Data(contentsOf: URL(fileURLWithPath: path))) } catch {
                throw WebConfigError(file: source, key: "\(key).\(field)", message: "cannot read \(path): \(Self.reason(error))")
            }
        }
        let chain: [NIOSSLCertificate]
        do { chain = try NIOSSLCertificate.fromPEMBytes(try bytes(t.certFile, "cert_file")) } catch let e as WebConfigError {
            throw e
        } catch {
            throw WebConfigError(file: source, key: "\(key).cert_file", message: "\(t.certFile) holds no PEM certificate (\(error))")
        }
        guard !chain.isEmpty else {
            throw WebConfigError(file: source, key: "\(key).cert_file", message: "\(t.certFile) holds no PEM certificate")
        }
        let privateKey: NIOSSLPrivateKey
        do { privateKey = try NIOSSLPrivateKey(bytes: try bytes(t.keyFile, "key_file"), format: .pem) } catch let e as WebConfigError {
            throw e
        } catch {
            throw WebConfigError(
                file: source, key: "\(key).key_file", message: "\(t.keyFile) holds no PEM private key, or one with a passphrase (\(error))")
        }
        var c = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(privateKey))
        c.minimumTLSVersion = tlsVersion(t.minVersion)
        c.maximumTLSVersion = tlsVersion(t.maxVersion)
        if let caFile = t.clientCAFile {
            let cas: [NIOSSLCertificate]
            do { cas = try NIOSSLCertificate.fromPEMBytes(try bytes(caFile, "client_ca_file")) } catch let e as WebConfigError {
                throw e
            } catch {
                throw WebConfigError(file: source, key: "\(key).client_ca_file", message: "\(caFile) holds no PEM certificate (\(error))")
            }
            guard !cas.isEmpty else {
                throw WebConfigError(file: source, key: "\(key).client_ca_file", message: "\(caFile) holds no PEM certificate")
            }
            c.trustRoots = .certificates(cas)
        }
        // BoringSSL's modes for Go's client auth types: whether a certificate
        // is asked for, required, and verified (against client_ca_file).
        switch t.clientAuth {
        case .noClientCert: c.certificateVerification = .none
        case .requestClientCert, .verifyClientCertIfGiven: c.certificateVerification = .optionalVerification
        case .requireAnyClientCert, .requireAndVerifyClientCert: c.certificateVerification = .noHostnameVerification
        }
        if t.clientAuth.verifies == false, t.clientAuth != .noClientCert, t.clientCAFile == nil {
            // Nothing to verify against, and nothing is verified: no system roots to load.
            c.trustRoots = .certificates([])
        }
        do {
            let context = try NIOSSLContext(configuration: c)
            return TLSContext(
                context: context, acceptAny: t.clientAuth == .requestClientCert || t.clientAuth == .requireAnyClientCert, stamps: stamps)
        } catch {
            throw WebConfigError(
                file: source, key: "\(key).key_file",
                message: "\(t.keyFile) cannot serve with cert_file \(t.certFile): not its private key, or refused by BoringSSL (\(error))")
        }
    }

    static func tlsVersion(_ v: WebConfig.TLSVersion) -> TLSVersion {
        switch v {
        case .tls10: .tlsv1
        case .tls11: .tlsv11
        case .tls12: .tlsv12
        case .tls13: .tlsv13
        }
    }

    static func reason(_ error: any Error) -> String {
        let ns = error as NSError
        if let posix = ns.userInfo[NSUnderlyingErrorKey] as? NSError, posix.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(posix.code)))
        }
        switch ns.code {
        case NSFileReadNoSuchFileError: return String(cString: strerror(ENOENT))
        case NSFileReadNoPermissionError: return String(cString: strerror(EACCES))
        default: return ns.localizedDescription
        }
    }
}

/// What identifies a file's contents without reading it: a renewal that
/// replaces the file (rename) changes the inode, one that rewrites it the
/// size or the times.
struct FileStamp: Sendable, Equatable {
    var dev: UInt64 = 0, ino: UInt64 = 0, size: Int64 = -1
    var mtime: Int = 0, mtimeNanos: Int = 0, ctime: Int = 0, ctimeNanos: Int = 0

    init(path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return }
        dev = UInt64(st.st_dev); ino = UInt64(st.st_ino); size = Int64(st.st_size)
        mtime = st.st_mtim.tv_sec; mtimeNanos = st.st_mtim.tv_nsec
        ctime = st.st_ctim.tv_sec; ctimeNanos = st.st_ctim.tv_nsec
    }
}

/// A connection of the metrics server under the web config: TLS (the
/// context in force when it opens) in front of Hummingbird's HTTP/1 channel,
/// or the HTTP/1 channel alone when the web config has no TLS.
struct WebConfigChannel: ServerChildChannel, HTTPChannelHandler {
    typealias Value = HTTP1Channel.Value
    let base: HTTP1Channel
    let security: WebSecurity

    var responder: HTTPChannelHandler.Responder { base.responder }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture { () throws -> Void in
            guard let tls = security.contextForNewConnection() else { return }
            let acceptAny: NIOSSLCustomVerificationCallback = { _, promise in promise.succeed(.certificateVerified) }
            try channel.pipeline.syncOperations.addHandler(
                NIOSSLServerHandler(
                    context: tls.context,
                    customVerificationCallback: tls.acceptAny ? acceptAny : nil,
                    configuration: .init()))
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

/// Basic auth before routing: 401 with a challenge unless `WebSecurity` lets
/// the request pass.
struct BasicAuthGate<Context: RequestContext>: RouterMiddleware {
    let security: WebSecurity

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if await security.authorize(request.headers[.authorization]) {
            return try await next(request, context)
        }
        return Response(
            status: .unauthorized,
            headers: [.wwwAuthenticate: #"Basic realm="flowmeterd", charset="UTF-8""#, .contentType: "text/plain; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(string: "authentication required (basic auth, see the web config's basic_auth_users)\n")))
    }
}
