import FlowmeterBPF
import Logging
import Synchronization

/// Drops the capabilities only the start needs once the last start step that
/// needs one is done. The servers bind and chown their sockets after the group
/// starts, each on its own schedule, so the drop waits for every one of them.
final class DropAfterStart: Sendable {
    private let pending: Mutex<Set<String>>
    private let keep: UInt64
    private let logger: Logger

    init(waitingFor steps: Set<String>, keep: UInt64, logger: Logger) {
        pending = Mutex(steps)
        self.keep = keep
        self.logger = logger
    }

    func done(_ step: String) {
        let last = pending.withLock { p in p.remove(step) != nil && p.isEmpty }
        guard last else { return }
        do {
            let d = try Privileges.dropAfterAttach(keep: keep)
            logger.info(
                "dropped capabilities",
                metadata: [
                    "kept": "\(Privileges.names(d.kept).joined(separator: ","))", "threads": "\(d.threads)",
                    "bounding_set": "\(d.boundingSetDropped ? "reduced" : "unchanged (no CAP_SETPCAP)")",
                ])
        } catch {
            // Telemetry matters more than the hardening: keep running as we are.
            logger.warning("could not drop capabilities; running with them", metadata: ["error": "\(error)"])
        }
    }
}
