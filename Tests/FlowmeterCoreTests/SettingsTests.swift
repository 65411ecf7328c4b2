import FlowmeterCore
import Testing

@Suite struct SettingsTests {
    @Test(
        arguments: [
            ("5s", 5_000_000_000), ("500ms", 500_000_000), ("2m", 120_000_000_000), ("1.5s", 1_500_000_000),
            ("3", 3_000_000_000), ("250us", 250_000), ("1h", 3_600_000_000_000),
        ] as [(String, UInt64)])
    func durations(text: String, ns: UInt64) throws {
        #expect(try FlowDuration(parsing: text).nanoseconds == ns)
    }

    @Test(arguments: ["", "0s", "-1s", "5x", "s", "ms", "nan", "inf"])
    func badDurations(text: String) {
        #expect(throws: ValueError.self) { try FlowDuration(parsing: text) }
    }

    @Test func durationDescription() throws {
        #expect(try FlowDuration(parsing: "5s").description == "5s")
        #expect(try FlowDuration(parsing: "1500ms").description == "1500ms")
    }

    @Test func listenAddresses() throws {
        #expect(try ListenAddress(parsing: ":9810") == ListenAddress(host: "0.0.0.0", port: 9810))
        #expect(try ListenAddress(parsing: "127.0.0.1:80") == ListenAddress(host: "127.0.0.1", port: 80))
        #expect(try ListenAddress(parsing: "[::1]:9810") == ListenAddress(host: "::1", port: 9810))
        #expect(try ListenAddress(parsing: "[::1]:9810").description == "[::1]:9810")
        for bad in ["9810", "host:", ":70000", ":-1", "::1:9810", "[::1]9810", "[::1", "a:b"] {
            #expect(throws: ValueError.self, "\(bad)") { try ListenAddress(parsing: bad) }
        }
    }

    @Test func globs() {
        #expect(globMatch("veth*", "veth0"))
        #expect(globMatch("veth*", "veth"))
        #expect(!globMatch("veth*", "eth0"))
        #expect(globMatch("eth?", "eth1"))
        #expect(!globMatch("eth?", "eth10"))
        #expect(globMatch("eth[0-3]", "eth2"))
        #expect(!globMatch("eth[0-3]", "eth5"))
        #expect(globMatch("eth[!0]", "eth5"))
        #expect(!globMatch("eth[!0]", "eth0"))
        #expect(globMatch("*", "anything"))
        #expect(globMatch("lo", "lo") && !globMatch("lo", "lo0"))
        #expect(globMatch("*-*", "cali-1") && !globMatch("*-*", "cali1"))
    }

    static let host: [InterfaceSelection.Candidate] = [
        .init(name: "lo", ifindex: 1, isUp: true, isLoopback: true),
        .init(name: "eth0", ifindex: 2, isUp: true, isLoopback: false),
        .init(name: "eth1", ifindex: 3, isUp: false, isLoopback: false),
        .init(name: "veth12", ifindex: 4, isUp: true, isLoopback: false),
        .init(name: "docker0", ifindex: 5, isUp: true, isLoopback: false),
    ]

    @Test func defaultSelectionIsUpNonLoopback() throws {
        #expect(try InterfaceSelection().select(from: Self.host).map(\.name) == ["eth0", "veth12", "docker0"])
    }

    @Test func includeExcludeAndGlobs() throws {
        #expect(try InterfaceSelection(include: ["eth*"]).select(from: Self.host).map(\.name) == ["eth0", "eth1"])
        #expect(try InterfaceSelection(exclude: ["docker*", "veth*"]).select(from: Self.host).map(\.name) == ["eth0"])
        #expect(try InterfaceSelection(include: ["lo", "eth1"]).select(from: Self.host).map(\.name) == ["lo", "eth1"])
        #expect(try InterfaceSelection(include: ["nomatch*"]).select(from: Self.host).isEmpty)
        #expect(InterfaceSelection.patterns(" eth0, veth* ,,") == ["eth0", "veth*"])
    }

    @Test func unknownInterfaceNamesAreErrors() {
        #expect {
            try InterfaceSelection(include: ["eth0", "wlan9"]).select(from: Self.host)
        } throws: { e in
            "\(e)".contains("unknown interface wlan9") && "\(e)".contains("eth0, eth1")
        }
    }
}
