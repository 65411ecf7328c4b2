import FlowmeterBPF
import FlowmeterCore
import Foundation

/// The socket part of `check --selftest`: attaches the socket hooks on the
/// requested rung, makes loopback TCP connections with known payload sizes,
/// an abortive close and a connect to a closed port, and checks every record.
enum SocketSelfTest {
    static let clientBytes = 12_345, serverBytes = 6_789

    static func run(_ t: inout SelfTest, hooks: HookRequest) {
        var programs: SocketPrograms?
        t.check("attach socket hooks (--hooks \(hooks.rawValue))") {
            let p = try SocketPrograms.load(hooks)
            programs = p
            print("      (rung: \(p.rung.rawValue); " + p.modes.map { "\($0.hook)=\($0.mode)" }.joined(separator: ", ") + ")")
            return nil
        }
        guard let programs else { return }
        _ = try? programs.drainEvents() // whatever happened on the host before now

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
        usleep(200_000) // the last state changes (LAST_ACK -> CLOSE) follow the final ACK
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
                      let s = find(.close, local: a.server, remote: a.client) else { return "close records missing" }
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
        t.check("no socket event lost") {
            let c = try programs.readCounters()
            return c.eventsLost == 0 ? nil : "\(c.eventsLost) events lost"
        }
        programs.detach()
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
        withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
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
            usleep(50_000) // let the server read everything first
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
        close(probe) // bound, never listened: the port is closed
        let fd = try tcpSocket()
        defer { close(fd) }
        var to = loopback(port: port)
        let r = withAddr(&to, { connect(fd, $0, $1) })
        guard r != 0, errno == ECONNREFUSED else { throw ValueError("connect to closed port \(port): not refused (\(r), errno \(errno))") }
        return port
    }
}
