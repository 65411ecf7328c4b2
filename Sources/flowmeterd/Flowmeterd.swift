import ArgumentParser
import FlowmeterBPF
import FlowmeterBuildInfo
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
        abstract:
            "eBPF network telemetry collector: per-interface and per-flow accounting in the kernel, served as Prometheus metrics and a JSON-lines flow log.",
        discussion: """
            Needs root: CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON to load and attach (CAP_SYS_ADMIN stands in for \
            CAP_BPF and CAP_PERFMON); CAP_NET_BIND_SERVICE for a metrics port below 1024, CAP_CHOWN for --api-group. \
            Once attached and serving, every thread keeps only CAP_BPF (CAP_SYS_ADMIN where bpf() needs it instead), \
            plus CAP_NET_ADMIN when it follows interfaces or uses clsact, and sets no_new_privs.
            """,
        version: BuildInfo.version,
        subcommands: [Run.self, Check.self, ConfigCommand.self, UninstallCommand.self],
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
        fail(
            "missing capabilities: \(missing.joined(separator: ", ")) (it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON to start; run as root, or grant them)"
        )
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Attach to the interfaces and serve metrics (the default command)."
    )

    @Option(
        name: .long,
        help: ArgumentHelp(
            "YAML configuration file (see config/flowmeter.example.yaml). Default: $FLOWMETER_CONFIG, else /etc/flowmeter/flowmeter.yaml if it exists. Precedence: flags, then FLOWMETER_* variables, then this file. SIGHUP reloads its service rules and series limits.",
            valueName: "path"))
    var config: String?

    // One line per setting; name, help, value name and check come from its
    // `Setting` entry (FlowmeterConfig/SettingsTable.swift).

    @Option(name: .customLong(Setting.interfaces.flag), help: Setting.interfaces.argumentHelp, transform: Setting.interfaces.flagValue)
    var interfaces: SettingValue?

    @Option(
        name: .customLong(Setting.excludeInterfaces.flag), help: Setting.excludeInterfaces.argumentHelp,
        transform: Setting.excludeInterfaces.flagValue)
    var excludeInterfaces: SettingValue?

    @Option(name: .customLong(Setting.interval.flag), help: Setting.interval.argumentHelp, transform: Setting.interval.flagValue)
    var interval: SettingValue?

    @Option(
        name: .customLong(Setting.metricsListen.flag), help: Setting.metricsListen.argumentHelp, transform: Setting.metricsListen.flagValue)
    var metricsListen: SettingValue?
    @Option(name: .customLong(Setting.webConfig.flag), help: Setting.webConfig.argumentHelp, transform: Setting.webConfig.flagValue)
    var webConfig: SettingValue?

    @Option(name: .customLong(Setting.flowLog.flag), help: Setting.flowLog.argumentHelp, transform: Setting.flowLog.flagValue)
    var flowLog: SettingValue?

    @Option(
        name: .customLong(Setting.flowLogMaxSize.flag), help: Setting.flowLogMaxSize.argumentHelp,
        transform: Setting.flowLogMaxSize.flagValue)
    var flowLogMaxSize: SettingValue?

    @Option(name: .customLong(Setting.flowLogKeep.flag), help: Setting.flowLogKeep.argumentHelp, transform: Setting.flowLogKeep.flagValue)
    var flowLogKeep: SettingValue?

    @Option(
        name: .customLong(Setting.otlpEndpoint.flag), help: Setting.otlpEndpoint.argumentHelp, transform: Setting.otlpEndpoint.flagValue)
    var otlpEndpoint: SettingValue?

    @Option(
        name: .customLong(Setting.otlpProtocol.flag), help: Setting.otlpProtocol.argumentHelp, transform: Setting.otlpProtocol.flagValue)
    var otlpProtocol: SettingValue?

    /// Repeatable: each occurrence adds headers.
    @Option(
        name: .customLong(Setting.otlpHeaders.flag), help: Setting.otlpHeaders.argumentHelp, transform: Setting.otlpHeaders.flagValue)
    var otlpHeader: [SettingValue] = []

    @Option(
        name: .customLong(Setting.otlpCAFile.flag), help: Setting.otlpCAFile.argumentHelp, transform: Setting.otlpCAFile.flagValue)
    var otlpCAFile: SettingValue?

    @Option(
        name: .customLong(Setting.otlpClientCert.flag), help: Setting.otlpClientCert.argumentHelp,
        transform: Setting.otlpClientCert.flagValue)
    var otlpClientCert: SettingValue?

    @Option(
        name: .customLong(Setting.otlpClientKey.flag), help: Setting.otlpClientKey.argumentHelp, transform: Setting.otlpClientKey.flagValue)
    var otlpClientKey: SettingValue?

    @Option(
        name: .customLong(Setting.otlpCompression.flag), help: Setting.otlpCompression.argumentHelp,
        transform: Setting.otlpCompression.flagValue)
    var otlpCompression: SettingValue?

    @Option(
        name: .customLong(Setting.otlpTimeout.flag), help: Setting.otlpTimeout.argumentHelp, transform: Setting.otlpTimeout.flagValue)
    var otlpTimeout: SettingValue?

    @Option(
        name: .customLong(Setting.otlpQueueSize.flag), help: Setting.otlpQueueSize.argumentHelp, transform: Setting.otlpQueueSize.flagValue)
    var otlpQueueSize: SettingValue?

    @Option(
        name: .customLong(Setting.ipfixCollector.flag), help: Setting.ipfixCollector.argumentHelp,
        transform: Setting.ipfixCollector.flagValue)
    var ipfixCollector: SettingValue?

    @Option(
        name: .customLong(Setting.ipfixObservationDomain.flag), help: Setting.ipfixObservationDomain.argumentHelp,
        transform: Setting.ipfixObservationDomain.flagValue)
    var ipfixObservationDomain: SettingValue?

    @Option(name: .customLong(Setting.apiSocket.flag), help: Setting.apiSocket.argumentHelp, transform: Setting.apiSocket.flagValue)
    var apiSocket: SettingValue?

    @Option(name: .customLong(Setting.apiGroup.flag), help: Setting.apiGroup.argumentHelp, transform: Setting.apiGroup.flagValue)
    var apiGroup: SettingValue?

    @Option(
        name: .customLong(Setting.flowTableSize.flag), help: Setting.flowTableSize.argumentHelp, transform: Setting.flowTableSize.flagValue)
    var flowTableSize: SettingValue?

    @Option(
        name: .customLong(Setting.flowsRingSize.flag), help: Setting.flowsRingSize.argumentHelp, transform: Setting.flowsRingSize.flagValue)
    var flowsRingSize: SettingValue?

    @Option(name: .customLong(Setting.tcMode.flag), help: Setting.tcMode.argumentHelp, transform: Setting.tcMode.flagValue)
    var tcMode: SettingValue?

    @Option(name: .customLong(Setting.hooks.flag), help: Setting.hooks.argumentHelp, transform: Setting.hooks.flagValue)
    var hooks: SettingValue?

    @Option(
        name: .customLong(Setting.socketUpdates.flag), help: Setting.socketUpdates.argumentHelp, transform: Setting.socketUpdates.flagValue)
    var socketUpdates: SettingValue?

    @Flag(name: .customLong(Setting.followInterfaces.flag), inversion: .prefixedNo, help: ArgumentHelp(Setting.followInterfaces.flagHelp))
    var followInterfaces: Bool?

    @Option(name: .customLong(Setting.stateDir.flag), help: Setting.stateDir.argumentHelp, transform: Setting.stateDir.flagValue)
    var stateDir: SettingValue?

    @Flag(name: .customLong(Setting.persist.flag), inversion: .prefixedNo, help: ArgumentHelp(Setting.persist.flagHelp))
    var persist: Bool?

    @Option(name: .customLong(Setting.pinDir.flag), help: Setting.pinDir.argumentHelp, transform: Setting.pinDir.flagValue)
    var pinDir: SettingValue?

    @Option(name: .customLong(Setting.dnsPorts.flag), help: Setting.dnsPorts.argumentHelp, transform: Setting.dnsPorts.flagValue)
    var dnsPorts: SettingValue?

    @Option(name: .customLong(Setting.dnsTimeout.flag), help: Setting.dnsTimeout.argumentHelp, transform: Setting.dnsTimeout.flagValue)
    var dnsTimeout: SettingValue?

    @Flag(name: .customLong(Setting.dnsNames.flag), inversion: .prefixedNo, help: ArgumentHelp(Setting.dnsNames.flagHelp))
    var dnsNames: Bool?

    @Option(
        name: .customLong(Setting.dnsPeerNames.flag), help: Setting.dnsPeerNames.argumentHelp, transform: Setting.dnsPeerNames.flagValue)
    var dnsPeerNames: SettingValue?

    @Option(
        name: .customLong(Setting.dnsNameGrace.flag), help: Setting.dnsNameGrace.argumentHelp, transform: Setting.dnsNameGrace.flagValue)
    var dnsNameGrace: SettingValue?

    @Option(name: .customLong(Setting.logLevel.flag), help: Setting.logLevel.argumentHelp, transform: Setting.logLevel.flagValue)
    var logLevel: SettingValue?

    @Option(
        name: .customLong(Setting.containerdSocket.flag), help: Setting.containerdSocket.argumentHelp,
        transform: Setting.containerdSocket.flagValue)
    var containerdSocket: SettingValue?

    @Option(
        name: .customLong(Setting.dockerSocket.flag), help: Setting.dockerSocket.argumentHelp,
        transform: Setting.dockerSocket.flagValue)
    var dockerSocket: SettingValue?

    @Flag(name: .customLong(Setting.podAppLabel.flag), inversion: .prefixedNo, help: ArgumentHelp(Setting.podAppLabel.flagHelp))
    var podAppLabel: Bool?

    @Option(name: .customLong(Setting.nodeName.flag), help: Setting.nodeName.argumentHelp, transform: Setting.nodeName.flagValue)
    var nodeName: SettingValue?

    @Option(
        name: .customLong(Setting.maxSeriesPerMetric.flag), help: Setting.maxSeriesPerMetric.argumentHelp,
        transform: Setting.maxSeriesPerMetric.flagValue)
    var maxSeriesPerMetric: SettingValue?

    @Option(
        name: .customLong(Setting.seriesExpiry.flag), help: Setting.seriesExpiry.argumentHelp, transform: Setting.seriesExpiry.flagValue)
    var seriesExpiry: SettingValue?

    @Flag(name: .customLong(Setting.peerAddresses.flag), inversion: .prefixedNo, help: ArgumentHelp(Setting.peerAddresses.flagHelp))
    var peerAddresses: Bool?

    /// Every setting given as a flag (the test FlagTests checks that each
    /// `Setting` has its flag here).
    var givenFlags: [(Setting, SettingValue?)] {
        [
            (.interfaces, interfaces),
            (.excludeInterfaces, excludeInterfaces),
            (.interval, interval),
            (.metricsListen, metricsListen),
            (.webConfig, webConfig),
            (.flowLog, flowLog),
            (.flowLogMaxSize, flowLogMaxSize),
            (.flowLogKeep, flowLogKeep),
            (.otlpEndpoint, otlpEndpoint),
            (.otlpProtocol, otlpProtocol),
            (.otlpHeaders, otlpHeader.isEmpty ? nil : .names(otlpHeader.flatMap { $0.nameList ?? [] })),
            (.otlpCAFile, otlpCAFile),
            (.otlpClientCert, otlpClientCert),
            (.otlpClientKey, otlpClientKey),
            (.otlpCompression, otlpCompression),
            (.otlpTimeout, otlpTimeout),
            (.otlpQueueSize, otlpQueueSize),
            (.ipfixCollector, ipfixCollector),
            (.ipfixObservationDomain, ipfixObservationDomain),
            (.apiSocket, apiSocket),
            (.apiGroup, apiGroup),
            (.flowTableSize, flowTableSize),
            (.flowsRingSize, flowsRingSize),
            (.tcMode, tcMode),
            (.hooks, hooks),
            (.socketUpdates, socketUpdates),
            (.followInterfaces, followInterfaces.map { .bool($0) }),
            (.stateDir, stateDir),
            (.persist, persist.map { .bool($0) }),
            (.pinDir, pinDir),
            (.dnsPorts, dnsPorts),
            (.dnsTimeout, dnsTimeout),
            (.dnsNames, dnsNames.map { .bool($0) }),
            (.dnsPeerNames, dnsPeerNames),
            (.dnsNameGrace, dnsNameGrace),
            (.logLevel, logLevel),
            (.containerdSocket, containerdSocket),
            (.dockerSocket, dockerSocket),
            (.podAppLabel, podAppLabel.map { .bool($0) }),
            (.nodeName, nodeName),
            (.maxSeriesPerMetric, maxSeriesPerMetric),
            (.seriesExpiry, seriesExpiry),
            (.peerAddresses, peerAddresses.map { .bool($0) }),
        ]
    }

    /// The flags as the top layer of the configuration (checked like the file's values).
    func flagLayer() -> FileConfig {
        var c = FileConfig()
        for (setting, value) in givenFlags {
            if let value { setting.set(&c, value) }
        }
        return c
    }

    func run() async throws {
        // 1. Settings: flags over FLOWMETER_* over the file, checked.
        let layers: ConfigLayers
        let flags: FileConfig
        flags = flagLayer()
        do { layers = try ConfigLayers.load(flagPath: config) } catch { fail("\(error)") }
        let settings = Startup.Settings(
            layers.file.overlaid(by: layers.environment).overlaid(by: flags),
            configPath: config, flags: flags)
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
            logger.info(
                "configuration read",
                metadata: [
                    "file": "\(path)", "service_rules": "\(settings.file.services?.count ?? 0)",
                    "peer_rules": "\(settings.file.peers?.count ?? 0)",
                ])
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

    @Flag(
        name: .long,
        help:
            "Also load the programs, run crafted packets through them, attach to loopback and check that known traffic is counted exactly (briefly attaches to the loopback interface)."
    )
    var selftest = false

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Socket-hook rung for --selftest: auto (fentry, else kprobe, else tracepoint), fentry, kprobe, tracepoint (tp_btf, else classic), tracepoint-classic.",
            valueName: "rung"),
        transform: { s in
            guard let r = HookRequest(rawValue: s) else {
                throw ValidationError("'\(s)' is not one of auto, fentry, kprobe, tracepoint, tracepoint-classic")
            }
            return r
        })
    var hooks: HookRequest = .auto

    @Option(
        name: .customLong("socket-updates"),
        help: ArgumentHelp(
            "Update path for --selftest: auto (every path the kernel accepts is tested, the daemon's choice first), iterator, raw-tp.",
            valueName: "path"),
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
        print(
            "  " + pad("flow eviction", w - 2)
                + (f.has("batch_map_ops") ? "table swap + batch lookup-and-delete" : "table swap + iterate and delete"))
        print("  " + pad("socket hooks", w - 2) + f.socketRung)
        print("  " + pad("socket updates", w - 2) + f.socketUpdates)
        print("  " + pad("packet drops", w - 2) + f.drops)
        print("  " + pad("dns", w - 2) + f.dns)
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

extension Setting {
    /// --help for its flag: what it does, its default, its value's name.
    var argumentHelp: ArgumentHelp { ArgumentHelp(flagHelp, valueName: valueName) }

    /// A flag's text as its value, checked as the file's and the environment's are.
    var flagValue: @Sendable (String) throws -> SettingValue {
        { text in
            do { return try self.parse(text) } catch { throw ValidationError("\(error)") }
        }
    }
}
