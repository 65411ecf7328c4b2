// Settings that come from a config file or the environment, as opposed to the
// command line. Every field is optional so that sources can be layered.

import FlowmeterCore
import Foundation

/// Settings from one source (a YAML config file, or the `FLOWMETER_*`
/// environment). A nil field means "this source does not say": the layer
/// below decides. A non-nil field, even `[]` or `false`, decides.
///
/// Precedence, highest first:
///
/// 1. command-line flags given explicitly,
/// 2. the environment (`FileConfig.environment(_:)`),
/// 3. the config file (`FileConfig.parse(yaml:source:)`),
/// 4. the built-in defaults (the flags' defaults; `AggregationLimits.defaults`).
///
/// So a caller builds the effective settings as
///
///     let file = try FileConfig.parse(yaml: text, source: path)
///     let env = try FileConfig.environment(ProcessInfo.processInfo.environment)
///     let layered = file.overlaid(by: env)
///
/// and then lets each flag that was given on the command line win over
/// `layered`, and a built-in default fill what is still nil.
public struct FileConfig: Sendable, Equatable {
    /// Interfaces to attach to: names or globs (`--interfaces`). Empty means
    /// every interface that is up, except loopback.
    public var interfaces: [String]?
    /// Interfaces to leave alone: names or globs (`--exclude-interfaces`).
    public var excludeInterfaces: [String]?
    /// How often the flow tables are evicted (`--interval`).
    public var interval: FlowDuration?
    /// `HOST:PORT`, `:PORT` or `[V6]:PORT` (`--metrics-listen`); checked with
    /// `ListenAddress(parsing:)`, kept as written.
    public var metricsListen: String?
    /// JSON-lines flow log path, `-` for stdout (`--flow-log`).
    public var flowLog: String?
    /// Flows per kernel flow table (`--flow-table-size`), 1 to 16777216.
    public var flowTableSize: Int?
    /// Bytes of the flows ring (`--flows-ring-size`): a power of two, at least a page.
    public var flowsRingSize: Int?
    /// OTLP requests kept while the endpoint is down (`--otlp-queue-size`), 1 to 10000.
    public var otlpQueueSize: Int?
    /// The metrics endpoint's web config file (TLS, basic auth; `--web-config`).
    public var webConfig: String?
    /// Rotate the flow log when it reaches this many bytes (nil: never; SIGHUP reopens it).
    public var flowLogMaxSize: Int?
    /// Rotated flow logs kept (FILE.1 ... FILE.N).
    public var flowLogKeep: Int?
    /// OTLP metrics endpoint, e.g. http://collector:4318/v1/metrics.
    public var otlpEndpoint: String?
    /// `OTLPProtocol` raw value (`--otlp-protocol`).
    public var otlpProtocol: String?
    /// `key=value` headers, normalized (`--otlp-header`).
    public var otlpHeaders: [String]?
    /// TLS files for the OTLP endpoint.
    public var otlpCAFile: String?
    public var otlpClientCert: String?
    public var otlpClientKey: String?
    /// One of `FileConfig.otlpCompressions`.
    public var otlpCompression: String?
    /// Per export attempt (`--otlp-timeout`).
    public var otlpTimeout: FlowDuration?
    /// IPFIX collector, HOST:PORT (UDP).
    public var ipfixCollector: String?
    /// IPFIX observation domain id.
    public var ipfixObservationDomain: Int?
    /// The local API's unix socket ("off": none).
    public var apiSocket: String?
    /// The group that owns the API socket.
    public var apiGroup: String?
    /// One of `FileConfig.tcModes` (`--tc-mode`).
    public var tcMode: String?
    /// One of `FileConfig.hookRequests` (`--hooks`); `off` disables socket hooks.
    public var hooks: String?
    /// One of `FileConfig.socketUpdateRequests` (`--socket-updates`).
    public var socketUpdates: String?
    /// Follow interfaces that appear or vanish after start (`--follow-interfaces`).
    public var followInterfaces: Bool?
    /// Where clsact attachments are recorded (`--state-dir`).
    public var stateDir: String?
    /// Leave the tc programs attached and their maps pinned across a stop (`--persist`).
    public var persist: Bool?
    /// The bpffs directory `persist` pins under (`--pin-dir`).
    public var pinDir: String?
    /// DNS ports, comma-separated, or "off" (`--dns-ports`).
    public var dnsPorts: String?
    /// Age at which an unanswered DNS query counts as a timeout (`--dns-timeout`).
    public var dnsTimeout: FlowDuration?
    /// Keep the names clients resolve (`--dns-names`).
    public var dnsNames: Bool?
    /// DNS peer-naming rules, or "off" (`--dns-peer-names`).
    public var dnsPeerNames: String?
    /// How long past the TTL a resolved name names its address (`--dns-name-grace`).
    public var dnsNameGrace: FlowDuration?
    /// One of `FileConfig.logLevels` (`--log-level`).
    public var logLevel: String?
    /// containerd's socket for pod names ("off": never ask).
    public var containerdSocket: String?
    /// The Docker Engine API's socket for pod names ("off": never ask).
    public var dockerSocket: String?
    /// Name workloads by app.kubernetes.io/name first.
    public var podAppLabel: Bool?
    /// This node's name (default: the host name).
    public var nodeName: String?
    /// Rules naming the local end of a socket; the first match wins.
    public var services: [ServiceRule]?
    /// Rules naming the remote end; the first match wins.
    public var peers: [PeerRule]?
    /// Series per metric family (at least `FileConfig.minSeriesPerMetric`).
    public var maxSeriesPerMetric: Int?
    /// Idle time after which a series is dropped.
    public var seriesExpiry: FlowDuration?
    /// Label unknown peers with their address instead of "unknown".
    public var peerAddresses: Bool?

    public init(
        interfaces: [String]? = nil, excludeInterfaces: [String]? = nil, interval: FlowDuration? = nil,
        metricsListen: String? = nil, flowLog: String? = nil, flowTableSize: Int? = nil,
        flowsRingSize: Int? = nil, otlpQueueSize: Int? = nil,
        flowLogMaxSize: Int? = nil, flowLogKeep: Int? = nil, otlpEndpoint: String? = nil,
        ipfixCollector: String? = nil, ipfixObservationDomain: Int? = nil,
        apiSocket: String? = nil, apiGroup: String? = nil,
        tcMode: String? = nil, hooks: String? = nil, socketUpdates: String? = nil, followInterfaces: Bool? = nil,
        stateDir: String? = nil, persist: Bool? = nil, pinDir: String? = nil, logLevel: String? = nil,
        services: [ServiceRule]? = nil, peers: [PeerRule]? = nil,
        maxSeriesPerMetric: Int? = nil, seriesExpiry: FlowDuration? = nil, peerAddresses: Bool? = nil
    ) {
        self.interfaces = interfaces; self.excludeInterfaces = excludeInterfaces; self.interval = interval
        self.metricsListen = metricsListen; self.flowLog = flowLog; self.flowTableSize = flowTableSize
        self.flowsRingSize = flowsRingSize; self.otlpQueueSize = otlpQueueSize
        self.flowLogMaxSize = flowLogMaxSize; self.flowLogKeep = flowLogKeep; self.otlpEndpoint = otlpEndpoint
        self.ipfixCollector = ipfixCollector; self.ipfixObservationDomain = ipfixObservationDomain
        self.apiSocket = apiSocket; self.apiGroup = apiGroup
        self.tcMode = tcMode; self.hooks = hooks; self.socketUpdates = socketUpdates; self.followInterfaces = followInterfaces
        self.stateDir = stateDir; self.persist = persist; self.pinDir = pinDir; self.logLevel = logLevel
        self.services = services; self.peers = peers
        self.maxSeriesPerMetric = maxSeriesPerMetric; self.seriesExpiry = seriesExpiry; self.peerAddresses = peerAddresses
    }

    /// This config with every field that `top` sets taken from `top` (a higher
    /// layer: environment over file, see the type's precedence). Lists are
    /// replaced whole, not merged: `top`'s `services` replace these.
    public func overlaid(by top: FileConfig) -> FileConfig {
        var c = self
        for setting in Setting.all {
            if let v = setting.get(top) { setting.set(&c, v) }
        }
        if let services = top.services { c.services = services }
        if let peers = top.peers { c.peers = peers }
        return c
    }

    /// The series limits, with `AggregationLimits.defaults` where unset.
    public var limits: AggregationLimits {
        let d = AggregationLimits.defaults
        return AggregationLimits(
            maxSeriesPerMetric: maxSeriesPerMetric ?? d.maxSeriesPerMetric,
            seriesExpiry: seriesExpiry ?? d.seriesExpiry,
            peerAddresses: peerAddresses ?? d.peerAddresses)
    }

    // The checks of the export settings, for the flags (the same as the file's).
    public static func checkByteSize(_ s: String) throws -> Int { try Check.byteSize(s) }
    public static func checkKeep(_ n: Int) throws -> Int { try Check.keep(n) }
    /// The DNS ports of a `dns_ports` value; empty for "off".
    public static func dnsPortList(_ s: String) -> [UInt16] {
        s == "off" ? [] : s.split(separator: ",").compactMap { UInt16($0.trimmingCharacters(in: .whitespaces)) }
    }
    public static func checkHTTPURL(_ s: String) throws -> String { try Check.httpURL(s) }
    public static func checkDestination(_ s: String) throws -> String { try Check.destination(s) }
    public static func checkObservationDomain(_ n: Int) throws -> Int { try Check.observationDomain(n) }

    // MARK: Allowed values (the same as the flags')

    /// `--otlp-compression` values.
    public static let otlpCompressions = ["none", "gzip"]
    /// `--tc-mode` values (FlowmeterBPF's `TCMode`).
    public static let tcModes = ["auto", "tcx", "clsact"]
    /// `--hooks` values (FlowmeterBPF's `HookRequest`, plus `off`).
    public static let hookRequests = ["auto", "fentry", "kprobe", "tracepoint", "tracepoint-classic", "off"]
    /// `--socket-updates` values (FlowmeterBPF's `SocketUpdatesRequest`).
    public static let socketUpdateRequests = ["auto", "iterator", "raw-tp"]
    /// `--log-level` values (swift-log's `Logger.Level`).
    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
    /// What `--flow-table-size` accepts.
    public static let flowTableSizes = 1...(1 << 24)
    /// The least `series.max_per_metric`.
    public static let minSeriesPerMetric = 10
    /// The characters a service or peer name may have (it becomes a label value).
    public static let nameCharacters = "A-Z a-z 0-9 _ . : / @ -"
}

/// Value checks shared by the YAML and the environment readers; each throws a
/// `ValueError` that says what is wrong with the value.
enum Check {
    static func duration(_ s: String) throws -> FlowDuration { try FlowDuration(parsing: s) }

    static func listen(_ s: String) throws -> String {
        _ = try ListenAddress(parsing: s)
        return s
    }

    static func nonEmpty(_ s: String) throws -> String {
        guard !s.trimmed.isEmpty else { throw ValueError("must not be empty") }
        return s
    }

    static func oneOf(_ s: String, _ allowed: [String]) throws -> String {
        guard allowed.contains(s) else {
            throw ValueError("\(quoted(s)) is not one of \(allowed.joined(separator: ", "))")
        }
        return s
    }

    static func wholeNumber(_ s: String) throws -> Int {
        guard let n = Int(s.trimmed) else { throw ValueError("\(quoted(s)) is not a whole number") }
        return n
    }

    static func flowTableSize(_ n: Int) throws -> Int {
        let r = FileConfig.flowTableSizes
        guard r.contains(n) else { throw ValueError("must be from \(r.lowerBound) to \(r.upperBound), got \(n)") }
        return n
    }

    /// A size in bytes: a whole number, optionally with K, M or G (powers of 1024).
    static func byteSize(_ s: String) throws -> Int {
        let t = s.trimmed
        let units: [(String, Int)] = [("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)]
        var number = Substring(t), scale = 1
        for (u, m) in units where t.uppercased().hasSuffix(u) { number = t.dropLast(); scale = m; break }
        guard let n = Int(number), n > 0, n <= Int(Int32.max) / scale * 2 else {
            throw ValueError("\(quoted(s)) is not a size (bytes, or with K, M, G: e.g. 100M)")
        }
        guard n * scale >= 4096 else { throw ValueError("must be at least 4096 bytes, got \(quoted(s))") }
        return n * scale
    }

    static func otlpQueueSize(_ n: Int) throws -> Int {
        guard (1...10_000).contains(n) else { throw ValueError("must be from 1 to 10000, got \(n)") }
        return n
    }

    /// A ring buffer's size: a power of two from the page size to 1 GiB.
    static func ringSize(_ n: Int) throws -> Int {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard n >= page, n <= 1 << 30, n & (n - 1) == 0 else {
            throw ValueError("must be a power of two from \(page) to 1073741824, got \(n)")
        }
        return n
    }

    /// "off", or 1 to 16 distinct ports 1 ... 65535, comma-separated.
    static func dnsPorts(_ s: String) throws -> String {
        let t = s.trimmingCharacters(in: .whitespaces)
        if t == "off" { return t }
        let parts = t.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard !parts.isEmpty, parts.count <= 16 else { throw ValueError("must be 1 to 16 ports, comma-separated, or off") }
        for p in parts {
            guard let n = Int(p), (1...65535).contains(n) else {
                throw ValueError("'\(p)' is not a port (1 to 65535); give ports, comma-separated, or off")
            }
        }
        return parts.joined(separator: ",")
    }

    /// "off", or SUFFIX=TEMPLATE rules (DNSPeerNaming).
    static func dnsPeerNames(_ s: String) throws -> String {
        let t = s.trimmingCharacters(in: .whitespaces)
        if t == "off" { return t }
        _ = try DNSPeerNaming(parsing: t)
        return t
    }

    static func keep(_ n: Int) throws -> Int {
        guard (1...100).contains(n) else { throw ValueError("must be from 1 to 100, got \(n)") }
        return n
    }

    /// An http:// or https:// URL with a host (OTLP, either transport;
    /// whether a path is allowed depends on the protocol, checked at start).
    static func httpURL(_ s: String) throws -> String {
        let t = s.trimmed
        do { _ = try OTLPEndpoint(parsing: t) } catch {
            throw ValueError("\(error) (e.g. http://127.0.0.1:4318/v1/metrics)")
        }
        return t
    }

    /// One `key=value` OTLP header, normalized (key lower-cased, value
    /// percent-decoded); never echoes the value (it may be a token).
    static func header(_ s: String) throws -> String {
        let (k, v) = try OTLPHeaders.parse(s)
        return "\(k)=\(v)"
    }

    /// HOST:PORT or [V6]:PORT with a host (a destination, not a listen address).
    static func destination(_ s: String) throws -> String {
        let a = try ListenAddress(parsing: s)
        guard !s.trimmed.hasPrefix(":"), a.port > 0 else { throw ValueError("\(quoted(s)) needs a host and a port (HOST:PORT)") }
        return s.trimmed
    }

    static func observationDomain(_ n: Int) throws -> Int {
        guard n >= 0, n <= Int(UInt32.max) else { throw ValueError("must be from 0 to 4294967295, got \(n)") }
        return n
    }

    static func maxSeries(_ n: Int) throws -> Int {
        guard n >= FileConfig.minSeriesPerMetric else {
            throw ValueError("must be at least \(FileConfig.minSeriesPerMetric), got \(n)")
        }
        return n
    }

    static func bool(_ s: String) throws -> Bool {
        switch s.trimmed.lowercased() {
        case "true", "1": return true
        case "false", "0": return false
        default: throw ValueError("\(quoted(s)) is not true, false, 1 or 0")
        }
    }

    static func ruleName(_ s: String) throws -> String {
        guard !s.isEmpty else { throw ValueError("must not be empty") }
        let ok = s.unicodeScalars.allSatisfy { c in
            ("A"..."Z").contains(c) || ("a"..."z").contains(c) || ("0"..."9").contains(c) || "_.:/@-".unicodeScalars.contains(c)
        }
        guard ok else { throw ValueError("\(quoted(s)) may only contain \(FileConfig.nameCharacters)") }
        return s
    }

    /// The kernel's comm is at most 15 characters: a longer literal never matches.
    static func processGlob(_ s: String) throws -> String {
        _ = try nonEmpty(s)
        if !s.contains(where: { "*?[".contains($0) }) && s.unicodeScalars.count > 15 {
            throw ValueError(
                "\(quoted(s)) never matches: process names (comm) are at most 15 characters; use \(quoted(String(String.UnicodeScalarView(s.unicodeScalars.prefix(15))))) or a glob"
            )
        }
        return s
    }

    /// A path below the cgroup v2 mount starts with "/".
    static func cgroupGlob(_ s: String) throws -> String {
        _ = try nonEmpty(s)
        guard let first = s.first, "/*?[".contains(first) else {
            throw ValueError("\(quoted(s)) never matches: cgroup paths start with \"/\" (e.g. /system.slice/\(s))")
        }
        return s
    }
}

func quoted(_ s: String) -> String { "\"\(s)\"" }

extension String {
    var trimmed: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" || l == "\r" { s.removeLast() }
        return String(s)
    }
}

/// "Did you mean" for a misspelt key or variable: the closest allowed name
/// within two edits (one for names of up to five letters), if any. Swapped
/// neighbours count as one edit ("hosts" for "hooks" is two, "ohoks" one):
/// they are the commonest slip of the fingers.
func closest(to word: String, in candidates: [String]) -> String? {
    func distance(_ a: [Character], _ b: [Character]) -> Int {
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        // Optimal string alignment: Levenshtein plus adjacent transpositions.
        var d = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
        for i in 0...a.count { d[i][0] = i }
        for j in 0...b.count { d[0][j] = j }
        for i in 1...a.count {
            for j in 1...b.count {
                let cost = a[i - 1] == b[j - 1] ? 0 : 1
                d[i][j] = Swift.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
                if i > 1, j > 1, a[i - 1] == b[j - 2], a[i - 2] == b[j - 1] {
                    d[i][j] = Swift.min(d[i][j], d[i - 2][j - 2] + 1)
                }
            }
        }
        return d[a.count][b.count]
    }
    let w = Array(word.lowercased())
    let limit = Swift.min(2, Swift.max(1, w.count / 3))
    let scored = candidates.map { ($0, distance(w, Array($0.lowercased()))) }.filter { $0.1 <= limit }
    return scored.min(by: { $0.1 < $1.1 })?.0
}
