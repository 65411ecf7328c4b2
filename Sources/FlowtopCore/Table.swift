import FlowmeterCore

/// The columns of all views.
public enum Column: String, Sendable, CaseIterable {
    case service, peer, proto, tx, rx, conns, failed, retrans, resets, rttP50, rttP99, trend
    case flow, iface, dir, rate, total, pid, process, name, txPackets, rxPackets, drops
    case dnsRate, dnsErrors, dnsP50

    /// The services view's DNS columns: shown only when the daemon counts DNS
    /// (its snapshot's pairs carry `dns_requests`), so a daemon without the DNS
    /// programs costs no width.
    static let dns: Set<Column> = [.dnsRate, .dnsErrors, .dnsP50]
}

/// How a view shows one column.
public struct ColumnSpec: Sendable, Equatable {
    public var column: Column
    public var title: String
    /// The key that sorts by this column (case-sensitive); nil: not sortable.
    public var sortKey: Character?
    /// Names for `name=value` filters (the first is the one the help shows).
    public var names: [String]
    public var rightAligned: Bool
    /// Width when space is short; a flexible column grows up to `maxWidth`
    /// as its content needs (the trend column: as space allows).
    public var minWidth: Int, maxWidth: Int
    /// Order of dropping when the terminal is too narrow: 1 goes first; nil never.
    public var dropRank: Int?
    /// Sorted largest first on its first key press (numbers); text sorts A to Z.
    public var numeric: Bool

    init(
        _ column: Column, _ title: String, _ key: Character?, _ names: [String], right: Bool = false,
        min: Int, max: Int? = nil, drop: Int? = nil, numeric: Bool = false
    ) {
        self.column = column; self.title = title; self.sortKey = key; self.names = names; self.rightAligned = right
        self.minWidth = Swift.max(min, title.count + (key == nil ? 0 : 1)); self.maxWidth = Swift.max(self.minWidth, max ?? min)
        self.dropRank = drop; self.numeric = numeric
    }
}

public enum View: Int, CaseIterable, Sendable {
    case services = 1, flows, processes, interfaces

    public var title: String {
        switch self {
        case .services: "services"
        case .flows: "flows"
        case .processes: "processes"
        case .interfaces: "interfaces"
        }
    }

    /// The next view for Tab.
    public var next: View { View(rawValue: rawValue % View.allCases.count + 1)! }

    /// Columns in display order (widths and drop order: see Flowtop.swift).
    public var columns: [ColumnSpec] {
        switch self {
        case .services:
            [
                ColumnSpec(.service, "SERVICE", "s", ["service"], min: 10, max: 40),
                ColumnSpec(.peer, "PEER", "e", ["peer"], min: 10, max: 40, drop: 12),
                ColumnSpec(.proto, "PROTO", "o", ["proto"], min: 5, drop: 10),
                ColumnSpec(.tx, "TX/s", "t", ["tx"], right: true, min: 10, numeric: true),
                ColumnSpec(.rx, "RX/s", "r", ["rx"], right: true, min: 10, numeric: true),
                ColumnSpec(.conns, "CONNS", "c", ["conns"], right: true, min: 5, drop: 11, numeric: true),
                ColumnSpec(.failed, "FAILED", "f", ["failed"], right: true, min: 6, drop: 7, numeric: true),
                ColumnSpec(.retrans, "RETRANS", "x", ["retrans"], right: true, min: 7, drop: 4, numeric: true),
                ColumnSpec(.resets, "RESETS", "k", ["resets"], right: true, min: 6, drop: 3, numeric: true),
                ColumnSpec(.rttP50, "RTT p50", "m", ["p50", "rttp50"], right: true, min: 7, drop: 2, numeric: true),
                ColumnSpec(.rttP99, "RTT p99", "l", ["p99", "rttp99"], right: true, min: 7, drop: 9, numeric: true),
                // Packets the kernel dropped (the drop hook); the first column a narrow terminal gives up.
                ColumnSpec(.drops, "DROPS", "d", ["drops"], right: true, min: 5, drop: 0, numeric: true),
                // DNS of the pair's clients (the DNS programs; hidden without them, see Column.dns):
                // requests per second, the share of them that failed (rcode other than NOERROR,
                // timeouts included), p50 latency. The error share is the health signal, so it
                // stays longest: at 80 columns it is the one DNS column left (FAILED gives way).
                ColumnSpec(.dnsRate, "DNS/s", "n", ["dns"], right: true, min: 6, drop: 6, numeric: true),
                ColumnSpec(.dnsErrors, "DNS ERR", "E", ["dnserr"], right: true, min: 7, drop: 8, numeric: true),
                ColumnSpec(.dnsP50, "DNS p50", "M", ["dnsp50"], right: true, min: 7, drop: 1, numeric: true),
                ColumnSpec(.trend, "TREND", nil, [], min: 8, max: 30, drop: 5),
            ]
        case .flows:
            [
                ColumnSpec(.flow, "FLOW", "f", ["flow"], min: 32, max: 100),
                ColumnSpec(.iface, "IF", "i", ["if", "iface", "interface"], min: 4, max: 16, drop: 1),
                ColumnSpec(.proto, "PROTO", "o", ["proto"], min: 5, drop: 4),
                ColumnSpec(.service, "SERVICE", "s", ["service", "process"], min: 8, max: 32, drop: 6),
                ColumnSpec(.dir, "DIR", "d", ["dir"], min: 3, drop: 3),
                ColumnSpec(.rate, "RATE", "r", ["rate"], right: true, min: 10, numeric: true),
                ColumnSpec(.total, "TOTAL", "a", ["total"], right: true, min: 8, drop: 5, numeric: true),
                ColumnSpec(.trend, "TREND", nil, [], min: 8, max: 30, drop: 2),
            ]
        case .processes:
            [
                ColumnSpec(.pid, "PID", "i", ["pid"], right: true, min: 7, drop: 3, numeric: true),
                ColumnSpec(.process, "PROCESS", "n", ["process"], min: 10, max: 32),
                ColumnSpec(.conns, "CONNS", "c", ["conns"], right: true, min: 5, drop: 2, numeric: true),
                ColumnSpec(.tx, "TX/s", "t", ["tx"], right: true, min: 10, numeric: true),
                ColumnSpec(.rx, "RX/s", "r", ["rx"], right: true, min: 10, numeric: true),
                ColumnSpec(.total, "TOTAL", "a", ["total"], right: true, min: 8, drop: 1, numeric: true),
            ]
        case .interfaces:
            [
                ColumnSpec(.name, "NAME", "n", ["name", "if", "interface"], min: 8, max: 16),
                ColumnSpec(.tx, "TX/s", "t", ["tx"], right: true, min: 10, numeric: true),
                ColumnSpec(.rx, "RX/s", "r", ["rx"], right: true, min: 10, numeric: true),
                ColumnSpec(.txPackets, "TX pkt/s", "T", ["txpkt"], right: true, min: 8, drop: 4, numeric: true),
                ColumnSpec(.rxPackets, "RX pkt/s", "R", ["rxpkt"], right: true, min: 8, drop: 3, numeric: true),
                ColumnSpec(.total, "TOTAL", "a", ["total"], right: true, min: 8, drop: 2, numeric: true),
                ColumnSpec(.drops, "DROPS", "d", ["drops"], right: true, min: 5, drop: 0, numeric: true),
                ColumnSpec(.trend, "TREND", nil, [], min: 8, max: 30, drop: 1),
            ]
        }
    }

    /// The columns shown for a snapshot: all but the DNS columns when the
    /// daemon does not count DNS (no pair carries `dns_requests`).
    public func columns(for snapshot: APISnapshot?) -> [ColumnSpec] {
        let dns = snapshot?.services.contains { $0.dns_requests != nil } ?? false
        return dns ? columns : columns.filter { !Column.dns.contains($0.column) }
    }

    /// The sort a view starts with: its tx (flows: rate) column, largest first.
    public var defaultSort: SortOrder {
        SortOrder(column: self == .flows ? .rate : .tx, descending: true)
    }
}

public struct SortOrder: Sendable, Equatable {
    public var column: Column
    public var descending: Bool
    public init(column: Column, descending: Bool) { self.column = column; self.descending = descending }
}

/// One row of a view: the text of each cell (untruncated), the values it
/// sorts by, its trend, and what Enter drills into.
struct Row: Sendable, Equatable {
    enum Key: Sendable, Equatable, Comparable {
        case number(Double), text(String)
        static func < (a: Key, b: Key) -> Bool {
            switch (a, b) {
            case let (.number(x), .number(y)): x < y
            case let (.text(x), .text(y)): x < y
            case (.number, .text): true
            case (.text, .number): false
            }
        }
    }

    var id: String
    var cells: [Column: String] = [:]
    var keys: [Column: Key] = [:]
    var trend: [Double?] = []
    var warnings: Set<Column> = []
    var pair: ServicePair?

    mutating func set(_ c: Column, _ text: String, _ key: Key? = nil) {
        cells[c] = Text.sanitize(text)
        keys[c] = key ?? .text(text.lowercased())
    }
}

/// A filter as typed: `key=value` (key a column name of some view, matched
/// as a case-insensitive substring of that column) or plain text (a
/// case-insensitive substring of any cell).
enum Filter: Equatable {
    case any(String)
    case column(String, String)

    static let allNames: Set<String> = Set(View.allCases.flatMap { $0.columns.flatMap(\.names) })

    init(_ text: String) {
        if let eq = text.firstIndex(of: "=") {
            let key = text[..<eq].trimmingSpaces.lowercased()
            if Filter.allNames.contains(key) {
                self = .column(key, text[text.index(after: eq)...].trimmingSpaces.lowercased())
                return
            }
        }
        self = .any(text.lowercased())
    }

    func matches(_ row: Row, _ specs: [ColumnSpec]) -> Bool {
        switch self {
        case .any(let t):
            return t.isEmpty || specs.contains { row.cells[$0.column]?.lowercased().contains(t) ?? false }
        case let .column(k, v):
            guard let spec = specs.first(where: { $0.names.contains(k) }) else { return false }
            return v.isEmpty || (row.cells[spec.column]?.lowercased().contains(v) ?? false)
        }
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}

/// Rows of the views.
enum Table {
    static let trendLength = 30

    /// The rows of a view as the state shows them: built from the history,
    /// drilled, filtered, sorted.
    static func rows(_ view: View, _ h: History, _ s: UIState) -> [Row] {
        var rows: [Row]
        switch view {
        case .services: rows = services(h, s)
        case .flows: rows = flows(h, s)
        case .processes: rows = processes(h, s)
        case .interfaces: rows = interfaces(h, s)
        }
        let specs = view.columns
        if let f = s.filter { let filter = Filter(f); rows = rows.filter { filter.matches($0, specs) } }
        let order = s.sort(for: view)
        rows.sort { a, b in
            let x = a.keys[order.column] ?? .text(""), y = b.keys[order.column] ?? .text("")
            if x != y { return order.descending ? y < x : x < y }
            return order.descending ? b.id < a.id : a.id < b.id
        }
        return rows
    }

    static func services(_ h: History, _ s: UIState) -> [Row] {
        guard let last = h.latest else { return [] }
        let w = s.window.rawValue
        return last.services.map { x in
            let pair = ServicePair(service: x.service, peer: x.peer_service, transport: x.transport)
            let r = h.serviceRate(pair, window: w)
            var row = Row(id: "\(x.service)\u{1F}\(x.peer_service)\u{1F}\(x.transport)")
            row.pair = pair
            row.set(.service, x.service)
            row.set(.peer, x.peer_service)
            row.set(.proto, x.transport)
            row.set(.tx, Format.rate(r.tx, s.units), .number(r.tx))
            row.set(.rx, Format.rate(r.rx, s.units), .number(r.rx))
            row.set(.conns, String(x.connections_active), .number(Double(x.connections_active)))
            let resets = x.resets_sent &+ x.resets_received
            row.set(.failed, Format.count(x.connections_failed), .number(Double(x.connections_failed)))
            row.set(.retrans, Format.count(x.retransmits), .number(Double(x.retransmits)))
            row.set(.resets, Format.count(resets), .number(Double(resets)))
            row.set(.rttP50, Format.rtt(x.rtt_p50_seconds), .number(x.rtt_p50_seconds ?? -1))
            row.set(.rttP99, Format.rtt(x.rtt_p99_seconds), .number(x.rtt_p99_seconds ?? -1))
            row.set(.drops, x.drops.map(Format.count) ?? "-", .number(Double(x.drops ?? 0)))
            if h.serviceIncrease(pair, window: w, { $0.drops ?? 0 }) > 0 { row.warnings.insert(.drops) }
            if x.dns_requests != nil {
                let requests = h.serviceIncrease(pair, window: w) { $0.dns_requests ?? 0 }
                let errors = h.serviceIncrease(pair, window: w) { $0.dns_errors ?? 0 }
                let rate = h.serviceCounterRate(pair, window: w) { $0.dns_requests ?? 0 }
                row.set(.dnsRate, Format.lowRate(rate), .number(rate))
                // The share of the window's requests; none in the window: no share ("-").
                let share = requests > 0 ? Double(min(errors, requests)) / Double(requests) : nil
                row.set(.dnsErrors, Format.share(share), .number(share ?? -1))
                if errors > 0 { row.warnings.insert(.dnsErrors) }
            } else {
                row.set(.dnsRate, "-", .number(-1))
                row.set(.dnsErrors, "-", .number(-1))
            }
            row.set(.dnsP50, Format.rtt(x.dns_p50_seconds), .number(x.dns_p50_seconds ?? -1))
            if h.serviceIncrease(pair, window: w, \.connections_failed) > 0 { row.warnings.insert(.failed) }
            if h.serviceIncrease(pair, window: w, \.retransmits) > 0 { row.warnings.insert(.retrans) }
            if h.serviceIncrease(pair, window: w, { $0.resets_sent &+ $0.resets_received }) > 0 {
                row.warnings.insert(.resets)
            }
            row.trend = h.serviceTrend(pair, count: trendLength)
            return row
        }
    }

    static func direction(_ d: String) -> String {
        switch d {
        case "transmit": "tx"
        case "receive": "rx"
        default: d
        }
    }

    static func flows(_ h: History, _ s: UIState) -> [Row] {
        guard let last = h.latest else { return [] }
        var owners: [String: APISnapshot.Connection] = [:]
        for c in last.connections { owners["\(c.local) \(c.remote)"] = c }
        var seen = Set<FlowKey>()
        var rows: [Row] = []
        for f in last.flows {
            let k = FlowKey(f)
            guard seen.insert(k).inserted else { continue }
            if let d = s.drill?.pair, f.service != d.service || f.peer_service != d.peer || f.protocol_ != d.transport {
                continue
            }
            var row = Row(id: "\(k.interface)\u{1F}\(k.direction)\u{1F}\(k.proto)\u{1F}\(k.src)\u{1F}\(k.dst)")
            row.set(.flow, "\(f.src) → \(f.dst)")
            row.set(.iface, f.interface)
            row.set(.proto, f.protocol_)
            let owner = owners["\(f.src) \(f.dst)"] ?? owners["\(f.dst) \(f.src)"]
            var who: [String] = []
            if let svc = f.service { who.append(svc) }
            if let p = owner?.process, p != f.service { who.append(p) }
            row.set(.service, who.isEmpty ? "-" : who.joined(separator: "/"))
            row.set(.dir, direction(f.direction))
            let rate = h.flowRate(k), total = h.flowTotal(k)
            row.set(.rate, Format.rate(rate, s.units), .number(rate))
            row.set(.total, Format.bytes(total), .number(Double(total)))
            row.trend = h.flowTrend(k, count: trendLength)
            rows.append(row)
        }
        return rows
    }

    static func processes(_ h: History, _ s: UIState) -> [Row] {
        guard let last = h.latest else { return [] }
        var groups: [ProcessKey: (conns: Int, rate: Rate, total: UInt64)] = [:]
        var order: [ProcessKey] = []
        for c in last.connections {
            let k = ProcessKey(c)
            let r = h.connectionRate(c.id, window: s.window.rawValue)
            if groups[k] == nil { order.append(k) }
            var g = groups[k] ?? (0, .zero, 0)
            g.conns += 1
            g.rate = Rate(tx: g.rate.tx + r.tx, rx: g.rate.rx + r.rx)
            g.total &+= c.bytes_sent &+ c.bytes_received
            groups[k] = g
        }
        return order.map { k in
            let g = groups[k]!
            var row = Row(id: "\(k.pid.map(String.init) ?? "-")\u{1F}\(k.name ?? "")")
            row.set(.pid, k.pid.map(String.init) ?? "-", .number(k.pid.map(Double.init) ?? -1))
            row.set(.process, k.name ?? "-")
            row.set(.conns, String(g.conns), .number(Double(g.conns)))
            row.set(.tx, Format.rate(g.rate.tx, s.units), .number(g.rate.tx))
            row.set(.rx, Format.rate(g.rate.rx, s.units), .number(g.rate.rx))
            row.set(.total, Format.bytes(g.total), .number(Double(g.total)))
            return row
        }
    }

    static func interfaces(_ h: History, _ s: UIState) -> [Row] {
        guard let last = h.latest else { return [] }
        let w = s.window.rawValue
        return last.interfaces.map { x in
            let r = h.interfaceRate(x.name, window: w), p = h.interfacePacketRate(x.name, window: w)
            var row = Row(id: x.name)
            row.set(.name, x.name)
            row.set(.tx, Format.rate(r.tx, s.units), .number(r.tx))
            row.set(.rx, Format.rate(r.rx, s.units), .number(r.rx))
            row.set(.txPackets, Format.perSecond(p.tx), .number(p.tx))
            row.set(.rxPackets, Format.perSecond(p.rx), .number(p.rx))
            let total = x.tx_bytes &+ x.rx_bytes
            row.set(.total, Format.bytes(total), .number(Double(total)))
            let drops = x.tx_drops.map { $0 &+ (x.rx_drops ?? 0) }
            row.set(.drops, drops.map(Format.count) ?? "-", .number(Double(drops ?? 0)))
            row.trend = h.interfaceTrend(x.name, count: trendLength)
            return row
        }
    }
}
