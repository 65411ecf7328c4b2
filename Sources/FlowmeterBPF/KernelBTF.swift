import CLibbpf
import Foundation

/// The running kernel's BTF (/sys/kernel/btf/vmlinux), parsed once for the
/// daemon's own look-ups and shared by them until the loader lets go of it.
///
/// Parsing it takes 15-40 ms on a 2-CPU machine (5.5 MiB of types), and
/// start-up asked for it twice on top of libbpf's own parse per object:
/// whether the sock:sock_send_length tracepoint exists (tracepoint rung) and
/// the names of enum skb_drop_reason (drops). libbpf 1.1 parses it again for
/// every object it loads and offers no way to hand it a parsed one.
public enum KernelBTF {
    /// The parsed BTF; nil until first asked for. The pointer stays valid
    /// until `release`; both are only touched under `lock`.
    nonisolated(unsafe) private static var btf: OpaquePointer?
    nonisolated(unsafe) private static var tried = false
    private static let lock = NSLock()

    /// Runs `body` with the kernel's BTF (nil: the kernel has none, e.g.
    /// without CONFIG_DEBUG_INFO_BTF), parsing it on first use.
    public static func with<T>(_ body: (OpaquePointer?) throws -> T) rethrows -> T {
        try lock.withLock {
            if !tried {
                btf = btf__load_vmlinux_btf()
                tried = true
            }
            return try body(btf)
        }
    }

    /// Whether the kernel's BTF has a type of this name and kind (e.g. the
    /// "btf_trace_<tracepoint>" typedef behind every raw tracepoint).
    public static func hasType(_ name: String, kind: Int32) -> Bool {
        with { btf in
            guard let btf else { return false }
            return btf__find_by_name_kind(btf, name, UInt32(kind)) > 0
        }
    }

    /// Frees the parsed BTF (its memory goes back with the loader's), so the
    /// running daemon does not keep 5.5 MiB it no longer needs. A later
    /// look-up parses it again.
    public static func release() {
        lock.withLock {
            if let b = btf { btf__free(b) }
            btf = nil
            tried = false
        }
    }
}
