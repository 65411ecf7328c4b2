import CLibbpf
import Foundation

/// Opens a libbpf ring buffer consumer and gives back the resident memory of
/// the second copy of its data pages, which the daemon never reads.
///
/// libbpf maps a ring's producer page and data pages read-only, the data
/// pages twice in a row (the kernel's layout, so that a record that wraps
/// past the end reads as one piece), and the kernel maps every page at mmap
/// time: each ring counted twice its size in VmRSS, 12.3 MiB of the idle
/// daemon's 45 for the flows (4 MiB), events (1 MiB) and DNS (1 MiB) rings
/// (`/proc/PID/smaps`, anon_inode:bpf-map). A record starts in the first
/// copy and runs at most its own length into the second, so only the start
/// of the second copy is ever read. The rest of it is zapped from the page
/// table (MADV_DONTNEED; the pages stay the kernel's, the mapping and
/// libbpf's reads are unchanged), which takes it out of the RSS. Reading a
/// zapped page would fault (SIGBUS: the mapping has no fault handler), so the
/// window kept is larger than any record our programs write
/// (`wrapWindow`; RingMappingTests checks the ABI's records against it).
///
/// libbpf 1.1 does not say where it mapped the ring, so the mapping is found
/// in /proc/self/maps: the one new read-only mapping at page offset 1 of the
/// ring's size, looked for under a lock that every ring's opening takes.
enum RingMapping {
    /// Bytes of the second copy kept mapped: more than the largest record
    /// (with its 8-byte header) any of our rings carries.
    static let wrapWindow = 16 * 1024

    private static let opening = NSLock()

    /// `ring_buffer__new(fd, callback, ctx)`, then the second copy trimmed.
    /// A trim that cannot be done leaves the ring as libbpf mapped it.
    static func open(ringFD: Int32, _ callback: ring_buffer_sample_fn, _ ctx: UnsafeMutableRawPointer?) -> OpaquePointer? {
        opening.withLock {
            let before = Set(readOnlyRingMappings())
            guard let rb = ring_buffer__new(ringFD, callback, ctx, nil) else { return nil }
            trimSecondCopy(ringFD: ringFD, new: readOnlyRingMappings().filter { !before.contains($0) })
            return rb
        }
    }

    struct Range: Hashable { let start: UInt, end: UInt }

    /// Read-only shared mappings of BPF maps at page offset 1: libbpf's
    /// producer-and-data mappings of ring buffers.
    static func readOnlyRingMappings() -> [Range] {
        guard let text = readProcFile("/proc/self/maps") else { return [] }
        let page = UInt(sysconf(Int32(_SC_PAGESIZE)))
        var out: [Range] = []
        for line in text.split(separator: "\n") where line.hasSuffix("anon_inode:bpf-map") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 6, f[1] == "r--s", UInt(f[2], radix: 16) == page else { continue }
            let r = f[0].split(separator: "-")
            guard r.count == 2, let s = UInt(r[0], radix: 16), let e = UInt(r[1], radix: 16) else { continue }
            out.append(Range(start: s, end: e))
        }
        return out
    }

    private static func trimSecondCopy(ringFD: Int32, new: [Range]) {
        var info = bpf_map_info()
        var len = UInt32(MemoryLayout<bpf_map_info>.size)
        guard bpf_obj_get_info_by_fd(ringFD, &info, &len) == 0 else { return }
        let page = UInt(sysconf(Int32(_SC_PAGESIZE)))
        let size = UInt(info.max_entries)
        let keep = (UInt(wrapWindow) + page - 1) / page * page
        // Exactly one new mapping of this ring's layout, or nothing is touched.
        let match = new.filter { $0.end - $0.start == page + 2 * size }
        guard match.count == 1, size > keep else { return }
        let from = match[0].start + page + size + keep
        _ = madvise(UnsafeMutableRawPointer(bitPattern: from), Int(size - keep), MADV_DONTNEED)
    }
}
