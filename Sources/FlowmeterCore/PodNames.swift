// The seam between the collector and the node's container runtimes: the
// pipeline asks for a cgroup's pod identity on its own path and must never
// wait, so the answer is whatever is known now; the lookups run elsewhere
// (FlowmeterRuntime's PodDirectory).

/// How one runtime lookup ended, the `outcome` label of
/// flowmeter_metadata_lookups_total.
public enum LookupOutcome: String, Sendable, CaseIterable {
    /// The runtime named the container's pod.
    case found
    /// The runtime answered, but has no such container, or not a pod's.
    case notFound = "not_found"
    /// The runtime could not be reached (no socket, refused, timed out).
    case unavailable
    /// The runtime answered with an error, or an answer we could not read.
    case error
}

/// One row of flowmeter_metadata_lookups_total.
public struct LookupCount: Sendable, Hashable {
    /// The runtime asked: "containerd", "docker".
    public var source: String
    public var outcome: LookupOutcome
    public var count: UInt64
    public init(source: String, outcome: LookupOutcome, count: UInt64) {
        self.source = source; self.outcome = outcome; self.count = count
    }
}

/// Pod identities by cgroup path, as far as known now.
public protocol PodNames: Sendable {
    /// The identity of the pod container at `cgroupPath`, if a runtime has
    /// named it; otherwise nil at once, and a lookup is started when none is
    /// pending or due. Never waits.
    func identity(cgroupPath: String) -> PodIdentity?
    /// Bumped whenever an identity becomes known: names given while it was
    /// pending should be given again.
    var generation: UInt64 { get }
    /// Lookups so far, by runtime and outcome.
    var lookupCounts: [LookupCount] { get }
    /// The addresses of this node's named pods and of the node itself, as
    /// last read (flowmeter_endpoint_info).
    var endpoints: [EndpointInfo] { get }
}
