// BPFEmbed: compiles each bpf/*.bpf.c into a BPF object and writes one Swift
// source that carries all of them, so `swift build` alone produces a binary that
// is the whole product (no object files to install next to it).
//
// Usage: BPFEmbed --output OUT.swift [-I DIR]... FILE.bpf.c...
//
// The objects keep BTF (CO-RE needs it) and lose DWARF (llvm-objcopy
// --strip-debug), which is what makes them small. Each object is emitted as a
// base64 string literal: Swift type-checks a long string literal instantly,
// whereas a long [UInt8] array literal takes minutes to compile.
//
// Beside each object, the names of its programs (with their sections) and
// maps, as constants under `BPFNames` (e.g. BPFNames.FlowmeterSock.Program.
// fm_updates): the loader takes only those, so a program or map renamed in C
// and not in Swift, or a misspelt name, fails to compile instead of failing
// on one kernel at run time.
//
// The names are read with libbpf (bpf_object__open_mem, which parses the ELF
// and needs no privilege; nothing is loaded) rather than from the ELF symbol
// table: what counts is what the daemon's libbpf will find by name, and
// libbpf's rules are not the symbol table's (static functions in .text are
// subprograms, not programs; maps are the symbols of .maps plus the internal
// .data/.rodata/.bss maps it makes, named after the object). Asking the same
// library the daemon links cannot disagree with it.
import CLibbpf
import Foundation

struct Failure: Error, CustomStringConvertible { let description: String }

func findExecutable(_ names: [String]) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    // The toolchain's own clang (its LLVM has the BPF backend) comes first so a
    // fresh machine needs no separate clang; Debian's clang works as well.
    var dirs = ["/opt/swift/usr/bin"]
    dirs += path.split(separator: ":").map(String.init)
    dirs += ["/usr/bin", "/usr/local/bin"]
    for name in names {
        if name.hasPrefix("/") { if FileManager.default.isExecutableFile(atPath: name) { return name }; continue }
        for dir in dirs where FileManager.default.isExecutableFile(atPath: dir + "/" + name) {
            return dir + "/" + name
        }
    }
    return nil
}

@discardableResult
func run(_ exe: String, _ args: [String]) throws -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: exe)
    p.arguments = args
    try p.run()
    p.waitUntilExit()
    if p.terminationStatus != 0 {
        throw Failure(description: "\(exe) \(args.joined(separator: " ")) exited \(p.terminationStatus)")
    }
    return p.terminationStatus
}

/// The file name without .bpf.c: libbpf's object name, as the daemon opens it.
func objectName(for file: String) -> String {
    var base = URL(fileURLWithPath: file).lastPathComponent
    for suffix in [".bpf.c", ".c"] where base.hasSuffix(suffix) { base.removeLast(suffix.count); break }
    return base
}

/// flowmeter_sock -> flowmeterSock (the EmbeddedBPF member).
func identifier(for file: String) -> String {
    let parts = objectName(for: file).split(whereSeparator: { !$0.isLetter && !$0.isNumber })
    guard let first = parts.first else { return "object" }
    return first.lowercased() + parts.dropFirst().map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined()
}

/// flowmeter_sock -> FlowmeterSock (the BPFNames namespace).
func typeName(for file: String) -> String {
    let id = identifier(for: file)
    return id.prefix(1).uppercased() + id.dropFirst()
}

/// Swift's reserved words, which a C name may be: such a member is written in backticks.
let swiftKeywords: Set<String> = [
    "Any", "Protocol", "Self", "Type", "as", "associatedtype", "break", "case", "catch", "class", "continue",
    "default", "defer", "deinit", "do", "else", "enum", "extension", "fallthrough", "false", "fileprivate", "for",
    "func", "guard", "if", "import", "in", "init", "inout", "internal", "is", "let", "nil", "open", "operator",
    "private", "protocol", "public", "repeat", "rethrows", "return", "self", "static", "struct", "subscript",
    "super", "switch", "throw", "throws", "true", "try", "typealias", "var", "where", "while",
]

/// The Swift member for a libbpf name. Program names are C identifiers; an
/// internal map's name is not ("flowmete.rodata"), so anything else becomes "_".
func member(_ name: String) -> String {
    var id = String(name.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") ? $0 : "_" })
    if id.first?.isNumber ?? true { id = "_" + id }
    return swiftKeywords.contains(id) ? "`\(id)`" : id
}

/// A Swift string literal of `s` (names and sections are plain ASCII, but a
/// section may hold anything libbpf accepts).
func literal(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\\": out += "\\\\"
        case "\"": out += "\\\""
        case _ where u.value < 0x20 || u.value == 0x7f: out += "\\u{\(String(u.value, radix: 16))}"
        default: out.unicodeScalars.append(u)
        }
    }
    return out + "\""
}

/// The programs (name, section) and maps of a compiled object, as libbpf opens it.
func kernelNames(object path: String, name: String) throws -> (programs: [(name: String, section: String)], maps: [String]) {
    let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
    return try bytes.withUnsafeBytes { raw -> ([(name: String, section: String)], [String]) in
        var opts = bpf_object_open_opts()
        opts.sz = MemoryLayout<bpf_object_open_opts>.size
        let obj = name.withCString { cname -> OpaquePointer? in
            opts.object_name = cname
            return bpf_object__open_mem(raw.baseAddress, raw.count, &opts)
        }
        guard let obj else {
            throw Failure(description: "libbpf cannot open \(path): \(String(cString: strerror(errno)))")
        }
        defer { bpf_object__close(obj) }
        var programs: [(name: String, section: String)] = []
        var p: OpaquePointer? = nil
        while let next = bpf_object__next_program(obj, p) {
            programs.append((String(cString: bpf_program__name(next)), String(cString: bpf_program__section_name(next))))
            p = next
        }
        var maps: [String] = []
        var m: OpaquePointer? = nil
        while let next = bpf_object__next_map(obj, m) {
            maps.append(String(cString: bpf_map__name(next)))
            m = next
        }
        return (programs, maps)
    }
}

/// The BPFNames namespace of one object.
func namesSource(file: String, programs: [(name: String, section: String)], maps: [String]) throws -> String {
    let object = objectName(for: file)
    var members = Set<String>()
    func unique(_ name: String) throws -> String {
        let m = member(name)
        guard members.insert(m).inserted else {
            throw Failure(description: "\(file): two names of the object become the Swift member \(m)")
        }
        return m
    }
    let type = typeName(for: file)
    var s = "    /// bpf/\(URL(fileURLWithPath: file).lastPathComponent)\n"
    s += "    enum \(type): EmbeddedBPFObject {\n"
    s += "        static let object = \(literal(object))\n"
    s += "        static var base64: String { EmbeddedBPF.\(identifier(for: file)) }\n"
    s += "        enum Program {\n"
    for p in programs {
        s += "            /// SEC(\(literal(p.section)))\n"
        s +=
            "            static let \(try unique(p.name)) = BPFProgramName(object: \(literal(object)), name: \(literal(p.name)), section: \(literal(p.section)))\n"
    }
    s += "        }\n"
    members.removeAll()
    s += "        enum Map {\n"
    for m in maps {
        s += "            static let \(try unique(m)) = BPFMapName(object: \(literal(object)), name: \(literal(m)))\n"
    }
    s += "        }\n"
    s += "        static let programs: [BPFProgramName] = [" + programs.map { "Program.\(member($0.name))" }.joined(separator: ", ") + "]\n"
    s += "        static let maps: [BPFMapName] = [" + maps.map { "Map.\(member($0))" }.joined(separator: ", ") + "]\n"
    s += "    }\n"
    return s
}

do {
    var args = Array(CommandLine.arguments.dropFirst())
    var output: String?
    var includes: [String] = []
    var inputs: [String] = []
    while !args.isEmpty {
        let a = args.removeFirst()
        switch a {
        case "--output": output = args.isEmpty ? nil : args.removeFirst()
        case "-I": if !args.isEmpty { includes.append(args.removeFirst()) }
        default: inputs.append(a)
        }
    }
    guard let output, !inputs.isEmpty else { throw Failure(description: "usage: BPFEmbed --output OUT.swift [-I DIR]... FILE.bpf.c...") }
    let env = ProcessInfo.processInfo.environment
    guard let clang = findExecutable([env["FLOWMETER_BPF_CLANG"] ?? "clang", "clang-16", "clang-15", "clang-14"]) else {
        throw Failure(description: "no clang found for -target bpf (set FLOWMETER_BPF_CLANG)")
    }
    let clangDir = URL(fileURLWithPath: clang).deletingLastPathComponent().path
    let strip = findExecutable([clangDir + "/llvm-objcopy", "llvm-objcopy", "llvm-strip"])
    let workDir = URL(fileURLWithPath: output).deletingLastPathComponent()

    var swift = "// Generated by BPFEmbed from bpf/*.bpf.c during `swift build`. Do not edit.\n"
    swift += "enum EmbeddedBPF {\n"
    var names = ""
    for input in inputs.sorted() {
        let name = identifier(for: input)
        let object = workDir.appendingPathComponent(name + ".bpf.o").path
        var cargs = [
            "-target", "bpf", "-O2", "-g", "-mcpu=v3", "-D__TARGET_ARCH_x86",
            "-Wall", "-Werror", "-Wno-unused-function",
        ]
        for inc in includes { cargs += ["-I", inc] }
        cargs += ["-c", input, "-o", object]
        try run(clang, cargs)
        if let strip {
            // DWARF is not needed at run time; BTF (.BTF, .BTF.ext) is kept.
            try run(strip, strip.hasSuffix("objcopy") ? ["--strip-debug", object] : ["-g", object])
        }
        let bytes = try Data(contentsOf: URL(fileURLWithPath: object))
        swift += "    /// \(URL(fileURLWithPath: input).lastPathComponent), \(bytes.count) bytes.\n"
        swift += "    static let \(name) = \"\(bytes.base64EncodedString())\"\n"
        let found = try kernelNames(object: object, name: objectName(for: input))
        names += try namesSource(file: input, programs: found.programs, maps: found.maps)
    }
    swift += "}\n\n"
    swift += "/// The programs (with their sections) and maps of each embedded object, as\n"
    swift += "/// libbpf named them when BPFEmbed opened the compiled object.\n"
    swift += "enum BPFNames {\n"
    swift += "    /// Every embedded object.\n"
    swift += "    static let objects: [any EmbeddedBPFObject.Type] = ["
    swift += inputs.sorted().map { typeName(for: $0) + ".self" }.joined(separator: ", ") + "]\n"
    swift += names
    swift += "}\n"
    try swift.write(toFile: output, atomically: true, encoding: .utf8)
} catch {
    FileHandle.standardError.write(Data("BPFEmbed: \(error)\n".utf8))
    exit(1)
}
