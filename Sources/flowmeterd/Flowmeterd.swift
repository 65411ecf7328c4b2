import ArgumentParser
import FlowmeterBPF
import FlowmeterConfig
import FlowmeterCore
import FlowmeterExport
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

@main
struct Flowmeterd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flowmeterd",
        abstract: "eBPF network telemetry collector: per-interface and per-flow accounting in the kernel, served as Prometheus metrics and a JSON-lines flow log.",
        discussion: """
            Needs root: CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON to load and attach (CAP_SYS_ADMIN stands in for \
            CAP_BPF and CAP_PERFMON); CAP_NET_BIND_SERVICE for a metrics port below 1024, CAP_CHOWN for --api-group. \
            Once attached and serving, every thread keeps only CAP_BPF (CAP_SYS_ADMIN where bpf() needs it instead), \
            plus CAP_NET_ADMIN when it follows interfaces or uses clsact, and sets no_new_privs.
            """,
        version: FlowmeterVersion.current,
        subcommands: [Run.self, Check.self, ConfigCommand.self],
        defaultSubcommand: Run.self
    )
}

/// Exit with one line on stderr, e.g. for missing capabilities.
func fail(_ message: String, code: Int32 = 1) -> Never {
    FileHandle.standardError.write(Data("flowmeterd: \(message)\n".utf8))
    exit(code)
}

func requireCapabilities() {
    let missing = Capabilities.missing()
    if !missing.isEmpty {
        fail("missing capabilities: \(missing.joined(separator: ", ")) (it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON to start; run as root, or grant them)")
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Attach to the interfaces and serve metrics (the default command)."
    )

    @Option(name: .long, help: ArgumentHelp("YAML configuration file (see config/flowmeter.example.yaml). Default: $FLOWMETER_CONFIG, else /etc/flowmeter/flowmeter.yaml if it exists. Precedence: flags, then FLOWMETER_* variables, then this file. SIGHUP reloads its service rules and series limits.", valueName: "path"))
    var config: String?

    @Option(name: .long, help: ArgumentHelp("Interfaces to attach to: names or globs, comma-separated. Default: every interface that is up, except loopback.", valueName: "names"))
    var interfaces: String?

    @Option(name: .customLong("exclude-interfaces"), help: ArgumentHelp("Interfaces to leave alone: names or globs, comma-separated.", valueName: "names"))
    var excludeInterfaces: String?

    @Option(name: .long, help: ArgumentHelp("How often the flow tables are evicted and socket updates read (e.g. 500ms, 5s, 1m). Default: 5s.", valueName: "duration"),
            transform: { s in do { return try FlowDuration(parsing: s) } catch { throw ValidationError("\(error)") } })
    var interval: FlowDuration?

    @Option(name: .customLong("metrics-listen"), help: ArgumentHelp("Address of the metrics endpoint: :PORT, HOST:PORT or [V6]:PORT. Default: 0.0.0.0:9810.", valueName: "address"),
            transform: { s in do { return try ListenAddress(parsing: s) } catch { throw ValidationError("\(error)") } })
    var metricsListen: ListenAddress?

    @Option(name: .customLong("flow-log"), help: ArgumentHelp("Write one JSON object per evicted flow and per connection event to this file ('-' for stdout).", valueName: "path"))
    var flowLog: String?

    @Option(name: .customLong("flow-log-max-size"), help: ArgumentHelp("Rotate the flow log at this size: FILE becomes FILE.1 and a new FILE starts (bytes, or with K, M, G). Default: never; SIGHUP reopens the file (for logrotate).", valueName: "size"))
    var flowLogMaxSize: String?

    @Option(name: .customLong("flow-log-keep"), help: ArgumentHelp("Rotated flow logs kept (FILE.1 ... FILE.N), 1 to 100. Default: 5.", valueName: "n"))
    var flowLogKeep: Int?

    @Option(name: .customLong("otlp-endpoint"), help: ArgumentHelp("Push the metrics every interval to this OTLP/HTTP endpoint (protobuf, cumulative), e.g. http://127.0.0.1:4318/v1/metrics. Default: off.", valueName: "url"))
    var otlpEndpoint: String?

    @Option(name: .customLong("api-socket"), help: ArgumentHelp("Unix socket of the local API (flowtop, scripts): GET /v1/snapshot, /v1/stream. Give off to disable it. Created mode 0660. Default: /run/flowmeter/flowmeter.sock.", valueName: "path"))
    var apiSocket: String?

    @Option(name: .customLong("api-group"), help: ArgumentHelp("Group that owns the API socket (its members may read the API). Default: the group of root.", valueName: "group"))
    var apiGroup: String?

    @Option(name: .customLong("otlp-queue-size"), help: ArgumentHelp("OTLP requests kept while the endpoint is unreachable (retried with exponential backoff, 0.5 s to 30 s); past it the oldest is dropped and counted. Default: 16.", valueName: "n"))
    var otlpQueueSize: Int = 16

    @Option(name: .customLong("ipfix-collector"), help: ArgumentHelp("Export every flow record as IPFIX (RFC 7011) over UDP to HOST:PORT. Default: off.", valueName: "host:port"))
    var ipfixCollector: String?

    @Option(name: .customLong("ipfix-observation-domain"), help: ArgumentHelp("IPFIX observation domain id (0 to 4294967295). Default: 0.", valueName: "id"))
    var ipfixObservationDomain: Int?

    @Option(name: .customLong("flow-table-size"), help: ArgumentHelp("Flows each of the two kernel flow tables holds; packets of flows beyond it travel through the flows ring. Default: 65536, less on hosts with many CPUs (the tables are preallocated per CPU; about 64 MiB at most).", valueName: "n"))
    var flowTableSize: Int?

    @Option(name: .customLong("flows-ring-size"), help: ArgumentHelp("Bytes of the ring that carries packets the full flow table cannot take (a power of two, at least the page size; a record is 96 bytes).", valueName: "bytes"))
    var flowsRingSize: Int = ABI.defaultFlowsRingBytes

    @Option(name: .customLong("tc-mode"), help: ArgumentHelp("How to attach tc programs: auto (TCX, else clsact), tcx, clsact. Default: auto.", valueName: "mode"),
            transform: { s in
                guard let m = TCMode(rawValue: s) else { throw ValidationError("'\(s)' is not one of auto, tcx, clsact") }
                return m
            })
    var tcMode: TCMode?

    @Option(name: .long, help: ArgumentHelp("Socket-hook rung: auto (fentry, else kprobe, else tracepoint), fentry, kprobe, tracepoint, tracepoint-classic, or off. A forced rung that cannot be had is an error; with auto, no rung at all only disables socket telemetry. Default: auto.", valueName: "rung"),
            transform: { s in
                guard s == "off" || HookRequest(rawValue: s) != nil else { throw ValidationError("'\(s)' is not one of auto, fentry, kprobe, tracepoint, tracepoint-classic, off") }
                return s
            })
    var hooks: String?

    @Option(name: .customLong("socket-updates"), help: ArgumentHelp("How the counters of long-lived sockets are read once an interval: auto (the iterator, else the raw_tp run), iterator (iter/bpf_map_elem), raw-tp (a raw_tp program run with BPF_PROG_TEST_RUN, for kernels that refuse iterators). A forced path the kernel refuses is an error. Default: auto.", valueName: "path"),
            transform: { s in
                guard SocketUpdatesRequest(rawValue: s) != nil else { throw ValidationError("'\(s)' is not one of auto, iterator, raw-tp") }
                return s
            })
    var socketUpdates: String?

    @Flag(name: .customLong("follow-interfaces"), inversion: .prefixedNo,
          help: "Attach to matching interfaces that appear (or come up) after start, and let go of those that disappear. Default: on.")
    var followInterfaces: Bool?

    @Option(name: .customLong("state-dir"), help: ArgumentHelp("Where flowmeterd records clsact attachments so a later start can remove what a killed run left. Default: /run/flowmeter.", valueName: "dir"))
    var stateDir: String?

    @Option(name: .customLong("log-level"), help: ArgumentHelp("trace, debug, info, notice, warning, error or critical. Default: info.", valueName: "level"),
            transform: { s in
                guard Logger.Level(rawValue: s) != nil else { throw ValidationError("'\(s)' is not a log level (trace, debug, info, notice, warning, error, critical)") }
                return s
            })
    var logLevel: String?

    func validate() throws {
        guard (1...10_000).contains(otlpQueueSize) else {
            throw ValidationError("--otlp-queue-size must be from 1 to 10000, got \(otlpQueueSize)")
        }
        if let flowTableSize, !(1...(1 << 24)).contains(flowTableSize) {
            throw ValidationError("--flow-table-size must be from 1 to 16777216, got \(flowTableSize)")
        }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard flowsRingSize >= page, flowsRingSize <= 1 << 30, flowsRingSize & (flowsRingSize - 1) == 0 else {
            throw ValidationError("--flows-ring-size must be a power of two from \(page) to 1073741824, got \(flowsRingSize)")
        }
    }

    /// The flags as the top layer of the configuration (checked like the file's values).
    func flagLayer() throws -> FileConfig {
        func checked<T>(_ flag: String, _ v: T?, _ check: (T) throws -> T) throws -> T? {
            do { return try v.map(check) } catch { throw ValidationError("--\(flag): \(error)") }
        }
        var c = FileConfig(interfaces: interfaces.map { InterfaceSelection.patterns($0) },
                   excludeInterfaces: excludeInterfaces.map { InterfaceSelection.patterns($0) },
                   interval: interval, metricsListen: metricsListen.map { "\($0.host.contains(":") ? "[\($0.host)]" : $0.host):\($0.port)" },
                   flowLog: flowLog, flowTableSize: flowTableSize, tcMode: tcMode?.rawValue, hooks: hooks, socketUpdates: socketUpdates,
                   followInterfaces: followInterfaces, stateDir: stateDir, logLevel: logLevel)
        if let size = flowLogMaxSize {
            do { c.flowLogMaxSize = try FileConfig.checkByteSize(size) } catch { throw ValidationError("--flow-log-max-size: \(error)") }
        }
        c.flowLogKeep = try checked("flow-log-keep", flowLogKeep, FileConfig.checkKeep)
        c.apiSocket = apiSocket
        c.apiGroup = apiGroup
        c.otlpEndpoint = try checked("otlp-endpoint", otlpEndpoint, FileConfig.checkHTTPURL)
        c.ipfixCollector = try checked("ipfix-collector", ipfixCollector, FileConfig.checkDestination)
        c.ipfixObservationDomain = try checked("ipfix-observation-domain", ipfixObservationDomain, FileConfig.checkObservationDomain)
        return c
    }

    func run() async throws {
        // 1. Settings: flags over FLOWMETER_* over the file, checked.
        let layers: ConfigLayers
        let flags: FileConfig
        do { flags = try flagLayer() } catch { fail("\(error)") }
        do { layers = try ConfigLayers.load(flagPath: config) } catch { fail("\(error)") }
        let settings = Startup.Settings(layers.file.overlaid(by: layers.environment).overlaid(by: flags),
                                        configPath: config, flags: flags, flowsRingSize: flowsRingSize,
                                        otlpQueueSize: otlpQueueSize)
        requireCapabilities()
        // A forced update path the kernel refuses: say so before attaching anything.
        if settings.hooks != nil {
            do { try SocketPrograms.checkForced(settings.socketUpdates) } catch { fail("\(error)") }
        }
        fixMallocThresholds()
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = settings.logLevel
            return h
        }
        let logger = Logger(label: "flowmeterd")
        if let path = layers.path {
            logger.info("configuration read", metadata: ["file": "\(path)", "service_rules": "\(settings.file.services?.count ?? 0)",
                                                          "peer_rules": "\(settings.file.peers?.count ?? 0)"])
        }
        // 2. Build the pipeline and its servers; 3. run them. What was
        // attached on the way has one owner, which a failure unwinds.
        let attached = Attachments()
        do {
            let node = try Startup(settings: settings, logger: logger, attached: attached).build()
            try await node.run()
        } catch {
            attached.unwind()
            fail("\(error)")
        }
    }
}

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Probe what this kernel offers and print what flowmeterd would use.",
        discussion: "Exit status 1 when the minimum (BTF, ring buffer, tc) is missing, or when --selftest finds a fault."
    )

    @Flag(name: .long, help: "Also load the programs, run crafted packets through them, attach to loopback and check that known traffic is counted exactly (briefly attaches to the loopback interface).")
    var selftest = false

    @Option(name: .long, help: ArgumentHelp("Socket-hook rung for --selftest: auto (fentry, else kprobe, else tracepoint), fentry, kprobe, tracepoint (tp_btf, else classic), tracepoint-classic.", valueName: "rung"),
            transform: { s in
                guard let r = HookRequest(rawValue: s) else { throw ValidationError("'\(s)' is not one of auto, fentry, kprobe, tracepoint, tracepoint-classic") }
                return r
            })
    var hooks: HookRequest = .auto

    @Option(name: .customLong("socket-updates"), help: ArgumentHelp("Update path for --selftest: auto (every path the kernel accepts is tested, the daemon's choice first), iterator, raw-tp.", valueName: "path"),
            transform: { s in
                guard let r = SocketUpdatesRequest(rawValue: s) else { throw ValidationError("'\(s)' is not one of auto, iterator, raw-tp") }
                return r
            })
    var socketUpdates: SocketUpdatesRequest = .auto

    func run() async throws {
        requireCapabilities()
        let f = KernelProbe.run()
        let w = max(16, (f.features.map(\.name.count).max() ?? 0) + 2)
        func pad(_ s: String, _ n: Int) -> String { s + String(repeating: " ", count: max(1, n - s.count)) }
        print(pad("FEATURE", w) + pad("AVAILABLE", 11) + "DETAIL")
        for x in f.features {
            print(pad(x.name, w) + pad(x.available ? "yes" : "no", 11) + x.detail)
        }
        print("")
        print("Would use:")
        print("  " + pad("tc attach", w - 2) + f.tcMode)
        print("  " + pad("flow eviction", w - 2) + (f.has("batch_map_ops") ? "table swap + batch lookup-and-delete" : "table swap + iterate and delete"))
        print("  " + pad("socket hooks", w - 2) + f.socketRung)
        print("  " + pad("socket updates", w - 2) + f.socketUpdates)
        let missing = f.missingMinimum
        if !missing.isEmpty {
            print("")
            print("flowmeterd cannot run here: missing \(missing.joined(separator: ", "))")
            throw ExitCode(1)
        }
        if selftest {
            print("")
            print("Self-test:")
            let code = SelfTest.run(hooks: hooks, updates: socketUpdates)
            if code != 0 { throw ExitCode(code) }
        }
    }
}

extension TCMode: ExpressibleByArgument {}
extension FlowDuration: ExpressibleByArgument {
    public init?(argument: String) { try? self.init(parsing: argument) }
}
extension ListenAddress: ExpressibleByArgument {
    public init?(argument: String) { try? self.init(parsing: argument) }
}
extension Logger.Level: @retroactive ExpressibleByArgument {}
