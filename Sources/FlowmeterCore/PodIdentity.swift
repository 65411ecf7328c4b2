// Kubernetes identity of a local pod: what the node's container runtime says
// about a container (its labels and its pod sandbox's), and the workload
// derived from them. Pure values and functions: the runtime clients live in
// FlowmeterRuntime, and nothing here asks the API server (a node has no
// business needing it to name its own pods).

/// The labels the kubelet puts on every container and pod sandbox it asks a
/// runtime to create (CRI), and on Docker containers through cri-dockerd.
public enum KubeletLabel {
    public static let podName = "io.kubernetes.pod.name"
    public static let podNamespace = "io.kubernetes.pod.namespace"
    public static let podUID = "io.kubernetes.pod.uid"
    public static let containerName = "io.kubernetes.container.name"
}

/// What a runtime told us about one container of a pod.
public struct PodMetadata: Sendable, Hashable {
    public var namespace: String
    public var pod: String
    public var podUID: String
    /// The container's name in the pod spec; nil for the sandbox (pause) itself.
    public var container: String?
    /// The pod's own labels (the sandbox's, without the kubelet's io.kubernetes.* ones).
    public var labels: [String: String]

    public init(namespace: String, pod: String, podUID: String, container: String?, labels: [String: String]) {
        self.namespace = namespace; self.pod = pod; self.podUID = podUID; self.container = container; self.labels = labels
    }

    /// Builds the metadata from a container's labels and its pod sandbox's.
    /// Nil when the kubelet's pod labels are missing: a container some other
    /// client made in the runtime, which has no pod to name.
    public init?(container: [String: String], sandbox: [String: String]) {
        func label(_ k: String) -> String? {
            (container[k] ?? sandbox[k]).flatMap { $0.isEmpty ? nil : $0 }
        }
        guard let ns = label(KubeletLabel.podNamespace), let pod = label(KubeletLabel.podName),
            let uid = label(KubeletLabel.podUID)
        else { return nil }
        self.namespace = ns; self.pod = pod; self.podUID = uid
        self.container = container[KubeletLabel.containerName].flatMap { $0.isEmpty || $0 == "POD" ? nil : $0 }
        // The runtime's own bookkeeping labels (io.kubernetes.*, io.cri-containerd.*)
        // are not the pod's; everything else on the sandbox is.
        // cri-dockerd also keeps the pod's annotations as "annotation.*" labels.
        self.labels = sandbox.filter {
            !$0.key.hasPrefix("io.kubernetes.") && !$0.key.hasPrefix("io.cri-containerd.") && !$0.key.hasPrefix("annotation.")
        }
    }

    /// The workload that owns the pod (see `Workload.derive`).
    public func workload(appNameLabel: Bool) -> Workload {
        Workload.derive(pod: pod, labels: labels, appNameLabel: appNameLabel)
    }
}

/// A pod's owner as far as its labels and name tell.
public struct Workload: Sendable, Hashable {
    /// The Kubernetes kind, as the API spells it.
    public enum Kind: String, Sendable, CaseIterable {
        case deployment = "Deployment"
        case statefulSet = "StatefulSet"
        case daemonSet = "DaemonSet"
        case job = "Job"
        case cronJob = "CronJob"
        /// Named by the `app.kubernetes.io/name` label: its kind is not known.
        case application = "Application"
        /// A pod no owner was found for: named by itself.
        case pod = "Pod"
    }

    public var name: String
    public var kind: Kind

    public init(name: String, kind: Kind) { self.name = name; self.kind = kind }

    public static let appNameLabel = "app.kubernetes.io/name"
    public static let podTemplateHash = "pod-template-hash"
    public static let controllerRevisionHash = "controller-revision-hash"
    public static let statefulSetPodName = "statefulset.kubernetes.io/pod-name"
    /// The Job controller sets both (the prefixed one since Kubernetes 1.27).
    public static let jobNameLabels = ["batch.kubernetes.io/job-name", "job-name"]

    /// The first that applies:
    /// 1. `app.kubernetes.io/name`, when `appNameLabel` (the operator said
    ///    their charts set it meaningfully);
    /// 2. `pod-template-hash` = h and a name `<d>-<h>-<suffix>` → Deployment d;
    /// 3. `controller-revision-hash` and `statefulset.kubernetes.io/pod-name`
    ///    equal to the name `<s>-<ordinal>` → StatefulSet s;
    /// 4. `controller-revision-hash` alone and a name `<d>-<5 characters>` → DaemonSet d;
    /// 5. `job-name` = j (the pod name starting with `j-`) → Job j, or CronJob c
    ///    when j is `<c>-<scheduled minute>` (the CronJob controller's suffix:
    ///    the schedule time in minutes since the epoch, 8 or more digits);
    /// 6. the pod itself.
    /// A label whose name does not fit its controller's naming is not
    /// trusted: the pod is then named by itself rather than by a guess.
    public static func derive(pod: String, labels: [String: String], appNameLabel: Bool) -> Workload {
        if appNameLabel, let app = labels[Self.appNameLabel], !app.isEmpty {
            return Workload(name: app, kind: .application)
        }
        if let hash = labels[podTemplateHash], !hash.isEmpty,
            let (stem, suffix) = splitLast(pod), isGeneratedSuffix(suffix),
            let (deployment, h) = splitLast(stem), h == hash, !deployment.isEmpty
        {
            return Workload(name: deployment, kind: .deployment)
        }
        if let revision = labels[controllerRevisionHash], !revision.isEmpty {
            if let podName = labels[statefulSetPodName] {
                if podName == pod, let (set, ordinal) = splitLast(pod), !set.isEmpty, isOrdinal(ordinal) {
                    return Workload(name: set, kind: .statefulSet)
                }
            } else if let (set, suffix) = splitLast(pod), !set.isEmpty, isGeneratedSuffix(suffix) {
                return Workload(name: set, kind: .daemonSet)
            }
        }
        if let job = jobNameLabels.lazy.compactMap({ labels[$0] }).first, !job.isEmpty, pod.hasPrefix(job + "-") {
            if let (cron, minute) = splitLast(job), !cron.isEmpty, minute.count >= 8, minute.utf8.allSatisfy(isDigit) {
                return Workload(name: cron, kind: .cronJob)
            }
            return Workload(name: job, kind: .job)
        }
        return Workload(name: pod, kind: .pod)
    }

    /// `a-b-c` → (`a-b`, `c`); nil without a dash.
    private static func splitLast(_ s: String) -> (String, String)? {
        guard let dash = s.lastIndex(of: "-") else { return nil }
        return (String(s[..<dash]), String(s[s.index(after: dash)...]))
    }

    private static func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }

    /// A StatefulSet ordinal: digits, no leading zero but "0" itself.
    private static func isOrdinal(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy(isDigit) && (s == "0" || !s.hasPrefix("0"))
    }

    /// The 5 characters the API server appends to a generateName
    /// (lowercase consonants and digits without vowels, so no words form).
    private static func isGeneratedSuffix(_ s: String) -> Bool {
        let alphabet = Set("bcdfghjklmnpqrstvwxz2456789".utf8)
        return s.utf8.count == 5 && s.utf8.allSatisfy { alphabet.contains($0) }
    }
}

/// The Kubernetes identity of a socket's owner: its pod and the workload.
public struct PodIdentity: Sendable, Hashable {
    public var metadata: PodMetadata
    public var workload: Workload
    /// The service label: `<namespace>/<workload>`.
    public var service: String { "\(metadata.namespace)/\(workload.name)" }

    public init(metadata: PodMetadata, appNameLabel: Bool) {
        self.metadata = metadata
        self.workload = metadata.workload(appNameLabel: appNameLabel)
    }
}
