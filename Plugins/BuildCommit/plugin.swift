// Build-tool plugin: writes the git commit the package is built from into
// FlowmeterBuildInfo (BuildCommit.swift), for `--version`, by running
// tools/build-commit. As a prebuild command it runs before every build, so a
// new commit is picked up without a clean build; the script rewrites the file
// only when its text changes, so an unchanged commit recompiles nothing.
// Without git, or outside a git work tree, the commit is "unknown".
import Foundation
import PackagePlugin

@main
struct BuildCommit: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let root = context.package.directoryURL
        let out = context.pluginWorkDirectoryURL.appending(path: "generated")
        return [
            .prebuildCommand(
                displayName: "Reading the git commit for --version",
                // Through sh, so the script needs no executable bit (a tarball may lose it).
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: [root.appending(path: "tools/build-commit").path, root.path, out.path],
                outputFilesDirectory: out
            )
        ]
    }
}
