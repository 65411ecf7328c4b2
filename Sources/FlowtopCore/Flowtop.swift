// FlowtopCore: the pure part of flowtop, a top-like view of flowmeterd's
// local API. No terminal, no sockets: snapshots go into a History, keys into
// a UIState, and render(state, history, width:, height:) gives the screen as
// text lines plus style ranges, which the flowtop executable draws.
//
// Choices:
//
// - Rates. Over the window (w: 2, 10, 40 s) from cumulative counters, as
//   History describes: the oldest snapshot within the window to the newest,
//   increases summed step by step (a counter that went down counts from 0).
//   Flows are per-interval counts: RATE is bytes over the interval of the
//   newest snapshot that has the flow, TOTAL the sum over the distinct
//   intervals in the 60 s history.
// - Rows. services: the pairs of the newest snapshot; FAILED, RETRANS,
//   RESETS (sent + received) are counts since the daemon started, drawn as
//   warnings when they grew within the window. flows: the newest snapshot's
//   flows (one interval); SERVICE is the daemon's service for the flow, plus
//   "/process" of the connection whose local/remote endpoints are the flow's
//   (either way round) when that name differs. processes: the owners of the
//   newest snapshot's connections (no owner: PID and PROCESS "-"); TX/s and
//   RX/s sum their connections' rates (by connection id over the window),
//   TOTAL their bytes so far; a connection that closed leaves with its
//   traffic. interfaces: the newest snapshot's interfaces, TOTAL tx + rx.
// - Units. Everything is 1000-based (SI prefixes K M G T P E, uppercase K):
//   rates in bytes "0 B/s", "999 B/s", "1.0 KB/s", "12.3 MB/s"; in bits (b
//   toggles; bits = bytes × 8) "8 b/s", "1.2 Mb/s". A whole number below
//   1000, one decimal above; a value that would round to 1000 takes the next
//   prefix (999.96 KB/s shows as 1.0 MB/s). Totals are byte counts in both
//   modes ("0 B", "1.5 GB"); packets per second are bare ("999", "1.2K");
//   counters are exact below 100000. RTT: "87µs", "1.25ms", "12.5ms",
//   "250ms", "1.25s"; "-" without samples.
// - Sparklines (TREND): one column per second, tx + rx bytes per second
//   (services, interfaces: between consecutive snapshots; flows: the rate of
//   the interval each snapshot shows), scaled linearly from 0 (▁) to the
//   largest value in view (█), nearest of 8 levels. All zero is a flat "▁"
//   line; seconds before the history starts are blank.
// - Columns that do not fit are dropped, least important first, until the
//   rest fits at their minimum widths; what is left over widens the flexible
//   columns (names, flows, the trend) round-robin. Never dropped: the name
//   column(s) and the rates. Orders:
//     services:   DROPS, DNS p50, RTT p50, RESETS, RETRANS, TREND, DNS/s, FAILED,
//                 DNS ERR, RTT p99, PROTO, CONNS, PEER
//     flows:      IF, TREND, DIR, PROTO, TOTAL, SERVICE
//     processes:  TOTAL, CONNS, PID
//     interfaces: TREND, TOTAL, RX pkt/s, TX pkt/s
//   At 80 columns this drops DROPS, RTT p50, RESETS, RETRANS, TREND from
//   services (with DNS also DNS p50, DNS/s and FAILED: DNS ERR takes FAILED's
//   place) and IF, TREND from flows (a flow's endpoints matter more than its
//   sparkline). A line that still does not fit is cut at the width. The DNS
//   columns (DNS/s, DNS ERR, DNS p50) are there only when
//   the daemon counts DNS (the newest snapshot's pairs carry dns_requests):
//   DNS/s is requests per second over the window, DNS ERR the share of the
//   window's requests that failed (rcode not NOERROR, timeouts included; "-"
//   with no request in the window; a warning while errors grew), DNS p50 the
//   daemon's median latency.
// - Screen: line 0 host, kernel, hooks, uptime; line 1 the view (and the
//   pair drilled into), PAUSED, the filter, then traffic in and out (all
//   interfaces), active flows, lost records, window, units (modes first, so
//   a narrow terminal cuts numbers, not modes); line 2 the column titles (the
//   sorted one marked ▼ descending, ▲ ascending); the rows; the last line the
//   key hints or the filter prompt. Lines are exactly `width` display
//   columns (wide characters count 2; ▁…█, ▼▲, →, µ and … count 1); a cell
//   too long for its column ends in "…". Below 4 lines the status line stays
//   first, then the column titles, then line 0. The help replaces the column
//   titles and the rows.
// - Keys: Tab and 1-4 views; Up Down PageUp PageDown Home End select; Enter
//   drills from a service pair into its flows; Esc back; / filter; w window;
//   b bytes/bits; p pause; ? help (any key closes it); q quit. Sort keys
//   (case-sensitive; q p w b ? / and digits are never sort keys):
//     services:   s SERVICE, e PEER, o PROTO, t TX/s, r RX/s, c CONNS,
//                 f FAILED, x RETRANS, k RESETS, m RTT p50, l RTT p99,
//                 d DROPS, n DNS/s, E DNS ERR, M DNS p50
//     flows:      f FLOW, i IF, o PROTO, s SERVICE, d DIR, r RATE, a TOTAL
//     processes:  i PID, n PROCESS, c CONNS, t TX/s, r RX/s, a TOTAL
//     interfaces: n NAME, t TX/s, r RX/s, T TX pkt/s, R RX pkt/s, a TOTAL
//   The first press sorts numbers largest first and text A to Z; the same
//   key again reverses (exactly: ties go by the row's identity, in the same
//   direction). Each view keeps its own sort; each starts by TX/s (flows:
//   RATE), largest first.
// - Filter: `/` opens a prompt (prefilled with the current filter). Enter
//   applies (empty: no filter), Esc cancels. `name=value`, with name a column
//   name of some view (the lowercase title; p50, p99, txpkt, rxpkt, if, dns,
//   dnserr, dnsp50), keeps rows whose cell in that column contains value,
//   case-insensitive; a name the current view lacks matches nothing. Anything else keeps rows with a
//   cell containing the text. One filter for all views.
// - Esc closes the help, else leaves a drill-down (back to the services view,
//   selection and filter as they were), else clears the filter. Switching
//   view (Tab, 1-4) ends a drill-down and restores the filter it hid.
// - Selection follows its row (by identity) while the data changes; if the
//   row goes, the selection stays at its index.
// - Pause freezes the history observed at the key press; w, b, sorting and
//   filtering still apply to the frozen data.
//
// Use: feed every snapshot to `history.add(_:)` and then `state.observe(history)`
// (keys need the rows: selection, drill-down, pause), or pass keys with
// `state.handle(key, history: history)`, which observes first; `handle`
// returns false for quit. Send `.resize` with the terminal's size once at
// start (PageUp/PageDown move by a page). Draw `render(state, history,
// width:, height:)`.

import FlowmeterCore

/// Input keys, as the terminal layer decodes them.
public enum Key: Equatable, Sendable {
    case char(Character), tab, enter, escape, backspace, up, down, pageUp, pageDown, home, end
    case resize(width: Int, height: Int)
}

/// The rate window.
public enum RateWindow: Int, CaseIterable, Sendable {
    case two = 2, ten = 10, forty = 40
    public var next: RateWindow {
        switch self {
        case .two: .ten
        case .ten: .forty
        case .forty: .two
        }
    }
}

/// A drill-down from the services view into the flows of one pair.
public struct DrillDown: Sendable, Equatable {
    public var pair: ServicePair
    /// The services view as it was, for Esc.
    var saved: Saved
    struct Saved: Sendable, Equatable {
        var view: View, selection: Int, selectedID: String?, top: Int, filter: String?
    }
}

/// What the user chose: view, window, units, sort, filter, selection,
/// pause, help. Changed only by keys (and `observe`).
public struct UIState: Sendable, Equatable {
    public var view: View = .services
    public var window: RateWindow = .two
    public var units: Units = .bytes
    /// Per view; a view not here sorts by `view.defaultSort`.
    public var sorts: [View: SortOrder] = [:]
    /// The applied filter text.
    public var filter: String?
    /// The filter being typed (the prompt is open while non-nil).
    public var prompt: String?
    public var drill: DrillDown?
    /// Index of the selected row, and its identity (followed while rows move).
    public var selection = 0
    public var selectedID: String?
    /// First row shown.
    public var top = 0
    public var showHelp = false
    /// The history shown while paused.
    public var frozen: History?
    /// Terminal size, from `.resize` keys (page size of PageUp/PageDown).
    public var width = 80, height = 24
    /// The history last observed.
    public private(set) var live = History()

    public init() {}

    public var paused: Bool { frozen != nil }

    public func sort(for view: View) -> SortOrder { sorts[view] ?? view.defaultSort }

    /// The history to show: the frozen one while paused, else `history`.
    public func shown(_ history: History) -> History { frozen ?? history }

    /// Tells the state the current history; call after each `History.add`.
    public mutating func observe(_ history: History) { live = history }

    /// Rows visible at once for the current height.
    var pageSize: Int { max(1, height - 4) }

    /// Index of the selected row among `rows`, nil without rows.
    func selectedIndex(_ rows: [Row]) -> Int? {
        guard !rows.isEmpty else { return nil }
        if let id = selectedID, let i = rows.firstIndex(where: { $0.id == id }) { return i }
        return min(max(0, selection), rows.count - 1)
    }

    mutating func resetSelection() {
        selection = 0
        selectedID = nil
        top = 0
    }

    /// Observes `history`, then handles `key`; false means quit.
    public mutating func handle(_ key: Key, history: History) -> Bool {
        observe(history)
        return handle(key)
    }

    /// Handles a key (acting on the history last observed); false means quit.
    public mutating func handle(_ key: Key) -> Bool {
        if case let .resize(w, h) = key {
            width = max(0, w)
            height = max(0, h)
            return true
        }
        if var text = prompt {
            switch key {
            case .char(let c):
                text.append(c)
                prompt = text
            case .backspace:
                if !text.isEmpty { text.removeLast() }
                prompt = text
            case .enter:
                filter = text.isEmpty ? nil : text
                prompt = nil
                resetSelection()
            case .escape:
                prompt = nil
            default:
                break
            }
            return true
        }
        if showHelp {
            if key == .char("q") { return false }
            showHelp = false
            return true
        }
        switch key {
        case .char("q"): return false
        case .char("?"): showHelp = true
        case .char("/"): prompt = filter ?? ""
        case .char("p"): frozen = frozen == nil ? live : nil
        case .char("w"): window = window.next
        case .char("b"): units = units == .bytes ? .bits : .bytes
        case .char(let c) where c.isASCII && c.isNumber:
            if let n = c.wholeNumberValue, let v = View(rawValue: n) { switchView(v) }
        case .char(let c):
            if let spec = view.columns.first(where: { $0.sortKey == c }) {
                let current = sort(for: view)
                sorts[view] =
                    current.column == spec.column
                    ? SortOrder(column: spec.column, descending: !current.descending)
                    : SortOrder(column: spec.column, descending: spec.numeric)
            }
        case .tab: switchView(view.next)
        case .enter: drillDown()
        case .escape:
            if let d = drill {
                view = d.saved.view
                selection = d.saved.selection
                selectedID = d.saved.selectedID
                top = d.saved.top
                filter = d.saved.filter
                drill = nil
            } else if filter != nil {
                filter = nil
                resetSelection()
            }
        case .up: move { i, _ in i - 1 }
        case .down: move { i, _ in i + 1 }
        case .pageUp: move { i, page in i - page }
        case .pageDown: move { i, page in i + page }
        case .home: move { _, _ in 0 }
        case .end: move { _, _ in Int.max / 2 }
        case .backspace, .resize: break
        }
        return true
    }

    mutating func switchView(_ v: View) {
        if let d = drill {
            filter = d.saved.filter
            drill = nil
        }
        if v != view { resetSelection() }
        view = v
    }

    mutating func drillDown() {
        guard view == .services else { return }
        let rows = Table.rows(view, shown(live), self)
        guard let i = selectedIndex(rows), let pair = rows[i].pair else { return }
        drill = DrillDown(
            pair: pair,
            saved: .init(
                view: view, selection: i, selectedID: rows[i].id, top: top,
                filter: filter))
        view = .flows
        filter = nil
        resetSelection()
    }

    mutating func move(_ to: (Int, Int) -> Int) {
        let rows = Table.rows(view, shown(live), self)
        guard let i = selectedIndex(rows) else { return }
        let n = min(max(0, to(i, pageSize)), rows.count - 1)
        selection = n
        selectedID = rows[n].id
        if n < top { top = n }
        if n >= top + pageSize { top = n - pageSize + 1 }
    }
}
