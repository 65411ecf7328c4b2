import FlowmeterBPF
import FlowmeterConfig
import FlowmeterCore
import FlowmeterExport
import FlowmeterPipeline
import FlowmeterRuntime
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// A start-up failure: the one line `flowmeterd:` prints before exit 1.
struct StartupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The optional hooks start-up loads beside tc.
struct HookPrograms: @unchecked Sendable {
    let sockets: SocketPrograms?
    let drops: DropPrograms?
    let dns: DNSPrograms?
    var taken: (SocketPrograms?, DropPrograms?, DNSPrograms?) { (sockets, drops, dns) }
}

/// A piece of start-up run on a thread of its own (or, not `concurrently`,
/// on the caller's when it asks for the value); `value` waits for it.
final class Background<T>: @unchecked Sendable {
    private var result: Result<T, any Error>?
    private let finished = DispatchSemaphore(value: 0)
    private var body: (() throws -> T)?
    private let started: Bool

    init(name: String, concurrently: Bool, _ body: @escaping () throws -> T) {
        self.body = body
        started = concurrently
        guard concurrently else { return }
        let thread = Thread { [self] in
            let run = self.body!
            result = Result { try run() }
            self.body = nil
            finished.signal()
        }
        thread.name = name
        // libbpf's BTF and ELF handling recurses: the main thread's stack size.
        thread.stackSize = 8 << 20
        thread.start()
    }

    /// The result (waits for the thread; runs the body here if not started).
    func value() throws -> T {
        if started {
            finished.wait()
            finished.signal()  // a second call (settle) returns at once
        } else if result == nil, let body {
            result = Result { try body() }
            self.body = nil
        }
        return try result!.get()
    }

    /// Waits for a started body and lets its result go (errors included);
    /// one never started is not run.
    func settle() {
        if started { _ = try? value() }
        result = nil
    }
}

/// The one owner of what start-up attached to the host. A failure at any
/// later step unwinds it; a normal stop detaches through the pipeline.
final class Attachments: Sendable {
    private let attacher = Mutex<(TCAttacher, persist: Bool)?>(nil)
    func own(_ a: TCAttacher, persist: Bool) { attacher.withLock { $0 = (a, persist) } }
    /// Detaches everything attached so far (idempotent). With --persist it
    /// lets go instead: what is attached counts into the pinned maps, as
    /// after a stop, and the next start adopts it.
    func unwind() {
        attacher.withLock {
            guard let (a, persist) = $0 else { return }
            if persist { a.release() } else { a.detachAll() }
        }
    }
}

/// From resolved settings to running services: the kernel programs, the
/// pipeline with its sinks, the metrics and API servers, SIGHUP reloads and
/// the privilege drop. Every failure is a `StartupError` naming its setting.
struct Startup {
    /// The settings `run` resolved, with their defaults applied.
    struct Settings {
        let file: FileConfig
        let configPath: String?
        /// The flag layer, which a SIGHUP reload keeps on top.
        let flags: FileConfig
        let interval: FlowDuration
        let metricsListen: ListenAddress
        let flowTableSize: Int
        let flowsRingSize: Int
        let tcMode: TCMode
        let hooks: HookRequest?
        let socketUpdates: SocketUpdatesRequest
        let followInterfaces: Bool
        let stateDir: String
        /// --persist: the pin directory; nil without.
        let pins: PinDirectory?
        let logLevel: Logger.Level
        let apiSocket: String
        let otlpQueueSize: Int
        /// The DNS ports (empty: `--dns-ports off`).
        let dnsPorts: [UInt16]
        let dnsTimeout: FlowDuration
        let dnsNames: Bool
        /// How peers are named by resolved names; nil: not.
        let dnsPeerNaming: DNSPeerNaming?
        let dnsNameGrace: FlowDuration
        /// containerd's socket, nil when off.
        let containerdSocket: String?
        /// containerd_socket was given (not the default): its absence is then worth a warning.
        let containerdSocketGiven: Bool
        /// The Docker Engine API's socket, nil when off.
        let dockerSocket: String?
        let podAppLabel: Bool
        let nodeName: String

        /// `layered` with the defaults of `Setting.all` where no layer says.
        init(_ layered: FileConfig, configPath: String?, flags: FileConfig) {
            let s = layered.withDefaults()
            file = s; self.configPath = configPath; self.flags = flags
            // The table gives each of these a default, so none is nil here.
            interval = s.interval!
            do { metricsListen = try ListenAddress(parsing: s.metricsListen!) } catch {
                fail("metrics_listen: \(error)")
            }
            flowTableSize = s.flowTableSize ?? FlowAccountingProgram.defaultFlowTableSize()
            flowsRingSize = s.flowsRingSize!
            tcMode = TCMode(rawValue: s.tcMode!) ?? .auto
            hooks = s.hooks == "off" ? nil : HookRequest(rawValue: s.hooks!) ?? .auto
            socketUpdates = SocketUpdatesRequest(rawValue: s.socketUpdates!) ?? .auto
            followInterfaces = s.followInterfaces!
            stateDir = s.stateDir!
            pins = s.persist! ? PinDirectory(path: s.pinDir!) : nil
            logLevel = Logger.Level(rawValue: s.logLevel!) ?? .info
            apiSocket = s.apiSocket!
            otlpQueueSize = s.otlpQueueSize!
            dnsPorts = FileConfig.dnsPortList(s.dnsPorts!)
            dnsTimeout = s.dnsTimeout!
            dnsNames = s.dnsNames!
            dnsNameGrace = s.dnsNameGrace!
            dnsPeerNaming = s.dnsNames! && s.dnsPeerNames! != "off" ? try? DNSPeerNaming(parsing: s.dnsPeerNames!) : nil
            containerdSocket = s.containerdSocket == "off" ? nil : s.containerdSocket!
            containerdSocketGiven = layered.containerdSocket != nil
            dockerSocket = s.dockerSocket == "off" ? nil : s.dockerSocket!
            podAppLabel = s.podAppLabel!
            nodeName = s.nodeName ?? ProcessInfo.processInfo.hostName
        }
    }

    let settings: Settings
    let logger: Logger
    let attached: Attachments

    /// Everything started: run it until SIGTERM/SIGINT.
    struct Node {
        let group: ServiceGroup
        let listen: ListenAddress
        /// Kept alive while the group runs.
        let reloader: SignalReloader

        func run() async throws {
            do {
                defer { withExtendedLifetime(reloader) {} }
                try await group.run()
            } catch {
                // The pipeline does not throw; what fails here is the HTTP
                // server (typically: the address is taken). The pipeline has
                // already detached and flushed by the time the group returns.
                throw StartupError("--metrics-listen \(listen): \(error)")
            }
        }
    }

    func build() throws -> Node {
        let s = settings, file = settings.file
        // Before anything is attached: a bad web config stops the start.
        let security = try webSecurity()
        let selection = InterfaceSelection(include: file.interfaces ?? [], exclude: file.excludeInterfaces ?? [])
        let chosen: [InterfaceSelection.Candidate]
        do { chosen = try selection.select(from: HostInterfaces.list()) } catch { throw StartupError("--interfaces: \(error)") }
        if chosen.isEmpty && !s.followInterfaces {
            throw StartupError("no interface to attach to (all excluded, or none is up); see --interfaces")
        }

        try preparePins()
        // The optional hooks (socket programs, drops, DNS) load and attach on
        // a thread of their own while this one loads and attaches tc: each
        // object costs a parse of the kernel's BTF in libbpf, the socket
        // ladder's probes several, and the tc tables' preallocation is kernel
        // time, so on two CPUs they overlap (docs/benchmarks.md, "Start-up").
        // With --persist the socket tables are adopted after the tc maps'
        // pins are checked and taken: then in order, after tc.
        let hooks = Background(name: "flowmeter-hooks", concurrently: s.pins == nil) { [self] in
            try HookPrograms(sockets: socketPrograms(), drops: dropPrograms(), dns: dnsPrograms())
        }
        // A failure before the hooks are taken waits for them: their
        // programs detach as they are let go, before the error ends the run.
        defer { hooks.settle() }
        let program = try FlowAccountingProgram(flowTableSize: s.flowTableSize, ringBytes: s.flowsRingSize, pins: s.pins)
        let attacher = TCAttacher(ingressFD: program.ingressFD, egressFD: program.egressFD, stateDir: s.stateDir, pins: s.pins)
        attached.own(attacher, persist: s.pins != nil)
        for item in attacher.removeLeftovers(keeping: program.adopted ? Set(chosen.map(\.ifindex)) : []) {
            logger.notice("removed what an earlier run left behind", metadata: ["removed": "\(item)"])
        }
        let mode = try attacher.attach(chosen, mode: s.tcMode)
        if program.adopted {
            let removed = attacher.finishAdoption()
            logger.notice(
                "adopted what the last run left counting; the flows of the gap go into the first interval",
                metadata: [
                    "pin_dir": "\(s.pins!)", "attachments_adopted": "\(attacher.adoptedCount)",
                    "removed": "\(removed.isEmpty ? "nothing" : removed.joined(separator: ", "))",
                ])
            if program.flowTableSize != s.flowTableSize {
                logger.notice(
                    "the pinned flow tables keep their size; a new size applies after `flowmeterd uninstall`",
                    metadata: ["flow_table_size": "\(program.flowTableSize)", "requested": "\(s.flowTableSize)"])
            }
        }
        if chosen.isEmpty { logger.notice("no matching interface yet; waiting for one to appear") }
        logger.info(
            "attached",
            metadata: [
                "interfaces": "\(chosen.map(\.name).joined(separator: ","))", "mode": "\(mode.rawValue)",
                "flow_table_size": "\(s.flowTableSize)",
                "flow_table_kernel_bytes": "\(FlowAccountingProgram.tableMemoryBytes(size: s.flowTableSize))",
            ])

        var writer: FlowLogWriter?
        if let path = file.flowLog {
            do { writer = try FlowLogWriter(path: path, maxBytes: file.flowLogMaxSize, keep: file.flowLogKeep!) } catch {
                throw StartupError("--flow-log: \(error)")
            }
        }
        let ring = try FlowsRing(ringFD: program.flowsRingFD)
        let (sockets, drops, dns) = try hooks.value().taken
        releaseLoaderMemory()

        let shared = SharedAccounting()
        shared.update {
            // With no interface yet, `auto` has not chosen: "pending" until
            // the follower attaches the first one (below).
            let tc = attacher.mode?.rawValue ?? (s.tcMode == .auto ? "pending" : s.tcMode.rawValue)
            $0.hooks =
                [HookMode(hook: "tc", mode: tc)] + (sockets?.modes ?? [])
                + (drops.map { [HookMode(hook: "drops", mode: $0.mode.rawValue)] } ?? [])
                + (dns != nil ? [HookMode(hook: "dns", mode: "cgroup_skb")] : [])
            $0.dropsCounted = drops != nil
            $0.dnsCounted = dns != nil && sockets != nil
            $0.socketTelemetry = sockets != nil
            // tc on every chosen interface, the socket hooks on their rung.
            $0.readiness.attachment = .attached
            if sockets != nil {
                $0.services = ServiceAggregator(
                    resolver: ServiceResolver(rules: file.services ?? [], peers: file.peers ?? []),
                    limits: file.limits)
                if dns != nil, let naming = s.dnsPeerNaming {
                    $0.services?.nameByDNS(naming, graceNanos: s.dnsNameGrace.nanoseconds)
                }
            }
        }
        let reloader = signalReloader(writer: writer, shared: shared, security: security)
        let names = InterfaceNames(Dictionary(chosen.map { ($0.ifindex, $0.name) }, uniquingKeysWith: { a, _ in a }))
        let links = s.followInterfaces ? follow(selection, attacher: attacher, names: names, shared: shared) : nil

        let pods = podDirectory()
        let pipeline = Pipeline(
            flows: TCKernel(program: program, ring: ring, attacher: attacher, links: links, pins: s.pins, logger: logger),
            sockets: try sockets.map { try SocketKernelPrograms(programs: $0) },
            drops: drops.map { DropKernelProgram(programs: $0) },
            dns: try dns.map { try DNSKernelProgram(programs: $0) }, dnsTimeout: s.dnsTimeout, dnsNames: s.dnsNames,
            sinks: try sinks(writer: writer), accounting: shared, names: names,
            cgroupPath: { [cgroups = CgroupPaths()] in cgroups.path(of: $0) }, pods: pods,
            interval: s.interval, logger: logger)

        // The metrics port is bound (CAP_NET_BIND_SERVICE below 1024) and the
        // API socket chowned (CAP_CHOWN) only once the group runs the servers.
        let dropper = DropAfterStart(
            waitingFor: s.apiSocket != "off" ? ["metrics", "api"] : ["metrics"],
            keep: Privileges.neededAfterAttach(followsInterfaces: links != nil, clsact: mode == .clsact),
            logger: logger)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: PipelineService(pipeline: pipeline)),
            .init(service: metricsServer(shared: shared, dropper: dropper, security: security)),
        ]
        if let pods { services.append(.init(service: PodLookupService(directory: pods))) }
        if s.apiSocket != "off" {
            services.append(.init(service: try apiServer(shared: shared, names: names, dropper: dropper)))
        }
        let group = ServiceGroup(
            configuration: .init(
                services: services, gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        return Node(group: group, listen: s.metricsListen, reloader: reloader)
    }

    /// --persist: what is pinned is adopted, unless it is of another ABI:
    /// then it is detached and removed, one line saying what that lost.
    func preparePins() throws {
        guard let pins = settings.pins else { return }
        if case .incompatible(let why) = pins.inspect() {
            let removed = UninstallCommand.remove(pins: pins, stateDir: settings.stateDir)
            logger.warning(
                "pinned state cannot be adopted (\(why)): detached and recreated; what it counted since the last run's final interval is lost",
                metadata: ["pin_dir": "\(pins)", "removed": "\(removed.joined(separator: ", "))"])
        }
        do { try pins.prepare() } catch { throw StartupError("--pin-dir: \(error)") }
    }

    /// The socket hooks, or nil (`--hooks off`, or none with `auto`). A
    /// forced rung or update path the kernel cannot give is an error.
    func socketPrograms() throws -> SocketPrograms? {
        guard let hooks = settings.hooks else { return nil }
        do {
            let s = try SocketPrograms.load(hooks, updates: settings.socketUpdates, pins: settings.pins)
            if !s.adoptedMaps.isEmpty {
                logger.notice(
                    "adopted the socket tables; sockets opened before this start are followed on",
                    metadata: ["maps": "\(s.adoptedMaps.joined(separator: ","))"])
            }
            try s.setUpdateMinAge(nanoseconds: settings.interval.nanoseconds)
            // Each program left out, once, as one line: program, section,
            // errno, and what it costs; a warning only where something is lost.
            for r in s.refusals { logger.log(level: r.loses ? .warning : .notice, "\(r)") }
            logger.info(
                "socket hooks attached",
                metadata: [
                    "rung": "\(s.rung.rawValue)",
                    "hooks": "\(s.modes.map { "\($0.hook)=\($0.mode)" }.joined(separator: ","))",
                ])
            if let why = s.udpUnsupported {
                logger.warning("UDP sockets are not seen on this rung", metadata: ["reason": "\(why)"])
            }
            return s
        } catch let e as SocketUpdatesRefused {
            throw StartupError("\(e)")
        } catch {
            if hooks != .auto {
                // One line: libbpf's log (with its generic "try raising
                // ulimit -l" advice for any EPERM) is for debugging.
                let line = (error as? BPFError)?.summary ?? "\(error)"
                throw StartupError("--hooks \(hooks.rawValue): \(line) (FLOWMETER_LIBBPF_DEBUG=1 prints libbpf's log)")
            }
            logger.warning("no socket-hook rung available: socket telemetry is off", metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// The packet-drop program, or nil: optional like every hook, so a
    /// kernel that refuses it loses drops only (one warning line).
    func dropPrograms() -> DropPrograms? {
        do {
            let d = try DropPrograms.load()
            for r in d.refusals { logger.log(level: r.loses ? .warning : .notice, "\(r)") }
            logger.info(
                "drop hook attached",
                metadata: ["mode": "\(d.mode.rawValue)", "reasons": "\(d.hasReasons ? "\(d.reasons.names.count)" : "none (before 5.17)")"])
            return d
        } catch {
            let line = (error as? BPFError)?.summary ?? "\(error)"
            logger.warning("packet drops are not counted: \(line)")
            return nil
        }
    }

    /// The DNS programs, or nil (`--dns-ports off`, or refused): optional
    /// like every hook, so a kernel or host that refuses them loses DNS only
    /// (one warning line).
    func dnsPrograms() -> DNSPrograms? {
        guard !settings.dnsPorts.isEmpty else { return nil }
        do {
            let d = try DNSPrograms(ports: settings.dnsPorts)
            logger.info("DNS hook attached", metadata: ["ports": "\(settings.dnsPorts.map(String.init).joined(separator: ","))"])
            return d
        } catch {
            let line = (error as? BPFError)?.summary ?? "\(error)"
            logger.warning("DNS is not counted: \(line)")
            return nil
        }
    }

    /// SIGHUP: read the file and the environment again; new service rules
    /// and series limits apply to what comes next, counters stay.
    func signalReloader(writer: FlowLogWriter?, shared: SharedAccounting, security: WebSecurity?) -> SignalReloader {
        let configPath = settings.configPath, flags = settings.flags, webConfigPath = settings.file.webConfig
        let logger = self.logger
        return SignalReloader(logger: logger) { [writer] in
            // The flow log first: logrotate moved it and waits for us to let go.
            writer?.reopen()
            // The web config on its own: a bad one keeps the previous one and
            // does not stop the rest of the reload.
            var web = ""
            if let security, let webConfigPath {
                do {
                    try security.apply(WebConfig.load(path: webConfigPath))
                    web = " web_config=(\(security.summary))"
                } catch {
                    // Its own line at error level: the rest of the reload may still apply.
                    logger.error("web config not reloaded; the previous one stays", metadata: ["error": "\(error)"])
                    web = " web_config=(not reloaded)"
                }
            }
            let l = try ConfigLayers.load(flagPath: configPath)
            let s = l.file.overlaid(by: l.environment).overlaid(by: flags)
            shared.update {
                $0.services?.reconfigure(resolver: ServiceResolver(rules: s.services ?? [], peers: s.peers ?? []), limits: s.limits)
            }
            return
                "service_rules=\(s.services?.count ?? 0) peer_rules=\(s.peers?.count ?? 0) max_series_per_metric=\(s.limits.maxSeriesPerMetric)"
                + web
        }
    }

    /// Follows interfaces as they come and go; nil (logged) if rtnetlink cannot be had.
    func follow(_ selection: InterfaceSelection, attacher: TCAttacher, names: InterfaceNames, shared: SharedAccounting) -> LinkMonitor? {
        // Subscribe first, then reconcile once, so an interface that came up
        // between the first attach and the subscription is not missed.
        let requested = settings.tcMode, logger = self.logger
        // One reconcile at a time: the monitor's thread and the first call
        // below could otherwise both plan to attach the same new interface
        // and attach it twice (two links per direction).
        let serial = Mutex(())
        let reconcile: @Sendable ([LinkEvent]) -> Void = { _ in
            serial.withLock { _ in
                let plan = AttachPlan.make(selection: selection, host: HostInterfaces.list(), attached: attacher.attached)
                for idx in plan.detach {
                    attacher.detach(ifindex: idx)
                    logger.info("detached", metadata: ["ifindex": "\(idx)"])
                }
                for c in plan.attach {
                    do {
                        try attacher.attachAnother(c, mode: requested)
                        names.set(c.ifindex, c.name)
                        if let m = attacher.mode {
                            shared.update { a in
                                if let i = a.hooks.firstIndex(where: { $0.hook == "tc" }) { a.hooks[i].mode = m.rawValue }
                            }
                        }
                        logger.info("attached", metadata: ["interface": "\(c.name)", "ifindex": "\(c.ifindex)"])
                    } catch {
                        // Typically the interface vanished again before we got to it.
                        logger.warning("cannot attach", metadata: ["interface": "\(c.name)", "error": "\(error)"])
                    }
                }
            }
        }
        do {
            let monitor = try LinkMonitor(onChange: reconcile)
            monitor.start()
            reconcile([])
            return monitor
        } catch {
            logger.warning("not following interfaces", metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// The push exporters the settings ask for.
    func sinks(writer: FlowLogWriter?) throws -> [Sink] {
        let file = settings.file, logger = self.logger
        var sinks: [Sink] = []
        if let writer { sinks.append(FlowLogSink(writer: writer, node: settings.nodeName)) }
        if let target = file.ipfixCollector {
            let sender: IPFIXSender
            do { sender = try IPFIXSender(collector: target) } catch { throw StartupError("--ipfix-collector \(target): \(error)") }
            let domain = UInt32(file.ipfixObservationDomain!)
            sinks.append(
                IPFIXSink(
                    sender: sender, encoder: IPFIXEncoder(observationDomain: domain),
                    onError: { e in
                        logger.warning("IPFIX export failed", metadata: ["collector": "\(target)", "error": "\(e)"])
                    }))
            logger.info("exporting IPFIX", metadata: ["collector": "\(target)", "observation_domain": "\(domain)"])
        }
        if let url = file.otlpEndpoint {
            let proto = OTLPProtocol(rawValue: file.otlpProtocol!) ?? .httpProtobuf
            let endpoint: OTLPEndpoint
            do { endpoint = try OTLPEndpoint(parsing: url, for: proto) } catch { throw StartupError("--otlp-endpoint: \(error)") }
            // Headers: OTEL_EXPORTER_OTLP_HEADERS, then ..._METRICS_HEADERS,
            // then --otlp-header (flags over FLOWMETER_OTLP_HEADERS over the file); later wins per name.
            var headerLists: [[(String, String)]]
            do { headerLists = try OTLPTransportSettings.otelHeaders(ProcessInfo.processInfo.environment) } catch {
                throw StartupError("environment: \(error)")
            }
            headerLists.append(
                (file.otlpHeaders ?? []).map { e in
                    let kv = e.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                    return (String(kv[0]), kv.count > 1 ? String(kv[1]) : "")
                })
            let transportSettings = OTLPTransportSettings(
                proto: proto, endpoint: endpoint, headers: OTLPHeaders.merge(headerLists),
                caFile: file.otlpCAFile, clientCertFile: file.otlpClientCert, clientKeyFile: file.otlpClientKey,
                gzip: file.otlpCompression == "gzip", timeoutSeconds: Double(file.otlpTimeout!.nanoseconds) / 1e9)
            let transport: any OTLPTransport
            do { transport = try transportSettings.makeTransport() } catch { throw StartupError("OTLP: \(error)") }
            let errors = Mutex<String?>(nil)
            let pusher = OTLPPusher(
                transport: transport, capacity: settings.otlpQueueSize,
                onError: { e in
                    // One line per kind of failure, not one per retry.
                    let kind = OTLPPusher.failureKind(e)
                    let new = errors.withLock { last in
                        defer { last = kind }; return last != kind
                    }
                    if new {
                        logger.warning("OTLP push failed; retrying with backoff", metadata: ["endpoint": "\(endpoint)", "error": "\(e)"])
                    }
                },
                onPartial: { rejected, message in
                    logger.warning(
                        "the OTLP collector accepted a request in part",
                        metadata: ["endpoint": "\(endpoint)", "rejected_data_points": "\(rejected)", "message": "\(message)"])
                })
            var host = [CChar](repeating: 0, count: 256)
            gethostname(&host, host.count)
            sinks.append(
                OTLPSink(
                    pusher: pusher,
                    resource: [
                        ("service.name", "flowmeterd"), ("service.version", FlowmeterVersion.current),
                        ("host.name", String(cString: host)),
                    ],
                    version: FlowmeterVersion.current,
                    startUnixNanos: UInt64(Date().timeIntervalSince1970 * 1e9)))
            logger.info(
                "pushing OTLP metrics",
                metadata: [
                    "endpoint": "\(endpoint)", "protocol": "\(proto.rawValue)", "queue": "\(settings.otlpQueueSize)",
                    "compression": "\(file.otlpCompression!)", "timeout": "\(file.otlpTimeout!)",
                    // Names only where the value is a secret (authorization, ...).
                    "headers": "\(OTLPHeaders.forLog(transportSettings.headers))",
                    "tls": "\(endpoint.tls ? (file.otlpClientCert != nil ? "mtls" : "tls") : "off")",
                ])
        }
        return sinks
    }

    /// --web-config: read, checked and its certificate files loaded; nil without.
    func webSecurity() throws -> WebSecurity? {
        guard let path = settings.file.webConfig else { return nil }
        do {
            let security = try WebSecurity(WebConfig.load(path: path), logger: logger)
            logger.info("web config", metadata: ["file": "\(path)", "applied": "\(security.summary)"])
            return security
        } catch {
            throw StartupError("--web-config: \(error)")
        }
    }

    func metricsServer(shared: SharedAccounting, dropper: DropAfterStart, security: WebSecurity?) -> some Service {
        let listen = settings.metricsListen, logger = self.logger
        let scheme = security?.usesTLS == true ? "https" : "http"
        // Pair labels and the output buffer, kept from one scrape to the next.
        let cache = MetricsCache()
        return MetricsServer.make(
            listen: listen, logger: logger, security: security,
            onRunning: { port in
                logger.info("serving metrics", metadata: ["url": "\(scheme)://\(listen.host):\(port)/metrics"])
                dropper.done("metrics")
            }, readiness: { shared.read(\.readiness) },
            renderBytes: { om in
                let snapshot = shared.snapshot()
                let text = MetricsRenderer.renderBytes(
                    snapshot, version: FlowmeterVersion.current, openMetrics: om, cache: cache)
                // New pairs were shown at zero; the next scrape shows their counts.
                if let seen = snapshot.services?.unexposed, !seen.isEmpty {
                    shared.update { $0.services?.markExposed(seen) }
                }
                return text
            })
    }

    func apiServer(shared: SharedAccounting, names: InterfaceNames, dropper: DropAfterStart) throws -> some Service {
        let path = settings.apiSocket, logger = self.logger
        var gid: gid_t = 0
        if let apiGroup = settings.file.apiGroup {
            guard let g = getgrnam(apiGroup) else { throw StartupError("--api-group: no group named \(apiGroup)") }
            gid = g.pointee.gr_gid
        }
        do { try APISocketFile.prepare(path) } catch { throw StartupError("--api-socket: \(error)") }
        var uts = utsname()
        uname(&uts)
        let kernel = withUnsafeBytes(of: &uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let host = withUnsafeBytes(of: &uts.nodename) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let startMs = Int64(Date().timeIntervalSince1970 * 1000)
        let intervalSeconds = Double(settings.interval.nanoseconds) / 1e9
        let owner = gid
        return APIServer.make(
            socketPath: path, logger: logger,
            onRunning: {
                chmod(path, 0o660)
                chown(path, 0, owner)
                logger.info("serving the API", metadata: ["socket": "\(path)"])
                dropper.done("api")
            },
            snapshot: {
                APISnapshot.make(
                    shared.snapshot(),
                    context: .init(
                        host: host, kernel: kernel, version: FlowmeterVersion.current,
                        startUnixMs: startMs, intervalSeconds: intervalSeconds,
                        interfaceNames: names.snapshot()),
                    nowUnixMs: Int64(Date().timeIntervalSince1970 * 1000))
            })
    }
}

extension Startup {
    /// The pod names from the container runtime, when socket telemetry runs
    /// and a runtime is configured. A socket that does not exist is one
    /// warning line: the node may not run that runtime (yet), and lookups
    /// simply fail (counted) until it does.
    func podDirectory() -> PodDirectory? {
        let s = settings
        guard s.hooks != nil else { return nil }
        var sources: [any PodMetadataSource] = []
        let runtimes = [
            ("containerd", "containerd_socket", s.containerdSocket, s.containerdSocketGiven),
            ("Docker API", "docker_socket", s.dockerSocket, true),
        ]
        for (name, key, path, given) in runtimes {
            guard let path else { continue }
            if !FileManager.default.fileExists(atPath: path) {
                // A socket the operator named is a warning; the default one on
                // a host without containerd loses nothing, so it is a notice.
                logger.log(
                    level: given ? .warning : .notice,
                    "no \(name) socket at \(path): Kubernetes pods are named pod:<uid> until it appears (\(key): off to stop asking)")
            }
            sources.append(name == "containerd" ? ContainerdSource(socketPath: path) : DockerSource(socketPath: path))
        }
        guard !sources.isEmpty else { return nil }
        return PodDirectory(
            sources: sources, appNameLabel: s.podAppLabel, node: s.nodeName,
            cgroupRoot: CgroupPaths().root, logger: logger)
    }
}

/// Answers the pod lookups the pipeline queues until shutdown.
struct PodLookupService: Service {
    let directory: PodDirectory
    func run() async throws {
        await cancelWhenGracefulShutdown { await directory.run() }
    }
}

/// The pipeline as a service of the group: passes until graceful shutdown,
/// then detach and flush.
struct PipelineService: Service {
    let pipeline: Pipeline
    func run() async throws {
        await cancelWhenGracefulShutdown { await pipeline.run() }
    }
}
