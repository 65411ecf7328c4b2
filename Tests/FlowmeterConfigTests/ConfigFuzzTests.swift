import FlowmeterCore
import FlowmeterTestSupport
import Foundation
import Testing

@testable import FlowmeterConfig

/// Property tests of the config layers with seeded random input: mutations
/// of the shipped example, random documents built from the schema, random
/// environments. Whatever the input, parsing returns quickly, and either
/// gives values within the documented bounds or an error that says where
/// and what (a line for the file, the variable for the environment).
@Suite struct ConfigFuzzTests {
    static let example = (try? String(contentsOfFile: YAMLTests.examplePath, encoding: .utf8)) ?? ""

    @Test func mutatedExample() {
        #expect(!Self.example.isEmpty)
        var run = FuzzRun("config fuzz (mutated example)", cases: 5000, seconds: 15)
        let n = run.run { r, i, run in
            let text = Gen.mutate(Self.example, &r)
            ConfigProperty.file(text, i, &run)
        }
        run.report()
        #expect(n > 0)
    }

    @Test func randomDocuments() {
        var run = FuzzRun("config fuzz (random documents)", cases: 5000, seconds: 15)
        let n = run.run { r, i, run in
            var nearMisses: [(path: String, key: String)] = []
            // Half the documents keep to plain values, so that the keys
            // written are the keys YAML reads (a stray quote would swallow
            // the lines after it).
            let plain = r.chance(0.5)
            let text = Gen.document(&r, plain: plain, nearMisses: &nearMisses)
            let problems = ConfigProperty.file(text, i, &run)
            // A misspelt key gets a "did you mean" hint, unless YAML itself
            // stopped the parse before the keys were read.
            guard plain, let problems, !problems.contains(where: { $0.message.hasPrefix("YAML") }) else { return }
            for miss in nearMisses {
                let hinted = problems.contains { $0.path == miss.path && $0.message.contains("did you mean") }
                if !hinted { run.fail(i, "no \"did you mean\" for the near-miss key \(miss.path)", input: text) }
            }
        }
        run.report()
        #expect(n > 0)
    }

    @Test func randomEnvironments() {
        var run = FuzzRun("config fuzz (environment)", cases: 5000, seconds: 15)
        let n = run.run { r, i, run in
            let env = Gen.environment(&r)
            let input = env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: "\n")
            run.note(i, input)
            let settingsNames = env.keys.filter { $0.hasPrefix("FLOWMETER_") && !FileConfig.environmentNotSettings.contains($0) }
            switch Result(catching: { () throws(ConfigError) in try FileConfig.environment(env) }) {
            case .success(let c):
                for v in ConfigProperty.violations(c) { run.fail(i, "accepted out of bounds: \(v)", input: input) }
            case .failure(let e):
                if e.problems.isEmpty || e.problems.count > settingsNames.count {
                    run.fail(i, "\(e.problems.count) problems for \(settingsNames.count) variables", input: input)
                }
                for p in e.problems {
                    if p.source != "environment" || !settingsNames.contains(p.path) || p.message.trimmed.isEmpty || p.line != nil {
                        run.fail(i, "problem does not name its variable: \(p)", input: input)
                    }
                    if !FileConfig.environmentVariables.contains(p.path),
                        FileConfig.environmentVariables.contains(where: { Gen.oneEditApart($0, p.path) }),
                        !p.message.contains("did you mean")
                    {
                        run.fail(i, "no \"did you mean\" for \(p.path)", input: input)
                    }
                }
            }
        }
        run.report()
        #expect(n > 0)
    }

    /// Inputs the random runs found or that are easy to miss, kept as fixed cases.
    @Test(arguments: [
        "flow_table_size: 1:0:0:0:0:0:0:0:0:0:0:0\n",  // Yams' base-60 reading overflowed and trapped
        "flow_log_keep: 99999999999:59:59:59:59:59\n",
        "series: {max_per_metric: 1:0:0:0:0:0:0:0:0:0:0}\n",
        "ipfix_observation_domain: -0x8000000000000000\n",
        "flow_table_size: 0x-10\n",
        "services: [{name: a, cidr: \"10.0.0.1\\0/8\"}]\n",  // C would have read 10.0.0.1
        "flow_log: \"/tmp/a\\0b\"\n",
        "interfaces: [\"eth0\\0\"]\n",
        "interfaces: " + String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000) + "\n",
        "a: &a [*a]\n",  // an alias inside its own anchor
        "x: &x {a: *x}\n",
    ])
    func fixedCases(yaml: String) {
        var run = FuzzRun("config fixed case", cases: 1, announce: false)
        _ = run.run { _, i, run in ConfigProperty.file(yaml, i, &run) }
        run.report()
    }

    @Test func integerSpellings() throws {
        func size(_ text: String) -> [String] { problems("flow_table_size: \(text)\n") }
        #expect(try FileConfig.parse(yaml: "flow_table_size: 65_536\n", source: "f").flowTableSize == 65536)
        #expect(try FileConfig.parse(yaml: "flow_table_size: 0x1000\n", source: "f").flowTableSize == 4096)
        #expect(try FileConfig.parse(yaml: "flow_table_size: 0o20\n", source: "f").flowTableSize == 16)
        #expect(try FileConfig.parse(yaml: "flow_table_size: 0b100\n", source: "f").flowTableSize == 4)
        #expect(try FileConfig.parse(yaml: "flow_table_size: +12\n", source: "f").flowTableSize == 12)
        #expect(try FileConfig.parse(yaml: "flow_log_keep: 010\n", source: "f").flowLogKeep == 10)
        #expect(size("1:30") == ["f.yaml:1:18: flow_table_size: expected a whole number, got \"1:30\""])
        #expect(size("0x-10") == ["f.yaml:1:18: flow_table_size: expected a whole number, got \"0x-10\""])
        #expect(size("99999999999999999999") == ["f.yaml:1:18: flow_table_size: expected a whole number, got \"99999999999999999999\""])
    }

    @Test func nulIsRefused() {
        #expect(problems("flow_log: \"/tmp/a\\0b\"\n") == ["f.yaml:1:11: flow_log: contains a NUL character (\\0)"])
        #expect(problems("interfaces: [\"eth0\\0\"]\n") == ["f.yaml:1:14: interfaces[0]: contains a NUL character (\\0)"])
    }

    @Test func tooDeep() {
        let deep = "interfaces: " + String(repeating: "[", count: 2000) + String(repeating: "]", count: 2000) + "\n"
        #expect(problems(deep).count == 1)
        #expect(problems(deep).first?.hasPrefix("f.yaml:1:") == true)
        #expect(problems(deep).first?.contains("nested too deeply") == true)
    }

    @Test func swappedLettersAreOneEdit() {
        #expect(problems("ohoks: auto\n").first?.contains("(did you mean \"hooks\"?)") == true)
        #expect(problems("peers:\n  - name: a\n    cdir: 10.0.0.0/8\n").contains { $0.contains("(did you mean \"cidr\"?)") })
        #expect(envProblems(["FLOWMETER_HOKOS": "auto"]).first?.contains("(did you mean FLOWMETER_HOOKS?)") == true)
    }

    @Test func keyAtTheWrongLevel() {
        #expect(problems("expiry: 5m\n").first?.contains("(expiry belongs under series:)") == true)
        #expect(problems("series:\n  interval: 5s\n").first?.contains("(interval is a top-level key)") == true)
        #expect(problems("cidr: 10.0.0.0/8\n").first?.contains("belongs in a rule under services: or peers:") == true)
        #expect(
            problems("services:\n  - name: a\n    ports: 80\n    log_level: info\n")
                .first?.contains("(log_level is a top-level key)") == true)
        #expect(
            problems("peers:\n  - name: a\n    ports: 80\n    process: x\n")
                .first?.contains("(process is a condition of services rules; peers are named by cidr and ports)") == true)
    }
}

// MARK: - Properties

enum ConfigProperty {
    /// Parses `text` and checks the properties; returns the problems when it
    /// did not parse.
    @discardableResult
    static func file(_ text: String, _ i: Int, _ run: inout FuzzRun) -> [ConfigError.Problem]? {
        run.note(i, text)
        let clock = ContinuousClock()
        var result: Result<FileConfig, ConfigError>!
        let took = clock.measure {
            result = Result { () throws(ConfigError) in try FileConfig.parse(yaml: text, source: "fuzz.yaml") }
        }
        if took > .seconds(1) { run.fail(i, "took \(took)", input: text) }
        // The same text, the same answer.
        let again = Result { () throws(ConfigError) in try FileConfig.parse(yaml: text, source: "fuzz.yaml") }
        if again != result { run.fail(i, "a second parse answered differently", input: text) }
        switch result! {
        case .success(let c):
            for v in violations(c) { run.fail(i, "accepted out of bounds: \(v)", input: text) }
            return nil
        case .failure(let e):
            let lines = yamlLineCount(text)
            if e.problems.isEmpty { run.fail(i, "an error without problems", input: text) }
            for p in e.problems {
                if p.message.trimmed.isEmpty || p.description.trimmed.isEmpty || p.source != "fuzz.yaml" {
                    run.fail(i, "a problem that says nothing: \(p)", input: text)
                }
                guard let line = p.line, (1...lines + 1).contains(line), (p.column ?? 1) >= 1 else {
                    run.fail(i, "a problem without a line in the file (\(lines) lines): \(p)", input: text)
                    continue
                }
            }
            return e.problems
        }
    }

    /// Lines as libyaml counts them: it also breaks lines at a lone CR, NEL,
    /// and the Unicode line and paragraph separators.
    static func yamlLineCount(_ text: String) -> Int {
        var n = 1
        var previous: Unicode.Scalar = "x"
        for c in text.unicodeScalars {
            switch c {
            case "\n": if previous != "\r" { n += 1 }
            case "\r", "\u{85}", "\u{2028}", "\u{2029}": n += 1
            default: break
            }
            previous = c
        }
        return n
    }

    /// What a config that parsed must not hold: the bounds the docs
    /// (docs/flowmeterd.md, "Options" and "Configuration") and the example
    /// document for each key.
    static func violations(_ c: FileConfig) -> [String] {
        var v: [String] = []
        func text(_ name: String, _ s: String?) {
            guard let s else { return }
            if s.trimmed.isEmpty { v.append("\(name) is empty") }
            if s.unicodeScalars.contains("\u{0}") { v.append("\(name) has a NUL") }
        }
        if let d = c.interval, d.nanoseconds == 0 { v.append("interval 0") }
        if let d = c.seriesExpiry, d.nanoseconds == 0 { v.append("series.expiry 0") }
        if let m = c.metricsListen, (try? ListenAddress(parsing: m)) == nil { v.append("metrics_listen \(m)") }
        if let n = c.flowTableSize, !FileConfig.flowTableSizes.contains(n) { v.append("flow_table_size \(n)") }
        if let n = c.flowLogMaxSize, n < 4096 { v.append("flow_log_max_size \(n)") }
        if let n = c.flowLogKeep, !(1...100).contains(n) { v.append("flow_log_keep \(n)") }
        if let n = c.ipfixObservationDomain, !(0...Int(UInt32.max)).contains(n) { v.append("ipfix_observation_domain \(n)") }
        if let n = c.maxSeriesPerMetric, n < FileConfig.minSeriesPerMetric { v.append("max_per_metric \(n)") }
        if let m = c.tcMode, !FileConfig.tcModes.contains(m) { v.append("tc_mode \(m)") }
        if let h = c.hooks, !FileConfig.hookRequests.contains(h) { v.append("hooks \(h)") }
        if let u = c.socketUpdates, !FileConfig.socketUpdateRequests.contains(u) { v.append("socket_updates \(u)") }
        if let l = c.logLevel, !FileConfig.logLevels.contains(l) { v.append("log_level \(l)") }
        if let u = c.otlpEndpoint, !u.hasPrefix("http://"), !u.hasPrefix("https://") { v.append("otlp_endpoint \(u)") }
        if let d = c.ipfixCollector {
            if let a = try? ListenAddress(parsing: d) {
                if a.port == 0 { v.append("ipfix_collector port 0") }
            } else {
                v.append("ipfix_collector \(d)")
            }
        }
        for (name, s) in [
            ("metrics_listen", c.metricsListen), ("web_config", c.webConfig), ("flow_log", c.flowLog), ("api_socket", c.apiSocket),
            ("api_group", c.apiGroup), ("state_dir", c.stateDir), ("otlp_endpoint", c.otlpEndpoint),
            ("ipfix_collector", c.ipfixCollector), ("containerd_socket", c.containerdSocket), ("docker_socket", c.dockerSocket),
            ("node_name", c.nodeName),
        ] {
            text(name, s)
        }
        for (name, list) in [("interfaces", c.interfaces), ("exclude_interfaces", c.excludeInterfaces)] {
            for p in list ?? [] {
                text(name, p)
                if p.contains(",") { v.append("\(name) item with a comma") }
            }
        }
        func ruleName(_ s: String) {
            if s.isEmpty || (try? FlowmeterConfig.Check.ruleName(s)) == nil { v.append("rule name \(String(reflecting: s))") }
        }
        func ports(_ p: PortRange?) {
            if let p, p.lower < 1 || p.lower > p.upper { v.append("ports \(p)") }
        }
        for r in c.services ?? [] {
            ruleName(r.service)
            ports(r.ports)
            text("cgroup", r.cgroup)
            text("process", r.process)
            text("namespace", r.namespace)
            text("workload", r.workload)
            text("container", r.container)
            if r.podLabels?.isEmpty == true { v.append("pod_label with no label") }
            if r.cgroup == nil && r.process == nil && r.ports == nil && r.cidr == nil && r.namespace == nil
                && r.workload == nil && r.podLabels == nil && r.container == nil
            {
                v.append("service rule without a condition")
            }
        }
        for r in c.peers ?? [] {
            ruleName(r.service)
            ports(r.ports)
            if r.cidr == nil && r.ports == nil { v.append("peer rule without a condition") }
        }
        for cidr in (c.services ?? []).compactMap(\.cidr) + (c.peers ?? []).compactMap(\.cidr) {
            if !(0...128).contains(cidr.bits) || cidr.description.unicodeScalars.contains("\u{0}") { v.append("cidr \(cidr)") }
        }
        return v
    }
}

// MARK: - Generators

enum Gen {
    static let allKeys = FileConfig.topLevelKeys + FileConfig.seriesKeys + FileConfig.serviceKeys + FileConfig.peerKeys

    /// Values that are right for some key somewhere.
    static let goodValues: [String: [String]] = [
        "interfaces": ["[\"eth*\", \"veth*\"]", "[eth0]", "[]"],
        "exclude_interfaces": ["[lo]", "[\"docker*\"]"],
        "interval": ["5s", "500ms", "1m", "2"],
        "metrics_listen": ["\"0.0.0.0:9810\"", "\":9810\"", "\"[::1]:9810\""],
        "web_config": ["/etc/flowmeter/web.yaml"],
        "flow_log": ["/var/log/flows.jsonl", "-"],
        "flow_log_max_size": ["100M", "4096", "1G"],
        "flow_log_keep": ["5", "100", "1"],
        "otlp_endpoint": ["http://127.0.0.1:4318/v1/metrics"],
        "ipfix_collector": ["127.0.0.1:4739", "\"[::1]:4739\""],
        "ipfix_observation_domain": ["0", "4294967295"],
        "api_socket": ["/run/flowmeter/flowmeter.sock", "off"],
        "api_group": ["adm"],
        "flow_table_size": ["65536", "1", "16777216", "0x1000"],
        "tc_mode": FileConfig.tcModes,
        "hooks": FileConfig.hookRequests,
        "socket_updates": FileConfig.socketUpdateRequests,
        "follow_interfaces": ["true", "false", "yes", "off"],
        "state_dir": ["/run/flowmeter"],
        "log_level": FileConfig.logLevels,
        "max_per_metric": ["10", "2000"],
        "expiry": ["5m", "30s"],
        "peer_addresses": ["true", "false"],
        "name": ["checkout", "api@v2", "v6:net/1"],
        "cgroup": ["\"/system.slice/*.service\""],
        "process": ["postgres", "\"nginx*\""],
        "ports": ["5432", "\"8000-8100\"", "1-65535"],
        "cidr": ["10.0.0.0/8", "\"fd00::/8\"", "::/0", "10.96.0.10"],
    ]

    /// Scalars (as YAML text) of every kind: wrong types, edges of the
    /// ranges, YAML's odd spellings, unicode, syntax fragments.
    static let oddValues: [String] = [
        "", "~", "null", "true", "no", "off", "on", "0", "-1", "1", "65535", "65536", "4294967296",
        "99999999999999999999", "-9223372036854775808", "9223372036854775807", "9223372036854775808",
        "0x10", "0x7fffffffffffffffff", "-0x8000000000000000", "0o777", "0b101", "0x", "0b", "1_000", "_", "+", "-",
        "1:30", "1:0:0:0:0:0:0:0:0:0:0:0", "190:20:30", "-1:0:0:0:0:0:0:0:0:0:0:0", "99999999999:59:59:59:59:59",
        "1e400", ".inf", "-.inf", ".nan", "3.5", "1e18", "5s", "0s", "-5s", "1e18s", "1e-12s", "0.0000001ns", "99999999999h", "5 s",
        "\"\\0\"", "\"a\\0b\"", "\"\\x01\"", "'quoted'", "\"\\u202e\"", "日本語", "🙂", "\"\u{feff}x\"", "e\u{301}",
        "[]", "{}", "[a, b]", "{a: 1}", "[[[]]]", "&anchor x", "*anchor", "*nowhere", "!!binary aGVsbG8=", "!!int 12",
        "!!str 5", "!custom x", "!!map {}", "? complex", "|\n  block", ">\n  folded", "|-", "\"10.0.0.0/33\"", "10.0.0.0/8",
        "fd00::/129", "::/0", "256.1.1.1/8", "10.0.0.0/", "/8", "\"80-70\"", "0-10", "1-65535", "\"1-2-3\"", "-80",
        "\":99999\"", "\"[::1]:9810\"", "\"[::1\"", "\"::1:9810\"", ":0", "http://", "https://x", "http://:80",
        "http://127.0.0.1:4318/v1/metrics", "- x", ": :", "#", "'", "\"", "{", "[", "}", "]", "%YAML 1.1", "---", "...",
        "@x", "`x`", "a,b", " , ", "\t", "\\", "\"\\\"", String(repeating: "9", count: 400), String(repeating: "x", count: 5000),
    ]

    static func value(_ key: String, _ r: inout SeededRandom, plain: Bool = false) -> String {
        if plain {
            let good = (goodValues[key] ?? []).filter(isPlain)
            return !good.isEmpty && r.chance(0.5) ? r.pick(good) : r.pick(plainOddValues)
        }
        if let good = goodValues[key], r.chance(0.5) { return r.pick(good) }
        return r.chance(0.85) ? r.pick(oddValues) : randomText(&r)
    }

    /// A value YAML reads as one plain scalar on its line, whatever the context.
    static func isPlain(_ s: String) -> Bool {
        guard let f = s.unicodeScalars.first, CharacterSet.alphanumerics.contains(f) || f == "_" else { return false }
        return s.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "_.:/+-@".unicodeScalars.contains($0) }
            && !s.contains(": ") && !s.hasSuffix(":")
    }
    static let plainOddValues = oddValues.filter(isPlain)

    static func randomText(_ r: inout SeededRandom) -> String {
        let pools: [[UnicodeScalar]] = [
            Array("abcxyz019 _-:/.*?[]{},#&*!|>'\"%@`".unicodeScalars),
            [
                UnicodeScalar(0x0)!, UnicodeScalar(0x7)!, UnicodeScalar(0x9)!, UnicodeScalar(0xa)!, UnicodeScalar(0xd)!,
                UnicodeScalar(0x85)!, UnicodeScalar(0xa0)!, UnicodeScalar(0x2028)!, UnicodeScalar(0x202e)!, UnicodeScalar(0xfeff)!,
                UnicodeScalar(0xfffd)!, UnicodeScalar(0x1f642)!, UnicodeScalar(0x65e5)!, UnicodeScalar(0x301)!,
            ],
        ]
        var s = String.UnicodeScalarView()
        for _ in 0..<r.int(0...24) { s.append(r.pick(r.pick(pools))) }
        return String(s)
    }

    /// One edit away from `key` (substitution, insertion, deletion, swap).
    static func nearMiss(_ key: String, _ r: inout SeededRandom) -> String {
        var c = Array(key)
        let letters = Array("abcdefghijklmnopqrstuvwxyz_")
        let i = r.int(0...(c.count - 1))
        switch r.int(0...3) {
        case 0: c[i] = r.pick(letters)
        case 1: c.insert(r.pick(letters), at: i)
        case 2: if c.count > 1 { c.remove(at: i) }
        default: if i + 1 < c.count { c.swapAt(i, i + 1) }
        }
        return String(c)
    }

    static func oneEditApart(_ a: String, _ b: String) -> Bool {
        let x = Array(a), y = Array(b)
        if x == y || abs(x.count - y.count) > 1 { return false }
        if x.count == y.count {
            let diff = zip(x, y).enumerated().filter { $0.element.0 != $0.element.1 }.map(\.offset)
            return diff.count == 1 || (diff.count == 2 && diff[1] == diff[0] + 1 && x[diff[0]] == y[diff[1]] && x[diff[1]] == y[diff[0]])
        }
        let (long, short) = x.count > y.count ? (x, y) : (y, x)
        var i = 0
        while i < short.count && long[i] == short[i] { i += 1 }
        return Array(long[(i + 1)...]) == Array(short[i...])
    }

    // MARK: Mutations of a valid document

    static func mutate(_ text: String, _ r: inout SeededRandom) -> String {
        var bytes = Array(text.utf8)
        for _ in 0..<r.int(1...4) {
            var lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            switch r.int(0...10) {
            case 0:  // byte flips
                for _ in 0..<r.int(1...8) where !bytes.isEmpty {
                    let at = r.int(0...(bytes.count - 1))
                    bytes[at] = r.chance(0.5) ? bytes[at] ^ (1 << UInt8(r.int(0...7))) : UInt8(r.int(0...255))
                }
                continue
            case 1:  // truncation
                bytes = Array(bytes.prefix(r.int(0...bytes.count)))
                continue
            case 2:  // a key inserted: known, misspelt or made up, at some indentation
                let key = r.chance(0.4) ? r.pick(allKeys) : r.chance(0.6) ? nearMiss(r.pick(allKeys), &r) : randomText(&r)
                let indent = String(repeating: " ", count: r.pick([0, 0, 0, 2, 4, 1, 3]))
                lines.insert("\(indent)\(r.chance(0.2) ? "- " : "")\(key): \(value(key, &r))", at: r.int(0...lines.count))
            case 3:  // a line duplicated elsewhere: duplicate keys, stray list items
                let l = r.pick(lines)
                lines.insert(l, at: r.int(0...lines.count))
            case 4, 5:  // a value replaced by one of another type or out of range
                let candidates = lines.indices.filter { lines[$0].contains(": ") && !lines[$0].hasPrefix("#") }
                guard let at = candidates.randomElement(using: &r) else { break }
                let l = lines[at]
                let key = l[..<l.range(of: ": ")!.lowerBound].trimmingCharacters(in: .whitespaces)
                    .replacingOccurrences(of: "- ", with: "")
                lines[at] = String(l[..<l.range(of: ": ")!.upperBound]) + value(key, &r)
            case 6:  // a line removed
                if !lines.isEmpty { lines.remove(at: r.int(0...(lines.count - 1))) }
            case 7:  // unicode somewhere
                let at = r.int(0...lines.count - 1)
                var l = Array(lines[at])
                l.insert(contentsOf: Array(randomText(&r)), at: r.int(0...l.count))
                lines[at] = String(l)
            case 8:  // indentation changed
                let at = r.int(0...lines.count - 1)
                lines[at] = String(repeating: r.pick([" ", "\t"]), count: r.int(0...6)) + lines[at].drop(while: { $0 == " " })
            case 9:  // a block repeated: a longer document, more duplicates
                let from = r.int(0...lines.count - 1), to = min(lines.count, from + r.int(1...20))
                let block = Array(lines[from..<to])
                for _ in 0..<r.int(1...50) { lines.insert(contentsOf: block, at: to) }
            default:  // a line's text reversed: keys and values garbled
                let at = r.int(0...lines.count - 1)
                lines[at] = String(lines[at].reversed())
            }
            bytes = Array(lines.joined(separator: "\n").utf8)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: Documents from the schema

    static func document(_ r: inout SeededRandom, plain: Bool, nearMisses: inout [(path: String, key: String)]) -> String {
        var out: [String] = []
        var used = Set<String>()
        func key(from allowed: [String], at path: String, used: inout Set<String>) -> String {
            var k: String
            if r.chance(0.8) {
                k = r.pick(allowed)
            } else if r.chance(0.7) {
                k = nearMiss(r.pick(allowed), &r)
            } else {
                k = r.pick(["colour", "x", "version", "include", "services2", "1", "true"])
            }
            if used.contains(k) { k += "_\(used.count)" }
            used.insert(k)
            // Only a misspelling that is no key anywhere counts as one.
            if !allKeys.contains(k) && k.count >= 3 && allowed.contains(where: { oneEditApart($0, k) }) {
                nearMisses.append((path.isEmpty ? k : "\(path).\(k)", k))
            }
            return k
        }
        for _ in 0..<r.int(0...10) {
            let k = key(from: FileConfig.topLevelKeys, at: "", used: &used)
            switch k {
            case "services", "peers":
                if r.chance(0.1) { out.append("\(k): \(value(k, &r, plain: plain))"); continue }
                out.append("\(k):")
                let keys = k == "services" ? FileConfig.serviceKeys : FileConfig.peerKeys
                for i in 0..<r.int(0...4) {
                    var ruleUsed = Set<String>()
                    var fields: [String] = []
                    for _ in 0..<r.int(0...4) {
                        let f = key(from: keys, at: "\(k)[\(i)]", used: &ruleUsed)
                        fields.append("\(f): \(value(f, &r, plain: plain))")
                    }
                    if r.chance(0.3) {
                        out.append("  - {" + fields.joined(separator: ", ") + "}")
                    } else if fields.isEmpty {
                        out.append("  - \(r.pick(["~", "{}", "x", "[]"]))")
                    } else {
                        out.append("  - " + fields[0])
                        out += fields.dropFirst().map { "    " + $0 }
                    }
                }
            case "series":
                out.append("series:")
                var seriesUsed = Set<String>()
                for _ in 0..<r.int(0...4) {
                    let f = key(from: FileConfig.seriesKeys, at: "series", used: &seriesUsed)
                    out.append("  \(f): \(value(f, &r, plain: plain))")
                }
            case "interfaces", "exclude_interfaces":
                if r.chance(0.5) {
                    out.append("\(k): \(value(k, &r, plain: plain))")
                } else {
                    out.append("\(k):")
                    for _ in 0..<r.int(0...4) {
                        out.append("  - \(r.chance(0.5) ? r.pick(["eth0", "\"veth*\"", "lo"]) : value("", &r, plain: plain))")
                    }
                }
            default:
                out.append("\(k): \(value(k, &r, plain: plain))")
            }
            if !plain && r.chance(0.1) { out.append("# \(randomText(&r))") }
        }
        return out.joined(separator: "\n") + (r.chance(0.9) ? "\n" : "")
    }

    // MARK: Environments

    static func environment(_ r: inout SeededRandom) -> [String: String] {
        var env: [String: String] = [:]
        let keyOf: [String: String] = [
            "FLOWMETER_INTERFACES": "interfaces", "FLOWMETER_EXCLUDE_INTERFACES": "exclude_interfaces",
            "FLOWMETER_INTERVAL": "interval", "FLOWMETER_METRICS_LISTEN": "metrics_listen", "FLOWMETER_FLOW_LOG": "flow_log",
            "FLOWMETER_WEB_CONFIG": "web_config",
            "FLOWMETER_FLOW_LOG_MAX_SIZE": "flow_log_max_size", "FLOWMETER_FLOW_LOG_KEEP": "flow_log_keep",
            "FLOWMETER_OTLP_ENDPOINT": "otlp_endpoint", "FLOWMETER_IPFIX_COLLECTOR": "ipfix_collector",
            "FLOWMETER_IPFIX_OBSERVATION_DOMAIN": "ipfix_observation_domain", "FLOWMETER_API_SOCKET": "api_socket",
            "FLOWMETER_API_GROUP": "api_group", "FLOWMETER_FLOW_TABLE_SIZE": "flow_table_size", "FLOWMETER_TC_MODE": "tc_mode",
            "FLOWMETER_HOOKS": "hooks", "FLOWMETER_SOCKET_UPDATES": "socket_updates", "FLOWMETER_FOLLOW_INTERFACES": "follow_interfaces",
            "FLOWMETER_STATE_DIR": "state_dir",
            "FLOWMETER_LOG_LEVEL": "log_level", "FLOWMETER_MAX_SERIES_PER_METRIC": "max_per_metric",
            "FLOWMETER_SERIES_EXPIRY": "expiry", "FLOWMETER_PEER_ADDRESSES": "peer_addresses",
        ]
        for _ in 0..<r.int(0...8) {
            let name: String
            switch r.int(0...9) {
            case 0...5: name = r.pick(FileConfig.environmentVariables)
            case 6: name = nearMiss(r.pick(FileConfig.environmentVariables), &r)
            case 7: name = r.pick(Array(FileConfig.environmentNotSettings))
            case 8: name = "FLOWMETER_" + randomText(&r)
            default: name = r.pick(["PATH", "HOME", "FLOWMETERX", "flowmeter_interval", ""])
            }
            // The environment cannot hold a NUL: it ends a C string.
            let v = value(keyOf[name] ?? "", &r)
            env[name] = String(String.UnicodeScalarView(v.unicodeScalars.filter { $0 != "\u{0}" }))
        }
        return env
    }
}
