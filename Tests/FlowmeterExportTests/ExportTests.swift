import FlowmeterCore
import FlowmeterExport
import Foundation
import Testing

@Suite struct ExpositionTests {
    @Test func familiesHaveHelpTypeAndEscapedLabels() {
        var e = Exposition()
        e.family(
            .init(name: "x_total", kind: .counter, help: "a \\ b\nc"),
            [([("a", "q\"u\\o\nte")], 3), ([], 1.5)])
        #expect(e.text == "# HELP x_total a \\\\ b\\nc\n# TYPE x_total counter\nx_total{a=\"q\\\"u\\\\o\\nte\"} 3\nx_total 1.5\n")
    }

    /// The byte writer prints every value as the former String renderer
    /// did (integers below 1e15 without a fraction, anything else in Swift's
    /// shortest form), counts up to UInt64.max, and escapes label values of
    /// any script.
    @Test func valuesAndLabelsAreWrittenExactly() {
        var e = Exposition()
        e.family(
            .init(name: "v", kind: .gauge, help: "h"),
            [
                ([("a", "zero")], 0), ([("a", "negzero")], -0.0), ([("a", "neg")], -42), ([("a", "nine")], 9),
                ([("a", "ten")], 10), ([("a", "max")], 999_999_999_999_999), ([("a", "e15")], 1e15), ([("a", "frac")], 0.1),
                ([("a", "small")], 1e-05), ([("a", "nan")], .nan), ([("a", "inf")], .infinity), ([("a", "ninf")], -.infinity),
                ([("a", "ts")], 1_796_000_123.25), ([("k", "ü\\\n✓\"x"), ("b", "")], 7),
            ])
        #expect(
            e.text == """
                # HELP v h
                # TYPE v gauge
                v{a="zero"} 0
                v{a="negzero"} 0
                v{a="neg"} -42
                v{a="nine"} 9
                v{a="ten"} 10
                v{a="max"} 999999999999999
                v{a="e15"} 1000000000000000.0
                v{a="frac"} 0.1
                v{a="small"} 1e-05
                v{a="nan"} NaN
                v{a="inf"} +Inf
                v{a="ninf"} -Inf
                v{a="ts"} 1796000123.25
                v{k="ü\\\\\\n✓\\"x",b=""} 7

                """)
        var h = Exposition(openMetrics: true)
        h.family(
            MetricFamilyData(
                name: "d_seconds", kind: .histogram, help: "d",
                series: [
                    .init(
                        labels: [("s", "a")],
                        value: .histogram(.init(bounds: [0.0001, 1, 2.5], counts: [UInt64.max - 3, 1, 2, 0], sum: 0.5, count: UInt64.max))),
                    .init(labels: [], value: .histogram(.init(bounds: [1], counts: [0, 3], sum: 12, count: 3))),
                ]))
        #expect(
            h.body == """
                # HELP d_seconds d
                # TYPE d_seconds histogram
                d_seconds_bucket{s="a",le="0.0001"} 18446744073709551612
                d_seconds_bucket{s="a",le="1"} 18446744073709551613
                d_seconds_bucket{s="a",le="2.5"} 18446744073709551615
                d_seconds_bucket{s="a",le="+Inf"} 18446744073709551615
                d_seconds_sum{s="a"} 0.5
                d_seconds_count{s="a"} 18446744073709551615
                d_seconds_bucket{le="1"} 0
                d_seconds_bucket{le="+Inf"} 3
                d_seconds_sum 12
                d_seconds_count 3
                # EOF

                """)
        #expect(h.bytes == Array(h.text.utf8))
    }

    /// What /metrics sends (bytes) is the text, in both formats.
    @Test func servedBytesAreTheText() {
        var a = Accounting()
        a.hooks = [HookMode(hook: "tc", mode: "tcx")]
        a.services = ServiceAggregator(resolver: ServiceResolver(rules: [], peers: []), limits: .defaults)
        for om in [false, true] {
            let bytes = MetricsRenderer.renderBytes(a, version: "1.2.3", openMetrics: om)
            #expect(bytes == Array(MetricsRenderer.render(a, version: "1.2.3", openMetrics: om).utf8))
            #expect(String(decoding: bytes, as: UTF8.self).hasSuffix("# EOF\n") == om)
            #expect(String(decoding: bytes, as: UTF8.self).contains("# TYPE flowmeter_records counter\n") == om)
        }
    }

    @Test func renderedMetricsCoverTheCatalog() {
        var a = Accounting()
        a.add(
            [
                FlowRecord(
                    key: FlowKey(
                        source: .zero, destination: .zero, ifindex: 2, sourcePort: 0, destinationPort: 0,
                        direction: .transmit, family: .ipv4, ipProtocol: 6, flags: []),
                    stats: FlowStats(packets: 4, bytes: 4000, firstSeenNanos: 0, lastSeenNanos: 0, tcpFlags: 0), source: .flowMap)
            ],
            names: [2: "eth0"])
        a.hooks = [HookMode(hook: "tc", mode: "tcx")]
        a.kernel.flowsRingLost = 7
        a.socketTelemetry = true
        a.dropsCounted = true
        a.dnsCounted = true
        a.services = ServiceAggregator(resolver: ServiceResolver(rules: [], peers: []), limits: .defaults)
        let text = MetricsRenderer.render(a, version: "9.9.9")
        for f in MetricCatalog.all {
            #expect(text.contains("# HELP \(f.name) "), "\(f.name)")
            #expect(text.contains("# TYPE \(f.name) \(f.kind.rawValue)\n"), "\(f.name)")
        }
        #expect(text.contains("flowmeter_interface_io_bytes_total{interface=\"eth0\",direction=\"transmit\"} 4000\n"))
        #expect(text.contains("flowmeter_interface_packets_total{interface=\"eth0\",direction=\"transmit\"} 4\n"))
        #expect(!text.contains("direction=\"receive\""))
        #expect(text.contains("flowmeter_ringbuf_lost_records_total{ring=\"flows\"} 7\n"))
        #expect(text.contains("flowmeter_hook_info{hook=\"tc\",mode=\"tcx\"} 1\n"))
        #expect(text.contains("flowmeter_build_info{version=\"9.9.9\"} 1\n"))
        #expect(text.contains("flowmeter_records_total{source=\"flow_map\"} 1\n"))
    }
}

@Suite struct FlowLogTests {
    static let clock = ClockMapping(realtimeNanos: 1_796_000_000_000_000_000, monotonicNanos: 1_000)

    func decode(_ line: String) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }

    /// Drops go after packets and bytes, with the reasons in name order; a
    /// flow without any has neither key (older readers see the same line).
    @Test func flowDropsAreAddedCompatibly() throws {
        let r = FlowRecord(
            key: FlowKey(
                source: .v4(10, 0, 0, 1), destination: .v4(10, 0, 0, 2), ifindex: 3, sourcePort: 5000,
                destinationPort: 53, direction: .receive, family: .ipv4, ipProtocol: 17, flags: []),
            stats: FlowStats(packets: 3, bytes: 300, firstSeenNanos: 1_000, lastSeenNanos: 1_000, tcpFlags: 0),
            source: .flowMap)
        let plain = FlowLogEncoder.encode(r, interface: "eth0", clock: Self.clock)
        #expect(FlowLogEncoder.encode(r, interface: "eth0", clock: Self.clock, drops: [:]) == plain)
        #expect(!plain.contains("drop"))
        let line = FlowLogEncoder.encode(
            r, interface: "eth0", clock: Self.clock, drops: ["QDISC_DROP": 2, "NETFILTER_DROP": 1])
        #expect(
            line.contains(
                #""packets":3,"bytes":300,"drops":3,"drop_reasons":[{"reason":"NETFILTER_DROP","packets":1},{"reason":"QDISC_DROP","packets":2}],"first_seen""#
            ))
    }

    @Test func tcpFlowObject() throws {
        let r = FlowRecord(
            key: FlowKey(
                source: .v4(10, 0, 0, 1), destination: .v4(10, 0, 0, 2), ifindex: 3, sourcePort: 443,
                destinationPort: 51000, direction: .transmit, family: .ipv4, ipProtocol: 6, flags: []),
            stats: FlowStats(packets: 3, bytes: 4500, firstSeenNanos: 1_000, lastSeenNanos: 2_000_001_000, tcpFlags: 0x12),
            source: .flowMap)
        let line = FlowLogEncoder.encode(r, interface: "eth\"0", clock: Self.clock)
        #expect(!line.contains("\n"))
        let o = try decode(line)
        #expect(o["version"] as? Int == 1)
        #expect(o["type"] as? String == "flow")
        #expect(o["interface"] as? String == "eth\"0")
        #expect(o["ifindex"] as? Int == 3)
        #expect(o["direction"] as? String == "transmit")
        #expect(o["family"] as? String == "ipv4")
        #expect(o["protocol"] as? String == "tcp" && o["protocol_number"] as? Int == 6)
        #expect(o["src_addr"] as? String == "10.0.0.1" && o["dst_addr"] as? String == "10.0.0.2")
        #expect(o["src_port"] as? Int == 443 && o["dst_port"] as? Int == 51000)
        #expect(o["packets"] as? Int == 3 && o["bytes"] as? Int == 4500)
        #expect(o["tcp_flags"] as? String == "S." && o["tcp_flags_raw"] as? Int == 0x12)
        #expect(o["first_seen"] as? String == "2026-11-30T00:53:20.000000000Z")
        #expect(o["last_seen"] as? String == "2026-11-30T00:53:22.000000000Z")
        #expect(o["source"] as? String == "flow_map")
        #expect(o["flags"] == nil && o["service"] == nil)
        let joined = try decode(
            FlowLogEncoder.encode(
                r, interface: "eth0", clock: Self.clock,
                pair: ServicePair(service: "web", peer: "unknown", transport: "tcp")))
        #expect(joined["service"] as? String == "web" && joined["peer_service"] as? String == "unknown")
    }

    @Test func otherFamilyCarriesEthertypeNotAddresses() throws {
        let r = FlowRecord(
            key: FlowKey(
                source: .zero, destination: .zero, ifindex: 3, sourcePort: 0, destinationPort: 0x0806,
                direction: .receive, family: .other, ipProtocol: 0, flags: [.malformed]),
            stats: FlowStats(packets: 1, bytes: 28, firstSeenNanos: 1_000, lastSeenNanos: 1_000, tcpFlags: 0),
            source: .flowsRing)
        let o = try decode(FlowLogEncoder.encode(r, interface: "eth0", clock: Self.clock))
        #expect(o["ethertype"] as? Int == 0x0806)
        #expect(o["src_addr"] == nil && o["protocol"] == nil && o["tcp_flags"] == nil)
        #expect(o["flags"] as? [String] == ["malformed"])
        #expect(o["source"] as? String == "flows_ring")
    }

    @Test func writerAppendsLines() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("fm-flowlog-\(getpid()).jsonl").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let w = try FlowLogWriter(path: path)
        w.write(lines: ["{\"a\":1}", "{\"a\":2}"])
        w.write(lines: [])
        w.write(lines: ["{\"a\":3}"])
        w.close()
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n")
        #expect(throws: ValueError.self) { try FlowLogWriter(path: "/nonexistent-dir/x.jsonl") }
    }
}

@Suite struct ConnectionLogTests {
    static let clock = ClockMapping(realtimeNanos: 1_796_000_000_000_000_000, monotonicNanos: 0)

    static func event(_ kind: SocketEvent.Kind, owner: SocketOwner? = SocketOwner(tgid: 7, pid: 8, name: "nginx", cgroupID: 99))
        -> SocketEvent
    {
        SocketEvent(
            kind: kind, role: .server, family: .ipv6, ipProtocol: 6, reason: kind == .failed ? .timeout : .none,
            socketID: 1, timestampNanos: 3_000_000, startNanos: 1_000_000, owner: owner,
            localAddress: IPAddress16(bytes: [0xfd] + [UInt8](repeating: 0, count: 14) + [1]),
            remoteAddress: .v4(10, 0, 0, 9), localPort: 443, remotePort: 50000, srttMicros: 120,
            bytesSent: 10, bytesReceived: 20, retransmits: 1, resetsSent: 2, resetsReceived: 3, error: 110)
    }

    func decode(_ s: String) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: Any])
    }

    @Test func closeRecord() throws {
        let o = try decode(
            FlowLogEncoder.encodeConnection(Self.event(.close), cgroupPath: "/system.slice/nginx.service", clock: Self.clock))
        #expect(o["type"] as? String == "connection" && o["event"] as? String == "close" && o["version"] as? Int == 1)
        #expect(o["role"] as? String == "server" && o["family"] as? String == "ipv6" && o["protocol"] as? String == "tcp")
        #expect(o["local_addr"] as? String == "fd00::1" && o["local_port"] as? Int == 443)
        #expect(o["remote_addr"] as? String == "10.0.0.9" && o["remote_port"] as? Int == 50000)
        #expect(o["pid"] as? Int == 7 && o["tid"] as? Int == 8 && o["process"] as? String == "nginx")
        #expect(o["cgroup_id"] as? Int == 99 && o["cgroup_path"] as? String == "/system.slice/nginx.service")
        #expect(o["bytes_sent"] as? Int == 10 && o["bytes_received"] as? Int == 20 && o["srtt_us"] as? Int == 120)
        #expect(o["retransmits"] as? Int == 1 && o["resets_sent"] as? Int == 2 && o["resets_received"] as? Int == 3)
        #expect(o["duration_ms"] as? Double == 2.0)
        #expect(o["time"] as? String == "2026-11-30T00:53:20.003000000Z")
        #expect(o["reason"] == nil)
    }

    @Test func failedAndOwnerless() throws {
        let f = try decode(FlowLogEncoder.encodeConnection(Self.event(.failed), cgroupPath: nil, clock: Self.clock))
        #expect(f["reason"] as? String == "timeout" && f["errno"] as? Int == 110 && f["bytes_sent"] == nil)
        #expect(f["cgroup_path"] == nil && f["pid"] as? Int == 7)
        let o = try decode(FlowLogEncoder.encodeConnection(Self.event(.open, owner: nil), cgroupPath: nil, clock: Self.clock))
        #expect(o["event"] as? String == "open" && o["pid"] == nil && o["process"] == nil && o["bytes_sent"] == nil)
    }

    @Test func updateAndUDPRecords() throws {
        let u = try decode(FlowLogEncoder.encodeConnection(Self.event(.update), cgroupPath: nil, clock: Self.clock))
        #expect(u["event"] as? String == "update" && u["bytes_sent"] as? Int == 10 && u["srtt_us"] as? Int == 120)
        #expect(u["duration_ms"] as? Double == 2.0 && u["reason"] == nil)
        var e = Self.event(.close)
        e.ipProtocol = 17
        let d = try decode(FlowLogEncoder.encodeConnection(e, cgroupPath: nil, clock: Self.clock))
        #expect(d["protocol"] as? String == "udp" && d["bytes_sent"] as? Int == 10 && d["bytes_received"] as? Int == 20)
        // RTT, retransmits and resets are TCP's: a UDP record has none.
        #expect(d["srtt_us"] == nil && d["retransmits"] == nil && d["resets_sent"] == nil)
    }
}

@Suite struct ExportPlumbingTests {
    @Test func flowLogRotatesBySizeAndKeepsN() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fm-rot-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
            .path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/f.jsonl"
        let w = try FlowLogWriter(path: path, maxBytes: 100, keep: 2)
        let line = String(repeating: "x", count: 39)  // + a digit + the newline: 41 bytes
        for i in 0..<7 { #expect(w.write(lines: [line + "\(i)"])) }
        w.close()
        // 7 batches of 41 bytes, at most 2 per 100-byte file: f (1), f.1 (2), f.2 (2); the oldest 2 are gone.
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        #expect(files == ["f.jsonl", "f.jsonl.1", "f.jsonl.2"])
        func lastChars(_ name: String) throws -> String {
            try String(contentsOfFile: dir + "/" + name, encoding: .utf8).split(separator: "\n").map { String($0.last!) }.joined()
        }
        #expect(try lastChars("f.jsonl") == "6" && lastChars("f.jsonl.1") == "45" && lastChars("f.jsonl.2") == "23")
        #expect(w.rotations == 3)
        // reopen(): after a move, the next batch starts a new file by the same name.
        try FileManager.default.moveItem(atPath: path, toPath: dir + "/moved")
        w.reopen()
        #expect(w.write(lines: ["after"]))
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "after\n")
    }

    @Test func otlpEndpoints() throws {
        let e = try OTLPEndpoint(parsing: "http://collector:4318/v1/metrics")
        #expect(e.host == "collector" && e.port == 4318 && e.path == "/v1/metrics" && !e.tls)
        let d = try OTLPEndpoint(parsing: "http://[::1]:4318")
        #expect(d.host == "::1" && d.port == 4318 && d.path == "/v1/metrics" && d.description == "http://[::1]:4318/v1/metrics")
        #expect(try OTLPEndpoint(parsing: "http://h").port == 80)
        let t = try OTLPEndpoint(parsing: "https://h")
        #expect(t.tls && t.port == 443 && t.description == "https://h:443/v1/metrics")
        let g = try OTLPEndpoint(parsing: "https://collector:4317", for: .grpc)
        #expect(g.tls && g.port == 4317 && g.path == "")
        #expect(throws: ValueError.self) { try OTLPEndpoint(parsing: "https://collector:4317/v1/metrics", for: .grpc) }
        #expect(throws: ValueError.self) { try OTLPEndpoint(parsing: "ftp://h:1/") }
        #expect(throws: ValueError.self) { try OTLPEndpoint(parsing: "http://h:99999/") }
        #expect(throws: ValueError.self) { try OTLPEndpoint(parsing: "http://:80/") }
        #expect(throws: ValueError.self) { try OTLPEndpoint(parsing: "https://user:pw@h/") }
    }
}
