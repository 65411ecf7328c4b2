import FlowmeterCore
import Testing

/// What /readyz answers, as a value: attached, the first interval evicted, no
/// reader stalled between the last two interval passes.
@Suite struct ReadinessTests {
    static let notAttached = "the programs are not attached yet"
    static let noInterval = "the first interval has not been evicted yet"

    @Test func notReadyAtStartWithBothReasons() {
        let r = Readiness()
        #expect(!r.isReady)
        #expect(r.reasons == [Self.notAttached, Self.noInterval])
    }

    @Test func attachedButBeforeTheFirstInterval() {
        var r = Readiness()
        r.attachment = .attached
        #expect(!r.isReady)
        #expect(r.reasons == [Self.noInterval])
    }

    @Test func readyAfterTheFirstIntervalPass() {
        var r = Readiness()
        r.attachment = .attached
        r.intervalPassed(stalls: ["flows": 0, "events": 0])
        #expect(r.isReady)
        #expect(r.reasons.isEmpty)
        #expect(r.intervalPasses == 1)
    }

    /// An interval pass before the attach (not what start-up does, but the
    /// two conditions are independent).
    @Test func anIntervalAloneIsNotEnough() {
        var r = Readiness()
        r.intervalPassed(stalls: [:])
        #expect(r.reasons == [Self.notAttached])
    }

    /// A stall count that grew between two passes makes the daemon not
    /// ready until a pass that sees no growth; stalls before the start of
    /// the last interval are history.
    @Test func aStallInTheLastIntervalMakesItNotReadyUntilAQuietOne() throws {
        var r = Readiness()
        r.attachment = .attached
        r.intervalPassed(stalls: ["flows": 0, "events": 0])
        #expect(r.isReady)
        r.intervalPassed(stalls: ["flows": 0, "events": 3])
        #expect(!r.isReady)
        #expect(r.stalledRings == ["events": 3])
        let reason = try #require(r.reasons.first)
        #expect(r.reasons.count == 1)
        #expect(reason.hasPrefix("the events ring's reader stalled during the last interval (3 times at its limit"))
        // Still stalling: the count grows again.
        r.intervalPassed(stalls: ["flows": 1, "events": 4])
        #expect(r.stalledRings == ["flows": 1, "events": 1])
        #expect(r.reasons.count == 2)
        #expect(r.reasons[0].hasPrefix("the events ring's reader stalled during the last interval (1 time at"))
        #expect(r.reasons[1].hasPrefix("the flows ring's reader stalled"))
        // The next interval without a stall: ready again.
        r.intervalPassed(stalls: ["flows": 1, "events": 4])
        #expect(r.isReady)
        #expect(r.stalledRings.isEmpty)
    }

    /// Stalls during the first interval count (since the start, from zero).
    @Test func aStallBeforeTheFirstPassCounts() {
        var r = Readiness()
        r.attachment = .attached
        r.intervalPassed(stalls: ["flows": 2])
        #expect(r.stalledRings == ["flows": 2])
        #expect(!r.isReady)
    }

    /// A ring that appears later (or a reader whose count is unknown before)
    /// starts from zero; a count that goes down is no stall.
    @Test func newRingsStartFromZeroAndNoCountGoesBack() {
        var r = Readiness()
        r.attachment = .attached
        r.intervalPassed(stalls: ["flows": 5])
        r.intervalPassed(stalls: ["flows": 5, "events": 0])
        #expect(r.isReady)
        r.intervalPassed(stalls: ["flows": 4, "events": 0])
        #expect(r.isReady)
    }

    @Test func detachedIsNotReady() {
        var r = Readiness()
        r.attachment = .attached
        r.intervalPassed(stalls: [:])
        r.attachment = .detached
        #expect(r.reasons == ["the programs are detached: flowmeterd is stopping"])
    }

    @Test func accountingStartsNotReady() {
        #expect(Accounting().readiness == Readiness())
        #expect(!Accounting().readiness.isReady)
    }
}
