// The addresses a network namespace holds, from the kernel's text tables
// under /proc/<pid>/net (readable without entering the namespace, so
// flowmeterd needs no CAP_SYS_ADMIN for them). Pure parsers; the reading is
// FlowmeterRuntime's.

public enum LocalAddresses {
    /// IPv4 addresses assigned in the namespace: the `/32 host LOCAL` leaves
    /// of /proc/net/fib_trie, without loopback (127/8), each once.
    public static func ipv4(fibTrie text: String) -> [String] {
        var out: [String] = []
        var seen = Set<String>()
        var last: String?
        for line in text.split(separator: "\n") {
            let t = line.trimmingCharacters(in: " ")
            if t.hasPrefix("|-- ") {
                last = String(t.dropFirst(4))
            } else if t == "/32 host LOCAL", let a = last, !a.hasPrefix("127."), seen.insert(a).inserted {
                out.append(a)
            }
        }
        return out
    }

    /// Global-scope IPv6 addresses of /proc/net/if_inet6 (no loopback, no link-local), each once.
    public static func ipv6(ifInet6 text: String) -> [String] {
        var out: [String] = []
        var seen = Set<String>()
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 4, f[0].utf8.count == 32, f[3] == "00" else { continue }
            var bytes: [UInt8] = []
            var i = f[0].startIndex
            while i < f[0].endIndex {
                let j = f[0].index(i, offsetBy: 2)
                guard let b = UInt8(f[0][i..<j], radix: 16) else { break }
                bytes.append(b)
                i = j
            }
            guard bytes.count == 16 else { continue }
            let a = IPAddress16(bytes: bytes).description
            if seen.insert(a).inserted { out.append(a) }
        }
        return out
    }
}

/// One row of flowmeter_endpoint_info: an address on this node and who holds it.
public struct EndpointInfo: Sendable, Hashable {
    public var address: String
    public var service: String
    public var namespace: String
    public var workload: String
    public var pod: String
    public var node: String
    public init(address: String, service: String, namespace: String, workload: String, pod: String, node: String) {
        self.address = address; self.service = service; self.namespace = namespace; self.workload = workload
        self.pod = pod; self.node = node
    }

    /// The rows for a node: each pod address once (the pod's), then the
    /// node's own addresses that no pod holds (a hostNetwork pod shares
    /// them: its name wins, so an address has one row and the join in
    /// Prometheus is one-to-one), named `node:<node>`.
    public static func rows(pods: [(address: String, identity: PodIdentity)], nodeAddresses: [String], node: String) -> [EndpointInfo] {
        var out: [EndpointInfo] = []
        var taken = Set<String>()
        for (a, id) in pods.sorted(by: { ($0.address, $0.identity.metadata.pod) < ($1.address, $1.identity.metadata.pod) })
        where taken.insert(a).inserted {
            out.append(
                EndpointInfo(
                    address: a, service: id.service, namespace: id.metadata.namespace, workload: id.workload.name,
                    pod: id.metadata.pod, node: node))
        }
        for a in nodeAddresses where taken.insert(a).inserted {
            out.append(EndpointInfo(address: a, service: "node:\(node)", namespace: "", workload: "", pod: "", node: node))
        }
        return out
    }
}

extension Substring {
    fileprivate func trimmingCharacters(in c: Character) -> Substring {
        var s = self
        while s.first == c { s.removeFirst() }
        while s.last == c { s.removeLast() }
        return s
    }
}
