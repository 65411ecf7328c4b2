// FLOWMETER_* environment variables: the layer between the flags and the
// config file (see FileConfig for the precedence).

import FlowmeterCore

extension FileConfig {
    /// `FLOWMETER_*` variables that are not settings, so `environment(_:)`
    /// neither reads them nor calls them unknown.
    public static let environmentNotSettings: Set<String> = [
        "FLOWMETER_CONFIG",               // the config file's path; read by the caller
        "FLOWMETER_REQUIRE_PRIVILEGED",   // tests: not being root is a failure
        "FLOWMETER_BPF_CLANG",            // build: the clang for -target bpf
        "FLOWMETER_LIBBPF_DEBUG",         // daemon: print libbpf's debug log
        "FLOWMETER_BIN",                  // tests: the daemon binary the e2e tests run
        "FLOWMETER_VMTEST_CACHE",         // tools/vmtest: its kernel image cache
        "FLOWMETER_FUZZ_SEED",            // tests: replay the property tests' random cases
        "FLOWMETER_FUZZ_CASES",           // tests: how many random cases they try
    ]

    /// The settings' variables, in the order of the flags.
    public static let environmentVariables = [
        "FLOWMETER_INTERFACES", "FLOWMETER_EXCLUDE_INTERFACES", "FLOWMETER_INTERVAL", "FLOWMETER_METRICS_LISTEN",
        "FLOWMETER_FLOW_LOG", "FLOWMETER_FLOW_LOG_MAX_SIZE", "FLOWMETER_FLOW_LOG_KEEP", "FLOWMETER_OTLP_ENDPOINT",
        "FLOWMETER_IPFIX_COLLECTOR", "FLOWMETER_IPFIX_OBSERVATION_DOMAIN", "FLOWMETER_API_SOCKET", "FLOWMETER_API_GROUP",
        "FLOWMETER_FLOW_TABLE_SIZE", "FLOWMETER_TC_MODE", "FLOWMETER_HOOKS", "FLOWMETER_SOCKET_UPDATES",
        "FLOWMETER_FOLLOW_INTERFACES", "FLOWMETER_STATE_DIR", "FLOWMETER_LOG_LEVEL",
        "FLOWMETER_MAX_SERIES_PER_METRIC", "FLOWMETER_SERIES_EXPIRY", "FLOWMETER_PEER_ADDRESSES",
    ]

    /// Reads the settings from `FLOWMETER_*` variables (pass
    /// `ProcessInfo.processInfo.environment`). Interface lists are
    /// comma-separated, like the flags; booleans are true, false, 1 or 0. A
    /// variable set to the empty string counts as unset. A `FLOWMETER_*`
    /// variable that is neither a setting nor in `environmentNotSettings` is
    /// an error (a typo would otherwise be ignored). All problems are thrown
    /// together, ordered by variable name, each as `environment: NAME: ...`.
    public static func environment(_ env: [String: String]) throws(ConfigError) -> FileConfig {
        var c = FileConfig()
        var problems: [ConfigError.Problem] = []
        for (name, raw) in env.sorted(by: { $0.key < $1.key }) where name.hasPrefix("FLOWMETER_") {
            if environmentNotSettings.contains(name) { continue }
            func report(_ message: String) {
                problems.append(.init(source: "environment", path: name, message: message))
            }
            guard environmentVariables.contains(name) else {
                let hint = closest(to: name, in: environmentVariables).map { " (did you mean \($0)?)" } ?? ""
                report("unknown variable\(hint); settings: \(environmentVariables.joined(separator: ", "))")
                continue
            }
            let text = raw.trimmed
            if text.isEmpty { continue }
            do {
                switch name {
                case "FLOWMETER_INTERFACES": c.interfaces = InterfaceSelection.patterns(text)
                case "FLOWMETER_EXCLUDE_INTERFACES": c.excludeInterfaces = InterfaceSelection.patterns(text)
                case "FLOWMETER_INTERVAL": c.interval = try Check.duration(text)
                case "FLOWMETER_METRICS_LISTEN": c.metricsListen = try Check.listen(text)
                case "FLOWMETER_FLOW_LOG": c.flowLog = text
                case "FLOWMETER_FLOW_LOG_MAX_SIZE": c.flowLogMaxSize = try Check.byteSize(text)
                case "FLOWMETER_FLOW_LOG_KEEP": c.flowLogKeep = try Check.keep(Check.wholeNumber(text))
                case "FLOWMETER_OTLP_ENDPOINT": c.otlpEndpoint = try Check.httpURL(text)
                case "FLOWMETER_IPFIX_COLLECTOR": c.ipfixCollector = try Check.destination(text)
                case "FLOWMETER_API_SOCKET": c.apiSocket = text
                case "FLOWMETER_API_GROUP": c.apiGroup = text
                case "FLOWMETER_IPFIX_OBSERVATION_DOMAIN": c.ipfixObservationDomain = try Check.observationDomain(Check.wholeNumber(text))
                case "FLOWMETER_FLOW_TABLE_SIZE": c.flowTableSize = try Check.flowTableSize(Check.wholeNumber(text))
                case "FLOWMETER_TC_MODE": c.tcMode = try Check.oneOf(text, tcModes)
                case "FLOWMETER_HOOKS": c.hooks = try Check.oneOf(text, hookRequests)
                case "FLOWMETER_SOCKET_UPDATES": c.socketUpdates = try Check.oneOf(text, socketUpdateRequests)
                case "FLOWMETER_FOLLOW_INTERFACES": c.followInterfaces = try Check.bool(text)
                case "FLOWMETER_STATE_DIR": c.stateDir = text
                case "FLOWMETER_LOG_LEVEL": c.logLevel = try Check.oneOf(text, logLevels)
                case "FLOWMETER_MAX_SERIES_PER_METRIC": c.maxSeriesPerMetric = try Check.maxSeries(Check.wholeNumber(text))
                case "FLOWMETER_SERIES_EXPIRY": c.seriesExpiry = try Check.duration(text)
                case "FLOWMETER_PEER_ADDRESSES": c.peerAddresses = try Check.bool(text)
                default: break
                }
            } catch {
                report("\(error)")
            }
        }
        if !problems.isEmpty { throw ConfigError(problems) }
        return c
    }
}
