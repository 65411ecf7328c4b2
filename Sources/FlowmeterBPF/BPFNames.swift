import CLibbpf

// The types of the names BPFEmbed generates (`BPFNames` in the generated
// EmbeddedBPF.swift). BPFObject looks programs and maps up only by these, so
// every name the loader uses was read from the compiled object at build time:
// a name renamed in C, or misspelt in Swift, does not compile.

/// One embedded BPF object (bpf/NAME.bpf.c) and what BPFEmbed found in it.
protocol EmbeddedBPFObject: Sendable {
    /// The object's name (the file's, without .bpf.c): libbpf's object name.
    static var object: String { get }
    /// The compiled object, base64 (EmbeddedBPF).
    static var base64: String { get }
    static var programs: [BPFProgramName] { get }
    static var maps: [BPFMapName] { get }
}

/// A program of an embedded object: the C function's name, which libbpf finds
/// it by, and its section, which gives its type and attach point.
struct BPFProgramName: Hashable, Sendable, CustomStringConvertible {
    /// The object it is in (EmbeddedBPFObject.object).
    let object: String
    let name: String
    /// SEC("...") of the function, e.g. "fentry/tcp_set_state".
    let section: String

    /// The name itself, so messages read as before.
    var description: String { name }

    /// The name as the kernel keeps it (bpf_prog_info.name, what bpftool and
    /// a query by id show): cut to BPF_OBJ_NAME_LEN - 1 characters.
    var kernelName: String { String(name.prefix(Int(BPF_OBJ_NAME_LEN) - 1)) }
}

/// A map of an embedded object, by the name libbpf finds it by.
struct BPFMapName: Hashable, Sendable, CustomStringConvertible {
    /// The object it is in (EmbeddedBPFObject.object).
    let object: String
    let name: String

    var description: String { name }
}
