// The Docker Engine API over its unix socket: what cri-dockerd's Docker and
// podman's compatible service (`podman system service`) answer. A kept HTTP
// client (AsyncHTTPClient, http+unix), not hand-written HTTP.
//
// cri-dockerd labels a pod's containers as the CRI plugin does
// (io.kubernetes.pod.*, io.kubernetes.container.name) and names each app
// container's sandbox in io.kubernetes.sandbox.id; the sandbox carries the
// pod's own labels.

import AsyncHTTPClient
import FlowmeterCore
import Foundation
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

public final class DockerSource: PodMetadataSource {
    public let name = "docker"
    public let socketPath: String
    let timeout: TimeAmount
    /// One client for the daemon's life: its connection pool keeps the socket open between lookups.
    let client: HTTPClient

    public static let sandboxLabel = "io.kubernetes.sandbox.id"

    public init(socketPath: String, timeout: TimeAmount = .seconds(2)) {
        self.socketPath = socketPath; self.timeout = timeout
        client = HTTPClient(eventLoopGroupProvider: .singleton)
    }

    deinit { try? client.syncShutdown() }

    /// The part of `GET /containers/{id}/json` we read.
    struct Inspect: Decodable {
        struct Config: Decodable { let Labels: [String: String]? }
        let Config: Config?
    }

    /// The labels of an inspect answer; nil when it is not one.
    public static func labels(inspectJSON data: Data) -> [String: String]? {
        guard let i = try? JSONDecoder().decode(Inspect.self, from: data) else { return nil }
        return i.Config?.Labels ?? [:]
    }

    enum Answer { case labels([String: String]), notFound, failed(PodLookupResult) }

    func inspect(_ id: String) async -> Answer {
        guard let url = URL(httpURLWithSocketPath: socketPath, uri: "/containers/\(id)/json") else {
            return .failed(.error("bad socket path \(socketPath)"))
        }
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = .GET
        // The Host AsyncHTTPClient derives from an http+unix URL is the
        // socket's path, which Go's net/http (Docker, podman) refuses.
        request.headers.replaceOrAdd(name: "Host", value: "localhost")
        do {
            let response = try await client.execute(request, timeout: timeout)
            let body = try await response.body.collect(upTo: 4 << 20)
            switch response.status.code {
            case 200:
                guard let l = Self.labels(inspectJSON: Data(body.readableBytesView)) else {
                    return .failed(.error("unreadable inspect answer"))
                }
                return .labels(l)
            case 404: return .notFound
            default: return .failed(.error("HTTP \(response.status.code)"))
            }
        } catch {
            return .failed(.unavailable("\(error)"))
        }
    }

    public func lookup(containerID: String, podUID: String) async -> PodLookupResult {
        guard access(socketPath, F_OK) == 0 else { return .unavailable("no socket at \(socketPath)") }
        let own: [String: String]
        switch await inspect(containerID) {
        case .labels(let l): own = l
        case .notFound: return .notFound
        case .failed(let r): return r
        }
        var sandbox: [String: String] = [:]
        if let sid = own[Self.sandboxLabel], !sid.isEmpty, sid != containerID {
            switch await inspect(sid) {
            case .labels(let l): sandbox = l
            case .notFound: break
            case .failed(let r): return r
            }
        } else {
            sandbox = own  // the sandbox itself
        }
        guard let m = PodMetadata(container: own, sandbox: sandbox), m.podUID == podUID else { return .notFound }
        return .found(m)
    }
}
