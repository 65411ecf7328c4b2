import Foundation
import Testing

/// The OTLP types in Sources/FlowmeterOTLPProto are generated from the
/// vendored opentelemetry-proto files (proto/) and committed. This regenerates
/// them into a temporary folder with tools/generate-otlp (protoc from Debian's
/// protobuf-compiler, protoc-gen-swift of the pinned swift-protobuf,
/// protoc-gen-grpc-swift-2 of the pinned grpc-swift-protobuf) and
/// compares, so a .proto update, a swift-protobuf update or a hand edit
/// without regenerating fails here.
@Suite struct OTLPGeneratedTests {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let generated = repo.appendingPathComponent("Sources/FlowmeterOTLPProto")

    /// A protoc plugin (protoc-gen-swift, protoc-gen-grpc-swift-2): $`variable`,
    /// or beside the test executable in the build's bin folder
    /// (`swift build --product NAME`; tools/test builds both).
    static func plugin(_ name: String, variable: String) throws -> String {
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
        env["PROTOC_GEN_SWIFT"] = try Self.plugin("protoc-gen-swift", variable: "PROTOC_GEN_SWIFT")
        env["PROTOC_GEN_GRPC_SWIFT"] = try Self.plugin("protoc-gen-grpc-swift-2", variable: "PROTOC_GEN_GRPC_SWIFT")
        p.environment = env
        let errors = Pipe()
        p.standardError = errors
        try p.run()
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        try #require(p.terminationStatus == 0, "tools/generate-otlp failed: \(message)")

        let fresh = try Self.swiftFiles(tmp)
        let committed = try Self.swiftFiles(Self.generated)
        // The four message files and the MetricsService client stub.
        #expect(fresh.count == 5)
        #expect(
            Set(committed.keys) == Set(fresh.keys),
            "Sources/FlowmeterOTLPProto has \(committed.keys.sorted()), tools/generate-otlp makes \(fresh.keys.sorted())")
        for (name, data) in fresh.sorted(by: { $0.key < $1.key }) {
            #expect(committed[name] == data, "Sources/FlowmeterOTLPProto/\(name) is not what tools/generate-otlp makes: run it")
        }
    }
}
