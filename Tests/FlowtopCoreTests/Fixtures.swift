import FlowtopCore

@testable import FlowmeterCore

/// Snapshots built in code, one second apart, with known counters.
enum Fixture {
    static let t0: Int64 = 1_700_000_000_000

    static func service(
        _ s: String, _ p: String, _ t: String = "tcp", tx: UInt64 = 0, rx: UInt64 = 0,
        txPackets: UInt64 = 0, rxPackets: UInt64 = 0, active: Int = 0, failed: UInt64 = 0,
        retrans: UInt64 = 0, resetsSent: UInt64 = 0, resetsReceived: UInt64 = 0,
        p50: Double? = nil, p99: Double? = nil, drops: UInt64 = 0
    ) -> APISnapshot.Service {
        var x = APISnapshot.Service(
            service: s, peer_service: p, transport: t, tx_bytes: tx, rx_bytes: rx,
            tx_packets: txPackets, rx_packets: rxPackets, connections_opened: UInt64(active),
            connections_active: active, connections_failed: failed, retransmits: retrans,
            resets_sent: resetsSent, resets_received: resetsReceived,
            rtt_p50_seconds: p50, rtt_p99_seconds: p99)
        x.drops = drops
        return x
    }

    static func interface(
        _ n: String, tx: UInt64, rx: UInt64, txPackets: UInt64 = 0, rxPackets: UInt64 = 0, txDrops: UInt64 = 0,
        rxDrops: UInt64 = 0
    ) -> APISnapshot.Interface {
        var x = APISnapshot.Interface(name: n, tx_bytes: tx, rx_bytes: rx, tx_packets: txPackets, rx_packets: rxPackets)
        x.tx_drops = txDrops
        x.rx_drops = rxDrops
        return x
    }

    static func connection(
        _ id: String, _ local: String, _ remote: String, pid: UInt32?, process: String?,
        sent: UInt64, received: UInt64, proto: String = "tcp", role: String = "client"
    )
        -> APISnapshot.Connection
    {
        APISnapshot.Connection(
            id: id, protocol_: proto, role: role, local: local, remote: remote, pid: pid,
            process: process, cgroup_id: nil, bytes_sent: sent, bytes_received: received,
            srtt_us: proto == "tcp" ? 500 : nil, state: "active")
    }

    static func flow(
        _ dir: String, _ src: String, _ dst: String, bytes: UInt64, proto: String = "tcp",
        interface: String = "eth0", service: String? = nil, peer: String? = nil
    ) -> APISnapshot.Flow {
        APISnapshot.Flow(
            interface: interface, direction: dir, protocol_: proto, src: src, dst: dst,
            packets: max(1, bytes / 1000), bytes: bytes, service: service, peer_service: peer)
    }

    static func snapshot(
        at ms: Int64, interval: Double = 1, uptime: Double = 3723,
        hooks: [(String, String)] = [("tc", "tcx"), ("tcp_state", "fentry"), ("udp_send", "fentry")],
        interfaces: [APISnapshot.Interface] = [], services: [APISnapshot.Service] = [],
        connections: [APISnapshot.Connection] = [], flows: [APISnapshot.Flow] = [],
        flowsLost: UInt64 = 0, eventsLost: UInt64 = 0
    ) -> APISnapshot {
        APISnapshot(
            version: 1, time_unix_ms: ms, host: "web-1", kernel: "6.18.0-amd64", flowmeter_version: "0.7.0",
            uptime_seconds: uptime, interval_seconds: interval,
            hooks: hooks.map { APISnapshot.Hook(hook: $0.0, mode: $0.1) },
            interfaces: interfaces, services: services, connections: connections, flows: flows,
            self_metrics: APISnapshot.SelfMetrics(
                flows_ring_lost: flowsLost, events_ring_lost: eventsLost,
                flow_table_entries: 0, flow_table_insert_failures: 0,
                series_dropped: 0, sockets_tracked: connections.count))
    }

    static let pod = "pod:3f2a9c1e-7b4d-4e0f-9a1b-2c3d4e5f6a7b"
    static let v6src = "[2001:db8::5]:443", v6dst = "[2001:db8:ffff::1234]:60123"

    /// Snapshot i (0...4) of the main fixture: a node running checkout,
    /// payments-api, coredns and sshd, one second apart.
    static func node(_ i: Int) -> APISnapshot {
        let n = UInt64(i)
        // eth0 receive varies per second: 2, 3, 1, 4 MB.
        let rxSteps: [UInt64] = [0, 2_000_000, 3_000_000, 1_000_000, 4_000_000]
        let eth0rx = 50_000_000 + rxSteps[...i].reduce(0, +)
        let interfaces = [
            interface(
                "eth0", tx: 10_000_000 + n * 1_250_000, rx: eth0rx, txPackets: 90_000 + n * 1_000,
                rxPackets: 120_000 + n * 2_500, rxDrops: i == 4 ? 12 : 5),
            interface(
                "lo", tx: 500_000 + n * 12_000, rx: 500_000 + n * 12_000, txPackets: 4_000 + n * 40,
                rxPackets: 4_000 + n * 40),
            interface("veth1a2b3c4d", tx: 0, rx: 0),
        ]
        let frontendTx: [UInt64] = [0, 250_000, 500_000, 600_000, 1_000_000]
        let services = [
            service(
                "checkout", "postgres", tx: 5_000_000 + n * 400_000, rx: 9_000_000 + n * 1_200_000,
                active: 12, retrans: i == 4 ? 4 : 3, p50: 0.00042, p99: 0.0031, drops: i == 4 ? 7 : 2),
            service(
                "checkout", "frontend", tx: 2_000_000 + frontendTx[i], rx: 700_000 + n * 90_000,
                active: 40, failed: 2, resetsReceived: 1, p50: 0.0012, p99: 0.0475),
            service(
                "payments-api", "unknown", tx: 80_000 + n * 5_000, rx: 60_000 + n * 3_000, active: 1,
                failed: i >= 3 ? 9 : 7, resetsSent: 3, resetsReceived: 1, p50: 0.085, p99: 1.25),
            service("coredns", "unknown", "udp", tx: 40_000 + n * 800, rx: 50_000 + n * 1_200),
            service(pod, "checkout", active: 3, p50: 0.000087, p99: 0.000999),
            service(
                "sshd", "unknown", tx: i >= 3 ? (n - 2) * 3_000 : 0, rx: i >= 3 ? (n - 2) * 1_000 : 0,
                active: i >= 3 ? 1 : 0),
        ]
        var connections = [
            connection(
                "a1", "10.0.0.5:40001", "10.0.1.20:5432", pid: 2101, process: "checkout",
                sent: 1_000_000 + n * 200_000, received: 3_000_000 + n * 600_000),
            connection(
                "a2", "10.0.0.5:40002", "10.0.1.20:5432", pid: 2101, process: "checkout",
                sent: 1_000_000 + n * 200_000, received: 3_000_000 + n * 600_000),
            connection(
                "b1", "10.0.0.5:8080", "10.0.2.7:51515", pid: 2101, process: "checkout",
                sent: 300_000 + n * 90_000, received: 800_000 + n * 250_000, role: "server"),
            connection(
                "c1", "10.0.0.5:43210", "203.0.113.9:443", pid: 3300, process: "payments-api",
                sent: 20_000 + n * 5_000, received: 10_000 + n * 3_000),
            connection(
                "c2", v6src, v6dst, pid: 3300, process: "payments-api", sent: 7_000, received: 2_000,
                role: "server"),
            connection(
                "d1", "10.0.0.5:53", "10.0.0.1:53000", pid: 812, process: "coredns",
                sent: 4_000 + n * 800, received: 5_000 + n * 1_200, proto: "udp", role: "server"),
        ]
        if i >= 3 {
            connections.append(
                connection(
                    "e1", "10.0.0.5:22", "192.0.2.44:60000", pid: 977, process: "sshd",
                    sent: (n - 2) * 3_000, received: (n - 2) * 1_000, role: "server"))
        }
        let wave: [UInt64] = [100_000, 300_000, 200_000, 400_000, 250_000]
        let flows = [
            flow("transmit", "10.0.0.5:40001", "10.0.1.20:5432", bytes: 210_000, service: "checkout", peer: "postgres"),
            flow("receive", "10.0.1.20:5432", "10.0.0.5:40001", bytes: 620_000, service: "checkout", peer: "postgres"),
            flow("transmit", "10.0.0.5:40002", "10.0.1.20:5432", bytes: wave[i], service: "checkout", peer: "postgres"),
            flow("receive", "10.0.2.7:51515", "10.0.0.5:8080", bytes: 260_000, service: "checkout", peer: "frontend"),
            flow("receive", "192.0.2.1:0", "10.0.0.5:0", bytes: i % 2 == 0 ? 84 : 0, proto: "icmp"),
            flow("transmit", v6src, v6dst, bytes: 1_500),
            flow(
                "receive", "10.0.0.1:53000", "10.0.0.5:53", bytes: 1_300, proto: "udp", service: "coredns",
                peer: "unknown"),
        ]
        return snapshot(
            at: t0 + Int64(i) * 1000, uptime: 3723 + Double(i), interfaces: interfaces,
            services: services, connections: connections, flows: flows.filter { $0.bytes > 0 },
            eventsLost: 3)
    }

    static var history: History { History((0...4).map(node)) }

    /// The main fixture with the DNS programs on (every pair carries DNS
    /// counters): checkout asks coredns 20 names a second, 2 of them fail from
    /// snapshot 3 on (a SERVFAIL burst); payments-api asked 5 a while ago, all
    /// failed, none within the window; the others ask nothing.
    static func dnsNode(_ i: Int) -> APISnapshot {
        var s = node(i)
        let n = UInt64(i)
        for j in s.services.indices {
            s.services[j].dns_requests = 0
            s.services[j].dns_errors = 0
        }
        s.services.append(
            service("checkout", "coredns", "udp", tx: 1_000 + n * 800, rx: 2_000 + n * 1_600))
        let k = s.services.count - 1
        s.services[k].dns_requests = 100 + n * 20
        s.services[k].dns_errors = i >= 3 ? (n - 2) * 2 : 0
        s.services[k].dns_p50_seconds = 0.00125
        s.services[2].dns_requests = 5
        s.services[2].dns_errors = 5
        s.services[2].dns_p50_seconds = 2.0
        return s
    }

    static var dnsHistory: History { History((0...4).map(dnsNode)) }

    static func screen(_ state: UIState = UIState(), _ h: History = history, _ w: Int, _ ht: Int) -> String {
        render(state, h, width: w, height: ht).lines.joined(separator: "\n")
    }

    static func state(_ view: View, _ keys: [Key] = [], history h: History = history) -> UIState {
        var s = UIState()
        s.observe(h)
        s.view = view
        for k in keys { _ = s.handle(k) }
        return s
    }

    static func keys(_ text: String) -> [Key] { text.map { Key.char($0) } }
}
