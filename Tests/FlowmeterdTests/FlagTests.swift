import FlowmeterConfig
import Testing

@testable import flowmeterd

/// Every setting has its flag on `run`, read as the table says.
@Suite struct FlagTests {
    @Test(arguments: Setting.all.map(\.key))
    func everySettingHasItsFlag(key: String) throws {
        let s = try #require(Setting.byKey(key))
        let args: [String]
        if case .bool = s.kind {
            args = [try s.parse(s.example) == .bool(true) ? "--\(s.flag)" : "--no-\(s.flag)"]
        } else {
            args = ["--\(s.flag)", s.example]
        }
        let run = try Run.parse(args)
        #expect(s.value(in: run.flagLayer()) == (try s.parse(s.example)))
        // Only that setting is set.
        for other in Setting.all where other.key != key {
            #expect(other.value(in: run.flagLayer()) == nil, "\(other.key)")
        }
    }

    @Test func helpSaysEachDefault() {
        let help = Run.helpMessage(columns: 10_000)
        for s in Setting.all {
            #expect(help.contains("Default: \(s.defaultText)."), "\(s.flag)")
        }
    }

    /// A bad value names its flag and says what is wrong, as the file would.
    @Test func badValuesNameTheFlag() {
        #expect(throws: (any Error).self) { try Run.parse(["--flow-table-size", "0"]) }
        let message = Run.message(for: ValidationErrorProbe.error(["--flows-ring-size", "5000"]))
        #expect(message.contains("--flows-ring-size") && message.contains("power of two"), "\(message)")
    }
}

enum ValidationErrorProbe {
    static func error(_ args: [String]) -> any Error {
        do { _ = try Run.parse(args); return CancellationError() } catch { return error }
    }
}
