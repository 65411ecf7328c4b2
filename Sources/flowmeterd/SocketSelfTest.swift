import FlowmeterBPF
import FlowmeterCore
import Foundation

/// The socket part of `check --selftest`: attaches the socket hooks on the
/// requested rung, makes loopback TCP connections with known payload sizes,
/// an abortive close, a connect to a closed port, a long-lived connection
/// read by the update iterator and a UDP exchange (IPv4, and IPv6 to a
/// v4-mapped address), and checks every record.
enum SocketSelfTest {
    static let clientBytes = 12_345, serverBytes = 6_789
    /// UDP datagrams: client -> server (IPv4 socket), server -> client, and
    /// from an IPv6 socket to the server's v4-mapped address.
    static let udpUp = [100, 1400, 7], udpDown = [300, 50], udpMapped = [200]

    static func run(_ t: inout SelfTest, hooks: HookRequest, updates: SocketUpdatesRequest) {
        var programs: SocketPrograms?
        t.check("attach socket hooks (--hooks \(hooks.rawValue), --socket-updates \(updates.rawValue))") {
            let p = try SocketPrograms.load(hooks, updates: updates)
            programs = p
            print("      (rung: \(p.rung.rawValue); " + p.modes.map { "\($0.hook)=\($0.mode)" }.joined(separator: ", ") + ")")
            for r in p.refusals { print("      (\(r))") }
            return nil
        }
        guard let programs else { return }
        _ = try? programs.drainEvents()  // whatever happened on the host before now

        var exchange: (client: UInt16, server: UInt16)?
        var abortive: (client: UInt16, server: UInt16)?
        var refusedPort: UInt16 = 0
        t.check("loopback TCP: \(clientBytes) bytes up, \(serverBytes) down, graceful close") {
            exchange = try tcpExchange(send: clientBytes, reply: serverBytes, abortive: false)
            return nil
        }
        t.check("loopback TCP closed with SO_LINGER 0 (reset)") {
            abortive = try tcpExchange(send: 10, reply: 0, abortive: true)
            return nil
        }
        t.check("connect to a closed port is refused") {
            refusedPort = try refusedConnect()
            return nil
        }
        // Every update path loaded (auto loads each the kernel accepts): the
        // same sockets, and each path must see what the other left.
        if programs.updatePaths.isEmpty {
            print("--    socket updates: unsupported (the kernel refuses both the iterator and the raw_tp run)")
        }
        for path in programs.updatePaths {
            t.check(
                "long-lived TCP, updates by \(path.rawValue): one update with the bytes so far, none while idle, none when younger than the update age"
            ) {
                try longLivedUpdates(programs, via: path)
            }
        }
        var udp: UDPPorts?
        if let why = programs.udpUnsupported {
            print("--    UDP sockets: unsupported on this rung: \(why)")
        } else {
            t.check("loopback UDP: datagrams \(udpUp) up, \(udpDown) down, \(udpMapped) from IPv6 to v4-mapped") {
                udp = try udpExchange()
                return nil
            }
        }
        usleep(200_000)  // the last state changes (LAST_ACK -> CLOSE) follow the final ACK
        let events: [SocketEvent]
        do { events = try programs.drainEvents() } catch {
            t.check("read socket events") { "\(error)" }
            return
        }
        let me = UInt32(getpid())
        let myName = ((try? String(contentsOfFile: "/proc/self/comm", encoding: .utf8)) ?? "")
            .trimmingCharacters(in: .whitespacesAndNewlines)
        func find(_ kind: SocketEvent.Kind, local: UInt16, remote: UInt16) -> SocketEvent? {
            events.first { $0.kind == kind && $0.localPort == local && $0.remotePort == remote }
        }
        func owned(_ e: SocketEvent) -> String? {
            guard let o = e.owner else { return "no owner recorded" }
            guard o.tgid == me else { return "owner pid \(o.tgid), want \(me)" }
            guard o.name == myName else { return "owner name \(o.name), want \(myName)" }
            return nil
        }
        if let x = exchange {
            t.check("client: open and close with owner, role and exact bytes") {
                guard find(.open, local: x.client, remote: x.server) != nil else { return "no open record" }
                guard let c = find(.close, local: x.client, remote: x.server) else { return "no close record" }
                if let p = owned(c) { return p }
                guard c.role == .client else { return "role \(c.role)" }
                guard c.bytesSent == UInt64(clientBytes), c.bytesReceived == UInt64(serverBytes) else {
                    return "bytes sent/received \(c.bytesSent)/\(c.bytesReceived), want \(clientBytes)/\(serverBytes)"
                }
                guard c.srttMicros > 0, c.resetsSent == 0, c.resetsReceived == 0 else {
                    return "srtt \(c.srttMicros) us, resets \(c.resetsSent)/\(c.resetsReceived)"
                }
                return nil
            }
            t.check("server: open and close with the listener's owner, role and exact bytes") {
                guard find(.open, local: x.server, remote: x.client) != nil else { return "no open record" }
                guard let s = find(.close, local: x.server, remote: x.client) else { return "no close record" }
                if let p = owned(s) { return p }
                guard s.role == .server else { return "role \(s.role)" }
                guard s.bytesReceived == UInt64(clientBytes), s.bytesSent == UInt64(serverBytes) else {
                    return "bytes sent/received \(s.bytesSent)/\(s.bytesReceived), want \(serverBytes)/\(clientBytes)"
                }
                return nil
            }
        }
        if let a = abortive {
            t.check("abortive close: one reset sent by the client, one received by the server") {
                guard let c = find(.close, local: a.client, remote: a.server),
                    let s = find(.close, local: a.server, remote: a.client)
                else { return "close records missing" }
                guard c.resetsSent == 1, s.resetsReceived == 1 else {
                    return "client sent \(c.resetsSent), server received \(s.resetsReceived); want 1 and 1"
                }
                return nil
            }
        }
        if refusedPort != 0 {
            t.check("failed connect: reason refused, with owner") {
                guard let f = events.first(where: { $0.kind == .failed && $0.remotePort == refusedPort && $0.owner?.tgid == me }) else {
                    return "no failure record"
                }
                if let p = owned(f) { return p }
                return f.reason == .refused ? nil : "reason \(f.reason.label) (errno \(f.error))"
            }
        }
        if let u = udp {
            func udpRecord(_ kind: SocketEvent.Kind, port: UInt16) -> SocketEvent? {
                events.first { $0.kind == kind && $0.ipProtocol == 17 && $0.localPort == port }
            }
            func sum(_ a: [Int]) -> UInt64 { UInt64(a.reduce(0, +)) }
            let want: [(String, UInt16, SocketEvent.Role, UInt64, UInt64)] = [
                ("client", u.client, .client, sum(udpUp), sum(udpDown)),
                ("server", u.server, .server, sum(udpDown), sum(udpUp) + sum(udpMapped)),
                ("IPv6 client (v4-mapped, counted once)", u.mapped, .client, sum(udpMapped), 0),
            ]
            for (name, port, role, sent, received) in want {
                t.check("UDP \(name): open and close with owner, role and exact bytes") {
                    guard udpRecord(.open, port: port) != nil else { return "no open record" }
                    guard let c = udpRecord(.close, port: port) else { return "no close record" }
                    if let p = owned(c) { return p }
                    guard c.role == role else { return "role \(c.role)" }
                    guard c.bytesSent == sent, c.bytesReceived == received else {
                        return "bytes sent/received \(c.bytesSent)/\(c.bytesReceived), want \(sent)/\(received)"
                    }
                    return nil
                }
            }
        }
        t.check("no socket event lost") {
            let c = try programs.readCounters()
            return c.eventsLost == 0 ? nil : "\(c.eventsLost) events lost"
        }
        programs.detach()
    }

    /// A connection kept open: after a known exchange the iterator reports it
    /// once with exact bytes, then not again while nothing moves; with an
    /// update age longer than its life it reports nothing.
    static func longLivedUpdates(_ programs: SocketPrograms, via path: SocketUpdatePath) throws -> String? {
        let lfd = try tcpSocket()
        defer { close(lfd) }
        var any = loopback(port: 0)
        guard withAddr(&any, { bind(lfd, $0, $1) }) == 0, listen(lfd, 4) == 0 else {
            throw ValueError("listen: \(String(cString: strerror(errno)))")
        }
        let cfd = try tcpSocket()
        defer { close(cfd) }
        var to = loopback(port: localPort(lfd))
        guard withAddr(&to, { connect(cfd, $0, $1) }) == 0 else { throw ValueError("connect: \(String(cString: strerror(errno)))") }
        let sfd = accept(lfd, nil, nil)
        guard sfd >= 0 else { throw ValueError("accept: \(String(cString: strerror(errno)))") }
        defer { close(sfd) }
        let (cport, sport) = (localPort(cfd), localPort(lfd))
        try sendAll(cfd, 1000); try recvExactly(sfd, 1000)
        try sendAll(sfd, 500); try recvExactly(cfd, 500)
        usleep(20_000)  // the last ACKs
        func mine(_ u: [SocketEvent]) -> [SocketEvent] {
            u.filter {
                $0.ipProtocol == 6
                    && (($0.localPort == cport && $0.remotePort == sport) || ($0.localPort == sport && $0.remotePort == cport))
            }
        }
        try programs.setUpdateMinAge(nanoseconds: 3_600_000_000_000)
        let young = mine(try programs.collectUpdates(via: path))
        guard young.isEmpty else { return "\(young.count) updates for connections younger than the update age" }
        try programs.setUpdateMinAge(nanoseconds: 0)
        let first = mine(try programs.collectUpdates(via: path))
        guard first.count == 2, let c = first.first(where: { $0.localPort == cport }),
            let s = first.first(where: { $0.localPort == sport })
        else { return "\(first.count) updates, want 2 (client and server)" }
        guard c.kind == .update, c.bytesSent == 1000, c.bytesReceived == 500, s.bytesSent == 500, s.bytesReceived == 1000 else {
            return "client \(c.bytesSent)/\(c.bytesReceived), server \(s.bytesSent)/\(s.bytesReceived); want 1000/500 and 500/1000"
        }
        guard c.role == .client, s.role == .server, c.owner?.tgid == UInt32(getpid()) else {
            return "roles \(c.role)/\(s.role), owner \(String(describing: c.owner))"
        }
        let idle = mine(try programs.collectUpdates(via: path))
        guard idle.isEmpty else { return "\(idle.count) updates while idle" }
        try sendAll(cfd, 10); try recvExactly(sfd, 10)
        usleep(20_000)
        let again = mine(try programs.collectUpdates(via: path))
        guard again.count == 2, again.first(where: { $0.localPort == cport })?.bytesSent == 1010 else {
            return "after 10 more bytes: \(again.map { "\($0.localPort):\($0.bytesSent)/\($0.bytesReceived)" })"
        }
        return nil
    }

    struct UDPPorts { var client: UInt16; var server: UInt16; var mapped: UInt16 }

    /// A connected IPv4 client and a server socket exchange datagrams of known
    /// sizes; an IPv6 socket sends to the server's v4-mapped address (the
    /// kernel's udpv6_sendmsg hands that to udp_sendmsg: counted once).
    static func udpExchange() throws -> UDPPorts {
        func sock(_ family: Int32) throws -> Int32 {
            let fd = socket(family, Int32(SOCK_DGRAM.rawValue), 0)
            guard fd >= 0 else { throw ValueError("socket: \(String(cString: strerror(errno)))") }
            var tv = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            return fd
        }
        let server = try sock(AF_INET), client = try sock(AF_INET), mapped = try sock(AF_INET6)
        defer { close(server); close(client); close(mapped) }
        var any = loopback(port: 0)
        guard withAddr(&any, { bind(server, $0, $1) }) == 0 else { throw ValueError("bind: \(String(cString: strerror(errno)))") }
        var to = loopback(port: localPort(server))
        guard withAddr(&to, { connect(client, $0, $1) }) == 0 else { throw ValueError("connect: \(String(cString: strerror(errno)))") }
        var buf = [UInt8](repeating: 0x55, count: 2048)
        func receive(_ fd: Int32, _ size: Int) throws {
            let r = recv(fd, &buf, buf.count, 0)
            guard r == size else { throw ValueError("received \(r) bytes, want \(size)") }
        }
        for n in udpUp {
            guard send(client, buf, n, 0) == n else { throw ValueError("send: \(String(cString: strerror(errno)))") }
            try receive(server, n)
        }
        var back = loopback(port: localPort(client))
        for n in udpDown {
            guard withAddr(&back, { sendto(server, buf, n, 0, $0, $1) }) == n else {
                throw ValueError("sendto: \(String(cString: strerror(errno)))")
            }
            try receive(client, n)
        }
        var v6 = sockaddr_in6()
        v6.sin6_family = sa_family_t(AF_INET6)
        v6.sin6_port = localPort(server).bigEndian
        guard inet_pton(AF_INET6, "::ffff:127.0.0.1", &v6.sin6_addr) == 1 else { throw ValueError("inet_pton") }
        for n in udpMapped {
            let w = withUnsafePointer(to: &v6) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(mapped, buf, n, 0, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
            guard w == n else { throw ValueError("sendto v4-mapped: \(String(cString: strerror(errno)))") }
            try receive(server, n)
        }
        var a6 = sockaddr_in6(); var len = socklen_t(MemoryLayout<sockaddr_in6>.size)
        _ = withUnsafeMutablePointer(to: &a6) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(mapped, $0, &len) } }
        return UDPPorts(client: localPort(client), server: localPort(server), mapped: UInt16(bigEndian: a6.sin6_port))
    }

    // MARK: sockets

    static func tcpSocket() throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ValueError("socket: \(String(cString: strerror(errno)))") }
        return fd
    }

    static func loopback(port: UInt16) -> sockaddr_in {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        a.sin_port = port.bigEndian
        return a
    }

    static func withAddr<R>(_ a: inout sockaddr_in, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }

    static func localPort(_ fd: Int32) -> UInt16 {
        var a = sockaddr_in(); var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return UInt16(bigEndian: a.sin_port)
    }

    static func sendAll(_ fd: Int32, _ n: Int) throws {
        let buf = [UInt8](repeating: 0x61, count: n)
        var off = 0
        while off < n {
            let w = buf.withUnsafeBytes { send(fd, $0.baseAddress! + off, n - off, 0) }
            guard w > 0 else { throw ValueError("send: \(String(cString: strerror(errno)))") }
            off += w
        }
    }

    static func recvExactly(_ fd: Int32, _ n: Int) throws {
        var buf = [UInt8](repeating: 0, count: 65536)
        var got = 0
        while got < n {
            let r = recv(fd, &buf, min(buf.count, n - got), 0)
            guard r > 0 else { throw ValueError("recv: got \(got) of \(n) bytes") }
            got += r
        }
    }

    /// A listener, one connection, `send` bytes up and `reply` bytes down, then
    /// both ends close (the client first, abortively with SO_LINGER 0 if asked).
    /// Returns (client port, server port).
    static func tcpExchange(send: Int, reply: Int, abortive: Bool) throws -> (client: UInt16, server: UInt16) {
        let lfd = try tcpSocket()
        defer { close(lfd) }
        var any = loopback(port: 0)
        guard withAddr(&any, { bind(lfd, $0, $1) }) == 0, listen(lfd, 4) == 0 else {
            throw ValueError("listen: \(String(cString: strerror(errno)))")
        }
        let serverPort = localPort(lfd)
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(lfd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))

        let done = DispatchSemaphore(value: 0)
        final class Result: @unchecked Sendable { var error: String? }
        let result = Result()
        let server = Thread {
            defer { done.signal() }
            let c = accept(lfd, nil, nil)
            guard c >= 0 else { result.error = "accept: \(String(cString: strerror(errno)))"; return }
            var tv = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            do {
                try recvExactly(c, send)
                if reply > 0 { try sendAll(c, reply) }
                // Wait for the client's FIN (or reset) before closing our end.
                var b = [UInt8](repeating: 0, count: 16)
                _ = recv(c, &b, b.count, 0)
            } catch { result.error = "\(error)" }
            close(c)
        }
        server.start()
        let cfd = try tcpSocket()
        var to = loopback(port: serverPort)
        guard withAddr(&to, { connect(cfd, $0, $1) }) == 0 else {
            close(cfd); done.wait()
            throw ValueError("connect: \(String(cString: strerror(errno)))")
        }
        let clientPort = localPort(cfd)
        setsockopt(cfd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        do {
            try sendAll(cfd, send)
            if reply > 0 { try recvExactly(cfd, reply) }
        } catch { close(cfd); done.wait(); throw error }
        if abortive {
            usleep(50_000)  // let the server read everything first
            var l = linger(l_onoff: 1, l_linger: 0)
            setsockopt(cfd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        }
        close(cfd)
        done.wait()
        if let e = result.error { throw ValueError("server side: \(e)") }
        return (clientPort, serverPort)
    }

    /// Connects to a port nobody listens on; returns that port.
    static func refusedConnect() throws -> UInt16 {
        let probe = try tcpSocket()
        var any = loopback(port: 0)
        _ = withAddr(&any, { bind(probe, $0, $1) })
        let port = localPort(probe)
        close(probe)  // bound, never listened: the port is closed
        let fd = try tcpSocket()
        defer { close(fd) }
        var to = loopback(port: port)
        let r = withAddr(&to, { connect(fd, $0, $1) })
        guard r != 0, errno == ECONNREFUSED else { throw ValueError("connect to closed port \(port): not refused (\(r), errno \(errno))") }
        return port
    }
}
