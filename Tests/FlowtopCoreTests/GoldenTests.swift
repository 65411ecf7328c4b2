import Testing

@testable import FlowtopCore

/// Exact screens of each view at 80x24 and 200x50 (the fixture's five
/// snapshots, default state). Each line of a golden ends in "|", the right
/// edge of the terminal, so trailing spaces are visible and survive editors.
extension FlowtopCoreTests {
    static func framed(_ s: String) -> String {
        s.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasSuffix("|") ? String($0.dropLast()) : String($0) }.joined(separator: "\n")
    }

    static func golden(_ view: View, _ width: Int, _ height: Int) -> String {
        let m = render(Fixture.state(view), Fixture.history, width: width, height: height)
        #expect(m.lines.count == height && m.lines.allSatisfy { Text.width($0) == width })
        return m.lines.joined(separator: "\n")
    }

    @Test func goldenServices80x24() {
        #expect(
            Self.golden(.services, 80, 24)
                == Self.framed(
                    """
                    flowtop  web-1  kernel 6.18.0-amd64  hooks: tc=tcx sock=fentry  up 1h02m        |
                    services  in 2.5 MB/s  out 1.3 MB/s  flows 7  lost 3  window 2s  B/s            |
                    SERVICE          PEER       PROTO       TX/s▼       RX/s  CONNS  FAILED  RTT p99|
                    checkout         postgres   tcp    400.0 KB/s   1.2 MB/s     12       0   3.10ms|
                    checkout         frontend   tcp    250.0 KB/s  90.0 KB/s     40       2   47.5ms|
                    payments-api     unknown    tcp      5.0 KB/s   3.0 KB/s      1       9    1.25s|
                    sshd             unknown    tcp      3.0 KB/s   1.0 KB/s      1       0        -|
                    coredns          unknown    udp       800 B/s   1.2 KB/s      0       0        -|
                    pod:3f2a9c1e-7b… checkout   tcp         0 B/s      0 B/s      3       0    999µs|
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                    Tab view  w window  b bits  / filter  ? help  q quit                            |
                    """))
    }

    @Test func goldenServices200x50() {
        #expect(
            Self.golden(.services, 200, 50)
                == Self.framed(
                    """
                    flowtop  web-1  kernel 6.18.0-amd64  hooks: tc=tcx sock=fentry  up 1h02m                                                                                                                                |
                    services  in 2.5 MB/s  out 1.3 MB/s  flows 7  lost 3  window 2s  B/s                                                                                                                                    |
                    SERVICE                                  PEER       PROTO       TX/s▼       RX/s  CONNS  FAILED  RETRANS  RESETS  RTT p50  RTT p99  DROPS TREND                                                         |
                    checkout                                 postgres   tcp    400.0 KB/s   1.2 MB/s     12       0        4       0    420µs   3.10ms      7                           ████                                |
                    checkout                                 frontend   tcp    250.0 KB/s  90.0 KB/s     40       2        0       1   1.20ms   47.5ms      0                           ▆▆▄█                                |
                    payments-api                             unknown    tcp      5.0 KB/s   3.0 KB/s      1       9        0       4   85.0ms    1.25s      0                           ████                                |
                    sshd                                     unknown    tcp      3.0 KB/s   1.0 KB/s      1       0        0       0        -        -      0                           ▁▁██                                |
                    coredns                                  unknown    udp       800 B/s   1.2 KB/s      0       0        0       0        -        -      0                           ████                                |
                    pod:3f2a9c1e-7b4d-4e0f-9a1b-2c3d4e5f6a7b checkout   tcp         0 B/s      0 B/s      3       0        0       0     87µs    999µs      0                           ▁▁▁▁                                |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                    Tab view  w window  b bits  / filter  ? help  q quit                                                                                                                                                    |
                    """))
    }

    @Test func goldenFlows80x24() {
        #expect(
            Self.golden(.flows, 80, 24)
                == Self.framed(
                    """
                    flowtop  web-1  kernel 6.18.0-amd64  hooks: tc=tcx sock=fentry  up 1h02m        |
                    flows  in 2.5 MB/s  out 1.3 MB/s  flows 7  lost 3  window 2s  B/s               |
                    FLOW                                 PROTO  SERVICE     DIR       RATE▼    TOTAL|
                    10.0.1.20:5432 → 10.0.0.5:40001      tcp    checkout    rx   620.0 KB/s   3.1 MB|
                    10.0.2.7:51515 → 10.0.0.5:8080       tcp    checkout    rx   260.0 KB/s   1.3 MB|
                    10.0.0.5:40002 → 10.0.1.20:5432      tcp    checkout    tx   250.0 KB/s   1.3 MB|
                    10.0.0.5:40001 → 10.0.1.20:5432      tcp    checkout    tx   210.0 KB/s   1.1 MB|
                    [2001:db8::5]:443 → [2001:db8:ffff:… tcp    payments-a… tx     1.5 KB/s   7.5 KB|
                    10.0.0.1:53000 → 10.0.0.5:53         udp    coredns     rx     1.3 KB/s   6.5 KB|
                    192.0.2.1:0 → 10.0.0.5:0             icmp   -           rx       84 B/s    252 B|
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                    Tab view  w window  b bits  / filter  ? help  q quit                            |
                    """))
    }

    @Test func goldenFlows200x50() {
        #expect(
            Self.golden(.flows, 200, 50)
                == Self.framed(
                    """
                    flowtop  web-1  kernel 6.18.0-amd64  hooks: tc=tcx sock=fentry  up 1h02m                                                                                                                                |
                    flows  in 2.5 MB/s  out 1.3 MB/s  flows 7  lost 3  window 2s  B/s                                                                                                                                       |
                    FLOW                                            IF   PROTO  SERVICE      DIR       RATE▼    TOTAL TREND                                                                                                 |
                    10.0.1.20:5432 → 10.0.0.5:40001                 eth0 tcp    checkout     rx   620.0 KB/s   3.1 MB                          █████                                                                        |
                    10.0.2.7:51515 → 10.0.0.5:8080                  eth0 tcp    checkout     rx   260.0 KB/s   1.3 MB                          █████                                                                        |
                    10.0.0.5:40002 → 10.0.1.20:5432                 eth0 tcp    checkout     tx   250.0 KB/s   1.3 MB                          ▃▆▅█▅                                                                        |
                    10.0.0.5:40001 → 10.0.1.20:5432                 eth0 tcp    checkout     tx   210.0 KB/s   1.1 MB                          █████                                                                        |
                    [2001:db8::5]:443 → [2001:db8:ffff::1234]:60123 eth0 tcp    payments-api tx     1.5 KB/s   7.5 KB                          █████                                                                        |
                    10.0.0.1:53000 → 10.0.0.5:53                    eth0 udp    coredns      rx     1.3 KB/s   6.5 KB                          █████                                                                        |
                    192.0.2.1:0 → 10.0.0.5:0                        eth0 icmp   -            rx       84 B/s    252 B                          █▁█▁█                                                                        |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                    Tab view  w window  b bits  / filter  ? help  q quit                                                                                                                                                    |
                    """))
    }

    @Test func goldenProcesses80x24() {
        #expect(
            Self.golden(.processes, 80, 24)
                == Self.framed(
                    """
                    flowtop  web-1  kernel 6.18.0-amd64  hooks: tc=tcx sock=fentry  up 1h02m        |
                    processes  in 2.5 MB/s  out 1.3 MB/s  flows 7  lost 3  window 2s  B/s           |
                        PID PROCESS       CONNS      TX/s▼       RX/s    TOTAL                      |
                       2101 checkout          3 490.0 KB/s   1.5 MB/s  16.9 MB                      |
                       3300 payments-api      2   5.0 KB/s   3.0 KB/s  71.0 KB                      |
                        977 sshd              1   3.0 KB/s   1.0 KB/s   8.0 KB                      |
                        812 coredns           1    800 B/s   1.2 KB/s  17.0 KB                      |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                    Tab view  w window  b bits  / filter  ? help  q quit                            |
                    """))
    }

    @Test func goldenProcesses200x50() {
        #expect(
            Self.golden(.processes, 200, 50)
                == Self.framed(
                    """
                    flowtop  web-1  kernel 6.18.0-amd64  hooks: tc=tcx sock=fentry  up 1h02m                                                                                                                                |
                    processes  in 2.5 MB/s  out 1.3 MB/s  flows 7  lost 3  window 2s  B/s                                                                                                                                   |
                        PID PROCESS       CONNS      TX/s▼       RX/s    TOTAL                                                                                                                                              |
                       2101 checkout          3 490.0 KB/s   1.5 MB/s  16.9 MB                                                                                                                                              |
                       3300 payments-api      2   5.0 KB/s   3.0 KB/s  71.0 KB                                                                                                                                              |
                        977 sshd              1   3.0 KB/s   1.0 KB/s   8.0 KB                                                                                                                                              |
                        812 coredns           1    800 B/s   1.2 KB/s  17.0 KB                                                                                                                                              |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                    Tab view  w window  b bits  / filter  ? help  q quit                                                                                                                                                    |
                    """))
    }

    @Test func goldenInterfaces80x24() {
        #expect(
            Self.golden(.interfaces, 80, 24)
                == Self.framed(
                    """
                    flowtop  web-1  kernel 6.18.0-amd64  hooks: tc=tcx sock=fentry  up 1h02m        |
                    interfaces  in 2.5 MB/s  out 1.3 MB/s  flows 7  lost 3  window 2s  B/s          |
                    NAME             TX/s▼       RX/s  TX pkt/s  RX pkt/s    TOTAL  DROPS TREND     |
                    eth0          1.3 MB/s   2.5 MB/s      1.0K      2.5K  75.0 MB     12       ▅▇▄█|
                    lo           12.0 KB/s  12.0 KB/s        40        40   1.1 MB      0       ████|
                    veth1a2b3c…      0 B/s      0 B/s         0         0      0 B      0       ▁▁▁▁|
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                                                                                                    |
                    Tab view  w window  b bits  / filter  ? help  q quit                            |
                    """))
    }

    @Test func goldenInterfaces200x50() {
        #expect(
            Self.golden(.interfaces, 200, 50)
                == Self.framed(
                    """
                    flowtop  web-1  kernel 6.18.0-amd64  hooks: tc=tcx sock=fentry  up 1h02m                                                                                                                                |
                    interfaces  in 2.5 MB/s  out 1.3 MB/s  flows 7  lost 3  window 2s  B/s                                                                                                                                  |
                    NAME              TX/s▼       RX/s  TX pkt/s  RX pkt/s    TOTAL  DROPS TREND                                                                                                                            |
                    eth0           1.3 MB/s   2.5 MB/s      1.0K      2.5K  75.0 MB     12                           ▅▇▄█                                                                                                   |
                    lo            12.0 KB/s  12.0 KB/s        40        40   1.1 MB      0                           ████                                                                                                   |
                    veth1a2b3c4d      0 B/s      0 B/s         0         0      0 B      0                           ▁▁▁▁                                                                                                   |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                                                                                                                                                                                                                            |
                    Tab view  w window  b bits  / filter  ? help  q quit                                                                                                                                                    |
                    """))
    }

    // MARK: With the DNS programs (Fixture.dnsHistory)

    static func dnsGolden(_ width: Int, _ height: Int) -> String {
        let h = Fixture.dnsHistory
        let m = render(Fixture.state(.services, history: h), h, width: width, height: height)
        #expect(m.lines.count == height && m.lines.allSatisfy { Text.width($0) == width })
        return m.lines.joined(separator: "\n")
    }

    @Test func goldenServicesWithDNS80x12() {
        #expect(
            Self.dnsGolden(80, 12)
                == Self.framed(
                    """
                    flowtop  web-1  kernel 6.18.0-amd64  hooks: tc=tcx sock=fentry  up 1h02m        |
                    services  in 2.5 MB/s  out 1.3 MB/s  flows 7  lost 3  window 2s  B/s            |
                    SERVICE         PEER       PROTO       TX/s▼       RX/s  CONNS  RTT p99  DNS ERR|
                    checkout        postgres   tcp    400.0 KB/s   1.2 MB/s     12   3.10ms        -|
                    checkout        frontend   tcp    250.0 KB/s  90.0 KB/s     40   47.5ms        -|
                    payments-api    unknown    tcp      5.0 KB/s   3.0 KB/s      1    1.25s        -|
                    sshd            unknown    tcp      3.0 KB/s   1.0 KB/s      1        -        -|
                    coredns         unknown    udp       800 B/s   1.2 KB/s      0        -        -|
                    checkout        coredns    udp       800 B/s   1.6 KB/s      0        -      10%|
                    pod:3f2a9c1e-7… checkout   tcp         0 B/s      0 B/s      3    999µs        -|
                                                                                                    |
                    Tab view  w window  b bits  / filter  ? help  q quit                            |
                    """))
    }

    @Test func goldenServicesWithDNS200x12() {
        #expect(
            Self.dnsGolden(200, 12)
                == Self.framed(
                    """
                    flowtop  web-1  kernel 6.18.0-amd64  hooks: tc=tcx sock=fentry  up 1h02m                                                                                                                                |
                    services  in 2.5 MB/s  out 1.3 MB/s  flows 7  lost 3  window 2s  B/s                                                                                                                                    |
                    SERVICE                                  PEER       PROTO       TX/s▼       RX/s  CONNS  FAILED  RETRANS  RESETS  RTT p50  RTT p99  DROPS  DNS/s  DNS ERR  DNS p50 TREND                                |
                    checkout                                 postgres   tcp    400.0 KB/s   1.2 MB/s     12       0        4       0    420µs   3.10ms      7      0        -        -                           ████       |
                    checkout                                 frontend   tcp    250.0 KB/s  90.0 KB/s     40       2        0       1   1.20ms   47.5ms      0      0        -        -                           ▆▆▄█       |
                    payments-api                             unknown    tcp      5.0 KB/s   3.0 KB/s      1       9        0       4   85.0ms    1.25s      0      0        -    2.00s                           ████       |
                    sshd                                     unknown    tcp      3.0 KB/s   1.0 KB/s      1       0        0       0        -        -      0      0        -        -                           ▁▁██       |
                    coredns                                  unknown    udp       800 B/s   1.2 KB/s      0       0        0       0        -        -      0      0        -        -                           ████       |
                    checkout                                 coredns    udp       800 B/s   1.6 KB/s      0       0        0       0        -        -      0     20      10%   1.25ms                           ████       |
                    pod:3f2a9c1e-7b4d-4e0f-9a1b-2c3d4e5f6a7b checkout   tcp         0 B/s      0 B/s      3       0        0       0     87µs    999µs      0      0        -        -                           ▁▁▁▁       |
                                                                                                                                                                                                                            |
                    Tab view  w window  b bits  / filter  ? help  q quit                                                                                                                                                    |
                    """))
    }
}
