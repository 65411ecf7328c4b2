// Parsing of user-facing values (durations, listen addresses, interface
// patterns). Pure functions with errors that say what was wrong, so every flag
// that takes one of these reports the flag and the value.

public struct ValueError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ d: String) { description = d }
}

/// A duration given as `500ms`, `5s`, `2m`, `1h` (a bare number means seconds).
public struct FlowDuration: Sendable, Equatable, CustomStringConvertible {
    public let nanoseconds: UInt64

    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    public init(parsing text: String) throws {
        let t = text.trimmingSpaces
        let units: [(String, Double)] = [("ms", 1e6), ("us", 1e3), ("ns", 1), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
        var number = Substring(t), scale = 1e9
        for (suffix, mult) in units where t.hasSuffix(suffix) {
            number = t.dropLast(suffix.count); scale = mult; break
        }
        guard let v = Double(number), v.isFinite, v > 0 else {
            throw ValueError("'\(text)' is not a positive duration (examples: 500ms, 5s, 1m)")
        }
        let ns = v * scale
        guard ns >= 1, ns < 1e18 else { throw ValueError("'\(text)' is out of range") }
        nanoseconds = UInt64(ns)
    }

    public var seconds: Double { Double(nanoseconds) / 1e9 }

    public var description: String {
        if nanoseconds % 1_000_000_000 == 0 { return "\(nanoseconds / 1_000_000_000)s" }
        if nanoseconds % 1_000_000 == 0 { return "\(nanoseconds / 1_000_000)ms" }
        return "\(nanoseconds)ns"
    }
}

/// `HOST:PORT`, `:PORT` (all IPv4 addresses) or `[V6]:PORT`.
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public let host: String
    public let port: Int

    public init(host: String, port: Int) { self.host = host; self.port = port }

    public init(parsing text: String) throws {
        let t = text.trimmingSpaces
        var host: Substring, portText: Substring
        if t.hasPrefix("[") {
            guard let close = t.firstIndex(of: "]"), t[t.index(after: close)...].hasPrefix(":") else {
                throw ValueError("'\(text)' is not HOST:PORT (IPv6 hosts in brackets: [::1]:9810)")
            }
            host = t[t.index(after: t.startIndex)..<close]
            portText = t[t.index(close, offsetBy: 2)...]
        } else {
            guard let colon = t.lastIndex(of: ":") else {
                throw ValueError("'\(text)' is not HOST:PORT (examples: :9810, 127.0.0.1:9810)")
            }
            host = t[..<colon]
            portText = t[t.index(after: colon)...]
            if host.contains(":") { throw ValueError("'\(text)': put an IPv6 host in brackets, e.g. [::1]:9810") }
        }
        guard let port = Int(portText), (0...65535).contains(port) else {
            throw ValueError("'\(text)': port must be a number from 0 to 65535")
        }
        self.host = host.isEmpty ? "0.0.0.0" : String(host)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Shell-style glob match (`*`, `?`, `[abc]`, `[a-z]`, `[!x]`), as for interface names.
public func globMatch(_ pattern: String, _ name: String) -> Bool {
    let p = Array(pattern.unicodeScalars), s = Array(name.unicodeScalars)
    func match(_ pi: Int, _ si: Int) -> Bool {
        var pi = pi, si = si
        while pi < p.count {
            switch p[pi] {
            case "*":
                for k in si...s.count where match(pi + 1, k) { return true }
                return false
            case "?":
                guard si < s.count else { return false }
                pi += 1; si += 1
            case "[":
                guard si < s.count, let close = p[(pi + 1)...].firstIndex(of: "]") else { return false }
                var set = Array(p[(pi + 1)..<close])
                let negate = set.first == "!" || set.first == "^"
                if negate { set.removeFirst() }
                var hit = false, k = 0
                while k < set.count {
                    if k + 2 < set.count, set[k + 1] == "-" {
                        if set[k] <= s[si] && s[si] <= set[k + 2] { hit = true }
                        k += 3
                    } else {
                        if set[k] == s[si] { hit = true }
                        k += 1
                    }
                }
                guard hit != negate else { return false }
                pi = close + 1; si += 1
            default:
                guard si < s.count, p[pi] == s[si] else { return false }
                pi += 1; si += 1
            }
        }
        return si == s.count
    }
    return match(0, 0)
}

/// Which interfaces to attach to.
public struct InterfaceSelection: Sendable, Equatable {
    /// Names or globs; empty means "every interface that is up, except loopback".
    public var include: [String]
    public var exclude: [String]

    public init(include: [String] = [], exclude: [String] = []) {
        self.include = include; self.exclude = exclude
    }

    /// Splits a comma-separated flag value into patterns.
    public static func patterns(_ text: String) -> [String] {
        text.split(separator: ",").map { String($0).trimmingSpaces }.filter { !$0.isEmpty }
    }

    public struct Candidate: Sendable, Equatable {
        public var name: String
        public var ifindex: UInt32
        public var isUp: Bool
        public var isLoopback: Bool
        public init(name: String, ifindex: UInt32, isUp: Bool, isLoopback: Bool) {
            self.name = name; self.ifindex = ifindex; self.isUp = isUp; self.isLoopback = isLoopback
        }
    }

    /// Picks interfaces from what the host has. A literal name (no glob
    /// characters) in `include` that does not exist is an error: the user asked
    /// for it by name. Explicitly named interfaces are taken even when down
    /// (tc can attach to a down interface; it starts counting when it comes up).
    public func select(from all: [Candidate]) throws -> [Candidate] {
        let isGlob: (String) -> Bool = { $0.contains(where: { "*?[".contains($0) }) }
        if !include.isEmpty {
            let missing = include.filter { p in !isGlob(p) && !all.contains(where: { $0.name == p }) }
            if !missing.isEmpty {
                let known = all.map(\.name).joined(separator: ", ")
                // Even when following interfaces: a name that is not there at
                // start is far more often a typo than one yet to come, and a
                // glob says "wait for it" on purpose.
                throw ValueError(
                    "unknown interface\(missing.count > 1 ? "s" : "") \(missing.joined(separator: ", ")) (this host has: \(known)); "
                        + "a name must exist at start; to also take one that appears later, give a glob such as \(missing[0])*")
            }
        }
        return matching(all)
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" { s.removeLast() }
        return String(s)
    }
}
