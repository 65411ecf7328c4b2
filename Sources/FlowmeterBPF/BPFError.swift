import CLibbpf
import Foundation
import Synchronization

/// An error from the kernel or libbpf, with what we were doing when it happened.
public struct BPFError: Error, CustomStringConvertible {
    /// What failed, e.g. "attach tc ingress on eth0".
    public let operation: String
    /// errno from the kernel (0 if none).
    public let errno: Int32
    /// Extra lines (libbpf's own messages, e.g. the verifier log tail).
    public let detail: String

    /// Set when the failure is a program whose type the kernel refuses.
    public var refusal: ProgramRefusal?

    public init(_ operation: String, errno: Int32, detail: String = "") {
        self.operation = operation; self.errno = errno; self.detail = detail
    }

    /// A program the kernel refuses (found by probing its type): the whole
    /// line is the refusal's, which names the program, section and errno.
    public init(refused r: ProgramRefusal) {
        operation = r.description; errno = r.errno; detail = ""; refusal = r
    }

    /// The first line of `description`: what failed and the errno, without
    /// libbpf's log (for one-line errors on the command line).
    public var summary: String {
        refusal != nil ? operation : errno != 0 ? operation + ": " + String(cString: strerror(errno)) + " (errno \(errno))" : operation
    }

    public var description: String {
        var s = operation
        if errno != 0 && refusal == nil { s += ": " + String(cString: strerror(errno)) + " (errno \(errno))" }
        if !detail.isEmpty { s += "\n" + detail }
        return s
    }

    /// Builds an error from a libbpf/kernel return value (negative errno or -1 with errno set).
    static func from(_ operation: String, result: Int32, withLibbpfLog: Bool = false) -> BPFError {
        let e = result < -1 ? -result : (result == -1 ? fm_errno() : -result)
        return BPFError(operation, errno: e, detail: withLibbpfLog ? LibbpfLog.recent() : "")
    }
}

/// libbpf's messages: kept (last lines) so a failure can say what libbpf said,
/// and printed to stderr when FLOWMETER_LIBBPF_DEBUG is set.
enum LibbpfLog {
    /// The last lines per thread (keyed by pthread_self): objects may load on
    /// several threads at once, and a failure's detail must be its own load's lines.
    private static let lines = Mutex<[UInt: [String]]>([:])
    private static let installed = Mutex(false)
    /// FLOWMETER_LIBBPF_DEBUG, read once: libbpf calls the print function
    /// for each of its debug lines (hundreds per object: every CO-RE
    /// relocation), and reading the environment per line was a measurable
    /// part of start-up.
    static let debug = getenv("FLOWMETER_LIBBPF_DEBUG") != nil

    static func install() {
        installed.withLock { done in
            guard !done else { return }
            done = true
            libbpf_set_print { level, format, args in
                guard let format, let args else { return 0 }
                // Debug lines are only ever printed: not formatted unless asked for.
                guard LibbpfLog.debug || level.rawValue <= LIBBPF_INFO.rawValue else { return 0 }
                var buf = [CChar](repeating: 0, count: 4096)
                let n = vsnprintf(&buf, buf.count, format, args)
                let text = String(cString: buf)
                if LibbpfLog.debug { FileHandle.standardError.write(Data(text.utf8)) }
                if level.rawValue <= LIBBPF_INFO.rawValue {
                    LibbpfLog.record(text)
                }
                return n
            }
        }
    }

    private static var thread: UInt { UInt(pthread_self()) }

    static func record(_ text: String) {
        let me = thread
        lines.withLock { all in
            var l = all[me] ?? []
            for line in text.split(separator: "\n") { l.append(String(line)) }
            if l.count > 40 { l.removeFirst(l.count - 40) }
            all[me] = l
        }
    }

    /// The last lines, for an error's detail. libbpf's advice for any EPERM
    /// as root ("try raising 'ulimit -l'?") is replaced by what EPERM means
    /// on this kernel (`Errno.epermNote`): wrong where BPF memory is charged
    /// to the memory cgroup.
    static func recent() -> String {
        let me = thread
        let recent = lines.withLock { all in
            defer { all[me] = nil }
            return Array((all[me] ?? []).suffix(20))
        }
        return recent.map { line in
            line.contains("ulimit -l") ? "  note: " + Errno.epermNote : "  libbpf: " + line
        }.joined(separator: "\n")
    }

    /// The program of libbpf's "prog 'NAME': failed to load" line in a detail.
    static func failedProgram(in detail: String) -> String? {
        for line in detail.split(separator: "\n").reversed() {
            guard let r = line.range(of: "prog '") else { continue }
            let rest = line[r.upperBound...]
            guard let end = rest.firstIndex(of: "'"), rest[end...].hasPrefix("': failed to load") else { continue }
            return String(rest[..<end])
        }
        return nil
    }

    static func clear() {
        let me = thread
        _ = lines.withLock { $0.removeValue(forKey: me) }
    }
}
