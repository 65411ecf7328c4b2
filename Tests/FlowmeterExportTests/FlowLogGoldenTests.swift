import FlowmeterCore
import FlowmeterExport
import Foundation
import Testing

/// The flow log's bytes, held to what they were when the lines were written
/// by hand (before the records became Codable): flows of every family, flag
/// and source, connection events of every kind, and text that needs escapes
/// (quotes, backslashes, control characters, non-ASCII) in interface names,
/// process names and cgroup paths. The expected lines are the hand
/// encoder's output for these records; a change here is a schema change.
@Suite struct FlowLogGoldenTests {
    static let clock = ClockMapping(realtimeNanos: 1_796_000_000_123_456_789, monotonicNanos: 5_000)

    /// Text with every kind of character the encoders treat differently.
    static let nasty = "q\"b\\s/\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f} \u{7f}é\u{2028}\u{feff}🙂"

    static func flow(
        _ family: Family, _ proto: UInt8, flags: FlowKeyFlags = [], tcpFlags: UInt8 = 0,
        dir: Direction = .transmit, source: FlowSource = .flowMap, packets: UInt64 = 3, bytes: UInt64 = 4500,
        first: UInt64 = 5_000, last: UInt64 = 2_000_005_001
    ) -> FlowRecord {
        let v6a = IPAddress16(bytes: [0xfd] + [UInt8](repeating: 0, count: 14) + [1])
        let v6b = IPAddress16(bytes: [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [0x42])
        let (src, dst): (IPAddress16, IPAddress16) =
            switch family {
            case .ipv4: (.v4(10, 0, 0, 1), .v4(192, 168, 200, 254))
            case .ipv6: (v6a, v6b)
            case .other: (.zero, .zero)
            }
        return FlowRecord(
            key: FlowKey(
                source: src, destination: dst, ifindex: 7, sourcePort: family == .other ? 0 : 443,
                destinationPort: family == .other ? 0x88cc : 51000, direction: dir, family: family,
                ipProtocol: proto, flags: flags),
            stats: FlowStats(
                packets: packets, bytes: bytes, firstSeenNanos: first, lastSeenNanos: last,
                tcpFlags: tcpFlags),
            source: source)
    }

    static func event(
        _ kind: SocketEvent.Kind, role: SocketEvent.Role = .client, family: Family = .ipv4, proto: UInt8 = 6,
        reason: SocketEvent.FailReason = .none, start: UInt64 = 1_000_000, at: UInt64 = 3_234_567,
        owner: SocketOwner? = SocketOwner(tgid: 4242, pid: 4243, name: "curl", cgroupID: 77)
    ) -> SocketEvent {
        SocketEvent(
            kind: kind, role: role, family: family, ipProtocol: proto, reason: reason, socketID: 0xffff_8881_0000_1000,
            timestampNanos: at, startNanos: start, owner: owner,
            localAddress: family == .ipv6 ? IPAddress16(bytes: [0xfe, 0x80] + [UInt8](repeating: 0, count: 13) + [9]) : .v4(127, 0, 0, 1),
            remoteAddress: family == .ipv6 ? IPAddress16(bytes: [UInt8](repeating: 0, count: 15) + [1]) : .v4(10, 1, 2, 3),
            localPort: 40001, remotePort: 8080, srttMicros: 1234, bytesSent: 10, bytesReceived: UInt64.max,
            retransmits: 5, resetsSent: 1, resetsReceived: 2, error: reason == .none ? 0 : 111)
    }

    /// The records, each encoded with the given functions (the flow log's, here).
    static func lines(
        flow encodeFlow: (FlowRecord, String, ClockMapping, ServicePair?) -> String,
        connection encodeConnection: (SocketEvent, String?, ClockMapping) -> String
    ) -> [String] {
        let web = ServicePair(service: "web", peer: "db \"primary\"", transport: "tcp")
        let c = clock
        return [
            // Flows: each family and protocol kind, flags, sources, a service pair, odd interface names.
            encodeFlow(flow(.ipv4, 6, tcpFlags: 0x12), "eth0", c, web),
            encodeFlow(
                flow(
                    .ipv4, 6, flags: [.fragment, .l4Truncated, .malformed], tcpFlags: 0xff, dir: .receive,
                    source: .flowsRing, packets: UInt64.max, bytes: 0), "eth\"0", c, nil),
            encodeFlow(
                flow(.ipv4, 17, flags: [.fragment]), "back\\slash", c, ServicePair(service: nasty, peer: "unknown", transport: "udp")),
            encodeFlow(flow(.ipv4, 1, flags: [.l4Truncated]), nasty, c, nil),
            encodeFlow(flow(.ipv4, 132), "sctp-if", c, nil),
            encodeFlow(flow(.ipv4, 47, flags: [.malformed]), "gre/1", c, nil),
            encodeFlow(flow(.ipv6, 6, tcpFlags: 0), "wlan-ü🙂", c, nil),
            encodeFlow(flow(.ipv6, 17, dir: .receive, first: 0, last: 0), "if9", c, web),
            encodeFlow(flow(.ipv6, 58, flags: [.fragment, .malformed]), "tab\there", c, nil),
            encodeFlow(flow(.ipv6, 0), "hop-by-hop", c, nil),
            encodeFlow(flow(.other, 0, flags: [.malformed], dir: .receive, source: .flowsRing), "br-\u{7f}\u{2028}", c, nil),
            encodeFlow(flow(.other, 0, first: 1, last: 3_000_000_000_000_000_000), "lo", c, nil),
            // Connections: every kind, role, reason; with and without owner, cgroup path, duration.
            encodeConnection(event(.open), "/system.slice/curl.service", c),
            encodeConnection(event(.open, role: .server, family: .ipv6, owner: nil), nil, c),
            encodeConnection(event(.close, role: .server), "/user.slice/" + nasty, c),
            encodeConnection(event(.close, role: .unknown, family: .ipv6, start: 0), nil, c),
            encodeConnection(event(.close, at: 999_999), "/late", c),
            encodeConnection(event(.close, start: 1_000_000, at: 1_000_500), nil, c),
            encodeConnection(event(.close, start: 1_000_000, at: 1_001_500), nil, c),
            encodeConnection(event(.update, proto: 17), "/system.slice/dns.service", c),
            encodeConnection(event(.update, family: .ipv6, start: 1, at: 86_400_000_000_001), nil, c),
            encodeConnection(event(.close, owner: SocketOwner(tgid: 1, pid: 2, name: nasty, cgroupID: UInt64.max)), nasty, c),
            encodeConnection(event(.failed, reason: .refused), "/a", c),
            encodeConnection(event(.failed, reason: .timeout, owner: nil), nil, c),
            encodeConnection(event(.failed, family: .ipv6, reason: .unreachable), nil, c),
            encodeConnection(event(.failed, reason: .other, owner: SocketOwner(tgid: 9, pid: 9, name: "a\"b\\c", cgroupID: 0)), "", c),
        ]
    }

    @Test func linesAreTheHandEncodersBytes() {
        let got = Self.lines(
            flow: { FlowLogEncoder.encode($0, interface: $1, clock: $2, pair: $3) },
            connection: { FlowLogEncoder.encodeConnection($0, cgroupPath: $1, clock: $2) })
        #expect(got.count == Self.expected.count)
        for (i, (g, e)) in zip(got, Self.expected).enumerated() {
            #expect(g == e, "record \(i)")
        }
    }

    @Test func linesAreJSONObjects() throws {
        let got = Self.lines(
            flow: { FlowLogEncoder.encode($0, interface: $1, clock: $2, pair: $3) },
            connection: { FlowLogEncoder.encodeConnection($0, cgroupPath: $1, clock: $2) })
        for line in got {
            #expect(!line.contains("\n"))
            let o = try #require(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            #expect(o["version"] as? Int == 1)
        }
    }

    /// Written by the hand encoder (FlowLog.swift before the records were Codable) for `lines`.
    static let expected: [String] = [
        #"{"version":1,"type":"flow","interface":"eth0","ifindex":7,"direction":"transmit","family":"ipv4","protocol":"tcp","protocol_number":6,"src_addr":"10.0.0.1","dst_addr":"192.168.200.254","src_port":443,"dst_port":51000,"service":"web","peer_service":"db \"primary\"","packets":3,"bytes":4500,"tcp_flags":"S.","tcp_flags_raw":18,"first_seen":"2026-11-30T00:53:20.123456789Z","last_seen":"2026-11-30T00:53:22.123456790Z","source":"flow_map"}"#,
        #"{"version":1,"type":"flow","interface":"eth\"0","ifindex":7,"direction":"receive","family":"ipv4","protocol":"tcp","protocol_number":6,"src_addr":"10.0.0.1","dst_addr":"192.168.200.254","src_port":443,"dst_port":51000,"packets":18446744073709551615,"bytes":0,"tcp_flags":"FSRP.UEW","tcp_flags_raw":255,"flags":["fragment","l4_truncated","malformed"],"first_seen":"2026-11-30T00:53:20.123456789Z","last_seen":"2026-11-30T00:53:22.123456790Z","source":"flows_ring"}"#,
        #"{"version":1,"type":"flow","interface":"back\\slash","ifindex":7,"direction":"transmit","family":"ipv4","protocol":"udp","protocol_number":17,"src_addr":"10.0.0.1","dst_addr":"192.168.200.254","src_port":443,"dst_port":51000,"service":"q\"b\\s/\u0000\u0001\u0008\t\n\u000b\u000c\r\u001f \#u{7f}\#u{e9}\#u{2028}\#u{feff}\#u{1f642}","peer_service":"unknown","packets":3,"bytes":4500,"flags":["fragment"],"first_seen":"2026-11-30T00:53:20.123456789Z","last_seen":"2026-11-30T00:53:22.123456790Z","source":"flow_map"}"#,
        #"{"version":1,"type":"flow","interface":"q\"b\\s/\u0000\u0001\u0008\t\n\u000b\u000c\r\u001f \#u{7f}\#u{e9}\#u{2028}\#u{feff}\#u{1f642}","ifindex":7,"direction":"transmit","family":"ipv4","protocol":"icmp","protocol_number":1,"src_addr":"10.0.0.1","dst_addr":"192.168.200.254","src_port":443,"dst_port":51000,"packets":3,"bytes":4500,"flags":["l4_truncated"],"first_seen":"2026-11-30T00:53:20.123456789Z","last_seen":"2026-11-30T00:53:22.123456790Z","source":"flow_map"}"#,
        #"{"version":1,"type":"flow","interface":"sctp-if","ifindex":7,"direction":"transmit","family":"ipv4","protocol":"sctp","protocol_number":132,"src_addr":"10.0.0.1","dst_addr":"192.168.200.254","src_port":443,"dst_port":51000,"packets":3,"bytes":4500,"first_seen":"2026-11-30T00:53:20.123456789Z","last_seen":"2026-11-30T00:53:22.123456790Z","source":"flow_map"}"#,
        #"{"version":1,"type":"flow","interface":"gre/1","ifindex":7,"direction":"transmit","family":"ipv4","protocol":"47","protocol_number":47,"src_addr":"10.0.0.1","dst_addr":"192.168.200.254","src_port":443,"dst_port":51000,"packets":3,"bytes":4500,"flags":["malformed"],"first_seen":"2026-11-30T00:53:20.123456789Z","last_seen":"2026-11-30T00:53:22.123456790Z","source":"flow_map"}"#,
        #"{"version":1,"type":"flow","interface":"wlan-\#u{fc}\#u{1f642}","ifindex":7,"direction":"transmit","family":"ipv6","protocol":"tcp","protocol_number":6,"src_addr":"fd00::1","dst_addr":"2001:db8::42","src_port":443,"dst_port":51000,"packets":3,"bytes":4500,"tcp_flags":"","tcp_flags_raw":0,"first_seen":"2026-11-30T00:53:20.123456789Z","last_seen":"2026-11-30T00:53:22.123456790Z","source":"flow_map"}"#,
        #"{"version":1,"type":"flow","interface":"if9","ifindex":7,"direction":"receive","family":"ipv6","protocol":"udp","protocol_number":17,"src_addr":"fd00::1","dst_addr":"2001:db8::42","src_port":443,"dst_port":51000,"service":"web","peer_service":"db \"primary\"","packets":3,"bytes":4500,"first_seen":"2026-11-30T00:53:20.123451789Z","last_seen":"2026-11-30T00:53:20.123451789Z","source":"flow_map"}"#,
        #"{"version":1,"type":"flow","interface":"tab\there","ifindex":7,"direction":"transmit","family":"ipv6","protocol":"icmpv6","protocol_number":58,"src_addr":"fd00::1","dst_addr":"2001:db8::42","src_port":443,"dst_port":51000,"packets":3,"bytes":4500,"flags":["fragment","malformed"],"first_seen":"2026-11-30T00:53:20.123456789Z","last_seen":"2026-11-30T00:53:22.123456790Z","source":"flow_map"}"#,
        #"{"version":1,"type":"flow","interface":"hop-by-hop","ifindex":7,"direction":"transmit","family":"ipv6","protocol":"0","protocol_number":0,"src_addr":"fd00::1","dst_addr":"2001:db8::42","src_port":443,"dst_port":51000,"packets":3,"bytes":4500,"first_seen":"2026-11-30T00:53:20.123456789Z","last_seen":"2026-11-30T00:53:22.123456790Z","source":"flow_map"}"#,
        #"{"version":1,"type":"flow","interface":"br-\#u{7f}\#u{2028}","ifindex":7,"direction":"receive","family":"other","ethertype":35020,"packets":3,"bytes":4500,"flags":["malformed"],"first_seen":"2026-11-30T00:53:20.123456789Z","last_seen":"2026-11-30T00:53:22.123456790Z","source":"flows_ring"}"#,
        #"{"version":1,"type":"flow","interface":"lo","ifindex":7,"direction":"transmit","family":"other","ethertype":35020,"packets":3,"bytes":4500,"first_seen":"2026-11-30T00:53:20.123451790Z","last_seen":"2121-12-24T06:13:20.123451789Z","source":"flow_map"}"#,
        #"{"version":1,"type":"connection","event":"open","time":"2026-11-30T00:53:20.126686356Z","protocol":"tcp","family":"ipv4","role":"client","local_addr":"127.0.0.1","local_port":40001,"remote_addr":"10.1.2.3","remote_port":8080,"pid":4242,"tid":4243,"process":"curl","cgroup_id":77,"cgroup_path":"/system.slice/curl.service"}"#,
        #"{"version":1,"type":"connection","event":"open","time":"2026-11-30T00:53:20.126686356Z","protocol":"tcp","family":"ipv6","role":"server","local_addr":"fe80::9","local_port":40001,"remote_addr":"::1","remote_port":8080}"#,
        #"{"version":1,"type":"connection","event":"close","time":"2026-11-30T00:53:20.126686356Z","protocol":"tcp","family":"ipv4","role":"server","local_addr":"127.0.0.1","local_port":40001,"remote_addr":"10.1.2.3","remote_port":8080,"pid":4242,"tid":4243,"process":"curl","cgroup_id":77,"cgroup_path":"/user.slice/q\"b\\s/\u0000\u0001\u0008\t\n\u000b\u000c\r\u001f \#u{7f}\#u{e9}\#u{2028}\#u{feff}\#u{1f642}","bytes_sent":10,"bytes_received":18446744073709551615,"srtt_us":1234,"retransmits":5,"resets_sent":1,"resets_received":2,"duration_ms":2.235}"#,
        #"{"version":1,"type":"connection","event":"close","time":"2026-11-30T00:53:20.126686356Z","protocol":"tcp","family":"ipv6","role":"unknown","local_addr":"fe80::9","local_port":40001,"remote_addr":"::1","remote_port":8080,"pid":4242,"tid":4243,"process":"curl","cgroup_id":77,"bytes_sent":10,"bytes_received":18446744073709551615,"srtt_us":1234,"retransmits":5,"resets_sent":1,"resets_received":2}"#,
        #"{"version":1,"type":"connection","event":"close","time":"2026-11-30T00:53:20.124451788Z","protocol":"tcp","family":"ipv4","role":"client","local_addr":"127.0.0.1","local_port":40001,"remote_addr":"10.1.2.3","remote_port":8080,"pid":4242,"tid":4243,"process":"curl","cgroup_id":77,"cgroup_path":"/late","bytes_sent":10,"bytes_received":18446744073709551615,"srtt_us":1234,"retransmits":5,"resets_sent":1,"resets_received":2}"#,
        #"{"version":1,"type":"connection","event":"close","time":"2026-11-30T00:53:20.124452289Z","protocol":"tcp","family":"ipv4","role":"client","local_addr":"127.0.0.1","local_port":40001,"remote_addr":"10.1.2.3","remote_port":8080,"pid":4242,"tid":4243,"process":"curl","cgroup_id":77,"bytes_sent":10,"bytes_received":18446744073709551615,"srtt_us":1234,"retransmits":5,"resets_sent":1,"resets_received":2,"duration_ms":0.001}"#,
        #"{"version":1,"type":"connection","event":"close","time":"2026-11-30T00:53:20.124453289Z","protocol":"tcp","family":"ipv4","role":"client","local_addr":"127.0.0.1","local_port":40001,"remote_addr":"10.1.2.3","remote_port":8080,"pid":4242,"tid":4243,"process":"curl","cgroup_id":77,"bytes_sent":10,"bytes_received":18446744073709551615,"srtt_us":1234,"retransmits":5,"resets_sent":1,"resets_received":2,"duration_ms":0.002}"#,
        #"{"version":1,"type":"connection","event":"update","time":"2026-11-30T00:53:20.126686356Z","protocol":"udp","family":"ipv4","role":"client","local_addr":"127.0.0.1","local_port":40001,"remote_addr":"10.1.2.3","remote_port":8080,"pid":4242,"tid":4243,"process":"curl","cgroup_id":77,"cgroup_path":"/system.slice/dns.service","bytes_sent":10,"bytes_received":18446744073709551615,"duration_ms":2.235}"#,
        #"{"version":1,"type":"connection","event":"update","time":"2026-12-01T00:53:20.123451790Z","protocol":"tcp","family":"ipv6","role":"client","local_addr":"fe80::9","local_port":40001,"remote_addr":"::1","remote_port":8080,"pid":4242,"tid":4243,"process":"curl","cgroup_id":77,"bytes_sent":10,"bytes_received":18446744073709551615,"srtt_us":1234,"retransmits":5,"resets_sent":1,"resets_received":2,"duration_ms":86400000.000}"#,
        #"{"version":1,"type":"connection","event":"close","time":"2026-11-30T00:53:20.126686356Z","protocol":"tcp","family":"ipv4","role":"client","local_addr":"127.0.0.1","local_port":40001,"remote_addr":"10.1.2.3","remote_port":8080,"pid":1,"tid":2,"process":"q\"b\\s/\u0000\u0001\u0008\t\n\u000b\u000c\r\u001f \#u{7f}\#u{e9}\#u{2028}\#u{feff}\#u{1f642}","cgroup_id":18446744073709551615,"cgroup_path":"q\"b\\s/\u0000\u0001\u0008\t\n\u000b\u000c\r\u001f \#u{7f}\#u{e9}\#u{2028}\#u{feff}\#u{1f642}","bytes_sent":10,"bytes_received":18446744073709551615,"srtt_us":1234,"retransmits":5,"resets_sent":1,"resets_received":2,"duration_ms":2.235}"#,
        #"{"version":1,"type":"connection","event":"failed","time":"2026-11-30T00:53:20.126686356Z","protocol":"tcp","family":"ipv4","role":"client","local_addr":"127.0.0.1","local_port":40001,"remote_addr":"10.1.2.3","remote_port":8080,"pid":4242,"tid":4243,"process":"curl","cgroup_id":77,"cgroup_path":"/a","reason":"refused","errno":111}"#,
        #"{"version":1,"type":"connection","event":"failed","time":"2026-11-30T00:53:20.126686356Z","protocol":"tcp","family":"ipv4","role":"client","local_addr":"127.0.0.1","local_port":40001,"remote_addr":"10.1.2.3","remote_port":8080,"reason":"timeout","errno":111}"#,
        #"{"version":1,"type":"connection","event":"failed","time":"2026-11-30T00:53:20.126686356Z","protocol":"tcp","family":"ipv6","role":"client","local_addr":"fe80::9","local_port":40001,"remote_addr":"::1","remote_port":8080,"pid":4242,"tid":4243,"process":"curl","cgroup_id":77,"reason":"unreachable","errno":111}"#,
        #"{"version":1,"type":"connection","event":"failed","time":"2026-11-30T00:53:20.126686356Z","protocol":"tcp","family":"ipv4","role":"client","local_addr":"127.0.0.1","local_port":40001,"remote_addr":"10.1.2.3","remote_port":8080,"pid":9,"tid":9,"process":"a\"b\\c","cgroup_id":0,"cgroup_path":"","reason":"other","errno":111}"#,
    ]
}
