import ArgumentParser
import FlowmeterConfig
import FlowmeterCore
import FlowmeterExport
import Foundation
import Logging

/// The configuration layers below the flags: the file and the environment.
/// Precedence (highest first): flags, FLOWMETER_* variables, the file, defaults.
struct ConfigLayers {
    static let defaultPath = "/etc/flowmeter/flowmeter.yaml"
    /// The file read, nil when none was given and the default does not exist.
    var path: String?
    var file = FileConfig()
    var environment = FileConfig()

    /// --config, else $FLOWMETER_CONFIG, else the default path if it exists.
    /// A file that was asked for by name must exist.
    static func load(flagPath: String?, env: [String: String] = ProcessInfo.processInfo.environment) throws -> ConfigLayers {
        var l = ConfigLayers()
        l.environment = try FileConfig.environment(env)
        let named = flagPath ?? env["FLOWMETER_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        let path = named ?? (FileManager.default.fileExists(atPath: defaultPath) ? defaultPath : nil)
        guard let path else { return l }
        l.path = path
        l.file = try parseFile(path)
        return l
    }

    static func parseFile(_ path: String) throws -> FileConfig {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ValueError("cannot read config file \(path): \((error as NSError).localizedDescription)")
        }
        return try FileConfig.parse(yaml: text, source: path)
    }
}

/// Runs `reload` on SIGHUP (on a dispatch queue, never in the signal handler)
/// and logs the outcome; a file with errors changes nothing.
final class SignalReloader: @unchecked Sendable {
    private let source: any DispatchSourceSignal

    init(logger: Logger, reload: @escaping @Sendable () throws -> String) {
        signal(SIGHUP, SIG_IGN)
        let src = DispatchSource.makeSignalSource(signal: SIGHUP, queue: DispatchQueue(label: "flowmeter-sighup"))
        src.setEventHandler {
            do {
                let summary = try reload()
                logger.notice("configuration reloaded", metadata: ["applied": "\(summary)"])
            } catch {
                logger.error("configuration not reloaded; the previous one stays", metadata: ["error": "\(error)"])
            }
        }
        src.resume()
        source = src
    }

    deinit { source.cancel() }
}

struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Work with configuration files.",
        subcommands: [ConfigCheck.self, ConfigSettings.self]
    )
}

struct ConfigSettings: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "settings",
        abstract: "Print every setting: its flag, FLOWMETER_* variable, file key, default and meaning (a Markdown table)."
    )

    func run() throws { print(Setting.markdownTable(), terminator: "") }
}

struct ConfigCheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate a configuration file: print every problem with its line, exit 1 if there is any.",
        discussion: "Also checks the FLOWMETER_* variables of the environment, which flowmeterd would read with it."
    )

    @Argument(help: ArgumentHelp("The YAML file to check.", valueName: "file"))
    var file: String

    func run() throws {
        var problems: [String] = []
        var config = FileConfig()
        do { config = try ConfigLayers.parseFile(file) } catch { problems.append("\(error)") }
        do { _ = try FileConfig.environment(ProcessInfo.processInfo.environment) } catch { problems.append("\(error)") }
        // The web config it names, with its certificate files, as the daemon would load them.
        if let web = config.webConfig {
            do { _ = try WebSecurity(WebConfig.load(path: web), logger: Logger(label: "flowmeterd")) } catch {
                problems.append("web_config: \(error)")
            }
        }
        if !problems.isEmpty {
            FileHandle.standardError.write(Data((problems.joined(separator: "\n") + "\n").utf8))
            throw ExitCode(1)
        }
        print(
            "\(file): ok (\(config.services?.count ?? 0) service rules, \(config.peers?.count ?? 0) peer rules, "
                + "max \(config.limits.maxSeriesPerMetric) series per metric, series expire after \(config.limits.seriesExpiry)"
                + (config.webConfig.map { ", web config \($0)" } ?? "") + ")")
    }
}

/// The API socket's file: its directory exists, and a socket left by a killed
/// run is removed (anything else at the path is an error, never deleted).
enum APISocketFile {
    static func prepare(_ path: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw ValueError("\(path) exists and is not a socket; not touching it")
        }
        // A socket someone still answers on belongs to a running flowmeterd.
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { dst in
            let bytes = Array(path.utf8.prefix(dst.count - 1))
            dst.copyBytes(from: bytes)
        }
        let live =
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            } == 0
        if live { throw ValueError("\(path) is in use by another flowmeterd; give this one its own --api-socket (or off)") }
        unlink(path)
    }
}
