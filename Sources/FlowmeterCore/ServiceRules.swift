// The vocabulary of service attribution: address prefixes, port ranges and the
// rules a config file gives. Pure values; matching lives in ServiceIdentity.

#if canImport(Glibc)
    import Glibc
#endif

extension IPAddress16 {
    /// Parses dotted-quad IPv4 (stored v4-mapped) or IPv6 text; nil if neither.
    public init?(text: String) {
        var b4 = in_addr()
        if inet_pton(AF_INET, text, &b4) == 1 {
            let v = UInt32(bigEndian: b4.s_addr)
            self = .v4(UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff))
            return
        }
        var b6 = in6_addr()
        guard inet_pton(AF_INET6, text, &b6) == 1 else { return nil }
        self = withUnsafeBytes(of: &b6) { IPAddress16(bytes: Array($0)) }
    }
}

/// An address prefix, IPv4 (`10.0.0.0/8`) or IPv6 (`fd00::/8`). A bare
/// address is a /32 or /128. IPv4 prefixes match the v4-mapped addresses the
/// kernel records for IPv4.
public struct CIDR: Sendable, Hashable, CustomStringConvertible {
    public let network: IPAddress16
    /// Prefix length over the 128-bit (v4-mapped for IPv4) address.
    public let bits: Int
    public let description: String

    public init(parsing text: String) throws {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard let addr = IPAddress16(text: parts[0]) else {
            throw ValueError("\"\(text)\" is not an address prefix (want e.g. 10.0.0.0/8 or fd00::/8)")
        }
        let v4 = addr.isV4Mapped && !parts[0].contains(":")
        let maxLen = v4 ? 32 : 128
        var len = maxLen
        if parts.count == 2 {
            guard let l = Int(parts[1]), (0...maxLen).contains(l) else {
                throw ValueError("\"\(text)\": prefix length must be 0 to \(maxLen)")
            }
            len = l
        }
        bits = v4 ? len + 96 : len
        network = Self.mask(addr, bits)
        description = text
    }

    static func mask(_ a: IPAddress16, _ bits: Int) -> IPAddress16 {
        func m(_ n: Int) -> UInt64 { n <= 0 ? 0 : n >= 64 ? .max : ~(UInt64.max >> UInt64(n)) }
        return IPAddress16(hi: a.hi & m(bits), lo: a.lo & m(bits - 64))
    }

    public func contains(_ a: IPAddress16) -> Bool { Self.mask(a, bits) == network }
}

/// One port (`5432`) or an inclusive range (`8000-8100`).
public struct PortRange: Sendable, Hashable, CustomStringConvertible {
    public let lower: UInt16
    public let upper: UInt16

    public init(lower: UInt16, upper: UInt16) { self.lower = lower; self.upper = upper }

    public init(parsing text: String) throws {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false).map { String($0).trimmingSpaces }
        guard (1...2).contains(parts.count), let lo = UInt16(parts[0]), let hi = UInt16(parts.last!), lo >= 1, lo <= hi else {
            throw ValueError("\"\(text)\" is not a port or port range (want e.g. 5432 or 8000-8100, 1 to 65535)")
        }
        lower = lo; upper = hi
    }

    public func contains(_ p: UInt16) -> Bool { p >= lower && p <= upper }
    public var description: String { lower == upper ? "\(lower)" : "\(lower)-\(upper)" }
}

/// Names the local end of a socket. Every condition given must hold; a rule
/// with none is refused by the config parser. The first matching rule wins.
public struct ServiceRule: Sendable, Hashable {
    public var service: String
    /// Glob over the cgroup v2 path below the mount, e.g. `/system.slice/checkout*.service`.
    public var cgroup: String?
    /// Glob over the process name (comm, at most 15 characters).
    public var process: String?
    /// The socket's local port.
    public var ports: PortRange?
    /// The socket's local address.
    public var cidr: CIDR?
    /// Glob over the pod's namespace (a Kubernetes pod the runtime named).
    public var namespace: String?
    /// Glob over the workload derived from the pod (`Workload.derive`).
    public var workload: String?
    /// Labels the pod must carry, each with exactly this value.
    public var podLabels: [String: String]?
    /// Glob over the container's name in the pod spec.
    public var container: String?

    public init(
        service: String, cgroup: String? = nil, process: String? = nil, ports: PortRange? = nil, cidr: CIDR? = nil,
        namespace: String? = nil, workload: String? = nil, podLabels: [String: String]? = nil, container: String? = nil
    ) {
        self.service = service; self.cgroup = cgroup; self.process = process; self.ports = ports; self.cidr = cidr
        self.namespace = namespace; self.workload = workload; self.podLabels = podLabels; self.container = container
    }
}

/// Names a peer by its address and port. Every condition given must hold; the
/// first matching rule wins.
public struct PeerRule: Sendable, Hashable {
    public var service: String
    public var cidr: CIDR?
    public var ports: PortRange?

    public init(service: String, cidr: CIDR? = nil, ports: PortRange? = nil) {
        self.service = service; self.cidr = cidr; self.ports = ports
    }
}

/// How the per-service metrics are bounded.
public struct AggregationLimits: Sendable, Equatable {
    /// Series per metric family; past it new pairs fold into "other".
    public var maxSeriesPerMetric: Int
    /// A pair with no traffic and no live connection for this long is dropped
    /// (and vanishes from /metrics).
    public var seriesExpiry: FlowDuration
    /// Label unknown peers with their address instead of "unknown".
    public var peerAddresses: Bool

    public static let defaults = AggregationLimits(
        maxSeriesPerMetric: 2000,
        seriesExpiry: FlowDuration(nanoseconds: 300_000_000_000),
        peerAddresses: false)

    public init(maxSeriesPerMetric: Int, seriesExpiry: FlowDuration, peerAddresses: Bool) {
        self.maxSeriesPerMetric = maxSeriesPerMetric; self.seriesExpiry = seriesExpiry; self.peerAddresses = peerAddresses
    }
}
