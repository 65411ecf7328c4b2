import FlowmeterCore
import Foundation
import Testing

@testable import FlowmeterConfig

/// Every setting is declared once (Setting.all); these hold each source to it.
@Suite struct SettingsTableTests {
    @Test func namesAreUniqueAndComplete() {
        let all = Setting.all
        #expect(Set(all.map(\.key)).count == all.count)
        #expect(Set(all.map(\.flag)).count == all.count)
        #expect(Set(all.map(\.variable)).count == all.count)
        for s in all {
            #expect(s.variable.hasPrefix("FLOWMETER_"), "\(s.key)")
            #expect(!s.help.isEmpty && !s.defaultText.isEmpty && !s.valueName.isEmpty, "\(s.key)")
            #expect(!FileConfig.environmentNotSettings.contains(s.variable), "\(s.variable)")
        }
        #expect(FileConfig.environmentVariables == all.map(\.variable))
        #expect(FileConfig.topLevelKeys == all.filter { !$0.key.contains(".") }.map(\.key) + ["services", "peers", "series"])
    }

    /// The example value, read from the file, from the variable and as text,
    /// gives the same value in each.
    @Test(arguments: Setting.all.map(\.key))
    func everyFormReadsTheSameValue(key: String) throws {
        let s = try #require(Setting.byKey(key))
        let want = try s.parse(s.example)
        let yamlValue: String
        if case .names = s.kind {
            yamlValue = "[" + s.example.split(separator: ",").map { "\"\($0)\"" }.joined(separator: ", ") + "]"
        } else if case .bool = s.kind {
            yamlValue = s.example
        } else {
            yamlValue = "\"\(s.example)\""
        }
        let yaml = s.key.contains(".") ? "\(s.section):\n  \(s.leaf): \(yamlValue)\n" : "\(s.key): \(yamlValue)\n"
        let file = try FileConfig.parse(yaml: yaml, source: "f.yaml")
        #expect(s.value(in: file) == want)
        let env = try FileConfig.environment([s.variable: s.example])
        #expect(s.value(in: env) == want)
        // The higher layer wins, for this setting alone.
        var low = FileConfig()
        if let d = s.defaultValue, d != want { s.set(&low, d) }
        #expect(s.value(in: low.overlaid(by: env)) == want)
        #expect(s.value(in: env.overlaid(by: FileConfig())) == want)
    }

    /// A default is applied only where no layer says, and passes its own check.
    @Test func defaultsComeFromTheTable() throws {
        let filled = FileConfig().withDefaults()
        for s in Setting.all {
            #expect(s.value(in: filled) == s.defaultValue, "\(s.key)")
        }
        #expect(filled.interval == FlowDuration(nanoseconds: 5_000_000_000))
        #expect(filled.maxSeriesPerMetric == AggregationLimits.defaults.maxSeriesPerMetric)
        var given = FileConfig()
        given.interval = FlowDuration(nanoseconds: 1_000_000_000)
        #expect(given.withDefaults().interval == FlowDuration(nanoseconds: 1_000_000_000))
        // Each default, written as text, passes the setting's check.
        for s in Setting.all {
            guard let d = s.defaultValue else { continue }
            switch d {
            case .text(let t): #expect(try s.parse(t) == d, "\(s.key)")
            case .integer(let n): #expect(try s.parse(String(n)) == d, "\(s.key)")
            case .bool(let b): #expect(try s.parse(b ? "true" : "false") == d, "\(s.key)")
            case .duration(let v): #expect(try s.parse("\(v.nanoseconds / 1_000_000)ms") == d, "\(s.key)")
            case .names: break
            }
        }
    }

    /// Bounds are checked the same from every source: one check per setting.
    @Test func boundsAreTheSameEverywhere() {
        let cases: [(Setting, String)] = [
            (.flowTableSize, "0"), (.flowTableSize, "16777217"), (.flowsRingSize, "5000"),
            (.otlpQueueSize, "0"), (.otlpQueueSize, "10001"), (.flowLogKeep, "101"),
            (.maxSeriesPerMetric, "9"), (.tcMode, "bogus"), (.interval, "0s"),
        ]
        for (s, bad) in cases {
            #expect(throws: (any Error).self, "\(s.key) \(bad)") { try s.parse(bad) }
            #expect(throws: ConfigError.self, "\(s.variable) \(bad)") { try FileConfig.environment([s.variable: bad]) }
            let yaml = s.key.contains(".") ? "\(s.section):\n  \(s.leaf): \(bad)\n" : "\(s.key): \(bad)\n"
            #expect(throws: ConfigError.self, "\(s.key) \(bad)") { try FileConfig.parse(yaml: yaml, source: "f.yaml") }
        }
    }

    /// The docs' option table is the one the table makes.
    @Test func theDocsTableIsTheGeneratedOne() throws {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let docs = try String(contentsOf: repo.appendingPathComponent("docs/flowmeterd.md"), encoding: .utf8)
        let table = Setting.markdownTable()
        #expect(
            docs.contains("-->\n" + table + "<!-- end of settings table -->"),
            "docs/flowmeterd.md's settings table is stale: replace it with the output of `flowmeterd config settings`:\n\(table)")
    }
}
