import FlowmeterCore
import Testing

@Suite struct ServiceAggregatorTests {
    static let client = IPAddress16.v4(10, 0, 0, 1), server = IPAddress16.v4(10, 0, 0, 2)
    static let resolver = ServiceResolver(
        rules: [ServiceRule(service: "postgres", ports: try! PortRange(parsing: "5432"))],
        peers: [
            PeerRule(service: "dns", cidr: try! CIDR(parsing: "10.96.0.10/32")),
            PeerRule(service: "postgres", ports: try! PortRange(parsing: "5432")),
        ])

    static func limits(cap: Int = 100, expiry: UInt64 = 60_000_000_000, peerAddresses: Bool = false) -> AggregationLimits {
        AggregationLimits(maxSeriesPerMetric: cap, seriesExpiry: FlowDuration(nanoseconds: expiry), peerAddresses: peerAddresses)
    }

    /// A record of the client (10.0.0.1:40000, process "checkout") or the
    /// server (10.0.0.2:5432, process "postgres") end of one connection.
    static func ev(
        _ kind: SocketEvent.Kind, id: UInt64, ts: UInt64, serverEnd: Bool = false, sent: UInt64 = 0, received: UInt64 = 0,
        proto: UInt8 = 6, name: String? = nil, remote: IPAddress16? = nil, remotePort: UInt16? = nil,
        start: UInt64 = 1, srtt: UInt32 = 0, retrans: UInt32 = 0, reason: SocketEvent.FailReason = .none
    ) -> SocketEvent {
        let owner = SocketOwner(tgid: 1, pid: 1, name: name ?? (serverEnd ? "postgres" : "checkout"), cgroupID: 0)
        return SocketEvent(
            kind: kind, role: serverEnd ? .server : .client, family: .ipv4, ipProtocol: proto, reason: reason,
            socketID: id, timestampNanos: ts, startNanos: start, owner: owner,
            localAddress: serverEnd ? server : client, remoteAddress: remote ?? (serverEnd ? client : server),
            localPort: serverEnd ? 5432 : 40000, remotePort: remotePort ?? (serverEnd ? 40000 : 5432),
            srttMicros: srtt, bytesSent: sent, bytesReceived: received, retransmits: retrans,
            resetsSent: 0, resetsReceived: 0, error: 0)
    }

    static let cs = ServicePair(service: "checkout", peer: "postgres", transport: "tcp")
    static let sc = ServicePair(service: "postgres", peer: "checkout", transport: "tcp")

    @Test func bothEndsOfALocalConnectionNameEachOther() {
        var a = ServiceAggregator(resolver: Self.resolver, limits: Self.limits())
        // The client's open comes first; the server's socket is named in the same batch.
        a.apply([Self.ev(.open, id: 1, ts: 10), Self.ev(.open, id: 2, ts: 11, serverEnd: true)], cgroupPath: { _ in nil })
        #expect(a.pairs[Self.cs]?.opened == [1, 0] && a.pairs[Self.cs]?.active == [1, 0])
        #expect(a.pairs[Self.sc]?.opened == [0, 1] && a.pairs[Self.sc]?.active == [0, 1])
    }

    @Test func bytesAreDeltasOfCumulativeRecords() {
        var a = ServiceAggregator(resolver: Self.resolver, limits: Self.limits())
        a.apply([Self.ev(.open, id: 1, ts: 10)], cgroupPath: { _ in nil })
        a.apply([Self.ev(.update, id: 1, ts: 20, sent: 100, received: 7, srtt: 250)], cgroupPath: { _ in nil })
        a.apply([Self.ev(.update, id: 1, ts: 30, sent: 150, received: 7, srtt: 250, retrans: 2)], cgroupPath: { _ in nil })
        a.apply([Self.ev(.close, id: 1, ts: 40, sent: 400, received: 9, srtt: 3000, retrans: 2)], cgroupPath: { _ in nil })
        let s = a.pairs[Self.cs]
        #expect(s?.bytes[Int(Direction.transmit.rawValue)] == 400 && s?.bytes[Int(Direction.receive.rawValue)] == 9)
        #expect(s?.retransmits == 2 && s?.active == [0, 0] && s?.opened == [1, 0])
        #expect(s?.rtt.count == 3 && s?.rtt.cumulative.first == 0)
        // 250 µs lands in the 250 µs bucket, 3 ms in the 5 ms one.
        #expect(s?.rtt.counts[1] == 2 && s?.rtt.counts[5] == 1)
        #expect(a.trackedSockets == 0)
    }

    @Test func aCloseOfASocketOpenedBeforeUsAddsNoBytes() {
        var a = ServiceAggregator(resolver: Self.resolver, limits: Self.limits())
        var e = Self.ev(.close, id: 9, ts: 50, sent: 1_000_000, received: 5, start: 0)
        e.role = .unknown
        a.apply([e], cgroupPath: { _ in nil })
        #expect(a.pairs[Self.cs]?.bytes == [0, 0] && a.pairs[Self.cs]?.active == [0, 0])
    }

    @Test func failuresCountByReasonOnTheClientPair() {
        var a = ServiceAggregator(resolver: Self.resolver, limits: Self.limits())
        a.apply(
            [Self.ev(.failed, id: 3, ts: 5, reason: .refused), Self.ev(.failed, id: 4, ts: 6, reason: .refused)], cgroupPath: { _ in nil })
        #expect(a.pairs[Self.cs]?.failed == ["refused": 2] && a.pairs[Self.cs]?.opened == [0, 0])
    }

    @Test func peersByRuleByAddressOrUnknown() {
        var a = ServiceAggregator(resolver: Self.resolver, limits: Self.limits())
        a.apply(
            [
                Self.ev(.open, id: 1, ts: 1, proto: 17, remote: .v4(10, 96, 0, 10), remotePort: 53),
                Self.ev(.open, id: 2, ts: 2, proto: 17, remote: .v4(192, 0, 2, 1), remotePort: 53),
            ], cgroupPath: { _ in nil })
        #expect(a.pairs[ServicePair(service: "checkout", peer: "dns", transport: "udp")] != nil)
        #expect(a.pairs[ServicePair(service: "checkout", peer: "unknown", transport: "udp")] != nil)
        var b = ServiceAggregator(resolver: Self.resolver, limits: Self.limits(peerAddresses: true))
        b.apply([Self.ev(.open, id: 2, ts: 2, proto: 17, remote: .v4(192, 0, 2, 1), remotePort: 53)], cgroupPath: { _ in nil })
        #expect(b.pairs[ServicePair(service: "checkout", peer: "192.0.2.1", transport: "udp")] != nil)
    }

    @Test func anUnnamedLocalEndpointIsAnAddressWithPeerAddresses() {
        // The server's socket has no owner (it is older than us) and no rule names it.
        var srv = Self.ev(.open, id: 1, ts: 1, serverEnd: true)
        srv.owner = nil
        let cli = Self.ev(.open, id: 2, ts: 2)
        let plain = ServiceResolver(rules: [], peers: [])
        var a = ServiceAggregator(resolver: plain, limits: Self.limits())
        a.apply([srv, cli], cgroupPath: { _ in nil })
        #expect(a.pairs[ServicePair(service: "checkout", peer: "unknown", transport: "tcp")] != nil)
        var b = ServiceAggregator(resolver: plain, limits: Self.limits(peerAddresses: true))
        b.apply([srv, cli], cgroupPath: { _ in nil })
        #expect(b.pairs[ServicePair(service: "checkout", peer: srv.localAddress.description, transport: "tcp")] != nil)
        // A named local endpoint still names its peer.
        var named = Self.ev(.open, id: 3, ts: 3, serverEnd: true)
        named.localPort = 6000
        var c = ServiceAggregator(resolver: plain, limits: Self.limits(peerAddresses: true))
        var cli2 = Self.ev(.open, id: 4, ts: 4, remotePort: 6000)
        cli2.socketID = 4
        c.apply([named, cli2], cgroupPath: { _ in nil })
        #expect(c.pairs[ServicePair(service: "checkout", peer: "postgres", transport: "tcp")] != nil)
    }

    @Test func pairsPastTheCapFoldIntoOther() {
        var a = ServiceAggregator(resolver: ServiceResolver(rules: [], peers: []), limits: Self.limits(cap: 2, peerAddresses: true))
        for i in 0..<5 {
            a.apply(
                [Self.ev(.open, id: UInt64(i), ts: UInt64(i), name: "p\(i)", remote: .v4(192, 0, 2, UInt8(i)))], cgroupPath: { _ in nil })
        }
        // Two real pairs, then p2..p4 are new services too: all fold into (other, other).
        #expect(a.pairs.count == 3 && a.seriesDropped == 3)
        #expect(a.pairs[ServicePair(service: "other", peer: "other", transport: "tcp")]?.opened == [3, 0])
        // A new peer of a service that already has a folded pair lands there.
        var b = ServiceAggregator(resolver: ServiceResolver(rules: [], peers: []), limits: Self.limits(cap: 1, peerAddresses: true))
        b.apply([Self.ev(.open, id: 1, ts: 1, remote: .v4(192, 0, 2, 1))], cgroupPath: { _ in nil })
        b.apply([Self.ev(.open, id: 2, ts: 2, remote: .v4(192, 0, 2, 2))], cgroupPath: { _ in nil })
        #expect(b.pairs.count == 2 && b.pairs[ServicePair(service: "other", peer: "other", transport: "tcp")] != nil)
    }

    @Test func idlePairsExpireLivePairsStay() {
        var a = ServiceAggregator(resolver: Self.resolver, limits: Self.limits(expiry: 100))
        a.apply([Self.ev(.open, id: 1, ts: 10), Self.ev(.failed, id: 2, ts: 10, remotePort: 9)], cgroupPath: { _ in nil })
        a.expire(now: 500)
        #expect(a.pairs[Self.cs] != nil)  // a live connection keeps it
        #expect(a.pairs[ServicePair(service: "checkout", peer: "unknown", transport: "tcp")] == nil)
        a.apply([Self.ev(.close, id: 1, ts: 600, sent: 5)], cgroupPath: { _ in nil })
        a.expire(now: 650)
        #expect(a.pairs[Self.cs]?.bytes[1] == 5)
        a.expire(now: 701)
        #expect(a.pairs[Self.cs] == nil)
    }

    @Test func tcFlowsJoinTheirSocketByFiveTuple() {
        var a = ServiceAggregator(resolver: Self.resolver, limits: Self.limits(), joinGrace: 1000)
        a.apply([Self.ev(.open, id: 1, ts: 10)], cgroupPath: { _ in nil })
        func flow(_ d: Direction, packets: UInt64, icmp: Bool = false) -> FlowRecord {
            let out = d == .transmit
            return FlowRecord(
                key: FlowKey(
                    source: out ? Self.client : Self.server, destination: out ? Self.server : Self.client,
                    ifindex: 2, sourcePort: out ? 40000 : 5432, destinationPort: out ? 5432 : 40000,
                    direction: d, family: .ipv4, ipProtocol: icmp ? 1 : 6, flags: []),
                stats: FlowStats(packets: packets, bytes: packets * 100, firstSeenNanos: 1, lastSeenNanos: 2, tcpFlags: 0),
                source: .flowMap)
        }
        a.apply(flows: [flow(.transmit, packets: 3), flow(.receive, packets: 2), flow(.receive, packets: 9, icmp: true)], now: 20)
        #expect(a.pairs[Self.cs]?.packets == [2, 3])
        a.apply([Self.ev(.close, id: 1, ts: 30)], cgroupPath: { _ in nil })
        a.expire(now: 500)
        a.apply(flows: [flow(.transmit, packets: 1)], now: 500)  // within the grace after close
        #expect(a.pairs[Self.cs]?.packets == [2, 4])
        a.expire(now: 2000)
        a.apply(flows: [flow(.transmit, packets: 1)], now: 2000)
        #expect(a.pairs[ServicePair(service: "unknown", peer: "postgres", transport: "tcp")]?.packets == [0, 1])
    }

    @Test func reconfigureMovesFutureTrafficKeepsHistory() {
        var a = ServiceAggregator(resolver: Self.resolver, limits: Self.limits())
        a.apply([Self.ev(.open, id: 1, ts: 10), Self.ev(.update, id: 1, ts: 20, sent: 10)], cgroupPath: { _ in nil })
        let renamed = ServiceResolver(rules: [], peers: [PeerRule(service: "db", ports: try! PortRange(parsing: "5432"))])
        a.reconfigure(resolver: renamed, limits: Self.limits())
        a.apply([Self.ev(.update, id: 1, ts: 30, sent: 25)], cgroupPath: { _ in nil })
        let moved = ServicePair(service: "checkout", peer: "db", transport: "tcp")
        #expect(a.pairs[Self.cs]?.bytes[1] == 10 && a.pairs[Self.cs]?.active == [0, 0])
        #expect(a.pairs[moved]?.bytes[1] == 15 && a.pairs[moved]?.active == [1, 0])
    }
    /// Under connection churn every connection brings a new client port. What
    /// the aggregator remembers of closed connections must not grow with the
    /// number of connections, only with those of the last `joinGrace`; the
    /// server's endpoint, which names the peer of the next client, stays.
    @Test func closedClientEndpointsGoAfterTheGraceServersStay() {
        let grace: UInt64 = 1_000
        var a = ServiceAggregator(
            resolver: ServiceResolver(rules: [], peers: []), limits: Self.limits(expiry: 1_000_000),
            joinGrace: grace)
        var ts: UInt64 = 10, id: UInt64 = 0
        var most = (endpoints: 0, tuples: 0)
        for round in 0..<50 {
            // 100 connections a round, each client on a new port, all closed by the round's end.
            var batch: [SocketEvent] = []
            for i in 0..<100 {
                let port = UInt16(10_000 + round * 100 + i)
                id += 2
                batch.append(Self.ev(.open, id: id, ts: ts, remotePort: 5432))
                batch[batch.count - 1].localPort = port
                batch.append(Self.ev(.open, id: id + 1, ts: ts + 1, serverEnd: true, remotePort: port))
                batch.append(Self.ev(.close, id: id, ts: ts + 2, sent: 32, received: 32))
                batch[batch.count - 1].localPort = port
                batch.append(Self.ev(.close, id: id + 1, ts: ts + 3, serverEnd: true, sent: 32, received: 32, remotePort: port))
            }
            a.apply(batch, cgroupPath: { _ in nil })
            ts += grace / 2
            a.expire(now: ts)
            let r = a.remembered
            most = (max(most.endpoints, r.endpoints), max(most.tuples, r.tuples))
        }
        // Two or three rounds of clients at most (a round's are gone once the grace has passed), never 5,000.
        #expect(most.endpoints <= 3 * 100 + 1 && most.tuples <= 3 * 200)
        // Both ends named each other all along: the server endpoint was known to every client.
        #expect(a.pairs[ServicePair(service: "checkout", peer: "postgres", transport: "tcp")]?.opened == [5000, 0])
        #expect(a.pairs[ServicePair(service: "postgres", peer: "checkout", transport: "tcp")]?.opened == [0, 5000])
        a.expire(now: ts + 2 * grace)
        // Idle now: the clients' endpoints and the tuples are gone, the server's endpoint stays for the series expiry.
        #expect(a.remembered.endpoints == 1 && a.remembered.tuples == 0)
        // A client whose open comes in a batch before the server's still names the server.
        a.apply([Self.ev(.open, id: 1_000_000, ts: ts + 2 * grace + 1)], cgroupPath: { _ in nil })
        #expect(a.pairs[ServicePair(service: "checkout", peer: "postgres", transport: "tcp")]?.opened == [5001, 0])
    }
    /// Faster churn than the grace allows for: the caps hold, the newest stay.
    @Test func closedTuplesAndIdleEndpointsAreCapped() {
        var a = ServiceAggregator(
            resolver: ServiceResolver(rules: [], peers: []), limits: Self.limits(expiry: 1_000_000_000),
            joinGrace: 1_000_000_000)
        let cap = ServiceAggregator.maxClosedTuples
        var id: UInt64 = 0, most = (endpoints: 0, tuples: 0)
        let rounds = 3 * cap / 1000
        for round in 0..<rounds {
            var batch: [SocketEvent] = []
            for i in 0..<500 {
                // Clients on 10.1.x.y so that every one is a new endpoint.
                let n = round * 500 + i
                let addr = IPAddress16.v4(10, 1, UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF))
                let port = UInt16(20_000 + n % 40_000)
                id += 2
                var c = Self.ev(.open, id: id, ts: UInt64(n))
                c.localAddress = addr; c.localPort = port
                var sv = Self.ev(.open, id: id + 1, ts: UInt64(n), serverEnd: true, remote: addr, remotePort: port)
                sv.remoteAddress = addr
                var cc = c; cc.kind = .close
                var sc = sv; sc.kind = .close
                batch += [c, sv, cc, sc]
            }
            a.apply(batch, cgroupPath: { _ in nil })
            let r = a.remembered
            most = (max(most.endpoints, r.endpoints), max(most.tuples, r.tuples))
        }
        #expect(most.tuples <= cap + 1000 && most.endpoints <= ServiceAggregator.maxIdleEndpoints + 500)
        // The server endpoint survived every trim (it names the peer of new clients): every client named it.
        a.apply([Self.ev(.open, id: 1 << 40, ts: 1 << 30)], cgroupPath: { _ in nil })
        #expect(a.pairs[ServicePair(service: "checkout", peer: "postgres", transport: "tcp")]?.opened == [UInt64(rounds * 500 + 1), 0])
    }
}
