import CLibbpf
import FlowmeterABI
import FlowmeterCore
import Foundation

/// The tc flow-accounting programs (bpf/flowmeter_tc.bpf.c), loaded, with
/// their maps. Attaching is `TCAttacher`'s job; this type owns the programs,
/// evicts the flow tables, and reads the kernel-side counters.
///
/// Not thread-safe: one owner (the collector) calls evict/readCounters.
public final class FlowAccountingProgram: @unchecked Sendable {
    public enum Program: CaseIterable, Sendable {
        case ingress
        case egress
        /// The empty classifier in the same object (benchmark baseline).
        case noop

        var name: BPFProgramName {
            switch self {
            case .ingress: P.flowmeter_ingress
            case .egress: P.flowmeter_egress
            case .noop: P.flowmeter_noop
            }
        }
    }

    /// The object's programs and maps, as BPFEmbed named them.
    private typealias P = BPFNames.FlowmeterTc.Program
    private typealias Maps = BPFNames.FlowmeterTc.Map

    /// Whether `kernelName` (a program's name as the kernel reports it, e.g.
    /// for the filter at our tc handle) is one of this object's programs.
    static func isOurs(kernelName: String) -> Bool {
        BPFNames.FlowmeterTc.programs.contains { $0.kernelName == kernelName }
    }

    let object: BPFObject
    public let ingressFD: Int32
    public let egressFD: Int32
    let noopFD: Int32
    let outerFD: Int32
    let tableFDs: (a: Int32, b: Int32)
    let statsFD: Int32
    public let flowsRingFD: Int32
    public let flowTableSize: Int
    /// Which table slot 0 of the outer map points at (the one being written).
    private var activeIsA = true
    /// nil until probed; false once the kernel refused batch ops.
    public private(set) var batchOps: Bool?
    /// Whether the maps were adopted from a pin directory (--persist) rather
    /// than created by this load.
    public let adopted: Bool
    /// An adopted run's leftovers, handed out with the first eviction: what
    /// the table not being written still held (a run killed in the middle
    /// of its drain leaves part of it there).
    private var carried: [FlowRecord] = []

    /// Default flows per table: FM_DEFAULT_FLOW_TABLE_SIZE (65536) where that
    /// keeps the two preallocated per-CPU tables under about 64 MiB of kernel
    /// memory, else the largest power of two that does (at least 4096), so the
    /// default stays cheap on many-core nodes.
    public static func defaultFlowTableSize(cpus: Int = possibleCPUs) -> Int {
        let perFlow = 2 * (cpus * ((MemoryLayout<fm_flow_stats>.size + 7) & ~7) + 96)
        var size = ABI.defaultFlowTableSize
        while size > 4096 && size * perFlow > 64 << 20 { size /= 2 }
        return size
    }

    /// Kernel memory the two tables take at `size` flows each (approximate:
    /// per-CPU values plus ~96 bytes of element and key per flow).
    public static func tableMemoryBytes(size: Int, cpus: Int = possibleCPUs) -> Int {
        2 * size * (cpus * ((MemoryLayout<fm_flow_stats>.size + 7) & ~7) + 96)
    }

    /// Opens and loads the object. `flowTableSize` flows per table (two tables),
    /// `ringBytes` for the "flows" ring (power of two, multiple of the page size).
    ///
    /// With `pins` (--persist), maps pinned there by an earlier run of this
    /// ABI (`PinDirectory.inspect() == .compatible`) are adopted: the
    /// programs load against them, keeping their sizes, their contents and
    /// which table is being written. Otherwise the maps are created and then
    /// pinned there, the ABI record last.
    public init(
        flowTableSize: Int = FlowAccountingProgram.defaultFlowTableSize(), ringBytes: Int = ABI.defaultFlowsRingBytes,
        pins: PinDirectory? = nil
    ) throws {
        guard flowTableSize >= 1, flowTableSize <= 1 << 24 else {
            throw BPFError("flow table size \(flowTableSize) is out of range (1 ... 16777216)", errno: EINVAL)
        }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        guard ringBytes >= page, ringBytes & (ringBytes - 1) == 0 else {
            throw BPFError("ring size \(ringBytes) must be a power of two of at least \(page) bytes", errno: EINVAL)
        }
        let adopt = pins?.inspect() == .compatible
        func openAndLoad(smallTemplate: Bool) throws -> BPFObject {
            let obj = try BPFObject(BPFNames.FlowmeterTc.self)
            for t in [Maps.flows_a, Maps.flows_b] {
                let r = bpf_map__set_max_entries(try obj.map(t), UInt32(flowTableSize))
                if r != 0 { throw BPFError.from("set size of flow table \(t)", result: r) }
            }
            let r = bpf_map__set_max_entries(try obj.map(Maps.flows), UInt32(ringBytes))
            if r != 0 { throw BPFError.from("set size of ring \(Maps.flows)", result: r) }
            let template = smallTemplate ? try Self.smallInnerTemplate(for: try obj.map(Maps.flow_tables)) : -1
            defer { if template >= 0 { close(template) } }
            if let pins, adopt { try pins.adopt(PinDirectory.mapNames, into: obj, required: true) }
            try obj.load()
            return obj
        }
        let obj: BPFObject
        do {
            obj = try openAndLoad(smallTemplate: true)
        } catch let e as BPFError where e.errno == EINVAL && e.detail.contains(Maps.flow_tables.name) {
            // Kernels 5.15 to 6.1 also compare the timer field's offset, which
            // is -ENOENT for a table created with BTF (flows_a) and -EINVAL
            // for our template, created without: the slot is refused (seen on
            // Debian's 6.1 in tools/vmtest). Load again with libbpf's own
            // template; such a kernel pays the old start-up cost.
            obj = try openAndLoad(smallTemplate: false)
        }
        object = obj
        adopted = adopt
        ingressFD = try obj.programFD(Program.ingress.name)
        egressFD = try obj.programFD(Program.egress.name)
        noopFD = try obj.programFD(Program.noop.name)
        outerFD = try obj.mapFD(Maps.flow_tables)
        tableFDs = (try obj.mapFD(Maps.flows_a), try obj.mapFD(Maps.flows_b))
        statsFD = try obj.mapFD(Maps.fm_stats)
        flowsRingFD = try obj.mapFD(Maps.flows)
        self.flowTableSize = adopt ? Int(Self.mapInfo(tableFDs.a).max_entries) : flowTableSize
        if adopt {
            // The table the programs write stays the one the last run left
            // them writing; the other one holds what a killed run had not
            // drained yet, which goes into the first interval.
            var key: UInt32 = 0
            var id: UInt32 = 0
            if bpf_map_lookup_elem(outerFD, &key, &id) == 0 && id != 0 {
                activeIsA = id == Self.mapInfo(tableFDs.a).id
            } else {
                try point(at: tableFDs.a)
            }
            carried = try drain(tableFD: activeIsA ? tableFDs.b : tableFDs.a)
        } else {
            // libbpf put flows_a into slot 0 at load. Checked rather than
            // written again: an update of a map-in-map slot waits for an RCU
            // grace period (10-16 ms of every start, measured with strace -T).
            var key: UInt32 = 0
            var id: UInt32 = 0
            if bpf_map_lookup_elem(outerFD, &key, &id) != 0 || id != Self.mapInfo(tableFDs.a).id {
                try point(at: tableFDs.a)
            }
            if let pins {
                for m in PinDirectory.mapNames { try pins.pin(try obj.mapFD(m), as: m.name) }
                try pins.pinABIRecord()
            }
        }
    }

    /// libbpf creates the outer map's inner-map template from its BTF
    /// definition before the outer map, and closes it right after: a third
    /// preallocated per-CPU table of the compile-time default size (65,536
    /// flows), as slow to create as flows_a itself, a third of the tc load
    /// (strace -T: 260, 298 and 157 ms for flows_a, the template and flows_b
    /// on a loaded 2-CPU machine). The kernel checks a hash table against the
    /// template by type, key and value size and flags, not by its entries
    /// (`bpf_map_meta_equal`), so a template of one entry, created here and
    /// handed to libbpf in place of its own, serves and costs nothing. (libbpf
    /// 1.1 cannot resize its template: it has no object, and crashes.) Other
    /// inner types (arrays compare their size) keep libbpf's. Returns the
    /// template's descriptor, to close after the load, or -1.
    static func smallInnerTemplate(for outer: OpaquePointer) throws -> Int32 {
        guard let inner = bpf_map__inner_map(outer) else { return -1 }
        let type = bpf_map__type(inner)
        let hashes: Set<UInt32> = [
            BPF_MAP_TYPE_HASH.rawValue, BPF_MAP_TYPE_PERCPU_HASH.rawValue, BPF_MAP_TYPE_LRU_HASH.rawValue,
            BPF_MAP_TYPE_LRU_PERCPU_HASH.rawValue,
        ]
        guard hashes.contains(type.rawValue) else { return -1 }
        var opts = bpf_map_create_opts()
        opts.sz = MemoryLayout<bpf_map_create_opts>.size
        opts.map_flags = bpf_map__map_flags(inner)
        let fd = bpf_map_create(type, "fm_inner_tmpl", bpf_map__key_size(inner), bpf_map__value_size(inner), 1, &opts)
        if fd < 0 { throw BPFError.from("create the inner-map template", result: fd) }
        let r = bpf_map__set_inner_map_fd(outer, fd)
        if r != 0 {
            close(fd)
            throw BPFError.from("hand libbpf the inner-map template", result: r)
        }
        return fd
    }

    /// The kernel's description of a map we hold (id, sizes).
    static func mapInfo(_ fd: Int32) -> bpf_map_info {
        var info = bpf_map_info()
        var len = UInt32(MemoryLayout<bpf_map_info>.size)
        _ = bpf_obj_get_info_by_fd(fd, &info, &len)
        return info
    }

    public func fd(of program: Program) -> Int32 {
        switch program {
        case .ingress: ingressFD
        case .egress: egressFD
        case .noop: noopFD
        }
    }

    private func point(at tableFD: Int32) throws {
        var key: UInt32 = 0
        var value = UInt32(bitPattern: tableFD)
        // For a map-in-map the kernel waits for an RCU grace period before the
        // update returns: afterwards no program still writes the old table.
        let r = bpf_map_update_elem(outerFD, &key, &value, UInt64(BPF_ANY))
        if r != 0 { throw BPFError.from("switch flow table", result: r) }
    }

    /// Swaps the tables and drains the one that was being written. Exact: the
    /// programs write only the new table by the time the drain starts.
    public func evict() throws -> [FlowRecord] {
        let old = activeIsA ? tableFDs.a : tableFDs.b
        try point(at: activeIsA ? tableFDs.b : tableFDs.a)
        activeIsA.toggle()
        defer { carried = [] }
        return try carried + drain(tableFD: old)
    }

    /// Drains both tables without swapping: for the final flush, after the
    /// programs are detached, and for tests.
    public func drainAll() throws -> [FlowRecord] {
        defer { carried = [] }
        return try carried + drain(tableFD: tableFDs.a) + drain(tableFD: tableFDs.b)
    }

    private func drain(tableFD fd: Int32) throws -> [FlowRecord] {
        if batchOps != false {
            do {
                let out = try drainBatched(fd)
                batchOps = true
                return out
            } catch let e as BPFError where batchOps == nil && [EINVAL, ENOTSUP, EOPNOTSUPP, ENOTTY, 524].contains(e.errno) {
                // 524 = ENOTSUPP (kernel-internal). No batch ops on this kernel: iterate.
                batchOps = false
            }
        }
        return try drainIterating(fd)
    }

    private func merge(keyPtr: UnsafeRawPointer, valuesPtr: UnsafeRawPointer) -> FlowRecord {
        let key = FlowKey(abi: keyPtr.loadUnaligned(as: fm_flow_key.self))
        var stats = FlowStats.zero
        let stride = (MemoryLayout<fm_flow_stats>.size + 7) & ~7
        for cpu in 0..<possibleCPUs {
            stats.merge(FlowStats(abi: valuesPtr.loadUnaligned(fromByteOffset: cpu * stride, as: fm_flow_stats.self)))
        }
        return FlowRecord(key: key, stats: stats, source: .flowMap)
    }

    private func drainBatched(_ fd: Int32) throws -> [FlowRecord] {
        let keySize = MemoryLayout<fm_flow_key>.size
        let valueSize = ((MemoryLayout<fm_flow_stats>.size + 7) & ~7) * possibleCPUs
        var capacity = 1024
        var records: [FlowRecord] = []
        var inBatch: UInt64 = 0, outBatch: UInt64 = 0
        var first = true
        while true {
            let keys = UnsafeMutableRawPointer.allocate(byteCount: keySize * capacity, alignment: 8)
            let values = UnsafeMutableRawPointer.allocate(byteCount: valueSize * capacity, alignment: 8)
            defer { keys.deallocate(); values.deallocate() }
            var count = UInt32(capacity)
            let r = withUnsafeMutablePointer(to: &inBatch) { inp in
                withUnsafeMutablePointer(to: &outBatch) { outp in
                    fm_map_lookup_and_delete_batch(
                        fd, first ? nil : UnsafeMutableRawPointer(inp),
                        UnsafeMutableRawPointer(outp), keys, values, &count)
                }
            }
            if r == -ENOSPC && count == 0 {
                capacity *= 4  // one bucket holds more entries than the buffer: grow and retry
                continue
            }
            if r != 0 && r != -ENOENT { throw BPFError("drain flow table (batch)", errno: -r) }
            for i in 0..<Int(count) {
                records.append(merge(keyPtr: keys + i * keySize, valuesPtr: values + i * valueSize))
            }
            if r == -ENOENT { return records }
            inBatch = outBatch
            first = false
        }
    }

    private func drainIterating(_ fd: Int32) throws -> [FlowRecord] {
        let keySize = MemoryLayout<fm_flow_key>.size
        var keys: [[UInt8]] = []
        var cur = [UInt8](repeating: 0, count: keySize), next = cur
        var haveCur = false
        while true {
            let r = haveCur ? bpf_map_get_next_key(fd, &cur, &next) : bpf_map_get_next_key(fd, nil, &next)
            if r != 0 {
                if fm_errno() == ENOENT { break }
                throw BPFError.from("iterate flow table", result: r)
            }
            keys.append(next)
            cur = next
            haveCur = true
        }
        let valueSize = ((MemoryLayout<fm_flow_stats>.size + 7) & ~7) * possibleCPUs
        let values = UnsafeMutableRawPointer.allocate(byteCount: valueSize, alignment: 8)
        defer { values.deallocate() }
        var records: [FlowRecord] = []
        for var k in keys {
            guard bpf_map_lookup_elem(fd, &k, values) == 0 else { continue }
            _ = bpf_map_delete_elem(fd, &k)
            records.append(k.withUnsafeBytes { merge(keyPtr: $0.baseAddress!, valuesPtr: values) })
        }
        return records
    }

    /// The kernel-side counters (cumulative since load, summed over CPUs).
    public func readCounters() throws -> KernelCounters {
        var c = KernelCounters()
        let values = UnsafeMutablePointer<UInt64>.allocate(capacity: possibleCPUs)
        defer { values.deallocate() }
        func read(_ stat: fm_stat) throws -> UInt64 {
            var key = stat.rawValue
            let r = bpf_map_lookup_elem(statsFD, &key, values)
            if r != 0 { throw BPFError.from("read counter \(stat.rawValue)", result: r) }
            return (0..<possibleCPUs).reduce(0) { $0 &+ values[$1] }
        }
        c.flowsRingLost = try read(FM_STAT_FLOWS_RING_LOST)
        c.flowInsertFailures = try read(FM_STAT_FLOW_INSERT_FAILED)
        c.malformedPackets = try read(FM_STAT_MALFORMED)
        c.flowTableMissing = try read(FM_STAT_FLOW_TABLE_MISSING)
        return c
    }

    /// Runs a program on one packet with BPF_PROG_TEST_RUN, as if it arrived on
    /// `ifindex` (0: loopback) as a super-packet of `gsoSegs` segments (0: none).
    /// Returns the program's verdict and the kernel-measured average run time.
    public func testRun(
        _ program: Program, packet: [UInt8], ifindex: UInt32 = 0,
        gsoSegs: UInt32 = 0, repeat count: Int32 = 1
    ) throws -> (verdict: Int32, nanoseconds: UInt32) {
        var ctx = __sk_buff()
        ctx.ifindex = ifindex
        ctx.gso_segs = gsoSegs
        var retval: UInt32 = 0, duration: UInt32 = 0
        let r = packet.withUnsafeBytes { p in
            withUnsafeBytes(of: &ctx) { c in
                fm_prog_test_run(
                    fd(of: program), p.baseAddress, UInt32(p.count), c.baseAddress,
                    UInt32(c.count), count, &retval, &duration)
            }
        }
        if r != 0 { throw BPFError("test run of \(program.name)", errno: -r) }
        return (Int32(bitPattern: retval), duration)
    }
}
