import Foundation
import Testing

/// Privileged tests run when we are root, or when FLOWMETER_REQUIRE_PRIVILEGED
/// is set (tools/test sets it as root): then a missing privilege is a failure,
/// never a silent skip.
enum Privileges {
    static var canRun: Bool {
        getuid() == 0 || ProcessInfo.processInfo.environment["FLOWMETER_REQUIRE_PRIVILEGED"] != nil
    }
}

extension Trait where Self == ConditionTrait {
    /// Runs the test only where BPF programs can be loaded (see `Privileges`).
    static var privileged: Self {
        .enabled(if: Privileges.canRun, "needs root to load BPF programs")
    }
}
