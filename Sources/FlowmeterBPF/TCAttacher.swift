import CLibbpf
import FlowmeterCore
import Foundation

/// How the tc programs are attached.
public enum TCMode: String, Sendable, CaseIterable {
    /// TCX links where the kernel has them (6.6+), else clsact.
    case auto
    /// TCX links only (bpf_link_create); they vanish with the process, even on SIGKILL.
    case tcx
    /// cls_bpf filters on a clsact qdisc (any kernel); these outlive a killed
    /// process, so a state file records them and the next start removes them.
    case clsact
}

/// The network interfaces of this process's network namespace.
public enum HostInterfaces {
    /// Every interface with its index and up/loopback flags. Asks the kernel
    /// (if_nameindex, SIOCGIFFLAGS on a socket of our own), not /sys/class/net:
    /// sysfs shows the namespace it was mounted in, which is not ours under
    /// `nsenter --net` or in a container that shares the host's /sys.
    public static func list() -> [InterfaceSelection.Candidate] {
        guard let head = if_nameindex() else { return [] }
        defer { if_freenameindex(head) }
        let sock = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { if sock >= 0 { close(sock) } }
        var out: [InterfaceSelection.Candidate] = []
        var p = head
        while p.pointee.if_index != 0, let cname = p.pointee.if_name {
            let name = String(cString: cname)
            var req = ifreq()
            withUnsafeMutableBytes(of: &req.ifr_ifrn.ifrn_name) { dst in
                let bytes = Array(name.utf8.prefix(dst.count - 1))
                dst.copyBytes(from: bytes)
            }
            var flags: Int32 = 0
            if sock >= 0, ioctl(sock, UInt(SIOCGIFFLAGS), &req) == 0 {
                flags = Int32(req.ifr_ifru.ifru_flags)
            }
            out.append(
                .init(
                    name: name, ifindex: p.pointee.if_index, isUp: flags & Int32(IFF_UP) != 0,
                    isLoopback: flags & Int32(IFF_LOOPBACK) != 0))
            p += 1
        }
        return out.sorted { $0.name < $1.name }
    }
}

/// Attaches the accounting programs to interfaces and takes them off again.
/// Thread-safe: the link monitor attaches and detaches while the collector runs.
public final class TCAttacher: @unchecked Sendable {
    /// cls_bpf filter identity on clsact. Priority 1 so we run before filters
    /// added later with the usual priorities and see packets they may redirect;
    /// a handle nobody else is likely to pick.
    public static let clsactHandle: UInt32 = 0xF10E
    public static let clsactPriority: UInt32 = 1

    public struct Attachment: Sendable {
        public let name: String
        public let ifindex: UInt32
        public let mode: TCMode
        var linkFDs: [Int32]
        var createdQdisc: Bool
    }

    private let ingressFD: Int32
    private let egressFD: Int32
    /// The kernel's ids of the two programs, written with each clsact record:
    /// the next start tells a leftover filter as ours by its program's id,
    /// which needs no CAP_SYS_ADMIN (reading a program's name by id does).
    private let programIDs: [UInt32]
    /// The program ids the state file held at start (a killed run's).
    private var recordedPrograms = Set<UInt32>()
    private let statePath: String
    /// --persist: TCX links are pinned here, and attachments an earlier run
    /// left are adopted (their program swapped for ours) instead of removed.
    private let pins: PinDirectory?
    /// Recorded clsact attachments kept for adoption: ifindex -> whether the
    /// earlier run created the qdisc (so `uninstall` still removes it).
    private var adoptable: [UInt32: Bool] = [:]
    /// Set by `release()`: what is attached is no longer ours to change.
    private var released = false
    /// Attachments that went to another program in one step (what adoption did).
    public private(set) var adoptedCount = 0
    private let lock = NSLock()
    private var attachments: [Attachment] = []
    /// The mode `auto` resolved to at the first attach; later attaches use it.
    private var resolvedMode: TCMode?

    /// The mode the first attach resolved `auto` to; nil while nothing was attached.
    public var mode: TCMode? { lock.withLock { resolvedMode } }

    /// ifindex -> name of every interface we are attached to.
    public var attached: [UInt32: String] {
        lock.withLock { Dictionary(attachments.map { ($0.ifindex, $0.name) }, uniquingKeysWith: { a, _ in a }) }
    }

    /// `stateDir` holds the record of clsact attachments (default /run/flowmeter).
    public init(ingressFD: Int32, egressFD: Int32, stateDir: String, pins: PinDirectory? = nil) {
        self.ingressFD = ingressFD
        self.egressFD = egressFD
        self.pins = pins
        programIDs = [ingressFD, egressFD].map(Self.programID(fd:)).filter { $0 != 0 }
        statePath = stateDir + "/tc-attachments"
    }

    // MARK: attach

    /// Attaches to every interface given. All or nothing: on an error, what was
    /// attached is detached again before the error is thrown.
    /// Returns the mode used ("tcx" or "clsact").
    @discardableResult
    public func attach(_ interfaces: [InterfaceSelection.Candidate], mode: TCMode) throws -> TCMode {
        try lock.withLock { try attachLocked(interfaces, mode: mode) }
    }

    /// Attaches one more interface (one that appeared after start), in the mode
    /// the first attach resolved to. On error nothing of it stays attached.
    public func attachAnother(_ iface: InterfaceSelection.Candidate, mode: TCMode) throws {
        try lock.withLock {
            let m = resolvedMode ?? mode
            do {
                switch m {
                case .tcx: try attachTCX(iface)
                case .clsact: try attachClsact(iface)
                case .auto: _ = try attachLocked([iface], mode: .auto, rollBackAll: false)
                }
            } catch {
                detachLocked { $0.ifindex == iface.ifindex }
                throw error
            }
        }
    }

    /// Detaches from one interface (it went away, or no longer matches).
    public func detach(ifindex: UInt32) {
        lock.withLock { detachLocked { $0.ifindex == ifindex } }
    }

    private func attachLocked(
        _ interfaces: [InterfaceSelection.Candidate], mode: TCMode,
        rollBackAll: Bool = true
    ) throws -> TCMode {
        var resolved = resolvedMode ?? mode
        do {
            for iface in interfaces {
                switch resolved {
                case .tcx:
                    try attachTCX(iface)
                case .clsact:
                    try attachClsact(iface)
                case .auto:
                    do {
                        try attachTCX(iface)
                        resolved = .tcx
                    } catch let e as BPFError where [EINVAL, EOPNOTSUPP, ENOTSUP, 524].contains(e.errno) {
                        // No TCX on this kernel: every interface goes through clsact.
                        resolved = .clsact
                        try attachClsact(iface)
                    }
                }
            }
        } catch {
            if rollBackAll { detachLocked { _ in true } }
            throw error
        }
        let final: TCMode = resolved == .auto ? .tcx : resolved
        if !interfaces.isEmpty { resolvedMode = final }
        return final
    }

    private func attachTCX(_ iface: InterfaceSelection.Candidate) throws {
        let inFD = try tcxLink(iface, ingress: true)
        let outFD: Int32
        do { outFD = try tcxLink(iface, ingress: false) } catch {
            close(inFD)
            throw error
        }
        attachments.append(
            Attachment(
                name: iface.name, ifindex: iface.ifindex, mode: .tcx,
                linkFDs: [inFD, outFD], createdQdisc: false))
    }

    /// One direction's TCX link: with --persist, the pinned link an earlier
    /// run left on this interface, now running our program (swapped in one
    /// step, so no packet is missed), else a new link, pinned.
    private func tcxLink(_ iface: InterfaceSelection.Candidate, ingress: Bool) throws -> Int32 {
        let what = "tcx \(ingress ? "ingress" : "egress") on \(iface.name)"
        let pinName = PinDirectory.tcxLink(ifindex: iface.ifindex, ingress: ingress)
        if let pins, let fd = try pins.open(pinName) {
            var type: UInt32 = 0, idx: UInt32 = 0, attachType: UInt32 = 0, prog: UInt32 = 0
            let want = UInt32(ingress ? FM_BPF_TCX_INGRESS : FM_BPF_TCX_EGRESS)
            // A link whose interface went away is defunct (index 0): drop it.
            if fm_tcx_link_info(fd, &type, &idx, &attachType, &prog) == 0, idx == iface.ifindex, attachType == want {
                let r = fm_link_update(fd, ingress ? ingressFD : egressFD)
                if r == 0 {
                    adoptedCount += 1
                    return fd
                }
                close(fd)
                throw BPFError("adopt the pinned link of \(what)", errno: -r)
            }
            close(fd)
            pins.remove(pinName)
        }
        let fd = fm_tcx_attach(ingress ? ingressFD : egressFD, Int32(iface.ifindex), ingress ? 1 : 0)
        if fd < 0 { throw BPFError("attach \(what)", errno: -fd) }
        if let pins {
            do { try pins.pin(fd, as: pinName) } catch {
                close(fd)
                throw error
            }
        }
        return fd
    }

    private func attachClsact(_ iface: InterfaceSelection.Candidate) throws {
        let idx = Int32(iface.ifindex)
        if pins != nil, let created = adoptable.removeValue(forKey: iface.ifindex), try adoptClsact(iface, created: created) {
            return
        }
        removeStaleFilters(ifindex: idx, recorded: recordedPrograms)
        // A qdisc we are about to create is recorded as ours before it
        // exists: recorded after, a kill in between left it on the interface
        // for good (the next run found it there and took it for someone
        // else's; tests/e2e/test_faults.py). A record of a qdisc that never
        // got made costs nothing: removing it later finds nothing.
        let existed = fm_clsact_exists(idx)
        if existed == 0 {
            attachments.append(Attachment(name: iface.name, ifindex: iface.ifindex, mode: .clsact, linkFDs: [], createdQdisc: true))
            writeState()
        }
        let created = fm_clsact_create(idx)
        if existed == 0 { attachments.removeLast() }
        if created != 0 && created != -EEXIST {
            writeState()
            throw BPFError(
                "create clsact qdisc on \(iface.name)"
                    + (created == -ENOENT || created == -EOPNOTSUPP ? " (is the sch_ingress module available? modprobe sch_ingress)" : ""),
                errno: -created)
        }
        let a = Attachment(name: iface.name, ifindex: iface.ifindex, mode: .clsact, linkFDs: [], createdQdisc: created == 0)
        attachments.append(a)
        writeState()  // before the filters, so a kill right now still leaves a record
        for (ingress, fd) in [(Int32(1), ingressFD), (Int32(0), egressFD)] {
            let r = fm_tc_attach(fd, idx, ingress, Self.clsactHandle, Self.clsactPriority)
            if r != 0 {
                throw BPFError("attach tc \(ingress == 1 ? "ingress" : "egress") filter on \(iface.name)", errno: -r)
            }
        }
    }

    /// Swaps our program into the filters an earlier run left (--persist),
    /// each in one netlink request. False if there are none to adopt (the
    /// caller then attaches as usual).
    private func adoptClsact(_ iface: InterfaceSelection.Candidate, created: Bool) throws -> Bool {
        let idx = Int32(iface.ifindex)
        let ours = [Int32(1), 0].map { fm_tc_query(idx, $0, Self.clsactHandle, Self.clsactPriority) }
        guard ours.allSatisfy({ $0 != 0 && recordedPrograms.contains($0) }) else { return false }
        attachments.append(Attachment(name: iface.name, ifindex: iface.ifindex, mode: .clsact, linkFDs: [], createdQdisc: created))
        for (ingress, fd) in [(Int32(1), ingressFD), (Int32(0), egressFD)] {
            let r = fm_tc_replace(fd, idx, ingress, Self.clsactHandle, Self.clsactPriority)
            if r != 0 {
                writeState()
                throw BPFError("adopt the tc \(ingress == 1 ? "ingress" : "egress") filter on \(iface.name)", errno: -r)
            }
            adoptedCount += 1
        }
        writeState()  // the record now names our programs
        return true
    }

    /// After the first attach with --persist: takes off what an earlier run
    /// left and this one did not adopt (an interface no longer chosen, a tc
    /// mode changed): clsact filters kept for adoption, and pinned TCX links
    /// of interfaces we are not attached to. Returns what it removed.
    public func finishAdoption() -> [String] {
        lock.withLock {
            var removed: [String] = []
            for (idx, created) in adoptable {
                let n = removeStaleFilters(ifindex: Int32(idx), recorded: recordedPrograms)
                if n > 0 { removed.append("\(n) tc filter(s) on interface \(idx)") }
                if created && fm_clsact_destroy(Int32(idx)) == 0 { removed.append("clsact qdisc on interface \(idx)") }
            }
            adoptable = [:]
            guard let pins else { return removed }
            let mine = Set(
                attachments.filter { $0.mode == .tcx }.flatMap { a in
                    [true, false].map { PinDirectory.tcxLink(ifindex: a.ifindex, ingress: $0) }
                })
            for name in pins.entries() where name.hasPrefix("tcx_") && !mine.contains(name) {
                if let fd = try? pins.open(name) {
                    _ = fm_link_detach(fd)
                    close(fd)
                }
                pins.remove(name)
                removed.append("TCX link \(name)")
            }
            return removed
        }
    }

    // MARK: detach

    /// --persist: lets go without detaching. Pinned TCX links stay attached
    /// (closing our descriptors does not detach a pinned link), clsact
    /// filters stay, and so does their record, for the next start to adopt.
    public func release() {
        lock.withLock {
            for a in attachments { for fd in a.linkFDs { close(fd) } }
            attachments.removeAll()
            released = true
        }
    }

    /// Takes everything off. Safe to call twice.
    public func detachAll() {
        lock.withLock { detachLocked { _ in true } }
    }

    private func detachLocked(where match: (Attachment) -> Bool) {
        // Released: the record is the next start's (no rewrite, no removal).
        if released { return }
        for a in attachments where match(a) {
            switch a.mode {
            case .tcx, .auto:
                // Closing the last fd of an unpinned link detaches it; so
                // the pins (--persist) go first.
                for ingress in [true, false] { pins?.remove(PinDirectory.tcxLink(ifindex: a.ifindex, ingress: ingress)) }
                for fd in a.linkFDs { close(fd) }
            case .clsact:
                let idx = Int32(a.ifindex)
                for ingress in [Int32(1), 0] {
                    if fm_tc_query(idx, ingress, Self.clsactHandle, Self.clsactPriority) != 0 {
                        _ = fm_tc_detach(idx, ingress, Self.clsactHandle, Self.clsactPriority)
                    }
                }
                if a.createdQdisc { _ = fm_clsact_destroy(idx) }
            }
        }
        attachments.removeAll(where: match)
        if attachments.contains(where: { $0.mode == .clsact }) {
            writeState()
        } else {
            try? FileManager.default.removeItem(atPath: statePath)
        }
    }

    // MARK: what an earlier, killed run left behind

    /// Removes clsact filters and qdiscs that an earlier run recorded in the
    /// state file and did not take off (it was killed). TCX links need no
    /// cleanup: the kernel drops them with the process. Returns what it removed.
    ///
    /// With --persist, records of the interfaces in `keeping` stay: their
    /// filters are adopted by the attach that follows.
    @discardableResult
    public func removeLeftovers(keeping: Set<UInt32> = []) -> [String] {
        var removed: [String] = []
        unlink(statePath + ".tmp")  // a record being written when the run was killed
        guard let text = try? String(contentsOfFile: statePath, encoding: .utf8) else { return removed }
        for line in text.split(separator: "\n") {
            // "clsact <ifindex> <name> created=<0|1> programs=<id>,<id>" (records
            // of versions before the program ids end after created=).
            let f = line.split(separator: " ")
            guard f.count == 4 || f.count == 5, f[0] == "clsact", let idx = Int32(f[1]) else { continue }
            let name = String(f[2])
            var recorded = Set<UInt32>()
            if f.count == 5, f[4].hasPrefix("programs=") {
                recorded = Set(f[4].dropFirst("programs=".count).split(separator: ",").compactMap { UInt32($0) })
                lock.withLock { recordedPrograms.formUnion(recorded) }
            }
            // The index must still be the interface the record names; else it is gone.
            guard if_nametoindex(name) == UInt32(idx) else { continue }
            if pins != nil && keeping.contains(UInt32(idx)) && !recorded.isEmpty {
                lock.withLock { adoptable[UInt32(idx)] = f[3] == "created=1" }
                continue
            }
            let filters = removeStaleFilters(ifindex: idx, recorded: recorded)
            if filters > 0 { removed.append("\(filters) tc filter(s) on \(name)") }
            if f[3] == "created=1" && fm_clsact_destroy(idx) == 0 { removed.append("clsact qdisc on \(name)") }
        }
        try? FileManager.default.removeItem(atPath: statePath)
        return removed
    }

    /// Detaches filters at our (handle, priority) whose program is one of ours:
    /// one whose id the record holds (the filter keeps the killed run's
    /// program, so its id is still that program's), else by the kernel's name
    /// for it, compared with the generated names (that lookup by id needs
    /// CAP_SYS_ADMIN; without it a record with no ids removes nothing).
    @discardableResult
    private func removeStaleFilters(ifindex: Int32, recorded: Set<UInt32>) -> Int {
        var n = 0
        for ingress in [Int32(1), 0] {
            let id = fm_tc_query(ifindex, ingress, Self.clsactHandle, Self.clsactPriority)
            guard id != 0, recorded.contains(id) || FlowAccountingProgram.isOurs(kernelName: Self.programName(id: id)) else {
                continue
            }
            if fm_tc_detach(ifindex, ingress, Self.clsactHandle, Self.clsactPriority) == 0 { n += 1 }
        }
        return n
    }

    /// The kernel's id of a program we hold a descriptor of (no capability needed); 0 if unknown.
    static func programID(fd: Int32) -> UInt32 {
        var info = bpf_prog_info()
        var len = UInt32(MemoryLayout<bpf_prog_info>.size)
        guard fd >= 0, bpf_obj_get_info_by_fd(fd, &info, &len) == 0 else { return 0 }
        return info.id
    }

    static func programName(id: UInt32) -> String {
        let fd = bpf_prog_get_fd_by_id(id)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var info = bpf_prog_info()
        var len = UInt32(MemoryLayout<bpf_prog_info>.size)
        guard bpf_obj_get_info_by_fd(fd, &info, &len) == 0 else { return "" }
        return withUnsafeBytes(of: info.name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
    }

    /// " programs=<ingress id>,<egress id>" for the state records; empty if the ids are unknown.
    private var programsField: String {
        programIDs.isEmpty ? "" : " programs=" + programIDs.map(String.init).joined(separator: ",")
    }

    private func writeState() {
        let lines = attachments.filter { $0.mode == .clsact }
            .map { "clsact \($0.ifindex) \($0.name) created=\($0.createdQdisc ? 1 : 0)\(programsField)\n" }.joined()
        let dir = (statePath as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // Written aside and renamed, so a kill leaves the old record or the
        // new one. Under a fixed name: Foundation's atomic write picks a new
        // temporary name each time, and a kill mid-write left one behind per kill.
        let tmp = statePath + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return }
        let ok = Array(lines.utf8).withUnsafeBytes { b in b.isEmpty || write(fd, b.baseAddress, b.count) == b.count }
        close(fd)
        if ok { rename(tmp, statePath) } else { unlink(tmp) }
    }

    deinit { lock.withLock { detachLocked { _ in true } } }
}
