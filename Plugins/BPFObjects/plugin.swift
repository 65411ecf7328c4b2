// Build-tool plugin: compiles the package's bpf/*.bpf.c into the target it is
// applied to (FlowmeterBPF), via the BPFEmbed tool. Inputs include every header
// the programs may include, so editing a .bpf.c or the ABI header rebuilds them.
import Foundation
import PackagePlugin

@main
struct BPFObjects: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let root = context.package.directoryURL
        let bpfDir = root.appending(path: "bpf")
        let abiInclude = root.appending(path: "Sources/FlowmeterABI/include")
        let fm = FileManager.default
        func files(in dir: URL, suffix: String) -> [URL] {
            guard let names = try? fm.contentsOfDirectory(atPath: dir.path) else { return [] }
            return names.filter { $0.hasSuffix(suffix) }.sorted().map { dir.appending(path: $0) }
        }
        let sources = files(in: bpfDir, suffix: ".bpf.c")
        let headers =
            files(in: bpfDir, suffix: ".h") + files(in: bpfDir.appending(path: "include"), suffix: ".h")
            + files(in: abiInclude, suffix: ".h")
        let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedBPF.swift")
        var args = [
            "--output", output.path, "-I", bpfDir.appending(path: "include").path,
            "-I", bpfDir.path, "-I", abiInclude.path,
        ]
        args += sources.map(\.path)
        return [
            .buildCommand(
                displayName: "Compiling BPF programs (\(sources.map(\.lastPathComponent).joined(separator: ", ")))",
                executable: try context.tool(named: "BPFEmbed").url,
                arguments: args,
                inputFiles: sources + headers,
                outputFiles: [output]
            )
        ]
    }
}
