// swift-tools-version: 6.1
// Flowmeter: eBPF network telemetry collector.
//
// Module cut (see docs/development.md, "Layout"): only FlowmeterBPF imports the C modules
// (CLibbpf, FlowmeterABI, CPrivileges); everything above it sees Swift values.
import PackageDescription

let package = Package(
    name: "flowmeter",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "flowmeterd", targets: ["flowmeterd"]),
        .executable(name: "flowtop", targets: ["flowtop"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        // The protobuf runtime of the generated OTLP types, and its protoc
        // plugin (protoc-gen-swift) that tools/generate-otlp builds and runs.
        .package(url: "https://github.com/apple/swift-protobuf", exact: "1.39.0"),
        // OTLP transports: HTTP/protobuf over async-http-client, gRPC over
        // grpc-swift 2 and its HTTP/2 NIO transport, TLS from swift-nio-ssl.
        // grpc-swift-protobuf also brings protoc-gen-grpc-swift-2, which
        // tools/generate-otlp runs for the MetricsService stub.
        .package(url: "https://github.com/swift-server/async-http-client", exact: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/grpc/grpc-swift-2", exact: "2.4.3"),
        .package(url: "https://github.com/grpc/grpc-swift-nio-transport", exact: "2.9.2"),
        .package(url: "https://github.com/grpc/grpc-swift-protobuf", exact: "2.4.1"),
    ],
    targets: [
        // libbpf from the system (Debian libbpf-dev), plus static-inline shims
        // for the option structs that Swift cannot build with LIBBPF_OPTS.
        .systemLibrary(
            name: "CLibbpf", pkgConfig: "libbpf",
            providers: [.apt(["libbpf-dev", "libelf-dev", "zlib1g-dev"])]),
        // The one definition of every record, key and constant that crosses the
        // kernel/user boundary. The .bpf.c programs include the same header.
        .target(name: "FlowmeterABI"),
        // Build-time tool: compiles bpf/*.bpf.c with clang -target bpf and turns
        // each object into a Swift source so the executable carries its programs,
        // with the names of its programs and maps (read with libbpf) as constants.
        .executableTarget(name: "BPFEmbed", dependencies: ["CLibbpf"]),
        .plugin(name: "BPFObjects", capability: .buildTool(), dependencies: ["BPFEmbed"]),

        // Capabilities and no_new_privs are per thread: changes them on every
        // thread of the process (a signal to each), for the drop after attach.
        .target(name: "CPrivileges"),

        .target(name: "FlowmeterCore"),
        // The version and git commit `--version` prints; the commit is
        // written at build time by the BuildCommit plugin ("unknown" without git).
        .target(name: "FlowmeterBuildInfo", dependencies: ["FlowmeterCore"], plugins: ["BuildCommit"]),
        .plugin(name: "BuildCommit", capability: .buildTool()),
        .target(
            name: "FlowmeterBPF",
            dependencies: [
                "CLibbpf", "FlowmeterABI", "CPrivileges", "FlowmeterCore",
                .product(name: "Logging", package: "swift-log"),
            ],
            plugins: ["BPFObjects"]
        ),
        // The OTLP messages (opentelemetry-proto, vendored in proto/), generated
        // by tools/generate-otlp with protoc and protoc-gen-swift and committed;
        // FlowmeterExportTests checks that they are current.
        .target(
            name: "FlowmeterOTLPProto",
            dependencies: [
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
            ]
        ),
        // zlib (Debian zlib1g-dev, already linked for libbpf) for gzip of the
        // OTLP/HTTP body.
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .target(
            name: "FlowmeterExport",
            dependencies: [
                "FlowmeterCore", "FlowmeterOTLPProto", "CZlib",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "GRPCCore", package: "grpc-swift-2"),
                .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
                .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The config file (YAML) and FLOWMETER_* environment, validated with
        // positions; layered under the flags by flowmeterd.
        .target(
            name: "FlowmeterConfig",
            dependencies: ["FlowmeterCore", .product(name: "Yams", package: "Yams")]
        ),
        // The collector as a library: kernel sources (behind protocols) into
        // the accounting, then the sinks. No BPF here, so it is unit-tested
        // without privileges.
        .target(
            name: "FlowmeterPipeline",
            dependencies: ["FlowmeterCore", "FlowmeterExport", .product(name: "Logging", package: "swift-log")]
        ),
        .executableTarget(
            name: "flowmeterd",
            dependencies: [
                "FlowmeterCore", "FlowmeterBuildInfo", "FlowmeterBPF", "FlowmeterExport", "FlowmeterConfig", "FlowmeterPipeline",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // ncursesw (Debian libncurses-dev) for flowtop, behind a shim: its
        // attributes and key codes are macros.
        .systemLibrary(name: "CNcurses", pkgConfig: "ncursesw", providers: [.apt(["libncurses-dev"])]),
        .executableTarget(
            name: "flowtop",
            dependencies: [
                "FlowtopCore", "FlowmeterCore", "FlowmeterBuildInfo", "CNcurses",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // flowtop's pure part: snapshot history and rates, views, keys, screen model (no I/O).
        .target(name: "FlowtopCore", dependencies: ["FlowmeterCore"]),
        // Benchmarks (tools/bench), most of them on the real kernel; not part of the tests.
        .executableTarget(name: "flowmeter-bench", dependencies: ["FlowmeterBPF", "FlowmeterCore", "FlowmeterExport"]),

        // The seeded generator and bounded property-test runs the test targets share.
        .target(name: "FlowmeterTestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "FlowmeterCoreTests", dependencies: ["FlowmeterCore", "FlowmeterTestSupport"]),
        .testTarget(name: "FlowtopCoreTests", dependencies: ["FlowtopCore", "FlowmeterCore"]),
        // FlowmeterBPF and Logging only to check that the allowed values are the flags'.
        .testTarget(
            name: "FlowmeterConfigTests",
            dependencies: [
                "FlowmeterConfig", "FlowmeterCore", "FlowmeterBPF", "FlowmeterTestSupport",
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "FlowmeterPipelineTests",
            dependencies: [
                "FlowmeterPipeline", "FlowmeterCore", "FlowmeterExport",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // The daemon's flags against the settings table.
        .testTarget(name: "FlowmeterdTests", dependencies: ["flowmeterd", "FlowmeterConfig"]),
        .testTarget(
            name: "FlowmeterExportTests",
            dependencies: [
                "FlowmeterExport", "FlowmeterCore", "FlowmeterTestSupport", "FlowmeterOTLPProto",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]),
        .testTarget(
            name: "FlowmeterBPFTests",
            dependencies: ["FlowmeterBPF", "FlowmeterCore", "FlowmeterABI", "FlowmeterTestSupport"]),
    ]
)
