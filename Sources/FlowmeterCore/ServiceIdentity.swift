// Service identity: the name each end of a socket gets in the per-service
// metrics. Pure functions over values the collector has already read.
//
// Local end (`ServiceResolver.localService`), first step that yields a name wins:
//   1. the configured `ServiceRule`s, in file order: a rule matches when it has
//      at least one condition and every condition it gives holds (cgroup glob
//      over the cgroup path, process glob over the process name, local port in
//      its range, local address in its prefix; for a pod the runtime named,
//      namespace, workload and container globs and exact pod labels). A
//      condition whose input is unknown (nil cgroup path or process name, no
//      pod metadata yet) does not hold.
//   2. the pod's `<namespace>/<workload>`, when the runtime named the pod
//      (`PodIdentity`; the workload from `Workload.derive`).
//   3. the cgroup path: `CgroupWorkload.parse` names systemd services,
//      containers (docker, containerd, CRI-O) and Kubernetes pods (`pod:<uid>`,
//      also while the runtime's answer is pending or when it has none).
//   4. the process name (comm), when known and not empty.
//   5. "unknown".
//
// Peer end (`ServiceResolver.peerService`): the configured `PeerRule`s in file
// order (every condition given must hold, a rule with none never matches),
// else nil; the caller then labels the peer "unknown" or by address.

/// The workload a cgroup path belongs to, as far as the path alone tells.
public struct CgroupWorkload: Sendable, Hashable {
    public enum Kind: String, Sendable {
        case systemd, docker, containerd, crio, podman, kubernetes
    }

    public let kind: Kind
    /// The service label value: "nginx", "docker:0123456789ab", "pod:<uid>", ...
    public let service: String
    /// The full 64-hex container id, when the path names a container.
    public let containerID: String?
    /// The pod UID in its API form (dashes), for `.kubernetes`.
    public let podUID: String?

    public init(kind: Kind, service: String, containerID: String? = nil, podUID: String? = nil) {
        self.kind = kind; self.service = service; self.containerID = containerID; self.podUID = podUID
    }

    /// Recognises a cgroup path: a cgroup v2 path below the mount
    /// (`/system.slice/nginx.service`) or a cgroup v1 per-controller path as
    /// in /proc/PID/cgroup (`/docker/<id>`). The innermost component that
    /// names a workload decides:
    ///
    /// - `<name>.service` → `.systemd`, service `<name>` (template instances
    ///   keep their instance: `getty@tty1`). Sub-cgroups below a service belong
    ///   to it. The per-user manager `user@<uid>.service` names only itself
    ///   (alone or its `init.scope`); the units and scopes it runs that are not
    ///   services give nil, so the process name is used.
    /// - `docker-<id>.scope`, or `<id>` directly below `docker` (cgroupfs
    ///   driver) → `.docker`, `docker:<first 12 hex>`.
    /// - `cri-containerd-<id>.scope`, `nerdctl-<id>.scope` → `.containerd`,
    ///   `containerd:<12>`.
    /// - `crio-<id>.scope` → `.crio`, `crio:<12>`; `crio-conmon-<id>.scope` →
    ///   `.crio`, `crio-conmon:<12>`.
    /// - `libpod-<id>.scope`, or `libpod-<id>` (podman's cgroupfs manager) →
    ///   `.podman`, `podman:<12>`.
    /// - A Kubernetes pod cgroup, systemd driver
    ///   (`kubepods[-burstable|-besteffort]-pod<uid with _>.slice`) or
    ///   cgroupfs driver (`kubepods/[burstable|besteffort/]pod<uid>`), with or
    ///   without a container directly below it (any container scope above, or
    ///   a bare `<id>` for cgroupfs) → `.kubernetes`, `pod:<uid>`, with the
    ///   container id when there is one.
    ///
    /// `<id>` is exactly 64 lowercase hex characters; a pod uid is a
    /// lowercase 36-character UUID (underscores instead of dashes in the
    /// systemd form), or the 32 lowercase hex characters the kubelet gives
    /// static pods. Anything else is not a workload: nil when nothing else in
    /// the path is (`/`, `/init.scope`, `/system.slice`, session scopes).
    public static func parse(_ path: String) -> CgroupWorkload? {
        let parts = path.split(separator: "/").map(String.init)
        var i = parts.count - 1
        while i >= 0 {
            let name = parts[i]
            if let c = containerScope(name) {
                if i > 0, let uid = podUID(parts, at: i - 1) { return pod(uid, container: c.id) }
                return CgroupWorkload(kind: c.kind, service: "\(c.label):\(c.id.prefix(12))", containerID: c.id)
            }
            // podman with the cgroupfs manager: libpod-<id> below its parent.
            if name.hasPrefix("libpod-"), isContainerID(name.dropFirst("libpod-".count)), i > 0 {
                let id = String(name.dropFirst("libpod-".count))
                if let uid = podUID(parts, at: i - 1) { return pod(uid, container: id) }
                return CgroupWorkload(kind: .podman, service: "podman:\(id.prefix(12))", containerID: id)
            }
            if isContainerID(name), i > 0 {
                if let uid = podUID(parts, at: i - 1) { return pod(uid, container: name) }
                if parts[i - 1] == "docker" {
                    return CgroupWorkload(kind: .docker, service: "docker:\(name.prefix(12))", containerID: name)
                }
            }
            if let uid = podUID(parts, at: i) { return pod(uid, container: nil) }
            if let unit = serviceName(name) {
                if unit.hasPrefix("user@") {
                    let below = parts[(i + 1)...]
                    return below.isEmpty || below.elementsEqual(["init.scope"])
                        ? CgroupWorkload(kind: .systemd, service: unit) : nil
                }
                return CgroupWorkload(kind: .systemd, service: unit)
            }
            i -= 1
        }
        return nil
    }

    private static func pod(_ uid: String, container: String?) -> CgroupWorkload {
        CgroupWorkload(kind: .kubernetes, service: "pod:\(uid)", containerID: container, podUID: uid)
    }

    /// `<name>.service` → `<name>`.
    private static func serviceName(_ component: String) -> String? {
        guard component.hasSuffix(".service") else { return nil }
        let stem = component.dropLast(".service".count)
        return stem.isEmpty ? nil : String(stem)
    }

    /// A systemd-driver container scope: `<prefix><64 hex>.scope`.
    private static func containerScope(_ component: String) -> (kind: Kind, label: String, id: String)? {
        guard component.hasSuffix(".scope") else { return nil }
        let stem = component.dropLast(".scope".count)
        let forms: [(prefix: String, kind: Kind, label: String)] = [
            ("docker-", .docker, "docker"),
            ("cri-containerd-", .containerd, "containerd"),
            ("nerdctl-", .containerd, "containerd"),
            ("libpod-", .podman, "podman"),
            ("crio-conmon-", .crio, "crio-conmon"),
            ("crio-", .crio, "crio"),
        ]
        for f in forms where stem.hasPrefix(f.prefix) {
            let id = String(stem.dropFirst(f.prefix.count))
            if isContainerID(id) { return (f.kind, f.label, id) }
        }
        return nil
    }

    /// The pod UID (dashes form) when `parts[j]` is a Kubernetes pod cgroup.
    private static func podUID(_ parts: [String], at j: Int) -> String? {
        let name = parts[j]
        let qos: Set<String> = ["burstable", "besteffort"]
        // systemd driver: [...-]kubepods[-burstable|-besteffort]-pod<uid_>.slice
        if name.hasSuffix(".slice") {
            let words = name.dropLast(".slice".count).split(separator: "-", omittingEmptySubsequences: false)
            guard words.count >= 2, let last = words.last, last.hasPrefix("pod") else { return nil }
            let n = words.count
            let parentOK =
                words[n - 2] == "kubepods"
                || (n >= 3 && qos.contains(String(words[n - 2])) && words[n - 3] == "kubepods")
            guard parentOK else { return nil }
            let raw = last.dropFirst(3)
            if isStaticPodUID(raw) { return String(raw) }
            guard !raw.contains("-") else { return nil }
            let uid = raw.replacingUnderscores
            return isUUID(uid) ? uid : nil
        }
        // cgroupfs driver: kubepods/[burstable|besteffort/]pod<uid>
        guard name.hasPrefix("pod"), j >= 1 else { return nil }
        let parentOK =
            parts[j - 1] == "kubepods"
            || (j >= 2 && qos.contains(parts[j - 1]) && parts[j - 2] == "kubepods")
        guard parentOK else { return nil }
        let uid = String(name.dropFirst(3))
        return isUUID(uid) || isStaticPodUID(Substring(uid)) ? uid : nil
    }

    private static func isLowerHex(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "f"))
    }

    /// Exactly 64 lowercase hex characters.
    static func isContainerID<S: StringProtocol>(_ s: S) -> Bool {
        s.utf8.count == 64 && s.utf8.allSatisfy(isLowerHex)
    }

    /// 32 lowercase hex characters: the md5 the kubelet uses as a static pod's UID.
    static func isStaticPodUID(_ s: Substring) -> Bool {
        s.utf8.count == 32 && s.utf8.allSatisfy(isLowerHex)
    }

    /// A lowercase 8-4-4-4-12 UUID.
    static func isUUID(_ s: String) -> Bool {
        let b = Array(s.utf8)
        guard b.count == 36 else { return false }
        for (k, c) in b.enumerated() {
            if k == 8 || k == 13 || k == 18 || k == 23 {
                guard c == UInt8(ascii: "-") else { return false }
            } else {
                guard isLowerHex(c) else { return false }
            }
        }
        return true
    }
}

private extension Substring {
    var replacingUnderscores: String { String(map { $0 == "_" ? "-" : $0 }) }
}

/// Names the two ends of a socket from the configured rules (see the top of
/// this file for the order).
public struct ServiceResolver: Sendable {
    public let rules: [ServiceRule]
    public let peers: [PeerRule]

    public init(rules: [ServiceRule], peers: [PeerRule]) {
        self.rules = rules; self.peers = peers
    }

    /// The service of a socket's local end.
    public func localService(
        cgroupPath: String?, process: String?, address: IPAddress16, port: UInt16, pod: PodIdentity? = nil
    ) -> String {
        for rule in rules
        where Self.matches(rule, cgroupPath: cgroupPath, process: process, address: address, port: port, pod: pod) {
            return rule.service
        }
        if let pod { return pod.service }
        if let path = cgroupPath, let workload = CgroupWorkload.parse(path) { return workload.service }
        if let process, !process.isEmpty { return process }
        return "unknown"
    }

    /// The service of a peer, when a peer rule names it.
    public func peerService(address: IPAddress16, port: UInt16) -> String? {
        for rule in peers {
            var given = false
            if let cidr = rule.cidr {
                guard cidr.contains(address) else { continue }
                given = true
            }
            if let ports = rule.ports {
                guard ports.contains(port) else { continue }
                given = true
            }
            if given { return rule.service }
        }
        return nil
    }

    static func matches(
        _ rule: ServiceRule, cgroupPath: String?, process: String?, address: IPAddress16, port: UInt16,
        pod: PodIdentity? = nil
    ) -> Bool {
        var given = false
        if let pattern = rule.namespace {
            guard let pod, globMatch(pattern, pod.metadata.namespace) else { return false }
            given = true
        }
        if let pattern = rule.workload {
            guard let pod, globMatch(pattern, pod.workload.name) else { return false }
            given = true
        }
        if let pattern = rule.container {
            guard let name = pod?.metadata.container, globMatch(pattern, name) else { return false }
            given = true
        }
        if let wanted = rule.podLabels {
            guard let pod, wanted.allSatisfy({ pod.metadata.labels[$0.key] == $0.value }) else { return false }
            given = true
        }
        if let pattern = rule.cgroup {
            guard let cgroupPath, globMatch(pattern, cgroupPath) else { return false }
            given = true
        }
        if let pattern = rule.process {
            guard let process, globMatch(pattern, process) else { return false }
            given = true
        }
        if let ports = rule.ports {
            guard ports.contains(port) else { return false }
            given = true
        }
        if let cidr = rule.cidr {
            guard cidr.contains(address) else { return false }
            given = true
        }
        return given
    }
}
