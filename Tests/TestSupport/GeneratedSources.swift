import Foundation

/// The freshness check of committed generated code (OTLPGeneratedTests,
/// ContainerdGeneratedTests): run a tools/generate-* script into a temporary
/// folder, with the protoc plugins of the pinned packages, and give back what
/// it wrote next to what is committed. One definition for both generators.
public enum GeneratedSources {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
        public init(_ d: String) { description = d }
    }

    /// The repository root (this file is Tests/TestSupport/GeneratedSources.swift).
    public static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// A protoc plugin (protoc-gen-swift, protoc-gen-grpc-swift-2): $`variable`,
    /// or beside the test executable in the build's bin folder
    /// (`swift build --product NAME`; tools/test builds both).
    public static func plugin(_ name: String, variable: String) throws -> String {
        if let p = ProcessInfo.processInfo.environment[variable], !p.isEmpty { return p }
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let candidate = exe.deletingLastPathComponent().appendingPathComponent(name).path
        guard FileManager.default.isExecutableFile(atPath: candidate) else {
            throw Failure(
                "no \(name) at \(candidate): build it with `swift build --product \(name)` "
                    + "(tools/test does), or set \(variable)")
        }
        return candidate
    }

    /// The .swift files of `dir`, by name.
    public static func swiftFiles(_ dir: URL) throws -> [String: Data] {
        var out: [String: Data] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: dir.path) where name.hasSuffix(".swift") {
            out[name] = try Data(contentsOf: dir.appendingPathComponent(name))
        }
        return out
    }

    /// Runs `tool` (e.g. "tools/generate-otlp") with `--out` a temporary
    /// folder, and returns what it wrote (`fresh`) and what `committed`
    /// (a folder under the repository) holds.
    public static func regenerate(tool: String, committed: String) throws -> (
        fresh: [String: Data], committed: [String: Data]
    ) {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("flowmeter-generated-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tmp) }

        let p = Process()
        p.executableURL = repo.appendingPathComponent(tool)
        p.arguments = ["--out", tmp.path]
        var env = ProcessInfo.processInfo.environment
        env["PROTOC_GEN_SWIFT"] = try plugin("protoc-gen-swift", variable: "PROTOC_GEN_SWIFT")
        env["PROTOC_GEN_GRPC_SWIFT"] = try plugin("protoc-gen-grpc-swift-2", variable: "PROTOC_GEN_GRPC_SWIFT")
        p.environment = env
        let errors = Pipe()
        p.standardError = errors
        try p.run()
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw Failure("\(tool) failed: \(message)") }
        return (try swiftFiles(tmp), try swiftFiles(repo.appendingPathComponent(committed)))
    }
}
