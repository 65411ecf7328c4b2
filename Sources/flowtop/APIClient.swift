import AsyncHTTPClient
import FlowmeterCore
import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// flowmeterd's local API over its unix socket: one snapshot (`GET
/// /v1/snapshot`) or the stream (`GET /v1/stream`, chunked NDJSON).
/// HTTP, chunked decoding included, is async-http-client's (`http+unix://`
/// URLs); flowtop itself is synchronous (a curses loop and a reader
/// thread), so each call waits for its task here.
final class APIClient: Sendable {
    let socketPath: String
    private let http: HTTPClient

    init(socketPath: String) {
        self.socketPath = socketPath
        var config = HTTPClient.Configuration()
        // A daemon that is not running fails the call at once with the
        // connect error (which Unreachable explains), instead of retrying
        // with backoff until the connect timeout.
        config.connectionPool.retryConnectionEstablishment = false
        config.timeout.connect = .seconds(10)
        http = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: config)
    }

    deinit { try? http.syncShutdown() }

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

    /// One snapshot, raw JSON text and decoded.
    func snapshot() throws -> (json: String, snapshot: APISnapshot) {
        let body = try wait { [self] in
            let response = try await send(path: "/v1/snapshot", timeout: .seconds(10))
            let body = try await response.body.collect(upTo: 256 * 1024 * 1024)
            guard response.status == .ok else {
                throw ValueError("\(socketPath): HTTP \(response.status.code): \(String(buffer: body))")
            }
            return body
        }
        let json = String(buffer: body).trimmingCharacters(in: .whitespacesAndNewlines)
        return (json, try JSONDecoder().decode(APISnapshot.self, from: Data(body.readableBytesView)))
    }

    /// Reads the stream on the calling thread, handing each snapshot to
    /// `onSnapshot` until it returns false or the connection ends.
    func stream(onSnapshot: @escaping @Sendable (APISnapshot) -> Bool) throws {
        try wait { [self] in
            // The deadline covers the connect and the response head only: the
            // stream itself may idle for as long as the daemon has nothing new.
            let response = try await send(path: "/v1/stream", timeout: .seconds(10))
            guard response.status == .ok else { throw ValueError("\(socketPath): HTTP \(response.status.code)") }
            var lines = NDJSONLines()
            var merged = SnapshotStream()
            for try await piece in response.body {
                for line in lines.feed(piece) {
                    guard let s = try? merged.apply(line) else { continue }
                    // Leaving the loop cancels the request and closes the connection.
                    if !onSnapshot(s) { return }
                }
            }
        }
    }

    private func send(path: String, timeout: TimeAmount) async throws -> HTTPClientResponse {
        guard let url = URL(httpURLWithSocketPath: socketPath, uri: path) else {
            throw Unreachable(path: socketPath, reason: "not a usable socket path")
        }
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = .GET
        do {
            return try await http.execute(request, timeout: timeout)
        } catch let e as IOError {
            let hint =
                e.errnoCode == EACCES ? " (the socket is mode 0660: run as root or as a member of its group, flowmeterd --api-group)" : ""
            throw Unreachable(path: socketPath, reason: String(cString: strerror(e.errnoCode)) + hint)
        } catch let e as SocketAddressError {
            throw Unreachable(path: socketPath, reason: "\(e)")
        } catch let e as HTTPClientError where e == .connectTimeout || e == .remoteConnectionClosed {
            throw Unreachable(path: socketPath, reason: "\(e)")
        }
    }

    /// Runs `op` as a task and blocks this (non-concurrency) thread until it ends.
    private func wait<T: Sendable>(_ op: @escaping @Sendable () async throws -> T) throws -> T {
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<Result<T, any Error>?>(nil)
        Task {
            let r: Result<T, any Error>
            do { r = .success(try await op()) } catch { r = .failure(error) }
            result.withLock { $0 = r }
            done.signal()
        }
        done.wait()
        return try result.withLock { $0! }.get()
    }
}

/// Splits a byte stream into its newline-terminated lines (the stream's
/// NDJSON), whatever the pieces the transport hands over.
struct NDJSONLines {
    private var pending: [UInt8] = []

    mutating func feed(_ piece: ByteBuffer) -> [Data] {
        pending += piece.readableBytesView
        var out: [Data] = []
        var start = pending.startIndex
        while let nl = pending[start...].firstIndex(of: 10) {
            if nl > start { out.append(Data(pending[start..<nl])) }
            start = nl + 1
        }
        pending.removeSubrange(..<start)
        return out
    }
}
