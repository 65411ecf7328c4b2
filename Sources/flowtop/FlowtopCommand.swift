import ArgumentParser
import CNcurses
import FlowmeterBuildInfo
import FlowmeterCore
import FlowtopCore
import Foundation
import Synchronization

@main
struct Flowtop: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "flowtop",
        abstract: "Live view of who talks to whom on this node, from flowmeterd's local API.",
        discussion: """
            Keys: Tab or 1-4 switch view (services, flows, processes, interfaces); w cycles the rate window \
            (2 s, 10 s, 40 s); b toggles bytes/bits; a column's letter sorts by it (again: reverse); / filters \
            (text, or column=value); Enter drills from a service into its flows (Esc: back); p pauses; ? help; q quits.
            """,
        version: BuildInfo.version
    )

    @Option(name: .long, help: ArgumentHelp("flowmeterd's API socket.", valueName: "path"))
    var socket = "/run/flowmeter/flowmeter.sock"

    @Flag(name: .long, help: "Print one table (or, with --json, the raw snapshot) and exit, like top -b.")
    var once = false

    @Flag(name: .long, help: "With --once: print the daemon's snapshot as JSON.")
    var json = false

    @Option(
        name: .long, help: ArgumentHelp("With --once: the view to print: services, flows, processes, interfaces.", valueName: "view"),
        transform: { s in
            guard let v = View.allCases.first(where: { "\($0)" == s }) else {
                throw ValidationError("'\(s)' is not one of services, flows, processes, interfaces")
            }
            return v
        })
    var view: View = .services

    @Option(name: .long, help: ArgumentHelp("With --once: seconds between the two snapshots the rates come from.", valueName: "seconds"))
    var delay: Double = 1

    @Flag(name: .long, help: "As root, with no daemon running: start a flowmeterd of our own (private socket) for as long as flowtop runs.")
    var standalone = false

    func validate() throws {
        if json && !once { throw ValidationError("--json needs --once") }
        guard delay > 0 && delay <= 60 else { throw ValidationError("--delay must be from 0 to 60 seconds") }
    }

    func run() throws {
        var path = socket
        var daemon: Process?
        if standalone {
            (daemon, path) = try Standalone.start()
        }
        defer { daemon?.terminate(); daemon?.waitUntilExit() }
        let client = APIClient(socketPath: path)
        do {
            if once {
                try runOnce(client)
            } else {
                guard isatty(STDOUT_FILENO) == 1, isatty(STDIN_FILENO) == 1 else {
                    throw ValidationError("flowtop needs a terminal; use --once (and --json) for scripts")
                }
                _ = try client.snapshot()  // fail early, before the screen is taken
                try Interactive(client: client).run()
            }
        } catch let e as APIClient.Unreachable {
            FileHandle.standardError.write(Data("flowtop: \(e)\n".utf8))
            throw ExitCode(1)
        }
    }

    func runOnce(_ client: APIClient) throws {
        let first = try client.snapshot()
        if json {
            print(first.json)
            return
        }
        var history = History()
        history.add(first.snapshot)
        Thread.sleep(forTimeInterval: delay)
        history.add(try client.snapshot().snapshot)
        var state = UIState()
        state.view = view
        print(plainTable(view, history, state: state), terminator: "")
    }
}

/// `--standalone`: a flowmeterd child with a private API socket.
enum Standalone {
    static func start() throws -> (Process, String) {
        guard geteuid() == 0 else { throw ValidationError("--standalone needs root (it loads BPF programs)") }
        let me = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        let here = me.deletingLastPathComponent()
        // Beside flowtop (a build directory), or in ../sbin (the package:
        // /usr/bin/flowtop and /usr/sbin/flowmeterd).
        let candidates = [
            here.appendingPathComponent("flowmeterd"),
            here.deletingLastPathComponent().appendingPathComponent("sbin/flowmeterd").standardizedFileURL,
        ]
        guard let daemon = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
            throw ValidationError("--standalone: no flowmeterd next to flowtop (\(candidates.map(\.path).joined(separator: " or ")))")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("flowtop-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let sock = dir.appendingPathComponent("api.sock").path
        let p = Process()
        p.executableURL = daemon
        p.arguments = [
            "--api-socket", sock, "--metrics-listen", "127.0.0.1:0", "--interval", "1s",
            "--state-dir", dir.appendingPathComponent("state").path, "--log-level", "warning",
        ]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try p.run()
        for _ in 0..<100 where !FileManager.default.fileExists(atPath: sock) {
            guard p.isRunning else { throw ValidationError("--standalone: flowmeterd exited (\(p.terminationStatus))") }
            Thread.sleep(forTimeInterval: 0.1)
        }
        return (p, sock)
    }
}

/// The full-screen loop: a reader thread follows the stream; this thread
/// handles keys and draws the screen model with ncurses.
final class Interactive: @unchecked Sendable {
    let client: APIClient
    private let inbox = Mutex<(snapshots: [APISnapshot], status: String?)>(([], nil))
    private let stop = Atomic<Bool>(false)

    init(client: APIClient) { self.client = client }

    func run() throws {
        let reader = Thread { [self] in
            while !stop.load(ordering: .acquiring) {
                do {
                    try client.stream { [self] s in
                        inbox.withLock {
                            $0.snapshots.append(s); $0.status = nil
                        }
                        return !stop.load(ordering: .acquiring)
                    }
                    inbox.withLock { $0.status = "stream ended; reconnecting" }
                } catch {
                    inbox.withLock { $0.status = "daemon unreachable; retrying" }
                }
                Thread.sleep(forTimeInterval: 1)
            }
        }
        reader.start()

        Terminal.enter(color: ProcessInfo.processInfo.environment["NO_COLOR"].map { $0.isEmpty } ?? true)
        defer { Terminal.leave() }
        var history = History()
        var state = UIState()
        var size = (width: Int(fm_nc_width()), height: Int(fm_nc_height()))
        _ = state.handle(.resize(width: size.width, height: size.height), history: history)
        var dirty = true
        var status: String?
        while !Terminal.interrupted.load(ordering: .acquiring) {
            let (new, st) = inbox.withLock { box -> ([APISnapshot], String?) in
                defer { box.snapshots.removeAll() }
                return (box.snapshots, box.status)
            }
            for s in new { history.add(s); dirty = true }
            if !new.isEmpty { state.observe(history) }
            if st != status { status = st; dirty = true }
            if dirty {
                draw(render(state, history, width: size.width, height: size.height), status: status)
                dirty = false
            }
            let c = fm_nc_getch()
            if c == ERR { continue }
            guard let key = Terminal.key(c) else { continue }
            if case .resize = key { size = (Int(fm_nc_width()), Int(fm_nc_height())) }
            if !state.handle(key, history: history) { break }
            dirty = true
        }
        stop.store(true, ordering: .releasing)
    }

    private func draw(_ m: ScreenModel, status: String?) {
        fm_nc_erase()
        for (y, line) in m.lines.enumerated() { fm_nc_put(Int32(y), 0, line, Int32(FM_STYLE_NORMAL)) }
        for s in m.styles where s.line < m.lines.count {
            let chars = Array(m.lines[s.line])
            let lo = max(0, min(s.columns.lowerBound, chars.count)), hi = max(lo, min(s.columns.upperBound, chars.count))
            fm_nc_put(Int32(s.line), Int32(lo), String(chars[lo..<hi]), Terminal.style(s.kind))
        }
        if let status, m.height > 0 {
            let text = String(" \(status) ".prefix(m.width))
            fm_nc_put(Int32(m.height - 1), 0, text, Int32(FM_STYLE_WARNING))
        }
        fm_nc_refresh()
    }
}

/// Curses mode in and out, whatever ends the program: `q`, a signal, or a crash.
enum Terminal {
    static let interrupted = Atomic<Bool>(false)

    static func enter(color: Bool) {
        fm_nc_init(color ? 1 : 0, 100)
        atexit { fm_nc_end() }
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            signal(sig) { _ in Terminal.interrupted.store(true, ordering: .releasing) }
        }
        for sig in [SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE] {
            signal(sig) { s in
                fm_nc_end()
                signal(s, SIG_DFL)
                raise(s)
            }
        }
    }

    static func leave() { fm_nc_end() }

    static func style(_ k: ScreenModel.Style.Kind) -> Int32 {
        switch k {
        case .header: Int32(FM_STYLE_HEADER)
        case .title: Int32(FM_STYLE_TITLE)
        case .selected: Int32(FM_STYLE_SELECTED)
        case .warning: Int32(FM_STYLE_WARNING)
        case .dim: Int32(FM_STYLE_DIM)
        }
    }

    static func key(_ c: Int32) -> Key? {
        switch c {
        case 9: return .tab
        case 10, 13, fm_key_enter(): return .enter
        case 27: return .escape
        case 8, 127, fm_key_backspace(): return .backspace
        case fm_key_up(): return .up
        case fm_key_down(): return .down
        case fm_key_ppage(): return .pageUp
        case fm_key_npage(): return .pageDown
        case fm_key_home(): return .home
        case fm_key_end(): return .end
        case fm_key_resize(): return .resize(width: Int(fm_nc_width()), height: Int(fm_nc_height()))
        default:
            guard c >= 32, c < 127, let u = UnicodeScalar(UInt32(c)) else { return nil }
            return .char(Character(u))
        }
    }
}
