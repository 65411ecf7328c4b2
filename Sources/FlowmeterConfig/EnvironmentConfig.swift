// FLOWMETER_* environment variables: the layer between the flags and the
// config file (see FileConfig for the precedence).

import FlowmeterCore

extension FileConfig {
    /// `FLOWMETER_*` variables that are not settings, so `environment(_:)`
    /// neither reads them nor calls them unknown.
    public static let environmentNotSettings: Set<String> = [
        "FLOWMETER_CONFIG",  // the config file's path; read by the caller
        "FLOWMETER_REQUIRE_PRIVILEGED",  // tests: not being root is a failure
        "FLOWMETER_BPF_CLANG",  // build: the clang for -target bpf
        "FLOWMETER_LIBBPF_DEBUG",  // daemon: print libbpf's debug log
        "FLOWMETER_BIN",  // tests: the daemon binary the e2e tests run
        "FLOWMETER_DEB",  // tests: the Debian package test_package.py tests
        "FLOWMETER_IMAGE",  // tests: the OCI image archive test_image.py runs
        "FLOWMETER_KUBECTL",  // tests: the kubectl test_kubernetes.py renders with
        "FLOWMETER_VMTEST_CACHE",  // tools/vmtest: its kernel image cache
        "FLOWMETER_FUZZ_SEED",  // tests: replay the property tests' random cases
        "FLOWMETER_FUZZ_CASES",  // tests: how many random cases they try
    ]

    /// The settings' variables, in the order of the flags (`Setting.all`).
    public static let environmentVariables = Setting.all.map(\.variable)

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
                if let s = Setting.byVariable(name) { s.set(&c, try s.parse(text)) }
            } catch {
                report("\(error)")
            }
        }
        if !problems.isEmpty { throw ConfigError(problems) }
        return c
    }
}
