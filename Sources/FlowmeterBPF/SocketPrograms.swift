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
        let fentry: [String]
        let kprobe: [String]
        let tpBTF: [String]?
        let tracepoint: [String]?
        /// A UDP hook: on the tracepoint rung it needs the sock_*_length
        /// tracepoints (6.3+) and a cgroup v2 mount.
        var udp = false
    }

    static let twins: [Twin] = [
        Twin(hook: "tcp_state", fentry: ["fm_state_fentry"], kprobe: ["fm_state_kprobe"],
             tpBTF: ["fm_state_tp_btf"], tracepoint: ["fm_state_tp"]),
        Twin(hook: "tcp_listen", fentry: ["fm_listen_fentry"], kprobe: ["fm_listen_kprobe"], tpBTF: nil, tracepoint: nil),
        Twin(hook: "tcp_reset_received", fentry: ["fm_reset_rx_fentry"], kprobe: ["fm_reset_rx_kprobe"],
             tpBTF: ["fm_reset_rx_tp_btf"], tracepoint: ["fm_reset_rx_tp"]),
        Twin(hook: "tcp_reset_sent", fentry: ["fm_reset_tx_fentry"], kprobe: ["fm_reset_tx_kprobe"],
             tpBTF: ["fm_reset_tx_tp_btf"], tracepoint: ["fm_reset_tx_tp"]),
        Twin(hook: "udp_send", fentry: ["fm_udp_send_fexit", "fm_udp6_send_fexit"],
             kprobe: ["fm_udp_send_kprobe", "fm_udp_send_kretprobe", "fm_udp6_send_kprobe", "fm_udp6_send_kretprobe"],
             tpBTF: ["fm_udp_send_tp_btf"], tracepoint: ["fm_udp_send_tp"], udp: true),
        Twin(hook: "udp_receive", fentry: ["fm_udp_recv_fentry"], kprobe: ["fm_udp_recv_kprobe"],
             tpBTF: ["fm_udp_recv_tp_btf"], tracepoint: ["fm_udp_recv_tp"], udp: true),
        Twin(hook: "udp_close", fentry: ["fm_udp_close_fentry", "fm_udp6_close_fentry"],
             kprobe: ["fm_udp_close_kprobe", "fm_udp6_close_kprobe"],
             tpBTF: [cgroupRelease], tracepoint: [cgroupRelease], udp: true),
    ]
    /// The tracepoint rung's UDP close: attached to the cgroup v2 root.
    static let cgroupRelease = "fm_udp_close_cgroup"
    /// The per-interval update iterator, the same on every rung.
    static let updatesIterator = "fm_updates"

    public let rung: HookRung
    /// Per hook, the mode in use: "fentry", "kprobe", "tp_btf", "tracepoint",
    /// "cgroup" or "unsupported" (why: `udpUnsupported`).
    public let modes: [HookMode]
    /// Why UDP sockets are not seen on this rung and kernel (nil: they are).
    public let udpUnsupported: String?
    let object: BPFObject
    private var links: [OpaquePointer] = []
    private var updatesLink: OpaquePointer?
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
            if fm_vmlinux_has_type("btf_trace_sock_send_length", Int32(BTF_KIND_TYPEDEF)) == 0 {
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
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }).map({ String(cString: $0) }) else { return -1 }
        defer { rmdir(dir) }
        guard mount("cgroup2", dir, "cgroup2", 0, nil) == 0 else { return -1 }
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        umount2(dir, Int32(MNT_DETACH))
        return fd
    }

    private init(variant: Variant, rung: HookRung) throws {
        let obj = try BPFObject(name: "flowmeter_sock", base64: EmbeddedBPF.flowmeterSock)
        var cgroupFD: Int32 = -1
        defer { if cgroupFD >= 0 { close(cgroupFD) } }
        if variant == .tpBTF || variant == .tracepoint { cgroupFD = Self.openCgroup2Root(mounted: CgroupPaths().root) }
        let udpMissing = Self.udpMissing(variant, cgroupRoot: cgroupFD >= 0 ? "" : nil)
        var chosen = Set<String>([Self.updatesIterator])
        var modes: [HookMode] = []
        for t in Self.twins {
            if t.udp, udpMissing != nil {
                modes.append(HookMode(hook: t.hook, mode: "unsupported"))
                continue
            }
            let names: [String]? = switch variant {
            case .fentry: t.fentry
            case .kprobe: t.kprobe
            case .tpBTF: t.tpBTF
            case .tracepoint: t.tracepoint
            }
            names?.forEach { chosen.insert($0) }
            let mode = names == [Self.cgroupRelease] ? "cgroup"
                : names == nil ? "\(variant.rawValue) (tcp_state)" : variant.rawValue
            modes.append(HookMode(hook: t.hook, mode: mode))
        }
        var p: OpaquePointer? = nil
        while let next = bpf_object__next_program(obj.handle, p) {
            bpf_program__set_autoload(next, chosen.contains(String(cString: bpf_program__name(next))))
            p = next
        }
        try obj.load()
        object = obj
        self.rung = rung
        self.modes = modes
        self.udpUnsupported = udpMissing
        eventsRingFD = try obj.mapFD("events")
        statsFD = try obj.mapFD("fm_sock_stats")
        configFD = try obj.mapFD("fm_sock_config")
        socketsFD = try obj.mapFD("fm_socks")
        func fail(_ what: String, _ e: Int32) -> BPFError {
            links.forEach { bpf_link__destroy($0) }
            links.removeAll()
            if let l = updatesLink { bpf_link__destroy(l); updatesLink = nil }
            let tracefs = ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"]
                .contains { FileManager.default.fileExists(atPath: $0) }
            let hint = variant == .tracepoint && e == ENOENT && !tracefs
                ? " (tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing)" : ""
            return BPFError("attach \(what)\(hint)", errno: e)
        }
        for name in chosen.sorted() where name != Self.updatesIterator {
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
        guard let it = fm_attach_map_iter(try obj.program(Self.updatesIterator), try obj.mapFD("fm_socks")) else {
            throw fail(Self.updatesIterator, fm_errno())
        }
        updatesLink = it
    }

    /// Sockets younger than this get no UPDATE record: a connection that lives
    /// less than an interval sends open and close only.
    public func setUpdateMinAge(nanoseconds: UInt64) throws {
        var key = UInt32(FM_SOCK_CONFIG_UPDATE_MIN_AGE_NS.rawValue)
        var value = nanoseconds
        let r = bpf_map_update_elem(configFD, &key, &value, UInt64(BPF_ANY))
        if r != 0 { throw BPFError.from("set the update age", result: r) }
    }

    /// Runs the update iterator once: an UPDATE (counters so far) for every
    /// socket older than the update age whose bytes changed since its last one.
    /// Lossless: the records come back through read(), not the ring.
    public func collectUpdates() throws -> [SocketEvent] {
        guard let updatesLink else { return [] }
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

    /// Loads and attaches on the requested rung. `auto` walks the ladder
    /// (fentry, kprobe, tracepoint); a forced rung that cannot be had is an
    /// error naming the hook program and the reason. The tracepoint rung uses
    /// tp_btf where the kernel's BTF serves it, else classic tracepoints.
    public static func load(_ request: HookRequest) throws -> SocketPrograms {
        let rungs: [HookRung] = switch request {
        case .auto: HookRung.allCases
        case .fentry: [.fentry]
        case .kprobe: [.kprobe]
        case .tracepoint, .tracepointClassic: [.tracepoint]
        }
        var reasons: [String] = [], details: [String] = []
        for rung in rungs {
            let variants: [Variant] = switch rung {
            case .fentry: [.fentry]
            case .kprobe: [.kprobe]
            case .tracepoint: request == .tracepointClassic ? [.tracepoint] : [.tpBTF, .tracepoint]
            }
            for v in variants {
                do { return try SocketPrograms(variant: v, rung: rung) } catch let e as BPFError {
                    // The reason on the line; libbpf's last lines (the verifier's
                    // verdict) in the detail.
                    reasons.append("\(v.rawValue): \(e.summary)")
                    if !e.detail.isEmpty { details.append(e.detail) }
                } catch {
                    reasons.append("\(v.rawValue): \(error)")
                }
            }
        }
        throw BPFError("no socket-hook rung available for --hooks \(request.rawValue) (\(reasons.joined(separator: "; ")))", errno: 0,
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
        var ids = Set<UInt64>()
        var key: UInt64 = 0, next: UInt64 = 0
        // A key deleted under the walk restarts it from the first key (hash
        // maps), so a busy table could keep it going: the steps are bounded.
        for step in 0..<(4 * Int(FM_DEFAULT_SOCKET_TABLE_SIZE)) {
            let r = step == 0 ? bpf_map_get_next_key(socketsFD, nil, &next) : bpf_map_get_next_key(socketsFD, &key, &next)
            if r != 0 {
                let e = r < -1 ? -r : fm_errno()
                if e == ENOENT { return ids }
                throw BPFError.from("read the socket table", result: r)
            }
            ids.insert(next)
            key = next
        }
        return nil
    }

    /// A reader of the "events" ring (start it, or consume on demand).
    public func eventsReader() throws -> RingReader<SocketEvent> {
        try RingReader(ringFD: eventsRingFD, name: "events-ring", softLimit: RingLimits.eventsSoft,
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
