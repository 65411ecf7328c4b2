import FlowmeterCore

@testable import FlowmeterExport

// A reader of the Prometheus text format, for the tests only: it checks that
// the text /metrics serves parses back into the families it was written from
// (OTLPTests), so the two exports agree. No production path reads text.

/// A line of an exposition the parser could not read.
public struct ExpositionParseError: Error, Sendable, Equatable, CustomStringConvertible {
    /// 1-based line number.
    public let line: Int
    public let message: String
    public init(line: Int, message: String) { self.line = line; self.message = message }
    public var description: String { "line \(line): \(message)" }
}

/// Reads the Prometheus text format 0.0.4 as `Exposition` writes it (also the
/// OpenMetrics variant's "# EOF") back into `MetricFamilyData`: HELP and TYPE
/// per family, samples with escaped label values, histograms' _bucket, _sum
/// and _count lines grouped per label set.
public enum ExpositionParser {
    /// The families in exposition order, and the lines that could not be read
    /// (skipped). A sample whose name matches no family declared before it is
    /// an error: every family `Exposition` writes starts with HELP and TYPE.
    public static func parse(_ text: String) -> (families: [MetricFamilyData], errors: [ExpositionParseError]) {
        var families: [Building] = []
        var index: [String: Int] = [:]
        var errors: [ExpositionParseError] = []

        func family(_ name: String) -> Int {
            if let i = index[name] { return i }
            families.append(Building(name: name))
            index[name] = families.count - 1
            return families.count - 1
        }

        var lineNo = 0
        // Split on the byte, not the Character: "\r\n" is one Character.
        for bytes in text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNo += 1
            if bytes.isEmpty { continue }
            if bytes.first == UInt8(ascii: "#") {
                let line = String(decoding: bytes, as: UTF8.self)
                let parts = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
                guard parts.count >= 3, parts[0] == "#", parts[1] == "HELP" || parts[1] == "TYPE" else { continue }
                let name = String(parts[2])
                let rest = parts.count > 3 ? String(parts[3]) : ""
                if parts[1] == "HELP" {
                    families[family(name)].help = unescapeHelp(rest)
                } else if let kind = Exposition.Kind(rawValue: rest) {
                    families[family(name)].kind = kind
                } else {
                    errors.append(.init(line: lineNo, message: "unknown type \"\(rest)\" of \(name)"))
                }
                continue
            }
            let sample: Sample
            do { sample = try parseSample(Array(bytes)) } catch {
                errors.append(.init(line: lineNo, message: error.message))
                continue
            }
            if let i = index[sample.name], families[i].kind != .histogram {
                families[i].numbers.append(.init(labels: sample.labels, value: .number(sample.value)))
                continue
            }
            var matched = false
            for suffix in ["_bucket", "_sum", "_count"] where sample.name.hasSuffix(suffix) {
                let base = String(sample.name.dropLast(suffix.count))
                guard let i = index[base], families[i].kind == .histogram else { continue }
                matched = true
                if let problem = families[i].add(suffix, sample) {
                    errors.append(.init(line: lineNo, message: problem))
                }
            }
            if !matched {
                errors.append(.init(line: lineNo, message: "sample \(sample.name) of no declared family"))
            }
        }
        var out: [MetricFamilyData] = []
        for f in families {
            guard let kind = f.kind else {
                errors.append(.init(line: 0, message: "family \(f.name) has no TYPE"))
                continue
            }
            var data = MetricFamilyData(name: f.name, kind: kind, help: f.help, series: f.numbers)
            if kind == .histogram {
                for h in f.histograms {
                    switch h.finish() {
                    case .success(let b): data.series.append(.init(labels: h.labels, value: .histogram(b)))
                    case .failure(let e): errors.append(.init(line: 0, message: "\(f.name): \(e.message)"))
                    }
                }
            }
            out.append(data)
        }
        return (out, errors)
    }

    struct Failure: Error { let message: String }

    struct Sample {
        var name: String
        var labels: [(String, String)]
        var value: Double
        /// The value text, for counts that must not go through Double.
        var text: String
    }

    /// A histogram series being collected from its lines.
    struct HistogramSeries {
        var labels: [(String, String)]
        var buckets: [(le: Double, cumulative: UInt64)] = []
        var sum: Double?
        var count: UInt64?

        func finish() -> Result<MetricFamilyData.Buckets, Failure> {
            let sorted = buckets.enumerated().sorted { ($0.element.le, $0.offset) < ($1.element.le, $1.offset) }.map(\.element)
            let finite = sorted.filter { $0.le.isFinite }
            guard let total = sorted.last(where: { $0.le == .infinity })?.cumulative ?? count else {
                return .failure(Failure(message: "histogram series with neither a +Inf bucket nor a count"))
            }
            var counts: [UInt64] = []
            var previous: UInt64 = 0
            for b in finite + [(le: Double.infinity, cumulative: total)] {
                guard b.cumulative >= previous else {
                    return .failure(Failure(message: "bucket le=\(b.le) is below the one before it"))
                }
                counts.append(b.cumulative - previous)
                previous = b.cumulative
            }
            return .success(.init(bounds: finite.map(\.le), counts: counts, sum: sum ?? 0, count: count ?? total))
        }
    }

    struct Building {
        let name: String
        var kind: Exposition.Kind?
        var help = ""
        var numbers: [MetricFamilyData.Series] = []
        var histograms: [HistogramSeries] = []
        var histogramIndex: [[String]: Int] = [:]

        /// Adds one _bucket, _sum or _count line; returns what was wrong with it.
        mutating func add(_ suffix: String, _ s: Sample) -> String? {
            var labels = s.labels
            var le: Double?
            if suffix == "_bucket" {
                guard let at = labels.firstIndex(where: { $0.0 == "le" }) else { return "bucket without le" }
                le = ExpositionParser.number(labels[at].1)
                labels.remove(at: at)
                if le == nil || le!.isNaN { return "bucket le=\"\(s.labels[at].1)\" is not a bound" }
            }
            let key = labels.flatMap { [$0.0, $0.1] }
            let i: Int
            if let known = histogramIndex[key] {
                i = known
            } else {
                histograms.append(HistogramSeries(labels: labels))
                i = histograms.count - 1
                histogramIndex[key] = i
            }
            switch suffix {
            case "_sum":
                histograms[i].sum = s.value
            default:
                guard let n = ExpositionParser.count(s) else { return "\(s.name) \(s.text) is not a count" }
                if let le { histograms[i].buckets.append((le, n)) } else { histograms[i].count = n }
            }
            return nil
        }
    }

    static func count(_ s: Sample) -> UInt64? {
        if let n = UInt64(s.text) { return n }
        guard s.value >= 0, s.value < 0x1p64, s.value == s.value.rounded() else { return nil }
        return UInt64(s.value)
    }

    /// A sample value: decimal, or NaN / +Inf / -Inf as `Exposition.format` writes them.
    static func number(_ t: String) -> Double? {
        switch t {
        case "NaN": return .nan
        case "+Inf", "Inf": return .infinity
        case "-Inf": return -.infinity
        default: return Double(t)
        }
    }

    static func unescapeHelp(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var o = ""
        var escaped = false
        for c in s.unicodeScalars {
            if escaped {
                switch c {
                case "n": o += "\n"
                case "\\": o += "\\"
                default: o += "\\"; o.unicodeScalars.append(c)
                }
                escaped = false
            } else if c == "\\" {
                escaped = true
            } else {
                o.unicodeScalars.append(c)
            }
        }
        if escaped { o += "\\" }
        return o
    }

    /// name{label="value",...} value [timestamp]
    static func parseSample(_ b: [UInt8]) throws(Failure) -> Sample {
        let space = UInt8(ascii: " "), open = UInt8(ascii: "{"), close = UInt8(ascii: "}")
        let equals = UInt8(ascii: "="), quote = UInt8(ascii: "\""), comma = UInt8(ascii: ","), backslash = UInt8(ascii: "\\")
        var i = 0
        while i < b.count && b[i] != open && b[i] != space { i += 1 }
        guard i > 0 else { throw Failure(message: "sample without a name") }
        let name = String(decoding: b[0..<i], as: UTF8.self)
        var labels: [(String, String)] = []
        if i < b.count && b[i] == open {
            i += 1
            while true {
                guard i < b.count else { throw Failure(message: "unterminated labels of \(name)") }
                if b[i] == close { i += 1; break }
                let start = i
                while i < b.count && b[i] != equals { i += 1 }
                guard i + 1 < b.count, b[i + 1] == quote, i > start else { throw Failure(message: "bad label in \(name)") }
                let key = String(decoding: b[start..<i], as: UTF8.self)
                i += 2
                var value: [UInt8] = []
                while true {
                    guard i < b.count else { throw Failure(message: "unterminated label value in \(name)") }
                    let c = b[i]
                    if c == quote { i += 1; break }
                    if c == backslash {
                        guard i + 1 < b.count else { throw Failure(message: "dangling escape in \(name)") }
                        let n = b[i + 1]
                        switch n {
                        case UInt8(ascii: "n"): value.append(UInt8(ascii: "\n"))
                        case backslash, quote: value.append(n)
                        default: value.append(backslash); value.append(n)
                        }
                        i += 2
                    } else {
                        value.append(c)
                        i += 1
                    }
                }
                labels.append((key, String(decoding: value, as: UTF8.self)))
                if i < b.count && b[i] == comma { i += 1 }
            }
        }
        guard i < b.count, b[i] == space else { throw Failure(message: "no value for \(name)") }
        while i < b.count && b[i] == space { i += 1 }
        let start = i
        while i < b.count && b[i] != space { i += 1 }
        let text = String(decoding: b[start..<i], as: UTF8.self)
        guard let value = number(text) else { throw Failure(message: "value \"\(text)\" of \(name) is not a number") }
        return Sample(name: name, labels: labels, value: value, text: text)
    }
}

// MARK: OTLP encoding
