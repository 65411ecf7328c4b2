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
// Same metrics as /metrics, by construction: `OTLPEncoder.request` encodes
// the metric families `MetricsRenderer.families` builds from the snapshot,
// the same families the Prometheus text is written from (no text round
// trip). A family, series, label or value can therefore never exist in one
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

public enum OTLPEncoder {
    /// The instrumentation scope every metric is sent under.
    public static let scopeName = "flowmeterd"

    /// ExportMetricsServiceRequest with the metrics /metrics would serve for
    /// the same snapshot: one ResourceMetrics (the `resource` attributes, as
    /// strings), one ScopeMetrics ("flowmeterd", `scopeVersion`), one Metric
    /// per family that has series. `scopeVersion` is also the version label of
    /// flowmeter_build_info, as on /metrics.
    public static func request(
        _ a: Accounting, resource: [(String, String)], scopeVersion: String,
        startUnixNanos: UInt64, nowUnixNanos: UInt64
    ) -> [UInt8] {
        request(
            families: MetricsRenderer.families(a, version: scopeVersion), resource: resource, scopeVersion: scopeVersion,
            startUnixNanos: startUnixNanos, nowUnixNanos: nowUnixNanos)
    }

    /// The same from families already in the neutral model.
    public static func request(
        families: [MetricFamilyData], resource: [(String, String)], scopeVersion: String,
        startUnixNanos: UInt64, nowUnixNanos: UInt64
    ) -> [UInt8] {
        var request = ProtobufWriter()
        request.message(1) { rm in  // ExportMetricsServiceRequest.resource_metrics
            rm.message(1) { r in  // ResourceMetrics.resource
                for (k, v) in resource { r.message(1) { keyValue(&$0, k, v) } }  // Resource.attributes
            }
            rm.message(2) { sm in  // ResourceMetrics.scope_metrics
                sm.message(1) { s in  // ScopeMetrics.scope
                    s.string(1, scopeName)  // InstrumentationScope.name
                    if !scopeVersion.isEmpty { s.string(2, scopeVersion) }
                }
                for f in families where !f.series.isEmpty {
                    sm.message(2) { metric(&$0, f, start: startUnixNanos, now: nowUnixNanos) }  // ScopeMetrics.metrics
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

    static let cumulative: UInt64 = 2  // AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

    static func keyValue(_ w: inout ProtobufWriter, _ key: String, _ value: String) {
        if !key.isEmpty { w.string(1, key) }  // KeyValue.key
        w.message(2) { $0.string(1, value) }  // KeyValue.value: AnyValue.string_value (oneof: written even if empty)
    }

    static func metric(_ w: inout ProtobufWriter, _ f: MetricFamilyData, start: UInt64, now: UInt64) {
        w.string(1, otlpName(f.name))  // Metric.name
        if !f.help.isEmpty { w.string(2, f.help) }  // Metric.description
        w.string(3, otlpUnit(f.name))  // Metric.unit (never empty)
        switch f.kind {
        case .counter:
            w.message(7) { sum in  // Metric.sum
                numberPoints(&sum, f, start: start, now: now)
                sum.varint(2, cumulative)  // Sum.aggregation_temporality
                sum.varint(3, 1)  // Sum.is_monotonic
            }
        case .gauge:
            w.message(5) { numberPoints(&$0, f, start: start, now: now) }  // Metric.gauge
        case .histogram:
            w.message(9) { h in  // Metric.histogram
                for s in f.series {
                    guard case .histogram(let b) = s.value else { continue }
                    h.message(1) { p in  // Histogram.data_points
                        if start != 0 { p.fixed64(2, start) }  // start_time_unix_nano
                        if now != 0 { p.fixed64(3, now) }  // time_unix_nano
                        if b.count != 0 { p.fixed64(4, b.count) }  // count
                        p.double(5, b.sum)  // sum (optional: always present)
                        p.packedFixed64(6, b.counts)  // bucket_counts
                        p.packedDouble(7, b.bounds)  // explicit_bounds
                        for (k, v) in s.labels { p.message(9) { keyValue(&$0, k, v) } }  // attributes
                    }
                }
                h.varint(2, cumulative)  // Histogram.aggregation_temporality
            }
        }
    }

    /// Gauge.data_points / Sum.data_points (both field 1).
    static func numberPoints(_ w: inout ProtobufWriter, _ f: MetricFamilyData, start: UInt64, now: UInt64) {
        for s in f.series {
            guard case .number(let v) = s.value else { continue }
            w.message(1) { p in
                if start != 0 { p.fixed64(2, start) }  // NumberDataPoint.start_time_unix_nano
                if now != 0 { p.fixed64(3, now) }  // time_unix_nano
                p.double(4, v)  // as_double (oneof: written even if 0)
                for (k, v) in s.labels { p.message(7) { keyValue(&$0, k, v) } }  // attributes
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
