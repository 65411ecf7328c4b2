import FlowmeterCore
import Foundation
import Logging
import Synchronization
import Testing

@testable import FlowmeterRuntime

/// A runtime whose answers the test sets: the directory's caching, retries
/// and counts are pure logic (the real runtime is in Tests/e2e/test_pods.py).
private final class ScriptedSource: PodMetadataSource {
    let name = "scripted"
    let answer = Mutex<PodLookupResult>(.unavailable("down"))
    let asked = Mutex(0)
    func lookup(containerID: String, podUID: String) async -> PodLookupResult {
        asked.withLock { $0 += 1 }
        return answer.withLock { $0 }
    }
}

private let cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
private let uid = "5f1c2a3b-4d5e-6f70-8192-a3b4c5d6e7f8"
private let path = "/kubepods/besteffort/pod\(uid)/\(cid)"
private let ledger = PodMetadata(
    namespace: "shop", pod: "ledger-0", podUID: uid, container: "ledger",
    labels: ["controller-revision-hash": "x", "statefulset.kubernetes.io/pod-name": "ledger-0"])

@Suite struct PodDirectoryTests {
    @Test func pendingThenFailedThenKnown() async {
        let source = ScriptedSource()
        let clock = Mutex<UInt64>(1_000)
        let dir = PodDirectory(
            sources: [source], appNameLabel: false, retryNanos: 500, logger: Logger(label: "test"),
            now: { clock.withLock { $0 } })
        // Not a pod's cgroup: never asked.
        #expect(dir.identity(cgroupPath: "/system.slice/nginx.service") == nil)
        // First ask: nil at once, and one lookup queued (not two).
        #expect(dir.identity(cgroupPath: path) == nil)
        #expect(dir.identity(cgroupPath: path) == nil)
        dir.finish()
        await dir.run()
        #expect(source.asked.withLock { $0 } == 1)
        #expect(dir.generation == 0)
        // Failed: not asked again before the retry time.
        #expect(dir.identity(cgroupPath: path) == nil)
        #expect(dir.lookupCounts.first { $0.outcome == .unavailable }?.count == 1)

        // The runtime comes back; after the retry time the next ask queues it.
        source.answer.withLock { $0 = .found(ledger) }
        clock.withLock { $0 += 600 }
        let again = PodDirectory(
            sources: [source], appNameLabel: false, retryNanos: 500, logger: Logger(label: "test"),
            now: { clock.withLock { $0 } })
        #expect(again.identity(cgroupPath: path) == nil)
        again.finish()
        await again.run()
        #expect(again.generation == 1)
        #expect(again.identity(cgroupPath: path)?.service == "shop/ledger")
        #expect(again.lookupCounts.map(\.count) == [1, 0, 0, 0])
    }

    @Test func retriesAfterTheRetryTime() async {
        let source = ScriptedSource()
        let clock = Mutex<UInt64>(1_000)
        let dir = PodDirectory(
            sources: [source], appNameLabel: false, retryNanos: 500, logger: Logger(label: "test"),
            now: { clock.withLock { $0 } })
        // A lookup that failed (the runtime is down).
        await dir.lookup(containerID: cid, podUID: uid)
        clock.withLock { $0 += 100 }
        #expect(dir.identity(cgroupPath: path) == nil)  // within the retry time: not queued
        source.answer.withLock { $0 = .found(ledger) }
        clock.withLock { $0 += 500 }
        #expect(dir.identity(cgroupPath: path) == nil)  // queued now
        dir.finish()
        await dir.run()
        #expect(source.asked.withLock { $0 } == 2)
        #expect(dir.identity(cgroupPath: path)?.workload == Workload(name: "ledger", kind: .statefulSet))
    }

    @Test func dockerInspectLabels() {
        func labels(_ s: String) -> [String: String]? { DockerSource.labels(inspectJSON: Data(s.utf8)) }
        #expect(
            labels(#"{"Id":"x","Config":{"Labels":{"io.kubernetes.pod.name":"ledger-0","app":"ledger"}}}"#)
                == ["io.kubernetes.pod.name": "ledger-0", "app": "ledger"])
        #expect(labels(#"{"Config":{"Labels":null}}"#) == [:])
        #expect(labels("not json") == nil)
    }

    @Test func sandboxAndContainerFromTheListAnswer() {
        let sandbox = (
            id: "aa",
            labels: [
                "io.cri-containerd.kind": "sandbox", KubeletLabel.podName: "ledger-0",
                KubeletLabel.podNamespace: "shop", KubeletLabel.podUID: uid, "app": "ledger",
            ]
        )
        let container = (
            id: cid,
            labels: [
                "io.cri-containerd.kind": "container", KubeletLabel.podName: "ledger-0",
                KubeletLabel.podNamespace: "shop", KubeletLabel.podUID: uid, KubeletLabel.containerName: "ledger",
            ]
        )
        let m = ContainerdSource.metadata(containerID: cid, among: [sandbox, container])
        #expect(m?.container == "ledger" && m?.labels == ["app": "ledger"])
        #expect(ContainerdSource.metadata(containerID: "bb", among: [sandbox, container]) == nil)
        #expect(ContainerdSource.podFilter(uid: uid) == "labels.\"io.kubernetes.pod.uid\"==\"\(uid)\"")
    }
}
