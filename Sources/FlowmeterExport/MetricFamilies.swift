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
        public var labels: [(String, String)]
        public var value: Value
        public init(labels: [(String, String)], value: Value) { self.labels = labels; self.value = value }
        public static func == (a: Series, b: Series) -> Bool {
            a.value == b.value && a.labels.count == b.labels.count
                && zip(a.labels, b.labels).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
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
