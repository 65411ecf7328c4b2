import FlowmeterCore
import Testing

@Suite struct ConnectionTableTests {
    static func event(
        _ kind: SocketEvent.Kind, id: UInt64, ts: UInt64, proto: UInt8 = 6, family: Family = .ipv4,
        sent: UInt64 = 0
    ) -> SocketEvent {
        SocketEvent(
            kind: kind, role: .client, family: family, ipProtocol: proto, reason: .none, socketID: id,
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
    @Test func socketsWhoseCloseWasLostAreForgottenAfterTwoTicks() {
        var t = ConnectionTable()
        var sweep = LostCloseSweep()
        // 1, 2, 3 live; the kernel then loses the closes of 1 and 2 (its table has only 3, plus 4 we never saw).
        _ = t.apply([Self.event(.open, id: 1, ts: 10), Self.event(.open, id: 2, ts: 11), Self.event(.open, id: 3, ts: 12)])
        let read1 = sweep.shouldRead(lost: 0)
        #expect(!read1)
        var none = sweep.staleCloses(table: t, now: 50)
        #expect(none.isEmpty)
        let read2 = sweep.shouldRead(lost: 7)
        #expect(read2)
        sweep.record(kernelIDs: [3, 4], table: t, at: 100)
        let read3 = sweep.shouldRead(lost: 7)
        #expect(!read3)  // nothing more lost: no new read
        // Before the next tick: 2's close was only late (in the ring at the read), and 1 got a new record since (an id reused).
        _ = t.apply([Self.event(.close, id: 2, ts: 90, sent: 4), Self.event(.open, id: 1, ts: 120)])
        none = sweep.staleCloses(table: t, now: 200)
        #expect(none.isEmpty)
        #expect(t.active.count == 2)

        // Another loss: this time 1 really lost its close.
        let read4 = sweep.shouldRead(lost: 9)
        #expect(read4)
        sweep.record(kernelIDs: [3], table: t, at: 300)
        let closes = sweep.staleCloses(table: t, now: 400)
        #expect(closes.map(\.socketID) == [1] && closes[0].kind == .close && closes[0].timestampNanos == 400)
        #expect(closes[0].bytesSent == t.active[1]?.bytesSent)  // the last counters: the close adds no bytes
        _ = t.apply(closes[0])
        #expect(t.active.keys.sorted() == [3])
        // The candidates were used once.
        none = sweep.staleCloses(table: t, now: 500)
        #expect(none.isEmpty)
        // A cancelled sweep (the reader stopped at its limit since the read) closes nothing.
        _ = t.apply(Self.event(.open, id: 5, ts: 510))
        let read5 = sweep.shouldRead(lost: 10)
        #expect(read5)
        sweep.record(kernelIDs: [3], table: t, at: 520)
        sweep.cancel()
        none = sweep.staleCloses(table: t, now: 600)
        #expect(none.isEmpty && t.active[5] != nil)
        // ... and the next tick reads again though nothing more was lost (the loss may be over).
        let again = sweep.shouldRead(lost: 10)
        #expect(again)
        sweep.record(kernelIDs: [3], table: t, at: 700)
        let closed = sweep.staleCloses(table: t, now: 800)
        #expect(closed.map(\.socketID) == [5])
        let more = sweep.shouldRead(lost: 10)
        #expect(!more)
    }
    @Test func compactGivesBackABurstsMemoryAndKeepsTheSockets() {
        var t = ConnectionTable()
        _ = t.apply((1...20_000).map { Self.event(.open, id: UInt64($0), ts: UInt64($0)) })
        let burst = t.active.capacity
        _ = t.apply((11...20_000).map { Self.event(.close, id: UInt64($0), ts: 30_000 + UInt64($0)) })
        #expect(t.active.capacity == burst)  // a dictionary keeps it
        t.compact()
        #expect(t.active.capacity < burst / 100 && t.active.keys.sorted() == Array(1...10).map(UInt64.init))
        let small = t.active.capacity
        t.compact()
        #expect(t.active.capacity == small)
    }
}
