import FlowmeterCore
import FlowmeterExport
import Synchronization

/// The JSON-lines flow log: one line per flow record and per connection event.
public final class FlowLogSink: Sink {
    public let name = "flow_log"
    let writer: FlowLogWriter
    private let counted = Mutex(ExportStats())

    /// Lines encoded before they are written: a pass can be a hundred
    /// thousand records, and all their lines at once were 30 MB.
    static let chunk = 4096

    /// The node a connection record of a Kubernetes pod names (`node`).
    let node: String?

    public init(writer: FlowLogWriter, node: String? = nil) { self.writer = writer; self.node = node }

    public var stats: ExportStats { counted.withLock { $0 } }

    public func consume(_ out: TickOutput) {
        if out.flows.isEmpty && out.events.isEmpty && out.dns.isEmpty { return }
        var lines: [String] = []
        lines.reserveCapacity(Self.chunk)
        var sent = 0, failed = 0
        func flush() {
            if writer.write(lines: lines) { sent += lines.count } else { failed += lines.count }
            lines.removeAll(keepingCapacity: true)
        }
        // A flow's drops go on its first record of the pass (a flow can have
        // several: the evicted entry and records from the flows ring).
        var dropsLeft = out.flowDrops
        for (i, r) in out.flows.enumerated() {
            var drops: DropsByReason?
            if !dropsLeft.isEmpty {
                var k = r.key
                k.flags = []
                drops = dropsLeft.removeValue(forKey: k)
            }
            lines.append(
                FlowLogEncoder.encode(
                    r, interface: out.interfaceNames[r.key.ifindex] ?? "if\(r.key.ifindex)",
                    clock: out.clock, pair: out.flowPairs[i], drops: drops))
            if lines.count == Self.chunk { flush() }
        }
        for e in out.events {
            lines.append(
                FlowLogEncoder.encodeConnection(
                    e, cgroupPath: e.owner.flatMap { out.cgroupPaths[$0.cgroupID] }, clock: out.clock,
                    pod: e.owner.flatMap { out.pods[$0.cgroupID] }, node: node))
            if lines.count == Self.chunk { flush() }
        }
        for d in out.dns {
            lines.append(FlowLogEncoder.encodeDNS(d.outcome, pair: d.pair, clock: out.clock))
            if lines.count == Self.chunk { flush() }
        }
        flush()
        counted.withLock { x in
            x.queued += UInt64(sent + failed)
            x.sent += UInt64(sent)
            x.failed += UInt64(failed)
            if sent > 0 && failed == 0 { x.lastSuccessUnixSeconds = Double(out.clock.realtimeNanos) / 1e9 }
        }
    }

    public func stop() { writer.close() }
}
