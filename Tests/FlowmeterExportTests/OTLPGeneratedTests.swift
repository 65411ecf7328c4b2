import Foundation
import Testing

/// The OTLP types in Sources/FlowmeterOTLPProto are generated from the
/// vendored opentelemetry-proto files (proto/) and committed. This regenerates
/// them into a temporary folder with tools/generate-otlp (protoc from Debian's
/// protobuf-compiler, protoc-gen-swift of the pinned swift-protobuf) and
/// compares, so a .proto update, a swift-protobuf update or a hand edit
/// without regenerating fails here.
@Suite struct OTLPGeneratedTests {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let generated = repo.appendingPathComponent("Sources/FlowmeterOTLPProto")

    /// protoc-gen-swift: $PROTOC_GEN_SWIFT, or beside the test executable in
    /// the build's bin folder (`swift build --product protoc-gen-swift`; tools/test builds it).
    static func plugin() throws -> String {
        if let p = ProcessInfo.processInfo.environment["PROTOC_GEN_SWIFT"], !p.isEmpty { return p }
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let candidate = exe.deletingLastPathComponent().appendingPathComponent("protoc-gen-swift").path
        guard FileManager.default.isExecutableFile(atPath: candidate) else {
            throw Failure(
                "no protoc-gen-swift at \(candidate): build it with `swift build --product protoc-gen-swift` "
                    + "(tools/test does), or set PROTOC_GEN_SWIFT")
        }
        return candidate
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ d: String) { description = d }
    }

    static func swiftFiles(_ dir: URL) throws -> [String: Data] {
        var out: [String: Data] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: dir.path) where name.hasSuffix(".swift") {
            out[name] = try Data(contentsOf: dir.appendingPathComponent(name))
        }
        return out
    }

    @Test func theCommittedOTLPTypesAreCurrent() throws {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("flowmeter-otlp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tmp) }

        let p = Process()
        p.executableURL = Self.repo.appendingPathComponent("tools/generate-otlp")
        p.arguments = ["--out", tmp.path]
        var env = ProcessInfo.processInfo.environment
        env["PROTOC_GEN_SWIFT"] = try Self.plugin()
        p.environment = env
        let errors = Pipe()
        p.standardError = errors
        try p.run()
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        try #require(p.terminationStatus == 0, "tools/generate-otlp failed: \(message)")

        let fresh = try Self.swiftFiles(tmp)
        let committed = try Self.swiftFiles(Self.generated)
        #expect(fresh.count == 4)
        #expect(
            Set(committed.keys) == Set(fresh.keys),
            "Sources/FlowmeterOTLPProto has \(committed.keys.sorted()), tools/generate-otlp makes \(fresh.keys.sorted())")
        for (name, data) in fresh.sorted(by: { $0.key < $1.key }) {
            #expect(committed[name] == data, "Sources/FlowmeterOTLPProto/\(name) is not what tools/generate-otlp makes: run it")
        }
    }
}
