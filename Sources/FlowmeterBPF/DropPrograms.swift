import CLibbpf
import FlowmeterABI
import FlowmeterCore
import Foundation

/// The packet-drop program (bpf/flowmeter_drops.bpf.c) on skb:kfree_skb:
/// the tp_btf twin where the kernel takes it, else the classic tracepoint;
/// chosen by trying (load and attach), never by kernel version. Optional: a
/// kernel that refuses both loses drops and nothing else.
public final class DropPrograms: @unchecked Sendable {
    public enum Mode: String, Sendable, CaseIterable {
        case tpBTF = "tp_btf"
        case tracepoint
    }

    private typealias P = BPFNames.FlowmeterDrops.Program
    private typealias Maps = BPFNames.FlowmeterDrops.Map

    static func program(_ m: Mode) -> BPFProgramName { m == .tpBTF ? P.fm_drop_tp_btf : P.fm_drop_tp }
    static func programType(_ m: Mode) -> ProgramType { m == .tpBTF ? .tpBTF : .tracepoint }

    /// The twin attached.
    public let mode: Mode
    /// The running kernel's reason names (empty names: a kernel without
    /// reasons, 5.10-5.16, where every drop is "unknown").
    public let reasons: DropReasonNames
    /// Whether the kernel's tracepoint carries a reason (enum skb_drop_reason in its BTF).
    public let hasReasons: Bool
    /// A twin left out on the way (tp_btf refused: the classic tracepoint serves).
    public let refusals: [ProgramRefusal]
    let object: BPFObject
    private var link: OpaquePointer?
    let dropsFD: Int32
    let overflowFD: Int32
    let statsFD: Int32

    /// The names of `enum skb_drop_reason` in the running kernel's BTF; nil
    /// when the kernel has no such enum (before 5.17) or no BTF.
    public static func kernelReasons() -> DropReasonNames? {
        KernelBTF.with { btf in btf.flatMap(reasons(in:)) }
    }

    private static func reasons(in btf: OpaquePointer) -> DropReasonNames? {
        let id = btf__find_by_name_kind(btf, "skb_drop_reason", UInt32(BTF_KIND_ENUM))
        guard id > 0, let t = btf__type_by_id(btf, UInt32(id)), let members = btf_enum(t) else { return nil }
        var list: [(name: String, value: UInt32)] = []
        for i in 0..<Int(btf_vlen(t)) {
            let m = members[i]
            guard let name = btf__name_by_offset(btf, m.name_off) else { continue }
            list.append((String(cString: name), UInt32(bitPattern: m.val)))
        }
        return DropReasonNames(enumerators: list)
    }

    private init(mode: Mode, refusals: [ProgramRefusal]) throws {
        let obj = try BPFObject(BPFNames.FlowmeterDrops.self)
        let want = Self.program(mode)
        var p: OpaquePointer? = nil
        while let next = bpf_object__next_program(obj.handle, p) {
            bpf_program__set_autoload(next, String(cString: bpf_program__name(next)) == want.name)
            p = next
        }
        try obj.load()
        guard let l = bpf_program__attach(try obj.program(want)) else {
            throw BPFError("attach \(want.name) (\(want.section))", errno: fm_errno())
        }
        object = obj
        link = l
        self.mode = mode
        self.refusals = refusals
        let names = Self.kernelReasons()
        reasons = names ?? DropReasonNames(enumerators: [])
        hasReasons = names != nil
        dropsFD = try obj.mapFD(Maps.fm_drops)
        overflowFD = try obj.mapFD(Maps.fm_drops_overflow)
        statsFD = try obj.mapFD(Maps.fm_drop_stats)
    }

    /// Loads and attaches the first twin the kernel takes (tp_btf, then the
    /// classic tracepoint; `only` forces one). Throws, naming each twin's
    /// failure, when none can be had.
    public static func load(only: Mode? = nil) throws -> DropPrograms {
        var reasons: [String] = [], refusals: [ProgramRefusal] = []
        for mode in Mode.allCases where only == nil || only == mode {
            let prog = program(mode)
            let probe = ProgramTypes.probe(programType(mode))
            if !probe.available {
                let r = ProgramRefusal(
                    program: prog.name, section: prog.section, errno: probe.errno, detail: probe.detail,
                    consequence: mode == .tpBTF ? "drops use the classic tracepoint instead" : "packet drops are not counted",
                    loses: mode != .tpBTF)
                refusals.append(r)
                reasons.append("\(mode.rawValue): \(probe.detail)")
                continue
            }
            do {
                return try DropPrograms(mode: mode, refusals: refusals)
            } catch let e as BPFError {
                reasons.append("\(mode.rawValue): \(e.summary)")
                refusals.append(
                    ProgramRefusal(
                        program: prog.name, section: prog.section, errno: e.errno, detail: e.summary,
                        consequence: mode == .tpBTF ? "drops use the classic tracepoint instead" : "packet drops are not counted",
                        loses: mode != .tpBTF))
            }
        }
        let tracefs = ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"]
        let hint =
            tracefs.contains { FileManager.default.fileExists(atPath: $0) }
            ? "" : " (tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing)"
        throw BPFError("no skb:kfree_skb hook (\(reasons.joined(separator: "; ")))\(hint)", errno: 0)
    }

    /// Every count the kernel holds, summed over CPUs (cumulative since
    /// load): both tables, the overflow's keys (without 5-tuple) added to
    /// the same key of the main table, if it has one.
    public func readCounts() throws -> [DropKey: UInt64] {
        var out: [DropKey: UInt64] = [:]
        try read(dropsFD, FM_DROP_TABLE_SIZE, into: &out)
        try read(overflowFD, FM_DROP_OVERFLOW_TABLE_SIZE, into: &out)
        return out
    }

    private func read(_ fd: Int32, _ size: Int32, into out: inout [DropKey: UInt64]) throws {
        var key = fm_drop_key(), next = fm_drop_key()
        let values = UnsafeMutablePointer<UInt64>.allocate(capacity: possibleCPUs)
        defer { values.deallocate() }
        var first = true
        // Keys removed under the walk restart it: bounded like the socket table's walk.
        for _ in 0..<(4 * Int(size)) {
            let r = first ? bpf_map_get_next_key(fd, nil, &next) : bpf_map_get_next_key(fd, &key, &next)
            first = false
            if r != 0 {
                let e = r < -1 ? -r : fm_errno()
                if e == ENOENT { break }
                throw BPFError.from("read the drop table", result: r)
            }
            key = next
            if bpf_map_lookup_elem(fd, &key, values) != 0 { continue }
            let sum = (0..<possibleCPUs).reduce(UInt64(0)) { $0 &+ values[$1] }
            out[DropKey(abi: key), default: 0] &+= sum
        }
    }

    /// Removes keys (idle ones: the table stays bounded by what is active).
    public func remove(_ keys: [DropKey]) {
        for k in keys {
            var abi = k.abi
            _ = bpf_map_delete_elem(dropsFD, &abi)
            if k.flow.family == .other { _ = bpf_map_delete_elem(overflowFD, &abi) }
        }
    }

    /// Drops the program kept, and of those the ones the table had no room for.
    public func readCounters() throws -> (seen: UInt64, tableFull: UInt64) {
        let values = UnsafeMutablePointer<UInt64>.allocate(capacity: possibleCPUs)
        defer { values.deallocate() }
        func read(_ idx: UInt32) throws -> UInt64 {
            var key = idx
            let r = bpf_map_lookup_elem(statsFD, &key, values)
            if r != 0 { throw BPFError.from("read drop counter \(idx)", result: r) }
            return (0..<possibleCPUs).reduce(0) { $0 &+ values[$1] }
        }
        return (try read(UInt32(FM_DROP_STAT_SEEN.rawValue)), try read(UInt32(FM_DROP_STAT_TABLE_FULL.rawValue)))
    }

    /// Detaches the hook: nothing more is counted.
    public func detach() {
        if let l = link { bpf_link__destroy(l) }
        link = nil
    }

    deinit { detach() }

    /// The inode number of this process's network namespace: drops on
    /// interfaces of other namespaces (whose ifindexes mean other devices)
    /// are not counted on this one's interfaces.
    public static func ownNetns() -> UInt32 {
        var st = stat()
        guard stat("/proc/self/ns/net", &st) == 0 else { return 0 }
        return UInt32(truncatingIfNeeded: st.st_ino)
    }
}

extension DropKey {
    init(abi k: fm_drop_key) {
        self.init(
            flow: FlowKey(
                source: IPAddress16(tuple: k.saddr), destination: IPAddress16(tuple: k.daddr),
                ifindex: k.ifindex, sourcePort: k.sport, destinationPort: k.dport,
                direction: Direction(rawValue: k.direction) ?? .receive,
                family: Family(rawValue: k.family) ?? .other, ipProtocol: k.protocol, flags: []),
            netns: k.netns, reason: k.reason)
    }

    var abi: fm_drop_key {
        var k = fm_drop_key()
        withUnsafeMutableBytes(of: &k.saddr) { $0.copyBytes(from: flow.source.bytes) }
        withUnsafeMutableBytes(of: &k.daddr) { $0.copyBytes(from: flow.destination.bytes) }
        k.reason = reason
        k.ifindex = flow.ifindex
        k.netns = netns
        k.sport = flow.sourcePort
        k.dport = flow.destinationPort
        k.direction = flow.direction.rawValue
        k.family = flow.family.rawValue
        k.protocol = flow.ipProtocol
        return k
    }
}
