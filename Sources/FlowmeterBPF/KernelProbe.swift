import CLibbpf
import FlowmeterCore
import Foundation

/// What the running kernel offers, found by trying (loading, attaching,
/// creating), never by reading version numbers: distributions backport.
public struct KernelFeatures: Sendable {
    public struct Feature: Sendable {
        public let name: String
        public let available: Bool
        public let detail: String
    }
    public var features: [Feature] = []

    public func has(_ name: String) -> Bool { features.first { $0.name == name }?.available ?? false }

    /// The minimum flowmeterd needs: BTF, ring buffers, and a way to attach tc programs.
    public var missingMinimum: [String] {
        var m: [String] = []
        if !has("btf") { m.append("btf") }
        if !has("ringbuf") { m.append("ringbuf") }
        if !has("tc") || !(has("tcx") || has("clsact")) { m.append("tc (tcx or clsact)") }
        return m
    }

    /// The tc attach mode `auto` resolves to.
    public var tcMode: String { has("tcx") ? "tcx" : (has("clsact") ? "clsact" : "none") }

    /// The socket-hook rung `auto` resolves to: fentry, else kprobe, else
    /// tracepoint (tp_btf, else classic), then the rungs it would fall back to.
    public var socketRung: String {
        let ladder = [
            ("fentry", "fentry"), ("kprobe", "kprobe"), ("tp_btf", "tracepoint (tp_btf)"),
            ("tracepoint", "tracepoint (classic)"),
        ].filter { has($0.0) }.map(\.1)
        guard let first = ladder.first else { return "none: socket telemetry off" }
        return ladder.count == 1 ? first + "; no fallback" : first + "; fallback " + ladder.dropFirst().joined(separator: ", ")
    }

    /// How packet drops are counted, as `check` prints it.
    public var drops: String {
        guard let row = features.first(where: { $0.name == "drops" }), row.available else {
            return "none: packet drops are not counted"
        }
        return row.detail.hasPrefix("skb:kfree_skb via tp_btf") ? "kfree_skb (tp_btf)" : "kfree_skb (classic tracepoint)"
    }

    /// How DNS is seen, as `check` prints it.
    public var dns: String {
        guard let row = features.first(where: { $0.name == "dns" }), row.available else {
            return "none: DNS is not counted"
        }
        return "cgroup_skb on the cgroup v2 root"
    }

    /// How `--socket-updates auto` gets the counters of long-lived sockets,
    /// and the fallback, as `check` prints them.
    public var socketUpdates: String {
        let iter = has(ProgramType.iterMapElem.rawValue), run = has(ProgramType.rawTPRun.rawValue)
        switch (iter, run) {
        case (true, true): return "iterator (iter/bpf_map_elem); fallback raw_tp run (BPF_PROG_TEST_RUN)"
        case (true, false): return "iterator (iter/bpf_map_elem); no fallback (raw_tp runs refused)"
        case (false, true): return "raw_tp run (BPF_PROG_TEST_RUN); the iterator (iter/bpf_map_elem) is refused"
        case (false, false): return "none: bytes of long-lived sockets are counted at close only"
        }
    }
}

public enum KernelProbe {
    /// Probes everything `flowmeterd check` reports. Needs CAP_BPF/CAP_NET_ADMIN
    /// (root); without them most probes report the permission error.
    public static func run() -> KernelFeatures {
        LibbpfLog.install()
        var f = KernelFeatures()
        func add(_ name: String, _ ok: Bool, _ detail: String) { f.features.append(.init(name: name, available: ok, detail: detail)) }
        func errText(_ e: Int32) -> String { String(cString: strerror(e)) }

        // BTF
        // Parsed once, shared with the drop probe's look-up of its reason names.
        KernelBTF.with { btf in
            if let btf {
                add("btf", true, "/sys/kernel/btf/vmlinux, \(btf__type_cnt(btf)) types")
            } else {
                add("btf", false, "kernel BTF not found: \(errText(fm_errno())) (needs CONFIG_DEBUG_INFO_BTF)")
            }
        }

        // Ring buffer
        let rb = libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, nil)
        add(
            "ringbuf", rb == 1,
            rb == 1 ? "BPF_MAP_TYPE_RINGBUF" : (rb == 0 ? "map type unknown to this kernel" : "probe failed: \(errText(-rb))"))

        // tc programs
        let cls = libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SCHED_CLS, nil)
        add(
            "tc", cls == 1,
            cls == 1 ? "BPF_PROG_TYPE_SCHED_CLS loads" : (cls == 0 ? "program type unknown" : "probe failed: \(errText(-cls))"))

        // TCX: attach a trivial classifier to loopback ingress and take it off.
        let prog = fm_probe_load_trivial(BPF_PROG_TYPE_SCHED_CLS)
        if prog >= 0 {
            let lo = Int32(if_nametoindex("lo"))
            let link = fm_tcx_attach(prog, lo, 1)
            if link >= 0 {
                close(link)
                add("tcx", true, "bpf_link_create BPF_TCX_INGRESS")
            } else {
                add("tcx", false, "bpf_link_create BPF_TCX_INGRESS: \(errText(-link)) (needs Linux 6.6+)")
            }
            close(prog)
        } else {
            add("tcx", false, "cannot load a classifier: \(errText(-prog))")
        }

        // clsact: create on loopback (and remove only if we created it).
        let lo = Int32(if_nametoindex("lo"))
        let q = fm_clsact_create(lo)
        if q == 0 || q == -EEXIST {
            if q == 0 { _ = fm_clsact_destroy(lo) }
            add("clsact", true, q == 0 ? "qdisc created and removed on lo" : "qdisc present on lo")
        } else {
            add(
                "clsact", false,
                "create clsact on lo: \(errText(-q))"
                    + (q == -ENOENT || q == -EOPNOTSUPP ? " (is the sch_ingress module available? modprobe sch_ingress)" : ""))
        }

        // One row per program type the socket object uses: a minimal program
        // of each, loaded (and attached or run) on its own.
        for type in ProgramType.allCases {
            let r = ProgramTypes.probe(type)
            add(
                type.rawValue, r.available,
                r.available
                    ? type.probeDescription + (r.detail.isEmpty ? "" : " (\(r.detail))")
                    : "\(type.probeDescription): \(r.detail)")
        }

        // Packet drops: the skb:kfree_skb program, attached and detached at
        // once, and whether the kernel names its drop reasons.
        do {
            let d = try DropPrograms.load()
            d.detach()
            add(
                "drops", true,
                "skb:kfree_skb via \(d.mode.rawValue); "
                    + (d.hasReasons
                        ? "reasons from the kernel's BTF (enum skb_drop_reason, \(d.reasons.names.count) names)"
                        : "no reasons on this kernel (enum skb_drop_reason is 5.17+): every drop is reason=\"unknown\""))
        } catch {
            add("drops", false, "\((error as? BPFError)?.summary ?? "\(error)"): packet drops are not counted")
        }

        // DNS: the cgroup_skb programs, loaded and attached to the cgroup v2
        // root and detached at once (port 53 only for the probe).
        do {
            let d = try DNSPrograms(ports: [53], pendingSize: 16)
            d.detach()
            add("dns", true, "cgroup_skb egress and ingress on the cgroup v2 root")
        } catch {
            add("dns", false, "\((error as? BPFError)?.summary ?? "\(error)"): DNS is not counted")
        }

        // Batch map operations on a scratch hash map.
        let m = bpf_map_create(BPF_MAP_TYPE_HASH, "fm_probe", 4, 4, 4, nil)
        if m >= 0 {
            var keys = [UInt32](repeating: 0, count: 4), vals = keys
            var out: UInt64 = 0, count: UInt32 = 4
            let r = fm_map_lookup_and_delete_batch(m, nil, &out, &keys, &vals, &count)
            add(
                "batch_map_ops", r == 0 || r == -ENOENT,
                r == 0 || r == -ENOENT ? "BPF_MAP_LOOKUP_AND_DELETE_BATCH" : "lookup-and-delete batch: \(errText(-r)) (will iterate)")
            close(m)
        } else {
            add("batch_map_ops", false, "cannot create a hash map: \(errText(-m))")
        }

        // cgroup v2
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        if let line = mounts.split(separator: "\n").first(where: {
            $0.split(separator: " ").count > 2 && $0.split(separator: " ")[2] == "cgroup2"
        }) {
            add("cgroup_v2", true, "mounted at \(line.split(separator: " ")[1])")
        } else {
            add("cgroup_v2", false, "no cgroup2 mount in /proc/self/mounts")
        }
        KernelBTF.release()
        return f
    }
}

/// Capabilities of this process (from /proc/self/status CapEff).
public enum Capabilities {
    public static let netAdmin = 12, sysAdmin = 21, perfmon = 38, bpf = 39

    public static func effective() -> UInt64 {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
            let line = s.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
            let v = UInt64(line.dropFirst(7).trimmingCharacters(in: .whitespaces), radix: 16)
        else { return 0 }
        return v
    }

    /// Names of the capabilities flowmeterd needs and lacks (empty when fine).
    /// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as the kernel allows.
    public static func missing(effective caps: UInt64 = effective()) -> [String] {
        func has(_ c: Int) -> Bool { caps & (1 << UInt64(c)) != 0 }
        var m: [String] = []
        if !has(bpf) && !has(sysAdmin) { m.append("CAP_BPF") }
        if !has(netAdmin) { m.append("CAP_NET_ADMIN") }
        if !has(perfmon) && !has(sysAdmin) { m.append("CAP_PERFMON") }
        return m
    }
}
