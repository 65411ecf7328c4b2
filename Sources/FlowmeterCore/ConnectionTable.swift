/// The daemon's table of live TCP connections and UDP sockets, fed by socket
/// records in timestamp order. Pure: the collector applies records and writes
/// what `apply` returns.
public struct ConnectionTable: Sendable {
    /// Live sockets by kernel socket address, as last reported.
    public private(set) var active: [UInt64: SocketEvent] = [:]
    /// UPDATE records for sockets the table did not know: their OPEN was lost
    /// (the ring was full), so the update opens them.
    public private(set) var adopted: UInt64 = 0

    public init() {}

    /// Applies one record; returns the record to log, completed from the table
    /// where the kernel could not fill it (a UDP close seen by a hook that
    /// cannot read the socket carries no addresses).
    public mutating func apply(_ e: SocketEvent) -> SocketEvent {
        var e = e
        let known = active[e.socketID]
        if let known, e.family == .other {
            e.family = known.family
            e.localAddress = known.localAddress
            e.remoteAddress = known.remoteAddress
            e.localPort = known.localPort
            e.remotePort = known.remotePort
        }
        switch e.kind {
        case .open:
            active[e.socketID] = e
        case .update:
            if known == nil { adopted += 1 }
            active[e.socketID] = e
        case .close, .failed:
            active[e.socketID] = nil
        }
        return e
    }

    /// Applies records in the order the kernel raised them: ring records and
    /// iterator updates come from different paths, and an update must not
    /// reopen a socket whose close came first.
    /// `more` follows `records` (ties keep that order). The records are
    /// sorted by index, not moved: a backlog of them is megabytes.
    public mutating func apply(_ records: [SocketEvent], _ more: [SocketEvent] = []) -> [SocketEvent] {
        let n = records.count
        func at(_ i: Int) -> SocketEvent { i < n ? records[i] : more[i - n] }
        let order = (0..<(n + more.count)).sorted { (at($0).timestampNanos, $0) < (at($1).timestampNanos, $1) }
        var out: [SocketEvent] = []
        out.reserveCapacity(order.count)
        for i in order { out.append(apply(at(i))) }
        return out
    }

    /// Gives back the memory of a burst: a dictionary keeps its capacity as
    /// it empties (after a ring overflow it may have held every socket whose
    /// close was lost until the sweep). Called once an interval.
    public mutating func compact() { active.shrinkIfSparse() }

    /// Live sockets per IP protocol number.
    public func count(ipProtocol: UInt8) -> Int {
        active.values.reduce(0) { $0 + ($1.ipProtocol == ipProtocol ? 1 : 0) }
    }
}

/// Finds sockets whose close record was lost (the events ring was full), so
/// the tables forget them: otherwise each overflow would leave its sockets
/// "live" for good, in `flowmeter_tcp_connections_active` and in memory.
///
/// Two ticks: when the kernel's lost count has grown, the collector reads the
/// ids the kernel still tracks (`record`); a socket the daemon holds that the
/// kernel has dropped has closed, and its close record was emitted before
/// that read. The next tick's drain takes everything emitted before it, so a
/// socket still held then, with no record since the read, lost its close
/// (`staleCloses`). Pure: the collector does the reading.
public struct LostCloseSweep: Sendable {
    private var lostSeen: UInt64 = 0
    private var candidates: (ids: Set<UInt64>, at: UInt64)?
    /// A read was cancelled: read again even if nothing more is lost (the
    /// loss may be over, and its sockets must still be found).
    private var readAgain = false

    public init() {}

    /// The kernel reports `lost` events lost in all: true if it grew since
    /// the last read, so the ids should be read now.
    public mutating func shouldRead(lost: UInt64) -> Bool {
        guard lost > lostSeen || readAgain else { return false }
        lostSeen = max(lostSeen, lost)
        readAgain = false
        return true
    }

    /// The kernel's live ids, read at `at` (CLOCK_MONOTONIC), after this
    /// tick's records were applied to `table`.
    public mutating func record(kernelIDs: Set<UInt64>, table: ConnectionTable, at: UInt64) {
        let gone = Set(table.active.keys.filter { !kernelIDs.contains($0) })
        candidates = gone.isEmpty ? nil : (gone, at)
    }

    /// Closes to apply for the candidates still in `table` with no record
    /// since the read; each carries its socket's last counters, so it adds
    /// nothing but the close itself. Clears the candidates.
    public mutating func staleCloses(table: ConnectionTable, now: UInt64) -> [SocketEvent] {
        guard let c = candidates else { return [] }
        candidates = nil
        return c.ids.sorted().compactMap { id -> SocketEvent? in
            guard var e = table.active[id], e.timestampNanos <= c.at else { return nil }
            e.kind = .close
            e.timestampNanos = max(now, e.timestampNanos)
            return e
        }
    }

    /// Forgets the candidates: a drain since the read may have left records
    /// in the kernel ring (its reader stopped at its limit). The next tick
    /// reads again.
    public mutating func cancel() {
        if candidates != nil { readAgain = true }
        candidates = nil
    }
}

extension Dictionary {
    /// A dictionary keeps its capacity as it empties: after a burst, give it
    /// back (a copy sized to what is left) once under an eighth of it is used.
    mutating func shrinkIfSparse() {
        if capacity > 4096 && count < capacity / 8 {
            self = Dictionary(uniqueKeysWithValues: lazy.map { ($0.key, $0.value) })
        }
    }
}
