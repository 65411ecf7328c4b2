// flowmeter-bench: benchmarks, all but one on the real kernel (the flow
// log's encoding, FlowLogBench.swift, needs none). Run by tools/bench (as
// root), never by the test suite. Prints a table; every ratio in it is
// measured within one run, interleaving the variants, because these machines
// are shared and noisy.
import FlowmeterBPF
import FlowmeterCore
import Foundation

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.isEmpty ? .nan : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
}

func ethernet(_ type: UInt16) -> [UInt8] { [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, UInt8(type >> 8), UInt8(type & 0xff)] }

/// A TCP segment with `payload` bytes, timestamps option, ports and flag byte as given (0x10: ACK).
func tcp(sport: UInt16, dport: UInt16, payload: Int, flags: UInt8 = 0x10) -> [UInt8] {
    var h: [UInt8] = [
        UInt8(sport >> 8), UInt8(sport & 0xff), UInt8(dport >> 8), UInt8(dport & 0xff), 0, 0, 0, 1, 0, 0, 0, 1, 0x80, flags, 0xff, 0xff, 0,
        0, 0, 0,
    ]
    h += [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]
    return h + [UInt8](repeating: 0xab, count: payload)
}

func ipv4TCP(sport: UInt16, payload: Int = 1448, flags: UInt8 = 0x10) -> [UInt8] {
    let l4 = tcp(sport: sport, dport: 443, payload: payload, flags: flags)
    let total = 20 + l4.count
    return ethernet(0x0800) + [0x45, 0, UInt8(total >> 8), UInt8(total & 0xff), 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2] + l4
}

func ipv6TCP(sport: UInt16, payload: Int = 1428) -> [UInt8] {
    let l4 = tcp(sport: sport, dport: 443, payload: payload)
    var ip: [UInt8] = [0x60, 0, 0, 0, UInt8(l4.count >> 8), UInt8(l4.count & 0xff), 6, 64]
    ip += [0xfd] + [UInt8](repeating: 0, count: 14) + [1]
    ip += [0xfd] + [UInt8](repeating: 0, count: 14) + [2]
    return ethernet(0x86DD) + ip + l4
}

/// Appends one figure as a JSON line to the file named by $BENCH_FIGURES, if
/// set: tools/bench collects these lines into out/bench/results.json. The
/// ids, units, directions and targets are defined once, in
/// tools/bench_results.py, which rejects an id it does not know; this side
/// only gives the per-round samples and the figure as printed (a ratio of
/// medians is not the median of the per-round ratios).
func emitFigure(_ id: String, samples: [Double], value: Double? = nil) {
    guard let path = ProcessInfo.processInfo.environment["BENCH_FIGURES"], !path.isEmpty else { return }
    var obj: [String: Any] = ["id": id, "samples": samples]
    if let value { obj["value"] = value }
    guard let data = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]),
        let fh = FileHandle(forWritingAtPath: path)
            ?? {
                FileManager.default.createFile(atPath: path, contents: nil)
                return FileHandle(forWritingAtPath: path)
            }()
    else {
        FileHandle.standardError.write(Data("flowmeter-bench: cannot write figure \(id) to \(path)\n".utf8))
        return
    }
    fh.seekToEndOfFile()
    fh.write(data + Data("\n".utf8))
    fh.closeFile()
}

/// Per-packet cost of the tc program against the empty classifier, with
/// BPF_PROG_TEST_RUN's own timing (kernel ns per run, averaged over `repeat`).
///
/// With `baseline` (an object file of another build of bpf/flowmeter_tc.bpf.c,
/// e.g. an older commit's: see docs/benchmarks.md), its programs run in the
/// same rounds, interleaved with the embedded ones, so the change between two
/// versions is measured within one run against the same empty classifier.
func tcCost(rounds: Int, repeatCount: Int32, baseline: String?) throws {
    let prog = try FlowAccountingProgram(flowTableSize: 65536)
    let old = try baseline.map { try BPFObjectFile(path: $0, mapSizes: ["flows_a": 65536, "flows_b": 65536]) }
    let v4 = ipv4TCP(sport: 40000), v6 = ipv6TCP(sport: 40000)
    // Warm the flows so the repeated runs measure an existing flow.
    func warm() throws {
        for p in [v4, v6] {
            _ = try prog.testRun(.ingress, packet: p, ifindex: 1)
            _ = try old?.testRun("flowmeter_ingress", packet: p, ifindex: 1)
        }
    }
    try warm()
    var t: [String: [Double]] = [:]
    var nextPort: UInt16 = 1
    func add(_ k: String, _ ns: UInt32) { t[k, default: []].append(Double(ns)) }
    for _ in 0..<rounds {
        add("noop", try prog.testRun(.noop, packet: v4, ifindex: 1, repeat: repeatCount).nanoseconds)
        add("v4", try prog.testRun(.ingress, packet: v4, ifindex: 1, repeat: repeatCount).nanoseconds)
        if let old { add("old v4", try old.testRun("flowmeter_ingress", packet: v4, ifindex: 1, repeat: repeatCount).nanoseconds) }
        add("v6", try prog.testRun(.ingress, packet: v6, ifindex: 1, repeat: repeatCount).nanoseconds)
        if let old { add("old v6", try old.testRun("flowmeter_ingress", packet: v6, ifindex: 1, repeat: repeatCount).nanoseconds) }
        // A new flow can only be measured one run at a time (the second run of
        // the same packet finds the flow); single runs carry more timer overhead,
        // so they are compared with single runs of the empty classifier.
        var singles: [String: [Double]] = [:]
        for _ in 0..<200 {
            singles["noop", default: []].append(Double(try prog.testRun(.noop, packet: v4, ifindex: 1).nanoseconds))
            singles["new", default: []].append(
                Double(try prog.testRun(.ingress, packet: ipv4TCP(sport: nextPort), ifindex: 1).nanoseconds))
            if let old {
                singles["old new", default: []].append(
                    Double(try old.testRun("flowmeter_ingress", packet: ipv4TCP(sport: nextPort), ifindex: 1).nanoseconds))
            }
            // A SYN opens its flow: the program inserts it without a lookup first.
            // The port from the other end of the range, so no flow repeats.
            let syn = ipv4TCP(sport: 65535 &- nextPort, payload: 0, flags: 0x02)
            singles["syn", default: []].append(Double(try prog.testRun(.ingress, packet: syn, ifindex: 1).nanoseconds))
            if let old {
                singles["old syn", default: []].append(
                    Double(try old.testRun("flowmeter_ingress", packet: syn, ifindex: 1).nanoseconds))
            }
            nextPort &+= 1
        }
        for (k, xs) in singles { t["single " + k, default: []].append(median(xs)) }
        _ = try prog.evict()  // keep the table from filling up across rounds
        try warm()
    }
    let base = median(t["noop"]!), baseSingle = median(t["single noop"]!)
    func row(_ name: String, _ k: String, _ b: Double) {
        guard let xs = t[k] else { return }
        print(
            name.padding(toLength: 44, withPad: " ", startingAt: 0)
                + String(format: "%10.1f ns %8.2fx", median(xs), median(xs) / b))
    }
    print("tc program per-packet cost (BPF_PROG_TEST_RUN, median of \(rounds) rounds, repeat \(repeatCount))")
    if let baseline { print("baseline: \(baseline) (\"old\" rows), interleaved with this build's programs") }
    print("case".padding(toLength: 44, withPad: " ", startingAt: 0) + "    median   vs empty")
    row("empty classifier", "noop", base)
    row("IPv4 TCP, existing flow", "v4", base)
    row("IPv4 TCP, existing flow (old)", "old v4", base)
    row("IPv6 TCP, existing flow", "v6", base)
    row("IPv6 TCP, existing flow (old)", "old v6", base)
    row("empty classifier, single runs", "single noop", baseSingle)
    row("IPv4 TCP, new flow, single runs", "single new", baseSingle)
    row("IPv4 TCP, new flow, single runs (old)", "single old new", baseSingle)
    row("IPv4 TCP SYN, new flow, single runs", "single syn", baseSingle)
    row("IPv4 TCP SYN, new flow, single runs (old)", "single old syn", baseSingle)
    let noop = t["noop"]!, noopSingle = t["single noop"]!
    let existing4 = t["v4"]!, existing6 = t["v6"]!, newFlow = t["single new"]!
    let perRound = { (xs: [Double], bs: [Double]) in zip(xs, bs).map { $0 / $1 } }
    emitFigure("tc.empty_ns", samples: noop)
    emitFigure("tc.existing_flow_ns", samples: existing4)
    emitFigure("tc.existing_flow_ratio", samples: perRound(existing4, noop), value: median(existing4) / base)
    emitFigure("tc.existing_flow_v6_ratio", samples: perRound(existing6, noop), value: median(existing6) / base)
    emitFigure("tc.new_flow_ns", samples: newFlow)
    emitFigure("tc.new_flow_ratio", samples: perRound(newFlow, noopSingle), value: median(newFlow) / baseSingle)
    // The verdict against the target is printed by tools/bench_results.py
    // (tools/bench record), where the targets are defined.
}

// MARK: ring drain and aggregation

/// The C reference consumers (bench/ring_consumer.c), one long-lived child
/// driven over pipes, so its drains interleave with ours and none of them
/// includes a process start.
final class CConsumer {
    let process = Process()
    let toChild = Pipe(), fromChild = Pipe()
    private var buffered: [UInt8] = []

    init(path: String, producer: String, records: Int) throws {
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = [producer, String(records)]
        process.standardInput = toChild
        process.standardOutput = fromChild
        try process.run()
        let hello = try line().split(separator: " ")
        guard hello.count == 3, hello[0] == "ready", Int(hello[1]) == records, Int(hello[2]) == RingBench.flows else {
            throw BenchError("ring_consumer answered \(hello.joined(separator: " ")); want ready \(records) \(RingBench.flows)")
        }
    }

    private func line() throws -> String {
        while true {
            if let nl = buffered.firstIndex(of: 10) {
                defer { buffered.removeFirst(nl + 1) }
                return String(decoding: buffered[..<nl], as: UTF8.self)
            }
            let chunk = fromChild.fileHandleForReading.availableData
            if chunk.isEmpty { throw BenchError("ring_consumer exited (status \(process.isRunning ? 0 : process.terminationStatus))") }
            buffered += chunk
        }
    }

    /// One fill and timed drain in the child: the drain's CPU and wall nanoseconds.
    func run(_ variant: String) throws -> RingBench.Drain {
        toChild.fileHandleForWriting.write(Data((variant + "\n").utf8))
        let f = try line().split(separator: " ")
        guard f.count == 7, f[0] == variant, let cpu = Double(f[1]), let wall = Double(f[6]) else {
            throw BenchError("ring_consumer answered \(f.joined(separator: " ")) to \(variant)")
        }
        return RingBench.Drain(cpu: cpu, wall: wall)
    }

    func stop() {
        toChild.fileHandleForWriting.write(Data("q\n".utf8))
        process.waitUntilExit()
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

enum RingBench {
    /// As in bench/ring_producer.bpf.c.
    static let flows = 65536
    /// Its program and ring, by String: that object is built by bench/build.sh
    /// and opened from a path (BPFObjectFile), so it has no generated names.
    static let producerProgram = "ring_produce", producerRing = "bench_flows"
    static let recordBytes = (ABI.flowEventSize + 8 + 7) & ~7  // ring header + record, 8-aligned

    static func monotonicNanos() -> UInt64 { nanos(CLOCK_MONOTONIC) }

    static func nanos(_ clock: clockid_t) -> UInt64 {
        var ts = timespec()
        clock_gettime(clock, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// One drain's time. Compared by `cpu`, the draining thread's CPU clock,
    /// on both sides (bench/ring_consumer.c times its drains the same way):
    /// on a machine shared with builds the wall clock mostly measured how
    /// long a drain waited for its CPU, and the longer drain waits more.
    struct Drain {
        var cpu: Double
        var wall: Double
    }

    /// Times `body` on this thread by both clocks.
    static func timed(_ body: () throws -> Void) rethrows -> Drain {
        let w0 = nanos(CLOCK_MONOTONIC), c0 = nanos(CLOCK_THREAD_CPUTIME_ID)
        try body()
        let c1 = nanos(CLOCK_THREAD_CPUTIME_ID), w1 = nanos(CLOCK_MONOTONIC)
        return Drain(cpu: Double(c1 - c0), wall: Double(w1 - w0))
    }

    /// Keeps this process and the C child (which inherits it) on one CPU:
    /// test_run produces on the caller's CPU, so every consumer drains what
    /// was just written on its own core, and none is moved in mid-drain.
    static func pin(cpu: Int) {
        // glibc declares sched_setaffinity only under _GNU_SOURCE, which Swift's Glibc module lacks.
        typealias SetAffinity = @convention(c) (pid_t, Int, UnsafeRawPointer) -> Int32
        var set = cpu_set_t()
        withUnsafeMutableBytes(of: &set) { $0[cpu / 8] |= UInt8(1 << (cpu % 8)) }
        guard let sym = dlsym(nil, "sched_setaffinity"),
            withUnsafeBytes(of: &set, { unsafeBitCast(sym, to: SetAffinity.self)(0, $0.count, $0.baseAddress!) }) == 0
        else {
            FileHandle.standardError.write(Data("flowmeter-bench: could not pin to CPU \(cpu); results will be noisier\n".utf8))
            return
        }
    }

    static func run(producer: String, cConsumer: String, records: Int, rounds: Int, cpu: Int, only: String) throws {
        guard records > 0, records % flows == 0, records <= 1 << 24 else {
            throw BenchError("--records must be a multiple of \(flows), at most 16777216")
        }
        signal(SIGPIPE, SIG_IGN)  // a child that died is reported by its answer, not by killing us
        pin(cpu: cpu)
        var ringBytes = Int(sysconf(Int32(_SC_PAGESIZE)))
        while ringBytes <= records * recordBytes { ringBytes <<= 1 }
        let obj = try BPFObjectFile(path: producer, mapSizes: [producerRing: ringBytes])
        let ringFD = try obj.mapFD(producerRing)
        let packet = [UInt8](repeating: 0, count: 64)
        func fill() throws { _ = try obj.testRun(producerProgram, packet: packet, repeat: Int32(records)) }
        // Two readers of one ring (the consumer position is the kernel's, shared):
        // the bare RingReader for (b), the daemon's FlowsRing for (c).
        let reader = try RingReader<Void>(ringFD: ringFD, name: "bench") { _ in () }
        let flowsRing = try FlowsRing(ringFD: ringFD)
        // (f): the same with a smaller chunk per consume and fold (4,096 records,
        // 360 KB, inside this machine's 1 MB L2), beside the default in one run.
        let smallChunkRing = try FlowsRing(ringFD: ringFD, chunk: 1 << 12)
        let child = try CConsumer(path: cConsumer, producer: producer, records: records)
        defer { child.stop() }

        let wantPackets = UInt64(records) / 2 * 5, wantBytes = UInt64(records) * 575 + UInt64(records) / 2
        let names: [UInt32: String] = [1: "eth0", 2: "eth1", 3: "eth2", 4: "eth3"]

        func countOnly() throws -> Drain {
            try fill()
            var got: (records: [Void], rejected: UInt64) = ([], 0)
            let time = timed {
                reader.consumeNow()
                got = reader.take()
            }
            guard got.records.count == records, got.rejected == 0 else {
                throw BenchError("b: \(got.records.count) records, \(got.rejected) rejected; want \(records)")
            }
            return time
        }

        // Passed back every round, as the collector passes its table every tick.
        var table = FlowTable()
        func aggregate() throws -> Drain { try aggregate(flowsRing, "c") }
        func aggregate(_ flowsRing: FlowsRing, _ variant: String) throws -> Drain {
            try fill()
            var acc = Accounting()
            acc.services = ServiceAggregator(resolver: ServiceResolver(rules: [], peers: []), limits: .defaults)
            table.removeAll()  // not timed, as the C table's reset is not (take's own is then a no-op)
            let now = monotonicNanos()
            // What Collector.tick does with the ring's records, up to the flow log.
            var batch: [FlowRecord] = [], rejected: UInt64 = 0, pairs: [ServicePair?] = []
            let time = timed {
                flowsRing.consumeNow()
                (batch, rejected) = flowsRing.take(summingInto: &table)
                pairs = acc.count(flows: table, names: names, now: now)
            }
            let entries = table.entries
            let totals = acc.interfaces.values.flatMap(\.values)
            let sums = (
                entries.reduce(0) { $0 + $1.packets }, entries.reduce(0) { $0 + $1.bytes },
                totals.reduce(0) { $0 + $1.packets }, totals.reduce(0) { $0 + $1.bytes },
                acc.services?.pairs.values.reduce(0) { $0 + $1.packets.reduce(0, +) } ?? 0
            )
            guard batch.count == records, rejected == 0, table.records == records, table.count == flows,
                table.recordsFromRing == UInt64(records),
                pairs.count == flows, pairs.allSatisfy({ $0 != nil }), acc.records[.flowsRing] == UInt64(records),
                sums == (wantPackets, wantBytes, wantPackets, wantBytes, wantPackets)
            else {
                throw BenchError(
                    "\(variant): \(batch.count) records (\(rejected) rejected), \(table.count) flows, "
                        + "packets/bytes in the table, interfaces, pairs: \(sums); "
                        + "want \(records) records, \(flows) flows, \(wantPackets) packets, \(wantBytes) bytes")
            }
            return time
        }

        let variants: [(key: String, run: () throws -> Drain)] = [
            ("a", { try child.run("a") }), ("b", countOnly), ("c", aggregate), ("d", { try child.run("d") }),
            ("e", { try child.run("e") }), ("f", { try aggregate(smallChunkRing, "f") }),
        ].filter { only.contains($0.0) }
        for v in variants { _ = try v.run() }  // warm-up: caches, the readers' buffers, the child's table
        var times: [String: [Double]] = [:], walls: [String: [Double]] = [:]
        for r in 0..<rounds {
            // Rotate the order each round, so no variant always runs first or after the same one.
            for i in 0..<variants.count {
                let v = variants[(i + r) % variants.count]
                let d = try v.run()
                times[v.key, default: []].append(d.cpu)
                walls[v.key, default: []].append(d.wall)
            }
        }

        let n = Double(records)
        func perRecord(_ k: String) -> Double { median(times[k] ?? []) / n }
        print(
            "ring drain and aggregation: \(records) flows-ring records (\(flows) flows) per drain, "
                + "median of \(rounds) interleaved rounds, pinned to CPU \(cpu), the draining thread's CPU time")
        print("variant".padding(toLength: 58, withPad: " ", startingAt: 0) + "  ns/record  Mrecords/s  ratio")
        func row(_ name: String, _ k: String, _ ref: String) {
            let ns = perRecord(k)
            print(
                name.padding(toLength: 58, withPad: " ", startingAt: 0)
                    + String(format: "%11.2f %11.1f %6.2fx", ns, 1e3 / ns, perRecord(ref) / ns) + "  vs \(ref)")
        }
        row("(a) C, libbpf ring_buffer__consume, count", "a", "a")
        row("(b) flowmeterd RingReader, consume + take, count", "b", "a")
        row("(d) C, consume + open-addressing flow table", "d", "d")
        row("(c) flowmeterd FlowsRing + Accounting.count", "c", "d")
        if only.contains("e") { row("(e) C, (d) + keeps every record (not the target)", "e", "e") }
        if only.contains("f") { row("(f) as (c), chunks of 4,096 records (not the default)", "f", "d") }
        print("(c) does more than (d): it also keeps every record (the flow log's), sums per interface and per service pair")
        print(
            "wall clock, ns/record (includes waiting for the CPU): "
                + ["a", "b", "d", "c", "e", "f"].filter(only.contains).map { k in
                    String(format: "(\(k)) %.2f", median(walls[k] ?? []) / Double(records))
                }
                .joined(separator: ", "))
        let b = perRecord("a") / perRecord("b"), c = perRecord("d") / perRecord("c")
        // Per-round ratios pair the variants of one round (each ran once per round).
        let ns = { (k: String) in (times[k] ?? []).map { $0 / n } }
        let ratios = { (ref: String, k: String) in zip(ns(ref), ns(k)).map { $0 / $1 } }
        if "abcd".allSatisfy(only.contains) {
            emitFigure("ring.count_c_ns", samples: ns("a"))
            emitFigure("ring.count_flowmeterd_ns", samples: ns("b"))
            emitFigure("ring.count_ratio", samples: ratios("a", "b"), value: b)
            emitFigure("ring.aggregate_c_ns", samples: ns("d"))
            emitFigure("ring.aggregate_flowmeterd_ns", samples: ns("c"))
            emitFigure("ring.aggregate_ratio", samples: ratios("d", "c"), value: c)
        }
        print(String(format: "(a) / (b): %.2fx, (d) / (c): %.2fx (targets: tools/bench_results.py)", b, c))
        if only.contains("e") && only.contains("c") {
            print(String(format: "(e) / (c): %.2fx (both keep every record)", perRecord("e") / perRecord("c")))
        }
    }
}

let args = CommandLine.arguments.dropFirst()
let usage = """
    usage: flowmeter-bench [tc [ROUNDS] [--baseline OBJ.o]]
           flowmeter-bench ring [ROUNDS] --producer OUT/ring_producer.bpf.o --c-consumer OUT/ring_consumer
                                [--records N] [--cpu C] [--only abcdef]
           flowmeter-bench flowlog [ROUNDS] [--records N]
           flowmeter-bench scrape [ROUNDS] [--series N]
           flowmeter-bench otlp SERIES ROUNDS HTTP_PORT GRPC_PORT TLS_HTTP_PORT TLS_GRPC_PORT CA_FILE
      tc: --baseline runs another build of flowmeter_tc.bpf.c in the same rounds (bench/tc_baseline.sh REV builds one)
      ring: bash bench/build.sh OUT builds both; ROUNDS default 15; N a multiple of 65536,
      default 1048576; C the CPU to pin to (default the last); --only runs some variants (profiling)
      flowlog: the flow log's encoder, Codable against the former hand-written one (no root needed);
      ROUNDS default 15, N records default 100000
      scrape: one /metrics render with N service series (default 10000), time and allocations,
      against the former String renderer (no root needed); ROUNDS default 15
      otlp: CPU per OTLP export, the former hand-written POST against the library transports
      (receivers on those loopback ports; tools/bench otlp starts them)

    """
/// The arguments tc, scrape and flowlog take, in any order: a bare positive
/// number is the rounds, and `flag VALUE` the subcommand's one option.
/// Anything else prints the usage and exits.
func roundsAndOption(_ args: ArraySlice<String>, flag: String) -> (rounds: Int?, option: String?) {
    var rest = Array(args), rounds: Int?, option: String?
    while let a = rest.first {
        if a == flag, rest.count >= 2 {
            option = rest[1]
            rest.removeFirst(2)
        } else if let n = Int(a), n > 0 {
            rounds = n
            rest.removeFirst()
        } else {
            FileHandle.standardError.write(Data(usage.utf8)); exit(2)
        }
    }
    return (rounds, option)
}

/// An option's value that must be a positive count; nil when not given.
func positive(_ value: String?) -> Int? {
    guard let value else { return nil }
    guard let n = Int(value), n > 0 else {
        FileHandle.standardError.write(Data(usage.utf8)); exit(2)
    }
    return n
}

// OTLP export cost: no root, no kernel.
if args.first == "otlp" {
    do { try OTLPBench.run(Array(args.dropFirst())) } catch {
        FileHandle.standardError.write(Data("flowmeter-bench: \(error)\n".utf8)); exit(1)
    }
    exit(0)
}
// The /metrics render needs neither root nor the kernel.
if args.first == "scrape" {
    let (rounds, option) = roundsAndOption(args.dropFirst(), flag: "--series")
    let series = positive(option) ?? 10_000
    do { try ScrapeBench.run(series: series, rounds: rounds ?? 15) } catch {
        FileHandle.standardError.write(Data("flowmeter-bench: \(error)\n".utf8)); exit(1)
    }
    exit(0)
}
// The flow log's encoding needs neither root nor the kernel.
if args.first == "flowlog" {
    let (rounds, option) = roundsAndOption(args.dropFirst(), flag: "--records")
    FlowLogBench.run(records: positive(option) ?? 100_000, rounds: rounds ?? 15)
    exit(0)
}
guard getuid() == 0 else {
    FileHandle.standardError.write(Data("flowmeter-bench: needs root (loads BPF programs)\n".utf8)); exit(1)
}
do {
    switch args.first ?? "tc" {
    case "tc":
        let (rounds, baseline) = roundsAndOption(args.dropFirst(), flag: "--baseline")
        try tcCost(rounds: rounds ?? 15, repeatCount: 1_000_000, baseline: baseline)
    case "ring":
        // Flags with a value, in any order; a bare number is the rounds (as for tc).
        var opts: [String: String] = [:]
        var rest = Array(args.dropFirst()), bad = false
        while let a = rest.first {
            if a.hasPrefix("--"), rest.count >= 2 {
                opts[String(a.dropFirst(2))] = rest[1]
                rest.removeFirst(2)
            } else if Int(a) != nil, opts["rounds"] == nil {
                opts["rounds"] = a
                rest.removeFirst()
            } else {
                bad = true
                break
            }
        }
        guard !bad, let producer = opts["producer"], let consumer = opts["c-consumer"],
            Set(opts.keys).isSubset(of: ["producer", "c-consumer", "records", "rounds", "cpu", "only"])
        else {
            FileHandle.standardError.write(Data(usage.utf8)); exit(2)
        }
        try RingBench.run(
            producer: producer, cConsumer: consumer,
            records: opts["records"].flatMap(Int.init) ?? 1 << 20,
            rounds: opts["rounds"].flatMap(Int.init) ?? 15,
            cpu: opts["cpu"].flatMap(Int.init) ?? max(0, possibleCPUs - 1),
            only: opts["only"] ?? "abcdef")
    default:
        FileHandle.standardError.write(Data(usage.utf8)); exit(2)
    }
} catch {
    FileHandle.standardError.write(Data("flowmeter-bench: \(error)\n".utf8)); exit(1)
}
