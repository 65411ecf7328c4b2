import Foundation
import Testing

/// Shared by the test targets (one definition).
///
/// SplitMix64: the same sequence for the same seed on every machine, so a
/// failing random case can be replayed from its seed alone.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &self) < p }
    public mutating func pick<T>(_ items: [T]) -> T { items.randomElement(using: &self)! }
    public mutating func int(_ r: ClosedRange<Int>) -> Int { Int.random(in: r, using: &self) }
}

/// A bounded property-test run: `cases` cases or `seconds`, whichever ends
/// first, so it fits in every `swift test`. The seed is printed; set
/// FLOWMETER_FUZZ_SEED to it (hex) to replay the same cases, and
/// FLOWMETER_FUZZ_CASES to try more (or fewer).
public struct FuzzRun: Sendable {
    public let name: String
    public let seed: UInt64
    public let cases: Int
    public let seconds: Int
    public let announce: Bool
    public private(set) var failures: [String] = []

    public init(_ name: String, cases: Int = 5000, seconds: Int = 20, announce: Bool = true) {
        let env = ProcessInfo.processInfo.environment
        let given = env["FLOWMETER_FUZZ_SEED"].flatMap { s -> UInt64? in
            let t = s.hasPrefix("0x") ? String(s.dropFirst(2)) : s
            return UInt64(t, radix: 16)
        }
        self.name = name
        seed = given ?? UInt64.random(in: 0...UInt64.max)
        self.cases = env["FLOWMETER_FUZZ_CASES"].flatMap { Int($0) } ?? cases
        self.seconds = seconds
        self.announce = announce
        let file = name.unicodeScalars.map { CharacterSet.alphanumerics.contains($0) ? String($0) : "-" }.joined()
        current = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("flowmeter-fuzz-\(file).txt")
        if announce {
            print(
                "\(name): seed 0x\(String(seed, radix: 16)) (replay with FLOWMETER_FUZZ_SEED=\(String(seed, radix: 16)); "
                    + "the case under test is in \(current.path), for a crash)")
        }
    }

    /// Where the input of the case under test is kept while it runs: a trap
    /// cannot be caught, so after one this file holds what caused it.
    public let current: URL

    public func note(_ caseIndex: Int, _ input: String) {
        try? Data("case \(caseIndex) of seed \(String(seed, radix: 16))\n\(input)".utf8).write(to: current)
    }

    /// Calls `body` once per case with that case's own generator; returns how
    /// many cases ran. Stops early after a few failures: one is enough to
    /// replay, a hundred only bury it.
    public mutating func run(_ body: (inout SeededRandom, Int, inout FuzzRun) -> Void) -> Int {
        let start = ContinuousClock.now
        var i = 0
        while i < cases, ContinuousClock.now - start < .seconds(seconds), failures.count < 5 {
            var rng = SeededRandom(seed: seed ^ (UInt64(i) &* 0xD1B5_4A32_D192_ED03))
            body(&rng, i, &self)
            i += 1
        }
        if announce || !failures.isEmpty { print("\(name): \(i) cases in \(ContinuousClock.now - start), \(failures.count) failed") }
        return i
    }

    /// Notes a failed property with what is needed to replay it.
    public mutating func fail(_ caseIndex: Int, _ what: String, input: String) {
        let shown = input.count > 600 ? String(input.prefix(600)) + "… (\(input.count) characters)" : input
        failures.append(
            "\(name) case \(caseIndex) (FLOWMETER_FUZZ_SEED=\(String(seed, radix: 16))): \(what)\ninput: \(String(reflecting: shown))")
    }

    /// Records the failures as issues of the running test (call it from the
    /// test itself, not from a thread of its own).
    public func report(sourceLocation: SourceLocation = #_sourceLocation) {
        for f in failures { Issue.record(Comment(rawValue: f), sourceLocation: sourceLocation) }
    }
}
