import FlowmeterCore
import FlowmeterExport
import Foundation
import Logging
import Synchronization
import Testing

@testable import FlowmeterPipeline

// The pipeline on recorded batches: fake kernel sources, recording sinks, no
// privileges. What the real kernel sources do is the e2e suite's.

/// Hands out queued batches, as the tc programs would.
final class FakeFlowKernel: FlowKernel {
    struct State {
        var evictions: [[FlowRecord]] = []
        var finalDrain: [FlowRecord] = []
        var ring: [[FlowRecord]] = []
        var counters = KernelCounters()
        var backlogged = false
        var stalls: UInt64 = 0
        var calls: [String] = []
    }
    let state = Mutex(State())

    func evict() throws -> [FlowRecord] {
        state.withLock { s in
            s.calls.append("evict"); return s.evictions.isEmpty ? [] : s.evictions.removeFirst()
        }
    }
    func drainAll() throws -> [FlowRecord] {
        state.withLock { s in
            s.calls.append("drainAll"); return s.finalDrain
        }
    }
    func readCounters() throws -> KernelCounters { state.withLock { $0.counters } }
    func startRing() { state.withLock { $0.calls.append("startRing") } }
    func stopRing() { state.withLock { $0.calls.append("stopRing") } }
    func takeRing(summingInto flows: inout FlowTable) -> (records: [FlowRecord], rejected: UInt64) {
        let records = state.withLock { s in s.ring.isEmpty ? [] : s.ring.removeFirst() }
        flows.removeAll()
        flows.add(records)
        return (records, 0)
    }
    var ringBacklogged: Bool { state.withLock { $0.backlogged } }
    var ringStalls: UInt64 { state.withLock { $0.stalls } }
    func detach() { state.withLock { $0.calls.append("detach") } }
}

/// Hands out queued socket records.
final class FakeSocketKernel: SocketKernel {
    struct State {
        var events: [[SocketEvent]] = []
        var updates: [[SocketEvent]] = []
        var stalls: UInt64 = 0
        var calls: [String] = []
    }
    let state = Mutex(State())

    func startRing() {}
    func stopRing() { state.withLock { $0.calls.append("stopRing") } }
    func takeEvents() -> [SocketEvent] { state.withLock { s in s.events.isEmpty ? [] : s.events.removeFirst() } }
    var ringBacklogged: Bool { false }
    var ringStalls: UInt64 { state.withLock { $0.stalls } }
    func collectUpdates() throws -> [SocketEvent] {
        state.withLock { s in
            s.calls.append("updates"); return s.updates.isEmpty ? [] : s.updates.removeFirst()
        }
    }
    func readCounters() throws -> (eventsLost: UInt64, tableFull: UInt64) { (0, 0) }
    func liveSocketIDs() throws -> Set<UInt64>? { [] }
    func detach() { state.withLock { $0.calls.append("detach") } }
}

/// Hands out queued drop samples, as the drop program's deltas would be.
final class FakeDropKernel: DropKernel {
    struct State {
        var takes: [[DropSample]] = []
        var calls: [String] = []
    }
    let state = Mutex(State())
    let ownNetns: UInt32 = 4026531840

    func take() throws -> [DropSample] {
        state.withLock { s in
            s.calls.append("take"); return s.takes.isEmpty ? [] : s.takes.removeFirst()
        }
    }
    func lost() throws -> UInt64 { 2 }
    func detach() { state.withLock { $0.calls.append("detach") } }
}

/// Keeps every pass it is given.
final class RecordingSink: Sink {
    let name: String
    let passes = Mutex<[TickOutput]>([])
    let stopped = Mutex(false)
    init(_ name: String) { self.name = name }
    func consume(_ output: TickOutput) {
        passes.withLock { $0.append(output) }
    }
    var stats: ExportStats {
        var s = ExportStats()
        s.sent = UInt64(passes.withLock { $0.reduce(0) { $0 + $1.flows.count + $1.events.count } })
        s.queued = s.sent
        return s
    }
    func stop() { stopped.withLock { $0 = true } }
}

struct SinkDown: Error, CustomStringConvertible { var description: String { "collector unreachable" } }

/// Throws on every pass.
final class FailingSink: Sink {
    let name = "broken"
    let tries = Mutex(0)
    func consume(_ output: TickOutput) throws {
        tries.withLock { $0 += 1 }
        throw SinkDown()
    }
    var stats: ExportStats { ExportStats() }
}

@Suite struct PipelineTests {
    static let a = IPAddress16.v4(10, 0, 0, 1), b = IPAddress16.v4(10, 0, 0, 2)

    static func flow(
        _ sport: UInt16, packets: UInt64, bytes: UInt64, dir: Direction = .transmit,
        source: FlowSource = .flowMap
    ) -> FlowRecord {
        FlowRecord(
            key: FlowKey(
                source: a, destination: b, ifindex: 2, sourcePort: sport, destinationPort: 5432,
                direction: dir, family: .ipv4, ipProtocol: 6, flags: []),
            stats: FlowStats(packets: packets, bytes: bytes, firstSeenNanos: 1, lastSeenNanos: 2, tcpFlags: 0),
            source: source)
    }

    /// The client end (10.0.0.1:sport -> 10.0.0.2:5432) of a connection.
    static func socket(
        _ kind: SocketEvent.Kind, id: UInt64, sport: UInt16, ts: UInt64, sent: UInt64 = 0,
        received: UInt64 = 0
    ) -> SocketEvent {
        SocketEvent(
            kind: kind, role: .client, family: .ipv4, ipProtocol: 6, reason: .none, socketID: id,
            timestampNanos: ts, startNanos: 1, owner: SocketOwner(tgid: 7, pid: 7, name: "checkout", cgroupID: 42),
            localAddress: a, remoteAddress: b, localPort: sport, remotePort: 5432, srttMicros: 100,
            bytesSent: sent, bytesReceived: received, retransmits: 0, resetsSent: 0, resetsReceived: 0, error: 0)
    }

    static func pipeline(
        _ flows: FakeFlowKernel, _ sockets: FakeSocketKernel?, drops: FakeDropKernel? = nil, sinks: [Sink],
        now: UInt64 = 1_000_000_000
    ) -> Pipeline {
        let accounting = SharedAccounting()
        accounting.update { a in
            a.socketTelemetry = sockets != nil
            a.dropsCounted = drops != nil
            if sockets != nil {
                a.services = ServiceAggregator(
                    resolver: ServiceResolver(rules: [], peers: [PeerRule(service: "postgres", ports: try! PortRange(parsing: "5432"))]),
                    limits: AggregationLimits(
                        maxSeriesPerMetric: 100, seriesExpiry: FlowDuration(nanoseconds: 60_000_000_000),
                        peerAddresses: false))
            }
        }
        let clock = PipelineClock(
            monotonic: { now }, mapping: { ClockMapping(realtimeNanos: 1_700_000_000_000_000_000, monotonicNanos: Int64(now)) })
        return Pipeline(
            flows: flows, sockets: sockets, drops: drops, sinks: sinks, accounting: accounting,
            names: InterfaceNames([2: "veth-a"]), cgroupPath: { $0 == 42 ? "/shop/checkout" : nil },
            interval: FlowDuration(nanoseconds: 1_000_000_000), logger: Logger(label: "test"), clock: clock)
    }

    /// Flows from the table and the overflow ring, and socket events: the
    /// accounting counts each once, the sinks get the records with their
    /// service pair, the events with their cgroup path.
    @Test func aPassWithFlowsOverflowAndSocketEvents() throws {
        let flows = FakeFlowKernel(), sockets = FakeSocketKernel(), sink = RecordingSink("rec")
        flows.state.withLock {
            $0.evictions = [[Self.flow(40000, packets: 10, bytes: 1000), Self.flow(40001, packets: 1, bytes: 60)]]
            $0.ring = [
                [
                    Self.flow(40000, packets: 1, bytes: 100, source: .flowsRing),
                    Self.flow(40000, packets: 1, bytes: 100, source: .flowsRing),
                ]
            ]
            $0.counters.flowInsertFailures = 2
        }
        sockets.state.withLock {
            $0.events = [[Self.socket(.open, id: 1, sport: 40000, ts: 5)]]
            $0.updates = [[Self.socket(.update, id: 1, sport: 40000, ts: 6, sent: 900, received: 10)]]
        }
        let p = Self.pipeline(flows, sockets, sinks: [sink])
        p.pass(.interval)

        let a = p.accounting.snapshot()
        #expect(a.interfaces["veth-a"]?[.transmit]?.bytes == 1260)
        #expect(a.interfaces["veth-a"]?[.transmit]?.packets == 13)
        #expect(a.records[.flowMap] == 2 && a.records[.flowsRing] == 2)
        #expect(a.kernel.flowInsertFailures == 2)
        #expect(a.socketEvents == 1 && a.socketUpdates == 1)
        let pair = ServicePair(service: "checkout", peer: "postgres", transport: "tcp")
        #expect(a.services?.pairs[pair]?.bytes[Int(Direction.transmit.rawValue)] == 900)
        #expect(a.services?.pairs[pair]?.bytes[Int(Direction.receive.rawValue)] == 10)
        // The packets of the connection's flow are joined to it by 5-tuple.
        #expect(a.services?.pairs[pair]?.packets[Int(Direction.transmit.rawValue)] == 12)
        #expect(a.exports["rec"]?.sent == 6)

        let out = try #require(sink.passes.withLock { $0.first })
        #expect(out.pass == .interval)
        // Evicted records first, then the ring's; each with its pair.
        #expect(out.flows.map(\.source) == [.flowMap, .flowMap, .flowsRing, .flowsRing])
        #expect(out.flowPairs.count == 4 && out.flowPairs[0] == pair && out.flowPairs[2] == pair)
        // A flow of no known socket: its local end is unknown, its peer named by the rule.
        #expect(out.flowPairs[1] == ServicePair(service: "unknown", peer: "postgres", transport: "tcp"))
        #expect(out.events.map(\.kind) == [.open, .update])
        #expect(out.cgroupPaths[42] == "/shop/checkout")
        #expect(out.interfaceNames[2] == "veth-a")
        #expect(out.accounting().records[.flowMap] == 2)
    }

    /// Drops are read once an interval and at the end, never on an early
    /// pass; after the pass's socket records (a connection opened in the
    /// same pass names its drops); on this namespace's interfaces only; and
    /// handed to the sinks by flow key. The hook is detached with the others.
    @Test func dropsAreCountedOnInterfacesPairsAndFlows() throws {
        let flows = FakeFlowKernel(), sockets = FakeSocketKernel(), drops = FakeDropKernel(), sink = RecordingSink("rec")
        let key = Self.flow(40000, packets: 10, bytes: 1000).key
        flows.state.withLock { $0.evictions = [[Self.flow(40000, packets: 10, bytes: 1000)]] }
        sockets.state.withLock { $0.events = [[], [Self.socket(.open, id: 1, sport: 40000, ts: 5)]] }
        var elsewhere = key
        elsewhere.ifindex = 9
        drops.state.withLock {
            $0.takes = [
                [
                    DropSample(key: DropKey(flow: key, netns: drops.ownNetns, reason: 64), reason: "QDISC_DROP", packets: 3),
                    DropSample(key: DropKey(flow: elsewhere, netns: 1, reason: 12), reason: "NETFILTER_DROP", packets: 8),
                ]
            ]
        }
        let p = Self.pipeline(flows, sockets, drops: drops, sinks: [sink])
        p.pass(.early)
        #expect(drops.state.withLock { $0.calls }.isEmpty)
        p.pass(.interval)
        let a = p.accounting.snapshot()
        #expect(a.interfaceDrops == ["veth-a": [.transmit: ["QDISC_DROP": 3]]])
        #expect(a.dropsLost == 2)
        let pair = ServicePair(service: "checkout", peer: "postgres", transport: "tcp")
        // Both drops are of the connection's 5-tuple: the pair has both, whatever the namespace.
        #expect(a.services?.pairs[pair]?.drops == ["QDISC_DROP": 3, "NETFILTER_DROP": 8])
        let out = try #require(sink.passes.withLock { $0.last })
        #expect(out.flowDrops == [key: ["QDISC_DROP": 3]])
        let text = MetricsRenderer.render(a, version: "t")
        #expect(text.contains(#"flowmeter_interface_drops_total{interface="veth-a",direction="transmit",reason="QDISC_DROP"} 3"#))
        #expect(text.contains("flowmeter_drops_lost_total 2\n"))
        p.finish()
        #expect(drops.state.withLock { $0.calls } == ["take", "detach", "take"])
    }

    /// A sink that throws neither stops the others nor the accounting, and
    /// is counted once per pass under its own name.
    @Test func aFailingSinkIsCountedAndTheOthersGoOn() {
        let flows = FakeFlowKernel(), broken = FailingSink(), sink = RecordingSink("rec")
        flows.state.withLock { $0.evictions = [[Self.flow(1, packets: 1, bytes: 10)], [Self.flow(1, packets: 1, bytes: 10)]] }
        let p = Self.pipeline(flows, nil, sinks: [broken, sink])
        p.pass(.interval)
        p.pass(.interval)
        #expect(broken.tries.withLock { $0 } == 2)
        #expect(sink.passes.withLock { $0.count } == 2)
        let a = p.accounting.snapshot()
        #expect(a.exports["broken"]?.failed == 2)
        #expect(a.exports["rec"]?.sent == 2)
        #expect(a.interfaces["veth-a"]?[.transmit]?.bytes == 20)
    }

    /// An early pass takes the rings only: no eviction, no socket updates,
    /// and the flows it took are listed for the API with the next pass's.
    @Test func earlyPassesTakeTheRingsOnly() throws {
        let flows = FakeFlowKernel(), sockets = FakeSocketKernel(), sink = RecordingSink("rec")
        flows.state.withLock {
            $0.evictions = [[Self.flow(7, packets: 3, bytes: 300)]]
            $0.ring = [[Self.flow(8, packets: 1, bytes: 50, source: .flowsRing)], []]
        }
        sockets.state.withLock { $0.events = [[Self.socket(.open, id: 9, sport: 8, ts: 1)], []] }
        let p = Self.pipeline(flows, sockets, sinks: [sink])
        p.pass(.early)
        #expect(flows.state.withLock { $0.calls }.contains("evict") == false)
        #expect(sockets.state.withLock { $0.calls }.contains("updates") == false)
        var a = p.accounting.snapshot()
        #expect(a.records[.flowsRing] == 1 && a.records[.flowMap] == nil)
        #expect(a.socketEvents == 1)
        #expect(a.lastFlows.isEmpty)
        p.pass(.interval)
        a = p.accounting.snapshot()
        #expect(a.records[.flowMap] == 1)
        // The API's list holds the early pass's flow and the tick's.
        #expect(Set(a.lastFlows.map(\.record.key.sourcePort)) == [7, 8])
        #expect(sink.passes.withLock { $0.map(\.pass) } == [.early, .interval])
    }

    /// Stop: detach first, then stop the readers, then one final pass that
    /// drains both tables, then the sinks stop.
    @Test func theFinalFlushDrainsEverythingAfterDetaching() {
        let flows = FakeFlowKernel(), sockets = FakeSocketKernel(), sink = RecordingSink("rec")
        flows.state.withLock {
            $0.finalDrain = [Self.flow(1, packets: 5, bytes: 500)]
            $0.ring = [[Self.flow(2, packets: 1, bytes: 40, source: .flowsRing)]]
        }
        sockets.state.withLock { $0.events = [[Self.socket(.close, id: 3, sport: 1, ts: 9, sent: 5, received: 5)]] }
        let p = Self.pipeline(flows, sockets, sinks: [sink])
        p.finish()
        #expect(flows.state.withLock { $0.calls } == ["detach", "stopRing", "drainAll"])
        #expect(sockets.state.withLock { $0.calls } == ["detach", "stopRing", "updates"])
        let a = p.accounting.snapshot()
        #expect(a.interfaces["veth-a"]?[.transmit]?.bytes == 540)
        #expect(a.socketEvents == 1)
        #expect(sink.passes.withLock { $0.map(\.pass) } == [.final])
        #expect(sink.stopped.withLock { $0 })
    }

    /// What /readyz reads: each completed interval pass counts (early ones
    /// do not), a reader whose stall count grew since the last interval pass
    /// makes the daemon not ready until an interval without one, and the
    /// stop marks the programs detached.
    @Test func readinessFollowsIntervalPassesStallsAndTheStop() {
        let flows = FakeFlowKernel(), sockets = FakeSocketKernel()
        let p = Self.pipeline(flows, sockets, sinks: [RecordingSink("rec")])
        func readiness() -> Readiness { p.accounting.read(\.readiness) }
        // Start-up marks the programs attached once they are.
        #expect(readiness().reasons == ["the programs are not attached yet", "the first interval has not been evicted yet"])
        p.accounting.update { $0.readiness.attachment = .attached }
        #expect(readiness().reasons == ["the first interval has not been evicted yet"])
        p.pass(.early)
        #expect(readiness().intervalPasses == 0 && !readiness().isReady)
        p.pass(.interval)
        #expect(readiness().isReady)
        #expect(readiness().stallsAtLastPass == ["flows": 0, "events": 0])

        // The events reader stalls twice; an early pass in between judges nothing.
        sockets.state.withLock { $0.stalls = 2 }
        p.pass(.early)
        #expect(readiness().isReady)
        p.pass(.interval)
        #expect(!readiness().isReady)
        #expect(readiness().stalledRings == ["events": 2])
        #expect(readiness().reasons.count == 1 && readiness().reasons[0].hasPrefix("the events ring's reader stalled"))
        p.pass(.interval)
        #expect(readiness().isReady)

        flows.state.withLock { $0.stalls = 1 }
        p.pass(.interval)
        #expect(readiness().stalledRings == ["flows": 1])
        p.pass(.interval)
        #expect(readiness().isReady && readiness().intervalPasses == 5)

        p.finish()
        #expect(readiness().reasons == ["the programs are detached: flowmeterd is stopping"])
    }

    /// Without socket hooks only the flows reader is judged.
    @Test func readinessWithoutSocketHooks() {
        let flows = FakeFlowKernel()
        let p = Self.pipeline(flows, nil, sinks: [])
        p.accounting.update { $0.readiness.attachment = .attached }
        flows.state.withLock { $0.stalls = 3 }
        p.pass(.interval)
        let r = p.accounting.read(\.readiness)
        #expect(r.stallsAtLastPass == ["flows": 3])
        #expect(r.stalledRings == ["flows": 3] && !r.isReady)
    }

    /// run() passes once an interval and, once cancelled, flushes.
    @Test func runPassesUntilCancelledThenFlushes() async throws {
        let flows = FakeFlowKernel(), sink = RecordingSink("rec")
        let accounting = SharedAccounting()
        let p = Pipeline(
            flows: flows, sockets: nil, sinks: [sink], accounting: accounting, names: InterfaceNames([:]),
            cgroupPath: { _ in nil }, interval: FlowDuration(nanoseconds: 20_000_000), logger: Logger(label: "test"))
        let task = Task { await p.run() }
        // Until two interval passes happened (bounded: a loaded machine may be slow).
        for _ in 0..<600 where sink.passes.withLock({ $0.count }) < 2 {
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        task.cancel()
        await task.value
        let kinds = sink.passes.withLock { $0.map(\.pass) }
        #expect(kinds.last == .final)
        #expect(kinds.filter { $0 == .interval }.count >= 2)
        #expect(flows.state.withLock { $0.calls }.first == "startRing")
    }
}
