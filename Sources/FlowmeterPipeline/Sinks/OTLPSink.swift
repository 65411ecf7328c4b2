import FlowmeterCore
import FlowmeterExport
import Foundation

/// OTLP metrics (HTTP/protobuf or gRPC, `OTLPPusher`'s transport): the cumulative metrics once per interval (not per
/// early pass), built from the same metric families as /metrics.
public final class OTLPSink: Sink {
    public let name = "otlp"
    let pusher: OTLPPusher
    /// Resource attributes (service.name, service.version, host.name).
    let resource: [(String, String)]
    let version: String
    /// Start of the cumulative series: when the daemon started.
    let startUnixNanos: UInt64

    public init(pusher: OTLPPusher, resource: [(String, String)], version: String, startUnixNanos: UInt64) {
        self.pusher = pusher; self.resource = resource; self.version = version; self.startUnixNanos = startUnixNanos
    }

    public var stats: ExportStats {
        let c = pusher.counters
        var s = ExportStats()
        s.queued = c.queued; s.sent = c.sent; s.failed = c.failed; s.dropped = c.dropped
        s.lastSuccessUnixSeconds = c.lastSuccessUnixSeconds
        s.queueLength = c.queueLength
        s.rejectedPoints = c.rejectedPoints
        return s
    }

    public func consume(_ out: TickOutput) {
        guard out.pass != .early else { return }
        // The request carries the exporter's own counters as of its making
        // (the pipeline publishes every sink's statistics before the sinks run).
        let body = OTLPEncoder.request(
            out.accounting(), resource: resource, scopeVersion: version,
            startUnixNanos: startUnixNanos, nowUnixNanos: UInt64(Date().timeIntervalSince1970 * 1e9))
        pusher.enqueue(body)
    }

    public func stop() { pusher.stop() }
}
