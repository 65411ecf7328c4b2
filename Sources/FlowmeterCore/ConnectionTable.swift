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
    public mutating func apply(_ records: [SocketEvent]) -> [SocketEvent] {
        records.enumerated()
            .sorted { ($0.element.timestampNanos, $0.offset) < ($1.element.timestampNanos, $1.offset) }
            .map { apply($0.element) }
    }

    /// Live sockets per IP protocol number.
    public func count(ipProtocol: UInt8) -> Int {
        active.values.reduce(0) { $0 + ($1.ipProtocol == ipProtocol ? 1 : 0) }
    }
}
