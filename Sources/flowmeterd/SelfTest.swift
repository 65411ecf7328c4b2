import FlowmeterBPF
import FlowmeterCore
import Foundation

/// `flowmeterd check --selftest`: proves on this kernel that the tc programs
/// load, parse, count loopback traffic exactly once attached, and stop
/// counting once detached. One line per check, then "N passed, N failed".
struct SelfTest {
    var passed = 0
    var failed = 0

    mutating func check(_ name: String, _ body: () throws -> String?) {
        do {
            if let problem = try body() {
                failed += 1
                print("FAIL  \(name): \(problem)")
            } else {
                passed += 1
                print("ok    \(name)")
            }
        } catch {
            failed += 1
            print("FAIL  \(name): \(error)")
        }
    }

    static func ethernet(_ type: UInt16) -> [UInt8] { [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, UInt8(type >> 8), UInt8(type & 0xff)] }

    /// IPv4/UDP, 10.0.0.1:5000 -> 10.0.0.2:53, behind `tags` 802.1Q tags.
    static func udp4(payload: Int, tags: Int = 0) -> [UInt8] {
        var p: [UInt8] = Array(ethernet(0x0800).prefix(12))
        for _ in 0..<tags { p += [0x81, 0x00, 0x00, 0x64] }
        p += [0x08, 0x00]
        let total = 28 + payload
        p += [0x45, 0, UInt8(total >> 8), UInt8(total & 0xff), 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]
        p += [0x13, 0x88, 0x00, 0x35, UInt8((8 + payload) >> 8), UInt8((8 + payload) & 0xff), 0, 0]
        return p + [UInt8](repeating: 0x5a, count: payload)
    }

    /// IPv6/TCP behind a hop-by-hop header, fd00::1:40000 -> fd00::2:443.
    static func tcp6HopByHop(payload: Int) -> [UInt8] {
        let l4: [UInt8] =
            [0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]
            + [UInt8](repeating: 0x5a, count: payload)
        let plen = 8 + l4.count
        var p = ethernet(0x86DD)
        p += [0x60, 0, 0, 0, UInt8(plen >> 8), UInt8(plen & 0xff), 0, 64]
        p += [0xfd] + [UInt8](repeating: 0, count: 14) + [1]
        p += [0xfd] + [UInt8](repeating: 0, count: 14) + [2]
        p += [6, 0, 1, 4, 0, 0, 0, 0]  // hop-by-hop: next TCP, PadN
        return p + l4
    }

    static func run(hooks: HookRequest = .auto, updates: SocketUpdatesRequest = .auto) -> Int32 {
        var t = SelfTest()
        var program: FlowAccountingProgram?
        t.check("load tc programs (verifier accepts them on this kernel)") {
            program = try FlowAccountingProgram(flowTableSize: 1024)
            return nil
        }
        guard let prog = program else { return t.finish() }

        t.check("count IPv4/UDP behind two VLAN tags (test run)") {
            let pkt = udp4(payload: 100, tags: 2)
            let (verdict, _) = try prog.testRun(.ingress, packet: pkt, ifindex: 1)
            guard verdict == -1 else { return "verdict \(verdict), want -1 (TC_ACT_UNSPEC)" }
            let flows = try prog.drainAll()
            guard flows.count == 1, let f = flows.first else { return "\(flows.count) flows, want 1" }
            guard f.key.family == .ipv4, f.key.ipProtocol == 17, f.key.sourcePort == 5000, f.key.destinationPort == 53,
                f.key.source == .v4(10, 0, 0, 1)
            else { return "wrong key \(f.key)" }
            return f.stats.packets == 1 && f.stats.bytes == 128 ? nil : "\(f.stats.packets) packets / \(f.stats.bytes) bytes, want 1 / 128"
        }
        t.check("count IPv6/TCP after a hop-by-hop header, as a 3-segment GSO packet (test run)") {
            _ = try prog.testRun(.egress, packet: tcp6HopByHop(payload: 1000), ifindex: 1, gsoSegs: 3)
            let flows = try prog.drainAll()
            guard flows.count == 1, let f = flows.first else { return "\(flows.count) flows, want 1" }
            guard f.key.family == .ipv6, f.key.ipProtocol == 6, f.key.sourcePort == 40000, f.key.destinationPort == 443,
                f.key.direction == .transmit
            else { return "wrong key \(f.key)" }
            let want: UInt64 = (40 + 8 + 20 + 1000) + 2 * (40 + 8 + 20)
            return f.stats.packets == 3 && f.stats.bytes == want
                ? nil : "\(f.stats.packets) packets / \(f.stats.bytes) bytes, want 3 / \(want)"
        }
        t.check("full flow table: packets travel through the flows ring") {
            let small = try FlowAccountingProgram(flowTableSize: 1)
            let ring = try FlowsRing(ringFD: small.flowsRingFD)
            for n in [1, 2, 3] {
                var pkt = udp4(payload: 10)
                pkt[34] = UInt8(n)  // source port high byte: three different flows
                _ = try small.testRun(.ingress, packet: pkt, ifindex: 1)
            }
            ring.consumeNow()
            let viaRing = ring.take().records
            let inMap = try small.drainAll()
            let failures = try small.readCounters().flowInsertFailures
            guard inMap.count == 1, viaRing.count == 2, failures == 2 else {
                return "map \(inMap.count), ring \(viaRing.count), insert failures \(failures); want 1, 2, 2"
            }
            return nil
        }

        // Live: attach to loopback, send known datagrams, count them exactly.
        let lo = HostInterfaces.list().first { $0.isLoopback }
        guard let lo else {
            t.check("find the loopback interface") { "no loopback interface" }
            return t.finish()
        }
        let stateDir = NSTemporaryDirectory() + "flowmeter-selftest-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: stateDir) }
        let attacher = TCAttacher(ingressFD: prog.ingressFD, egressFD: prog.egressFD, stateDir: stateDir)
        var attached = false
        t.check("attach to \(lo.name)") {
            let mode = try attacher.attach([lo], mode: .auto)
            attached = true
            print("      (mode: \(mode.rawValue))")
            return nil
        }
        if attached {
            _ = try? prog.evict()
            _ = try? prog.evict()
            t.check("count loopback UDP exactly (both directions)") {
                let sizes = [1, 100, 1000, 1400]
                let (sport, dport) = try sendUDP(sizes: sizes)
                let flows = try prog.evict()
                let ours = flows.filter {
                    $0.key.ifindex == lo.ifindex && $0.key.ipProtocol == 17
                        && $0.key.sourcePort == sport && $0.key.destinationPort == dport
                }
                let want = sizes.reduce(0) { $0 + UInt64(28 + $1) }
                for d in Direction.allCases {
                    let s = ours.filter { $0.key.direction == d }.reduce(FlowStats.zero) {
                        var a = $0; a.merge($1.stats); return a
                    }
                    if s.packets != UInt64(sizes.count) || s.bytes != want {
                        return "\(d.label): \(s.packets) packets / \(s.bytes) bytes, want \(sizes.count) / \(want)"
                    }
                }
                return nil
            }
            attacher.detachAll()
            t.check("detach: traffic is no longer counted") {
                _ = try sendUDP(sizes: [10])
                let left = try prog.evict().filter { $0.key.ifindex == lo.ifindex }
                return left.isEmpty ? nil : "\(left.count) flows counted after detach"
            }
        }
        SocketSelfTest.run(&t, hooks: hooks, updates: updates)
        dropChecks(&t)
        return t.finish()
    }

    /// The drop program, each twin the kernel takes: datagrams to a closed
    /// loopback port are counted once each, on lo, receive, with the
    /// kernel's reason (NO_SOCKET where it names reasons, else "unknown").
    /// A kernel without the skb:kfree_skb tracepoint is reported, not failed:
    /// the hook is optional, and `check` says so.
    static func dropChecks(_ t: inout SelfTest) {
        let tracefs = ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"]
        let hasEvent = tracefs.contains { FileManager.default.fileExists(atPath: $0 + "/skb/kfree_skb") }
        guard let lo = HostInterfaces.list().first(where: { $0.isLoopback }) else { return }
        var attached = 0
        for mode in DropPrograms.Mode.allCases {
            let drops: DropPrograms
            do { drops = try DropPrograms.load(only: mode) } catch {
                if mode == .tracepoint && hasEvent {
                    t.check("drops (\(mode.rawValue)): load and attach") { "\(error)" }
                }
                print("--    drops: \(mode.rawValue) not available (\((error as? BPFError)?.summary ?? "\(error)"))")
                continue
            }
            attached += 1
            t.check("drops (\(mode.rawValue)): datagrams to a closed port, counted once each with the kernel's reason") {
                let before = try drops.readCounts()
                let (port, sent) = try sendToClosedPort(count: 5)
                drops.detach()
                let after = try drops.readCounts()
                let ours = after.filter {
                    $0.key.flow.ifindex == lo.ifindex && $0.key.flow.destinationPort == port && $0.key.flow.ipProtocol == 17
                }
                let want = drops.hasReasons ? "NO_SOCKET" : DropReasonNames.unknown
                var got: [String: UInt64] = [:]
                for (k, v) in ours { got[drops.reasons.label(k.reason), default: 0] += v - (before[k] ?? 0) }
                guard got == [want: UInt64(sent)] else { return "counted \(got), want [\(want): \(sent)]" }
                guard ours.keys.allSatisfy({ $0.flow.direction == .receive && $0.netns == DropPrograms.ownNetns() }) else {
                    return "wrong interface side: \(ours.keys)"
                }
                print(
                    "      (reason \(want); \(drops.hasReasons ? "\(drops.reasons.names.count) reason names in BTF" : "no reasons on this kernel"))"
                )
                return nil
            }
        }
        if attached == 0 && !hasEvent { print("--    drops: no skb:kfree_skb tracepoint on this kernel: packet drops are not counted") }
    }

    /// Sends `count` datagrams from 127.0.0.1 to a loopback port nobody
    /// listens on (bound, then closed). Returns (port, datagrams sent).
    static func sendToClosedPort(count: Int) throws -> (UInt16, Int) {
        func bound() throws -> (Int32, UInt16) {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            guard fd >= 0 else { throw ValueError("socket: \(String(cString: strerror(errno)))") }
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_addr.s_addr = inet_addr("127.0.0.1")
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let r = withUnsafeMutablePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
            }
            guard r else { close(fd); throw ValueError("bind: \(String(cString: strerror(errno)))") }
            return (fd, UInt16(bigEndian: a.sin_port))
        }
        let (closed, port) = try bound()
        close(closed)
        let (tx, _) = try bound()
        defer { close(tx) }
        var to = sockaddr_in()
        to.sin_family = sa_family_t(AF_INET)
        to.sin_addr.s_addr = inet_addr("127.0.0.1")
        to.sin_port = port.bigEndian
        var sent = 0
        for _ in 0..<count {
            let buf = [UInt8](repeating: 0x42, count: 32)
            let n = withUnsafePointer(to: &to) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(tx, buf, buf.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            if n == buf.count { sent += 1 }
        }
        // Loopback delivers in the sender's context: every drop has happened.
        return (port, sent)
    }

    func finish() -> Int32 {
        print("\(passed) passed, \(failed) failed")
        return failed == 0 ? 0 : 1
    }

    /// Sends one datagram per size from one socket to another on 127.0.0.1 and
    /// waits until all arrived. Returns (source port, destination port).
    static func sendUDP(sizes: [Int]) throws -> (UInt16, UInt16) {
        func sock() throws -> Int32 {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            guard fd >= 0 else { throw ValueError("socket: \(String(cString: strerror(errno)))") }
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_addr.s_addr = inet_addr("127.0.0.1")
            let r = withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard r == 0 else { close(fd); throw ValueError("bind: \(String(cString: strerror(errno)))") }
            return fd
        }
        func port(_ fd: Int32) -> UInt16 {
            var a = sockaddr_in(); var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
            return UInt16(bigEndian: a.sin_port)
        }
        let rx = try sock(), tx = try sock()
        defer { close(rx); close(tx) }
        var to = sockaddr_in()
        to.sin_family = sa_family_t(AF_INET)
        to.sin_addr.s_addr = inet_addr("127.0.0.1")
        to.sin_port = port(rx).bigEndian
        for size in sizes {
            let buf = [UInt8](repeating: 0x42, count: size)
            let n = withUnsafePointer(to: &to) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(tx, buf, size, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard n == size else { throw ValueError("sendto: \(String(cString: strerror(errno)))") }
        }
        var tv = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(rx, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var buf = [UInt8](repeating: 0, count: 2048)
        for _ in sizes {
            guard recv(rx, &buf, buf.count, 0) >= 0 else { throw ValueError("datagram not received: \(String(cString: strerror(errno)))") }
        }
        return (port(tx), port(rx))
    }
}
