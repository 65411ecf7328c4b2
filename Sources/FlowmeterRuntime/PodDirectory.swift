// The cache of pod identities by container, filled off the collector's path.
//
// The pipeline calls `identity(cgroupPath:)` on every pass for every socket
// owner; it gets what is known now. A container not asked about yet is queued
// for the lookup task (`run`), which asks the runtimes one container at a time
// and stores the answer. Failures are cached too, with a time after which the
// next ask queues the container again, so a runtime that is down is asked
// again every `retryNanos`, not once per socket record.

import FlowmeterCore
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A container runtime that can name a pod's container.
public protocol PodMetadataSource: Sendable {
    /// The `source` label: "containerd", "docker".
    var name: String { get }
    /// Looks a container up. `podUID` is the pod's UID from the cgroup path.
    func lookup(containerID: String, podUID: String) async -> PodLookupResult
}

public enum PodLookupResult: Sendable {
    case found(PodMetadata)
    case notFound
    case unavailable(String)
    case error(String)

    var outcome: LookupOutcome {
        switch self {
        case .found: .found
        case .notFound: .notFound
        case .unavailable: .unavailable
        case .error: .error
        }
    }
}

public final class PodDirectory: PodNames {
    /// Runtimes asked in order; the first that names the container wins.
    let sources: [any PodMetadataSource]
    let appNameLabel: Bool
    /// How long a failed lookup is believed before the container is asked about again.
    public let retryNanos: UInt64
    /// Entries no one asked about for this long are forgotten (their pods are gone).
    public let forgetNanos: UInt64
    let logger: Logger
    let now: @Sendable () -> UInt64

    enum Entry {
        case pending
        /// Named; `cgroupPath` finds its processes, and so its network namespace.
        case known(PodIdentity, cgroupPath: String)
        /// Asked, no name; asked again after `retryAt`.
        case failed(retryAt: UInt64)
    }
    struct State {
        var entries: [String: (entry: Entry, lastAsked: UInt64)] = [:]
        var generation: UInt64 = 0
        var counts: [String: [LookupOutcome: UInt64]] = [:]
        var lastSweep: UInt64 = 0
        /// The last outcome logged per runtime, so a runtime going down or
        /// coming back is one log line, not one per container.
        var lastOutcome: [String: LookupOutcome] = [:]
        /// The endpoint rows as of the last address read.
        var endpoints: [EndpointInfo] = []
    }
    private let state = Mutex(State())
    private let requests: AsyncStream<(containerID: String, podUID: String, cgroupPath: String)>
    private let enqueue: AsyncStream<(containerID: String, podUID: String, cgroupPath: String)>.Continuation

    /// This node's name (flowmeter_endpoint_info's `node`).
    let node: String
    /// The cgroup2 mount, where a pod container's processes are listed.
    let cgroupRoot: String?
    /// How often the addresses of the pods and the node are read again.
    public let addressRefreshNanos: UInt64

    public init(
        sources: [any PodMetadataSource], appNameLabel: Bool, retryNanos: UInt64 = 2_000_000_000,
        forgetNanos: UInt64 = 600_000_000_000, node: String = "", cgroupRoot: String? = nil,
        addressRefreshNanos: UInt64 = 5_000_000_000, logger: Logger,
        now: @escaping @Sendable () -> UInt64 = PodDirectory.monotonicNanos
    ) {
        self.node = node; self.cgroupRoot = cgroupRoot; self.addressRefreshNanos = addressRefreshNanos
        self.sources = sources; self.appNameLabel = appNameLabel; self.retryNanos = retryNanos
        self.forgetNanos = forgetNanos; self.logger = logger; self.now = now
        // Unbounded is bounded by the containers on the node: each is queued
        // at most once per retry period.
        (requests, enqueue) = AsyncStream.makeStream()
    }

    public static func monotonicNanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    public var generation: UInt64 { state.withLock { $0.generation } }

    public var lookupCounts: [LookupCount] {
        state.withLock { st in
            // Every source and outcome, zero included: a rate() over a series
            // that appears only at the first failure would miss it.
            sources.flatMap { s in
                LookupOutcome.allCases.map { o in LookupCount(source: s.name, outcome: o, count: st.counts[s.name]?[o] ?? 0) }
            }
        }
    }

    public func identity(cgroupPath: String) -> PodIdentity? {
        guard !sources.isEmpty, let w = CgroupWorkload.parse(cgroupPath), w.kind == .kubernetes,
            let container = w.containerID, let uid = w.podUID
        else { return nil }
        let t = now()
        return state.withLock { st -> PodIdentity? in
            sweep(&st, now: t)
            switch st.entries[container]?.entry {
            case .known(let id, _):
                st.entries[container]?.lastAsked = t
                return id
            case .pending:
                st.entries[container]?.lastAsked = t
                return nil
            case .failed(let retryAt) where t < retryAt:
                st.entries[container]?.lastAsked = t
                return nil
            case .failed, nil:
                st.entries[container] = (.pending, t)
                enqueue.yield((container, uid, cgroupPath))
                return nil
            }
        }
    }

    /// Forgets entries of containers no socket asked about for `forgetNanos`
    /// (at most once a minute), so the cache follows the node's pods.
    private func sweep(_ st: inout State, now t: UInt64) {
        guard t &- st.lastSweep > 60_000_000_000 else { return }
        st.lastSweep = t
        st.entries = st.entries.filter { t &- $0.value.lastAsked < forgetNanos }
    }

    public var endpoints: [EndpointInfo] { state.withLock { $0.endpoints } }

    /// Answers the queued lookups until cancelled (or `finish`), and reads
    /// the addresses of the named pods and of the node every `addressRefreshNanos`.
    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    self.refreshAddresses()
                    try? await Task.sleep(nanoseconds: self.addressRefreshNanos)
                }
            }
            for await r in requests {
                if Task.isCancelled { break }
                await lookup(containerID: r.containerID, podUID: r.podUID, cgroupPath: r.cgroupPath)
                refreshAddresses()
            }
            group.cancelAll()
        }
    }

    /// Reads each named pod's addresses from the network namespace of a
    /// process of its container (/proc/<pid>/net), and the node's from our
    /// own. A pod whose container has no process left (it is gone) has none:
    /// its rows vanish at this read.
    func refreshAddresses() {
        let known = state.withLock { st in
            st.entries.compactMap { e -> (PodIdentity, String)? in
                if case .known(let id, let path) = e.value.entry { return (id, path) }
                return nil
            }
        }
        var pods: [(address: String, identity: PodIdentity)] = []
        for (id, path) in known {
            guard let root = cgroupRoot,
                let procs = try? String(contentsOfFile: root + path + "/cgroup.procs", encoding: .utf8),
                let pid = procs.split(separator: "\n").first
            else { continue }
            for a in Self.addresses(procNet: "/proc/\(pid)/net") { pods.append((a, id)) }
        }
        let rows = EndpointInfo.rows(pods: pods, nodeAddresses: Self.addresses(procNet: "/proc/self/net"), node: node)
        state.withLock { $0.endpoints = rows }
    }

    static func addresses(procNet dir: String) -> [String] {
        let v4 = (try? String(contentsOfFile: dir + "/fib_trie", encoding: .utf8)).map { LocalAddresses.ipv4(fibTrie: $0) } ?? []
        let v6 = (try? String(contentsOfFile: dir + "/if_inet6", encoding: .utf8)).map { LocalAddresses.ipv6(ifInet6: $0) } ?? []
        return v4 + v6
    }

    /// Stops `run` after the lookup in progress.
    public func finish() { enqueue.finish() }

    /// Asks each runtime in turn; stores the first name, else a failure.
    func lookup(containerID: String, podUID: String, cgroupPath: String = "") async {
        var identity: PodIdentity?
        for source in sources {
            let result = await source.lookup(containerID: containerID, podUID: podUID)
            record(source: source.name, result)
            if case .found(let m) = result {
                identity = PodIdentity(metadata: m, appNameLabel: appNameLabel)
                break
            }
        }
        let t = now()
        state.withLock { st in
            let lastAsked = st.entries[containerID]?.lastAsked ?? t
            if let identity {
                st.entries[containerID] = (.known(identity, cgroupPath: cgroupPath), lastAsked)
                st.generation += 1
            } else {
                st.entries[containerID] = (.failed(retryAt: t + retryNanos), lastAsked)
            }
        }
    }

    private func record(source: String, _ result: PodLookupResult) {
        let previous = state.withLock { st -> LookupOutcome? in
            st.counts[source, default: [:]][result.outcome, default: 0] += 1
            defer { st.lastOutcome[source] = result.outcome }
            return st.lastOutcome[source]
        }
        // A change of state is worth a line; the same failure again is counted only.
        guard previous != result.outcome else { return }
        switch result {
        case .found(let m):
            logger.info("container runtime names pods", metadata: ["runtime": "\(source)", "example": "\(m.namespace)/\(m.pod)"])
        case .notFound:
            logger.info("container runtime does not know a pod's container; it stays pod:<uid>", metadata: ["runtime": "\(source)"])
        case .unavailable(let why):
            logger.notice(
                "container runtime unreachable; pods stay named pod:<uid> until it answers",
                metadata: ["runtime": "\(source)", "error": "\(why)"])
        case .error(let why):
            logger.notice(
                "container runtime lookup failed; pods stay named pod:<uid> until it answers",
                metadata: ["runtime": "\(source)", "error": "\(why)"])
        }
    }
}
