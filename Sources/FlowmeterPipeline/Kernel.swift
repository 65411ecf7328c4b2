import FlowmeterCore

// What the pipeline needs of the kernel, as small protocols, so that a
// tick runs in unit tests on recorded batches without privileges. flowmeterd
// conforms FlowmeterBPF's programs to them (Sources/flowmeterd/KernelSources.swift).

/// The tc programs: the flow tables, the flows ring and their counters.
public protocol FlowKernel: AnyObject, Sendable {
    /// Swaps the tables and drains the one no program writes any more.
    func evict() throws -> [FlowRecord]
    /// Drains both tables (on stop, once nothing is attached).
    func drainAll() throws -> [FlowRecord]
    /// The tc programs' own counters (losses, insert failures, malformed packets).
    func readCounters() throws -> KernelCounters
    /// Starts the flows ring's reader thread.
    func startRing()
    /// Stops it, after taking what the kernel ring still holds.
    func stopRing()
    /// The ring's records since the last take, summed into `flows` per flow.
    func takeRing(summingInto flows: inout FlowTable) -> (records: [FlowRecord], rejected: UInt64)
    /// More records wait in the reader than its soft limit (an early pass is due).
    var ringBacklogged: Bool { get }
    /// Times the reader stopped draining at its hard limit.
    var ringStalls: UInt64 { get }
    /// Stops counting: interfaces are let go of and nothing new is added.
    func detach()
}

/// The socket programs: the events ring, the per-interval updates and the
/// kernel's socket table.
public protocol SocketKernel: AnyObject, Sendable {
    func startRing()
    func stopRing()
    /// The events ring's records since the last take.
    func takeEvents() -> [SocketEvent]
    var ringBacklogged: Bool { get }
    var ringStalls: UInt64 { get }
    /// UPDATEs of long-lived sockets (at most one per socket per interval).
    func collectUpdates() throws -> [SocketEvent]
    /// Records the programs could not put on the events ring; sockets the table could not take.
    func readCounters() throws -> (eventsLost: UInt64, tableFull: UInt64)
    /// The ids of the sockets the kernel tracks; nil when the walk did not finish.
    func liveSocketIDs() throws -> Set<UInt64>?
    /// Detaches the hooks: nothing new reaches the events ring.
    func detach()
}

/// The packet-drop program (optional: a kernel that refuses it loses drops only).
public protocol DropKernel: AnyObject, Sendable {
    /// Drops since the last take, their reasons named by the running kernel.
    func take() throws -> [DropSample]
    /// Drops neither kernel table had room for (cumulative): counted nowhere.
    func lost() throws -> UInt64
    /// The network namespace (inode number) whose interfaces the tc programs
    /// count: only drops on its interfaces count as interface drops.
    var ownNetns: UInt32 { get }
    /// Detaches the hook: nothing more is counted.
    func detach()
}

/// The DNS programs (optional: a kernel that refuses them loses DNS only).
public protocol DNSKernel: AnyObject, Sendable {
    func startRing()
    func stopRing()
    /// The DNS messages since the last take, in ring order.
    func take() -> [DNSEvent]
    /// Removes timed-out queries from the kernel's pending table.
    func forget(_ keys: [DNSQueryKey])
    /// Records the ring had no room for; queries the pending table had no room for (cumulative).
    func lost() throws -> (ring: UInt64, pendingFull: UInt64)
    /// Detaches the programs.
    func detach()
}
