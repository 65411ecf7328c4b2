import FlowmeterCore

// OTLP metrics export: an `opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest`
// (opentelemetry-proto, metrics/v1 and collector/metrics/v1) encoded by hand.
//
// Why hand-written: flowmeterd's metrics are a series set rebuilt from its
// accounting state on every export (interfaces and service pairs come and go,
// idle series expire). swift-metrics and swift-otel model long-lived
// instruments that are created once and then updated, so a series could never
// end; that is the same reason the Prometheus exposition (Prometheus.swift) is
// written by hand. The protobuf schema is small and stable, so we encode the
// official messages directly with the minimal writer below instead of pulling
// in a protobuf runtime and generated code.
//
// Same metrics as /metrics, by construction: `OTLPEncoder.request` renders the
// Prometheus exposition of the snapshot (`MetricsRenderer.render`), parses it
// into the neutral model `MetricFamilyData` (`ExpositionParser`) and encodes
// that. A family, series, label or value can therefore never exist in one
// export and not in the other.
//
// Mapping from the Prometheus families:
//  - name: the family name without a trailing "_total", "_" replaced by "."
//    (flowmeter_network_io_bytes_total -> flowmeter.network.io.bytes,
//    flowmeter_tcp_rtt_seconds -> flowmeter.tcp.rtt.seconds).
//  - description: the HELP text; unit (UCUM, as OTLP wants): "By" for names
//    ending in _bytes or _bytes_total, "s" for _seconds or _seconds_total,
//    "1" for everything else (counts, info gauges).
//  - counter -> Sum (CUMULATIVE, monotonic, as_double values); gauge -> Gauge
//    (as_double); histogram -> Histogram (CUMULATIVE; explicit_bounds = the
//    finite "le" bounds, bucket_counts = per bucket, not cumulative, one more
//    than the bounds for the +Inf bucket; count; sum).
//  - data point attributes: the labels, as string values, in exposition order.
//  - start_time_unix_nano: when the daemon started (every counter counts from
//    there); time_unix_nano: the export.
//  - a family with no series (no hooks, no service pairs, ...) is no Metric.
//
// The bytes are in canonical form, what the official encoders write for the
// same message: fields in field-number order, proto3 fields without presence
// left out when they hold their default (0, ""), oneof members (as_double,
// string_value) and `optional` fields (HistogramDataPoint.sum) always written.
//
// Field numbers (opentelemetry-proto v1, checked against the .proto files):
//   ExportMetricsServiceRequest { resource_metrics = 1 }
//   ResourceMetrics { resource = 1, scope_metrics = 2 }
//   Resource { attributes = 1 }
//   KeyValue { key = 1, value = 2 }            AnyValue { string_value = 1 }
//   ScopeMetrics { scope = 1, metrics = 2 }    InstrumentationScope { name = 1, version = 2 }
//   Metric { name = 1, description = 2, unit = 3, gauge = 5, sum = 7, histogram = 9 }
//   Gauge { data_points = 1 }
//   Sum { data_points = 1, aggregation_temporality = 2, is_monotonic = 3 }
//   Histogram { data_points = 1, aggregation_temporality = 2 }
//   NumberDataPoint { start_time_unix_nano = 2 (fixed64), time_unix_nano = 3 (fixed64),
//                     as_double = 4 (double), attributes = 7 }
//   HistogramDataPoint { start_time_unix_nano = 2, time_unix_nano = 3, count = 4 (fixed64),
//                        sum = 5 (double), bucket_counts = 6 (packed fixed64),
//                        explicit_bounds = 7 (packed double), attributes = 9 }
//   AggregationTemporality: CUMULATIVE = 2

// MARK: neutral series model

/// One metric family with its current series: what the Prometheus exposition
/// prints and what the OTLP encoder sends.
public struct MetricFamilyData: Sendable, Equatable {
    /// A histogram series: `counts` per bucket (not cumulative), one more
    /// entry than `bounds` (the last is above every bound, "+Inf").
    public struct Buckets: Sendable, Equatable {
        public var bounds: [Double]
        public var counts: [UInt64]
        public var sum: Double
        public var count: UInt64
        public init(bounds: [Double], counts: [UInt64], sum: Double, count: UInt64) {
            self.bounds = bounds; self.counts = counts; self.sum = sum; self.count = count
        }
    }

    public enum Value: Sendable, Equatable {
        /// A counter's or gauge's sample.
        case number(Double)
        case histogram(Buckets)
    }

    /// One series: its labels in exposition order (without "le") and its value.
    public struct Series: Sendable, Equatable {
        public var labels: [(String, String)]
        public var value: Value
        public init(labels: [(String, String)], value: Value) { self.labels = labels; self.value = value }
        public static func == (a: Series, b: Series) -> Bool {
            a.value == b.value && a.labels.count == b.labels.count
                && zip(a.labels, b.labels).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        }
    }

    /// The Prometheus family name (counters with "_total").
    public var name: String
    public var kind: Exposition.Kind
    public var help: String
    public var series: [Series]

    public init(name: String, kind: Exposition.Kind, help: String, series: [Series]) {
        self.name = name; self.kind = kind; self.help = help; self.series = series
    }
}

// MARK: exposition parser

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
            if let known = histogramIndex[key] { i = known } else {
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

public enum OTLPEncoder {
    /// The instrumentation scope every metric is sent under.
    public static let scopeName = "flowmeterd"

    /// ExportMetricsServiceRequest with the metrics /metrics would serve for
    /// the same snapshot: one ResourceMetrics (the `resource` attributes, as
    /// strings), one ScopeMetrics ("flowmeterd", `scopeVersion`), one Metric
    /// per family that has series. `scopeVersion` is also the version label of
    /// flowmeter_build_info, as on /metrics.
    public static func request(_ a: Accounting, resource: [(String, String)], scopeVersion: String,
                               startUnixNanos: UInt64, nowUnixNanos: UInt64) -> [UInt8] {
        let parsed = ExpositionParser.parse(MetricsRenderer.render(a, version: scopeVersion))
        // The renderer's text always parses (OTLPTests); a line that did not
        // would be left out here rather than fail the whole export.
        assert(parsed.errors.isEmpty, "exposition does not parse: \(parsed.errors)")
        return request(families: parsed.families, resource: resource, scopeVersion: scopeVersion,
                       startUnixNanos: startUnixNanos, nowUnixNanos: nowUnixNanos)
    }

    /// The same from families already in the neutral model.
    public static func request(families: [MetricFamilyData], resource: [(String, String)], scopeVersion: String,
                               startUnixNanos: UInt64, nowUnixNanos: UInt64) -> [UInt8] {
        var request = ProtobufWriter()
        request.message(1) { rm in                          // ExportMetricsServiceRequest.resource_metrics
            rm.message(1) { r in                            // ResourceMetrics.resource
                for (k, v) in resource { r.message(1) { keyValue(&$0, k, v) } } // Resource.attributes
            }
            rm.message(2) { sm in                           // ResourceMetrics.scope_metrics
                sm.message(1) { s in                        // ScopeMetrics.scope
                    s.string(1, scopeName)                  // InstrumentationScope.name
                    if !scopeVersion.isEmpty { s.string(2, scopeVersion) }
                }
                for f in families where !f.series.isEmpty {
                    sm.message(2) { metric(&$0, f, start: startUnixNanos, now: nowUnixNanos) } // ScopeMetrics.metrics
                }
            }
        }
        return request.bytes
    }

    /// The OTLP metric name of a Prometheus family: without a trailing
    /// "_total", "_" replaced by "." (flowmeter_network_io_bytes_total ->
    /// flowmeter.network.io.bytes).
    public static func otlpName(_ prometheusName: String) -> String {
        let base = prometheusName.hasSuffix("_total") ? String(prometheusName.dropLast(6)) : prometheusName
        return String(base.map { $0 == "_" ? "." : $0 })
    }

    /// The UCUM unit of a Prometheus family: "By" for _bytes(_total), "s" for
    /// _seconds(_total), "1" otherwise.
    public static func otlpUnit(_ prometheusName: String) -> String {
        let base = prometheusName.hasSuffix("_total") ? String(prometheusName.dropLast(6)) : prometheusName
        if base.hasSuffix("_bytes") { return "By" }
        if base.hasSuffix("_seconds") { return "s" }
        return "1"
    }

    static let cumulative: UInt64 = 2 // AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

    static func keyValue(_ w: inout ProtobufWriter, _ key: String, _ value: String) {
        if !key.isEmpty { w.string(1, key) } // KeyValue.key
        w.message(2) { $0.string(1, value) } // KeyValue.value: AnyValue.string_value (oneof: written even if empty)
    }

    static func metric(_ w: inout ProtobufWriter, _ f: MetricFamilyData, start: UInt64, now: UInt64) {
        w.string(1, otlpName(f.name))                       // Metric.name
        if !f.help.isEmpty { w.string(2, f.help) }          // Metric.description
        w.string(3, otlpUnit(f.name))                       // Metric.unit (never empty)
        switch f.kind {
        case .counter:
            w.message(7) { sum in                           // Metric.sum
                numberPoints(&sum, f, start: start, now: now)
                sum.varint(2, cumulative)                   // Sum.aggregation_temporality
                sum.varint(3, 1)                            // Sum.is_monotonic
            }
        case .gauge:
            w.message(5) { numberPoints(&$0, f, start: start, now: now) } // Metric.gauge
        case .histogram:
            w.message(9) { h in                             // Metric.histogram
                for s in f.series {
                    guard case .histogram(let b) = s.value else { continue }
                    h.message(1) { p in                     // Histogram.data_points
                        if start != 0 { p.fixed64(2, start) } // start_time_unix_nano
                        if now != 0 { p.fixed64(3, now) }   // time_unix_nano
                        if b.count != 0 { p.fixed64(4, b.count) } // count
                        p.double(5, b.sum)                  // sum (optional: always present)
                        p.packedFixed64(6, b.counts)        // bucket_counts
                        p.packedDouble(7, b.bounds)         // explicit_bounds
                        for (k, v) in s.labels { p.message(9) { keyValue(&$0, k, v) } } // attributes
                    }
                }
                h.varint(2, cumulative)                     // Histogram.aggregation_temporality
            }
        }
    }

    /// Gauge.data_points / Sum.data_points (both field 1).
    static func numberPoints(_ w: inout ProtobufWriter, _ f: MetricFamilyData, start: UInt64, now: UInt64) {
        for s in f.series {
            guard case .number(let v) = s.value else { continue }
            w.message(1) { p in
                if start != 0 { p.fixed64(2, start) }       // NumberDataPoint.start_time_unix_nano
                if now != 0 { p.fixed64(3, now) }           // time_unix_nano
                p.double(4, v)                              // as_double (oneof: written even if 0)
                for (k, v) in s.labels { p.message(7) { keyValue(&$0, k, v) } } // attributes
            }
        }
    }
}

// MARK: protobuf writer

/// The protobuf wire format, as much of it as OTLP metrics need. A nested
/// message is built into its own writer first, then written with its length.
/// Every field given is written (proto3 default values included); callers
/// leave out what they do not want on the wire.
struct ProtobufWriter {
    private(set) var bytes: [UInt8] = []

    enum WireType: UInt64 {
        case varint = 0, fixed64 = 1, lengthDelimited = 2, fixed32 = 5
    }

    mutating func rawVarint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    mutating func rawFixed64(_ value: UInt64) {
        for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    mutating func tag(_ field: Int, _ wire: WireType) {
        precondition(field > 0 && field < 1 << 29, "protobuf field number \(field)")
        rawVarint(UInt64(field) << 3 | wire.rawValue)
    }

    mutating func varint(_ field: Int, _ value: UInt64) {
        tag(field, .varint)
        rawVarint(value)
    }

    mutating func bool(_ field: Int, _ value: Bool) { varint(field, value ? 1 : 0) }

    mutating func fixed64(_ field: Int, _ value: UInt64) {
        tag(field, .fixed64)
        rawFixed64(value)
    }

    mutating func double(_ field: Int, _ value: Double) { fixed64(field, value.bitPattern) }

    mutating func lengthDelimited(_ field: Int, _ data: [UInt8]) {
        tag(field, .lengthDelimited)
        rawVarint(UInt64(data.count))
        bytes.append(contentsOf: data)
    }

    mutating func string(_ field: Int, _ value: String) { lengthDelimited(field, Array(value.utf8)) }

    /// A nested message: `build` writes its fields.
    mutating func message(_ field: Int, _ build: (inout ProtobufWriter) -> Void) {
        var child = ProtobufWriter()
        build(&child)
        lengthDelimited(field, child.bytes)
    }

    /// Packed repeated fixed64 (nothing for an empty list).
    mutating func packedFixed64(_ field: Int, _ values: [UInt64]) {
        guard !values.isEmpty else { return }
        tag(field, .lengthDelimited)
        rawVarint(UInt64(values.count * 8))
        for v in values { rawFixed64(v) }
    }

    /// Packed repeated double (nothing for an empty list).
    mutating func packedDouble(_ field: Int, _ values: [Double]) {
        packedFixed64(field, values.map(\.bitPattern))
    }
}
