import FlowmeterCore

/// What one pass of the pipeline produced, as every sink sees it.
public struct TickOutput: Sendable {
    public let pass: Pass
    /// The pass's flow records: evicted entries first, then the flows ring's.
    public let flows: [FlowRecord]
    /// The service pair of each of `flows` (same index; nil: not joined to a socket).
    public let flowPairs: [ServicePair?]
    /// Packets dropped this pass, by flow key (flags empty) and reason: on
    /// this namespace's interfaces, as tc keys the flows. Empty without the
    /// drop program, and on early passes (drops are read once an interval).
    public let flowDrops: [FlowKey: DropsByReason]
    /// Socket records applied to the connection table, in kernel time order.
    public let events: [SocketEvent]
    /// DNS queries that ended this pass (answered or timed out), with the
    /// service pair each was counted under. Empty without the DNS programs.
    public let dns: [(outcome: DNSOutcome, pair: ServicePair?)]
    /// Cgroup paths of the events' owners, by cgroup id.
    public let cgroupPaths: [UInt64: String]
    /// Kubernetes identities of the events' owners the runtime has named, by cgroup id.
    public let pods: [UInt64: PodIdentity]
    /// Interface names by ifindex, as of this pass.
    public let interfaceNames: [UInt32: String]
    /// Monotonic to wall clock, read once for the pass.
    public let clock: ClockMapping
    /// The accounting after this pass, export statistics included (as of
    /// before the sinks ran): a copy taken only for the sinks that ask.
    public let accounting: @Sendable () -> Accounting

    public init(
        pass: Pass, flows: [FlowRecord], flowPairs: [ServicePair?], flowDrops: [FlowKey: DropsByReason] = [:],
        events: [SocketEvent], dns: [(outcome: DNSOutcome, pair: ServicePair?)] = [],
        cgroupPaths: [UInt64: String], pods: [UInt64: PodIdentity] = [:], interfaceNames: [UInt32: String], clock: ClockMapping,
        accounting: @escaping @Sendable () -> Accounting
    ) {
        self.pods = pods
        self.pass = pass; self.flows = flows; self.flowPairs = flowPairs; self.flowDrops = flowDrops; self.events = events
        self.dns = dns
        self.cgroupPaths = cgroupPaths; self.interfaceNames = interfaceNames; self.clock = clock
        self.accounting = accounting
    }
}

/// A consumer of every pass: the flow log, IPFIX, OTLP. Adding an exporter
/// is one type conforming to this, given to `Pipeline`'s `sinks`.
///
/// `/metrics` and the local API are not sinks: they are pulled by their
/// clients and read the pipeline's published accounting (`Pipeline.accounting`)
/// when asked, so a scrape costs nothing between scrapes.
public protocol Sink: AnyObject, Sendable {
    /// The `exporter` label of its statistics (flowmeter_export_records_total).
    var name: String { get }
    /// Takes one pass. A sink that throws is logged and counted (one failure
    /// per pass) by the pipeline; the other sinks still get the pass.
    func consume(_ output: TickOutput) throws
    /// Its statistics so far, in its own units; the pipeline publishes them
    /// after every pass (the one path for every exporter's statistics).
    var stats: ExportStats { get }
    /// After the last pass: deliver what waits, within a bounded time.
    func stop()
}

extension Sink {
    public func stop() {}
}
