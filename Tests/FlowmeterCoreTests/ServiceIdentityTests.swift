import FlowmeterCore
import Testing

private let idA = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
private let idB = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
private let uid = "5f1c2a3b-4d5e-6f70-8192-a3b4c5d6e7f8"
private let uidU = "5f1c2a3b_4d5e_6f70_8192_a3b4c5d6e7f8"
private let staticUID = "8b5d8f5e0e3a4b1f0c5b8c7b1e2b3c4d"

private func pod(_ id: String?, uid u: String = uid) -> CgroupWorkload {
    CgroupWorkload(kind: .kubernetes, service: "pod:\(u)", containerID: id, podUID: u)
}

private func ip(_ s: String) -> IPAddress16 { IPAddress16(text: s)! }

@Suite struct ServiceIdentityTests {
    // MARK: systemd units

    @Test(
        arguments: [
            ("/system.slice/nginx.service", "nginx"),
            ("/system.slice/getty@tty1.service", "getty@tty1"),
            ("/system.slice/system-getty.slice/getty@tty1.service", "getty@tty1"),
            ("/system.slice/nginx.service/worker", "nginx"),
            ("/system.slice/nginx.service/a/b", "nginx"),
            ("/system.slice/containerd.service", "containerd"),
            ("/system.slice/docker.service", "docker"),
            ("/system.slice/crio.service", "crio"),
            ("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service", "foo"),
            ("/user.slice/user-1000.slice/user@1000.service", "user@1000"),
            ("/user.slice/user-1000.slice/user@1000.service/init.scope", "user@1000"),
            ("system.slice//nginx.service/", "nginx"),
        ] as [(String, String)])
    func systemdUnits(path: String, name: String) {
        #expect(CgroupWorkload.parse(path) == CgroupWorkload(kind: .systemd, service: name))
    }

    // MARK: plain containers

    @Test func docker() {
        let want = CgroupWorkload(kind: .docker, service: "docker:0123456789ab", containerID: idA)
        #expect(CgroupWorkload.parse("/system.slice/docker-\(idA).scope") == want)  // systemd driver, v2 and v1
        #expect(CgroupWorkload.parse("/docker/\(idA)") == want)  // cgroupfs driver, v1 and v2
        #expect(CgroupWorkload.parse("/docker/\(idA)/sub") == want)
        // rootless docker under the user manager
        #expect(CgroupWorkload.parse("/user.slice/user-1000.slice/user@1000.service/user.slice/docker-\(idA).scope") == want)
        // nested docker: the innermost container wins
        #expect(CgroupWorkload.parse("/docker/\(idB)/docker/\(idA)")?.containerID == idA)
    }

    @Test func containerd() {
        let want = CgroupWorkload(kind: .containerd, service: "containerd:0123456789ab", containerID: idA)
        #expect(CgroupWorkload.parse("/system.slice/cri-containerd-\(idA).scope") == want)
        #expect(CgroupWorkload.parse("/some.slice/deeper.slice/cri-containerd-\(idA).scope") == want)
        #expect(CgroupWorkload.parse("/system.slice/nerdctl-\(idA).scope") == want)
    }

    @Test func crio() {
        #expect(
            CgroupWorkload.parse("/machine.slice/crio-\(idA).scope")
                == CgroupWorkload(kind: .crio, service: "crio:0123456789ab", containerID: idA))
        #expect(
            CgroupWorkload.parse("/machine.slice/crio-conmon-\(idB).scope")
                == CgroupWorkload(kind: .crio, service: "crio-conmon:fedcba987654", containerID: idB))
        #expect(CgroupWorkload.parse("/machine.slice/crio-\(idA).scope/container")?.service == "crio:0123456789ab")
    }

    // MARK: Kubernetes, systemd driver

    @Test(arguments: ["burstable", "besteffort"])
    func kubepodsSystemdQoS(qos: String) {
        let slice = "/kubepods.slice/kubepods-\(qos).slice/kubepods-\(qos)-pod\(uidU).slice"
        #expect(CgroupWorkload.parse("\(slice)/cri-containerd-\(idA).scope") == pod(idA))
        #expect(CgroupWorkload.parse("\(slice)/crio-\(idA).scope") == pod(idA))
        #expect(CgroupWorkload.parse("\(slice)/docker-\(idA).scope") == pod(idA))
        #expect(CgroupWorkload.parse("\(slice)/crio-conmon-\(idB).scope") == pod(idB))
        #expect(CgroupWorkload.parse("\(slice)/crio-\(idA).scope/container") == pod(idA))
        #expect(CgroupWorkload.parse(slice) == pod(nil))
        #expect(CgroupWorkload.parse("\(slice)/not-a-container") == pod(nil))
    }

    @Test func kubepodsSystemdGuaranteed() {
        let slice = "/kubepods.slice/kubepods-pod\(uidU).slice"
        #expect(CgroupWorkload.parse("\(slice)/cri-containerd-\(idA).scope") == pod(idA))
        #expect(CgroupWorkload.parse("\(slice)/crio-\(idA).scope") == pod(idA))
        #expect(CgroupWorkload.parse(slice) == pod(nil))
        #expect(CgroupWorkload.parse(slice)?.service == "pod:5f1c2a3b-4d5e-6f70-8192-a3b4c5d6e7f8")
        #expect(CgroupWorkload.parse(slice)?.podUID == uid)
    }

    @Test func kubepodsNestedInContainer() {
        // kind-style node: kubelet running inside a docker container
        let path =
            "/system.slice/docker-\(idB).scope/kubelet.slice/kubelet-kubepods.slice/"
            + "kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod\(uidU).slice/cri-containerd-\(idA).scope"
        #expect(CgroupWorkload.parse(path) == pod(idA))
    }

    @Test func staticPodUID() {
        #expect(
            CgroupWorkload.parse(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(staticUID).slice/cri-containerd-\(idA).scope")
                == pod(idA, uid: staticUID))
        #expect(CgroupWorkload.parse("/kubepods/burstable/pod\(staticUID)/\(idA)") == pod(idA, uid: staticUID))
    }

    // MARK: Kubernetes, cgroupfs driver (same paths on v1 controllers and v2)

    @Test func kubepodsCgroupfs() {
        #expect(CgroupWorkload.parse("/kubepods/burstable/pod\(uid)/\(idA)") == pod(idA))
        #expect(CgroupWorkload.parse("/kubepods/besteffort/pod\(uid)/\(idA)") == pod(idA))
        #expect(CgroupWorkload.parse("/kubepods/pod\(uid)/\(idA)") == pod(idA))
        #expect(CgroupWorkload.parse("/kubepods/besteffort/pod\(uid)") == pod(nil))
        #expect(CgroupWorkload.parse("/kubepods/burstable/pod\(uid)") == pod(nil))
        #expect(CgroupWorkload.parse("/kubepods/pod\(uid)") == pod(nil))
        #expect(CgroupWorkload.parse("/kubepods/burstable/pod\(uid)/\(idA)/sub") == pod(idA))
        #expect(CgroupWorkload.parse("/kubepods/pod\(uid)/crio-\(idA).scope") == pod(idA))
    }

    // MARK: no workload

    @Test(arguments: [
        "", "/", "/init.scope", "/system.slice", "/user.slice",
        "/user.slice/user-1000.slice/session-3.scope",
        "/user.slice/user-1000.slice/user@1000.service/app.slice/app-firefox-1234.scope",
        "/system.slice/.service",
        // bad container ids
        "/system.slice/docker-\(idA.uppercased()).scope",
        "/system.slice/docker-\(idA.dropLast()).scope",
        "/system.slice/docker-\(idA)0.scope",
        "/system.slice/docker-\(idA.dropLast())g.scope",
        "/system.slice/docker-\(idA)",
        "/system.slice/cri-containerd-abc.scope",
        "/docker/\(idA.dropLast())",
        "/docker/\(idA.uppercased())",
        "/other/\(idA)",
        "/\(idA)",
        // bad pod uids and misplaced pod cgroups
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(uidU.dropLast()).slice",
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(uidU.uppercased()).slice",
        "/kubepods.slice/kubepods-burstable.slice/kubepods-guaranteed-pod\(uidU).slice",
        "/kubepods.slice/kubepods-burstable.slice/other-pod\(uidU).slice",
        "/kubepods/burstable/pod\(uidU)",
        "/kubepods/burstable/pod\(uid.dropLast())",
        "/kubepods/guaranteed/pod\(uid)",
        "/other/burstable/pod\(uid)",
        "/pod\(uid)",
        "/kubepods", "/kubepods.slice", "/kubepods.slice/kubepods-burstable.slice",
    ])
    func noWorkload(path: String) {
        #expect(CgroupWorkload.parse(path) == nil)
    }

    @Test func badIdFallsBackToSystemdUnit() {
        #expect(
            CgroupWorkload.parse("/system.slice/containerd.service/cri-containerd-abc.scope")
                == CgroupWorkload(kind: .systemd, service: "containerd"))
        #expect(
            CgroupWorkload.parse("/system.slice/containerd.service/\(idA)")
                == CgroupWorkload(kind: .systemd, service: "containerd"))
    }

    @Test func kindRawValues() {
        #expect(CgroupWorkload.Kind.kubernetes.rawValue == "kubernetes")
        #expect(CgroupWorkload.Kind.crio.rawValue == "crio")
    }

    // MARK: local service resolution

    @Test func fallbackOrder() {
        let r = ServiceResolver(rules: [], peers: [])
        let a = ip("10.0.0.1")
        #expect(r.localService(cgroupPath: "/system.slice/nginx.service", process: "nginx-worker", address: a, port: 80) == "nginx")
        #expect(r.localService(cgroupPath: "/user.slice/user-1000.slice/session-3.scope", process: "curl", address: a, port: 80) == "curl")
        #expect(r.localService(cgroupPath: nil, process: "curl", address: a, port: 80) == "curl")
        #expect(r.localService(cgroupPath: "/", process: nil, address: a, port: 80) == "unknown")
        #expect(r.localService(cgroupPath: nil, process: "", address: a, port: 80) == "unknown")
        #expect(r.localService(cgroupPath: nil, process: nil, address: a, port: 80) == "unknown")
        #expect(r.localService(cgroupPath: "/docker/\(idA)", process: "redis-server", address: a, port: 6379) == "docker:0123456789ab")
    }

    @Test func ruleBeatsCgroupAndFirstMatchWins() {
        let r = ServiceResolver(
            rules: [
                ServiceRule(service: "web", process: "nginx*"),
                ServiceRule(service: "second", process: "nginx"),
            ], peers: [])
        let a = ip("10.0.0.1")
        #expect(r.localService(cgroupPath: "/system.slice/frontend.service", process: "nginx", address: a, port: 80) == "web")
        #expect(r.localService(cgroupPath: "/system.slice/frontend.service", process: "apache", address: a, port: 80) == "frontend")
        let swapped = ServiceResolver(rules: r.rules.reversed(), peers: [])
        #expect(swapped.localService(cgroupPath: nil, process: "nginx", address: a, port: 80) == "second")
        #expect(swapped.localService(cgroupPath: nil, process: "nginx2", address: a, port: 80) == "web")
    }

    @Test func ruleWithNoConditionNeverMatches() {
        let r = ServiceResolver(rules: [ServiceRule(service: "everything")], peers: [])
        #expect(r.localService(cgroupPath: "/system.slice/a.service", process: "p", address: ip("10.0.0.1"), port: 1) == "a")
        #expect(r.localService(cgroupPath: nil, process: nil, address: ip("::1"), port: 1) == "unknown")
    }

    @Test func cgroupCondition() {
        let r = ServiceResolver(rules: [ServiceRule(service: "checkout", cgroup: "/system.slice/checkout*.service")], peers: [])
        let a = ip("10.0.0.1")
        #expect(r.localService(cgroupPath: "/system.slice/checkout-v2.service", process: "java", address: a, port: 1) == "checkout")
        #expect(r.localService(cgroupPath: "/system.slice/cart.service", process: "java", address: a, port: 1) == "cart")
        // nil input: the condition does not hold
        #expect(r.localService(cgroupPath: nil, process: "java", address: a, port: 1) == "java")
    }

    @Test func processCondition() {
        let r = ServiceResolver(rules: [ServiceRule(service: "db", process: "postgres")], peers: [])
        let a = ip("10.0.0.1")
        #expect(r.localService(cgroupPath: nil, process: "postgres", address: a, port: 5432) == "db")
        #expect(r.localService(cgroupPath: nil, process: "postgres:", address: a, port: 5432) == "postgres:")
        #expect(r.localService(cgroupPath: "/system.slice/pg.service", process: nil, address: a, port: 5432) == "pg")
    }

    @Test func portCondition() throws {
        let r = ServiceResolver(rules: [ServiceRule(service: "app", ports: try PortRange(parsing: "8000-8100"))], peers: [])
        let a = ip("10.0.0.1")
        #expect(r.localService(cgroupPath: nil, process: "x", address: a, port: 8000) == "app")
        #expect(r.localService(cgroupPath: nil, process: "x", address: a, port: 8050) == "app")
        #expect(r.localService(cgroupPath: nil, process: "x", address: a, port: 8100) == "app")
        #expect(r.localService(cgroupPath: nil, process: "x", address: a, port: 7999) == "x")
        #expect(r.localService(cgroupPath: nil, process: "x", address: a, port: 8101) == "x")
        let single = ServiceResolver(rules: [ServiceRule(service: "pg", ports: try PortRange(parsing: "5432"))], peers: [])
        #expect(single.localService(cgroupPath: nil, process: "x", address: a, port: 5432) == "pg")
        #expect(single.localService(cgroupPath: nil, process: "x", address: a, port: 5433) == "x")
    }

    @Test func cidrCondition() throws {
        let r = ServiceResolver(
            rules: [
                ServiceRule(service: "v4", cidr: try CIDR(parsing: "10.1.0.0/16")),
                ServiceRule(service: "v6", cidr: try CIDR(parsing: "fd00::/8")),
            ], peers: [])
        #expect(r.localService(cgroupPath: nil, process: "x", address: ip("10.1.255.3"), port: 1) == "v4")
        #expect(r.localService(cgroupPath: nil, process: "x", address: ip("10.2.0.1"), port: 1) == "x")
        #expect(r.localService(cgroupPath: nil, process: "x", address: ip("fd12::1"), port: 1) == "v6")
        #expect(r.localService(cgroupPath: nil, process: "x", address: ip("fe80::1"), port: 1) == "x")
    }

    @Test func conditionsAreAnded() throws {
        let r = ServiceResolver(
            rules: [
                ServiceRule(
                    service: "api", cgroup: "/system.slice/*", process: "java",
                    ports: try PortRange(parsing: "8080"), cidr: try CIDR(parsing: "10.0.0.0/8"))
            ], peers: [])
        let path = "/system.slice/shop.service"
        #expect(r.localService(cgroupPath: path, process: "java", address: ip("10.9.9.9"), port: 8080) == "api")
        #expect(r.localService(cgroupPath: "/user.slice/x.service", process: "java", address: ip("10.9.9.9"), port: 8080) == "x")
        #expect(r.localService(cgroupPath: path, process: "python", address: ip("10.9.9.9"), port: 8080) == "shop")
        #expect(r.localService(cgroupPath: path, process: "java", address: ip("10.9.9.9"), port: 8081) == "shop")
        #expect(r.localService(cgroupPath: path, process: "java", address: ip("11.0.0.1"), port: 8080) == "shop")
        #expect(r.localService(cgroupPath: nil, process: "java", address: ip("10.9.9.9"), port: 8080) == "java")
        #expect(r.localService(cgroupPath: path, process: nil, address: ip("10.9.9.9"), port: 8080) == "shop")
    }

    // MARK: CIDR

    @Test func cidrContains() throws {
        let v4 = try CIDR(parsing: "192.168.0.0/24")
        #expect(v4.contains(ip("192.168.0.77")))
        #expect(!v4.contains(ip("192.168.1.77")))
        #expect(!v4.contains(ip("::ffff:c0a9:4d")))  // 192.169.0.77, v4-mapped text
        // a v4 prefix never matches a real IPv6 address
        #expect(!v4.contains(ip("c0a8::4d")))
        #expect(!(try CIDR(parsing: "0.0.0.0/0")).contains(ip("2001:db8::1")))
        #expect(try CIDR(parsing: "0.0.0.0/0").contains(ip("8.8.8.8")))
        #expect(try CIDR(parsing: "::/0").contains(ip("2001:db8::1")))
        #expect(try CIDR(parsing: "::/0").contains(ip("8.8.8.8")))
        let host = try CIDR(parsing: "10.0.0.5")
        #expect(host.contains(ip("10.0.0.5")))
        #expect(!host.contains(ip("10.0.0.4")))
        let v6 = try CIDR(parsing: "2001:db8:abcd::/48")
        #expect(v6.contains(ip("2001:db8:abcd:ffff::1")))
        #expect(!v6.contains(ip("2001:db8:abce::1")))
        let v6host = try CIDR(parsing: "::1")
        #expect(v6host.contains(ip("::1")))
        #expect(!v6host.contains(ip("::2")))
        #expect(try CIDR(parsing: "10.0.0.0/8").bits == 104)
        #expect(try CIDR(parsing: "fd00::/8").bits == 8)
        #expect(try CIDR(parsing: "10.1.2.3/8").network == ip("10.0.0.0"))
    }

    @Test(arguments: ["10.0.0.0/33", "300.1.1.1", "abc", "", "10.0.0.0/", "10.0.0.0/-1", "fd00::/129", "10.0.0.0/8/8"])
    func badCIDRs(text: String) {
        #expect(throws: ValueError.self) { try CIDR(parsing: text) }
    }

    // MARK: PortRange

    @Test func portRanges() throws {
        #expect(try PortRange(parsing: "80") == PortRange(lower: 80, upper: 80))
        #expect(try PortRange(parsing: "8000-8100") == PortRange(lower: 8000, upper: 8100))
        #expect(try PortRange(parsing: "1-65535") == PortRange(lower: 1, upper: 65535))
        #expect(try PortRange(parsing: "8000-8100").description == "8000-8100")
        #expect(try PortRange(parsing: "443").description == "443")
    }

    @Test(arguments: ["80-70", "0", "abc", "70000", "", "-", "1-2-3", "0-10", "80-", "-80", "1-70000"])
    func badPortRanges(text: String) {
        #expect(throws: ValueError.self) { try PortRange(parsing: text) }
    }

    // MARK: peers

    @Test func peerRules() throws {
        let r = ServiceResolver(
            rules: [],
            peers: [
                PeerRule(service: "postgres", cidr: try CIDR(parsing: "10.0.5.0/24"), ports: try PortRange(parsing: "5432")),
                PeerRule(service: "internal", cidr: try CIDR(parsing: "10.0.0.0/8")),
                PeerRule(service: "dns", ports: try PortRange(parsing: "53")),
                PeerRule(service: "v6net", cidr: try CIDR(parsing: "2001:db8::/32")),
                PeerRule(service: "never"),
            ])
        #expect(r.peerService(address: ip("10.0.5.9"), port: 5432) == "postgres")
        #expect(r.peerService(address: ip("10.0.5.9"), port: 5433) == "internal")
        #expect(r.peerService(address: ip("10.200.0.1"), port: 53) == "internal")
        #expect(r.peerService(address: ip("1.1.1.1"), port: 53) == "dns")
        #expect(r.peerService(address: ip("2001:db8::53"), port: 443) == "v6net")
        #expect(r.peerService(address: ip("2001:db9::53"), port: 443) == nil)
        #expect(r.peerService(address: ip("1.1.1.1"), port: 443) == nil)
        #expect(ServiceResolver(rules: [], peers: [PeerRule(service: "never")]).peerService(address: ip("1.1.1.1"), port: 1) == nil)
        #expect(ServiceResolver(rules: [], peers: []).peerService(address: ip("1.1.1.1"), port: 1) == nil)
    }
}
