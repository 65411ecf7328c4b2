// The one definition of every setting: its YAML key, flag, variable, type,
// check (bounds), default and help. The YAML reader, the environment reader,
// the flags (Sources/flowmeterd), the layering, `config check`, the defaults
// the daemon applies and the docs' option table (checked by a test) all come
// from `Setting.all`. Adding a setting: a `FileConfig` property and one entry
// here (and its one-line `@Option`, which takes everything from the entry).

import FlowmeterCore
import Foundation

/// A setting's value, as read from any source.
public enum SettingValue: Sendable, Equatable {
    case text(String)
    case names([String])
    case integer(Int)
    case bool(Bool)
    case duration(FlowDuration)

    var text: String? { if case .text(let v) = self { v } else { nil } }
    var names: [String]? { if case .names(let v) = self { v } else { nil } }
    /// The list of a `.names` value (a repeated flag's values are joined with it).
    public var nameList: [String]? { names }
    var integer: Int? { if case .integer(let v) = self { v } else { nil } }
    var bool: Bool? { if case .bool(let v) = self { v } else { nil } }
    var duration: FlowDuration? { if case .duration(let v) = self { v } else { nil } }
}

public struct Setting: Sendable {
    /// How a value is written and checked, the same from every source.
    public enum Kind: Sendable {
        /// Interface names or globs: a YAML list; comma-separated in a flag or variable.
        case names
        /// `key=value` request headers (OTLP): a YAML list (or one
        /// comma-separated string); a flag is repeated; a variable is comma-separated (OTEL_EXPORTER_OTLP_HEADERS'
        /// format, values percent-encoded). Kept normalized as `.names`.
        case headers
        /// Text, checked (`expected` says what it should be, for YAML's type errors).
        case text(expected: String, check: @Sendable (String) throws -> String)
        /// One of a fixed list (`expected` names it, for YAML's type errors).
        case oneOf([String], expected: String)
        case duration
        /// A whole number (YAML's 0x/0o/0b spellings too), checked.
        case integer(check: @Sendable (Int) throws -> Int)
        /// Bytes, or with K, M, G.
        case byteSize
        case bool
    }

    /// The YAML key; "series.expiry" is `expiry` under `series:`.
    public let key: String
    /// The long flag, without the dashes.
    public let flag: String
    /// The environment variable.
    public let variable: String
    /// The flag's value placeholder in --help.
    public let valueName: String
    public let kind: Kind
    /// The default, applied by `FileConfig.withDefaults()`; nil when there is
    /// none (off) or it is computed at start (`defaultText` says which).
    public let defaultValue: SettingValue?
    /// The default as the docs and --help say it.
    public let defaultText: String
    /// What it does (the flag's help, without the default).
    public let help: String
    /// A valid value, for tests and examples.
    public let example: String
    let get: @Sendable (FileConfig) -> SettingValue?
    /// Sets this setting's field of a layer.
    public let set: @Sendable (inout FileConfig, SettingValue) -> Void

    /// The flag's help text: what it does, then the default.
    public var flagHelp: String { "\(help) Default: \(defaultText)." }

    /// The YAML key's last part and its section ("" for the top level).
    var section: String { key.contains(".") ? String(key.split(separator: ".")[0]) : "" }
    var leaf: String { key.contains(".") ? String(key.split(separator: ".")[1]) : key }

    /// A value written as text (a flag, a variable), checked.
    public func parse(_ text: String) throws -> SettingValue {
        switch kind {
        case .names: return .names(InterfaceSelection.patterns(text))
        case .headers: return .names(try OTLPHeaders.parseList(text).map { "\($0.0)=\($0.1)" })
        case .text(_, let check): return .text(try check(text))
        case .oneOf(let allowed, _): return .text(try Check.oneOf(text, allowed))
        case .duration: return .duration(try Check.duration(text))
        case .integer(let check): return .integer(try check(Check.wholeNumber(text)))
        case .byteSize: return .integer(try Check.byteSize(text))
        case .bool: return .bool(try Check.bool(text))
        }
    }

    /// The value this layer sets, if any.
    public func value(in c: FileConfig) -> SettingValue? { get(c) }
}

extension Setting {
    public static let interfaces = Setting(
        key: "interfaces", flag: "interfaces", variable: "FLOWMETER_INTERFACES", valueName: "names", kind: .names,
        defaultValue: nil, defaultText: "every interface that is up, except lo",
        help:
            "Interfaces to attach to: names or globs, comma-separated (a list in the file). An unknown literal name is an error that lists the host's interfaces, also when following interfaces; a glob such as eth1* waits for one that appears later.",
        example: "eth*,veth*",
        get: { $0.interfaces.map { .names($0) } }, set: { $0.interfaces = $1.names })
    public static let excludeInterfaces = Setting(
        key: "exclude_interfaces", flag: "exclude-interfaces", variable: "FLOWMETER_EXCLUDE_INTERFACES", valueName: "names",
        kind: .names, defaultValue: nil, defaultText: "none",
        help: "Interfaces to leave alone: names or globs, comma-separated.", example: "lo,docker*",
        get: { $0.excludeInterfaces.map { .names($0) } }, set: { $0.excludeInterfaces = $1.names })
    public static let interval = Setting(
        key: "interval", flag: "interval", variable: "FLOWMETER_INTERVAL", valueName: "duration", kind: .duration,
        defaultValue: .duration(FlowDuration(nanoseconds: 5_000_000_000)), defaultText: "5s",
        help: "How often the flow tables are evicted and socket updates read (e.g. 500ms, 5s, 1m).", example: "2s",
        get: { $0.interval.map { .duration($0) } }, set: { $0.interval = $1.duration })
    public static let metricsListen = Setting(
        key: "metrics_listen", flag: "metrics-listen", variable: "FLOWMETER_METRICS_LISTEN", valueName: "address",
        kind: .text(expected: "an address (HOST:PORT)", check: Check.listen),
        defaultValue: .text("0.0.0.0:9810"), defaultText: "0.0.0.0:9810 (all IPv4 addresses)",
        help: "Address of the metrics endpoint: :PORT, HOST:PORT or [V6]:PORT.", example: "127.0.0.1:9810",
        get: { $0.metricsListen.map { .text($0) } }, set: { $0.metricsListen = $1.text })
    public static let webConfig = Setting(
        key: "web_config", flag: "web-config", variable: "FLOWMETER_WEB_CONFIG", valueName: "path",
        kind: .text(expected: "a path", check: Check.nonEmpty), defaultValue: nil, defaultText: "off (plain HTTP, no auth)",
        help:
            "TLS, client certificates and bcrypt basic-auth users for the metrics endpoint, in the Prometheus exporter-toolkit web config format (see docs/flowmeterd.md). SIGHUP reloads it; renewed certificate files are picked up without one.",
        example: "/etc/flowmeter/web.yaml",
        get: { $0.webConfig.map { .text($0) } }, set: { $0.webConfig = $1.text })
    public static let flowLog = Setting(
        key: "flow_log", flag: "flow-log", variable: "FLOWMETER_FLOW_LOG", valueName: "path",
        kind: .text(expected: "a path", check: Check.nonEmpty), defaultValue: nil, defaultText: "off",
        help: "Write one JSON object per evicted flow and per connection event to this file ('-' for stdout).",
        example: "/var/log/flowmeter/flows.jsonl",
        get: { $0.flowLog.map { .text($0) } }, set: { $0.flowLog = $1.text })
    public static let flowLogMaxSize = Setting(
        key: "flow_log_max_size", flag: "flow-log-max-size", variable: "FLOWMETER_FLOW_LOG_MAX_SIZE", valueName: "size",
        kind: .byteSize, defaultValue: nil, defaultText: "never",
        help:
            "Rotate the flow log at this size (bytes, or with K, M, G): FILE becomes FILE.1, FILE.1 becomes FILE.2, ...; a batch is never split. SIGHUP reopens the file (for logrotate).",
        example: "100M", get: { $0.flowLogMaxSize.map { .integer($0) } }, set: { $0.flowLogMaxSize = $1.integer })
    public static let flowLogKeep = Setting(
        key: "flow_log_keep", flag: "flow-log-keep", variable: "FLOWMETER_FLOW_LOG_KEEP", valueName: "n",
        kind: .integer(check: Check.keep), defaultValue: .integer(5), defaultText: "5",
        help: "Rotated flow logs kept (FILE.1 ... FILE.N), 1 to 100.", example: "10",
        get: { $0.flowLogKeep.map { .integer($0) } }, set: { $0.flowLogKeep = $1.integer })
    public static let otlpEndpoint = Setting(
        key: "otlp_endpoint", flag: "otlp-endpoint", variable: "FLOWMETER_OTLP_ENDPOINT", valueName: "url",
        kind: .text(expected: "a URL", check: Check.httpURL), defaultValue: nil, defaultText: "off",
        help:
            "Push the metrics every interval to this OTLP endpoint (cumulative; see docs/exporting.md): http:// or https:// (TLS), e.g. http://127.0.0.1:4318/v1/metrics for http/protobuf (the path defaults to /v1/metrics), https://collector:4317 for grpc (no path).",
        example: "http://127.0.0.1:4318/v1/metrics",
        get: { $0.otlpEndpoint.map { .text($0) } }, set: { $0.otlpEndpoint = $1.text })
    public static let otlpQueueSize = Setting(
        key: "otlp_queue_size", flag: "otlp-queue-size", variable: "FLOWMETER_OTLP_QUEUE_SIZE", valueName: "n",
        kind: .integer(check: Check.otlpQueueSize), defaultValue: .integer(16), defaultText: "16",
        help:
            "OTLP requests kept while the endpoint is unreachable (retried with exponential backoff, 0.5 s to 30 s), 1 to 10000; past it the oldest is dropped and counted.",
        example: "64", get: { $0.otlpQueueSize.map { .integer($0) } }, set: { $0.otlpQueueSize = $1.integer })
    public static let otlpProtocol = Setting(
        key: "otlp_protocol", flag: "otlp-protocol", variable: "FLOWMETER_OTLP_PROTOCOL", valueName: "protocol",
        kind: .oneOf(OTLPProtocol.allCases.map(\.rawValue), expected: "an OTLP protocol"),
        defaultValue: .text(OTLPProtocol.httpProtobuf.rawValue), defaultText: "http/protobuf",
        help:
            "OTLP transport: http/protobuf (a POST of the protobuf request, as the OpenTelemetry specification recommends) or grpc (MetricsService/Export over HTTP/2).",
        example: "grpc", get: { $0.otlpProtocol.map { .text($0) } }, set: { $0.otlpProtocol = $1.text })
    public static let otlpHeaders = Setting(
        key: "otlp_headers", flag: "otlp-header", variable: "FLOWMETER_OTLP_HEADERS", valueName: "key=value",
        kind: .headers, defaultValue: nil, defaultText: "none",
        help:
            "A header sent with every OTLP request (gRPC metadata), e.g. authorization=Bearer%20TOKEN; repeat the flag for more (a list in the file; comma-separated in the variable, values percent-encoded). OTEL_EXPORTER_OTLP_HEADERS and OTEL_EXPORTER_OTLP_METRICS_HEADERS are read too, under these. Values are never logged.",
        example: "x-scope-orgid=tenant1",
        get: { $0.otlpHeaders.map { .names($0) } }, set: { $0.otlpHeaders = $1.names })
    public static let otlpCAFile = Setting(
        key: "otlp_ca_file", flag: "otlp-ca-file", variable: "FLOWMETER_OTLP_CA_FILE", valueName: "path",
        kind: .text(expected: "a path", check: Check.nonEmpty), defaultValue: nil, defaultText: "the system's roots",
        help: "PEM file of the CA certificates that sign the collector's certificate (https:// endpoints).",
        example: "/etc/flowmeter/collector-ca.pem",
        get: { $0.otlpCAFile.map { .text($0) } }, set: { $0.otlpCAFile = $1.text })
    public static let otlpClientCert = Setting(
        key: "otlp_client_cert", flag: "otlp-client-cert", variable: "FLOWMETER_OTLP_CLIENT_CERT", valueName: "path",
        kind: .text(expected: "a path", check: Check.nonEmpty), defaultValue: nil, defaultText: "none",
        help: "PEM client certificate (chain) for mTLS to the collector; needs --otlp-client-key.",
        example: "/etc/flowmeter/client.pem",
        get: { $0.otlpClientCert.map { .text($0) } }, set: { $0.otlpClientCert = $1.text })
    public static let otlpClientKey = Setting(
        key: "otlp_client_key", flag: "otlp-client-key", variable: "FLOWMETER_OTLP_CLIENT_KEY", valueName: "path",
        kind: .text(expected: "a path", check: Check.nonEmpty), defaultValue: nil, defaultText: "none",
        help: "PEM private key of --otlp-client-cert.", example: "/etc/flowmeter/client-key.pem",
        get: { $0.otlpClientKey.map { .text($0) } }, set: { $0.otlpClientKey = $1.text })
    public static let otlpCompression = Setting(
        key: "otlp_compression", flag: "otlp-compression", variable: "FLOWMETER_OTLP_COMPRESSION", valueName: "method",
        kind: .oneOf(FileConfig.otlpCompressions, expected: "a compression"), defaultValue: .text("none"), defaultText: "none",
        help: "Compress OTLP requests: gzip (Content-Encoding: gzip over HTTP; gRPC's message compression) or none.",
        example: "gzip", get: { $0.otlpCompression.map { .text($0) } }, set: { $0.otlpCompression = $1.text })
    public static let otlpTimeout = Setting(
        key: "otlp_timeout", flag: "otlp-timeout", variable: "FLOWMETER_OTLP_TIMEOUT", valueName: "duration",
        kind: .duration, defaultValue: .duration(FlowDuration(nanoseconds: 10_000_000_000)), defaultText: "10s",
        help: "How long one OTLP export attempt may take (connecting, TLS and the answer); past it the attempt fails and is retried.",
        example: "5s", get: { $0.otlpTimeout.map { .duration($0) } }, set: { $0.otlpTimeout = $1.duration })
    public static let ipfixCollector = Setting(
        key: "ipfix_collector", flag: "ipfix-collector", variable: "FLOWMETER_IPFIX_COLLECTOR", valueName: "host:port",
        kind: .text(expected: "HOST:PORT", check: Check.destination), defaultValue: nil, defaultText: "off",
        help: "Export every flow record as IPFIX (RFC 7011) over UDP to HOST:PORT.", example: "127.0.0.1:4739",
        get: { $0.ipfixCollector.map { .text($0) } }, set: { $0.ipfixCollector = $1.text })
    public static let ipfixObservationDomain = Setting(
        key: "ipfix_observation_domain", flag: "ipfix-observation-domain", variable: "FLOWMETER_IPFIX_OBSERVATION_DOMAIN",
        valueName: "id", kind: .integer(check: Check.observationDomain), defaultValue: .integer(0), defaultText: "0",
        help: "IPFIX observation domain id (0 to 4294967295).", example: "7",
        get: { $0.ipfixObservationDomain.map { .integer($0) } }, set: { $0.ipfixObservationDomain = $1.integer })
    public static let apiSocket = Setting(
        key: "api_socket", flag: "api-socket", variable: "FLOWMETER_API_SOCKET", valueName: "path",
        kind: .text(expected: "a path or off", check: Check.nonEmpty),
        defaultValue: .text("/run/flowmeter/flowmeter.sock"), defaultText: "/run/flowmeter/flowmeter.sock",
        help:
            "Unix socket of the local API (flowtop, scripts; see docs/api.md): GET /v1/snapshot, /v1/stream. Give off to disable it. Created mode 0660; a socket another flowmeterd still answers on is an error.",
        example: "off", get: { $0.apiSocket.map { .text($0) } }, set: { $0.apiSocket = $1.text })
    public static let apiGroup = Setting(
        key: "api_group", flag: "api-group", variable: "FLOWMETER_API_GROUP", valueName: "group",
        kind: .text(expected: "a group name", check: Check.nonEmpty), defaultValue: nil, defaultText: "root's group",
        help: "Group that owns the API socket, mode 0660 (its members may read the API).", example: "adm",
        get: { $0.apiGroup.map { .text($0) } }, set: { $0.apiGroup = $1.text })
    public static let flowTableSize = Setting(
        key: "flow_table_size", flag: "flow-table-size", variable: "FLOWMETER_FLOW_TABLE_SIZE", valueName: "n",
        kind: .integer(check: Check.flowTableSize), defaultValue: nil,
        defaultText: "65536 (fewer on hosts with more than 8 CPUs)",
        help:
            "Flows each of the two kernel flow tables holds, 1 to 16777216; packets of flows beyond it travel through the flows ring. The tables are preallocated per CPU: about 2 x N x (CPUs x 40 + 96) bytes of kernel memory, logged at start.",
        example: "4096", get: { $0.flowTableSize.map { .integer($0) } }, set: { $0.flowTableSize = $1.integer })
    public static let flowsRingSize = Setting(
        key: "flows_ring_size", flag: "flows-ring-size", variable: "FLOWMETER_FLOWS_RING_SIZE", valueName: "bytes",
        kind: .integer(check: Check.ringSize), defaultValue: .integer(4_194_304), defaultText: "4194304",
        help:
            "Bytes of the ring that carries packets the full flow table cannot take (a power of two from the page size to 1073741824; a record is 96 bytes).",
        example: "8388608", get: { $0.flowsRingSize.map { .integer($0) } }, set: { $0.flowsRingSize = $1.integer })
    public static let tcMode = Setting(
        key: "tc_mode", flag: "tc-mode", variable: "FLOWMETER_TC_MODE", valueName: "mode",
        kind: .oneOf(FileConfig.tcModes, expected: "a tc mode"), defaultValue: .text("auto"), defaultText: "auto",
        help: "How to attach tc programs: tcx (links, kernel 6.6+), clsact (qdisc + cls_bpf filter), auto (TCX, else clsact).",
        example: "clsact",
        get: { $0.tcMode.map { .text($0) } }, set: { $0.tcMode = $1.text })
    public static let hooks = Setting(
        key: "hooks", flag: "hooks", variable: "FLOWMETER_HOOKS", valueName: "rung",
        kind: .oneOf(FileConfig.hookRequests, expected: "a hook rung"), defaultValue: .text("auto"), defaultText: "auto",
        help:
            "Socket-hook rung: auto (fentry, else kprobe, else tracepoint), fentry, kprobe, tracepoint, tracepoint-classic, or off. A forced rung that cannot be had is an error; with auto, no rung at all only disables socket telemetry.",
        example: "tracepoint", get: { $0.hooks.map { .text($0) } }, set: { $0.hooks = $1.text })
    public static let socketUpdates = Setting(
        key: "socket_updates", flag: "socket-updates", variable: "FLOWMETER_SOCKET_UPDATES", valueName: "path",
        kind: .oneOf(FileConfig.socketUpdateRequests, expected: "an update path"), defaultValue: .text("auto"), defaultText: "auto",
        help:
            "How the counters of long-lived sockets are read once an interval: auto (the iterator, else the raw_tp run), iterator (iter/bpf_map_elem), raw-tp (a raw_tp program run with BPF_PROG_TEST_RUN, for kernels that refuse iterators). A forced path the kernel refuses is an error.",
        example: "raw-tp", get: { $0.socketUpdates.map { .text($0) } }, set: { $0.socketUpdates = $1.text })
    public static let followInterfaces = Setting(
        key: "follow_interfaces", flag: "follow-interfaces", variable: "FLOWMETER_FOLLOW_INTERFACES", valueName: "bool",
        kind: .bool, defaultValue: .bool(true), defaultText: "on",
        help:
            "Attach to matching interfaces that appear or come up after start (containers' veths), and let go of those deleted or renamed away; with it on, starting with no matching interface is not an error (--no-follow-interfaces: off).",
        example: "false", get: { $0.followInterfaces.map { .bool($0) } }, set: { $0.followInterfaces = $1.bool })
    public static let stateDir = Setting(
        key: "state_dir", flag: "state-dir", variable: "FLOWMETER_STATE_DIR", valueName: "dir",
        kind: .text(expected: "a directory", check: Check.nonEmpty), defaultValue: .text("/run/flowmeter"),
        defaultText: "/run/flowmeter",
        help: "Where flowmeterd records clsact attachments, so a start after a SIGKILL removes them.",
        example: "/run/flowmeter", get: { $0.stateDir.map { .text($0) } }, set: { $0.stateDir = $1.text })
    public static let persist = Setting(
        key: "persist", flag: "persist", variable: "FLOWMETER_PERSIST", valueName: "bool",
        kind: .bool, defaultValue: .bool(false), defaultText: "off",
        help:
            "Restarts lose nothing: a stop leaves the tc programs attached and their flow tables, ring and counters pinned under --pin-dir, the kernel counts on, and the next start adopts them and reports the gap in its first interval (docs/flowmeterd.md, Restarts that lose nothing). `flowmeterd uninstall` removes them. Socket hooks detach, but their tables are kept, so sockets opened before a restart are followed after it (--no-persist: off).",
        example: "true", get: { $0.persist.map { .bool($0) } }, set: { $0.persist = $1.bool })
    public static let pinDir = Setting(
        key: "pin_dir", flag: "pin-dir", variable: "FLOWMETER_PIN_DIR", valueName: "dir",
        kind: .text(expected: "a directory on a bpf filesystem", check: Check.nonEmpty), defaultValue: .text("/sys/fs/bpf/flowmeter"),
        defaultText: "/sys/fs/bpf/flowmeter",
        help: "Where --persist pins maps and TCX links (on a mounted bpf filesystem); also what `flowmeterd uninstall` removes.",
        example: "/sys/fs/bpf/flowmeter", get: { $0.pinDir.map { .text($0) } }, set: { $0.pinDir = $1.text })
    public static let dnsPorts = Setting(
        key: "dns_ports", flag: "dns-ports", variable: "FLOWMETER_DNS_PORTS", valueName: "ports",
        kind: .text(expected: "ports or off", check: Check.dnsPorts), defaultValue: .text("53"), defaultText: "53",
        help:
            "Ports whose UDP and TCP traffic local clients send and receive is parsed as DNS (comma-separated, at most 16), or off: no DNS hook (see docs/metrics.md, DNS).",
        example: "53,5353", get: { $0.dnsPorts.map { .text($0) } }, set: { $0.dnsPorts = $1.text })
    public static let dnsTimeout = Setting(
        key: "dns_timeout", flag: "dns-timeout", variable: "FLOWMETER_DNS_TIMEOUT", valueName: "duration",
        kind: .duration, defaultValue: .duration(FlowDuration(nanoseconds: 5_000_000_000)), defaultText: "5s",
        help:
            "A DNS query with no answer after this long counts as rcode=\"timeout\" (checked once an interval, so it shows up to one interval later); an answer after it is not counted again.",
        example: "2s", get: { $0.dnsTimeout.map { .duration($0) } }, set: { $0.dnsTimeout = $1.duration })
    public static let dnsNames = Setting(
        key: "dns_names", flag: "dns-names", variable: "FLOWMETER_DNS_NAMES", valueName: "bool",
        kind: .bool, defaultValue: .bool(true), defaultText: "on",
        help:
            "Keep the names clients resolve: in the flow log's dns records (the question and the answers' names) and for naming peers. Names are personal data in some places (--no-dns-names: off; the counts stay).",
        example: "false", get: { $0.dnsNames.map { .bool($0) } }, set: { $0.dnsNames = $1.bool })
    public static let dnsPeerNames = Setting(
        key: "dns_peer_names", flag: "dns-peer-names", variable: "FLOWMETER_DNS_PEER_NAMES", valueName: "rules",
        kind: .text(expected: "SUFFIX=TEMPLATE rules or off", check: Check.dnsPeerNames),
        defaultValue: .text(DNSPeerNaming.defaultText), defaultText: DNSPeerNaming.defaultText,
        help:
            "How a peer no rule and no local socket names is named by what the local client resolved to its address (for the answer's TTL plus --dns-name-grace): SUFFIX=TEMPLATE rules, comma-separated, the first whose suffix a name ends with maps the labels before it ({1} the first); a name no rule matches is used whole. off: peers are not named by DNS (also with --no-dns-names). See docs/services.md.",
        example: "svc.cluster.local={2}/{1},corp.example={1}",
        get: { $0.dnsPeerNames.map { .text($0) } }, set: { $0.dnsPeerNames = $1.text })
    public static let dnsNameGrace = Setting(
        key: "dns_name_grace", flag: "dns-name-grace", variable: "FLOWMETER_DNS_NAME_GRACE", valueName: "duration",
        kind: .duration, defaultValue: .duration(FlowDuration(nanoseconds: 30_000_000_000)), defaultText: "30s",
        help:
            "How long past an answer's TTL the name a client resolved still names the address (clients keep using an address a while after its TTL).",
        example: "1m", get: { $0.dnsNameGrace.map { .duration($0) } }, set: { $0.dnsNameGrace = $1.duration })
    public static let logLevel = Setting(
        key: "log_level", flag: "log-level", variable: "FLOWMETER_LOG_LEVEL", valueName: "level",
        kind: .oneOf(FileConfig.logLevels, expected: "a log level"), defaultValue: .text("info"), defaultText: "info",
        help: "trace, debug, info, notice, warning, error or critical; logs go to stderr.", example: "debug",
        get: { $0.logLevel.map { .text($0) } }, set: { $0.logLevel = $1.text })
    public static let maxSeriesPerMetric = Setting(
        key: "series.max_per_metric", flag: "max-series-per-metric", variable: "FLOWMETER_MAX_SERIES_PER_METRIC",
        valueName: "n", kind: .integer(check: Check.maxSeries),
        defaultValue: .integer(AggregationLimits.defaults.maxSeriesPerMetric),
        defaultText: "\(AggregationLimits.defaults.maxSeriesPerMetric)",
        help:
            "Service pairs that exist at most, at least \(FileConfig.minSeriesPerMetric) (see docs/services.md); a new pair past it folds into peer_service=\"other\" (or service and peer_service \"other\"), counted by flowmeter_series_dropped_total.",
        example: "500", get: { $0.maxSeriesPerMetric.map { .integer($0) } }, set: { $0.maxSeriesPerMetric = $1.integer })
    public static let seriesExpiry = Setting(
        key: "series.expiry", flag: "series-expiry", variable: "FLOWMETER_SERIES_EXPIRY", valueName: "duration",
        kind: .duration, defaultValue: .duration(AggregationLimits.defaults.seriesExpiry),
        defaultText: "\(AggregationLimits.defaults.seriesExpiry.nanoseconds / 60_000_000_000)m",
        help: "A pair with no live connection and no traffic for this long is dropped from the metrics.", example: "10m",
        get: { $0.seriesExpiry.map { .duration($0) } }, set: { $0.seriesExpiry = $1.duration })
    public static let peerAddresses = Setting(
        key: "series.peer_addresses", flag: "peer-addresses", variable: "FLOWMETER_PEER_ADDRESSES", valueName: "bool",
        kind: .bool, defaultValue: .bool(AggregationLimits.defaults.peerAddresses),
        defaultText: AggregationLimits.defaults.peerAddresses ? "on" : "off",
        help: "Label an unknown peer with its address instead of \"unknown\", under the same cap (--no-peer-addresses: off).",
        example: "true", get: { $0.peerAddresses.map { .bool($0) } }, set: { $0.peerAddresses = $1.bool })

    public static let containerdSocket = Setting(
        key: "containerd_socket", flag: "containerd-socket", variable: "FLOWMETER_CONTAINERD_SOCKET", valueName: "path",
        kind: .text(expected: "a path or off", check: Check.nonEmpty),
        defaultValue: .text("/run/containerd/containerd.sock"), defaultText: "/run/containerd/containerd.sock",
        help:
            "containerd's gRPC socket, asked (namespace k8s.io) who a Kubernetes pod's container is, so its sockets are named <namespace>/<workload> (docs/kubernetes.md). A path that does not exist is a warning at start; until containerd answers, pods are named pod:<uid>. Give off to never ask.",
        example: "off", get: { $0.containerdSocket.map { .text($0) } }, set: { $0.containerdSocket = $1.text })
    public static let dockerSocket = Setting(
        key: "docker_socket", flag: "docker-socket", variable: "FLOWMETER_DOCKER_SOCKET", valueName: "path",
        kind: .text(expected: "a path or off", check: Check.nonEmpty),
        defaultValue: .text("off"), defaultText: "off",
        help:
            "The Docker Engine API's socket (cri-dockerd's Docker, e.g. /run/docker.sock, or podman system service), asked after containerd who a Kubernetes pod's container is (docs/kubernetes.md). A path that does not exist is a warning at start.",
        example: "/run/docker.sock", get: { $0.dockerSocket.map { .text($0) } }, set: { $0.dockerSocket = $1.text })
    public static let podAppLabel = Setting(
        key: "pod_app_label", flag: "pod-app-label", variable: "FLOWMETER_POD_APP_LABEL", valueName: "bool",
        kind: .bool, defaultValue: .bool(false), defaultText: "off",
        help:
            "Name a pod's workload by its app.kubernetes.io/name label when it has one, before the owner derived from its labels and name (--no-pod-app-label: off).",
        example: "true", get: { $0.podAppLabel.map { .bool($0) } }, set: { $0.podAppLabel = $1.bool })
    public static let nodeName = Setting(
        key: "node_name", flag: "node-name", variable: "FLOWMETER_NODE_NAME", valueName: "name",
        kind: .text(expected: "a node name", check: Check.nonEmpty), defaultValue: nil, defaultText: "the host name",
        help:
            "This node's name in the flow log's pod records (node) and in flowmeter_endpoint_info; on Kubernetes give spec.nodeName (the DaemonSet does).",
        example: "node-a", get: { $0.nodeName.map { .text($0) } }, set: { $0.nodeName = $1.text })

    /// Every setting, in the order of the flags in --help and the docs.
    public static let all: [Setting] = [
        interfaces, excludeInterfaces, interval, metricsListen, webConfig, flowLog, flowLogMaxSize, flowLogKeep,
        otlpEndpoint, otlpProtocol, otlpHeaders, otlpCAFile, otlpClientCert, otlpClientKey, otlpCompression, otlpTimeout,
        otlpQueueSize, ipfixCollector, ipfixObservationDomain, apiSocket, apiGroup,
        flowTableSize, flowsRingSize, tcMode, hooks, socketUpdates, followInterfaces, stateDir, persist, pinDir, dnsPorts, dnsTimeout,
        dnsNames, dnsPeerNames, dnsNameGrace,
        logLevel, containerdSocket, dockerSocket, podAppLabel, nodeName,
        maxSeriesPerMetric, seriesExpiry, peerAddresses,
    ]

    public static func byKey(_ key: String) -> Setting? { all.first { $0.key == key } }
    public static func byVariable(_ name: String) -> Setting? { all.first { $0.variable == name } }
}

extension Setting {
    /// The option table of docs/flowmeterd.md, made from `all` (a test holds
    /// the docs to it; `flowmeterd config settings` prints it).
    public static func markdownTable() -> String {
        func code(_ s: String) -> String { "`\(s)`" }
        var out = "| Option | Variable | File key | Default | Meaning |\n|---|---|---|---|---|\n"
        for s in all {
            let option: String
            if case .bool = s.kind { option = "--[no-]\(s.flag)" } else { option = "--\(s.flag) \(s.valueName)" }
            let key = s.section.isEmpty ? s.key : "\(s.section): \(s.leaf)"
            let meaning = s.help.replacingOccurrences(of: "|", with: "\\|")
            out += "| \(code(option)) | \(code(s.variable)) | \(code(key)) | \(s.defaultText) | \(meaning) |\n"
        }
        return out
    }
}

extension FileConfig {
    /// This layer with every setting it leaves unset and that has a default
    /// set to that default (`Setting.defaultValue`).
    public func withDefaults() -> FileConfig {
        var c = self
        for s in Setting.all where s.get(c) == nil {
            if let d = s.defaultValue { s.set(&c, d) }
        }
        return c
    }
}
