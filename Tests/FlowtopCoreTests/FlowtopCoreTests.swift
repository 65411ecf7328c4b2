import Foundation
import Testing

@testable import FlowmeterCore
@testable import FlowtopCore

@Suite struct FlowtopCoreTests {
    /// The cells of a plain table's rows, split at runs of two or more spaces.
    static func cells(_ view: View, _ state: UIState, _ h: History = Fixture.history) -> [[String]] {
        plainTable(view, h, state: state).split(separator: "\n").dropFirst().map { line in
            var out: [String] = [], cur = "", spaces = 0
            for c in line {
                if c == " " { spaces += 1; continue }
                if spaces >= 2 && !cur.isEmpty { out.append(cur); cur = "" } else if spaces == 1 && !cur.isEmpty { cur += " " }
                spaces = 0
                cur.append(c)
            }
            if !cur.isEmpty { out.append(cur) }
            return out
        }
    }

    static func firstTwo(_ view: View, _ state: UIState) -> [String] {
        cells(view, state).map { $0.prefix(2).joined(separator: " ") }
    }

    // MARK: Window math

    /// A pair, an interface and a connection whose counters grow by r(t) bytes
    /// in second t: 100 up to 35, 1000 up to 43, 5000 after; t = 0...45.
    static func ramp(upTo last: Int = 45) -> History {
        func r(_ t: Int) -> UInt64 { t == 0 ? 0 : t <= 35 ? 100 : t <= 43 ? 1000 : 5000 }
        var h = History()
        var total: UInt64 = 0
        for t in 0...last {
            total += r(t)
            let rx: UInt64 = t <= 44 ? UInt64(t) * 1000 : 300  // the daemon restarted before t = 45
            h.add(
                Fixture.snapshot(
                    at: Fixture.t0 + Int64(t) * 1000,
                    interfaces: [Fixture.interface("eth0", tx: total, rx: rx, txPackets: UInt64(t) * 2)],
                    services: [Fixture.service("a", "b", tx: total, rx: rx)]
                        + (t >= 44 ? [Fixture.service("new", "b", tx: t == 44 ? 500 : 700)] : []),
                    connections: [
                        Fixture.connection(
                            "c", "1.1.1.1:1", "2.2.2.2:2", pid: 1, process: "p",
                            sent: total, received: 0)
                    ]))
        }
        return h
    }

    @Test func windowRatesUseTheOldestSnapshotWithinTheWindow() {
        let h = Self.ramp()
        let pair = ServicePair(service: "a", peer: "b", transport: "tcp")
        #expect(h.serviceRate(pair, window: 2).tx == 5000)  // 2 × 5000 / 2
        #expect(h.serviceRate(pair, window: 10).tx == 1800)  // (8 × 1000 + 2 × 5000) / 10
        #expect(h.serviceRate(pair, window: 40).tx == 525)  // (30 × 100 + 8000 + 10000) / 40
        #expect(h.interfaceRate("eth0", window: 10).tx == 1800)
        #expect(h.interfacePacketRate("eth0", window: 2).tx == 2)
        #expect(h.connectionRate("c", window: 40).tx == 525)
        #expect(h.processRate(ProcessKey(pid: 1, name: "p"), window: 2) == Rate(tx: 5000, rx: 0))
        #expect(h.totalRate(window: 10).tx == 1800)
        // The UI's window follows the `w` key.
        var s = UIState()
        s.observe(h)
        #expect(Self.cells(.services, s, h).first { $0[0] == "a" }?[3] == "5.0 KB/s")
        _ = s.handle(.char("w"))
        #expect(s.window == .ten)
        #expect(Self.cells(.services, s, h).first { $0[0] == "a" }?[3] == "1.8 KB/s")
        _ = s.handle(.char("w"))
        #expect(s.window == .forty)
        #expect(Self.cells(.services, s, h).first { $0[0] == "a" }?[3] == "525 B/s")
        _ = s.handle(.char("w"))
        #expect(s.window == .two)
    }

    @Test func aCounterThatWentDownCountsFromZero() {
        let h = Self.ramp()
        let pair = ServicePair(service: "a", peer: "b", transport: "tcp")
        // rx: 43000, 44000, then 300 after the restart: (1000 + 300) / 2.
        #expect(h.serviceRate(pair, window: 2).rx == 650)
        #expect(h.interfaceRate("eth0", window: 2).rx == 650)
        // A pair missing from the older snapshots starts from 0: (500 + 200) / 2.
        #expect(h.serviceRate(ServicePair(service: "new", peer: "b", transport: "tcp"), window: 2).tx == 350)
        // Increase summed step by step across the reset: 10 s: 9 × 1000 + 300.
        #expect(h.serviceRate(pair, window: 10).rx == 930)
    }

    @Test func oneSnapshotGivesZeroAndAGapUsesThePreviousSnapshot() {
        var h = History()
        h.add(Fixture.snapshot(at: Fixture.t0, services: [Fixture.service("a", "b", tx: 1000)]))
        let pair = ServicePair(service: "a", peer: "b", transport: "tcp")
        #expect(h.serviceRate(pair, window: 2) == .zero)
        #expect(h.serviceTrend(pair, count: 3) == [nil, nil, nil])
        h.add(Fixture.snapshot(at: Fixture.t0 + 5000, services: [Fixture.service("a", "b", tx: 6000)]))
        #expect(h.serviceRate(pair, window: 2).tx == 1000)  // 5000 over the 5 s gap
        #expect(h.serviceTrend(pair, count: 3) == [nil, nil, 1000])
        #expect(h.serviceRate(ServicePair(service: "x", peer: "y", transport: "tcp"), window: 2) == .zero)
    }

    @Test func historyKeepsSixtySecondsInTimeOrder() {
        var h = Self.ramp(upTo: 70)
        #expect(h.count == 61)
        #expect(h.snapshots.first?.time_unix_ms == Fixture.t0 + 10_000)
        #expect(h.latest?.time_unix_ms == Fixture.t0 + 70_000)
        // Out of order: inserted in place; same time: replaced.
        var g = History()
        g.add(Fixture.snapshot(at: Fixture.t0 + 2000, uptime: 2))
        g.add(Fixture.snapshot(at: Fixture.t0, uptime: 0))
        g.add(Fixture.snapshot(at: Fixture.t0 + 1000, uptime: 1))
        g.add(Fixture.snapshot(at: Fixture.t0 + 1000, uptime: 9))
        #expect(g.snapshots.map(\.uptime_seconds) == [0, 9, 2])
        h = History()
        #expect(h.isEmpty && h.latest == nil)
    }

    @Test func flowRateIsPerIntervalAndTotalCountsEachIntervalOnce() {
        // 5 s intervals, a snapshot every second: each interval's flows show 5 times.
        let a = Fixture.flow("transmit", "10.0.0.1:1", "10.0.0.2:2", bytes: 5000)
        let key = FlowKey(a)
        var h = History()
        for t in 0..<10 {
            var f = a
            if t >= 5 { f.bytes = 10_000 }
            h.add(Fixture.snapshot(at: Fixture.t0 + Int64(t) * 1000, interval: 5, flows: [f]))
        }
        #expect(h.flowRate(key) == 2000)
        #expect(h.flowTotal(key) == 15_000)
        #expect(h.flowTrend(key, count: 3) == [2000, 2000, 2000])
        // The same traffic in two intervals: counted again once an interval has passed.
        var same = History()
        for t in 0..<10 { same.add(Fixture.snapshot(at: Fixture.t0 + Int64(t) * 1000, interval: 5, flows: [a])) }
        #expect(same.flowTotal(key) == 10_000)
        // Duplicate records of one flow in a snapshot add up; an absent flow has rate 0.
        var dup = History()
        dup.add(Fixture.snapshot(at: Fixture.t0, flows: [a, a]))
        #expect(dup.flowRate(key) == 10_000 && dup.flowTotal(key) == 10_000)
        #expect(dup.flowRate(FlowKey(interface: "x", direction: "receive", proto: "tcp", src: "a", dst: "b")) == 0)
        // Fixture: 620 KB per 1 s interval in each of 5 snapshots.
        let rx = FlowKey(
            interface: "eth0", direction: "receive", proto: "tcp", src: "10.0.1.20:5432",
            dst: "10.0.0.5:40001")
        #expect(Fixture.history.flowRate(rx) == 620_000 && Fixture.history.flowTotal(rx) == 3_100_000)
    }

    // MARK: Units

    @Test func rateUnitsInBytesAndBits() {
        #expect(Format.rate(0, .bytes) == "0 B/s")
        #expect(Format.rate(0.4, .bytes) == "0 B/s")
        #expect(Format.rate(999, .bytes) == "999 B/s")
        #expect(Format.rate(999.4, .bytes) == "999 B/s")
        #expect(Format.rate(999.6, .bytes) == "1.0 KB/s")
        #expect(Format.rate(1000, .bytes) == "1.0 KB/s")
        #expect(Format.rate(1_234_567, .bytes) == "1.2 MB/s")
        #expect(Format.rate(999_940, .bytes) == "999.9 KB/s")
        #expect(Format.rate(999_960, .bytes) == "1.0 MB/s")
        #expect(Format.rate(2.5e12, .bytes) == "2.5 TB/s")
        #expect(Format.rate(-5, .bytes) == "0 B/s")
        #expect(Format.rate(.nan, .bytes) == "0 B/s")
        #expect(Format.rate(0, .bits) == "0 b/s")
        #expect(Format.rate(1, .bits) == "8 b/s")
        #expect(Format.rate(124.9, .bits) == "999 b/s")
        #expect(Format.rate(125, .bits) == "1.0 Kb/s")
        #expect(Format.rate(1_250_000, .bits) == "10.0 Mb/s")
        #expect(Format.rate(125_000_000, .bits) == "1.0 Gb/s")
        #expect(Format.bytes(0) == "0 B")
        #expect(Format.bytes(999) == "999 B")
        #expect(Format.bytes(1000) == "1.0 KB")
        #expect(Format.bytes(1_500_000_000) == "1.5 GB")
        #expect(Format.bytes(UInt64.max) == "18.4 EB")
        #expect(Format.perSecond(999) == "999")
        #expect(Format.perSecond(2500) == "2.5K")
        #expect(Format.count(99_999) == "99999")
        #expect(Format.count(100_000) == "100.0K")
    }

    @Test func bitsToggleChangesRatesNotTotals() {
        var s = Fixture.state(.interfaces)
        #expect(Self.cells(.interfaces, s)[0] == ["eth0", "1.3 MB/s", "2.5 MB/s", "1.0K", "2.5K", "75.0 MB", "12"])
        _ = s.handle(.char("b"))
        #expect(s.units == .bits)
        #expect(Self.cells(.interfaces, s)[0] == ["eth0", "10.0 Mb/s", "20.0 Mb/s", "1.0K", "2.5K", "75.0 MB", "12"])
        let screen = render(s, Fixture.history, width: 80, height: 24)
        #expect(screen.lines[1].hasPrefix("interfaces  in 20.1 Mb/s  out 10.1 Mb/s  flows 7  lost 3  window 2s  b/s "))
        #expect(screen.lines[23].hasPrefix("Tab view  w window  b bytes  / filter"))
        _ = s.handle(.char("b"))
        #expect(s.units == .bytes)
    }

    @Test func rttAndUptime() {
        #expect(Format.rtt(nil) == "-")
        #expect(Format.rtt(0) == "0µs")
        #expect(Format.rtt(0.000087) == "87µs")
        #expect(Format.rtt(0.0009994) == "999µs")
        #expect(Format.rtt(0.0009996) == "1.00ms")
        #expect(Format.rtt(0.0031) == "3.10ms")
        #expect(Format.rtt(0.0125) == "12.5ms")
        #expect(Format.rtt(0.25) == "250ms")
        #expect(Format.rtt(0.9996) == "1.00s")
        #expect(Format.rtt(1.25) == "1.25s")
        #expect(Format.rtt(12.5) == "12.5s")
        #expect(Format.uptime(45) == "45s")
        #expect(Format.uptime(725) == "12m05s")
        #expect(Format.uptime(11_040) == "3h04m")
        #expect(Format.uptime(183_600) == "2d03h")
    }

    // MARK: Sparkline

    @Test func sparklineScalesToTheRowsMax() {
        #expect(Sparkline.render([0, 1, 2, 3, 4, 5, 6, 7], width: 8) == "▁▂▃▄▅▆▇█")
        #expect(Sparkline.render([0, 10, 20, 30, 40, 50, 60, 70], width: 8) == "▁▂▃▄▅▆▇█")
        #expect(Sparkline.render([0, 0, 0], width: 3) == "▁▁▁")
        #expect(Sparkline.render([5, 5], width: 2) == "██")
        #expect(Sparkline.render([1, 2], width: 4) == "  ▅█")  // 1/2 × 7 = 3.5 → level 4
        #expect(Sparkline.render([nil, 0, 3], width: 3) == " ▁█")
        #expect(Sparkline.render([100, 0, 4], width: 2) == "▁█")  // only the shown values scale
        #expect(Sparkline.render([1], width: 0) == "")
        // From the history: eth0 per second 3.25, 4.25, 2.25, 5.25 MB.
        #expect(Fixture.history.interfaceTrend("eth0", count: 4) == [3_250_000, 4_250_000, 2_250_000, 5_250_000])
        #expect(Sparkline.render(Fixture.history.interfaceTrend("eth0", count: 6), width: 6) == "  ▅▇▄█")
    }

    // MARK: Sorting

    @Test func sortingEachViewAndReverse() {
        // services: default TX/s largest first; t again reverses.
        var s = Fixture.state(.services)
        let byTx = [
            "checkout postgres", "checkout frontend", "payments-api unknown", "sshd unknown",
            "coredns unknown", "\(Fixture.pod) checkout",
        ]
        #expect(Self.firstTwo(.services, s) == byTx)
        _ = s.handle(.char("t"))
        #expect(s.sort(for: .services) == SortOrder(column: .tx, descending: false))
        #expect(Self.firstTwo(.services, s) == byTx.reversed())
        #expect(render(s, Fixture.history, width: 80, height: 24).lines[2].contains("TX/s▲"))
        _ = s.handle(.char("s"))
        let byName = [
            "checkout frontend", "checkout postgres", "coredns unknown", "payments-api unknown",
            "\(Fixture.pod) checkout", "sshd unknown",
        ]
        #expect(Self.firstTwo(.services, s) == byName)
        #expect(render(s, Fixture.history, width: 80, height: 24).lines[2].hasPrefix("SERVICE▲ "))
        _ = s.handle(.char("s"))
        #expect(Self.firstTwo(.services, s) == byName.reversed())
        #expect(render(s, Fixture.history, width: 80, height: 24).lines[2].hasPrefix("SERVICE▼ "))
        _ = s.handle(.char("f"))
        #expect(Self.firstTwo(.services, s).prefix(2) == ["payments-api unknown", "checkout frontend"])
        _ = s.handle(.char("l"))  // RTT p99, largest first; no samples last
        #expect(Self.cells(.services, s).map { $0[10] } == ["1.25s", "47.5ms", "3.10ms", "999µs", "-", "-"])

        // flows: RATE, then TOTAL.
        var f = Fixture.state(.flows)
        let rates = ["620.0 KB/s", "260.0 KB/s", "250.0 KB/s", "210.0 KB/s", "1.5 KB/s", "1.3 KB/s", "84 B/s"]
        #expect(Self.cells(.flows, f).map { $0[5] } == rates)
        _ = f.handle(.char("r"))
        #expect(Self.cells(.flows, f).map { $0[5] } == rates.reversed())
        _ = f.handle(.char("a"))
        #expect(
            Self.cells(.flows, f).map { $0[6] } == [
                "3.1 MB", "1.3 MB", "1.3 MB", "1.1 MB", "7.5 KB", "6.5 KB",
                "252 B",
            ])
        _ = f.handle(.char("d"))
        #expect(Self.cells(.flows, f).map { $0[4] } == ["rx", "rx", "rx", "rx", "tx", "tx", "tx"])
        _ = f.handle(.char("d"))
        #expect(Self.cells(.flows, f).map { $0[4] } == ["tx", "tx", "tx", "rx", "rx", "rx", "rx"])

        // processes: PID largest first, then reversed.
        var p = Fixture.state(.processes)
        #expect(Self.cells(.processes, p).map { $0[0] } == ["2101", "3300", "977", "812"])  // by TX/s
        _ = p.handle(.char("i"))
        #expect(Self.cells(.processes, p).map { $0[0] } == ["3300", "2101", "977", "812"])
        _ = p.handle(.char("i"))
        #expect(Self.cells(.processes, p).map { $0[0] } == ["812", "977", "2101", "3300"])
        _ = p.handle(.char("n"))
        #expect(Self.cells(.processes, p).map { $0[1] } == ["checkout", "coredns", "payments-api", "sshd"])

        // interfaces: NAME A to Z, reversed; packets with the shifted key.
        var i = Fixture.state(.interfaces)
        _ = i.handle(.char("n"))
        #expect(Self.cells(.interfaces, i).map { $0[0] } == ["eth0", "lo", "veth1a2b3c4d"])
        _ = i.handle(.char("n"))
        #expect(Self.cells(.interfaces, i).map { $0[0] } == ["veth1a2b3c4d", "lo", "eth0"])
        _ = i.handle(.char("R"))
        #expect(Self.cells(.interfaces, i).map { $0[0] } == ["eth0", "lo", "veth1a2b3c4d"])
        #expect(render(i, Fixture.history, width: 80, height: 24).lines[2].contains("RX pkt/s▼"))
        // Each view keeps its own sort; a key no column has changes nothing.
        i.view = .processes
        #expect(i.sort(for: .processes) == View.processes.defaultSort)
        _ = i.handle(.char("z"))
        #expect(i.sort(for: .processes) == View.processes.defaultSort)
    }

    @Test func sortKeysAreUniqueAndNotReserved() {
        for v in View.allCases {
            let keys = v.columns.compactMap(\.sortKey)
            #expect(Set(keys).count == keys.count, "\(v)")
            #expect(keys.allSatisfy { !"qpwb?/".contains($0) && !$0.isNumber }, "\(v)")
            #expect(v.columns.filter { $0.sortKey == nil }.map(\.column).allSatisfy { $0 == .trend }, "\(v)")
        }
    }

    // MARK: Filtering

    @Test func filterBySubstringAndColumn() {
        func rows(_ view: View, _ filter: String) -> [String] {
            var s = Fixture.state(view)
            s.filter = filter
            return Self.firstTwo(view, s)
        }
        #expect(rows(.services, "pay") == ["payments-api unknown"])
        #expect(rows(.services, "PAY") == ["payments-api unknown"])
        // Plain text matches any cell (the pod's peer is checkout); service= only that column.
        #expect(rows(.services, "checkout") == ["checkout postgres", "checkout frontend", "\(Fixture.pod) checkout"])
        #expect(rows(.services, "service=checkout") == ["checkout postgres", "checkout frontend"])
        #expect(rows(.services, "SERVICE = Checkout") == ["checkout postgres", "checkout frontend"])
        #expect(rows(.services, "peer=unknown") == ["payments-api unknown", "sshd unknown", "coredns unknown"])
        #expect(rows(.services, "proto=udp") == ["coredns unknown"])
        #expect(rows(.services, "p99=ms") == ["checkout postgres", "checkout frontend"])
        // No match; a column of another view matches nothing; an unknown name is plain text.
        #expect(rows(.services, "nomatch") == [])
        #expect(rows(.services, "pid=2101") == [])
        #expect(rows(.processes, "pid=2101") == ["2101 checkout"])
        #expect(rows(.services, "foo=bar") == [])
        #expect(rows(.flows, "dir=tx").count == 3)
        #expect(rows(.flows, "service=payments") == ["[2001:db8::5]:443 → [2001:db8:ffff::1234]:60123 eth0"])
        #expect(rows(.interfaces, "name=ETH") == ["eth0 1.3 MB/s", "veth1a2b3c4d 0 B/s"])  // contains

        // The screen with no match: titles, no rows, the filter in the header.
        var s = Fixture.state(.services)
        s.filter = "nomatch"
        let m = render(s, Fixture.history, width: 80, height: 6)
        #expect(m.lines[1].hasPrefix("services  filter: nomatch  in 2.5 MB/s"))
        #expect(m.lines[2].hasPrefix("SERVICE "))
        #expect(m.lines[3] == String(repeating: " ", count: 80) && m.lines[4] == m.lines[3])
        #expect(!m.styles.contains { $0.kind == .selected })
    }

    @Test func filterPrompt() {
        var s = Fixture.state(.services)
        let opened = s.handle(.char("/"))
        #expect(opened)
        #expect(s.prompt == "")
        for k in Fixture.keys("servicx") + [.backspace, .char("e"), .char("=")] + Fixture.keys("sshq") {
            let handled = s.handle(k)
            #expect(handled)  // q types, it does not quit
        }
        #expect(s.prompt == "service=sshq")
        #expect(render(s, Fixture.history, width: 80, height: 6).lines[5].hasPrefix("/service=sshq_ "))
        _ = s.handle(.backspace)
        _ = s.handle(.enter)
        #expect(s.prompt == nil && s.filter == "service=ssh")
        #expect(Self.firstTwo(.services, s) == ["sshd unknown"])
        // Esc cancels an edit; the prompt opens with the current filter.
        _ = s.handle(.char("/"))
        #expect(s.prompt == "service=ssh")
        _ = s.handle(.char("x"))
        _ = s.handle(.escape)
        #expect(s.prompt == nil && s.filter == "service=ssh")
        // A long prompt shows its end.
        _ = s.handle(.char("/"))
        for k in Fixture.keys(String(repeating: "a", count: 30)) { _ = s.handle(k) }
        #expect(render(s, Fixture.history, width: 20, height: 5).lines[4] == String(repeating: "a", count: 19) + "_")
        _ = s.handle(.escape)
        // Enter on an empty prompt clears; Esc clears an applied filter.
        _ = s.handle(.escape)
        #expect(s.filter == nil)
        s.filter = "x"
        _ = s.handle(.char("/"))
        _ = s.handle(.backspace)
        _ = s.handle(.enter)
        #expect(s.filter == nil)
    }

    // MARK: Drill-down

    @Test func drillDownIntoAPairAndBack() {
        var s = Fixture.state(.services, [.down])
        s.filter = "tcp"
        #expect(Self.firstTwo(.services, s)[1] == "checkout frontend")
        let handled = s.handle(.enter)
        #expect(handled)
        #expect(s.view == .flows)
        #expect(s.drill?.pair == ServicePair(service: "checkout", peer: "frontend", transport: "tcp"))
        #expect(s.filter == nil)
        #expect(Self.cells(.flows, s).map { $0[0] } == ["10.0.2.7:51515 → 10.0.0.5:8080"])
        let m = render(s, Fixture.history, width: 80, height: 10)
        #expect(m.lines[1].hasPrefix("flows of checkout → frontend (tcp)  in 2.5 MB/s"))
        #expect(m.lines[9].hasPrefix("Esc back  Tab view"))
        // Enter in the flows view does nothing; Esc goes back as it was.
        _ = s.handle(.enter)
        #expect(s.view == .flows)
        _ = s.handle(.escape)
        #expect(s.view == .services && s.drill == nil && s.filter == "tcp")
        #expect(s.selection == 1 && s.selectedID == "checkout\u{1F}frontend\u{1F}tcp")
        #expect(
            render(s, Fixture.history, width: 80, height: 10).styles.contains(
                Style(line: 4, columns: 0..<80, kind: .selected)))
        // Switching view ends a drill-down and gives the filter back.
        _ = s.handle(.enter)
        _ = s.handle(.tab)
        #expect(s.view == .processes && s.drill == nil && s.filter == "tcp")
        // Nothing to drill into without rows.
        var e = UIState()
        _ = e.handle(.enter)
        #expect(e.view == .services && e.drill == nil)
    }

    // MARK: Pause, selection, views

    @Test func pauseFreezesTheDisplayedData() {
        let before = Fixture.history
        var s = UIState()
        s.observe(before)
        _ = s.handle(.char("p"))
        #expect(s.paused)
        var after = before
        var next = Fixture.node(4)
        next.time_unix_ms += 1000
        next.uptime_seconds += 1
        next.services[0].tx_bytes += 50_000_000
        after.add(next)
        s.observe(after)
        let frozen = render(s, after, width: 80, height: 24)
        #expect(frozen == render(s, before, width: 80, height: 24))
        #expect(frozen.lines[0].hasSuffix("up 1h02m        "))
        #expect(frozen.lines[1].hasPrefix("services  PAUSED  in 2.5 MB/s"))
        #expect(frozen.styles.contains(Style(line: 1, columns: 10..<16, kind: .warning)))
        #expect(frozen.lines[3].hasPrefix("checkout         postgres   tcp    400.0 KB/s"))
        _ = s.handle(.char("p"))
        #expect(!s.paused)
        let live = render(s, after, width: 80, height: 24)
        #expect(live.lines[1].hasPrefix("services  in "))
        #expect(live.lines[3].hasPrefix("checkout         postgres   tcp     25.2 MB/s"))
    }

    @Test func selectionMovesAndFollowsItsRow() {
        var s = Fixture.state(.services, [.resize(width: 80, height: 6)])  // two rows visible
        func selectedLine(_ h: History = Fixture.history) -> Int? {
            render(s, h, width: 80, height: 6).styles.first { $0.kind == .selected }?.line
        }
        #expect(selectedLine() == 3)
        _ = s.handle(.down)
        #expect(s.selection == 1 && selectedLine() == 4)
        _ = s.handle(.down)  // scrolls
        #expect(s.selection == 2 && s.top == 1 && selectedLine() == 4)
        #expect(render(s, Fixture.history, width: 80, height: 6).lines[4].hasPrefix("payments-api "))
        _ = s.handle(.pageDown)
        #expect(s.selection == 4)
        _ = s.handle(.end)
        #expect(s.selection == 5 && s.top == 4)
        _ = s.handle(.down)
        #expect(s.selection == 5)
        _ = s.handle(.pageUp)
        #expect(s.selection == 3)
        _ = s.handle(.home)
        #expect(s.selection == 0 && s.top == 0)
        _ = s.handle(.up)
        #expect(s.selection == 0)
        // payments-api selected; then it becomes the busiest: the selection follows it.
        _ = s.handle(.down)
        _ = s.handle(.down)
        var h = Fixture.history
        var next = Fixture.node(4)
        next.time_unix_ms += 1000
        next.services[2].tx_bytes += 90_000_000
        h.add(next)
        s.observe(h)
        #expect(render(s, h, width: 80, height: 6).lines[3].hasPrefix("payments-api "))
        #expect(selectedLine(h) == 3)
    }

    @Test func viewsSwitchWithTabAndDigits() {
        var s = UIState()
        var seen: [View] = []
        for _ in 0..<4 {
            _ = s.handle(.tab)
            seen.append(s.view)
        }
        #expect(seen == [.flows, .processes, .interfaces, .services])
        for (c, v) in [("3", View.processes), ("1", .services), ("4", .interfaces), ("2", .flows)] {
            _ = s.handle(.char(Character(c)))
            #expect(s.view == v)
        }
        _ = s.handle(.char("7"))
        #expect(s.view == .flows)
        let quit = !s.handle(.char("q"))
        #expect(quit)
        let stays = s.handle(.char("Q"))
        #expect(stays)
    }

    // MARK: Screen shape

    @Test func tinyTerminalsDoNotCrashAndRespectTheSize() {
        let sizes = [(0, 0), (1, 1), (5, 2), (20, 3), (20, 5), (10, 4), (3, 10), (0, 5), (7, 0), (-3, -2), (80, 4)]
        for (w, h) in sizes {
            for v in View.allCases {
                for help in [false, true] {
                    var s = Fixture.state(v, [.down, .down])
                    s.showHelp = help
                    for hist in [Fixture.history, History()] {
                        let m = render(s, hist, width: w, height: h)
                        #expect(m.lines.count == max(0, h), "\(w)x\(h) \(v)")
                        #expect(
                            m.lines.allSatisfy { Text.width($0) == max(0, w) && $0.count == max(0, w) },
                            "\(w)x\(h) \(v)")
                        #expect(
                            m.styles.allSatisfy {
                                $0.line < m.lines.count && $0.columns.upperBound <= max(0, w)
                                    && !$0.columns.isEmpty
                            }, "\(w)x\(h) \(v)")
                    }
                }
            }
        }
        #expect(
            Fixture.screen(Fixture.state(.services), Fixture.history, 20, 5) == """
                flowtop  web-1  kern
                services  in 2.5 MB/
                SERVICE         TX/s
                checkout   400.0 KB/
                Tab view  w window\u{20}\u{20}
                """)
        #expect(
            Fixture.screen(Fixture.state(.services), Fixture.history, 20, 3) == """
                flowtop  web-1  kern
                SERVICE         TX/s
                Tab view  w window\u{20}\u{20}
                """)
        #expect(Fixture.screen(Fixture.state(.services), Fixture.history, 5, 2) == "SERVI\nTab v")
        #expect(Fixture.screen(Fixture.state(.services), Fixture.history, 1, 1) == "T")
    }

    @Test func wideAndControlCharactersKeepTheWidth() {
        var h = History()
        for i in 0..<2 {
            h.add(
                Fixture.snapshot(
                    at: Fixture.t0 + Int64(i) * 1000,
                    services: [Fixture.service("日本語サービス名前", "evil\u{1B}[2J", tx: UInt64(i) * 100)],
                    connections: [
                        Fixture.connection(
                            "1", "a:1", "b:2", pid: 1, process: "e\u{301}\u{7}x",
                            sent: 0, received: 0)
                    ]))
        }
        for w in [20, 21, 80] {
            for v in View.allCases {
                let m = render(Fixture.state(v, history: h), h, width: w, height: 8)
                #expect(m.lines.allSatisfy { Text.width($0) == w }, "\(w) \(v)")
                #expect(!m.lines.joined().contains("\u{1B}"))
            }
        }
        #expect(
            Self.cells(.services, Fixture.state(.services, history: h), h)[0].prefix(2)
                == ["日本語サービス名前", "evil?[2J"])
        #expect(Self.cells(.processes, Fixture.state(.processes, history: h), h)[0][1] == "é?x")
        #expect(Text.fit("日本語", 5, .left) == "日本…")
        #expect(Text.fit("日本語", 4, .left) == "日… ")
        #expect(Text.cut("日本", 3) == "日 ")
    }

    @Test func stylesMarkHeaderSelectionWarningsAndHints() {
        let m = render(Fixture.state(.services), Fixture.history, width: 80, height: 24)
        #expect(
            m.styles == [
                Style(line: 0, columns: 0..<80, kind: .title),
                Style(line: 1, columns: 46..<52, kind: .warning),  // lost 3
                Style(line: 2, columns: 0..<80, kind: .header),
                Style(line: 3, columns: 0..<80, kind: .selected),
                Style(line: 5, columns: 64..<71, kind: .warning),  // payments-api FAILED went 7 → 9
                Style(line: 23, columns: 0..<80, kind: .dim),
            ])
        #expect(m.lines[1].dropFirst(46).hasPrefix("lost 3  "))
        #expect(m.lines[5].dropFirst(64).hasPrefix("      9 "))
        // Wide: the RETRANS and DROPS increases of checkout → postgres show too; no loss, no warning.
        var quiet = Fixture.history.snapshots
        for i in quiet.indices { quiet[i].self_metrics.events_ring_lost = 0 }
        let w = render(Fixture.state(.services), History(quiet), width: 200, height: 50)
        #expect(!w.styles.contains { $0.line == 1 })
        #expect(w.styles.filter { $0.kind == .warning }.map(\.line) == [3, 3, 5])
        let cells = w.styles.filter { $0.line == 3 && $0.kind == .warning }.map {
            String(Array(w.lines[3])[$0.columns]).trimmingCharacters(in: .whitespaces)
        }
        #expect(cells == ["4", "7"])
    }

    @Test func hooksAndWaitingHeader() {
        let rung = Fixture.snapshot(
            at: Fixture.t0,
            hooks: [
                ("tc", "clsact"), ("tcp_state", "tracepoint"), ("tcp_listen", "tracepoint (tcp_state)"),
                ("udp_send", "unsupported"), ("udp_close", "cgroup"),
            ])
        #expect(
            render(UIState(), History([rung]), width: 120, height: 4).lines[0]
                .hasPrefix("flowtop  web-1  kernel 6.18.0-amd64  hooks: tc=clsact sock=tracepoint udp=unsupported  up 1h02m "))
        #expect(hookSummary([APISnapshot.Hook(hook: "tc", mode: "tcx")]) == "tc=tcx sock=off")
        #expect(
            hookSummary([APISnapshot.Hook(hook: "tc", mode: "tcx"), APISnapshot.Hook(hook: "tcp_listen", mode: "tp_btf (tcp_state)")])
                == "tc=tcx sock=tp_btf")
        let empty = render(UIState(), History(), width: 60, height: 4)
        #expect(
            empty.lines.map { $0.trimmingSpaces } == [
                "flowtop  waiting for the first snapshot from flowmeterd",
                "services  window 2s  B/s",
                "SERVICE    PEER       PROTO       TX/s▼       RX/s  CONNS",
                "Tab view  w window  b bits  / filter  ? help  q quit",
            ])
    }

    // MARK: Help

    @Test func helpListsEveryKey() {
        for v in View.allCases {
            var s = Fixture.state(v, [.char("?")])
            #expect(s.showHelp)
            let m = render(s, Fixture.history, width: 80, height: 24)
            let text = m.lines.joined(separator: "\n")
            #expect(m.lines.allSatisfy { $0.count == 80 })
            for line in [
                "  Tab, 1-4    view: 1 services, 2 flows, 3 processes, 4 interfaces",
                "  Up, Down    select a row", "  PgUp, PgDn  a page up or down", "  Home, End   first or last row",
                "  Enter       services: the selected pair's flows",
                "  Esc         back from a pair's flows, close this help, clear the filter",
                "  /           filter (text, or column=value); Enter applies, Esc cancels",
                "  w           rate window: 2s, 10s, 40s", "  b           bytes or bits per second",
                "  p           pause or resume", "  ?           this help", "  q           quit",
            ] {
                #expect(m.lines.contains { $0.hasPrefix(line + " ") }, "\(v): \(line)")
            }
            #expect(text.contains("Sort \(v.title) (the same key again reverses):"))
            for c in v.columns {
                if let k = c.sortKey { #expect(text.contains("\(k) \(c.title)"), "\(v) \(c.title)") }
                if let n = c.names.first { #expect(text.contains(" \(n)"), "\(v) \(n)") }
            }
            #expect(m.styles.contains(Style(line: 2, columns: 0..<80, kind: .title)))
            // Any key closes the help (and does nothing else); q still quits.
            let closed = s.handle(.char("b"))
            #expect(closed)
            #expect(!s.showHelp && s.units == .bytes)
            _ = s.handle(.char("?"))
            let quit = !s.handle(.char("q"))
            #expect(quit)
        }
        #expect(
            Fixture.screen(Fixture.state(.processes, [.char("?")]), Fixture.history, 80, 24)
                .split(separator: "\n").map { $0.trimmingSpaces }.dropFirst(2).map { $0 }
                == [
                    "flowtop keys",
                    "Tab, 1-4    view: 1 services, 2 flows, 3 processes, 4 interfaces",
                    "Up, Down    select a row",
                    "PgUp, PgDn  a page up or down",
                    "Home, End   first or last row",
                    "Enter       services: the selected pair's flows",
                    "Esc         back from a pair's flows, close this help, clear the filter",
                    "/           filter (text, or column=value); Enter applies, Esc cancels",
                    "w           rate window: 2s, 10s, 40s",
                    "b           bytes or bits per second",
                    "p           pause or resume",
                    "?           this help",
                    "q           quit",
                    "",
                    "Sort processes (the same key again reverses):",
                    "i PID       n PROCESS   c CONNS     t TX/s      r RX/s      a TOTAL",
                    "Filter columns: pid process conns tx rx total",
                    "", "", "", "",
                    "Tab view  w window  b bits  / filter  ? help  q quit",
                ].map { $0.trimmingSpaces })
    }

    @Test func extremeValuesDoNotTrap() {
        #expect(Format.rate(1e300, .bytes) == "999.9 EB/s")
        #expect(Format.rate(.infinity, .bits) == "0 b/s")
        #expect(Format.rtt(1e300) == "1000000000s")
        #expect(Format.rtt(-1) == "0µs")
        #expect(Format.uptime(.nan) == "0s")
        var h = History()
        for (t, interval) in [(Int64.min, 1e300), (0, -1), (Int64.max - 1, .nan), (Int64.max, 0)] {
            var s = Fixture.node(0)
            s.time_unix_ms = t
            s.interval_seconds = interval
            s.uptime_seconds = 1e300
            s.services[0].rtt_p99_seconds = .infinity
            s.interfaces[0].tx_bytes = UInt64(t == Int64.max ? UInt64.max : 0)
            h.add(s)
        }
        #expect(h.count == 2)  // Int64.max and one millisecond before; the rest is older than 60 s
        var first = History()
        first.add(Fixture.snapshot(at: Int64.min))
        #expect(first.count == 1)
        for v in View.allCases {
            var st = Fixture.state(v, history: h)
            for w in RateWindow.allCases {
                st.window = w
                let m = render(st, h, width: 120, height: 12)
                #expect(m.lines.count == 12 && m.lines.allSatisfy { $0.count == 120 })
                #expect(!plainTable(v, h, state: st).isEmpty)
            }
        }
    }

    @Test func handleWithHistoryObservesFirst() {
        var s = UIState()
        let quit = !s.handle(.down, history: Fixture.history)
        #expect(!quit)
        #expect(s.live == Fixture.history && s.selection == 1)
        _ = s.handle(.char("p"), history: Fixture.history)
        #expect(s.frozen == Fixture.history)
    }

    // MARK: Plain table

    @Test func plainTableHasAllColumnsAndEndsInANewline() {
        var s = Fixture.state(.processes)
        #expect(
            plainTable(.processes, Fixture.history, state: s) == """
                 PID  PROCESS       CONNS        TX/s      RX/s    TOTAL
                2101  checkout          3  490.0 KB/s  1.5 MB/s  16.9 MB
                3300  payments-api      2    5.0 KB/s  3.0 KB/s  71.0 KB
                 977  sshd              1    3.0 KB/s  1.0 KB/s   8.0 KB
                 812  coredns           1     800 B/s  1.2 KB/s  17.0 KB

                """)
        #expect(
            plainTable(.services, Fixture.history, state: Fixture.state(.services)) == """
                SERVICE                                   PEER      PROTO        TX/s       RX/s  CONNS  FAILED  RETRANS  RESETS  RTT p50  RTT p99  DROPS
                checkout                                  postgres  tcp    400.0 KB/s   1.2 MB/s     12       0        4       0    420µs   3.10ms      7
                checkout                                  frontend  tcp    250.0 KB/s  90.0 KB/s     40       2        0       1   1.20ms   47.5ms      0
                payments-api                              unknown   tcp      5.0 KB/s   3.0 KB/s      1       9        0       4   85.0ms    1.25s      0
                sshd                                      unknown   tcp      3.0 KB/s   1.0 KB/s      1       0        0       0        -        -      0
                coredns                                   unknown   udp       800 B/s   1.2 KB/s      0       0        0       0        -        -      0
                \(Fixture.pod)  checkout  tcp         0 B/s      0 B/s      3       0        0       0     87µs    999µs      0

                """)
        #expect(
            plainTable(.flows, Fixture.history, state: Fixture.state(.flows)) == """
                FLOW                                             IF    PROTO  SERVICE       DIR        RATE   TOTAL
                10.0.1.20:5432 → 10.0.0.5:40001                  eth0  tcp    checkout      rx   620.0 KB/s  3.1 MB
                10.0.2.7:51515 → 10.0.0.5:8080                   eth0  tcp    checkout      rx   260.0 KB/s  1.3 MB
                10.0.0.5:40002 → 10.0.1.20:5432                  eth0  tcp    checkout      tx   250.0 KB/s  1.3 MB
                10.0.0.5:40001 → 10.0.1.20:5432                  eth0  tcp    checkout      tx   210.0 KB/s  1.1 MB
                [2001:db8::5]:443 → [2001:db8:ffff::1234]:60123  eth0  tcp    payments-api  tx     1.5 KB/s  7.5 KB
                10.0.0.1:53000 → 10.0.0.5:53                     eth0  udp    coredns       rx     1.3 KB/s  6.5 KB
                192.0.2.1:0 → 10.0.0.5:0                         eth0  icmp   -             rx       84 B/s   252 B

                """)
        #expect(
            plainTable(.interfaces, Fixture.history, state: Fixture.state(.interfaces)) == """
                NAME               TX/s       RX/s  TX pkt/s  RX pkt/s    TOTAL  DROPS
                eth0           1.3 MB/s   2.5 MB/s      1.0K      2.5K  75.0 MB     12
                lo            12.0 KB/s  12.0 KB/s        40        40   1.1 MB      0
                veth1a2b3c4d      0 B/s      0 B/s         0         0      0 B      0

                """)
        // Filter and sort apply; no rows is the title line alone; two snapshots as `--once` takes them.
        s.filter = "nomatch"
        #expect(plainTable(.processes, Fixture.history, state: s) == "PID  PROCESS  CONNS  TX/s  RX/s  TOTAL\n")
        #expect(plainTable(.services, History(), state: UIState()).hasSuffix("DROPS\n"))
        let two = History([Fixture.node(0), Fixture.node(1)])
        #expect(
            Self.cells(.interfaces, Fixture.state(.interfaces), two)[0] == [
                "eth0", "1.3 MB/s", "2.0 MB/s", "1.0K",
                "2.5K", "63.3 MB", "5",
            ])
    }
}
