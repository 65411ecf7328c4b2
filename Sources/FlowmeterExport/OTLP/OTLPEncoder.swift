import FlowmeterCore
import FlowmeterOTLPProto
import SwiftProtobuf

// OTLP metrics export: an `opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest`
// built with the types generated from opentelemetry-proto (proto/, see
// proto/README.md; Sources/FlowmeterOTLPProto, tools/generate-otlp) and
// serialized by swift-protobuf.
//
// The series set is rebuilt from the accounting state on every export
// (interfaces and service pairs come and go, idle series expire), so the
// request is made from the metric families directly: swift-metrics and
// swift-otel model long-lived instruments that are created once and then
// updated, so a series could never end.
//
// Same metrics as /metrics, by construction: `OTLPEncoder.request` builds
// the request from the metric families `MetricsRenderer.families` builds from
// the snapshot, the same families the Prometheus text is written from (no
// text round trip). A family, series, label or value can therefore never
// exist in one export and not in the other.
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
//    than the bounds for the +Inf bucket; count; sum, always set).
//  - data point attributes: the labels, as string values, in exposition order.
//  - start_time_unix_nano: when the daemon started (every counter counts from
//    there); time_unix_nano: the export.
//  - a family with no series (no hooks, no service pairs, ...) is no Metric.
//  - the Resource and the InstrumentationScope are always set (an empty
//    Resource is an empty message on the wire).
//
// swift-protobuf writes the canonical form, fields in field-number order and
// proto3 defaults left out: the same bytes as the hand-written encoder that
// this replaced (OTLPTests pins a few exactly), so the encoded size did not
// change.

public typealias OTLPExportRequest = Opentelemetry_Proto_Collector_Metrics_V1_ExportMetricsServiceRequest

public enum OTLPEncoder {
    typealias KeyValue = Opentelemetry_Proto_Common_V1_KeyValue
    typealias NumberDataPoint = Opentelemetry_Proto_Metrics_V1_NumberDataPoint
    typealias HistogramDataPoint = Opentelemetry_Proto_Metrics_V1_HistogramDataPoint
    typealias Metric = Opentelemetry_Proto_Metrics_V1_Metric

    /// The instrumentation scope every metric is sent under.
    public static let scopeName = "flowmeterd"

    /// ExportMetricsServiceRequest with the metrics /metrics would serve for
    /// the same snapshot, serialized: one ResourceMetrics (the `resource`
    /// attributes, as strings), one ScopeMetrics ("flowmeterd",
    /// `scopeVersion`), one Metric per family that has series. `scopeVersion`
    /// is also the version label of flowmeter_build_info, as on /metrics.
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
        serialize(
            message(
                families: families, resource: resource, scopeVersion: scopeVersion,
                startUnixNanos: startUnixNanos, nowUnixNanos: nowUnixNanos))
    }

    /// The request as the generated message, before serializing.
    public static func message(
        families: [MetricFamilyData], resource: [(String, String)], scopeVersion: String,
        startUnixNanos: UInt64, nowUnixNanos: UInt64
    ) -> OTLPExportRequest {
        var scopeMetrics = Opentelemetry_Proto_Metrics_V1_ScopeMetrics()
        scopeMetrics.scope.name = scopeName
        scopeMetrics.scope.version = scopeVersion
        scopeMetrics.metrics = families.compactMap { $0.series.isEmpty ? nil : metric($0, start: startUnixNanos, now: nowUnixNanos) }
        var resourceMetrics = Opentelemetry_Proto_Metrics_V1_ResourceMetrics()
        resourceMetrics.resource = Opentelemetry_Proto_Resource_V1_Resource()
        resourceMetrics.resource.attributes = resource.map { keyValue($0.0, $0.1) }
        resourceMetrics.scopeMetrics = [scopeMetrics]
        var request = OTLPExportRequest()
        request.resourceMetrics = [resourceMetrics]
        return request
    }

    /// The wire form. Serializing a proto3 message without `Any` fields
    /// cannot fail (swift-protobuf throws only for missing proto2 required
    /// fields and `Any` transcoding), so a failure is a programming error.
    static func serialize(_ request: OTLPExportRequest) -> [UInt8] {
        do {
            return try request.serializedBytes()
        } catch {
            preconditionFailure("serializing ExportMetricsServiceRequest: \(error)")
        }
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

    static func keyValue(_ key: String, _ value: String) -> KeyValue {
        var kv = KeyValue()
        kv.key = key
        kv.value.stringValue = value
        return kv
    }

    static func metric(_ f: MetricFamilyData, start: UInt64, now: UInt64) -> Metric {
        var m = Metric()
        m.name = otlpName(f.name)
        m.description_p = f.help
        m.unit = otlpUnit(f.name)
        switch f.kind {
        case .counter:
            var sum = Opentelemetry_Proto_Metrics_V1_Sum()
            sum.dataPoints = numberPoints(f, start: start, now: now)
            sum.aggregationTemporality = .cumulative
            sum.isMonotonic = true
            m.sum = sum
        case .gauge:
            var gauge = Opentelemetry_Proto_Metrics_V1_Gauge()
            gauge.dataPoints = numberPoints(f, start: start, now: now)
            m.gauge = gauge
        case .histogram:
            var histogram = Opentelemetry_Proto_Metrics_V1_Histogram()
            histogram.dataPoints = f.series.compactMap { s in
                guard case .histogram(let b) = s.value else { return nil }
                var p = HistogramDataPoint()
                p.startTimeUnixNano = start
                p.timeUnixNano = now
                p.count = b.count
                p.sum = b.sum
                p.bucketCounts = b.counts
                p.explicitBounds = b.bounds
                p.attributes = s.labels.map { keyValue($0.0, $0.1) }
                return p
            }
            histogram.aggregationTemporality = .cumulative
            m.histogram = histogram
        }
        return m
    }

    /// Gauge.data_points / Sum.data_points.
    static func numberPoints(_ f: MetricFamilyData, start: UInt64, now: UInt64) -> [NumberDataPoint] {
        f.series.compactMap { s in
            guard case .number(let v) = s.value else { return nil }
            var p = NumberDataPoint()
            p.startTimeUnixNano = start
            p.timeUnixNano = now
            p.asDouble = v
            p.attributes = s.labels.map { keyValue($0.0, $0.1) }
            return p
        }
    }
}
