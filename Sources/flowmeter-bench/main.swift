// flowmeter-bench: benchmarks that need the real kernel. Run by tools/bench
// (as root), never by the test suite. Prints a table; every ratio in it is
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

/// A TCP segment with `payload` bytes, timestamps option, ports as given.
func tcp(sport: UInt16, dport: UInt16, payload: Int) -> [UInt8] {
    var h: [UInt8] = [UInt8(sport >> 8), UInt8(sport & 0xff), UInt8(dport >> 8), UInt8(dport & 0xff), 0, 0, 0, 1, 0, 0, 0, 1, 0x80, 0x10, 0xff, 0xff, 0, 0, 0, 0]
    h += [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]
    return h + [UInt8](repeating: 0xab, count: payload)
}

func ipv4TCP(sport: UInt16, payload: Int = 1448) -> [UInt8] {
    let l4 = tcp(sport: sport, dport: 443, payload: payload)
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

/// Per-packet cost of the tc program against the empty classifier, with
/// BPF_PROG_TEST_RUN's own timing (kernel ns per run, averaged over `repeat`).
func tcCost(rounds: Int, repeatCount: Int32) throws {
    let prog = try FlowAccountingProgram(flowTableSize: 65536)
    let v4 = ipv4TCP(sport: 40000), v6 = ipv6TCP(sport: 40000)
    // Warm the flows so the repeated runs measure an existing flow.
    _ = try prog.testRun(.ingress, packet: v4, ifindex: 1)
    _ = try prog.testRun(.ingress, packet: v6, ifindex: 1)
    var noop: [Double] = [], existing4: [Double] = [], existing6: [Double] = [], newFlow: [Double] = [], noopSingle: [Double] = []
    var nextPort: UInt16 = 1
    for _ in 0..<rounds {
        noop.append(Double(try prog.testRun(.noop, packet: v4, ifindex: 1, repeat: repeatCount).nanoseconds))
        existing4.append(Double(try prog.testRun(.ingress, packet: v4, ifindex: 1, repeat: repeatCount).nanoseconds))
        existing6.append(Double(try prog.testRun(.ingress, packet: v6, ifindex: 1, repeat: repeatCount).nanoseconds))
        // A new flow can only be measured one run at a time (the second run of
        // the same packet finds the flow); single runs carry more timer overhead,
        // so they are compared with single runs of the empty classifier.
        var singles: [Double] = [], noops: [Double] = []
        for _ in 0..<200 {
            noops.append(Double(try prog.testRun(.noop, packet: v4, ifindex: 1).nanoseconds))
            singles.append(Double(try prog.testRun(.ingress, packet: ipv4TCP(sport: nextPort), ifindex: 1).nanoseconds))
            nextPort &+= 1
        }
        newFlow.append(median(singles))
        noopSingle.append(median(noops))
        _ = try prog.evict() // keep the table from filling up across rounds
        _ = try prog.testRun(.ingress, packet: v4, ifindex: 1)
        _ = try prog.testRun(.ingress, packet: v6, ifindex: 1)
    }
    let base = median(noop), baseSingle = median(noopSingle)
    func row(_ name: String, _ xs: [Double], _ b: Double) {
        print(name.padding(toLength: 44, withPad: " ", startingAt: 0)
              + String(format: "%10.1f ns %8.2fx", median(xs), median(xs) / b))
    }
    print("tc program per-packet cost (BPF_PROG_TEST_RUN, median of \(rounds) rounds, repeat \(repeatCount))")
    print("case".padding(toLength: 44, withPad: " ", startingAt: 0) + "    median   vs empty")
    row("empty classifier", noop, base)
    row("IPv4 TCP, existing flow", existing4, base)
    row("IPv6 TCP, existing flow", existing6, base)
    row("empty classifier, single runs", noopSingle, baseSingle)
    row("IPv4 TCP, new flow, single runs", newFlow, baseSingle)
}

let args = CommandLine.arguments.dropFirst()
guard getuid() == 0 else {
    FileHandle.standardError.write(Data("flowmeter-bench: needs root (loads BPF programs)\n".utf8)); exit(1)
}
do {
    switch args.first ?? "tc" {
    case "tc":
        let rounds = args.dropFirst().first.flatMap(Int.init) ?? 15
        try tcCost(rounds: rounds, repeatCount: 1_000_000)
    default:
        FileHandle.standardError.write(Data("usage: flowmeter-bench [tc [ROUNDS]]\n".utf8)); exit(2)
    }
} catch {
    FileHandle.standardError.write(Data("flowmeter-bench: \(error)\n".utf8)); exit(1)
}
