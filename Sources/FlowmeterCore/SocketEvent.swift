// Socket telemetry records as the daemon sees them (mirrors struct fm_sock_event).

/// The process that owns a socket.
public struct SocketOwner: Sendable, Hashable {
    public var tgid: UInt32
    public var pid: UInt32
    public var name: String
    public var cgroupID: UInt64
    public init(tgid: UInt32, pid: UInt32, name: String, cgroupID: UInt64) {
        self.tgid = tgid; self.pid = pid; self.name = name; self.cgroupID = cgroupID
    }
}

public struct SocketEvent: Sendable, Hashable {
    public enum Kind: UInt16, Sendable { case open = 1, close = 2, failed = 3, update = 4 }
    public enum Role: UInt8, Sendable { case unknown = 0, client = 1, server = 2 }
    public enum FailReason: UInt8, Sendable {
        case none = 0, refused = 1, timeout = 2, unreachable = 3, other = 4
        public var label: String {
            switch self {
            case .none: "none"
            case .refused: "refused"
            case .timeout: "timeout"
            case .unreachable: "unreachable"
            case .other: "other"
            }
        }
    }

    public var kind: Kind
    public var role: Role
    public var family: Family
    public var ipProtocol: UInt8
    public var reason: FailReason
    /// Kernel address of the socket: its identity while it lives.
    public var socketID: UInt64
    public var timestampNanos: UInt64
    public var startNanos: UInt64
    /// nil when the socket predates flowmeterd (all-zero owner in the kernel).
    public var owner: SocketOwner?
    public var localAddress: IPAddress16
    public var remoteAddress: IPAddress16
    public var localPort: UInt16
    public var remotePort: UInt16
    /// Close only: smoothed RTT, payload bytes each way, retransmitted segments, resets.
    public var srttMicros: UInt32
    public var bytesSent: UInt64
    public var bytesReceived: UInt64
    public var retransmits: UInt32
    public var resetsSent: UInt32
    public var resetsReceived: UInt32
    /// sk_err at the event (positive errno, 0 if none).
    public var error: UInt32

    public init(
        kind: Kind, role: Role, family: Family, ipProtocol: UInt8, reason: FailReason, socketID: UInt64,
        timestampNanos: UInt64, startNanos: UInt64, owner: SocketOwner?, localAddress: IPAddress16,
        remoteAddress: IPAddress16, localPort: UInt16, remotePort: UInt16, srttMicros: UInt32,
        bytesSent: UInt64, bytesReceived: UInt64, retransmits: UInt32, resetsSent: UInt32,
        resetsReceived: UInt32, error: UInt32
    ) {
        self.kind = kind; self.role = role; self.family = family; self.ipProtocol = ipProtocol; self.reason = reason
        self.socketID = socketID; self.timestampNanos = timestampNanos; self.startNanos = startNanos; self.owner = owner
        self.localAddress = localAddress; self.remoteAddress = remoteAddress; self.localPort = localPort
        self.remotePort = remotePort; self.srttMicros = srttMicros; self.bytesSent = bytesSent
        self.bytesReceived = bytesReceived; self.retransmits = retransmits; self.resetsSent = resetsSent
        self.resetsReceived = resetsReceived; self.error = error
    }
}
