// Human units, RTT, uptime, sparklines, and text fitted to display columns.
// The conventions are described at the top of Flowtop.swift.

/// Bytes or bits per second for the rate columns.
public enum Units: Sendable, Equatable, CaseIterable {
    case bytes, bits
}

public enum Format {
    static let prefixes = ["", "K", "M", "G", "T", "P", "E"]

    /// 1000-based with one decimal from 1.0 K up; below 1000 a whole number.
    /// A value that rounds to 1000 of a prefix moves to the next one
    /// (999.96 KB/s is "1.0 MB/s", 999.6 B/s is "1.0 KB/s").
    static func si(_ value: Double, unit: String, space: Bool = true) -> String {
        // Past 999.9 E (far beyond any counter) the value is shown as that.
        let v = value.isFinite && value > 0 ? min(value, 999.9e18) : 0
        let sep = space ? " " : ""
        if v.rounded() < 1000 { return "\(Int(v.rounded()))\(sep)\(unit)" }
        var x = v, i = 0
        repeat {
            x /= 1000
            i += 1
        } while (x * 10).rounded() >= 10_000 && i < prefixes.count - 1
        let tenths = Int((x * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)\(sep)\(prefixes[i])\(unit)"
    }

    /// A rate given in bytes per second: "0 B/s", "999 B/s", "1.0 KB/s",
    /// "12.3 MB/s"; in bits (×8): "8 b/s", "1.2 Mb/s".
    public static func rate(_ bytesPerSecond: Double, _ units: Units) -> String {
        switch units {
        case .bytes: si(bytesPerSecond, unit: "B/s")
        case .bits: si(bytesPerSecond * 8, unit: "b/s")
        }
    }

    /// A byte count (totals are always in bytes): "0 B", "999 B", "1.0 KB".
    public static func bytes(_ n: UInt64) -> String { si(Double(n), unit: "B") }

    /// A per-second count without unit (packets/s): "0", "999", "1.0K".
    public static func perSecond(_ v: Double) -> String { si(v, unit: "", space: false) }

    /// A low per-second rate (DNS queries): one decimal below 10 ("0.4",
    /// "2.5"), then as perSecond ("12", "1.2K"); a rate above 0 that rounds to
    /// 0.0 is "<0.1" (one query in a 40 s window is 0.025/s, not nothing).
    public static func lowRate(_ v: Double) -> String {
        guard v.isFinite, v > 0 else { return "0" }
        let tenths = Int((min(v, 1e6) * 10).rounded())
        if tenths < 1 { return "<0.1" }
        if tenths < 100 { return "\(tenths / 10).\(tenths % 10)" }
        return perSecond(v)
    }

    /// A counter: exact below 100000, then "123.5K", "1.2M".
    public static func count(_ n: UInt64) -> String { n < 100_000 ? String(n) : si(Double(n), unit: "", space: false) }

    /// A share (0...1) as a percentage: "0%", "<0.1%", "8.3%" below 10%, then
    /// whole "12%", "100%"; nil (nothing to share) is "-". Only exactly 0 is
    /// "0%" and only exactly 1 is "100%": one failure in many is never hidden.
    public static func share(_ fraction: Double?) -> String {
        guard let f = fraction, f.isFinite else { return "-" }
        let p = min(max(0, f), 1) * 100
        if p == 0 { return "0%" }
        if p >= 100 { return "100%" }
        let tenths = Int((p * 10).rounded())
        if tenths < 1 { return "<0.1%" }
        if tenths < 100 { return "\(tenths / 10).\(tenths % 10)%" }
        return "\(min(99, Int(p.rounded())))%"
    }

    /// An RTT in seconds: "87µs", "999µs", "1.00ms", "12.5ms", "250ms", "1.25s";
    /// nil (no samples) is "-". Three significant digits from 1 ms up.
    public static func rtt(_ seconds: Double?) -> String {
        guard let s = seconds, s.isFinite else { return "-" }
        let us = min(max(0, s), 1e9) * 1e6
        if us.rounded() < 1000 { return "\(Int(us.rounded()))µs" }
        let ms = us / 1000
        if let t = threeDigits(ms) { return t + "ms" }
        return (threeDigits(ms / 1000) ?? "\(Int((ms / 1000).rounded()))") + "s"
    }

    /// x in [1, 1000) with three significant digits, nil when it rounds to 1000.
    private static func threeDigits(_ x: Double) -> String? {
        let h = Int((x * 100).rounded())
        if h < 1000 { return "\(h / 100).\(pad2(h % 100))" }
        let t = Int((x * 10).rounded())
        if t < 1000 { return "\(t / 10).\(t % 10)" }
        let u = Int(x.rounded())
        return u < 1000 ? String(u) : nil
    }

    private static func pad2(_ n: Int) -> String { n < 10 ? "0\(n)" : String(n) }

    /// Uptime: "45s", "12m05s", "3h04m", "2d03h".
    public static func uptime(_ seconds: Double) -> String {
        let s = seconds.isFinite && seconds > 0 ? Int(min(seconds, 1e12)) : 0
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m\(pad2(s % 60))s" }
        if s < 86400 { return "\(s / 3600)h\(pad2(s / 60 % 60))m" }
        return "\(s / 86400)d\(pad2(s / 3600 % 24))h"
    }
}

public enum Sparkline {
    public static let levels: [Character] = ["▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"]

    /// The last `width` values, one column each, scaled linearly from 0 (▁)
    /// to the largest of those values (█), nearest of the eight levels. A
    /// second with no sample yet (nil, or before the history starts) is a
    /// space; all zero is "▁" throughout, a flat baseline.
    public static func render(_ values: [Double?], width: Int) -> String {
        guard width > 0 else { return "" }
        let tail = Array(values.suffix(width))
        let padded = [Double?](repeating: nil, count: width - tail.count) + tail
        let top = padded.compactMap { $0 }.filter { $0.isFinite }.max() ?? 0
        return String(
            padded.map { v -> Character in
                guard let v else { return " " }
                guard top > 0, v.isFinite, v > 0 else { return levels[0] }
                return levels[min(7, max(0, Int((v / top * 7).rounded())))]
            })
    }
}

/// Display columns of text. The renderer counts columns, not characters:
/// East Asian wide characters and emoji take 2, combining marks ride on the
/// character before them (a Character is a whole grapheme cluster). Control
/// characters and a cluster that starts with a combining mark are shown as
/// "?", so a process name cannot move the terminal's cursor.
enum Text {
    static func sanitize(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: { isControl($0) || isZeroWidth($0) }) else { return s }
        return String(
            s.map { c -> Character in
                guard let first = c.unicodeScalars.first else { return "?" }
                if c.unicodeScalars.contains(where: isControl) || isZeroWidth(first) { return "?" }
                return c
            })
    }

    static func isControl(_ u: Unicode.Scalar) -> Bool {
        u.value < 0x20 || (u.value >= 0x7F && u.value < 0xA0) || u.value == 0x2028 || u.value == 0x2029
    }

    static func isZeroWidth(_ u: Unicode.Scalar) -> Bool {
        switch u.properties.generalCategory {
        case .nonspacingMark, .enclosingMark, .format: return true
        default: return u.value == 0x200B
        }
    }

    static func isWide(_ u: Unicode.Scalar) -> Bool {
        let v = u.value
        if u.properties.isEmojiPresentation { return true }
        return (0x1100...0x115F).contains(v) || (0x2E80...0x303E).contains(v) || (0x3041...0x33FF).contains(v)
            || (0x3400...0x4DBF).contains(v) || (0x4E00...0x9FFF).contains(v) || (0xA000...0xA4CF).contains(v)
            || (0xAC00...0xD7A3).contains(v) || (0xF900...0xFAFF).contains(v) || (0xFE30...0xFE4F).contains(v)
            || (0xFF00...0xFF60).contains(v) || (0xFFE0...0xFFE6).contains(v) || (0x20000...0x3FFFD).contains(v)
    }

    static func width(_ c: Character) -> Int {
        guard let first = c.unicodeScalars.first else { return 0 }
        if isZeroWidth(first) { return 0 }
        return c.unicodeScalars.contains(where: isWide) ? 2 : 1
    }

    static func width(_ s: String) -> Int {
        if s.utf8.allSatisfy({ $0 < 0x80 }) { return s.utf8.count }
        return s.reduce(0) { $0 + width($1) }
    }

    /// The longest prefix that fits in `columns`, and its width.
    static func prefix(_ s: String, columns: Int) -> (String, Int) {
        var out = "", used = 0
        for c in s {
            let w = width(c)
            if used + w > columns { break }
            out.append(c)
            used += w
        }
        return (out, used)
    }

    /// Exactly `columns` wide: cut (no marker) and padded with spaces.
    static func cut(_ s: String, _ columns: Int) -> String {
        guard columns > 0 else { return "" }
        let (p, used) = prefix(s, columns: columns)
        return used < columns ? p + String(repeating: " ", count: columns - used) : p
    }

    enum Align { case left, right }

    /// Exactly `columns` wide: a cell too long ends in "…"; padded on the
    /// side `align` leaves free.
    static func fit(_ s: String, _ columns: Int, _ align: Align) -> String {
        guard columns > 0 else { return "" }
        let w = width(s)
        if w > columns {
            let (p, used) = prefix(s, columns: columns - 1)
            return p + "…" + String(repeating: " ", count: columns - 1 - used)
        }
        let pad = String(repeating: " ", count: columns - w)
        return align == .left ? s + pad : pad + s
    }
}
