import FlowmeterCore

/// What `--version` prints: the version and the git commit of the build.
/// `commit` is generated at build time by the BuildCommit plugin
/// (Plugins/BuildCommit): the short hash, "-dirty" when tracked files had
/// changes, or "unknown" when the source is not a git work tree.
public enum BuildInfo {
    /// e.g. "0.1.0 (commit abcdef1)".
    public static var version: String { "\(FlowmeterVersion.current) (commit \(commit))" }
}
