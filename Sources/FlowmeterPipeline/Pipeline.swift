import FlowmeterCore
import Foundation
import Logging
import Synchronization

/// The accounting state, shared between the pipeline (writer) and the pulled
/// endpoints (/metrics, the API), which read snapshots.
public final class SharedAccounting: Sendable {
    private let state: Mutex<Accounting>
    public init(_ initial: Accounting = Accounting()) { state = Mutex(initial) }
    public func update(_ body: (inout Accounting) -> Void) { state.withLock { body(&$0) } }
    public func snapshot() -> Accounting { state.withLock { $0 } }
    /// One part of the state, without copying the rest.
    public func read<T>(_ body: (Accounting) -> T) -> T { state.withLock { body($0) } }
}

/// ifindex -> interface name, for labels. Names of interfaces that went away
/// are kept: their last flows are still evicted after they are gone.
public final class InterfaceNames: Sendable {
    private let names: Mutex<[UInt32: String]>
    public init(_ initial: [UInt32: String]) { names = Mutex(initial) }
    public func set(_ ifindex: UInt32, _ name: String) { names.withLock { $0[ifindex] = name } }
    public func snapshot() -> [UInt32: String] { names.withLock { $0 } }
}

/// What a pass does.
public enum Pass: Sendable, Equatable {
    /// Every interval: evict the kernel's table, take both rings and the socket updates.
    case interval
    /// Between intervals, when a ring's reader holds more records than its
    /// soft limit: take the rings only, so what waits in memory stays
    /// bounded however high the record rate (docs/reliability.md, "Memory").
    case early
    /// On stop, after detaching: everything the kernel still holds.
    case final
}

/// The collector: kernel sources produce records, the records go into the
/// accounting (interfaces, flows, connections, service pairs), and every pass
/// feeds the sinks. On stop it detaches first and then flushes what the
/// kernel still holds, so a stop loses nothing.
///
/// All mutable state is in `state`, which only the pass in progress holds
/// (one task runs the passes), so the compiler checks the sharing.
public final class Pipeline: Sendable {
    public let flows: FlowKernel
    public let sockets: SocketKernel?
    /// The drop program, when the kernel took it.
    public let drops: DropKernel?
    /// The DNS programs, when the kernel took them.
    public let dns: DNSKernel?
    public let sinks: [Sink]
    /// What the pulled endpoints read.
    public let accounting: SharedAccounting
    public let names: InterfaceNames
    /// The path of a cgroup id, or nil (a miss may rescan cgroupfs: called
    /// outside the accounting lock).
    let cgroupPath: @Sendable (UInt64) -> String?
    /// Kubernetes identities of local pods, from the container runtime (never waits).
    let pods: (any PodNames)?
    public let interval: FlowDuration
    let logger: Logger
    let clock: PipelineClock

    struct State {
        /// Live connections and UDP sockets.
        var connections = ConnectionTable()
        /// The pass's records summed per flow; its storage goes on to sum the next ones.
        var flowTable = FlowTable()
        /// Flows of this interval's early passes, for the API's flows list at the tick.
        var earlyFlows: [(record: FlowRecord, pair: ServicePair?)] = []
        /// Finds sockets whose close was lost.
        var lostCloses = LostCloseSweep()
        /// The events reader's stall count as of the sweep's last look.
        var sweepStalls: UInt64 = 0
        /// Reader stalls already logged.
        var reportedStalls: (flows: UInt64, events: UInt64) = (0, 0)
        /// The pod names' generation the services were last resolved under.
        var podGeneration: UInt64 = 0
        /// Per sink: passes whose consume threw, and the last error logged.
        var sinkFailures: [String: UInt64] = [:]
        var sinkLastError: [String: String] = [:]
        /// Queries waiting for their answer (empty without the DNS programs).
        var dns = DNSTracker(timeoutNanos: 5_000_000_000)
        /// DNS outcomes of the last interval, counted at this one: the
        /// client's socket record comes through another ring and may reach
        /// the daemon a pass after its query's.
        var dnsDeferred: [DNSOutcome] = []
    }
    private let state = Mutex(State())

    public init(
        flows: FlowKernel, sockets: SocketKernel?, drops: DropKernel? = nil, dns: DNSKernel? = nil,
        dnsTimeout: FlowDuration = FlowDuration(nanoseconds: 5_000_000_000), dnsNames: Bool = true, sinks: [Sink],
        accounting: SharedAccounting,
        names: InterfaceNames, cgroupPath: @escaping @Sendable (UInt64) -> String?, pods: (any PodNames)? = nil,
        interval: FlowDuration, logger: Logger, clock: PipelineClock = .system
    ) {
        self.pods = pods
        self.flows = flows; self.sockets = sockets; self.drops = drops; self.dns = dns; self.sinks = sinks
        self.accounting = accounting
        state.withLock { $0.dns = DNSTracker(timeoutNanos: dnsTimeout.nanoseconds, keepNames: dnsNames) }
        self.names = names; self.cgroupPath = cgroupPath; self.interval = interval; self.logger = logger
        self.clock = clock
        accounting.update { a in for s in sinks { a.exports[s.name] = s.stats } }
    }

    /// How often the loop looks at the readers' backlogs between passes. At
    /// the churn measured (74,000 socket records/s) a tenth of a second adds
    /// under half a soft limit (`RingLimits`); a flood of new flows past a
    /// full table can reach the hard limit between looks, and its records
    /// then wait in the kernel ring.
    public static let backlogCheckNanos: UInt64 = 100_000_000

    /// Passes until the task is cancelled: one every interval, early ones
    /// when a reader's backlog passes its soft limit. Then `finish()`.
    public func run() async {
        flows.startRing()
        sockets?.startRing()
        dns?.startRing()
        var next = clock.monotonic() + interval.nanoseconds
        while !Task.isCancelled {
            let now = clock.monotonic()
            if now >= next {
                pass(.interval)
                next += interval.nanoseconds
                // Behind by more than an interval (the host stalled us): one pass, not a burst.
                if next <= now { next = now + interval.nanoseconds }
            } else if flows.ringBacklogged || sockets?.ringBacklogged == true {
                pass(.early)
            } else {
                do { try await Task.sleep(nanoseconds: min(next - now, Self.backlogCheckNanos)) } catch { break }
            }
        }
        finish()
    }

    /// Stops counting and flushes: detach (nothing new is counted), stop the
    /// readers (they take what the kernel rings hold), one final pass over
    /// both tables, then the sinks deliver what waits.
    public func finish() {
        flows.detach()
        sockets?.detach()
        drops?.detach()
        dns?.detach()
        accounting.update { $0.readiness.attachment = .detached }
        flows.stopRing()
        sockets?.stopRing()
        dns?.stopRing()
        pass(.final)
        for s in sinks { s.stop() }
        publishSinkStats()
        // With the hooks detached nothing more reaches the events ring, so the
        // socket totals here are final (Tests/e2e/test_ring_overflow.py checks
        // them against the kernel's count of records the programs tried).
        let done = accounting.snapshot()
        var metadata: Logger.Metadata = ["records": "\(done.records.values.reduce(0, +))"]
        if sockets != nil {
            metadata["socket_events"] = "\(done.socketEvents)"
            metadata["socket_events_lost"] = "\(done.socketEventsLost)"
        }
        logger.info("detached and flushed", metadata: metadata)
    }

    /// One pass: kernel records in, accounting updated, sinks fed.
    public func pass(_ pass: Pass) {
        let output: TickOutput = state.withLock { st in account(pass, &st) }
        publishSinkStats()
        for sink in sinks {
            do { try sink.consume(output) } catch {
                let text = "\(error)"
                let new = state.withLock { st in
                    st.sinkFailures[sink.name, default: 0] += 1
                    defer { st.sinkLastError[sink.name] = text }
                    return st.sinkLastError[sink.name] != text
                }
                // One line per kind of failure, not one per pass.
                if new { logger.warning("exporter failed", metadata: ["exporter": "\(sink.name)", "error": "\(text)"]) }
            }
        }
        publishSinkStats()
        if pass == .interval {
            // The interval is evicted, counted and handed to the sinks: one
            // more completed pass for /readyz, with the readers' stalls so far.
            var stalls = ["flows": flows.ringStalls]
            if let sockets { stalls["events"] = sockets.ringStalls }
            accounting.update { $0.readiness.intervalPassed(stalls: stalls) }
        }
    }

    /// Every sink's statistics into the accounting: the one path for all of them.
    func publishSinkStats() {
        let failures = state.withLock { $0.sinkFailures }
        let stats = sinks.map { ($0.name, $0.stats) }
        accounting.update { a in
            for (name, s) in stats {
                var x = s
                x.failed += failures[name] ?? 0
                a.exports[name] = x
            }
        }
    }

    private func account(_ pass: Pass, _ st: inout State) -> TickOutput {
        var batch: [FlowRecord] = []
        do {
            switch pass {
            case .interval: batch = try flows.evict()
            case .final: batch = try flows.drainAll()
            case .early: break
            }
        } catch {
            logger.error("flow table eviction failed", metadata: ["error": "\(error)"])
        }
        let entries = batch.count
        // The pass's flows, summed per flow: the ring's as they arrived (while
        // the kernel's table is full there is one record per packet), then the
        // evicted ones. What follows hashes strings once per flow, and admits
        // new service pairs in this order.
        let fromRing = flows.takeRing(summingInto: &st.flowTable)
        if fromRing.rejected > 0 {
            logger.warning("ring records with an unknown layout", metadata: ["count": "\(fromRing.rejected)"])
        }
        st.flowTable.add(batch)
        batch += fromRing.records
        let table = st.flowTable, ringRecords = fromRing.records.count
        // The flow (entry of `table`) of batch[i]: the table took the ring's records first.
        func flowEntry(_ i: Int) -> Int { table.entry(ofRecord: i < entries ? ringRecords + i : i - entries) }
        let counters = try? flows.readCounters()
        let names = self.names.snapshot()
        // Updates first, then the ring: a close raised after the updates were
        // read is in this drain, and the table orders both by kernel timestamp.
        var updates: [SocketEvent] = []
        if let sockets, pass != .early {
            do { updates = try sockets.collectUpdates() } catch {
                logger.error("socket updates failed", metadata: ["error": "\(error)"])
            }
        }
        // DNS before the socket records: a connection opened right after its
        // answer is then named by it (the kernel wakes the DNS reader for each
        // record, so the answer is in).
        let dnsEvents = dns?.take() ?? []
        let ringEvents = sockets?.takeEvents() ?? []
        let events = st.connections.apply(ringEvents, updates)
        let lostCloses = pass == .interval ? sweepLostCloses(&st) : []
        if pass == .interval { st.connections.compact() }
        // Cgroup paths are looked up here, outside the accounting lock.
        var paths: [UInt64: String] = [:]
        for e in events { if let id = e.owner?.cgroupID, paths[id] == nil, let p = cgroupPath(id) { paths[id] = p } }
        // Pod identities likewise (a cache read; a miss queues a lookup and names the pod pod:<uid> for now).
        // The generation is read first: a name that arrives during the pass is taken at the next one.
        let podGeneration = pods?.generation ?? 0
        let namesChanged = podGeneration != st.podGeneration
        st.podGeneration = podGeneration
        var identities: [UInt64: PodIdentity] = [:]
        if let pods { for (id, p) in paths { if let i = pods.identity(cgroupPath: p) { identities[id] = i } } }
        let lookups = pods?.lookupCounts
        let podEndpoints = pods?.endpoints
        let now = clock.monotonic()
        var entryPairs: [ServicePair?] = []
        let socketCounters = try? sockets?.readCounters()
        let stalls = (flows: flows.ringStalls, events: sockets?.ringStalls ?? 0)
        // At most once an interval: under sustained overload every early pass would say it again.
        if pass != .early && (stalls.flows > st.reportedStalls.flows || stalls.events > st.reportedStalls.events) {
            logger.warning(
                "a ring reader reached its limit of waiting records; records past it wait in the kernel ring, and are counted lost if that fills",
                metadata: ["flows_ring_stalls": "\(stalls.flows)", "events_ring_stalls": "\(stalls.events)"])
            st.reportedStalls = stalls
        }
        // Drops once an interval (and at the end): their counts are cumulative in the kernel.
        var dropSamples: [DropSample] = []
        var dropsLost: UInt64?
        if let drops, pass != .early {
            dropsLost = try? drops.lost()
            do { dropSamples = try drops.take() } catch {
                logger.error("reading packet drops failed", metadata: ["error": "\(error)"])
            }
        }
        let ownNetns = drops?.ownNetns ?? 0
        // DNS: the messages of this pass end queries; the timeouts once an
        // interval. Counted a pass late (see State.dnsDeferred), all at the end.
        var dnsReady: [DNSOutcome] = []
        var dnsLearned: [DNSOutcome] = []
        var dnsLost: DNSLost?
        if let dns {
            let fresh = st.dns.take(dnsEvents)
            dnsLearned = fresh
            if pass != .early {
                var timedOut = st.dns.sweep(now: clock.monotonic())
                if pass == .final { timedOut = [] }
                dns.forget(timedOut.map(\.key))
                dnsReady = st.dnsDeferred
                st.dnsDeferred = fresh + timedOut
                if pass == .final {
                    dnsReady += st.dnsDeferred
                    st.dnsDeferred = []
                }
            } else {
                st.dnsDeferred += fresh
            }
            var l = DNSLost()
            if let k = try? dns.lost() { l.ring = k.ring; l.pendingFull = k.pendingFull }
            l.evicted = st.dns.evicted
            l.unmatched = st.dns.unmatched
            dnsLost = l
        }
        let activeConnections = pass != .early ? Array(st.connections.active.values) : nil
        var earlyFlows = st.earlyFlows
        var dnsPairs: [ServicePair?] = []
        accounting.update { a in
            if pass != .early { a.setFlowTableEntries(entries) }
            if let counters { a.kernel = counters }
            // Names clients resolved first, then sockets: a connection
            // opened after its answer is named by it; a flow of a connection
            // opened in this pass then finds its socket.
            if namesChanged { a.services?.namesChanged() }
            if let lookups { a.metadataLookups = lookups }
            if let podEndpoints { a.endpoints = podEndpoints }
            a.services?.learn(dns: dnsLearned)
            a.services?.apply(events, cgroupPath: { paths[$0] }, pod: { identities[$0] })
            a.services?.apply(lostCloses, cgroupPath: { paths[$0] }, pod: { identities[$0] })
            entryPairs = a.count(flows: table, names: names, now: now)
            // After the sockets and flows: a drop finds the socket of its 5-tuple.
            a.count(drops: dropSamples, names: names, ownNetns: ownNetns, now: now)
            if let dropsLost { a.dropsLost = dropsLost }
            let pairs = a.services?.apply(dns: dnsReady) ?? []
            dnsPairs = pairs.count == dnsReady.count ? pairs : Array(repeating: nil, count: dnsReady.count)
            if let dnsLost { a.dnsLost = dnsLost }
            // The API lists this interval's flows, the largest first past its cap.
            let listed = Accounting.largestFlows(earlyFlows, batch, pair: { i in entryPairs.isEmpty ? nil : entryPairs[flowEntry(i)] })
            if pass == .early {
                earlyFlows = listed
            } else {
                a.lastFlows = listed
                earlyFlows = []
            }
            if let activeConnections {
                a.services?.expire(now: now)
                // The API's copy, as of the pass (copying 60,000 sockets ten times a second is not worth it).
                a.connections = activeConnections
            }
            a.addSocketEvents(ringEvents.count)
            a.addSocketUpdates(updates.count)
            if let socketCounters { a.socketEventsLost = socketCounters.eventsLost }
        }
        st.earlyFlows = earlyFlows
        let pairs: [ServicePair?] =
            entryPairs.isEmpty
            ? Array(repeating: nil, count: batch.count)
            : batch.indices.map { entryPairs[flowEntry($0)] }
        let shared = accounting
        return TickOutput(
            pass: pass, flows: batch, flowPairs: pairs, flowDrops: Accounting.dropsByFlow(dropSamples, ownNetns: ownNetns),
            events: events, dns: Array(zip(dnsReady, dnsPairs)).map { (outcome: $0.0, pair: $0.1) }, cgroupPaths: paths,
            pods: identities,
            interfaceNames: names, clock: clock.mapping(), accounting: { shared.snapshot() })
    }

    /// Closes for sockets whose close record was lost, applied to the
    /// connection table here (the caller applies them to the services); and
    /// a read of the kernel's live sockets when more events were lost.
    /// Not logged to the flow log: no kernel record says when they closed.
    private func sweepLostCloses(_ st: inout State) -> [SocketEvent] {
        guard let sockets else { return [] }
        if sockets.ringStalls != st.sweepStalls {
            // Records from before the last read may still wait in the kernel ring.
            st.sweepStalls = sockets.ringStalls
            st.lostCloses.cancel()
        }
        let closes = st.lostCloses.staleCloses(table: st.connections, now: clock.monotonic())
        for c in closes { _ = st.connections.apply(c) }
        if !closes.isEmpty {
            logger.notice("forgot sockets whose close record was lost (events ring full)", metadata: ["sockets": "\(closes.count)"])
        }
        guard let lost = try? sockets.readCounters().eventsLost, st.lostCloses.shouldRead(lost: lost) else { return closes }
        do {
            if let ids = try sockets.liveSocketIDs() {
                st.lostCloses.record(kernelIDs: ids, table: st.connections, at: clock.monotonic())
            }
        } catch {
            logger.warning("cannot read the kernel's socket table", metadata: ["error": "\(error)"])
        }
        return closes
    }
}

/// The clocks a pass reads: the system's, or a test's.
public struct PipelineClock: Sendable {
    public let monotonic: @Sendable () -> UInt64
    public let mapping: @Sendable () -> ClockMapping

    public init(monotonic: @escaping @Sendable () -> UInt64, mapping: @escaping @Sendable () -> ClockMapping) {
        self.monotonic = monotonic; self.mapping = mapping
    }

    public static let system = PipelineClock(
        monotonic: {
            var mono = timespec()
            clock_gettime(CLOCK_MONOTONIC, &mono)
            return UInt64(mono.tv_sec) * 1_000_000_000 + UInt64(mono.tv_nsec)
        },
        mapping: {
            var rt = timespec(), mono = timespec()
            clock_gettime(CLOCK_MONOTONIC, &mono)
            clock_gettime(CLOCK_REALTIME, &rt)
            return ClockMapping(
                realtimeNanos: Int64(rt.tv_sec) * 1_000_000_000 + Int64(rt.tv_nsec),
                monotonicNanos: Int64(mono.tv_sec) * 1_000_000_000 + Int64(mono.tv_nsec))
        })
}
