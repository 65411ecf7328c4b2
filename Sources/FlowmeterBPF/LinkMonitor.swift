import CLibbpf
import FlowmeterCore
import Foundation
import Synchronization

/// Watches rtnetlink link events (RTMGRP_LINK) on a thread of its own and
/// calls `onChange` after each batch, so attachments follow interfaces as
/// containers create and delete them. The handler reconciles from a fresh
/// look at the host rather than trusting each event, so a lost or reordered
/// event (or an overrun socket buffer) costs nothing but a later reconcile.
public final class LinkMonitor: @unchecked Sendable {
    private let fd: Int32
    private let running = Atomic<Bool>(false)
    private let stopped = DispatchSemaphore(value: 0)
    private let onChange: @Sendable ([LinkEvent]) -> Void

    public init(onChange: @escaping @Sendable ([LinkEvent]) -> Void) throws {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), NETLINK_ROUTE)
        guard fd >= 0 else { throw BPFError("open rtnetlink socket", errno: errno) }
        var addr = sockaddr_nl()
        addr.nl_family = sa_family_t(AF_NETLINK)
        addr.nl_groups = 1  // RTMGRP_LINK
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_nl>.size)) }
        }
        guard r == 0 else {
            let e = errno
            close(fd)
            throw BPFError("subscribe to link events", errno: e)
        }
        // Wake up every 250 ms to notice stop().
        var tv = timeval(tv_sec: 0, tv_usec: 250_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var size: Int32 = 1 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        self.fd = fd
        self.onChange = onChange
    }

    public func start() {
        guard !running.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let t = Thread { [self] in
            var buf = [UInt8](repeating: 0, count: 64 * 1024)
            while running.load(ordering: .acquiring) {
                let n = recv(fd, &buf, buf.count, 0)
                if n > 0 {
                    onChange(RTNetlink.parse(Array(buf[0..<n])))
                } else if n < 0 && errno == ENOBUFS {
                    onChange([])  // events were dropped: reconcile from scratch
                }
            }
            stopped.signal()
        }
        t.name = "flowmeter-links"
        t.start()
    }

    public func stop() {
        if running.exchange(false, ordering: .acquiringAndReleasing) { stopped.wait() }
    }

    deinit {
        stop()
        close(fd)
    }
}
