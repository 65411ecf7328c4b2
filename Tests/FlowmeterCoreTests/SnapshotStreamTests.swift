import Foundation
import Testing

@testable import FlowmeterCore

@Suite struct SnapshotStreamTests {
    static func snap(ms: Int64, txBytes: UInt64) -> APISnapshot {
        APISnapshot(
            version: 1, time_unix_ms: ms, host: "h", kernel: "k", flowmeter_version: "v", uptime_seconds: Double(ms) / 1000,
            interval_seconds: 1, hooks: [.init(hook: "tc", mode: "tcx")],
            interfaces: [.init(name: "eth0", tx_bytes: txBytes, rx_bytes: 5, tx_packets: 1, rx_packets: 1)],
            services: [], connections: [], flows: [],
            self_metrics: .init(
                flows_ring_lost: 0, events_ring_lost: 0, flow_table_entries: 0,
                flow_table_insert_failures: 0, series_dropped: 0, sockets_tracked: 0))
    }

    @Test func fullThenOnlyWhatChanged() throws {
        var tx = SnapshotStream(), rx = SnapshotStream()
        let a = Self.snap(ms: 1000, txBytes: 10), b = Self.snap(ms: 2000, txBytes: 99), c = Self.snap(ms: 3000, txBytes: 99)
        let l1 = tx.line(for: a), l2 = tx.line(for: b), l3 = tx.line(for: c)
        #expect(l1.contains("\"stream\":\"full\"") && l1.contains("\"hooks\""))
        // The delta names what changed (time, uptime, interfaces), not what did not (hooks, host).
        #expect(l2.contains("\"stream\":\"delta\"") && l2.contains("\"interfaces\"") && l2.contains("\"time_unix_ms\":2000"))
        #expect(!l2.contains("\"hooks\"") && !l2.contains("\"host\""))
        #expect(!l3.contains("\"interfaces\"") && l3.contains("\"time_unix_ms\":3000"))
        #expect(try rx.apply(Data(l1.utf8)) == a)
        #expect(try rx.apply(Data(l2.utf8)) == b)
        #expect(try rx.apply(Data(l3.utf8)) == c)
        // A full line replaces what the receiver had.
        var fresh = SnapshotStream()
        #expect(try rx.apply(Data(fresh.line(for: a).utf8)) == a)
        #expect(throws: (any Error).self) { try rx.apply(Data("[1,2]".utf8)) }
    }
}
