import FlowmeterTestSupport
import Foundation
import Testing

@testable import FlowmeterCore

/// WireJSON: the one JSON writer. Its API formats are held, byte for byte,
/// to what wrote those documents before it (JSONEncoder for the snapshot;
/// JSONEncoder, JSONSerialization and string joining for the stream), on
/// random snapshots; the flow log's bytes are held by FlowLogGoldenTests.
@Suite struct WireJSONTests {
    // MARK: Random snapshots

    /// Text with every kind of character the formats treat differently.
    /// `bom: false` leaves out U+FEFF, for the comparisons with the former
    /// stream, which lost it (see `formerStreamDroppedByteOrderMarks`).
    static func text(_ r: inout SeededRandom, bom: Bool = true) -> String {
        let pool: [UnicodeScalar] =
            Array("aZ09 -_:/.\"\\{}[],".unicodeScalars)
            + [0x0, 0x1, 0x8, 0x9, 0xa, 0xb, 0xc, 0xd, 0x1f, 0x7f, 0x80, 0xe9, 0x2028, 0x2029, 0xfffd, 0x1f642]
            .map { UnicodeScalar($0)! }
            + (bom ? [UnicodeScalar(0xfeff)!] : [])
        var s = String.UnicodeScalarView()
        for _ in 0..<r.int(0...12) { s.append(r.pick(pool)) }
        return String(s)
    }

    /// Doubles of every form: integral, short, 17 digits, exponents either
    /// way, negative zero, and the stream's positional cases.
    static func double(_ r: inout SeededRandom) -> Double {
        switch r.int(0...9) {
        case 0: return r.pick([0, -0.0, 1, 0.5, 2, 1e-7, 5e-05, 1e16, 1e21, 86_400.125])
        case 1: return Double.random(in: 0..<0.0002, using: &r)  // loopback RTT quantiles
        case 2: return 0.0001 * Double.random(in: 0..<1, using: &r) / Double(r.int(1...7))
        case 3: return Double(r.int(0...100_000_000)) / 1000  // uptime_seconds
        case 4: return Double.random(in: 1e15...1e23, using: &r)
        case 5: return -Double.random(in: 0..<0.001, using: &r)
        case 6: return Double(r.int(1...10)) / 10
        default:
            var d: Double
            repeat { d = Double(bitPattern: r.next()) } while !d.isFinite
            return d
        }
    }

    static func u64(_ r: inout SeededRandom) -> UInt64 {
        r.chance(0.1) ? r.pick([0, UInt64(Int64.max), UInt64.max]) : UInt64(r.int(0...1_000_000_000))
    }

    static func snapshot(_ r: inout SeededRandom, bom: Bool = true) -> APISnapshot {
        func some<T>(_ r: inout SeededRandom, _ make: (inout SeededRandom) -> T) -> T? { r.chance(0.5) ? make(&r) : nil }
        func text(_ r: inout SeededRandom) -> String { Self.text(&r, bom: bom) }
        return APISnapshot(
            version: 1, time_unix_ms: Int64(r.int(0...Int.max)), host: text(&r), kernel: text(&r), flowmeter_version: text(&r),
            uptime_seconds: double(&r), interval_seconds: double(&r),
            hooks: (0..<r.int(0...2)).map { _ in .init(hook: text(&r), mode: text(&r)) },
            interfaces: (0..<r.int(0...3)).map { _ in
                .init(name: text(&r), tx_bytes: u64(&r), rx_bytes: u64(&r), tx_packets: u64(&r), rx_packets: u64(&r))
            },
            services: (0..<r.int(0...3)).map { _ in
                .init(
                    service: text(&r), peer_service: text(&r), transport: text(&r), tx_bytes: u64(&r), rx_bytes: u64(&r),
                    tx_packets: u64(&r), rx_packets: u64(&r), connections_opened: u64(&r), connections_active: r.int(-2...9),
                    connections_failed: u64(&r), retransmits: u64(&r), resets_sent: u64(&r), resets_received: u64(&r),
                    rtt_p50_seconds: some(&r, double), rtt_p99_seconds: some(&r, double))
            },
            connections: (0..<r.int(0...3)).map { _ in
                .init(
                    id: text(&r), protocol_: text(&r), role: text(&r), local: text(&r), remote: text(&r),
                    pid: some(&r) { UInt32(truncatingIfNeeded: $0.next()) }, process: some(&r, text),
                    cgroup_id: some(&r, u64), bytes_sent: u64(&r), bytes_received: u64(&r),
                    srtt_us: some(&r) { UInt32(truncatingIfNeeded: $0.next()) }, state: text(&r))
            },
            flows: (0..<r.int(0...3)).map { _ in
                .init(
                    interface: text(&r), direction: text(&r), protocol_: text(&r), src: text(&r), dst: text(&r),
                    packets: u64(&r), bytes: u64(&r), service: some(&r, text), peer_service: some(&r, text))
            },
            self_metrics: .init(
                flows_ring_lost: u64(&r), events_ring_lost: u64(&r), flow_table_entries: u64(&r),
                flow_table_insert_failures: u64(&r), series_dropped: u64(&r), sockets_tracked: r.int(0...60_000)))
    }

    /// The next second's snapshot: some top-level keys change, most do not.
    static func next(_ s: APISnapshot, _ r: inout SeededRandom, bom: Bool = true) -> APISnapshot {
        let fresh = snapshot(&r, bom: bom)
        var n = s
        n.time_unix_ms = s.time_unix_ms &+ 1000
        n.uptime_seconds = double(&r)
        if r.chance(0.2) { n.hooks = fresh.hooks }
        if r.chance(0.5) { n.interfaces = fresh.interfaces }
        if r.chance(0.5) { n.services = fresh.services }
        if r.chance(0.5) { n.connections = fresh.connections }
        if r.chance(0.5) { n.flows = fresh.flows }
        if r.chance(0.3) { n.self_metrics = fresh.self_metrics }
        if r.chance(0.1) { n.host = fresh.host }
        return n
    }

    // MARK: Byte for byte as before

    @Test func snapshotIsJSONEncodersBytes() {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var run = FuzzRun("WireJSON.api vs JSONEncoder", cases: 1000, seconds: 10)
        _ = run.run { r, i, run in
            let s = Self.snapshot(&r)
            let want = String(decoding: (try? enc.encode(s)) ?? Data(), as: UTF8.self)
            run.note(i, want)
            if s.json() != want { run.fail(i, "differs: \(s.json())", input: want) }
        }
        run.report()
    }

    @Test func streamIsTheFormerStreamsBytes() throws {
        var run = FuzzRun("SnapshotStream vs its JSONSerialization version", cases: 300, seconds: 10)
        _ = run.run { r, i, run in
            var now = SnapshotStream(), before = FormerStream(), receiver = SnapshotStream()
            var s = Self.snapshot(&r, bom: false)
            for _ in 0..<4 {
                let want = before.line(for: s)
                run.note(i, want)
                let got = now.line(for: s)
                if got != want { run.fail(i, "line differs: \(Self.firstDifference(got, want))", input: want); return }
                // And the receiver makes the same snapshot of it (-0 came over as 0, which == -0).
                if (try? receiver.apply(Data(got.utf8))) != s { run.fail(i, "the receiver's snapshot differs", input: got); return }
                s = Self.next(s, &r, bom: false)
            }
        }
        run.report()
    }

    /// Where two texts part: the bytes around the first difference, each way.
    static func firstDifference(_ a: String, _ b: String) -> String {
        let x = Array(a.utf8), y = Array(b.utf8)
        let i = zip(x, y).prefix { $0 == $1 }.count
        func around(_ z: [UInt8]) -> String {
            String(reflecting: String(decoding: z[max(0, i - 60)..<min(z.count, i + 40)], as: UTF8.self))
        }
        return "at byte \(i): got \(around(x)), want \(around(y))"
    }

    /// The one difference from the former stream, on purpose: it parsed each
    /// line back with JSONSerialization, which takes a U+FEFF at the start
    /// of a string (or right after an escape) for a byte-order mark and drops
    /// it; now the stream carries the text as the snapshot does.
    @Test func formerStreamDroppedByteOrderMarks() throws {
        var s = SnapshotStreamTests.snap(ms: 1000, txBytes: 1)
        s.host = "\u{feff}h\n\u{feff}"
        var now = SnapshotStream(), before = FormerStream(), rx = SnapshotStream()
        #expect(before.line(for: s).contains(#""host":"h\n","#))
        let line = now.line(for: s)
        #expect(line.contains("\"host\":\"\u{feff}h\\n\u{feff}\","))
        #expect(try rx.apply(Data(line.utf8)).host == s.host)
    }

    /// A delta lists what changed, and version and stream always.
    @Test func deltaLines() throws {
        var tx = SnapshotStream()
        let a = SnapshotStreamTests.snap(ms: 1000, txBytes: 10)
        var b = a
        b.time_unix_ms = 2000
        #expect(tx.line(for: a).hasPrefix(#"{"connections":[],"flowmeter_version":"v","flows":[],"hooks":[{"hook":"tc","mode":"tcx"}],"#))
        #expect(tx.line(for: b) == #"{"stream":"delta","time_unix_ms":2000,"version":1}"#)
        #expect(tx.line(for: b) == #"{"stream":"delta","version":1}"#)
        #expect(tx.document["time_unix_ms"]?.bytes == Array("2000".utf8))
    }

    // MARK: The formats

    struct Sample: Encodable {
        var zeta = "z"
        var alpha: String
        var number = 1.5
        var missing: Int? = nil
        var list = [3, 1, 2]
        enum CodingKeys: String, CodingKey { case zeta, alpha, number, missing, list }
    }

    @Test func keyOrderAndEscapes() throws {
        let s = Sample(alpha: "q\"b\\s/\u{8}\u{c}\n\r\t\u{1}\u{1f}\u{7f}\u{2028}\u{2029}\u{feff}é🙂")
        #expect(
            try WireJSON.api.string(s)
                == #"{"alpha":"q\"b\\s/\b\f\n\r\t\u0001\u001f"# + "\u{7f}\u{2028}\u{2029}\u{feff}é🙂"
                + #"","list":[3,1,2],"number":1.5,"zeta":"z"}"#)
        #expect(
            try WireJSON.flowLog.string(s)
                == #"{"zeta":"z","alpha":"q\"b\\s/\u0008\u000c\n\r\t\u0001\u001f"# + "\u{7f}\u{2028}\u{2029}\u{feff}é🙂"
                + #"","number":1.5,"list":[3,1,2]}"#)
        #expect(
            try WireJSON.apiError.string(s)
                == #"{"zeta":"z","alpha":"q\"b\\s/\u0008\u000c\u000a\u000d\u0009\u0001\u001f\u007f\u2028\u2029\ufeffé🙂","number":1.5,"list":[3,1,2]}"#
        )
        // Invisibles at the very end, and bytes that only start like them.
        #expect(try WireJSON.apiError.string("\u{2028}") == #""\u2028""#)
        #expect(try WireJSON.apiError.string("\u{2027}\u{202f}\u{fefe}\u{feff}") == "\"\u{2027}\u{202f}\u{fefe}\\ufeff\"")
    }

    @Test func streamDoubles() throws {
        let cases: [(Double, String, String)] = [
            (2, "2", "2"), (0.5, "0.5", "0.5"), (-0.0, "-0", "0"), (5e-05, "5e-05", "5e-05"),
            (3.7000000000000005e-05, "3.7000000000000005e-05", "0.000037000000000000005"),
            (1.2345678901234567e+20, "1.2345678901234567e+20", "123456789012345670000"),
            (-1.234567890123456e-05, "-1.234567890123456e-05", "-0.00001234567890123456"),
            (1.234567890123456e-05, "1.234567890123456e-05", "1.234567890123456e-05"),
            (1.2345678901234568e-300, "1.2345678901234568e-300", "1.2345678901234568e-300"),
            (0.12345678901234566, "0.12345678901234566", "0.12345678901234566"),
        ]
        for (d, shortest, stream) in cases {
            #expect(try WireJSON.api.string(d) == shortest, "\(d)")
            #expect(try WireJSON.apiStream.string(d) == stream, "\(d)")
        }
        #expect(throws: EncodingError.self) { try WireJSON.api.encode(Double.nan) }
        #expect(throws: EncodingError.self) { try WireJSON.flowLog.encode([1, .infinity]) }
    }

    struct Nested: Encodable {
        var b = 1
        var a: [String: Int] = ["y": 2, "x": 1]
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: AnyKey.self)
            try c.encode(b, forKey: AnyKey("b"))
            var inner = c.nestedContainer(keyedBy: AnyKey.self, forKey: AnyKey("n"))
            try inner.encodeNil(forKey: AnyKey("z"))
            try inner.encode(true, forKey: AnyKey("t"))
            var list = inner.nestedUnkeyedContainer(forKey: AnyKey("l"))
            try list.encode("s")
            var deeper = list.nestedUnkeyedContainer()
            try deeper.encode(Int8(-8))
            try c.encode(a, forKey: AnyKey("a"))  // closes n and everything in it
            try c.encode(Empty(), forKey: AnyKey("e"))
            try c.encode(WireJSON.Fragment.fixed(2, decimals: 3), forKey: AnyKey("f"))
        }
    }
    struct Empty: Encodable { func encode(to encoder: any Encoder) throws {} }
    struct AnyKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    @Test func containers() throws {
        #expect(try WireJSON.api.string(Nested()) == #"{"a":{"x":1,"y":2},"b":1,"e":{},"f":2.000,"n":{"l":["s",[-8]],"t":true,"z":null}}"#)
        #expect(
            try WireJSON.flowLog.string(Nested(a: ["x": 1]))
                == #"{"b":1,"n":{"z":null,"t":true,"l":["s",[-8]]},"a":{"x":1},"e":{},"f":2.000}"#)
        #expect(try WireJSON.api.string([[UInt64.max], [], [0]]) == "[[18446744073709551615],[],[0]]")
        #expect(try WireJSON.api.string(Int64.min) == "-9223372036854775808")
        #expect(try WireJSON.api.string("/") == #""/""#)
        #expect(try WireJSON.api.string(Optional<Int>.none) == "null")
        let members = try WireJSON.api.members(Sample(alpha: "a"))
        #expect(members.map(\.key) == ["alpha", "list", "number", "zeta"])
        #expect(members.map { String(decoding: $0.value.bytes, as: UTF8.self) } == [#""a""#, "[3,1,2]", "1.5", #""z""#])
        // A fragment is WireJSON's own; another encoder refuses it.
        #expect(throws: EncodingError.self) { try JSONEncoder().encode([WireJSON.Fragment.fixed(1, decimals: 1)]) }
    }
}

/// The stream's sender as it was before WireJSON: the snapshot through
/// JSONEncoder, parsed back with JSONSerialization and each top-level value
/// written again. Kept as the reference for the stream's bytes.
struct FormerStream {
    var document: [String: String] = [:]

    static func json(_ s: APISnapshot) -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? String(decoding: enc.encode(s), as: UTF8.self)) ?? "{}"
    }

    static func parts(_ json: Data) throws -> [String: String] {
        guard let obj = try JSONSerialization.jsonObject(with: json, options: [.fragmentsAllowed]) as? [String: Any] else {
            throw ValueError("a stream line is not a JSON object")
        }
        var out: [String: String] = [:]
        for (k, v) in obj {
            let d = try JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .fragmentsAllowed, .withoutEscapingSlashes])
            out[k] = String(decoding: d, as: UTF8.self)
        }
        return out
    }

    static func object(_ parts: [String: String]) -> String {
        "{"
            + parts.keys.sorted().map { k in
                let key = String(
                    decoding: (try? JSONSerialization.data(withJSONObject: k, options: [.fragmentsAllowed])) ?? Data(), as: UTF8.self)
                return key + ":" + parts[k]!
            }.joined(separator: ",") + "}"
    }

    mutating func line(for snapshot: APISnapshot) -> String {
        guard let now = try? Self.parts(Data(Self.json(snapshot).utf8)) else { return Self.json(snapshot) }
        var out: [String: String]
        if document.isEmpty {
            out = now
            out["stream"] = "\"full\""
        } else {
            out = now.filter { document[$0.key] != $0.value }
            out["version"] = now["version"]
            out["stream"] = "\"delta\""
        }
        document = now
        return Self.object(out)
    }
}
