import FlowmeterCore
import Foundation

/// Resolves cgroup v2 ids (what bpf_get_current_cgroup_id returns: the inode
/// number of the cgroup's directory in cgroupfs) to paths relative to the
/// cgroup2 mount, e.g. "/system.slice/nginx.service".
public final class CgroupPaths: @unchecked Sendable {
    public let root: String?
    private var cache: [UInt64: String] = [:]
    private var lastScan: UInt64 = 0
    private let lock = NSLock()

    /// Finds the cgroup2 mount in /proc/self/mounts (nil if there is none).
    public init(mounts: String? = try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) {
        root = CgroupPaths.cgroup2Mount(in: mounts ?? "")
    }

    /// The mount point of the first cgroup2 file system in a mounts table.
    public static func cgroup2Mount(in mounts: String) -> String? {
        for line in mounts.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count > 2, f[2] == "cgroup2" { return String(f[1]).replacingOccurrences(of: "\\040", with: " ") }
        }
        return nil
    }

    /// The path of a cgroup id, rescanning the tree (at most once a second) on a miss.
    public func path(of id: UInt64) -> String? {
        guard let root, id != 0 else { return nil }
        return lock.withLock {
            if let p = cache[id] { return p }
            let now = DispatchTime.now().uptimeNanoseconds
            guard now &- lastScan > 1_000_000_000 || lastScan == 0 else { return nil }
            lastScan = now
            cache.removeAll(keepingCapacity: true)
            scan(root, relative: "/", depth: 0)
            return cache[id]
        }
    }

    private func scan(_ dir: String, relative: String, depth: Int) {
        var st = stat()
        guard depth < 32, stat(dir, &st) == 0 else { return }
        cache[UInt64(st.st_ino)] = relative
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return }
        for n in names {
            let child = dir + "/" + n
            var cst = stat()
            guard lstat(child, &cst) == 0, (cst.st_mode & S_IFMT) == S_IFDIR else { continue }
            scan(child, relative: relative == "/" ? "/" + n : relative + "/" + n, depth: depth + 1)
        }
    }
}
