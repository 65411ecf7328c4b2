import CLibbpf
import FlowmeterABI
import Foundation
import Synchronization

/// The BPF program types flowmeterd's socket object uses, each of which a
/// kernel may refuse on its own: hardened builds refuse iterators or
/// trampolines (EPERM) while tracepoints load, a BPF LSM policy may refuse
/// any, and kprobes may not be built in. Each is probed by loading (and where
/// it means something, attaching or running) a minimal program of that type
/// from bpf/flowmeter_probe.bpf.c: the probe is the only truth, never the
/// kernel version.
public enum ProgramType: String, Sendable, CaseIterable {
    case fentry, fexit, kprobe, kretprobe
    case tpBTF = "tp_btf"
    case tracepoint
    /// raw_tp, loaded and run with BPF_PROG_TEST_RUN (never attached): the update twin without iterators.
    case rawTPRun = "raw_tp_run"
    /// iter/bpf_map_elem: the update iterator.
    case iterMapElem = "iter_map_elem"
    /// cgroup/sock_release: the tracepoint rung's UDP close.
    case cgroupSockRelease = "cgroup_sock_release"

    /// The type of a program from its ELF section name (libbpf's convention);
    /// nil for a section this enum does not know.
    public init?(section: String) {
        let prefix = section.split(separator: "/", maxSplits: 1).first.map(String.init) ?? section
        switch prefix {
        case "fentry": self = .fentry
        case "fexit": self = .fexit
        case "kprobe": self = .kprobe
        case "kretprobe": self = .kretprobe
        case "tp_btf": self = .tpBTF
        case "tracepoint", "tp": self = .tracepoint
        case "raw_tp", "raw_tracepoint": self = .rawTPRun
        case "iter" where section == "iter/bpf_map_elem": self = .iterMapElem
        case "cgroup" where section == "cgroup/sock_release": self = .cgroupSockRelease
        default: return nil
        }
    }

    /// The probe program of this type in flowmeter_probe.bpf.c.
    var probeProgram: BPFProgramName {
        typealias P = BPFNames.FlowmeterProbe.Program
        return switch self {
        case .fentry: P.probe_fentry
        case .fexit: P.probe_fexit
        case .kprobe: P.probe_kprobe
        case .kretprobe: P.probe_kretprobe
        case .tpBTF: P.probe_tp_btf
        case .tracepoint: P.probe_tracepoint
        case .rawTPRun: P.probe_raw_tp_run
        case .iterMapElem: P.probe_iter_map_elem
        case .cgroupSockRelease: P.probe_cgroup_sock_release
        }
    }

    /// What the probe does, for `check`'s detail column.
    public var probeDescription: String {
        switch self {
        case .fentry: "fentry/tcp_set_state"
        case .fexit: "fexit/tcp_set_state"
        case .kprobe: "kprobe/tcp_set_state"
        case .kretprobe: "kretprobe/tcp_set_state"
        case .tpBTF: "tp_btf/inet_sock_set_state"
        case .tracepoint: "tracepoint/sock/inet_sock_set_state"
        case .rawTPRun: "raw_tp run by BPF_PROG_TEST_RUN"
        case .iterMapElem: "iter/bpf_map_elem attached to a map and read"
        case .cgroupSockRelease: "cgroup/sock_release on the cgroup v2 root"
        }
    }
}

/// The outcome of probing one program type.
public struct ProgramTypeProbe: Sendable, Equatable {
    public let type: ProgramType
    public let available: Bool
    /// The errno of the refusal (0 when available, or when the failure had none).
    public let errno: Int32
    /// Which step failed and why ("load: Operation not permitted (EPERM)"), or
    /// a note on what was checked.
    public let detail: String
}

/// A program the loader left out because the kernel refuses its type: logged
/// once, as one line, by the daemon.
public struct ProgramRefusal: Sendable, Equatable, CustomStringConvertible {
    public let program: String
    public let section: String
    public let errno: Int32
    /// The probe's account: the step refused and the errno ("load: Operation not permitted (EPERM)").
    public let detail: String
    /// What is lost, or what serves instead.
    public let consequence: String
    /// Whether something is lost (else a fallback serves, and the daemon
    /// logs it as a notice, not a warning: a hardened host is not a fault).
    public let loses: Bool

    public init(program: String, section: String, errno: Int32, detail: String, consequence: String, loses: Bool) {
        self.program = program; self.section = section; self.errno = errno; self.detail = detail
        self.consequence = consequence; self.loses = loses
    }

    public var description: String {
        "program \(program) (\(section)) refused by the kernel at \(detail); \(consequence)"
    }
}

/// errno values as text with their symbolic name, e.g. "Operation not permitted (EPERM)".
public enum Errno {
    static let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO", E2BIG: "E2BIG",
        EBADF: "EBADF", EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES", EFAULT: "EFAULT",
        EBUSY: "EBUSY", EEXIST: "EEXIST", ENODEV: "ENODEV", EINVAL: "EINVAL", ENOSPC: "ENOSPC",
        ERANGE: "ERANGE", ENOSYS: "ENOSYS", EOPNOTSUPP: "EOPNOTSUPP", ELOOP: "ELOOP",
        524: "ENOTSUPP",
    ]

    public static func name(_ e: Int32) -> String { names[e] ?? "errno \(e)" }

    public static func describe(_ e: Int32) -> String {
        if e == 0 { return "no errno" }
        // 524 (ENOTSUPP) is kernel-internal: strerror has no text for it.
        let text = e == 524 ? "Operation not supported by this kernel" : String(cString: strerror(e))
        return "\(text) (\(name(e)))"
    }

    /// What an EPERM from loading a program means when running as root.
    /// libbpf says "try raising 'ulimit -l'" for every EPERM; on kernels that
    /// charge BPF memory to the memory cgroup (5.11+, found by probing as
    /// libbpf does: the helper bpf_ktime_get_coarse_ns came with that
    /// accounting) RLIMIT_MEMLOCK plays no part, so the hint is wrong there.
    public static var epermNote: String {
        let memcg = libbpf_probe_bpf_helper(BPF_PROG_TYPE_SOCKET_FILTER, BPF_FUNC_ktime_get_coarse_ns, nil) == 1
        if memcg {
            return
                "not a RLIMIT_MEMLOCK matter (this kernel charges BPF memory to the memory cgroup): the type is disabled in this build, or lockdown or a BPF LSM policy refuses it"
        }
        var lim = rlimit()
        getrlimit(__rlimit_resource_t(8) /* RLIMIT_MEMLOCK */, &lim)
        if lim.rlim_cur == rlim_t.max /* RLIM_INFINITY */ {
            return
                "not a RLIMIT_MEMLOCK matter (it is unlimited): the type is disabled in this build, or lockdown or a BPF LSM policy refuses it"
        }
        return
            "RLIMIT_MEMLOCK (\(lim.rlim_cur) bytes) may be too low on this kernel (ulimit -l), or the type is disabled, or lockdown or a BPF LSM policy refuses it"
    }
}

/// Probes of program types, each run at most once per process (the answer
/// does not change while the kernel runs; `check` and the loader share it).
public enum ProgramTypes {
    private static let cache = Mutex<[ProgramType: ProgramTypeProbe]>([:])

    public static func probe(_ type: ProgramType) -> ProgramTypeProbe {
        if let known = cache.withLock({ $0[type] }) { return known }
        let result = run(type)
        cache.withLock { $0[type] = result }
        return result
    }

    private static func run(_ type: ProgramType) -> ProgramTypeProbe {
        func refused(_ step: String, _ e: Int32) -> ProgramTypeProbe {
            var detail = "\(step): \(Errno.describe(e))"
            if type == .tracepoint, e == ENOENT, !FileManager.default.fileExists(atPath: "/sys/kernel/tracing/events"),
                !FileManager.default.fileExists(atPath: "/sys/kernel/debug/tracing/events")
            {
                detail += " (tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing)"
            }
            if type == .kprobe || type == .kretprobe, step == "attach", e == ENOENT {
                detail += " (kprobes are not built into this kernel: CONFIG_KPROBES)"
            }
            return ProgramTypeProbe(type: type, available: false, errno: e, detail: detail)
        }
        let obj: BPFObject
        do { obj = try BPFObject(BPFNames.FlowmeterProbe.self) } catch {
            return ProgramTypeProbe(type: type, available: false, errno: 0, detail: "\(error)")
        }
        var p: OpaquePointer? = nil
        while let next = bpf_object__next_program(obj.handle, p) {
            bpf_program__set_autoload(next, String(cString: bpf_program__name(next)) == type.probeProgram.name)
            p = next
        }
        do { try obj.load() } catch let e as BPFError {
            return refused("load", e.errno)
        } catch {
            return ProgramTypeProbe(type: type, available: false, errno: 0, detail: "load: \(error)")
        }
        guard let prog = try? obj.program(type.probeProgram) else {
            return ProgramTypeProbe(type: type, available: false, errno: ENOENT, detail: "no probe program \(type.probeProgram)")
        }
        switch type {
        case .rawTPRun:
            // Run it once: it returns its first argument + 1.
            var ctx = [UInt64](repeating: 0, count: Int(FM_UPDATE_RUN_KEYS))
            ctx[0] = 41
            var retval: UInt32 = 0, duration: UInt32 = 0
            let r = ctx.withUnsafeBytes {
                fm_prog_test_run(bpf_program__fd(prog), nil, 0, $0.baseAddress, UInt32($0.count), 0, &retval, &duration)
            }
            if r != 0 { return refused("BPF_PROG_TEST_RUN", -r) }
            if retval != 42 {
                return ProgramTypeProbe(type: type, available: false, errno: 0, detail: "test run returned \(retval), want 42")
            }
            return ProgramTypeProbe(type: type, available: true, errno: 0, detail: "")
        case .iterMapElem:
            let m = bpf_map_create(BPF_MAP_TYPE_HASH, "fm_probe_it", 8, 8, 4, nil)
            if m < 0 { return refused("create a map to walk", -m) }
            defer { close(m) }
            guard let link = fm_attach_map_iter(prog, m) else { return refused("attach", fm_errno()) }
            defer { bpf_link__destroy(link) }
            let fd = bpf_iter_create(bpf_link__fd(link))
            if fd < 0 { return refused("create the iterator", fd == -1 ? fm_errno() : -fd) }
            defer { close(fd) }
            var buf = [UInt8](repeating: 0, count: 64)
            if buf.withUnsafeMutableBytes({ read(fd, $0.baseAddress, $0.count) }) < 0 { return refused("read", errno) }
            return ProgramTypeProbe(type: type, available: true, errno: 0, detail: "")
        case .cgroupSockRelease:
            let root = SocketPrograms.openCgroup2Root(mounted: CgroupPaths().root)
            if root < 0 {
                return ProgramTypeProbe(type: type, available: true, errno: 0, detail: "loads; not attached: no cgroup v2 hierarchy")
            }
            defer { close(root) }
            guard let link = bpf_program__attach_cgroup(prog, root) else { return refused("attach", fm_errno()) }
            bpf_link__destroy(link)
            return ProgramTypeProbe(type: type, available: true, errno: 0, detail: "")
        default:
            // A kprobe loads on a kernel without CONFIG_KPROBES and fails only
            // here; fentry may load and be refused here.
            guard let link = bpf_program__attach(prog) else { return refused("attach", fm_errno()) }
            bpf_link__destroy(link)
            return ProgramTypeProbe(type: type, available: true, errno: 0, detail: "")
        }
    }
}
