import FlowmeterCore

/// One metric family with its current series: what the Prometheus exposition
/// prints and what the OTLP encoder sends.
public struct MetricFamilyData: Sendable, Equatable {
    /// A histogram series: `counts` per bucket (not cumulative), one more
    /// entry than `bounds` (the last is above every bound, "+Inf").
    public struct Buckets: Sendable, Equatable {
        public var bounds: [Double]
        public var counts: [UInt64]
        public var sum: Double
        public var count: UInt64
        public init(bounds: [Double], counts: [UInt64], sum: Double, count: UInt64) {
            self.bounds = bounds; self.counts = counts; self.sum = sum; self.count = count
        }
    }

    public enum Value: Sendable, Equatable {
        /// A counter's or gauge's sample.
        case number(Double)
        case histogram(Buckets)
    }

    /// One series: its labels in exposition order (without "le") and its value.
    public struct Series: Sendable, Equatable {
        /// The labels of a service pair, shared by every series of the pair
        /// (nil for other series): one object per pair instead of one label
        /// array per series, with its exposition text made once.
        public private(set) var shared: SharedLabels?
        /// After `shared`: one more label (direction, role, reason), if any.
        public private(set) var extra: (String, String)?
        private var own: [(String, String)]
        public var value: Value

        public init(labels: [(String, String)], value: Value) {
            self.own = labels; self.value = value
        }

        /// A series of a service pair: the pair's labels, then `extra`.
        public init(shared: SharedLabels, extra: (String, String)? = nil, value: Value) {
            self.shared = shared; self.extra = extra; self.own = []; self.value = value
        }

        /// Every label in exposition order (without "le").
        public var labels: [(String, String)] {
            get {
                guard let shared else { return own }
                var l = shared.labels
                if let extra { l.append(extra) }
                return l
            }
            set {
                shared = nil; extra = nil; own = newValue
            }
        }

        public static func == (a: Series, b: Series) -> Bool {
            let (la, lb) = (a.labels, b.labels)
            return a.value == b.value && la.count == lb.count && zip(la, lb).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        }
    }

    /// The Prometheus family name (counters with "_total").
    public var name: String
    public var kind: Exposition.Kind
    public var help: String
    public var series: [Series]

    public init(name: String, kind: Exposition.Kind, help: String, series: [Series]) {
        self.name = name; self.kind = kind; self.help = help; self.series = series
    }
}

/// The labels of one service pair (service, peer_service, transport), as
/// the series of the pair share them, with their exposition text
/// (`service="...",peer_service="...",transport="..."`, values escaped) made
/// once. A pair's labels never change (a pair is its labels), so the object
/// may live across scrapes (`MetricsCache`).
public final class SharedLabels: Sendable {
    public let labels: [(String, String)]
    /// The labels as written between the braces of a sample.
    let text: [UInt8]

    public init(_ labels: [(String, String)]) {
        self.labels = labels
        var o = ExpositionBytes()
        o.labelList(labels)
        text = o.bytes
    }
}
