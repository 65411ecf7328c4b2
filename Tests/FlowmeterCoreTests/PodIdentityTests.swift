import FlowmeterCore
import Testing

private func derive(_ pod: String, _ labels: [String: String], app: Bool = false) -> Workload {
    Workload.derive(pod: pod, labels: labels, appNameLabel: app)
}

@Suite struct PodIdentityTests {
    // MARK: every workload kind

    @Test func deployment() {
        #expect(
            derive("checkout-7c9d5b8f6d-x2x7q", ["pod-template-hash": "7c9d5b8f6d"])
                == Workload(name: "checkout", kind: .deployment))
        // A deployment name with dashes keeps them.
        #expect(
            derive("cart-api-v2-5d4f8b9c7-bz9kq", ["pod-template-hash": "5d4f8b9c7"])
                == Workload(name: "cart-api-v2", kind: .deployment))
    }

    @Test func statefulSet() {
        let labels = ["controller-revision-hash": "ledger-6b8d9f", "statefulset.kubernetes.io/pod-name": "ledger-0"]
        #expect(derive("ledger-0", labels) == Workload(name: "ledger", kind: .statefulSet))
        let twelve = ["controller-revision-hash": "pg-1", "statefulset.kubernetes.io/pod-name": "pg-main-12"]
        #expect(derive("pg-main-12", twelve) == Workload(name: "pg-main", kind: .statefulSet))
    }

    @Test func daemonSet() {
        #expect(
            derive("node-exporter-8k2xz", ["controller-revision-hash": "6d9f7c8b5"])
                == Workload(name: "node-exporter", kind: .daemonSet))
    }

    @Test func jobAndCronJob() {
        #expect(derive("migrate-7xq2p", ["job-name": "migrate"]) == Workload(name: "migrate", kind: .job))
        #expect(
            derive("backup-28934560-q8n4z", ["batch.kubernetes.io/job-name": "backup-28934560", "job-name": "backup-28934560"])
                == Workload(name: "backup", kind: .cronJob))
    }

    @Test func appNameLabelOnlyWhenConfigured() {
        let labels = ["pod-template-hash": "7c9d5b8f6d", "app.kubernetes.io/name": "shop-checkout"]
        #expect(derive("checkout-7c9d5b8f6d-x2x7q", labels, app: true) == Workload(name: "shop-checkout", kind: .application))
        #expect(derive("checkout-7c9d5b8f6d-x2x7q", labels, app: false) == Workload(name: "checkout", kind: .deployment))
    }

    @Test func barePod() {
        #expect(derive("debug", [:]) == Workload(name: "debug", kind: .pod))
    }

    // MARK: names that only look like a workload's

    @Test(
        arguments: [
            // A Deployment's shape without its label.
            ("checkout-7c9d5b8f6d-x2x7q", [String: String]()),
            // The label, but the name does not carry that hash.
            ("checkout-7c9d5b8f6d-x2x7q", ["pod-template-hash": "aaaaaaaaaa"]),
            // The hash, but the suffix has a vowel the API server never generates.
            ("checkout-7c9d5b8f6d-abcde", ["pod-template-hash": "7c9d5b8f6d"]),
            // A StatefulSet's shape without its labels.
            ("ledger-0", [:]),
            // The StatefulSet label names another pod.
            ("ledger-0", ["controller-revision-hash": "x", "statefulset.kubernetes.io/pod-name": "ledger-1"]),
            // Not an ordinal.
            ("ledger-01", ["controller-revision-hash": "x", "statefulset.kubernetes.io/pod-name": "ledger-01"]),
            // A DaemonSet label on a name with no generated suffix.
            ("agent", ["controller-revision-hash": "x"]),
            ("agent-main", ["controller-revision-hash": "x"]),
            // A job label naming another job.
            ("report-7xq2p", ["job-name": "migrate"]),
        ])
    func lookalikesAreNamedByThemselves(pod: String, labels: [String: String]) {
        #expect(derive(pod, labels) == Workload(name: pod, kind: .pod))
    }

    @Test func shortNumericJobSuffixIsNotACronJob() {
        // A CronJob's job carries the schedule minute (8+ digits); "v2-1" is just a job.
        #expect(derive("load-v2-1-4xq2p", ["job-name": "load-v2-1"]) == Workload(name: "load-v2-1", kind: .job))
    }

    // MARK: metadata from labels

    @Test func metadataFromContainerAndSandboxLabels() throws {
        let container = [
            "io.kubernetes.pod.name": "ledger-0", "io.kubernetes.pod.namespace": "shop",
            "io.kubernetes.pod.uid": "11111111-2222-3333-4444-555555555555",
            "io.kubernetes.container.name": "ledger", "io.cri-containerd.kind": "container",
        ]
        let sandbox = [
            "io.kubernetes.pod.name": "ledger-0", "io.kubernetes.pod.namespace": "shop",
            "io.kubernetes.pod.uid": "11111111-2222-3333-4444-555555555555", "io.cri-containerd.kind": "sandbox",
            "controller-revision-hash": "ledger-6b8d9f", "statefulset.kubernetes.io/pod-name": "ledger-0", "app": "ledger",
        ]
        let m = try #require(PodMetadata(container: container, sandbox: sandbox))
        #expect(m.namespace == "shop" && m.pod == "ledger-0" && m.container == "ledger")
        #expect(
            m.labels == ["controller-revision-hash": "ledger-6b8d9f", "statefulset.kubernetes.io/pod-name": "ledger-0", "app": "ledger"])
        #expect(PodIdentity(metadata: m, appNameLabel: false).service == "shop/ledger")
        // The sandbox alone has no container name.
        #expect(PodMetadata(container: sandbox, sandbox: sandbox)?.container == nil)
        // A container without the kubelet's labels is no pod's.
        #expect(PodMetadata(container: ["io.kubernetes.pod.name": "x"], sandbox: [:]) == nil)
    }

    @Test func podmanCgroupsNameTheirPodsContainer() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        let uid = "5f1c2a3b-4d5e-6f70-8192-a3b4c5d6e7f8"
        for path in ["/kubepods/besteffort/pod\(uid)/libpod-\(id)", "/kubepods/pod\(uid)/libpod-\(id).scope"] {
            let w = CgroupWorkload.parse(path)
            #expect(w?.kind == .kubernetes && w?.containerID == id && w?.podUID == uid, "\(path)")
        }
        #expect(CgroupWorkload.parse("/machine.slice/libpod-\(id).scope")?.service == "podman:0123456789ab")
        #expect(CgroupWorkload.parse("/libpod_parent/libpod-\(id)")?.service == "podman:0123456789ab")
        #expect(CgroupWorkload.parse("/libpod_parent/libpod-xyz") == nil)
    }

    // MARK: rules

    @Test func rulesMatchPodConditions() throws {
        let m = PodMetadata(
            namespace: "shop", pod: "checkout-7c9d5b8f6d-x2x7q", podUID: "u", container: "web",
            labels: ["pod-template-hash": "7c9d5b8f6d", "tier": "front"])
        let id = PodIdentity(metadata: m, appNameLabel: false)
        let any = IPAddress16.v4(10, 0, 0, 1)
        func name(_ rules: [ServiceRule], pod: PodIdentity? = id) -> String {
            ServiceResolver(rules: rules, peers: []).localService(
                cgroupPath: "/kubepods/besteffort/pod5f1c2a3b-4d5e-6f70-8192-a3b4c5d6e7f8", process: "web",
                address: any, port: 80, pod: pod)
        }
        #expect(name([]) == "shop/checkout")
        #expect(name([ServiceRule(service: "front", namespace: "shop", podLabels: ["tier": "front"])]) == "front")
        #expect(name([ServiceRule(service: "x", namespace: "shop", podLabels: ["tier": "back"])]) == "shop/checkout")
        #expect(name([ServiceRule(service: "x", workload: "check*", container: "web")]) == "x")
        #expect(name([ServiceRule(service: "x", workload: "check*", container: "sidecar")]) == "shop/checkout")
        #expect(name([ServiceRule(service: "x", namespace: "kube-*")]) == "shop/checkout")
        // No pod metadata yet: pod conditions do not hold, and the cgroup names the pod.
        #expect(
            name([ServiceRule(service: "x", namespace: "*")], pod: nil) == "pod:5f1c2a3b-4d5e-6f70-8192-a3b4c5d6e7f8")
        // Pod conditions next to others: all must hold.
        #expect(name([ServiceRule(service: "x", process: "web", ports: PortRange(lower: 80, upper: 80), namespace: "shop")]) == "x")
        #expect(name([ServiceRule(service: "x", process: "db", namespace: "shop")]) == "shop/checkout")
    }
}
