import ArgumentParser
import FlowmeterBPF
import FlowmeterConfig
import Foundation

/// `flowmeterd uninstall`: takes out of the kernel what `--persist` leaves
/// there on purpose, and what a killed run left by accident.
struct UninstallCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uninstall",
        abstract:
            "Remove everything flowmeterd left in the kernel: pinned maps and TCX links (--persist), recorded clsact filters and qdiscs.",
        discussion: """
            Stop the daemon first, and run this in the network namespace it ran in (the recorded clsact \
            filters are found by interface index there). --pin-dir and --state-dir are read as `run` reads them: \
            flags, then FLOWMETER_* variables, then the configuration file. Prints one line per thing removed; \
            exit status 0 also when there was nothing to remove. The Debian package's prerm runs it on remove \
            (not on upgrade, which adopts instead).
            """
    )

    @Option(
        name: .long,
        help: ArgumentHelp(
            "YAML configuration file, as for run (default: $FLOWMETER_CONFIG, else /etc/flowmeter/flowmeter.yaml if it exists).",
            valueName: "path"))
    var config: String?

    @Option(name: .customLong(Setting.pinDir.flag), help: Setting.pinDir.argumentHelp, transform: Setting.pinDir.flagValue)
    var pinDir: SettingValue?

    @Option(name: .customLong(Setting.stateDir.flag), help: Setting.stateDir.argumentHelp, transform: Setting.stateDir.flagValue)
    var stateDir: SettingValue?

    func run() throws {
        var flags = FileConfig()
        if let pinDir { Setting.pinDir.set(&flags, pinDir) }
        if let stateDir { Setting.stateDir.set(&flags, stateDir) }
        let layers: ConfigLayers
        do { layers = try ConfigLayers.load(flagPath: config) } catch { fail("\(error)") }
        let s = layers.file.overlaid(by: layers.environment).overlaid(by: flags).withDefaults()
        requireCapabilities()
        let removed = Self.remove(pins: PinDirectory(path: s.pinDir!), stateDir: s.stateDir!)
        if removed.isEmpty { print("nothing to remove") }
        for r in removed { print("removed \(r)") }
    }

    /// Pinned links and maps first (a link detached before its program's
    /// filter is irrelevant to the filter), then the clsact attachments of
    /// the state record. Returns what it removed.
    static func remove(pins: PinDirectory, stateDir: String) -> [String] {
        let links = pins.removeAll()
        // No programs of our own: the record's program ids (or, with
        // CAP_SYS_ADMIN, the programs' names) tell its filters as ours.
        let filters = TCAttacher(ingressFD: -1, egressFD: -1, stateDir: stateDir).removeLeftovers()
        return links + filters
    }
}
