// flowmeter-bench flowlog: the flow log's encoding, records per second. The
// flow log writes a line per evicted flow and connection event, up to about
// 100,000 a pass under load, so its encoder's cost is per record. Measures
// the Codable records (FlowLogRecord, written by WireJSON.flowLog: what the
// daemon runs) against the hand-written encoder the flow log had before
// them, which is kept here, and only here, as the baseline: it concatenated
// strings and escaped by hand. Needs no root and no kernel.
import FlowmeterCore
import FlowmeterExport
import Foundation

enum FlowLogBench {
    /// A mix like a busy node's pass: flows of every family and protocol,
    /// some with flags or a service pair, and connection events of every
    /// kind; names with the odd character to escape.
    static func records(_ n: Int) -> (flows: [(FlowRecord, String, ServicePair?)], events: [(SocketEvent, String?)]) {
        var flows: [(FlowRecord, String, ServicePair?)] = [], events: [(SocketEvent, String?)] = []
        let pairs = [
            ServicePair(service: "web", peer: "postgres", transport: "tcp"), ServicePair(service: "dns", peer: "unknown", transport: "udp"),
        ]
        let names = ["eth0", "ens5", "veth3f2a91c", "wg0", "br-\"odd\"\t"]
        let v6 = IPAddress16(bytes: [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [0x42])
        for i in 0..<n {
            if i % 5 == 4 {
                let kind: SocketEvent.Kind = [.open, .close, .failed, .update][i / 5 % 4]
                let e = SocketEvent(
                    kind: kind, role: i % 2 == 0 ? .client : .server, family: i % 3 == 0 ? .ipv6 : .ipv4,
                    ipProtocol: i % 7 == 0 ? 17 : 6, reason: kind == .failed ? .refused : .none,
                    socketID: UInt64(i), timestampNanos: 9_000_000_000 + UInt64(i), startNanos: 1_000_000_000,
                    owner: i % 11 == 0
                        ? nil
                        : SocketOwner(tgid: UInt32(i), pid: UInt32(i + 1), name: i % 13 == 0 ? "java \"main\"" : "nginx", cgroupID: 4242),
                    localAddress: i % 3 == 0 ? v6 : .v4(10, 0, UInt8(i >> 8 & 0xff), UInt8(i & 0xff)), remoteAddress: .v4(10, 9, 8, 7),
                    localPort: 443, remotePort: UInt16(32768 + i % 20000), srttMicros: 250, bytesSent: UInt64(i) * 1000,
                    bytesReceived: UInt64(i) * 3000, retransmits: 0, resetsSent: 0, resetsReceived: 0, error: kind == .failed ? 111 : 0)
                events.append((e, i % 11 == 0 ? nil : "/system.slice/nginx.service"))
            } else {
                let family: Family = i % 17 == 0 ? .other : (i % 3 == 0 ? .ipv6 : .ipv4)
                let proto: UInt8 = [6, 6, 17, 1, 58, 132][i % 6]
                let r = FlowRecord(
                    key: FlowKey(
                        source: family == .ipv6 ? v6 : .v4(10, 0, UInt8(i >> 8 & 0xff), UInt8(i & 0xff)),
                        destination: .v4(192, 168, 1, 1), ifindex: UInt32(2 + i % 5),
                        sourcePort: UInt16(1024 + i % 60000), destinationPort: family == .other ? 0x0806 : 443,
                        direction: i % 2 == 0 ? .transmit : .receive, family: family, ipProtocol: proto,
                        flags: i % 19 == 0 ? [.fragment] : []),
                    stats: FlowStats(
                        packets: UInt64(1 + i % 100), bytes: UInt64(64 + i % 100 * 1400),
                        firstSeenNanos: 1_000_000_000, lastSeenNanos: 9_000_000_000 + UInt64(i), tcpFlags: 0x1a),
                    source: i % 23 == 0 ? .flowsRing : .flowMap)
                flows.append((r, names[i % names.count], proto == 6 || proto == 17 ? pairs[i % 2] : nil))
            }
        }
        return (flows, events)
    }

    static func run(records n: Int, rounds: Int) {
        let (flows, events) = records(n)
        let clock = ClockMapping(realtimeNanos: 1_796_000_000_000_000_000, monotonicNanos: 0)
        func codable() -> [String] {
            flows.map { FlowLogEncoder.encode($0.0, interface: $0.1, clock: clock, pair: $0.2) }
                + events.map { FlowLogEncoder.encodeConnection($0.0, cgroupPath: $0.1, clock: clock) }
        }
        func byHand() -> [String] {
            flows.map { HandFlowLogEncoder.encode($0.0, interface: $0.1, clock: clock, pair: $0.2) }
                + events.map { HandFlowLogEncoder.encodeConnection($0.0, cgroupPath: $0.1, clock: clock) }
        }
        // The two must write the same bytes, or the comparison means nothing.
        let a = codable(), b = byHand()
        if let i = a.indices.first(where: { a[$0] != b[$0] }) {
            print("flowlog: the encoders differ on record \(i):\n  codable: \(a[i])\n  by hand: \(b[i])")
            exit(1)
        }
        var times: [String: [Double]] = [:]
        var bytes = 0
        func time(_ k: String, _ body: () -> [String]) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            bytes &+= body().count
            times[k, default: []].append(Double(DispatchTime.now().uptimeNanoseconds - t0) / Double(n))
        }
        for round in 0..<rounds {
            // Interleaved, the order alternating: the machines are shared and noisy.
            if round % 2 == 0 { time("codable", codable); time("hand", byHand) } else { time("hand", byHand); time("codable", codable) }
        }
        let c = median(times["codable"]!), h = median(times["hand"]!)
        print("flow log encoding, \(n) records (\(flows.count) flows, \(events.count) connection events), median of \(rounds) rounds")
        print("encoder".padding(toLength: 44, withPad: " ", startingAt: 0) + "ns/record")
        print("Codable (FlowLogRecord, WireJSON.flowLog)".padding(toLength: 44, withPad: " ", startingAt: 0) + String(format: "%9.0f", c))
        print("by hand (the former encoder)".padding(toLength: 44, withPad: " ", startingAt: 0) + String(format: "%9.0f", h))
        print(String(format: "ratio Codable / by hand: %.2fx (%@)", c / h, c <= h ? "Codable no slower" : "by hand faster"))
    }
}

/// The flow log's encoder before the records were Codable (FlowLog.swift
/// until then), unchanged but for its name: the benchmark's baseline. Not
/// used by the daemon.
enum HandFlowLogEncoder {
    /// `pair`: the service pair the flow's socket belongs to (TCP and UDP
    /// flows, when socket telemetry runs), written as `service`, `peer_service`.
    public static func encode(_ r: FlowRecord, interface: String, clock: ClockMapping, pair: ServicePair? = nil) -> String {
        let k = r.key
        var o = "{\"version\":\(FlowLogEncoder.schemaVersion),\"type\":\"flow\""
        o += ",\"interface\":" + quote(interface)
        o += ",\"ifindex\":\(k.ifindex)"
        o += ",\"direction\":\"\(k.direction.label)\""
        o += ",\"family\":\"\(k.family.label)\""
        if k.family == .other {
            o += ",\"ethertype\":\(k.destinationPort)"
        } else {
            o += ",\"protocol\":" + quote(IPProtocolName.name(k.ipProtocol, family: k.family))
            o += ",\"protocol_number\":\(k.ipProtocol)"
            o += ",\"src_addr\":" + quote(k.source.description)
            o += ",\"dst_addr\":" + quote(k.destination.description)
            o += ",\"src_port\":\(k.sourcePort),\"dst_port\":\(k.destinationPort)"
        }
        if let pair { o += ",\"service\":" + quote(pair.service) + ",\"peer_service\":" + quote(pair.peer) }
        o += ",\"packets\":\(r.stats.packets),\"bytes\":\(r.stats.bytes)"
        if k.family != .other && k.ipProtocol == 6 {
            o += ",\"tcp_flags\":" + quote(TCPFlags.describe(r.stats.tcpFlags))
            o += ",\"tcp_flags_raw\":\(r.stats.tcpFlags)"
        }
        var flags: [String] = []
        if k.flags.contains(.fragment) { flags.append("fragment") }
        if k.flags.contains(.l4Truncated) { flags.append("l4_truncated") }
        if k.flags.contains(.malformed) { flags.append("malformed") }
        if !flags.isEmpty { o += ",\"flags\":[" + flags.map(quote).joined(separator: ",") + "]" }
        o += ",\"first_seen\":" + quote(rfc3339(nanosSinceEpoch: clock.wallNanos(monotonic: r.stats.firstSeenNanos)))
        o += ",\"last_seen\":" + quote(rfc3339(nanosSinceEpoch: clock.wallNanos(monotonic: r.stats.lastSeenNanos)))
        o += ",\"source\":\"\(r.source.rawValue)\"}"
        return o
    }

    /// One connection record (schema in README, "Flow log").
    public static func encodeConnection(_ e: SocketEvent, cgroupPath: String?, clock: ClockMapping) -> String {
        let event =
            switch e.kind {
            case .open: "open";
            case .close: "close";
            case .failed: "failed";
            case .update: "update"
            }
        let role =
            switch e.role {
            case .client: "client";
            case .server: "server";
            case .unknown: "unknown"
            }
        var o = "{\"version\":\(FlowLogEncoder.schemaVersion),\"type\":\"connection\",\"event\":\"\(event)\""
        o += ",\"time\":" + quote(rfc3339(nanosSinceEpoch: clock.wallNanos(monotonic: e.timestampNanos)))
        o += ",\"protocol\":" + quote(IPProtocolName.name(e.ipProtocol, family: e.family))
        o += ",\"family\":\"\(e.family.label)\",\"role\":\"\(role)\""
        o += ",\"local_addr\":" + quote(e.localAddress.description) + ",\"local_port\":\(e.localPort)"
        o += ",\"remote_addr\":" + quote(e.remoteAddress.description) + ",\"remote_port\":\(e.remotePort)"
        if let owner = e.owner {
            o += ",\"pid\":\(owner.tgid),\"tid\":\(owner.pid),\"process\":" + quote(owner.name)
            o += ",\"cgroup_id\":\(owner.cgroupID)"
            if let cgroupPath { o += ",\"cgroup_path\":" + quote(cgroupPath) }
        }
        switch e.kind {
        case .close, .update:
            o += ",\"bytes_sent\":\(e.bytesSent),\"bytes_received\":\(e.bytesReceived)"
            if e.ipProtocol == 6 {
                o += ",\"srtt_us\":\(e.srttMicros),\"retransmits\":\(e.retransmits)"
                o += ",\"resets_sent\":\(e.resetsSent),\"resets_received\":\(e.resetsReceived)"
            }
            if e.startNanos > 0 && e.timestampNanos >= e.startNanos {
                o += ",\"duration_ms\":" + String(format: "%.3f", Double(e.timestampNanos - e.startNanos) / 1e6)
            }
        case .failed:
            o += ",\"reason\":\"\(e.reason.label)\",\"errno\":\(e.error)"
        case .open:
            break
        }
        return o + "}"
    }

    static func quote(_ s: String) -> String {
        var o = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\"": o += "\\\""
            case "\\": o += "\\\\"
            case "\n": o += "\\n"
            case "\r": o += "\\r"
            case "\t": o += "\\t"
            default:
                if c.value < 0x20 { o += String(format: "\\u%04x", c.value) } else { o.unicodeScalars.append(c) }
            }
        }
        return o + "\""
    }
}
