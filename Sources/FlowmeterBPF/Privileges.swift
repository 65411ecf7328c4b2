import CPrivileges
import Foundation

/// One thread's capability sets and no_new_privs, as /proc/<pid>/task/<tid>/status shows them.
public struct ThreadPrivileges: Sendable, Equatable {
    public var effective: UInt64
    public var permitted: UInt64
    public var inheritable: UInt64
    public var bounding: UInt64
    public var ambient: UInt64
    public var noNewPrivs: Bool

    /// Parses the Cap* and NoNewPrivs lines of a status file; nil if one is missing.
    public init?(status: String) {
        var v: [String: String] = [:]
        for line in status.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { continue }
            v[String(parts[0])] = parts[1].trimmingCharacters(in: .whitespaces)
        }
        func mask(_ k: String) -> UInt64? { v[k].flatMap { UInt64($0, radix: 16) } }
        guard let e = mask("CapEff"), let p = mask("CapPrm"), let i = mask("CapInh"), let b = mask("CapBnd"),
            let nnp = v["NoNewPrivs"]
        else { return nil }
        effective = e; permitted = p; inheritable = i; bounding = b
        // CapAmb exists from Linux 4.3 on; before it there is no ambient set.
        ambient = mask("CapAmb") ?? 0
        noNewPrivs = nnp == "1"
    }

    /// The calling thread's (each thread has its own).
    public static func current() -> ThreadPrivileges? {
        (try? String(contentsOfFile: "/proc/thread-self/status", encoding: .utf8)).flatMap { ThreadPrivileges(status: $0) }
    }
}

/// What went wrong while dropping capabilities. Carries counts and errno text only.
public struct PrivilegeError: Error, CustomStringConvertible {
    public let description: String
}

/// Giving up, once attached, the capabilities only the start needs.
public enum Privileges {
    public static let chown = 0, setpcap = 8, netBindService = 10, netAdmin = 12, sysAdmin = 21,
        perfmon = 38, bpf = 39

    private static let capabilityNames = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
        "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
        "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
        "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    ]

    /// "CAP_BPF", "CAP_NET_ADMIN", ... for the bits of a mask, lowest first.
    public static func names(_ mask: UInt64) -> [String] {
        (0..<64).filter { mask & (1 << UInt64($0)) != 0 }
            .map { $0 < capabilityNames.count ? capabilityNames[$0] : "CAP_\($0)" }
    }

    public static func mask(_ caps: Int...) -> UInt64 { caps.reduce(0) { $0 | (1 << UInt64($1)) } }

    /// The highest capability this kernel knows (40 on 5.9+, 37 before 5.8).
    public static func lastCapability() -> Int {
        (try? String(contentsOfFile: "/proc/sys/kernel/cap_last_cap", encoding: .utf8))
            .flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 63
    }

    /// What the running daemon still needs, out of what it has (`permitted`):
    /// - CAP_BPF: with kernel.unprivileged_bpf_disabled set (Debian's
    ///   default), older kernels refuse every bpf() command without it, map
    ///   reads and eviction included; and attaching to a new interface
    ///   creates TCX links. Where the kernel predates CAP_BPF (5.8), or the
    ///   process was given CAP_SYS_ADMIN instead, CAP_SYS_ADMIN is what
    ///   bpf() checks.
    /// - CAP_NET_ADMIN: attaching to interfaces that appear later, and taking
    ///   clsact filters off at shutdown (rtnetlink).
    /// CAP_PERFMON is needed only to load and attach the socket hooks;
    /// CAP_CHOWN and CAP_NET_BIND_SERVICE only until the servers run.
    public static func neededAfterAttach(
        followsInterfaces: Bool, clsact: Bool,
        permitted: UInt64 = ThreadPrivileges.current()?.permitted ?? 0
    ) -> UInt64 {
        var keep: UInt64 = permitted & mask(bpf) != 0 ? mask(bpf) : mask(sysAdmin)
        if followsInterfaces || clsact { keep |= mask(netAdmin) }
        return keep & permitted
    }

    public struct Dropped: Sendable {
        public let kept: UInt64
        public let threads: Int
        /// False when the process had no CAP_SETPCAP, which dropping from the
        /// bounding set needs; it is left as it was.
        public let boundingSetDropped: Bool
    }

    /// Every thread keeps `keep` (less what it does not have) as effective and
    /// permitted set and in the bounding set, nothing inheritable or ambient,
    /// and gets no_new_privs. Checks every thread afterwards.
    public static func dropAfterAttach(keep wanted: UInt64, timeoutMilliseconds: Int32 = 2000) throws -> Dropped {
        guard let me = ThreadPrivileges.current() else { throw PrivilegeError(description: "cannot read /proc/thread-self/status") }
        let keep = wanted & me.permitted
        let dropBounding = me.effective & mask(setpcap) != 0
        var r = fm_priv_result()
        let rc = fm_priv_restrict_all_threads(keep, Int32(lastCapability()), dropBounding ? 1 : 0, timeoutMilliseconds, &r)
        if rc != 0 {
            var parts = ["changed on \(r.threads) thread(s)"]
            if r.unacknowledged > 0 { parts.append("\(r.unacknowledged) did not answer within \(timeoutMilliseconds) ms") }
            if r.failed > 0 { parts.append("failed on \(r.failed)") }
            if r.first_error != 0 { parts.append(String(cString: strerror(r.first_error))) }
            throw PrivilegeError(description: parts.joined(separator: "; "))
        }
        let wrong = threadsNotMatching(keep: keep, bounding: dropBounding ? keep : nil)
        if wrong > 0 {
            throw PrivilegeError(description: "\(wrong) thread(s) still hold other capabilities after the change")
        }
        return Dropped(kept: keep, threads: Int(r.threads), boundingSetDropped: dropBounding)
    }

    /// Threads of this process whose sets are not exactly `keep` (bounding:
    /// `bounding`, when given), or that lack no_new_privs. A thread that exits
    /// while being read does not count.
    static func threadsNotMatching(keep: UInt64, bounding: UInt64?) -> Int {
        let tids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        var wrong = 0
        for tid in tids {
            guard let s = try? String(contentsOfFile: "/proc/self/task/\(tid)/status", encoding: .utf8),
                let p = ThreadPrivileges(status: s)
            else { continue }
            let ok =
                p.effective == keep && p.permitted == keep && p.inheritable == 0 && p.ambient == 0
                && p.noNewPrivs && (bounding == nil || p.bounding == bounding)
            if !ok { wrong += 1 }
        }
        return wrong
    }
}
