import FlowmeterCore

/// The screen as text: exactly `height` lines of exactly `width` display
/// columns, and the ranges to draw in a style.
public struct ScreenModel: Equatable, Sendable {
    public struct Style: Equatable, Sendable {
        public enum Kind: Sendable, Equatable { case header, title, selected, warning, dim }
        public var line: Int
        /// Display columns.
        public var columns: Range<Int>
        public var kind: Kind
        public init(line: Int, columns: Range<Int>, kind: Kind) {
            self.line = line; self.columns = columns; self.kind = kind
        }
    }

    public var width: Int, height: Int
    public var lines: [String]
    /// In drawing order (a later style wins where two overlap).
    public var styles: [Style]

    public init(width: Int, height: Int, lines: [String], styles: [Style]) {
        self.width = width; self.height = height; self.lines = lines; self.styles = styles
    }
}

public typealias Style = ScreenModel.Style

/// One line before it is placed: text and styled ranges.
private struct Line {
    var text: String
    var styles: [(Range<Int>, Style.Kind)] = []
    init(_ text: String, _ styles: [(Range<Int>, Style.Kind)] = []) { self.text = text; self.styles = styles }
    static func whole(_ text: String, _ kind: Style.Kind) -> Line { Line(text, [(0..<Int.max, kind)]) }
}

/// The screen for a state and history (pure: the same input, the same screen).
public func render(_ state: UIState, _ history: History, width: Int, height: Int) -> ScreenModel {
    let w = max(0, width), h = max(0, height)
    let shown = state.shown(history)
    let rows = Table.rows(state.view, shown, state)

    var body: [Line]
    if state.showHelp {
        body = helpLines(state.view, width: w)
    } else {
        let cols = layout(state.view.columns(for: shown.latest), rows, width: w)
        body = [columnTitles(cols, state.sort(for: state.view))]
        let visible = max(0, h - 4)
        if let sel = state.selectedIndex(rows), visible > 0 {
            var top = min(max(0, state.top), max(0, rows.count - visible))
            if sel < top { top = sel }
            if sel >= top + visible { top = sel - visible + 1 }
            for i in top..<min(rows.count, top + visible) {
                var line = rowLine(rows[i], cols)
                if i == sel { line.styles.insert((0..<Int.max, .selected), at: 0) }
                body.append(line)
            }
        }
    }

    let status = statusLine(state, width: w)
    var placed: [Line]
    switch h {
    case 0: placed = []
    case 1: placed = [status]
    case 2: placed = [body[0], status]
    case 3: placed = [headerLine0(shown), body[0], status]
    default:
        let room = h - 3
        let fitted = Array(body.prefix(room)) + [Line](repeating: Line(""), count: max(0, room - body.count))
        placed = [headerLine0(shown), headerLine1(shown, state)] + fitted + [status]
    }

    var lines: [String] = []
    var styles: [Style] = []
    for (y, line) in placed.enumerated() {
        lines.append(Text.cut(line.text, w))
        for (r, kind) in line.styles {
            let lo = max(0, r.lowerBound), hi = min(w, r.upperBound)
            if lo < hi { styles.append(Style(line: y, columns: lo..<hi, kind: kind)) }
        }
    }
    return ScreenModel(width: w, height: h, lines: lines, styles: styles)
}

/// The rows of a view as a plain table (`flowtop --once`): every column but
/// the trend, as wide as its widest cell, two spaces apart, no trailing
/// spaces; a title line, the rows, each line ending in a newline.
public func plainTable(_ view: View, _ history: History, state: UIState) -> String {
    let rows = Table.rows(view, state.shown(history), state)
    let specs = view.columns(for: state.shown(history).latest).filter { $0.column != .trend }
    let widths = specs.map { s in rows.reduce(Text.width(s.title)) { max($0, Text.width($1.cells[s.column] ?? "")) } }
    func line(_ cells: [String]) -> String {
        let text = zip(zip(specs, widths), cells).map { sw, cell in
            Text.fit(cell, sw.1, sw.0.rightAligned ? .right : .left)
        }.joined(separator: "  ")
        return String(text.reversed().drop { $0 == " " }.reversed())
    }
    var out = line(specs.map(\.title)) + "\n"
    for r in rows { out += line(specs.map { r.cells[$0.column] ?? "" }) + "\n" }
    return out
}

// MARK: Columns

private struct PlacedColumn {
    var spec: ColumnSpec
    var width: Int
}

/// Drops columns (drop rank 1 first) until the rest fit at their
/// minimum widths, then widens the flexible ones round-robin up to what
/// their content needs (the trend: its maximum).
private func layout(_ specs: [ColumnSpec], _ rows: [Row], width: Int) -> [PlacedColumn] {
    var kept = specs
    func need(_ cs: [ColumnSpec]) -> Int { cs.reduce(0) { $0 + $1.minWidth } + max(0, cs.count - 1) }
    while need(kept) > width,
        let drop = kept.filter({ $0.dropRank != nil }).min(by: { $0.dropRank! < $1.dropRank! })
    {
        kept.removeAll { $0.column == drop.column }
    }
    var cols = kept.map { PlacedColumn(spec: $0, width: $0.minWidth) }
    let wants = kept.map { s -> Int in
        if s.column == .trend { return s.maxWidth }
        let content = rows.reduce(Text.width(s.title) + (s.sortKey == nil ? 0 : 1)) {
            max($0, Text.width($1.cells[s.column] ?? ""))
        }
        return min(s.maxWidth, max(s.minWidth, content))
    }
    var spare = width - need(kept)
    var grew = true
    while spare > 0 && grew {
        grew = false
        for i in cols.indices where spare > 0 && cols[i].width < wants[i] {
            cols[i].width += 1
            spare -= 1
            grew = true
        }
    }
    return cols
}

private func columnTitles(_ cols: [PlacedColumn], _ sort: SortOrder) -> Line {
    let text = cols.map { c in
        let mark = c.spec.column == sort.column ? (sort.descending ? "▼" : "▲") : ""
        return Text.fit(c.spec.title + mark, c.width, c.spec.rightAligned ? .right : .left)
    }.joined(separator: " ")
    return .whole(text, .header)
}

private func rowLine(_ row: Row, _ cols: [PlacedColumn]) -> Line {
    var text = "", x = 0
    var warnings: [(Range<Int>, Style.Kind)] = []
    for (i, c) in cols.enumerated() {
        if i > 0 { text += " "; x += 1 }
        let cell =
            c.spec.column == .trend
            ? Sparkline.render(row.trend, width: c.width)
            : Text.fit(row.cells[c.spec.column] ?? "", c.width, c.spec.rightAligned ? .right : .left)
        if row.warnings.contains(c.spec.column) { warnings.append((x..<(x + c.width), .warning)) }
        text += cell
        x += c.width
    }
    return Line(text, warnings)
}

// MARK: Header, status, help

private func headerLine0(_ h: History) -> Line {
    guard let s = h.latest else { return .whole("flowtop  waiting for the first snapshot from flowmeterd", .title) }
    return .whole(
        Text.sanitize("flowtop  \(s.host)  kernel \(s.kernel)  hooks: \(hookSummary(s.hooks))  up \(Format.uptime(s.uptime_seconds))"),
        .title)
}

/// "tc=tcx sock=fentry": the tc mode and the socket hooks' rung (the mode of
/// tcp_state), plus "udp=unsupported" when the UDP hooks are missing.
func hookSummary(_ hooks: [APISnapshot.Hook]) -> String {
    var parts: [String] = []
    if let tc = hooks.first(where: { $0.hook == "tc" }) { parts.append("tc=\(tc.mode)") }
    let sock = hooks.filter { $0.hook != "tc" }
    if sock.isEmpty {
        parts.append("sock=off")
    } else {
        let rung =
            sock.first { $0.hook == "tcp_state" }
            ?? sock.first { $0.mode != "cgroup" && $0.mode != "unsupported" } ?? sock[0]
        parts.append("sock=\(rung.mode.split(separator: " ").first.map(String.init) ?? rung.mode)")
        if sock.contains(where: { $0.hook.hasPrefix("udp") && $0.mode == "unsupported" }) {
            parts.append("udp=unsupported")
        }
    }
    return parts.joined(separator: " ")
}

private func headerLine1(_ h: History, _ state: UIState) -> Line {
    var text = "", styles: [(Range<Int>, Style.Kind)] = []
    func add(_ raw: String, _ kind: Style.Kind? = nil) {
        let s = Text.sanitize(raw)
        if !text.isEmpty { text += "  " }
        let x = Text.width(text)
        text += s
        if let kind { styles.append((x..<(x + Text.width(s)), kind)) }
    }
    if let d = state.drill {
        add("\(state.view.title) of \(d.pair.service) → \(d.pair.peer) (\(d.pair.transport))")
    } else {
        add(state.view.title)
    }
    if state.paused { add("PAUSED", .warning) }
    if let f = state.filter { add("filter: \(f)") }
    if let s = h.latest {
        let t = h.totalRate(window: state.window.rawValue)
        add("in \(Format.rate(t.rx, state.units))")
        add("out \(Format.rate(t.tx, state.units))")
        add("flows \(s.flows.count)")
        let lost = s.self_metrics.flows_ring_lost &+ s.self_metrics.events_ring_lost
        add("lost \(lost)", lost > 0 ? .warning : nil)
    }
    add("window \(state.window.rawValue)s")
    add(state.units == .bytes ? "B/s" : "b/s")
    return Line(text, styles)
}

private func statusLine(_ state: UIState, width: Int) -> Line {
    if let p = state.prompt {
        let text = "/" + Text.sanitize(p) + "_"
        let w = Text.width(text)
        guard w > width else { return Line(text) }
        // Keep the end (where the typing is) in view.
        var tail = Substring(text)
        while Text.width(String(tail)) > width, !tail.isEmpty { tail = tail.dropFirst() }
        return Line(String(tail))
    }
    let back = state.drill != nil ? "Esc back  " : ""
    let units = state.units == .bytes ? "bits" : "bytes"
    return .whole("\(back)Tab view  w window  b \(units)  / filter  ? help  q quit", .dim)
}

/// Every key, and the current view's sort keys and filter names.
private func helpLines(_ view: View, width: Int) -> [Line] {
    var lines: [Line] = [.whole("flowtop keys", .title)]
    let keys: [(String, String)] = [
        ("Tab, 1-4", "view: 1 services, 2 flows, 3 processes, 4 interfaces"),
        ("Up, Down", "select a row"),
        ("PgUp, PgDn", "a page up or down"),
        ("Home, End", "first or last row"),
        ("Enter", "services: the selected pair's flows"),
        ("Esc", "back from a pair's flows, close this help, clear the filter"),
        ("/", "filter (text, or column=value); Enter applies, Esc cancels"),
        ("w", "rate window: 2s, 10s, 40s"),
        ("b", "bytes or bits per second"),
        ("p", "pause or resume"),
        ("?", "this help"),
        ("q", "quit"),
    ]
    for (k, what) in keys { lines.append(Line("  " + Text.fit(k, 12, .left) + what)) }
    lines.append(Line(""))
    lines.append(.whole("Sort \(view.title) (the same key again reverses):", .title))
    let cells = view.columns.compactMap { c in c.sortKey.map { "\($0) \(c.title)" } }
    let perLine = max(1, (width - 2) / 12)
    for i in stride(from: 0, to: cells.count, by: perLine) {
        lines.append(Line("  " + cells[i..<min(cells.count, i + perLine)].map { Text.fit($0, 12, .left) }.joined()))
    }
    var names = "Filter columns:"
    for n in view.columns.compactMap(\.names.first) {
        if Text.width(names) + 1 + n.count > width && names.count > 2 {
            lines.append(Line(names))
            names = " "
        }
        names += " " + n
    }
    lines.append(Line(names))
    return lines
}
