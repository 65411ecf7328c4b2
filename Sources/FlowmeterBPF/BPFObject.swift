import CLibbpf
import Foundation

/// A libbpf object opened from one of the embedded BPF programs (or, for
/// benchmarks, from a file).
final class BPFObject {
    let handle: OpaquePointer
    let name: String
    // The ELF bytes must outlive the open object (libbpf keeps pointers into them until load).
    private let image: UnsafeMutableRawBufferPointer?

    /// Opens (does not load) an embedded object (one of `BPFNames.objects`).
    init(_ embedded: any EmbeddedBPFObject.Type) throws {
        LibbpfLog.install()
        let name = embedded.object
        guard let data = Data(base64Encoded: embedded.base64) else {
            throw BPFError("decode embedded BPF object \(name)", errno: 0, detail: "corrupt base64 (rebuild)")
        }
        let image = UnsafeMutableRawBufferPointer.allocate(byteCount: data.count, alignment: 16)
        data.copyBytes(to: image)
        self.image = image
        self.name = name
        var opts = bpf_object_open_opts()
        opts.sz = MemoryLayout<bpf_object_open_opts>.size
        let handle = name.withCString { cname -> OpaquePointer? in
            opts.object_name = cname
            return bpf_object__open_mem(image.baseAddress, image.count, &opts)
        }
        guard let handle else {
            image.deallocate()
            throw BPFError.from("open BPF object \(name)", result: -1, withLibbpfLog: true)
        }
        self.handle = handle
    }

    /// Opens (does not load) an object file.
    init(path: String) throws {
        LibbpfLog.install()
        guard let handle = bpf_object__open_file(path, nil) else {
            throw BPFError.from("open BPF object \(path)", result: -1, withLibbpfLog: true)
        }
        self.handle = handle
        name = URL(fileURLWithPath: path).lastPathComponent
        image = nil
    }

    func load() throws {
        LibbpfLog.clear()
        let r = bpf_object__load(handle)
        if r != 0 {
            let e = BPFError.from("load BPF object \(name)", result: r, withLibbpfLog: true)
            // Name the program libbpf says failed, with its section (its type).
            var what = "load BPF object \(name)"
            if let prog = LibbpfLog.failedProgram(in: e.detail), let p = bpf_object__find_program_by_name(handle, prog) {
                what += ": program \(prog) (\(String(cString: bpf_program__section_name(p))))"
            }
            throw BPFError(what, errno: e.errno, detail: e.detail)
        }
    }

    // Programs and maps are looked up by the names BPFEmbed generated
    // (BPFNames), never by a string: those were read from the compiled
    // object, so a misspelt or stale name does not compile. A name of another
    // object still would, hence the check that it is this object's.

    func map(_ m: BPFMapName) throws -> OpaquePointer {
        try checkOwn(m.object, "map \(m.name)")
        return try map(named: m.name)
    }

    func mapFD(_ m: BPFMapName) throws -> Int32 {
        try checkOwn(m.object, "map \(m.name)")
        return try mapFD(named: m.name)
    }

    func program(_ p: BPFProgramName) throws -> OpaquePointer {
        try checkOwn(p.object, "program \(p.name)")
        return try program(named: p.name)
    }

    func programFD(_ p: BPFProgramName) throws -> Int32 {
        try checkOwn(p.object, "program \(p.name)")
        return try programFD(named: p.name)
    }

    private func checkOwn(_ object: String, _ what: String) throws {
        guard object == name else { throw BPFError("\(what) is of \(object), not of \(name)", errno: EINVAL) }
    }

    // By string: only for BPFObjectFile (below, hence fileprivate), whose
    // objects are not embedded and so have no generated names.

    fileprivate func map(named mapName: String) throws -> OpaquePointer {
        guard let m = bpf_object__find_map_by_name(handle, mapName) else {
            throw BPFError("find map \(mapName) in \(name)", errno: ENOENT)
        }
        return m
    }

    fileprivate func mapFD(named mapName: String) throws -> Int32 {
        let fd = bpf_map__fd(try map(named: mapName))
        if fd < 0 { throw BPFError("map \(mapName) of \(name) is not loaded", errno: EBADF) }
        return fd
    }

    fileprivate func program(named progName: String) throws -> OpaquePointer {
        guard let p = bpf_object__find_program_by_name(handle, progName) else {
            throw BPFError("find program \(progName) in \(name)", errno: ENOENT)
        }
        return p
    }

    fileprivate func programFD(named progName: String) throws -> Int32 {
        let fd = bpf_program__fd(try program(named: progName))
        if fd < 0 { throw BPFError("program \(progName) of \(name) is not loaded", errno: EBADF) }
        return fd
    }

    deinit {
        bpf_object__close(handle)
        image?.deallocate()
    }
}

/// A BPF object loaded from a file: programs that are not part of flowmeterd
/// (bench/*.bpf.c), which the benchmarks build and run beside it.
///
/// Its programs and maps are named by String: the object is built apart
/// (bench/build.sh) and found at run time, so BPFEmbed, which names only what
/// it embeds, has no names for it.
public final class BPFObjectFile: @unchecked Sendable {
    let object: BPFObject

    /// Opens and loads `path`, first setting `max_entries` of the maps named in `mapSizes`.
    public init(path: String, mapSizes: [String: Int] = [:]) throws {
        let obj = try BPFObject(path: path)
        for (name, size) in mapSizes {
            let r = bpf_map__set_max_entries(try obj.map(named: name), UInt32(size))
            if r != 0 { throw BPFError.from("set size of map \(name)", result: r) }
        }
        try obj.load()
        object = obj
    }

    public func mapFD(_ name: String) throws -> Int32 { try object.mapFD(named: name) }

    /// Runs a socket-buffer program (tc) `count` times on `packet` with
    /// BPF_PROG_TEST_RUN, as if it arrived on `ifindex` (0: no context is
    /// passed, the kernel's default). Returns its last verdict and the
    /// kernel-measured average run time.
    public func testRun(
        _ program: String, packet: [UInt8], ifindex: UInt32 = 0, repeat count: Int32 = 1
    ) throws -> (verdict: Int32, nanoseconds: UInt32) {
        let fd = try object.programFD(named: program)
        var retval: UInt32 = 0, duration: UInt32 = 0
        var ctx = __sk_buff()
        ctx.ifindex = ifindex
        let r = packet.withUnsafeBytes { p in
            withUnsafeBytes(of: &ctx) { c in
                fm_prog_test_run(
                    fd, p.baseAddress, UInt32(p.count), ifindex == 0 ? nil : c.baseAddress,
                    ifindex == 0 ? 0 : UInt32(c.count), count, &retval, &duration)
            }
        }
        if r != 0 { throw BPFError("test run of \(program)", errno: -r) }
        return (Int32(bitPattern: retval), duration)
    }
}

/// Number of possible CPUs: the per-CPU map value stride.
public let possibleCPUs: Int = {
    let n = libbpf_num_possible_cpus()
    return n > 0 ? Int(n) : 1
}()
