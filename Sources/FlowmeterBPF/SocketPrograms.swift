import CLibbpf
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
    /// The logical hooks and their twins: (fentry, kprobe, tp_btf, classic tracepoint) program names.
    /// nil: on that rung another twin's body covers the hook (listen() reaches
    /// the state tracepoint, but not tcp_set_state).
    static let twins: [(hook: String, fentry: String, kprobe: String, tpBTF: String?, tracepoint: String?)] = [
        ("tcp_state", "fm_state_fentry", "fm_state_kprobe", "fm_state_tp_btf", "fm_state_tp"),
        ("tcp_listen", "fm_listen_fentry", "fm_listen_kprobe", nil, nil),
        ("tcp_reset_received", "fm_reset_rx_fentry", "fm_reset_rx_kprobe", "fm_reset_rx_tp_btf", "fm_reset_rx_tp"),
        ("tcp_reset_sent", "fm_reset_tx_fentry", "fm_reset_tx_kprobe", "fm_reset_tx_tp_btf", "fm_reset_tx_tp"),
    ]

    public let rung: HookRung
    /// Per hook, the mode in use: "fentry", "kprobe", "tp_btf" or "tracepoint".
    public let modes: [HookMode]
    let object: BPFObject
    private var links: [OpaquePointer] = []
    public let eventsRingFD: Int32
    let statsFD: Int32

    private enum Variant: String { case fentry, kprobe, tpBTF = "tp_btf", tracepoint }

    private init(variant: Variant, rung: HookRung) throws {
        let obj = try BPFObject(name: "flowmeter_sock", base64: EmbeddedBPF.flowmeterSock)
        var chosen = Set<String>()
        var modes: [HookMode] = []
        for t in Self.twins {
            let name: String? = switch variant {
            case .fentry: t.fentry
            case .kprobe: t.kprobe
            case .tpBTF: t.tpBTF
            case .tracepoint: t.tracepoint
            }
            if let name { chosen.insert(name) }
            modes.append(HookMode(hook: t.hook, mode: name == nil ? "\(variant.rawValue) (tcp_state)" : variant.rawValue))
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
        eventsRingFD = try obj.mapFD("events")
        statsFD = try obj.mapFD("fm_sock_stats")
        for name in chosen.sorted() {
            guard let link = bpf_program__attach(try obj.program(name)) else {
                let e = fm_errno()
                links.forEach { bpf_link__destroy($0) }
                links.removeAll()
                let tracefs = ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"]
                    .contains { FileManager.default.fileExists(atPath: $0) }
                let hint = variant == .tracepoint && e == ENOENT && !tracefs
                    ? " (tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing)" : ""
                throw BPFError("attach \(name)\(hint)", errno: e)
            }
            links.append(link)
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
        var reasons: [String] = []
        for rung in rungs {
            let variants: [Variant] = switch rung {
            case .fentry: [.fentry]
            case .kprobe: [.kprobe]
            case .tracepoint: request == .tracepointClassic ? [.tracepoint] : [.tpBTF, .tracepoint]
            }
            for v in variants {
                do { return try SocketPrograms(variant: v, rung: rung) } catch {
                    // Keep libbpf's last lines (the verifier's verdict) with the reason.
                    reasons.append("\(v.rawValue): \(error)")
                }
            }
        }
        throw BPFError("no socket-hook rung available for --hooks \(request.rawValue) (\(reasons.joined(separator: "; ")))", errno: 0)
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

    /// A reader of the "events" ring (start it, or consume on demand).
    public func eventsReader() throws -> RingReader {
        try RingReader(ringFD: eventsRingFD, name: "events-ring")
    }

    /// Empties the events ring on the caller's thread (self-test).
    public func drainEvents() throws -> [SocketEvent] {
        let r = try eventsReader()
        r.consumeNow()
        return r.take(ABI.decodeSocketEvent).records
    }

    /// Detaches every hook.
    public func detach() {
        links.forEach { bpf_link__destroy($0) }
        links.removeAll()
    }

    deinit { detach() }
}
