import FlowmeterCore

/// One flow of a snapshot: its 5-tuple, interface and direction.
public struct FlowKey: Hashable, Sendable, Comparable {
    public var interface: String, direction: String, proto: String, src: String, dst: String
    public init(interface: String, direction: String, proto: String, src: String, dst: String) {
        self.interface = interface; self.direction = direction; self.proto = proto; self.src = src; self.dst = dst
    }
    public init(_ f: APISnapshot.Flow) {
        self.init(interface: f.interface, direction: f.direction, proto: f.protocol_, src: f.src, dst: f.dst)
    }
    public static func < (a: FlowKey, b: FlowKey) -> Bool {
        (a.interface, a.direction, a.proto, a.src, a.dst) < (b.interface, b.direction, b.proto, b.src, b.dst)
    }
}

/// The owner of connections in the processes view (a connection without
/// owner has neither).
public struct ProcessKey: Hashable, Sendable {
    public var pid: UInt32?, name: String?
    public init(pid: UInt32?, name: String?) { self.pid = pid; self.name = name }
    public init(_ c: APISnapshot.Connection) { self.init(pid: c.pid, name: c.process) }
}

/// a − b, saturating (times come from the wire).
func minus(_ a: Int64, _ b: Int64) -> Int64 {
    let (r, overflow) = a.subtractingReportingOverflow(b)
    return overflow ? (b > 0 ? Int64.min : Int64.max) : r
}

/// Transmit and receive, per second.
public struct Rate: Equatable, Sendable {
    public var tx: Double, rx: Double
    public init(tx: Double, rx: Double) { self.tx = tx; self.rx = rx }
    public static let zero = Rate(tx: 0, rx: 0)
    public var total: Double { tx + rx }
}

/// The snapshots of the last 60 seconds and the rates they give.
///
/// Counters in a snapshot are cumulative. The rate over a window of W
/// seconds is the increase from the oldest snapshot at most W seconds older
/// than the newest to the newest, divided by their time difference. The
/// increase is summed step by step over the snapshots between: a counter that
/// went down (the daemon restarted, a service pair expired and came back)
/// counts from 0 at that step, and a row missing from a snapshot counts as 0
/// there (a new pair, a new connection: all its traffic is new). When no
/// other snapshot is within the window (the stream paused longer than W), the
/// step from the previous snapshot is used; with one snapshot only, rates are 0.
///
/// Flows are per interval (the daemon's eviction interval, 5 s by default,
/// while snapshots come every second): consecutive snapshots repeat the same
/// interval's flows. A snapshot starts a new interval when its flows differ
/// from the previous snapshot's, or when an interval has passed since the
/// current list was last counted (the same traffic twice); a flow's total is
/// the sum over the intervals so started.
public struct History: Sendable, Equatable {
    public static let retentionMs: Int64 = 60_000

    struct FlowSample: Sendable, Equatable {
        var bytes: UInt64, packets: UInt64
        var service: String?, peer: String?
    }

    struct Entry: Sendable, Equatable {
        var snapshot: APISnapshot
        var services: [ServicePair: Int] = [:]
        var interfaces: [String: Int] = [:]
        var connections: [String: Int] = [:]
        var flows: [FlowKey: FlowSample] = [:]
        /// This snapshot's flows start a new interval (count toward totals).
        var countsFlows = true
        /// When the current flow list was last counted.
        var countedAt: Int64 = 0

        init(_ s: APISnapshot) {
            snapshot = s
            for (i, x) in s.services.enumerated() {
                services[ServicePair(service: x.service, peer: x.peer_service, transport: x.transport)] = i
            }
            for (i, x) in s.interfaces.enumerated() { interfaces[x.name] = i }
            for (i, x) in s.connections.enumerated() { connections[x.id] = i }
            for f in s.flows {
                let k = FlowKey(f)
                var v = flows[k] ?? FlowSample(bytes: 0, packets: 0, service: f.service, peer: f.peer_service)
                v.bytes &+= f.bytes
                v.packets &+= f.packets
                if v.service == nil { v.service = f.service; v.peer = f.peer_service }
                flows[k] = v
            }
            countedAt = s.time_unix_ms
        }

        var time: Int64 { snapshot.time_unix_ms }
        var intervalMs: Int64 {
            let ms = snapshot.interval_seconds * 1000
            return ms.isFinite && ms >= 1 ? Int64(min(ms, 1e15)) : 1000
        }

        func service(_ p: ServicePair) -> APISnapshot.Service? { services[p].map { snapshot.services[$0] } }
        func interface(_ n: String) -> APISnapshot.Interface? { interfaces[n].map { snapshot.interfaces[$0] } }
        func connection(_ id: String) -> APISnapshot.Connection? { connections[id].map { snapshot.connections[$0] } }
    }

    private(set) var entries: [Entry] = []

    public init() {}
    public init(_ snapshots: [APISnapshot]) { snapshots.forEach { add($0) } }

    /// Oldest first.
    public var snapshots: [APISnapshot] { entries.map(\.snapshot) }
    public var latest: APISnapshot? { entries.last?.snapshot }
    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }

    /// Adds a snapshot in time order (one with the time of a stored snapshot
    /// replaces it) and forgets those more than 60 s older than the newest.
    public mutating func add(_ s: APISnapshot) {
        let e = Entry(s)
        let i = entries.firstIndex { $0.time >= e.time } ?? entries.endIndex
        if i < entries.endIndex && entries[i].time == e.time { entries[i] = e } else { entries.insert(e, at: i) }
        for j in i..<entries.endIndex { mark(j) }
        let cutoff = minus(entries[entries.endIndex - 1].time, Self.retentionMs)
        entries.removeAll { $0.time < cutoff }
    }

    private mutating func mark(_ j: Int) {
        guard j > 0 else { entries[j].countsFlows = true; entries[j].countedAt = entries[j].time; return }
        let p = entries[j - 1]
        let e = entries[j]
        let fresh = e.flows != p.flows || minus(e.time, p.countedAt) >= e.intervalMs
        entries[j].countsFlows = fresh
        entries[j].countedAt = fresh ? e.time : p.countedAt
    }

    // MARK: Windows

    /// Indices from the base snapshot of a window to the newest; nil with
    /// fewer than two snapshots.
    func span(_ seconds: Int) -> ClosedRange<Int>? {
        guard entries.count >= 2 else { return nil }
        let last = entries.count - 1
        let cutoff = minus(entries[last].time, Int64(min(max(0, seconds), 1_000_000)) * 1000)
        var base = entries.firstIndex { $0.time >= cutoff } ?? last
        if base == last { base = last - 1 }
        return base...last
    }

    static func step(_ from: UInt64, _ to: UInt64) -> UInt64 { to >= from ? to - from : to }

    /// Increase of a counter over the window and the seconds it spans.
    func increase(_ seconds: Int, _ value: (Entry) -> UInt64?) -> (UInt64, Double)? {
        guard let r = span(seconds) else { return nil }
        var sum: UInt64 = 0
        var prev = value(entries[r.lowerBound]) ?? 0
        for i in (r.lowerBound + 1)...r.upperBound {
            let cur = value(entries[i]) ?? 0
            sum &+= Self.step(prev, cur)
            prev = cur
        }
        return (sum, Double(minus(entries[r.upperBound].time, entries[r.lowerBound].time)) / 1000)
    }

    func rate(_ seconds: Int, _ value: (Entry) -> UInt64?) -> Double {
        guard let (n, dt) = increase(seconds, value), dt > 0 else { return 0 }
        return Double(n) / dt
    }

    func rate(_ seconds: Int, tx: (Entry) -> UInt64?, rx: (Entry) -> UInt64?) -> Rate {
        Rate(tx: rate(seconds, tx), rx: rate(seconds, rx))
    }

    /// Per-second values between consecutive snapshots, oldest first, the
    /// last `count` of them (nil where the history does not reach).
    func perSecond(_ count: Int, _ value: (Entry) -> UInt64?) -> [Double?] {
        guard count > 0 else { return [] }
        var out: [Double?] = []
        let first = max(1, entries.count - count)
        if first < entries.count {
            var prev = value(entries[first - 1]) ?? 0
            for i in first..<entries.count {
                let cur = value(entries[i]) ?? 0
                let dt = Double(minus(entries[i].time, entries[i - 1].time)) / 1000
                out.append(dt > 0 ? Double(Self.step(prev, cur)) / dt : 0)
                prev = cur
            }
        }
        return [Double?](repeating: nil, count: count - out.count) + out
    }

    // MARK: Rates by row

    /// Payload bytes per second of a service pair (tx and rx).
    public func serviceRate(_ pair: ServicePair, window seconds: Int) -> Rate {
        rate(seconds, tx: { $0.service(pair)?.tx_bytes }, rx: { $0.service(pair)?.rx_bytes })
    }

    /// Increase of one of a pair's counters within the window.
    public func serviceIncrease(
        _ pair: ServicePair, window seconds: Int,
        _ counter: (APISnapshot.Service) -> UInt64
    ) -> UInt64 {
        increase(seconds) { $0.service(pair).map(counter) }?.0 ?? 0
    }

    /// Per second over the window of one of a pair's counters.
    public func serviceCounterRate(
        _ pair: ServicePair, window seconds: Int,
        _ counter: (APISnapshot.Service) -> UInt64
    ) -> Double {
        rate(seconds) { $0.service(pair).map(counter) }
    }

    /// L3 bytes per second of an interface.
    public func interfaceRate(_ name: String, window seconds: Int) -> Rate {
        rate(seconds, tx: { $0.interface(name)?.tx_bytes }, rx: { $0.interface(name)?.rx_bytes })
    }

    /// Packets per second of an interface.
    public func interfacePacketRate(_ name: String, window seconds: Int) -> Rate {
        rate(seconds, tx: { $0.interface(name)?.tx_packets }, rx: { $0.interface(name)?.rx_packets })
    }

    /// Bytes per second in and out over all interfaces (tx is out, rx is in).
    public func totalRate(window seconds: Int) -> Rate {
        let names = Set(span(seconds).map { r in r.flatMap { entries[$0].snapshot.interfaces.map(\.name) } } ?? [])
        return names.reduce(Rate.zero) { a, n in
            let r = interfaceRate(n, window: seconds)
            return Rate(tx: a.tx + r.tx, rx: a.rx + r.rx)
        }
    }

    /// A connection's bytes per second (tx: sent, rx: received).
    public func connectionRate(_ id: String, window seconds: Int) -> Rate {
        rate(seconds, tx: { $0.connection(id)?.bytes_sent }, rx: { $0.connection(id)?.bytes_received })
    }

    /// The sum of the rates of a process's connections in the newest
    /// snapshot (a connection that closed leaves with its traffic).
    public func processRate(_ p: ProcessKey, window seconds: Int) -> Rate {
        (latest?.connections ?? []).filter { ProcessKey($0) == p }.reduce(Rate.zero) { a, c in
            let r = connectionRate(c.id, window: seconds)
            return Rate(tx: a.tx + r.tx, rx: a.rx + r.rx)
        }
    }

    /// A flow's bytes per second: its bytes in the newest snapshot that has
    /// it, over that snapshot's interval; 0 if no snapshot has it.
    public func flowRate(_ key: FlowKey) -> Double {
        guard let e = entries.last(where: { $0.flows[key] != nil }), let f = e.flows[key] else { return 0 }
        return Double(f.bytes) / (Double(e.intervalMs) / 1000)
    }

    /// A flow's bytes summed over the intervals in the history.
    public func flowTotal(_ key: FlowKey) -> UInt64 {
        entries.reduce(0) { $1.countsFlows ? $0 &+ ($1.flows[key]?.bytes ?? 0) : $0 }
    }

    // MARK: Trends (tx + rx per second)

    public func serviceTrend(_ pair: ServicePair, count: Int) -> [Double?] {
        perSecond(count) { e in e.service(pair).map { $0.tx_bytes &+ $0.rx_bytes } }
    }

    public func interfaceTrend(_ name: String, count: Int) -> [Double?] {
        perSecond(count) { e in e.interface(name).map { $0.tx_bytes &+ $0.rx_bytes } }
    }

    /// One value per snapshot: the flow's rate in that snapshot's interval (0 without it).
    public func flowTrend(_ key: FlowKey, count: Int) -> [Double?] {
        guard count > 0 else { return [] }
        let values: [Double?] = entries.suffix(count).map { e in
            Double(e.flows[key]?.bytes ?? 0) / (Double(e.intervalMs) / 1000)
        }
        return [Double?](repeating: nil, count: count - values.count) + values
    }
}
