import FlowmeterTestSupport
import Foundation
import Testing

/// The containerd types and client in Sources/FlowmeterContainerdProto are
/// generated from the vendored containerd .proto (proto/containerd) and
/// committed. This regenerates them into a temporary folder with
/// tools/generate-containerd (protoc, protoc-gen-swift and
/// protoc-gen-grpc-swift-2 of the pinned packages) and compares, so a .proto
/// update, a package update or a hand edit without regenerating fails here.
@Suite struct ContainerdGeneratedTests {
    @Test func theCommittedContainerdTypesAreCurrent() throws {
        let (fresh, committed) = try GeneratedSources.regenerate(
            tool: "tools/generate-containerd", committed: "Sources/FlowmeterContainerdProto")
        #expect(fresh.count == 2)
        #expect(
            Set(committed.keys) == Set(fresh.keys),
            "Sources/FlowmeterContainerdProto has \(committed.keys.sorted()), tools/generate-containerd makes \(fresh.keys.sorted())")
        for (name, data) in fresh.sorted(by: { $0.key < $1.key }) {
            #expect(committed[name] == data, "Sources/FlowmeterContainerdProto/\(name) is not what tools/generate-containerd makes: run it")
        }
    }
}
