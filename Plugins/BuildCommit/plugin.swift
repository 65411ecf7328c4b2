// Build-tool plugin: writes the git commit the package is built from into
// FlowmeterBuildInfo (BuildCommit.swift), for `--version`, by running
// tools/build-commit.
//
// A build command, not a prebuild command: SwiftPM invokes plugins only when
// it plans the build again (a file added or removed, a manifest changed), so
// a prebuild command does not run after a commit that only changes file
// contents. A build command's inputs are checked on every build: git's HEAD,
// the branch's ref, packed refs and the index (a commit, a checkout, an add),
// and the package's sources (an edit, for "-dirty"). The script rewrites the
// file only when the text changes, so an unchanged commit recompiles nothing.
// Without git, or outside a git work tree, the commit is "unknown".
import Foundation
import PackagePlugin

@main
struct BuildCommit: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let root = context.package.directoryURL
        let out = context.pluginWorkDirectoryURL.appending(path: "generated")
        let script = root.appending(path: "tools/build-commit")
        return [
            .buildCommand(
                displayName: "Reading the git commit for --version",
                // Through sh, so the script needs no executable bit (a tarball may lose it).
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: [script.path, root.path, out.path],
                inputFiles: [script] + Self.gitState(root) + Self.sources(root),
                outputFiles: [out.appending(path: "BuildCommit.swift")]
            )
        ]
    }

    /// The files git changes on a commit, checkout or add: HEAD, the branch's
    /// ref, packed-refs and the index, in the work tree's git directory (a
    /// `.git` directory, or the `gitdir:` a `.git` file of a linked work tree
    /// names) and the common one. Only those that exist.
    static func gitState(_ root: URL) -> [URL] {
        let fm = FileManager.default
        let dotGit = root.appending(path: ".git")
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: dotGit.path, isDirectory: &isDir) else { return [] }
        var gitDir = dotGit
        if !isDir.boolValue {
            guard let text = try? String(contentsOf: dotGit, encoding: .utf8),
                let line = text.split(separator: "\n").first, line.hasPrefix("gitdir: ")
            else { return [] }
            let path = String(line.dropFirst("gitdir: ".count))
            gitDir = path.hasPrefix("/") ? URL(fileURLWithPath: path) : root.appending(path: path)
        }
        var common = gitDir
        if let text = try? String(contentsOf: gitDir.appending(path: "commondir"), encoding: .utf8) {
            let path = text.trimmingCharacters(in: .whitespacesAndNewlines)
            common = path.hasPrefix("/") ? URL(fileURLWithPath: path) : gitDir.appending(path: path)
        }
        var files = [gitDir.appending(path: "HEAD"), gitDir.appending(path: "index"), common.appending(path: "packed-refs")]
        if let head = try? String(contentsOf: gitDir.appending(path: "HEAD"), encoding: .utf8), head.hasPrefix("ref: ") {
            files.append(common.appending(path: head.dropFirst("ref: ".count).trimmingCharacters(in: .whitespacesAndNewlines)))
        }
        return files.filter { fm.fileExists(atPath: $0.path) }
    }

    /// What the executables are built from: Package.swift, Sources/ and bpf/.
    static func sources(_ root: URL) -> [URL] {
        var files = [root.appending(path: "Package.swift")]
        for dir in ["Sources", "bpf"] {
            guard let e = FileManager.default.enumerator(at: root.appending(path: dir), includingPropertiesForKeys: [.isRegularFileKey])
            else { continue }
            for case let url as URL in e where (try? url.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true {
                files.append(url)
            }
        }
        return files
    }
}
