import CLibbpf
import Foundation

/// Keeps the loader's transient peak out of the daemon's resident memory.
///
/// Loading parses the kernel's BTF (5.5 MiB here) and uses a 16 MiB verifier
/// log buffer, all freed after the load. With glibc's defaults the first such
/// block freed raises the mmap threshold to its size (the threshold is
/// dynamic), so the next ones come from a thread's arena instead of mmap, and
/// the arena's free top is only given back past a trim threshold that rose to
/// twice that: measured, 11.8 MiB of free heap stayed resident for the
/// daemon's whole life (malloc_stats: arena 12.7 MB, 0.9 MB in use).
/// Fixed thresholds (which also switch the dynamic adjustment off) send large
/// blocks to mmap, so freeing them unmaps them. Call first thing in main.
public func fixMallocThresholds() {
    fm_malloc_fixed_thresholds(256 * 1024, 1024 * 1024)
}

/// Gives back the heap that loading left free. Call once, after everything is
/// loaded and attached.
public func releaseLoaderMemory() {
    KernelBTF.release()
    fm_malloc_trim()
}

/// Takes the pages of the executable and its libraries out of the page table
/// once start-up is over, so the resident set is what the running daemon
/// uses, not what starting it touched. Call once, when every start step is done.
///
/// Start-up runs code nothing runs again: argument and YAML parsing, libbpf's
/// ELF, BTF and relocation code, the loaders, the servers' set-up. Each
/// page it touched stays mapped (and the kernel maps up to 16 neighbours of
/// each, fault-around), and counted in the RSS: /proc/PID/smaps of the idle
/// daemon showed most of its resident binary and library pages to be those
/// (docs/benchmarks.md, "Idle RSS"). Clean pages of read-only file mappings
/// are dropped from the page table with MADV_DONTNEED: they stay in the page
/// cache, shared and reclaimable, and one the daemon runs again faults back
/// in from there (a minor fault, no I/O). Only mappings without anonymous
/// (copied-on-write) pages are touched: relocated read-only data (RELRO)
/// was written before it became read-only, and dropping it would lose that.
/// Returns the number of mappings and KiB released.
@discardableResult
public func releaseStartupPages() -> (mappings: Int, kib: Int) {
    guard let text = readProcFile("/proc/self/smaps") else { return (0, 0) }
    struct Mapping { var start: UInt, end: UInt, eligible: Bool, rss = 0, anonymous = -1 }
    var maps: [Mapping] = []
    for line in text.split(separator: "\n") {
        let f = line.split(separator: " ", omittingEmptySubsequences: true)
        if f.count >= 5, let dash = f[0].firstIndex(of: "-"), f[0].count > 8, f[0].allSatisfy({ $0.isHexDigit || $0 == "-" }) {
            let start = UInt(f[0][..<dash], radix: 16) ?? 0, end = UInt(f[0][f[0].index(after: dash)...], radix: 16) ?? 0
            // Private, not writable, backed by a file (its path starts with /).
            let perms = f[1]
            let eligible = (perms == "r-xp" || perms == "r--p") && f.count >= 6 && f[5].hasPrefix("/")
            maps.append(Mapping(start: start, end: end, eligible: eligible))
        } else if f.count >= 2, !maps.isEmpty {
            if f[0] == "Rss:" { maps[maps.count - 1].rss = Int(f[1]) ?? 0 }
            if f[0] == "Anonymous:" { maps[maps.count - 1].anonymous = Int(f[1]) ?? -1 }
        }
    }
    var count = 0, kib = 0
    for m in maps where m.eligible && m.anonymous == 0 && m.rss > 0 {
        if madvise(UnsafeMutableRawPointer(bitPattern: m.start), Int(m.end - m.start), MADV_DONTNEED) == 0 {
            count += 1
            kib += m.rss
        }
    }
    return (count, kib)
}

/// The whole text of a /proc file. Foundation's String(contentsOfFile:)
/// reads as many bytes as the file's size says, and /proc files say 0 or
/// a page: /proc/self/maps and smaps came back cut off after 4 KiB.
func readProcFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            return nil
        }
        if n == 0 { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}
