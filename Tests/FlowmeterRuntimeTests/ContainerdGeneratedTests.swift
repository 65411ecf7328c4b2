import Foundation
import Testing

/// The containerd types and client in Sources/FlowmeterContainerdProto are
/// generated from the vendored containerd .proto (proto/containerd) and
/// committed. This regenerates them into a temporary folder with
/// tools/generate-containerd (protoc, protoc-gen-swift and
/// protoc-gen-grpc-swift-2 of the pinned packages) and compares, so a .proto
/// update, a package update or a hand edit without regenerating fails here.
@Suite struct ContainerdGeneratedTests {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let generated = repo.appendingPathComponent("Sources/FlowmeterContainerdProto")

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    /// A plugin: from `variable`, or beside the test executable in the
    /// build's bin folder (`swift build --product NAME`; tools/test builds both).
    static func plugin(_ name: String, variable: String) throws -> String {
        if let p = ProcessInfo.processInfo.environment[variable], !p.isEmpty { return p }
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let candidate = exe.deletingLastPathComponent().appendingPathComponent(name).path
        guard FileManager.default.isExecutableFile(atPath: candidate) else {
            throw Failure("no \(name) at \(candidate): build it with `swift build --product \(name)` (tools/test does), or set \(variable)")
        }
        return candidate
    }

    static func swiftFiles(_ dir: URL) throws -> [String: Data] {
        var out: [String: Data] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: dir.path) where name.hasSuffix(".swift") {
            out[name] = try Data(contentsOf: dir.appendingPathComponent(name))
        }
        return out
    }

    @Test func theCommittedContainerdTypesAreCurrent() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("flowmeter-containerd-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tmp) }

        let p = Process()
        p.executableURL = Self.repo.appendingPathComponent("tools/generate-containerd")
        p.arguments = ["--out", tmp.path]
        var env = ProcessInfo.processInfo.environment
        env["PROTOC_GEN_SWIFT"] = try Self.plugin("protoc-gen-swift", variable: "PROTOC_GEN_SWIFT")
        env["PROTOC_GEN_GRPC_SWIFT"] = try Self.plugin("protoc-gen-grpc-swift-2", variable: "PROTOC_GEN_GRPC_SWIFT")
        p.environment = env
        let errors = Pipe()
        p.standardError = errors
        try p.run()
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        try #require(p.terminationStatus == 0, "tools/generate-containerd failed: \(message)")

        let fresh = try Self.swiftFiles(tmp)
        let committed = try Self.swiftFiles(Self.generated)
        #expect(fresh.count == 2)
        #expect(Set(committed.keys) == Set(fresh.keys))
        for (name, data) in fresh.sorted(by: { $0.key < $1.key }) {
            #expect(committed[name] == data, "Sources/FlowmeterContainerdProto/\(name) is not what tools/generate-containerd makes: run it")
        }
    }
}
