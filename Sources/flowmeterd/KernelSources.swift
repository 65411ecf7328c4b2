import FlowmeterBPF
import FlowmeterCore
import FlowmeterPipeline

// FlowmeterBPF's programs as the pipeline's kernel sources. The only code
// that joins the two modules; the pipeline itself is tested without them.

/// The tc programs, their flows ring, the attachments and the interface follower.
final class TCKernel: FlowKernel {
    let program: FlowAccountingProgram
    let ring: FlowsRing
    let attacher: TCAttacher
    /// Set once the follower runs (it needs the names the pipeline owns).
    let links: LinkMonitor?

    init(program: FlowAccountingProgram, ring: FlowsRing, attacher: TCAttacher, links: LinkMonitor?) {
        self.program = program; self.ring = ring; self.attacher = attacher; self.links = links
    }

    func evict() throws -> [FlowRecord] { try program.evict() }
    func drainAll() throws -> [FlowRecord] { try program.drainAll() }
    func readCounters() throws -> KernelCounters { try program.readCounters() }
    func startRing() { ring.start() }
    func stopRing() { ring.stop() }
    func takeRing(summingInto flows: inout FlowTable) -> (records: [FlowRecord], rejected: UInt64) {
        ring.take(summingInto: &flows)
    }
    var ringBacklogged: Bool { ring.backlogged }
    var ringStalls: UInt64 { ring.stallCount }

    /// Stop following interfaces first, so nothing is attached after the detach.
    func detach() {
        links?.stop()
        attacher.detachAll()
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
