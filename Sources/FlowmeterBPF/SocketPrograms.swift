import CLibbpf
import FlowmeterABI
import FlowmeterCore
import Foundation

/// The rungs of the socket-hook ladder, best first.
public enum HookRung: String, Sendable, CaseIterable {
    case fentry, kprobe, tracepoint
}

/// What `--hooks` asks for.
public enum HookRequest: String, Sendable, CaseIterable {
    case auto, fentry, kprobe, tracepoint
    /// The tracepoint rung without tp_btf: what kernels whose BTF cannot serve
    /// tp_btf get. Forcing it lets the kernel matrix test those twins too.
    case tracepointClassic = "tracepoint-classic"
}

/// How the counters of long-lived sockets are read once an interval
/// (`--socket-updates`): the two twins of bpf/flowmeter_sock.bpf.c.
public enum SocketUpdatePath: String, Sendable, CaseIterable {
    /// iter/bpf_map_elem over the socket table, read like a file.
    case iterator
    /// A raw_tp program run with BPF_PROG_TEST_RUN on the socket ids the
    /// daemon reads from the table: for kernels that refuse iterators.
    case rawTP = "raw_tp"

    var program: BPFProgramName { self == .iterator ? SocketPrograms.updatesIterator : SocketPrograms.updatesRun }
    var type: ProgramType { self == .iterator ? .iterMapElem : .rawTPRun }
}

/// What `--socket-updates` asks for.
public enum SocketUpdatesRequest: String, Sendable, CaseIterable {
    /// The iterator, else the raw_tp run.
    case auto
    case iterator
    case rawTP = "raw-tp"

    /// The one path a forced request allows (nil for auto).
    public var forced: SocketUpdatePath? {
        switch self {
        case .auto: nil
        case .iterator: .iterator
        case .rawTP: .rawTP
        }
    }
}

/// A forced `--socket-updates` path whose program type the kernel refuses:
/// always fatal (unlike a rung that auto skips).
public struct SocketUpdatesRefused: Error, CustomStringConvertible {
    public let request: SocketUpdatesRequest
    public let probe: ProgramTypeProbe
    public var description: String {
        let path = request.forced!
        var s = "--socket-updates \(request.rawValue): the kernel refuses \(path.type.rawValue) programs (\(path.program)), \(probe.detail)"
        if probe.errno == EPERM { s += "; " + Errno.epermNote }
        return s
    }
}

/// The socket telemetry programs (bpf/flowmeter_sock.bpf.c), loaded and
/// attached on one rung: exactly one twin per hook, chosen by trying (load and
/// attach), never by kernel version.
public final class SocketPrograms: @unchecked Sendable {
    /// A logical hook and its twins: per rung variant, the programs that make
    /// it (a hook may need two, e.g. one per address family). On the
    /// tracepoint variants nil means another twin's body covers the hook
    /// (listen() reaches the state tracepoint, but not tcp_set_state).
    struct Twin {
        let hook: String
        let fentry: [BPFProgramName]
        let kprobe: [BPFProgramName]
        let tpBTF: [BPFProgramName]?
        let tracepoint: [BPFProgramName]?
        /// A UDP hook: on the tracepoint rung it needs the sock_*_length
        /// tracepoints (6.3+) and a cgroup v2 mount.
        var udp = false
    }

    /// The object's programs and maps, as BPFEmbed named them.
    private typealias P = BPFNames.FlowmeterSock.Program
    private typealias Maps = BPFNames.FlowmeterSock.Map

    static let twins: [Twin] = [
        Twin(
            hook: "tcp_state", fentry: [P.fm_state_fentry], kprobe: [P.fm_state_kprobe],
            tpBTF: [P.fm_state_tp_btf], tracepoint: [P.fm_state_tp]),
        Twin(hook: "tcp_listen", fentry: [P.fm_listen_fentry], kprobe: [P.fm_listen_kprobe], tpBTF: nil, tracepoint: nil),
        Twin(
            hook: "tcp_reset_received", fentry: [P.fm_reset_rx_fentry], kprobe: [P.fm_reset_rx_kprobe],
            tpBTF: [P.fm_reset_rx_tp_btf], tracepoint: [P.fm_reset_rx_tp]),
        Twin(
            hook: "tcp_reset_sent", fentry: [P.fm_reset_tx_fentry], kprobe: [P.fm_reset_tx_kprobe],
            tpBTF: [P.fm_reset_tx_tp_btf], tracepoint: [P.fm_reset_tx_tp]),
        Twin(
            hook: "udp_send", fentry: [P.fm_udp_send_fexit, P.fm_udp6_send_fexit],
            kprobe: [P.fm_udp_send_kprobe, P.fm_udp_send_kretprobe, P.fm_udp6_send_kprobe, P.fm_udp6_send_kretprobe],
            tpBTF: [P.fm_udp_send_tp_btf], tracepoint: [P.fm_udp_send_tp], udp: true),
        Twin(
            hook: "udp_receive", fentry: [P.fm_udp_recv_fentry], kprobe: [P.fm_udp_recv_kprobe],
            tpBTF: [P.fm_udp_recv_tp_btf], tracepoint: [P.fm_udp_recv_tp], udp: true),
        Twin(
            hook: "udp_close", fentry: [P.fm_udp_close_fentry, P.fm_udp6_close_fentry],
            kprobe: [P.fm_udp_close_kprobe, P.fm_udp6_close_kprobe],
            tpBTF: [cgroupRelease], tracepoint: [cgroupRelease], udp: true),
    ]
    /// The tracepoint rung's UDP close: attached to the cgroup v2 root.
    static let cgroupRelease = P.fm_udp_close_cgroup
    /// The per-interval update twins, the same on every rung: the iterator,
    /// and the raw_tp program run by BPF_PROG_TEST_RUN where iterators are refused.
    static let updatesIterator = P.fm_updates
    static let updatesRun = P.fm_updates_run

    public let rung: HookRung
    /// The socket maps adopted from the pin directory (--persist): their
    /// sockets, opened before this start, keep being followed.
    public private(set) var adoptedMaps: [String] = []
    /// Per hook, the mode in use: "fentry", "kprobe", "tp_btf", "tracepoint",
    /// "cgroup" or "unsupported" (why: `udpUnsupported`).
    public let modes: [HookMode]
    /// Why UDP sockets are not seen on this rung and kernel (nil: they are).
    public let udpUnsupported: String?
    /// How updates of long-lived sockets are read (nil: the kernel refuses
    /// both twins, and their bytes are counted at close only).
    public let updatePath: SocketUpdatePath?
    /// Every update path loaded: `auto` loads both twins where the kernel
    /// accepts both, so `check --selftest` exercises each.
    public let updatePaths: [SocketUpdatePath]
    /// Programs left out because the kernel refuses their type, with what
    /// that costs; on an auto ladder, also the refusals that made it skip a
    /// rung. Logged once each by the daemon.
    public private(set) var refusals: [ProgramRefusal] = []
    let object: BPFObject
    private var links: [OpaquePointer] = []
    private var updatesLink: OpaquePointer?
    /// The raw_tp twin and the ring it writes to (nil when not loaded).
    private var updatesRunFD: Int32 = -1
    private var updateRing: RingReader<SocketEvent>?
    public let eventsRingFD: Int32
    let statsFD: Int32
    let configFD: Int32
    /// The kernel's table of live sockets (`fm_socks`), read by `liveSocketIDs`.
    let socketsFD: Int32

    private enum Variant: String { case fentry, kprobe, tpBTF = "tp_btf", tracepoint }

    /// On the tracepoint rung UDP needs the sock_*_length tracepoints (6.3+)
    /// and a cgroup v2 mount for its close hook; nil when both are there.
    private static func udpMissing(_ variant: Variant, cgroupRoot: String?) -> String? {
        // cgroupRoot: non-nil when the cgroup v2 root could be opened.
        switch variant {
        case .fentry, .kprobe:
            return nil
        case .tpBTF:
            if !KernelBTF.hasType("btf_trace_sock_send_length", kind: Int32(BTF_KIND_TYPEDEF)) {
                return "this kernel has no sock:sock_send_length tracepoint (6.3+)"
            }
        case .tracepoint:
            let fs = ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"]
            if !fs.contains(where: { FileManager.default.fileExists(atPath: $0 + "/sock/sock_send_length") }) {
                return "this kernel has no sock:sock_send_length tracepoint (6.3+)"
            }
        }
        return cgroupRoot == nil ? "no cgroup v2 hierarchy for the UDP close hook (cgroup/sock_release)" : nil
    }

    /// The cgroup v2 root directory, opened: from its mount, or, where this
    /// process sees none (`ip netns exec` remounts /sys without it; a
    /// cgroup v1 host), from a private mount of the hierarchy that is detached
    /// again at once (the descriptor stays valid). -1 when neither works.
    static func openCgroup2Root(mounted: String?) -> Int32 {
        if let mounted {
            return open(mounted, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        }
        var template = Array("/tmp/flowmeter-cgroup2-XXXXXX".utf8CString)
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }).map({ String(cString: $0) }) else {
            return -1
        }
        defer { rmdir(dir) }
        guard mount("cgroup2", dir, "cgroup2", 0, nil) == 0 else { return -1 }
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        umount2(dir, Int32(MNT_DETACH))
        return fd
    }

    private init(variant: Variant, rung: HookRung, updates: SocketUpdatesRequest, pins: PinDirectory?) throws {
        let obj = try BPFObject(BPFNames.FlowmeterSock.self)
        var cgroupFD: Int32 = -1
        defer { if cgroupFD >= 0 { close(cgroupFD) } }
        if variant == .tpBTF || variant == .tracepoint { cgroupFD = Self.openCgroup2Root(mounted: CgroupPaths().root) }
        var refusals: [ProgramRefusal] = []
        // The kernel's verdict on each program's type, before loading: a
        // refused type leaves out its program, and only what it serves.
        func refusal(_ prog: BPFProgramName, _ consequence: String, loses: Bool) -> ProgramRefusal? {
            guard let type = ProgramType(section: prog.section) else { return nil }
            let probe = ProgramTypes.probe(type)
            return probe.available
                ? nil
                : ProgramRefusal(
                    program: prog.name, section: prog.section, errno: probe.errno, detail: probe.detail,
                    consequence: consequence, loses: loses)
        }
        var udpMissing = Self.udpMissing(variant, cgroupRoot: cgroupFD >= 0 ? "" : nil)
        var chosen = Set<BPFProgramName>()
        var modes: [HookMode] = []
        for t in Self.twins {
            let names: [BPFProgramName]? =
                switch variant {
                case .fentry: t.fentry
                case .kprobe: t.kprobe
                case .tpBTF: t.tpBTF
                case .tracepoint: t.tracepoint
                }
            // A TCP hook's program refused: this rung cannot be had (the
            // ladder goes on to the next one, where the twins differ).
            if !t.udp, let r = names?.lazy.compactMap({ refusal($0, "the \(variant.rawValue) rung is skipped", loses: false) }).first {
                throw BPFError(refused: r)
            }
            if t.udp, udpMissing == nil,
                let r = names?.lazy.compactMap({ refusal($0, "UDP sockets are not seen on this rung", loses: true) }).first
            {
                refusals.append(r)
                udpMissing = "program \(r.program) (\(r.section)) is refused by the kernel at \(r.detail)"
            }
            if t.udp, udpMissing != nil {
                modes.append(HookMode(hook: t.hook, mode: "unsupported"))
                continue
            }
            names?.forEach { chosen.insert($0) }
            let mode =
                names == [Self.cgroupRelease]
                ? "cgroup"
                : names == nil ? "\(variant.rawValue) (tcp_state)" : variant.rawValue
            modes.append(HookMode(hook: t.hook, mode: mode))
        }
        // The update twins: every one the request allows and the kernel takes.
        var paths: [SocketUpdatePath] = []
        for path in SocketUpdatePath.allCases where updates.forced == nil || updates.forced == path {
            let other = path == .iterator ? "the raw_tp run (\(Self.updatesRun))" : "the iterator (\(Self.updatesIterator))"
            if let r = refusal(path.program, "socket updates use \(other) instead", loses: false) {
                if updates.forced != nil { throw SocketUpdatesRefused(request: updates, probe: ProgramTypes.probe(path.type)) }
                refusals.append(r)
            } else {
                paths.append(path)
                chosen.insert(path.program)
            }
        }
        if paths.isEmpty, let last = refusals.indices.last {
            // Neither twin: say what that costs on the line of the last refusal.
            let r = refusals[last]
            refusals[last] = ProgramRefusal(
                program: r.program, section: r.section, errno: r.errno, detail: r.detail,
                consequence: "no update path is left: bytes of long-lived sockets are counted only when they close",
                loses: true)
        }
        modes.append(HookMode(hook: "socket_updates", mode: paths.first?.rawValue ?? "unsupported"))

        // libbpf's own names of the object's programs, matched against the generated ones.
        let autoload = Set(chosen.map(\.name))
        var p: OpaquePointer? = nil
        while let next = bpf_object__next_program(obj.handle, p) {
            bpf_program__set_autoload(next, autoload.contains(String(cString: bpf_program__name(next))))
            p = next
        }
        // --persist: the socket tables an earlier run pinned (the tc maps'
        // ABI record, checked before, covers their layout).
        adoptedMaps = try pins?.adopt(PinDirectory.socketMapNames, into: obj, required: false) ?? []
        try obj.load()
        object = obj
        self.rung = rung
        self.modes = modes
        self.udpUnsupported = udpMissing
        self.updatePaths = paths
        self.updatePath = paths.first
        self.refusals = refusals
        eventsRingFD = try obj.mapFD(Maps.events)
        statsFD = try obj.mapFD(Maps.fm_sock_stats)
        configFD = try obj.mapFD(Maps.fm_sock_config)
        socketsFD = try obj.mapFD(Maps.fm_socks)
        func fail(_ what: BPFProgramName, _ e: Int32) -> BPFError {
            links.forEach { bpf_link__destroy($0) }
            links.removeAll()
            if let l = updatesLink { bpf_link__destroy(l); updatesLink = nil }
            let tracefs = ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"]
                .contains { FileManager.default.fileExists(atPath: $0) }
            let hint =
                variant == .tracepoint && e == ENOENT && !tracefs
                ? " (tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing)" : ""
            return BPFError("attach \(what.name) (\(what.section))\(hint)", errno: e)
        }
        for name in chosen.sorted(by: { $0.name < $1.name }) where name != Self.updatesIterator && name != Self.updatesRun {
            let prog = try obj.program(name)
            var link: OpaquePointer?
            if name == Self.cgroupRelease {
                link = bpf_program__attach_cgroup(prog, cgroupFD)
            } else {
                link = bpf_program__attach(prog)
            }
            guard let link else { throw fail(name, fm_errno()) }
            links.append(link)
        }
        if paths.contains(.iterator) {
            guard let it = fm_attach_map_iter(try obj.program(Self.updatesIterator), socketsFD) else {
                throw fail(Self.updatesIterator, fm_errno())
            }
            updatesLink = it
        }
        if paths.contains(.rawTP) {
            updatesRunFD = try obj.programFD(Self.updatesRun)
            updateRing = try RingReader(
                ringFD: try obj.mapFD(Maps.fm_update_ring), name: "update-ring",
                decode: ABI.decodeSocketEvent)
        }
        // Pinned once attached: a rung that fails above leaves no pins of its maps.
        try pins?.pinMissing(PinDirectory.socketMapNames, of: obj)
    }

    /// Throws `SocketUpdatesRefused` when `updates` forces a path whose
    /// program type the kernel refuses (the daemon asks before it attaches anything).
    public static func checkForced(_ updates: SocketUpdatesRequest) throws {
        if let path = updates.forced {
            let probe = ProgramTypes.probe(path.type)
            if !probe.available { throw SocketUpdatesRefused(request: updates, probe: probe) }
        }
    }

    /// Sockets younger than this get no UPDATE record: a connection that lives
    /// less than an interval sends open and close only.
    public func setUpdateMinAge(nanoseconds: UInt64) throws {
        var key = UInt32(FM_SOCK_CONFIG_UPDATE_MIN_AGE_NS.rawValue)
        var value = nanoseconds
        let r = bpf_map_update_elem(configFD, &key, &value, UInt64(BPF_ANY))
        if r != 0 { throw BPFError.from("set the update age", result: r) }
    }

    /// Reads the updates once: an UPDATE (counters so far) for every socket
    /// older than the update age whose bytes changed since its last one, by
    /// `path` (default: the one in use). Lossless on both paths: the
    /// iterator's records come back through read(), and the raw_tp twin's
    /// ring is drained after every run, so it never fills.
    public func collectUpdates(via path: SocketUpdatePath? = nil) throws -> [SocketEvent] {
        switch path ?? updatePath {
        case .iterator?: return try iterateUpdates()
        case .rawTP?: return try runUpdates()
        case nil: return []
        }
    }

    private func iterateUpdates() throws -> [SocketEvent] {
        guard let updatesLink else { throw BPFError("socket updates: the iterator (\(Self.updatesIterator)) is not loaded", errno: ENOENT) }
        let fd = bpf_iter_create(bpf_link__fd(updatesLink))
        if fd < 0 { throw BPFError.from("run the socket update iterator", result: fd) }
        defer { close(fd) }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw BPFError("read the socket update iterator", errno: errno)
            }
            if n == 0 { break }
            data += chunk[0..<n]
        }
        let size = MemoryLayout<fm_sock_event>.size
        return data.withUnsafeBytes { raw in
            stride(from: 0, to: raw.count - size + 1, by: size).compactMap {
                ABI.decodeSocketEvent(UnsafeRawBufferPointer(rebasing: raw[$0..<($0 + size)]))
            }
        }
    }

    /// The raw_tp twin over every socket in the table, FM_UPDATE_RUN_KEYS
    /// ids a run. A socket that closes between the walk and its run is no
    /// longer in the table, and the program skips it.
    private func runUpdates() throws -> [SocketEvent] {
        guard updatesRunFD >= 0, let updateRing else {
            throw BPFError("socket updates: the raw_tp run (\(Self.updatesRun)) is not loaded", errno: ENOENT)
        }
        let ids = try socketIDs().ids
        var out: [SocketEvent] = []
        let perRun = Int(FM_UPDATE_RUN_KEYS)
        var ctx = [UInt64](repeating: 0, count: perRun)
        for start in stride(from: 0, to: ids.count, by: perRun) {
            for i in 0..<perRun { ctx[i] = start + i < ids.count ? ids[start + i] : 0 }
            var written: UInt32 = 0, duration: UInt32 = 0
            let r = ctx.withUnsafeBytes {
                fm_prog_test_run(updatesRunFD, nil, 0, $0.baseAddress, UInt32($0.count), 0, &written, &duration)
            }
            if r != 0 { throw BPFError("run the socket update program \(Self.updatesRun)", errno: -r) }
            if written > 0 {
                updateRing.consumeNow()
                out += updateRing.take().records
            }
        }
        return out
    }

    /// Loads and attaches on the requested rung. `auto` walks the ladder
    /// (fentry, kprobe, tracepoint); a forced rung that cannot be had is an
    /// error naming the hook program and the reason. The tracepoint rung uses
    /// tp_btf where the kernel's BTF serves it, else classic tracepoints.
    /// `updates` picks the update path; a forced one the kernel refuses is a
    /// `SocketUpdatesRefused`, whatever the rung request.
    ///
    /// With `pins` (--persist, after the tc maps were adopted or created
    /// there), the socket tables pinned there are adopted and the others
    /// pinned.
    public static func load(_ request: HookRequest, updates: SocketUpdatesRequest = .auto, pins: PinDirectory? = nil) throws
        -> SocketPrograms
    {
        try checkForced(updates)
        let rungs: [HookRung] =
            switch request {
            case .auto: HookRung.allCases
            case .fentry: [.fentry]
            case .kprobe: [.kprobe]
            case .tracepoint, .tracepointClassic: [.tracepoint]
            }
        var reasons: [String] = [], details: [String] = [], skipped: [ProgramRefusal] = []
        for rung in rungs {
            let variants: [Variant] =
                switch rung {
                case .fentry: [.fentry]
                case .kprobe: [.kprobe]
                case .tracepoint: request == .tracepointClassic ? [.tracepoint] : [.tpBTF, .tracepoint]
                }
            for v in variants {
                do {
                    let programs = try SocketPrograms(variant: v, rung: rung, updates: updates, pins: pins)
                    programs.refusals = skipped + programs.refusals
                    return programs
                } catch let e as SocketUpdatesRefused {
                    throw e
                } catch let e as BPFError {
                    if let r = e.refusal { skipped.append(r) }
                    // The reason on the line; libbpf's last lines (the verifier's
                    // verdict) in the detail.
                    reasons.append("\(v.rawValue): \(e.summary)")
                    if !e.detail.isEmpty { details.append(e.detail) }
                } catch {
                    reasons.append("\(v.rawValue): \(error)")
                }
            }
        }
        throw BPFError(
            "no socket-hook rung available for --hooks \(request.rawValue) (\(reasons.joined(separator: "; ")))", errno: 0,
            detail: details.joined(separator: "\n"))
    }

    /// Failed ring reservations and sockets the table could not take (kernel counters).
    public func readCounters() throws -> (eventsLost: UInt64, tableFull: UInt64) {
        let values = UnsafeMutablePointer<UInt64>.allocate(capacity: possibleCPUs)
        defer { values.deallocate() }
        func read(_ idx: UInt32) throws -> UInt64 {
            var key = idx
            let r = bpf_map_lookup_elem(statsFD, &key, values)
            if r != 0 { throw BPFError.from("read socket counter \(idx)", result: r) }
            return (0..<possibleCPUs).reduce(0) { $0 &+ values[$1] }
        }
        return (try read(0), try read(1))
    }

    /// The ids of the sockets the kernel tracks now. A program removes a
    /// socket's entry after it emitted its close, so a socket the daemon
    /// holds that is missing here has closed, and its close record, if not
    /// lost, was in the ring before this call.
    /// nil if the walk did not finish (the table kept changing under it).
    public func liveSocketIDs() throws -> Set<UInt64>? {
        let walk = try socketIDs()
        return walk.complete ? Set(walk.ids) : nil
    }

    /// The keys of the socket table, walked with BPF_MAP_GET_NEXT_KEY.
    /// complete is false when the walk stopped at its bound (the table kept
    /// changing under it); ids may then miss some and repeat others.
    func socketIDs() throws -> (ids: [UInt64], complete: Bool) {
        var ids: [UInt64] = []
        var seen = Set<UInt64>()
        var key: UInt64 = 0, next: UInt64 = 0
        // A key deleted under the walk restarts it from the first key (hash
        // maps), so a busy table could keep it going: the steps are bounded.
        for step in 0..<(4 * Int(FM_DEFAULT_SOCKET_TABLE_SIZE)) {
            let r = step == 0 ? bpf_map_get_next_key(socketsFD, nil, &next) : bpf_map_get_next_key(socketsFD, &key, &next)
            if r != 0 {
                let e = r < -1 ? -r : fm_errno()
                if e == ENOENT { return (ids, true) }
                throw BPFError.from("read the socket table", result: r)
            }
            if seen.insert(next).inserted { ids.append(next) }
            key = next
        }
        return (ids, false)
    }

    /// A reader of the "events" ring (start it, or consume on demand).
    public func eventsReader() throws -> RingReader<SocketEvent> {
        try RingReader(
            ringFD: eventsRingFD, name: "events-ring", softLimit: RingLimits.eventsSoft,
            hardLimit: RingLimits.eventsHard, decode: ABI.decodeSocketEvent)
    }

    /// Empties the events ring on the caller's thread (self-test).
    public func drainEvents() throws -> [SocketEvent] {
        let r = try eventsReader()
        r.consumeNow()
        return r.take().records
    }

    /// Detaches every hook (the update iterator stays readable: a last run
    /// after detaching flushes what the sockets still hold).
    public func detach() {
        links.forEach { bpf_link__destroy($0) }
        links.removeAll()
    }

    deinit {
        detach()
        if let l = updatesLink { bpf_link__destroy(l) }
    }
}
