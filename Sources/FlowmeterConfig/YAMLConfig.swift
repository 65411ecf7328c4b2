// The YAML config file: composed into Yams nodes (which keep line and column)
// and walked by hand, so that every problem can be reported with its position
// and key path, and all of them at once.

import FlowmeterCore
import Yams

extension FileConfig {
    /// Top-level keys: the settings' (`Setting.all`), then the sections.
    static let topLevelKeys = Setting.all.filter { $0.section.isEmpty }.map(\.key) + ["services", "peers", "series"]
    static let seriesKeys = Setting.all.filter { $0.section == "series" }.map(\.leaf)
    static let serviceKeys = ["name", "cgroup", "process", "ports", "cidr", "namespace", "workload", "pod_label", "container"]
    static let peerKeys = ["name", "cidr", "ports"]

    /// Where a key that is not allowed at `path` does belong, if it belongs
    /// anywhere: the commonest slip after a typo is the right key at the
    /// wrong level.
    static func placeOf(_ key: String, notAt path: String) -> String? {
        let topLevel = !path.isEmpty && topLevelKeys.contains(key)
        if topLevel { return "\(key) is a top-level key" }
        if path != "series" && seriesKeys.contains(key) { return "\(key) belongs under series:" }
        if path.isEmpty && (serviceKeys.contains(key) || peerKeys.contains(key)) {
            return "\(key) belongs in a rule under services: or peers:, e.g. \"- name: x\""
        }
        if path.hasPrefix("peers[") && serviceKeys.contains(key) {
            return "\(key) is a condition of services rules; peers are named by cidr and ports"
        }
        return nil
    }

    /// Parses a config file. `source` names it in the problems (usually its path).
    ///
    /// A key with no value (`flow_log:` or `flow_log: null`) is the same as an
    /// absent key. An empty document is an empty config. A YAML syntax error
    /// stops the parse, so it is reported alone; every other problem (unknown
    /// keys, wrong types, bad values, incomplete rules) is collected and
    /// thrown together, in document order.
    public static func parse(yaml: String, source: String) throws(ConfigError) -> FileConfig {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml, .default, .default, .utf8)
        } catch {
            throw ConfigError([syntaxProblem(error, yaml: yaml, source: source)])
        }
        guard let root, !isNull(root) else { return FileConfig() }
        var reader = NodeReader(source: source)
        let config = reader.config(root)
        if !reader.problems.isEmpty {
            // Stable sort: problems on one node keep the order they were found in.
            let ordered = reader.problems.enumerated().sorted {
                ($0.element.line ?? 0, $0.element.column ?? 0, $0.offset) < ($1.element.line ?? 0, $1.element.column ?? 0, $1.offset)
            }.map(\.element)
            throw ConfigError(ordered)
        }
        return config
    }

    static func syntaxProblem(_ error: any Error, yaml: String, source: String) -> ConfigError.Problem {
        func problem(_ mark: (line: Int, column: Int)?, _ message: String) -> ConfigError.Problem {
            .init(source: source, line: mark?.line, column: mark?.column, path: "", message: message)
        }
        func problem(_ mark: Mark, _ message: String) -> ConfigError.Problem {
            problem((mark.line, mark.column), message)
        }
        guard let e = error as? YamlError else { return problem(nil, "\(error)") }
        switch e {
        case let .scanner(context, text, mark, _), let .parser(context, text, mark, _), let .composer(context, text, mark, _):
            if text == "but found another document" {
                return problem(mark, "YAML syntax error: a config file holds one document; another starts here")
            }
            if text.hasPrefix("Maximum nesting level reached") {
                return problem(
                    mark,
                    "YAML syntax error: nested too deeply (a config file needs three levels: settings, a list of rules, a rule's keys)")
            }
            var message = "YAML syntax error: \(text)"
            if let context {
                message += " (\(context.text) at line \(context.mark.line), column \(context.mark.column))"
            }
            return problem(mark, message)
        case let .reader(text, offset, _, _):
            return problem(offset.map { position(atUTF8Offset: $0, in: yaml) }, "YAML syntax error: \(text)")
        case let .duplicatedKeysInMapping(duplicates, context):
            let keys = duplicates.map(quoted).joined(separator: ", ")
            return problem(context.mark, "YAML: key \(keys) given more than once in the same mapping (first here)")
        default:
            return problem(nil, "YAML: \(e)")
        }
    }

    /// Line and column (1-based, columns in Unicode scalars like libyaml's) of a byte offset.
    static func position(atUTF8Offset offset: Int, in text: String) -> (line: Int, column: Int) {
        let bytes = Array(text.utf8.prefix(offset))
        let line = bytes.reduce(1) { $1 == UInt8(ascii: "\n") ? $0 + 1 : $0 }
        let lastLine = bytes.lastIndex(of: UInt8(ascii: "\n")).map { bytes[($0 + 1)...] } ?? bytes[...]
        let column = String(decoding: lastLine, as: UTF8.self).unicodeScalars.count + 1
        return (line, column)
    }
}

/// A plain `~`, `null` or empty scalar.
func isNull(_ node: Node) -> Bool {
    if case .scalar = node { return node.null != nil }
    return false
}

/// What a node is, for "expected X, got Y".
func kind(_ node: Node) -> String {
    switch node {
    case .mapping: return "a mapping"
    case .sequence: return "a list"
    case .scalar(let s): return isNull(node) ? "nothing" : quoted(s.string)
    case .alias: return "an alias"
    }
}

struct NodeReader {
    let source: String
    var problems: [ConfigError.Problem] = []

    init(source: String) { self.source = source }

    mutating func report(_ node: Node, _ path: String, _ message: String) {
        problems.append(.init(source: source, line: node.mark?.line, column: node.mark?.column, path: path, message: message))
    }

    /// The entries of a mapping whose keys are allowed, without those whose
    /// value is null (not set); reports unknown keys. Nil if `node` is not a mapping.
    /// `placeHints`: suggest where a flowmeter config key belongs (off for
    /// other documents, such as the web config).
    mutating func entries(_ node: Node, _ path: String, allowed: [String], expected: String, placeHints: Bool = true)
        -> [(key: String, path: String, value: Node)]?
    {
        guard case .mapping(let mapping) = node else {
            report(node, path, "expected \(expected), got \(kind(node))")
            return nil
        }
        var out: [(key: String, path: String, value: Node)] = []
        for (keyNode, value) in mapping {
            guard case .scalar(let k) = keyNode, !isNull(keyNode) else {
                report(keyNode, path, "expected a key name, got \(kind(keyNode))")
                continue
            }
            let key = k.string
            let keyPath = path.isEmpty ? key : "\(path).\(key)"
            guard allowed.contains(key) else {
                let hint =
                    closest(to: key, in: allowed).map { " (did you mean \(quoted($0))?)" }
                    ?? (placeHints ? FileConfig.placeOf(key, notAt: path).map { " (\($0))" } : nil) ?? ""
                report(keyNode, keyPath, "unknown key\(hint); allowed here: \(allowed.joined(separator: ", "))")
                continue
            }
            if isNull(value) { continue }
            out.append((key, keyPath, value))
        }
        return out
    }

    mutating func text(_ node: Node, _ path: String, expected: String) -> String? {
        guard case .scalar(let s) = node else {
            report(node, path, "expected \(expected), got \(kind(node))")
            return nil
        }
        // A quoted "\0" is valid YAML, but C would end the text there: a
        // path or address would silently become a shorter one.
        guard !s.string.unicodeScalars.contains("\u{0}") else {
            report(node, path, "contains a NUL character (\\0)")
            return nil
        }
        return s.string
    }

    /// A scalar checked by `make`, whose error message is reported as is.
    mutating func value<T>(_ node: Node, _ path: String, expected: String, _ make: (String) throws -> T) -> T? {
        guard let t = text(node, path, expected: expected) else { return nil }
        do { return try make(t) } catch {
            report(node, path, "\(error)")
            return nil
        }
    }

    mutating func integer(_ node: Node, _ path: String, _ check: (Int) throws -> Int) -> Int? {
        guard let t = text(node, path, expected: "a whole number") else { return nil }
        guard let n = wholeNumber(t) else {
            report(node, path, "expected a whole number, got \(kind(node))")
            return nil
        }
        do { return try check(n) } catch {
            report(node, path, "\(error)")
            return nil
        }
    }

    /// Decimal, and YAML's other integer spellings (0x10, 0o17, 0b101,
    /// 65_536). Not through Yams: its base-60 reading ("1:30") multiplies
    /// without overflow checks and traps on a long one, and a port-like
    /// "1:30" read as 90 would only surprise.
    func wholeNumber(_ text: String) -> Int? {
        if let n = Int(text) { return n }
        var t = Substring(text.replacingOccurrences(of: "_", with: ""))
        var sign = ""
        if let f = t.first, f == "-" || f == "+" {
            sign = f == "-" ? "-" : ""
            t = t.dropFirst()
        }
        for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] where t.hasPrefix(prefix) {
            let digits = t.dropFirst(2)
            // Int(_:radix:) would take a second sign after the prefix.
            guard let d = digits.first, d != "-", d != "+" else { return nil }
            return Int(sign + digits, radix: radix)
        }
        return t.isEmpty || t.first == "-" || t.first == "+" ? nil : Int(sign + t)
    }

    mutating func bool(_ node: Node, _ path: String) -> Bool? {
        if case .scalar = node, let b = node.bool { return b }
        report(node, path, "expected true or false, got \(kind(node))")
        return nil
    }

    /// A list of interface names or globs.
    /// A list of `key=value` headers, each checked (values never echoed).
    mutating func headers(_ node: Node, _ path: String) -> [String]? {
        if case .scalar = node {
            return value(node, path, expected: "key=value headers") { t in
                try OTLPHeaders.parseList(t).map { "\($0.0)=\($0.1)" }
            }
        }
        guard case .sequence(let items) = node else {
            report(node, path, "expected a list of key=value headers (e.g. [\"x-scope-orgid=tenant1\"]), got \(kind(node))")
            return nil
        }
        var out: [String] = [], ok = true
        for (i, item) in items.enumerated() {
            if let h = value(item, "\(path)[\(i)]", expected: "a key=value header", Check.header) { out.append(h) } else { ok = false }
        }
        return ok ? out : nil
    }

    mutating func patterns(_ node: Node, _ path: String) -> [String]? {
        guard case .sequence(let items) = node else {
            report(node, path, "expected a list of interface names or globs (e.g. [\"eth*\", \"veth*\"]), got \(kind(node))")
            return nil
        }
        var out: [String] = [], ok = true
        for (i, item) in items.enumerated() {
            let p = "\(path)[\(i)]"
            guard case .scalar(let s) = item, !isNull(item) else {
                report(item, p, "expected an interface name or glob, got \(kind(item))")
                ok = false
                continue
            }
            let t = s.string.trimmed
            if t.unicodeScalars.contains("\u{0}") {
                report(item, p, "contains a NUL character (\\0)")
                ok = false
            } else if t.isEmpty {
                report(item, p, "must not be empty")
                ok = false
            } else if t.contains(",") {
                report(item, p, "\(quoted(t)) has a comma: give one name or glob per list item")
                ok = false
            } else {
                out.append(t)
            }
        }
        return ok ? out : nil
    }

    mutating func config(_ root: Node) -> FileConfig {
        var c = FileConfig()
        guard
            let entries = entries(
                root, "", allowed: FileConfig.topLevelKeys,
                expected: "a mapping of settings (key: value) at the top level")
        else { return c }
        for (key, path, v) in entries {
            switch key {
            case "services": c.services = rules(v, path, what: "service", NodeReader.serviceRule)
            case "peers": c.peers = rules(v, path, what: "peer", NodeReader.peerRule)
            case "series": section("series", v, path, into: &c)
            default: if let s = Setting.byKey(key) { read(s, v, path, into: &c) }
            }
        }
        return c
    }

    /// The settings under a section key (e.g. `series:`).
    mutating func section(_ name: String, _ node: Node, _ path: String, into c: inout FileConfig) {
        let keys = Setting.all.filter { $0.section == name }.map(\.leaf)
        guard
            let entries = entries(
                node, path, allowed: keys,
                expected: "a mapping (\(keys.joined(separator: ", ")))")
        else { return }
        for (key, p, v) in entries {
            if let s = Setting.byKey("\(name).\(key)") { read(s, v, p, into: &c) }
        }
    }

    /// One setting's value, read and checked as its kind says.
    mutating func read(_ s: Setting, _ v: Node, _ path: String, into c: inout FileConfig) {
        let value: SettingValue?
        switch s.kind {
        case .names: value = patterns(v, path).map { .names($0) }
        case .headers: value = headers(v, path).map { .names($0) }
        case .text(let expected, let check): value = self.value(v, path, expected: expected, check).map { .text($0) }
        // `hooks: off` is YAML's false; its text is still "off".
        case .oneOf(let allowed, let expected):
            value = self.value(v, path, expected: expected) { try Check.oneOf($0, allowed) }.map { .text($0) }
        case .duration: value = self.value(v, path, expected: "a duration", Check.duration).map { .duration($0) }
        case .integer(let check): value = integer(v, path, check).map { .integer($0) }
        case .byteSize: value = self.value(v, path, expected: "a size", Check.byteSize).map { .integer($0) }
        case .bool: value = bool(v, path).map { .bool($0) }
        }
        if let value { s.set(&c, value) }
    }

    /// A list of rules; nil if any rule has a problem.
    mutating func rules<R>(
        _ node: Node, _ path: String, what: String,
        _ rule: (inout NodeReader, Node, String) -> R?
    ) -> [R]? {
        guard case .sequence(let items) = node else {
            report(node, path, "expected a list of \(what) rules (each \"- name: ...\"), got \(kind(node))")
            return nil
        }
        var out: [R] = [], ok = true
        for (i, item) in items.enumerated() {
            if let r = rule(&self, item, "\(path)[\(i)]") { out.append(r) } else { ok = false }
        }
        return ok ? out : nil
    }

    /// Checks a rule's name and that it has a condition; the rule's own
    /// conditions are read by `condition`, which returns whether it set one.
    mutating func rule(
        _ node: Node, _ path: String, what: String, allowed: [String],
        _ condition: (inout NodeReader, String, String, Node) -> Void
    ) -> String? {
        let before = problems.count
        let conditions = allowed.filter { $0 != "name" }
        guard
            let entries = entries(
                node, path, allowed: allowed,
                expected: "a \(what) rule (name and at least one of \(conditions.joined(separator: ", ")))")
        else {
            return nil
        }
        var name: String?
        var hasName = false, hasCondition = false
        for (key, p, v) in entries {
            if key == "name" {
                hasName = true
                name = value(v, p, expected: "a name", Check.ruleName)
            } else {
                hasCondition = true
                condition(&self, key, p, v)
            }
        }
        if !hasName {
            report(node, path, "a \(what) rule needs a name")
        }
        if !hasCondition {
            let called = name.map { " \(quoted($0))" } ?? ""
            report(node, path, "\(what) rule\(called) has no condition; give at least one of \(conditions.joined(separator: ", "))")
        }
        return problems.count == before ? name : nil
    }

    static func serviceRule(_ r: inout NodeReader, _ node: Node, _ path: String) -> ServiceRule? {
        var rule = ServiceRule(service: "")
        let name = r.rule(node, path, what: "service", allowed: FileConfig.serviceKeys) { r, key, p, v in
            switch key {
            case "cgroup": rule.cgroup = r.value(v, p, expected: "a glob over the cgroup path", Check.cgroupGlob)
            case "process": rule.process = r.value(v, p, expected: "a glob over the process name", Check.processGlob)
            case "ports": rule.ports = r.value(v, p, expected: "a port or port range", PortRange.init(parsing:))
            case "cidr": rule.cidr = r.value(v, p, expected: "an address prefix", CIDR.init(parsing:))
            case "namespace": rule.namespace = r.value(v, p, expected: "a glob over the pod's namespace", Check.nonEmpty)
            case "workload": rule.workload = r.value(v, p, expected: "a glob over the pod's workload", Check.nonEmpty)
            case "container": rule.container = r.value(v, p, expected: "a glob over the container's name", Check.nonEmpty)
            case "pod_label": rule.podLabels = r.labels(v, p)
            default: break
            }
        }
        guard let name else { return nil }
        rule.service = name
        return rule
    }

    /// `pod_label: {key: value, ...}`: exact label values the pod must carry.
    mutating func labels(_ node: Node, _ path: String) -> [String: String]? {
        let expected = "a mapping of pod labels to their values (e.g. {app: checkout})"
        guard case .mapping(let mapping) = node else {
            report(node, path, "expected \(expected), got \(kind(node))")
            return nil
        }
        var out: [String: String] = [:]
        var ok = true
        for (keyNode, value) in mapping {
            guard let k = text(keyNode, path, expected: "a label name"), !k.isEmpty, !isNull(keyNode) else {
                ok = false
                continue
            }
            let p = "\(path).\(k)"
            guard case .scalar(let v) = value, !isNull(value) else {
                report(value, p, "expected the label's value (text), got \(kind(value))")
                ok = false
                continue
            }
            out[k] = v.string
        }
        guard ok else { return nil }
        guard !out.isEmpty else {
            report(node, path, "gives no label; give at least one, e.g. {app: checkout}")
            return nil
        }
        return out
    }

    static func peerRule(_ r: inout NodeReader, _ node: Node, _ path: String) -> PeerRule? {
        var rule = PeerRule(service: "")
        let name = r.rule(node, path, what: "peer", allowed: FileConfig.peerKeys) { r, key, p, v in
            switch key {
            case "cidr": rule.cidr = r.value(v, p, expected: "an address prefix", CIDR.init(parsing:))
            case "ports": rule.ports = r.value(v, p, expected: "a port or port range", PortRange.init(parsing:))
            default: break
            }
        }
        guard let name else { return nil }
        rule.service = name
        return rule
    }
}
