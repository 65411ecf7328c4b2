// Whether the daemon does its job yet: what `GET /readyz` answers
// (docs/flowmeterd.md, "Health endpoints"). Pure state: start-up and the
// pipeline publish into it (in the accounting), the metrics server reads it.

/// Ready once the programs are attached, the first interval has been
/// evicted, and no ring reader stalled during the last interval; otherwise
/// not ready, with every reason.
///
/// A reader *stalls* when it stops draining its ring because the records
/// waiting for the collector reached its hard limit (`RingReader.hardLimit`):
/// records then wait in the kernel ring, and once that fills they are lost
/// (counted). A reader counts as stalled when its stall count grew between
/// the last two interval passes (for the first pass: since the start), so
/// one stall makes the daemon not ready until the next interval pass that
/// sees none.
public struct Readiness: Sendable, Equatable {
    /// Where the kernel programs are.
    public enum Attachment: Sendable, Equatable {
        /// Start-up has not attached them yet.
        case pending
        /// tc programs on every interface chosen at start (with
        /// --follow-interfaces possibly none yet), socket hooks on their rung.
        case attached
        /// Detached: the daemon is stopping.
        case detached
    }

    public var attachment: Attachment = .pending
    /// Interval passes completed; the first one evicted the first interval.
    public private(set) var intervalPasses: UInt64 = 0
    /// Each ring reader's stall count (cumulative since start) at the last interval pass.
    public private(set) var stallsAtLastPass: [String: UInt64] = [:]
    /// The rings whose reader stalled between the last two interval passes, with how often.
    public private(set) var stalledRings: [String: UInt64] = [:]

    public init() {}

    /// Records a completed interval pass, given each ring reader's stall
    /// count since the start, keyed by ring ("flows", "events").
    public mutating func intervalPassed(stalls: [String: UInt64]) {
        var grew: [String: UInt64] = [:]
        for (ring, count) in stalls {
            let before = stallsAtLastPass[ring] ?? 0
            if count > before { grew[ring] = count - before }
        }
        stalledRings = grew
        stallsAtLastPass = stalls
        intervalPasses &+= 1
    }

    /// Why the daemon is not ready; empty when it is.
    public var reasons: [String] {
        var out: [String] = []
        switch attachment {
        case .pending: out.append("the programs are not attached yet")
        case .detached: out.append("the programs are detached: flowmeterd is stopping")
        case .attached: break
        }
        if intervalPasses == 0 { out.append("the first interval has not been evicted yet") }
        for ring in stalledRings.keys.sorted() {
            let n = stalledRings[ring] ?? 0
            out.append(
                "the \(ring) ring's reader stalled during the last interval (\(n) time\(n == 1 ? "" : "s") at its limit of "
                    + "waiting records): records wait in the kernel ring and are lost if it fills")
        }
        return out
    }

    public var isReady: Bool { reasons.isEmpty }
}
