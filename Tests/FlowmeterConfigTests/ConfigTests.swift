import FlowmeterBPF
import FlowmeterCore
import Foundation
import Logging
import Testing

@testable import FlowmeterConfig

/// The problems `parse` reports for `yaml`, as printed; [] if it parses.
func problems(_ yaml: String, source: String = "f.yaml") -> [String] {
    do {
        _ = try FileConfig.parse(yaml: yaml, source: source)
        return []
    } catch {
        return error.problems.map(\.description)
    }
}

func envProblems(_ env: [String: String]) -> [String] {
    do {
        _ = try FileConfig.environment(env)
        return []
    } catch {
        return error.problems.map(\.description)
    }
}

func seconds(_ s: UInt64) -> FlowDuration { FlowDuration(nanoseconds: s * 1_000_000_000) }

@Suite struct YAMLTests {
    @Test(arguments: ["", "\n", "# nothing but a comment\n", "---\n", "---\n...\n", "~\n", "  \n\n"])
    func emptyFileIsEmptyConfig(yaml: String) throws {
        #expect(try FileConfig.parse(yaml: yaml, source: "f.yaml") == FileConfig())
    }

    @Test func everyKey() throws {
        let yaml = """
            interfaces: ["eth*", "veth*"]
            exclude_interfaces: ["lo"]
            interval: 10s
            metrics_listen: "0.0.0.0:9464"
            flow_log: /var/log/flowmeter/flows.jsonl
            flow_table_size: 65536
            tc_mode: clsact
            hooks: kprobe
            follow_interfaces: false
            state_dir: /run/flowmeter-test
            log_level: debug
            services:
              - name: checkout
                cgroup: "/system.slice/checkout.service"
              - name: postgres
                process: "postgres"
                ports: "5432"
                cidr: "10.0.0.0/8"
            peers:
              - name: dns
                cidr: "10.96.0.10/32"
                ports: 53
            series:
              max_per_metric: 500
              expiry: 5m
              peer_addresses: true
            """
        let c = try FileConfig.parse(yaml: yaml, source: "f.yaml")
        let want = FileConfig(
            interfaces: ["eth*", "veth*"], excludeInterfaces: ["lo"], interval: seconds(10),
            metricsListen: "0.0.0.0:9464", flowLog: "/var/log/flowmeter/flows.jsonl", flowTableSize: 65536,
            tcMode: "clsact", hooks: "kprobe", followInterfaces: false, stateDir: "/run/flowmeter-test",
            logLevel: "debug",
            services: [
                ServiceRule(service: "checkout", cgroup: "/system.slice/checkout.service"),
                ServiceRule(
                    service: "postgres", process: "postgres", ports: PortRange(lower: 5432, upper: 5432),
                    cidr: try CIDR(parsing: "10.0.0.0/8")),
            ],
            peers: [PeerRule(service: "dns", cidr: try CIDR(parsing: "10.96.0.10/32"), ports: PortRange(lower: 53, upper: 53))],
            maxSeriesPerMetric: 500, seriesExpiry: seconds(300), peerAddresses: true)
        #expect(c == want)
        #expect(c.limits == AggregationLimits(maxSeriesPerMetric: 500, seriesExpiry: seconds(300), peerAddresses: true))
    }

    @Test(
        arguments: [
            ("53", 53, 53), ("\"53\"", 53, 53), ("'53'", 53, 53), ("8000-8100", 8000, 8100),
            ("\"8000-8100\"", 8000, 8100), ("65535", 65535, 65535), ("\"1 - 1023\"", 1, 1023),
        ]
            as [(String, UInt16, UInt16)])
    func portsAsIntOrString(text: String, lower: UInt16, upper: UInt16) throws {
        let c = try FileConfig.parse(yaml: "peers:\n  - name: p\n    ports: \(text)\n", source: "f.yaml")
        #expect(c.peers == [PeerRule(service: "p", ports: PortRange(lower: lower, upper: upper))])
        let s = try FileConfig.parse(yaml: "services:\n  - name: s\n    ports: \(text)\n", source: "f.yaml")
        #expect(s.services?.first?.ports == PortRange(lower: lower, upper: upper))
    }

    @Test func keyWithoutValueIsUnset() throws {
        let c = try FileConfig.parse(yaml: "flow_log:\ninterval: ~\nflow_table_size: null\nseries:\nservices:\n", source: "f.yaml")
        #expect(c == FileConfig())
    }

    @Test func hooksOffIsTheWordNotFalse() throws {
        // YAML reads a bare `off` as false; the setting still gets "off".
        #expect(try FileConfig.parse(yaml: "hooks: off\n", source: "f.yaml").hooks == "off")
        #expect(try FileConfig.parse(yaml: "hooks: \"off\"\n", source: "f.yaml").hooks == "off")
        #expect(try FileConfig.parse(yaml: "hooks: tracepoint-classic\n", source: "f.yaml").hooks == "tracepoint-classic")
    }

    @Test func otherYAMLSpellings() throws {
        let c = try FileConfig.parse(
            yaml: """
                interval: 2                # bare number: seconds
                flow_table_size: 0x1000
                follow_interfaces: yes
                metrics_listen: "[::1]:9810"
                interfaces:
                  - eth0
                  - "wl*"
                services: [{name: "api@v2", ports: 8080}]
                peers:
                  - {name: "v6:net/1", cidr: "fd00::/8"}
                """, source: "f.yaml")
        #expect(c.interval == seconds(2))
        #expect(c.flowTableSize == 4096)
        #expect(c.followInterfaces == true)
        #expect(c.metricsListen == "[::1]:9810")
        #expect(c.interfaces == ["eth0", "wl*"])
        #expect(c.services == [ServiceRule(service: "api@v2", ports: PortRange(lower: 8080, upper: 8080))])
        #expect(c.peers == [PeerRule(service: "v6:net/1", cidr: try CIDR(parsing: "fd00::/8"))])
    }

    // MARK: Syntax errors

    @Test func syntaxErrorHasTheLineYamsGives() {
        let badIndent = """
            interval: 5s
            services:
              - name: a
               ports: 80
            """
        #expect(
            problems(badIndent) == [
                "f.yaml:4:4: YAML syntax error: did not find expected '-' indicator (while parsing a block collection at line 3, column 3)"
            ])
        let unclosed = """
            interval: 5s
            interfaces: [eth0
            log_level: info
            """
        #expect(
            problems(unclosed) == [
                "f.yaml:3:10: YAML syntax error: did not find expected ',' or ']' (while parsing a flow sequence at line 2, column 13)"
            ])
        let badQuote = """
            interval: 5s
            flow_log: "/tmp/x
            """
        #expect(
            problems(badQuote) == [
                "f.yaml:2:18: YAML syntax error: found unexpected end of stream (while scanning a quoted scalar at line 2, column 11)"
            ])
        #expect(problems("interval: \"5s\u{1}\"\n") == ["f.yaml:1:14: YAML syntax error: control characters are not allowed"])
    }

    @Test func duplicateKeyAndSecondDocument() {
        #expect(
            problems("log_level: info\ninterval: 5s\ninterval: 6s\n") == [
                "f.yaml:2:1: YAML: key \"interval\" given more than once in the same mapping (first here)"
            ])
        #expect(
            problems("interval: 5s\n---\ninterval: 6s\n") == [
                "f.yaml:2:1: YAML syntax error: a config file holds one document; another starts here"
            ])
    }

    @Test func topLevelMustBeAMapping() {
        #expect(problems("- eth0\n- eth1\n") == ["f.yaml:1:1: expected a mapping of settings (key: value) at the top level, got a list"])
        #expect(
            problems("interval 5s\n") == ["f.yaml:1:1: expected a mapping of settings (key: value) at the top level, got \"interval 5s\""])
    }

    // MARK: Unknown keys

    @Test func unknownKeys() {
        let yaml = """
            intervall: 5s
            log_level: info
            colour: blue
            series:
              max_series: 10
            services:
              - name: a
                proces: x
            peers:
              - name: b
                port: 53
            """
        let top =
            "interfaces, exclude_interfaces, interval, metrics_listen, web_config, flow_log, flow_log_max_size, flow_log_keep, otlp_endpoint, otlp_protocol, otlp_headers, otlp_ca_file, otlp_client_cert, otlp_client_key, otlp_compression, otlp_timeout, otlp_queue_size, ipfix_collector, ipfix_observation_domain, api_socket, api_group, flow_table_size, flows_ring_size, tc_mode, hooks, socket_updates, follow_interfaces, state_dir, persist, pin_dir, dns_ports, dns_timeout, dns_names, dns_peer_names, dns_name_grace, log_level, containerd_socket, docker_socket, pod_app_label, node_name, services, peers, series"
        #expect(
            problems(yaml) == [
                "f.yaml:1:1: intervall: unknown key (did you mean \"interval\"?); allowed here: \(top)",
                "f.yaml:3:1: colour: unknown key; allowed here: \(top)",
                "f.yaml:5:3: series.max_series: unknown key; allowed here: max_per_metric, expiry, peer_addresses",
                "f.yaml:7:5: services[0]: service rule \"a\" has no condition; give at least one of cgroup, process, ports, cidr, namespace, workload, pod_label, container",
                "f.yaml:8:5: services[0].proces: unknown key (did you mean \"process\"?); allowed here: name, cgroup, process, ports, cidr, namespace, workload, pod_label, container",
                "f.yaml:10:5: peers[0]: peer rule \"b\" has no condition; give at least one of cidr, ports",
                "f.yaml:11:5: peers[0].port: unknown key (did you mean \"ports\"?); allowed here: name, cidr, ports",
            ])
    }

    // MARK: Wrong types

    @Test(
        arguments: [
            (
                "interfaces: eth0",
                "f.yaml:1:13: interfaces: expected a list of interface names or globs (e.g. [\"eth*\", \"veth*\"]), got \"eth0\""
            ),
            (
                "exclude_interfaces: {lo: 1}",
                "f.yaml:1:21: exclude_interfaces: expected a list of interface names or globs (e.g. [\"eth*\", \"veth*\"]), got a mapping"
            ),
            ("interfaces: [eth0, [a]]", "f.yaml:1:20: interfaces[1]: expected an interface name or glob, got a list"),
            ("interfaces:\n  - eth0\n  -\n", "f.yaml:3:4: interfaces[1]: expected an interface name or glob, got nothing"),
            ("interfaces: [\"eth0,eth1\"]", "f.yaml:1:14: interfaces[0]: \"eth0,eth1\" has a comma: give one name or glob per list item"),
            ("interfaces: [\" \"]", "f.yaml:1:14: interfaces[0]: must not be empty"),
            ("interval: [5s]", "f.yaml:1:11: interval: expected a duration, got a list"),
            ("metrics_listen: {host: x}", "f.yaml:1:17: metrics_listen: expected an address (HOST:PORT), got a mapping"),
            ("flow_log: [a, b]", "f.yaml:1:11: flow_log: expected a path, got a list"),
            ("flow_table_size: many", "f.yaml:1:18: flow_table_size: expected a whole number, got \"many\""),
            ("flow_table_size: 1.5", "f.yaml:1:18: flow_table_size: expected a whole number, got \"1.5\""),
            ("tc_mode: [auto]", "f.yaml:1:10: tc_mode: expected a tc mode, got a list"),
            ("hooks: {a: b}", "f.yaml:1:8: hooks: expected a hook rung, got a mapping"),
            ("follow_interfaces: \"yes please\"", "f.yaml:1:20: follow_interfaces: expected true or false, got \"yes please\""),
            ("follow_interfaces: 1", "f.yaml:1:20: follow_interfaces: expected true or false, got \"1\""),
            ("follow_interfaces: \"true\"", "f.yaml:1:20: follow_interfaces: expected true or false, got \"true\""),
            ("state_dir: [a]", "f.yaml:1:12: state_dir: expected a directory, got a list"),
            ("log_level: [info, debug]", "f.yaml:1:12: log_level: expected a log level, got a list"),
            ("services: {name: x}", "f.yaml:1:11: services: expected a list of service rules (each \"- name: ...\"), got a mapping"),
            ("services: checkout", "f.yaml:1:11: services: expected a list of service rules (each \"- name: ...\"), got \"checkout\""),
            (
                "services: [checkout]",
                "f.yaml:1:12: services[0]: expected a service rule (name and at least one of cgroup, process, ports, cidr, namespace, workload, pod_label, container), got \"checkout\""
            ),
            ("peers: [[a]]", "f.yaml:1:9: peers[0]: expected a peer rule (name and at least one of cidr, ports), got a list"),
            ("peers:\n  - name: p\n    ports: [80, 443]", "f.yaml:3:12: peers[0].ports: expected a port or port range, got a list"),
            ("services:\n  - name: s\n    cidr: {a: b}", "f.yaml:3:11: services[0].cidr: expected an address prefix, got a mapping"),
            ("series: 5", "f.yaml:1:9: series: expected a mapping (max_per_metric, expiry, peer_addresses), got \"5\""),
            ("series:\n  peer_addresses: sometimes", "f.yaml:2:19: series.peer_addresses: expected true or false, got \"sometimes\""),
            ("series:\n  max_per_metric: [10]", "f.yaml:2:19: series.max_per_metric: expected a whole number, got a list"),
            ("[a]: 1", "f.yaml:1:1: expected a key name, got a list"),
        ] as [(String, String)])
    func wrongType(yaml: String, problem: String) {
        #expect(problems(yaml) == [problem])
    }

    // MARK: Bad values

    @Test(
        arguments: [
            ("interval: 5x", "f.yaml:1:11: interval: '5x' is not a positive duration (examples: 500ms, 5s, 1m)"),
            ("interval: 0s", "f.yaml:1:11: interval: '0s' is not a positive duration (examples: 500ms, 5s, 1m)"),
            ("interval: -1", "f.yaml:1:11: interval: '-1' is not a positive duration (examples: 500ms, 5s, 1m)"),
            ("metrics_listen: 9810", "f.yaml:1:17: metrics_listen: '9810' is not HOST:PORT (examples: :9810, 127.0.0.1:9810)"),
            ("metrics_listen: \":70000\"", "f.yaml:1:17: metrics_listen: ':70000': port must be a number from 0 to 65535"),
            ("flow_log: \"\"", "f.yaml:1:11: flow_log: must not be empty"),
            ("state_dir: ''", "f.yaml:1:12: state_dir: must not be empty"),
            ("flow_table_size: 0", "f.yaml:1:18: flow_table_size: must be from 1 to 16777216, got 0"),
            ("flow_table_size: -5", "f.yaml:1:18: flow_table_size: must be from 1 to 16777216, got -5"),
            ("flow_table_size: 16777217", "f.yaml:1:18: flow_table_size: must be from 1 to 16777216, got 16777217"),
            ("tc_mode: tcxx", "f.yaml:1:10: tc_mode: \"tcxx\" is not one of auto, tcx, clsact"),
            ("tc_mode: TCX", "f.yaml:1:10: tc_mode: \"TCX\" is not one of auto, tcx, clsact"),
            ("hooks: fexit", "f.yaml:1:8: hooks: \"fexit\" is not one of auto, fentry, kprobe, tracepoint, tracepoint-classic, off"),
            ("hooks: false", "f.yaml:1:8: hooks: \"false\" is not one of auto, fentry, kprobe, tracepoint, tracepoint-classic, off"),
            (
                "log_level: verbose",
                "f.yaml:1:12: log_level: \"verbose\" is not one of trace, debug, info, notice, warning, error, critical"
            ),
            ("series:\n  max_per_metric: 9", "f.yaml:2:19: series.max_per_metric: must be at least 10, got 9"),
            ("series:\n  max_per_metric: 0", "f.yaml:2:19: series.max_per_metric: must be at least 10, got 0"),
            ("series:\n  max_per_metric: -100", "f.yaml:2:19: series.max_per_metric: must be at least 10, got -100"),
            ("series:\n  expiry: soon", "f.yaml:2:11: series.expiry: 'soon' is not a positive duration (examples: 500ms, 5s, 1m)"),
            (
                "services:\n  - name: s\n    ports: 0",
                "f.yaml:3:12: services[0].ports: \"0\" is not a port or port range (want e.g. 5432 or 8000-8100, 1 to 65535)"
            ),
            (
                "services:\n  - name: s\n    ports: 65536",
                "f.yaml:3:12: services[0].ports: \"65536\" is not a port or port range (want e.g. 5432 or 8000-8100, 1 to 65535)"
            ),
            (
                "services:\n  - name: s\n    ports: 80-70",
                "f.yaml:3:12: services[0].ports: \"80-70\" is not a port or port range (want e.g. 5432 or 8000-8100, 1 to 65535)"
            ),
            (
                "services:\n  - name: s\n    cidr: 10.0.0.0/33",
                "f.yaml:3:11: services[0].cidr: \"10.0.0.0/33\": prefix length must be 0 to 32"
            ),
            (
                "peers:\n  - name: p\n    cidr: example.com",
                "f.yaml:3:11: peers[0].cidr: \"example.com\" is not an address prefix (want e.g. 10.0.0.0/8 or fd00::/8)"
            ),
            ("services:\n  - name: s\n    process: \"\"", "f.yaml:3:14: services[0].process: must not be empty"),
            (
                "services:\n  - name: s\n    process: systemd-resolved",
                "f.yaml:3:14: services[0].process: \"systemd-resolved\" never matches: process names (comm) are at most 15 characters; use \"systemd-resolve\" or a glob"
            ),
            ("services:\n  - name: s\n    namespace: \"\"", "f.yaml:3:16: services[0].namespace: must not be empty"),
            (
                "services:\n  - name: s\n    pod_label: tier",
                "f.yaml:3:16: services[0].pod_label: expected a mapping of pod labels to their values (e.g. {app: checkout}), got \"tier\""
            ),
            (
                "services:\n  - name: s\n    pod_label: {}",
                "f.yaml:3:16: services[0].pod_label: gives no label; give at least one, e.g. {app: checkout}"
            ),
            (
                "services:\n  - name: s\n    pod_label: {tier: [a]}",
                "f.yaml:3:23: services[0].pod_label.tier: expected the label's value (text), got a list"
            ),
            (
                "services:\n  - name: s\n    cgroup: system.slice/x.service",
                "f.yaml:3:13: services[0].cgroup: \"system.slice/x.service\" never matches: cgroup paths start with \"/\" (e.g. /system.slice/system.slice/x.service)"
            ),
        ] as [(String, String)])
    func badValue(yaml: String, problem: String) {
        #expect(problems(yaml) == [problem])
    }

    @Test func podConditions() throws {
        let yaml =
            "services:\n  - name: front\n    namespace: shop\n    workload: \"web-*\"\n    container: nginx\n    pod_label: {tier: frontend, team: \"7\"}\n"
        let rule = try #require(try FileConfig.parse(yaml: yaml, source: "f.yaml").services?.first)
        #expect(
            rule
                == ServiceRule(
                    service: "front", namespace: "shop", workload: "web-*", podLabels: ["tier": "frontend", "team": "7"], container: "nginx"
                ))
    }

    @Test func longProcessGlobIsFine() throws {
        let c = try FileConfig.parse(yaml: "services:\n  - name: s\n    process: \"systemd-resolve*\"\n", source: "f.yaml")
        #expect(c.services?.first?.process == "systemd-resolve*")
    }

    // MARK: Rules: names and conditions

    @Test func ruleNamesAndConditions() {
        let yaml = """
            services:
              - cgroup: "/a.slice/*"
              - name: lonely
              - {}
              - name: ""
                ports: 80
              - name: "check out"
                ports: 81
              - name: [x]
                ports: 82
              - name: ok_1.2:3/4@5-6
                ports: 83
            peers:
              - ports: 53
              - name: "dns server"
              - name: café
                cidr: 10.0.0.1
            """
        #expect(
            problems(yaml) == [
                "f.yaml:2:5: services[0]: a service rule needs a name",
                "f.yaml:3:5: services[1]: service rule \"lonely\" has no condition; give at least one of cgroup, process, ports, cidr, namespace, workload, pod_label, container",
                "f.yaml:4:5: services[2]: a service rule needs a name",
                "f.yaml:4:5: services[2]: service rule has no condition; give at least one of cgroup, process, ports, cidr, namespace, workload, pod_label, container",
                "f.yaml:5:11: services[3].name: must not be empty",
                "f.yaml:7:11: services[4].name: \"check out\" may only contain A-Z a-z 0-9 _ . : / @ -",
                "f.yaml:9:11: services[5].name: expected a name, got a list",
                "f.yaml:14:5: peers[0]: a peer rule needs a name",
                "f.yaml:15:5: peers[1]: peer rule has no condition; give at least one of cidr, ports",
                "f.yaml:15:11: peers[1].name: \"dns server\" may only contain A-Z a-z 0-9 _ . : / @ -",
                "f.yaml:16:11: peers[2].name: \"café\" may only contain A-Z a-z 0-9 _ . : / @ -",
            ])
    }

    // MARK: All problems at once

    @Test func everyProblemIsReportedAtOnce() {
        let yaml = """
            # flowmeter config
            interfaces: ["eth*"]
            interval: 5x
            tc_mode: clsact
            hooks: fentry
            flow_tabel_size: 10
            services:
              - name: web
                ports: 80
              - name: postgres
                process: postgres
                ports: "80-70"
            series:
              max_per_metric: 5
              expiry: 5m
            log_level: loud
            """
        do {
            _ = try FileConfig.parse(yaml: yaml, source: "flowmeter.yaml")
            Issue.record("parsed")
        } catch {
            #expect(error.problems.count == 5)
            #expect(error.problems.map(\.line) == [3, 6, 12, 14, 16])
            #expect(
                error.problems.map(\.path) == ["interval", "flow_tabel_size", "services[1].ports", "series.max_per_metric", "log_level"])
            #expect(
                error.description == """
                    flowmeter.yaml:3:11: interval: '5x' is not a positive duration (examples: 500ms, 5s, 1m)
                    flowmeter.yaml:6:1: flow_tabel_size: unknown key (did you mean "flow_table_size"?); allowed here: interfaces, exclude_interfaces, interval, metrics_listen, web_config, flow_log, flow_log_max_size, flow_log_keep, otlp_endpoint, otlp_protocol, otlp_headers, otlp_ca_file, otlp_client_cert, otlp_client_key, otlp_compression, otlp_timeout, otlp_queue_size, ipfix_collector, ipfix_observation_domain, api_socket, api_group, flow_table_size, flows_ring_size, tc_mode, hooks, socket_updates, follow_interfaces, state_dir, persist, pin_dir, dns_ports, dns_timeout, dns_names, dns_peer_names, dns_name_grace, log_level, containerd_socket, docker_socket, pod_app_label, node_name, services, peers, series
                    flowmeter.yaml:12:12: services[1].ports: "80-70" is not a port or port range (want e.g. 5432 or 8000-8100, 1 to 65535)
                    flowmeter.yaml:14:19: series.max_per_metric: must be at least 10, got 5
                    flowmeter.yaml:16:12: log_level: "loud" is not one of trace, debug, info, notice, warning, error, critical
                    """)
        }
    }

    // MARK: The example file

    static let examplePath = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("config/flowmeter.example.yaml").path

    @Test func exampleFileParses() throws {
        let text = try String(contentsOfFile: Self.examplePath, encoding: .utf8)
        let c = try FileConfig.parse(yaml: text, source: "flowmeter.example.yaml")
        #expect(c != FileConfig())
        #expect(c.interval == seconds(5))
        #expect(c.metricsListen == "0.0.0.0:9810")
        #expect(c.tcMode == "auto" && c.hooks == "auto" && c.logLevel == "info")
        #expect(c.followInterfaces == true && c.stateDir == "/run/flowmeter")
        #expect(c.services?.map(\.service) == ["checkout", "postgres", "shop-frontend"])
        #expect(c.services?[1].ports == PortRange(lower: 5432, upper: 5432))
        #expect(c.peers?.map(\.service) == ["kube-dns", "internal-http"])
        #expect(c.limits == .defaults)
    }

    /// Every key the parser knows is written out (not only in a comment) in the example.
    @Test func exampleFileHasEveryKey() throws {
        let text = try String(contentsOfFile: Self.examplePath, encoding: .utf8)
        let keys = Set(
            text.split(separator: "\n").compactMap { line -> String? in
                var l = line.drop(while: { $0 == " " })
                if l.hasPrefix("#") { return nil }
                if l.hasPrefix("- ") { l = l.dropFirst(2) }
                guard let colon = l.firstIndex(of: ":") else { return nil }
                return String(l[..<colon])
            })
        let all = FileConfig.topLevelKeys + FileConfig.seriesKeys + FileConfig.serviceKeys + FileConfig.peerKeys
        for key in all { #expect(keys.contains(key), "\(key) missing from the example") }
    }
}

@Suite struct LayeringTests {
    @Test func topWinsWhereSet() throws {
        let file = try FileConfig.parse(
            yaml: """
                interfaces: [eth0]
                interval: 10s
                log_level: info
                follow_interfaces: true
                services:
                  - name: a
                    ports: 80
                series:
                  max_per_metric: 100
                """, source: "f.yaml")
        let env = try FileConfig.environment([
            "FLOWMETER_INTERVAL": "1s", "FLOWMETER_FOLLOW_INTERFACES": "0",
            "FLOWMETER_MAX_SERIES_PER_METRIC": "50",
        ])
        let layered = file.overlaid(by: env)
        #expect(layered.interval == seconds(1))  // environment over file
        #expect(layered.followInterfaces == false)  // a false still wins
        #expect(layered.interfaces == ["eth0"])  // only the file says
        #expect(layered.logLevel == "info")
        #expect(layered.services == file.services)
        #expect(layered.maxSeriesPerMetric == 50)
        #expect(
            layered.limits
                == AggregationLimits(
                    maxSeriesPerMetric: 50, seriesExpiry: AggregationLimits.defaults.seriesExpiry,
                    peerAddresses: false))
        #expect(layered.tcMode == nil && layered.flowLog == nil)  // nobody says: the flag's default applies
    }

    @Test func listsAreReplacedWhole() {
        let low = FileConfig(
            interfaces: ["eth0", "eth1"], services: [ServiceRule(service: "a", process: "a")],
            peers: [PeerRule(service: "p", ports: PortRange(lower: 1, upper: 2))])
        let high = FileConfig(interfaces: [], services: [ServiceRule(service: "b", process: "b")])
        let layered = low.overlaid(by: high)
        #expect(layered.interfaces == [])
        #expect(layered.services == [ServiceRule(service: "b", process: "b")])
        #expect(layered.peers == low.peers)
    }

    @Test func overlayIdentities() {
        let c = FileConfig(
            interval: seconds(3), metricsListen: ":1", flowLog: "-", flowTableSize: 9, tcMode: "tcx",
            hooks: "off", followInterfaces: false, stateDir: "/s", logLevel: "error",
            maxSeriesPerMetric: 10, seriesExpiry: seconds(1), peerAddresses: true)
        #expect(c.overlaid(by: FileConfig()) == c)
        #expect(FileConfig().overlaid(by: c) == c)
        // flags > environment > file: applying the layers in order.
        let file = FileConfig(interval: seconds(30), stateDir: "/file")
        let env = FileConfig(interval: seconds(20))
        let flags = FileConfig(interval: seconds(10))
        let all = file.overlaid(by: env).overlaid(by: flags)
        #expect(all.interval == seconds(10))
        #expect(all.stateDir == "/file")
    }

    @Test func limitsDefaults() {
        #expect(FileConfig().limits == AggregationLimits.defaults)
        #expect(
            FileConfig(peerAddresses: true).limits
                == AggregationLimits(maxSeriesPerMetric: 2000, seriesExpiry: seconds(300), peerAddresses: true))
    }
}

@Suite struct EnvironmentTests {
    @Test func everyVariable() throws {
        let c = try FileConfig.environment([
            "FLOWMETER_INTERFACES": "eth*, veth*,,",
            "FLOWMETER_EXCLUDE_INTERFACES": "lo",
            "FLOWMETER_INTERVAL": "500ms",
            "FLOWMETER_METRICS_LISTEN": "127.0.0.1:9999",
            "FLOWMETER_FLOW_LOG": "-",
            "FLOWMETER_FLOW_TABLE_SIZE": "4096",
            "FLOWMETER_TC_MODE": "tcx",
            "FLOWMETER_HOOKS": "off",
            "FLOWMETER_FOLLOW_INTERFACES": "false",
            "FLOWMETER_STATE_DIR": "/tmp/fm",
            "FLOWMETER_LOG_LEVEL": "trace",
            "FLOWMETER_MAX_SERIES_PER_METRIC": "10",
            "FLOWMETER_SERIES_EXPIRY": "1h",
            "FLOWMETER_PEER_ADDRESSES": "1",
            "PATH": "/usr/bin", "HOME": "/root",
        ])
        #expect(
            c
                == FileConfig(
                    interfaces: ["eth*", "veth*"], excludeInterfaces: ["lo"],
                    interval: FlowDuration(nanoseconds: 500_000_000), metricsListen: "127.0.0.1:9999",
                    flowLog: "-", flowTableSize: 4096, tcMode: "tcx", hooks: "off", followInterfaces: false,
                    stateDir: "/tmp/fm", logLevel: "trace", maxSeriesPerMetric: 10,
                    seriesExpiry: seconds(3600), peerAddresses: true))
        #expect(FileConfig.environmentVariables.count == Setting.all.count)
    }

    @Test func exportSettings() throws {
        let c = try FileConfig.parse(
            yaml: """
                flow_log_max_size: 10M
                flow_log_keep: 3
                otlp_endpoint: http://127.0.0.1:4318/v1/metrics
                ipfix_collector: "[::1]:4739"
                ipfix_observation_domain: 7
                """, source: "f.yaml")
        #expect(c.flowLogMaxSize == 10 << 20 && c.flowLogKeep == 3 && c.otlpEndpoint == "http://127.0.0.1:4318/v1/metrics")
        #expect(c.ipfixCollector == "[::1]:4739" && c.ipfixObservationDomain == 7)
        let e = try FileConfig.environment(["FLOWMETER_FLOW_LOG_MAX_SIZE": "65536", "FLOWMETER_IPFIX_COLLECTOR": "127.0.0.1:2055"])
        #expect(e.flowLogMaxSize == 65536 && e.ipfixCollector == "127.0.0.1:2055")
        func problems(_ yaml: String) -> [String] {
            do { _ = try FileConfig.parse(yaml: yaml, source: "f.yaml"); return [] } catch { return error.problems.map(\.description) }
        }
        #expect(problems("flow_log_max_size: 12Q").first?.hasPrefix("f.yaml:1:20: flow_log_max_size:") == true)
        #expect(problems("flow_log_max_size: 100").first?.contains("at least 4096") == true)
        #expect(problems("flow_log_keep: 0").first?.contains("flow_log_keep: must be from 1 to 100") == true)
        #expect(problems("otlp_endpoint: collector:4318").first?.contains("the scheme must be http:// or https://") == true)
        #expect(problems("otlp_endpoint: https://collector:4317").isEmpty)
        #expect(problems("otlp_protocol: http/json").first?.contains("is not one of grpc, http/protobuf") == true)
        #expect(problems("otlp_compression: zstd").first?.contains("is not one of none, gzip") == true)
        #expect(problems("otlp_headers: [\"authorization Bearer x\"]").first?.contains("a header is key=value") == true)
        // A header's value never shows in an error (it may be a token).
        #expect(problems("otlp_headers: [\"bad name=s3cret\"]").allSatisfy { !$0.contains("s3cret") })
        let h = try FileConfig.parse(yaml: "otlp_headers: [\"Authorization=Bearer%20t\", \"x-tenant=a\"]", source: "f.yaml")
        #expect(h.otlpHeaders == ["authorization=Bearer t", "x-tenant=a"])
        #expect(problems("ipfix_collector: \":4739\"").first?.contains("needs a host") == true)
        #expect(problems("ipfix_observation_domain: -1").first?.contains("0 to 4294967295") == true)
    }

    @Test(arguments: [("true", true), ("TRUE", true), ("1", true), ("false", false), ("0", false), ("False", false)])
    func booleans(text: String, value: Bool) throws {
        #expect(try FileConfig.environment(["FLOWMETER_FOLLOW_INTERFACES": text]).followInterfaces == value)
        #expect(try FileConfig.environment(["FLOWMETER_PEER_ADDRESSES": text]).peerAddresses == value)
    }

    @Test func emptyAndNotOurs() throws {
        #expect(try FileConfig.environment([:]) == FileConfig())
        #expect(try FileConfig.environment(["FLOWMETER_INTERVAL": "", "FLOWMETER_LOG_LEVEL": "  "]) == FileConfig())
        var notOurs: [String: String] = [:]
        for name in FileConfig.environmentNotSettings { notOurs[name] = "anything" }
        #expect(notOurs.keys.contains("FLOWMETER_CONFIG"))
        #expect(notOurs.keys.contains("FLOWMETER_REQUIRE_PRIVILEGED"))
        #expect(notOurs.keys.contains("FLOWMETER_BPF_CLANG"))
        #expect(try FileConfig.environment(notOurs) == FileConfig())
    }

    @Test func errorsNameTheVariable() {
        let env = [
            "FLOWMETER_INTERVAL": "soon",
            "FLOWMETER_METRICS_LISTEN": "9810",
            "FLOWMETER_FLOW_TABLE_SIZE": "0",
            "FLOWMETER_TC_MODE": "fast",
            "FLOWMETER_HOOKS": "fexit",
            "FLOWMETER_FOLLOW_INTERFACES": "yes",
            "FLOWMETER_LOG_LEVEL": "loud",
            "FLOWMETER_MAX_SERIES_PER_METRIC": "9",
            "FLOWMETER_SERIES_EXPIRY": "0",
            "FLOWMETER_PEER_ADDRESSES": "maybe",
            "FLOWMETER_INTERVALL": "5s",
            "FLOWMETER_COLOUR": "blue",
            "NOT_FLOWMETER_X": "ignored",
        ]
        let all = FileConfig.environmentVariables.joined(separator: ", ")
        #expect(
            envProblems(env) == [
                "environment: FLOWMETER_COLOUR: unknown variable; settings: \(all)",
                "environment: FLOWMETER_FLOW_TABLE_SIZE: must be from 1 to 16777216, got 0",
                "environment: FLOWMETER_FOLLOW_INTERFACES: \"yes\" is not true, false, 1 or 0",
                "environment: FLOWMETER_HOOKS: \"fexit\" is not one of auto, fentry, kprobe, tracepoint, tracepoint-classic, off",
                "environment: FLOWMETER_INTERVAL: 'soon' is not a positive duration (examples: 500ms, 5s, 1m)",
                "environment: FLOWMETER_INTERVALL: unknown variable (did you mean FLOWMETER_INTERVAL?); settings: \(all)",
                "environment: FLOWMETER_LOG_LEVEL: \"loud\" is not one of trace, debug, info, notice, warning, error, critical",
                "environment: FLOWMETER_MAX_SERIES_PER_METRIC: must be at least 10, got 9",
                "environment: FLOWMETER_METRICS_LISTEN: '9810' is not HOST:PORT (examples: :9810, 127.0.0.1:9810)",
                "environment: FLOWMETER_PEER_ADDRESSES: \"maybe\" is not true, false, 1 or 0",
                "environment: FLOWMETER_SERIES_EXPIRY: '0' is not a positive duration (examples: 500ms, 5s, 1m)",
                "environment: FLOWMETER_TC_MODE: \"fast\" is not one of auto, tcx, clsact",
            ])
        #expect(
            envProblems(["FLOWMETER_FLOW_TABLE_SIZE": "64k"]) == ["environment: FLOWMETER_FLOW_TABLE_SIZE: \"64k\" is not a whole number"])
    }
}

@Suite struct AllowedValuesTests {
    /// The config's lists are the flags' own values.
    @Test func sameAsTheFlags() {
        #expect(FileConfig.tcModes == TCMode.allCases.map(\.rawValue))
        #expect(FileConfig.hookRequests == HookRequest.allCases.map(\.rawValue) + ["off"])
        #expect(FileConfig.socketUpdateRequests == SocketUpdatesRequest.allCases.map(\.rawValue))
        #expect(FileConfig.logLevels == Logger.Level.allCases.map(\.rawValue))
    }
}
