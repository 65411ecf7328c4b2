import FlowmeterCore
import Testing

@Suite struct ConnectionTableTests {
    static func event(_ kind: SocketEvent.Kind, id: UInt64, ts: UInt64, proto: UInt8 = 6, family: Family = .ipv4,
                      sent: UInt64 = 0) -> SocketEvent {
        SocketEvent(kind: kind, role: .client, family: family, ipProtocol: proto, reason: .none, socketID: id,
                    timestampNanos: ts, startNanos: 1, owner: nil,
                    localAddress: family == .other ? .v4(0, 0, 0, 0) : .v4(10, 0, 0, 1),
                    remoteAddress: family == .other ? .v4(0, 0, 0, 0) : .v4(10, 0, 0, 2),
                    localPort: family == .other ? 0 : 4000, remotePort: family == .other ? 0 : 53, srttMicros: 0,
                    bytesSent: sent, bytesReceived: 0, retransmits: 0, resetsSent: 0, resetsReceived: 0, error: 0)
    }

    @Test func openUpdateCloseTracksLiveSockets() {
        var t = ConnectionTable()
        _ = t.apply([Self.event(.open, id: 1, ts: 10), Self.event(.open, id: 2, ts: 11, proto: 17)])
        #expect(t.count(ipProtocol: 6) == 1 && t.count(ipProtocol: 17) == 1)
        _ = t.apply([Self.event(.update, id: 1, ts: 20, sent: 5)])
        #expect(t.active[1]?.bytesSent == 5 && t.adopted == 0)
        _ = t.apply([Self.event(.close, id: 1, ts: 30, sent: 9), Self.event(.failed, id: 3, ts: 31)])
        #expect(t.count(ipProtocol: 6) == 0 && t.active.count == 1)
    }

    @Test func recordsApplyInKernelOrderNotArrivalOrder() {
        // The ring's close (ts 30) arrives before the iterator's update (ts 20):
        // applied by timestamp, the update does not reopen the socket.
        var t = ConnectionTable()
        _ = t.apply(Self.event(.open, id: 1, ts: 10))
        let out = t.apply([Self.event(.close, id: 1, ts: 30), Self.event(.update, id: 1, ts: 20, sent: 4)])
        #expect(out.map(\.kind) == [.update, .close])
        #expect(t.active.isEmpty)
    }

    @Test func closeWithoutAddressesTakesThemFromTheOpen() {
        var t = ConnectionTable()
        _ = t.apply(Self.event(.open, id: 7, ts: 1, proto: 17))
        let close = t.apply(Self.event(.close, id: 7, ts: 2, proto: 17, family: .other, sent: 3))
        #expect(close.family == .ipv4 && close.localPort == 4000 && close.remotePort == 53 && close.bytesSent == 3)
        // Unknown socket: nothing to take, the record stays as it came.
        let lone = t.apply(Self.event(.close, id: 8, ts: 3, proto: 17, family: .other))
        #expect(lone.family == .other && lone.localPort == 0)
    }

    @Test func updateOfAnUnknownSocketAdoptsIt() {
        var t = ConnectionTable()
        _ = t.apply(Self.event(.update, id: 5, ts: 1, sent: 100))
        #expect(t.adopted == 1 && t.active[5]?.bytesSent == 100)
    }
}
