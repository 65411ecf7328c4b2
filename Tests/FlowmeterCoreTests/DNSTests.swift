import FlowmeterCore
import Testing

/// DNS's pure part: the parser of the kernel's bounded copies (strict about
/// bounds, pointers and loops), the query tracker (each query ends once) and
/// the per-pair counts. No root, no kernel.
@Suite struct DNSTests {
    /// A name in wire format.
    static func name(_ s: String) -> [UInt8] {
        s.split(separator: ".").flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) } + [0]
    }

    static func header(id: UInt16 = 0x1234, response: Bool, rcode: UInt8 = 0, qd: UInt16 = 1, an: UInt16 = 0) -> [UInt8] {
        [UInt8(id >> 8), UInt8(id & 0xff), response ? 0x81 : 0x01, response ? 0x80 | rcode : 0, 0, UInt8(qd), 0, UInt8(an), 0, 0, 0, 0]
    }

    static func query(_ n: String, type: UInt16) -> [UInt8] {
        header(response: false) + name(n) + [UInt8(type >> 8), UInt8(type & 0xff), 0, 1]
    }

    /// A response to `n`: a CNAME to "real.example" (by pointer into its own
    /// rdata), then an A and an AAAA of the target, names compressed.
    static func response() -> [UInt8] {
        var b = header(response: true, an: 3) + name("www.Example") + [0, 1, 0, 1]
        // CNAME: owner = pointer to the question's name (offset 12).
        let cnameData: [UInt8] = [4] + Array("real".utf8) + [0xC0, 16]  // "real" + pointer to "example" at 16
        b += [0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, UInt8(cnameData.count)] + cnameData
        let target = 12 + name("www.Example").count + 4 + 12  // the CNAME's rdata
        b += [0xC0, UInt8(target), 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 10, 96, 0, 15]
        b += [0xC0, UInt8(target), 0, 28, 0, 1, 0, 0, 0, 30, 0, 16] + [0xfd, 0] + [UInt8](repeating: 0, count: 13) + [15]
        return b
    }

    @Test func theQuestionAndTheAnswersAreRead() {
        let m = DNSParser.parse(Self.response())
        #expect(m.name == "www.example")
        #expect(m.qtype == 1)
        #expect(!m.incomplete)
        #expect(m.answers.count == 3)
        #expect(m.answers[0].type == 5 && m.answers[0].target == "real.example" && m.answers[0].ttl == 60)
        #expect(m.answers[1].name == "real.example" && m.answers[1].address == .v4(10, 96, 0, 15) && m.answers[1].ttl == 3600)
        #expect(m.answers[2].address?.description == "fd00::f" && m.answers[2].ttl == 30)
    }

    @Test func everyPrefixIsReadAsFarAsItGoesAndNeverPast() {
        let full = Self.response()
        for n in 0..<full.count {
            let m = DNSParser.parse(Array(full.prefix(n)))
            #expect(m.incomplete, "prefix \(n)")
            #expect(m.answers.count <= 3)
        }
        // The question is whole from 12 + name + 4 bytes on.
        #expect(DNSParser.parse(Array(full.prefix(12 + Self.name("www.Example").count + 4))).name == "www.example")
    }

    @Test func pointerLoopsAndForwardPointersAreRefused() {
        // A name that is a pointer to itself, and one to a later offset.
        let selfLoop = Self.header(response: false) + [0xC0, 12, 0, 1, 0, 1]
        #expect(DNSParser.parse(selfLoop).name == nil && DNSParser.parse(selfLoop).incomplete)
        let forward = Self.header(response: false) + [0xC0, 14, 1, 0x61, 0, 0, 1, 0, 1]
        #expect(DNSParser.parse(forward).name == nil)
        // Two pointers at each other.
        let pair = Self.header(response: true, an: 1) + Self.name("a") + [0, 1, 0, 1] + [0xC0, 21, 0xC0, 19]
        #expect(DNSParser.parse(pair).answers.isEmpty)
        // Reserved label types (0x40, 0x80).
        #expect(DNSParser.parse(Self.header(response: false) + [0x41, 0, 0, 1, 0, 1]).name == nil)
    }

    @Test func namesAtTheLimitAndPastIt() {
        let longest =
            [String](repeating: String(repeating: "a", count: 63), count: 3).joined(separator: ".") + "."
            + String(repeating: "b", count: 61)  // 253 characters, 255 bytes on the wire
        #expect(longest.count == 253)
        #expect(DNSParser.parse(Self.query(longest, type: 28)).name == longest)
        #expect(DNSParser.parse(Self.query(longest, type: 28)).qtype == 28)
        #expect(DNSParser.parse(Self.query(longest + "b", type: 28)).name == nil)
    }

    @Test func oddBytesAreEscaped() {
        let b = Self.header(response: false) + [3, 0x41, 0x2E, 0xFF, 0] + [0, 1, 0, 1]
        #expect(DNSParser.parse(b).name == "a\\046\\255")
    }

    @Test func randomAndMutatedBytesNeverCrash() {
        var rng = SystemRandomNumberGenerator()
        let base = Self.response()
        for i in 0..<20_000 {
            var b: [UInt8]
            if i % 2 == 0 {
                b = (0..<Int.random(in: 0...80, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            } else {
                b = base
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
            }
            let m = DNSParser.parse(b)
            #expect(m.answers.count <= max(0, b.count / 11))
        }
    }

    static let key = DNSQueryKey(
        client: .v4(10, 0, 0, 1), server: .v4(10, 0, 0, 2), clientPort: 40000, serverPort: 53, txid: 7, ipProtocol: 17)

    @Test func aQueryEndsOnceWithItsAnswer() {
        var t = DNSTracker(timeoutNanos: 1_000_000_000)
        let q = DNSEvent(kind: .query, key: Self.key, timestampNanos: 100, payload: Self.query("a.example", type: 28))
        let r = DNSEvent(kind: .response, key: Self.key, rcode: 3, matched: true, timestampNanos: 400, latencyNanos: 300)
        // A retransmission of the same id is timed from the first.
        #expect(t.take([q, q]).isEmpty)
        #expect(t.pending == 1)
        let out = t.take([r])
        var want = DNSOutcome(key: Self.key, qtype: "AAAA", rcode: "NXDOMAIN", latency: 300e-9, timestampNanos: 400)
        want.name = "a.example"
        want.truncated = true  // the response record carried no bytes
        #expect(out == [want])
        // A second answer to it is unmatched, not counted again.
        #expect(t.take([r]).isEmpty && t.unmatched == 1)
        #expect(t.sweep(now: 10_000_000_000).isEmpty)
    }

    @Test func anUnansweredQueryTimesOutOnceAndItsLateAnswerIsNotCounted() {
        var t = DNSTracker(timeoutNanos: 1_000_000_000)
        _ = t.take([DNSEvent(kind: .query, key: Self.key, timestampNanos: 100, payload: Self.query("a.example", type: 1))])
        #expect(t.sweep(now: 999_999_999).isEmpty)
        let out = t.sweep(now: 1_000_000_100)
        #expect(out.map(\.rcode) == ["timeout"] && out.map(\.qtype) == ["A"] && out[0].latency == nil)
        #expect(t.sweep(now: 5_000_000_000).isEmpty)
        // The kernel forgot it too, so its answer comes unmatched.
        #expect(t.take([DNSEvent(kind: .response, key: Self.key, timestampNanos: 2_000_000_000)]).isEmpty)
        #expect(t.unmatched == 1)
    }

    @Test func theTrackerIsBoundedAndCountsWhatItLetsGo() {
        var t = DNSTracker(timeoutNanos: 1_000_000_000, capacity: 4)
        for i in 0..<10 {
            var k = Self.key
            k.txid = UInt16(i)
            _ = t.take([DNSEvent(kind: .query, key: k, timestampNanos: UInt64(i), payload: [])])
        }
        #expect(t.pending == 4 && t.evicted == 6)
        // A question it cannot read: qtype "unknown".
        #expect(t.sweep(now: 2_000_000_000).allSatisfy { $0.qtype == "unknown" })
    }

    @Test func queriesCountOnTheClientsPair() {
        let resolver = ServiceResolver(
            rules: [
                ServiceRule(service: "web", ports: try! PortRange(parsing: "40000")),
                ServiceRule(service: "dns", ports: try! PortRange(parsing: "53")),
            ], peers: [])
        var a = ServiceAggregator(
            resolver: resolver,
            limits: AggregationLimits(
                maxSeriesPerMetric: 100, seriesExpiry: FlowDuration(nanoseconds: 60_000_000_000), peerAddresses: false))
        // Both ends are local: the client's socket and the server's.
        func udp(_ id: UInt64, local: IPAddress16, lport: UInt16, server: Bool) -> SocketEvent {
            SocketEvent(
                kind: .open, role: server ? .server : .client, family: .ipv4, ipProtocol: 17, reason: .none, socketID: id,
                timestampNanos: 1, startNanos: 1, owner: SocketOwner(tgid: 1, pid: 1, name: "x", cgroupID: 0),
                localAddress: local, remoteAddress: .zero, localPort: lport, remotePort: 0, srttMicros: 0,
                bytesSent: 0, bytesReceived: 0, retransmits: 0, resetsSent: 0, resetsReceived: 0, error: 0)
        }
        a.apply(
            [udp(1, local: .v4(10, 0, 0, 1), lport: 40000, server: false), udp(2, local: .v4(10, 0, 0, 2), lport: 53, server: true)],
            cgroupPath: { _ in nil })
        a.apply(dns: [
            DNSOutcome(key: Self.key, qtype: "A", rcode: "NOERROR", latency: 0.002, timestampNanos: 5),
            DNSOutcome(key: Self.key, qtype: "A", rcode: "NOERROR", latency: 0.0002, timestampNanos: 6),
            DNSOutcome(key: Self.key, qtype: "AAAA", rcode: "timeout", latency: nil, timestampNanos: 7),
        ])
        let s = a.pairs[ServicePair(service: "web", peer: "dns", transport: "udp")]?.dns
        #expect(s?.requests == [.init(qtype: "A", rcode: "NOERROR"): 2, .init(qtype: "AAAA", rcode: "timeout"): 1])
        #expect(s?.latency.count == 2)
        // The API's view of the pair.
        var acc = Accounting()
        acc.dnsCounted = true
        acc.services = a
        let snap = APISnapshot.make(
            acc, context: .init(host: "h", kernel: "k", version: "v", startUnixMs: 0, intervalSeconds: 1, interfaceNames: [:]),
            nowUnixMs: 0)
        let web = snap.services.first { $0.service == "web" && $0.peer_service == "dns" }
        #expect(web?.dns_requests == 3 && web?.dns_errors == 1)
        #expect(web?.dns_p50_seconds.map { $0 > 0.0002 && $0 <= 0.0025 } == true)
        // The server's socket is not who asked: nothing on dns -> web.
        #expect(a.pairs[ServicePair(service: "dns", peer: "web", transport: "udp")]?.dns.requests.isEmpty ?? true)
    }
}

/// Peers named by what clients resolved: the suffix rules, the cache's TTL
/// and bound, and the naming order (rules, local sockets, DNS, address).
@Suite struct DNSPeerNamingTests {
    @Test func theDefaultRuleNamesKubernetesServices() throws {
        let n = try DNSPeerNaming(parsing: DNSPeerNaming.defaultText)
        #expect(n.peerName("ledger.shop.svc.cluster.local") == "shop/ledger")
        // Not a service name of that shape: used whole.
        #expect(n.peerName("api.payments.example") == "api.payments.example")
        #expect(n.peerName("a.b.c.svc.cluster.local") == "a.b.c.svc.cluster.local")
        #expect(n.peerName("svc.cluster.local") == "svc.cluster.local")
    }

    @Test func rulesAreCheckedAndTriedInOrder() throws {
        let n = try DNSPeerNaming(parsing: "corp.example={1}, Svc.Cluster.Local={2}/{1}")
        #expect(n.peerName("billing.corp.example") == "billing")
        #expect(n.peerName("x.y.svc.cluster.local") == "y/x")
        #expect(throws: ValueError.self) { try DNSPeerNaming(parsing: "corp.example") }
        #expect(throws: ValueError.self) { try DNSPeerNaming(parsing: "corp.example=fixed") }
        #expect(throws: ValueError.self) { try DNSPeerNaming(parsing: "corp.example={0}") }
        #expect(throws: ValueError.self) { try DNSPeerNaming(parsing: "corp.example={x}") }
    }

    static func answer(_ name: String?, _ address: IPAddress16, ttl: UInt32, at: UInt64, cgroup: UInt64 = 7) -> DNSOutcome {
        var o = DNSOutcome(key: DNSTests.key, qtype: "A", rcode: "NOERROR", latency: 0.001, timestampNanos: at)
        o.name = name
        o.cgroupID = cgroup
        o.answers = [DNSMessage.Answer(name: name ?? "", type: 1, ttl: ttl, address: address, target: nil)]
        return o
    }

    @Test func aNameLastsItsTTLPlusTheGraceForItsClientOnly() {
        var c = DNSNameCache(graceNanos: 1_000_000_000)
        let ip = IPAddress16.v4(10, 96, 0, 15)
        c.learn(Self.answer("ledger.shop.svc.cluster.local", ip, ttl: 2, at: 1_000))
        #expect(c.name(cgroup: 7, address: ip, now: 1_000 + 2_999_999_999) == "ledger.shop.svc.cluster.local")
        #expect(c.name(cgroup: 7, address: ip, now: 1_000 + 3_000_000_000) == nil)
        #expect(c.name(cgroup: 8, address: ip, now: 2_000) == nil)
        // Names off: nothing is learned.
        c.learn(Self.answer(nil, .v4(10, 96, 0, 16), ttl: 60, at: 1_000))
        #expect(c.count == 1)
        c.expire(now: 4_000_000_000)
        #expect(c.count == 0)
    }

    @Test func theCacheIsBoundedAndCountsEvictions() {
        var c = DNSNameCache(capacity: 3, graceNanos: 0)
        for i in 0..<5 { c.learn(Self.answer("n\(i).example", .v4(10, 0, 0, UInt8(i)), ttl: 100 + UInt32(i), at: 1)) }
        #expect(c.count == 3 && c.evicted == 2)
        // The ones expiring first went.
        #expect(c.name(cgroup: 7, address: .v4(10, 0, 0, 0), now: 2) == nil)
        #expect(c.name(cgroup: 7, address: .v4(10, 0, 0, 4), now: 2) == "n4.example")
    }

    @Test func theNamingOrderIsRulesSocketsDNSThenAddress() throws {
        let server = IPAddress16.v4(10, 0, 0, 2), clusterIP = IPAddress16.v4(10, 96, 0, 15)
        let resolver = ServiceResolver(
            rules: [ServiceRule(service: "db", ports: try PortRange(parsing: "5432"))],
            peers: [PeerRule(service: "ruled", ports: try PortRange(parsing: "9000"))])
        var a = ServiceAggregator(
            resolver: resolver,
            limits: AggregationLimits(maxSeriesPerMetric: 100, seriesExpiry: FlowDuration(nanoseconds: 60_000_000_000), peerAddresses: true)
        )
        a.nameByDNS(try DNSPeerNaming(parsing: DNSPeerNaming.defaultText), graceNanos: 0)
        // The client resolved every address below.
        for ip in [clusterIP, server] { a.learn(dns: [DNSPeerNamingTests.answer("ledger.shop.svc.cluster.local", ip, ttl: 60, at: 1)]) }
        func connect(_ id: UInt64, to remote: IPAddress16, port: UInt16, cgroup: UInt64 = 7) -> SocketEvent {
            SocketEvent(
                kind: .open, role: .client, family: .ipv4, ipProtocol: 6, reason: .none, socketID: id, timestampNanos: 10,
                startNanos: 1, owner: SocketOwner(tgid: 1, pid: 1, name: "app", cgroupID: cgroup),
                localAddress: .v4(10, 0, 0, 1), remoteAddress: remote, localPort: UInt16(40000 + id), remotePort: port,
                srttMicros: 0, bytesSent: 0, bytesReceived: 0, retransmits: 0, resetsSent: 0, resetsReceived: 0, error: 0)
        }
        // A local server socket on 10.0.0.2:5432.
        a.apply(
            [
                SocketEvent(
                    kind: .open, role: .server, family: .ipv4, ipProtocol: 6, reason: .none, socketID: 100, timestampNanos: 5,
                    startNanos: 1, owner: SocketOwner(tgid: 2, pid: 2, name: "postgres", cgroupID: 9),
                    localAddress: server, remoteAddress: .v4(10, 0, 0, 9), localPort: 5432, remotePort: 1,
                    srttMicros: 0, bytesSent: 0, bytesReceived: 0, retransmits: 0, resetsSent: 0, resetsReceived: 0, error: 0)
            ],
            cgroupPath: { _ in nil })
        a.apply(
            [
                connect(1, to: clusterIP, port: 9000), connect(2, to: server, port: 5432), connect(3, to: clusterIP, port: 80),
                connect(4, to: clusterIP, port: 80, cgroup: 8),
            ], cgroupPath: { _ in nil })
        let peers = Set(a.pairs.keys.filter { $0.service == "app" }.map(\.peer))
        // 1: the peer rule wins; 2: the local socket; 3: the resolved name; 4: another client: its address.
        #expect(peers == ["ruled", "db", "shop/ledger", "10.96.0.15"])
    }
}
