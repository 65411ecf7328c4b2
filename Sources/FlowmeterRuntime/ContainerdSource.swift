// containerd over its gRPC API: the containers service (proto/containerd),
// in the namespace the kubelet's CRI plugin uses.
//
// One List call per lookup, filtered to the pod's UID, returns the pod's
// containers and its sandbox: the container's own labels name the container
// and the sandbox's carry the pod's labels. The CRI plugin marks which is
// which with io.cri-containerd.kind.

import FlowmeterContainerdProto
import FlowmeterCore
import GRPCCore
import GRPCNIOTransportHTTP2Posix

#if canImport(Glibc)
    import Glibc
#endif

public struct ContainerdSource: PodMetadataSource {
    public let name = "containerd"
    public let socketPath: String
    /// The containerd namespace the kubelet's containers live in.
    public let namespace: String
    /// How long one lookup may take, connection included.
    public let timeout: Duration

    public static let defaultSocket = "/run/containerd/containerd.sock"
    public static let kubernetesNamespace = "k8s.io"
    /// The CRI plugin's label: "sandbox" on a pod's sandbox, "container" on the others.
    public static let kindLabel = "io.cri-containerd.kind"

    public init(socketPath: String = defaultSocket, namespace: String = kubernetesNamespace, timeout: Duration = .seconds(2)) {
        self.socketPath = socketPath; self.namespace = namespace; self.timeout = timeout
    }

    /// The filter containerd evaluates: every container whose label names the pod.
    public static func podFilter(uid: String) -> String {
        "labels.\"\(KubeletLabel.podUID)\"==\"\(uid)\""
    }

    /// The pod of `containerID` among its pod's containers (the List
    /// answer): nil when it is not among them or lacks the kubelet's labels.
    public static func metadata(containerID: String, among containers: [(id: String, labels: [String: String])]) -> PodMetadata? {
        guard let own = containers.first(where: { $0.id == containerID }) else { return nil }
        let sandbox = containers.first(where: { $0.labels[kindLabel] == "sandbox" })?.labels ?? [:]
        return PodMetadata(container: own.labels, sandbox: sandbox)
    }

    public func lookup(containerID: String, podUID: String) async -> PodLookupResult {
        // access(2) first: a missing socket is "unavailable" at once, without
        // a connection attempt and its backoff.
        guard access(socketPath, F_OK) == 0 else { return .unavailable("no socket at \(socketPath)") }
        do {
            // A connection per lookup: lookups are once per new container, and
            // a fresh connection finds a restarted containerd at once, where a
            // kept channel would wait out its reconnect backoff.
            let transport = try HTTP2ClientTransport.Posix(
                target: .unixDomainSocket(path: socketPath), transportSecurity: .plaintext)
            let containers = try await withGRPCClient(transport: transport) { client in
                let service = Containerd_Services_Containers_V1_Containers.Client(wrapping: client)
                var request = Containerd_Services_Containers_V1_ListContainersRequest()
                request.filters = [Self.podFilter(uid: podUID)]
                var options = CallOptions.defaults
                options.timeout = timeout
                options.waitForReady = false
                // containerd takes the namespace from this header on every call.
                var metadata = Metadata()
                metadata.addString(namespace, forKey: "containerd-namespace")
                let response = try await service.list(request, metadata: metadata, options: options)
                return response.containers.map { (id: $0.id, labels: $0.labels) }
            }
            guard let m = Self.metadata(containerID: containerID, among: containers) else { return .notFound }
            return .found(m)
        } catch let e as RPCError {
            switch e.code {
            case .unavailable, .deadlineExceeded: return .unavailable("\(e.code): \(e.message)")
            case .notFound: return .notFound
            default: return .error("\(e.code): \(e.message)")
            }
        } catch {
            return .error("\(error)")
        }
    }
}
