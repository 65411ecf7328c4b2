import FlowmeterCore
import FlowmeterExport
import Synchronization

/// IPFIX (RFC 7011) over UDP: every flow record of every pass.
public final class IPFIXSink: Sink {
    public let name = "ipfix"
    let sender: IPFIXSender
    /// The encoder's state (templates, sequence number) and the statistics.
    private let state: Mutex<(encoder: IPFIXEncoder, stats: ExportStats)>
    /// Called with the error of a send that failed.
    let onError: @Sendable (String) -> Void

    public init(sender: IPFIXSender, encoder: IPFIXEncoder, onError: @escaping @Sendable (String) -> Void) {
        self.sender = sender
        state = Mutex((encoder, ExportStats()))
        self.onError = onError
    }

    public var stats: ExportStats { state.withLock { $0.stats } }

    public func consume(_ out: TickOutput) {
        let clock = out.clock
        let messages = state.withLock {
            $0.encoder.messages(
                for: out.flows, exportTimeSeconds: UInt32(truncatingIfNeeded: clock.realtimeNanos / 1_000_000_000), clock: clock)
        }
        let r = sender.send(messages)
        if let e = r.error { onError(e) }
        state.withLock { s in
            s.stats.queued += UInt64(r.sent + r.failed)
            s.stats.sent += UInt64(r.sent)
            s.stats.failed += UInt64(r.failed)
            if r.sent > 0 && r.failed == 0 { s.stats.lastSuccessUnixSeconds = Double(clock.realtimeNanos) / 1e9 }
        }
    }
}
