import FlowmeterCore
import Foundation

/// flowmeterd's local API over its unix socket: one snapshot (`GET
/// /v1/snapshot`) or the stream (`GET /v1/stream`, chunked NDJSON).
struct APIClient {
    let socketPath: String

    struct Unreachable: Error, CustomStringConvertible {
        let path: String
        let reason: String
        var description: String {
            """
            cannot reach flowmeterd at \(path): \(reason)
            Is the daemon running? Start it as root with `flowmeterd` (or `tools/run` from the repository), \
            or point flowtop at its socket with --socket PATH (flowmeterd --api-socket). \
            As root, `flowtop --standalone` starts a collector of its own.
            """
        }
    }

    func connect() throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Unreachable(path: socketPath, reason: String(cString: strerror(errno))) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(socketPath.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            close(fd)
            throw Unreachable(path: socketPath, reason: "path too long for a unix socket")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: bytes) }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if r != 0 {
            let e = errno
            close(fd)
            let hint = e == EACCES ? " (the socket is mode 0660: run as root or as a member of its group, flowmeterd --api-group)" : ""
            throw Unreachable(path: socketPath, reason: String(cString: strerror(e)) + hint)
        }
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    static func send(_ fd: Int32, _ text: String) throws {
        let b = Array(text.utf8)
        var off = 0
        while off < b.count {
            let w = b.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, b.count - off, Int32(MSG_NOSIGNAL)) }
            guard w > 0 else { throw ValueError("send: \(String(cString: strerror(errno)))") }
            off += w
        }
    }

    /// One snapshot, raw JSON text and decoded.
    func snapshot() throws -> (json: String, snapshot: APISnapshot) {
        let fd = try connect()
        defer { close(fd) }
        try Self.send(fd, "GET /v1/snapshot HTTP/1.1\r\nHost: flowmeter\r\nConnection: close\r\n\r\n")
        var data: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            data += buf[0..<n]
        }
        guard let split = Self.headerEnd(data) else { throw ValueError("no HTTP response from \(socketPath)") }
        let status = String(decoding: data[0..<split], as: UTF8.self).split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        let body = Array(data[(split + 4)...])
        guard status == 200 else { throw ValueError("\(socketPath): HTTP \(status): \(String(decoding: body, as: UTF8.self))") }
        let json = String(decoding: body, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return (json, try JSONDecoder().decode(APISnapshot.self, from: Data(body)))
    }

    static func headerEnd(_ d: [UInt8]) -> Int? {
        guard d.count >= 4 else { return nil }
        for i in 0...(d.count - 4) where d[i] == 13 && d[i + 1] == 10 && d[i + 2] == 13 && d[i + 3] == 10 { return i }
        return nil
    }

    /// Reads the stream on the calling thread, handing each snapshot to
    /// `onSnapshot` until it returns false or the connection ends.
    func stream(onSnapshot: (APISnapshot) -> Bool) throws {
        let fd = try connect()
        defer { close(fd) }
        var tv = timeval(tv_sec: 0, tv_usec: 0)  // the stream may idle; no timeout
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        try Self.send(fd, "GET /v1/stream HTTP/1.1\r\nHost: flowmeter\r\n\r\n")
        var raw: [UInt8] = []
        var headerDone = false
        var buf = [UInt8](repeating: 0, count: 65536)
        var decoder = ChunkedDecoder()
        var lineBuf: [UInt8] = []
        var merged = SnapshotStream()
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            var input = Array(buf[0..<n])
            if !headerDone {
                raw += input
                guard let end = Self.headerEnd(raw) else { continue }
                headerDone = true
                input = Array(raw[(end + 4)...])
            }
            lineBuf += decoder.feed(input)
            while let nl = lineBuf.firstIndex(of: 10) {
                let line = Array(lineBuf[..<nl])
                lineBuf.removeSubrange(...nl)
                guard !line.isEmpty, let s = try? merged.apply(Data(line)) else { continue }
                if !onSnapshot(s) { return }
            }
        }
    }
}

/// HTTP/1.1 chunked transfer decoding, fed in arbitrary pieces.
struct ChunkedDecoder {
    private var pending: [UInt8] = []
    private var remaining = 0
    private var needCRLF = false

    mutating func feed(_ bytes: [UInt8]) -> [UInt8] {
        pending += bytes
        var out: [UInt8] = []
        while true {
            if needCRLF {
                guard pending.count >= 2 else { return out }
                pending.removeFirst(2)
                needCRLF = false
            }
            if remaining > 0 {
                let take = min(remaining, pending.count)
                out += pending[0..<take]
                pending.removeFirst(take)
                remaining -= take
                if remaining > 0 { return out }
                needCRLF = true
                continue
            }
            guard let nl = pending.firstIndex(of: 10) else { return out }
            let sizeLine =
                String(decoding: pending[..<nl], as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ";").first.map(String.init) ?? ""
            pending.removeSubrange(...nl)
            guard let size = Int(sizeLine, radix: 16) else { continue }
            if size == 0 { return out }
            remaining = size
        }
    }
}
