import Testing

@testable import FlowmeterCore
@testable import FlowtopCore

/// The services view's DNS columns (DNS/s, DNS ERR, DNS p50): shown only when
/// the daemon counts DNS, rates and error shares over the window.
extension FlowtopCoreTests {
    /// The row of a pair in `--once` cells, by service and peer.
    static func dnsRow(_ s: UIState, _ h: History, _ service: String, _ peer: String) -> [String] {
        cells(.services, s, h).first { $0[0] == service && $0[1] == peer } ?? []
    }

    @Test func shareFormat() {
        #expect(Format.share(nil) == "-")
        #expect(Format.share(.nan) == "-")
        #expect(Format.share(0) == "0%")
        #expect(Format.share(1.0 / 3000) == "<0.1%")  // one failure in 3000 is not "0%"
        #expect(Format.share(1.0 / 2000) == "0.1%")
        #expect(Format.share(0.083) == "8.3%")
        #expect(Format.share(0.0999) == "10%")
        #expect(Format.share(0.5) == "50%")
        #expect(Format.share(0.996) == "99%")  // not all failed: never "100%"
        #expect(Format.share(1) == "100%")
        #expect(Format.share(7) == "100%")
        #expect(Format.share(-1) == "0%")
    }

    @Test func lowRateFormat() {
        #expect(Format.lowRate(0) == "0")
        #expect(Format.lowRate(-1) == "0")
        #expect(Format.lowRate(.nan) == "0")
        #expect(Format.lowRate(0.025) == "<0.1")  // one query in 40 s
        #expect(Format.lowRate(0.4) == "0.4")
        #expect(Format.lowRate(9.94) == "9.9")
        #expect(Format.lowRate(9.96) == "10")
        #expect(Format.lowRate(20) == "20")
        #expect(Format.lowRate(1234) == "1.2K")
    }

    @Test func dnsColumnsHiddenWithoutTheDNSPrograms() {
        // The main fixture has no DNS counters (nil in every pair): no DNS column anywhere.
        let plain = render(Fixture.state(.services), Fixture.history, width: 250, height: 12)
        #expect(!plain.lines[2].contains("DNS"))
        #expect(!plainTable(.services, Fixture.history, state: Fixture.state(.services)).contains("DNS"))
        #expect(View.services.columns(for: Fixture.node(4)).allSatisfy { !Column.dns.contains($0.column) })
        #expect(View.services.columns(for: nil).count == View.services.columns.count - 3)
        // With them, all three, after DROPS and before TREND.
        let h = Fixture.dnsHistory
        let titles = render(Fixture.state(.services, history: h), h, width: 250, height: 12).lines[2]
        let words = titles.split(separator: " ").map(String.init)
        #expect(words.suffix(7) == ["DROPS", "DNS/s", "DNS", "ERR", "DNS", "p50", "TREND"])
        #expect(
            plainTable(.services, h, state: Fixture.state(.services, history: h)).hasPrefix(
                "SERVICE                                   PEER      PROTO        TX/s       RX/s  CONNS  FAILED  RETRANS  RESETS  RTT p50  RTT p99  DROPS  DNS/s  DNS ERR  DNS p50\n"
            ))
        // Other views never have them.
        for v in [View.flows, .processes, .interfaces] {
            #expect(v.columns(for: h.latest) == v.columns)
        }
    }

    @Test func dnsRateErrorShareAndLatencyOverTheWindow() {
        let h = Fixture.dnsHistory
        var s = Fixture.state(.services, history: h)
        // 2 s window (snapshots 2 to 4): 40 queries, 4 failed.
        #expect(Self.dnsRow(s, h, "checkout", "coredns").suffix(4) == ["0", "20", "10%", "1.25ms"])
        // All of payments-api's queries failed, but before the window: no share now; p50 stays.
        #expect(Self.dnsRow(s, h, "payments-api", "unknown").suffix(3) == ["0", "-", "2.00s"])
        // A pair that asked nothing: 0 per second, no share, no latency.
        #expect(Self.dnsRow(s, h, "sshd", "unknown").suffix(3) == ["0", "-", "-"])
        // 10 s window (all five): 80 queries, 4 failed.
        _ = s.handle(.char("w"))
        #expect(Self.dnsRow(s, h, "checkout", "coredns").suffix(3) == ["20", "5.0%", "1.25ms"])
        // Before the burst (snapshots 0 to 2) no query failed: "0%", no warning.
        let calm = History((0...2).map(Fixture.dnsNode))
        let c = Fixture.state(.services, history: calm)
        #expect(Self.dnsRow(c, calm, "checkout", "coredns").suffix(3) == ["20", "0%", "1.25ms"])
        let m = render(c, calm, width: 250, height: 12)
        #expect(!m.styles.contains { $0.kind == .warning && $0.line > 2 })
    }

    @Test func dnsErrorsAreAWarningWhileTheyGrow() {
        let h = Fixture.dnsHistory
        let s = Fixture.state(.services, history: h)
        let m = render(s, h, width: 250, height: 12)
        let title = Array(m.lines[2])
        let errCol = m.lines[2].distance(from: m.lines[2].startIndex, to: m.lines[2].range(of: "DNS ERR")!.lowerBound)
        let line = m.lines.firstIndex { $0.hasPrefix("checkout ") && $0.contains(" coredns ") }!
        let warned = m.styles.filter { $0.line == line && $0.kind == .warning }
        #expect(warned.count == 1)
        let w = warned[0]
        #expect(w.columns.upperBound == errCol + "DNS ERR".count)
        #expect(String(Array(m.lines[line])[w.columns]).trimmingCharacters(in: .whitespaces) == "10%")
        #expect(title.count == 250)
    }

    @Test func dnsColumnsSortAndFilter() {
        let h = Fixture.dnsHistory
        var s = Fixture.state(.services, history: h)
        _ = s.handle(.char("E"))  // DNS ERR, largest first; no share last
        #expect(s.sort(for: .services) == SortOrder(column: .dnsErrors, descending: true))
        #expect(Self.cells(.services, s, h).map { $0[13] } == ["10%", "-", "-", "-", "-", "-", "-"])
        _ = s.handle(.char("M"))  // DNS p50, largest first
        #expect(Self.cells(.services, s, h).map { $0[14] }.prefix(3) == ["2.00s", "1.25ms", "-"])
        _ = s.handle(.char("n"))  // DNS/s
        #expect(Self.cells(.services, s, h)[0].prefix(2) == ["checkout", "coredns"])
        s.filter = "dnserr=10%"
        #expect(Self.cells(.services, s, h).map { $0[1] } == ["coredns"])
        s.filter = "dnsp50=2.00s"
        #expect(Self.cells(.services, s, h).map { $0[0] } == ["payments-api"])
    }

    @Test func dnsColumnsGiveWayOnNarrowTerminals() {
        let h = Fixture.dnsHistory
        let s = Fixture.state(.services, history: h)
        func titles(_ w: Int) -> [Substring] {
            render(s, h, width: w, height: 12).lines[2].split(separator: " ", omittingEmptySubsequences: true)
        }
        // 80 columns: the error share is the one DNS column left.
        #expect(titles(80).contains("ERR") && !titles(80).contains("DNS/s") && !titles(80).contains("p50"))
        // 60: none; the rates stay.
        #expect(!titles(60).contains("DNS") && titles(60).contains("TX/s▼"))
        // Wide enough for every column: all three.
        let wide = titles(250)
        #expect(wide.contains("DNS/s") && wide.filter { $0 == "DNS" }.count == 2)
    }
}
