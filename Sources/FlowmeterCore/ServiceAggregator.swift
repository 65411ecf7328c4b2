// Per service pair accounting: who talks to whom, how much, how fast, how
// badly. Pure state fed by socket records and tc flows; the exporter renders
// it on each scrape.
//
// Counting rules (docs/services.md, "Per-service metrics"):
//  - Payload bytes come from socket records. Those carry a socket's counters
//    so far (update, close); the aggregator adds the difference to the last
//    record of the same socket, so a counter never goes back and nothing is
//    counted twice. A socket whose open predates flowmeterd (its close arrives
//    with no open and no start time) adds nothing: its bytes were sent before
//    we started, and adding them at close would make a burst that never was.
//  - Packets come from tc flows, joined to the socket that owns the 5-tuple
//    (live, or closed less than `joinGrace` ago). A TCP or UDP flow no socket
//    owns (a socket of another host forwarded through this one, or one opened
//    before flowmeterd) counts under service "unknown". Other protocols
//    (ICMP, ...) have no service and count only on the interface metrics.
//  - A pair is (service, peer_service, transport). At most `maxSeriesPerMetric`
//    pairs exist; a new pair past the cap folds into (service, "other"), and
//    if that is new too, into ("other", "other"): those two per transport are
//    always allowed, so memory stays bounded. Each fold counts in
//    `seriesDropped`.
//  - A pair with no live connection and no traffic for `seriesExpiry` is
//    dropped; it vanishes from /metrics (Prometheus sees the series end).
//  - A new pair is shown with zero counters until one scrape has seen it.
//    Prometheus computes rate() and increase() from the second sample of a
//    series on; a series that first appears with a short connection's whole
//    transfer would lose that transfer from every rate.

/// The labels of one per-service series (besides direction or role).
public struct ServicePair: Sendable, Hashable, Comparable {
    public var service: String
    public var peer: String
    public var transport: String
    public init(service: String, peer: String, transport: String) {
        self.service = service; self.peer = peer; self.transport = transport
    }
    public static func < (a: ServicePair, b: ServicePair) -> Bool {
        (a.service, a.peer, a.transport) < (b.service, b.peer, b.transport)
    }
}

/// A fixed-bucket histogram (Prometheus "le" buckets; counts per bucket, not cumulative).
public struct Histogram: Sendable, Equatable {
    /// Upper bounds of the TCP RTT buckets, in seconds: 100 µs (loopback,
    /// same rack) to 2.5 s (a congested intercontinental path).
    public static let rttBuckets: [Double] = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
        0.05, 0.1, 0.25, 0.5, 1, 2.5,
    ]
    public let bounds: [Double]
    /// counts[i]: observations in (bounds[i-1], bounds[i]]; the last entry is above every bound.
    public private(set) var counts: [UInt64]
    public private(set) var sum: Double = 0
    public private(set) var count: UInt64 = 0

    public init(bounds: [Double] = Histogram.rttBuckets) {
        self.bounds = bounds
        counts = [UInt64](repeating: 0, count: bounds.count + 1)
    }

    public mutating func observe(_ v: Double) {
        var i = 0
        while i < bounds.count && v > bounds[i] { i += 1 }
        counts[i] += 1
        sum += v
        count += 1
    }

    /// Cumulative counts per bound, then +Inf (what the exposition prints).
    public var cumulative: [UInt64] {
        var run: UInt64 = 0
        return counts.map {
            run += $0; return run
        }
    }
}

/// Everything counted for one service pair.
public struct PairStats: Sendable, Equatable {
    /// Payload bytes, by Direction.rawValue (0 receive, 1 transmit).
    public var bytes: [UInt64] = [0, 0]
    /// tc packets, by Direction.rawValue.
    public var packets: [UInt64] = [0, 0]
    /// TCP connections opened, by role (0 client, 1 server).
    public var opened: [UInt64] = [0, 0]
    /// TCP connects that failed (client side), by reason label.
    public var failed: [String: UInt64] = [:]
    /// Live TCP connections, by role (0 client, 1 server).
    public var active: [Int] = [0, 0]
    public var retransmits: UInt64 = 0
    /// TCP resets, by Direction.rawValue (transmit: sent, receive: received).
    public var resets: [UInt64] = [0, 0]
    /// Smoothed RTT of TCP connections, one sample per update and one at close.
    public var rtt = Histogram()
    /// Packets the kernel dropped, by reason (the drop program).
    public var drops: [String: UInt64] = [:]
    /// DNS queries local clients of the pair's service sent to the peer (the DNS program).
    public var dns = DNSStats()
    /// CLOCK_MONOTONIC of the last record that touched the pair.
    public var lastActiveNanos: UInt64 = 0

    public init() {}
}

public struct ServiceAggregator: Sendable {
    public private(set) var pairs: [ServicePair: PairStats] = [:]
    public private(set) var seriesDropped: UInt64 = 0
    /// Pairs no scrape has seen yet: rendered with zero counters.
    public private(set) var unexposed: Set<ServicePair> = []
    public private(set) var limits: AggregationLimits
    private var resolver: ServiceResolver
    /// How long a closed socket's 5-tuple still claims tc flows: the flows of
    /// its last interval are evicted after its close record arrived.
    public let joinGrace: UInt64

    // Looked up for every tc flow of every tick: hashed as packed words, not field by field.
    struct Endpoint: Hashable {
        var proto: UInt8; var address: IPAddress16; var port: UInt16
        func hash(into h: inout Hasher) {
            h.combine(address.hi)
            h.combine(address.lo)
            h.combine(UInt32(proto) | UInt32(port) << 8)
        }
    }
    struct Tuple: Hashable {
        var proto: UInt8; var local: IPAddress16; var localPort: UInt16; var remote: IPAddress16; var remotePort: UInt16
        func hash(into h: inout Hasher) {
            h.combine(local.hi)
            h.combine(local.lo)
            h.combine(remote.hi)
            h.combine(remote.lo)
            h.combine(UInt64(proto) | UInt64(localPort) << 8 | UInt64(remotePort) << 24)
        }
    }

    /// A live socket: its pair, role and the counters of its last record.
    struct Tracked {
        var pair: ServicePair
        var role: SocketEvent.Role
        var counted: Bool
        var sent: UInt64 = 0, received: UInt64 = 0, retransmits: UInt64 = 0
        var resetsSent: UInt64 = 0, resetsReceived: UInt64 = 0
        var tuple: Tuple
        var local: Endpoint
    }
    private var sockets: [UInt64: Tracked] = [:]
    /// Local endpoints of sockets seen, with their service: a peer on this
    /// node is named by them. Kept while a socket on them lives, then for
    /// `seriesExpiry` if a server socket used them (a client may connect to
    /// it again, and its open can be in an earlier batch than the server's),
    /// else for `joinGrace`: a client's ephemeral port is never asked for
    /// again once its connection's last records are in, and under churn
    /// keeping every one for minutes was most of the daemon's memory.
    private var endpoints: [Endpoint: EndpointUse] = [:]
    struct EndpointUse {
        var service: String
        var liveCount: Int
        var lastSeen: UInt64
        /// A server socket (accepted TCP, or UDP that received first) used it.
        var serves: Bool
    }
    /// 5-tuples of sockets (local end first) with their pair, for tc flows;
    /// `closedAt` is set when the socket closed.
    private var tuples: [Tuple: (pair: ServicePair, closedAt: UInt64?)] = [:]

    public init(resolver: ServiceResolver, limits: AggregationLimits, joinGrace: UInt64 = 5_000_000_000) {
        self.resolver = resolver; self.limits = limits; self.joinGrace = joinGrace
    }

    /// New rules and caps (SIGHUP). Counters stay with their series; a live
    /// socket moves to the pair the new rules give it at its next record.
    public mutating func reconfigure(resolver: ServiceResolver, limits: AggregationLimits) {
        self.resolver = resolver
        self.limits = limits
        rules += 1
    }
    /// Names became known that were not (the runtime answered a pod
    /// lookup): every live socket is resolved again at its next record, so
    /// a pod named `pod:<uid>` while its lookup was pending moves to its
    /// workload. Counters stay where they were counted.
    public mutating func namesChanged() { rules += 1 }
    /// Bumped on each reconfigure: a socket resolved under older rules is resolved again.
    private var rules = 0
    private var resolvedUnder: [UInt64: Int] = [:]

    /// Live TCP connections and UDP sockets being tracked.
    public var trackedSockets: Int { sockets.count }

    // MARK: socket records

    /// Applies socket records in the order given (the connection table's
    /// timestamp order). `cgroupPath` resolves an owner's cgroup id.
    /// `pod` gives the Kubernetes identity of an owner's cgroup id, when the
    /// runtime has named it.
    public mutating func apply(
        _ events: [SocketEvent], cgroupPath: (UInt64) -> String?, pod: (UInt64) -> PodIdentity? = { _ in nil }
    ) {
        // Register every local endpoint first: a client's open usually comes
        // before the server's (the server's socket is established one ACK
        // later), and both are in the same batch.
        // A new socket's service replaces what an earlier one on the same
        // endpoint was called (the rules may have changed since).
        for e in events where e.kind != .failed && e.kind != .close && e.family != .other && sockets[e.socketID] == nil {
            let ep = Endpoint(proto: e.ipProtocol, address: e.localAddress, port: e.localPort)
            let service = localService(e, cgroupPath: cgroupPath, pod: pod)
            var known = endpoints[ep] ?? EndpointUse(service: service, liveCount: 0, lastSeen: e.timestampNanos, serves: false)
            known.service = service
            known.lastSeen = e.timestampNanos
            known.serves = known.serves || e.role == .server
            endpoints[ep] = known
        }
        for e in events {
            apply(e, cgroupPath: cgroupPath, pod: pod)
            if e.kind == .close { trimClosed() }
        }
    }

    /// At most this many 5-tuples of closed sockets, and of endpoints no live
    /// socket uses, are remembered. Both are kept only for the join grace,
    /// so they number (connections closed per second) × `joinGrace`: past
    /// 4,000 connections a second that would be hundreds of thousands. The
    /// oldest go first, down to half the cap; a flow whose tuple went counts
    /// under "unknown". Checked at every close, so a dictionary never grows
    /// past 65,536 buckets for them (a Swift dictionary fills to 3/4).
    public static let maxClosedTuples = 40_000
    public static let maxIdleEndpoints = 40_000

    /// Drops the oldest closed tuples and idle endpoints past their caps, down to half the cap.
    private mutating func trimClosed() {
        if tuples.count - sockets.count > Self.maxClosedTuples {
            let closed = tuples.compactMap { $0.value.closedAt }
            if closed.count > Self.maxClosedTuples {
                let cutoff = closed.sorted()[closed.count - Self.maxClosedTuples / 2 - 1]
                tuples = tuples.filter { $0.value.closedAt.map { $0 > cutoff } ?? true }
            }
        }
        if endpoints.count - sockets.count > Self.maxIdleEndpoints {
            // Clients' ports first: a server's endpoint is what names the peer of a new connection.
            func rank(_ v: EndpointUse) -> (Int, UInt64) { (v.serves ? 1 : 0, v.lastSeen) }
            let idle = endpoints.values.filter { $0.liveCount == 0 }.map(rank)
            if idle.count > Self.maxIdleEndpoints {
                let cutoff = idle.sorted(by: <)[idle.count - Self.maxIdleEndpoints / 2 - 1]
                endpoints = endpoints.filter { $0.value.liveCount > 0 || rank($0.value) > cutoff }
            }
        }
    }

    private func localService(_ e: SocketEvent, cgroupPath: (UInt64) -> String?, pod: (UInt64) -> PodIdentity?) -> String {
        resolver.localService(
            cgroupPath: e.owner.flatMap { cgroupPath($0.cgroupID) }, process: e.owner?.name,
            address: e.localAddress, port: e.localPort, pod: e.owner.flatMap { pod($0.cgroupID) })
    }

    /// The peer's name. The order (docs/services.md, "Naming peers"): peer
    /// rules, then a local socket on the address and port, then the name the
    /// local client (`cgroup`, of a socket record at `now`) resolved to the
    /// address, then the address (with `peerAddresses`) or "unknown".
    private func peerService(proto: UInt8, address: IPAddress16, port: UInt16, cgroup: UInt64? = nil, now: UInt64 = 0) -> String {
        if let name = resolver.peerService(address: address, port: port) { return name }
        if address != .zero && !(address.isV4Mapped && address.lo & 0xFFFF_FFFF == 0) {
            // A local endpoint nothing could name (a socket older than us) is
            // as unknown as a remote peer: with peer addresses on, it gets its
            // address too, which Prometheus can name from another flowmeterd's
            // flowmeter_endpoint_info (docs/kubernetes.md).
            func named(_ e: EndpointUse?) -> String? {
                guard let e, !(limits.peerAddresses && e.service == "unknown") else { return nil }
                return e.service
            }
            if let known = named(endpoints[Endpoint(proto: proto, address: address, port: port)]) { return known }
            let any = address.isV4Mapped ? IPAddress16.v4(0, 0, 0, 0) : .zero
            if let known = named(endpoints[Endpoint(proto: proto, address: any, port: port)]) { return known }
            if let naming = dnsNaming, let cgroup, let name = dnsNames.name(cgroup: cgroup, address: address, now: now) {
                return naming.peerName(name)
            }
            if limits.peerAddresses { return address.description }
        }
        return "unknown"
    }

    /// Updates a pair's stats in place, with one hash lookup for all of an
    /// event's fields. `pairs[p]?.x += 1` hashes the pair's three strings and
    /// moves the whole PairStats out of the table and back for every field,
    /// and `var s = pairs[p]; ...; pairs[p] = s` copies each array it
    /// touches: together a quarter of the daemon's CPU under connection
    /// churn (perf, docs/benchmarks.md).
    @inline(__always)
    private mutating func withStats(_ p: ServicePair, _ body: (inout PairStats) -> Void) {
        guard let i = pairs.index(forKey: p) else { return }
        body(&pairs.values[i])
    }

    private static func transport(_ proto: UInt8) -> String? { proto == 6 ? "tcp" : proto == 17 ? "udp" : nil }

    /// The pair for a new series, folded past the cap. `times`: how many
    /// records in a row ask for `p` (a flow summed over several); each that
    /// folds counts in `seriesDropped`, as it would one by one.
    private mutating func admit(_ p: ServicePair, times: UInt64 = 1) -> ServicePair {
        // index(forKey:), not `pairs[p] != nil`, which copies the stats out.
        if pairs.index(forKey: p) != nil { return p }
        if pairs.count < limits.maxSeriesPerMetric {
            pairs[p] = PairStats()
            unexposed.insert(p)
            return p
        }
        let peerFold = ServicePair(service: p.service, peer: "other", transport: p.transport)
        let allFold = ServicePair(service: "other", peer: "other", transport: p.transport)
        // p == allFold: the first record inserts it, and the rest find it.
        seriesDropped += p == allFold ? 1 : times
        if pairs.index(forKey: peerFold) != nil { return peerFold }
        if pairs.index(forKey: allFold) == nil {
            pairs[allFold] = PairStats()
            unexposed.insert(allFold)
        }
        return allFold
    }

    private mutating func resolve(_ e: SocketEvent, cgroupPath: (UInt64) -> String?, pod: (UInt64) -> PodIdentity?) -> ServicePair? {
        guard let transport = Self.transport(e.ipProtocol) else { return nil }
        return admit(
            ServicePair(
                service: localService(e, cgroupPath: cgroupPath, pod: pod),
                peer: peerService(
                    proto: e.ipProtocol, address: e.remoteAddress, port: e.remotePort, cgroup: e.owner?.cgroupID,
                    now: e.timestampNanos),
                transport: transport))
    }

    private mutating func apply(_ e: SocketEvent, cgroupPath: (UInt64) -> String?, pod: (UInt64) -> PodIdentity?) {
        let now = e.timestampNanos
        if e.kind == .failed {
            guard let p = resolve(e, cgroupPath: cgroupPath, pod: pod) else { return }
            withStats(p) {
                $0.failed[e.reason.label, default: 0] += 1
                $0.lastActiveNanos = now
            }
            return
        }
        var t: Tracked
        if let known = sockets[e.socketID], resolvedUnder[e.socketID] == rules || e.family == .other {
            t = known
        } else {
            guard e.family != .other, let p = resolve(e, cgroupPath: cgroupPath, pod: pod) else { return }
            let local = Endpoint(proto: e.ipProtocol, address: e.localAddress, port: e.localPort)
            let tuple = Tuple(
                proto: e.ipProtocol, local: e.localAddress, localPort: e.localPort,
                remote: e.remoteAddress, remotePort: e.remotePort)
            if var known = sockets[e.socketID] {
                // Re-resolved under new rules: the live count moves with it.
                if known.pair != p, e.ipProtocol == 6, known.role != .unknown {
                    pairs[known.pair]?.active[Self.roleIndex(known.role)] -= 1
                    pairs[p]?.active[Self.roleIndex(known.role)] += 1
                }
                known.pair = p
                tuples[known.tuple] = (p, nil)
                // Its endpoint names it as a peer: by the new name from now on.
                endpoints[known.local]?.service = p.service
                t = known
            } else {
                // A socket we never saw open: counted from here on only if it
                // opened while we ran (its open record was lost).
                let counted = e.kind == .open || e.startNanos != 0
                t = Tracked(pair: p, role: e.role, counted: counted, tuple: tuple, local: local)
                if !counted {
                    t.sent = e.bytesSent; t.received = e.bytesReceived; t.retransmits = UInt64(e.retransmits)
                    t.resetsSent = UInt64(e.resetsSent); t.resetsReceived = UInt64(e.resetsReceived)
                }
                if e.ipProtocol == 6 && e.kind != .close && e.role != .unknown {
                    withStats(p) {
                        if e.kind == .open { $0.opened[Self.roleIndex(e.role)] += 1 }
                        $0.active[Self.roleIndex(e.role)] += 1
                    }
                }
                // In place, as for pairs (withStats).
                if let i = endpoints.index(forKey: local) {
                    endpoints.values[i].service = p.service
                    endpoints.values[i].liveCount += 1
                    endpoints.values[i].lastSeen = now
                    if e.role == .server { endpoints.values[i].serves = true }
                } else {
                    endpoints[local] = EndpointUse(service: p.service, liveCount: 1, lastSeen: now, serves: e.role == .server)
                }
                tuples[tuple] = (p, nil)
            }
            resolvedUnder[e.socketID] = rules
        }
        // The pair may have expired while the socket idled (UDP has no live
        // count to keep it): admit it again, folded if the cap says so.
        let p = admit(t.pair)
        t.pair = p
        var dSent: UInt64 = 0, dRecv: UInt64 = 0, dRetr: UInt64 = 0, dRstS: UInt64 = 0, dRstR: UInt64 = 0
        let counts = e.kind == .update || e.kind == .close
        if counts {
            func delta(_ new: UInt64, _ old: inout UInt64) -> UInt64 {
                defer { old = new }
                return new >= old ? new - old : new
            }
            dSent = delta(e.bytesSent, &t.sent)
            dRecv = delta(e.bytesReceived, &t.received)
            dRetr = delta(UInt64(e.retransmits), &t.retransmits)
            dRstS = delta(UInt64(e.resetsSent), &t.resetsSent)
            dRstR = delta(UInt64(e.resetsReceived), &t.resetsReceived)
        }
        let closesLive = e.kind == .close && e.ipProtocol == 6 && e.role != .unknown && t.counted
        let role = t.role
        withStats(p) { s in
            if counts {
                s.bytes[Int(Direction.transmit.rawValue)] += dSent
                s.bytes[Int(Direction.receive.rawValue)] += dRecv
                if e.ipProtocol == 6 {
                    s.retransmits += dRetr
                    s.resets[Int(Direction.transmit.rawValue)] += dRstS
                    s.resets[Int(Direction.receive.rawValue)] += dRstR
                    if e.srttMicros > 0 { s.rtt.observe(Double(e.srttMicros) / 1e6) }
                }
            }
            s.lastActiveNanos = now
            if closesLive { s.active[Self.roleIndex(role)] -= 1 }
        }
        if e.kind == .close {
            if let i = endpoints.index(forKey: t.local) {
                endpoints.values[i].liveCount = max(0, endpoints.values[i].liveCount - 1)
                endpoints.values[i].lastSeen = now
            }
            tuples[t.tuple] = (p, now)
            sockets[e.socketID] = nil
            resolvedUnder[e.socketID] = nil
        } else {
            sockets[e.socketID] = t
        }
    }

    private static func roleIndex(_ r: SocketEvent.Role) -> Int { r == .server ? 1 : 0 }

    // MARK: tc flows

    /// Adds tc flows' packets to the pair of the socket owning each 5-tuple.
    /// Returns the pair each flow was counted under (nil: not a TCP or UDP flow).
    @discardableResult
    public mutating func apply(flows: [FlowRecord], now: UInt64) -> [ServicePair?] {
        count(flows.count, now: now) { i in (flows[i].key, flows[i].stats.packets, 1) }
    }

    /// The same for flows summed per key (what the collector does with each
    /// tick's records): one resolution per flow instead of per record, with
    /// the same counts. Returns the pair of each entry, in entry order.
    @discardableResult
    public mutating func apply(flows table: FlowTable, now: UInt64) -> [ServicePair?] {
        count(table.count, now: now) { i in
            let e = table[i]
            return (e.key, e.packets, e.records)
        }
    }

    /// Counts `n` flows, each `records` records asking for the same pair.
    private mutating func count(_ n: Int, now: UInt64, flow: (Int) -> (key: FlowKey, packets: UInt64, records: UInt64)) -> [ServicePair?] {
        var out: [ServicePair?] = []
        out.reserveCapacity(n)
        // A tick's flows resolve to few pairs, and looking a pair up hashes
        // its three strings. So the pairs met last are kept here with their
        // packets, compared by equality (cheap for short strings), and
        // credited once when they leave or at the end. Admission is not
        // deferred: its order decides what folds past the cap.
        var recent: [RecentPair] = []
        recent.reserveCapacity(Self.recentPairs)
        var oldest = 0
        func credit(_ r: RecentPair) {
            guard let at = pairs.index(forKey: r.got) else { return }
            pairs.values[at].packets[Int(Direction.receive.rawValue)] += r.received
            pairs.values[at].packets[Int(Direction.transmit.rawValue)] += r.transmitted
            pairs.values[at].lastActiveNanos = max(pairs.values[at].lastActiveNanos, now)
        }
        for i in 0..<n {
            let f = flow(i)
            guard let asked = pair(of: f.key) else { out.append(nil); continue }
            var slot = -1
            for k in recent.indices where recent[k].asked == asked { slot = k; break }
            if slot >= 0 {
                // What admit would do again: a pair that folded folds again.
                if recent[slot].got != asked { seriesDropped += f.records }
            } else {
                let got = admit(asked, times: f.records)
                if recent.count < Self.recentPairs {
                    slot = recent.count
                    recent.append(RecentPair(asked: asked, got: got))
                } else {
                    slot = oldest
                    oldest = (oldest + 1) % Self.recentPairs
                    credit(recent[slot])
                    recent[slot] = RecentPair(asked: asked, got: got)
                }
            }
            if f.key.direction == .receive { recent[slot].received += f.packets } else { recent[slot].transmitted += f.packets }
            out.append(recent[slot].got)
        }
        recent.forEach(credit)
        return out
    }

    static let recentPairs = 8

    /// A pair met lately in `count`: what was asked, what admission gave, packets not yet credited.
    struct RecentPair {
        var asked: ServicePair
        var got: ServicePair
        var received: UInt64 = 0
        var transmitted: UInt64 = 0
    }

    /// The pair a TCP or UDP flow's socket belongs to (before the cap), nil for other protocols.
    private func pair(of k: FlowKey) -> ServicePair? {
        guard k.family != .other, let transport = Self.transport(k.ipProtocol) else { return nil }
        let outbound = k.direction == .transmit
        let local = outbound ? k.source : k.destination, remote = outbound ? k.destination : k.source
        let lport = outbound ? k.sourcePort : k.destinationPort, rport = outbound ? k.destinationPort : k.sourcePort
        if let p = tuples[Tuple(proto: k.ipProtocol, local: local, localPort: lport, remote: remote, remotePort: rport)]?.pair {
            return p
        }
        // An unconnected UDP socket: its tuple has no remote end.
        if let p = tuples[Tuple(proto: k.ipProtocol, local: local, localPort: lport, remote: .zero, remotePort: 0)]?.pair {
            return p
        }
        return ServicePair(
            service: "unknown", peer: peerService(proto: k.ipProtocol, address: remote, port: rport),
            transport: transport)
    }

    // MARK: drops

    /// Adds dropped packets to the pair of the socket their 5-tuple belongs
    /// to. A drop no socket can be tied to (forwarded traffic, a peer no
    /// local socket talks to) counts on its interface only.
    public mutating func apply(drops: [DropSample], now: UInt64) {
        for d in drops where d.packets > 0 {
            guard let asked = dropPair(of: d.key.flow) else { continue }
            let p = admit(asked)
            withStats(p) {
                $0.drops[d.reason, default: 0] += d.packets
                $0.lastActiveNanos = max($0.lastActiveNanos, now)
            }
        }
    }

    /// The pair of the socket a dropped packet belongs to, before the cap;
    /// nil when it belongs to none. The socket may be at either end: the
    /// drop's direction says which end is local to the interface, but the
    /// sender's socket may live in another namespace of this node (a
    /// datagram to a closed port belongs to the socket that sent it). So
    /// the connected 5-tuple is tried both ways, then an unconnected UDP
    /// socket's, then a local service's endpoint (a listener's port).
    func dropPair(of k: FlowKey) -> ServicePair? {
        guard k.family != .other, let transport = Self.transport(k.ipProtocol) else { return nil }
        let ends: [(local: IPAddress16, lport: UInt16, remote: IPAddress16, rport: UInt16)] = [
            (k.destination, k.destinationPort, k.source, k.sourcePort),
            (k.source, k.sourcePort, k.destination, k.destinationPort),
        ]
        let order = k.direction == .transmit ? [1, 0] : [0, 1]
        for i in order {
            let e = ends[i]
            if let p = tuples[Tuple(proto: k.ipProtocol, local: e.local, localPort: e.lport, remote: e.remote, remotePort: e.rport)]?.pair {
                return p
            }
        }
        for i in order {
            let e = ends[i]
            if let p = tuples[Tuple(proto: k.ipProtocol, local: e.local, localPort: e.lport, remote: .zero, remotePort: 0)]?.pair {
                return p
            }
        }
        for i in order {
            let e = ends[i]
            let any = e.local.isV4Mapped ? IPAddress16.v4(0, 0, 0, 0) : .zero
            if let ep = endpoints[Endpoint(proto: k.ipProtocol, address: e.local, port: e.lport)]
                ?? endpoints[Endpoint(proto: k.ipProtocol, address: any, port: e.lport)]
            {
                return ServicePair(
                    service: ep.service, peer: peerService(proto: k.ipProtocol, address: e.remote, port: e.rport),
                    transport: transport)
            }
        }
        return nil
    }

    // MARK: DNS

    /// Names local clients resolved (peer naming); nil `dnsNaming`: off.
    public private(set) var dnsNames = DNSNameCache()
    public private(set) var dnsNaming: DNSPeerNaming?

    /// Names peers by what local clients resolved from now on.
    public mutating func nameByDNS(_ naming: DNSPeerNaming, graceNanos: UInt64, capacity: Int = 65536) {
        dnsNaming = naming
        dnsNames = DNSNameCache(capacity: capacity, graceNanos: graceNanos)
    }

    /// Learns the names of answered queries, before the socket records of
    /// the same pass: a client connects right after its answer.
    public mutating func learn(dns outcomes: [DNSOutcome]) {
        guard dnsNaming != nil else { return }
        for o in outcomes where o.latency != nil { dnsNames.learn(o) }
    }

    /// Counts each query once, as it ended (answered, or timed out), on the
    /// pair of the client's socket and the server.
    /// Returns the pair each was counted under.
    @discardableResult
    public mutating func apply(dns outcomes: [DNSOutcome]) -> [ServicePair?] {
        var out: [ServicePair?] = []
        for o in outcomes {
            guard let transport = Self.transport(o.key.ipProtocol) else { out.append(nil); continue }
            let p = admit(
                ServicePair(
                    service: clientService(o.key) ?? "unknown",
                    peer: peerService(proto: o.key.ipProtocol, address: o.key.server, port: o.key.serverPort),
                    transport: transport))
            out.append(p)
            withStats(p) {
                $0.dns.requests[DNSStats.Labels(qtype: o.qtype, rcode: o.rcode), default: 0] += 1
                if let l = o.latency { $0.dns.latency.observe(l) }
                $0.lastActiveNanos = max($0.lastActiveNanos, o.timestampNanos)
            }
        }
        return out
    }

    /// The service of the local client that sent a query: its socket's
    /// (connected, else unconnected), else its endpoint's. Only the
    /// client's end is looked at: the server may be local too, and its
    /// socket is not who asked.
    func clientService(_ k: DNSQueryKey) -> String? {
        let t = Tuple(proto: k.ipProtocol, local: k.client, localPort: k.clientPort, remote: k.server, remotePort: k.serverPort)
        if let p = tuples[t]?.pair { return p.service }
        if let p = tuples[Tuple(proto: k.ipProtocol, local: k.client, localPort: k.clientPort, remote: .zero, remotePort: 0)]?.pair {
            return p.service
        }
        let any = k.client.isV4Mapped ? IPAddress16.v4(0, 0, 0, 0) : .zero
        return
            (endpoints[Endpoint(proto: k.ipProtocol, address: k.client, port: k.clientPort)]
            ?? endpoints[Endpoint(proto: k.ipProtocol, address: any, port: k.clientPort)])?.service
    }

    /// A scrape has rendered every current pair: from now on with their counts.
    public mutating func markExposed(_ seen: Set<ServicePair>) {
        unexposed.subtract(seen)
    }

    /// What a scrape shows for a pair: its counts, or zeros (with its live
    /// connections) while no scrape has seen it.
    public func exposed(_ p: ServicePair, _ s: PairStats) -> PairStats {
        guard unexposed.contains(p) else { return s }
        var z = PairStats()
        z.active = s.active
        return z
    }

    // MARK: expiry

    /// Endpoints and 5-tuples remembered (for tests of their expiry).
    public var remembered: (endpoints: Int, tuples: Int) { (endpoints.count, tuples.count) }

    /// Drops idle pairs, and closed sockets' endpoints and tuples past their time.
    public mutating func expire(now: UInt64) {
        let ttl = limits.seriesExpiry.nanoseconds
        for (p, s) in pairs where s.active == [0, 0] && now > s.lastActiveNanos && now - s.lastActiveNanos >= ttl {
            pairs[p] = nil
            unexposed.remove(p)
        }
        for (ep, v) in endpoints where v.liveCount == 0 && now > v.lastSeen && now - v.lastSeen >= (v.serves ? ttl : joinGrace) {
            endpoints[ep] = nil
        }
        for (t, v) in tuples {
            if let closed = v.closedAt, now > closed, now - closed >= joinGrace { tuples[t] = nil }
        }
        dnsNames.expire(now: now)
        tuples.shrinkIfSparse()
        endpoints.shrinkIfSparse()
        sockets.shrinkIfSparse()
        resolvedUnder.shrinkIfSparse()
    }
}
