import FlowmeterBPF
import FlowmeterCore
import FlowmeterPipeline
import Logging
import Synchronization

// FlowmeterBPF's programs as the pipeline's kernel sources. The only code
// that joins the two modules; the pipeline itself is tested without them.

/// The tc programs, their flows ring, the attachments and the interface follower.
final class TCKernel: FlowKernel {
    let program: FlowAccountingProgram
    let ring: FlowsRing
    let attacher: TCAttacher
    /// Set once the follower runs (it needs the names the pipeline owns).
    let links: LinkMonitor?
    /// --persist: where the maps are pinned; nil without.
    let pins: PinDirectory?
    let logger: Logger
    /// Whether the stop left the programs attached (--persist, pins intact).
    private let kept = Mutex(false)

    init(
        program: FlowAccountingProgram, ring: FlowsRing, attacher: TCAttacher, links: LinkMonitor?,
        pins: PinDirectory?, logger: Logger
    ) {
        self.program = program; self.ring = ring; self.attacher = attacher; self.links = links
        self.pins = pins; self.logger = logger
    }

    func evict() throws -> [FlowRecord] { try program.evict() }
    /// The final pass. Detached: both tables, all of it. Left attached: an
    /// eviction, which is exact while the programs count on (the programs
    /// write the other table once the swap returns); what they count after
    /// it is the next start's.
    func drainAll() throws -> [FlowRecord] { try kept.withLock { $0 } ? program.evict() : program.drainAll() }
    func readCounters() throws -> KernelCounters { try program.readCounters() }
    func startRing() { ring.start() }
    func stopRing() { ring.stop() }
    func takeRing(summingInto flows: inout FlowTable) -> (records: [FlowRecord], rejected: UInt64) {
        ring.take(summingInto: &flows)
    }
    var ringBacklogged: Bool { ring.backlogged }
    var ringStalls: UInt64 { ring.stallCount }

    /// Stop following interfaces first, so nothing is attached after the
    /// detach. With --persist the programs stay attached, unless the pins
    /// went away while we ran (`flowmeterd uninstall`): then nothing would
    /// adopt them, and they are detached as without it.
    func detach() {
        links?.stop()
        if let pins, pins.inspect() == .compatible {
            attacher.release()
            kept.withLock { $0 = true }
            logger.info("left attached and counting for the next start (--persist)", metadata: ["pin_dir": "\(pins)"])
        } else {
            attacher.detachAll()
        }
    }
}

/// The socket programs and their events ring.
final class SocketKernelPrograms: SocketKernel {
    let programs: SocketPrograms
    let events: RingReader<SocketEvent>

    init(programs: SocketPrograms) throws {
        self.programs = programs
        events = try programs.eventsReader()
    }

    func startRing() { events.start() }
    func stopRing() { events.stop() }
    func takeEvents() -> [SocketEvent] { events.take().records }
    var ringBacklogged: Bool { events.backlogged }
    var ringStalls: UInt64 { events.stallCount }
    func collectUpdates() throws -> [SocketEvent] { try programs.collectUpdates() }
    func readCounters() throws -> (eventsLost: UInt64, tableFull: UInt64) { try programs.readCounters() }
    func liveSocketIDs() throws -> Set<UInt64>? { try programs.liveSocketIDs() }
    func detach() { programs.detach() }
}

/// The drop program: the kernel's cumulative counts turned into each
/// interval's drops, with idle keys removed from the kernel's table.
final class DropKernelProgram: DropKernel {
    let programs: DropPrograms
    let ownNetns: UInt32
    private let deltas = Mutex(DropDeltas())

    init(programs: DropPrograms) {
        self.programs = programs
        ownNetns = DropPrograms.ownNetns()
    }

    func take() throws -> [DropSample] {
        let counts = try programs.readCounts()
        let (drops, idle) = deltas.withLock { $0.take(counts) }
        if !idle.isEmpty {
            // A drop of an idle key between the read and the removal is lost
            // (a key idle for a whole interval, in a window of microseconds).
            programs.remove(idle)
            deltas.withLock { $0.forget(idle) }
        }
        let reasons = programs.reasons
        return drops.compactMap { k, n in
            reasons.isNotDrop(k.reason) ? nil : DropSample(key: k, reason: reasons.label(k.reason), packets: n)
        }
    }

    func lost() throws -> UInt64 { try programs.readCounters().tableFull }

    func detach() { programs.detach() }
}

/// The DNS programs and their ring.
final class DNSKernelProgram: DNSKernel {
    let programs: DNSPrograms
    let events: RingReader<DNSEvent>

    init(programs: DNSPrograms) throws {
        self.programs = programs
        events = try programs.reader()
    }

    func startRing() { events.start() }
    func stopRing() { events.stop() }
    func take() -> [DNSEvent] { events.take().records }
    func forget(_ keys: [DNSQueryKey]) { programs.forget(keys) }
    func lost() throws -> (ring: UInt64, pendingFull: UInt64) {
        let c = try programs.readCounters()
        return (c.ringLost, c.pendingFull)
    }
    func detach() { programs.detach() }
}
