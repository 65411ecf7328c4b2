import FlowmeterTestSupport
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
    @Test func theCommittedOTLPTypesAreCurrent() throws {
        let (fresh, committed) = try GeneratedSources.regenerate(tool: "tools/generate-otlp", committed: "Sources/FlowmeterOTLPProto")
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
