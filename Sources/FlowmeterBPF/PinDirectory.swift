import CLibbpf
import FlowmeterABI
import Foundation

/// What `--persist` keeps in the kernel across a stop, under one directory of
/// a bpf filesystem (default /sys/fs/bpf/flowmeter):
///
///     abi                     the ABI record (below), pinned last
///     flows_a, flows_b        the two flow tables
///     flow_tables             the outer map: which table the programs write
///     flows                   the flows ring (its consumer position included)
///     fm_stats                the kernel-side counters
///     fm_socks                the socket hooks' table of live sockets, with
///     fm_listeners            the owners of listening sockets and the
///     fm_sock_stats           socket counters (only with socket hooks)
///     tcx_<ifindex>_ingress   TCX links (clsact filters need no pin: the
///     tcx_<ifindex>_egress    qdisc holds them; the state record names them)
///
/// Pinned objects outlive the process: the links keep the programs attached,
/// the programs keep counting into the pinned maps, and the next start opens
/// the maps by path, loads its own programs against them and swaps them into
/// the links and filters in one step each, so no packet goes uncounted.
public struct PinDirectory: Sendable, CustomStringConvertible {
    public let path: String
    public var description: String { path }

    /// The ABI record's name, and the maps pinned beside it, in pinning order.
    static let abiName = "abi"
    static let mapNames: [BPFMapName] = {
        typealias M = BPFNames.FlowmeterTc.Map
        return [M.flows_a, M.flows_b, M.flow_tables, M.flows, M.fm_stats]
    }()
    /// The socket hooks' maps kept across a restart. Their programs are not
    /// (tracing links cannot swap programs); the tables let the next run
    /// follow the sockets opened before it: their updates, closes and
    /// owners. The events ring is not kept: nothing writes it while no
    /// hook is attached, and the stop drains it.
    static let socketMapNames: [BPFMapName] = {
        typealias M = BPFNames.FlowmeterSock.Map
        return [M.fm_socks, M.fm_listeners, M.fm_sock_stats]
    }()

    /// The ABI record: the one-entry array map `abi`, value `ABIRecord`. A
    /// later version adopts pinned maps only if all three fields match its
    /// own; the sizes catch a layout change whose version bump was forgotten.
    struct ABIRecord: Equatable {
        var version: UInt32  // FM_ABI_VERSION of the run that created the maps
        var flowKeySize: UInt32  // sizeof(struct fm_flow_key): the tables' key
        var flowStatsSize: UInt32  // sizeof(struct fm_flow_stats): their per-CPU value
        var sockStateSize: UInt32  // sizeof(struct fm_sock_state): the socket table's value

        static let current = ABIRecord(
            version: UInt32(FM_ABI_VERSION), flowKeySize: UInt32(MemoryLayout<fm_flow_key>.size),
            flowStatsSize: UInt32(MemoryLayout<fm_flow_stats>.size),
            sockStateSize: UInt32(MemoryLayout<fm_sock_state>.size))
    }

    public init(path: String) { self.path = path }

    /// What the directory holds.
    public enum State: Equatable, Sendable {
        /// Nothing pinned (or no directory): a fresh start.
        case empty
        /// Maps of this ABI: adopt them.
        case compatible
        /// Something else: why it cannot be adopted.
        case incompatible(String)
    }

    public func inspect() -> State {
        let names = entries()
        if names.isEmpty { return .empty }
        let fd = fm_obj_get(file(Self.abiName))
        guard fd >= 0 else { return .incompatible("no ABI record (\(Self.abiName)) beside \(names.sorted().joined(separator: ", "))") }
        defer { close(fd) }
        var key: UInt32 = 0
        var found = ABIRecord(version: 0, flowKeySize: 0, flowStatsSize: 0, sockStateSize: 0)
        guard bpf_map_lookup_elem(fd, &key, &found) == 0 else { return .incompatible("the ABI record cannot be read") }
        let want = ABIRecord.current
        if found != want {
            return .incompatible(
                "pinned by ABI version \(found.version) (flow key \(found.flowKeySize) bytes, stats \(found.flowStatsSize), socket state \(found.sockStateSize)); this version is \(want.version) (\(want.flowKeySize), \(want.flowStatsSize), \(want.sockStateSize))"
            )
        }
        for m in Self.mapNames where !names.contains(m.name) {
            return .incompatible("map \(m.name) is missing")
        }
        return .compatible
    }

    /// The directory, created if missing; an error if it is not on a bpf
    /// filesystem (pins anywhere else fail, and /sys/fs/bpf may be unmounted).
    public func prepare() throws {
        // Only the last component is made: its parent is the bpf
        // filesystem's mount point or a directory on it, and creating
        // parents would hide a missing mount behind a directory of sysfs.
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw BPFError(
                "create the pin directory \(path)", errno: errno,
                detail: errno == ENOENT ? "its parent does not exist: is a bpf filesystem mounted there?" : "")
        }
        var fs = statfs()
        guard statfs(path, &fs) == 0 else { throw BPFError("statfs \(path)", errno: errno) }
        // BPF_FS_MAGIC
        guard UInt64(bitPattern: Int64(fs.f_type)) == 0xCAFE_4A11 else {
            throw BPFError(
                "pin directory \(path) is not on a bpf filesystem", errno: EINVAL,
                detail: "mount one (mount -t bpf bpf /sys/fs/bpf); note that `ip netns exec` mounts a fresh /sys without it")
        }
    }

    // MARK: pins

    func file(_ name: String) -> String { path + "/" + name }

    /// Pins `fd` as `name`, replacing a pin of that name.
    func pin(_ fd: Int32, as name: String) throws {
        unlink(file(name))
        let r = fm_obj_pin(fd, file(name))
        if r != 0 { throw BPFError("pin \(file(name))", errno: -r) }
    }

    /// The pinned object `name` (a new descriptor the caller closes), nil if none.
    func open(_ name: String) throws -> Int32? {
        let fd = fm_obj_get(file(name))
        if fd == -ENOENT { return nil }
        if fd < 0 { throw BPFError("open pinned \(file(name))", errno: -fd) }
        return fd
    }

    func remove(_ name: String) { unlink(file(name)) }

    func entries() -> [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
    }

    /// Pins the ABI record, after the maps: a directory that lost its run
    /// before this point holds maps without a record, which the next start
    /// calls incompatible and recreates.
    func pinABIRecord() throws {
        let fd = fm_array_create(Self.abiName, UInt32(MemoryLayout<ABIRecord>.size))
        if fd < 0 { throw BPFError("create the ABI record map", errno: -fd) }
        defer { close(fd) }
        var key: UInt32 = 0
        var record = ABIRecord.current
        let r = bpf_map_update_elem(fd, &key, &record, UInt64(BPF_ANY))
        if r != 0 { throw BPFError.from("write the ABI record", result: r) }
        try pin(fd, as: Self.abiName)
    }

    /// Before a load: every map of `names` pinned here is given to libbpf
    /// in place of the one it would create (`bpf_map__reuse_fd`: it takes
    /// the pinned map's type and sizes, and a descriptor of its own).
    /// `required`: a missing pin is an error, else it is skipped. Returns
    /// the names adopted.
    @discardableResult
    func adopt(_ names: [BPFMapName], into obj: BPFObject, required: Bool) throws -> [String] {
        var adopted: [String] = []
        for m in names {
            guard let fd = try open(m.name) else {
                if required { throw BPFError("open pinned map \(file(m.name))", errno: ENOENT) }
                continue
            }
            defer { close(fd) }
            // The pinned map must be the one this object declares (type, key
            // and value sizes; the entries may differ, they are settings).
            let map = try obj.map(m)
            var info = bpf_map_info()
            var len = UInt32(MemoryLayout<bpf_map_info>.size)
            _ = bpf_obj_get_info_by_fd(fd, &info, &len)
            if info.type != bpf_map__type(map).rawValue || info.key_size != bpf_map__key_size(map)
                || info.value_size != bpf_map__value_size(map)
            {
                let what =
                    "pinned map \(file(m.name)) is not this version's (type \(info.type), key \(info.key_size), value \(info.value_size))"
                if required { throw BPFError(what, errno: EINVAL) }
                remove(m.name)  // this load creates it anew, and pins that
                continue
            }
            let r = bpf_map__reuse_fd(map, fd)
            if r != 0 { throw BPFError.from("adopt pinned map \(file(m.name))", result: r) }
            adopted.append(m.name)
        }
        return adopted
    }

    /// After a load: pins the maps of `names` that are not pinned yet.
    func pinMissing(_ names: [BPFMapName], of obj: BPFObject) throws {
        let present = Set(entries())
        for m in names where !present.contains(m.name) { try pin(try obj.mapFD(m), as: m.name) }
    }

    /// The pin name of a TCX link.
    static func tcxLink(ifindex: UInt32, ingress: Bool) -> String {
        "tcx_\(ifindex)_\(ingress ? "ingress" : "egress")"
    }

    // MARK: uninstall

    /// Removes everything pinned here: TCX links are detached first (a link
    /// someone else holds open would stay attached after its pin is gone),
    /// then every pin is removed, then the directory. Returns what it did.
    public func removeAll() -> [String] {
        var done: [String] = []
        let names = entries().sorted()
        var links = 0
        for name in names where name.hasPrefix("tcx_") {
            if let fd = try? open(name) {
                if fm_link_detach(fd) == 0 { links += 1 }
                close(fd)
            }
        }
        if links > 0 { done.append("\(links) TCX link(s)") }
        var pins = 0
        for name in names where unlink(file(name)) == 0 { pins += 1 }
        if pins > 0 { done.append("\(pins) pin(s) under \(path)") }
        if rmdir(path) == 0 && names.isEmpty { done.append("the empty directory \(path)") }
        return done
    }
}
