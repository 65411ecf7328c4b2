import FlowmeterBPF
import FlowmeterCore
import FlowmeterExport
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// The accounting state, shared between the collector (writer) and the
/// HTTP handlers (readers of snapshots).
final class SharedAccounting: Sendable {
    private let state = Mutex(Accounting())
    func update(_ body: (inout Accounting) -> Void) { state.withLock { body(&$0) } }
    func snapshot() -> Accounting { state.withLock { $0 } }
}

/// ifindex -> interface name, for labels. Names of interfaces that went away
/// are kept: their last flows are still evicted after they are gone.
final class InterfaceNames: Sendable {
    private let names: Mutex<[UInt32: String]>
    init(_ initial: [UInt32: String]) { names = Mutex(initial) }
    func set(_ ifindex: UInt32, _ name: String) { names.withLock { $0[ifindex] = name } }
    func snapshot() -> [UInt32: String] { names.withLock { $0 } }
}

/// Evicts the flow tables every interval, drains the ring, updates the
/// accounting and writes the flow log. On graceful shutdown it detaches the
/// programs first and then flushes what the kernel still holds, so a stop
/// loses nothing.
final class Collector: Service, @unchecked Sendable {
    let program: FlowAccountingProgram
    let attacher: TCAttacher
    let ring: FlowsRing
    let shared: SharedAccounting
    let names: InterfaceNames
    let links: LinkMonitor?
    /// Socket telemetry, when its hooks are attached.
    let sockets: SocketPrograms?
    let socketEvents: RingReader<SocketEvent>?
    let cgroups = CgroupPaths()
    /// Live connections and UDP sockets (only the collector's tick touches it).
    var connections = ConnectionTable()
    /// The tick's records summed per flow. Handed to the ring every tick: it
    /// comes back holding the ring's records, and its storage goes on to sum
    /// the next ones (only the tick touches it).
    var flowTable = FlowTable()
    let flowLog: FlowLogWriter?
    let interval: FlowDuration
    let logger: Logger
    /// IPFIX: the encoder's state (templates, sequence) and the UDP sender.
    var ipfix: (sender: IPFIXSender, encoder: IPFIXEncoder)?
    var otlp: OTLPPusher?
    /// OTLP resource attributes and the start of the cumulative series.
    var otlpResource: [(String, String)] = []
    let startUnixNanos = UInt64(Date().timeIntervalSince1970 * 1e9)

    init(program: FlowAccountingProgram, attacher: TCAttacher, ring: FlowsRing, shared: SharedAccounting,
         names: InterfaceNames, links: LinkMonitor?, sockets: SocketPrograms?, socketEvents: RingReader<SocketEvent>?,
         flowLog: FlowLogWriter?, interval: FlowDuration, logger: Logger) {
        self.program = program; self.attacher = attacher; self.ring = ring; self.shared = shared
        self.names = names; self.links = links; self.sockets = sockets; self.socketEvents = socketEvents; self.flowLog = flowLog; self.interval = interval; self.logger = logger
    }

    /// What a tick does.
    enum Pass {
        /// Every interval: evict the kernel's table, take both rings and the socket updates.
        case interval
        /// Between intervals, when a ring's reader holds more records than its
        /// soft limit: take the rings only, so what waits in memory stays
        /// bounded however high the record rate (docs/reliability.md, "Memory").
        case early
        /// On stop, after detaching: everything the kernel still holds.
        case final
    }

    /// How often the loop looks at the readers' backlogs between ticks. At
    /// the churn measured (74,000 socket records/s) a tenth of a second adds
    /// under half a soft limit (`RingLimits`); a flood of new flows past a
    /// full table can reach the hard limit between looks, and its records
    /// then wait in the kernel ring.
    static let backlogCheckNanos: UInt64 = 100_000_000

    /// Flow log lines encoded before they are written.
    static let flowLogChunk = 4096

    /// Flows of this interval's early passes, for the API's flows list at the tick.
    var earlyFlows: [(record: FlowRecord, pair: ServicePair?)] = []
    /// Finds sockets whose close was lost (only the tick touches it).
    var lostCloses = LostCloseSweep()
    /// The events reader's stall count as of the sweep's last look.
    var sweepStalls: UInt64 = 0
    /// Reader stalls already logged.
    var reportedStalls: (flows: UInt64, events: UInt64) = (0, 0)

    func run() async throws {
        ring.start()
        socketEvents?.start()
        await cancelWhenGracefulShutdown {
            var next = Self.monotonicNow() + self.interval.nanoseconds
            while !Task.isCancelled {
                let now = Self.monotonicNow()
                if now >= next {
                    self.tick(.interval)
                    next += self.interval.nanoseconds
                    // Behind by more than an interval (the host stalled us): one tick, not a burst.
                    if next <= now { next = now + self.interval.nanoseconds }
                } else if self.ring.backlogged || self.socketEvents?.backlogged == true {
                    self.tick(.early)
                } else {
                    do { try await Task.sleep(nanoseconds: min(next - now, Self.backlogCheckNanos)) } catch { break }
                }
            }
        }
        // Stop following interfaces and detach, so nothing new is counted; then
        // flush both tables and the ring.
        links?.stop()
        attacher.detachAll()
        sockets?.detach()
        ring.stop()
        socketEvents?.stop()
        tick(.final)
        otlp?.stop()
        flowLog?.close()
        // With the hooks detached nothing more reaches the events ring, so the
        // socket totals here are final (Tests/e2e/test_ring_overflow.py checks
        // them against the kernel's count of records the programs tried).
        let done = shared.snapshot()
        var metadata: Logger.Metadata = ["records": "\(done.records.values.reduce(0, +))"]
        if sockets != nil {
            metadata["socket_events"] = "\(done.socketEvents)"
            metadata["socket_events_lost"] = "\(done.socketEventsLost)"
        }
        logger.info("detached and flushed", metadata: metadata)
    }

    func tick(_ pass: Pass) {
        var batch: [FlowRecord] = []
        do {
            switch pass {
            case .interval: batch = try program.evict()
            case .final: batch = try program.drainAll()
            case .early: break
            }
        } catch {
            logger.error("flow table eviction failed", metadata: ["error": "\(error)"])
        }
        let entries = batch.count
        // The tick's flows, summed per flow: the ring's as they arrived (while
        // the kernel's table is full there is one record per packet), then the
        // evicted ones. What follows hashes strings once per flow, and admits
        // new service pairs in this order.
        let fromRing = ring.take(summingInto: &flowTable)
        if fromRing.rejected > 0 {
            logger.warning("ring records with an unknown layout", metadata: ["count": "\(fromRing.rejected)"])
        }
        flowTable.add(batch)
        batch += fromRing.records
        let flows = flowTable, ringRecords = fromRing.records.count
        // The flow (entry of `flows`) of batch[i]: the table took the ring's records first.
        func flowEntry(_ i: Int) -> Int { flows.entry(ofRecord: i < entries ? ringRecords + i : i - entries) }
        let counters = try? program.readCounters()
        let names = self.names.snapshot()
        // Updates first, then the ring: a close raised after the iterator ran
        // is in this drain, and the table orders both by kernel timestamp.
        var updates: [SocketEvent] = []
        if let sockets, pass != .early {
            do { updates = try sockets.collectUpdates() } catch {
                logger.error("socket updates failed", metadata: ["error": "\(error)"])
            }
        }
        let ringEvents = socketEvents?.take().records ?? []
        let events = connections.apply(ringEvents, updates)
        let lostCloses = pass == .interval ? sweepLostCloses() : []
        if pass == .interval { connections.compact() }
        // Cgroup paths are looked up here, outside the lock (a miss rescans cgroupfs).
        var paths: [UInt64: String] = [:]
        for e in events { if let id = e.owner?.cgroupID, paths[id] == nil, let p = cgroups.path(of: id) { paths[id] = p } }
        let now = Self.monotonicNow()
        var entryPairs: [ServicePair?] = []
        func flowPair(_ i: Int) -> ServicePair? { entryPairs.isEmpty ? nil : entryPairs[flowEntry(i)] }
        let socketCounters = try? sockets?.readCounters()
        let stalls = (flows: ring.stallCount, events: socketEvents?.stallCount ?? 0)
        // At most once an interval: under sustained overload every early pass would say it again.
        if pass != .early && (stalls.flows > reportedStalls.flows || stalls.events > reportedStalls.events) {
            logger.warning("a ring reader reached its limit of waiting records; records past it wait in the kernel ring, and are counted lost if that fills",
                           metadata: ["flows_ring_stalls": "\(stalls.flows)", "events_ring_stalls": "\(stalls.events)"])
            reportedStalls = stalls
        }
        shared.update { a in
            if pass != .early { a.setFlowTableEntries(entries) }
            if let counters { a.kernel = counters }
            // Sockets first: a flow of a connection opened in this interval
            // then finds its socket.
            a.services?.apply(events, cgroupPath: { paths[$0] })
            a.services?.apply(lostCloses, cgroupPath: { paths[$0] })
            entryPairs = a.count(flows: flows, names: names, now: now)
            // The API lists this interval's flows, the largest first past its cap.
            let listed = Accounting.largestFlows(earlyFlows, batch, pair: flowPair)
            if pass == .early {
                earlyFlows = listed
            } else {
                a.lastFlows = listed
                earlyFlows = []
            }
            if pass != .early {
                a.services?.expire(now: now)
                // The API's copy, as of the tick (copying 60,000 sockets ten times a second is not worth it).
                a.connections = Array(connections.active.values)
            }
            a.addSocketEvents(ringEvents.count)
            a.addSocketUpdates(updates.count)
            if let socketCounters { a.socketEventsLost = socketCounters.eventsLost }
        }
        if let flowLog, !batch.isEmpty || !events.isEmpty {
            let clock = Self.clockNow()
            // Encoded and written a chunk at a time: a pass can be a hundred
            // thousand records, and all their lines at once were 30 MB.
            var lines: [String] = []
            lines.reserveCapacity(Self.flowLogChunk)
            var sent = 0, failed = 0
            func flush() {
                if flowLog.write(lines: lines) { sent += lines.count } else { failed += lines.count }
                lines.removeAll(keepingCapacity: true)
            }
            for (i, r) in batch.enumerated() {
                lines.append(FlowLogEncoder.encode(r, interface: names[r.key.ifindex] ?? "if\(r.key.ifindex)", clock: clock,
                                                   pair: flowPair(i)))
                if lines.count == Self.flowLogChunk { flush() }
            }
            for e in events {
                lines.append(FlowLogEncoder.encodeConnection(e, cgroupPath: e.owner.flatMap { paths[$0.cgroupID] }, clock: clock))
                if lines.count == Self.flowLogChunk { flush() }
            }
            flush()
            shared.update {
                var x = $0.exports["flow_log", default: ExportStats()]
                x.queued += UInt64(sent + failed)
                x.sent += UInt64(sent)
                x.failed += UInt64(failed)
                if sent > 0 && failed == 0 { x.lastSuccessUnixSeconds = Double(clock.realtimeNanos) / 1e9 }
                $0.exports["flow_log"] = x
            }
        }
        export(batch, pass: pass)
    }

    /// Closes for sockets whose close record was lost, applied to the
    /// connection table here (the caller applies them to the services); and
    /// a read of the kernel's live sockets when more events were lost.
    /// Not logged to the flow log: no kernel record says when they closed.
    func sweepLostCloses() -> [SocketEvent] {
        guard let sockets, let reader = socketEvents else { return [] }
        if reader.stallCount != sweepStalls {
            // Records from before the last read may still wait in the kernel ring.
            sweepStalls = reader.stallCount
            lostCloses.cancel()
        }
        let now = Self.monotonicNow()
        let closes = lostCloses.staleCloses(table: connections, now: now)
        for c in closes { _ = connections.apply(c) }
        if !closes.isEmpty {
            logger.notice("forgot sockets whose close record was lost (events ring full)", metadata: ["sockets": "\(closes.count)"])
        }
        guard let lost = try? sockets.readCounters().eventsLost, lostCloses.shouldRead(lost: lost) else { return closes }
        do {
            if let ids = try sockets.liveSocketIDs() {
                lostCloses.record(kernelIDs: ids, table: connections, at: Self.monotonicNow())
            }
        } catch {
            logger.warning("cannot read the kernel's socket table", metadata: ["error": "\(error)"])
        }
        return closes
    }

    /// IPFIX and OTLP, after the tick's accounting.
    func export(_ batch: [FlowRecord], pass: Pass) {
        if var x = ipfix {
            let clock = Self.clockNow()
            let messages = x.encoder.messages(for: batch, exportTimeSeconds: UInt32(truncatingIfNeeded: clock.realtimeNanos / 1_000_000_000), clock: clock)
            ipfix = x
            let r = x.sender.send(messages)
            if let e = r.error { logger.warning("IPFIX export failed", metadata: ["collector": "\(x.sender.collector)", "error": "\(e)"]) }
            shared.update {
                var s = $0.exports["ipfix", default: ExportStats()]
                s.queued += UInt64(r.sent + r.failed)
                s.sent += UInt64(r.sent)
                s.failed += UInt64(r.failed)
                if r.sent > 0 && r.failed == 0 { s.lastSuccessUnixSeconds = Double(clock.realtimeNanos) / 1e9 }
                $0.exports["ipfix"] = s
            }
        }
        // OTLP pushes the cumulative metrics once per interval, not per pass.
        if let otlp, pass != .early {
            // The request carries the exporter's own counters as of its making.
            syncOTLP()
            let body = OTLPEncoder.request(shared.snapshot(), resource: otlpResource, scopeVersion: FlowmeterVersion.current,
                                           startUnixNanos: startUnixNanos, nowUnixNanos: UInt64(Date().timeIntervalSince1970 * 1e9))
            otlp.enqueue(body)
        }
    }

    func syncOTLP() {
        guard let otlp else { return }
        let c = otlp.counters
        shared.update {
            var s = ExportStats()
            s.queued = c.queued; s.sent = c.sent; s.failed = c.failed; s.dropped = c.dropped
            s.lastSuccessUnixSeconds = c.lastSuccessUnixSeconds
            s.queueLength = c.queueLength
            $0.exports["otlp"] = s
        }
    }

    static func monotonicNow() -> UInt64 {
        var mono = timespec()
        clock_gettime(CLOCK_MONOTONIC, &mono)
        return UInt64(mono.tv_sec) * 1_000_000_000 + UInt64(mono.tv_nsec)
    }

    static func clockNow() -> ClockMapping {
        var rt = timespec(), mono = timespec()
        clock_gettime(CLOCK_MONOTONIC, &mono)
        clock_gettime(CLOCK_REALTIME, &rt)
        return ClockMapping(realtimeNanos: Int64(rt.tv_sec) * 1_000_000_000 + Int64(rt.tv_nsec),
                            monotonicNanos: Int64(mono.tv_sec) * 1_000_000_000 + Int64(mono.tv_nsec))
    }
}
